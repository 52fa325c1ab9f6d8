//! The metrics this crate records, and their recording.
//!
//! Counter handles are resolved with their labels when the layer is built, so a request
//! pays one atomic add, not a label lookup. Install the `metrics` recorder **before**
//! building the layer: handles resolved earlier stay bound to the no-op recorder.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// `ratelimit_backend_errors_total{limiter,reason}`: decisions a shared backend (Redis)
/// did not answer, with `reason` one of [`TIMEOUT`], [`ERROR`]. Each is then decided
/// by the backend's failure policy.
pub const RATELIMIT_BACKEND_ERRORS_TOTAL: &str = "ratelimit_backend_errors_total";
/// The `reason` label.
pub const LABEL_REASON: &str = "reason";
/// The backend did not answer within its timeout.
pub const TIMEOUT: &str = "timeout";
/// The backend answered with an error, or the connection failed.
pub const ERROR: &str = "error";

/// A counter on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

/// A count split over a few cache lines, each thread adding to its own, so that threads
/// admitting requests at the same time do not fight over one line.
#[derive(Debug, Default)]
struct Striped([Padded; STRIPES]);

const STRIPES: usize = 8;

impl Striped {
    #[inline]
    fn add(&self) {
        self.0[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's stripe, assigned round-robin on first use.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

#[derive(Debug)]
pub(crate) struct Recorder {
    allowed: Counter,
    rejected: Counter,
    waited: Counter,
    n_allowed: Striped,
    n_rejected: Striped,
    n_waited: Striped,
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
            n_allowed: Striped::default(),
            n_rejected: Striped::default(),
            n_waited: Striped::default(),
        }
    }

    #[inline]
    pub(crate) fn allowed(&self) {
        self.n_allowed.add();
        self.allowed.increment(1);
    }

    pub(crate) fn rejected(&self) {
        self.n_rejected.add();
        self.rejected.increment(1);
    }

    pub(crate) fn waited(&self) {
        self.n_waited.add();
        self.waited.increment(1);
    }

    /// (allowed, rejected, waited)
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.n_allowed.sum(),
            self.n_rejected.sum(),
            self.n_waited.sum(),
        )
    }
}
