//! The priority queue service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::BoxError;
use tower_service::Service;

use crate::error::QueueError;
use crate::future::ResponseFuture;
use crate::handle::QueueHandle;
use crate::priority::PriorityExtractor;
use crate::shared::{Admission, Permit, Shared};

/// Admits requests to the inner service by priority, at most N at a time; built by
/// [`PriorityQueueLayer`](crate::PriorityQueueLayer).
///
/// `poll_ready` is always ready: a request's priority is only known when it arrives, so
/// the wait for a slot happens in the response future, and a request that cannot wait is
/// refused with an error rather than held back. Once a request holds a slot, its future
/// drives a clone of the inner service to readiness and calls it, so `S` must be `Clone`
/// (as under `tower::buffer`, axum and tonic).
///
/// A slot is held from admission until the inner service's response future completes, or
/// until the response future is dropped, like tower's `ConcurrencyLimit`: a streaming
/// response body is not covered. A request that waits holds no slot.
///
/// Errors are [`BoxError`]: the queue's refusals are a boxed [`QueueError`], errors of the
/// inner service pass through unchanged.
pub struct PriorityQueue<S, E> {
    inner: S,
    extractor: E,
    shared: Arc<Shared>,
}

impl<S, E> PriorityQueue<S, E> {
    pub(crate) fn new(inner: S, extractor: E, shared: Arc<Shared>) -> Self {
        PriorityQueue {
            inner,
            extractor,
            shared,
        }
    }

    /// A handle on the queue's state.
    #[must_use]
    pub fn handle(&self) -> QueueHandle {
        QueueHandle::new(Arc::clone(&self.shared))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, E: Clone> Clone for PriorityQueue<S, E> {
    fn clone(&self) -> Self {
        PriorityQueue {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, E> fmt::Debug for PriorityQueue<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueue")
            .field("inner", &self.inner)
            .field("queue", &self.shared.settings.name)
            .finish_non_exhaustive()
    }
}

impl<S, E, Req> Service<Req> for PriorityQueue<S, E>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    E: PriorityExtractor<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let priority = match self.extractor.extract(&request) {
            Ok(priority) => priority,
            Err(error) => {
                if error == QueueError::InvalidPriority {
                    self.shared.metrics.invalid();
                    tracing::debug!(queue = %self.shared.settings.name, "invalid priority: request refused");
                }
                return ResponseFuture::failed(error);
            }
        };
        if self.shared.try_acquire() {
            let permit = Permit::new(Arc::clone(&self.shared));
            return ResponseFuture::admitted(permit, self.inner.clone(), request);
        }
        match self.shared.acquire_or_wait(priority, Instant::now()) {
            Admission::Admitted => {
                let permit = Permit::new(Arc::clone(&self.shared));
                ResponseFuture::admitted(permit, self.inner.clone(), request)
            }
            Admission::Waiting(guard) => {
                let max_wait = self.shared.settings.max_wait[priority.index()];
                ResponseFuture::waiting(guard, max_wait, self.inner.clone(), request)
            }
            Admission::Refused(error) => ResponseFuture::failed(error),
        }
    }
}
