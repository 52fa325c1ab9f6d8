//! Counting the calls that really reach the upstream and are billed, for the cost figures.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::{Response, StatusCode};
use pin_project::pin_project;
use tower_service::Service;

/// Counts the calls made to the inner service (the upstream) that a provider bills: every
/// call except those it turned away with `429 Too Many Requests` (a provider over its
/// capacity refuses at once and does not bill). A call is counted when it ends, whether
/// with an answer or an error (a call that failed or timed out may have run, and been
/// billed); a call dropped before it ends is counted too.
#[derive(Debug, Clone)]
pub struct CountCalls<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S> CountCalls<S> {
    pub(crate) fn new(inner: S, calls: Arc<AtomicU64>) -> Self {
        Self { inner, calls }
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

impl<S, Req, B> Service<Req> for CountCalls<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CountCallsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        CountCallsFuture {
            inner: self.inner.call(request),
            calls: Some(Arc::clone(&self.calls)),
        }
    }
}

/// The response future of [`CountCalls`].
#[pin_project(PinnedDrop)]
#[derive(Debug)]
pub struct CountCallsFuture<F> {
    #[pin]
    inner: F,
    /// Taken when the call is counted (or found not billed).
    calls: Option<Arc<AtomicU64>>,
}

impl<F, B, E> Future for CountCallsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        if let Some(calls) = this.calls.take() {
            let refused = matches!(&output, Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS);
            if !refused {
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }
        Poll::Ready(output)
    }
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for CountCallsFuture<F> {
    fn drop(self: Pin<&mut Self>) {
        // Dropped before it ended: the call may have run.
        if let Some(calls) = self.project().calls.take() {
            calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}
