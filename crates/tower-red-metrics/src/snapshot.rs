//! The in-process figures: a cheap handle and the snapshot it takes.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::state::Core;

/// Request counts since the layer was built, by class.
///
/// `total == success + errors + rate_limited + client_errors`, always, in every snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RequestStats {
    /// Every request recorded.
    pub total: u64,
    /// 1xx-3xx and gRPC `OK`.
    pub success: u64,
    /// 5xx, non-OK gRPC (other than `RESOURCE_EXHAUSTED`), service and body errors.
    pub errors: u64,
    /// `errors / total` as a percentage, from 0.0 to 100.0 (0.0 before the first
    /// request); `errorRate` in the JSON, as the seed's `/api/metrics` has it (`5.0` is
    /// 5 %).
    #[serde(rename = "errorRate")]
    pub error_rate_percent: f64,
    /// 429 and gRPC `RESOURCE_EXHAUSTED`.
    pub rate_limited: u64,
    /// Other 4xx, and requests cancelled by the caller.
    pub client_errors: u64,
}

/// Request durations over the sliding window, in milliseconds (0.0 when the window is
/// empty). Each figure is within 0.39 % of a real sample
/// ([`DURATION_RELATIVE_ERROR`](crate::DURATION_RELATIVE_ERROR)); a request that took
/// longer than 2^42 ns (about 73 minutes) counts as taking that long.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DurationStats {
    /// Mean duration.
    pub avg: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// A point-in-time view of a RED metrics layer, serialized as
/// `{"requests":{"total",..,"errorRate","rateLimited","clientErrors"},"duration":{"avg","p50","p95","p99"}}`.
///
/// It holds nothing from other crates, so an application can place other snapshots
/// (cache, queue, breaker, limiter) beside it in its own JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RedSnapshot {
    /// Counts since the layer was built.
    pub requests: RequestStats,
    /// Durations over the window.
    pub duration: DurationStats,
}

/// A cheap, cloneable handle on a layer's in-process figures.
///
/// Obtained from [`RedMetricsLayer::handle`](crate::RedMetricsLayer::handle); every
/// clone of the layer, and every service it built, records into the same figures.
#[derive(Debug, Clone)]
pub struct RedMetricsHandle {
    core: Arc<Core>,
}

impl RedMetricsHandle {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// The figures now. Costs one pass over the window's buckets (tens of microseconds);
    /// meant for a status endpoint, not for every request.
    #[must_use]
    pub fn snapshot(&self) -> RedSnapshot {
        self.core.snapshot()
    }

    /// The length of the sliding window that `duration` covers.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.core.window()
    }
}
