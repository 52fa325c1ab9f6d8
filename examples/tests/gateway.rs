//! The demo gateway, driven in-process on paused time: every behaviour the seed promises,
//! each checked where it could fail.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway::{self, Gateway};
use health_ai_examples::simulator::{LatencyRange, Simulator, SimulatorConfig};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tower_health_ai::HealthAiHandle;

const LATENCY: Duration = Duration::from_secs(45);

struct Demo {
    router: Router,
    handle: HealthAiHandle,
    simulator: Arc<Simulator>,
}

/// A gateway with these extra flags over an in-process simulator answering in 45 s.
fn demo(flags: &[&str], failure_rate: f64) -> Demo {
    demo_answering_in(flags, failure_rate, LATENCY)
}

/// A gateway with these extra flags over an in-process simulator answering in `latency`.
fn demo_answering_in(flags: &[&str], failure_rate: f64, latency: Duration) -> Demo {
    let mut args = GatewayArgs::parse_from(std::iter::once("gateway").chain(flags.iter().copied()));
    // The tests pause tokio's time.
    args.clock = tower_health_ai::Clock::Tokio;
    let simulator = Simulator::new(SimulatorConfig::new(
        LatencyRange::fixed(latency),
        failure_rate,
        1,
    ));
    let Gateway { router, handle, .. } = gateway::build(
        &args,
        gateway::in_process(&simulator),
        Some(Arc::clone(&simulator)),
        None,
    );
    Demo {
        router,
        handle: handle.expect("the stack runs"),
        simulator,
    }
}

