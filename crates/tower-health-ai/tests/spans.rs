//! The preset's request span: one `health_ai.request` span per request, with the layers'
//! decisions recorded on it, and no raw user id anywhere.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::{BoxError, Layer, ServiceExt, service_fn};
use tower_health_ai::Clock;
use tower_health_ai::{HealthAiStack, UpstreamRequest};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Fields = BTreeMap<String, String>;

/// Captures the fields of every `health_ai.request` span.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<(Id, Fields)>>>,
    /// Every field recorded after the span opened, in order, by span.
    records: Arc<Mutex<Vec<(Id, String)>>>,
}

/// Collects the names of the fields a record sets.
struct Names<'a>(&'a mut Vec<String>);

impl Visit for Names<'_> {
    fn record_debug(&mut self, field: &Field, _value: &dyn Debug) {
        self.0.push(field.name().to_owned());
    }
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == "health_ai.request" {
            let mut fields = Fields::new();
            attrs.record(&mut Visitor(&mut fields));
            self.spans.lock().unwrap().push((id.clone(), fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some((_, fields)) = spans.iter_mut().find(|(span, _)| span == id) {
            values.record(&mut Visitor(fields));
            let mut names = Vec::new();
            values.record(&mut Names(&mut names));
            let mut records = self.records.lock().unwrap();
            records.extend(names.into_iter().map(|name| (id.clone(), name)));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_request_gets_a_span_with_the_layers_decisions() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let upstream = service_fn(|_request: UpstreamRequest| async {
        Ok::<_, BoxError>(Response::new(Body::from("real")))
    });
    let svc = HealthAiStack::builder()
        .clock(Clock::Tokio)
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
        .layer(upstream);
    for _ in 0..2 {
        let request = Request::post("/analyze")
            .header("x-user-id", "ada-lovelace")
            .body(Body::from("{}"))
            .unwrap();
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let spans = capture.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "one span per request");
    let (first, second) = (&spans[0].1, &spans[1].1);
    assert_eq!(first["route"], "unmatched");
    assert_eq!(first["priority"], "normal");
    assert_eq!(first["attempts"], "1");
    assert_eq!(first["status"], "200");
    assert_eq!(first["outcome"], "answered");
    assert_eq!(first["degraded"], "false");
    assert_eq!(first["cache"], "MISS");
    assert_eq!(second["cache"], "HIT");
    assert_eq!(
        first["user"], second["user"],
        "the same user, the same hash"
    );
    assert_eq!(first["user"].len(), 16);
    for fields in [first, second] {
        assert!(
            fields.values().all(|value| !value.contains("ada")),
            "no raw user id: {fields:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_request_records_its_priority_and_attempts_once() {
    // A formatting subscriber appends every recording of a field to the span's line:
    // recorded once per attempt, `attempts` would read `attempts=1 attempts=2 attempts=3`.
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let upstream = {
        let calls = Arc::clone(&calls);
        service_fn(move |_request: UpstreamRequest| {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut response = Response::new(Body::from("real"));
                if call < 2 {
                    *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                }
                Ok::<_, BoxError>(response)
            }
        })
    };
    let svc = HealthAiStack::builder()
        .clock(tower_health_ai::Clock::Tokio)
        .fallback(|_parts, _error| Some(Response::new(Bytes::from_static(b"fallback"))))
        .build()
        .layer(upstream);
    let request = Request::post("/analyze")
        .header("x-user-id", "ada")
        .header("x-priority", "low")
        .body(Body::from("{}"))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    let spans = capture.spans.lock().unwrap().clone();
    assert_eq!(spans[0].1["attempts"], "3");
    assert_eq!(spans[0].1["priority"], "low");
    let records = capture.records.lock().unwrap().clone();
    for field in ["attempts", "priority", "cache", "status", "outcome"] {
        let times = records.iter().filter(|(_, name)| name == field).count();
        assert_eq!(times, 1, "{field} recorded {times} times: {records:?}");
    }
}
