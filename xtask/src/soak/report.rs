//! The soak's pure parts: what one request's outcome was, how the client's counts are
//! reconciled with the gateway's metrics, and the table of checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What one request sent by the client ended in. Exactly one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// 200 with `"source": "ai"`.
    Real,
    /// 200 with `"source": "fallback"` (degraded).
    Fallback,
    /// A documented refusal: 429 (rate limited), 503 (queue full, circuit open), 504
    /// (deadline).
    Refused,
    /// The client dropped the request on purpose (before the head, or mid-body).
    Cancelled,
    /// Anything else: a 500, an undocumented status, a 200 that is not the API's JSON,
    /// a transport error, or no answer within the client's timeout.
    Violation,
}

impl Outcome {
    pub(crate) const ALL: [Self; 5] = [
        Self::Real,
        Self::Fallback,
        Self::Refused,
        Self::Cancelled,
        Self::Violation,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Fallback => "fallback",
            Self::Refused => "refused (429/503/504)",
            Self::Cancelled => "cancelled by the client",
            Self::Violation => "violation",
        }
    }
}

/// The outcome of an answer with this status and (for a 200) this `source` field.
pub(crate) fn classify(status: u16, source: Option<&str>) -> Outcome {
    match (status, source) {
        (200, Some("ai")) => Outcome::Real,
        (200, Some("fallback")) => Outcome::Fallback,
        (429 | 503 | 504, _) => Outcome::Refused,
        _ => Outcome::Violation,
    }
}

/// `http_requests_total` by `status` label, summed over the other labels, from a
/// Prometheus text exposition.
pub(crate) fn requests_by_status(exposition: &str) -> BTreeMap<String, u64> {
    let mut by_status = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("http_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(status) = label(labels, "status") else {
            continue;
        };
        let value = value.trim().parse::<f64>().unwrap_or(0.0);
        // Counters of requests: whole, far below 2^52.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        *by_status.entry(status.to_owned()).or_default() += value;
    }
    by_status
}

/// `circuit_transitions_total` into state `to`, summed.
pub(crate) fn transitions_to(exposition: &str, to: &str) -> u64 {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("circuit_transitions_total{"))
        .filter_map(|rest| rest.rsplit_once('}'))
        .filter(|(labels, _)| label(labels, "to") == Some(to))
        // Whole counts.
        .map(|(_, value)| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            value
        })
        .sum()
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The gateway's counts against the client's: every status the client saw is counted
/// at least as often by the gateway, and the gateway's extra counts (statuses of
/// requests the client dropped, and `cancelled`) are at most the client's cancellations.
pub(crate) fn reconcile(
    gateway: &BTreeMap<String, u64>,
    client: &BTreeMap<u16, u64>,
    cancelled: u64,
) -> Result<String, String> {
    let mut extra = 0_u64;
    for (status, seen) in client {
        let counted = gateway.get(&status.to_string()).copied().unwrap_or(0);
        if counted < *seen {
            return Err(format!(
                "the client saw {seen} × {status}, the gateway counted {counted}"
            ));
        }
        extra += counted - seen;
    }
    for (status, counted) in gateway {
        if status
            .parse::<u16>()
            .map_or(true, |s| !client.contains_key(&s))
        {
            extra += counted;
        }
    }
    if extra > cancelled {
        return Err(format!(
            "the gateway counted {extra} requests more than the client saw answered, but \
             the client cancelled only {cancelled}"
        ));
    }
    let total: u64 = gateway.values().sum();
    Ok(format!(
        "{total} counted = {} answered + {extra} of {cancelled} cancelled",
        total - extra
    ))
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) passed: Option<bool>,
    pub(crate) detail: String,
}

impl Check {
    pub(crate) fn new(name: &'static str, result: Result<String, String>) -> Self {
        let passed = result.is_ok();
        Self {
            name,
            passed: Some(passed),
            detail: result.unwrap_or_else(|e| e),
        }
    }

    /// A row for something the gateway does not expose: reported, not checked.
    pub(crate) fn not_exposed(name: &'static str, detail: &str) -> Self {
        Self {
            name,
            passed: None,
            detail: detail.to_owned(),
        }
    }
}

/// The checks as a Markdown table.
pub(crate) fn table(checks: &[Check]) -> String {
    let mut out = String::from("| check | result | detail |\n|---|---|---|\n");
    for check in checks {
        let result = match check.passed {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a",
        };
        let _ = writeln!(
            out,
            "| {} | {result} | {} |",
            check.name,
            check.detail.replace('|', "\\|")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_api_documents_them() {
        assert_eq!(classify(200, Some("ai")), Outcome::Real);
        assert_eq!(classify(200, Some("fallback")), Outcome::Fallback);
        assert_eq!(classify(200, None), Outcome::Violation);
        assert_eq!(classify(429, None), Outcome::Refused);
        assert_eq!(classify(503, None), Outcome::Refused);
        assert_eq!(classify(504, None), Outcome::Refused);
        assert_eq!(classify(500, None), Outcome::Violation);
        assert_eq!(classify(502, None), Outcome::Violation);
        assert_eq!(classify(400, None), Outcome::Violation);
    }

    const EXPOSITION: &str = "\
# TYPE http_requests_total counter
http_requests_total{method=\"POST\",route=\"/a\",status=\"200\"} 10
http_requests_total{method=\"POST\",route=\"/a\",status=\"cancelled\"} 2
http_requests_total{method=\"GET\",route=\"/b\",status=\"200\"} 1
http_requests_total{method=\"POST\",route=\"/a\",status=\"503\"} 4
circuit_transitions_total{breaker=\"x\",from=\"closed\",to=\"open\"} 3
circuit_transitions_total{breaker=\"x\",from=\"half_open\",to=\"open\"} 1
circuit_transitions_total{breaker=\"x\",from=\"half_open\",to=\"closed\"} 2
";

    #[test]
    fn the_exposition_is_read_by_label() {
        let by_status = requests_by_status(EXPOSITION);
        assert_eq!(by_status["200"], 11);
        assert_eq!(by_status["cancelled"], 2);
        assert_eq!(by_status["503"], 4);
        assert_eq!(transitions_to(EXPOSITION, "open"), 4);
        assert_eq!(transitions_to(EXPOSITION, "closed"), 2);
        assert_eq!(transitions_to(EXPOSITION, "half_open"), 0);
    }

    #[test]
    fn counts_reconcile_within_the_cancellations() {
        let gateway = requests_by_status(EXPOSITION);
        let client = BTreeMap::from([(200, 10), (503, 4)]);
        // One extra 200 and two `cancelled`: three of the client's cancellations.
        assert!(reconcile(&gateway, &client, 3).is_ok());
        assert!(reconcile(&gateway, &client, 2).is_err());
        let client = BTreeMap::from([(200, 12), (503, 4)]);
        assert!(reconcile(&gateway, &client, 100).is_err());
    }

    #[test]
    fn the_table_marks_failures() {
        let checks = [
            Check::new("a", Ok("fine".to_owned())),
            Check::new("b", Err("x | y".to_owned())),
            Check::not_exposed("c", "no"),
        ];
        let table = table(&checks);
        assert!(table.contains("| a | PASS | fine |"));
        assert!(table.contains("| b | FAIL | x \\| y |"));
        assert!(table.contains("| c | n/a | no |"));
    }
}
