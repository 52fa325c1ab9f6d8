//! Pass or fail: the seed's own success criteria, and the goals of the overload work,
//! checked against one column of a run. Pure: no I/O.

use std::fmt::Write as _;

use super::stats::Summary;
use super::timeline::Observed;

/// The deadline a request has by default in the preset, in seconds (unscaled).
pub(crate) const DEADLINE_SECS: f64 = 150.0;

/// Slack over the deadline for the client's own view: local HTTP, read at the loadtest's
/// time scale, turns a millisecond into a tenth of a second.
const DEADLINE_SLACK_SECS: f64 = 5.0;

/// One criterion: what it asks, what was measured, and whether it holds. `None` when
/// the run gave nothing to judge by.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Check {
    pub(crate) criterion: &'static str,
    pub(crate) measured: String,
    pub(crate) pass: Option<bool>,
}

fn pct(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

fn opt<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "not measured".to_owned(), show)
}

/// The seed's success criteria: hit rate > 60%, error rate < 5%, queue < 10, circuit
/// closed, no limit exhaustion.
pub(crate) fn seed_criteria(summary: &Summary, observed: &Observed) -> Vec<Check> {
    let unanswered = summary.refused_share
        + summary.failed_share
        + summary.timed_out_share
        + summary.error_share;
    let circuit_closed = match observed.circuit_openings {
        Some(openings) => Some(openings == 0 && observed.circuit_not_closed_samples == 0),
        None if observed.samples > 0 => Some(observed.circuit_not_closed_samples == 0),
        None => None,
    };
    let refused = summary.refused;
    vec![
        Check {
            criterion: "cache hit rate > 60% (of requests sent)",
            measured: pct(summary.cache_hit_rate),
            pass: Some(summary.cache_hit_rate > 0.60),
        },
        Check {
            criterion: "error rate < 5% (refused, failed, no answer, other errors)",
            measured: pct(unanswered),
            pass: Some(unanswered < 0.05),
        },
        Check {
            criterion: "queue < 10 (largest waiting room sampled)",
            measured: opt(observed.max_queued, |q| q.to_string()),
            pass: observed.max_queued.map(|q| q < 10),
        },
        Check {
            criterion: "circuit breaker stays CLOSED",
            measured: format!(
                "{} opening(s), {} of {} samples not closed",
                opt(observed.circuit_openings, |n| n.to_string()),
                observed.circuit_not_closed_samples,
                observed.samples
            ),
            pass: circuit_closed,
        },
        Check {
            criterion: "no limit exhaustion (no request refused by a limit)",
            measured: format!(
                "{refused} refused (429/503), {} rate-limiter rejection(s)",
                opt(observed.limiter_rejections, |n| n.to_string())
            ),
            pass: Some(refused == 0 && observed.limiter_rejections.unwrap_or(0) == 0),
        },
    ]
}

/// The goals of the default preset against the seed's workload, beside the "before"
/// column of the same run.
pub(crate) fn preset_goals(
    preset: &Summary,
    before: &Summary,
    cost_per_call_usd: f64,
) -> Vec<Check> {
    let answered = preset.reliability + preset.fallback_share;
    let cost_share = if cost_per_call_usd > 0.0 {
        Some(preset.cost_per_request_usd / cost_per_call_usd)
    } else {
        None
    };
    let real_cost_share = match (
        preset.cost_per_real_answer_usd,
        before.cost_per_real_answer_usd,
    ) {
        (Some(p), Some(b)) if b > 0.0 => Some(p / b),
        _ => None,
    };
    vec![
        Check {
            criterion: "answered (real or fallback) >= 99.5%",
            measured: pct(answered),
            pass: Some(answered >= 0.995),
        },
        Check {
            criterion: "fallback answers <= 5% of requests",
            measured: pct(preset.fallback_share),
            pass: Some(preset.fallback_share <= 0.05),
        },
        Check {
            criterion: "real analyses per minute >= before's",
            measured: format!(
                "{:.1}/min vs {:.1}/min",
                preset.real_per_min, before.real_per_min
            ),
            pass: Some(preset.real_per_min >= before.real_per_min),
        },
        Check {
            criterion: "cost per request <= 40% of one call's price",
            measured: opt(cost_share, pct),
            pass: cost_share.map(|s| s <= 0.40),
        },
        Check {
            criterion: "cost per real answer <= 40% of before's",
            measured: opt(real_cost_share, pct),
            pass: real_cost_share.map(|s| s <= 0.40),
        },
        Check {
            criterion: "median answered latency < 1 s",
            measured: opt(preset.p50_latency_secs, |s| format!("{s:.2} s")),
            pass: preset.p50_latency_secs.map(|s| s < 1.0),
        },
        Check {
            criterion: "no answer later than the 150 s deadline (+5 s of scaled clock)",
            measured: opt(preset.max_latency_secs, |s| format!("latest {s:.1} s")),
            pass: preset
                .max_latency_secs
                .map(|s| s <= DEADLINE_SECS + DEADLINE_SLACK_SECS),
        },
        Check {
            criterion: "cache hit rate >= 55%",
            measured: pct(preset.cache_hit_rate),
            pass: Some(preset.cache_hit_rate >= 0.55),
        },
    ]
}

