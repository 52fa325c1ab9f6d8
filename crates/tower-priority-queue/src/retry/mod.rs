//! Retry with full-jitter exponential backoff, `Retry-After`, a deadline and a retry
//! budget, on tower's [`retry`](tower::retry) machinery.
//!
//! [`RetryLayer`] wraps tower's [`Retry`](tower::retry::Retry) with a [`RetryPolicy`] that
//! asks a [`Classify`] whether an outcome is worth another attempt, copies requests with a
//! [`Replay`], waits a [`FullJitterBackoff`] (or longer, if the upstream's `Retry-After`
//! says so) and spends tower's [`TpsBudget`](tower::retry::budget::TpsBudget).

mod backoff;
mod budget;
mod classify;
#[cfg(feature = "http")]
mod http;
mod layer;
mod policy;
mod replay;
mod service;

mod future;
mod handle;

pub use self::backoff::{FullJitterBackoff, FullJitterBackoffMaker};
pub use self::classify::{
    Classify, ClassifyFn, RetryDecision, RetryErrors, classify_fn, is_queue_refusal,
};
pub use self::future::ResponseFuture;
pub(crate) use self::handle::RetryStats;
pub use self::handle::{RetryHandle, RetrySnapshot};
#[cfg(feature = "http")]
pub use self::http::{HttpClassifier, HttpReplay, clone_request, retry_after};
pub use self::layer::{RetryBuilder, RetryLayer};
pub use self::policy::RetryPolicy;
pub use self::replay::{CloneReplay, Replay};
pub use self::service::Retry;
