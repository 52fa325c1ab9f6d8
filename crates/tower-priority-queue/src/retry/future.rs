//! The retry service's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;
use tower::BoxError;
use tower_service::Service;

use super::classify::Classify;
use super::policy::RetryPolicy;
use super::replay::Replay;
use super::service::BoxErrors;

/// The response future of [`Retry`](crate::Retry): the calls, the backoff sleeps between
/// them, and the final outcome. Dropping it cancels the current attempt and any backoff.
#[pin_project]
pub struct ResponseFuture<S, C, R, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    R: Replay<Req>,
{
    #[pin]
    inner: tower::retry::future::ResponseFuture<RetryPolicy<C, R>, BoxErrors<S>, Req>,
}

impl<S, C, R, Req> ResponseFuture<S, C, R, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    R: Replay<Req>,
{
    pub(crate) fn new(
        inner: tower::retry::future::ResponseFuture<RetryPolicy<C, R>, BoxErrors<S>, Req>,
    ) -> Self {
        ResponseFuture { inner }
    }
}

impl<S, C, R, Req> Future for ResponseFuture<S, C, R, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    R: Replay<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<S, C, R, Req> fmt::Debug for ResponseFuture<S, C, R, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    R: Replay<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
