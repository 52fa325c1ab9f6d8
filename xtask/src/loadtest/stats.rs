//! What the loadtest makes of the answers: one outcome per request, the summary figures
//! and the Markdown table. Pure: no I/O, no clock.

use std::fmt::Write as _;

use serde::Serialize;

/// Where one request ended. Every request sent ends in exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    /// 200 with a real analysis from the provider, fresh or cached.
    Real,
    /// 200 with the local fallback analysis (degraded).
    Fallback,
    /// Refused by the gateway before the provider was asked: 429 (rate limited) or 503
    /// (queue full, circuit open without a fallback).
    Refused,
    /// The provider failed or timed out: 502 or 504.
    Failed,
    /// No answer within the client's own timeout.
    #[serde(rename = "timed-out")]
    TimedOut,
    /// Anything else: a transport error, an unexpected status or an answer that does
    /// not follow the contract.
    Error,
}

/// Classifies an answer from its status and, for a 200, the body's `source`.
/// `status` is `None` when no HTTP answer arrived at all.
pub(crate) fn classify(status: Option<u16>, source: Option<&str>) -> Outcome {
    match (status, source) {
        (Some(200), Some("ai")) => Outcome::Real,
        (Some(200), Some("fallback")) => Outcome::Fallback,
        (Some(429 | 503), _) => Outcome::Refused,
        (Some(502 | 504), _) => Outcome::Failed,
        _ => Outcome::Error,
    }
}

/// The `x-cache` header of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum CacheStatus {
    Hit,
    Miss,
    Stale,
}

impl CacheStatus {
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_uppercase().as_str() {
            "HIT" => Some(Self::Hit),
            "MISS" => Some(Self::Miss),
            "STALE" => Some(Self::Stale),
            _ => None,
        }
    }

    /// A hit or a stale answer: served from the cache, no provider call.
    pub(crate) const fn is_cached(self) -> bool {
        matches!(self, Self::Hit | Self::Stale)
    }
}

/// One request as the client saw it. Times are unscaled seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Observation {
    /// The request's index in the workload.
    pub(crate) index: usize,
    /// When it was really sent, from the start of the run.
    pub(crate) sent_at_secs: f64,
    pub(crate) latency_secs: f64,
    pub(crate) status: Option<u16>,
    pub(crate) outcome: Outcome,
    pub(crate) cache: Option<CacheStatus>,
    /// What went wrong, for [`Outcome::Error`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    pub(crate) sent: usize,
    pub(crate) real: usize,
    pub(crate) fallback: usize,
    pub(crate) refused: usize,
    pub(crate) failed: usize,
    pub(crate) timed_out: usize,
    pub(crate) errors: usize,
    /// From the first request sent to the last answer, unscaled.
    pub(crate) duration_secs: f64,
    /// Over the answered requests (real or fallback).
    pub(crate) avg_latency_secs: Option<f64>,
    pub(crate) p50_latency_secs: Option<f64>,
    pub(crate) p95_latency_secs: Option<f64>,
    pub(crate) max_latency_secs: Option<f64>,
    /// Over the answers served from the cache (hit or stale).
    pub(crate) avg_cached_latency_secs: Option<f64>,
    /// Provider calls billed (run), retries included.
    pub(crate) upstream_calls: u64,
    /// Provider calls refused with 429 for want of capacity: not billed.
    pub(crate) provider_overloaded: u64,
    pub(crate) cost_usd: f64,
    pub(crate) cost_per_request_usd: f64,
    /// Cost over the real analyses served (`None` without any).
    pub(crate) cost_per_real_answer_usd: Option<f64>,
    /// Share of requests sent answered with a real analysis, fresh or cached.
    pub(crate) reliability: f64,
    pub(crate) fallback_share: f64,
    pub(crate) refused_share: f64,
    pub(crate) failed_share: f64,
    pub(crate) timed_out_share: f64,
    pub(crate) error_share: f64,
    /// Real analyses per minute.
    pub(crate) real_per_min: f64,
    /// Answers (real or fallback) per minute.
    pub(crate) answered_per_min: f64,
    /// Requests answered from the cache (hit or stale).
    pub(crate) cache_hits: usize,
    /// Share of the requests sent that were answered from the cache.
    pub(crate) cache_hit_rate: f64,
}

