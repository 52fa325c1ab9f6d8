//! The retry service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;
use tower::BoxError;
use tower_service::Service;

use super::classify::Classify;
use super::future::ResponseFuture;
use super::policy::RetryPolicy;
use super::replay::Replay;

/// Retries failed calls to the inner service; built by [`RetryLayer`](crate::RetryLayer).
///
/// This is tower's [`tower::retry::Retry`] driven by a [`RetryPolicy`], with the inner
/// service's errors boxed into [`BoxError`] (unchanged, so they still downcast) so that
/// one classifier sees every layer's errors. Like tower's `Retry`, it clones the inner
/// service for each request, and keeps a copy of the request (see
/// [`Replay`](crate::Replay)) until the call succeeds or is not retried.
pub struct Retry<S, C, R> {
    inner: tower::retry::Retry<RetryPolicy<C, R>, BoxErrors<S>>,
}

impl<S, C, R> Retry<S, C, R> {
    pub(crate) fn new(inner: S, policy: RetryPolicy<C, R>) -> Self {
        Retry {
            inner: tower::retry::Retry::new(policy, BoxErrors { inner }),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner.get_ref().inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner.get_mut().inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner().inner
    }
}

impl<S: Clone, C, R> Clone for Retry<S, C, R> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for Retry<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", self.get_ref())
            .finish_non_exhaustive()
    }
}

impl<S, C, R, Req> Service<Req> for Retry<S, C, R>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
    R: Replay<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, C, R, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(request))
    }
}

/// The inner service with its errors boxed.
#[derive(Clone, Debug)]
pub(crate) struct BoxErrors<S> {
    inner: S,
}

impl<S, Req> Service<Req> for BoxErrors<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        BoxErrorsFuture {
            inner: self.inner.call(request),
        }
    }
}

/// The future of [`BoxErrors`].
#[pin_project]
#[derive(Debug)]
pub(crate) struct BoxErrorsFuture<F> {
    #[pin]
    inner: F,
}

impl<F, T, E> Future for BoxErrorsFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Into::into)
    }
}
