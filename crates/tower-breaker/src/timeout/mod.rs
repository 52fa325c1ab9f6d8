//! A call timeout whose refusal is typed: [`BreakerError::Timeout`](crate::BreakerError),
//! 504 over HTTP, `DEADLINE_EXCEEDED` over gRPC, and a failure for the breaker's default
//! classifier.
//!
//! Put it innermost, right around the upstream call, so that time spent waiting in
//! queues or limiters above it never counts as upstream slowness.

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::{DEFAULT_TIMEOUT, TimeoutLayer};
pub use self::service::Timeout;
