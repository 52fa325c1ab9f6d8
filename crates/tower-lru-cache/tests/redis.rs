//! `RedisStore` (L1 moka, L2 Redis) against a real `redis-server`, started per test on
//! a free port.
//!
//! These tests run in real time (tokio's paused clock would race the sockets); they
//! keep TTLs short and their bounds generous, for slow machines.
//!
//! Without `redis-server` installed they print a note and pass, unless
//! `HEALTH_AI_REQUIRE_REDIS=1` (CI), where they fail.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use redis_test_server::RedisServer;
use tower::{ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_lru_cache::Clock;
use tower_lru_cache::{
    BoxError, CACHE_BACKEND_ERRORS_TOTAL, CacheHandle, CacheLayer, RedisStore, RedisStoreBuilder,
};

/// Starts a server, or returns from the test (with a note) when there is none.
macro_rules! server {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

type Svc = BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<tower_lru_cache::CacheBody<Full<Bytes>>>,
    BoxError,
>;

/// The upstream every instance shares: counts its calls, answers `v{version}`.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicU64>,
    version: Arc<AtomicU64>,
    /// How long each call takes, in milliseconds.
    delay_ms: Arc<AtomicU64>,
}

impl Upstream {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Instance {
    svc: Svc,
    handle: CacheHandle,
    store: RedisStore,
}

fn builder(server: &RedisServer) -> RedisStoreBuilder {
    RedisStore::builder(&server.url())
        .unwrap()
        .prefix("test:")
        // Generous: these tests run ten redis-servers at once on a small machine, and a
        // command past the timeout turns the store to L1 only. The tests about timeouts
        // set their own.
        .timeout(Duration::from_secs(1))
}

fn instance(store: RedisStoreBuilder, up: &Upstream, ttl: Duration) -> Instance {
    let store = store.build();
    let layer = CacheLayer::builder()
        .clock(Clock::Tokio)
        .ttl(ttl)
        .store(store.clone())
        .build();
    let handle = layer.handle();
    let up = up.clone();
    let svc = tower::Layer::layer(
        &layer,
        service_fn(move |_: Request<Full<Bytes>>| {
            let up = up.clone();
            async move {
                up.calls.fetch_add(1, Ordering::SeqCst);
                // The answer is computed from the data as it is when the call starts.
                let v = up.version.load(Ordering::SeqCst);
                let delay = up.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("v{v}")))))
            }
        }),
    );
    Instance {
        svc: BoxCloneSyncService::new(svc.map_err(Into::into)),
        handle,
        store,
    }
}

/// One request for `path`: (x-cache, age, body).
async fn get(i: &Instance, path: &str) -> (String, Option<u64>, String) {
    let req = Request::get(path).body(Full::default()).unwrap();
    let res = i.svc.clone().oneshot(req).await.unwrap();
    let x_cache = res.headers()["x-cache"].to_str().unwrap().to_owned();
    let age = res
        .headers()
        .get("age")
        .map(|a| a.to_str().unwrap().parse().unwrap());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (x_cache, age, String::from_utf8(body.to_vec()).unwrap())
}

