//! Two demo gateways with `--redis` on one real `redis-server` (started per test on a
//! free port): a user's limit holds across both, and one's answer is the other's hit.
//!
//! Real time (tokio's paused clock would race the sockets). Without `redis-server`
//! installed the test prints a note and passes, unless `HEALTH_AI_REQUIRE_REDIS=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway::{self, Gateway};
use health_ai_examples::simulator::{LatencyRange, Simulator, SimulatorConfig};
use http::{Request, StatusCode};
use redis_test_server::RedisServer;
use tower::ServiceExt;

/// A gateway on `redis` in front of `simulator`.
fn gateway(redis: &str, simulator: &Arc<Simulator>) -> Router {
    let args = GatewayArgs::parse_from([
        "gateway",
        "--redis",
        redis,
        "--redis-prefix",
        "test:",
        "--instances",
        "2",
        // One token a second, burst 3: nothing refills while the test runs.
        "--per-user-rps",
        "1",
        "--per-user-burst",
        "3",
    ]);
    let Gateway { router, .. } = gateway::build(
        &args,
        gateway::in_process(simulator),
        Some(Arc::clone(simulator)),
        None,
    );
    router
}

async fn analyze(router: &Router, record: &str, user: &str) -> (StatusCode, Option<String>) {
    let request = Request::post(format!("/api/health-records/{record}/analyze"))
        .header("x-user-id", user)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let cache = response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), cache)
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_the_user_limit_and_the_answers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let simulator = Simulator::new(SimulatorConfig::new(
        LatencyRange::fixed(Duration::from_millis(5)),
        0.0,
        1,
    ));
    let (a, b) = (
        gateway(&server.url(), &simulator),
        gateway(&server.url(), &simulator),
    );
    // Both caches subscribed (each clears its L1, and a call in flight stores nothing,
    // when its subscription comes up).
    let started = Instant::now();
    while server.subscribers("test:cache:invalidate") < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for record in ["rec-1", "rec-2", "rec-3"] {
        assert_eq!(analyze(&a, record, "ada").await.0, StatusCode::OK);
    }
    assert_eq!(
        analyze(&b, "rec-4", "ada").await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "ada's burst was spent on the other gateway"
    );

    let (status, cache) = analyze(&a, "rec-1", "grace").await;
    assert_eq!((status, cache.as_deref()), (StatusCode::OK, Some("MISS")));
    let calls = simulator.calls();
    let started = Instant::now();
    while !server.command("KEYS test:cache:*").contains("test:cache:") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing reached redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, cache) = analyze(&b, "rec-1", "grace").await;
    assert_eq!((status, cache.as_deref()), (StatusCode::OK, Some("HIT")));
    assert_eq!(
        simulator.calls(),
        calls,
        "served from redis, no provider call"
    );
}

#[test]
fn a_redis_flag_that_is_not_a_url_is_refused() {
    assert!(GatewayArgs::try_parse_from(["gateway", "--redis", "localhost:6379"]).is_err());
    let args = GatewayArgs::try_parse_from(["gateway", "--redis", "redis://127.0.0.1:6379"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(args.redis.as_deref(), Some("redis://127.0.0.1:6379"));
    assert_eq!(args.instances, 1);
}
