//! `GET /dashboard`: a live page for the operator, one self-contained HTML document
//! (inline CSS, JavaScript and SVG; nothing fetched but `/api/metrics`, polled every
//! second).
//!
//! It shows request and error rates, p50/p95/p99, the cache hit rate, the queue's depth
//! per priority against its in-flight limit, the breaker's state and the transitions seen
//! since the page opened, degraded answers by reason, and dollars spent and saved. Every
//! figure read from `/api/metrics` is also in its element's `data-value` attribute, as
//! received, for tests and scrapers.

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};

/// The route of the page.
pub const DASHBOARD_ROUTE: &str = "/dashboard";

/// The page, as served.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The page's content security policy: its own inline script and style, and requests to
/// this origin only (no CDN, no third party).
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The handler of `GET /dashboard`.
pub async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}
