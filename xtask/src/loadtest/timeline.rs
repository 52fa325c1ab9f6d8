//! What the gateway looked like during a run: its in-flight limit, the calls in flight,
//! the waiting room, the circuit, and the provider's own in-flight count, sampled from
//! `GET /api/metrics` and `GET /api/simulator`. Pure: the sampling loop lives in `mod.rs`.

use serde::Serialize;
use serde_json::Value;

/// The demo gateway's `--max-in-flight` when the flag is not given.
pub(crate) const GATEWAY_DEFAULT_MAX_IN_FLIGHT: usize = 2;

/// One look at a running gateway. Times are unscaled seconds from the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sample {
    pub(crate) at_secs: f64,
    /// The queue's in-flight limit now: the snapshot's `limit` if it has one, else the
    /// configured fixed limit. `None` without a stack.
    pub(crate) limit: Option<usize>,
    /// Calls holding a slot of the queue (`processing`).
    pub(crate) in_flight: Option<usize>,
    /// Requests in the waiting room (`queueSize`).
    pub(crate) queued: Option<usize>,
    /// The circuit's state (`CLOSED`, `OPEN`, `HALF_OPEN`).
    pub(crate) circuit: Option<String>,
    /// Calls running at the provider (`inFlight` of `/api/simulator`).
    pub(crate) provider_in_flight: Option<usize>,
}

fn count(value: &Value) -> Option<usize> {
    value.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// A sample from the two JSON documents (either may be missing: no stack, or a failed
/// read). `fixed_limit` is what the limit is when the snapshot has no `limit` field.
pub(crate) fn sample(
    at_secs: f64,
    metrics: Option<&Value>,
    simulator: Option<&Value>,
    fixed_limit: Option<usize>,
) -> Sample {
    let queue = metrics.map(|m| &m["queue"]);
    Sample {
        at_secs,
        limit: queue.and_then(|q| count(&q["limit"]).or(fixed_limit)),
        in_flight: queue.and_then(|q| count(&q["processing"])),
        queued: queue.and_then(|q| count(&q["queueSize"])),
        circuit: metrics
            .and_then(|m| m["circuitBreaker"]["state"].as_str())
            .map(str::to_owned),
        provider_in_flight: simulator.and_then(|s| count(&s["inFlight"])),
    }
}

/// The fixed in-flight limit that gateway flags set: the last `--max-in-flight N` (or
/// `--max-in-flight=N`), else the gateway's default.
pub(crate) fn configured_max_in_flight(flags: &[String]) -> usize {
    flag_value(flags, "--max-in-flight")
        .and_then(|v| v.parse().ok())
        .unwrap_or(GATEWAY_DEFAULT_MAX_IN_FLIGHT)
}

/// The value of `name` in gateway flags (`--name V` or `--name=V`), the last one given
/// winning as it does for clap.
pub(crate) fn flag_value<'a>(flags: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        if flag == name {
            found = flags.next().map(String::as_str).or(found);
        } else if let Some(value) = flag.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
            found = Some(value);
        }
    }
    found
}

/// Times the circuit opened, from the Prometheus text of `GET /metrics`: the sum of
/// `circuit_transitions_total{...,to="open"}`. `None` if the text has no such series
/// family at all (no stack, or no recorder).
pub(crate) fn circuit_openings(prometheus: &str) -> Option<u64> {
    let mut family_seen = false;
    let mut openings = 0.0;
    for line in prometheus.lines() {
        let Some(rest) = line.strip_prefix("circuit_transitions_total") else {
            continue;
        };
        // Not a longer name with the same prefix.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        family_seen = true;
        let (labels, value) = match rest.rsplit_once('}') {
            Some((labels, value)) => (labels, value),
            None => ("", rest),
        };
        if labels.contains("to=\"open\"")
            && let Some(v) = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        {
            openings += v;
        }
    }
    // A counter's value is a whole number.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    family_seen.then_some(openings as u64)
}

/// What the samples of one run say, for the success criteria.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Observed {
    /// The largest waiting room seen.
    pub(crate) max_queued: Option<usize>,
    /// The largest in-flight limit and count seen.
    pub(crate) max_limit: Option<usize>,
    pub(crate) max_in_flight: Option<usize>,
    /// Samples in which the circuit was not closed.
    pub(crate) circuit_not_closed_samples: usize,
    /// Circuit openings counted by the gateway (`circuit_transitions_total`).
    pub(crate) circuit_openings: Option<u64>,
    /// Requests refused by the rate limiters (per user and global), from the final
    /// metrics.
    pub(crate) limiter_rejections: Option<u64>,
    pub(crate) samples: usize,
}

