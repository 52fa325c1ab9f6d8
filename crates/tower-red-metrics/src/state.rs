//! The layer's shared in-process state, and the guard that records each request once.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::classify::{Class, Status};
use crate::clock::{Clock, Ticks};
use crate::labels::MethodLabel;
use crate::layer::Shared;
use crate::metrics::RouteSeries;
use crate::sketch::{Counts, WindowedSketch};
use crate::snapshot::{DurationStats, RedSnapshot, RequestStats};

/// Number of per-class counter shards: threads spread over them, so that two cores
/// counting requests do not write the same cache line.
const SHARDS: usize = 8;

/// One shard of per-class counters, alone on its cache line(s).
#[derive(Debug, Default)]
#[repr(align(128))]
struct ClassShard([AtomicU64; 4]);

/// Next shard to hand to a thread.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// Per-class totals and the duration window, shared by every clone of a layer.
#[derive(Debug)]
pub(crate) struct Core {
    classes: [ClassShard; SHARDS],
    window: WindowedSketch,
    ticks: Ticks,
}

impl Core {
    pub(crate) fn new(window: Duration, slots: u32, clock: Clock) -> Self {
        Self {
            classes: Default::default(),
            window: WindowedSketch::new(window, slots),
            ticks: Ticks::new(clock),
        }
    }

    /// The time, in nanoseconds since the layer was built.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.ticks.now()
    }

    /// Counts a request of `class` that took `elapsed` nanoseconds and ended at `now`.
    #[inline]
    fn record(&self, class: Class, now: u64, elapsed: u64) {
        let shard = SHARD.try_with(|shard| *shard).unwrap_or(0);
        self.classes[shard].0[class.index()].fetch_add(1, Ordering::Relaxed);
        self.window.record(now, elapsed);
    }

    /// The window's duration counts now.
    pub(crate) fn counts(&self) -> Counts {
        self.window.counts(self.now())
    }

    /// The figures now.
    #[allow(clippy::cast_precision_loss)] // a ratio of counts
    pub(crate) fn snapshot(&self) -> RedSnapshot {
        let [success, client_errors, rate_limited, errors] = [
            Class::Success,
            Class::ClientError,
            Class::RateLimited,
            Class::Error,
        ]
        .map(|class| {
            let index = class.index();
            self.classes
                .iter()
                .map(|shard| shard.0[index].load(Ordering::Relaxed))
                .sum::<u64>()
        });
        let total = success + client_errors + rate_limited + errors;
        let counts = self.counts();
        let millis = |nanos: Option<f64>| nanos.map_or(0.0, |n| n / 1e6);
        RedSnapshot {
            requests: RequestStats {
                total,
                success,
                errors,
                error_rate: if total == 0 {
                    0.0
                } else {
                    errors as f64 / total as f64
                },
                rate_limited,
                client_errors,
            },
            duration: DurationStats {
                avg: millis(counts.mean()),
                p50: millis(counts.quantile(0.50)),
                p95: millis(counts.quantile(0.95)),
                p99: millis(counts.quantile(0.99)),
            },
        }
    }

    /// The length of the duration window.
    pub(crate) fn window(&self) -> Duration {
        self.window.window()
    }
}

/// What one [`Layer::layer`](tower_layer::Layer::layer) call built: the shared state,
/// and the route its service saw first. Under axum's `Router::layer` each route gets its
/// own service, so after the first request a route's handles are found without a lock,
/// and a request holds one reference count (this one) rather than two.
///
/// Aligned to 128 bytes so that, inside its `Arc`, the fields sit on other cache lines
/// than the reference count: every request writes the count (a service clone, the
/// recording), and the fields, read by every request, then stay shared between cores
/// instead of moving with it.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Instance {
    shared: Arc<Shared>,
    route: OnceLock<Arc<RouteSeries>>,
}

