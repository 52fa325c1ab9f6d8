//! The HTTP face of the queue: priority extractors for `http::Request` and the 503/400
//! mapping of [`QueueError`].

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, Response, StatusCode};
use tower_refusal::{Refusal, first_value, first_value_static};

use std::time::SystemTime;

use tower::BoxError;

use crate::error::QueueError;
use crate::overload::{OverloadClassifier, Signal};
use crate::priority::{Priority, PriorityExtractor};

/// Reads the priority from a request header, `x-priority` unless told otherwise.
///
/// The value is `urgent`, `high`, `normal` or `low`, in any ASCII case. A request without
/// the header gets the default level ([`Priority::Normal`] unless changed); any other value
/// is refused with [`QueueError::InvalidPriority`] (400 over HTTP).
///
/// ```
/// use tower_priority_queue::{HeaderPriority, Priority, PriorityExtractor};
///
/// let extractor = HeaderPriority::new();
/// let request = http::Request::builder().header("x-priority", "URGENT").body(()).unwrap();
/// assert_eq!(extractor.extract(&request).ok(), Some(Priority::Urgent));
/// let request = http::Request::builder().header("x-priority", "soon").body(()).unwrap();
/// assert!(extractor.extract(&request).is_err());
/// ```
#[derive(Clone)]
pub struct HeaderPriority {
    /// `None` for `x-priority`: a service clone then copies no `HeaderName` (whose
    /// clone and drop are calls through a vtable), and the lookup compares with a constant.
    header: Option<HeaderName>,
    default: Priority,
}

/// The header [`HeaderPriority`] reads unless told otherwise.
const X_PRIORITY: HeaderName = HeaderName::from_static("x-priority");

impl fmt::Debug for HeaderPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderPriority")
            .field("header", self.header.as_ref().unwrap_or(&X_PRIORITY))
            .field("default", &self.default)
            .finish()
    }
}

impl HeaderPriority {
    /// Reads `x-priority`; requests without it are normal.
    #[must_use]
    pub fn new() -> Self {
        HeaderPriority {
            header: None,
            default: Priority::Normal,
        }
    }

    /// Reads this header instead.
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = (header != X_PRIORITY).then_some(header);
        self
    }

    /// The level of requests without the header.
    #[must_use]
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.default = priority;
        self
    }

    /// Reads the priority from a header map.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidPriority`] when the header is present with an unknown value.
    #[inline]
    pub fn from_headers(&self, headers: &HeaderMap) -> Result<Priority, QueueError> {
        if headers.is_empty() {
            return Ok(self.default);
        }
        let value = match &self.header {
            // Compared with a constant: no call to `bcmp`.
            None => first_value_static(headers, "x-priority"),
            Some(header) => first_value(headers, header),
        };
        match value {
            None => Ok(self.default),
            Some(value) => {
                Priority::from_bytes(value.as_bytes()).ok_or(QueueError::InvalidPriority)
            }
        }
    }
}

impl Default for HeaderPriority {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> PriorityExtractor<http::Request<B>> for HeaderPriority {
    #[inline]
    fn extract(&self, request: &http::Request<B>) -> Result<Priority, QueueError> {
        self.from_headers(request.headers())
    }
}

/// Reads the priority from a [`Priority`] in the request's extensions, put there by an
/// earlier layer or handler (for example after authentication). Requests without one get
/// the default level ([`Priority::Normal`] unless changed).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtensionPriority {
    default: Priority,
}

impl ExtensionPriority {
    /// Reads the extension; requests without it are normal.
    #[must_use]
    pub fn new() -> Self {
        ExtensionPriority::default()
    }

    /// The level of requests without the extension.
    #[must_use]
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.default = priority;
        self
    }
}

impl<B> PriorityExtractor<http::Request<B>> for ExtensionPriority {
    fn extract(&self, request: &http::Request<B>) -> Result<Priority, QueueError> {
        Ok(request
            .extensions()
            .get::<Priority>()
            .copied()
            .unwrap_or(self.default))
    }
}

