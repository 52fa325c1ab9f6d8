//! `cargo xtask loadtest`: one realistic workload, three times, against the demo gateway
//! over real HTTP, all in front of the same simulated provider (with a capacity: above it,
//! 429 at once): before (`--no-stack`, a direct call to the provider), the seed's fixed
//! limits (`HealthAiStack` with `--max-in-flight 2`), and the default preset (the stack
//! with the gateway's defaults).
//!
//! The gateway runs as a child process (`cargo run`), on a scaled clock
//! (`--time-scale`); nothing of the library crates is linked here. While a run lasts, its
//! queue, in-flight limit, circuit and the provider's load are sampled over HTTP. The
//! workload, the statistics and the criteria are pure functions (see `workload`, `stats`,
//! `timeline` and `criteria`), tested on their own; this module only wires them to the
//! processes, the network and the files.

mod chart;
mod client;
mod criteria;
mod gateway;
mod ideal;
mod instances;
mod stats;
mod timeline;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use self::gateway::Gateway;
use self::stats::{Observation, Outcome, Summary};
use self::timeline::{Observed, Sample};
use self::workload::{Arrival, PRIORITY_MIX, WorkloadConfig};

/// The flags of `cargo xtask loadtest`. Every time and rate is unscaled: the real
/// provider's.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadtestArgs {
    /// Multiplies every duration of the gateway and its provider, and divides every
    /// rate: 0.01 runs a 45-90 s provider call in 0.45-0.9 s. Reported figures are
    /// divided back.
    #[arg(long, default_value_t = 0.01)]
    time_scale: f64,

    /// Seed of the workload and of the simulated provider.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Several seeds, one table each: e.g. `--seeds 42,7,1234` (instead of `--seed`).
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    seeds: Vec<u64>,

    /// Distinct users.
    #[arg(long, default_value_t = 20)]
    users: u32,

    /// Records per user.
    #[arg(long, default_value_t = 10)]
    records_per_user: u32,

    /// Zipf exponent of a user's record popularity (0 is uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf_exponent: f64,

    /// Mean arrivals per minute (Poisson, open loop).
    #[arg(long, default_value_t = 12.0)]
    rate_per_min: f64,

    /// How long requests keep arriving, in minutes.
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,

    /// Simulated provider latency in milliseconds, `MIN-MAX`.
    #[arg(long, default_value = "45000-90000")]
    sim_latency_ms: String,

    /// Share of simulated provider calls that fail.
    #[arg(long, default_value_t = 0.3)]
    sim_failure_rate: f64,

    /// Calls the simulated provider serves at once (0: unlimited); above it, it answers
    /// 429 with `Retry-After` at once and does not bill the call.
    #[arg(long, default_value_t = 8)]
    sim_capacity: usize,

    /// How often the gateway's queue, in-flight limit and circuit are sampled, in
    /// (unscaled) seconds.
    #[arg(long, default_value_t = 10.0)]
    sample_every_secs: f64,

    /// What one provider call costs, in US dollars.
    #[arg(long, default_value_t = 0.01)]
    cost_per_call_usd: f64,

    /// How long the client waits for one answer, in seconds; a request with no answer
    /// by then is counted in its own row.
    #[arg(long, default_value_t = 3600)]
    client_timeout_secs: u64,

    /// Runs only the default preset's column and prints its table and the seed's criteria
    /// (no before/after comparison, no charts): a quicker check while tuning a setting.
    #[arg(long)]
    preset_only: bool,

    /// Runs the default preset on one gateway, then on this many at once without Redis,
    /// then with `--redis`, the workload sent round robin, all in front of one provider;
    /// prints hit rate and provider calls side by side (instead of the three columns).
    #[arg(long, requires = "redis", conflicts_with = "preset_only", value_parser = clap::value_parser!(u32).range(2..=16))]
    instances: Option<u32>,

    /// The Redis the `--instances` gateways share (e.g. `redis://127.0.0.1:6379`); each
    /// run writes under a key prefix of its own.
    #[arg(long, requires = "instances")]
    redis: Option<String>,

    /// Prints, for each seed, only the floor an ideal gateway sets under the fallback
    /// share (see `ideal`), with the provider's and the preset's settings: no gateway is
    /// started, and it takes a second.
    #[arg(long, conflicts_with_all = ["preset_only", "instances"])]
    ideal_only: bool,

    /// Extra gateway flags for the default preset's column, after `--`: e.g.
    /// `-- --queue-capacity 50`.
    #[arg(last = true)]
    gateway_args: Vec<String>,
}