/// The nearest-rank percentile `p` (0-100] of `sorted` (ascending): the smallest value
/// with at least `p`% of the values at or below it.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as f64;
    let rank = (p / 100.0 * n).ceil().clamp(1.0, n);
    // `rank` is a whole number in [1, n].
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = rank as usize - 1;
    sorted.get(index).copied()
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0u32), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / f64::from(count))
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The figures of one run of `sent` requests, with the provider's billed calls
/// (`upstream_calls`) and its 429s for want of capacity (`provider_overloaded`, not billed).
///
/// # Errors
///
/// When the accounting does not close: a request without exactly one observation, or
/// an observation for a request that was never sent. Nothing may be lost.
pub(crate) fn summarize(
    sent: usize,
    observations: &[Observation],
    upstream_calls: u64,
    provider_overloaded: u64,
    cost_per_call_usd: f64,
) -> Result<Summary, String> {
    let mut seen = vec![false; sent];
    for o in observations {
        match seen.get_mut(o.index) {
            Some(seen @ false) => *seen = true,
            Some(true) => return Err(format!("request {} was answered twice", o.index)),
            None => return Err(format!("an answer to request {}, never sent", o.index)),
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        let lost = seen.iter().filter(|s| !**s).count();
        return Err(format!(
            "{lost} of {sent} requests have no outcome (the first is request {missing})"
        ));
    }
    let count = |outcome| observations.iter().filter(|o| o.outcome == outcome).count();
    let (real, fallback, refused, failed, timed_out, errors) = (
        count(Outcome::Real),
        count(Outcome::Fallback),
        count(Outcome::Refused),
        count(Outcome::Failed),
        count(Outcome::TimedOut),
        count(Outcome::Error),
    );
    let total = real + fallback + refused + failed + timed_out + errors;
    if total != sent {
        return Err(format!(
            "the columns add up to {total} for {sent} requests sent"
        ));
    }

    let answered = |o: &&Observation| matches!(o.outcome, Outcome::Real | Outcome::Fallback);
    let from_cache = |o: &&Observation| {
        o.outcome == Outcome::Real && o.cache.is_some_and(CacheStatus::is_cached)
    };
    let mut latencies: Vec<f64> = observations
        .iter()
        .filter(answered)
        .map(|o| o.latency_secs)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let cache_hits = observations.iter().filter(from_cache).count();
    let duration_secs = observations
        .iter()
        .map(|o| o.sent_at_secs + o.latency_secs)
        .fold(0.0, f64::max);
    let minutes = duration_secs / 60.0;
    let per_min = |n: usize| {
        if minutes > 0.0 {
            n as f64 / minutes
        } else {
            0.0
        }
    };
    let cost_usd = upstream_calls as f64 * cost_per_call_usd;
    let cost_per_request_usd = if sent == 0 {
        0.0
    } else {
        cost_usd / sent as f64
    };

    Ok(Summary {
        sent,
        real,
        fallback,
        refused,
        failed,
        timed_out,
        errors,
        duration_secs,
        avg_latency_secs: mean(latencies.iter().copied()),
        p50_latency_secs: percentile(&latencies, 50.0),
        p95_latency_secs: percentile(&latencies, 95.0),
        max_latency_secs: latencies.last().copied(),
        avg_cached_latency_secs: mean(
            observations
                .iter()
                .filter(from_cache)
                .map(|o| o.latency_secs),
        ),
        upstream_calls,
        provider_overloaded,
        cost_usd,
        cost_per_request_usd,
        cost_per_real_answer_usd: (real > 0).then(|| cost_usd / real as f64),
        reliability: share(real, sent),
        fallback_share: share(fallback, sent),
        refused_share: share(refused, sent),
        failed_share: share(failed, sent),
        timed_out_share: share(timed_out, sent),
        error_share: share(errors, sent),
        real_per_min: per_min(real),
        answered_per_min: per_min(real + fallback),
        cache_hits,
        cache_hit_rate: share(cache_hits, sent),
    })
}

fn secs(value: Option<f64>) -> String {
    match value {
        None => "n/a".to_owned(),
        Some(s) if s < 10.0 => format!("{s:.2} s"),
        Some(s) => format!("{s:.1} s"),
    }
}

fn pct(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// `after` relative to `before`, as a signed percentage.
fn relative(before: Option<f64>, after: Option<f64>) -> String {
    match (before, after) {
        (Some(b), Some(a)) if b > 0.0 => format!("{:+.0}%", (a / b - 1.0) * 100.0),
        _ => "n/a".to_owned(),
    }
}

/// `after - before` for two shares, in percentage points.
fn points(before: f64, after: f64) -> String {
    format!("{:+.1} pp", (after - before) * 100.0)
}

fn times(before: f64, after: f64) -> String {
    if before > 0.0 {
        format!("x{:.1}", after / before)
    } else {
        "n/a".to_owned()
    }
}

/// What the seed claimed for each row, before -> after, so that the table puts the
/// measurement next to the claim.
const SEED_CLAIMS: [(&str, &str); 6] = [
    (
        "Average latency (answered)",
        "45-90 s -> under 1 s when cached (98% faster)",
    ),
    ("Average latency (cached answers)", "under 1 s"),
    ("Cost per request", "$0.010 -> $0.004"),
    (
        "Reliability (real analysis, fresh or cached)",
        "70% -> 99%+",
    ),
    (
        "Throughput (real analyses per minute)",
        "2-3/min -> 10-20/min",
    ),
    ("Cache hit rate (of requests sent)", "60-70%"),
];

/// One column of the table: a run and its heading.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column<'a> {
    pub(crate) heading: &'a str,
    /// A word or two for the change column's heading.
    pub(crate) short: &'a str,
    pub(crate) summary: &'a Summary,
}

/// One row: its name, how a run shows in it, and how the last column compares with the
/// first.
struct Row {
    metric: &'static str,
    value: fn(&Summary) -> String,
    change: fn(&Summary, &Summary) -> String,
}

fn dollars(value: f64) -> String {
    format!("${value:.4}")
}

fn no_change(_: &Summary, _: &Summary) -> String {
    String::new()
}

const ROWS: &[Row] = &[
    Row {
        metric: "Requests sent",
        value: |s| s.sent.to_string(),
        change: no_change,
    },
    Row {
        metric: "Answered (real or fallback)",
        value: |s| pct(s.reliability + s.fallback_share),
        change: |b, a| {
            points(
                b.reliability + b.fallback_share,
                a.reliability + a.fallback_share,
            )
        },
    },
    Row {
        metric: "Average latency (answered)",
        value: |s| secs(s.avg_latency_secs),
        change: |b, a| relative(b.avg_latency_secs, a.avg_latency_secs),
    },
    Row {
        metric: "Median latency (answered)",
        value: |s| secs(s.p50_latency_secs),
        change: |b, a| relative(b.p50_latency_secs, a.p50_latency_secs),
    },
    Row {
        metric: "p95 latency (answered)",
        value: |s| secs(s.p95_latency_secs),
        change: |b, a| relative(b.p95_latency_secs, a.p95_latency_secs),
    },
    Row {
        metric: "Latest answer",
        value: |s| secs(s.max_latency_secs),
        change: |b, a| relative(b.max_latency_secs, a.max_latency_secs),
    },
    Row {
        metric: "Average latency (cached answers)",
        value: |s| secs(s.avg_cached_latency_secs),
        change: no_change,
    },
    Row {
        metric: "Cost per request",
        value: |s| dollars(s.cost_per_request_usd),
        change: |b, a| relative(Some(b.cost_per_request_usd), Some(a.cost_per_request_usd)),
    },
    Row {
        metric: "Cost per real answer",
        value: |s| {
            s.cost_per_real_answer_usd
                .map_or_else(|| "n/a".to_owned(), dollars)
        },
        change: |b, a| relative(b.cost_per_real_answer_usd, a.cost_per_real_answer_usd),
    },
    Row {
        metric: "Reliability (real analysis, fresh or cached)",
        value: |s| pct(s.reliability),
        change: |b, a| points(b.reliability, a.reliability),
    },
    Row {
        metric: "Fallback answers",
        value: |s| pct(s.fallback_share),
        change: |b, a| points(b.fallback_share, a.fallback_share),
    },
    Row {
        metric: "Refused (429, 503)",
        value: |s| pct(s.refused_share),
        change: |b, a| points(b.refused_share, a.refused_share),
    },
    Row {
        metric: "Failed (502, 504)",
        value: |s| pct(s.failed_share),
        change: |b, a| points(b.failed_share, a.failed_share),
    },
    Row {
        metric: "No answer within the client's timeout",
        value: |s| pct(s.timed_out_share),
        change: |b, a| points(b.timed_out_share, a.timed_out_share),
    },
    Row {
        metric: "Other errors",
        value: |s| pct(s.error_share),
        change: |b, a| points(b.error_share, a.error_share),
    },
    Row {
        metric: "Throughput (real analyses per minute)",
        value: |s| format!("{:.1}/min", s.real_per_min),
        change: |b, a| times(b.real_per_min, a.real_per_min),
    },
    Row {
        metric: "Throughput (all answers per minute)",
        value: |s| format!("{:.1}/min", s.answered_per_min),
        change: |b, a| times(b.answered_per_min, a.answered_per_min),
    },
    Row {
        metric: "Cache hit rate (of requests sent)",
        value: |s| pct(s.cache_hit_rate),
        change: |b, a| points(b.cache_hit_rate, a.cache_hit_rate),
    },
    Row {
        metric: "Provider calls billed",
        value: |s| s.upstream_calls.to_string(),
        change: |b, a| relative(u64_f64(b.upstream_calls), u64_f64(a.upstream_calls)),
    },
    Row {
        metric: "Provider 429s (at capacity, not billed)",
        value: |s| s.provider_overloaded.to_string(),
        change: no_change,
    },
];

/// The table of runs side by side, in Markdown, with the last column's change against
/// the first. Every figure is in unscaled units.
pub(crate) fn render_table(columns: &[Column<'_>]) -> String {
    let mut out = String::from("| Metric |");
    for column in columns {
        let _ = write!(out, " {} |", column.heading);
    }
    let (first, last) = match (columns.first(), columns.last()) {
        (Some(first), Some(last)) if columns.len() > 1 => (Some(first), Some(last)),
        _ => (None, None),
    };
    if let (Some(first), Some(last)) = (first, last) {
        let _ = write!(out, " Change ({} vs {}) |", last.short, first.short);
    }
    out.push_str(" The seed claimed |\n|---|");
    for _ in columns {
        out.push_str("---:|");
    }
    if first.is_some() {
        out.push_str("---:|");
    }
    out.push_str("---|\n");
    for row in ROWS {
        let claim = SEED_CLAIMS
            .iter()
            .find(|(m, _)| *m == row.metric)
            .map_or("", |(_, claim)| claim);
        // Writing to a String cannot fail.
        let _ = write!(out, "| {} |", row.metric);
        for column in columns {
            let _ = write!(out, " {} |", (row.value)(column.summary));
        }
        if let (Some(first), Some(last)) = (first, last) {
            let _ = write!(out, " {} |", (row.change)(first.summary, last.summary));
        }
        let _ = writeln!(out, " {claim} |");
    }
    out
}

fn u64_f64(n: u64) -> Option<f64> {
    Some(n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(
        index: usize,
        outcome: Outcome,
        cache: Option<CacheStatus>,
        latency: f64,
    ) -> Observation {
        Observation {
            index,
            sent_at_secs: 10.0 * f64::from(u32::try_from(index).unwrap_or(0)),
            latency_secs: latency,
            status: Some(match outcome {
                Outcome::Real | Outcome::Fallback => 200,
                Outcome::Refused => 429,
                Outcome::Failed => 502,
                Outcome::Error => 418,
                Outcome::TimedOut => {
                    return Observation {
                        index,
                        sent_at_secs: 0.0,
                        latency_secs: latency,
                        status: None,
                        outcome,
                        cache,
                        detail: Some("client timeout".to_owned()),
                    };
                }
            }),
            outcome,
            cache,
            detail: None,
        }
    }

    #[test]
    fn answers_are_classified_by_status_and_source() {
        assert_eq!(classify(Some(200), Some("ai")), Outcome::Real);
        assert_eq!(classify(Some(200), Some("fallback")), Outcome::Fallback);
        assert_eq!(classify(Some(200), None), Outcome::Error);
        assert_eq!(classify(Some(200), Some("oracle")), Outcome::Error);
        assert_eq!(classify(Some(429), None), Outcome::Refused);
        assert_eq!(classify(Some(503), None), Outcome::Refused);
        assert_eq!(classify(Some(502), None), Outcome::Failed);
        assert_eq!(classify(Some(504), None), Outcome::Failed);
        assert_eq!(classify(Some(500), None), Outcome::Error);
        assert_eq!(classify(Some(400), None), Outcome::Error);
        assert_eq!(classify(None, None), Outcome::Error);
    }

    #[test]
    fn cache_headers_parse() {
        assert_eq!(CacheStatus::parse("HIT"), Some(CacheStatus::Hit));
        assert_eq!(CacheStatus::parse(" stale"), Some(CacheStatus::Stale));
        assert_eq!(CacheStatus::parse("MISS"), Some(CacheStatus::Miss));
        assert_eq!(CacheStatus::parse("BYPASS"), None);
        assert!(CacheStatus::Stale.is_cached());
        assert!(!CacheStatus::Miss.is_cached());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.1), Some(1.0));
        assert_eq!(percentile(&[3.0, 7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[3.0, 7.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[4.0], 95.0), Some(4.0));
        assert_eq!(percentile(&[], 95.0), None);
        // 20 values: the 95th percentile is the 19th.
        let w: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&w, 95.0), Some(19.0));
    }

    #[test]
    fn every_request_lands_in_exactly_one_column() {
        let observations = vec![
            obs(0, Outcome::Real, Some(CacheStatus::Miss), 60.0),
            obs(1, Outcome::Real, Some(CacheStatus::Hit), 0.05),
            obs(2, Outcome::Real, Some(CacheStatus::Stale), 0.15),
            obs(3, Outcome::Fallback, None, 0.5),
            obs(4, Outcome::Refused, None, 0.01),
            obs(5, Outcome::Failed, None, 70.0),
            obs(6, Outcome::Error, None, 1.0),
            obs(7, Outcome::Real, Some(CacheStatus::Miss), 80.0),
            obs(8, Outcome::TimedOut, None, 100.0),
        ];
        let s = summarize(9, &observations, 4, 0, 0.01).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                s.real,
                s.fallback,
                s.refused,
                s.failed,
                s.timed_out,
                s.errors
            ),
            (4, 1, 1, 1, 1, 1)
        );
        let shares = s.reliability
            + s.fallback_share
            + s.refused_share
            + s.failed_share
            + s.timed_out_share
            + s.error_share;
        assert!((shares - 1.0).abs() < 1e-12);
        assert!((s.reliability - 4.0 / 9.0).abs() < 1e-12);
        assert_eq!(s.cache_hits, 2);
        assert!((s.cache_hit_rate - 2.0 / 9.0).abs() < 1e-12);
        // Answered: 60, 0.05, 0.15, 0.5, 80.
        let avg = (60.0 + 0.05 + 0.15 + 0.5 + 80.0) / 5.0;
        assert!((s.avg_latency_secs.unwrap_or_default() - avg).abs() < 1e-9);
        assert_eq!(s.p95_latency_secs, Some(80.0));
        assert_eq!(s.p50_latency_secs, Some(0.5));
        assert_eq!(s.max_latency_secs, Some(80.0));
        assert!((s.cost_per_real_answer_usd.unwrap_or_default() - 0.01).abs() < 1e-12);
        assert!((s.avg_cached_latency_secs.unwrap_or_default() - 0.1).abs() < 1e-9);
        assert!((s.cost_usd - 0.04).abs() < 1e-12);
        assert!((s.cost_per_request_usd - 0.04 / 9.0).abs() < 1e-12);
        // The last answer: request 7, sent at 70 s, answered 80 s later.
        assert!((s.duration_secs - 150.0).abs() < 1e-9);
        assert!((s.real_per_min - 4.0 / 2.5).abs() < 1e-9);
        assert!((s.answered_per_min - 5.0 / 2.5).abs() < 1e-9);
    }

    #[test]
    fn a_lost_or_doubled_request_is_an_error() {
        let one = obs(0, Outcome::Real, None, 1.0);
        let two = obs(1, Outcome::Refused, None, 1.0);
        let lost = summarize(3, &[one.clone(), two.clone()], 0, 0, 0.01);
        assert!(lost.is_err_and(|e| e.contains("1 of 3 requests have no outcome")));
        let doubled = summarize(2, &[one.clone(), two.clone(), one.clone()], 0, 0, 0.01);
        assert!(doubled.is_err_and(|e| e.contains("twice")));
        let stray = summarize(1, &[one, two], 0, 0, 0.01);
        assert!(stray.is_err_and(|e| e.contains("never sent")));
        let empty = summarize(0, &[], 0, 0, 0.01).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(empty.sent, 0);
        assert_eq!(empty.avg_latency_secs, None);
    }

    #[test]
    fn the_table_shows_every_run_and_the_last_against_the_first() {
        let before = summarize(
            2,
            &[
                obs(0, Outcome::Real, None, 60.0),
                obs(1, Outcome::Failed, None, 70.0),
            ],
            2,
            0,
            0.01,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let fixed = summarize(
            2,
            &[
                obs(0, Outcome::Real, Some(CacheStatus::Miss), 60.0),
                obs(1, Outcome::Refused, None, 0.01),
            ],
            1,
            3,
            0.01,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let after = summarize(
            2,
            &[
                obs(0, Outcome::Real, Some(CacheStatus::Miss), 60.0),
                obs(1, Outcome::Real, Some(CacheStatus::Hit), 0.06),
            ],
            1,
            0,
            0.01,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let table = render_table(&[
            Column {
                heading: "Before",
                short: "before",
                summary: &before,
            },
            Column {
                heading: "Fixed",
                short: "fixed",
                summary: &fixed,
            },
            Column {
                heading: "Preset",
                short: "preset",
                summary: &after,
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| Metric | Before | Fixed | Preset | Change (preset vs before) | The seed claimed |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|---|");
        assert_eq!(lines.len(), 2 + ROWS.len());
        assert!(lines.iter().all(|l| l.starts_with('|') && l.ends_with('|')));
        assert!(lines.iter().all(|l| l.matches('|').count() == 7));
        // Every claim sits on a row.
        for (metric, _) in SEED_CLAIMS {
            assert!(table.contains(&format!("| {metric} |")), "{metric}");
        }
        assert!(table.contains("| Average latency (answered) | 60.0 s | 60.0 s | 30.0 s | -50% |"));
        assert!(table.contains("| Median latency (answered) | 60.0 s | 60.0 s | 0.06 s | -100% |"));
        assert!(table.contains("| p95 latency (answered) | 60.0 s | 60.0 s | 60.0 s | +0% |"));
        assert!(table.contains("| Average latency (cached answers) | n/a | n/a | 0.06 s |  |"));
        assert!(table.contains(
            "| Cost per request | $0.0100 | $0.0050 | $0.0050 | -50% | $0.010 -> $0.004 |"
        ));
        assert!(table.contains("| Cost per real answer | $0.0200 | $0.0100 | $0.0050 | -75% |"));
        assert!(table.contains(
            "| Reliability (real analysis, fresh or cached) | 50.0% | 50.0% | 100.0% | +50.0 pp |"
        ));
        assert!(
            table.contains("| Answered (real or fallback) | 50.0% | 50.0% | 100.0% | +50.0 pp |")
        );
        assert!(table.contains("| Refused (429, 503) | 0.0% | 50.0% | 0.0% | +0.0 pp |"));
        assert!(table.contains("| Failed (502, 504) | 50.0% | 0.0% | 0.0% | -50.0 pp |"));
        assert!(table.contains(
            "| Cache hit rate (of requests sent) | 0.0% | 0.0% | 50.0% | +50.0 pp | 60-70% |"
        ));
        assert!(table.contains("| Provider calls billed | 2 | 1 | 1 | -50% |"));
        assert!(table.contains("| Provider 429s (at capacity, not billed) | 0 | 3 | 0 |  |"));
    }

    #[test]
    fn one_run_alone_has_no_change_column() {
        let only = summarize(1, &[obs(0, Outcome::Real, None, 1.0)], 1, 0, 0.01)
            .unwrap_or_else(|e| panic!("{e}"));
        let table = render_table(&[Column {
            heading: "Only",
            short: "only",
            summary: &only,
        }]);
        assert!(table.starts_with("| Metric | Only | The seed claimed |\n|---|---:|---|\n"));
        assert!(table.lines().all(|l| l.matches('|').count() == 4));
    }
}
