//! `cargo xtask bench`: runs every criterion bench, then prints one summary table of
//! what each layer costs over the bare baseline of its own run, and over the peer crate
//! measured beside it.
//!
//! The summary reads what criterion leaves behind:
//! `<target dir>/criterion/<group>/<function>[/<param>]/new/{benchmark,estimates}.json`.
//! It is generic over the benches: within a group, an id containing `baseline` is a
//! reference, an id naming a peer crate is a peer, and every other id is one of ours.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;

/// Differences smaller than this many nanoseconds are noise on the project's machines.
const NOISE_NS: f64 = 10.0;
/// Ratios within this much of 1 are noise too.
const NOISE_RATIO: f64 = 0.20;
/// A start and an end baseline further apart than this make the run noisy.
const BASELINE_DRIFT: f64 = 0.10;

/// One criterion result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measurement {
    pub(crate) group: String,
    /// The function id, with `/param` when there is one.
    pub(crate) id: String,
    pub(crate) median_ns: f64,
}

/// What an id is, within its group.
#[derive(Debug, Clone, PartialEq, Eq)]
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

pub(crate) fn classify(id: &str) -> Kind {
    let id = normalize(id);
    if id.contains("baseline") {
        Kind::Baseline
    } else if PEER_CRATES.iter().any(|m| id.contains(m)) {
        Kind::Peer
    } else if OUR_CRATES.iter().any(|m| id.contains(m)) {
        Kind::Ours
    } else if PEER_LAYERS.iter().any(|m| id.contains(m)) || id.split('_').any(|t| t == "tower") {
        // tower's own layers: `tower::ConcurrencyLimit`, `tower load_shed`.
        Kind::Peer
    } else {
        Kind::Ours
    }
}

/// A baseline's variant: its tokens less `baseline` and the words that place it in the
/// run (start, end...). `baseline_start` and `baseline_end` share the variant "";
/// `baseline_axum_body` is the variant "axum body", the matching baseline of a peer
/// that wants axum's body type.
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

/// The reference of one variant of baseline: its start measurement and, if the run
/// measured it again at the end, that one too.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Baseline {
    pub(crate) start_id: String,
    pub(crate) start_ns: f64,
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
    /// For ours: `(peer id, our delta - its delta, our delta / its delta)` per peer of
    /// the group.
    pub(crate) versus: Vec<(String, f64, Option<f64>)>,
}

