//! The priority queue service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tower::BoxError;
use tower_service::Service;

use crate::error::QueueError;
use crate::future::ResponseFuture;
use crate::handle::QueueHandle;
use crate::overload::{OverloadClassifier, TimeoutOverload};
use crate::priority::{Priority, PriorityExtractor};
use crate::shared::{Admission, Permit, Shared};

/// Admits requests to the inner service by priority, at most N at a time; built by
/// [`PriorityQueueLayer`](crate::PriorityQueueLayer).
///
/// `poll_ready` is always ready: a request's priority is only known when it arrives, so
/// the wait for a slot happens in the response future, and a request that cannot wait is
/// refused with an error rather than held back. Once a request holds a slot, the inner
/// service is called at once if it is ready; otherwise the response future drives it to
/// readiness and then calls it, so `S` must be `Clone` (as under `tower::buffer`, axum and
/// tonic).
///
/// Readiness may be a reservation (tower's `ConcurrencyLimit` and `Buffer`, tonic's
/// `Channel`): the instance that was polled is the one that is called. When the inner
/// service is polled at admission and is not ready, the response future takes that very
/// instance, with whatever it has reserved, and the queue keeps a fresh clone, as tower's
/// own middleware does. The time a request spends holding a slot while waiting for the
/// inner service's readiness counts against its level's
/// [maximum wait](crate::PriorityQueueLayerBuilder::max_wait): an inner service whose readiness stalls
/// cannot hold slots forever, and such a request is refused with
/// [`QueueError::QueueTimeout`].
///
/// A slot is held from admission until the inner service's response future completes, or
/// until the response future is dropped, like tower's `ConcurrencyLimit`: a streaming
/// response body is not covered. A request that waits holds no slot.
///
/// Errors are [`BoxError`]: the queue's refusals are a boxed [`QueueError`], errors of the
/// inner service pass through unchanged.
pub struct PriorityQueue<S, E, C = TimeoutOverload> {
    inner: S,
    extractor: E,
    classifier: C,
    shared: Arc<Shared>,
}

impl<S, E, C> PriorityQueue<S, E, C> {
    pub(crate) fn new(inner: S, extractor: E, classifier: C, shared: Arc<Shared>) -> Self {
        PriorityQueue {
            inner,
            extractor,
            classifier,
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

impl<S: Clone, E: Clone, C: Clone> Clone for PriorityQueue<S, E, C> {
    fn clone(&self) -> Self {
        PriorityQueue {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
            classifier: self.classifier.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, E, C> fmt::Debug for PriorityQueue<S, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueue")
            .field("inner", &self.inner)
            .field("queue", &self.shared.settings.name)
            .finish_non_exhaustive()
    }
}

impl<S, E, C: Clone> PriorityQueue<S, E, C> {
    /// Calls the inner service with a slot just taken.
    ///
    /// If the inner service is ready now (checked without registering a waker), it is
    /// called at once and the response future is just the inner one plus the slot: no
    /// allocation, no copy of the request into the future. Otherwise a clone of it is
    /// driven to readiness by the response future.
    #[inline]
    fn call_admitted<Req>(&mut self, priority: Priority, request: Req) -> ResponseFuture<S, Req, C>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        let permit = Permit::new(Arc::clone(&self.shared));
        let mut cx = Context::from_waker(Waker::noop());
        match self.inner.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {
                ResponseFuture::calling(permit, self.inner.call(request), self.classifier.clone())
            }
            Poll::Ready(Err(error)) => {
                ResponseFuture::failed(error.into(), self.classifier.clone())
            }
            Poll::Pending => self.call_not_ready(permit, priority, request),
        }
    }

    /// The inner service was polled and is not ready: the response future takes the polled
    /// instance (its readiness may be a reservation that belongs to it) and the queue keeps
    /// a clone.
    #[inline(never)]
    fn call_not_ready<Req>(
        &mut self,
        permit: Permit,
        priority: Priority,
        request: Req,
    ) -> ResponseFuture<S, Req, C>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        let fresh = self.inner.clone();
        let polled = std::mem::replace(&mut self.inner, fresh);
        let max_wait = self.shared.settings.max_wait[priority.index()];
        let classifier = self.classifier.clone();
        ResponseFuture::admitted(permit, priority, max_wait, polled, request, classifier)
    }
}

impl<S, E, C, Req> Service<Req> for PriorityQueue<S, E, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    E: PriorityExtractor<Req>,
    C: OverloadClassifier<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    // Always inlined: a few instructions around the inner call, the rest out of line.
    #[inline(always)]
    fn call(&mut self, request: Req) -> Self::Future {
        // The common case: a valid priority and a free slot with nobody waiting.
        match self.extractor.extract(&request) {
            Ok(priority) if self.shared.try_acquire() => self.call_admitted(priority, request),
            extracted => self.call_queued(extracted, request),
        }
    }
}

impl<S, E, C: Clone> PriorityQueue<S, E, C> {
    /// `call` off the common path: refuses an invalid priority, or takes a slot under the
    /// room's lock, waits in the room, or is shed.
    #[inline(never)]
    fn call_queued<Req>(
        &mut self,
        extracted: Result<Priority, QueueError>,
        request: Req,
    ) -> ResponseFuture<S, Req, C>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
        E: PriorityExtractor<Req>,
    {
        let priority = match extracted {
            Ok(priority) => priority,
            Err(error) => {
                if error == QueueError::InvalidPriority {
                    self.shared.metrics.invalid();
                    tracing::debug!(queue = %self.shared.settings.name, "invalid priority: request refused");
                }
                return ResponseFuture::failed(error.into(), self.classifier.clone());
            }
        };
        // The shorter of the level's bound and the request's own.
        let max_wait = match (
            self.shared.settings.max_wait[priority.index()],
            self.extractor.max_wait(&request),
        ) {
            (Some(level), Some(own)) => Some(level.min(own)),
            (level, own) => level.or(own),
        };
        if max_wait == Some(Duration::ZERO) {
            // May not wait at all: it never enters the room, where it could displace a
            // waiter of a lower level only to time out at once.
            return match self
                .shared
                .acquire_without_waiting(priority, Instant::now())
            {
                Ok(()) => self.call_admitted(priority, request),
                Err(error) => ResponseFuture::failed(error.into(), self.classifier.clone()),
            };
        }
        match self.shared.acquire_or_wait(priority, Instant::now()) {
            Admission::Admitted => self.call_admitted(priority, request),
            Admission::Waiting(guard) => {
                let classifier = self.classifier.clone();
                ResponseFuture::waiting(guard, max_wait, self.inner.clone(), request, classifier)
            }
            Admission::Refused(error) => {
                ResponseFuture::failed(error.into(), self.classifier.clone())
            }
        }
    }
}
