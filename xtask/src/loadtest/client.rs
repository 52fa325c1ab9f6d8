//! The loadtest's HTTP side: sends the workload to a running gateway, open loop, and
//! records what each request got.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::stats::{CacheStatus, Observation, Outcome, classify};
use super::workload::Arrival;

/// An HTTP/1 client with a connection pool; requests carry no body.
pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The largest answer body read: the gateway's answers are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;

/// What one answer said.
#[derive(Debug)]
struct Answer {
    status: u16,
    source: Option<String>,
    cache: Option<CacheStatus>,
    detail: Option<String>,
}

async fn send(
    client: &HttpClient,
    request: http::Request<Empty<Bytes>>,
) -> Result<(http::response::Parts, Bytes), String> {
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    Ok((parts, body))
}

/// `GET {base}{path}`, expecting a 200; returns the body.
async fn get(client: &HttpClient, base: &str, path: &str) -> Result<Bytes, String> {
    let url = format!("{base}{path}");
    let request = http::Request::get(&url)
        .body(Empty::new())
        .map_err(|e| format!("bad URL {url}: {e}"))?;
    let (parts, body) = send(client, request)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if parts.status != http::StatusCode::OK {
        return Err(format!("GET {url} answered {}", parts.status));
    }
    Ok(body)
}

/// `GET {base}{path}`, expecting a 200 with a JSON body.
pub(crate) async fn get_json(client: &HttpClient, base: &str, path: &str) -> Result<Value, String> {
    let body = get(client, base, path).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {base}{path} did not answer JSON: {e}"))
}

/// `GET {base}{path}`, expecting a 200 with a text body.
pub(crate) async fn get_text(
    client: &HttpClient,
    base: &str,
    path: &str,
) -> Result<String, String> {
    let body = get(client, base, path).await?;
    String::from_utf8(body.to_vec()).map_err(|e| format!("GET {base}{path} is not UTF-8: {e}"))
}