/// The keys under the test prefix.
fn keys(server: &RedisServer) -> Vec<String> {
    server
        .command("KEYS test:*")
        .lines()
        .filter(|l| l.starts_with("test:"))
        .map(str::to_owned)
        .collect()
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for an instance's invalidation subscription. When it comes up, the instance
/// clears its L1 and a call already in flight stores nothing (as after any invalidation):
/// a test that expects an answer to be written waits for this first.
async fn subscribed(i: &Instance) {
    until("the subscription", Duration::from_secs(10), || {
        i.store.is_subscribed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_shared_through_redis_and_keeps_its_remaining_ttl() {
    let server = server!();
    let up = Upstream::default();
    let ttl = Duration::from_secs(3);
    let a = instance(builder(&server), &up, ttl);
    let b = instance(builder(&server), &up, ttl);
    subscribed(&a).await;
    subscribed(&b).await;

    let stored = Instant::now();
    assert_eq!(get(&a, "/x").await.0, "MISS");
    until("the write to redis", Duration::from_secs(10), || {
        keys(&server).len() == 1
    })
    .await;
    let key = keys(&server).remove(0);
    // Written with the entry's remaining retention, never more than its TTL.
    let pttl: u64 = server.command(&format!("PTTL {key}")).trim()[1..]
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 3000, "PTTL {pttl}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (x_cache, age, body) = get(&b, "/x").await;
    assert_eq!((x_cache.as_str(), body.as_str()), ("HIT", "v0"));
    assert_eq!(up.calls(), 1, "B answered from A's call");
    assert!(age >= Some(1), "the age comes with the entry: {age:?}");

    // B's L1 has it now: it answers with Redis emptied (no invalidation published).
    server.command("FLUSHALL");
    assert_eq!(get(&b, "/x").await.0, "HIT");
    assert_eq!(up.calls(), 1);

    // B's copy expires when A's entry does, not a TTL after B read it.
    let expiry = stored + ttl + Duration::from_millis(100);
    tokio::time::sleep(expiry.saturating_duration_since(Instant::now())).await;
    assert_eq!(get(&b, "/x").await.0, "MISS");
    assert_eq!(up.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_every_instance_including_a_disconnected_one() {
    let server = server!();
    let up = Upstream::default();
    let ttl = Duration::from_secs(60);
    let pubsub_ids = || -> Vec<String> {
        server
            .command("CLIENT LIST TYPE pubsub")
            .split_whitespace()
            .filter_map(|f| f.strip_prefix("id="))
            .map(str::to_owned)
            .collect()
    };
    let a = instance(builder(&server), &up, ttl);
    let b = instance(builder(&server), &up, ttl);
    subscribed(&a).await;
    subscribed(&b).await;
    let before = pubsub_ids();
    let c = instance(builder(&server), &up, ttl);
    subscribed(&c).await;
    let c_id = pubsub_ids()
        .into_iter()
        .find(|id| !before.contains(id))
        .expect("C's subscription");

    for path in ["/x", "/y"] {
        assert_eq!(get(&a, path).await.2, "v0");
    }
    until("the writes", Duration::from_secs(10), || {
        keys(&server).len() == 2
    })
    .await;
    for i in [&b, &c] {
        for path in ["/x", "/y"] {
            let (x_cache, _, body) = get(i, path).await;
            assert_eq!((x_cache.as_str(), body.as_str()), ("HIT", "v0"));
        }
    }
    assert_eq!(up.calls(), 2);

    // One key, while C's subscription is cut: the message is lost to C for sure (it
    // cannot reconnect: the server refuses new clients until the message is out).
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    let connected = clients.lines().count();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(connected - 1)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&c_id)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    until("C to notice", Duration::from_secs(10), || {
        !c.store.is_subscribed()
    })
    .await;
    up.version.store(1, Ordering::SeqCst);
    let req = Request::get("/x").body(()).unwrap().into_parts().0;
    a.handle
        .invalidate_request(&req, b"")
        .expect("a cached request");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<String> = redis::cmd("KEYS")
            .arg("test:*")
            .query_async(&mut admin)
            .await
            .unwrap();
        if left.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the delete did not land");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // C, cut off, still has its copy; the message went out without it.
    assert_eq!(get(&c, "/x").await.2, "v0");
    assert!(!c.store.is_subscribed(), "C was kept out");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    for (name, i) in [("A", &a), ("B", &b), ("C", &c)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if get(i, "/x").await.2 == "v1" {
                break;
            }
            assert!(Instant::now() < deadline, "{name} still serves the old /x");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Everything, from B.
    up.version.store(2, Ordering::SeqCst);
    b.handle.invalidate_all();
    for (name, i) in [("A", &a), ("B", &b), ("C", &c)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, _, x) = get(i, "/x").await;
            let (_, _, y) = get(i, "/y").await;
            if x == "v2" && y == "v2" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still serves an old answer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // And once an instance has the new answer, it keeps it.
    for i in [&a, &b, &c] {
        assert_eq!(get(i, "/x").await.2, "v2");
        assert_eq!(get(i, "/y").await.2, "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_cache_works_in_process_and_recovers() {
    let mut server = server!();
    let up = Upstream::default();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let a = metrics::with_local_recorder(&recorder, || {
        instance(
            builder(&server).timeout(Duration::from_millis(50)),
            &up,
            Duration::from_secs(60),
        )
    });
    subscribed(&a).await;
    assert_eq!(get(&a, "/x").await.0, "MISS");
    until("the write", Duration::from_secs(10), || {
        keys(&server).len() == 1
    })
    .await;

    server.stop();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get(&a, "/x").await.0, "HIT", "L1 still answers");
        let (first, _, _) = get(&a, "/y").await;
        assert!(first == "MISS" || first == "HIT");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a lookup waited {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.calls(), 2, "/y was called once, then answered from L1");
    let errors: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == CACHE_BACKEND_ERRORS_TOTAL)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert!(errors > 0, "the outage is counted");

    server.restart();
    // Once resubscribed (which clears L1), it shares through Redis again.
    until("the resubscription", Duration::from_secs(10), || {
        a.store.is_subscribed()
    })
    .await;
    let b = instance(builder(&server), &up, Duration::from_secs(60));
    subscribed(&b).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        get(&a, "/z").await;
        if keys(&server).iter().any(|k| k.starts_with("test:")) {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = up.calls();
    assert_eq!(get(&b, "/z").await.0, "HIT");
    assert_eq!(up.calls(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_a_miss_and_is_replaced() {
    let server = server!();
    let up = Upstream::default();
    let a = instance(builder(&server), &up, Duration::from_secs(60));
    subscribed(&a).await;
    assert_eq!(get(&a, "/x").await.0, "MISS");
    until("the write", Duration::from_secs(10), || {
        keys(&server).len() == 1
    })
    .await;
    let key = keys(&server).remove(0);
    // The bulk reply's length line: the value's length in bytes.
    let len = |server: &RedisServer| {
        let reply = server.command(&format!("GET {key}"));
        reply.lines().next().unwrap_or_default().to_owned()
    };
    let good = len(&server);
    server.command(&format!("SET {key} TLC-not-an-answer"));

    let b = instance(builder(&server), &up, Duration::from_secs(60));
    subscribed(&b).await;
    let (x_cache, _, body) = get(&b, "/x").await;
    assert_eq!((x_cache.as_str(), body.as_str()), ("MISS", "v0"));
    assert_eq!(up.calls(), 2);
    // B's answer replaces the corrupt value.
    until("the rewrite", Duration::from_secs(10), || {
        len(&server) == good
    })
    .await;
    let c = instance(builder(&server), &up, Duration::from_secs(60));
    subscribed(&c).await;
    assert_eq!(get(&c, "/x").await.0, "HIT");
    assert_eq!(up.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_the_byte_limit_stay_in_process() {
    let server = server!();
    let up = Upstream::default();
    let a = instance(
        builder(&server).max_value_bytes(10),
        &up,
        Duration::from_secs(60),
    );
    // (Subscribing clears L1.)
    subscribed(&a).await;
    assert_eq!(get(&a, "/big").await.0, "MISS");
    assert_eq!(get(&a, "/big").await.0, "HIT");
    // A store with room writes the same answer: by then the first write was decided.
    let b = instance(builder(&server), &up, Duration::from_secs(60));
    subscribed(&b).await;
    assert_eq!(get(&b, "/small").await.0, "MISS");
    until("the write", Duration::from_secs(10), || {
        !keys(&server).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(keys(&server).len(), 1, "only B's answer was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_costs_at_most_the_timeout() {
    let server = server!();
    let up = Upstream::default();
    let a = instance(
        builder(&server).timeout(Duration::from_millis(50)),
        &up,
        Duration::from_secs(60),
    );
    subscribed(&a).await;
    // Redis answers nobody for two seconds.
    server.command("CLIENT PAUSE 2000 ALL");
    let started = Instant::now();
    let (x_cache, _, body) = get(&a, "/x").await;
    assert_eq!((x_cache.as_str(), body.as_str()), ("MISS", "v0"));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(get(&a, "/x").await.0, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fill_lock_one_instance_calls_for_all() {
    let server = server!();
    let up = Upstream::default();
    // Long enough that the three requests overlap even on a loaded machine.
    up.delay_ms.store(1000, Ordering::SeqCst);
    let locked = || builder(&server).fill_lock(Duration::from_secs(3));
    let a = instance(locked(), &up, Duration::from_secs(60));
    subscribed(&a).await;
    let b = instance(locked(), &up, Duration::from_secs(60));
    subscribed(&b).await;
    let c = instance(locked(), &up, Duration::from_secs(60));
    subscribed(&c).await;
    let (ra, rb, rc) = tokio::join!(get(&a, "/x"), get(&b, "/x"), get(&c, "/x"));
    assert_eq!(up.calls(), 1, "one call for three instances");
    for (_, _, body) in [&ra, &rb, &rc] {
        assert_eq!(body, "v0");
    }
    let mut results: Vec<&str> = [&ra, &rb, &rc].iter().map(|r| r.0.as_str()).collect();
    results.sort_unstable();
    assert_eq!(results, ["HIT", "HIT", "MISS"]);
    // The lock was released with the write.
    assert!(!server.command("KEYS test:lock:*").contains("test:lock:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_blocks_nobody_past_the_lock_expiry() {
    let server = server!();
    let up = Upstream::default();
    let expiry = Duration::from_millis(600);
    let a = instance(
        builder(&server).fill_lock(expiry),
        &up,
        Duration::from_secs(60),
    );
    subscribed(&a).await;
    let b = instance(
        builder(&server).fill_lock(expiry),
        &up,
        Duration::from_secs(60),
    );
    subscribed(&b).await;
    // A takes the lock and dies before answering.
    up.delay_ms.store(10_000, Ordering::SeqCst);
    let svc = a.svc.clone();
    let holder = tokio::spawn(async move {
        svc.oneshot(Request::get("/x").body(Full::default()).unwrap())
            .await
    });
    // A calls only once it holds the lock.
    until("A's call", Duration::from_secs(10), || up.calls() == 1).await;
    assert!(server.command("KEYS test:lock:*").contains("test:lock:"));
    holder.abort();
    up.delay_ms.store(0, Ordering::SeqCst);

    let started = Instant::now();
    let (x_cache, _, body) = get(&b, "/x").await;
    let waited = started.elapsed();
    assert_eq!((x_cache.as_str(), body.as_str()), ("MISS", "v0"));
    assert_eq!(up.calls(), 2, "B called for itself");
    assert!(
        waited < expiry + Duration::from_millis(700),
        "B waited {waited:?}"
    );
    assert!(
        waited >= expiry / 3,
        "B did wait for the holder: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_ttl_caps_how_long_an_instance_keeps_its_copy() {
    let server = server!();
    let up = Upstream::default();
    let a = instance(
        builder(&server).l1_ttl(Duration::from_millis(300)),
        &up,
        Duration::from_secs(60),
    );
    subscribed(&a).await;
    assert_eq!(get(&a, "/x").await.0, "MISS");
    until("the write", Duration::from_secs(10), || {
        keys(&server).len() == 1
    })
    .await;
    // Gone from Redis without a message: only the cap drops A's copy.
    server.command("FLUSHALL");
    assert_eq!(get(&a, "/x").await.0, "HIT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&a, "/x").await.0, "MISS");
    assert_eq!(up.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_during_a_remote_invalidation_does_not_store_its_answer() {
    let server = server!();
    let up = Upstream::default();
    let a = instance(builder(&server), &up, Duration::from_secs(60));
    let b = instance(builder(&server), &up, Duration::from_secs(60));
    subscribed(&a).await;
    subscribed(&b).await;
    up.delay_ms.store(500, Ordering::SeqCst);
    let svc = b.svc.clone();
    let in_flight = tokio::spawn(async move {
        svc.oneshot(Request::get("/x").body(Full::default()).unwrap())
            .await
            .map(|res| res.headers()["x-cache"].to_str().unwrap().to_owned())
    });
    until("B's call", Duration::from_secs(10), || up.calls() == 1).await;
    // The data changes, and A invalidates while B's call (on the old data) runs.
    up.version.store(1, Ordering::SeqCst);
    a.handle.invalidate_all();
    assert_eq!(in_flight.await.unwrap().unwrap(), "MISS");
    up.delay_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in [&b, &a] {
        assert_eq!(get(i, "/x").await.2, "v1", "the old answer was not kept");
    }
}
