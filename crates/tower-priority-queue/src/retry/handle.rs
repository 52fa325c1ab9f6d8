//! A cheap handle on a retry layer's counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counts of the retry decisions that are not the common case, kept off the hot path:
/// a request that is answered at once touches none of them.
#[derive(Debug, Default)]
pub(crate) struct RetryStats {
    retried: AtomicU64,
    exhausted: AtomicU64,
    budget_exhausted: AtomicU64,
    deadline_exceeded: AtomicU64,
    not_replayable: AtomicU64,
    unsafe_to_repeat: AtomicU64,
}

impl RetryStats {
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn exhausted(&self) {
        self.exhausted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn deadline_exceeded(&self) {
        self.deadline_exceeded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn not_replayable(&self) {
        self.not_replayable.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unsafe_to_repeat(&self) {
        self.unsafe_to_repeat.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads a retry layer's counts; every service the layer builds shares them.
///
/// Cloning is one reference-count increment. Get one from
/// [`RetryLayer::handle`](crate::RetryLayer::handle).
#[derive(Clone, Debug)]
pub struct RetryHandle {
    stats: Arc<RetryStats>,
}

impl RetryHandle {
    pub(crate) fn new(stats: Arc<RetryStats>) -> Self {
        RetryHandle { stats }
    }

    /// The counts since the layer was built.
    #[must_use]
    pub fn snapshot(&self) -> RetrySnapshot {
        let stats = &*self.stats;
        RetrySnapshot {
            retried: stats.retried.load(Ordering::Relaxed),
            exhausted: stats.exhausted.load(Ordering::Relaxed),
            budget_exhausted: stats.budget_exhausted.load(Ordering::Relaxed),
            deadline_exceeded: stats.deadline_exceeded.load(Ordering::Relaxed),
            not_replayable: stats.not_replayable.load(Ordering::Relaxed),
            unsafe_to_repeat: stats.unsafe_to_repeat.load(Ordering::Relaxed),
        }
    }
}

/// A retry layer's counts at one moment (serialized with camelCase names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RetrySnapshot {
    /// Retries made.
    pub retried: u64,
    /// Requests that failed on their last allowed attempt.
    pub exhausted: u64,
    /// Retries refused by the retry budget.
    pub budget_exhausted: u64,
    /// Retries not made because they would have started past the deadline.
    pub deadline_exceeded: u64,
    /// Requests sent once because they could not be copied.
    pub not_replayable: u64,
    /// Failures not retried because repeating the request could do harm: the upstream
    /// may have processed it and it is not idempotent, or it timed out and the layer does
    /// not [retry timeouts](crate::RetryLayerBuilder::retry_timeouts) (counted as `returned`
    /// in `retry_attempts_total`).
    pub unsafe_to_repeat: u64,
}
