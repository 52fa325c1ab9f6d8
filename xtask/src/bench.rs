//! `cargo xtask bench`: runs every criterion bench, then prints one summary table of
//! what each layer costs over the bare baseline of its own run, and over the peer crate
//! measured beside it.
//!
//! The summary reads what criterion leaves behind:
//! `<target dir>/criterion/<group>/<function>[/<param>]/new/{benchmark,estimates}.json`.
//! It is generic over the benches. Within a group, an id containing `baseline` is a
//! reference, an id naming a peer crate is a peer, and every other id is one of ours.
//! A row is compared with the baseline its id names (`layer-axum-body` with
//! `axum-baseline`); a peer, else with the last baseline measured before it in the run
//! (a peer that needs other types is measured right after a matching baseline); else
//! with the group's plain baseline. Ours is compared with the peer whose id shares a word with
//! it (`retry` with `tower_retry`), else with the peers no row of ours claimed.
//!
//! Criterion's directory does not say which crate a result came from, and two crates
//! with the same group name overwrite each other's results there. So a full run benches
//! one crate at a time, each with its own criterion directory,
//! `<target dir>/xtask-bench/<crate>/` (criterion's `CRITERION_HOME`). `--summary-only`
//! reads those back, unless plain `cargo bench` wrote newer results in
//! `<target dir>/criterion/` since (there, the crates are unknown).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Differences smaller than this many nanoseconds are noise on the project's machines.
const NOISE_NS: f64 = 10.0;
/// Ratios within this much of 1 are noise too.
const NOISE_RATIO: f64 = 0.20;
/// A start and an end baseline further apart than this make the run noisy.
const BASELINE_DRIFT: f64 = 0.10;
/// Where a full run keeps each crate's results, in the target directory.
const HOME: &str = "xtask-bench";

/// One criterion result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measurement {
    /// The package whose bench measured it; empty when unknown.
    pub(crate) krate: String,
    pub(crate) group: String,
    /// The function id, with `/param` when there is one.
    pub(crate) id: String,
    pub(crate) median_ns: f64,
    /// When criterion wrote it, in nanoseconds since the epoch: the run's order.
    pub(crate) written_ns: u128,
}

/// What an id is, within its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Baseline,
    Peer,
    Ours,
}

/// Lower case, with `-`, `::`, spaces and other separators as `_`.
fn normalize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn tokens(id: &str) -> Vec<String> {
    normalize(id)
        .split('_')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Peer crates, as they appear in a normalized id.
const PEER_CRATES: [&str; 4] = ["peer", "tower_governor", "resilience", "axum_prometheus"];

/// Peer layers whose names could also describe one of ours: a peer unless the id names
/// one of our crates.
const PEER_LAYERS: [&str; 4] = [
    "concurrencylimit",
    "concurrency_limit",
    "loadshed",
    "load_shed",
];

/// Our crates, as they appear in a normalized id: `tower_token_bucket` is ours even
/// though it starts with `tower`.
const OUR_CRATES: [&str; 6] = [
    "token_bucket",
    "lru_cache",
    "priority_queue",
    "breaker",
    "red_metrics",
    "health_ai",
];

/// Words that name a crate or the plumbing rather than what is measured: they do not
/// pair one of ours with a peer.
const NOT_PAIRING: [&str; 19] = [
    "tower",
    "peer",
    "resilience",
    "governor",
    "axum",
    "prometheus",
    "layer",
    "service",
    "cache",
    "breaker",
    "token",
    "bucket",
    "lru",
    "priority",
    "queue",
    "red",
    "metrics",
    "health",
    "ai",
];

pub(crate) fn classify(id: &str) -> Kind {
    let id = normalize(id);
    if id.contains("baseline") {
        Kind::Baseline
    } else if PEER_CRATES.iter().any(|m| id.contains(m)) {
        Kind::Peer
    } else if OUR_CRATES.iter().any(|m| id.contains(m)) {
        Kind::Ours
    } else if PEER_LAYERS.iter().any(|m| id.contains(m)) || id.split('_').any(|t| t == "tower") {
        // tower's own layers: `tower::ConcurrencyLimit`, `tower_retry`.
        Kind::Peer
    } else {
        Kind::Ours
    }
}

/// A baseline's variant: its tokens less `baseline` and the words that place it in the
/// run (start, end...). `baseline-start` and `baseline (end)` share the variant "";
/// `axum-baseline` is the variant "axum", the matching baseline of a peer that wants
/// axum's body type.
fn variant(id: &str) -> Vec<String> {
    const PLACE: [&str; 9] = [
        "baseline", "start", "end", "begin", "first", "last", "final", "before", "after",
    ];
    tokens(id)
        .into_iter()
        .filter(|t| !PLACE.contains(&t.as_str()))
        .collect()
}

fn is_end(id: &str) -> bool {
    tokens(id)
        .iter()
        .any(|t| matches!(t.as_str(), "end" | "last" | "final" | "after"))
}

/// One variant of baseline in a group: its first measurement and, if the run measured
/// it again at the end, that one too.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Baseline {
    /// `crate: group/id` of the first measurement, for messages.
    pub(crate) name: String,
    pub(crate) start_id: String,
    pub(crate) start_ns: f64,
    start_written: u128,
    pub(crate) end: Option<(String, f64)>,
    variant: Vec<String>,
}

