//! The circuit breaker's closed path and open (rejection) path against a bare
//! `service_fn`, and tower-resilience's circuit breaker (closed) on the same workload; on
//! one thread and with two threads contending (two OS threads, each with its own
//! runtime). For reference: tower's `load_shed` (the emptiest real layer), the call
//! timeout next to tower's, and the fallback's pass-through path.
//!
//! Run: `cargo bench -p tower-breaker --bench breaker -- --warm-up-time 0.5 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bench_harness::Overlap;
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
    let mut g = c.benchmark_group("breaker/1-thread");
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

/// Whether a contended run expects answers or refusals.
#[derive(Clone, Copy)]
enum Expect {
    Answer,
    Refusal,
}

/// Two OS threads contending (see `bench_harness`), each request driven by [`drive`] or
/// [`drive_refused`].
fn bench_contended<S>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    overlap: &Overlap,
    service: &S,
    expect: Expect,
) where
    S: Service<Req> + Clone + Send + Sync,
    S::Response: std::fmt::Debug,
    S::Error: std::fmt::Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            bench_harness::contended(
                iters,
                overlap,
                service,
                async |service, body| match expect {
                    Expect::Answer => drive(service, body).await,
                    Expect::Refusal => drive_refused(service, body).await,
                },
            )
        });
    });
}

fn two_threads(c: &mut Criterion, overlap: &Overlap) {
    let mut g = c.benchmark_group("breaker/2-threads");
    bench_contended(&mut g, "baseline", overlap, &baseline(), Expect::Answer);
    let closed = ours().layer(baseline());
    bench_contended(&mut g, "breaker-closed", overlap, &closed, Expect::Answer);
    let window = ours_window().layer(baseline());
    bench_contended(
        &mut g,
        "breaker-closed-window",
        overlap,
        &window,
        Expect::Answer,
    );
    let open = ours_open().layer(baseline());
    bench_contended(
        &mut g,
        "breaker-open-rejects",
        overlap,
        &open,
        Expect::Refusal,
    );
    let peer = resilience().layer(baseline());
    bench_contended(
        &mut g,
        "tower-resilience-closed",
        overlap,
        &peer,
        Expect::Answer,
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
    let overlap = Overlap::default();
    two_threads(&mut c, &overlap);
    single_thread(&mut c, &rt, "end");
    overlap.report("breaker/2-threads");
    c.final_summary();
}
