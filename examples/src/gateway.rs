//! The demo gateway: the seed's API served behind the `HealthAiStack` preset.
//!
//! - `POST /api/health-records/{id}/analyze`: an AI analysis of a health record, behind
//!   the stack. The user is the `x-user-id` header, a stand-in for real authentication
//!   (put your auth middleware's user id there instead); without it, the client IP.
//!   The priority is the `x-priority` header, trusted as sent (`urgent` included) so
//!   that the README's examples show the queue at work; a public deployment must not do
//!   that (see [`stack`]). The body, if any, is JSON context (at most 1 MiB).
//! - `GET /api/health`, `GET /api/metrics` (JSON) and `GET /metrics` (Prometheus text),
//!   outside the stack.
//! - `GET /dashboard`: a live page of the metrics, refreshed every second.
//! - `GET /api/simulator`: the embedded simulated provider's counts (calls received,
//!   billed, refused with 429, failed, in flight, capacity), when it runs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::net::TcpListener;
use tower::{BoxError, Service, ServiceBuilder};
use tower_health_ai::priority_queue::Limit;
use tower_health_ai::red_metrics::PrometheusMetrics;
use tower_health_ai::token_bucket::Quota;
use tower_health_ai::{
    BufferBodyLayer, DEFAULT_ACCEPTED_AFTER, DEFAULT_ADAPTIVE_LIMIT, HealthAiHandle, HealthAiStack,
    PriorityHeader, RedisConfig, RequestRejected, refusal_response,
};

use crate::analysis::{
    AnalyzeAnswer, AnalyzeInput, MAX_CONTEXT_BYTES, Source, check_record_id, local_analysis,
    parse_context,
};
use crate::cli::GatewayArgs;
use crate::simulator::Simulator;
use crate::upstream::{InProcessUpstream, UpstreamClient, json_bytes};

/// The analyze route's template.
pub const ANALYZE_ROUTE: &str = "/api/health-records/{id}/analyze";

/// The header that names the user (a stand-in for real authentication).
pub const USER_HEADER: &str = "x-user-id";

/// The longest accepted user id.
const MAX_USER_ID_LEN: usize = 128;

/// A built gateway: its router, the operator handle, and the simulator if one runs.
#[derive(Debug)]
pub struct Gateway {
    /// The routes, ready for `axum::serve` (with connect info, for the client IP).
    pub router: Router,
    /// The stack's operator handle (absent with `--no-stack`).
    pub handle: Option<HealthAiHandle>,
    /// The simulated provider, when one runs.
    pub simulator: Option<Arc<Simulator>>,
}

/// Builds the preset from the command line's settings. Install the Prometheus recorder
/// first (see [`run`]) to have `/metrics`.
///
/// The demo trusts the client's `x-priority` header ([`PriorityHeader::Trusted`]), so
/// that `curl -H 'x-priority: urgent'` jumps the queue as the README shows. A public
/// deployment must not: any client could then put all its requests ahead of everyone
/// else's and displace their waiting requests. Keep the preset's default
/// ([`PriorityHeader::LowerOnly`]) and set a [`Priority`](tower_health_ai::priority_queue::Priority)
/// extension from what authentication knows about the caller (its plan) instead.
#[must_use]
pub fn stack(args: &GatewayArgs, prometheus: Option<PrometheusMetrics>) -> HealthAiStack {
    let mut builder = HealthAiStack::builder().clock(args.clock);
    if let Some(prometheus) = prometheus {
        builder = builder.prometheus(prometheus);
    }
    builder = builder
        .per_user_quota(
            Quota::new(
                args.scaled_rate(args.per_user_rps),
                std::time::Duration::from_secs(1),
            )
            .with_burst(args.per_user_burst.unwrap_or(args.per_user_rps).max(1)),
        )
        // Its burst is a number of calls, not a rate: as many at once as in real time
        // (`Quota::new` would take the scaled count as its burst).
        .global_quota(
            Quota::new(
                args.scaled_rate(args.global_rps),
                std::time::Duration::from_secs(1),
            )
            .with_burst(args.global_rps.max(1)),
        )
        .global_max_wait(args.scaled_secs(30))
        .start_calls_in_time(!args.start_calls_late)
        .cache_ttl(args.scaled_secs(args.cache_ttl_secs))
        // The preset's stale-if-error grace (1 h), on this time scale.
        .cache_stale_grace(args.scaled_secs(3600))
        .limit(in_flight_limit(args))
        .queue_capacity(args.queue_capacity)
        .max_queue_wait(args.scaled_secs(300))
        // The queue's aging (10 s a level), on this time scale: unscaled, a compressed
        // run would serve by strict priority, as no request waits that long there.
        .queue_aging(args.scaled_secs(10))
        .retry_attempts(args.retry_attempts)
        .retry_backoff(args.scaled_secs(1), args.scaled_secs(30))
        // The preset's default budget (10 s, 1 retry a second, 20 %), on this time scale:
        // its reserve is a rate, so that the load test's seconds leave retries the room
        // a real hour does. (The window cannot go under 1 s.)
        .retry_budget(args.scaled_secs(10), args.scaled_rate(1), 0.2)
        .request_deadline(args.scaled_secs(args.request_deadline_secs))
        .breaker_open_for(args.scaled_secs(args.breaker_open_secs))
        .call_timeout(args.scaled_secs(args.call_timeout_secs))
        .cost_per_call_usd(args.cost_per_call_usd)
        .max_body_bytes(MAX_CONTEXT_BYTES)
        .request_check(check_analyze_request)
        .fallback(fallback_answer)
        // Demo only: a public deployment must not trust the client's priority (see above).
        .priority_header(PriorityHeader::Trusted);
    if let Some(entries) = args.cache_capacity {
        builder = builder.cache_capacity(entries);
    }
    if let Some(failures) = args.breaker_failures {
        builder = builder.breaker_failures(failures);
    }
    if let Some(redis) = redis_config(args) {
        builder = builder.redis(redis);
    }
    builder.build()
}

