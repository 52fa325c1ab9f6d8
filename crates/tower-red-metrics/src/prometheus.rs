//! Prometheus exposition: install the recorder, render the text.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{KeyName, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::error::InstallError;

/// Default histogram buckets, in seconds: 1 ms to 10 minutes, dense where web requests
/// fall and reaching the minutes a slow upstream (an AI model call) can take.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 45.0,
    60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
];

/// The `content-type` of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The handle of the recorder installed by this crate, if any.
static INSTALLED: Mutex<Option<PrometheusMetrics>> = Mutex::new(None);

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
struct Description {
    kind: Kind,
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
}

/// Builds a Prometheus recorder (from `metrics-exporter-prometheus`, without its HTTP
/// listener) and installs it as the global `metrics` recorder.
///
/// Every histogram (this crate's `http_request_duration_seconds`, and other crates'
/// `*_seconds` histograms such as `queue_wait_seconds`) gets the same buckets,
/// [`DEFAULT_DURATION_BUCKETS`] unless changed, so that all are rendered as Prometheus
/// histograms. This crate's metrics are described (`# HELP`); describe other metrics with
/// [`describe_counter`](Self::describe_counter) and its siblings so that
/// `promtool check metrics` finds help text for every one.
#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    buckets: Vec<f64>,
    upkeep_interval: Duration,
    descriptions: Vec<Description>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PrometheusConfig {
    /// The defaults: [`DEFAULT_DURATION_BUCKETS`], upkeep every 5 seconds.
    #[must_use]
    pub fn new() -> Self {
        Self {
            buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            upkeep_interval: Duration::from_secs(5),
            descriptions: Vec::new(),
        }
    }

    /// The histogram buckets, in the histograms' unit (seconds for `*_seconds`).
    #[must_use]
    pub fn buckets(mut self, buckets: &[f64]) -> Self {
        self.buckets = buckets.to_vec();
        self
    }

    /// How often an installed recorder drains recorded histogram samples into their
    /// buckets when nobody renders (default 5 s), which bounds its memory. A background
    /// thread does this from [`install`](Self::install); after [`build`](Self::build),
    /// call [`PrometheusMetrics::run_upkeep`] yourself or render regularly. Intervals
    /// below 100 ms are raised to 100 ms; `Duration::MAX` means no upkeep but renders.
    #[must_use]
    pub fn upkeep_interval(mut self, interval: Duration) -> Self {
        self.upkeep_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Describes a counter (its `# HELP` line).
    #[must_use]
    pub fn describe_counter(self, name: &'static str, help: &'static str) -> Self {
        self.describe(Kind::Counter, name, None, help)
    }

    /// Describes a gauge (its `# HELP` line).
    #[must_use]
    pub fn describe_gauge(self, name: &'static str, help: &'static str) -> Self {
        self.describe(Kind::Gauge, name, None, help)
    }

    /// Describes a histogram (its `# HELP` line).
    #[must_use]
    pub fn describe_histogram(self, name: &'static str, help: &'static str) -> Self {
        self.describe(Kind::Histogram, name, None, help)
    }

    fn describe(
        mut self,
        kind: Kind,
        name: &'static str,
        unit: Option<Unit>,
        help: &'static str,
    ) -> Self {
        self.descriptions.push(Description {
            kind,
            name,
            unit,
            help,
        });
        self
    }

    /// Builds the recorder without installing it, for tests or for combining recorders:
    /// give the recorder to [`RedMetricsLayerBuilder::recorder`](crate::RedMetricsLayerBuilder::recorder)
    /// and render through the returned handle.
    ///
    /// # Errors
    ///
    /// [`InstallError::InvalidBuckets`] when the buckets are empty, not finite, or not
    /// strictly increasing.
    pub fn build(self) -> Result<(PrometheusRecorder, PrometheusMetrics), InstallError> {
        let valid = !self.buckets.is_empty()
            && self.buckets.iter().all(|b| b.is_finite())
            && self.buckets.windows(2).all(|pair| pair[0] < pair[1]);
        if !valid {
            return Err(InstallError::InvalidBuckets);
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets(&self.buckets)
            .map_err(|_| InstallError::InvalidBuckets)?
            .build_recorder();
        crate::metrics::describe(&recorder);
        for d in &self.descriptions {
            let name = KeyName::from_const_str(d.name);
            let help = d.help.into();
            match d.kind {
                Kind::Counter => recorder.describe_counter(name, d.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, d.unit, help),
                Kind::Histogram => recorder.describe_histogram(name, d.unit, help),
            }
        }
        let metrics = PrometheusMetrics {
            handle: recorder.handle(),
        };
        Ok((recorder, metrics))
    }

    /// Builds the recorder and installs it as the global `metrics` recorder, then starts a
    /// background thread (`red-metrics-upkeep`) that runs its upkeep.
    ///
    /// Call it once at startup, **before** building the layers whose metrics it should
    /// render. Calling it again returns the handle of the recorder installed the first
    /// time (this configuration is then ignored); it never panics.
    ///
    /// # Errors
    ///
    /// [`InstallError::AlreadyInstalled`] when a different recorder is already the global
    /// one; [`InstallError::InvalidBuckets`] as for [`build`](Self::build).
    pub fn install(self) -> Result<PrometheusMetrics, InstallError> {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(metrics) = installed.as_ref() {
            return Ok(metrics.clone());
        }
        let interval = self.upkeep_interval;
        let (recorder, metrics) = self.build()?;
        metrics::set_global_recorder(recorder).map_err(|_| InstallError::AlreadyInstalled)?;
        tracing::info!("Prometheus metrics recorder installed");
        let upkeep = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("red-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no upkeep thread: render regularly to bound histogram memory");
        }
        *installed = Some(metrics.clone());
        Ok(metrics)
    }
}

/// A cheap, cloneable handle that renders the recorder's metrics as Prometheus text.
#[derive(Debug, Clone)]
pub struct PrometheusMetrics {
    handle: PrometheusHandle,
}

impl PrometheusMetrics {
    /// The metrics, in the Prometheus text exposition format.
    #[must_use]
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// A `200 OK` response with the rendered text and the exposition `content-type`.
    #[cfg(feature = "http")]
    #[must_use]
    pub fn render_response<B: From<String>>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.render()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        );
        response
    }

    /// Drains recorded histogram samples into their buckets.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The underlying `metrics-exporter-prometheus` handle.
    #[must_use]
    pub fn prometheus_handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}
