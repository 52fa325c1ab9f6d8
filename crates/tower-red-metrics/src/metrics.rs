//! Metric names, their descriptions, and the pre-resolved handles the layer records into.
//!
//! Handles are resolved once per (route, method) and per (route, method, status), the
//! first time that combination is seen, and kept for the layer's lifetime: the hot path
//! never builds a metric key or looks labels up in the recorder. The recorder that
//! resolves them is the one given to
//! [`RedMetricsLayerBuilder::recorder`](crate::RedMetricsLayerBuilder::recorder), else the global
//! recorder, **which must therefore be installed before the layer is built** (a
//! combination resolved before the install records into the no-op recorder for good).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};

use crate::classify::{STATUS_SLOTS, Status};
use crate::labels::MethodLabel;
use crate::state::{Core, SHARDS, shard};

/// `http_requests_total{method,route,status}`: requests, by how they ended.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// `http_request_duration_seconds{method,route}`: a histogram of request durations.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// `http_requests_in_flight{method,route}`: requests waiting, on the inner service's
/// answer or on the end of a streamed (gRPC) response.
///
/// A request counts from the first time its future is pending, or its response head is
/// out before its status is known, until it is recorded. A request answered in the poll
/// that sent it (a cache hit, a refusal, a handler that never waits) is not counted: it
/// never waited, and leaving it out keeps two contended writes off the fastest path. A
/// handler that blocks its first poll is therefore not seen in flight while it blocks.
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";

/// The `route` label of requests that have no matched route.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The `route` label of new routes once the layer's route cap is reached.
pub const OVERFLOW_ROUTE: &str = "overflow";

const HELP_REQUESTS: &str = "HTTP and gRPC requests by method, matched route and final status (HTTP code or gRPC code name).";
const HELP_DURATION: &str = "Time from receiving a request to its final status, in seconds.";
const HELP_IN_FLIGHT: &str =
    "Requests waiting on the service's answer or on the end of a streamed response.";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Where handles are resolved: the global recorder, or one given to the builder.
#[derive(Clone, Default)]
pub(crate) enum RecorderRef {
    /// `metrics`'s current recorder (the thread's local one, else the global one).
    #[default]
    Global,
    /// A recorder owned by this layer.
    Local(Arc<dyn Recorder + Send + Sync>),
}

impl fmt::Debug for RecorderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Global => f.write_str("Global"),
            Self::Local(_) => f.write_str("Local(..)"),
        }
    }
}

impl RecorderRef {
    fn with<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match self {
            Self::Global => metrics::with_recorder(f),
            Self::Local(recorder) => f(recorder.as_ref()),
        }
    }

    /// Describes this crate's metrics (`# HELP` lines in Prometheus).
    pub(crate) fn describe(&self) {
        self.with(|r| describe(r));
    }
}

/// Describes this crate's three metrics on `recorder`.
pub(crate) fn describe(recorder: &dyn Recorder) {
    recorder.describe_counter(
        KeyName::from_const_str(HTTP_REQUESTS_TOTAL),
        None,
        HELP_REQUESTS.into(),
    );
    recorder.describe_histogram(
        KeyName::from_const_str(HTTP_REQUEST_DURATION_SECONDS),
        Some(Unit::Seconds),
        HELP_DURATION.into(),
    );
    recorder.describe_gauge(
        KeyName::from_const_str(HTTP_REQUESTS_IN_FLIGHT),
        None,
        HELP_IN_FLIGHT.into(),
    );
}

/// The handles of one (route, method).
#[derive(Debug)]
pub(crate) struct Series {
    method: &'static str,
    pub(crate) duration: Histogram,
    pub(crate) in_flight: Gauge,
    statuses: Box<[OnceLock<Counter>; STATUS_SLOTS]>,
    /// Uncommon statuses (bounded: at most 900 HTTP codes).
    rare: Mutex<Vec<(Status, Counter)>>,
}

/// The handles of one route, for every method, resolved on first use.
#[derive(Debug)]
pub(crate) struct RouteSeries {
    route: Arc<str>,
    core: Arc<Core>,
    recorder: RecorderRef,
    methods: [OnceLock<Series>; MethodLabel::ALL.len()],
}

