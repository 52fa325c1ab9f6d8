//! One place where every refusal of the stack becomes the response the rejection table
//! gives it, so that the RED metrics layer above sees (and counts) what clients see.
//!
//! The answers themselves are the refusal foundation's ([`tower_refusal`]): each crate's
//! error is a [`Refusal`], and so are the preset's own refusals ([`DeadlineExceeded`],
//! [`RequestRejected`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use pin_project::pin_project;
use tower::BoxError;
use tower_layer::Layer;
pub(crate) use tower_refusal::is_grpc;
use tower_refusal::{Refusal, SimpleRefusal, response};
use tower_service::Service;

use crate::body::RequestRejected;
use crate::deadline::DeadlineExceeded;
use tower_breaker::BreakerError;
use tower_lru_cache::CacheError;
use tower_priority_queue::QueueError;
use tower_token_bucket::RateLimitError;

/// The name of the preset's global (upstream pacing) limiter. Its refusals are about the
/// server's capacity, not the client's rate: they answer 503, like a full queue.
pub(crate) const GLOBAL_LIMITER: &str = "upstream";

/// Turns every error of the services below into its response, per the rejection table
/// (see [`refusal_response`]): use it under RED metrics so that refusals are counted as
/// what clients see. Its services never fail: their error type is [`Infallible`].
///
/// Each crate's layer can answer its own refusals too (`answer_refusals()`, built on
/// [`tower_refusal::AnswerRefusalsLayer`]); this layer is for a stack of them that
/// returns errors, such as the preset's: it answers every crate's refusals and the
/// preset's own, and an upstream failure that reaches it as an error.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// use axum::{Router, body::Body, routing::post};
/// use http::{Request, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_health_ai::RefusalsLayer;
/// use tower_health_ai::breaker::TimeoutLayer;
/// use tower_health_ai::token_bucket::{Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // Two error-returning layers, answered by one `RefusalsLayer`.
/// let app: Router = Router::new().route(
///     "/analyze",
///     post(|| async { "analysed" }).layer(
///         ServiceBuilder::new()
///             .layer(RefusalsLayer)
///             .layer(RateLimitLayer::builder(Quota::per_second(1)).build())
///             .layer(TimeoutLayer::new(Duration::from_secs(120))),
///     ),
/// );
/// let analyze = || Request::post("/analyze").body(Body::empty()).unwrap();
/// assert_eq!(app.clone().oneshot(analyze()).await.unwrap().status(), StatusCode::OK);
/// let refused = app.oneshot(analyze()).await.unwrap();
/// assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(refused.headers()["retry-after"], "1");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RefusalsLayer;

impl<S> Layer<S> for RefusalsLayer {
    type Service = Refusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Refusals {
            inner,
            not_ready: None,
        }
    }
}

/// The service of the refusal mapping: it never fails; every error becomes its
/// response, whose body is the right side of the `Either`. An error of the inner
/// service's readiness is answered by the next call.
pub struct Refusals<S> {
    inner: S,
    not_ready: Option<BoxError>,
}

impl<S> Refusals<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Refusals<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Refusals<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refusals")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Refusals<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = Infallible;
    type Future = RefusalsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_none()
            && let Err(error) = ready!(self.inner.poll_ready(cx))
        {
            self.not_ready = Some(error.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        let state = match self.not_ready.take() {
            Some(error) => State::NotReady(Some(error)),
            None => State::Called(self.inner.call(request)),
        };
        RefusalsFuture { state, grpc }
    }
}

/// The future of [`Refusals`].
#[pin_project]
pub struct RefusalsFuture<F> {
    #[pin]
    state: State<F>,
    grpc: bool,
}