/// What `--redis` shares, and how: the prefix, the instance count, the fill lock and
/// the timeout on the gateway's time scale. `None` without `--redis` (or, as logged,
/// for a URL that is not one; the flag's parser refuses those first).
fn redis_config(args: &GatewayArgs) -> Option<RedisConfig> {
    let url = args.redis.as_deref()?;
    let config = match RedisConfig::from_url(url) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "--redis is not a Redis URL; nothing is shared");
            return None;
        }
    };
    tracing::info!(
        prefix = %args.redis_prefix,
        instances = args.instances,
        "sharing limits and cached answers through redis"
    );
    let mut config = config
        .prefix(args.redis_prefix.clone())
        .instances(args.instances);
    if args.redis_fill_lock_secs > 0 {
        config = config.fill_lock(args.scaled_secs(args.redis_fill_lock_secs));
    }
    Some(config)
}

/// The in-flight limit: fixed with `--max-in-flight`, else the preset's adaptive limit
/// from 2 up to `--max-in-flight-ceiling`, its cool-downs capped at 60 s and a call
/// counted as accepted after 2 s, both on the gateway's time scale.
fn in_flight_limit(args: &GatewayArgs) -> Limit {
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    match args.max_in_flight {
        Some(fixed) => Limit::fixed(to_usize(fixed)),
        None => Limit::Adaptive(
            DEFAULT_ADAPTIVE_LIMIT
                .max(to_usize(args.max_in_flight_ceiling))
                .max_cooldown(args.scaled_secs(60))
                .accepted_after(args.scaled(DEFAULT_ACCEPTED_AFTER)),
        ),
    }
}

/// Builds the gateway's routes around `upstream`, the service that calls the provider.
pub fn build<U>(
    args: &GatewayArgs,
    upstream: U,
    simulator: Option<Arc<Simulator>>,
    prometheus: Option<PrometheusMetrics>,
) -> Gateway
where
    U: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    U::Future: Send + 'static,
{
    let mut router = Router::new();
    let handle = if args.no_stack {
        router = router.route_service(ANALYZE_ROUTE, direct(upstream));
        None
    } else {
        let stack = stack(args, prometheus);
        let handle = stack.handle();
        router = router
            .route_service(ANALYZE_ROUTE, tower::Layer::layer(&stack, upstream))
            .merge(handle.router());
        Some(handle)
    };
    router = router.layer(crate::telemetry::AcceptTraceContextLayer);
    router = router.route(
        crate::dashboard::DASHBOARD_ROUTE,
        get(crate::dashboard::page),
    );
    if let Some(simulator) = simulator.clone() {
        router = router.route(
            "/api/simulator",
            get(move || {
                let simulator = Arc::clone(&simulator);
                async move { axum::Json(simulator.snapshot()) }
            }),
        );
    }
    Gateway {
        router,
        handle,
        simulator,
    }
}

/// Checks an analyze request once its body is buffered, and puts its [`AnalyzeInput`]
/// in the extensions for the layers below.
///
/// # Errors
///
/// A 400 refusal for a malformed record id, user id or JSON body.
pub fn check_analyze_request(
    parts: &mut http::request::Parts,
    body: &Bytes,
) -> Result<(), RequestRejected> {
    let record_id = record_id_of(parts.uri.path())
        .ok_or_else(|| RequestRejected::bad_request("not an analyze route"))?;
    check_record_id(record_id).map_err(RequestRejected::bad_request)?;
    let record_id = record_id.to_owned();
    let user_id = user_of(parts)?;
    let context = parse_context(body).map_err(RequestRejected::bad_request)?;
    parts.extensions.insert(AnalyzeInput {
        record_id,
        user_id,
        context,
    });
    Ok(())
}