/// The summary of every group, in group and id order.
pub(crate) fn summarize(measurements: &[Measurement]) -> (Vec<Row>, Vec<Baseline>) {
    let mut groups: Vec<&str> = measurements.iter().map(|m| m.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut rows = Vec::new();
    let mut all_baselines = Vec::new();
    for group in groups {
        let mut members: Vec<&Measurement> =
            measurements.iter().filter(|m| m.group == group).collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let baselines = baselines_of(&members);
        let reference = |id: &str| -> Option<&Baseline> {
            let own = tokens(id);
            baselines
                .iter()
                .filter(|b| b.variant.iter().all(|t| own.contains(t)))
                .max_by_key(|b| b.variant.len())
                .or_else(|| baselines.iter().find(|b| b.variant.is_empty()))
                .or_else(|| baselines.first())
        };
        let mut group_rows: Vec<Row> = members
            .iter()
            .map(|m| {
                let kind = classify(&m.id);
                let base = if kind == Kind::Baseline {
                    baselines.iter().find(|b| b.variant == variant(&m.id))
                } else {
                    reference(&m.id)
                };
                Row {
                    group: group.to_owned(),
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
        let peers: Vec<(String, f64)> = group_rows
            .iter()
            .filter(|r| r.kind == Kind::Peer)
            .filter_map(|r| r.delta_ns.map(|d| (r.id.clone(), d)))
            .collect();
        for row in group_rows.iter_mut().filter(|r| r.kind == Kind::Ours) {
            if let Some(ours) = row.delta_ns {
                row.versus = peers
                    .iter()
                    .map(|(id, theirs)| {
                        let ratio = (*theirs >= 1.0).then(|| ours / theirs);
                        (id.clone(), ours - theirs, ratio)
                    })
                    .collect();
            }
        }
        rows.extend(group_rows);
        all_baselines.extend(baselines.into_iter().map(|mut b| {
            b.start_id = format!("{group}/{}", b.start_id);
            b
        }));
    }
    (rows, all_baselines)
}

fn baselines_of(members: &[&Measurement]) -> Vec<Baseline> {
    let mut baselines: Vec<Baseline> = Vec::new();
    // Starts first, so that an end finds its start whatever the names' order.
    let mut candidates: Vec<&&Measurement> = members
        .iter()
        .filter(|m| classify(&m.id) == Kind::Baseline)
        .collect();
    candidates.sort_by_key(|m| is_end(&m.id));
    for m in candidates {
        let v = variant(&m.id);
        match baselines.iter_mut().find(|b| b.variant == v) {
            Some(b) if b.end.is_none() => b.end = Some((m.id.clone(), m.median_ns)),
            // A third measurement of the same variant: keep the first two.
            Some(_) => {}
            None => baselines.push(Baseline {
                start_id: m.id.clone(),
                start_ns: m.median_ns,
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
                (
                    format!("{}{}{mark}", if d >= 0.0 { "+" } else { "" }, ns(d)),
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
         noise on these machines. \"vs peer\": our overhead minus the peer's, over each \
         one's own baseline.\n",
    );
    let noisy: Vec<&Baseline> = baselines.iter().filter(|b| b.noisy()).collect();
    let checked = baselines.iter().filter(|b| b.end.is_some()).count();
    if !noisy.is_empty() {
        let which = noisy
            .iter()
            .map(|b| {
                format!(
                    "{} ({:+.0}%)",
                    b.start_id,
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

/// Reads one result directory (the one holding `new/`).
fn read_measurement(criterion: &Path, new_dir: &Path) -> Result<Measurement, String> {
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
            let group = b["group_id"].as_str().unwrap_or_default().to_owned();
            let mut id: Vec<&str> = Vec::new();
            id.extend(b["function_id"].as_str());
            id.extend(b["value_str"].as_str());
            (group, id.join("/"))
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
        group,
        id,
        median_ns,
    })
}

/// Every result under `criterion/`, or only those written since `since`.
pub(crate) fn collect(
    criterion: &Path,
    since: Option<SystemTime>,
) -> Result<Vec<Measurement>, String> {
    let mut found = Vec::new();
    let mut stack = vec![criterion.to_owned()];
    while let Some(dir) = stack.pop() {
        // A result directory holds `new/` (this run), and maybe `base/` and `change/`
        // (comparisons with the run before): only `new/` is read, nothing below it.
        let new = dir.join("new");
        let estimates = new.join("estimates.json");
        if estimates.is_file() {
            let fresh = since.is_none_or(|since| {
                std::fs::metadata(&estimates)
                    .and_then(|m| m.modified())
                    .is_ok_and(|modified| modified >= since)
            });
            if fresh {
                found.push(read_measurement(criterion, &new)?);
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

/// The target directory: `$CARGO_TARGET_DIR`, else what `cargo metadata` says (which
/// follows `build.target-dir` in cargo's configuration).
fn target_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
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
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "`cargo metadata` gave no target_directory".to_owned())
}

/// `cargo xtask bench [--summary-only] [-- ARGS]`.
pub(crate) fn run(summary_only: bool, args: &[String]) -> Result<(), String> {
    let criterion = target_dir()?.join("criterion");
    let since = if summary_only {
        None
    } else {
        // Results older than this run (renamed or filtered-out benches) are left out.
        let started = SystemTime::now();
        let mut argv = vec!["bench", "--workspace", "--locked"];
        if !args.is_empty() {
            argv.push("--");
            argv.extend(args.iter().map(String::as_str));
        }
        crate::cargo(&argv, &[])?;
        Some(started)
    };
    if !criterion.is_dir() {
        return Err(format!(
            "no criterion results in {}: run `cargo xtask bench` first",
            criterion.display()
        ));
    }
    let measurements = collect(&criterion, since)?;
    if measurements.is_empty() {
        return Err(format!(
            "no criterion results{} in {}",
            if since.is_some() {
                " from this run"
            } else {
                ""
            },
            criterion.display()
        ));
    }
    let (rows, baselines) = summarize(&measurements);
    println!("\n{}", render(&rows, &baselines));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(group: &str, id: &str, median_ns: f64) -> Measurement {
        Measurement {
            group: group.to_owned(),
            id: id.to_owned(),
            median_ns,
        }
    }

    #[test]
    fn ids_are_baselines_peers_or_ours() {
        assert_eq!(classify("baseline"), Kind::Baseline);
        assert_eq!(classify("baseline_end"), Kind::Baseline);
        assert_eq!(classify("Baseline (axum body)"), Kind::Baseline);
        assert_eq!(classify("tower_governor"), Kind::Peer);
        assert_eq!(classify("tower_governor/global_key"), Kind::Peer);
        assert_eq!(classify("tower-resilience circuit breaker"), Kind::Peer);
        assert_eq!(classify("resilience_cache"), Kind::Peer);
        assert_eq!(classify("tower::ConcurrencyLimit"), Kind::Peer);
        assert_eq!(classify("tower_concurrency_limit"), Kind::Peer);
        assert_eq!(classify("tower load_shed"), Kind::Peer);
        assert_eq!(classify("axum-prometheus"), Kind::Peer);
        assert_eq!(classify("peer_moka_raw"), Kind::Peer);
        assert_eq!(classify("token_bucket_global"), Kind::Ours);
        assert_eq!(classify("tower-token-bucket/per_key"), Kind::Ours);
        assert_eq!(classify("tower_breaker_closed"), Kind::Ours);
        assert_eq!(classify("priority_queue_concurrency_limit"), Kind::Ours);
        assert_eq!(classify("cache_hit"), Kind::Ours);
        assert_eq!(classify("red_metrics"), Kind::Ours);
    }

    #[test]
    fn each_layer_is_compared_with_its_baseline_and_its_peer() {
        let (rows, baselines) = summarize(&[
            m("limiter", "baseline", 30.0),
            m("limiter", "token_bucket", 80.0),
            m("limiter", "tower_governor", 95.0),
            m("limiter", "baseline_end", 31.0),
        ]);
        assert_eq!(baselines.len(), 1);
        assert_eq!(baselines[0].start_id, "limiter/baseline");
        assert!(!baselines[0].noisy());
        let ours = rows.iter().find(|r| r.id == "token_bucket");
        let Some(ours) = ours else {
            panic!("no row for token_bucket: {rows:?}")
        };
        assert_eq!(ours.kind, Kind::Ours);
        assert_eq!(ours.baseline_id.as_deref(), Some("baseline"));
        assert_eq!(ours.delta_ns, Some(50.0));
        assert!((ours.ratio.unwrap_or_default() - 80.0 / 30.0).abs() < 1e-12);
        assert_eq!(ours.versus.len(), 1);
        let (peer, diff, ratio) = &ours.versus[0];
        assert_eq!(peer, "tower_governor");
        assert!((diff - (50.0 - 65.0)).abs() < 1e-12);
        assert!((ratio.unwrap_or_default() - 50.0 / 65.0).abs() < 1e-12);
        let end = rows.iter().find(|r| r.id == "baseline_end");
        assert_eq!(end.and_then(|r| r.delta_ns), Some(1.0));
    }

    #[test]
    fn a_drifting_baseline_flags_the_run() {
        let (rows, baselines) = summarize(&[
            m("g", "baseline_start", 30.0),
            m("g", "baseline_end", 36.0),
            m("g", "cache_hit", 200.0),
        ]);
        assert!(baselines[0].noisy());
        assert!((baselines[0].drift().unwrap_or_default() - 0.2).abs() < 1e-12);
        let table = render(&rows, &baselines);
        assert!(table.contains("NOISY RUN"), "{table}");
        assert!(table.contains("g/baseline_start (+20%)"), "{table}");
        // The start baseline is the reference, whatever the names' order.
        let hit = rows.iter().find(|r| r.id == "cache_hit");
        assert_eq!(hit.and_then(|r| r.delta_ns), Some(170.0));
    }

    #[test]
    fn a_peer_with_its_own_types_is_measured_over_its_matching_baseline() {
        let (rows, _) = summarize(&[
            m("g", "baseline", 30.0),
            m("g", "baseline_axum_body", 50.0),
            m("g", "tower_governor_axum_body", 115.0),
            m("g", "token_bucket_axum_body", 90.0),
            m("g", "token_bucket", 70.0),
        ]);
        let row = |id: &str| rows.iter().find(|r| r.id == id).cloned();
        let peer = row("tower_governor_axum_body");
        assert_eq!(peer.as_ref().and_then(|r| r.delta_ns), Some(65.0));
        assert_eq!(
            peer.and_then(|r| r.baseline_id).as_deref(),
            Some("baseline_axum_body")
        );
        let ours_axum = row("token_bucket_axum_body");
        assert_eq!(ours_axum.as_ref().and_then(|r| r.delta_ns), Some(40.0));
        let ours = row("token_bucket");
        assert_eq!(ours.as_ref().and_then(|r| r.delta_ns), Some(40.0));
        // Deltas compare across baselines: both layers add 40 ns, the peer 65.
        assert!(ours.is_some_and(|r| (r.versus[0].1 + 25.0).abs() < 1e-12));
        // Both baselines are references: no end measurement, no drift.
        let base = row("baseline_axum_body");
        assert_eq!(base.and_then(|r| r.delta_ns), Some(0.0));
    }

    #[test]
    fn the_table_has_one_line_per_result() {
        let (rows, baselines) = summarize(&[
            m("b", "baseline", 30.0),
            m("b", "ours", 33.0),
            m("a", "alone", 12.0),
            m("b", "baseline_end", 31.0),
            m("b", "tower ConcurrencyLimit", 70.0),
        ]);
        let table = render(&rows, &baselines);
        let lines: Vec<&str> = table.lines().take_while(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 2 + 5);
        assert_eq!(
            lines[0],
            "| group | bench | kind | median (ns) | - baseline (ns) | / baseline | vs peer |"
        );
        assert!(lines.iter().all(|l| l.matches('|').count() == 8), "{table}");
        // Groups in order; a group without a baseline says so.
        assert!(lines[2].starts_with("| a | alone | ours | 12.0 | no baseline |"));
        assert!(lines[3].starts_with("| b | baseline | baseline | 30.0 | reference |"));
        assert!(table.contains("| b | ours | ours | 33.0 | +3.0 ~ | x1.10 | `tower ConcurrencyLimit`: -37.0 ns, x0.07 its overhead |"), "{table}");
        assert!(table.contains("| b | tower ConcurrencyLimit | peer | 70.0 | +40.0 | x2.33 |  |"));
        assert!(table.contains("agree within 10% in all 1 group(s)"));
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
            criterion.join("queue").join("admit"),
            &estimates(61.0),
            None,
        );
        // Criterion's own report pages are not results.
        write(criterion.join("report").join("x"), &estimates(1.0), None);
        let found = collect(&criterion, None).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(
            found,
            vec![
                m("cache", "hit/100", 150.0),
                m("limiter", "tower_governor", 95.5),
                m("queue", "admit", 61.0),
            ]
        );
    }
}
