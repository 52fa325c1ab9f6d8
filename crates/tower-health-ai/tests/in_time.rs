//! Not starting what cannot end: once the preset knows how long the upstream's calls
//! take, a request whose deadline leaves less than that neither waits in the queue past
//! that point nor starts a call (a retry included), and its slot goes to a request that
//! can still be answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_health_ai::{HealthAiStack, HealthAiStackBuilder, UpstreamRequest};

/// An upstream whose `n`-th call (from 0) takes `plan(n).0` and then answers 200, or 500
/// when `plan(n).1` is false; counts its calls.
fn planned(
    calls: &Arc<AtomicU64>,
    plan: fn(u64) -> (Duration, bool),
) -> impl Service<
    UpstreamRequest,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let calls = Arc::clone(calls);
    service_fn(move |_request: UpstreamRequest| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let (latency, ok) = plan(call);
            tokio::time::sleep(latency).await;
            let mut response = Response::new(Body::from("ai"));
            if !ok {
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            Ok::<_, BoxError>(response)
        }
    })
}

fn ask(body: String) -> Request<Body> {
    Request::post("/analyze")
        .header("x-user-id", "ada")
        .body(Body::from(body))
        .unwrap()
}

fn builder() -> HealthAiStackBuilder {
    HealthAiStack::builder()
        .clock(tower_health_ai::Clock::Tokio)
        .max_in_flight(1)
        // Longer than any deadline: only the deadline bounds a wait.
        .max_queue_wait(Duration::from_secs(300))
        .per_user_quota(tower_health_ai::token_bucket::Quota::per_second(100))
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
}

const SECS_60: Duration = Duration::from_secs(60);

/// Ten distinct requests, one after the other: the stack learns that calls take 60 s.
async fn warm_up<S, B>(svc: &S)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    for i in 0..10 {
        let response = svc.clone().oneshot(ask(format!("warm-{i}"))).await.unwrap();
        assert!(response.headers().get("x-degraded").is_none());
    }
}

/// Three requests at once over one slot and 60 s calls: the third could start only at
/// 120 s, with 30 s of its 150 s deadline left. Returns when each was answered (from the
/// burst), whether each was degraded, and the upstream's calls for the burst.
async fn burst(enabled: bool) -> (Vec<(Duration, bool)>, u64, tower_health_ai::DegradedStats) {
    let calls = Arc::new(AtomicU64::new(0));
    let stack = builder().start_calls_in_time(enabled).build();
    let handle = stack.handle();
    let svc = stack.layer(planned(&calls, |_| (SECS_60, true)));
    warm_up(&svc).await;
    let before = calls.load(Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|body| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let response = svc.oneshot(ask(body.to_owned())).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                (
                    start.elapsed(),
                    response.headers().get("x-degraded").is_some(),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let burst_calls = calls.load(Ordering::SeqCst) - before;
    (answers, burst_calls, handle.degraded())
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_call_could_not_end_in_time_is_answered_when_that_is_known() {
    let (answers, calls, degraded) = burst(true).await;
    assert_eq!(answers[0], (SECS_60, false));
    assert_eq!(answers[1], (2 * SECS_60, false));
    // Its deadline (150 s) less a call (60 s): answered at 90 s, and never called, as
    // the queue's timeout.
    assert_eq!(answers[2], (Duration::from_secs(90), true));
    assert_eq!(calls, 2);
    assert_eq!((degraded.total, degraded.queue_timeout), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn turned_off_the_doomed_call_runs_is_cut_and_billed() {
    let (answers, calls, degraded) = burst(false).await;
    assert_eq!(answers[0], (SECS_60, false));
    assert_eq!(answers[1], (2 * SECS_60, false));
    // Started at 120 s, cut at its 150 s deadline.
    assert!(answers[2].1);
    assert!(answers[2].0 >= Duration::from_secs(150), "{:?}", answers[2]);
    assert_eq!(calls, 3);
    assert_eq!((degraded.total, degraded.deadline), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_could_not_end_in_time_is_not_started() {
    let calls = Arc::new(AtomicU64::new(0));
    let stack = builder().build();
    let handle = stack.handle();
    // Ten 60 s successes, then a call that fails after 100 s: 50 s are left, less than
    // a call takes.
    let svc = stack.layer(planned(&calls, |n| match n {
        0..10 => (SECS_60, true),
        _ => (Duration::from_secs(100), false),
    }));
    warm_up(&svc).await;
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(ask("late".to_owned())).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 11, "the retry was not sent");
    // Answered after the failed call and the retry's backoff, not at the deadline.
    assert!(elapsed < Duration::from_secs(110), "{elapsed:?}");
    assert_eq!(handle.degraded().deadline, 1);
}

#[tokio::test(start_paused = true)]
async fn before_ten_successes_every_call_starts() {
    let calls = Arc::new(AtomicU64::new(0));
    let stack = builder().build();
    let svc = stack.layer(planned(&calls, |_| (Duration::from_secs(100), true)));
    // Eight 100 s calls, and the first below, teach nothing yet: nine are not ten.
    for i in 0..8 {
        let response = svc.clone().oneshot(ask(format!("warm-{i}"))).await.unwrap();
        assert!(response.headers().get("x-degraded").is_none());
    }
    // Two at once: the second starts at 100 s with 50 s left, and is cut at 150 s.
    let first = tokio::spawn(svc.clone().oneshot(ask("a".to_owned())));
    let second = tokio::spawn(svc.clone().oneshot(ask("b".to_owned())));
    assert!(
        first
            .await
            .unwrap()
            .unwrap()
            .headers()
            .get("x-degraded")
            .is_none()
    );
    assert_eq!(
        second.await.unwrap().unwrap().headers()["x-degraded"],
        "true"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_cannot_end_takes_no_token_of_the_global_pace() {
    let calls = Arc::new(AtomicU64::new(0));
    // One call a minute; a call may wait 30 s for its turn.
    let stack = builder()
        .global_quota(tower_health_ai::token_bucket::Quota::per_minute(1))
        .build();
    let handle = stack.handle();
    let svc = stack.layer(planned(&calls, |_| (SECS_60, true)));
    warm_up(&svc).await;
    // 30 s left, less than a call: refused before the pace, at once.
    let mut doomed = ask("doomed".to_owned());
    doomed
        .headers_mut()
        .insert("x-request-timeout", http::HeaderValue::from_static("30"));
    let start = tokio::time::Instant::now();
    let response = svc.clone().oneshot(doomed).await.unwrap();
    assert_eq!(response.headers()["x-degraded"], "true");
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The pace's token is still there: the next request is called at once, not refused
    // after waiting 30 s for a token the doomed one took.
    let response = svc.clone().oneshot(ask("next".to_owned())).await.unwrap();
    assert!(response.headers().get("x-degraded").is_none());
    assert_eq!(start.elapsed(), SECS_60);
    assert_eq!(calls.load(Ordering::SeqCst), 11);
    assert_eq!(handle.degraded().pace_wait, 0);
}
