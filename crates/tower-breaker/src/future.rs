//! The circuit breaker's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;

use crate::BreakerError;
use crate::classify::{BoxError, Classify, Verdict};
use crate::handle::Breaker;
use crate::machine::Permit;

/// The future of [`CircuitBreaker`](crate::CircuitBreaker): the inner call, whose result
/// is classified and counted when it completes, or an immediate refusal.
///
/// It adds 16 bytes to the inner future (a pointer to the breaker and an 8-byte permit)
/// and allocates nothing. Dropping it before it completes returns its half-open probe
/// slot, if it held one.
#[pin_project]
pub struct ResponseFuture<F, C> {
    #[pin]
    kind: Kind<F, C>,
}

#[pin_project(project = KindProj)]
enum Kind<F, C> {
    Called {
        #[pin]
        future: F,
        guard: PermitGuard<C>,
    },
    Refused {
        error: BreakerError,
    },
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, guard: PermitGuard<C>) -> Self {
        Self {
            kind: Kind::Called { future, guard },
        }
    }

    pub(crate) fn refused(error: BreakerError) -> Self {
        Self {
            kind: Kind::Refused { error },
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res>,
{
    type Output = Result<Res, BoxError>;

    // Always inlined: out of line, the response is copied once more on its way out.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, guard } => {
                // Built in the return slot and classified there: the response is moved
                // once, from the inner future to the caller.
                let output = Poll::Ready(ready!(future.poll(cx)).map_err(Into::into));
                if let Poll::Ready(result) = &output {
                    guard.complete(result);
                }
                output
            }
            KindProj::Refused { error } => Poll::Ready(Err(boxed(*error))),
        }
    }
}

/// A refusal as the boxed error callers see; out of line, off the closed path.
#[cold]
#[inline(never)]
fn boxed(error: BreakerError) -> BoxError {
    Box::new(error)
}

/// A permit that settles exactly once: with a verdict when the call completes, or as
/// cancelled when dropped first.
pub(crate) struct PermitGuard<C> {
    breaker: Arc<Breaker<C>>,
    permit: Permit,
}

impl<C> PermitGuard<C> {
    pub(crate) fn new(breaker: Arc<Breaker<C>>, permit: Permit) -> Self {
        Self { breaker, permit }
    }

    #[inline]
    fn complete<Res>(&mut self, result: &Result<Res, BoxError>)
    where
        C: Classify<Res>,
    {
        if !self.permit.is_settled() {
            let permit = std::mem::replace(&mut self.permit, Permit::SETTLED);
            let verdict: Verdict = self.breaker.classifier.classify(result);
            self.breaker.shared.record(permit, verdict);
        }
    }
}

impl<C> Drop for PermitGuard<C> {
    fn drop(&mut self) {
        if !self.permit.is_settled() {
            let permit = std::mem::replace(&mut self.permit, Permit::SETTLED);
            self.breaker.shared.release(permit);
        }
    }
}