fn analyze(record: &str, user: &str) -> http::request::Builder {
    Request::post(format!("/api/health-records/{record}/analyze"))
        .header("x-user-id", user)
        .header("content-type", "application/json")
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// Sends one analysis for each of `n` records, each by a user of its own, in tasks of
/// their own.
fn spawn_records(
    router: &Router,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, http::HeaderMap, Vec<u8>)>> {
    (0..n)
        .map(|record| {
            let router = router.clone();
            tokio::spawn(async move {
                let request = analyze(&format!("rec-{record}"), &format!("user-{record}"))
                    .body(Body::empty())
                    .unwrap();
                send(&router, request).await
            })
        })
        .collect()
}

async fn get_json(router: &Router, path: &str) -> Value {
    let (status, _, body) = send(router, Request::get(path).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_repeated_request_is_a_hit_served_byte_for_byte_without_an_upstream_call() {
    let demo = demo(&[], 0.0);
    let body = r#"{"heartRate":72}"#;
    let (status, headers, first) = send(
        &demo.router,
        analyze("rec-1", "ada").body(Body::from(body)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cache"], "MISS");
    let answer: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(answer["recordId"], "rec-1");
    assert_eq!(answer["source"], "ai");

    let started = tokio::time::Instant::now();
    let (status, headers, second) = send(
        &demo.router,
        analyze("rec-1", "ada").body(Body::from(body)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cache"], "HIT");
    assert!(headers.contains_key("age"));
    assert_eq!(
        second, first,
        "a cached answer is the original, byte for byte"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(demo.simulator.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn two_users_never_share_a_cache_entry() {
    let demo = demo(&[], 0.0);
    for user in ["ada", "grace"] {
        let (_, headers, _) = send(
            &demo.router,
            analyze("rec-1", user).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(headers["x-cache"], "MISS", "{user}");
    }
    assert_eq!(demo.simulator.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn ten_concurrent_identical_requests_make_one_upstream_call() {
    // Per-user burst raised so that the ten pass the limiter.
    let demo = demo(&["--per-user-rps", "20"], 0.0);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let router = demo.router.clone();
            tokio::spawn(async move {
                send(
                    &router,
                    analyze("rec-1", "ada").body(Body::empty()).unwrap(),
                )
                .await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for call in calls {
        let (status, _, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(demo.simulator.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burst_over_the_per_user_rate_gets_429_and_spares_other_users() {
    let demo = demo(&[], 0.0);
    // Five distinct records (the seed's 5 req/s burst), then a sixth at once.
    for i in 0..5 {
        let router = demo.router.clone();
        tokio::spawn(async move {
            send(
                &router,
                analyze(&format!("rec-{i}"), "ada")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
        });
    }
    tokio::task::yield_now().await;
    let (status, headers, body) = send(
        &demo.router,
        analyze("rec-9", "ada").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("rate limit"));
    let (status, _, _) = send(
        &demo.router,
        analyze("rec-9", "grace").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn failures_open_the_circuit_then_fallbacks_are_fast_and_a_good_call_closes_it() {
    let demo = demo(
        &["--breaker-failures", "3", "--breaker-open-secs", "60"],
        1.0,
    );
    // One request: three attempts, three upstream failures; the fallback answers.
    let (status, headers, body) = send(
        &demo.router,
        analyze("rec-1", "ada")
            .body(Body::from(r#"{"heartRate":130}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-degraded"], "true");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["source"], "fallback");
    assert_eq!(answer["analysis"]["riskLevel"], "moderate");
    assert_eq!(demo.simulator.calls(), 3);
    let health = get_json(&demo.router, "/api/health").await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["circuitBreaker"]["aiService"], "OPEN");

    // Open: a fast fallback, no upstream call.
    let started = tokio::time::Instant::now();
    let (_, _, body) = send(
        &demo.router,
        analyze("rec-2", "ada").body(Body::empty()).unwrap(),
    )
    .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["source"], "fallback");
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(demo.simulator.calls(), 3);

    // After the open time, the health JSON says HALF_OPEN without any traffic, and one
    // good call closes the circuit.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let health = get_json(&demo.router, "/api/health").await;
    assert_eq!(health["circuitBreaker"]["aiService"], "HALF_OPEN");
    demo.simulator.set_failure_rate(0.0);
    let (_, _, body) = send(
        &demo.router,
        analyze("rec-3", "ada").body(Body::empty()).unwrap(),
    )
    .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["source"], "ai");
    let health = get_json(&demo.router, "/api/health").await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["circuitBreaker"]["aiService"], "CLOSED");
}

#[tokio::test(start_paused = true)]
async fn at_a_compressed_time_scale_every_failed_call_is_still_retried() {
    // The load test's scale: an hour in 36 s. The retry budget's reserve is a rate, so
    // that retries get the room they would have in real time; unscaled, its 10 retries
    // would run out here, and the preset would give up on failures it would retry.
    let scaled_call = LATENCY.mul_f64(0.01);
    let demo = demo_answering_in(
        &["--time-scale", "0.01", "--max-in-flight", "16"],
        1.0,
        scaled_call,
    );
    let requests = spawn_records(&demo.router, 6);
    for request in requests {
        let (status, headers, _) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-degraded"], "true");
    }
    // Three attempts each.
    assert_eq!(demo.simulator.calls(), 18);
}

#[tokio::test(start_paused = true)]
async fn at_a_compressed_time_scale_the_global_pace_still_starts_two_calls_at_once() {
    // The pace is 2 calls a second with a burst of 2: on the load test's scale, 200 a
    // second, and still 2 at once (a burst is a number of calls; scaled as a rate, it
    // would let 200 start together).
    let demo = demo_answering_in(
        &["--time-scale", "0.01", "--max-in-flight", "16"],
        0.0,
        LATENCY.mul_f64(0.01),
    );
    let requests = spawn_records(&demo.router, 6);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(demo.simulator.calls(), 2, "two at once");
    // Then one every 5 ms (a real half second).
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(demo.simulator.calls(), 3);
    for request in requests {
        let (status, headers, _) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key("x-degraded"));
    }
    assert_eq!(demo.simulator.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn at_a_compressed_time_scale_a_long_waiting_low_request_still_goes_before_a_new_urgent_one()
{
    // One call at a time, 0.45 s each (45 s on the load test's scale). A low request
    // waits behind a busy one; an urgent one arrives 0.4 s later (40 s): more than three
    // levels of the queue's 10 s aging, scaled, so the low request has waited long
    // enough to go first, as it would in real time.
    let demo = demo_answering_in(
        &["--time-scale", "0.01", "--max-in-flight", "1"],
        0.0,
        LATENCY.mul_f64(0.01),
    );
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn = |record: &'static str, priority: &'static str| {
        let router = demo.router.clone();
        let order = Arc::clone(&order);
        tokio::spawn(async move {
            let request = analyze(record, record)
                .header("x-priority", priority)
                .body(Body::empty())
                .unwrap();
            let (status, headers, _) = send(&router, request).await;
            assert_eq!(status, StatusCode::OK);
            assert!(!headers.contains_key("x-degraded"), "{record}");
            order.lock().unwrap().push(record);
        })
    };
    let busy = spawn("busy", "normal");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let low = spawn("low", "low");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let urgent = spawn("urgent", "urgent");
    for request in [busy, low, urgent] {
        request.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["busy", "low", "urgent"]);
}

#[tokio::test(start_paused = true)]
async fn at_a_compressed_time_scale_a_stale_answer_is_served_for_the_scaled_grace_only() {
    // The load test's scale: a TTL of 36 s (an hour) and a stale-if-error grace of as
    // much. Within the grace, a failed call is answered from the expired entry; past
    // it, by the fallback, as an entry two hours old would be in real time.
    let demo = demo_answering_in(&["--time-scale", "0.01"], 0.0, Duration::from_millis(100));
    let source = |body: &[u8]| {
        let answer: Value = serde_json::from_slice(body).unwrap();
        answer["source"].as_str().unwrap().to_owned()
    };
    let ask = || analyze("rec-1", "ada").body(Body::empty()).unwrap();
    let (_, _, body) = send(&demo.router, ask()).await;
    assert_eq!(source(&body), "ai");
    demo.simulator.set_failure_rate(1.0);
    // Expired (36 s), within the grace: the stale answer.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let (status, _, body) = send(&demo.router, ask()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(source(&body), "ai");
    // Past the grace (72 s): the fallback.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let (status, headers, body) = send(&demo.router, ask()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-degraded"], "true");
    assert_eq!(source(&body), "fallback");
}

#[tokio::test(start_paused = true)]
async fn an_urgent_request_overtakes_queued_low_ones() {
    let demo = demo(
        &[
            "--max-in-flight",
            "1",
            "--per-user-rps",
            "50",
            "--global-rps",
            "50",
        ],
        0.0,
    );
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn = |record: &'static str, priority: &'static str| {
        let router = demo.router.clone();
        let order = Arc::clone(&order);
        tokio::spawn(async move {
            let request = analyze(record, "ada")
                .header("x-priority", priority)
                .body(Body::empty())
                .unwrap();
            let (status, _, _) = send(&router, request).await;
            assert_eq!(status, StatusCode::OK);
            order.lock().unwrap().push(record);
        })
    };
    let busy = spawn("busy", "normal");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let lows = [spawn("low-1", "low"), spawn("low-2", "low")];
    tokio::time::sleep(Duration::from_millis(10)).await;
    let urgent = spawn("urgent", "URGENT");
    busy.await.unwrap();
    urgent.await.unwrap();
    for low in lows {
        low.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        ["busy", "urgent", "low-1", "low-2"],
        "the slot freed by `busy` goes to the urgent request"
    );
}

#[tokio::test(start_paused = true)]
async fn the_metrics_json_totals_equal_the_requests_sent() {
    let demo = demo(&[], 0.0);
    let mut sent = 0;
    for (record, user) in [("a", "ada"), ("a", "ada"), ("b", "ada"), ("a", "grace")] {
        send(
            &demo.router,
            analyze(record, user).body(Body::empty()).unwrap(),
        )
        .await;
        sent += 1;
    }
    // Two client errors: a malformed JSON body and a bad priority.
    let (status, _, _) = send(
        &demo.router,
        analyze("c", "ada").body(Body::from("{nope")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = send(
        &demo.router,
        analyze("d", "ada")
            .header("x-priority", "asap")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("urgent"));
    sent += 2;

    let metrics = get_json(&demo.router, "/api/metrics").await;
    assert_eq!(metrics["requests"]["total"], sent);
    assert_eq!(metrics["requests"]["success"], 4);
    assert_eq!(metrics["requests"]["clientErrors"], 2);
    assert_eq!(metrics["cache"]["hits"], 1);
    assert_eq!(metrics["cost"]["upstreamCalls"], 3);
    assert_eq!(metrics["queue"]["queueSize"], 0);
    assert_eq!(metrics["circuitBreaker"]["state"], "CLOSED");
    assert_eq!(demo.handle.upstream_calls(), demo.simulator.calls());
}

#[tokio::test(start_paused = true)]
async fn bodies_over_one_mebibyte_get_413_and_bad_ids_400() {
    let demo = demo(&[], 0.0);
    let big = vec![b' '; 1024 * 1024 + 1];
    let (status, _, _) = send(
        &demo.router,
        analyze("a", "ada").body(Body::from(big)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, _) = send(
        &demo.router,
        analyze("bad%20id", "ada").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(demo.simulator.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_the_stack_calls_go_straight_through_and_failures_are_502() {
    let args = GatewayArgs::parse_from(["gateway", "--no-stack"]);
    let simulator = Simulator::new(SimulatorConfig::new(LatencyRange::fixed(LATENCY), 0.0, 1));
    let Gateway { router, handle, .. } = gateway::build(
        &args,
        gateway::in_process(&simulator),
        Some(Arc::clone(&simulator)),
        None,
    );
    assert!(handle.is_none());
    for _ in 0..2 {
        let (status, headers, body) = send(
            &router,
            analyze("rec-1", "ada").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key("x-cache"));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["source"], "ai");
    }
    assert_eq!(simulator.calls(), 2, "no cache without the stack");
    let (status, _, _) = send(
        &router,
        analyze("rec-1", "ada").body(Body::from("{nope")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let big = vec![b' '; 1024 * 1024 + 1];
    let (status, _, _) = send(
        &router,
        analyze("rec-1", "ada").body(Body::from(big)).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    simulator.set_failure_rate(1.0);
    let (status, _, _) = send(
        &router,
        analyze("rec-1", "ada").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(simulator.calls(), 3);
}
