//! `deploy/`: the Prometheus rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`: each alert fires on a broken series and stays silent on a
//! healthy one), every alert links its runbook section, and every metric the rules and the
//! Grafana board query is one the demo's `/metrics` really exports after some traffic.
//!
//! The promtool checks need promtool (Debian package `prometheus`). Without it they are
//! skipped with a note, unless `HEALTH_AI_REQUIRE_PROMTOOL=1` (CI sets it), which makes
//! them fail.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::body::Body;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::gateway;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Runs promtool with `args` in `deploy/prometheus`; `None` when it is not installed
/// (and not required).
fn promtool(args: &[&str]) -> Option<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => {
            assert!(
                std::env::var_os("HEALTH_AI_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here but cannot run: {error}"
            );
            eprintln!(
                "promtool not found ({error}): `promtool {}` skipped",
                args.join(" ")
            );
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    Some(text)
}

#[test]
fn the_rules_are_valid_and_their_unit_tests_pass() {
    if let Some(text) = promtool(&["check", "rules", "rules.yml"]) {
        assert!(text.contains("SUCCESS"), "{text}");
    }
    if let Some(text) = promtool(&["test", "rules", "tests.yml"]) {
        assert!(text.contains("SUCCESS"), "{text}");
    }
}

/// The alerts of `rules.yml`, with their `runbook_url`s.
fn alerts(rules: &str) -> Vec<(String, String)> {
    let mut alerts: Vec<(String, String)> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push((name.to_owned(), String::new()));
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            alerts.last_mut().expect("runbook_url after its alert").1 = url.to_owned();
        }
    }
    alerts
}

#[test]
fn every_alert_is_tested_and_links_its_runbook_section() {
    let rules = read("deploy/prometheus/rules.yml");
    let tests = read("deploy/prometheus/tests.yml");
    let runbook = read("docs/runbook.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    let alerts = alerts(&rules);
    assert_eq!(alerts.len(), 7, "{alerts:?}");
    for (alert, url) in alerts {
        let anchor = url
            .strip_prefix(
                "https://github.com/tower-health-ai/tower-health-ai/blob/main/docs/runbook.md#",
            )
            .unwrap_or_else(|| panic!("{alert}: runbook_url {url:?} is not docs/runbook.md"));
        assert_eq!(anchor, alert.to_lowercase(), "{alert}: its own section");
        assert!(
            anchors.contains(anchor),
            "{alert}: docs/runbook.md has no `## {alert}` section"
        );
        // Fires in the unit tests. (Silence is checked by promtool itself: each firing
        // case lists every alert expected, so a healthy series beside the broken one, or
        // a healthy test group, that raised the alert would fail the test.)
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "{alert} never fires in tests.yml"
        );
    }
}

/// The metric names a `PromQL` expression reads: identifiers that are not functions,
/// keywords, label names, label values, durations or dashboard variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, and aggregations (which may be followed by `by (...)` before their `(`).
    const KEYWORDS: [&str; 19] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_group = |mut i: usize, open: u8, close: u8| {
        let mut depth = 0;
        while i < bytes.len() {
            if bytes[i] == open {
                depth += 1;
            } else if bytes[i] == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            } else if bytes[i] == b'"' {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'{' => i = skip_group(i, b'{', b'}'),
            b'[' => i = skip_group(i, b'[', b']'),
            b'"' | b'\'' => {
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'$' => {
                i += 1;
                while i < bytes.len() && ident(bytes[i]) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                while i < bytes.len() && (ident(bytes[i]) || bytes[i] == b'.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < bytes.len() && ident(bytes[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut next = i;
                while next < bytes.len() && bytes[next].is_ascii_whitespace() {
                    next += 1;
                }
                let called = bytes.get(next) == Some(&b'(');
                if GROUPING.contains(&word) {
                    if called {
                        i = skip_group(next, b'(', b')');
                    }
                } else if KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    if word == "offset" {
                        // Skip its duration.
                        while next < bytes.len() && !bytes[next].is_ascii_whitespace() {
                            next += 1;
                        }
                        i = next;
                    }
                } else if !called {
                    names.insert(word.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_promql_name_reader_finds_metrics_and_only_metrics() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, route) (rate(http_request_duration_seconds_bucket{route=~"$route", x="a{b}"}[$__rate_interval]))) > on() group_left scalar(health_ai:target) * 3600 * $cost and up offset 5m"#,
    );
    let expected: BTreeSet<String> = [
        "http_request_duration_seconds_bucket",
        "health_ai:target",
        "up",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(names, expected);
}

/// Every `expr` of the rules file (one-line, or a folded block under `expr: >-`).
fn rule_exprs(rules: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr: ") else {
            continue;
        };
        if value == ">-" || value == "|" {
            let indent = line.len() - line.trim_start().len();
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                if next.len() - next.trim_start().len() <= indent || next.trim().is_empty() {
                    break;
                }
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            }
            exprs.push(block);
        } else {
            exprs.push(value.to_owned());
        }
    }
    exprs
}

