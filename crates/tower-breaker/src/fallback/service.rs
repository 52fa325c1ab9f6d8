use std::task::{Context, Poll};

use tower_service::Service;

use super::{Capture, FallbackPolicy, FallbackRequest, MarkDegraded, ResponseFuture};
use crate::BoxError;

/// Answers failed calls from a fallback service, marked degraded; built by
/// [`FallbackLayer`](super::FallbackLayer).
///
/// The fallback service is cloned into a call's future (keep it cheap to clone, such as a
/// `service_fn` over a plain function or an `Arc`), and is polled for readiness only when
/// it is needed.
#[derive(Clone, Debug)]
pub struct Fallback<S, Cap, F, P> {
    inner: S,
    capture: Cap,
    fallback: F,
    policy: P,
}

impl<S, Cap, F, P> Fallback<S, Cap, F, P> {
    /// Wraps `inner`.
    pub const fn new(inner: S, capture: Cap, fallback: F, policy: P) -> Self {
        Self {
            inner,
            capture,
            fallback,
            policy,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Cap, F, P, Req> Service<Req> for Fallback<S, Cap, F, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: MarkDegraded,
    Cap: Capture<Req>,
    F: Service<FallbackRequest<Cap::Context, S::Response>, Response = S::Response> + Clone,
    F::Error: Into<BoxError>,
    P: FallbackPolicy<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F, P, Cap::Context, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let context = self.capture.capture(&request);
        ResponseFuture::new(
            self.inner.call(request),
            context,
            self.fallback.clone(),
            self.policy.clone(),
        )
    }
}
