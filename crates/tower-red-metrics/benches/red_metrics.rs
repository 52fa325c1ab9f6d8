//! Per-request overhead of the RED metrics layer, with the Prometheus recorder installed,
//! against a bare `service_fn` baseline and against axum-prometheus's layer recording into
//! the same recorder; rendering `/metrics` with 50 and 5,000 series; and two OS threads
//! hitting the same layer state (`bench_harness`).
//!
//! `recorder_floor` is the bare service making the layer's four recorder calls itself
//! (gauge up, histogram, gauge down, counter) on pre-resolved handles: what any layer
//! recording these metrics through this recorder pays, whoever writes it. A request
//! answered in its first poll, as the bench's are, never waits, so the layer makes only
//! two of them (histogram, counter): the `recorder_two_calls` rows. The
//! `contended_recorder_histogram` and `contended_recorder_counter` rows make one call
//! alone, to split the floor by metric kind.
//!
//! `cargo bench -p tower-red-metrics --bench red_metrics -- --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use axum_prometheus::BaseMetricLayer;
use bench_harness::Overlap;
use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_red_metrics::{
    HttpClassify, MethodLabel, PrometheusConfig, RedMetricsLayer, RedMetricsLayerBuilder,
    RequestLabels,
};

type Req = Request<Empty<Bytes>>;

fn request() -> Req {
    Request::get("/api/analyze").body(Empty::new()).unwrap()
}

fn bare() -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

/// One request, as middleware users drive it: clone, wait until ready, call.
async fn one<S>(service: &S)
where
    S: Service<Req> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut service = service.clone();
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    black_box(response);
}

fn single<S>(
    c: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    service: &S,
) where
    S: Service<Req> + Clone,
    S::Error: std::fmt::Debug,
{
    c.bench_function(name, |b| b.to_async(runtime).iter(|| one(service)));
}

/// Two OS threads contending (see `bench_harness`), each request driven by [`one`].
fn contended<S>(c: &mut BenchmarkGroup<'_, WallTime>, name: &str, service: &S)
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Debug,
{
    let overlap = Overlap::default();
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            bench_harness::contended(iters, &overlap, service, async |service, _| {
                one(service).await;
            })
        });
    });
    overlap.report(name);
}

/// The recorder calls the layer makes per request, on pre-resolved handles, with nothing
/// else: in-flight gauge up, duration histogram, in-flight gauge down, request counter.
struct Floor {
    in_flight: metrics::Gauge,
    duration: metrics::Histogram,
    requests: metrics::Counter,
}

/// The bare service, making recorder calls itself (`calls`): the layer's four are the
/// floor under its cost that belongs to the recorder (metrics-exporter-prometheus), not
/// to us; one alone splits that floor by metric kind.
fn recorder_calls(
    calls: impl Fn() + Clone + Send + Sync + 'static,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |_: Req| {
        calls();
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    })
}

/// The layer's four recorder calls, on `floor`'s handles.
fn four_calls(floor: &'static Floor) -> impl Fn() + Clone + Send + Sync + 'static {
    move || {
        floor.in_flight.increment(1.0);
        floor.duration.record(1e-7);
        floor.in_flight.decrement(1.0);
        floor.requests.increment(1);
    }
}

/// The calls the layer makes for a request that never waits: histogram and counter.
fn two_calls(floor: &'static Floor) -> impl Fn() + Clone + Send + Sync + 'static {
    move || {
        floor.duration.record(1e-7);
        floor.requests.increment(1);
    }
}

fn benches(c: &mut Criterion) {
    let mut c = c.benchmark_group("red_metrics");
    let c = &mut c;
    let prometheus = PrometheusConfig::new()
        .install()
        .expect("the bench installs the only recorder");
    let single_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let red = RedMetricsLayer::new().layer(bare());
    let labels = [("method", "GET"), ("route", "/floor")];
    let floor: &'static Floor = Box::leak(Box::new(Floor {
        in_flight: metrics::gauge!("floor_in_flight", &labels),
        duration: metrics::histogram!("floor_duration_seconds", &labels),
        requests: metrics::counter!("floor_requests_total", &labels),
    }));
    let peer = BaseMetricLayer::new().layer(bare());

    single(c, &single_rt, "baseline_start", &bare());
    single(c, &single_rt, "layer", &red);
    single(c, &single_rt, "axum_prometheus", &peer);
    single(
        c,
        &single_rt,
        "recorder_floor",
        &recorder_calls(four_calls(floor)),
    );
    single(
        c,
        &single_rt,
        "recorder_two_calls",
        &recorder_calls(two_calls(floor)),
    );
    contended(c, "contended_baseline", &bare());
    contended(c, "contended_layer", &red);
    contended(
        c,
        "contended_recorder_floor",
        &recorder_calls(four_calls(floor)),
    );
    contended(
        c,
        "contended_recorder_two_calls",
        &recorder_calls(two_calls(floor)),
    );
    contended(
        c,
        "contended_recorder_histogram",
        &recorder_calls(move || floor.duration.record(1e-7)),
    );
    contended(
        c,
        "contended_recorder_counter",
        &recorder_calls(move || floor.requests.increment(1)),
    );
    contended(c, "contended_axum_prometheus", &peer);
    single(c, &single_rt, "baseline_end", &bare());

    // Rendering: a recorder of its own, with N distinct (method, route, status) series;
    // each route also has an in-flight gauge and a 22-bucket duration histogram.
    for series in [50usize, 5_000] {
        let (recorder, rendered) = PrometheusConfig::new().build().unwrap();
        let routes: Arc<[String]> = (0..series).map(|i| format!("/route/{i}")).collect();
        let labels = {
            let routes = Arc::clone(&routes);
            move |req: &Req| RequestLabels {
                method: MethodLabel::Get,
                route: Some(
                    routes[req.uri().path()[1..].parse::<usize>().unwrap()]
                        .clone()
                        .into(),
                ),
            }
        };
        let layer = RedMetricsLayerBuilder::new(labels, HttpClassify)
            .recorder(recorder)
            .max_routes(series)
            .build();
        let service = layer.layer(bare());
        single_rt.block_on(async {
            for i in 0..series {
                let req = Request::get(format!("/{i}")).body(Empty::new()).unwrap();
                service.clone().oneshot(req).await.unwrap();
            }
        });
        c.bench_function(format!("render_{series}_series"), |b| {
            b.iter(|| black_box(rendered.render()));
        });
    }
    black_box(prometheus.render());
}

criterion_group! {
    name = red_metrics;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(red_metrics);
