//! The limiter under axum: one layer on two routes, peer IPs from `ConnectInfo`, and the
//! rejection response.
#![cfg(feature = "axum")]

use std::net::SocketAddr;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::{BoxError, Router};
use http::{Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_token_bucket::http::user_or_peer_ip;
use tower_token_bucket::{Clock, Quota, RateLimitError, RateLimitLayer};

async fn refused(err: BoxError) -> http::Response<Body> {
    match err.downcast_ref::<RateLimitError>() {
        Some(e) => e.to_http_response(),
        None => {
            let mut r = http::Response::new(Body::empty());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

fn app() -> Router {
    let limiter = RateLimitLayer::builder(Quota::per_second(3))
        .clock(Clock::Tokio)
        .name("per-user")
        .key(user_or_peer_ip("x-user-id"))
        .build();
    let limited = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(refused))
        .layer(limiter);
    Router::new()
        .route("/a", get(|| async { "a" }).layer(limited.clone()))
        .route("/b", get(|| async { "b" }).layer(limited))
}

fn request(path: &str, user: Option<&str>, peer: &str) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(user) = user {
        builder = builder.header("x-user-id", user);
    }
    let mut req = builder.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    req
}

#[tokio::test(start_paused = true)]
async fn one_layer_on_two_routes_is_one_limit() {
    let app = app();
    let mut statuses = Vec::new();
    for path in ["/a", "/b", "/a", "/b"] {
        let res = app
            .clone()
            .oneshot(request(path, Some("alice"), "192.0.2.1:1000"))
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    let res = app
        .clone()
        .oneshot(request("/a", Some("alice"), "192.0.2.1:1000"))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(res.headers().contains_key("ratelimit-policy"));

    // Bob has his own bucket.
    let res = app
        .clone()
        .oneshot(request("/b", Some("bob"), "192.0.2.1:1000"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn without_the_header_the_peer_ip_is_the_key() {
    let app = app();
    for _ in 0..3 {
        let res = app
            .clone()
            .oneshot(request("/a", None, "198.51.100.4:5000"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Another port of the same host is the same client.
    let res = app
        .clone()
        .oneshot(request("/b", None, "198.51.100.4:6000"))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // Another host is not.
    let res = app
        .clone()
        .oneshot(request("/b", None, "198.51.100.5:5000"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A user header equal to that IP is a different key.
    let res = app
        .clone()
        .oneshot(request("/b", Some("198.51.100.4"), "203.0.113.1:1"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
