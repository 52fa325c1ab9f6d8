use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::Sleep;

use crate::{BoxError, BreakerError};

/// The future of [`Timeout`](super::Timeout).
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    future: F,
    #[pin]
    sleep: Sleep,
    after: Duration,
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F, after: Duration) -> Self {
        Self {
            future,
            sleep: tokio::time::sleep(after),
            after,
        }
    }
}

impl<F, Res, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.future.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(after_ms = this.after.as_millis(), "call timed out");
                Poll::Ready(Err(Box::new(BreakerError::Timeout { after: *this.after })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
