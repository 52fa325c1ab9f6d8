//! The rate-limiting service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

use crate::backend::{Decision, RateLimitBackend};
use crate::future::{ResponseFuture, Step, WaitFuture};
use crate::layer::{Mode, Shared};
use crate::{ExtractKey, KeyExtractor, RateLimitError, RateLimitHandle};

/// A tower box error, as every service in this crate returns.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits the rate of requests to the inner service; made by
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Its error is a `BoxError`: either the inner service's error, unchanged, or a
/// [`RateLimitError`].
///
/// `poll_ready` is the inner service's. The decision is made in `call`: an admitted
/// request is passed on at once; in wait mode a request that must wait is handed a clone
/// of the inner service (the one made ready goes with the request, as in
/// `tower::buffer`), so `S` must be `Clone`.
pub struct RateLimit<S, X: KeyExtractor, B> {
    inner: S,
    shared: Arc<Shared<X, B>>,
}

impl<S, X: KeyExtractor, B> RateLimit<S, X, B> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<X, B>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, X: KeyExtractor, B: RateLimitBackend<X::Key>> RateLimit<S, X, B> {
    /// A cheap handle on the limiter's counts and per-key capacity.
    pub fn handle(&self) -> RateLimitHandle<X::Key> {
        RateLimitHandle::new(Arc::clone(&self.shared) as _)
    }
}

impl<S: Clone, X: KeyExtractor, B> Clone for RateLimit<S, X, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, X: KeyExtractor, B> fmt::Debug for RateLimit<S, X, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, R, X, B> Service<R> for RateLimit<S, X, B>
where
    S: Service<R> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    R: Send + 'static,
    X: ExtractKey<R>,
    B: RateLimitBackend<X::Key>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let shared = &*self.shared;
        let key = match shared.extractor.extract_key(&request) {
            Ok(key) => key,
            Err(e) => {
                shared.recorder.rejected();
                tracing::debug!(limiter = %shared.name, reason = e.reason(), "rate-limit key missing");
                return ResponseFuture::failed(e.into());
            }
        };
        let cost = shared.extractor.cost(&request);
        let mut check = shared.backend.check(&key, cost);
        // An in-process backend has decided by now: look without waiting.
        let mut cx = Context::from_waker(Waker::noop());
        let decision = match Pin::new(&mut check).poll(&mut cx) {
            Poll::Ready(Decision::Allowed) => {
                shared.recorder.allowed();
                return ResponseFuture::called(self.inner.call(request));
            }
            Poll::Ready(decision) => Some(decision),
            Poll::Pending => None,
        };
        let max_wait = match (shared.mode, decision) {
            (Mode::Wait { max_wait }, Some(Decision::Limited { retry_after, .. }))
                if retry_after <= max_wait =>
            {
                max_wait
            }
            (Mode::Wait { max_wait }, None) => max_wait,
            (Mode::Reject, None) => Duration::ZERO,
            (_, Some(decision)) => {
                return match refusal(shared, decision, cost.get()) {
                    Some(error) => ResponseFuture::failed(error),
                    None => {
                        shared.recorder.allowed();
                        ResponseFuture::called(self.inner.call(request))
                    }
                };
            }
        };
        // Take the service that was made ready; leave a clone for the next poll_ready.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let step = match decision {
            Some(decision) => Step::Decided(decision),
            None => Step::Checking(check),
        };
        let wait = WaitFuture::new(
            Arc::clone(&self.shared),
            key,
            cost,
            // A `max_wait` too long to add to now (`Duration::MAX`) is no limit.
            Instant::now().checked_add(max_wait),
            step,
            (service, request),
        );
        ResponseFuture::waiting(Box::pin(wait))
    }
}

/// Counts and logs a refusal and turns it into the error the caller sees; `None` if the
/// decision was to admit.
pub(crate) fn refusal<X: KeyExtractor, B>(
    shared: &Shared<X, B>,
    decision: Decision,
    cost: u32,
) -> Option<RateLimitError> {
    let error = match decision {
        Decision::Allowed => return None,
        Decision::Limited { retry_after, quota } => RateLimitError::RateLimited {
            retry_after,
            quota,
            limiter: shared.name.clone(),
        },
        Decision::CostTooLarge { quota } => RateLimitError::CostTooLarge { cost, quota },
        Decision::KeyCapacity { retry_after } => {
            tracing::warn!(limiter = %shared.name, "rate limiter key cap reached; new keys refused");
            RateLimitError::KeyCapacity { retry_after }
        }
        Decision::Unavailable { retry_after } => RateLimitError::Unavailable { retry_after },
    };
    shared.recorder.rejected();
    tracing::debug!(
        limiter = %shared.name,
        retry_after_ms = error.retry_after().map(|d| d.as_millis()),
        %error,
        "request refused by rate limiter"
    );
    Some(error)
}
