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
use tower_token_bucket::{Clock, Quota, RateLimitError, RateLimitLayer, Refusal};

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

/// The same limit in the answering form: no `HandleErrorLayer`, plain `.layer(...)`.
fn answering_app() -> Router {
    let limiter = RateLimitLayer::builder(Quota::per_second(3))
        .name("per-user")
        .key(user_or_peer_ip("x-user-id"))
        .build()
        .answer_refusals();
    Router::new()
        .route("/a", get(|| async { "a" }).layer(limiter.clone()))
        .route("/b", axum::routing::post(|| async { "b" }).layer(limiter))
}

async fn head_and_body(res: http::Response<Body>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = res.status().as_u16();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

/// The answering form refuses exactly as the error form answered through
/// `HandleErrorLayer` with `to_http_response`: same status, headers and body; and it
/// answers a gRPC request in the gRPC form.
#[tokio::test(start_paused = true)]
async fn answering_form_attaches_to_routes_and_answers_as_the_error_form() {
    let errors = app();
    let answers = answering_app();
    for grpc in [false, true] {
        let user = if grpc { "carol" } else { "dave" };
        let mut seen = Vec::new();
        for (app, method) in [(&errors, "GET"), (&answers, "POST")] {
            let mut statuses = Vec::new();
            let mut last = None;
            for _ in 0..4 {
                let path = if method == "GET" { "/a" } else { "/b" };
                let mut req = request(path, Some(user), "192.0.2.9:1");
                *req.method_mut() = method.parse().unwrap();
                if grpc {
                    req.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                }
                let res = app.clone().oneshot(req).await.unwrap();
                statuses.push(res.status().as_u16());
                last = Some(head_and_body(res).await);
            }
            seen.push((statuses, last));
        }
        if !grpc {
            assert_eq!(seen[0], seen[1]);
        }
        let (statuses, last) = &seen[1];
        let (_, headers, body) = last.as_ref().unwrap();
        if grpc {
            assert_eq!(statuses, &[200, 200, 200, 200]);
            assert!(headers.contains(&("grpc-status".into(), "8".into())));
            assert!(body.is_empty());
        } else {
            assert_eq!(statuses, &[200, 200, 200, 429]);
            assert!(headers.contains(&("retry-after".into(), "1".into())));
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(json["retryAfter"], 1);
        }
    }
}