/// The HTTP [`OverloadClassifier`]: a `429 Too Many Requests` or `503 Service
/// Unavailable` from the upstream is overload, with its `Retry-After` (seconds or an HTTP
/// date) when it carries one; an error that is a timeout (see
/// [`is_timeout`](crate::retry::is_timeout)) is overload; another 5xx or error is
/// [`Signal::Ignore`] (it says nothing about the upstream's load, and an outage of them
/// must not raise the limit); any other answer is [`Signal::Normal`].
///
/// ```
/// use std::time::Duration;
/// use tower::BoxError;
/// use tower_priority_queue::{HttpOverload, OverloadClassifier, Signal};
///
/// let throttled: Result<http::Response<()>, BoxError> = Ok(http::Response::builder()
///     .status(429)
///     .header("retry-after", "3")
///     .body(())
///     .unwrap());
/// assert_eq!(
///     HttpOverload::new().classify(&throttled),
///     Signal::OverloadRetryAfter(Duration::from_secs(3))
/// );
/// let failed: Result<http::Response<()>, BoxError> =
///     Ok(http::Response::builder().status(500).body(()).unwrap());
/// assert_eq!(HttpOverload::new().classify(&failed), Signal::Ignore);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpOverload;

impl HttpOverload {
    /// The HTTP classifier.
    #[must_use]
    pub const fn new() -> Self {
        HttpOverload
    }
}

impl<B> OverloadClassifier<Response<B>> for HttpOverload {
    fn classify(&self, result: &Result<Response<B>, BoxError>) -> Signal {
        match result {
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) =>
            {
                match crate::retry::retry_after(response.headers(), SystemTime::now()) {
                    Some(wait) => Signal::OverloadRetryAfter(wait),
                    None => Signal::Overload,
                }
            }
            Ok(response) if response.status().is_server_error() => Signal::Ignore,
            Ok(_) => Signal::Normal,
            Err(error) if crate::retry::is_timeout(error) => Signal::Overload,
            Err(_) => Signal::Ignore,
        }
    }
}

/// The rejection table's rows: 503 `UNAVAILABLE` with `Retry-After` for a full queue, a
/// cool-down or an exceeded wait; 400 `INVALID_ARGUMENT` for an invalid priority.
///
/// The answers ([`Refusal::to_http_response`], [`Refusal::to_grpc_response`],
/// [`Refusal::to_response`]) carry the body `{"error":"…","retryAfter":s}`
/// (`retryAfter` only when a retry makes sense) and `Retry-After` in whole seconds,
/// rounded up.
impl Refusal for QueueError {
    fn status_code(&self) -> StatusCode {
        match self {
            QueueError::QueueFull { .. }
            | QueueError::CoolingDown { .. }
            | QueueError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::InvalidPriority => StatusCode::BAD_REQUEST,
        }
    }

    fn grpc_code(&self) -> i32 {
        match self {
            QueueError::QueueFull { .. }
            | QueueError::CoolingDown { .. }
            | QueueError::QueueTimeout { .. } => 14,
            QueueError::InvalidPriority => 3,
        }
    }