#[pin_project(project = StateProj)]
enum State<F> {
    NotReady(Option<BoxError>),
    Called(#[pin] F),
}

impl<F> fmt::Debug for RefusalsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefusalsFuture")
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for RefusalsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Either<ResBody, Full<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error = match this.state.project() {
            StateProj::Called(future) => match ready!(future.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response.map(Either::Left))),
                Err(error) => error.into(),
            },
            StateProj::NotReady(error) => error
                .take()
                .unwrap_or_else(|| "the service was not ready".into()),
        };
        Poll::Ready(Ok(refusal_response(&error, *this.grpc).map(Either::Right)))
    }
}

/// The response for an error of the stack, per the rejection table: each crate's
/// refusal answers as its [`Refusal`] says, the preset's global limiter's as `503`
/// (gRPC 14 `UNAVAILABLE`), a [`DeadlineExceeded`] as `504`, a [`RequestRejected`] with
/// its own status.
///
/// Errors that are not a refusal of this suite (the upstream failed for good and no
/// fallback answered) are `502 Bad Gateway` (gRPC 14 `UNAVAILABLE`): never a 500, since
/// this server did nothing wrong.
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use tower::BoxError;
/// use tower_health_ai::breaker::BreakerError;
/// use tower_health_ai::refusal_response;
///
/// let open: BoxError = Box::new(BreakerError::CircuitOpen {
///     retry_after: Some(Duration::from_secs(30)),
/// });
/// let response = refusal_response::<Bytes>(&open, false);
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "30");
/// assert_eq!(response.body(), r#"{"error":"circuit breaker is open","retryAfter":30}"#);
///
/// let grpc = refusal_response::<Bytes>(&open, true);
/// assert_eq!(grpc.headers()["grpc-status"], "14");
///
/// let failed: BoxError = "connection reset".into();
/// assert_eq!(refusal_response::<Bytes>(&failed, false).status(), 502);
/// ```
pub fn refusal_response<B: Default + From<Bytes>>(error: &BoxError, grpc: bool) -> Response<B> {
    if let Some(e) = error.downcast_ref::<RateLimitError>() {
        if let RateLimitError::RateLimited {
            limiter,
            retry_after,
            ..
        } = e
            && limiter == GLOBAL_LIMITER
        {
            let refusal = SimpleRefusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                14,
                "upstream capacity exhausted: try again later",
            )
            .with_retry_after(*retry_after);
            return response(&refusal, grpc);
        }
        return response(e, grpc);
    }
    if let Some(e) = error.downcast_ref::<QueueError>() {
        return response(e, grpc);
    }
    if let Some(e) = error.downcast_ref::<BreakerError>() {
        return response(e, grpc);
    }
    if let Some(e) = error.downcast_ref::<CacheError>() {
        return response(e, grpc);
    }
    if let Some(e) = error.downcast_ref::<DeadlineExceeded>() {
        return response(e, grpc);
    }
    if let Some(e) = error.downcast_ref::<RequestRejected>() {
        return response(e, grpc);
    }
    tracing::warn!(%error, "upstream call failed with no fallback");
    response(
        &SimpleRefusal::new(StatusCode::BAD_GATEWAY, 14, "the upstream service failed"),
        grpc,
    )
}

/// `504` (gRPC 4 `DEADLINE_EXCEEDED`): no answer within the request's deadline.
impl Refusal for DeadlineExceeded {
    fn status_code(&self) -> StatusCode {
        StatusCode::GATEWAY_TIMEOUT
    }

    fn grpc_code(&self) -> i32 {
        4
    }

    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed("deadline exceeded: no answer within the request's deadline")
    }
}

/// Its own status (a 4xx) and message; gRPC 8 `RESOURCE_EXHAUSTED` for a body too large,
/// else 3 `INVALID_ARGUMENT`.
impl Refusal for RequestRejected {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn grpc_code(&self) -> i32 {
        if self.status() == StatusCode::PAYLOAD_TOO_LARGE {
            8
        } else {
            3
        }
    }

    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed(RequestRejected::message(self))
    }

    fn retry_after(&self) -> Option<Duration> {
        None
    }
}