/// The three columns of the table, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    /// No stack: a direct call to the provider.
    Before,
    /// The stack with the seed's fixed in-flight limit of 2.
    Fixed,
    /// The stack with the gateway's defaults (and the flags after `--`).
    Preset,
}

impl Column {
    const ALL: [Self; 3] = [Self::Before, Self::Fixed, Self::Preset];

    const fn key(self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::Fixed => "fixed",
            Self::Preset => "preset",
        }
    }

    const fn heading(self) -> &'static str {
        match self {
            Self::Before => "Before (no stack)",
            Self::Fixed => "Seed's fixed limits (2 in flight)",
            Self::Preset => "Default preset",
        }
    }

    const fn color(self) -> &'static str {
        match self {
            Self::Before => "#c0392b",
            Self::Fixed => "#8e44ad",
            Self::Preset => "#1f6fb2",
        }
    }

    const fn stacked(self) -> bool {
        !matches!(self, Self::Before)
    }
}

impl LoadtestArgs {
    fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be a positive number, not {v}"))
            }
        };
        if !(self.time_scale > 0.0 && self.time_scale <= 1.0) {
            return Err(format!(
                "--time-scale must be in (0, 1], not {}",
                self.time_scale
            ));
        }
        positive("rate-per-min", self.rate_per_min)?;
        positive("minutes", self.minutes)?;
        if self.users == 0 || self.records_per_user == 0 {
            return Err("--users and --records-per-user must be at least 1".to_owned());
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return Err(format!(
                "--zipf-exponent must be 0 or more, not {}",
                self.zipf_exponent
            ));
        }
        if !(0.0..=1.0).contains(&self.sim_failure_rate) {
            return Err(format!(
                "--sim-failure-rate must be within [0, 1], not {}",
                self.sim_failure_rate
            ));
        }
        if !(self.cost_per_call_usd.is_finite() && self.cost_per_call_usd >= 0.0) {
            return Err(format!(
                "--cost-per-call-usd must be 0 or more, not {}",
                self.cost_per_call_usd
            ));
        }
        positive("sample-every-secs", self.sample_every_secs)?;
        if self.client_timeout_secs == 0 {
            return Err("--client-timeout-secs must be at least 1".to_owned());
        }
        Ok(())
    }

    /// The seeds to run, in order.
    fn seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.seed]
        } else {
            self.seeds.clone()
        }
    }

    fn workload(&self, seed: u64) -> WorkloadConfig {
        WorkloadConfig {
            seed,
            users: self.users,
            records_per_user: self.records_per_user,
            zipf_exponent: self.zipf_exponent,
            rate_per_min: self.rate_per_min,
            minutes: self.minutes,
        }
    }

    /// The gateway's flags for one column: the same provider and seed for all three;
    /// no stack for "before", `--max-in-flight 2` for the seed's fixed limits, and the
    /// defaults changed only by the flags after `--` for the preset.
    fn flags(&self, column: Column, seed: u64) -> Vec<String> {
        let mut flags = self.common_flags(seed);
        match column {
            Column::Before => flags.push("--no-stack".to_owned()),
            Column::Fixed => flags.extend(["--max-in-flight".to_owned(), "2".to_owned()]),
            Column::Preset => flags.extend(self.gateway_args.iter().cloned()),
        }
        flags
    }

    /// The gateway flags of every column.
    fn common_flags(&self, seed: u64) -> Vec<String> {
        [
            "--listen",
            "127.0.0.1:0",
            "--time-scale",
            &self.time_scale.to_string(),
            "--sim-latency-ms",
            &self.sim_latency_ms,
            "--sim-failure-rate",
            &self.sim_failure_rate.to_string(),
            "--sim-capacity",
            &self.sim_capacity.to_string(),
            "--sim-seed",
            &seed.to_string(),
            "--cost-per-call-usd",
            &self.cost_per_call_usd.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The provider's capacity, `None` when unlimited.
    fn capacity(&self) -> Option<usize> {
        (self.sim_capacity != 0).then_some(self.sim_capacity)
    }

    /// The ideal gateway's model: this provider, and the deadline, attempts and TTL of
    /// the default preset's column (the gateway's defaults, or the flags after `--`).
    fn ideal_model(&self) -> Result<ideal::Model, String> {
        let (min, max) = self
            .sim_latency_ms
            .split_once('-')
            .unwrap_or((&self.sim_latency_ms, &self.sim_latency_ms));
        let ms = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|ms| ms.is_finite() && *ms >= 0.0)
                .ok_or_else(|| format!("--sim-latency-ms should be MS or MIN-MAX, not {v:?}"))
        };
        let flag = |name: &str, default: f64| {
            timeline::flag_value(&self.gateway_args, name)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(default)
        };
        Ok(ideal::Model {
            capacity: self.capacity(),
            latency_min: ms(min)? / 1000.0,
            latency_max: ms(max)? / 1000.0,
            failure_rate: self.sim_failure_rate,
            deadline: flag("--request-deadline-secs", criteria::DEADLINE_SECS),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            attempts: flag("--retry-attempts", 3.0).max(1.0) as u32,
            ttl: flag("--cache-ttl-secs", 3600.0),
        })
    }
}