/// The record id in an analyze path: `/api/health-records/{id}/analyze`.
fn record_id_of(path: &str) -> Option<&str> {
    path.strip_prefix("/api/health-records/")?
        .strip_suffix("/analyze")
}

/// The user: the `x-user-id` header, else the client IP.
fn user_of(parts: &http::request::Parts) -> Result<String, RequestRejected> {
    if let Some(value) = parts.headers.get(USER_HEADER) {
        let user = value
            .to_str()
            .ok()
            .filter(|u| !u.is_empty() && u.len() <= MAX_USER_ID_LEN)
            .ok_or_else(|| {
                RequestRejected::bad_request(format!(
                    "{USER_HEADER} must be 1 to {MAX_USER_ID_LEN} visible ASCII characters"
                ))
            })?;
        return Ok(user.to_owned());
    }
    Ok(parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "anonymous".to_owned(),
            |ConnectInfo(addr)| addr.ip().to_string(),
        ))
}

/// The local analysis, served when the provider fails for good or the circuit is open.
fn fallback_answer(request: &http::request::Parts, error: &BoxError) -> Option<Response<Bytes>> {
    let input = request.extensions.get::<AnalyzeInput>()?;
    tracing::info!(record = %input.record_id, %error, "answering from the local analysis");
    json_bytes(&AnalyzeAnswer {
        record_id: input.record_id.clone(),
        source: Source::Fallback,
        analysis: local_analysis(input),
    })
    .ok()
}

/// The analyze route without the stack: the same body limit and request check (the
/// preset's own [`BufferBodyLayer`]), then a direct call; a failed call answers 502.
fn direct<U>(
    upstream: U,
) -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ Sync
+ 'static
where
    U: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    U::Future: Send + 'static,
{
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            refusal_response::<Body>(&error, false)
        }))
        .layer(BufferBodyLayer::new(MAX_CONTEXT_BYTES).check(Arc::new(check_analyze_request)))
        .service(upstream)
}

/// Starts the simulated provider on `--sim-listen` (default: an ephemeral loopback
/// port), serving until the process ends; returns it and its base URL.
///
/// # Errors
///
/// Binding the port.
pub async fn start_simulator(args: &GatewayArgs) -> Result<(Arc<Simulator>, String), BoxError> {
    let simulator = Simulator::new(args.simulator_config());
    let listener = TcpListener::bind(
        args.sim_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = simulator.router();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the simulated provider stopped");
        }
    });
    tracing::info!(%url, "simulated AI provider started");
    Ok((simulator, url))
}

/// Builds the gateway the command line describes: with a real HTTP client to
/// `--upstream`, or to a simulated provider (or, with `--sim-chaos`, a chaos provider)
/// started on loopback.
///
/// # Errors
///
/// A bad `--upstream` URL, or binding the simulator's port.
pub async fn from_args(
    args: &GatewayArgs,
    prometheus: Option<PrometheusMetrics>,
) -> Result<Gateway, BoxError> {
    Ok(match &args.upstream {
        Some(url) => build(args, UpstreamClient::new(url)?, None, prometheus),
        None if args.sim_chaos => {
            let (_chaos, url) =
                crate::chaos::start(crate::chaos::ChaosConfig::from_args(args)).await?;
            build(args, UpstreamClient::new(&url)?, None, prometheus)
        }
        None => {
            let (simulator, url) = start_simulator(args).await?;
            build(
                args,
                UpstreamClient::new(&url)?,
                Some(simulator),
                prometheus,
            )
        }
    })
}

/// Serves `router` on `listener` (with the client address as `ConnectInfo`) until
/// `shutdown` resolves, then lets in-flight requests finish.
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Runs the gateway until Ctrl-C or SIGTERM, then lets in-flight requests finish.
///
/// Prints `listening on http://ADDR` as its first line on stdout.
///
/// # Errors
///
/// Binding the listener, installing the metrics recorder, or a bad `--upstream` URL.
pub async fn run(args: GatewayArgs) -> Result<(), BoxError> {
    let listener = TcpListener::bind(args.listen).await?;
    // Before any layer is built: layers resolve their metric handles when built.
    let prometheus = tower_health_ai::install_prometheus()?;
    let gateway = from_args(&args, Some(prometheus)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, gateway.router, shutdown_signal()).await?;
    tracing::info!("shut down: every in-flight request was answered");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// The in-process upstream over `simulator`, for tests on paused time.
#[must_use]
pub fn in_process(simulator: &Arc<Simulator>) -> InProcessUpstream {
    InProcessUpstream::new(Arc::clone(simulator))
}
