//! The circuit breaker service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use crate::BreakerError;
use crate::classify::{BoxError, Classify};
use crate::future::{PermitGuard, ResponseFuture};
use crate::handle::{CircuitBreakerHandle, Shared};
use crate::machine::Permit;

/// A circuit breaker around a service; built by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// The breaker decides in `poll_ready`: when the circuit refuses, `poll_ready` is ready at
/// once without polling the inner service, and `call` fails fast with
/// [`BreakerError::CircuitOpen`], so an open circuit never waits on (or touches) the inner
/// service. When admitted, `poll_ready` waits on the inner service's readiness.
///
/// Clones share the breaker; each clone has its own admission.
pub struct CircuitBreaker<S, C> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
    admission: Option<Result<Permit, BreakerError>>,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        Self {
            inner,
            shared,
            classifier,
            admission: None,
        }
    }

    /// A handle on the breaker this service shares.
    #[must_use]
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(Arc::clone(&self.shared))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            Arc::clone(&self.shared),
            self.classifier.clone(),
        )
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, C> Drop for CircuitBreaker<S, C> {
    fn drop(&mut self) {
        // Admitted in `poll_ready` but never called: give the permit back.
        if let Some(Ok(permit)) = self.admission.take() {
            self.shared.release(permit);
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self.admission.get_or_insert_with(|| self.shared.acquire());
        if admission.is_err() {
            // `call` returns the refusal; the inner service is not polled.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                let result: Result<S::Response, BoxError> = Err(error.into());
                if let Some(Ok(permit)) = self.admission.take() {
                    self.shared
                        .record(permit, self.classifier.classify(&result));
                }
                Poll::Ready(result.map(|_| ()))
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let admission = self
            .admission
            .take()
            .unwrap_or_else(|| self.shared.acquire());
        match admission {
            Ok(mut permit) => {
                if self.shared.times_calls() {
                    // Time the call itself, not the wait for readiness.
                    permit.restart(Instant::now());
                }
                let guard = PermitGuard::new(Arc::clone(&self.shared), permit);
                ResponseFuture::called(self.inner.call(request), guard, self.classifier.clone())
            }
            Err(error) => ResponseFuture::refused(error),
        }
    }
}
