//! The priority queue's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower_service::Service;

use crate::overload::{OverloadClassifier, TimeoutOverload};
use crate::priority::Priority;
use crate::shared::{Permit, WaitGuard};

/// The response future of [`PriorityQueue`](crate::PriorityQueue).
///
/// It waits for a slot (if the request had to queue), then drives the inner service to
/// readiness and calls it. Dropping it at any point leaves the waiting room or frees the
/// slot.
///
/// When the limit is adaptive, the inner call's outcome is classified by `C` (see
/// [`OverloadClassifier`]) before the slot is freed.
#[pin_project]
pub struct ResponseFuture<S, Req, C = TimeoutOverload>
where
    S: Service<Req>,
{
    #[pin]
    state: State<S, Req>,
    classifier: C,
}

#[pin_project(project = StateProj)]
enum State<S, Req>
where
    S: Service<Req>,
{
    /// Refused before reaching the inner service.
    Failed {
        error: Option<BoxError>,
    },
    /// Waiting for a slot or for the inner service's readiness. Boxed: only requests that
    /// cannot be called at once pay for it, and the future stays as small as the inner
    /// one on the common path.
    Pending {
        pending: Pin<Box<Pending<S, Req>>>,
    },
    /// Calling the inner service.
    Calling {
        // Declared first, so dropped first: a call given up is ended (its connection
        // closed, its upstream slot freed) before its slot here goes to the next request.
        #[pin]
        future: S::Future,
        // Held until the inner future completes or is dropped.
        permit: Permit,
    },
    Done,
}

#[pin_project(project = PendingProj)]
struct Pending<S, Req> {
    /// The place in the waiting room, until a slot is granted.
    guard: Option<WaitGuard>,
    /// The request's level.
    priority: Priority,
    /// When the request arrived: its maximum wait covers the wait for a slot and the wait
    /// for the inner service's readiness.
    arrived: Instant,
    #[pin]
    timeout: Option<Sleep>,
    /// Until the end of a cool-down that keeps this waiter out: the waiter ends it and
    /// hands out the free slots (no timer task is needed, nor any runtime beyond this
    /// future's own).
    #[pin]
    cooldown: Option<Sleep>,
    inner: S,
    request: Option<Req>,
    /// The slot, once granted. Last, so dropped last: after the inner service, whose
    /// readiness may hold a reservation of its own.
    permit: Option<Permit>,
}

impl<S, Req, C> ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    pub(crate) fn failed(error: BoxError, classifier: C) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            classifier,
        }
    }

    pub(crate) fn calling(permit: Permit, future: S::Future, classifier: C) -> Self {
        ResponseFuture {
            state: State::Calling { permit, future },
            classifier,
        }
    }

    /// Holds a slot; `inner` was polled and is not ready yet.
    pub(crate) fn admitted(
        permit: Permit,
        priority: Priority,
        max_wait: Option<Duration>,
        inner: S,
        request: Req,
        classifier: C,
    ) -> Self {
        let arrived = Instant::now();
        let timeout = max_wait
            .and_then(|wait| arrived.checked_add(wait))
            .map(tokio::time::sleep_until);
        Self::pending(
            Pending {
                guard: None,
                priority,
                arrived,
                timeout,
                cooldown: None,
                permit: Some(permit),
                inner,
                request: Some(request),
            },
            classifier,
        )
    }

    /// In the waiting room.
    pub(crate) fn waiting(
        guard: WaitGuard,
        max_wait: Option<Duration>,
        inner: S,
        request: Req,
        classifier: C,
    ) -> Self {
        let timeout = max_wait
            .and_then(|wait| guard.enqueued().checked_add(wait))
            .map(tokio::time::sleep_until);
        Self::pending(
            Pending {
                priority: guard.priority(),
                arrived: guard.enqueued(),
                guard: Some(guard),
                timeout,
                cooldown: None,
                permit: None,
                inner,
                request: Some(request),
            },
            classifier,
        )
    }

    fn pending(pending: Pending<S, Req>, classifier: C) -> Self {
        ResponseFuture {
            state: State::Pending {
                pending: Box::pin(pending),
            },
            classifier,
        }
    }
}

