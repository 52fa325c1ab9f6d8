//! A simulated AI provider: `POST /v1/analyze` with configurable latency, failure rate,
//! capacity and call counters, so that the demo runs with no setup and tests can count the
//! calls that really reached the upstream.
//!
//! # The provider model
//!
//! - **Capacity**: at most [`SimulatorConfig::capacity`] calls run at once (default
//!   [`DEFAULT_CAPACITY`], 0 for unlimited), as a real AI provider's concurrency quota.
//!   A call above it is answered at once with `429 Too Many Requests`, a `Retry-After`
//!   header (whole seconds, rounded up, at least 1) and a `retry-after-ms` header (the
//!   exact wait, as some AI providers send it and their SDKs read it), by default
//!   [`DEFAULT_RETRY_AFTER`]. Such a call does no work and is **not billed**: it is
//!   counted in [`Simulator::overloaded`], not in [`Simulator::billed`].
//! - **Latency**: an admitted call takes a time drawn uniformly from
//!   [`SimulatorConfig::latency`] (the seed's provider: 45-90 s).
//! - **Failures**: an admitted call fails with 503 after its latency with probability
//!   [`SimulatorConfig::failure_rate`] (the seed's: 30%), independently of the others. A
//!   failed call has run, so it is billed.
//! - A call whose caller goes away (a timeout, a dropped connection) frees its slot at
//!   once.
//!
//! Latencies and failures are drawn from one seeded generator, in the order calls are
//! admitted; refused calls draw nothing, so the same seed gives the same sequence of
//! admitted calls whatever the capacity.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
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

/// The calls the simulated provider serves at once by default.
pub const DEFAULT_CAPACITY: usize = 8;

/// The wait an overloaded provider asks for by default, in its `Retry-After`.
///
/// Two seconds: long enough that a caller honouring it does not hammer a full provider,
/// short against a 45-90 s call, so that a slot freed meanwhile is not left idle for long.
/// (With 8 calls of 45-90 s in flight, a slot frees about every 8 s on average.)
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The `retry-after-ms` header: the exact wait in milliseconds, beside the whole seconds of
/// `Retry-After`.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

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
    /// The calls served at once; above it, a call is refused with 429 at once and not
    /// billed. 0 means unlimited.
    pub capacity: usize,
    /// The wait a refused call is asked for (`Retry-After`).
    pub retry_after: Duration,
}

impl SimulatorConfig {
    /// These latencies, failure rate and seed, with the default capacity
    /// ([`DEFAULT_CAPACITY`]) and `Retry-After` ([`DEFAULT_RETRY_AFTER`]).
    #[must_use]
    pub const fn new(latency: LatencyRange, failure_rate: f64, seed: u64) -> Self {
        Self {
            latency,
            failure_rate,
            seed,
            capacity: DEFAULT_CAPACITY,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

/// A simulated AI provider.
///
/// Serve it over HTTP with [`Simulator::router`], or call [`Simulator::analyze`]
/// in-process. It counts every call it receives, the calls it ran (billed) and the calls
/// it refused for want of capacity (not billed). See the [module docs](self) for the model.
#[derive(Debug)]
pub struct Simulator {
    latency: LatencyRange,
    failure_rate_bits: AtomicU64,
    capacity: usize,
    retry_after: Duration,
    rng: Mutex<SmallRng>,
    in_flight: AtomicUsize,
    calls: AtomicU64,
    billed: AtomicU64,
    overloaded: AtomicU64,
    failures: AtomicU64,
}

/// Why a simulated call gave no analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimulatedError {
    /// The call ran and failed: the provider answered 503 after its latency. Billed.
    Failed,
    /// The provider was at capacity: it answered 429 at once, asking the caller to wait
    /// `retry_after`. Not billed.
    Overloaded {
        /// The wait asked for.
        retry_after: Duration,
    },
}

impl fmt::Display for SimulatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed => f.write_str("the simulated provider failed (503)"),
            Self::Overloaded { retry_after } => write!(
                f,
                "the simulated provider is at capacity (429): retry after {} ms",
                retry_after.as_millis()
            ),
        }
    }
}

impl std::error::Error for SimulatedError {}

