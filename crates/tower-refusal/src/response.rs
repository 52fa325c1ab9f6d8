//! The two answers to a [`Refusal`]: short JSON over HTTP, trailers-only over gRPC.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response};

use crate::Refusal;

/// `grpc-status`.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The HTTP answer to a refusal: its status, `content-type: application/json`, a body
/// `{"error":"<message>","retryAfter":<seconds>}` (`retryAfter` only when known),
/// `Retry-After` in whole seconds when known, then the refusal's extra headers.
///
/// ```
/// use bytes::Bytes;
/// use http::StatusCode;
/// use tower_refusal::{SimpleRefusal, http_response};
///
/// let refusal = SimpleRefusal::new(StatusCode::BAD_REQUEST, 3, "say \"please\"");
/// let response = http_response::<Bytes>(&refusal);
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// assert_eq!(response.body(), r#"{"error":"say \"please\""}"#);
/// ```
#[must_use]
pub fn http_response<B: From<Bytes>>(refusal: &(impl Refusal + ?Sized)) -> Response<B> {
    let retry_after = refusal.retry_after_secs();
    let message = refusal.message();
    let mut body = String::with_capacity(message.len() + 40);
    body.push_str("{\"error\":\"");
    push_json_escaped(&mut body, &message);
    body.push('"');
    if let Some(secs) = retry_after {
        let _ = write!(body, ",\"retryAfter\":{secs}");
    }
    body.push('}');
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = refusal.status_code();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    insert_common(refusal, retry_after, headers);
    response
}

/// The gRPC answer to a refusal, trailers-only: HTTP 200, `content-type:
/// application/grpc`, `grpc-status`, a percent-encoded `grpc-message`, `Retry-After` in
/// whole seconds when known, then the refusal's extra headers. The body is empty.
///
/// ```
/// use bytes::Bytes;
/// use http::StatusCode;
/// use tower_refusal::{SimpleRefusal, grpc_response};
///
/// let refusal = SimpleRefusal::new(StatusCode::SERVICE_UNAVAILABLE, 14, "50% busy");
/// let response = grpc_response::<Bytes>(&refusal);
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.headers()["grpc-status"], "14");
/// assert_eq!(response.headers()["grpc-message"], "50%25 busy");
/// assert!(response.body().is_empty());
/// ```
#[must_use]
pub fn grpc_response<B: Default>(refusal: &(impl Refusal + ?Sized)) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(refusal.grpc_code()));
    if let Ok(message) = HeaderValue::try_from(percent_encode(&refusal.message())) {
        headers.insert(GRPC_MESSAGE, message);
    }
    insert_common(refusal, refusal.retry_after_secs(), headers);
    response
}

/// The gRPC answer when `grpc` is true, else the HTTP answer. Whether a request speaks
/// gRPC is [`is_grpc`](crate::is_grpc) of its headers.
#[must_use]
pub fn response<B: Default + From<Bytes>>(
    refusal: &(impl Refusal + ?Sized),
    grpc: bool,
) -> Response<B> {
    if grpc {
        grpc_response(refusal)
    } else {
        http_response(refusal)
    }
}

fn insert_common(
    refusal: &(impl Refusal + ?Sized),
    retry_after: Option<u64>,
    headers: &mut HeaderMap,
) {
    if let Some(secs) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    refusal.extra_headers(headers);
}

/// Whole seconds, rounded up, at least 1: a `Retry-After` of 0 would invite a retry
/// storm.
#[must_use]
pub fn whole_seconds(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
        .max(1)
}

/// Escapes `text` for a JSON string: `"`, `\` and the control characters.
fn push_json_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks: every byte outside printable
/// ASCII, and `%` itself.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimpleRefusal;
    use http::StatusCode;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2_001)), 3);
        assert_eq!(whole_seconds(Duration::MAX), u64::MAX);
    }

    #[test]
    fn percent_encoding_follows_the_grpc_spec() {
        assert_eq!(percent_encode("plain text"), "plain text");
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }

    #[test]
    fn json_body_is_valid_json_whatever_the_message() {
        for message in ["plain", "quote \" and \\ slash", "new\nline\u{1}", "é ✓"] {
            let refusal = SimpleRefusal::new(StatusCode::BAD_REQUEST, 3, message.to_owned())
                .with_retry_after(Duration::from_millis(10));
            let response = http_response::<Bytes>(&refusal);
            let json: serde_json::Value =
                serde_json::from_slice(response.body()).expect("valid JSON");
            assert_eq!(json["error"], message);
            assert_eq!(json["retryAfter"], 1);
            assert_eq!(response.headers()[RETRY_AFTER], "1");
        }
    }

    #[test]
    fn grpc_answer_is_trailers_only_with_retry_after() {
        let refusal = SimpleRefusal::new(StatusCode::TOO_MANY_REQUESTS, 8, "slow down")
            .with_retry_after(Duration::from_secs(3));
        let grpc = response::<Bytes>(&refusal, true);
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(grpc.headers()["grpc-status"], "8");
        assert_eq!(grpc.headers()["grpc-message"], "slow down");
        assert_eq!(grpc.headers()[RETRY_AFTER], "3");
        assert!(grpc.body().is_empty());
        let plain = response::<Bytes>(&refusal, false);
        assert_eq!(plain.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
