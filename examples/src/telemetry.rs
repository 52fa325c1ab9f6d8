//! The demo gateway's logs and traces.
//!
//! Logs go to stderr through `tracing-subscriber`. `RUST_LOG` chooses what is written
//! (an [`EnvFilter`] directive, `info` when unset); `--log-format json` writes one JSON
//! object a line, with the current span (`health_ai.request` and its fields, inside a
//! request) and the list of spans it is in, for a log pipeline to index.
//!
//! With the `otel` feature, `--otlp-endpoint URL` also exports the spans over OTLP
//! (HTTP/protobuf) to a collector, and the gateway joins its callers' traces: the W3C
//! `traceparent` of an incoming request is the parent of its `health_ai.request` span
//! ([`AcceptTraceContextLayer`]), and each call to the provider, an `upstream.call` span
//! inside it, sends a `traceparent` of its own to the provider ([`inject_trace_context`];
//! without `--otlp-endpoint`, the caller's passes through unchanged).
//! `RUST_LOG` filters the exported spans as it does the logs.

use std::task::{Context, Poll};

use clap::{Args, ValueEnum};
use http::{HeaderMap, Request};
use tower::{BoxError, Layer, Service};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The gateway's logging and tracing flags.
#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryArgs {
    /// Log format on stderr: `text`, or `json` (one object a line, with the request's
    /// span and its fields). `RUST_LOG` sets what is logged (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g.
    /// `http://localhost:4318` (`/v1/traces` is added to a URL without a path), and
    /// propagate W3C `traceparent` to the provider. Needs the `otel` feature.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `fields`, and the current
    /// `span` and the `spans` it is in, each with its `name` and fields.
    Json,
}

/// The filter of logs and exported spans: `RUST_LOG`, else `info`.
#[must_use]
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The layer that writes log lines in `format` to `writer` (stderr for the gateway).
pub fn log_layer<S, W>(
    format: LogFormat,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// What [`init`] set up that must be shut down: the span exporter, if any.
#[derive(Debug, Default)]
#[must_use = "shut it down at exit to send the last spans"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans not yet exported and stops the exporter.
    pub async fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            // `shutdown` blocks until the batch task, on this runtime, has exported.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("gateway: exporting the last spans: {error}"),
                Err(error) => eprintln!("gateway: exporting the last spans: {error}"),
            }
        }
    }
}

/// Installs the gateway's global subscriber: the [`env_filter`], the [`log_layer`] on
/// stderr and, with `--otlp-endpoint`, the OTLP export. Call it inside the Tokio
/// runtime (the exporter runs on it).
///
/// # Errors
///
/// A bad `--otlp-endpoint` URL, `--otlp-endpoint` without the `otel` feature, or a
/// global subscriber already set.
pub fn init(args: &TelemetryArgs) -> Result<Telemetry, BoxError> {
    #[cfg(not(feature = "otel"))]
    if args.otlp_endpoint.is_some() {
        return Err("--otlp-endpoint needs the gateway built with `--features otel`".into());
    }
    #[cfg(feature = "otel")]
    let provider = args
        .otlp_endpoint
        .as_deref()
        .map(otel::otlp_provider)
        .transpose()?;
    let subscriber = tracing_subscriber::registry()
        .with(env_filter())
        .with(log_layer(args.log_format, std::io::stderr));
    #[cfg(feature = "otel")]
    let subscriber = subscriber.with(provider.as_ref().map(otel::layer));
    subscriber.try_init()?;
    Ok(Telemetry {
        #[cfg(feature = "otel")]
        provider,
    })
}

/// Makes the spans a request opens while it is called (the preset's `health_ai.request`)
/// children of the span its W3C `traceparent` header names. Without the `otel` feature,
/// or without a valid header, requests pass through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptTraceContextLayer;

impl<S> Layer<S> for AcceptTraceContextLayer {
    type Service = AcceptTraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AcceptTraceContext { inner }
    }
}