impl RouteSeries {
    pub(crate) fn new(route: Arc<str>, core: Arc<Core>, recorder: RecorderRef) -> Self {
        Self {
            route,
            core,
            recorder,
            methods: Default::default(),
        }
    }

    /// The layer's in-process figures.
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// The route label.
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// The handles for `method` on this route.
    #[inline]
    pub(crate) fn series(&self, method: MethodLabel) -> &Series {
        match self.methods[method.index()].get() {
            Some(series) => series,
            None => self.resolve(method),
        }
    }

    /// Resolves the handles for `method` on this route (once per method).
    #[cold]
    #[inline(never)]
    fn resolve(&self, method: MethodLabel) -> &Series {
        self.methods[method.index()].get_or_init(|| {
            let method = method.as_str();
            let labels = || {
                vec![
                    Label::from_static_parts("method", method),
                    Label::new("route", self.route.to_string()),
                ]
            };
            tracing::debug!(route = %self.route, method, "resolving RED metric handles");
            self.recorder.with(|r| Series {
                method,
                duration: r.register_histogram(
                    &Key::from_parts(HTTP_REQUEST_DURATION_SECONDS, labels()),
                    &METADATA,
                ),
                in_flight: r.register_gauge(
                    &Key::from_parts(HTTP_REQUESTS_IN_FLIGHT, labels()),
                    &METADATA,
                ),
                statuses: Box::new(std::array::from_fn(|_| OnceLock::new())),
                rare: Mutex::new(Vec::new()),
            })
        })
    }

    /// Counts one request of `method` that ended with `status`.
    #[inline]
    pub(crate) fn count(&self, series: &Series, status: Status) {
        if let Some(counter) = status.slot().and_then(|slot| series.statuses[slot].get()) {
            counter.increment(1);
        } else {
            self.count_first(series, status);
        }
    }

    /// Counts a status not counted before on this series, or an uncommon one.
    #[cold]
    #[inline(never)]
    fn count_first(&self, series: &Series, status: Status) {
        let register = || {
            let labels = vec![
                Label::from_static_parts("method", series.method),
                Label::new("route", self.route.to_string()),
                Label::new("status", status.label()),
            ];
            self.recorder.with(|r| {
                r.register_counter(&Key::from_parts(HTTP_REQUESTS_TOTAL, labels), &METADATA)
            })
        };
        if let Some(slot) = status.slot() {
            series.statuses[slot].get_or_init(register).increment(1);
        } else {
            let mut rare = series.rare.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, counter)) = rare
                .iter()
                .find(|(s, _)| s.normalized() == status.normalized())
            {
                counter.increment(1);
            } else {
                let counter = register();
                counter.increment(1);
                rare.push((status, counter));
            }
        }
    }
}

/// A route's handles, and its lanes: what the recordings of its requests hold.
///
/// A recording keeps its route's handles alive through a reference count. One count
/// per route would be written by every request on every core; each lane has its own
/// count, and a thread takes the lane of its [shard](crate::state::shard), so that
/// requests on different cores write different cache lines.
#[derive(Debug)]
pub(crate) struct Route {
    series: Arc<RouteSeries>,
    lanes: [OnceLock<Arc<Lane>>; SHARDS],
}

impl Route {
    fn new(series: RouteSeries) -> Self {
        Self {
            series: Arc::new(series),
            lanes: Default::default(),
        }
    }

    /// The route label.
    pub(crate) fn route(&self) -> &str {
        self.series.route()
    }

    /// This thread's lane of the route (created on its first request).
    #[inline]
    pub(crate) fn lane(&self) -> Arc<Lane> {
        Arc::clone(self.lanes[shard()].get_or_init(|| Arc::new(Lane(Arc::clone(&self.series)))))
    }
}

/// One lane of a [`Route`]: a reference to its handles with a reference count of its
/// own, alone on its cache lines (aligned to 128 bytes).
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Lane(Arc<RouteSeries>);

impl Deref for Lane {
    type Target = RouteSeries;

