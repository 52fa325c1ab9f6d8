//! The circuit breaker service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::BreakerError;
use crate::classify::{BoxError, Classify};
use crate::future::{PermitGuard, ResponseFuture};
use crate::handle::{Breaker, CircuitBreakerHandle};
use crate::machine::{Admission, Permit};

/// A circuit breaker around a service; built by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// The breaker decides in `poll_ready`: when the circuit refuses, `poll_ready` is ready at
/// once without polling the inner service, and `call` fails fast with
/// [`BreakerError::CircuitOpen`](crate::BreakerError::CircuitOpen), so an open circuit never waits on (or touches) the inner
/// service. When admitted, `poll_ready` waits on the inner service's readiness; if the
/// circuit changed state meanwhile (it opened while the inner service got ready), `call`
/// decides again, so that no call goes through a circuit that opened.
///
/// Clones share the breaker; each clone has its own admission. A clone dropped after
/// `poll_ready` admitted it gives its admission back (a half-open probe slot is freed).
pub struct CircuitBreaker<S, C> {
    inner: S,
    gate: Gate<C>,
}

/// The shared breaker, and this clone's admission: dropped while admitted (after
/// `poll_ready`, before `call`), it gives the permit back.
struct Gate<C> {
    breaker: Arc<Breaker<C>>,
    admission: Admission,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, breaker: Arc<Breaker<C>>) -> Self {
        Self {
            inner,
            gate: Gate {
                breaker,
                admission: Admission::UNCHECKED,
            },
        }
    }

    /// A handle on the breaker this service shares.
    #[must_use]
    pub fn handle(&self) -> CircuitBreakerHandle
    where
        C: Send + Sync + 'static,
    {
        CircuitBreakerHandle::new(self.gate.breaker.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one (an admission it holds is given back).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.gate.breaker))
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.gate.breaker)
            .finish_non_exhaustive()
    }
}

impl<C> Drop for Gate<C> {
    fn drop(&mut self) {
        // Admitted in `poll_ready` but never called: give the permit back.
        let admission = std::mem::replace(&mut self.admission, Admission::UNCHECKED);
        if let Some(Ok(permit)) = admission.into_result() {
            self.breaker.shared.release(permit);
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.gate.admission.is_unchecked() {
            self.gate.admission = self.gate.breaker.shared.admit();
        }
        if self.gate.admission.is_refused() {
            // `call` returns the refusal; the inner service is not polled.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                let result: Result<S::Response, BoxError> = Err(error.into());
                let admission = std::mem::replace(&mut self.gate.admission, Admission::UNCHECKED);
                if let Some(Ok(permit)) = admission.into_result() {
                    let verdict = self.gate.breaker.classifier.classify(&result);
                    self.gate.breaker.shared.record(permit, verdict);
                }
                Poll::Ready(result.map(|_| ()))
            }
        }
    }

    // Always inlined: a few instructions around the inner call, the rest out of line.
    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        let admission = std::mem::replace(&mut self.gate.admission, Admission::UNCHECKED);
        // The common case: admitted by `poll_ready`, untimed, and no state change since.
        let shared = &self.gate.breaker.shared;
        let permit =
            if admission.is_permit() && !shared.times_calls() && shared.is_current(&admission) {
                admission.into_permit()
            } else {
                match self.settle_admission(admission) {
                    Ok(permit) => permit,
                    Err(refusal) => return ResponseFuture::refused(refusal),
                }
            };
        let guard = PermitGuard::new(Arc::clone(&self.gate.breaker), permit);
        ResponseFuture::called(self.inner.call(request), guard)
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// `call`'s admission when leave was refused or not asked, or when calls are timed:
    /// the permit to call with, or the refusal to answer with.
    #[cold]
    #[inline(never)]
    fn settle_admission(&mut self, mut admission: Admission) -> Result<Permit, BreakerError> {
        if admission.is_unchecked()
            || (admission.is_permit() && !self.gate.breaker.shared.is_current(&admission))
        {
            // `call` without `poll_ready`, or admitted under a state that has changed
            // since (the circuit opened while the inner service got ready): decide now.
            // A permit of an earlier state holds nothing to give back.
            admission = self.gate.breaker.shared.admit();
        }
        match admission.into_result() {
            Some(Ok(mut permit)) => {
                if self.gate.breaker.shared.times_calls() {
                    // Time the call itself, not the wait for readiness.
                    self.gate.breaker.shared.restart(&mut permit);
                }
                Ok(permit)
            }
            Some(Err(rejected)) => Err(self.gate.breaker.shared.refused(rejected.retry_after)),
            None => Err(self.gate.breaker.shared.refused(None)),
        }
    }
}
