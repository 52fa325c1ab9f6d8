//! The decision seam: "may this key spend this cost now, and if not, when?".

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::Quota;

/// The answer of a [`RateLimitBackend`] for one key and one cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The tokens were spent: let the request through.
    Allowed,
    /// Not enough tokens now. Nothing was spent; the same cost fits in `retry_after`
    /// (unless someone else spends the tokens first).
    Limited {
        /// How long until the cost fits.
        retry_after: Duration,
        /// The quota that refused.
        quota: Quota,
    },
    /// The cost is larger than the bucket of `quota`: it can never fit. Nothing was spent.
    CostTooLarge {
        /// The quota whose burst is too small.
        quota: Quota,
    },
    /// The key is not tracked yet and the limiter already tracks as many keys as it may.
    /// Nothing was spent. [`InMemoryBackend`](crate::InMemoryBackend) never answers this
    /// (it makes room instead); a backend that cannot make room may.
    KeyCapacity {
        /// When to try again: idle keys are pruned by then.
        retry_after: Duration,
    },
    /// The backend cannot decide now (a shared store is unreachable) and is configured
    /// to refuse rather than guess. Nothing was spent.
    Unavailable {
        /// When to try again.
        retry_after: Duration,
    },
}

/// Where rate-limit state lives and how decisions are made.
///
/// [`InMemoryBackend`](crate::InMemoryBackend) (governor's GCRA, in process) is the
/// default; a shared store (Redis) can implement this trait so that several instances
/// share one limit. A decision must be atomic: two concurrent checks never spend the same
/// token, and a check that does not return [`Decision::Allowed`] spends nothing.
///
/// The future is an associated type, so the in-process implementation returns
/// [`std::future::Ready`] and costs no allocation per request.
pub trait RateLimitBackend<K>: Send + Sync + 'static {
    /// The future of a decision.
    ///
    /// It is polled once, with a no-op waker, while the request is being called; a
    /// backend that answers in process is done by then and the request goes straight on.
    /// `Unpin` keeps that poll cheap: an `async` implementation returns a
    /// `Pin<Box<dyn Future<Output = Decision> + Send>>`.
    type Future: Future<Output = Decision> + Send + Unpin + 'static;

    /// Try to spend `cost` tokens of `key`.
    fn check(&self, key: &K, cost: NonZeroU32) -> Self::Future;

    /// The quotas enforced, in the order they are checked.
    fn quotas(&self) -> &[Quota];

    /// How many tokens `key` could spend now, if the backend can tell cheaply.
    fn remaining(&self, key: &K) -> Option<u32> {
        let _ = key;
        None
    }

    /// How many keys hold state, if the backend can tell cheaply.
    fn tracked_keys(&self) -> Option<usize> {
        None
    }
}
