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
use crate::metrics::{Lane, Route, RouteSeries};
use crate::sketch::{Counts, WindowedSketch};
use crate::snapshot::{DurationStats, RedSnapshot, RequestStats};

/// Number of shards of the per-class counters and of each route's lanes: threads spread
/// over them, so that two cores counting requests do not write the same cache line.
pub(crate) const SHARDS: usize = 8;

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

/// This thread's shard, below [`SHARDS`] (0 while the thread is being torn down).
#[inline]
pub(crate) fn shard() -> usize {
    SHARD.try_with(|shard| *shard).unwrap_or(0)
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
        self.classes[shard()].0[class.index()].fetch_add(1, Ordering::Relaxed);
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
                error_rate_percent: if total == 0 {
                    0.0
                } else {
                    errors as f64 * 100.0 / total as f64
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
/// own service, so after the first request a route's handles are found without a lock.
///
/// Aligned to 128 bytes so that, inside its `Arc`, the fields sit on other cache lines
/// than the reference count: every service clone writes the count, and the fields, read
/// by every request, then stay shared between cores instead of moving with it.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Instance {
    shared: Arc<Shared>,
    route: OnceLock<Arc<Route>>,
}

impl Instance {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            route: OnceLock::new(),
        }
    }

    /// Starts recording a request of `method` on `route`.
    #[inline]
    pub(crate) fn start(&self, route: Option<Cow<'_, str>>, method: MethodLabel) -> Recording {
        let lane = match route {
            None => self.shared.registry.unmatched().lane(),
            Some(route) => match self.route.get() {
                Some(cached) if cached.route() == route => cached.lane(),
                Some(_) => self.shared.registry.route(route).lane(),
                None => {
                    let series = self.shared.registry.route(route);
                    self.route.get_or_init(|| Arc::clone(&series));
                    series.lane()
                }
            },
        };
        let start = lane.core().now();
        Recording {
            armed: Some(Armed {
                lane,
                stamp: Stamp::new(start, method),
            }),
        }
    }
}

/// A request's start time, method and in-flight mark in one word, so that a
/// [`Recording`] is two words: the response future, and the body of a response that
/// carries one, grow by 16 bytes rather than 32.
///
/// The start keeps the low [`Stamp::START_BITS`] bits of the core's nanoseconds (about
/// 4.5 years); durations are taken modulo that, which is exact for any request shorter
/// than half of it.
#[derive(Debug, Clone, Copy)]
struct Stamp(u64);

impl Stamp {
    const START_BITS: u32 = 57;
    const START_MASK: u64 = (1 << Self::START_BITS) - 1;
    const METHOD_SHIFT: u32 = Self::START_BITS;
    const WAITING: u64 = 1 << 63;

    fn new(start: u64, method: MethodLabel) -> Self {
        Self((start & Self::START_MASK) | (method.index() as u64) << Self::METHOD_SHIFT)
    }

    #[allow(clippy::cast_possible_truncation)] // four bits
    fn method(self) -> MethodLabel {
        let index = (self.0 >> Self::METHOD_SHIFT) as usize & 0xf;
        MethodLabel::ALL
            .get(index)
            .copied()
            .unwrap_or(MethodLabel::Other)
    }

    fn waiting(self) -> bool {
        self.0 & Self::WAITING != 0
    }

    /// Nanoseconds from the start to `now`; 0 when `now` reads before the start (a
    /// clock read on another core, a little behind).
    fn elapsed(self, now: u64) -> u64 {
        let elapsed = now.wrapping_sub(self.0) & Self::START_MASK;
        if elapsed >> (Self::START_BITS - 1) == 0 {
            elapsed
        } else {
            0
        }
    }
}

struct Armed {
    /// The request's route (this thread's lane of it); holding it keeps the handles alive
    /// until the request is recorded.
    lane: Arc<Lane>,
    stamp: Stamp,
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
            && !armed.stamp.waiting()
        {
            armed.stamp.0 |= Stamp::WAITING;
            in_flight(&armed.lane, armed.stamp.method(), 1.0);
        }
    }

    // Out of line, so that the response future's poll stays small enough to inline.
    #[inline(never)]
    fn record(&mut self, status: Status) {
        let Some(Armed { lane: route, stamp }) = self.armed.take() else {
            return;
        };
        let method = stamp.method();
        if stamp.waiting() {
            in_flight(&route, method, -1.0);
        }
        let now = route.core().now();
        let elapsed = stamp.elapsed(now);
        let series = route.series(method);
        #[allow(clippy::cast_precision_loss)] // exact below 2^53 ns (104 days)
        series.duration.record(elapsed as f64 * 1e-9);
        route.count(series, status);
        route.core().record(status.class(), now, elapsed);
        if status == Status::Cancelled {
            cancelled(&route, method);
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
            f.field("route", &armed.lane.route())
                .field("method", &armed.stamp.method());
        }
        f.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_recording_is_two_words() {
        // What keeps `Response<RedBody<B>>` small: see `Stamp`.
        assert_eq!(size_of::<Recording>(), 2 * size_of::<usize>());
    }

    #[test]
    fn a_clock_read_behind_the_start_is_no_time() {
        let stamp = Stamp::new(1_000, MethodLabel::Get);
        assert_eq!(stamp.elapsed(999), 0);
        assert_eq!(stamp.elapsed(1_000), 0);
        assert_eq!(stamp.elapsed(1_001), 1);
    }

    proptest! {
        #[test]
        fn stamps_keep_the_method_the_mark_and_the_duration(
            start in any::<u64>(),
            elapsed in 0u64..(1 << (Stamp::START_BITS - 1)),
            method in 0usize..MethodLabel::ALL.len(),
            waiting in any::<bool>(),
        ) {
            let method = MethodLabel::ALL[method];
            let mut stamp = Stamp::new(start, method);
            prop_assert!(!stamp.waiting());
            if waiting {
                stamp.0 |= Stamp::WAITING;
            }
            prop_assert_eq!(stamp.method(), method);
            prop_assert_eq!(stamp.waiting(), waiting);
            prop_assert_eq!(stamp.elapsed(start.wrapping_add(elapsed)), elapsed);
        }
    }
}
