//! The HTTP side of retries: which responses are retried, and replaying `http::Request`s.

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, StatusCode};
use http_body::Body;
use tower::BoxError;

use super::classify::{Classify, RetryDecision, classify_error};
use super::replay::Replay;

/// The default classifier for `http::Response`s.
///
/// Each retryable outcome says whether the upstream processed the request: any request
/// is retried when it did not, only an idempotent one when it may have (see
/// [`HttpReplay`] for which requests are idempotent).
///
/// | outcome | decision | retried for |
/// |---|---|---|
/// | error that is this crate's [`QueueError`](crate::QueueError) | return | |
/// | connection never made ([`is_not_processed`](crate::retry::is_not_processed)) | retry | any request |
/// | 429 or 503 | retry | any request |
/// | 429 or 503 with `Retry-After` (seconds or HTTP date) | retry, not before that | any request |
/// | timeout ([`is_timeout`](crate::retry::is_timeout)), 504 | retry if idempotent, and if the layer [retries timeouts](crate::RetryLayerBuilder::retry_timeouts) | idempotent requests |
/// | any other error (reset, unknown), any other 5xx | retry if idempotent | idempotent requests |
/// | any other response (2xx, 3xx, 4xx) | return | |
///
/// Refusals of other layers are errors too, and this classifier cannot know their types:
/// when the stack has a circuit breaker or a rate limiter below the retry layer,
/// wrap this classifier with [`classify_fn`](crate::classify_fn) and return
/// [`RetryDecision::Return`] for their errors (see the crate docs); map their timeouts
/// to [`RetryDecision::RetryIfIdempotentTimedOut`].
#[derive(Clone, Copy, Debug)]
pub struct HttpClassifier {
    honor_retry_after: bool,
}

impl HttpClassifier {
    /// The classifier described above.
    #[must_use]
    pub fn new() -> Self {
        HttpClassifier {
            honor_retry_after: true,
        }
    }