    fn deref(&self) -> &RouteSeries {
        &self.0
    }
}

/// Every route's handles, with the route count capped.
#[derive(Debug)]
pub(crate) struct SeriesRegistry {
    core: Arc<Core>,
    recorder: RecorderRef,
    max_routes: usize,
    unmatched: Arc<Route>,
    overflow: Arc<Route>,
    overflowed: AtomicBool,
    routes: RwLock<HashMap<Arc<str>, Arc<Route>>>,
}

impl SeriesRegistry {
    pub(crate) fn new(core: Arc<Core>, recorder: RecorderRef, max_routes: usize) -> Self {
        let series = |route: &str| {
            Arc::new(Route::new(RouteSeries::new(
                route.into(),
                Arc::clone(&core),
                recorder.clone(),
            )))
        };
        let unmatched = series(UNMATCHED_ROUTE);
        let overflow = series(OVERFLOW_ROUTE);
        Self {
            core,
            recorder,
            max_routes,
            unmatched,
            overflow,
            overflowed: AtomicBool::new(false),
            routes: RwLock::new(HashMap::new()),
        }
    }

    /// The series of requests with no route.
    pub(crate) fn unmatched(&self) -> &Arc<Route> {
        &self.unmatched
    }

    /// The series of `route`, created on first use; [`OVERFLOW_ROUTE`]'s past the cap.
    pub(crate) fn route(&self, route: Cow<'_, str>) -> Arc<Route> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = routes.get(route.as_ref()) {
            return Arc::clone(series);
        }
        drop(routes);
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = routes.get(route.as_ref()) {
            return Arc::clone(series);
        }
        if routes.len() >= self.max_routes {
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_routes = self.max_routes,
                    route = %route,
                    "route label cap reached: new routes are recorded as `{OVERFLOW_ROUTE}`"
                );
            }
            return Arc::clone(&self.overflow);
        }
        let route: Arc<str> = route.into();
        let series = Arc::new(Route::new(RouteSeries::new(
            Arc::clone(&route),
            Arc::clone(&self.core),
            self.recorder.clone(),
        )));
        routes.insert(route, Arc::clone(&series));
        series
    }

    /// How many distinct routes have their own series.
    #[cfg(test)]
    pub(crate) fn routes(&self) -> usize {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_shard_has_its_own_lane() {
        let core = Arc::new(Core::new(Duration::from_secs(60), 1, crate::Clock::Tokio));
        let registry = SeriesRegistry::new(core, RecorderRef::Global, 3);
        let route = registry.route(Cow::Borrowed("/r"));
        // A thread keeps its lane.
        assert!(Arc::ptr_eq(&route.lane(), &route.lane()));
        assert_eq!(route.lane().route(), "/r");
        // A thread on another shard takes another lane of the same route.
        let here = (shard(), route.lane());
        let there = std::iter::repeat_with(|| {
            let route = Arc::clone(&route);
            std::thread::spawn(move || (shard(), route.lane()))
                .join()
                .unwrap()
        })
        .take(2 * SHARDS)
        .find(|(shard, _)| *shard != here.0)
        .unwrap();
        assert!(!Arc::ptr_eq(&here.1, &there.1));
        assert_eq!(there.1.route(), "/r");
    }

    #[test]
    fn routes_are_capped() {
        let core = Arc::new(Core::new(Duration::from_secs(60), 1, crate::Clock::Tokio));
        let registry = SeriesRegistry::new(core, RecorderRef::Global, 3);
        for i in 0..10 {
            let series = registry.route(Cow::Owned(format!("/r{i}")));
            let expected = if i < 3 {
                format!("/r{i}")
            } else {
                OVERFLOW_ROUTE.to_owned()
            };
            assert_eq!(series.route(), expected);
        }
        assert_eq!(registry.routes(), 3);
        // Known routes still resolve to their own series.
        assert_eq!(registry.route(Cow::Borrowed("/r1")).route(), "/r1");
        assert!(Arc::ptr_eq(
            &registry.route(Cow::Borrowed("/r2")),
            &registry.route(Cow::Borrowed("/r2"))
        ));
    }
}
