//! The circuit breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;

use crate::BreakerError;
use crate::classify::{BoxError, Classify};
use crate::handle::Shared;
use crate::machine::Permit;

/// The future of [`CircuitBreaker`](crate::CircuitBreaker): the inner call, whose result
/// is classified and counted when it completes, or an immediate refusal.
///
/// Dropping it before it completes returns its half-open probe slot, if it held one.
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F, C> {
    #[pin]
    kind: Kind<F, C>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<F, C> {
    Called {
        #[pin]
        future: F,
        guard: PermitGuard,
        classifier: C,
    },
    Refused {
        error: BreakerError,
    },
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, guard: PermitGuard, classifier: C) -> Self {
        Self {
            kind: Kind::Called {
                future,
                guard,
                classifier,
            },
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                guard,
                classifier,
            } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                guard.complete(classifier.classify(&result));
                Poll::Ready(result)
            }
            KindProj::Refused { error } => Poll::Ready(Err(Box::new(*error))),
        }
    }
}

/// A permit that settles exactly once: with a verdict when the call completes, or as
/// cancelled when dropped first.
#[derive(Debug)]
pub(crate) struct PermitGuard {
    shared: Arc<Shared>,
    permit: Option<Permit>,
}

impl PermitGuard {
    pub(crate) fn new(shared: Arc<Shared>, permit: Permit) -> Self {
        Self {
            shared,
            permit: Some(permit),
        }
    }

    fn complete(&mut self, verdict: crate::Verdict) {
        if let Some(permit) = self.permit.take() {
            self.shared.record(permit, verdict);
        }
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.shared.release(permit);
        }
    }
}