/// Draws of the provider the ideal gateway's floor is averaged over.
const IDEAL_DRAWS: u64 = 200;

/// The ideal gateway's floor for one seed, as a line under the table.
fn ideal_line(
    args: &LoadtestArgs,
    seed: u64,
    arrivals: &[Arrival],
) -> Result<(String, ideal::Floor), String> {
    let model = args.ideal_model()?;
    let floor = ideal::fallback_share(&model, ideal::Gateway::Ideal, arrivals, seed, IDEAL_DRAWS);
    let line = format!(
        "An ideal gateway (see `xtask/src/loadtest/ideal.rs`: the limit at the provider's \
         capacity from the start, single-flight, first come first served, the preset's \
         {deadline:.0} s deadline and {attempts} attempts) would give {mean:.1}% fallbacks on \
         this workload: the mean of {draws} draws of the provider, {min:.1}-{max:.1}%.\n",
        deadline = model.deadline,
        attempts = model.attempts,
        mean = floor.mean * 100.0,
        draws = floor.draws,
        min = floor.min * 100.0,
        max = floor.max * 100.0,
    );
    // What the deadline alone costs: a failure that leaves too little of it for another
    // call, whatever the capacity.
    let line = match model.capacity {
        Some(_) => {
            let unlimited = ideal::Model {
                capacity: None,
                ..model
            };
            let floor = ideal::fallback_share(
                &unlimited,
                ideal::Gateway::Ideal,
                arrivals,
                seed,
                IDEAL_DRAWS,
            );
            format!(
                "{line}With a provider of unlimited capacity it would still give {mean:.1}% \
                 ({min:.1}-{max:.1}%): calls that fail with too little of the deadline left for \
                 another.\n",
                mean = floor.mean * 100.0,
                min = floor.min * 100.0,
                max = floor.max * 100.0,
            )
        }
        None => line,
    };
    Ok((line, floor))
}