/// A Markdown list: `- PASS criterion: measured`.
pub(crate) fn render(title: &str, checks: &[Check]) -> String {
    let mut out = format!("{title}\n\n");
    for check in checks {
        let verdict = match check.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a ",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "- {verdict} {}: {}", check.criterion, check.measured);
    }
    let passed = checks.iter().filter(|c| c.pass == Some(true)).count();
    let _ = writeln!(out, "\n{passed} of {} hold.", checks.len());
    out
}

#[cfg(test)]
mod tests {
    use super::super::stats::{CacheStatus, Observation, Outcome, summarize};
    use super::*;

    fn run(outcomes: &[(Outcome, Option<CacheStatus>, f64)], billed: u64) -> Summary {
        let observations: Vec<Observation> = outcomes
            .iter()
            .enumerate()
            .map(|(index, (outcome, cache, latency))| Observation {
                index,
                sent_at_secs: 60.0 * index as f64,
                latency_secs: *latency,
                status: Some(match outcome {
                    Outcome::Real | Outcome::Fallback => 200,
                    Outcome::Refused => 503,
                    _ => 502,
                }),
                outcome: *outcome,
                cache: *cache,
                detail: None,
            })
            .collect();
        summarize(outcomes.len(), &observations, billed, 0, 0.01).unwrap_or_else(|e| panic!("{e}"))
    }

    fn healthy() -> Observed {
        Observed {
            max_queued: Some(3),
            max_limit: Some(8),
            max_in_flight: Some(8),
            circuit_not_closed_samples: 0,
            circuit_openings: Some(0),
            limiter_rejections: Some(0),
            samples: 100,
        }
    }

    #[test]
    fn a_good_run_passes_every_seed_criterion() {
        let hit = (Outcome::Real, Some(CacheStatus::Hit), 0.05);
        let miss = (Outcome::Real, Some(CacheStatus::Miss), 60.0);
        let summary = run(&[hit, hit, hit, hit, hit, hit, hit, miss, miss, miss], 3);
        let checks = seed_criteria(&summary, &healthy());
        assert_eq!(checks.len(), 5);
        assert!(checks.iter().all(|c| c.pass == Some(true)), "{checks:?}");
        let text = render("Seed criteria", &checks);
        assert!(text.contains("- PASS cache hit rate > 60% (of requests sent): 70.0%"));
        assert!(text.contains("5 of 5 hold."));
    }

    #[test]
    fn each_seed_criterion_can_fail() {
        let hit = (Outcome::Real, Some(CacheStatus::Hit), 0.05);
        let refused = (Outcome::Refused, None, 0.01);
        // 6 hits of 10 is not above 60%; 4 refusals are 40% errors and exhaustion.
        let summary = run(
            &[
                hit, hit, hit, hit, hit, hit, refused, refused, refused, refused,
            ],
            0,
        );
        let mut observed = healthy();
        observed.max_queued = Some(10);
        observed.circuit_openings = Some(1);
        let checks = seed_criteria(&summary, &observed);
        assert!(checks.iter().all(|c| c.pass == Some(false)), "{checks:?}");
        // Without the Prometheus count, the samples decide; without samples, nothing does.
        observed.circuit_openings = None;
        assert_eq!(seed_criteria(&summary, &observed)[3].pass, Some(true));
        observed.samples = 0;
        observed.max_queued = None;
        let checks = seed_criteria(&summary, &observed);
        assert_eq!((checks[2].pass, checks[3].pass), (None, None));
        assert!(render("x", &checks).contains("- n/a  queue < 10"));
    }

    #[test]
    fn the_goals_compare_with_before() {
        let hit = (Outcome::Real, Some(CacheStatus::Hit), 0.05);
        let miss = (Outcome::Real, Some(CacheStatus::Miss), 60.0);
        let failed = (Outcome::Failed, None, 70.0);
        let before = run(&[miss, miss, failed, miss], 4);
        let preset = run(&[hit, hit, hit, miss], 1);
        let goals = preset_goals(&preset, &before, 0.01);
        assert!(goals.iter().all(|g| g.pass == Some(true)), "{goals:?}");
        // Cost per request: $0.01 / 4 = 25% of a call; per real answer: 0.0025 / 0.01333.
        assert_eq!(goals[3].measured, "25.0%");
        assert_eq!(goals[4].measured, "18.8%");
        let late = run(&[(Outcome::Fallback, None, 200.0)], 1);
        let goals = preset_goals(&late, &before, 0.01);
        assert_eq!(goals[1].pass, Some(false));
        assert_eq!(goals[6].pass, Some(false));
        assert_eq!(
            goals[4].pass, None,
            "no real answer: no cost per real answer"
        );
    }
}
