//! Each runnable example, exercised: the code a user copies is the code that is tested.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[path = "../axum_a_la_carte.rs"]
#[allow(dead_code)]
mod axum_a_la_carte;
#[path = "../axum_existing_app.rs"]
#[allow(dead_code)]
mod axum_existing_app;
#[path = "../axum_preset.rs"]
#[allow(dead_code)]
mod axum_preset;
#[path = "../tonic_health.rs"]
#[allow(dead_code)]
mod tonic_example;

fn from(ip: [u8; 4]) -> axum::extract::ConnectInfo<SocketAddr> {
    axum::extract::ConnectInfo(SocketAddr::from((ip, 40_000)))
}

#[tokio::test(start_paused = true)]
async fn a_la_carte_limits_each_client_and_counts_the_refusals() {
    let (router, metrics) = axum_a_la_carte::app();
    let get = |path: &str, ip: [u8; 4]| {
        let mut request = Request::get(path).body(Body::empty()).unwrap();
        request.extensions_mut().insert(from(ip));
        request
    };
    for _ in 0..10 {
        let response = router
            .clone()
            .oneshot(get("/api/hello", [10, 0, 0, 1]))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    // The limit is shared by both API routes.
    let refused = router
        .clone()
        .oneshot(get("/api/time", [10, 0, 0, 1]))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let other = router
        .clone()
        .oneshot(get("/api/time", [10, 0, 0, 2]))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.requests.total, 12);
    assert_eq!(snapshot.requests.rate_limited, 1);
}

#[tokio::test(start_paused = true)]
async fn the_preset_example_caches_and_reports() {
    let (router, handle) = axum_preset::app(None);
    let summarize = || {
        Request::post("/api/summarize")
            .header("x-user-id", "ada")
            .body(Body::from("some text"))
            .unwrap()
    };
    let first = router.clone().oneshot(summarize()).await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = router.clone().oneshot(summarize()).await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "9 bytes, summarized");
    assert_eq!(handle.upstream_calls(), 1);

    let health = router
        .clone()
        .oneshot(Request::get("/api/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let health: serde_json::Value =
        serde_json::from_slice(&health.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["circuitBreaker"]["aiService"], "CLOSED");
    let ping = router
        .oneshot(Request::get("/api/ping").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_tonic_health_service_answers_resource_exhausted_past_its_burst() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    // As the example's `main`: the recorder before the layers.
    let prometheus = tower_health_ai::install_prometheus().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tonic_example::serve(incoming, 3, async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut codes = Vec::new();
    for _ in 0..5 {
        let code = match client.check(HealthCheckRequest::default()).await {
            Ok(response) => {
                assert_eq!(
                    response.into_inner().status,
                    tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                );
                tonic::Code::Ok
            }
            Err(status) => status.code(),
        };
        codes.push(code);
    }
    assert_eq!(&codes[..3], [tonic::Code::Ok; 3]);
    assert_eq!(codes[3], tonic::Code::ResourceExhausted, "{codes:?}");

    drop(client);
    stop.send(()).unwrap();
    let metrics = server.await.unwrap().unwrap();
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.requests.total, 5);
    assert_eq!(snapshot.requests.rate_limited, 2);

    // The same requests, as Prometheus text on the metrics port's route.
    let response = tonic_example::metrics_router(prometheus)
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let count = |status: &str| -> u64 {
        text.lines()
            .filter(|line| line.starts_with("http_requests_total{"))
            .filter(|line| line.contains(&format!("status=\"{status}\"")))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!((count("OK"), count("RESOURCE_EXHAUSTED")), (3, 2), "{text}");
}

/// `http_requests_total` by `(method, route, status)`, from the Prometheus text.
fn requests_total(text: &str) -> BTreeMap<(String, String, String), u64> {
    let mut totals = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("http_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let label = |name: &str| -> String {
            let start = labels.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            labels[start..].split('"').next().unwrap().to_owned()
        };
        totals.insert(
            (label("method"), label("route"), label("status")),
            value.parse().unwrap(),
        );
    }
    totals
}

#[tokio::test]
async fn the_existing_app_counts_every_request_once() {
    // As the example's `main`: the recorder before the layers.
    let prometheus = tower_health_ai::install_prometheus().unwrap();
    let (router, state, ops) = axum_existing_app::app(prometheus);
    let send = |request: http::request::Builder, ip: [u8; 4], body: &'static str| {
        let mut request = request.body(Body::from(body)).unwrap();
        request.extensions_mut().insert(from(ip));
        router.clone().oneshot(request)
    };

    // Three orders a minute per client IP: the 4th and 5th are refused, as answers.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = send(Request::post("/orders"), [10, 0, 0, 1], "")
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            assert!(response.headers().contains_key("ratelimit"));
        }
        statuses.push(response.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
        ]
    );
    let other_client = send(Request::post("/orders"), [10, 0, 0, 2], "")
        .await
        .unwrap();
    assert_eq!(other_client.status(), StatusCode::CREATED);
    assert_eq!(state.orders.load(Ordering::Relaxed), 4);

    // The report is rendered once; the cache serves the other three.
    for expected in ["MISS", "HIT", "HIT", "HIT"] {
        let response = send(Request::get("/report"), [10, 0, 0, 3], "")
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-cache"], expected);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "report, rendered 1 time(s)");
    }
    assert_eq!(state.reports_rendered.load(Ordering::Relaxed), 1);

    // The preset's route: one upstream call, then its cache.
    for expected in ["MISS", "HIT", "HIT"] {
        let request = Request::post("/summarize").header("x-user-id", "ada");
        let response = send(request, [10, 0, 0, 4], "some text").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-cache"], expected);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "9 bytes, summarized");
    }
    assert_eq!(ops.upstream_calls(), 1);

    // The preset's operator routes, under `/ops`.
    let health = send(Request::get("/ops/api/health"), [10, 0, 0, 5], "")
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // The preset reports the router's RED figures: 14 requests, each once; the 429s
    // are refusals, not errors.
    let requests = ops.metrics().requests;
    assert_eq!(
        (requests.total, requests.rate_limited, requests.errors),
        (14, 2, 0)
    );

    // The application's own `/metrics`: exactly what was sent, route by route.
    let response = send(Request::get("/metrics"), [10, 0, 0, 5], "")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let ours = ["/orders", "/report", "/summarize", "/ops/api/health"];
    let counted: BTreeMap<_, _> = requests_total(&text)
        .into_iter()
        .filter(|((_, route, _), _)| ours.contains(&route.as_str()))
        .collect();
    let expected: BTreeMap<_, _> = [
        (("POST", "/orders", "201"), 4),
        (("POST", "/orders", "429"), 2),
        (("GET", "/report", "200"), 4),
        (("POST", "/summarize", "200"), 3),
        (("GET", "/ops/api/health", "200"), 1),
    ]
    .into_iter()
    .map(|((method, route, status), count)| ((method.into(), route.into(), status.into()), count))
    .collect();
    assert_eq!(counted, expected, "{text}");
}