/// The same model run as the preset runs (see [`ideal::Gateway::Preset`]), with the
/// in-flight limit the preset had in this run, as a line under the ideal one.
fn preset_model_line(
    args: &LoadtestArgs,
    seed: u64,
    arrivals: &[Arrival],
    samples: &[timeline::Sample],
) -> Result<(String, ideal::Floor), String> {
    let model = args.ideal_model()?;
    let limit: Vec<(f64, usize)> = samples
        .iter()
        .filter_map(|sample| Some((sample.at_secs, sample.limit?)))
        .collect();
    let floor = ideal::fallback_share(
        &model,
        ideal::Gateway::Preset { limit: &limit },
        arrivals,
        seed,
        IDEAL_DRAWS,
    );
    let line = format!(
        "The same model run as the preset runs (the in-flight limit it had in this run; a \
         call still running at its leader's deadline runs on, the other requests for its \
         key waiting for it until their own) gives {mean:.1}%: the mean of {draws} draws, \
         {min:.1}-{max:.1}%.\n",
        mean = floor.mean * 100.0,
        draws = floor.draws,
        min = floor.min * 100.0,
        max = floor.max * 100.0,
    );
    Ok((line, floor))
}

/// The workspace root: xtask's parent directory.
fn workspace_root() -> PathBuf {
    crate::workspace_root()
}

/// One run's results.
#[derive(Debug)]
struct Run {
    column: Column,
    flags: Vec<String>,
    observations: Vec<Observation>,
    summary: Summary,
    simulator: Value,
    metrics: Value,
    samples: Vec<Sample>,
    observed: Observed,
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "heading": self.column.heading(),
            "gatewayFlags": self.flags,
            "summary": self.summary,
            "observed": self.observed,
            "simulator": self.simulator,
            "metrics": self.metrics,
            "timeline": self.samples,
            "requests": self.observations,
        })
    }

    fn answered_latencies(&self) -> Vec<f64> {
        self.observations
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Real | Outcome::Fallback))
            .map(|o| o.latency_secs)
            .collect()
    }
}

/// Samples the gateway every `every` (real time) until `stop` is set; one last sample
/// after it is. Times are unscaled.
async fn sample_loop(
    client: client::HttpClient,
    base: String,
    column: Column,
    fixed_limit: usize,
    scale: f64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let start = tokio::time::Instant::now();
    let mut samples = Vec::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let metrics = if column.stacked() {
            client::get_json(&client, &base, "/api/metrics").await.ok()
        } else {
            None
        };
        let simulator = client::get_json(&client, &base, "/api/simulator")
            .await
            .ok();
        samples.push(timeline::sample(
            start.elapsed().as_secs_f64() / scale,
            metrics.as_ref(),
            simulator.as_ref(),
            column.stacked().then_some(fixed_limit),
        ));
        if stopping {
            return samples;
        }
        let until = tokio::time::Instant::now() + every;
        while tokio::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(every.min(Duration::from_millis(20))).await;
        }
    }
}

