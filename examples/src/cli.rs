//! The demo gateway's command-line flags. Every flag is optional; the defaults are the
//! seed's production settings.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::simulator::{DEFAULT_CAPACITY, DEFAULT_RETRY_AFTER, LatencyRange, SimulatorConfig};

/// Serve the demo gateway: an AI-backed analyze endpoint behind the `HealthAiStack`.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about)]
pub struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Base URL of the AI provider (plain http), called as `POST {upstream}/v1/analyze`.
    /// Without it, a simulated provider is started in-process.
    #[arg(long)]
    pub upstream: Option<String>,

    /// Share the per-user limit, the global pace and the cached answers with every other
    /// gateway on this Redis (`redis://host:port`). Without it, each gateway keeps its
    /// own. Start one with `redis-server --port 6379 --save '' --daemonize yes`.
    #[arg(long, value_parser = redis_url)]
    pub redis: Option<String>,

    /// The start of every key this gateway writes in Redis: gateways that share state
    /// use the same prefix.
    #[arg(long, default_value = tower_health_ai::DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,

    /// With `--redis`, how long a gateway that misses the cache waits for another
    /// gateway already calling the provider for the same answer, in seconds (a Redis
    /// lock; 0: no waiting, each gateway calls).
    #[arg(long, default_value_t = 90)]
    pub redis_fill_lock_secs: u64,

    /// How many gateways share the Redis: while it is unreachable, each limits users
    /// to its share of the quota. `cargo xtask demo -- --instances N` starts N gateways
    /// on consecutive ports.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub instances: u32,

    /// Where the embedded simulated provider listens (default: a free loopback port),
    /// so that other gateways can share it with `--upstream http://ADDR`.
    #[arg(long)]
    pub sim_listen: Option<SocketAddr>,

    /// Per-user rate limit, in requests per second.
    #[arg(long, default_value_t = 5)]
    pub per_user_rps: u32,

    /// Per-user burst (defaults to the per-user rate).
    #[arg(long)]
    pub per_user_burst: Option<u32>,

    /// Global pace of calls to the provider, in requests per second.
    #[arg(long, default_value_t = 2)]
    pub global_rps: u32,

    /// Bounds the response cache by a number of entries (the seed's was 100) instead of
    /// the preset's default of 64 MiB of answers.
    #[arg(long)]
    pub cache_capacity: Option<u64>,

    /// Starts a provider call even when the request's deadline leaves it too little time
    /// to end (by default the preset answers such a request from the fallback at once).
    #[arg(long)]
    pub start_calls_late: bool,

    /// Response cache time to live, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub cache_ttl_secs: u64,

    /// A fixed number of calls to the provider in flight at once (the seed's was 2).
    /// Without it, the limit is adaptive: it starts at 2 and finds the provider's
    /// capacity from its 429s and timeouts, up to `--max-in-flight-ceiling`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: Option<u64>,

    /// The most calls in flight the adaptive limit may reach.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight_ceiling: u64,

    /// Requests that may wait for a slot, over all priorities.
    #[arg(long, default_value_t = 100)]
    pub queue_capacity: usize,

    /// Calls per request, the first included (1 disables retries).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub retry_attempts: u32,

    /// Also open the circuit after this many consecutive provider failures (by default it
    /// opens when 65% of the last 50 calls failed, at least 20 counted).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: Option<u32>,

    /// Each request's deadline from arrival, in seconds: queueing, pacing, every attempt
    /// and backoff included; past it, the fallback answers.
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_deadline_secs: u64,

    /// How long the circuit stays open before a probe, in seconds.
    #[arg(long, default_value_t = 60)]
    pub breaker_open_secs: u64,

    /// Timeout of one provider call, in seconds.
    #[arg(long, default_value_t = 120)]
    pub call_timeout_secs: u64,

    /// What one provider call costs, in US dollars.
    #[arg(long, default_value_t = 0.01)]
    pub cost_per_call_usd: f64,

    /// Simulated provider latency in milliseconds: `MS` or `MIN-MAX`. The seed's
    /// provider takes 45000-90000; the default is shorter so that the demo answers
    /// while you watch.
    #[arg(long, default_value = "2000-4000")]
    pub sim_latency_ms: LatencyRange,

    /// Share of simulated provider calls that fail, in [0, 1].
    #[arg(long, default_value_t = 0.3, value_parser = probability)]
    pub sim_failure_rate: f64,

    /// Seed of the simulated provider's latencies and failures.
    #[arg(long, default_value_t = 42)]
    pub sim_seed: u64,

    /// Calls the simulated provider serves at once (0: unlimited). Above it, it answers
    /// 429 at once with `Retry-After: 2` (scaled; exact in `retry-after-ms`), and does not
    /// bill the call.
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    pub sim_capacity: usize,

    /// Replace the simulated provider with a chaos provider (latency spikes, hangs,
    /// connections reset mid-body, 429 bursts, 500s, outages, slow bodies) for soak
    /// tests; see [`chaos`](crate::chaos). Ignored with `--upstream`.
    #[arg(long)]
    pub sim_chaos: bool,

    /// Multiplies every duration (provider latency, timeouts, open time, TTL, waits) and
    /// divides every rate by this factor: `0.01` runs the seed's minutes in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = positive_fraction)]
    pub time_scale: f64,

    /// Answer the analyze route with a direct call to the provider, without the stack:
    /// the "before" of the load test. A failed call gives 502.
    #[arg(long)]
    pub no_stack: bool,

    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,

    /// The clock the stack's limiters and RED layer read: the fast monotonic clock (the
    /// default), or tokio's for tests that pause tokio's time. Not a flag.
    #[arg(skip)]
    pub clock: tower_health_ai::Clock,
}

impl GatewayArgs {
    /// `duration` on this gateway's time scale.
    #[must_use]
    pub fn scaled(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.time_scale)
    }

    /// `seconds` on this gateway's time scale.
    #[must_use]
    pub fn scaled_secs(&self, seconds: u64) -> Duration {
        self.scaled(Duration::from_secs(seconds))
    }

    /// The simulated provider's settings, on this gateway's time scale.
    #[must_use]
    pub fn simulator_config(&self) -> SimulatorConfig {
        SimulatorConfig {
            latency: LatencyRange {
                min: self.scaled(self.sim_latency_ms.min),
                max: self.scaled(self.sim_latency_ms.max),
            },
            failure_rate: self.sim_failure_rate,
            seed: self.sim_seed,
            capacity: self.sim_capacity,
            retry_after: self.scaled(DEFAULT_RETRY_AFTER),
        }
    }

    /// A rate per second on this gateway's time scale, rounded, at least 1.
    #[must_use]
    pub fn scaled_rate(&self, per_second: u32) -> u32 {
        let scaled = (f64::from(per_second) / self.time_scale).round();
        if scaled >= f64::from(u32::MAX) {
            u32::MAX
        } else if scaled < 1.0 {
            1
        } else {
            // In range by the checks above.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rate = scaled as u32;
            rate
        }
    }
}

/// A `redis://` (or `rediss://`, `redis+unix://`) URL, checked without connecting.
fn redis_url(s: &str) -> Result<String, String> {
    tower_health_ai::token_bucket::redis::Client::open(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("`{s}` is not a Redis URL: {e}"))
}

fn positive_fraction(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(format!("`{s}` must be in (0, 1]"))
    }
}

fn probability(s: &str) -> Result<f64, String> {
    let value: f64 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{s}` must be in [0, 1]"))
    }
}
