//! Degraded answers are counted as clients see them: once per degraded answer, whether
//! the fallback ran for the request itself or for the identical request whose call it
//! waited on, and never for an answer the client did not get.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_health_ai::{Clock, HealthAiStack, UpstreamRequest};

fn ask(user: &str, body: &'static str) -> Request<Body> {
    Request::post("/analyze")
        .header("x-user-id", user)
        .body(Body::from(body))
        .unwrap()
}

/// An upstream that answers `ai:<body>` after 10 ms while healthy, and fails else.
fn upstream(
    healthy: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
) -> impl Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |request: UpstreamRequest| {
        let healthy = Arc::clone(&healthy);
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            if !healthy.load(Ordering::SeqCst) {
                return Err::<_, BoxError>("upstream down".into());
            }
            let body = request.into_body().collect().await?.to_bytes();
            Ok(Response::new(Body::from(format!(
                "ai:{}",
                String::from_utf8_lossy(&body)
            ))))
        }
    })
}

fn hanging() -> impl Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_request: UpstreamRequest| {
        std::future::pending::<Result<Response<Body>, BoxError>>()
    })
}

#[tokio::test(start_paused = true)]
async fn every_degraded_answer_a_waiter_gets_is_counted() {
    // Four identical requests at once: one call, past its deadline; every request gets
    // the fallback's answer, and each of the four answers is counted.
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .request_deadline(Duration::from_secs(2))
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(hanging());
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(ask("ada", "same"))))
        .collect();
    let mut degraded = 0;
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        if response.headers().get("x-degraded").is_some() {
            degraded += 1;
        }
    }
    assert_eq!(degraded, 4);
    let stats = handle.degraded();
    assert_eq!(stats.total, 4, "{stats:?}");
    assert_eq!(stats.deadline, 4, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stale_answer_that_replaced_the_fallback_is_not_counted_as_degraded() {
    let healthy = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .retry_attempts(1)
        .cache_ttl(Duration::from_secs(60))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(upstream(Arc::clone(&healthy), Arc::clone(&calls)));
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    tokio::time::sleep(Duration::from_secs(61)).await;
    healthy.store(false, Ordering::SeqCst);
    let response = svc.clone().oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "STALE");
    assert!(response.headers().get("x-degraded").is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The client got a real (stale) answer: nothing degraded reached it.
    assert_eq!(handle.degraded().total, 0, "{:?}", handle.degraded());
}

#[tokio::test(start_paused = true)]
async fn the_upstreams_own_failure_passed_through_is_not_marked_degraded() {
    // The fallback declines (`None`): the upstream's own 500 goes to the client as it is,
    // neither marked nor counted as a degraded answer.
    let stack = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .retry_attempts(1)
        .fallback(|_parts, _error| None)
        .build();
    let handle = stack.handle();
    let svc = stack.layer(service_fn(|_request: UpstreamRequest| async {
        let mut response = Response::new(Body::from("upstream broke"));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        Ok::<_, BoxError>(response)
    }));
    let response = svc.oneshot(ask("ada", "r1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        response.headers().get("x-degraded").is_none(),
        "{:?}",
        response.headers()
    );
    assert!(
        response
            .extensions()
            .get::<tower_health_ai::breaker::Degraded>()
            .is_none()
    );
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "upstream broke"
    );
    assert_eq!(handle.degraded().total, 0);
}
