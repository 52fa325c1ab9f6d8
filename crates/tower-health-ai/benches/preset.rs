//! The whole preset's cost on its fast path, as a user pays it: one request through
//! `HealthAiStack` answered from the cache (every layer above the cache runs: RED
//! metrics, the deadline, the refusal mapping, the per-user limit, the body read and the
//! cache lookup), against the bare service measured at the start and the end of the same
//! run. Clone the service, `ready().await`, `call` with a fresh `http::Request`.
//!
//! `cargo bench -p tower-health-ai --bench preset -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_health_ai::HealthAiStack;
use tower_health_ai::token_bucket::Quota;

type Req = Request<Full<Bytes>>;

fn bare() -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"analysis\":\"an answer\"}",
        ))))
    })
}

/// The demo's request: a POST with a user and a small JSON body.
fn analyze() -> Req {
    Request::post("/api/health-records/rec-7/analyze")
        .header("x-user-id", "ada")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"context\":\"fasting glucose\"}",
        )))
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
    let baseline = bare();
    // Every default but the per-user limit, which would refuse a bench's rate (cached
    // answers count against it; the check costs the same at any quota).
    let preset = HealthAiStack::builder()
        .per_user_quota(Quota::per_second(u32::MAX))
        .build()
        .layer(bare());
    rt.block_on(async {
        // Stores the answer: every measured request is a hit.
        drive(&preset, analyze()).await;
    });

    let mut g = c.benchmark_group("preset/1 thread");
    g.bench_function("baseline (start)", |b| {
        b.to_async(&rt).iter(|| drive(&baseline, analyze()));
    });
    g.bench_function("HealthAiStack, cache hit", |b| {
        b.to_async(&rt).iter(|| drive(&preset, analyze()));
    });
    g.bench_function("baseline (end)", |b| {
        b.to_async(&rt).iter(|| drive(&baseline, analyze()));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = single_thread
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
