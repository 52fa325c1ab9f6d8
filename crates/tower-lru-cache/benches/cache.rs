//! The cache's cost, as middleware users pay it: clone the service, `ready().await`,
//! `call` with a fresh `http::Request`, against a bare `service_fn` baseline measured at
//! the start and the end of the same run.
//!
//! `cargo bench -p tower-lru-cache --bench cache -- --warm-up-time 0.5 --measurement-time 3`

use std::{
    convert::Infallible,
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use bench_harness::Overlap;
use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_lru_cache::{
    CacheKey, CacheLayer, CacheStore, CachedResponse, Entry, FnCacheLayer, KeyHasher, MokaStore,
};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

static BODY_1K: [u8; 1024] = [b'x'; 1024];

fn bare()
-> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + Send + Sync + 'static
{
    service_fn(|_: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"an answer"))))
    })
}

fn get(uri: &Uri) -> Req {
    let mut req = Request::new(Full::default());
    *req.uri_mut() = uri.clone();
    req
}

fn post_1k() -> Req {
    Request::post("/analyze")
        .body(Full::new(Bytes::from_static(&BODY_1K)))
        .unwrap()
}

/// One request, driven as a user drives it.
async fn drive<S>(svc: &S, req: Req)
where
    S: Service<Req> + Clone,
    S::Error: std::fmt::Debug,
{
    let res = svc.clone().ready().await.unwrap().call(req).await.unwrap();
    black_box(res);
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let uri = Uri::from_static("/analyze/7");
    let hot: Vec<Uri> = (0..100)
        .map(|i| format!("/analyze/{i}").parse().unwrap())
        .collect();

    let baseline = bare();
    let cache = CacheLayer::builder().name("bench").build().layer(bare());
    let cache_100 = CacheLayer::builder()
        .name("bench-100")
        .max_entries(100)
        .build()
        .layer(bare());
    let miss = CacheLayer::builder()
        .name("bench-miss")
        .cacheable(|_| false)
        .build()
        .layer(bare());
    let generic = FnCacheLayer::builder(|req: &Req| {
        let mut key = KeyHasher::new();
        key.field(0, req.uri().path().as_bytes());
        Some(key.finish())
    })
    .build()
    .layer(bare());
    let peer = tower_resilience_cache::CacheLayer::builder()
        .max_size(100)
        .ttl(Duration::from_secs(3600))
        .key_extractor(|req: &Req| req.uri().path().to_owned())
        .build()
        .unwrap()
        .layer(bare());
    rt.block_on(async {
        drive(&cache, get(&uri)).await;
        drive(&cache, post_1k()).await;
        for u in &hot {
            drive(&cache_100, get(u)).await;
        }
        drive(&generic, get(&uri)).await;
        drive(&peer, get(&uri)).await;
    });

    let mut g = c.benchmark_group("cache/1 thread");
    g.bench_function("baseline (start)", |b| {
        b.to_async(&rt).iter(|| drive(&baseline, get(&uri)));
    });
    g.bench_function("hit, no body", |b| {
        b.to_async(&rt).iter(|| drive(&cache, get(&uri)));
    });
    let mut i = 0;
    g.bench_function("hit, 100 hot entries", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % hot.len();
            drive(&cache_100, get(&hot[i]))
        });
    });
    g.bench_function("miss (not stored)", |b| {
        b.to_async(&rt).iter(|| drive(&miss, get(&uri)));
    });
    g.bench_function("generic hit, path key", |b| {
        b.to_async(&rt).iter(|| drive(&generic, get(&uri)));
    });
    g.bench_function("peer tower-resilience-cache hit, path key", |b| {
        b.to_async(&rt).iter(|| drive(&peer, get(&uri)));
    });
    // The same POST with a 1 KiB body to the bare service: the body hit is measured
    // against this (building that request costs more than the GET
    // above). After the peer, which is measured against the GET baseline before it.
    g.bench_function("baseline, 1 KiB body", |b| {
        b.to_async(&rt).iter(|| drive(&baseline, post_1k()));
    });
    g.bench_function("hit, 1 KiB body", |b| {
        b.to_async(&rt).iter(|| drive(&cache, post_1k()));
    });
    g.bench_function("baseline (end)", |b| {
        b.to_async(&rt).iter(|| drive(&baseline, get(&uri)));
    });
    g.finish();

    let mut g = c.benchmark_group("cache/parts");
    g.bench_function("sha256 64 B", |b| {
        b.iter(|| Sha256::digest(black_box(&BODY_1K[..64])));
    });
    g.bench_function("sha256 1 KiB", |b| {
        b.iter(|| Sha256::digest(black_box(&BODY_1K[..])));
    });
    let keys: Vec<CacheKey> = (0..100u32)
        .map(|i| {
            let mut k = KeyHasher::new();
            k.field(0, &i.to_le_bytes());
            k.finish()
        })
        .collect();
    let raw = moka::sync::Cache::builder().max_capacity(100).build();
    let mut store = MokaStore::with_max_entries(100);
    // As a layer with a one-hour TTL sets it up.
    store.retain_at_most(Duration::from_secs(3600));
    let value = CachedResponse::new(
        StatusCode::OK,
        http::Version::HTTP_11,
        http::HeaderMap::new(),
        Bytes::new(),
        None,
    );
    for k in &keys {
        raw.insert(*k, Arc::new(value.clone()));
        store.insert(
            *k,
            Arc::new(Entry::new(
                value.clone(),
                tokio::time::Instant::now(),
                Duration::from_secs(3600),
                Duration::ZERO,
            )),
        );
    }
    let mut i = 0;
    g.bench_function("raw moka get, 100 hot", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(raw.get(&keys[i]))
        });
    });
    g.bench_function("MokaStore get (async seam, TTL), 100 hot", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(store.get(&keys[i]).into_inner())
        });
    });
    let ttl = moka::sync::Cache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(3600))
        .build();
    for k in &keys {
        ttl.insert(*k, Arc::new(value.clone()));
    }
    g.bench_function("raw moka get with TTL, 100 hot", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(ttl.get(&keys[i]))
        });
    });
    struct Expire;
    impl moka::Expiry<CacheKey, Arc<CachedResponse>> for Expire {
        fn expire_after_create(
            &self,
            _: &CacheKey,
            _: &Arc<CachedResponse>,
            _: Instant,
        ) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }
    let per_entry = moka::sync::Cache::builder()
        .max_capacity(100)
        .expire_after(Expire)
        .build();
    for k in &keys {
        per_entry.insert(*k, Arc::new(value.clone()));
    }
    g.bench_function("raw moka get with per-entry expiry, 100 hot", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(per_entry.get(&keys[i]))
        });
    });
    g.bench_function("tokio Instant::now", |b| b.iter(tokio::time::Instant::now));
    g.bench_function("std Instant::now", |b| b.iter(Instant::now));
    g.finish();
}