/// Sums up the samples and the final documents of a run.
pub(crate) fn observe(
    samples: &[Sample],
    final_metrics: Option<&Value>,
    prometheus: Option<&str>,
) -> Observed {
    let max = |f: fn(&Sample) -> Option<usize>| samples.iter().filter_map(f).max();
    let limiter_rejections = final_metrics.and_then(|m| {
        let per_user = m["rateLimit"]["perUser"]["rejected"].as_u64()?;
        let global = m["rateLimit"]["global"]["rejected"].as_u64()?;
        Some(per_user + global)
    });
    Observed {
        max_queued: max(|s| s.queued),
        max_limit: max(|s| s.limit),
        max_in_flight: max(|s| s.in_flight),
        circuit_not_closed_samples: samples
            .iter()
            .filter(|s| s.circuit.as_deref().is_some_and(|c| c != "CLOSED"))
            .count(),
        circuit_openings: prometheus.and_then(circuit_openings),
        limiter_rejections,
        samples: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_limit_is_read_when_present_else_the_fixed_one() {
        let metrics = json!({
            "queue": {"queueSize": 4, "processing": 2, "limit": 7},
            "circuitBreaker": {"state": "CLOSED"},
        });
        let simulator = json!({"inFlight": 3});
        let s = sample(12.0, Some(&metrics), Some(&simulator), Some(2));
        assert_eq!(
            (s.limit, s.in_flight, s.queued, s.provider_in_flight),
            (Some(7), Some(2), Some(4), Some(3))
        );
        assert_eq!(s.circuit.as_deref(), Some("CLOSED"));

        let old = json!({"queue": {"queueSize": 0, "processing": 1}});
        assert_eq!(sample(0.0, Some(&old), None, Some(2)).limit, Some(2));
        let none = sample(0.0, None, Some(&simulator), Some(2));
        assert_eq!((none.limit, none.in_flight), (None, None));
        assert_eq!(none.provider_in_flight, Some(3));
    }

    #[test]
    fn the_configured_limit_follows_the_last_flag() {
        let flags = |f: &[&str]| f.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(configured_max_in_flight(&flags(&["--no-stack"])), 2);
        assert_eq!(
            configured_max_in_flight(&flags(&["--max-in-flight", "16"])),
            16
        );
        assert_eq!(
            configured_max_in_flight(&flags(&["--max-in-flight", "2", "--max-in-flight=5"])),
            5
        );
        assert_eq!(configured_max_in_flight(&flags(&["--max-in-flight"])), 2);
    }

    #[test]
    fn openings_are_summed_over_every_transition_to_open() {
        let text = "# TYPE circuit_transitions_total counter\n\
            circuit_transitions_total{breaker=\"ai\",from=\"closed\",to=\"open\"} 2\n\
            circuit_transitions_total{breaker=\"ai\",from=\"half_open\",to=\"open\"} 1\n\
            circuit_transitions_total{breaker=\"ai\",from=\"open\",to=\"half_open\"} 3\n\
            circuit_transitions_total_other{to=\"open\"} 9\n";
        assert_eq!(circuit_openings(text), Some(3));
        assert_eq!(
            circuit_openings(
                "circuit_transitions_total{breaker=\"ai\",from=\"open\",to=\"half_open\"} 0\n"
            ),
            Some(0)
        );
        assert_eq!(circuit_openings("http_requests_total 3\n"), None);
    }

    #[test]
    fn observing_takes_the_maxima_and_counts_open_samples() {
        let at = |queued, circuit: &str| Sample {
            at_secs: 0.0,
            limit: Some(2),
            in_flight: Some(1),
            queued: Some(queued),
            circuit: Some(circuit.to_owned()),
            provider_in_flight: None,
        };
        let samples = [at(3, "CLOSED"), at(12, "OPEN"), at(0, "CLOSED")];
        let metrics = json!({"rateLimit": {"perUser": {"rejected": 1}, "global": {"rejected": 2}}});
        let o = observe(&samples, Some(&metrics), None);
        assert_eq!(o.max_queued, Some(12));
        assert_eq!(o.circuit_not_closed_samples, 1);
        assert_eq!(o.limiter_rejections, Some(3));
        assert_eq!(o.circuit_openings, None);
        assert_eq!(o.samples, 3);
    }
}
