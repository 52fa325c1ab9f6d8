//! Degraded answers: why the fallback answered, counted apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;
use serde::Serialize;
use tower::BoxError;
use tower_breaker::BreakerError;
use tower_priority_queue::QueueError;
use tower_token_bucket::RateLimitError;

use crate::deadline::DeadlineExceeded;
use crate::policy::UpstreamAnswered;
use crate::refusal::GLOBAL_LIMITER;

/// Counter `degraded_total{reason}`: answers given by the fallback, marked degraded, with
/// `reason` one of [`DegradeReason::ALL`]'s [labels](DegradeReason::as_str).
pub const DEGRADED_TOTAL: &str = "degraded_total";

/// Why a request got the fallback's answer instead of a real one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DegradeReason {
    /// The upstream failed for good (an error or a timeout, after retries).
    UpstreamFailure,
    /// The circuit was open.
    CircuitOpen,
    /// The waiting room was full, or a higher priority took this request's place.
    QueueFull,
    /// The request waited for a slot longer than its level allows.
    QueueTimeout,
    /// The global pace would have made it wait longer than allowed.
    PaceWait,
    /// The request's deadline passed.
    Deadline,
    /// The upstream asked for a pause (`Retry-After`) longer than the request may wait.
    CoolingDown,
    /// The upstream was still overloaded (429, or 503 with a wait) after the retries.
    UpstreamOverloaded,
}

impl DegradeReason {
    /// Every reason, in the order of [`DegradedStats`]'s fields.
    pub const ALL: [Self; 8] = [
        Self::UpstreamFailure,
        Self::CircuitOpen,
        Self::QueueFull,
        Self::QueueTimeout,
        Self::PaceWait,
        Self::Deadline,
        Self::CoolingDown,
        Self::UpstreamOverloaded,
    ];

    /// The `reason` label: `upstream_failure`, `circuit_open`, `queue_full`,
    /// `queue_timeout`, `pace_wait`, `deadline`, `cooldown` or `upstream_overloaded`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamFailure => "upstream_failure",
            Self::CircuitOpen => "circuit_open",
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::PaceWait => "pace_wait",
            Self::Deadline => "deadline",
            Self::CoolingDown => "cooldown",
            Self::UpstreamOverloaded => "upstream_overloaded",
        }
    }

    /// The reason an error of the stack's lower layers gives; anything that is not one of
    /// the capacity refusals or an open circuit is an upstream failure.
    #[must_use]
    pub fn of(error: &BoxError) -> Self {
        if error.is::<DeadlineExceeded>() {
            return Self::Deadline;
        }
        if let Some(error) = error.downcast_ref::<QueueError>() {
            return match error {
                QueueError::QueueFull { .. } => Self::QueueFull,
                QueueError::QueueTimeout { .. } => Self::QueueTimeout,
                QueueError::CoolingDown { .. } => Self::CoolingDown,
                _ => Self::UpstreamFailure,
            };
        }
        if let Some(RateLimitError::RateLimited { limiter, .. }) = error.downcast_ref()
            && limiter == GLOBAL_LIMITER
        {
            return Self::PaceWait;
        }
        if error
            .downcast_ref::<BreakerError>()
            .is_some_and(BreakerError::is_circuit_open)
        {
            return Self::CircuitOpen;
        }
        if error
            .downcast_ref::<UpstreamAnswered>()
            .is_some_and(UpstreamAnswered::is_overload)
        {
            return Self::UpstreamOverloaded;
        }
        Self::UpstreamFailure
    }

    /// Whether the reason is our capacity (the queue, the pace, the deadline), rather than
    /// the upstream.
    pub(crate) const fn is_capacity(self) -> bool {
        matches!(
            self,
            Self::QueueFull
                | Self::QueueTimeout
                | Self::PaceWait
                | Self::Deadline
                | Self::CoolingDown
        )
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Degraded answers by reason, for the metrics JSON (`degraded`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DegradedStats {
    /// Every degraded answer.
    pub total: u64,
    /// The upstream failed for good.
    pub upstream_failure: u64,
    /// The circuit was open.
    pub circuit_open: u64,
    /// The waiting room was full, or the request was displaced.
    pub queue_full: u64,
    /// The queue wait passed its maximum.
    pub queue_timeout: u64,
    /// The global pace's wait passed its maximum.
    pub pace_wait: u64,
    /// The request's deadline passed.
    pub deadline: u64,
    /// The upstream's pause outlasted what the request could wait.
    pub cooldown: u64,
    /// The upstream was still overloaded after the retries.
    pub upstream_overloaded: u64,
}

/// The counts, and their Prometheus counters (resolved once, when the stack is built).
#[derive(Debug)]
pub(crate) struct DegradedCounters {
    counts: [AtomicU64; 8],
    counters: [Counter; 8],
}

impl DegradedCounters {
    pub(crate) fn new() -> Self {
        Self {
            counts: Default::default(),
            counters: DegradeReason::ALL
                .map(|reason| metrics::counter!(DEGRADED_TOTAL, "reason" => reason.as_str())),
        }
    }

    pub(crate) fn record(&self, reason: DegradeReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.counters[reason.index()].increment(1);
        tracing::info!(
            reason = reason.as_str(),
            "answered from the fallback, degraded"
        );
    }

    pub(crate) fn snapshot(&self) -> DegradedStats {
        let [
            upstream_failure,
            circuit_open,
            queue_full,
            queue_timeout,
            pace_wait,
            deadline,
            cooldown,
            upstream_overloaded,
        ] = self
            .counts
            .each_ref()
            .map(|count| count.load(Ordering::Relaxed));
        DegradedStats {
            total: upstream_failure
                + circuit_open
                + queue_full
                + queue_timeout
                + pace_wait
                + deadline
                + cooldown
                + upstream_overloaded,
            upstream_failure,
            circuit_open,
            queue_full,
            queue_timeout,
            pace_wait,
            deadline,
            cooldown,
            upstream_overloaded,
        }
    }
}

/// A degraded answer not counted yet, in the answer's extensions.
///
/// The fallback runs below the cache, which may hand its answer to every identical
/// request coalesced onto the call, or replace it with a stale real answer. So the
/// fallback only marks its answer, and [`RequestDeadline`](crate::RequestDeadline), on
/// the way out of the stack, counts each answer a client gets: a coalesced request's copy
/// counts too, and an answer the cache replaced does not.
#[derive(Clone)]
pub(crate) struct Uncounted {
    reason: DegradeReason,
    counters: Arc<DegradedCounters>,
}

impl Uncounted {
    pub(crate) fn new(reason: DegradeReason, counters: Arc<DegradedCounters>) -> Self {
        Self { reason, counters }
    }

    /// Counts `response` if it carries a degraded answer not counted yet.
    #[inline]
    pub(crate) fn count<B>(response: &mut http::Response<B>) {
        if let Some(Self { reason, counters }) = response.extensions_mut().remove::<Self>() {
            counters.record(reason);
        }
    }
}
