//! The analyze endpoint's input, its answer, and the local fallback analysis.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The largest request body the analyze endpoint reads: larger bodies get 413.
pub const MAX_CONTEXT_BYTES: usize = 1024 * 1024;

/// The longest record id accepted in the path.
pub const MAX_RECORD_ID_LEN: usize = 128;

/// What one analyze call is about, parsed once from the request and carried in its
/// extensions to the upstream client and the fallback.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyzeInput {
    /// The health record's id, from the path.
    pub record_id: String,
    /// Who asks: the `x-user-id` header, else the client IP.
    pub user_id: String,
    /// The JSON context sent in the body, if any.
    pub context: Option<Value>,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The AI provider.
    Ai,
    /// The local rule-based analysis, used when the provider cannot answer.
    Fallback,
}

/// The analyze endpoint's JSON answer.
///
/// A cached answer is served byte for byte, so this holds nothing that changes per
/// request: per-request facts (cache status, age) travel in headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyzeAnswer {
    /// The health record's id.
    pub record_id: String,
    /// Where the analysis came from.
    pub source: Source,
    /// The analysis itself.
    pub analysis: Value,
}

/// Checks a record id taken from the path: 1 to [`MAX_RECORD_ID_LEN`] characters of
/// ASCII letters, digits, `-`, `_` and `.`.
///
/// # Errors
///
/// Returns a message fit for a 400 answer when the id is empty, too long, or holds
/// another character.
pub fn check_record_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_RECORD_ID_LEN {
        return Err(format!(
            "record id must be 1 to {MAX_RECORD_ID_LEN} characters long"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("record id may hold only ASCII letters, digits, '-', '_' and '.'".to_owned());
    }
    Ok(())
}

/// Parses the optional JSON context of an analyze request.
///
/// An empty body means no context.
///
/// # Errors
///
/// Returns a message fit for a 400 answer when the body is not JSON.
pub fn parse_context(body: &[u8]) -> Result<Option<Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| format!("request body is not valid JSON: {e}"))
}

/// The local, rule-based analysis that answers when the AI provider cannot.
///
/// It reads a few common vital signs from the context (`heartRate`, `systolicBp`,
/// `diastolicBp`, `temperatureC`, `spo2`) and flags values outside adult reference
/// ranges. It is deterministic and costs nothing; it is not a diagnosis.
#[must_use]
pub fn local_analysis(input: &AnalyzeInput) -> Value {
    let vitals = input.context.as_ref().and_then(Value::as_object);
    let mut findings = Vec::new();
    let mut checked = Vec::new();
    if let Some(vitals) = vitals {
        for (field, low, high, what) in [
            ("heartRate", 50.0, 100.0, "heart rate"),
            ("systolicBp", 90.0, 140.0, "systolic blood pressure"),
            ("diastolicBp", 60.0, 90.0, "diastolic blood pressure"),
            ("temperatureC", 36.0, 38.0, "body temperature"),
            ("spo2", 94.0, 100.0, "oxygen saturation"),
        ] {
            if let Some(value) = number(vitals, field) {
                checked.push(field);
                if value < low {
                    findings.push(format!("{what} low ({value})"));
                } else if value > high {
                    findings.push(format!("{what} high ({value})"));
                }
            }
        }
    }
    let risk = match findings.len() {
        0 if checked.is_empty() => "unknown",
        0 => "low",
        1 => "moderate",
        _ => "high",
    };
    json!({
        "summary": if findings.is_empty() {
            "No out-of-range vital signs found by the local rules."
        } else {
            "Out-of-range vital signs found by the local rules."
        },
        "riskLevel": risk,
        "findings": findings,
        "checked": checked,
        "reviewRecommended": true,
        "method": "local-rules",
    })
}

fn number(map: &Map<String, Value>, field: &str) -> Option<f64> {
    map.get(field).and_then(Value::as_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(context: Option<Value>) -> AnalyzeInput {
        AnalyzeInput {
            record_id: "r1".into(),
            user_id: "u1".into(),
            context,
        }
    }

    #[test]
    fn record_ids_are_checked() {
        assert!(check_record_id("rec-42_a.b").is_ok());
        assert!(check_record_id("").is_err());
        assert!(check_record_id("a/b").is_err());
        assert!(check_record_id("é").is_err());
        assert!(check_record_id(&"x".repeat(MAX_RECORD_ID_LEN + 1)).is_err());
    }

    #[test]
    fn context_is_optional_json() {
        assert_eq!(parse_context(b"").unwrap(), None);
        assert_eq!(parse_context(b" \n").unwrap(), None);
        assert_eq!(parse_context(br#"{"a":1}"#).unwrap(), Some(json!({"a": 1})));
        assert!(parse_context(b"{not json").is_err());
    }

    #[test]
    fn fallback_flags_out_of_range_vitals() {
        let a = local_analysis(&input(Some(json!({"heartRate": 130, "spo2": 97}))));
        assert_eq!(a["riskLevel"], "moderate");
        assert_eq!(a["findings"][0], "heart rate high (130)");
        let a = local_analysis(&input(Some(json!({"heartRate": 70}))));
        assert_eq!(a["riskLevel"], "low");
        let a = local_analysis(&input(None));
        assert_eq!(a["riskLevel"], "unknown");
    }

    #[test]
    fn answer_serializes_with_the_seed_names() {
        let answer = AnalyzeAnswer {
            record_id: "r1".into(),
            source: Source::Fallback,
            analysis: json!({}),
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            text,
            r#"{"recordId":"r1","source":"fallback","analysis":{}}"#
        );
    }
}
