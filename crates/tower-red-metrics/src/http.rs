//! The HTTP face: labels from `http::Request`, gRPC-aware classification of
//! `http::Response`, and the default layer.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, Response};
use http_body::Body;

use crate::body::RedBody;
use crate::classify::{Classify, GRPC_UNKNOWN, Status, parse_grpc_status};
use crate::labels::{ExtractLabels, MethodLabel, RequestLabels};
use crate::layer::{RedMetricsBuilder, RedMetricsLayer};
use crate::state::Recording;

/// Labels of an `http::Request`: the method (standard ones, else `OTHER`) and, with the
/// `axum` feature, the route template from axum's `MatchedPath`; requests without one
/// are recorded under [`UNMATCHED_ROUTE`](crate::UNMATCHED_ROUTE). The raw path is never
/// used.
///
/// axum inserts `MatchedPath` while routing, so apply the layer with `Router::layer` or
/// `Router::route_layer` (inside the router) for route labels: a layer wrapped around the
/// whole router sees requests before routing, and records them all as `unmatched`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpLabels;

impl<B> ExtractLabels<Request<B>> for HttpLabels {
    fn extract<'r>(&self, request: &'r Request<B>) -> RequestLabels<'r> {
        RequestLabels {
            method: MethodLabel::from(request.method()),
            route: route(request),
        }
    }
}

#[cfg(feature = "axum")]
fn route<B>(request: &Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| std::borrow::Cow::Borrowed(path.as_str()))
}

#[cfg(not(feature = "axum"))]
fn route<B>(_request: &Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    None
}

/// Classifies `http::Response`s, gRPC-aware.
///
/// - A response whose `content-type` starts with `application/grpc` is gRPC: its outcome
///   is its `grpc-status`. In the headers (trailers-only responses), it is recorded at
///   once; otherwise the body is watched and the request recorded at the trailers. A body
///   that ends without a `grpc-status` records `UNKNOWN`, a body error records `error`,
///   and a body dropped before its status records `cancelled`.
/// - Any other response is recorded at once, by its HTTP status; the body is passed
///   through.
///
/// Durations run to the point of recording: the response head for HTTP, the trailers for
/// streaming gRPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassify;

impl<B: Body> Classify<Response<B>> for HttpClassify {
    type Output = Response<RedBody<B>>;

    fn classify(&self, response: Response<B>, recording: Recording) -> Self::Output {
        let headers = response.headers();
        let recording = if is_grpc(headers) {
            if headers.contains_key("grpc-status") {
                recording.finish(grpc_status(headers));
                Recording::disarmed()
            } else if response.body().is_end_stream() {
                recording.finish(Status::Grpc(GRPC_UNKNOWN));
                Recording::disarmed()
            } else {
                recording
            }
        } else {
            recording.finish(Status::Http(response.status().as_u16()));
            Recording::disarmed()
        };
        response.map(|body| RedBody::new(body, recording))
    }
}

/// Whether `headers` say the message is gRPC.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status in `headers` (or trailers); `UNKNOWN` when missing or unreadable.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Status {
    Status::Grpc(
        headers
            .get("grpc-status")
            .map_or(GRPC_UNKNOWN, |value| parse_grpc_status(value.as_bytes())),
    )
}

impl From<http::StatusCode> for Status {
    fn from(status: http::StatusCode) -> Self {
        Self::Http(status.as_u16())
    }
}

impl RedMetricsLayer<HttpLabels, HttpClassify> {
    /// A layer for `http::Request`/`http::Response` services with the defaults: a
    /// 5-minute window, up to 1,000 routes, the global recorder.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for an HTTP layer.
    #[must_use]
    pub fn builder() -> RedMetricsBuilder<HttpLabels, HttpClassify> {
        RedMetricsBuilder::new(HttpLabels, HttpClassify)
    }
}

impl Default for RedMetricsLayer<HttpLabels, HttpClassify> {
    fn default() -> Self {
        Self::new()
    }
}
