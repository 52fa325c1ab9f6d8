//! The answering form on an axum route: refusals are answered as the error form's
//! `to_response` would answer them, and the route needs no `HandleErrorLayer`.
#![cfg(feature = "http")]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_priority_queue::{Priority, PriorityQueueLayer};

fn request(grpc: bool) -> Request<Body> {
    let mut builder = Request::post("/slow").header("x-priority", "low");
    if grpc {
        builder = builder.header("content-type", "application/grpc");
    }
    builder.body(Body::empty()).expect("request")
}

#[tokio::test(start_paused = true)]
async fn a_full_room_is_answered_503_with_retry_after_json_or_grpc() {
    let queue = PriorityQueueLayer::builder()
        .max_in_flight(1)
        .capacity(0)
        .retry_after(Duration::from_millis(2500))
        .build();
    let handle = queue.handle();
    let app: Router = Router::new().route(
        "/slow",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "done"
        })
        .layer(queue.answer_refusals()),
    );

    let busy = tokio::spawn(app.clone().oneshot(request(false)));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().processing, 1);

    let refused = app
        .clone()
        .oneshot(request(false))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "3");
    assert_eq!(refused.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(refused.into_body(), 1024)
        .await
        .expect("body");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({
            "error": format!("queue full: {} priority request shed", Priority::Low),
            "retryAfter": 3
        })
    );

    let refused = app
        .clone()
        .oneshot(request(true))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::OK);
    assert_eq!(refused.headers()["grpc-status"], "14");
    assert_eq!(refused.headers()["retry-after"], "3");

    let done = busy.await.expect("no panic").expect("infallible");
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(handle.snapshot().processing, 0);
}