impl Baseline {
    /// How far the end measurement moved from the start one, as a ratio minus one.
    pub(crate) fn drift(&self) -> Option<f64> {
        self.end.as_ref().map(|(_, end)| end / self.start_ns - 1.0)
    }

    pub(crate) fn noisy(&self) -> bool {
        self.drift().is_some_and(|d| d.abs() > BASELINE_DRIFT)
    }
}

/// One row of the summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// `crate: group`, or what of it is known.
    pub(crate) group: String,
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) median_ns: f64,
    /// The baseline this row is compared with, if the group has one.
    pub(crate) baseline_id: Option<String>,
    /// `median - baseline`.
    pub(crate) delta_ns: Option<f64>,
    /// `median / baseline`.
    pub(crate) ratio: Option<f64>,
    /// For ours: `(peer id, our delta - its delta, our delta / its delta)` for each peer
    /// it is compared with.
    pub(crate) versus: Vec<(String, f64, Option<f64>)>,
}

fn group_label(krate: &str, group: &str) -> String {
    match (krate.is_empty(), group.is_empty()) {
        (true, true) => "(none)".to_owned(),
        (true, false) => group.to_owned(),
        (false, true) => krate.to_owned(),
        (false, false) => format!("{krate}: {group}"),
    }
}

/// The summary of every group, in crate, group and run order.
pub(crate) fn summarize(measurements: &[Measurement]) -> (Vec<Row>, Vec<Baseline>) {
    let mut groups: Vec<(&str, &str)> = measurements
        .iter()
        .map(|m| (m.krate.as_str(), m.group.as_str()))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut rows = Vec::new();
    let mut all_baselines = Vec::new();
    for (krate, group) in groups {
        let mut members: Vec<&Measurement> = measurements
            .iter()
            .filter(|m| m.krate == krate && m.group == group)
            .collect();
        members.sort_by(|a, b| (a.written_ns, &a.id).cmp(&(b.written_ns, &b.id)));
        let label = group_label(krate, group);
        let baselines = baselines_of(&label, &members);
        let mut group_rows: Vec<Row> = members
            .iter()
            .map(|m| {
                let kind = classify(&m.id);
                let base = if kind == Kind::Baseline {
                    let own = variant(&m.id);
                    baselines.iter().find(|b| b.variant == own)
                } else {
                    reference(&baselines, m, kind)
                };
                Row {
                    group: label.clone(),
                    id: m.id.clone(),
                    kind,
                    median_ns: m.median_ns,
                    baseline_id: base.map(|b| b.start_id.clone()),
                    delta_ns: base.map(|b| m.median_ns - b.start_ns),
                    ratio: base
                        .filter(|b| b.start_ns > 0.0)
                        .map(|b| m.median_ns / b.start_ns),
                    versus: Vec::new(),
                }
            })
            .collect();
        pair_with_peers(&mut group_rows);
        rows.extend(group_rows);
        all_baselines.extend(baselines);
    }
    (rows, all_baselines)
}

/// The baseline a row is measured against: the one its id names; for a peer, else the
/// last one measured before it (a peer that needs other types follows a baseline of
/// those types); else the plain one.
fn reference<'b>(baselines: &'b [Baseline], m: &Measurement, kind: Kind) -> Option<&'b Baseline> {
    let own = tokens(&m.id);
    let named = baselines
        .iter()
        .filter(|b| !b.variant.is_empty() && b.variant.iter().all(|t| own.contains(t)))
        .max_by_key(|b| b.variant.len());
    let before = baselines
        .iter()
        .filter(|b| kind == Kind::Peer && b.start_written <= m.written_ns)
        .max_by_key(|b| b.start_written);
    named
        .or(before)
        .or_else(|| baselines.iter().find(|b| b.variant.is_empty()))
        .or_else(|| baselines.first())
}

