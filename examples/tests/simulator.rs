//! The simulated provider's capacity, on paused time: above it, a call is refused at once
//! with 429 and a `Retry-After`, and is not billed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use health_ai_examples::simulator::{
    LatencyRange, ProviderRequest, RETRY_AFTER_MS, SimulatedError, Simulator, SimulatorConfig,
};
use health_ai_examples::upstream::retry_after_of;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const LATENCY: Duration = Duration::from_secs(45);

fn provider(capacity: usize) -> Arc<Simulator> {
    let mut config = SimulatorConfig::new(LatencyRange::fixed(LATENCY), 0.0, 1);
    config.capacity = capacity;
    Simulator::new(config)
}

fn request(n: usize) -> ProviderRequest {
    ProviderRequest {
        record_id: format!("r{n}"),
        user_id: "u".into(),
        context: None,
    }
}

/// Starts `n` calls at once; returns their tasks (each yields its result and when it
/// ended), once every call has reached the provider.
async fn start_calls(
    sim: &Arc<Simulator>,
    n: usize,
) -> JoinSet<(Result<Value, SimulatedError>, Instant)> {
    let mut calls = JoinSet::new();
    for i in 0..n {
        let sim = Arc::clone(sim);
        calls.spawn(async move {
            let result = sim.analyze(&request(i)).await;
            (result, Instant::now())
        });
    }
    while sim.calls() < n as u64 {
        tokio::task::yield_now().await;
    }
    calls
}

#[tokio::test(start_paused = true)]
async fn one_call_above_capacity_gets_429_at_once_and_is_not_billed() {
    let capacity = 3;
    let sim = provider(capacity);
    let start = Instant::now();
    let mut calls = start_calls(&sim, capacity + 1).await;
    assert_eq!(sim.in_flight(), capacity);

    let mut overloaded = Vec::new();
    let mut answered = 0;
    while let Some(joined) = calls.join_next().await {
        match joined.expect("no call panics") {
            (Err(SimulatedError::Overloaded { retry_after }), at) => {
                overloaded.push((retry_after, at - start));
            }
            (Ok(_), at) => {
                answered += 1;
                assert_eq!(at - start, LATENCY);
            }
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        overloaded,
        vec![(Duration::from_secs(2), Duration::ZERO)],
        "exactly one 429, answered at once"
    );
    assert_eq!(answered, capacity);
    assert_eq!(
        (sim.calls(), sim.billed(), sim.overloaded()),
        (4, 3, 1),
        "the refused call is received but not billed"
    );
    assert_eq!(sim.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_takes_a_new_call() {
    let sim = provider(2);
    let first = {
        let sim = Arc::clone(&sim);
        tokio::spawn(async move { sim.analyze(&request(0)).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = {
        let sim = Arc::clone(&sim);
        tokio::spawn(async move { sim.analyze(&request(1)).await })
    };
    tokio::task::yield_now().await;
    assert!(matches!(
        sim.analyze(&request(2)).await,
        Err(SimulatedError::Overloaded { .. })
    ));
    // The first call ends at 45 s; the second still runs.
    assert!(first.await.expect("no panic").is_ok());
    assert_eq!(sim.in_flight(), 1);
    let start = Instant::now();
    assert!(sim.analyze(&request(3)).await.is_ok(), "a slot was free");
    assert_eq!(start.elapsed(), LATENCY);
    assert!(second.await.expect("no panic").is_ok());
    assert_eq!((sim.calls(), sim.billed(), sim.overloaded()), (4, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_caller_goes_away_frees_its_slot() {
    let sim = provider(1);
    let abandoned = {
        let sim = Arc::clone(&sim);
        tokio::spawn(async move { sim.analyze(&request(0)).await })
    };
    tokio::task::yield_now().await;
    assert_eq!(sim.in_flight(), 1);
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(sim.in_flight(), 0);
    assert!(sim.analyze(&request(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn capacity_zero_is_unlimited() {
    let sim = provider(0);
    assert_eq!(sim.capacity(), None);
    let n = 100;
    let mut calls = start_calls(&sim, n).await;
    assert_eq!(sim.in_flight(), n);
    while let Some(joined) = calls.join_next().await {
        assert!(joined.expect("no panic").0.is_ok());
    }
    assert_eq!((sim.billed(), sim.overloaded()), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn the_http_face_answers_429_with_retry_after() {
    let sim = provider(1);
    let router = sim.router();
    let call = |n: usize| {
        Request::post("/v1/analyze")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_vec(&request(n)).expect("serializable"),
            ))
            .expect("a valid request")
    };
    let mut running = router.clone();
    let busy = tokio::spawn(running.call(call(0)));
    while sim.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    let refused = router.clone().oneshot(call(1)).await.expect("infallible");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = refused.headers().clone();
    assert_eq!(headers[header::RETRY_AFTER], "2");
    assert_eq!(headers[RETRY_AFTER_MS], "2000");
    assert_eq!(retry_after_of(&headers), Some(Duration::from_secs(2)));
    let body = refused
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let json: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(json["retryAfter"], 2);
    let answered = busy.await.expect("no panic").expect("infallible");
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!((sim.billed(), sim.overloaded()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_in_process_upstream_reports_overload_with_its_wait() {
    let sim = provider(1);
    let mut upstream = health_ai_examples::gateway::in_process(&sim);
    let input = |n: usize| {
        let mut r = Request::new(http_body_util::Full::new(bytes::Bytes::new()));
        r.extensions_mut()
            .insert(health_ai_examples::analysis::AnalyzeInput {
                record_id: format!("r{n}"),
                user_id: "u".into(),
                context: None,
            });
        r
    };
    let busy = tokio::spawn(upstream.call(input(0)));
    while sim.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let answer = upstream
        .call(input(1))
        .await
        .expect("the provider's overload is an answer");
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        retry_after_of(answer.headers()),
        Some(Duration::from_secs(2))
    );
    assert_eq!(answer.headers()["retry-after"], "2");
    assert_eq!(answer.headers()["retry-after-ms"], "2000");
    assert!(busy.await.expect("no panic").is_ok());
}

#[test]
fn retry_after_prefers_milliseconds_and_ignores_nonsense() {
    let headers = |pairs: &[(&'static str, &'static str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    };
    assert_eq!(
        retry_after_of(&headers(&[("retry-after", "3")])),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        retry_after_of(&headers(&[("retry-after", "1"), ("retry-after-ms", "20")])),
        Some(Duration::from_millis(20))
    );
    assert_eq!(
        retry_after_of(&headers(&[(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT"
        )])),
        None
    );
    assert_eq!(retry_after_of(&headers(&[("retry-after", "-1")])), None);
    assert_eq!(
        retry_after_of(&headers(&[("retry-after", "1e300")])),
        Some(Duration::from_secs(86_400))
    );
    assert_eq!(retry_after_of(&HeaderMap::new()), None);
}