/// Every `expr` in the Grafana board's panels.
fn board_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => board_exprs(value, out),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|value| board_exprs(value, out)),
        _ => {}
    }
}

/// The metric families `/metrics` exports, histogram series (`_bucket`, `_sum`, `_count`)
/// included.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_and_the_rules_read_only_metrics_the_demo_exports() {
    // Before the stack: its layers resolve their metric handles when built.
    let prometheus = tower_health_ai::install_prometheus().unwrap();
    let args = GatewayArgs::parse_from([
        "gateway",
        "--sim-latency-ms",
        "2-5",
        "--sim-failure-rate",
        "0.5",
        "--per-user-rps",
        "1000",
        "--global-rps",
        "1000",
        "--breaker-failures",
        "2",
    ]);
    let gateway = gateway::from_args(&args, Some(prometheus)).await.unwrap();
    for wave in [0..6, 0..12] {
        let calls: Vec<_> = wave
            .map(|i| {
                let router = gateway.router.clone();
                tokio::spawn(async move {
                    let request =
                        Request::post(format!("/api/health-records/rec-{}/analyze", i % 6))
                            .header("x-user-id", "ada")
                            .body(Body::empty())
                            .unwrap();
                    router.oneshot(request).await.unwrap().status()
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), StatusCode::OK);
        }
    }
    let response = gateway
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let exported = exported(&text);

    // Recording rules may read each other; everything else must be exported.
    let rules = read("deploy/prometheus/rules.yml");
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect();
    let mut board = Vec::new();
    board_exprs(
        &serde_json::from_str(&read("deploy/grafana/health-ai.json")).unwrap(),
        &mut board,
    );
    assert!(board.len() >= 20, "{board:?}");
    let mut read_by_board = BTreeSet::new();
    for (file, exprs, allowed) in [
        ("rules.yml", rule_exprs(&rules), &recorded),
        ("health-ai.json", board, &BTreeSet::new()),
    ] {
        assert!(!exprs.is_empty());
        for expr in &exprs {
            let names = metric_names(expr);
            assert!(
                !names.is_empty() || expr.starts_with("vector("),
                "{file}: {expr}"
            );
            for name in names {
                assert!(
                    exported.contains(&name) || allowed.contains(&name),
                    "{file}: `{expr}` reads `{name}`, which /metrics does not export:\n{text}"
                );
                if file == "health-ai.json" {
                    read_by_board.insert(name);
                }
            }
        }
    }
    // The board shows the live page's panels.
    for family in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "cache_requests_total",
        "queue_depth",
        "queue_limit",
        "circuit_state",
        "circuit_transitions_total",
        "degraded_total",
        "circuit_calls_total",
    ] {
        assert!(
            read_by_board.contains(family),
            "the board never reads {family}"
        );
    }
}
