//! The response future.

use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;

use crate::classify::{Classify, Status};
use crate::state::Recording;

/// The future of [`RedMetrics`](crate::RedMetrics): the inner future, plus the request's
/// [`Recording`]. Dropped before it completes, it records the request as
/// [`Status::Cancelled`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F, C> {
    #[pin]
    inner: F,
    recording: Recording,
    classify: C,
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, recording: Recording, classify: C) -> Self {
        Self {
            inner,
            recording,
            classify,
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    C: Classify<Res>,
{
    type Output = Result<C::Output, E>;

    // Inlined into the caller, so that the response is built where the caller keeps it;
    // out of line, each move of a response (wider than 128 bytes with a body wrapper)
    // is a call to `memcpy`. The recording itself stays out of line.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(result) = this.inner.poll(cx) else {
            this.recording.mark_in_flight();
            return Poll::Pending;
        };
        let recording = mem::replace(this.recording, Recording::disarmed());
        Poll::Ready(match result {
            Ok(response) => Ok(this.classify.classify(response, recording)),
            Err(error) => {
                recording.finish(Status::Error);
                Err(error)
            }
        })
    }
}