fn pairing_words(id: &str) -> Vec<String> {
    tokens(id)
        .into_iter()
        .filter(|t| !NOT_PAIRING.contains(&t.as_str()))
        .collect()
}

/// Fills `versus` of our rows: each is compared with the peers that share a word with
/// it, or, sharing none, with the peers that no row of ours shares a word with.
fn pair_with_peers(rows: &mut [Row]) {
    let peers: Vec<(String, f64, Vec<String>)> = rows
        .iter()
        .filter(|r| r.kind == Kind::Peer)
        .filter_map(|r| r.delta_ns.map(|d| (r.id.clone(), d, pairing_words(&r.id))))
        .collect();
    let ours_words: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.kind == Kind::Ours)
        .map(|r| pairing_words(&r.id))
        .collect();
    let shares = |a: &[String], b: &[String]| a.iter().any(|t| b.contains(t));
    let unclaimed: Vec<&(String, f64, Vec<String>)> = peers
        .iter()
        .filter(|(_, _, words)| !ours_words.iter().any(|o| shares(o, words)))
        .collect();
    for row in rows.iter_mut().filter(|r| r.kind == Kind::Ours) {
        let Some(ours) = row.delta_ns else { continue };
        let words = pairing_words(&row.id);
        let paired: Vec<&(String, f64, Vec<String>)> = peers
            .iter()
            .filter(|(_, _, theirs)| shares(&words, theirs))
            .collect();
        let chosen = if paired.is_empty() {
            unclaimed.clone()
        } else {
            paired
        };
        row.versus = chosen
            .into_iter()
            .map(|(id, theirs, _)| {
                // A multiple means something only when both add time.
                let ratio = (ours > 0.0 && *theirs >= 1.0).then(|| ours / theirs);
                (id.clone(), ours - theirs, ratio)
            })
            .collect();
    }
}

fn baselines_of(label: &str, members: &[&Measurement]) -> Vec<Baseline> {
    let mut baselines: Vec<Baseline> = Vec::new();
    // Starts first, so that an end finds its start whatever the run order.
    let mut candidates: Vec<&&Measurement> = members
        .iter()
        .filter(|m| classify(&m.id) == Kind::Baseline)
        .collect();
    candidates.sort_by_key(|m| (is_end(&m.id), m.written_ns));
    for m in candidates {
        let v = variant(&m.id);
        match baselines.iter_mut().find(|b| b.variant == v) {
            Some(b) if b.end.is_none() => b.end = Some((m.id.clone(), m.median_ns)),
            // A third measurement of the same variant: keep the first two.
            Some(_) => {}
            None => baselines.push(Baseline {
                name: if label.is_empty() {
                    m.id.clone()
                } else {
                    format!("{label}/{}", m.id)
                },
                start_id: m.id.clone(),
                start_ns: m.median_ns,
                start_written: m.written_ns,
                end: None,
                variant: v,
            }),
        }
    }
    baselines
}

