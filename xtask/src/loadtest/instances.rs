//! `cargo xtask loadtest --instances N --redis URL`: the same workload through N
//! gateways at once, round robin, as behind a load balancer, with and without Redis,
//! next to one gateway.
//!
//! The N gateways share ONE provider, as a real deployment does: the first gateway's
//! simulated provider listens on a free loopback port (`--sim-listen`) and the others
//! call it (`--upstream`), so its capacity, its billed calls and its 429s are the whole
//! deployment's, and the figures compare with the single gateway's run (which has the
//! same provider, seed and capacity). Each run with Redis uses a prefix of its own, so
//! nothing cached by an earlier run is found (its keys expire with the cache's TTL).

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::gateway::Gateway;
use super::stats::{self, CacheStatus, Observation, Summary};
use super::workload::Arrival;
use super::{Column, LoadtestArgs, client, run_once, write};

/// One run over N gateways.
#[derive(Debug)]
struct Many {
    heading: String,
    flags: Vec<Vec<String>>,
    observations: Vec<Observation>,
    summary: Summary,
    simulator: Value,
}

/// Requests the cache did not answer: `x-cache: MISS` (each cost a provider call, or
/// was answered by the fallback).
fn misses(observations: &[Observation]) -> usize {
    observations
        .iter()
        .filter(|o| o.cache == Some(CacheStatus::Miss))
        .count()
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The flags of each of the `n` gateways: the default preset's (as the single run's),
/// `--instances n`, one provider (the first gateway's simulator), and with `redis`, the
/// URL and a prefix of this run's own.
fn gateway_flags(
    args: &LoadtestArgs,
    seed: u64,
    n: u32,
    provider_port: u16,
    redis: Option<(&str, &str)>,
) -> Vec<Vec<String>> {
    (0..n)
        .map(|i| {
            let mut flags = args.flags(Column::Preset, seed);
            flags.extend(["--instances".to_owned(), n.to_string()]);
            if i == 0 {
                flags.extend([
                    "--sim-listen".to_owned(),
                    format!("127.0.0.1:{provider_port}"),
                ]);
            } else {
                flags.extend([
                    "--upstream".to_owned(),
                    format!("http://127.0.0.1:{provider_port}"),
                ]);
            }
            if let Some((url, prefix)) = redis {
                flags.extend([
                    "--redis".to_owned(),
                    url.to_owned(),
                    "--redis-prefix".to_owned(),
                    prefix.to_owned(),
                ]);
            }
            flags
        })
        .collect()
}

fn run_many(
    runtime: &tokio::runtime::Runtime,
    args: &LoadtestArgs,
    seed: u64,
    n: u32,
    redis: Option<&str>,
    arrivals: &[Arrival],
    out_dir: &Path,
) -> Result<Many, String> {
    let label = if redis.is_some() { "redis" } else { "no-redis" };
    let heading = if redis.is_some() {
        format!("{n} gateways, Redis")
    } else {
        format!("{n} gateways, no Redis")
    };
    let prefix = format!(
        "loadtest:{seed}:{}:{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let flags = gateway_flags(
        args,
        seed,
        n,
        free_port()?,
        redis.map(|url| (url, prefix.as_str())),
    );
    let mut gateways = Vec::with_capacity(flags.len());
    for (i, flags) in flags.iter().enumerate() {
        let log = out_dir.join(format!("gateway-{label}-{}.log", i + 1));
        gateways.push(Gateway::start(&super::workspace_root(), flags, &log)?);
    }
    let bases: Vec<String> = gateways.iter().map(|g| g.base_url.clone()).collect();
    let client = client::client();
    let timeout = Duration::from_secs_f64(args.client_timeout_secs as f64 * args.time_scale);
    let started = std::time::Instant::now();
    let (mut observations, simulator) = runtime.block_on(async {
        let observations =
            client::drive_round_robin(&client, &bases, arrivals, args.time_scale, timeout, label)
                .await;
        // The first gateway runs the provider.
        let simulator = client::get_json(&client, &bases[0], "/api/simulator").await;
        (observations, simulator)
    });
    eprintln!(
        "loadtest: the {label} run ({n} gateways) took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for gateway in gateways {
        gateway.stop()?;
    }
    observations.sort_by_key(|o| o.index);
    let simulator = simulator?;
    let Some(calls) = simulator["calls"].as_u64() else {
        return Err(format!(
            "/api/simulator should answer {{\"calls\": n, ...}}, not {simulator}"
        ));
    };
    let billed = simulator["billed"].as_u64().unwrap_or(calls);
    let overloaded = simulator["overloaded"].as_u64().unwrap_or(0);
    let summary = stats::summarize(
        arrivals.len(),
        &observations,
        billed,
        overloaded,
        args.cost_per_call_usd,
    )
    .map_err(|e| format!("{label} run: nothing may be lost, yet {e}"))?;
    Ok(Many {
        heading,
        flags,
        observations,
        summary,
        simulator,
    })
}

