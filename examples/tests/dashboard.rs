//! `GET /dashboard`: the page is self-contained, and, opened in headless Chromium against a
//! gateway that has served traffic, shows the figures `/api/metrics` gives and the
//! breaker's state.
//!
//! The browser check needs Chromium (Debian package `chromium`; another binary through
//! `HEALTH_AI_CHROMIUM`). Without it the check is skipped with a note, unless
//! `HEALTH_AI_REQUIRE_CHROMIUM=1` (CI sets it), which makes it fail.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use clap::Parser;
use health_ai_examples::cli::GatewayArgs;
use health_ai_examples::dashboard::DASHBOARD_HTML;
use health_ai_examples::gateway;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long one Chromium run may take before the test gives up on it.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn the_page_loads_nothing_from_the_network() {
    // Only relative fetches: no CDN, no font, no image from elsewhere.
    for needle in [
        "http://", "https://", "//cdn", "<link", "src=", "@import", "url(",
    ] {
        assert!(
            !DASHBOARD_HTML.contains(needle),
            "the dashboard must be self-contained, found {needle:?}"
        );
    }
    assert!(DASHBOARD_HTML.contains(r#"fetch("/api/metrics""#));
}

#[tokio::test]
async fn the_page_is_served_as_html_locked_to_its_origin() {
    let args = GatewayArgs::parse_from(["gateway"]);
    let gateway = gateway::from_args(&args, None).await.unwrap();
    let response = gateway
        .router
        .oneshot(Request::get("/dashboard").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, DASHBOARD_HTML.as_bytes());
}

/// The browser to use: `HEALTH_AI_CHROMIUM`, else the first Chromium on the `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HEALTH_AI_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name))
        })
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout.
fn run_chromium(browser: &Path, profile: &Path, url: &str, extra: &[&str]) -> String {
    // A fresh profile: no lock or state left by an earlier run.
    let _ = std::fs::remove_dir_all(profile);
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--window-size=1440,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", browser.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish within {BROWSER_TIMEOUT:?}",
                browser.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap().unwrap();
    let stderr = err.join().unwrap().unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    stdout
}

/// The start tag of the element with this `id` in a serialized DOM.
fn tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let needle = format!(r#"id="{id}""#);
    let at = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("no element {id} in the page"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

/// The `data-value` of the element with this `id`.
fn value<'a>(dom: &'a str, id: &str) -> &'a str {
    let tag = tag(dom, id);
    let at = tag
        .find(r#"data-value=""#)
        .unwrap_or_else(|| panic!("{id} has no data-value: {tag}"))
        + r#"data-value=""#.len();
    &tag[at..at + tag[at..].find('"').unwrap()]
}

/// The text right inside the element with this `id` (up to its first child tag).
fn text<'a>(dom: &'a str, id: &str) -> &'a str {
    let tag = tag(dom, id);
    let at = dom.find(tag).unwrap() + tag.len();
    &dom[at..at + dom[at..].find('<').unwrap()]
}