/// The service of [`AcceptTraceContextLayer`].
#[derive(Debug, Clone)]
pub struct AcceptTraceContext<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for AcceptTraceContext<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    #[cfg(feature = "otel")]
    type Future = opentelemetry::context::WithContext<S::Future>;
    #[cfg(not(feature = "otel"))]
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[cfg(feature = "otel")]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        use opentelemetry::context::FutureExt as _;
        // The caller's span is the current context while the request is called and
        // polled: services below may open their spans in either (axum's routes call
        // theirs on the first poll).
        let parent =
            otel::remote_parent(request.headers()).unwrap_or_else(opentelemetry::Context::current);
        let future = {
            let _attached = parent.clone().attach();
            self.inner.call(request)
        };
        future.with_context(parent)
    }

    #[cfg(not(feature = "otel"))]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.inner.call(request)
    }
}

/// Writes the W3C trace context of `span` (`traceparent`, and `tracestate` when it has
/// one) into `headers`, for a call that continues the trace. When `span` is not exported
/// (no OTLP export, or `RUST_LOG` filters it out), the current OpenTelemetry context is
/// written instead: the caller's, under [`AcceptTraceContextLayer`], which then reaches
/// the provider unchanged. Writes nothing without the `otel` feature, or outside a trace.
#[cfg_attr(not(feature = "otel"), allow(unused_variables))]
pub fn inject_trace_context(span: &tracing::Span, headers: &mut HeaderMap) {
    #[cfg(feature = "otel")]
    otel::inject(span, headers);
}

/// The OpenTelemetry side: the OTLP pipeline and W3C trace-context propagation.
#[cfg(feature = "otel")]
pub mod otel {
    use http::{HeaderMap, Uri};
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_http::{HeaderExtractor, HeaderInjector};
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::runtime;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
    use tower::BoxError;
    use tracing::Subscriber;
    use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
    use tracing_subscriber::registry::LookupSpan;

    /// The `service.name` of the exported spans.
    pub const SERVICE_NAME: &str = "health-ai-gateway";

    /// The OTLP path of traces, added to an endpoint given without a path.
    const TRACES_PATH: &str = "/v1/traces";

    /// A tracer provider that exports batches of spans over OTLP/HTTP (protobuf) to
    /// `endpoint`. The batches are sent from a task on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// `endpoint` is not an `http://` or `https://` URL, or the exporter cannot be built.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, BoxError> {
        let endpoint = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()?;
        // The SDK's default batch processor exports from a thread of its own, where
        // hyper (a Tokio client) cannot run: this one exports from a Tokio task.
        let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
            .build())
    }

    /// `endpoint` with the traces path when it has none.
    fn traces_url(endpoint: &str) -> Result<String, BoxError> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("`{endpoint}` is not a valid OTLP endpoint: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(format!("`{endpoint}` must be an http:// URL with a host").into());
        }
        Ok(if matches!(uri.path(), "" | "/") {
            format!("{}{TRACES_PATH}", endpoint.trim_end_matches('/'))
        } else {
            endpoint.to_owned()
        })
    }

    /// The layer that turns `tracing` spans into OpenTelemetry spans of `provider`.
    pub fn layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME))
    }

    /// The remote span that `traceparent` (and `tracestate`) in `headers` name, if valid.
    #[must_use]
    pub fn remote_parent(headers: &HeaderMap) -> Option<opentelemetry::Context> {
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        context.span().span_context().is_valid().then_some(context)
    }

    /// See [`inject_trace_context`](super::inject_trace_context).
    pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
        let mut context = span.context();
        if !context.span().span_context().is_valid() {
            context = opentelemetry::Context::current();
        }
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::traces_url;

        #[test]
        fn the_traces_path_is_added_to_a_bare_endpoint_only() {
            assert_eq!(
                traces_url("http://localhost:4318").unwrap(),
                "http://localhost:4318/v1/traces"
            );
            assert_eq!(
                traces_url("http://localhost:4318/").unwrap(),
                "http://localhost:4318/v1/traces"
            );
            assert_eq!(
                traces_url("http://collector/custom/traces").unwrap(),
                "http://collector/custom/traces"
            );
            assert!(traces_url("localhost:4318").is_err());
            assert!(traces_url("ftp://collector").is_err());
        }
    }
}
