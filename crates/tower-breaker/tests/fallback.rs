//! The fallback layer, alone and over the breaker.
#![cfg(feature = "http")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use support::{BROKEN, HANG, Upstream};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_breaker::fallback::{FallbackCause, FallbackRequest};
use tower_breaker::{
    BreakerError, CaptureHead, CircuitBreakerLayer, Degraded, FallbackLayer, NotDegraded,
    TimeoutLayer,
};

/// The demo's capture: the record id from the path and the user id header.
#[derive(Clone, Debug)]
struct Facts {
    record: String,
    user: Option<String>,
}

fn capture(request: &Request<Bytes>) -> Facts {
    Facts {
        record: request
            .uri()
            .path()
            .trim_start_matches("/api/health-records/")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned(),
        user: request
            .headers()
            .get("x-user-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    }
}

type Cause = &'static str;

fn cause_of(request: &FallbackRequest<Facts, Response<Bytes>>) -> Cause {
    match (&request.cause, request.cause.breaker_error()) {
        (_, Some(BreakerError::CircuitOpen { .. })) => "circuit open",
        (_, Some(BreakerError::Timeout { .. })) => "timeout",
        (FallbackCause::Response(_), _) => "bad response",
        _ => "upstream error",
    }
}

fn local_analysis(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    FallbackRequest<Facts, Response<Bytes>>,
    Response = Response<Bytes>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |request: FallbackRequest<Facts, Response<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let body = format!(
            "local analysis of {} for {} ({})",
            request.context.record,
            request.context.user.as_deref().unwrap_or("anonymous"),
            cause_of(&request),
        );
        async move { Ok::<_, Infallible>(Response::new(Bytes::from(body))) }
    })
}

fn analyze() -> Request<Bytes> {
    Request::builder()
        .method(Method::POST)
        .uri("/api/health-records/rec-42/analyze")
        .header("x-user-id", "u-7")
        .body(Bytes::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_is_answered_by_the_fallback_and_marked_degraded() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(FallbackLayer::new(capture, local_analysis(calls.clone())))
        .service(Upstream::answering(BROKEN));
    let response = service.oneshot(analyze()).await.unwrap();
    assert_eq!(
        response.body(),
        "local analysis of rec-42 for u-7 (upstream error)"
    );
    assert_eq!(response.extensions().get::<Degraded>(), Some(&Degraded));
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_success_passes_unmarked_and_the_fallback_is_not_called() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(FallbackLayer::new(capture, local_analysis(calls.clone())))
        .service(Upstream::answering(200));
    let response = service.oneshot(analyze()).await.unwrap();
    assert_eq!(response.body(), "upstream");
    assert!(response.extensions().get::<Degraded>().is_none());
    assert!(!response.headers().contains_key("x-degraded"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_and_a_timeout_are_answered_by_the_fallback() {
    let calls = Arc::new(AtomicUsize::new(0));
    let breaker = CircuitBreakerLayer::new();
    let handle = breaker.handle();
    let service = ServiceBuilder::new()
        .layer(FallbackLayer::new(capture, local_analysis(calls.clone())))
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(120)))
        .service(Upstream::answering(HANG));
    for _ in 0..3 {
        let response = service.clone().oneshot(analyze()).await.unwrap();
        assert_eq!(
            response.body(),
            "local analysis of rec-42 for u-7 (timeout)"
        );
    }
    assert_eq!(handle.state(), tower_breaker::State::Open);
    let response = service.clone().oneshot(analyze()).await.unwrap();
    assert_eq!(
        response.body(),
        "local analysis of rec-42 for u-7 (circuit open)"
    );
    assert!(response.extensions().get::<Degraded>().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_policy_can_send_failed_responses_to_the_fallback() {
    let calls = Arc::new(AtomicUsize::new(0));
    let policy = |result: &Result<Response<Bytes>, BoxError>| {
        result
            .as_ref()
            .map_or(true, |response| response.status().is_server_error())
    };
    let layer = FallbackLayer::new(capture, local_analysis(calls.clone())).policy(policy);
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(Upstream::answering(502));
    let response = service.clone().oneshot(analyze()).await.unwrap();
    assert_eq!(
        response.body(),
        "local analysis of rec-42 for u-7 (bad response)"
    );
    assert_eq!(response.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_may_hand_back_the_upstreams_own_answer_unmarked() {
    // A fallback with nothing better to give hands back the failed answer as it is.
    let fallback = service_fn(
        |request: FallbackRequest<Facts, Response<Bytes>>| async move {
            match request.cause {
                FallbackCause::Response(mut response) => {
                    response.extensions_mut().insert(NotDegraded);
                    Ok(response)
                }
                _ => Err::<Response<Bytes>, BoxError>("no answer".into()),
            }
        },
    );
    let policy = |result: &Result<Response<Bytes>, BoxError>| {
        result
            .as_ref()
            .map_or(true, |response| response.status().is_server_error())
    };
    let service = ServiceBuilder::new()
        .layer(FallbackLayer::new(capture, fallback).policy(policy))
        .service(Upstream::answering(502));
    let response = service.oneshot(analyze()).await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.body(), "upstream");
    assert!(response.headers().get("x-degraded").is_none());
    assert!(response.extensions().get::<Degraded>().is_none());
    assert!(response.extensions().get::<NotDegraded>().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failing_fallback_returns_its_own_error() {
    let fallback = service_fn(|_: FallbackRequest<Facts, Response<Bytes>>| async {
        Err::<Response<Bytes>, BoxError>("fallback down too".into())
    });
    let service = ServiceBuilder::new()
        .layer(FallbackLayer::new(capture, fallback))
        .service(Upstream::answering(BROKEN));
    let error = service.oneshot(analyze()).await.unwrap_err();
    assert_eq!(error.to_string(), "fallback down too");
}

#[tokio::test(start_paused = true)]
async fn capture_head_keeps_the_request_head() {
    #[derive(Clone, Debug, PartialEq)]
    struct Tag(u8);
    let fallback = service_fn(
        |request: FallbackRequest<http::request::Parts, Response<Bytes>>| async move {
            let head = request.context;
            assert_eq!(head.method, Method::POST);
            assert_eq!(head.uri.path(), "/api/health-records/rec-42/analyze");
            assert_eq!(head.headers["x-user-id"], "u-7");
            assert_eq!(head.extensions.get::<Tag>(), Some(&Tag(9)));
            Ok::<_, Infallible>(Response::new(Bytes::from_static(b"from head")))
        },
    );
    let service = ServiceBuilder::new()
        .layer(FallbackLayer::new(CaptureHead, fallback))
        .service(Upstream::answering(BROKEN));
    let mut request = analyze();
    request.extensions_mut().insert(Tag(9));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.body(), "from head");
}