fn number(dom: &str, id: &str) -> f64 {
    let raw = value(dom, id);
    raw.parse()
        .unwrap_or_else(|error| panic!("{id} shows {raw:?}, not a number: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_metrics_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("HEALTH_AI_REQUIRE_CHROMIUM").is_none(),
            "HEALTH_AI_REQUIRE_CHROMIUM is set but no Chromium was found \
             (install the Debian package `chromium`, or set HEALTH_AI_CHROMIUM)"
        );
        eprintln!("chromium not found: the dashboard's browser check is skipped");
        return;
    };

    // A fast provider that fails half its calls, no limits in the way of the traffic.
    let args = GatewayArgs::parse_from([
        "gateway",
        "--sim-latency-ms",
        "5-15",
        "--sim-failure-rate",
        "0.5",
        "--per-user-rps",
        "1000",
        "--global-rps",
        "1000",
        "--retry-attempts",
        "1",
        "--breaker-failures",
        "1000",
    ]);
    let gateway = gateway::from_args(&args, None).await.unwrap();
    let handle = gateway.handle.clone().expect("the stack runs");

    // Traffic: 8 records, then each twice more, so that some answers are cache hits.
    for wave in [0..8, 8..24] {
        let calls: Vec<_> = wave
            .map(|i| {
                let router = gateway.router.clone();
                tokio::spawn(async move {
                    let request =
                        Request::post(format!("/api/health-records/rec-{}/analyze", i % 8))
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
    // The operator opens the circuit: the page must say so.
    handle.breaker().force_open();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway::serve(listener, gateway.router.clone(), async {
        let _ = stopped.await;
    }));

    let before = serde_json::to_value(handle.metrics()).unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let screenshot = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("{base}/dashboard");
    // The DOM after three refreshes (virtual time: no real wait), and a screenshot, at once.
    let dom = {
        let (browser, profile, url) = (browser.clone(), shots.join("profile-dom"), url.clone());
        tokio::task::spawn_blocking(move || {
            run_chromium(
                &browser,
                &profile,
                &url,
                &["--virtual-time-budget=3000", "--dump-dom"],
            )
        })
    };
    let shot = {
        let (browser, profile, url) = (browser.clone(), shots.join("profile-shot"), url.clone());
        let arg = format!("--screenshot={}", screenshot.display());
        tokio::task::spawn_blocking(move || {
            run_chromium(
                &browser,
                &profile,
                &url,
                &["--virtual-time-budget=3000", &arg],
            )
        })
    };
    let dom = dom.await.unwrap();
    shot.await.unwrap();
    let metrics = serde_json::to_value(handle.metrics()).unwrap();
    assert_eq!(
        before, metrics,
        "no traffic while the page is read: the figures hold still"
    );

    // The page refreshed (more than once: the refresh loop runs).
    let refreshes: u32 = {
        let at = dom.find(r#"data-refreshes=""#).unwrap() + r#"data-refreshes=""#.len();
        dom[at..at + dom[at..].find('"').unwrap()].parse().unwrap()
    };
    assert!(
        refreshes >= 2,
        "the page refreshed {refreshes} times:\n{dom}"
    );
    assert!(
        text(&dom, "error").is_empty(),
        "the page could not read its figures: {}",
        text(&dom, "error")
    );

    // The figures are not trivial...
    let requests = &metrics["requests"];
    assert_eq!(requests["total"], 24);
    assert!(metrics["cache"]["hits"].as_u64().unwrap() > 0, "{metrics}");
    assert!(metrics["cost"]["upstreamCalls"].as_u64().unwrap() > 0);
    assert!(
        metrics["degraded"]["total"].as_u64().unwrap() > 0,
        "{metrics}"
    );
    assert!(metrics["duration"]["p95"].as_f64().unwrap() > 0.0);

    // ...and the page shows each one as /api/metrics gives it.
    let pairs: [(&str, &Value); 27] = [
        ("req-total", &requests["total"]),
        ("req-success", &requests["success"]),
        ("req-errors", &requests["errors"]),
        ("req-limited", &requests["rateLimited"]),
        ("error-rate", &requests["errorRate"]),
        ("p50", &metrics["duration"]["p50"]),
        ("p95", &metrics["duration"]["p95"]),
        ("p99", &metrics["duration"]["p99"]),
        ("hit-rate", &metrics["cache"]["hitRate"]),
        ("cache-hits", &metrics["cache"]["hits"]),
        ("cache-misses", &metrics["cache"]["misses"]),
        ("cache-coalesced", &metrics["cache"]["coalesced"]),
        ("degraded-total", &metrics["degraded"]["total"]),
        (
            "degraded-upstreamFailure",
            &metrics["degraded"]["upstreamFailure"],
        ),
        ("degraded-circuitOpen", &metrics["degraded"]["circuitOpen"]),
        ("spent-usd", &metrics["cost"]["spentUsd"]),
        ("saved-usd", &metrics["cost"]["savedUsd"]),
        ("upstream-calls", &metrics["cost"]["upstreamCalls"]),
        ("queue-processing", &metrics["queue"]["processing"]),
        ("queue-limit", &metrics["queue"]["limit"]),
        ("queue-size", &metrics["queue"]["queueSize"]),
        ("queue-urgent", &metrics["queue"]["urgent"]),
        ("queue-high", &metrics["queue"]["high"]),
        ("queue-normal", &metrics["queue"]["normal"]),
        ("queue-low", &metrics["queue"]["low"]),
        (
            "breaker-failures",
            &metrics["circuitBreaker"]["consecutiveFailures"],
        ),
        (
            "breaker-rejected",
            &metrics["circuitBreaker"]["rejectedCalls"],
        ),
    ];
    for (id, expected) in pairs {
        let expected = expected
            .as_f64()
            .unwrap_or_else(|| panic!("{id}: {expected} is not a number"));
        let shown = number(&dom, id);
        assert!(
            (shown - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{id}: the page shows {shown}, /api/metrics says {expected}"
        );
    }

    // What a reader sees: the state, counts with separators, dollars, percentages.
    assert_eq!(value(&dom, "breaker-state"), "OPEN");
    assert!(
        text(&dom, "breaker-state").starts_with("OPEN"),
        "{}",
        tag(&dom, "breaker-state")
    );
    assert!(tag(&dom, "breaker-state").contains("s-OPEN"));
    assert_eq!(text(&dom, "req-total"), "24");
    let spent = metrics["cost"]["spentUsd"].as_f64().unwrap();
    assert_eq!(text(&dom, "spent-usd"), format!("${spent:.2}"));
    let hit_rate = metrics["cache"]["hitRate"].as_f64().unwrap();
    // A percentage, shown as it is.
    assert_eq!(text(&dom, "hit-rate"), format!("{hit_rate:.1}"));
    let p95 = text(&dom, "p95");
    assert!(p95.ends_with(" ms") || p95.ends_with(" s"), "{p95}");

    // The screenshot is a real PNG of a laptop-sized page.
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a near-empty screenshot: {} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("graceful shutdown")
        .unwrap()
        .unwrap();
}