/// Two OS threads hit the same cache at once (see `bench_harness`); per-thread time per
/// request. The entry is stored first.
fn contended<S>(c: &mut Criterion, name: &str, svc: &S, make: fn() -> Req)
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Debug,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(drive(svc, make()));
    let overlap = Overlap::default();
    c.benchmark_group("cache/2 threads")
        .bench_function(name, |b| {
            b.iter_custom(|iters| {
                bench_harness::contended(iters, &overlap, svc, async |svc, _| {
                    drive(svc, make()).await;
                })
            });
        });
    overlap.report(&format!("cache/2 threads/{name}"));
}

fn get_fixed() -> Req {
    Request::get("/analyze/7").body(Full::default()).unwrap()
}

fn two_threads(c: &mut Criterion) {
    contended(c, "baseline", &bare(), get_fixed);
    contended(
        c,
        "hit, no body",
        &CacheLayer::builder().build().layer(bare()),
        get_fixed,
    );
    contended(
        c,
        "hit, 1 KiB body",
        &CacheLayer::builder().build().layer(bare()),
        post_1k,
    );
    let peer = tower_resilience_cache::CacheLayer::builder()
        .max_size(100)
        .key_extractor(|req: &Req| req.uri().path().to_owned())
        .build()
        .unwrap()
        .layer(bare());
    contended(c, "peer tower-resilience-cache hit", &peer, get_fixed);
}

/// Resident memory (from `/proc/self/statm`) before and after filling a store.
fn memory_report() {
    fn rss_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let body = Bytes::from(vec![b'a'; 512]);
    for n in [100u32, 100_000] {
        let before = rss_bytes().unwrap_or(0);
        let store = MokaStore::with_max_entries(u64::from(n));
        for i in 0..n {
            let mut k = KeyHasher::new();
            k.field(0, &i.to_le_bytes());
            // A fresh copy per entry, as real answers are.
            let value = CachedResponse::new(
                StatusCode::OK,
                http::Version::HTTP_11,
                headers.clone(),
                Bytes::copy_from_slice(&body),
                None,
            );
            let entry = Entry::new(
                value,
                tokio::time::Instant::now(),
                Duration::from_secs(3600),
                Duration::ZERO,
            );
            store.insert(k.finish(), Arc::new(entry));
        }
        let count = store.entry_count();
        let after = rss_bytes().unwrap_or(0);
        let grown = after.saturating_sub(before);
        eprintln!(
            "memory: {count} entries of a 512 B JSON answer: resident +{} KiB ({} B per entry)",
            grown / 1024,
            grown / count.max(1)
        );
        drop(store);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = single_thread, two_threads
}

fn main() {
    // Not while profiling.
    if !std::env::args().any(|a| a == "--profile-time") {
        memory_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