/// The simulated provider's counts, as served by the demo's `GET /api/simulator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SimulatorSnapshot {
    /// Calls received, refused ones included.
    pub calls: u64,
    /// Calls run: what the provider bills.
    pub billed: u64,
    /// Calls refused with 429 for want of capacity (not billed).
    pub overloaded: u64,
    /// Calls run that failed (503; billed).
    pub failures: u64,
    /// Calls running now.
    pub in_flight: usize,
    /// The capacity; `None` when unlimited.
    pub capacity: Option<usize>,
}

/// A running call's place in the provider's capacity, given back when dropped (also when
/// the caller goes away mid-call).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Simulator {
    /// A provider with these settings.
    #[must_use]
    pub fn new(config: SimulatorConfig) -> Arc<Self> {
        Arc::new(Self {
            latency: config.latency,
            failure_rate_bits: AtomicU64::new(config.failure_rate.clamp(0.0, 1.0).to_bits()),
            capacity: config.capacity,
            retry_after: config.retry_after,
            rng: Mutex::new(SmallRng::seed_from_u64(config.seed)),
            in_flight: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            billed: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The calls received so far, refused ones included.
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The calls run so far: what the provider bills (refused calls are not billed).
    #[must_use]
    pub fn billed(&self) -> u64 {
        self.billed.load(Ordering::Relaxed)
    }

    /// The calls refused with 429 so far, for want of capacity.
    #[must_use]
    pub fn overloaded(&self) -> u64 {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// The calls running now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The capacity: calls served at once; `None` when unlimited.
    #[must_use]
    pub fn capacity(&self) -> Option<usize> {
        (self.capacity != 0).then_some(self.capacity)
    }

    /// All the counts at once.
    #[must_use]
    pub fn snapshot(&self) -> SimulatorSnapshot {
        SimulatorSnapshot {
            calls: self.calls(),
            billed: self.billed(),
            overloaded: self.overloaded(),
            failures: self.failures(),
            in_flight: self.in_flight(),
            capacity: self.capacity(),
        }
    }

    /// The calls run that failed so far.
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Changes the failure rate from now on (an outage starts, or ends).
    pub fn set_failure_rate(&self, rate: f64) {
        self.failure_rate_bits
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Takes a slot if the provider is below its capacity.
    fn admit(&self) -> Option<Slot<'_>> {
        let mut running = self.in_flight.load(Ordering::Acquire);
        loop {
            if self.capacity != 0 && running >= self.capacity {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                running,
                running + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Slot(&self.in_flight)),
                Err(now) => running = now,
            }
        }
    }

    /// Answers one call: at capacity, refuses it at once; else waits the drawn latency,
    /// then fails or returns an analysis.
    ///
    /// # Errors
    ///
    /// [`SimulatedError::Overloaded`] at once when the provider is at capacity (not
    /// billed); [`SimulatedError::Failed`] after the latency for the share of calls set by
    /// the failure rate.
    pub async fn analyze(&self, request: &ProviderRequest) -> Result<Value, SimulatedError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let Some(_slot) = self.admit() else {
            self.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(SimulatedError::Overloaded {
                retry_after: self.retry_after,
            });
        };
        self.billed.fetch_add(1, Ordering::Relaxed);
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
            return Err(SimulatedError::Failed);
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
        Err(error @ SimulatedError::Failed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
        Err(error @ SimulatedError::Overloaded { retry_after }) => {
            let secs = retry_after_secs(retry_after);
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({ "error": error.to_string(), "retryAfter": secs })),
            )
                .into_response();
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            headers.insert(
                RETRY_AFTER_MS,
                HeaderValue::from(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)),
            );
            response
        }
    }
}

/// A wait as `Retry-After`'s whole seconds: rounded up, at least 1 (0 would invite an
/// immediate retry).
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
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
        let sim = Simulator::new(SimulatorConfig::new(
            LatencyRange::fixed(Duration::from_secs(45)),
            1.0,
            7,
        ));
        let req = ProviderRequest {
            record_id: "r".into(),
            user_id: "u".into(),
            context: None,
        };
        let start = tokio::time::Instant::now();
        assert_eq!(sim.analyze(&req).await, Err(SimulatedError::Failed));
        assert_eq!(start.elapsed(), Duration::from_secs(45));
        sim.set_failure_rate(0.0);
        assert!(sim.analyze(&req).await.is_ok());
        assert_eq!((sim.calls(), sim.failures()), (2, 1));
        assert_eq!((sim.billed(), sim.overloaded()), (2, 0));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
