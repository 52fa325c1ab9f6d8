//! Counting the calls that really reach the upstream, for the cost figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tower_service::Service;

/// Counts every call made to the inner service (the upstream).
#[derive(Debug, Clone)]
pub struct CountCalls<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S> CountCalls<S> {
    pub(crate) fn new(inner: S, calls: Arc<AtomicU64>) -> Self {
        Self { inner, calls }
    }
}

impl<S, Req> Service<Req> for CountCalls<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}