/// What the runs show against the goal: with Redis, provider calls within 10 % of one
/// gateway's; without it, about N times as many misses.
fn verdict(n: u32, single: (&Summary, usize), apart: &Many, shared: &Many) -> String {
    let (single, single_misses) = single;
    let calls = |s: &Summary| s.upstream_calls as f64;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    // In percent.
    let shared_change = (ratio(calls(&shared.summary), calls(single)) - 1.0) * 100.0;
    let apart_misses = misses(&apart.observations);
    let shared_misses = misses(&shared.observations);
    let met = if shared_change.abs() <= 10.0 {
        "met"
    } else {
        "not met"
    };
    format!(
        "Against one gateway ({single_calls} provider calls, {single_misses} misses, hit rate \
         {single_hit:.1}%):\n\n\
         - {n} gateways with Redis: {shared_calls} provider calls ({shared_change:+.1}%; goal: \
         within 10%, {met}), {shared_misses} misses ({shared_miss_ratio:.2}x), hit rate \
         {shared_hit:.1}%.\n\
         - {n} gateways without Redis: {apart_calls} provider calls ({apart_ratio:.2}x), \
         {apart_misses} misses ({apart_miss_ratio:.2}x; N = {n}), hit rate {apart_hit:.1}%.\n\n\
         Misses are answers with `x-cache: MISS` (a provider call, or the fallback's answer when \
         the provider could not give one in time); provider calls are the shared provider's \
         billed calls, retries included.\n",
        single_calls = single.upstream_calls,
        single_hit = single.cache_hit_rate * 100.0,
        shared_calls = shared.summary.upstream_calls,
        shared_miss_ratio = ratio(shared_misses as f64, single_misses as f64),
        shared_hit = shared.summary.cache_hit_rate * 100.0,
        apart_calls = apart.summary.upstream_calls,
        apart_ratio = ratio(calls(&apart.summary), calls(single)),
        apart_miss_ratio = ratio(apart_misses as f64, single_misses as f64),
        apart_hit = apart.summary.cache_hit_rate * 100.0,
    )
}

