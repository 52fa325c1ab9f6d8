//! Installing the Prometheus recorder with every metric of the suite described.

use tower_red_metrics::{InstallError, PrometheusConfig, PrometheusMetrics};

/// Installs the global Prometheus recorder (once; later calls return the same handle)
/// with a `# HELP` line for every metric the suite emits, and returns the handle that
/// renders the text.
///
/// Call it at startup, **before** building the stack: layers resolve their metric handles
/// when they are built, and handles resolved before a recorder exists record nothing.
///
/// ```standalone_crate
/// use axum::Router;
/// use tower_health_ai::{HealthAiStack, install_prometheus};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // First the recorder, then the layers.
/// let prometheus = install_prometheus()?;
/// let stack = HealthAiStack::builder().prometheus(prometheus.clone()).build();
/// // `GET /metrics` renders the text, beside `/api/health` and `/api/metrics`.
/// let operator: Router = stack.handle().router();
/// # let _ = operator;
///
/// // Installing again gives a handle on the same recorder.
/// let again = install_prometheus()?;
/// assert!(again.render().contains("# HELP circuit_state"));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`InstallError::AlreadyInstalled`] when another recorder is already the global one.
pub fn install_prometheus() -> Result<PrometheusMetrics, InstallError> {
    use tower_breaker::metrics::{CIRCUIT_CALLS_TOTAL, CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL};
    use tower_lru_cache::{CACHE_ENTRIES, CACHE_REQUESTS_TOTAL};
    use tower_priority_queue::metrics::{
        QUEUE_COOLDOWN_SECONDS, QUEUE_COOLDOWNS_TOTAL, QUEUE_DEPTH, QUEUE_IN_FLIGHT, QUEUE_LIMIT,
        QUEUE_SHED_TOTAL, QUEUE_WAIT_SECONDS, RETRY_ATTEMPTS_TOTAL,
    };
    use tower_token_bucket::metrics::RATELIMIT_DECISIONS_TOTAL;

    PrometheusConfig::new()
        .describe_counter(
            RATELIMIT_DECISIONS_TOTAL,
            "Rate-limit decisions by limiter: allowed, rejected, waited.",
        )
        .describe_counter(
            CACHE_REQUESTS_TOTAL,
            "Cache lookups by result: hit, miss, stale, coalesced.",
        )
        .describe_gauge(CACHE_ENTRIES, "Entries held by the cache.")
        .describe_gauge(
            QUEUE_DEPTH,
            "Requests waiting in the priority queue, by priority.",
        )
        .describe_gauge(
            QUEUE_IN_FLIGHT,
            "Requests holding a queue slot (in flight).",
        )
        .describe_histogram(
            QUEUE_WAIT_SECONDS,
            "Time requests waited in the queue for a slot, by priority.",
        )
        .describe_counter(
            QUEUE_SHED_TOTAL,
            "Requests shed by the queue, by priority and reason.",
        )
        .describe_counter(
            RETRY_ATTEMPTS_TOTAL,
            "Attempts made by the retry layer, by outcome.",
        )
        .describe_gauge(
            CIRCUIT_STATE,
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        )
        .describe_counter(
            CIRCUIT_TRANSITIONS_TOTAL,
            "Circuit breaker state transitions, by from and to.",
        )
        .describe_counter(
            CIRCUIT_CALLS_TOTAL,
            "Calls through the circuit breaker, by outcome.",
        )
        .describe_gauge(
            QUEUE_LIMIT,
            "The queue's in-flight limit, fixed or adaptive.",
        )
        .describe_counter(
            QUEUE_COOLDOWNS_TOTAL,
            "Cool-downs started by the upstream's Retry-After.",
        )
        .describe_gauge(
            QUEUE_COOLDOWN_SECONDS,
            "The length of the cool-down in progress, 0 when none.",
        )
        .describe_counter(
            crate::degraded::DEGRADED_TOTAL,
            "Answers given by the fallback, marked degraded, by reason.",
        )
        .install()
}