    fn message(&self) -> Cow<'_, str> {
        Cow::Owned(self.to_string())
    }

    fn retry_after(&self) -> Option<Duration> {
        QueueError::retry_after(self)
    }

    /// Whole seconds, rounded up; a `retry_after` hint configured as zero stays 0 (the
    /// operator asked for it), unlike the foundation's default of at least 1.
    fn retry_after_secs(&self) -> Option<u64> {
        QueueError::retry_after(self).map(|wait| {
            wait.as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderValue;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};
    use tower_refusal::SCAN_LIMIT;

    fn full() -> QueueError {
        QueueError::QueueFull {
            priority: Priority::Low,
            retry_after: Duration::from_millis(1500),
        }
    }

    #[test]
    fn queue_full_is_503_with_retry_after_rounded_up() {
        let response: Response<String> = full()
            .to_http_response::<Bytes>()
            .map(|body| String::from_utf8(body.to_vec()).unwrap_or_default());
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let json: serde_json::Value = serde_json::from_str(response.body()).expect("valid JSON");
        assert_eq!(json["retryAfter"], 2);
        assert_eq!(json["error"], "queue full: low priority request shed");
    }

    #[test]
    fn timeout_is_503_and_unavailable() {
        let error = QueueError::QueueTimeout {
            priority: Priority::High,
            waited: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
        };
        assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.grpc_code(), 14);
    }

    #[test]
    fn invalid_priority_is_400_naming_the_valid_values() {
        let error = QueueError::InvalidPriority;
        let response = error.to_http_response::<Bytes>();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(RETRY_AFTER).is_none());
        let json: serde_json::Value = serde_json::from_slice(response.body()).expect("valid JSON");
        assert!(json.get("retryAfter").is_none());
        let message = json["error"].as_str().unwrap_or_default();
        for level in ["urgent", "high", "normal", "low"] {
            assert!(message.contains(level), "{message}");
        }
        assert_eq!(error.grpc_code(), 3);
    }

    #[test]
    fn grpc_requests_get_a_trailers_only_response() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let response = full().to_response::<Bytes>(&headers);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(
            response.headers()["grpc-message"],
            "queue full: low priority request shed"
        );
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert!(response.body().is_empty());

        let plain = full().to_response::<Bytes>(&HeaderMap::new());
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn header_extractor_defaults_and_rejects() {
        let extractor = HeaderPriority::new().default_priority(Priority::Low);
        let request = http::Request::new(());
        assert_eq!(extractor.extract(&request), Ok(Priority::Low));
        let request = http::Request::builder()
            .header(
                "x-priority",
                HeaderValue::from_bytes(b"\xffhigh").expect("opaque value"),
            )
            .body(())
            .expect("request");
        assert_eq!(
            extractor.extract(&request),
            Err(QueueError::InvalidPriority)
        );
        let custom = HeaderPriority::new().header(HeaderName::from_static("priority"));
        let request = http::Request::builder()
            .header("priority", "high")
            .body(())
            .expect("request");
        assert_eq!(custom.extract(&request), Ok(Priority::High));
    }

    /// The in-place scan (small maps) and `HeaderMap::get` (large maps) find the same
    /// value: the first of the header's values, whatever else the map holds.
    #[test]
    fn header_is_found_in_small_and_large_maps_alike() {
        let extractors = [
            (HeaderPriority::new(), "x-priority"),
            (
                HeaderPriority::new().header(HeaderName::from_static("x-priority")),
                "x-priority",
            ),
            (
                HeaderPriority::new().header(HeaderName::from_static("x-prio")),
                "x-prio",
            ),
        ];
        for (extractor, name) in extractors {
            for others in [0usize, 3, SCAN_LIMIT - 2, SCAN_LIMIT + 5] {
                let mut headers = HeaderMap::new();
                for i in 0..others {
                    let other = HeaderName::from_bytes(format!("x-other-{i}").as_bytes())
                        .expect("header name");
                    headers.insert(other, HeaderValue::from_static("low"));
                }
                // A near miss in name and a standard header: neither is read.
                headers.insert("x-priorit", HeaderValue::from_static("low"));
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("low"));
                assert_eq!(extractor.from_headers(&headers), Ok(Priority::Normal));
                headers.append(name, HeaderValue::from_static("URGENT"));
                headers.append(name, HeaderValue::from_static("low"));
                assert_eq!(
                    extractor.from_headers(&headers),
                    Ok(Priority::Urgent),
                    "{name} among {others} other headers"
                );
            }
        }
        assert!(format!("{:?}", HeaderPriority::new()).contains("x-priority"));
    }

    #[test]
    fn extension_extractor_reads_the_typed_extension() {
        let mut request = http::Request::new(());
        assert_eq!(
            ExtensionPriority::new().extract(&request),
            Ok(Priority::Normal)
        );
        request.extensions_mut().insert(Priority::Urgent);
        assert_eq!(
            ExtensionPriority::new().extract(&request),
            Ok(Priority::Urgent)
        );
    }
}
