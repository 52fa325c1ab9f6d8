use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tower_service::Service;

use super::{FallbackCause, FallbackPolicy, FallbackRequest, MarkDegraded};
use crate::BoxError;

/// The future of [`Fallback`](super::Fallback).
#[pin_project]
pub struct ResponseFuture<Fut, F, P, Ctx, Res>
where
    F: Service<FallbackRequest<Ctx, Res>>,
{
    #[pin]
    state: State<Fut, F::Future, FallbackRequest<Ctx, Res>, Ctx>,
    fallback: F,
    policy: P,
}

#[pin_project(project = StateProj, project_replace = StateOwn)]
enum State<Fut, FFut, Req, Ctx> {
    Inner {
        #[pin]
        future: Fut,
        context: Ctx,
    },
    FallbackReady {
        request: Req,
    },
    Fallback {
        #[pin]
        future: FFut,
    },
    Done,
}

impl<Fut, F, P, Ctx, Res> std::fmt::Debug for ResponseFuture<Fut, F, P, Ctx, Res>
where
    F: Service<FallbackRequest<Ctx, Res>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "inner",
            State::FallbackReady { .. } | State::Fallback { .. } => "fallback",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<Fut, F, P, Ctx, Res> ResponseFuture<Fut, F, P, Ctx, Res>
where
    F: Service<FallbackRequest<Ctx, Res>>,
{
    pub(crate) fn new(future: Fut, context: Ctx, fallback: F, policy: P) -> Self {
        Self {
            state: State::Inner { future, context },
            fallback,
            policy,
        }
    }
}

impl<Fut, F, P, Ctx, Res, E> Future for ResponseFuture<Fut, F, P, Ctx, Res>
where
    Fut: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    F: Service<FallbackRequest<Ctx, Res>, Response = Res>,
    F::Error: Into<BoxError>,
    P: FallbackPolicy<Res>,
    Res: MarkDegraded,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { future, .. } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    if !this.policy.should_fall_back(&result) {
                        this.state.set(State::Done);
                        return Poll::Ready(result);
                    }
                    let StateOwn::Inner { context, .. } =
                        this.state.as_mut().project_replace(State::Done)
                    else {
                        return Poll::Ready(result);
                    };
                    let cause = match result {
                        Ok(response) => FallbackCause::Response(response),
                        Err(error) => FallbackCause::Error(error),
                    };
                    match &cause {
                        FallbackCause::Error(error) => {
                            tracing::info!(cause = %error, "answering from the fallback");
                        }
                        FallbackCause::Response(_) => {
                            tracing::info!(
                                "answering from the fallback instead of a failed response"
                            );
                        }
                    }
                    this.state.set(State::FallbackReady {
                        request: FallbackRequest { context, cause },
                    });
                }
                StateProj::FallbackReady { .. } => {
                    if let Err(error) = ready!(this.fallback.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let StateOwn::FallbackReady { request } =
                        this.state.as_mut().project_replace(State::Done)
                    else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = this.fallback.call(request);
                    this.state.set(State::Fallback { future });
                }
                StateProj::Fallback { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(match result {
                        Ok(mut response) => {
                            response.mark_degraded();
                            Ok(response)
                        }
                        Err(error) => Err(error.into()),
                    });
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}

fn polled_after_completion() -> BoxError {
    "fallback future polled after completion".into()
}
