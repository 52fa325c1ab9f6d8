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

use crate::error::QueueError;
use crate::shared::{Permit, WaitGuard};

/// The response future of [`PriorityQueue`](crate::PriorityQueue).
///
/// It waits for a slot (if the request had to queue), then drives the inner service to
/// readiness and calls it. Dropping it at any point leaves the waiting room or frees the
/// slot.
#[pin_project]
pub struct ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    #[pin]
    state: State<S, Req>,
}

#[pin_project(project = StateProj)]
enum State<S, Req>
where
    S: Service<Req>,
{
    Failed {
        error: QueueError,
    },
    // Boxed: only requests that queue pay for it, and it keeps the future small.
    Waiting {
        waiting: Pin<Box<Waiting<S, Req>>>,
    },
    Admitted {
        permit: Option<Permit>,
        inner: S,
        request: Option<Req>,
    },
    Calling {
        // Held until the inner future completes; released on drop.
        _permit: Permit,
        #[pin]
        future: S::Future,
    },
    Done,
}

#[pin_project(project = WaitingProj)]
struct Waiting<S, Req> {
    guard: WaitGuard,
    #[pin]
    timeout: Option<Sleep>,
    inner: Option<S>,
    request: Option<Req>,
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn failed(error: QueueError) -> Self {
        ResponseFuture {
            state: State::Failed { error },
        }
    }

    pub(crate) fn admitted(permit: Permit, inner: S, request: Req) -> Self {
        ResponseFuture {
            state: State::Admitted {
                permit: Some(permit),
                inner,
                request: Some(request),
            },
        }
    }

    pub(crate) fn waiting(
        guard: WaitGuard,
        max_wait: Option<Duration>,
        inner: S,
        request: Req,
    ) -> Self {
        let timeout = max_wait
            .and_then(|wait| guard.enqueued().checked_add(wait))
            .map(tokio::time::sleep_until);
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    guard,
                    timeout,
                    inner: Some(inner),
                    request: Some(request),
                }),
            },
        }
    }
}

fn polled_after_completion() -> BoxError {
    "priority queue response future polled after completion".into()
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error.clone();
                    state.set(State::Done);
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Waiting { waiting } => {
                    let WaitingProj {
                        guard,
                        timeout,
                        inner,
                        request,
                    } = waiting.as_mut().project();
                    let outcome = match guard.poll_outcome(cx) {
                        Poll::Ready(outcome) => outcome,
                        Poll::Pending => {
                            let timed_out = timeout
                                .as_pin_mut()
                                .is_some_and(|sleep| sleep.poll(cx).is_ready());
                            if !timed_out {
                                return Poll::Pending;
                            }
                            guard.time_out(Instant::now())
                        }
                    };
                    let permit = match outcome {
                        Ok(permit) => permit,
                        Err(error) => {
                            state.set(State::Done);
                            return Poll::Ready(Err(error.into()));
                        }
                    };
                    tracing::trace!(priority = %guard.priority(), "priority queue: waiter admitted");
                    let (Some(inner), Some(request)) = (inner.take(), request.take()) else {
                        state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    state.set(State::Admitted {
                        permit: Some(permit),
                        inner,
                        request: Some(request),
                    });
                }
                StateProj::Admitted {
                    permit,
                    inner,
                    request,
                } => {
                    if let Err(error) = ready!(inner.poll_ready(cx)) {
                        state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let (Some(permit), Some(request)) = (permit.take(), request.take()) else {
                        state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = inner.call(request);
                    state.set(State::Calling {
                        _permit: permit,
                        future,
                    });
                }
                StateProj::Calling { future, .. } => {
                    let output = ready!(future.poll(cx));
                    // Frees the slot before the caller sees the response.
                    state.set(State::Done);
                    return Poll::Ready(output.map_err(Into::into));
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed { .. } => "failed",
            State::Waiting { .. } => "waiting",
            State::Admitted { .. } => "admitted",
            State::Calling { .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
