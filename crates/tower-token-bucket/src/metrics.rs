//! The metrics this crate records, and their recording.
//!
//! Counter handles are resolved with their labels when the layer is built, so a request
//! pays one atomic add, not a label lookup. Install the `metrics` recorder **before**
//! building the layer: handles resolved earlier stay bound to the no-op recorder.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

/// `ratelimit_decisions_total{limiter,decision}`: one per request that reached the
/// limiter, with `decision` one of [`ALLOWED`], [`REJECTED`], [`WAITED`].
pub const RATELIMIT_DECISIONS_TOTAL: &str = "ratelimit_decisions_total";
/// The `limiter` label: the name set on the builder.
pub const LABEL_LIMITER: &str = "limiter";
/// The `decision` label.
pub const LABEL_DECISION: &str = "decision";
/// Admitted at once.
pub const ALLOWED: &str = "allowed";
/// Refused (no tokens, cost too large, no key, key cap reached).
pub const REJECTED: &str = "rejected";
/// Admitted after waiting for tokens (wait mode).
pub const WAITED: &str = "waited";

/// A counter on its own cache line, so that the three counts do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

#[derive(Debug)]
pub(crate) struct Recorder {
    allowed: Counter,
    rejected: Counter,
    waited: Counter,
    n_allowed: Padded,
    n_rejected: Padded,
    n_waited: Padded,
}

impl Recorder {
    pub(crate) fn new(limiter: &str) -> Self {
        let counter = |decision: &'static str| {
            metrics::counter!(
                RATELIMIT_DECISIONS_TOTAL,
                LABEL_LIMITER => limiter.to_owned(),
                LABEL_DECISION => decision
            )
        };
        Self {
            allowed: counter(ALLOWED),
            rejected: counter(REJECTED),
            waited: counter(WAITED),
            n_allowed: Padded::default(),
            n_rejected: Padded::default(),
            n_waited: Padded::default(),
        }
    }

    #[inline]
    pub(crate) fn allowed(&self) {
        self.n_allowed.0.fetch_add(1, Ordering::Relaxed);
        self.allowed.increment(1);
    }

    pub(crate) fn rejected(&self) {
        self.n_rejected.0.fetch_add(1, Ordering::Relaxed);
        self.rejected.increment(1);
    }

    pub(crate) fn waited(&self) {
        self.n_waited.0.fetch_add(1, Ordering::Relaxed);
        self.waited.increment(1);
    }

    /// (allowed, rejected, waited)
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.n_allowed.0.load(Ordering::Relaxed),
            self.n_rejected.0.load(Ordering::Relaxed),
            self.n_waited.0.load(Ordering::Relaxed),
        )
    }
}
