//! One place where every refusal of the stack becomes the response the rejection table
//! gives it, so that the RED metrics layer above sees (and counts) what clients see.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use pin_project::pin_project;
use tower::BoxError;
use tower_layer::Layer;
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
/// what clients see.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefusalsLayer;

impl<S> Layer<S> for RefusalsLayer {
    type Service = Refusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Refusals { inner }
    }
}

/// The service of the refusal mapping: it never returns an error; every error becomes
/// its response, whose body is the right side of the `Either`.
#[derive(Debug, Clone)]
pub struct Refusals<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Refusals<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = BoxError;
    type Future = RefusalsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        RefusalsFuture {
            inner: self.inner.call(request),
            grpc,
        }
    }
}

/// The future of [`Refusals`].
#[pin_project]
pub struct RefusalsFuture<F> {
    #[pin]
    inner: F,
    grpc: bool,
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
    type Output = Result<Response<Either<ResBody, Full<Bytes>>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(Ok(match result {
            Ok(response) => response.map(Either::Left),
            Err(error) => refusal_response(&error.into(), *this.grpc).map(Either::Right),
        }))
    }
}

/// Whether a request speaks gRPC (`content-type: application/grpc*`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The response for an error of the stack, per the rejection table.
///
/// Errors that are not a refusal of this suite (the upstream failed for good and no
/// fallback answered) are `502 Bad Gateway` (gRPC 14 `UNAVAILABLE`): never a 500, since
/// this server did nothing wrong.
pub fn refusal_response<B: Default + From<Bytes>>(error: &BoxError, grpc: bool) -> Response<B> {
    macro_rules! respond {
        ($e:expr) => {
            if grpc {
                $e.to_grpc_response()
            } else {
                $e.to_http_response()
            }
        };
    }
    if let Some(e) = error.downcast_ref::<RateLimitError>() {
        if let RateLimitError::RateLimited {
            limiter,
            retry_after,
            ..
        } = e
            && limiter == GLOBAL_LIMITER
        {
            return simple(
                StatusCode::SERVICE_UNAVAILABLE,
                14,
                "upstream capacity exhausted: try again later",
                Some(
                    retry_after
                        .as_secs()
                        .saturating_add(u64::from(retry_after.subsec_nanos() > 0)),
                ),
                grpc,
            );
        }
        return respond!(e);
    }
    if let Some(e) = error.downcast_ref::<QueueError>() {
        return respond!(e);
    }
    if let Some(e) = error.downcast_ref::<BreakerError>() {
        return respond!(e);
    }
    if let Some(e) = error.downcast_ref::<CacheError>() {
        return respond!(e);
    }
    if error.is::<DeadlineExceeded>() {
        return simple(
            StatusCode::GATEWAY_TIMEOUT,
            4,
            "deadline exceeded: no answer within the request's deadline",
            None,
            grpc,
        );
    }
    if let Some(e) = error.downcast_ref::<RequestRejected>() {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            8
        } else {
            3
        };
        return simple(e.status(), code, e.message(), None, grpc);
    }
    tracing::warn!(%error, "upstream call failed with no fallback");
    simple(
        StatusCode::BAD_GATEWAY,
        14,
        "the upstream service failed",
        None,
        grpc,
    )
}

/// A short JSON (or trailers-only gRPC) answer.
fn simple<B: Default + From<Bytes>>(
    status: StatusCode,
    grpc_code: u16,
    message: &str,
    retry_after_secs: Option<u64>,
    grpc: bool,
) -> Response<B> {
    let retry_after_secs = retry_after_secs.map(|s| s.max(1));
    let mut response = if grpc {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_code));
        if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
            headers.insert("grpc-message", value);
        }
        response
    } else {
        let mut body = serde_json::json!({ "error": message });
        if let Some(secs) = retry_after_secs {
            body["retryAfter"] = secs.into();
        }
        let mut response = Response::new(B::from(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks: bytes outside printable
/// ASCII, and `%`, become `%XX`.
fn percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}
