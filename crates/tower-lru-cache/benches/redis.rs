//! `RedisStore` against a `redis-server` the bench starts on a free port, through the
//! layer as users drive it (clone, `ready().await`, `call`, read the body):
//!
//! - `L2 hit`: 1 KiB answers written by another instance, read by an instance whose L1
//!   holds one entry while the requests rotate over 1,000 keys (so nearly every request
//!   misses L1 and makes one `GET`); p50/p99 of 20,000 sequential requests;
//! - `L1 hit`: the same request again and again, with `RedisStore` and with the default
//!   `MokaStore`, and the bare service: mean per request over 200,000 (the L1 hit path
//!   should cost the same with either store).
//!
//! Run: `cargo bench -p tower-lru-cache --features redis --bench redis`

use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use redis_test_server::RedisServer;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_lru_cache::{CacheLayer, RedisStore};

type Req = Request<Full<Bytes>>;

static BODY_1K: [u8; 1024] = [b'x'; 1024];

fn upstream()
-> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(&BODY_1K))))
    })
}

fn get(uri: &Uri) -> Req {
    let mut req = Request::new(Full::default());
    *req.uri_mut() = uri.clone();
    req
}

async fn drive<S, B>(svc: &S, req: Req) -> Response<B>
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone().ready().await.unwrap().call(req).await.unwrap()
}

async fn mean<S, B>(svc: &S, uri: &Uri, n: u32) -> Duration
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..n {
        black_box(drive(svc, get(uri)).await);
    }
    start.elapsed() / n
}

fn main() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uris: Vec<Uri> = (0..1000)
            .map(|i| format!("/answer/{i}").parse().unwrap())
            .collect();
        let store = |entries: u64| {
            RedisStore::builder(&server.url())
                .unwrap()
                .prefix("bench:")
                .timeout(Duration::from_secs(1))
                .l1_max_entries(entries)
                .build()
        };
        let writer = CacheLayer::builder()
            .store(store(2000))
            .build()
            .layer(upstream());
        for uri in &uris {
            drive(&writer, get(uri)).await;
        }
        // Wait for the writes to land.
        while server.command("DBSIZE").trim_start_matches(':').trim() != "1000" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let reader_store = store(1);
        let reader = CacheLayer::builder()
            .store(reader_store.clone())
            .build()
            .layer(upstream());
        while !reader_store.is_subscribed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut samples = Vec::with_capacity(20_000);
        for i in 0..20_000 {
            let start = Instant::now();
            let res = drive(&reader, get(&uris[i % uris.len()])).await;
            let body = res.into_body().collect().await.unwrap().to_bytes();
            samples.push(start.elapsed());
            assert_eq!(body.len(), 1024);
        }
        samples.sort();
        let at = |p: usize| samples[samples.len() * p / 100];
        println!(
            "L2 hit (L1 miss), 1 KiB answer, loopback, 20,000 sequential: p50 {:?}, p99 {:?}, max {:?}",
            at(50),
            at(99),
            samples[samples.len() - 1]
        );

        let uri: Uri = "/hot".parse().unwrap();
        let bare = upstream();
        let moka = CacheLayer::new().layer(upstream());
        let redis_store = store(100);
        let redis = CacheLayer::builder()
            .store(redis_store.clone())
            .build()
            .layer(upstream());
        // Subscribing clears L1: fill it after.
        while !redis_store.is_subscribed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drive(&moka, get(&uri)).await;
        drive(&redis, get(&uri)).await;
        for round in 0..2 {
            let n = 200_000;
            println!(
                "round {round}: bare {:?}, L1 hit MokaStore {:?}, L1 hit RedisStore {:?} (mean per request)",
                mean(&bare, &uri, n).await,
                mean(&moka, &uri, n).await,
                mean(&redis, &uri, n).await,
            );
        }
    });
}