    /// Whether an upstream `Retry-After` on 429 and 503 stretches the backoff (it does by
    /// default).
    #[must_use]
    pub fn honor_retry_after(mut self, honor: bool) -> Self {
        self.honor_retry_after = honor;
        self
    }
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Classify<http::Response<B>> for HttpClassifier {
    fn classify(&self, result: &Result<http::Response<B>, BoxError>) -> RetryDecision {
        let response = match result {
            Ok(response) => response,
            Err(error) => return classify_error(error),
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            // The upstream refused the request without processing it.
            if self.honor_retry_after
                && let Some(after) = retry_after(response.headers(), SystemTime::now())
            {
                return RetryDecision::RetryAfter(after);
            }
            RetryDecision::Retry
        } else if status == StatusCode::GATEWAY_TIMEOUT {
            RetryDecision::RetryIfIdempotentTimedOut
        } else if status.is_server_error() {
            RetryDecision::RetryIfIdempotent
        } else {
            RetryDecision::Return
        }
    }
}

/// Reads the wait an upstream asked for: a `retry-after-ms` header in milliseconds when it
/// is present and valid (sent by some AI providers, such as Azure `OpenAI`, for waits
/// shorter than a second), else `Retry-After`: delay-seconds or an HTTP date (a date in
/// the past means now). `None` when absent or malformed.
#[must_use]
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(value) = headers
        .get(RETRY_AFTER_MS)
        .and_then(|value| value.to_str().ok())
    {
        let value = value.trim();
        if !value.is_empty()
            && value.len() <= 12
            && value.bytes().all(|byte| byte.is_ascii_digit())
            && let Ok(ms) = value.parse()
        {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // Too many digits to be a real wait: take it as "very long" (the cap applies).
        return Some(value.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `retry-after-ms` response header: the wait in milliseconds.
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// Replays `http::Request`s whose body is a buffered, cloneable body (like
/// `http_body_util::Full<Bytes>`) of at most `max_body_bytes` (64 KiB by default), and
/// says which requests are idempotent.
///
/// The body's size comes from its `size_hint`: a body without a known upper bound, or a
/// larger one, is sent once and not retried. Streaming bodies (such as hyper's
/// `Incoming`) are not `Clone`; buffer them into a `Full<Bytes>` in front of the retry
/// layer to make them replayable.
///
/// A request is idempotent (may be sent again after the upstream may have processed it)
/// when its method is (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`; RFC 9110,
/// section 9.2.2) or when it carries an [`Idempotency-Key`](IDEMPOTENCY_KEY) header (the
/// upstream then recognises a repeat). Other calls can be declared idempotent with
/// [`RetryLayerBuilder::idempotent`](crate::RetryLayerBuilder::idempotent) or
/// [`RetryLayerBuilder::idempotent_if`](crate::RetryLayerBuilder::idempotent_if).
#[derive(Clone, Copy, Debug)]
pub struct HttpReplay {
    max_body_bytes: u64,
}

/// The `Idempotency-Key` request header (IETF draft `httpapi-idempotency-key-header`): a
/// request that carries it may be retried whatever its method.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl HttpReplay {
    /// Replays bodies up to 64 KiB.
    #[must_use]
    pub fn new() -> Self {
        HttpReplay {
            max_body_bytes: 64 * 1024,
        }
    }

    /// Replays bodies up to this many bytes.
    #[must_use]
    pub fn max_body_bytes(mut self, max_body_bytes: u64) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }
}

impl Default for HttpReplay {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Replay<http::Request<B>> for HttpReplay
where
    B: Body + Clone,
{
    fn replay(&self, request: &http::Request<B>) -> Option<http::Request<B>> {
        let size = request.body().size_hint().upper()?;
        (size <= self.max_body_bytes).then(|| clone_request(request))
    }

    fn is_idempotent(&self, request: &http::Request<B>) -> bool {
        request.method().is_idempotent() || request.headers().contains_key(IDEMPOTENCY_KEY)
    }
}

/// Copies an `http::Request` with a cloneable body: method, URI, version, headers,
/// extensions and body.
#[must_use]
pub fn clone_request<B: Clone>(request: &http::Request<B>) -> http::Request<B> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderValue;
    use http_body_util::Full;

    fn response(status: u16, retry_after: Option<&'static str>) -> http::Response<()> {
        let mut builder = http::Response::builder().status(status);
        if let Some(value) = retry_after {
            builder = builder.header(RETRY_AFTER, value);
        }
        builder.body(()).expect("valid response")
    }

    #[test]
    fn classifies_statuses_by_what_the_upstream_did() {
        let classifier = HttpClassifier::new();
        let decide = |status| classifier.classify(&Ok(response(status, None)));
        assert_eq!(decide(200), RetryDecision::Return);
        assert_eq!(decide(304), RetryDecision::Return);
        assert_eq!(decide(400), RetryDecision::Return);
        assert_eq!(decide(404), RetryDecision::Return);
        // Not processed: any request.
        assert_eq!(decide(503), RetryDecision::Retry);
        assert_eq!(decide(429), RetryDecision::Retry);
        // Maybe processed: idempotent requests only.
        assert_eq!(decide(500), RetryDecision::RetryIfIdempotent);
        assert_eq!(decide(502), RetryDecision::RetryIfIdempotent);
        assert_eq!(decide(504), RetryDecision::RetryIfIdempotentTimedOut);
    }

    #[test]
    fn honours_retry_after_on_429_and_503_only() {
        let classifier = HttpClassifier::new();
        assert_eq!(
            classifier.classify(&Ok(response(429, Some("7")))),
            RetryDecision::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            classifier.classify(&Ok(response(503, Some("2")))),
            RetryDecision::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(
            classifier.classify(&Ok(response(500, Some("2")))),
            RetryDecision::RetryIfIdempotent
        );
        assert_eq!(
            HttpClassifier::new()
                .honor_retry_after(false)
                .classify(&Ok(response(429, Some("7")))),
            RetryDecision::Retry
        );
    }

    /// An error shaped like hyper-util's legacy client error: a connect error whose
    /// source is the connector's error, whose source is the `io::Error`.
    #[derive(Debug)]
    struct Wrapped(&'static str, Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.1)
        }
    }

    fn client_error(kind: std::io::ErrorKind) -> BoxError {
        let io = std::io::Error::from(kind);
        Box::new(Wrapped(
            "client error (Connect)",
            Box::new(Wrapped("tcp connect error", Box::new(io))),
        ))
    }

    #[test]
    fn classifies_errors_by_what_the_upstream_did() {
        use std::io::ErrorKind;
        let classifier = HttpClassifier::new();
        let decide = |error: BoxError| {
            let result: Result<http::Response<()>, BoxError> = Err(error);
            classifier.classify(&result)
        };
        assert_eq!(
            decide(Box::new(crate::QueueError::InvalidPriority)),
            RetryDecision::Return
        );
        assert_eq!(
            decide(client_error(ErrorKind::ConnectionRefused)),
            RetryDecision::Retry
        );
        assert_eq!(
            decide(client_error(ErrorKind::AddrNotAvailable)),
            RetryDecision::Retry
        );
        assert_eq!(
            decide(Box::new(std::io::Error::from(ErrorKind::ConnectionRefused))),
            RetryDecision::Retry
        );
        assert_eq!(
            decide(client_error(ErrorKind::ConnectionReset)),
            RetryDecision::RetryIfIdempotent
        );
        assert_eq!(
            decide("connection reset".into()),
            RetryDecision::RetryIfIdempotent
        );
        assert_eq!(
            decide(client_error(ErrorKind::TimedOut)),
            RetryDecision::RetryIfIdempotentTimedOut
        );
        assert_eq!(
            decide(Box::new(tower::timeout::error::Elapsed::new())),
            RetryDecision::RetryIfIdempotentTimedOut
        );
        assert_eq!(
            decide(Box::new(Wrapped(
                "deadline",
                Box::new(tower::timeout::error::Elapsed::new())
            ))),
            RetryDecision::RetryIfIdempotentTimedOut
        );
    }

    #[tokio::test(start_paused = true)]
    async fn recognises_tokio_timeouts() {
        let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
            .await
            .expect_err("times out");
        let error: BoxError = Box::new(elapsed);
        assert!(crate::retry::is_timeout(&error));
    }

    #[test]
    fn idempotent_methods_and_keys() {
        let replay = HttpReplay::new();
        let request = |method: &str, key: Option<&str>| {
            let mut builder = http::Request::builder().method(method).uri("/");
            if let Some(key) = key {
                builder = builder.header(IDEMPOTENCY_KEY, key);
            }
            builder
                .body(Full::new(Bytes::new()))
                .expect("valid request")
        };
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(replay.is_idempotent(&request(method, None)), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!replay.is_idempotent(&request(method, None)), "{method}");
            assert!(
                replay.is_idempotent(&request(method, Some("8e03978e"))),
                "{method} with a key"
            );
        }
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 120 "));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(120)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("99999999999999999999999"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::MAX));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("date"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&earlier).expect("date"));
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
        for bad in ["-1", "soon", "", "1.5"] {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(bad));
            assert_eq!(retry_after(&headers, now), None, "{bad:?}");
        }
    }

    #[test]
    fn replays_small_buffered_bodies_with_everything() {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("http://upstream/analyze?x=1")
            .version(http::Version::HTTP_2)
            .header("x-priority", "high")
            .body(Full::new(Bytes::from_static(b"{\"id\":1}")))
            .expect("valid request");
        request.extensions_mut().insert(42u32);
        let copy = HttpReplay::new().replay(&request).expect("replayable");
        assert_eq!(copy.method(), "POST");
        assert_eq!(copy.uri(), "http://upstream/analyze?x=1");
        assert_eq!(copy.version(), http::Version::HTTP_2);
        assert_eq!(copy.headers()["x-priority"], "high");
        assert_eq!(copy.extensions().get::<u32>(), Some(&42));
        assert_eq!(copy.body().size_hint().exact(), Some(8));

        assert!(
            HttpReplay::new()
                .max_body_bytes(7)
                .replay(&request)
                .is_none()
        );
    }
}