fn ns(value: f64) -> String {
    if value.abs() < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn is_noise(delta: f64, ratio: Option<f64>) -> bool {
    delta.abs() < NOISE_NS || ratio.is_some_and(|r| (r - 1.0).abs() < NOISE_RATIO)
}

/// The summary as one Markdown table, followed by the noise verdict.
pub(crate) fn render(rows: &[Row], baselines: &[Baseline]) -> String {
    let mut out = String::new();
    out.push_str(
        "| group | bench | kind | median (ns) | - baseline (ns) | / baseline | vs peer |\n",
    );
    out.push_str("|---|---|---|---:|---:|---:|---|\n");
    for row in rows {
        let kind = match row.kind {
            Kind::Baseline => "baseline",
            Kind::Peer => "peer",
            Kind::Ours => "ours",
        };
        let is_reference =
            row.kind == Kind::Baseline && row.baseline_id.as_deref() == Some(row.id.as_str());
        let (delta, ratio) = match (row.delta_ns, row.ratio) {
            _ if is_reference => ("reference".to_owned(), String::new()),
            (Some(d), r) => {
                let mark = if is_noise(d, r) { " ~" } else { "" };
                let vs = match &row.baseline_id {
                    Some(b) if row.kind != Kind::Baseline && variant(b) != Vec::<String>::new() => {
                        format!(" (vs {b})")
                    }
                    _ => String::new(),
                };
                (
                    format!("{}{}{mark}{vs}", if d >= 0.0 { "+" } else { "" }, ns(d)),
                    r.map_or_else(String::new, |r| format!("x{r:.2}")),
                )
            }
            (None, _) => ("no baseline".to_owned(), String::new()),
        };
        let versus = row
            .versus
            .iter()
            .map(|(peer, diff, ratio)| {
                let sign = if *diff >= 0.0 { "+" } else { "" };
                let times = ratio.map_or_else(String::new, |r| format!(", x{r:.2} its overhead"));
                format!("`{peer}`: {sign}{} ns{times}", ns(*diff))
            })
            .collect::<Vec<_>>()
            .join("; ");
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {} | {kind} | {} | {delta} | {ratio} | {versus} |",
            row.group,
            row.id,
            ns(row.median_ns)
        );
    }
    out.push('\n');
    out.push_str(
        "Medians from criterion. `~`: under 10 ns or within 20% of the baseline, which is \
         noise on these machines. \"vs peer\": our overhead minus the peer's, each over its \
         own baseline, and ours as a multiple of the peer's.\n",
    );
    let noisy: Vec<&Baseline> = baselines.iter().filter(|b| b.noisy()).collect();
    let checked = baselines.iter().filter(|b| b.end.is_some()).count();
    if !noisy.is_empty() {
        let which = noisy
            .iter()
            .map(|b| {
                format!(
                    "{} ({:+.0}%)",
                    b.name,
                    b.drift().unwrap_or_default() * 100.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "NOISY RUN: the baseline moved by more than 10% between the start and the end of: \
             {which}. Run again before quoting these figures."
        );
    } else if checked > 0 {
        let _ = writeln!(
            out,
            "Start and end baselines agree within 10% in all {checked} group(s) that measure both."
        );
    }
    out
}

/// Splits a bench id registered without a group (`c.bench_function("contended/x")`,
/// which criterion files as a group of its own) into a group and an id: the first
/// path segment is the group, unless it is a baseline's (`baseline/start`).
fn ungrouped(id: &str) -> (String, String) {
    match id.split_once('/') {
        Some((group, rest)) if !group.to_ascii_lowercase().contains("baseline") => {
            (group.to_owned(), rest.to_owned())
        }
        _ => (String::new(), id.to_owned()),
    }
}

/// Reads one result directory (the one holding `new/`).
fn read_measurement(
    criterion: &Path,
    new_dir: &Path,
    written: SystemTime,
) -> Result<Measurement, String> {
    let read = |name: &str| -> Result<Value, String> {
        let path = new_dir.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
    };
    let estimates = read("estimates.json")?;
    let Some(median_ns) = estimates["median"]["point_estimate"].as_f64() else {
        return Err(format!(
            "{} has no median.point_estimate",
            new_dir.join("estimates.json").display()
        ));
    };
    // benchmark.json has the ids as written in the bench; the directory names are
    // criterion's sanitized copies, used when it is missing.
    let (group, id) = match read("benchmark.json") {
        Ok(b) if b["group_id"].is_string() => {
            let group = b["group_id"].as_str().unwrap_or_default();
            match b["function_id"].as_str() {
                Some(function) => {
                    let mut id = function.to_owned();
                    if let Some(value) = b["value_str"].as_str() {
                        id = format!("{id}/{value}");
                    }
                    (group.to_owned(), id)
                }
                None => ungrouped(group),
            }
        }
        _ => {
            let relative = new_dir
                .parent()
                .and_then(|d| d.strip_prefix(criterion).ok())
                .ok_or_else(|| format!("unexpected result directory {}", new_dir.display()))?;
            let mut parts = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let group = parts.next().unwrap_or_default();
            (group, parts.collect::<Vec<_>>().join("/"))
        }
    };
    Ok(Measurement {
        krate: String::new(),
        group,
        id,
        median_ns,
        written_ns: written
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    })
}

/// Every result under `criterion/`, or only those written since `since`.
pub(crate) fn collect(
    criterion: &Path,
    since: Option<SystemTime>,
) -> Result<Vec<Measurement>, String> {
    let mut found = Vec::new();
    if !criterion.is_dir() {
        return Ok(found);
    }
    let mut stack = vec![criterion.to_owned()];
    while let Some(dir) = stack.pop() {
        // A result directory holds `new/` (this run), and maybe `base/` and `change/`
        // (comparisons with the run before): only `new/` is read, nothing below it.
        let new = dir.join("new");
        let estimates = new.join("estimates.json");
        if estimates.is_file() {
            let written = std::fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            if since.is_none_or(|since| written >= since) {
                found.push(read_measurement(criterion, &new, written)?);
            }
            continue;
        }
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // Criterion's HTML report pages are not results.
            if path.is_dir() && entry.file_name() != "report" {
                stack.push(path);
            }
        }
    }
    found.sort_by(|a, b| (&a.group, &a.id).cmp(&(&b.group, &b.id)));
    Ok(found)
}

/// The `group/id`s that more than one crate measured, each with its crates.
pub(crate) fn collisions(measurements: &[Measurement]) -> Vec<String> {
    let mut by_id: Vec<(String, Vec<&str>)> = Vec::new();
    for m in measurements {
        let id = format!("{}/{}", m.group, m.id);
        match by_id.iter_mut().find(|(seen, _)| *seen == id) {
            Some((_, crates)) if !crates.contains(&m.krate.as_str()) => crates.push(&m.krate),
            Some(_) => {}
            None => by_id.push((id, vec![&m.krate])),
        }
    }
    by_id.sort_unstable();
    by_id
        .into_iter()
        .filter(|(_, crates)| crates.len() > 1)
        .map(|(id, mut crates)| {
            crates.sort_unstable();
            (id, crates)
        })
        .map(|(id, crates)| format!("{id} ({})", crates.join(", ")))
        .collect()
}

/// What `cargo metadata` says: the target directory (unless `$CARGO_TARGET_DIR` says
/// otherwise) and the workspace's packages that have bench targets.
fn metadata() -> Result<(PathBuf, Vec<String>), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("could not run {cargo} metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo metadata` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("`cargo metadata` did not print JSON: {e}"))?;
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => metadata["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| "`cargo metadata` gave no target_directory".to_owned())?,
    };
    let mut packages: Vec<String> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["targets"].as_array().into_iter().flatten().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bench"))
            })
        })
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages.sort();
    Ok((target, packages))
}

