//! The HTTP face: labels from `http::Request`, gRPC-aware classification of
//! `http::Response`, and the default layer.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::Body;

use crate::body::RedBody;
use crate::classify::{Classify, GRPC_UNKNOWN, Status, parse_grpc_status};
use crate::labels::{ExtractLabels, MethodLabel, RequestLabels};
use crate::layer::{RedMetricsLayer, RedMetricsLayerBuilder};
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

    fn is_recorded(&self, request: &Request<B>) -> bool {
        request.extensions().get::<RedRecorded>().is_some()
    }

    fn mark_recorded(&self, request: &mut Request<B>) {
        request.extensions_mut().insert(RedRecorded);
    }
}

/// The request extension by which a RED layer marks a request it records, so that the
/// RED layers inside it (e.g. the one in a preset on a route, under one on the whole
/// router) pass the request through rather than count it a second time.
///
/// [`HttpLabels`] sets and reads it. A server that records requests by other means can
/// insert it to keep these layers from recording them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedRecorded;

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
/// - A response whose `content-type` is `application/grpc` (or `application/grpc+...`) is
///   gRPC: its outcome is its `grpc-status`. In the headers (trailers-only responses), it
///   is recorded at once; otherwise the body is watched and the request recorded at the
///   trailers. A body that ends without a `grpc-status` records `UNKNOWN`, a body error
///   records `error`, and a body dropped before its status records `cancelled`. A gRPC
///   response whose HTTP status is not 200 (a proxy's answer) is recorded by that status.
/// - gRPC-Web responses (`application/grpc-web...`) are recorded at once, by a
///   `grpc-status` header when there is one, else by their HTTP status (their trailers
///   travel inside the body, which is not parsed).
/// - Any other response is recorded at once, by its HTTP status; the body is passed
///   through.
///
/// Durations run to the point of recording: the response head for HTTP, the trailers for
/// streaming gRPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassify;

impl<B: Body> Classify<Response<B>> for HttpClassify {
    type Output = Response<RedBody<B>>;

    // Inlined into the response future's poll (see there); the reading of the status
    // stays out of line.
    #[inline(always)]
    fn classify(&self, response: Response<B>, recording: Recording) -> Self::Output {
        let recording = match status_at_head(&response) {
            Some(status) => {
                recording.finish(status);
                Recording::disarmed()
            }
            None => recording,
        };
        response.map(|body| RedBody::new(body, recording))
    }
}

/// The status of `response` when its head tells it; `None` for a gRPC response whose
/// status comes in the trailers.
#[inline(never)]
fn status_at_head<B: Body>(response: &Response<B>) -> Option<Status> {
    let headers = response.headers();
    let http_status = Status::Http(response.status().as_u16());
    match grpc_kind(headers) {
        GrpcKind::None => Some(http_status),
        _ if headers.contains_key(GRPC_STATUS) => Some(grpc_status(headers)),
        // A gRPC answer without the HTTP 200 that gRPC requires (e.g. from a proxy).
        GrpcKind::Grpc | GrpcKind::GrpcWeb if response.status() != http::StatusCode::OK => {
            Some(http_status)
        }
        GrpcKind::Grpc if response.body().is_end_stream() => Some(Status::Grpc(GRPC_UNKNOWN)),
        // The status comes in the trailers: record when the body gets there.
        GrpcKind::Grpc => None,
        // gRPC-Web carries its trailers inside the body, where they are not read.
        GrpcKind::GrpcWeb => Some(http_status),
    }
}

/// The gRPC status header (and trailer).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// What `content-type` says about a response.
enum GrpcKind {
    /// `application/grpc`, `application/grpc+proto`, `application/grpc;...`
    Grpc,
    /// `application/grpc-web...`
    GrpcWeb,
    /// Anything else.
    None,
}

fn grpc_kind(headers: &HeaderMap) -> GrpcKind {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return GrpcKind::None;
    };
    match value.as_bytes().strip_prefix(b"application/grpc") {
        Some([] | [b'+' | b';', ..]) => GrpcKind::Grpc,
        Some([b'-', ..]) => GrpcKind::GrpcWeb,
        _ => GrpcKind::None,
    }
}

/// The gRPC status in `headers` (or trailers); `UNKNOWN` when missing or unreadable.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Status {
    Status::Grpc(
        headers
            .get(GRPC_STATUS)
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
    pub fn builder() -> RedMetricsLayerBuilder<HttpLabels, HttpClassify> {
        RedMetricsLayerBuilder::new(HttpLabels, HttpClassify)
    }
}

impl Default for RedMetricsLayer<HttpLabels, HttpClassify> {
    fn default() -> Self {
        Self::new()
    }
}
