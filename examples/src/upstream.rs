//! The services at the bottom of the stack: a real HTTP client to an AI provider, and
//! the same contract served in-process by the [`Simulator`].
//!
//! Both read the call's [`AnalyzeInput`] from the request's extensions (the gateway puts
//! it there after checking the request) and answer the gateway's JSON with
//! `"source": "ai"`. The provider's overload answers (429, or 503 with a wait) are passed
//! up as answers, with `Retry-After` and `retry-after-ms`, so that the stack reads them as
//! backpressure: the adaptive limit lowers itself and pauses, the retry waits, the breaker
//! does not count them. Anything else but a 2xx JSON object is an error, so that the stack
//! above can retry, trip the breaker, and fall back.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::{BoxError, Service};
use tracing::Instrument;
use tracing::field::Empty;

use crate::analysis::{AnalyzeAnswer, AnalyzeInput, Source};
use crate::simulator::{ProviderRequest, RETRY_AFTER_MS, SimulatedError, Simulator};

/// The largest provider answer read.
const MAX_PROVIDER_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why a call to the provider did not give an analysis.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The request reached the bottom of the stack without its [`AnalyzeInput`].
    MissingInput,
    /// The provider answered with a status other than 2xx.
    Status(StatusCode),
    /// The provider is overloaded: it answered 429, or 503 with a `Retry-After`. This is
    /// backpressure, not a failure of the call (which did not run).
    Overloaded {
        /// 429 or 503.
        status: StatusCode,
        /// The wait it asked for: `retry-after-ms` if sent, else `Retry-After` in seconds.
        retry_after: Option<Duration>,
    },
    /// The provider's 2xx answer was not a JSON object (or was too large).
    InvalidAnswer(String),
    /// The connection failed: refused, reset, or cut off.
    Transport(BoxError),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingInput => f.write_str("the request carries no analyze input"),
            Self::Status(status) => write!(f, "the AI provider answered {status}"),
            Self::Overloaded {
                status,
                retry_after: Some(wait),
            } => write!(
                f,
                "the AI provider is overloaded ({status}): retry after {} ms",
                wait.as_millis()
            ),
            Self::Overloaded {
                status,
                retry_after: None,
            } => write!(f, "the AI provider is overloaded ({status})"),
            Self::InvalidAnswer(why) => write!(f, "the AI provider's answer is unusable: {why}"),
            Self::Transport(e) => write!(f, "the AI provider could not be reached: {e}"),
        }
    }
}