async fn analyze(client: &HttpClient, base: &str, arrival: &Arrival) -> Result<Answer, String> {
    let record_id = arrival.record_id();
    let url = format!("{base}/api/health-records/{record_id}/analyze");
    let request = http::Request::post(&url)
        .header("x-user-id", arrival.user_id())
        .header("x-priority", arrival.priority.as_str())
        .body(Empty::new())
        .map_err(|e| format!("bad request to {url}: {e}"))?;
    let (parts, body) = send(client, request).await?;
    let cache = parts
        .headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .and_then(CacheStatus::parse);
    let status = parts.status.as_u16();
    let mut answer = Answer {
        status,
        source: None,
        cache,
        detail: None,
    };
    if status == 200 {
        match serde_json::from_slice::<Value>(&body) {
            Ok(json) if json["recordId"].as_str() != Some(&record_id) => {
                answer.detail = Some(format!(
                    "a 200 for {record_id} carried recordId {}",
                    json["recordId"]
                ));
            }
            Ok(json) => match json["source"].as_str() {
                Some(source @ ("ai" | "fallback")) => answer.source = Some(source.to_owned()),
                _ => {
                    answer.detail = Some(format!(
                        "a 200 whose source is {}, neither \"ai\" nor \"fallback\"",
                        json["source"]
                    ));
                }
            },
            Err(e) => answer.detail = Some(format!("a 200 whose body is not JSON: {e}")),
        }
    } else if !matches!(status, 429 | 502 | 503 | 504) {
        let text = String::from_utf8_lossy(&body);
        answer.detail = Some(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    Ok(answer)
}

/// Live counts for the progress line.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicUsize,
    done: [AtomicUsize; 6],
    finished: AtomicBool,
}

const OUTCOMES: [Outcome; 6] = [
    Outcome::Real,
    Outcome::Fallback,
    Outcome::Refused,
    Outcome::Failed,
    Outcome::TimedOut,
    Outcome::Error,
];

fn slot(outcome: Outcome) -> usize {
    OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(5)
}

impl Progress {
    fn line(&self, label: &str, total: usize, elapsed_secs: f64, scale: f64) -> String {
        let sent = self.sent.load(Ordering::Relaxed);
        let [real, fallback, refused, failed, timed_out, errors] =
            self.done.each_ref().map(|d| d.load(Ordering::Relaxed));
        let done = real + fallback + refused + failed + timed_out + errors;
        // Whole minutes of a run that lasts minutes (or days): no truncation in practice.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let minutes = (elapsed_secs / scale / 60.0) as u64;
        // Short enough for an 80-column terminal, where a wrapped line cannot be redrawn.
        format!(
            "[{label}] {minutes} min  sent {sent}/{total}  open {}  real {real}  fallback {fallback}  refused {refused}  failed {failed}  other {}",
            sent.saturating_sub(done),
            timed_out + errors
        )
    }
}

/// Sends every arrival at its time (scaled), without waiting for earlier answers, and
/// returns one observation per arrival, in the order the answers came. Latencies and
/// times are unscaled: measured seconds divided by `scale`.
pub(crate) async fn drive(
    client: &HttpClient,
    base: &str,
    arrivals: &[Arrival],
    scale: f64,
    client_timeout: Duration,
    label: &str,
) -> Vec<Observation> {
    drive_round_robin(
        client,
        &[base.to_owned()],
        arrivals,
        scale,
        client_timeout,
        label,
    )
    .await
}

/// As [`drive`], arrival `i` going to `bases[i % bases.len()]`: a load balancer's
/// round robin over several gateways.
pub(crate) async fn drive_round_robin(
    client: &HttpClient,
    bases: &[String],
    arrivals: &[Arrival],
    scale: f64,
    client_timeout: Duration,
    label: &str,
) -> Vec<Observation> {
    let progress = Arc::new(Progress::default());
    let start = Instant::now();
    let reporter = tokio::spawn(report(
        Arc::clone(&progress),
        label.to_owned(),
        arrivals.len(),
        start,
        scale,
    ));
    let bases: Vec<Arc<str>> = bases.iter().map(|b| Arc::from(b.as_str())).collect();
    let mut tasks = JoinSet::new();
    for (index, arrival) in arrivals.iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(arrival.at_secs * scale)).await;
        let Some(base) = bases.get(index % bases.len().max(1)) else {
            break;
        };
        let (client, base, arrival, progress) = (
            client.clone(),
            Arc::clone(base),
            arrival.clone(),
            Arc::clone(&progress),
        );
        progress.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let sent = Instant::now();
            let result =
                tokio::time::timeout(client_timeout, analyze(&client, &base, &arrival)).await;
            let latency_secs = sent.elapsed().as_secs_f64() / scale;
            let sent_at_secs = (sent - start).as_secs_f64() / scale;
            let observation = match result {
                Ok(Ok(answer)) => Observation {
                    index,
                    sent_at_secs,
                    latency_secs,
                    status: Some(answer.status),
                    outcome: if answer.detail.is_some() {
                        Outcome::Error
                    } else {
                        classify(Some(answer.status), answer.source.as_deref())
                    },
                    cache: answer.cache,
                    detail: answer.detail,
                },
                Ok(Err(e)) => Observation {
                    index,
                    sent_at_secs,
                    latency_secs,
                    status: None,
                    outcome: Outcome::Error,
                    cache: None,
                    detail: Some(e),
                },
                Err(_) => Observation {
                    index,
                    sent_at_secs,
                    latency_secs,
                    status: None,
                    outcome: Outcome::TimedOut,
                    cache: None,
                    detail: Some(format!(
                        "no answer within {:.0} s (unscaled), the client's timeout",
                        client_timeout.as_secs_f64() / scale
                    )),
                },
            };
            progress.done[slot(observation.outcome)].fetch_add(1, Ordering::Relaxed);
            observation
        });
    }
    let mut observations = Vec::with_capacity(arrivals.len());
    while let Some(joined) = tasks.join_next().await {
        // A task that panicked has no observation: the accounting reports it as lost.
        if let Ok(observation) = joined {
            observations.push(observation);
        }
    }
    progress.finished.store(true, Ordering::Relaxed);
    let _ = reporter.await;
    observations
}

/// Redraws one progress line on a terminal; elsewhere (CI, a pipe) prints a line every
/// ten seconds.
async fn report(progress: Arc<Progress>, label: String, total: usize, start: Instant, scale: f64) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(10)
    };
    let mut stderr = std::io::stderr();
    loop {
        let finished = progress.finished.load(Ordering::Relaxed);
        let line = progress.line(&label, total, start.elapsed().as_secs_f64(), scale);
        // Progress is best effort: a closed stderr must not stop the run.
        if terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
            if finished {
                let _ = writeln!(stderr);
            }
            let _ = stderr.flush();
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        if finished {
            return;
        }
        let deadline = Instant::now() + every;
        while Instant::now() < deadline && !progress.finished.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100).min(every)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_counts_what_is_in_flight() {
        let progress = Progress::default();
        progress.sent.store(10, Ordering::Relaxed);
        progress.done[slot(Outcome::Real)].store(5, Ordering::Relaxed);
        progress.done[slot(Outcome::Refused)].store(2, Ordering::Relaxed);
        let line = progress.line("after", 20, 30.0, 0.01);
        assert_eq!(
            line,
            "[after] 50 min  sent 10/20  open 3  real 5  fallback 0  refused 2  failed 0  other 0"
        );
    }
}