fn run_once(
    runtime: &tokio::runtime::Runtime,
    args: &LoadtestArgs,
    column: Column,
    seed: u64,
    arrivals: &[Arrival],
    out_dir: &Path,
) -> Result<Run, String> {
    let label = column.key();
    let flags = args.flags(column, seed);
    let log = out_dir.join(format!("gateway-{label}.log"));
    let gateway = Gateway::start(&workspace_root(), &flags, &log)?;
    let client = client::client();
    let timeout = Duration::from_secs_f64(args.client_timeout_secs as f64 * args.time_scale);
    let every = Duration::from_secs_f64(args.sample_every_secs * args.time_scale);
    let fixed_limit = timeline::configured_max_in_flight(&flags);
    let started = std::time::Instant::now();
    let (mut observations, samples, simulator, metrics, prometheus) = runtime.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(sample_loop(
            client.clone(),
            gateway.base_url.clone(),
            column,
            fixed_limit,
            args.time_scale,
            every,
            Arc::clone(&stop),
        ));
        let observations = client::drive(
            &client,
            &gateway.base_url,
            arrivals,
            args.time_scale,
            timeout,
            label,
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.await.unwrap_or_default();
        let simulator = client::get_json(&client, &gateway.base_url, "/api/simulator").await;
        let metrics = client::get_json(&client, &gateway.base_url, "/api/metrics").await;
        let prometheus = client::get_text(&client, &gateway.base_url, "/metrics").await;
        (observations, samples, simulator, metrics, prometheus)
    });
    eprintln!(
        "loadtest: the {label} run took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    gateway.stop()?;
    observations.sort_by_key(|o| o.index);
    let simulator = simulator?;
    let Some(calls) = simulator["calls"].as_u64() else {
        return Err(format!(
            "/api/simulator should answer {{\"calls\": n, \"billed\": n, ...}}, not {simulator}"
        ));
    };
    // Calls refused for want of capacity are not billed; an older gateway bills them all.
    let billed = simulator["billed"].as_u64().unwrap_or(calls);
    let overloaded = simulator["overloaded"].as_u64().unwrap_or(0);
    let metrics = metrics.unwrap_or_else(|e| {
        if column.stacked() {
            eprintln!("xtask: warning: no stack metrics: {e}");
        }
        Value::Null
    });
    let prometheus = prometheus.ok();
    let summary = stats::summarize(
        arrivals.len(),
        &observations,
        billed,
        overloaded,
        args.cost_per_call_usd,
    )
    .map_err(|e| format!("{label} run: nothing may be lost, yet {e}"))?;
    let observed = timeline::observe(
        &samples,
        column.stacked().then_some(&metrics),
        prometheus.as_deref().filter(|_| column.stacked()),
    );
    let mut details: BTreeMap<&str, usize> = BTreeMap::new();
    for detail in observations.iter().filter_map(|o| o.detail.as_deref()) {
        *details.entry(detail).or_default() += 1;
    }
    let distinct = details.len();
    for (detail, count) in details.into_iter().take(5) {
        eprintln!("xtask: {label}: {count} request(s): {detail}");
    }
    if distinct > 5 {
        eprintln!(
            "xtask: {label}: and {} other causes: see the requests in results.json",
            distinct - 5
        );
    }
    // The gateway's own count must match the client's: nothing lost on either side.
    if let Some(total) = metrics["requests"]["total"].as_u64()
        && usize::try_from(total).ok() != Some(arrivals.len())
    {
        eprintln!(
            "xtask: warning: {label}: the gateway's metrics count {total} requests, the client \
             sent {}",
            arrivals.len()
        );
    }
    Ok(Run {
        column,
        flags,
        observations,
        summary,
        simulator,
        metrics,
        samples,
        observed,
    })
}