/// Runs each package's benches, one package at a time, each in its own criterion
/// directory under `home`, and returns this run's results with their crate.
fn run_benches(
    home: &Path,
    packages: &[String],
    args: &[String],
) -> (Vec<Measurement>, Vec<String>) {
    let mut measurements = Vec::new();
    let mut failures = Vec::new();
    for package in packages {
        let dir = home.join(package);
        let Some(dir_str) = dir.to_str() else {
            failures.push(format!("{} is not valid UTF-8", dir.display()));
            continue;
        };
        let started = SystemTime::now();
        let mut argv = vec!["bench", "--locked", "-p", package, "--bench", "*"];
        if !args.is_empty() {
            argv.push("--");
            argv.extend(args.iter().map(String::as_str));
        }
        if let Err(e) = crate::cargo(&argv, &[("CRITERION_HOME", dir_str)]) {
            failures.push(e);
        }
        // Only this run's: a filter leaves older results of other benches in place.
        match collect(&dir, Some(started)) {
            Ok(found) => measurements.extend(found.into_iter().map(|mut m| {
                m.krate.clone_from(package);
                m
            })),
            Err(e) => failures.push(e),
        }
    }
    (measurements, failures)
}

/// The results a full run left under `home`, one directory per crate.
fn collect_per_crate(home: &Path) -> Result<Vec<Measurement>, String> {
    let mut measurements = Vec::new();
    let Ok(entries) = std::fs::read_dir(home) else {
        return Ok(measurements);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let krate = entry.file_name().to_string_lossy().into_owned();
            measurements.extend(collect(&path, None)?.into_iter().map(|mut m| {
                m.krate.clone_from(&krate);
                m
            }));
        }
    }
    Ok(measurements)
}

/// This machine, as a README would name it: the CPU model (where the OS says it) and
/// the CPUs this process may use.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    format!("{model}, {cpus} CPUs")
}