impl UpstreamError {
    /// The wait the provider asked for, when it said it is overloaded.
    #[must_use]
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The wait a provider's answer asks for: `retry-after-ms` (milliseconds, as some AI providers
/// send it) if present, else `Retry-After` in delta-seconds. HTTP dates are not read.
#[must_use]
pub fn retry_after_of(headers: &http::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    // Capped at a day: a hostile header must not ask for forever.
    const DAY_SECS: f64 = 86_400.0;
    number(RETRY_AFTER_MS)
        .map(|ms| Duration::from_secs_f64((ms / 1000.0).min(DAY_SECS)))
        .or_else(|| {
            number(header::RETRY_AFTER.as_str())
                .map(|secs| Duration::from_secs_f64(secs.min(DAY_SECS)))
        })
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Transport(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// The boxed future of the upstream services (one allocation per upstream call, which
/// takes seconds: immaterial here).
pub type UpstreamFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send + 'static>>;

/// The provider's overload passed up as an answer: `status` (429 or 503), `Retry-After` in
/// whole seconds (rounded up) and `retry-after-ms` when the wait is known, and a short JSON
/// error body.
#[must_use]
pub fn overloaded_answer(status: StatusCode, retry_after: Option<Duration>) -> Response<Body> {
    let mut response = Response::new(Body::from(
        r#"{"error":"the AI provider is overloaded"}"#.as_bytes(),
    ));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        headers.insert(RETRY_AFTER_MS, HeaderValue::from(ms));
    }
    response
}

/// The gateway's answer for an analysis from the provider.
///
/// # Errors
///
/// Fails only if the answer cannot be serialized, which a `serde_json::Value` always can.
pub fn ai_answer(record_id: &str, analysis: Value) -> Result<Response<Body>, BoxError> {
    json_answer(&AnalyzeAnswer {
        record_id: record_id.to_owned(),
        source: Source::Ai,
        analysis,
    })
}

/// A JSON answer with status 200.
///
/// # Errors
///
/// Fails if the answer cannot be serialized.
pub fn json_answer(answer: &AnalyzeAnswer) -> Result<Response<Body>, BoxError> {
    json_bytes(answer).map(|response| response.map(Body::from))
}

/// A JSON answer with status 200, its body as bytes.
///
/// # Errors
///
/// Fails if the answer cannot be serialized.
pub fn json_bytes(answer: &AnalyzeAnswer) -> Result<Response<Bytes>, BoxError> {
    let body = serde_json::to_vec(answer)?;
    let mut response = Response::new(Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn input_of<B>(request: &Request<B>) -> Result<AnalyzeInput, BoxError> {
    request
        .extensions()
        .get::<AnalyzeInput>()
        .cloned()
        .ok_or_else(|| UpstreamError::MissingInput.into())
}

/// An HTTP client to an AI provider: `POST {base}/v1/analyze` with a JSON body carrying
/// `recordId`, `userId` and `context`.
///
/// Plain HTTP only (no TLS in the dependency tree); put a TLS-terminating proxy in
/// front of an HTTPS provider. Timeouts are the stack's call timeout.
///
/// Each call is an `upstream.call` span (a client span for OpenTelemetry), and with the
/// `otel` feature it sends that span's W3C `traceparent` to the provider.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: Arc<Uri>,
}

impl UpstreamClient {
    /// A client for the provider at `base` (e.g. `http://127.0.0.1:8080`).
    ///
    /// # Errors
    ///
    /// Returns a message when `base` is not an `http://` URL.
    pub fn new(base: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        let endpoint: Uri = format!("{base}/v1/analyze")
            .parse()
            .map_err(|e| format!("`{base}` is not a valid upstream URL: {e}"))?;
        if endpoint.scheme_str() != Some("http") || endpoint.authority().is_none() {
            return Err(format!(
                "`{base}` must be an http:// URL with a host (use a TLS-terminating proxy for https)"
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            endpoint: Arc::new(endpoint),
        })
    }
}

impl<B> Service<Request<B>> for UpstreamClient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client opens connections on demand: it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let client = self.client.clone();
        let endpoint = Uri::clone(&self.endpoint);
        let input = input_of(&request);
        let span = tracing::info_span!(
            "upstream.call",
            otel.kind = "client",
            otel.name = "POST /v1/analyze",
            http.request.method = "POST",
            http.response.status_code = Empty,
        );
        let call = async move {
            let input = input?;
            let body = serde_json::to_vec(&ProviderRequest {
                record_id: input.record_id.clone(),
                user_id: input.user_id,
                context: input.context,
            })?;
            let mut call = Request::builder()
                .method(Method::POST)
                .uri(endpoint)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let span = tracing::Span::current();
            crate::telemetry::inject_trace_context(&span, call.headers_mut());
            let answer = client
                .request(call)
                .await
                .map_err(|e| UpstreamError::Transport(e.into()))?;
            let status = answer.status();
            span.record("http.response.status_code", status.as_u16());
            if !status.is_success() {
                let retry_after = retry_after_of(answer.headers());
                let overloaded = status == StatusCode::TOO_MANY_REQUESTS
                    || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some());
                if overloaded {
                    return Ok(overloaded_answer(status, retry_after));
                }
                return Err(UpstreamError::Status(status).into());
            }
            let bytes = Limited::new(answer.into_body(), MAX_PROVIDER_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| UpstreamError::InvalidAnswer(e.to_string()))?
                .to_bytes();
            let analysis: Value = serde_json::from_slice(&bytes)
                .map_err(|e| UpstreamError::InvalidAnswer(e.to_string()))?;
            if !analysis.is_object() {
                return Err(UpstreamError::InvalidAnswer("not a JSON object".into()).into());
            }
            ai_answer(&input.record_id, analysis)
        };
        Box::pin(call.instrument(span))
    }
}

/// The [`Simulator`] called in-process, with the same contract as [`UpstreamClient`]:
/// for tests that run on paused time, where no socket is involved.
#[derive(Debug, Clone)]
pub struct InProcessUpstream {
    simulator: Arc<Simulator>,
}

impl InProcessUpstream {
    /// Calls go to `simulator`.
    #[must_use]
    pub fn new(simulator: Arc<Simulator>) -> Self {
        Self { simulator }
    }
}

impl<B> Service<Request<B>> for InProcessUpstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let simulator = Arc::clone(&self.simulator);
        let input = input_of(&request);
        Box::pin(async move {
            let input = input?;
            let request = ProviderRequest {
                record_id: input.record_id,
                user_id: input.user_id,
                context: input.context,
            };
            match simulator.analyze(&request).await {
                Ok(analysis) => ai_answer(&request.record_id, analysis),
                Err(SimulatedError::Overloaded { retry_after }) => Ok(overloaded_answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(retry_after),
                )),
                Err(_) => Err(UpstreamError::Status(StatusCode::SERVICE_UNAVAILABLE).into()),
            }
        })
    }
}
