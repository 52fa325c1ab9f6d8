//! Retry with full-jitter exponential backoff, `Retry-After`, a deadline and a retry
//! budget, on tower's [`retry`](tower::retry) machinery.
//!
//! [`RetryLayer`] wraps tower's [`Retry`](tower::retry::Retry) with a [`RetryPolicy`] that
//! asks a [`Classify`] whether an outcome is worth another attempt, copies requests with a
//! [`Replay`], waits a [`FullJitterBackoff`] (or longer, if the upstream's `Retry-After`
//! says so) and spends tower's [`TpsBudget`](tower::retry::budget::TpsBudget).
//!
//! A retry sends the request again, so it is made only where that cannot do harm: after a
//! failure that shows the upstream did not process the request (a refused connection, a
//! 429 or 503), for any request; after one where it may have (a timeout, a 500, a reset),
//! only for idempotent requests ([`Replay::is_idempotent`]: for HTTP, the method or an
//! `Idempotency-Key` header), or where the user declared the calls idempotent
//! ([`RetryLayerBuilder::idempotent`], [`RetryLayerBuilder::idempotent_if`]).

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
    Classify, ClassifyFn, RetryDecision, RetryErrors, classify_fn, is_not_processed,
    is_queue_refusal, is_timeout,
};
pub use self::future::ResponseFuture;
pub(crate) use self::handle::RetryStats;
pub use self::handle::{RetryHandle, RetrySnapshot};
#[cfg(feature = "http")]
pub use self::http::{HttpClassifier, HttpReplay, IDEMPOTENCY_KEY, clone_request, retry_after};
#[allow(deprecated)]
pub use self::layer::RetryBuilder;
pub use self::layer::{RetryLayer, RetryLayerBuilder};
pub use self::policy::RetryPolicy;
pub use self::replay::{CloneReplay, IdempotentIf, Replay};
pub use self::service::Retry;
