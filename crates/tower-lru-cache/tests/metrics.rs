//! Metric names, labels and values.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, ServiceExt, service_fn};
use tower_lru_cache::Clock;
use tower_lru_cache::{CACHE_ENTRIES, CACHE_REQUESTS_TOTAL, CacheLayer};

#[tokio::test(start_paused = true)]
async fn requests_and_entries_are_recorded_with_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are resolved when the layer is built: the recorder must exist by then.
    let layer = metrics::with_local_recorder(&recorder, || {
        CacheLayer::builder()
            .clock(Clock::Tokio)
            .name("analyze")
            .build()
    });
    let svc = layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
    }));
    for method in ["GET", "GET", "GET", "PUT"] {
        let req = Request::builder()
            .method(method)
            .uri("/")
            .body(Full::default())
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
    }

    let mut seen = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let value = match value {
            DebugValue::Counter(n) => n.to_string(),
            DebugValue::Gauge(g) => g.into_inner().to_string(),
            DebugValue::Histogram(_) => continue,
        };
        seen.push(format!("{}{{{}}} {value}", key.name(), labels.join(",")));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("{CACHE_ENTRIES}{{cache=analyze}} 1"),
            format!("{CACHE_REQUESTS_TOTAL}{{cache=analyze,result=bypass}} 1"),
            format!("{CACHE_REQUESTS_TOTAL}{{cache=analyze,result=coalesced}} 0"),
            format!("{CACHE_REQUESTS_TOTAL}{{cache=analyze,result=hit}} 2"),
            format!("{CACHE_REQUESTS_TOTAL}{{cache=analyze,result=miss}} 1"),
            format!("{CACHE_REQUESTS_TOTAL}{{cache=analyze,result=stale}} 0"),
        ]
    );
}
