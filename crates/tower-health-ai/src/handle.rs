//! The operator's view of a running stack: the seed's health and metrics JSON.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::time::Instant;
use tower_breaker::{CircuitBreakerHandle, CircuitBreakerSnapshot, State};
use tower_lru_cache::{CacheHandle, CacheSnapshot};
use tower_priority_queue::{QueueHandle, QueueSnapshot};
use tower_red_metrics::{DurationStats, PrometheusMetrics, RedMetricsHandle, RequestStats};
use tower_token_bucket::{RateLimitHandle, RateLimitSnapshot};

use crate::degraded::{DegradedCounters, DegradedStats};

/// What the handle reads, gathered when the stack is built.
pub(crate) struct Parts {
    pub(crate) red: RedMetricsHandle,
    pub(crate) per_user:
        RateLimitHandle<<crate::stack::UserKey as tower_token_bucket::KeyExtractor>::Key>,
    pub(crate) global: RateLimitHandle<()>,
    pub(crate) cache: CacheHandle,
    pub(crate) queue: QueueHandle,
    pub(crate) breaker: CircuitBreakerHandle,
    pub(crate) upstream_calls: Arc<AtomicU64>,
    pub(crate) degraded: Arc<DegradedCounters>,
    pub(crate) cost_per_call_usd: f64,
    pub(crate) prometheus: Option<PrometheusMetrics>,
}

/// A cheap, cloneable handle on a [`HealthAiStack`](crate::HealthAiStack): the seed's
/// health and metrics JSON, and (with the `axum` feature) ready-made routes.
#[derive(Clone)]
pub struct HealthAiHandle {
    parts: Arc<Parts>,
    started: Instant,
}

impl fmt::Debug for HealthAiHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthAiHandle")
            .field("circuit", &self.parts.breaker.state())
            .field(
                "upstream_calls",
                &self.parts.upstream_calls.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl HealthAiHandle {
    pub(crate) fn new(parts: Parts) -> Self {
        Self {
            parts: Arc::new(parts),
            started: Instant::now(),
        }
    }

    /// The seed's health JSON: `degraded` while the circuit is not closed.
    #[must_use]
    pub fn health(&self) -> Health {
        let state = self.parts.breaker.state();
        Health {
            status: if state == State::Closed {
                HealthStatus::Healthy
            } else {
                HealthStatus::Degraded
            },
            uptime: self.started.elapsed().as_secs(),
            circuit_breaker: CircuitBreakers { ai_service: state },
        }
    }

    /// The seed's metrics JSON, read now.
    #[must_use]
    pub fn metrics(&self) -> MetricsReport {
        let parts = &self.parts;
        let red = parts.red.snapshot();
        let cache = parts.cache.snapshot();
        let upstream_calls = parts.upstream_calls.load(Ordering::Relaxed);
        let cost = parts.cost_per_call_usd;
        // Answers served without a call of their own: fresh hits, and identical
        // concurrent requests that shared one call.
        let saved_calls = cache.hits + cache.coalesced;
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let (spent_usd, saved_usd) = (upstream_calls as f64 * cost, saved_calls as f64 * cost);
        MetricsReport {
            requests: red.requests,
            duration: red.duration,
            cache,
            queue: parts.queue.snapshot(),
            circuit_breaker: parts.breaker.snapshot(),
            rate_limit: RateLimits {
                per_user: parts.per_user.snapshot(),
                global: parts.global.snapshot(),
            },
            cost: Cost {
                upstream_calls,
                cost_per_call_usd: cost,
                spent_usd,
                saved_usd,
            },
            degraded: parts.degraded.snapshot(),
        }
    }

    /// The circuit breaker's state now.
    #[must_use]
    pub fn circuit_state(&self) -> State {
        self.parts.breaker.state()
    }

    /// Degraded (fallback) answers so far, by reason.
    #[must_use]
    pub fn degraded(&self) -> DegradedStats {
        self.parts.degraded.snapshot()
    }

    /// Calls that reached the upstream service so far.
    #[must_use]
    pub fn upstream_calls(&self) -> u64 {
        self.parts.upstream_calls.load(Ordering::Relaxed)
    }

    /// The breaker's handle (force open/closed, reset).
    #[must_use]
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.parts.breaker
    }

    /// The cache's handle (invalidation).
    #[must_use]
    pub fn cache(&self) -> &CacheHandle {
        &self.parts.cache
    }

    /// The Prometheus handle given to the builder, if any.
    #[must_use]
    pub fn prometheus(&self) -> Option<&PrometheusMetrics> {
        self.parts.prometheus.as_ref()
    }
}

/// `healthy` or `degraded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The circuit is closed.
    Healthy,
    /// The circuit is open or half-open: answers may come from the fallback.
    Degraded,
}

/// The seed's health JSON:
/// `{"status":"healthy","uptime":12,"circuitBreaker":{"aiService":"CLOSED"}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Health {
    /// `healthy` while the circuit is closed, else `degraded`.
    pub status: HealthStatus,
    /// Seconds since the stack was built.
    pub uptime: u64,
    /// The circuit's state.
    pub circuit_breaker: CircuitBreakers,
}

/// The circuit states in the health JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CircuitBreakers {
    /// The upstream AI service's circuit: `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub ai_service: State,
}

/// The seed's metrics JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct MetricsReport {
    /// `{total, success, errors, errorRate, rateLimited, clientErrors, ...}`: every
    /// request the stack answered, refusals included; `errorRate` is a percentage
    /// (`5.0` is 5 %), as in the seed.
    pub requests: RequestStats,
    /// `{avg, p50, p95, p99}` in milliseconds, over the RED layer's window.
    pub duration: DurationStats,
    /// `{hits, misses, hitRate, ...}`; `hitRate` is a percentage (`60.0` is 60 %), as in
    /// the seed.
    pub cache: CacheSnapshot,
    /// `{queueSize, processing, urgent, high, normal, low}`.
    pub queue: QueueSnapshot,
    /// The breaker's state and counts.
    pub circuit_breaker: CircuitBreakerSnapshot,
    /// Both limiters' settings and counts.
    pub rate_limit: RateLimits,
    /// What the upstream cost, and what the cache saved.
    pub cost: Cost,
    /// Answers given by the fallback (marked degraded), by reason: counted apart from
    /// real answers, though `requests` counts them as successes (clients got a 200).
    pub degraded: DegradedStats,
}

/// The limiters in the metrics JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RateLimits {
    /// The per-user limiter.
    pub per_user: RateLimitSnapshot,
    /// The global pace of upstream calls.
    pub global: RateLimitSnapshot,
}

/// The cost figures in the metrics JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Cost {
    /// Calls that reached the upstream (retries included).
    pub upstream_calls: u64,
    /// The configured cost of one call.
    pub cost_per_call_usd: f64,
    /// `upstreamCalls × costPerCallUsd`.
    pub spent_usd: f64,
    /// Answers served without a call of their own (cache hits and coalesced requests)
    /// `× costPerCallUsd`.
    pub saved_usd: f64,
}
