//! The [`Refusal`] trait, and [`SimpleRefusal`] for refusals given by their parts.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use crate::headers::is_grpc;
use crate::response::{grpc_response, http_response, whole_seconds};

/// A request this server refused on purpose (rate limited, queue full, circuit open, call
/// timed out, bad input), described well enough to answer the client.
///
/// An implementation says what the refusal is; the provided methods (and the free
/// functions [`http_response`], [`grpc_response`] and [`response`](crate::response()))
/// turn it into the answer, the same way for every crate of the suite:
///
/// - HTTP: the [status](Self::status_code), `content-type: application/json`, a body
///   `{"error":"<message>","retryAfter":<seconds>}` (`retryAfter` only when
///   [`retry_after`](Self::retry_after) is known), `Retry-After` in whole seconds (rounded
///   up, never 0) when known, then the [extra headers](Self::extra_headers).
/// - gRPC, trailers-only: HTTP 200, `content-type: application/grpc`, `grpc-status`, a
///   percent-encoded `grpc-message`, and the same `Retry-After` and extra headers.
///
/// The trait is object safe: `&dyn Refusal` works with the free functions.
///
/// ```
/// use std::borrow::Cow;
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http::StatusCode;
/// use tower_refusal::Refusal;
///
/// #[derive(Debug)]
/// struct Busy;
///
/// impl Refusal for Busy {
///     fn status_code(&self) -> StatusCode {
///         StatusCode::SERVICE_UNAVAILABLE
///     }
///     fn grpc_code(&self) -> i32 {
///         14
///     }
///     fn message(&self) -> Cow<'_, str> {
///         Cow::Borrowed("busy")
///     }
///     fn retry_after(&self) -> Option<Duration> {
///         Some(Duration::from_millis(1500))
///     }
/// }
///
/// let response = Busy.to_http_response::<Bytes>();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "2");
/// assert_eq!(response.body(), r#"{"error":"busy","retryAfter":2}"#);
///
/// let grpc = Busy.to_grpc_response::<Bytes>();
/// assert_eq!(grpc.status(), 200);
/// assert_eq!(grpc.headers()["grpc-status"], "14");
/// ```
pub trait Refusal {
    /// The HTTP status of the answer.
    fn status_code(&self) -> StatusCode;

    /// The numeric gRPC status code of the answer (8 `RESOURCE_EXHAUSTED`,
    /// 14 `UNAVAILABLE`, 4 `DEADLINE_EXCEEDED`, 3 `INVALID_ARGUMENT`…).
    fn grpc_code(&self) -> i32;

    /// The message for the client: the JSON body's `error` and the `grpc-message`. It
    /// must not carry internals (inner error text, keys, addresses).
    fn message(&self) -> Cow<'_, str>;

    /// How long the client should wait before trying again, when a retry can succeed.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The `Retry-After` value: [`retry_after`](Self::retry_after) in whole seconds,
    /// rounded up, never 0.
    fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(whole_seconds)
    }

    /// Adds headers of this refusal's own to the answer (both forms), after
    /// `Retry-After`: for example `RateLimit-Policy` and `RateLimit`. None by default.
    fn extra_headers(&self, headers: &mut HeaderMap) {
        let _ = headers;
    }

    /// The HTTP answer; see [`http_response`].
    #[must_use]
    fn to_http_response<B: From<Bytes>>(&self) -> Response<B>
    where
        Self: Sized,
    {
        http_response(self)
    }

    /// The gRPC trailers-only answer; see [`grpc_response`].
    #[must_use]
    fn to_grpc_response<B: Default>(&self) -> Response<B>
    where
        Self: Sized,
    {
        grpc_response(self)
    }

    /// The gRPC answer when the request's `content-type` starts with `application/grpc`,
    /// else the HTTP answer.
    #[must_use]
    fn to_response<B: Default + From<Bytes>>(&self, request_headers: &HeaderMap) -> Response<B>
    where
        Self: Sized,
    {
        crate::response(self, is_grpc(request_headers))
    }
}

impl<R: Refusal + ?Sized> Refusal for &R {
    fn status_code(&self) -> StatusCode {
        (**self).status_code()
    }
    fn grpc_code(&self) -> i32 {
        (**self).grpc_code()
    }
    fn message(&self) -> Cow<'_, str> {
        (**self).message()
    }
    fn retry_after(&self) -> Option<Duration> {
        (**self).retry_after()
    }
    fn retry_after_secs(&self) -> Option<u64> {
        (**self).retry_after_secs()
    }
    fn extra_headers(&self, headers: &mut HeaderMap) {
        (**self).extra_headers(headers);
    }
}

/// A refusal given by its parts, for refusals that have no error type of their own (a
/// deadline, a body limit, a capacity refusal answered differently from its cause).
///
/// ```
/// use bytes::Bytes;
/// use http::StatusCode;
/// use tower_refusal::{Refusal, SimpleRefusal};
///
/// let refusal = SimpleRefusal::new(StatusCode::GATEWAY_TIMEOUT, 4, "deadline exceeded");
/// let response = refusal.to_http_response::<Bytes>();
/// assert_eq!(response.status(), 504);
/// assert_eq!(response.body(), r#"{"error":"deadline exceeded"}"#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimpleRefusal {
    status: StatusCode,
    grpc_code: i32,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
}

impl SimpleRefusal {
    /// A refusal with this HTTP status, gRPC code and client message, and no
    /// `Retry-After`.
    #[must_use]
    pub fn new(status: StatusCode, grpc_code: i32, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            grpc_code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Asks the client to wait this long before trying again (`Retry-After`, `retryAfter`).
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

impl Refusal for SimpleRefusal {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn grpc_code(&self) -> i32 {
        self.grpc_code
    }
    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.message)
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}
