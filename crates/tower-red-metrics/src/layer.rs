//! The layer and its builder.

use std::sync::Arc;
use std::time::Duration;

use metrics::Recorder;
use tower_layer::Layer;

use crate::clock::Clock;
use crate::metrics::{RecorderRef, SeriesRegistry};
use crate::service::RedMetrics;
use crate::snapshot::RedMetricsHandle;
use crate::state::Core;

/// Default length of the snapshot's duration window: 5 minutes.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Default number of steps the window moves by: 10 (of 30 s with the default window).
pub const DEFAULT_WINDOW_STEPS: u32 = 10;
/// Default cap on distinct `route` label values: 1,000.
pub const DEFAULT_MAX_ROUTES: usize = 1_000;

/// The state shared by a layer, its clones and every service they build.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    pub(crate) registry: SeriesRegistry,
}

/// Records rate, errors and duration of every request through the inner service.
///
/// `L` reads the labels of a request ([`ExtractLabels`](crate::ExtractLabels)), `C` decides
/// how a response ended ([`Classify`](crate::Classify)). With the `http` feature,
/// [`RedMetricsLayer::new`] gives the HTTP/gRPC defaults.
///
/// Clones, and every service built by [`Layer::layer`], share one set of figures.
#[derive(Debug, Clone)]
pub struct RedMetricsLayer<L, C> {
    shared: Arc<Shared>,
    labels: L,
    classify: C,
}

impl<L, C> RedMetricsLayer<L, C> {
    /// A handle on this layer's in-process figures.
    #[must_use]
    pub fn handle(&self) -> RedMetricsHandle {
        RedMetricsHandle::new(Arc::clone(&self.shared.core))
    }
}

impl<S, L: Clone, C: Clone> Layer<S> for RedMetricsLayer<L, C> {
    type Service = RedMetrics<S, L, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RedMetrics::new(
            inner,
            Arc::clone(&self.shared),
            self.labels.clone(),
            self.classify.clone(),
        )
    }
}

/// Configures a [`RedMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RedMetricsLayerBuilder<L, C> {
    labels: L,
    classify: C,
    window: Duration,
    steps: u32,
    max_routes: usize,
    recorder: RecorderRef,
    clock: Clock,
}

/// The former name of [`RedMetricsLayerBuilder`].
#[deprecated(
    since = "0.1.1",
    note = "renamed `RedMetricsLayerBuilder`, after the layer it builds"
)]
pub type RedMetricsBuilder<L, C> = RedMetricsLayerBuilder<L, C>;

impl<L, C> RedMetricsLayerBuilder<L, C> {
    /// A builder that reads labels with `labels` and classifies responses with `classify`.
    pub fn new(labels: L, classify: C) -> Self {
        Self {
            labels,
            classify,
            window: DEFAULT_WINDOW,
            steps: DEFAULT_WINDOW_STEPS,
            max_routes: DEFAULT_MAX_ROUTES,
            recorder: RecorderRef::Global,
            clock: Clock::default(),
        }
    }

    /// Reads request labels with `labels` instead.
    pub fn labels<L2>(self, labels: L2) -> RedMetricsLayerBuilder<L2, C> {
        RedMetricsLayerBuilder {
            labels,
            classify: self.classify,
            window: self.window,
            steps: self.steps,
            max_routes: self.max_routes,
            recorder: self.recorder,
            clock: self.clock,
        }
    }

    /// Classifies responses with `classify` instead.
    pub fn classify<C2>(self, classify: C2) -> RedMetricsLayerBuilder<L, C2> {
        RedMetricsLayerBuilder {
            labels: self.labels,
            classify,
            window: self.window,
            steps: self.steps,
            max_routes: self.max_routes,
            recorder: self.recorder,
            clock: self.clock,
        }
    }

    /// The sliding window of the snapshot's durations (default 5 minutes; at least 1 s).
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_secs(1));
        self
    }

    /// How many steps the window moves by (default 10; 1 to 60). A sample leaves the
    /// window between `window - window / steps` and `window` after it was recorded.
    /// Each step costs 18 KiB.
    #[must_use]
    pub fn window_steps(mut self, steps: u32) -> Self {
        self.steps = steps.clamp(1, 60);
        self
    }

    /// Caps the number of distinct `route` labels (default 1,000). Past the cap, new
    /// routes are recorded as [`OVERFLOW_ROUTE`](crate::OVERFLOW_ROUTE), with one warning.
    /// Each route costs about 1 KiB, plus 1.5 KiB for each method seen on it, plus
    /// 256 bytes for each of the (at most 8) thread shards that recorded a request on it.
    #[must_use]
    pub fn max_routes(mut self, max_routes: usize) -> Self {
        self.max_routes = max_routes;
        self
    }

    /// Times requests with `clock` (default [`Clock::Monotonic`]). Tests that run with
    /// paused tokio time and check durations use [`Clock::Tokio`].
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Records into `recorder` rather than the global recorder: for tests, or to keep
    /// these metrics apart. A [`PrometheusRecorder`](metrics_exporter_prometheus::PrometheusRecorder)
    /// from [`PrometheusConfig::build`](crate::PrometheusConfig::build) renders them.
    #[must_use]
    pub fn recorder<R>(mut self, recorder: R) -> Self
    where
        R: Recorder + Send + Sync + 'static,
    {
        self.recorder = RecorderRef::Local(Arc::new(recorder));
        self
    }

    /// Records into a shared `recorder` rather than the global recorder.
    #[must_use]
    pub fn shared_recorder(mut self, recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        self.recorder = RecorderRef::Local(recorder);
        self
    }

    /// Builds the layer, describing its metrics to the recorder.
    ///
    /// Install the global recorder (e.g. with
    /// [`PrometheusConfig::install`](crate::PrometheusConfig::install)) **before** this
    /// call when no recorder is given: metric handles are resolved once and kept.
    pub fn build(self) -> RedMetricsLayer<L, C> {
        self.recorder.describe();
        let core = Arc::new(Core::new(self.window, self.steps, self.clock));
        let registry = SeriesRegistry::new(Arc::clone(&core), self.recorder, self.max_routes);
        RedMetricsLayer {
            shared: Arc::new(Shared { core, registry }),
            labels: self.labels,
            classify: self.classify,
        }
    }
}
