//! Installing the global recorder: once, then the same handle again, never a panic.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_red_metrics::{PrometheusConfig, RedMetricsLayer};

#[tokio::test]
async fn installing_twice_returns_the_first_handle() {
    let first = PrometheusConfig::new().install().unwrap();
    let second = PrometheusConfig::new().buckets(&[1.0]).install().unwrap();

    let layer = RedMetricsLayer::new();
    let service = layer.layer(service_fn(|_: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    service
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();

    for handle in [&first, &second] {
        let text = handle.render();
        assert!(text.contains("# HELP http_requests_total"), "{text}");
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="unmatched",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"le="600""#),
            "the first configuration's buckets stay: {text}"
        );
    }
}
