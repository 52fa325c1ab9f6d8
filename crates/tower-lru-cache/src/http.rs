//! The HTTP and gRPC face of [`CacheError`].
//!
//! | error | HTTP | gRPC |
//! |---|---|---|
//! | [`CacheError::RequestBody`] | 400 | 3 `INVALID_ARGUMENT` |
//! | [`CacheError::ResponseBody`], [`CacheError::Coalesced`] | 502 | 14 `UNAVAILABLE` |

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;
use tower_refusal::Refusal;

use crate::error::CacheError;

const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_UNAVAILABLE: i32 = 14;

/// The answers ([`Refusal::to_http_response`], [`Refusal::to_grpc_response`],
/// [`Refusal::to_response`]): the status above, a body `{"error":"<message>"}` with a
/// short client-safe message (never the inner error's text, which may hold internals);
/// the cache never asks a client to wait, so no `Retry-After`.
impl Refusal for CacheError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::ResponseBody(_) | Self::Coalesced { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn grpc_code(&self) -> i32 {
        match self {
            Self::RequestBody(_) => GRPC_INVALID_ARGUMENT,
            Self::ResponseBody(_) | Self::Coalesced { .. } => GRPC_UNAVAILABLE,
        }
    }

    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Self::RequestBody(_) => "request body could not be read",
            Self::ResponseBody(_) => "upstream response body failed",
            Self::Coalesced { .. } => "upstream call failed",
        })
    }

    fn retry_after(&self) -> Option<Duration> {
        CacheError::retry_after(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Response, header};
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
}