/// What the table's figures mean, printed under it.
fn notes(args: &LoadtestArgs, seed: u64, arrivals: usize) -> String {
    let mix = PRIORITY_MIX
        .map(|share| format!("{:.0}", share * 100.0))
        .join("/");
    let capacity = match args.capacity() {
        Some(n) => format!(
            "at most {n} calls at once (above that: 429 with Retry-After: 2 s at once, not billed)"
        ),
        None => "no capacity limit".to_owned(),
    };
    format!(
        "Every figure is unscaled: measured with `--time-scale {scale}` and divided by it (so one \
         millisecond of local HTTP reads as {ms:.1} s).\n\
         Workload: {arrivals} requests over {minutes} min (Poisson arrivals, {rate}/min, open loop), \
         {users} users x {records} records each (Zipf exponent {zipf}), priorities \
         {mix}% urgent/high/normal/low, seed {seed}.\n\
         Provider: {latency} ms a call, {failure:.0}% failures, {capacity}, ${cost} a call; cost \
         is billed provider calls x cost / requests sent.\n\
         Columns: no stack; the stack with `--max-in-flight 2`; the stack with the gateway's \
         defaults{extra}.\n\
         Latency is over answered requests (real or fallback); refusals and failures are counted \
         in their own rows, and every request sent is in exactly one of Reliability, Fallback, \
         Refused, Failed, No answer and Other errors.\n",
        scale = args.time_scale,
        ms = 0.001 / args.time_scale,
        minutes = args.minutes,
        rate = args.rate_per_min,
        users = args.users,
        records = args.records_per_user,
        zipf = args.zipf_exponent,
        latency = args.sim_latency_ms,
        failure = args.sim_failure_rate * 100.0,
        cost = args.cost_per_call_usd,
        extra = if args.gateway_args.is_empty() {
            String::new()
        } else {
            format!(" and `{}`", args.gateway_args.join(" "))
        },
    )
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs the three columns on one seed, prints the table and the criteria, and writes
/// `{results.json,latency.svg,inflight.svg,table.md}` in `out_dir`.
fn run_seed(
    runtime: &tokio::runtime::Runtime,
    args: &LoadtestArgs,
    seed: u64,
    out_dir: &Path,
) -> Result<(), String> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let workload = args.workload(seed);
    let arrivals = workload::generate(&workload);
    eprintln!(
        "\nloadtest: seed {seed}: {} requests over {} min unscaled ({:.0} s at time scale {}), \
         three times",
        arrivals.len(),
        args.minutes,
        args.minutes * 60.0 * args.time_scale,
        args.time_scale
    );
    if let (Some(n), Some(redis)) = (args.instances, &args.redis) {
        return instances::run_seed(runtime, args, seed, n, redis, &arrivals, out_dir);
    }
    let (ideal, floor) = ideal_line(args, seed, &arrivals)?;
    if args.preset_only {
        let run = run_once(runtime, args, Column::Preset, seed, &arrivals, out_dir)?;
        let (model_line, model_floor) = preset_model_line(args, seed, &arrivals, &run.samples)?;
        let ideal = format!("{ideal}\n{model_line}");
        let table = stats::render_table(&[stats::Column {
            heading: run.column.heading(),
            short: run.column.key(),
            summary: &run.summary,
        }]);
        let seed_criteria = criteria::render(
            &format!("The seed's success criteria, default preset, seed {seed}:"),
            &criteria::seed_criteria(&run.summary, &run.observed),
        );
        println!("\n## Seed {seed}, default preset only\n\n{table}\n{ideal}\n{seed_criteria}");
        let mut results = run.to_json();
        results["idealFallbackShare"] = ideal::to_json(&floor);
        results["presetModelFallbackShare"] = ideal::to_json(&model_floor);
        let json_text = serde_json::to_string_pretty(&results)
            .map_err(|e| format!("cannot encode the results: {e}"))?;
        write(&out_dir.join("preset-only.json"), &json_text)?;
        return Ok(());
    }
    let runs = Column::ALL
        .into_iter()
        .map(|column| run_once(runtime, args, column, seed, &arrivals, out_dir))
        .collect::<Result<Vec<Run>, String>>()?;
    let [before, _, preset] = [&runs[0], &runs[1], &runs[2]];

    let columns: Vec<stats::Column<'_>> = runs
        .iter()
        .map(|run| stats::Column {
            heading: run.column.heading(),
            short: run.column.key(),
            summary: &run.summary,
        })
        .collect();
    let table = stats::render_table(&columns);
    let (model_line, model_floor) = preset_model_line(args, seed, &arrivals, &preset.samples)?;
    let notes = format!(
        "{}\n{ideal}\n{model_line}",
        notes(args, seed, arrivals.len())
    );
    let seed_criteria = criteria::render(
        &format!("The seed's success criteria, default preset, seed {seed}:"),
        &criteria::seed_criteria(&preset.summary, &preset.observed),
    );
    let goals = criteria::render(
        &format!("The overload goals, default preset against before, seed {seed}:"),
        &criteria::preset_goals(&preset.summary, &before.summary, args.cost_per_call_usd),
    );
    println!("\n## Seed {seed}\n\n{table}\n{notes}\n{seed_criteria}\n{goals}");

    let results = json!({
        "units": "seconds and US dollars, unscaled",
        "timeScale": args.time_scale,
        "provider": {
            "latencyMs": args.sim_latency_ms,
            "failureRate": args.sim_failure_rate,
            "capacity": args.capacity(),
            "costPerCallUsd": args.cost_per_call_usd,
        },
        "workload": workload,
        "idealFallbackShare": ideal::to_json(&floor),
        "presetModelFallbackShare": ideal::to_json(&model_floor),
        "priorityMix": { "urgent": PRIORITY_MIX[0], "high": PRIORITY_MIX[1], "normal": PRIORITY_MIX[2], "low": PRIORITY_MIX[3] },
        "arrivals": arrivals.iter().map(|a| json!({
            "atSecs": a.at_secs,
            "userId": a.user_id(),
            "recordId": a.record_id(),
            "priority": a.priority,
        })).collect::<Vec<_>>(),
        "runs": runs.iter().map(|run| (run.column.key().to_owned(), run.to_json())).collect::<serde_json::Map<_, _>>(),
    });
    let json_text = serde_json::to_string_pretty(&results)
        .map_err(|e| format!("cannot encode the results: {e}"))?;
    let latency = chart::cdf_svg(
        &format!("Latency of answered requests, seed {seed}"),
        &runs
            .iter()
            .map(|run| chart::Series {
                label: run.column.heading(),
                color: run.column.color(),
                latencies: run.answered_latencies(),
            })
            .collect::<Vec<_>>(),
    );
    let inflight = chart::timeline_svg(
        &format!("Calls in flight and the in-flight limit over time, seed {seed}"),
        &runs
            .iter()
            .map(|run| chart::Panel {
                title: run.column.heading(),
                color: run.column.color(),
                samples: &run.samples,
                capacity: args.capacity(),
            })
            .collect::<Vec<_>>(),
    );
    write(&out_dir.join("results.json"), &json_text)?;
    write(&out_dir.join("latency.svg"), &latency)?;
    write(&out_dir.join("inflight.svg"), &inflight)?;
    write(
        &out_dir.join("table.md"),
        &format!("{table}\n{notes}\n{seed_criteria}\n{goals}"),
    )?;
    eprintln!(
        "loadtest: results in {}/{{results.json,latency.svg,inflight.svg,table.md}}",
        out_dir.display()
    );
    Ok(())
}