/// `cargo xtask bench [--summary-only] [-- ARGS]`.
pub(crate) fn run(summary_only: bool, args: &[String]) -> Result<(), String> {
    let (target, packages) = metadata()?;
    let home = target.join(HOME);
    let (measurements, failures, source) = if summary_only {
        // The newer of the two: the last `cargo xtask bench`, or plain `cargo bench`
        // runs since.
        let per_crate = collect_per_crate(&home)?;
        let criterion = target.join("criterion");
        let plain = collect(&criterion, None)?;
        let newest = |ms: &[Measurement]| ms.iter().map(|m| m.written_ns).max();
        if newest(&per_crate) >= newest(&plain) {
            (per_crate, Vec::new(), home)
        } else {
            (plain, Vec::new(), criterion)
        }
    } else {
        if packages.is_empty() {
            return Err("no package of the workspace has a bench target".to_owned());
        }
        let (measurements, failures) = run_benches(&home, &packages, args);
        (measurements, failures, home)
    };
    if measurements.is_empty() {
        return Err(format!(
            "no criterion results{} in {}",
            if summary_only { "" } else { " from this run" },
            source.display()
        ));
    }
    let (rows, baselines) = summarize(&measurements);
    println!("\n{}", render(&rows, &baselines));
    println!("Results from {}, on {}.", source.display(), machine());
    if source.ends_with("criterion") {
        println!(
            "These are plain `cargo bench` results: which crate measured what is unknown, and \
             crates that use the same group name overwrite each other's results there. \
             `cargo xtask bench` keeps each crate's apart."
        );
    }
    let clashes = collisions(&measurements);
    if !clashes.is_empty() {
        println!(
            "Note: crates share these criterion ids, so under plain `cargo bench` their \
             results overwrite each other in {}; distinct group names would avoid it: {}",
            target.join("criterion").display(),
            clashes.join(", ")
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measurements of one crate-less run, in run order.
    fn run_of(results: &[(&str, &str, f64)]) -> Vec<Measurement> {
        results
            .iter()
            .zip(0u128..)
            .map(|(&(group, id, median_ns), order)| Measurement {
                krate: String::new(),
                group: group.to_owned(),
                id: id.to_owned(),
                median_ns,
                written_ns: order,
            })
            .collect()
    }

    fn row<'r>(rows: &'r [Row], id: &str) -> &'r Row {
        rows.iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no row {id} in {rows:?}"))
    }

    #[test]
    fn ids_are_baselines_peers_or_ours() {
        assert_eq!(classify("baseline"), Kind::Baseline);
        assert_eq!(classify("baseline_end"), Kind::Baseline);
        assert_eq!(classify("baseline (start)"), Kind::Baseline);
        assert_eq!(classify("axum-baseline"), Kind::Baseline);
        assert_eq!(classify("tower_governor"), Kind::Peer);
        assert_eq!(classify("tower_governor-global"), Kind::Peer);
        assert_eq!(classify("tower-resilience-closed"), Kind::Peer);
        assert_eq!(classify("tower-resilience circuit breaker"), Kind::Peer);
        assert_eq!(
            classify("peer tower-resilience-cache hit, path key"),
            Kind::Peer
        );
        assert_eq!(classify("tower::ConcurrencyLimit"), Kind::Peer);
        assert_eq!(classify("tower_concurrency_limit"), Kind::Peer);
        assert_eq!(classify("tower_retry"), Kind::Peer);
        assert_eq!(classify("tower load_shed"), Kind::Peer);
        assert_eq!(classify("axum_prometheus"), Kind::Peer);
        assert_eq!(classify("peer_moka_raw"), Kind::Peer);
        assert_eq!(classify("layer-global"), Kind::Ours);
        assert_eq!(classify("governor-check-global"), Kind::Ours);
        assert_eq!(classify("tower-token-bucket/per_key"), Kind::Ours);
        assert_eq!(classify("breaker-closed"), Kind::Ours);
        assert_eq!(classify("priority_queue_concurrency_limit"), Kind::Ours);
        assert_eq!(classify("retry"), Kind::Ours);
        assert_eq!(classify("hit, no body"), Kind::Ours);
        assert_eq!(classify("red_metrics"), Kind::Ours);
    }

    #[test]
    fn each_layer_is_compared_with_its_baseline_and_its_peer() {
        let (rows, baselines) = summarize(&run_of(&[
            ("limiter", "baseline", 30.0),
            ("limiter", "token_bucket", 80.0),
            ("limiter", "tower_governor", 95.0),
            ("limiter", "baseline_end", 31.0),
        ]));
        assert_eq!(baselines.len(), 1);
        assert_eq!(baselines[0].name, "limiter/baseline");
        assert!(!baselines[0].noisy());
        let ours = row(&rows, "token_bucket");
        assert_eq!(ours.kind, Kind::Ours);
        assert_eq!(ours.baseline_id.as_deref(), Some("baseline"));
        assert_eq!(ours.delta_ns, Some(50.0));
        assert!((ours.ratio.unwrap_or_default() - 80.0 / 30.0).abs() < 1e-12);
        assert_eq!(ours.versus.len(), 1);
        let (peer, diff, ratio) = &ours.versus[0];
        assert_eq!(peer, "tower_governor");
        assert!((diff - (50.0 - 65.0)).abs() < 1e-12);
        assert!((ratio.unwrap_or_default() - 50.0 / 65.0).abs() < 1e-12);
        assert_eq!(row(&rows, "baseline_end").delta_ns, Some(1.0));
        assert_eq!(row(&rows, "tower_governor").kind, Kind::Peer);
    }

    #[test]
    fn a_drifting_baseline_flags_the_run() {
        // The end baseline sorts first by name; the start one is still the reference.
        let (rows, baselines) = summarize(&run_of(&[
            ("g", "baseline (start)", 30.0),
            ("g", "hit", 200.0),
            ("g", "baseline (end)", 36.0),
        ]));
        assert!(baselines[0].noisy());
        assert!((baselines[0].drift().unwrap_or_default() - 0.2).abs() < 1e-12);
        let table = render(&rows, &baselines);
        assert!(table.contains("NOISY RUN"), "{table}");
        assert!(table.contains("g/baseline (start) (+20%)"), "{table}");
        assert_eq!(row(&rows, "hit").delta_ns, Some(170.0));
    }

    #[test]
    fn a_peer_with_its_own_types_is_measured_over_the_baseline_before_it() {
        // The shape of the token bucket's bench: tower_governor wants axum's body, so
        // it follows a baseline of that type; our layer is measured on both.
        let (rows, baselines) = summarize(&run_of(&[
            ("1-thread", "baseline-start", 30.0),
            ("1-thread", "layer-global", 70.0),
            ("1-thread", "layer-keys-1000", 120.0),
            ("1-thread", "axum-baseline", 50.0),
            ("1-thread", "tower_governor-global", 115.0),
            ("1-thread", "layer-global-axum-body", 90.0),
            ("1-thread", "timeout", 80.0),
            ("1-thread", "baseline-end", 31.0),
        ]));
        // Ours follows the order of the run only when its id names the baseline.
        assert_eq!(
            row(&rows, "timeout").baseline_id.as_deref(),
            Some("baseline-start")
        );
        assert_eq!(baselines.len(), 2);
        let peer = row(&rows, "tower_governor-global");
        assert_eq!(peer.baseline_id.as_deref(), Some("axum-baseline"));
        assert_eq!(peer.delta_ns, Some(65.0));
        let axum = row(&rows, "layer-global-axum-body");
        assert_eq!(axum.baseline_id.as_deref(), Some("axum-baseline"));
        assert_eq!(axum.delta_ns, Some(40.0));
        let plain = row(&rows, "layer-global");
        assert_eq!(plain.baseline_id.as_deref(), Some("baseline-start"));
        assert_eq!(plain.delta_ns, Some(40.0));
        // Deltas compare across baselines: both of ours add 40 ns, the peer 65.
        assert_eq!(plain.versus.len(), 1);
        assert!((plain.versus[0].1 + 25.0).abs() < 1e-12);
        assert!((axum.versus[0].1 + 25.0).abs() < 1e-12);
        // Keyed limiting has no peer here: tower_governor is paired by "global".
        assert!(row(&rows, "layer-keys-1000").versus.is_empty());
        assert_eq!(row(&rows, "baseline-end").delta_ns, Some(1.0));
        assert_eq!(row(&rows, "axum-baseline").delta_ns, Some(0.0));
        let table = render(&rows, &baselines);
        assert!(table.contains("| +65.0 (vs axum-baseline) |"), "{table}");
    }

    #[test]
    fn ours_pairs_with_the_peer_that_measures_the_same_thing() {
        let (rows, _) = summarize(&run_of(&[
            ("one_thread", "baseline_start", 30.0),
            ("one_thread", "priority_queue", 150.0),
            ("one_thread", "tower_concurrency_limit", 70.0),
            ("one_thread", "retry", 90.0),
            ("one_thread", "tower_retry", 110.0),
            ("one_thread", "baseline_end", 30.0),
        ]));
        let peers = |id: &str| -> Vec<String> {
            row(&rows, id).versus.iter().map(|v| v.0.clone()).collect()
        };
        assert_eq!(peers("retry"), ["tower_retry"]);
        assert_eq!(peers("priority_queue"), ["tower_concurrency_limit"]);
    }

    #[test]
    fn the_table_has_one_line_per_result() {
        let (rows, baselines) = summarize(&run_of(&[
            ("b", "baseline", 30.0),
            ("b", "ours", 33.0),
            ("a", "alone", 12.0),
            ("b", "tower ConcurrencyLimit", 70.0),
            ("b", "baseline_end", 31.0),
        ]));
        let table = render(&rows, &baselines);
        let lines: Vec<&str> = table.lines().take_while(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 2 + 5);
        assert_eq!(
            lines[0],
            "| group | bench | kind | median (ns) | - baseline (ns) | / baseline | vs peer |"
        );
        assert!(lines.iter().all(|l| l.matches('|').count() == 8), "{table}");
        // Groups in order, rows in run order; a group without a baseline says so.
        assert!(lines[2].starts_with("| a | alone | ours | 12.0 | no baseline |"));
        assert!(lines[3].starts_with("| b | baseline | baseline | 30.0 | reference |"));
        assert!(table.contains("| b | ours | ours | 33.0 | +3.0 ~ | x1.10 | `tower ConcurrencyLimit`: -37.0 ns, x0.07 its overhead |"), "{table}");
        assert!(table.contains("| b | tower ConcurrencyLimit | peer | 70.0 | +40.0 | x2.33 |  |"));
        assert!(lines[6].starts_with("| b | baseline_end | baseline | 31.0 | +1.0 ~ |"));
        assert!(table.contains("agree within 10% in all 1 group(s)"));
    }

    #[test]
    fn a_crate_names_its_groups() {
        let mut ms = run_of(&[
            ("1-thread", "baseline-start", 30.0),
            ("1-thread", "x", 40.0),
        ]);
        ms[0].krate = "tower-breaker".to_owned();
        ms[1].krate = "tower-breaker".to_owned();
        let mut other = run_of(&[("1-thread", "baseline-start", 60.0)]);
        other[0].krate = "tower-token-bucket".to_owned();
        ms.extend(other);
        let (rows, _) = summarize(&ms);
        assert_eq!(rows[0].group, "tower-breaker: 1-thread");
        assert_eq!(row(&rows, "x").delta_ns, Some(10.0));
        assert_eq!(
            collisions(&ms),
            ["1-thread/baseline-start (tower-breaker, tower-token-bucket)"]
        );
        assert_eq!(group_label("tower-red-metrics", ""), "tower-red-metrics");
    }

    #[test]
    fn ungrouped_ids_split_at_their_first_segment() {
        assert_eq!(
            ungrouped("contended/red_metrics"),
            ("contended".to_owned(), "red_metrics".to_owned())
        );
        assert_eq!(
            ungrouped("baseline/start"),
            (String::new(), "baseline/start".to_owned())
        );
        assert_eq!(
            ungrouped("red_metrics"),
            (String::new(), "red_metrics".to_owned())
        );
    }

    #[test]
    fn results_are_read_from_criterions_directories() {
        let root = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let criterion = root.join("criterion");
        let write = |dir: PathBuf, estimates: &str, benchmark: Option<&str>| {
            let new = dir.join("new");
            std::fs::create_dir_all(&new).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(new.join("estimates.json"), estimates).unwrap_or_else(|e| panic!("{e}"));
            if let Some(b) = benchmark {
                std::fs::write(new.join("benchmark.json"), b).unwrap_or_else(|e| panic!("{e}"));
            }
        };
        let estimates = |ns: f64| {
            format!(
                r#"{{"mean":{{"point_estimate":{}}},"median":{{"point_estimate":{ns},"standard_error":1.0}}}}"#,
                ns + 1.0
            )
        };
        write(
            criterion.join("limiter").join("tower_governor"),
            &estimates(95.5),
            Some(r#"{"group_id":"limiter","function_id":"tower_governor","value_str":null}"#),
        );
        write(
            criterion.join("cache").join("hit").join("100"),
            &estimates(150.0),
            Some(r#"{"group_id":"cache","function_id":"hit","value_str":"100"}"#),
        );
        write(
            criterion.join("contended_red_metrics"),
            &estimates(80.0),
            Some(r#"{"group_id":"contended/red_metrics","function_id":null,"value_str":null}"#),
        );
        write(
            criterion.join("queue").join("admit"),
            &estimates(61.0),
            None,
        );
        // Criterion's own report pages are not results.
        write(criterion.join("report").join("x"), &estimates(1.0), None);
        let found = collect(&criterion, None).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&root);
        let found: Vec<(&str, &str, f64)> = found
            .iter()
            .map(|m| (m.group.as_str(), m.id.as_str(), m.median_ns))
            .collect();
        assert_eq!(
            found,
            [
                ("cache", "hit/100", 150.0),
                ("contended", "red_metrics", 80.0),
                ("limiter", "tower_governor", 95.5),
                ("queue", "admit", 61.0),
            ]
        );
        assert!(
            collect(&root.join("nowhere"), None).is_ok_and(|v| v.is_empty()),
            "a missing directory has no results"
        );
    }
}
