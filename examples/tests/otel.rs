//! OpenTelemetry: one request through the gateway joins its caller's trace, its spans
//! are exported with the right parent links, and the call to the provider carries the
//! trace on.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway;
use health_ai_examples::telemetry::otel;
use health_ai_examples::upstream::UpstreamClient;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// A provider on loopback that answers every call and keeps the calls' headers.
async fn ai_provider() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let router = Router::new().route(
        "/v1/analyze",
        post(move |headers: HeaderMap| {
            seen.lock().unwrap().push(headers);
            async { axum::Json(serde_json::json!({ "summary": "all good" })) }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls)
}

/// A tracer provider that keeps finished spans in memory.
fn tracer() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (exporter, provider)
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no `{name}` span in {spans:#?}"))
}

#[tokio::test]
async fn a_request_joins_the_callers_trace_and_carries_it_to_the_provider() {
    let (exporter, provider) = tracer();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(otel::layer(&provider)),
    );

    let (url, calls) = ai_provider().await;
    let args = GatewayArgs::parse_from(["gateway", "--upstream", &url]);
    let upstream = UpstreamClient::new(&url).unwrap();
    let router = gateway::build(&args, upstream, None, None).router;
    let request = Request::post("/api/health-records/rec-1/analyze")
        .header("x-user-id", "ada")
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["source"], "ai", "{answer}");

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let trace_id = TraceId::from_hex(TRACE_ID).unwrap();
    // The request's span is a child of the caller's span, in the caller's trace...
    let request = span(&spans, "health_ai.request");
    assert_eq!(request.span_context.trace_id(), trace_id);
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(CALLER_SPAN_ID).unwrap()
    );
    assert!(request.parent_span_is_remote);
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(request, "route").as_deref(),
        Some("/api/health-records/{id}/analyze")
    );
    assert_eq!(attribute(request, "outcome").as_deref(), Some("answered"));
    // ...the call to the provider a client span inside it...
    let call = span(&spans, "POST /v1/analyze");
    assert_eq!(call.span_context.trace_id(), trace_id);
    assert_eq!(call.parent_span_id, request.span_context.span_id());
    assert_eq!(call.span_kind, SpanKind::Client);
    assert_eq!(
        attribute(call, "http.response.status_code").as_deref(),
        Some("200")
    );
    // ...and the provider was told: same trace, the call's span as parent.
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    let traceparent = calls[0]
        .get("traceparent")
        .expect("the provider call carries a traceparent")
        .to_str()
        .unwrap();
    assert_eq!(
        traceparent,
        format!("00-{TRACE_ID}-{}-01", call.span_context.span_id())
    );
}

#[tokio::test]
async fn without_a_traceparent_a_request_starts_its_own_trace() {
    let (exporter, provider) = tracer();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(otel::layer(&provider)),
    );

    let (url, calls) = ai_provider().await;
    let args = GatewayArgs::parse_from(["gateway", "--upstream", &url]);
    let router = gateway::build(&args, UpstreamClient::new(&url).unwrap(), None, None).router;
    let request = Request::post("/api/health-records/rec-1/analyze")
        .header("x-user-id", "ada")
        .header("traceparent", "not a trace context")
        .body(Body::empty())
        .unwrap();
    assert_eq!(router.oneshot(request).await.unwrap().status(), 200);

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let request = span(&spans, "health_ai.request");
    assert_eq!(request.parent_span_id, SpanId::INVALID, "a root span");
    let calls = calls.lock().unwrap();
    let traceparent = calls[0].get("traceparent").unwrap().to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{}-", request.span_context.trace_id())),
        "{traceparent}"
    );
}

#[tokio::test]
async fn without_export_the_callers_trace_context_reaches_the_provider_unchanged() {
    // No OpenTelemetry layer: the gateway's spans are not exported.
    let (url, calls) = ai_provider().await;
    let args = GatewayArgs::parse_from(["gateway", "--upstream", &url]);
    let router = gateway::build(&args, UpstreamClient::new(&url).unwrap(), None, None).router;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    let request = Request::post("/api/health-records/rec-1/analyze")
        .header("x-user-id", "ada")
        .header("traceparent", &traceparent)
        .body(Body::empty())
        .unwrap();
    assert_eq!(router.oneshot(request).await.unwrap().status(), 200);

    let calls = calls.lock().unwrap();
    assert_eq!(calls[0].get("traceparent").unwrap(), traceparent.as_str());
}