/// Runs one gateway, then `n` without Redis, then `n` with it, on one seed; prints the
/// table and the verdict, and writes `instances.{md,json}` in `out_dir`.
pub(super) fn run_seed(
    runtime: &tokio::runtime::Runtime,
    args: &LoadtestArgs,
    seed: u64,
    n: u32,
    redis: &str,
    arrivals: &[Arrival],
    out_dir: &Path,
) -> Result<(), String> {
    let single = run_once(runtime, args, Column::Preset, seed, arrivals, out_dir)?;
    let apart = run_many(runtime, args, seed, n, None, arrivals, out_dir)?;
    let shared = run_many(runtime, args, seed, n, Some(redis), arrivals, out_dir)?;
    let table = stats::render_table(&[
        stats::Column {
            heading: "1 gateway",
            short: "1 gateway",
            summary: &single.summary,
        },
        stats::Column {
            heading: &apart.heading,
            short: "no Redis",
            summary: &apart.summary,
        },
        stats::Column {
            heading: &shared.heading,
            short: "Redis",
            summary: &shared.summary,
        },
    ]);
    let verdict = verdict(
        n,
        (&single.summary, misses(&single.observations)),
        &apart,
        &shared,
    );
    let notes = format!(
        "{n} gateways share one simulated provider (the first gateway's) and get the workload \
         round robin; the single gateway's column is the default preset alone. Seed {seed}, \
         time scale {scale}; figures unscaled.\n",
        scale = args.time_scale
    );
    println!("\n## Seed {seed}, {n} gateways\n\n{table}\n{notes}\n{verdict}");
    write(
        &out_dir.join("instances.md"),
        &format!("{table}\n{notes}\n{verdict}"),
    )?;
    let run_json = |many: &Many| {
        json!({
            "heading": many.heading,
            "gatewayFlags": many.flags,
            "summary": many.summary,
            "misses": misses(&many.observations),
            "simulator": many.simulator,
            "requests": many.observations,
        })
    };
    let results = json!({
        "units": "seconds and US dollars, unscaled",
        "timeScale": args.time_scale,
        "seed": seed,
        "instances": n,
        "single": {
            "gatewayFlags": single.flags,
            "summary": single.summary,
            "misses": misses(&single.observations),
            "simulator": single.simulator,
        },
        "withoutRedis": run_json(&apart),
        "withRedis": run_json(&shared),
    });
    let text = serde_json::to_string_pretty(&results)
        .map_err(|e| format!("cannot encode the results: {e}"))?;
    write(&out_dir.join("instances.json"), &text)?;
    eprintln!(
        "loadtest: results in {}/instances.{{md,json}}",
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

    #[test]
    fn the_gateways_share_one_provider_and_only_the_redis_run_shares_state() {
        let args = Cli::try_parse_from(["loadtest", "--instances", "3", "--redis", "redis://r:1"])
            .map(|cli| cli.args)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(args.validate().is_ok());
        let apart = gateway_flags(&args, 42, 3, 5000, None);
        let shared = gateway_flags(&args, 42, 3, 5000, Some(("redis://r:1", "p:")));
        assert_eq!(apart.len(), 3);
        let common = args.flags(Column::Preset, 42).join(" ");
        assert_eq!(
            apart[0].join(" "),
            format!("{common} --instances 3 --sim-listen 127.0.0.1:5000")
        );
        for flags in &apart[1..] {
            assert_eq!(
                flags.join(" "),
                format!("{common} --instances 3 --upstream http://127.0.0.1:5000")
            );
        }
        for (with, without) in shared.iter().zip(&apart) {
            assert_eq!(
                with.join(" "),
                format!(
                    "{} --redis redis://r:1 --redis-prefix p:",
                    without.join(" ")
                )
            );
        }
    }

    fn many(heading: &str, calls: u64, misses: usize) -> Many {
        let observations: Vec<Observation> = (0..misses)
            .map(|index| Observation {
                index,
                sent_at_secs: 0.0,
                latency_secs: 1.0,
                status: Some(200),
                outcome: stats::Outcome::Real,
                cache: Some(CacheStatus::Miss),
                detail: None,
            })
            .collect();
        let summary = stats::summarize(misses, &observations, calls, 0, 0.01)
            .unwrap_or_else(|e| panic!("{e}"));
        Many {
            heading: heading.to_owned(),
            flags: Vec::new(),
            observations,
            summary,
            simulator: Value::Null,
        }
    }

    #[test]
    fn the_verdict_compares_calls_in_percent_and_misses_as_a_ratio() {
        let single = many("1", 237, 270);
        let text = verdict(
            3,
            (&single.summary, 270),
            &many("apart", 342, 475),
            &many("shared", 242, 253),
        );
        assert!(
            text.contains("242 provider calls (+2.1%; goal: within 10%, met)"),
            "{text}"
        );
        assert!(text.contains("475 misses (1.76x; N = 3)"), "{text}");
        let text = verdict(
            3,
            (&single.summary, 270),
            &many("apart", 342, 475),
            &many("shared", 300, 253),
        );
        assert!(
            text.contains("(+26.6%; goal: within 10%, not met)"),
            "{text}"
        );
    }

    #[test]
    fn redis_needs_instances_and_instances_need_redis() {
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("loadtest").chain(argv.iter().copied()))
                .map_err(|e| e.to_string())
                .and_then(|cli| cli.args.validate())
        };
        assert!(parse(&["--redis", "redis://r:1"]).is_err());
        assert!(parse(&["--instances", "3"]).is_err());
        assert!(parse(&["--instances", "1", "--redis", "redis://r:1"]).is_err());
        assert!(
            parse(&[
                "--instances",
                "3",
                "--redis",
                "redis://r:1",
                "--preset-only"
            ])
            .is_err()
        );
    }
}
