//! Response futures.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::backend::{Decision, RateLimitBackend};
use crate::layer::{Mode, Shared};
use crate::service::{BoxError, refusal};
use crate::{KeyExtractor, RateLimitError};

/// The future of [`RateLimit`](crate::RateLimit).
///
/// An admitted request is the inner service's future and nothing else. Only a request
/// that must wait (wait mode), or whose backend answers asynchronously, carries a boxed
/// waiting state. Dropping the future at any point spends nothing that was not spent.
#[pin_project]
pub struct ResponseFuture<F, S, R> {
    #[pin]
    state: State<F, S, R>,
}

type Admit<S, R> = Pin<Box<dyn Future<Output = Result<(S, R), RateLimitError>> + Send>>;

#[pin_project(project = StateProj)]
enum State<F, S, R> {
    Called {
        #[pin]
        future: F,
    },
    Waiting {
        admit: Admit<S, R>,
    },
    Failed {
        error: Option<RateLimitError>,
    },
}

impl<F, S, R> ResponseFuture<F, S, R> {
    pub(crate) fn called(future: F) -> Self {
        Self {
            state: State::Called { future },
        }
    }

    pub(crate) fn failed(error: RateLimitError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn waiting(admit: Admit<S, R>) -> Self {
        Self {
            state: State::Waiting { admit },
        }
    }
}

impl<F, S, R> fmt::Debug for ResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, S, R, T, E> Future for ResponseFuture<F, S, R>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    S: Service<R, Future = F, Response = T, Error = E>,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Waiting { admit } => match ready!(admit.as_mut().poll(cx)) {
                    Ok((mut service, request)) => {
                        let future = service.call(request);
                        this.state.set(State::Called { future });
                    }
                    Err(error) => return Poll::Ready(Err(error.into())),
                },
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(match error.take() {
                        Some(error) => error.into(),
                        None => "rate limit future polled after completion".into(),
                    }));
                }
            }
        }
    }
}

/// A request waiting for its tokens (or for an asynchronous backend's answer).
#[pin_project]
pub(crate) struct WaitFuture<S, R, X: KeyExtractor, B: RateLimitBackend<X::Key>> {
    pub(crate) shared: Arc<Shared<X, B>>,
    pub(crate) key: X::Key,
    pub(crate) cost: NonZeroU32,
    /// When `max_wait` runs out; `None` when it never does.
    pub(crate) deadline: Option<Instant>,
    pub(crate) step: Step<B::Future>,
    /// Sleeps while `step` is `Sleeping`.
    #[pin]
    pub(crate) sleep: Sleep,
    /// The ready service and the request, handed back once admitted.
    pub(crate) admitted: Option<(S, R)>,
    pub(crate) slept: bool,
}

pub(crate) enum Step<F> {
    /// A decision is known.
    Decided(Decision),
    /// The backend is deciding.
    Checking(F),
    /// Waiting for tokens; check again when `sleep` fires.
    Sleeping,
    /// Finished.
    Done,
}

impl<S, R, X, B> WaitFuture<S, R, X, B>
where
    X: KeyExtractor,
    B: RateLimitBackend<X::Key>,
{
    pub(crate) fn new(
        shared: Arc<Shared<X, B>>,
        key: X::Key,
        cost: NonZeroU32,
        deadline: Option<Instant>,
        step: Step<B::Future>,
        admitted: (S, R),
    ) -> Self {
        Self {
            shared,
            key,
            cost,
            deadline,
            step,
            // Set before it is first polled (`Step::Sleeping`).
            sleep: tokio::time::sleep_until(Instant::now()),
            admitted: Some(admitted),
            slept: false,
        }
    }
}

impl<S, R, X, B> Future for WaitFuture<S, R, X, B>
where
    X: KeyExtractor,
    B: RateLimitBackend<X::Key>,
{
    type Output = Result<(S, R), RateLimitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            let decision = match this.step {
                Step::Decided(decision) => *decision,
                Step::Checking(check) => ready!(Pin::new(check).poll(cx)),
                Step::Sleeping => {
                    ready!(this.sleep.as_mut().poll(cx));
                    *this.slept = true;
                    *this.step = Step::Checking(shared.backend.check(this.key, *this.cost));
                    continue;
                }
                // Polled after completion.
                Step::Done => return Poll::Pending,
            };
            *this.step = Step::Done;
            if let Decision::Limited { retry_after, .. } = decision {
                // A wake-up time past what an `Instant` holds is never: refused.
                let wake = Instant::now().checked_add(retry_after);
                let in_time = match (wake, *this.deadline) {
                    (Some(wake), Some(deadline)) => wake <= deadline,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if let (Some(wake), true, Mode::Wait { .. }) = (wake, in_time, shared.mode) {
                    tracing::trace!(limiter = %shared.name, ?retry_after, "request waits for tokens");
                    this.sleep.as_mut().reset(wake);
                    *this.step = Step::Sleeping;
                    continue;
                }
            }
            if let Some(error) = refusal(shared, decision, this.cost.get()) {
                return Poll::Ready(Err(error));
            }
            if *this.slept {
                shared.recorder.waited();
            } else {
                shared.recorder.allowed();
            }
            return match this.admitted.take() {
                Some(admitted) => Poll::Ready(Ok(admitted)),
                // Polled after completion.
                None => Poll::Pending,
            };
        }
    }
}
