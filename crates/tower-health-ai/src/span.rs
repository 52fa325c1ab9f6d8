//! The request's span: `health_ai.request`, opened by the preset for each request, with
//! the decisions of the layers below recorded on it and their events inside it.
//!
//! | field | value |
//! |---|---|
//! | `route` | the matched route template (axum's `MatchedPath`), else `unmatched` |
//! | `user` | a hash of the user key (the user header, else the client IP), never the raw id: keyed per process, so stable within a process and meaningless outside it |
//! | `priority` | the queue level the request was given |
//! | `cache` | the cache's verdict (`x-cache`: `HIT`, `MISS`, `STALE`, …) |
//! | `attempts` | calls made to the upstream by the retry layer |
//! | `status` | the answer's HTTP status |
//! | `outcome` | `answered`, `degraded` (the fallback answered), `refused` (4xx/503 of ours) or `failed` (5xx) |
//! | `degraded` | whether the answer is the fallback's |

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::OnceLock;

use http::{HeaderName, Request, Response};
use tower_priority_queue::PriorityExtractor;
use tracing::Span;
use tracing::field::Empty;

use crate::priority::{PresetPriority, PriorityHeader};

/// The key of the user hash: random per process.
fn hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

/// Opens the request's span (disabled, and free, when no subscriber wants it).
pub(crate) fn request_span<B>(
    request: &Request<B>,
    user_header: &'static str,
    priority: PriorityHeader,
) -> Span {
    let span = tracing::info_span!(
        "health_ai.request",
        route = Empty,
        user = Empty,
        priority = Empty,
        cache = Empty,
        attempts = Empty,
        status = Empty,
        outcome = Empty,
        degraded = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    span.record("route", route(request));
    // Recorded once, here: a formatting subscriber appends every recording of a field,
    // and the queue sees a request once per attempt.
    if let Ok(priority) = PresetPriority::new(priority).extract(request) {
        span.record("priority", priority.as_str());
    }
    let user =
        crate::stack::named_user(request.headers().get(HeaderName::from_static(user_header)))
            .map(|user| hasher().hash_one(user.as_bytes()))
            .or_else(|| peer(request).map(|ip| hasher().hash_one(ip)));
    if let Some(user) = user {
        span.record("user", format_args!("{user:016x}"));
    }
    span
}

#[cfg(feature = "axum")]
fn route<B>(request: &Request<B>) -> &str {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", axum::extract::MatchedPath::as_str)
}

#[cfg(not(feature = "axum"))]
fn route<B>(_request: &Request<B>) -> &str {
    "unmatched"
}

fn peer<B>(request: &Request<B>) -> Option<std::net::IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    request.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

/// Records the answer on the span.
pub(crate) fn record_outcome<B>(span: &Span, response: &Response<B>) {
    if span.is_disabled() {
        return;
    }
    let status = response.status();
    let degraded = response.headers().contains_key("x-degraded");
    if let Some(cache) = response
        .headers()
        .get("x-cache")
        .and_then(|value| value.to_str().ok())
    {
        span.record("cache", cache);
    }
    let outcome = if degraded {
        "degraded"
    } else if status.is_server_error() && status != http::StatusCode::SERVICE_UNAVAILABLE {
        "failed"
    } else if status.is_client_error() || status == http::StatusCode::SERVICE_UNAVAILABLE {
        "refused"
    } else {
        "answered"
    };
    span.record("status", status.as_u16());
    span.record("outcome", outcome);
    span.record("degraded", degraded);
}
