//! A simulated AI provider: `POST /v1/analyze` with configurable latency, failure rate
//! and a call counter, so that the demo runs with no setup and tests can count the calls
//! that really reached the upstream.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A latency range in milliseconds, parsed from `"MS"` or `"MIN-MAX"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyRange {
    /// The shortest latency.
    pub min: Duration,
    /// The longest latency.
    pub max: Duration,
}

impl LatencyRange {
    /// A fixed latency.
    #[must_use]
    pub const fn fixed(latency: Duration) -> Self {
        Self {
            min: latency,
            max: latency,
        }
    }
}

impl FromStr for LatencyRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ms = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("`{t}` is not a number of milliseconds: {e}"))
        };
        let (min, max) = match s.split_once('-') {
            Some((lo, hi)) => (ms(lo)?, ms(hi)?),
            None => (ms(s)?, ms(s)?),
        };
        if min > max {
            return Err(format!(
                "latency range `{s}` has its minimum above its maximum"
            ));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for LatencyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min.as_millis(), self.max.as_millis())
    }
}

/// What the simulated provider receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRequest {
    /// The health record's id.
    pub record_id: String,
    /// Who asks.
    pub user_id: String,
    /// The caller's JSON context.
    #[serde(default)]
    pub context: Option<Value>,
}

/// The simulated provider's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatorConfig {
    /// How long each call takes, drawn uniformly from this range.
    pub latency: LatencyRange,
    /// The share of calls that fail with 503 after their latency, in `[0, 1]`.
    pub failure_rate: f64,
    /// The random seed: the same seed gives the same latencies and failures in order.
    pub seed: u64,
}

/// A simulated AI provider.
///
/// Serve it over HTTP with [`Simulator::router`], or call [`Simulator::analyze`]
/// in-process. It counts every call it receives.
#[derive(Debug)]
pub struct Simulator {
    latency: LatencyRange,
    failure_rate_bits: AtomicU64,
    rng: Mutex<SmallRng>,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// A simulated failure: the provider answered 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedFailure;

impl fmt::Display for SimulatedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the simulated provider failed (503)")
    }
}

impl std::error::Error for SimulatedFailure {}

impl Simulator {
    /// A provider with these settings.
    #[must_use]
    pub fn new(config: SimulatorConfig) -> Arc<Self> {
        Arc::new(Self {
            latency: config.latency,
            failure_rate_bits: AtomicU64::new(config.failure_rate.clamp(0.0, 1.0).to_bits()),
            rng: Mutex::new(SmallRng::seed_from_u64(config.seed)),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The calls received so far.
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The calls that failed so far.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Changes the failure rate from now on (an outage starts, or ends).
    pub fn set_failure_rate(&self, rate: f64) {
        self.failure_rate_bits
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Answers one call: waits the drawn latency, then fails or returns an analysis.
    ///
    /// # Errors
    ///
    /// [`SimulatedFailure`] for the share of calls set by the failure rate.
    pub async fn analyze(&self, request: &ProviderRequest) -> Result<Value, SimulatedFailure> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let failure_rate = f64::from_bits(self.failure_rate_bits.load(Ordering::Relaxed));
        let (latency, fails) = {
            // A poisoned lock only means another call panicked while drawing; the
            // generator's state is still a valid state.
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let latency = if self.latency.min == self.latency.max {
                self.latency.min
            } else {
                rng.random_range(self.latency.min..=self.latency.max)
            };
            (latency, rng.random_bool(failure_rate))
        };
        tokio::time::sleep(latency).await;
        if fails {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(SimulatedFailure);
        }
        Ok(simulated_analysis(request))
    }

    /// The provider's HTTP face: `POST /v1/analyze`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/analyze", post(analyze_handler))
            .with_state(Arc::clone(self))
    }
}

async fn analyze_handler(
    State(sim): State<Arc<Simulator>>,
    Json(request): Json<ProviderRequest>,
) -> Response {
    match sim.analyze(&request).await {
        Ok(analysis) => Json(analysis).into_response(),
        Err(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": failure.to_string() })),
        )
            .into_response(),
    }
}

/// The simulated model's answer: deterministic for a given request.
fn simulated_analysis(request: &ProviderRequest) -> Value {
    let fields = request
        .context
        .as_ref()
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len);
    json!({
        "summary": format!(
            "Simulated analysis of record {} ({fields} context fields).",
            request.record_id
        ),
        "riskLevel": if fields > 3 { "moderate" } else { "low" },
        "recommendations": ["Discuss the results at the next routine visit."],
        "model": "simulated-provider",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_ranges_parse() {
        assert_eq!(
            "250".parse::<LatencyRange>().unwrap(),
            LatencyRange::fixed(Duration::from_millis(250))
        );
        let r: LatencyRange = "45000-90000".parse().unwrap();
        assert_eq!(r.min, Duration::from_secs(45));
        assert_eq!(r.max, Duration::from_secs(90));
        assert!("9-1".parse::<LatencyRange>().is_err());
        assert!("x".parse::<LatencyRange>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_and_failures_follow_the_settings() {
        let sim = Simulator::new(SimulatorConfig {
            latency: LatencyRange::fixed(Duration::from_secs(45)),
            failure_rate: 1.0,
            seed: 7,
        });
        let req = ProviderRequest {
            record_id: "r".into(),
            user_id: "u".into(),
            context: None,
        };
        let start = tokio::time::Instant::now();
        assert_eq!(sim.analyze(&req).await, Err(SimulatedFailure));
        assert_eq!(start.elapsed(), Duration::from_secs(45));
        sim.set_failure_rate(0.0);
        assert!(sim.analyze(&req).await.is_ok());
        assert_eq!((sim.calls(), sim.failures()), (2, 1));
    }
}
