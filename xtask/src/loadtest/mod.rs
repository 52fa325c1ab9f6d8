//! `cargo xtask loadtest`: one realistic workload, twice, against the demo gateway over
//! real HTTP: before (`--no-stack`, a direct call to the provider) and after (the
//! `HealthAiStack` with its defaults), both in front of the simulated provider.
//!
//! The gateway runs as a child process (`cargo run`); nothing of the library crates is
//! linked here. The workload and the statistics are pure functions (see `workload` and
//! `stats`), tested on their own; this module only wires them to the processes, the
//! network and the files.

mod chart;
mod client;
mod gateway;
mod stats;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use self::gateway::Gateway;
use self::stats::{Observation, Outcome, Summary};
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

    /// What one provider call costs, in US dollars.
    #[arg(long, default_value_t = 0.01)]
    cost_per_call_usd: f64,

    /// How long the client waits for one answer, in seconds; a request with no answer
    /// by then is counted in its own row.
    #[arg(long, default_value_t = 3600)]
    client_timeout_secs: u64,

    /// Extra gateway flags for the "after" run, after `--`: e.g. `-- --queue-capacity 50`.
    #[arg(last = true)]
    gateway_args: Vec<String>,
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
        if self.client_timeout_secs == 0 {
            return Err("--client-timeout-secs must be at least 1".to_owned());
        }
        Ok(())
    }

    fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            seed: self.seed,
            users: self.users,
            records_per_user: self.records_per_user,
            zipf_exponent: self.zipf_exponent,
            rate_per_min: self.rate_per_min,
            minutes: self.minutes,
        }
    }

    /// The gateway's flags for the "before" run: no stack, a direct call.
    fn before_flags(&self) -> Vec<String> {
        let mut flags = self.common_flags();
        flags.push("--no-stack".to_owned());
        flags
    }

    /// The gateway's flags for the "after" run: the stack with its defaults, changed
    /// only by the flags given after `--`.
    fn after_flags(&self) -> Vec<String> {
        let mut flags = self.common_flags();
        flags.extend(self.gateway_args.iter().cloned());
        flags
    }

    /// The gateway flags of both runs.
    fn common_flags(&self) -> Vec<String> {
        [
            "--listen",
            "127.0.0.1:0",
            "--time-scale",
            &self.time_scale.to_string(),
            "--sim-latency-ms",
            &self.sim_latency_ms,
            "--sim-failure-rate",
            &self.sim_failure_rate.to_string(),
            "--sim-seed",
            &self.seed.to_string(),
            "--cost-per-call-usd",
            &self.cost_per_call_usd.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// The workspace root: xtask's parent directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// One run's results.
#[derive(Debug)]
struct Run {
    label: &'static str,
    flags: Vec<String>,
    observations: Vec<Observation>,
    summary: Summary,
    simulator: Value,
    metrics: Value,
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "gatewayFlags": self.flags,
            "summary": self.summary,
            "simulator": self.simulator,
            "metrics": self.metrics,
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

fn run_once(
    runtime: &tokio::runtime::Runtime,
    args: &LoadtestArgs,
    label: &'static str,
    flags: Vec<String>,
    arrivals: &[Arrival],
    out_dir: &Path,
) -> Result<Run, String> {
    let log = out_dir.join(format!("gateway-{label}.log"));
    let gateway = Gateway::start(&workspace_root(), &flags, &log)?;
    let client = client::client();
    let timeout = Duration::from_secs_f64(args.client_timeout_secs as f64 * args.time_scale);
    let started = std::time::Instant::now();
    let (mut observations, simulator, metrics) = runtime.block_on(async {
        let observations = client::drive(
            &client,
            &gateway.base_url,
            arrivals,
            args.time_scale,
            timeout,
            label,
        )
        .await;
        let simulator = client::get_json(&client, &gateway.base_url, "/api/simulator").await;
        let metrics = client::get_json(&client, &gateway.base_url, "/api/metrics").await;
        (observations, simulator, metrics)
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
            "/api/simulator should answer {{\"calls\": n, \"failures\": n}}, not {simulator}"
        ));
    };
    let metrics = metrics.unwrap_or_else(|e| {
        if label == "after" {
            eprintln!("xtask: warning: no stack metrics: {e}");
        }
        Value::Null
    });
    let summary = stats::summarize(arrivals.len(), &observations, calls, args.cost_per_call_usd)
        .map_err(|e| format!("{label} run: nothing may be lost, yet {e}"))?;
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
        label,
        flags,
        observations,
        summary,
        simulator,
        metrics,
    })
}