fn polled_after_completion() -> BoxError {
    "priority queue response future polled after completion".into()
}

impl<S, Req> Pending<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    /// Waits for a slot, then for the inner service; then calls it.
    fn poll_call(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(Permit, S::Future), BoxError>> {
        let PendingProj {
            guard,
            priority,
            arrived,
            mut timeout,
            mut cooldown,
            permit,
            inner,
            request,
        } = self.project();
        if permit.is_none() {
            let Some(waiter) = guard.as_ref() else {
                return Poll::Ready(Err(polled_after_completion()));
            };
            let outcome = match waiter.poll_outcome(cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending if waiter.poll_cooldown(cooldown.as_mut(), cx).is_ready() => {
                    // The cool-down is over: free slots were handed out; look again.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => {
                    let timed_out = timeout
                        .as_mut()
                        .as_pin_mut()
                        .is_some_and(|sleep| sleep.poll(cx).is_ready());
                    if !timed_out {
                        return Poll::Pending;
                    }
                    waiter.time_out(Instant::now())
                }
            };
            tracing::trace!(priority = %waiter.priority(), admitted = outcome.is_ok(), "priority queue: wait over");
            *permit = Some(outcome?);
            *guard = None;
        }
        if inner.poll_ready(cx).map_err(Into::into)?.is_pending() {
            let timed_out = timeout
                .as_pin_mut()
                .is_some_and(|sleep| sleep.poll(cx).is_ready());
            if !timed_out {
                return Poll::Pending;
            }
            // The inner service stalled past the request's maximum wait: the slot goes back.
            let error = match permit.take() {
                Some(permit) => permit.time_out(*priority, *arrived, Instant::now()),
                None => polled_after_completion(),
            };
            return Poll::Ready(Err(error));
        }
        match (permit.take(), request.take()) {
            (Some(permit), Some(request)) => Poll::Ready(Ok((permit, inner.call(request)))),
            _ => Poll::Ready(Err(polled_after_completion())),
        }
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: OverloadClassifier<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    // Always inlined: the common case is the inner call's completion.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        if let StateProj::Calling { future, permit } = state.as_mut().project() {
            let output = ready!(future.poll(cx)).map_err(Into::into);
            if permit.classifies() {
                permit.record(this.classifier.classify(&output));
            }
            // Frees the slot before the caller sees the response.
            state.set(State::Done);
            return Poll::Ready(output);
        }
        poll_state(state, this.classifier, cx)
    }
}

/// The response future's states other than a call in progress on entry.
#[inline(never)]
fn poll_state<S, Req, C>(
    mut state: Pin<&mut State<S, Req>>,
    classifier: &C,
    cx: &mut Context<'_>,
) -> Poll<Result<S::Response, BoxError>>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: OverloadClassifier<S::Response>,
{
    loop {
        match state.as_mut().project() {
            StateProj::Failed { error } => {
                let error = error.take().unwrap_or_else(polled_after_completion);
                state.set(State::Done);
                return Poll::Ready(Err(error));
            }
            StateProj::Pending { pending } => match ready!(pending.as_mut().poll_call(cx)) {
                Ok((permit, future)) => state.set(State::Calling { permit, future }),
                Err(error) => {
                    // Leaves the room or frees the slot.
                    state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
            },
            StateProj::Calling { future, permit } => {
                let output = ready!(future.poll(cx)).map_err(Into::into);
                if permit.classifies() {
                    permit.record(classifier.classify(&output));
                }
                // Frees the slot before the caller sees the response.
                state.set(State::Done);
                return Poll::Ready(output);
            }
            StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
        }
    }
}

impl<S, Req, C> fmt::Debug for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed { .. } => "failed",
            State::Pending { pending } if pending.permit.is_none() => "waiting",
            State::Pending { .. } => "admitted",
            State::Calling { .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