/// Runs the loadtest: builds the gateway, then for each seed runs the workload in the
/// three columns, prints the table and the criteria and writes
/// `target/loadtest/seed-S/{results.json,latency.svg,inflight.svg,table.md}`.
pub(crate) fn run(args: &LoadtestArgs) -> Result<(), String> {
    args.validate()?;
    if args.ideal_only {
        for seed in args.seeds() {
            let arrivals = workload::generate(&args.workload(seed));
            let (line, _) = ideal_line(args, seed, &arrivals)?;
            println!("seed {seed}: {line}");
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let root = workspace_root();
    let out_root = root.join("target").join("loadtest");

    let mut build = vec!["build", "--quiet"];
    build.extend(gateway::PACKAGE);
    crate::cargo(&build, &[])?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let build_secs = started.elapsed().as_secs_f64();
    for seed in args.seeds() {
        run_seed(&runtime, args, seed, &out_root.join(format!("seed-{seed}")))?;
    }
    eprintln!(
        "loadtest: done in {:.0} s ({:.0} s building, {:.0} s running)",
        started.elapsed().as_secs_f64(),
        build_secs,
        started.elapsed().as_secs_f64() - build_secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    fn parse(argv: &[&str]) -> Result<LoadtestArgs, String> {
        Cli::try_parse_from(std::iter::once("loadtest").chain(argv.iter().copied()))
            .map(|cli| cli.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_columns_share_the_provider_and_differ_only_by_the_stack() {
        let args = parse(&["--", "--queue-capacity", "50"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(args.validate().is_ok());
        let expected = "--listen 127.0.0.1:0 --time-scale 0.01 --sim-latency-ms 45000-90000 \
                        --sim-failure-rate 0.3 --sim-capacity 8 --sim-seed 42 \
                        --cost-per-call-usd 0.01";
        assert_eq!(
            args.flags(Column::Before, 42).join(" "),
            format!("{expected} --no-stack")
        );
        assert_eq!(
            args.flags(Column::Fixed, 42).join(" "),
            format!("{expected} --max-in-flight 2")
        );
        assert_eq!(
            args.flags(Column::Preset, 42).join(" "),
            format!("{expected} --queue-capacity 50")
        );
        assert_eq!(
            timeline::configured_max_in_flight(&args.flags(Column::Fixed, 42)),
            2
        );
        assert!(
            args.flags(Column::Preset, 7)
                .join(" ")
                .contains("--sim-seed 7")
        );
    }

    #[test]
    fn the_ideal_gateway_replays_the_preset_columns_settings() {
        let args = parse(&["--sim-capacity", "12"]).unwrap_or_else(|e| panic!("{e}"));
        let model = args.ideal_model().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            model,
            ideal::Model {
                capacity: Some(12),
                ..ideal::Model::seed()
            }
        );
        let args = parse(&[
            "--sim-capacity",
            "0",
            "--sim-latency-ms",
            "2000",
            "--",
            "--request-deadline-secs",
            "100",
            "--retry-attempts=1",
            "--request-deadline-secs=300",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let model = args.ideal_model().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (model.capacity, model.latency_min, model.latency_max),
            (None, 2.0, 2.0)
        );
        assert_eq!((model.deadline, model.attempts), (300.0, 1));
        let args = parse(&["--sim-latency-ms", "fast"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(args.ideal_model().is_err());
    }

    #[test]
    fn seeds_come_from_seed_or_seeds_never_both() {
        let one = parse(&["--seed", "7"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.seeds(), vec![7]);
        assert_eq!(
            parse(&[]).unwrap_or_else(|e| panic!("{e}")).seeds(),
            vec![42]
        );
        let many = parse(&["--seeds", "42,7,1234"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(many.seeds(), vec![42, 7, 1234]);
        assert!(parse(&["--seed", "1", "--seeds", "2,3"]).is_err());
        // Each seed has its own workload.
        let (a, b) = (
            workload::generate(&many.workload(42)),
            workload::generate(&many.workload(7)),
        );
        assert_ne!(a.first().map(|x| x.at_secs), b.first().map(|x| x.at_secs));
    }

    #[test]
    fn the_default_workload_fits_in_about_two_minutes() {
        let args = parse(&[]).unwrap_or_else(|e| panic!("{e}"));
        // Arrivals for 60 unscaled minutes at 1/100: 36 s a run, plus the tail.
        assert!((args.minutes * 60.0 * args.time_scale - 36.0).abs() < 1e-9);
        let arrivals = workload::generate(&args.workload(args.seed));
        assert!((600..850).contains(&arrivals.len()), "{}", arrivals.len());
    }

    #[test]
    fn nonsense_settings_are_refused_with_a_reason() {
        for (argv, reason) in [
            (&["--time-scale", "0"][..], "--time-scale"),
            (&["--time-scale", "2"], "--time-scale"),
            (&["--rate-per-min=-1"], "--rate-per-min"),
            (&["--minutes", "0"], "--minutes"),
            (&["--users", "0"], "--users"),
            (&["--zipf-exponent=-0.5"], "--zipf-exponent"),
            (&["--sim-failure-rate", "1.5"], "--sim-failure-rate"),
            (&["--client-timeout-secs", "0"], "--client-timeout-secs"),
            (&["--sample-every-secs", "0"], "--sample-every-secs"),
        ] {
            let refused = parse(argv).and_then(|args| args.validate());
            assert!(
                refused.as_ref().is_err_and(|e| e.contains(reason)),
                "{argv:?}: {refused:?}"
            );
        }
    }
}
