//! The HTTP and gRPC face of this crate (feature `http`): the responses for its refusals,
//! the default classification of `http::Response`, the degraded marking of fallback
//! answers, and a request-head capture for the fallback.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use tower_refusal::{Refusal, first_value_static};

use crate::BreakerError;
use crate::classify::ResponseVerdict;
use crate::fallback::{Capture, Degraded, MarkDegraded, NotDegraded};

/// The header that marks a fallback answer: `x-degraded: true`.
pub const X_DEGRADED: HeaderName = HeaderName::from_static("x-degraded");

/// The rejection table's rows: 503 `UNAVAILABLE` when the circuit is open (with
/// `Retry-After`, the time left open, when known), 504 `DEADLINE_EXCEEDED` when the call
/// timed out.
///
/// The answers ([`Refusal::to_http_response`], [`Refusal::to_grpc_response`],
/// [`Refusal::to_response`]) carry the body `{"error":"<message>","retryAfter":<seconds>}`
/// (`retryAfter` only when known) and `Retry-After` in whole seconds (rounded up, at
/// least 1) when known.
impl Refusal for BreakerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn grpc_code(&self) -> i32 {
        match self {
            Self::CircuitOpen { .. } => 14,
            Self::Timeout { .. } => 4,
        }
    }

    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed(BreakerError::message(self))
    }

    fn retry_after(&self) -> Option<Duration> {
        BreakerError::retry_after(self)
    }
}

/// gRPC codes that mean the server failed (`UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`,
/// `UNAVAILABLE`, `DATA_LOSS`); the others are the caller's doing, like a 4xx.
const GRPC_SERVER_FAILURES: [&[u8]; 5] = [b"2", b"4", b"13", b"14", b"15"];

/// Whether the first `grpc-status` value names a server failure. Out of line: it runs for
/// every response with headers, and keeps the response future's poll small.
#[inline(never)]
fn grpc_server_failure(headers: &HeaderMap) -> bool {
    first_value_static(headers, "grpc-status")
        .is_some_and(|code| GRPC_SERVER_FAILURES.contains(&code.as_bytes()))
}

/// A 5xx status is an upstream failure; any other status (a 4xx is the client's doing)
/// is a success. A trailers-only gRPC answer (a `grpc-status` header) is a failure when
/// its code is a server failure (`UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`,
/// `UNAVAILABLE`, `DATA_LOSS`); a `grpc-status` sent in trailers after a body is not seen
/// here. A `429` or `503` with `Retry-After` in seconds carries the upstream's wait.
impl<B> ResponseVerdict for Response<B> {
    #[inline]
    fn is_failure(&self) -> bool {
        self.status().is_server_error()
            || (!self.headers().is_empty() && grpc_server_failure(self.headers()))
    }

    fn upstream_retry_after(&self) -> Option<Duration> {
        if !matches!(
            self.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            return None;
        }
        // Delta-seconds only; an HTTP-date is ignored rather than trusted to a clock.
        let secs: u64 = self
            .headers()
            .get(RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_secs(secs))
    }
}

/// Inserts the [`Degraded`] extension and `x-degraded: true`.
impl<B> MarkDegraded for Response<B> {
    fn mark_degraded(&mut self) {
        if self.extensions_mut().remove::<NotDegraded>().is_some() {
            // The inner service's own answer, handed back as it is.
            return;
        }
        self.extensions_mut().insert(Degraded);
        self.headers_mut()
            .insert(X_DEGRADED, HeaderValue::from_static("true"));
    }
}

/// A [`Capture`] that keeps the request head: method, URI, version, headers and
/// extensions (everything but the body), as `http::request::Parts`.
///
/// It clones the headers and extensions of every request; when the fallback needs only a
/// path parameter or one header, a closure that captures just that is cheaper.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureHead;

impl<B> Capture<Request<B>> for CaptureHead {
    type Context = http::request::Parts;

    fn capture(&self, request: &Request<B>) -> Self::Context {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = request.method().clone();
        parts.uri = request.uri().clone();
        parts.version = request.version();
        parts.headers = request.headers().clone();
        parts.extensions = request.extensions().clone();
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;
    use tower_refusal::SCAN_LIMIT;

    const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |wait| {
            BreakerError::CircuitOpen {
                retry_after: Some(wait),
            }
            .retry_after_secs()
        };
        assert_eq!(secs(Duration::from_millis(1)), Some(1));
        assert_eq!(secs(Duration::from_secs(2)), Some(2));
        assert_eq!(secs(Duration::from_millis(2_001)), Some(3));
        assert_eq!(secs(Duration::ZERO), Some(1));
    }

    #[test]
    fn grpc_status_header_is_classified() {
        let with = |code: &'static str| {
            let mut response = Response::new(());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static(code));
            response.is_failure()
        };
        assert!(with("14"));
        assert!(with("13"));
        assert!(!with("0"));
        assert!(!with("3"));
        assert!(!with("5"));
        assert!(!Response::new(()).is_failure());
    }

    /// Small maps are scanned in place, large ones hashed: both find the first
    /// `grpc-status` value among other headers.
    #[test]
    fn grpc_status_is_found_among_few_or_many_headers() {
        for others in [1usize, 5, SCAN_LIMIT - 1, SCAN_LIMIT + 4] {
            let mut response = Response::new(());
            let headers = response.headers_mut();
            for i in 0..others {
                let name =
                    HeaderName::from_bytes(format!("x-other-{i}").as_bytes()).expect("header name");
                headers.insert(name, HeaderValue::from_static("14"));
            }
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-statu", HeaderValue::from_static("14"));
            assert!(
                !response.is_failure(),
                "{others} other headers, no grpc-status"
            );
            let headers = response.headers_mut();
            headers.append(GRPC_STATUS, HeaderValue::from_static("13"));
            headers.append(GRPC_STATUS, HeaderValue::from_static("0"));
            assert!(
                response.is_failure(),
                "{others} other headers, grpc-status 13"
            );
            let headers = response.headers_mut();
            headers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
            assert!(
                !response.is_failure(),
                "{others} other headers, grpc-status 0"
            );
        }
    }
}
