//! A fallback: when the inner call fails (an error, or a response the policy calls a
//! failure), answer from a fallback service instead, and mark the answer degraded.
//!
//! The inner call consumes the request, so what the fallback needs from it (a record id,
//! a user id, the whole request head) is captured before the call by a [`Capture`], and
//! handed to the fallback service in a [`FallbackRequest`] together with the cause.
//!
//! Fallback answers are marked through [`MarkDegraded`]: for `http::Response` (feature
//! `http`), a [`Degraded`] extension and an `x-degraded: true` header, so that a cache
//! above can refuse to store them.

mod future;
mod layer;
mod policy;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::FallbackLayer;
pub use self::policy::{
    Capture, Degraded, FallbackCause, FallbackPolicy, FallbackRequest, MarkDegraded, NotDegraded,
    OnError,
};
pub use self::service::Fallback;
