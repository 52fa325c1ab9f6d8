//! The circuit breaker's closed path and open (rejection) path against a bare
//! `service_fn`, and tower-resilience's circuit breaker (closed) on the same workload; on
//! one thread and with two threads contending. For reference: tower's `load_shed` (the
//! emptiest real layer), the call timeout next to tower's, and the fallback's
//! pass-through path.
//!
//! Run: `cargo bench -p tower-breaker --bench breaker -- --warm-up-time 0.5 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_breaker::fallback::FallbackRequest;
use tower_breaker::{CircuitBreakerLayer, FallbackLayer, TimeoutLayer};

type Req = Request<u64>;
type Res = Response<()>;

/// Drives a service as middleware users do: clone, ready, call with a fresh request.
async fn drive<S>(service: &S, body: u64)
where
    S: Service<Req> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut service = service.clone();
    let service = service.ready().await.unwrap();
    black_box(service.call(Request::new(body)).await.unwrap());
}

/// The same, for a path that must refuse.
async fn drive_refused<S>(service: &S, body: u64)
where
    S: Service<Req> + Clone,
    S::Response: std::fmt::Debug,
    S::Error: std::fmt::Debug,
{
    let mut service = service.clone();
    let service = service.ready().await.unwrap();
    black_box(service.call(Request::new(body)).await.unwrap_err());
}

fn baseline() -> impl Service<Req, Response = Res, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|request: Req| {
        black_box(request);
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    })
}

fn ours() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder().name("bench").build()
}

fn ours_window() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name("bench-window")
        .failure_rate(0.5, 100, 100)
        .build()
}

fn ours_open() -> CircuitBreakerLayer {
    let layer = CircuitBreakerLayer::builder().name("bench-open").build();
    layer.handle().force_open();
    layer
}

/// tower-resilience's breaker, defaults (count-based window of 100, 50 %): the workload
/// only succeeds, so it never opens.
fn resilience() -> tower_resilience::circuitbreaker::CircuitBreakerLayer {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .name("bench")
        .build()
        .unwrap()
}

type Answer = std::future::Ready<Result<Res, Infallible>>;
type LocalAnswer = tower::util::ServiceFn<fn(FallbackRequest<u64, Res>) -> Answer>;

fn fallback_layer() -> FallbackLayer<fn(&Req) -> u64, LocalAnswer> {
    let capture: fn(&Req) -> u64 = |request| *request.body();
    let answer: fn(FallbackRequest<u64, Res>) -> Answer =
        |_| std::future::ready(Ok(Response::new(())));
    FallbackLayer::new(capture, service_fn(answer))
}

fn single_thread(c: &mut Criterion, rt: &tokio::runtime::Runtime, tag: &str) {
    let mut g = c.benchmark_group("1-thread");
    let base = baseline();
    g.bench_function(format!("baseline-{tag}"), |b| {
        b.to_async(rt).iter(|| drive(&base, 1));
    });
    if tag == "end" {
        g.finish();
        return;
    }

    let closed = ours().layer(baseline());
    g.bench_function("breaker-closed", |b| {
        b.to_async(rt).iter(|| drive(&closed, 1));
    });
    let window = ours_window().layer(baseline());
    g.bench_function("breaker-closed-window", |b| {
        b.to_async(rt).iter(|| drive(&window, 1));
    });
    let open = ours_open().layer(baseline());
    g.bench_function("breaker-open-rejects", |b| {
        b.to_async(rt).iter(|| drive_refused(&open, 1));
    });
    let peer = resilience().layer(baseline());
    g.bench_function("tower-resilience-closed", |b| {
        b.to_async(rt).iter(|| drive(&peer, 1));
    });
    let load_shed = tower::load_shed::LoadShedLayer::new().layer(baseline());
    g.bench_function("tower-load-shed", |b| {
        b.to_async(rt).iter(|| drive(&load_shed, 1));
    });
    let timeout = TimeoutLayer::default().layer(baseline());
    g.bench_function("timeout", |b| {
        b.to_async(rt).iter(|| drive(&timeout, 1));
    });
    let tower_timeout =
        tower::timeout::TimeoutLayer::new(Duration::from_secs(120)).layer(baseline());
    g.bench_function("tower-timeout", |b| {
        b.to_async(rt).iter(|| drive(&tower_timeout, 1));
    });
    let fallback = fallback_layer().layer(baseline());
    g.bench_function("fallback-pass-through", |b| {
        b.to_async(rt).iter(|| drive(&fallback, 1));
    });
    g.finish();
}

/// Two tasks on a two-worker runtime, released together by a spin gate, each driving
/// `iters` requests; returns the mean per-thread time.
fn contended<F, Fut>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    same_worker: &AtomicUsize,
    run: F,
) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let gate = Arc::new(AtomicUsize::new(2));
    let tasks: Vec<_> = (0..2u64)
        .map(|t| {
            let gate = Arc::clone(&gate);
            let run = run.clone();
            // Spawned from outside the runtime: both land in the injection queue.
            rt.spawn(async move {
                gate.fetch_sub(1, Ordering::AcqRel);
                while gate.load(Ordering::Acquire) != 0 {
                    // Yields rather than spins: both tasks may start on one worker.
                    tokio::task::yield_now().await;
                }
                let thread = std::thread::current().id();
                let start = Instant::now();
                for i in 0..iters {
                    run(i.wrapping_mul(2).wrapping_add(t)).await;
                }
                (start.elapsed(), thread)
            })
        })
        .collect();
    let results: Vec<_> = rt.block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    if results[0].1 == results[1].1 {
        same_worker.fetch_add(1, Ordering::Relaxed);
    }
    (results[0].0 + results[1].0) / 2
}

fn bench_contended<F, Fut>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    same_worker: &AtomicUsize,
    run: F,
) where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| contended(rt, iters, same_worker, run.clone()));
    });
}

fn two_threads(c: &mut Criterion, same_worker: &AtomicUsize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("2-threads");

    let base = baseline();
    bench_contended(&mut g, &rt, "baseline", same_worker, move |i| {
        let service = base.clone();
        async move { drive(&service, i).await }
    });
    let closed = ours().layer(baseline());
    bench_contended(&mut g, &rt, "breaker-closed", same_worker, move |i| {
        let service = closed.clone();
        async move { drive(&service, i).await }
    });
    let window = ours_window().layer(baseline());
    bench_contended(
        &mut g,
        &rt,
        "breaker-closed-window",
        same_worker,
        move |i| {
            let service = window.clone();
            async move { drive(&service, i).await }
        },
    );
    let open = ours_open().layer(baseline());
    bench_contended(&mut g, &rt, "breaker-open-rejects", same_worker, move |i| {
        let service = open.clone();
        async move { drive_refused(&service, i).await }
    });
    let peer = resilience().layer(baseline());
    bench_contended(
        &mut g,
        &rt,
        "tower-resilience-closed",
        same_worker,
        move |i| {
            let service = peer.clone();
            async move { drive(&service, i).await }
        },
    );
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    single_thread(&mut c, &rt, "start");
    let same_worker = AtomicUsize::new(0);
    two_threads(&mut c, &same_worker);
    single_thread(&mut c, &rt, "end");
    println!(
        "2-threads: runs where both tasks shared a worker: {}",
        same_worker.load(Ordering::Relaxed)
    );
    c.final_summary();
}