impl Instance {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            route: OnceLock::new(),
        }
    }

    /// Starts recording a request of `method` on `route` (marks it in flight).
    #[inline]
    pub(crate) fn start(
        this: &Arc<Self>,
        route: Option<Cow<'_, str>>,
        method: MethodLabel,
    ) -> Recording {
        let owner = match route {
            None => Owner::Unmatched(Arc::clone(this)),
            Some(route) => match this.route.get() {
                Some(cached) if cached.route() == route => Owner::Cached(Arc::clone(this)),
                Some(_) => Owner::Route(this.shared.registry.route(route)),
                None => {
                    let series = this.shared.registry.route(route);
                    if Arc::ptr_eq(this.route.get_or_init(|| Arc::clone(&series)), &series) {
                        Owner::Cached(Arc::clone(this))
                    } else {
                        Owner::Route(series)
                    }
                }
            },
        };
        let start = owner.series().core().now();
        Recording {
            armed: Some(Armed {
                owner,
                method,
                start,
                waiting: false,
            }),
        }
    }
}

/// Who keeps a request's route handles alive while it is recorded.
enum Owner {
    /// The layer's `unmatched` route.
    Unmatched(Arc<Instance>),
    /// The route cached in the instance.
    Cached(Arc<Instance>),
    /// Any other route.
    Route(Arc<RouteSeries>),
}

impl Owner {
    fn series(&self) -> &RouteSeries {
        match self {
            Self::Unmatched(instance) => instance.shared.registry.unmatched(),
            Self::Cached(instance) => match instance.route.get() {
                Some(route) => route,
                None => instance.shared.registry.unmatched(),
            },
            Self::Route(route) => route,
        }
    }
}

struct Armed {
    owner: Owner,
    method: MethodLabel,
    /// When the request started, in the core's nanoseconds.
    start: u64,
    /// Whether the request is counted in the in-flight gauge.
    waiting: bool,
}

/// Records one request, exactly once: when [`finish`](Recording::finish) is called with
/// its outcome, or, if it never is, when the `Recording` is dropped, as
/// [`Status::Cancelled`].
///
/// The layer hands one to [`Classify::classify`](crate::Classify::classify) with each
/// response; a classifier that needs the end of the body (as gRPC does) moves it into the
/// body.
#[must_use = "dropping a Recording records the request as cancelled"]
pub struct Recording {
    armed: Option<Armed>,
}

impl Recording {
    /// A recording that records nothing.
    pub(crate) const fn disarmed() -> Self {
        Self { armed: None }
    }

    /// Records the request as ended with `status`.
    #[inline]
    pub fn finish(mut self, status: Status) {
        self.record(status);
    }

    /// Counts the request in `http_requests_in_flight` from now until it is recorded;
    /// calling it again changes nothing.
    ///
    /// The layer calls it when the inner service's future is pending and when a
    /// recording moves into a [`RedBody`](crate::RedBody), so that the gauge counts the
    /// requests that wait (on the inner service, or on the rest of a streamed response).
    /// A [`Classify`](crate::Classify) that carries the recording in a body of its own
    /// calls it too.
    #[inline]
    pub fn mark_in_flight(&mut self) {
        if let Some(armed) = &mut self.armed
            && !armed.waiting
        {
            armed.waiting = true;
            in_flight(armed.owner.series(), armed.method, 1.0);
        }
    }

    #[inline]
    fn record(&mut self, status: Status) {
        let Some(Armed {
            owner,
            method,
            start,
            waiting,
        }) = self.armed.take()
        else {
            return;
        };
        let route = owner.series();
        if waiting {
            in_flight(route, method, -1.0);
        }
        let now = route.core().now();
        let elapsed = now.saturating_sub(start);
        let series = route.series(method);
        #[allow(clippy::cast_precision_loss)] // exact below 2^53 ns (104 days)
        series.duration.record(elapsed as f64 * 1e-9);
        route.count(series, status);
        route.core().record(status.class(), now, elapsed);
        if status == Status::Cancelled {
            cancelled(route, method);
        }
    }
}

/// Moves the request's in-flight gauge by `delta`; out of line, since only requests
/// that wait get here.
#[cold]
#[inline(never)]
fn in_flight(route: &RouteSeries, method: MethodLabel, delta: f64) {
    route.series(method).in_flight.increment(delta);
}

#[cold]
#[inline(never)]
fn cancelled(route: &RouteSeries, method: MethodLabel) {
    tracing::trace!(
        route = route.route(),
        method = method.as_str(),
        "request cancelled"
    );
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.record(Status::Cancelled);
    }
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Recording");
        if let Some(armed) = &self.armed {
            f.field("route", &armed.owner.series().route())
                .field("method", &armed.method);
        }
        f.finish_non_exhaustive()
    }
}
