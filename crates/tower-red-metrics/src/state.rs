//! The layer's shared in-process state, and the guard that records each request once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::{Class, Status};
use crate::labels::MethodLabel;
use crate::metrics::RouteSeries;
use crate::sketch::{Counts, WindowedSketch};
use crate::snapshot::{DurationStats, RedSnapshot, RequestStats};

/// Per-class totals and the duration window, shared by every clone of a layer.
#[derive(Debug)]
pub(crate) struct Core {
    classes: [AtomicU64; 4],
    window: WindowedSketch,
    base: Instant,
}

impl Core {
    pub(crate) fn new(window: Duration, slots: u32) -> Self {
        Self {
            classes: Default::default(),
            window: WindowedSketch::new(window, slots),
            base: Instant::now(),
        }
    }

    fn record(&self, class: Class, now: Instant, elapsed: Duration) {
        self.classes[class.index()].fetch_add(1, Ordering::Relaxed);
        self.window
            .record(now.saturating_duration_since(self.base), elapsed);
    }

    /// The window's duration counts at `now`.
    pub(crate) fn counts(&self, now: Instant) -> Counts {
        self.window.counts(now.saturating_duration_since(self.base))
    }

    /// The figures at `now`.
    #[allow(clippy::cast_precision_loss)] // a ratio of counts
    pub(crate) fn snapshot(&self, now: Instant) -> RedSnapshot {
        let [success, client_errors, rate_limited, errors] = [
            Class::Success,
            Class::ClientError,
            Class::RateLimited,
            Class::Error,
        ]
        .map(|class| self.classes[class.index()].load(Ordering::Relaxed));
        let total = success + client_errors + rate_limited + errors;
        let counts = self.counts(now);
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

struct Armed {
    route: Arc<RouteSeries>,
    method: MethodLabel,
    start: Instant,
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
    /// Starts recording a request of `method` on `route` (marks it in flight).
    pub(crate) fn start(route: Arc<RouteSeries>, method: MethodLabel) -> Self {
        route.series(method).in_flight.increment(1.0);
        Self {
            armed: Some(Armed {
                route,
                method,
                start: Instant::now(),
            }),
        }
    }

    /// A recording that records nothing.
    pub(crate) const fn disarmed() -> Self {
        Self { armed: None }
    }

    /// Records the request as ended with `status`.
    pub fn finish(mut self, status: Status) {
        self.record(status);
    }

    fn record(&mut self, status: Status) {
        let Some(Armed {
            route,
            method,
            start,
        }) = self.armed.take()
        else {
            return;
        };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(start);
        let series = route.series(method);
        series.duration.record(elapsed.as_secs_f64());
        series.in_flight.decrement(1.0);
        route.count(series, status);
        route.core().record(status.class(), now, elapsed);
        if status == Status::Cancelled {
            tracing::trace!(
                route = route.route(),
                method = method.as_str(),
                "request cancelled"
            );
        }
    }
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
            f.field("route", &armed.route.route())
                .field("method", &armed.method);
        }
        f.finish_non_exhaustive()
    }
}