/// What the table's figures mean, printed under it.
fn notes(args: &LoadtestArgs, arrivals: usize) -> String {
    let mix = PRIORITY_MIX
        .map(|share| format!("{:.0}", share * 100.0))
        .join("/");
    format!(
        "Every figure is unscaled: measured with `--time-scale {scale}` and divided by it (so one \
         millisecond of local HTTP reads as {ms:.1} s).\n\
         Workload: {arrivals} requests over {minutes} min (Poisson arrivals, {rate}/min, open loop), \
         {users} users x {records} records each (Zipf exponent {zipf}), priorities \
         {mix}% urgent/high/normal/low, seed {seed}.\n\
         Provider: {latency} ms a call, {failure:.0}% failures, ${cost} a call; cost is provider \
         calls x cost / requests sent.\n\
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
        seed = args.seed,
        latency = args.sim_latency_ms,
        failure = args.sim_failure_rate * 100.0,
        cost = args.cost_per_call_usd,
    )
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs the loadtest: builds the gateway, runs the workload before and after, prints
/// the table and writes `target/loadtest/{results.json,latency.svg,table.md}`.
pub(crate) fn run(args: &LoadtestArgs) -> Result<(), String> {
    args.validate()?;
    let root = workspace_root();
    let out_dir = root.join("target").join("loadtest");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let workload = args.workload();
    let arrivals = workload::generate(&workload);
    eprintln!(
        "loadtest: {} requests over {} min unscaled ({:.0} s at time scale {}), twice",
        arrivals.len(),
        args.minutes,
        args.minutes * 60.0 * args.time_scale,
        args.time_scale
    );

    let mut build = vec!["build", "--quiet"];
    build.extend(gateway::PACKAGE);
    crate::cargo(&build, &[])?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let before = run_once(
        &runtime,
        args,
        "before",
        args.before_flags(),
        &arrivals,
        &out_dir,
    )?;
    let after = run_once(
        &runtime,
        args,
        "after",
        args.after_flags(),
        &arrivals,
        &out_dir,
    )?;

    let table = stats::render_table(&before.summary, &after.summary);
    let notes = notes(args, arrivals.len());
    println!("\n{table}\n{notes}");

    let results = json!({
        "units": "seconds and US dollars, unscaled",
        "timeScale": args.time_scale,
        "provider": {
            "latencyMs": args.sim_latency_ms,
            "failureRate": args.sim_failure_rate,
            "costPerCallUsd": args.cost_per_call_usd,
        },
        "workload": workload,
        "priorityMix": { "urgent": PRIORITY_MIX[0], "high": PRIORITY_MIX[1], "normal": PRIORITY_MIX[2], "low": PRIORITY_MIX[3] },
        "arrivals": arrivals.iter().map(|a| json!({
            "atSecs": a.at_secs,
            "userId": a.user_id(),
            "recordId": a.record_id(),
            "priority": a.priority,
        })).collect::<Vec<_>>(),
        "runs": { before.label: before.to_json(), after.label: after.to_json() },
    });
    let json_text = serde_json::to_string_pretty(&results)
        .map_err(|e| format!("cannot encode the results: {e}"))?;
    let svg = chart::cdf_svg(
        "Latency of answered requests: before vs after",
        &[
            chart::Series {
                label: "before: no stack",
                color: "#c0392b",
                latencies: before.answered_latencies(),
            },
            chart::Series {
                label: "after: HealthAiStack",
                color: "#1f6fb2",
                latencies: after.answered_latencies(),
            },
        ],
    );
    write(&out_dir.join("results.json"), &json_text)?;
    write(&out_dir.join("latency.svg"), &svg)?;
    write(&out_dir.join("table.md"), &format!("{table}\n{notes}"))?;
    eprintln!(
        "loadtest: results in {}/{{results.json,latency.svg,table.md}}",
        out_dir.display()
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
    fn both_runs_share_the_provider_and_differ_only_by_the_stack() {
        let args = parse(&["--", "--queue-capacity", "50"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(args.validate().is_ok());
        let before = args.before_flags();
        let after = args.after_flags();
        let expected = "--listen 127.0.0.1:0 --time-scale 0.01 --sim-latency-ms 45000-90000 \
                        --sim-failure-rate 0.3 --sim-seed 42 --cost-per-call-usd 0.01";
        assert_eq!(before.join(" "), format!("{expected} --no-stack"));
        assert_eq!(after.join(" "), format!("{expected} --queue-capacity 50"));
    }

    #[test]
    fn the_default_workload_fits_in_about_two_minutes() {
        let args = parse(&[]).unwrap_or_else(|e| panic!("{e}"));
        // Arrivals for 60 unscaled minutes at 1/100: 36 s a run, plus the tail.
        assert!((args.minutes * 60.0 * args.time_scale - 36.0).abs() < 1e-9);
        let arrivals = workload::generate(&args.workload());
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
        ] {
            let refused = parse(argv).and_then(|args| args.validate());
            assert!(
                refused.as_ref().is_err_and(|e| e.contains(reason)),
                "{argv:?}: {refused:?}"
            );
        }
    }
}
