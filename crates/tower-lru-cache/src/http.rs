//! The HTTP and gRPC face of [`CacheError`].
//!
//! | error | HTTP | gRPC |
//! |---|---|---|
//! | [`CacheError::RequestBody`] | 400 | 3 `INVALID_ARGUMENT` |
//! | [`CacheError::ResponseBody`], [`CacheError::Coalesced`] | 502 | 14 `UNAVAILABLE` |

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::error::CacheError;

const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_UNAVAILABLE: i32 = 14;

impl CacheError {
    /// The HTTP status this error answers with.
    #[must_use]
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::ResponseBody(_) | Self::Coalesced { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The numeric gRPC status code this error answers with.
    #[must_use]
    pub fn grpc_code(&self) -> i32 {
        match self {
            Self::RequestBody(_) => GRPC_INVALID_ARGUMENT,
            Self::ResponseBody(_) | Self::Coalesced { .. } => GRPC_UNAVAILABLE,
        }
    }

    /// An HTTP response: the status above, `content-type: application/json`, body
    /// `{"error":"<message>"}` (plus `"retryAfter"` and a `Retry-After` header when
    /// [`retry_after`](Self::retry_after) is known).
    #[must_use]
    pub fn to_http_response<B: From<Bytes>>(&self) -> Response<B> {
        let retry = self.retry_after_secs();
        let mut body = String::with_capacity(64);
        body.push_str("{\"error\":");
        push_json_string(&mut body, self.public_message());
        if let Some(secs) = retry {
            body.push_str(",\"retryAfter\":");
            body.push_str(&secs.to_string());
        }
        body.push('}');
        let mut res = Response::new(B::from(Bytes::from(body)));
        *res.status_mut() = self.status_code();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        insert_retry_after(res.headers_mut(), retry);
        res
    }

    /// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`,
    /// `grpc-status`, a percent-encoded `grpc-message`, and `Retry-After` when known.
    #[must_use]
    pub fn to_grpc_response<B: Default>(&self) -> Response<B> {
        let mut res = Response::new(B::default());
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.grpc_code()));
        if let Ok(message) = HeaderValue::from_str(&percent_encode(self.public_message())) {
            headers.insert("grpc-message", message);
        }
        insert_retry_after(headers, self.retry_after_secs());
        res
    }

    /// The gRPC form when the request's `content-type` starts with `application/grpc`,
    /// else the HTTP form.
    #[must_use]
    pub fn to_response<B: Default + From<Bytes>>(
        &self,
        request_headers: &HeaderMap,
    ) -> Response<B> {
        let grpc = request_headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            self.to_grpc_response()
        } else {
            self.to_http_response()
        }
    }

    /// A short, client-safe description (no inner error text, which may hold internals).
    fn public_message(&self) -> &'static str {
        match self {
            Self::RequestBody(_) => "request body could not be read",
            Self::ResponseBody(_) => "upstream response body failed",
            Self::Coalesced { .. } => "upstream call failed",
        }
    }

    /// Whole seconds, rounded up, at least 1 when there is any wait.
    fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after()
            .filter(|d| !d.is_zero())
            .map(|d| d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)))
    }
}

fn insert_retry_after(headers: &mut HeaderMap, secs: Option<u64>) {
    if let Some(secs) = secs {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Percent-encodes per the gRPC spec: bytes outside printable ASCII (0x20..=0x7E) and `%`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    async fn body_json(res: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = res
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn http_forms() {
        let err = CacheError::RequestBody("reset".into());
        let res: Response<Full<Bytes>> = err.to_http_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(
            body_json(res).await,
            serde_json::json!({"error": "request body could not be read"})
        );

        let err = CacheError::Coalesced {
            message: "upstream down".into(),
        };
        let res: Response<Full<Bytes>> = err.to_http_response();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn grpc_forms() {
        let err = CacheError::ResponseBody("cut".into());
        let mut req = HeaderMap::new();
        req.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let res: Response<Full<Bytes>> = err.to_response(&req);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(
            res.headers()["grpc-message"],
            "upstream response body failed"
        );
        assert_eq!(CacheError::RequestBody("x".into()).grpc_code(), 3);

        req.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let res: Response<Full<Bytes>> = err.to_response(&req);
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn encodings() {
        assert_eq!(percent_encode("a b%ü\n"), "a b%25%C3%BC%0A");
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, "\"a\\\"b\\\\c\\u000a\"");
    }
}
