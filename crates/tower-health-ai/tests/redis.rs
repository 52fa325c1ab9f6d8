//! Two instances of the preset on one real `redis-server` (started per test on a free
//! port): they share the per-user limit and the cache's answers; two instances without
//! Redis share neither.
//!
//! These tests run in real time (tokio's paused clock would race the sockets); the
//! quota refills one token every 12 s, so no token comes back while they run.
//!
//! Without `redis-server` installed they print a note and pass, unless
//! `HEALTH_AI_REQUIRE_REDIS=1` (CI), where they fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use redis_test_server::RedisServer;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_health_ai::token_bucket::Quota;
use tower_health_ai::{HealthAiStack, RedisConfig, UpstreamRequest};

/// Starts a server, or returns from the test (with a note) when there is none.
macro_rules! server {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

/// The provider both instances call: counts its calls, echoes the body.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicU64>,
}

impl Upstream {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        UpstreamRequest,
        Response = Response<Body>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let calls = Arc::clone(&self.calls);
        service_fn(move |request: UpstreamRequest| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let body = request.into_body().collect().await?.to_bytes();
                Ok::<_, BoxError>(Response::new(Body::from(format!(
                    "ai:{}",
                    String::from_utf8_lossy(&body)
                ))))
            }
        })
    }
}

/// Five requests a minute per user, burst five: nothing refills during a test.
fn quota() -> Quota {
    Quota::per_minute(5)
}

/// One instance of the preset, on `redis` when given.
fn instance(
    redis: Option<&RedisServer>,
    upstream: &Upstream,
) -> (
    impl Service<
        Request<Body>,
        Response = Response<impl http_body::Body<Error = impl std::fmt::Debug>>,
        Error = std::convert::Infallible,
    > + Clone,
    tower_health_ai::HealthAiHandle,
) {
    let mut builder = HealthAiStack::builder().per_user_quota(quota());
    if let Some(server) = redis {
        let config = RedisConfig::from_url(&server.url())
            .unwrap()
            .prefix("test:")
            .instances(2)
            // Generous for a loaded test machine; the default is 50 ms.
            .timeout(Duration::from_millis(500));
        builder = builder.redis(config);
    }
    let stack = builder.build();
    let handle = stack.handle();
    (stack.layer(upstream.service()), handle)
}

fn ask(user: &str, body: &'static str) -> Request<Body> {
    Request::post("/analyze")
        .header("x-user-id", user)
        .body(Body::from(body))
        .unwrap()
}

async fn call<S, B>(svc: &S, request: Request<Body>) -> (StatusCode, Option<String>, String)
where
    S: Service<Request<Body>, Response = Response<B>, Error = std::convert::Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = svc.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache = response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cache, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn two_instances_on_one_redis_share_the_per_user_limit() {
    let server = server!();
    let upstream = Upstream::default();
    let (a, _) = instance(Some(&server), &upstream);
    let (b, handle_b) = instance(Some(&server), &upstream);

    // Ada spends her whole burst on instance A (five different questions, five calls).
    for body in ["1", "2", "3", "4", "5"] {
        let (status, _, text) = call(&a, ask("ada", body)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    // Instance B refuses her next request: the bucket is in Redis, not in A.
    let (status, _, _) = call(&b, ask("ada", "6")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(handle_b.metrics().rate_limit.per_user.rejected, 1);
    // Another user still gets through B.
    let (status, _, _) = call(&b, ask("grace", "1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.calls(), 6);
}

#[tokio::test]
async fn two_instances_without_redis_limit_each_on_its_own() {
    let upstream = Upstream::default();
    let (a, _) = instance(None, &upstream);
    let (b, _) = instance(None, &upstream);
    for body in ["1", "2", "3", "4", "5"] {
        assert_eq!(call(&a, ask("ada", body)).await.0, StatusCode::OK);
    }
    // The contrast with the test above: B knows nothing of what A admitted.
    assert_eq!(call(&b, ask("ada", "6")).await.0, StatusCode::OK);
    assert_eq!(
        call(&a, ask("ada", "7")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn an_answer_cached_by_one_instance_is_served_by_the_other() {
    let server = server!();
    let upstream = Upstream::default();
    let (a, _) = instance(Some(&server), &upstream);
    let (b, _) = instance(Some(&server), &upstream);
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

    let (status, cache, first) = call(&a, ask("grace", "record 7")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache.as_deref(), Some("MISS"));
    assert_eq!(first, "ai:record 7");
    assert_eq!(upstream.calls(), 1);

    // A writes its answer to Redis in the background: wait until it is there.
    let started = Instant::now();
    while !server.command("KEYS test:cache:*").contains("test:cache:") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the answer never reached redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (status, cache, second) = call(&b, ask("grace", "record 7")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache.as_deref(), Some("HIT"));
    assert_eq!(second, first);
    assert_eq!(
        upstream.calls(),
        1,
        "B answered without calling the provider"
    );

    // The partition holds across instances: another user's identical request is a miss.
    let (_, cache, _) = call(&b, ask("ada", "record 7")).await;
    assert_eq!(cache.as_deref(), Some("MISS"));
    assert_eq!(upstream.calls(), 2);
}
