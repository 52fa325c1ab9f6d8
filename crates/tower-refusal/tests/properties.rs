//! Whatever the message and wait, the answers are well formed: the JSON body parses and
//! carries the message and wait, `grpc-message` decodes to the message, and
//! `Retry-After` is the wait in whole seconds, rounded up, never 0.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use proptest::prelude::*;
use tower_refusal::{SimpleRefusal, grpc_response, http_response};

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

proptest! {
    #[test]
    fn answers_are_well_formed(message in any::<String>(), millis in proptest::option::of(0u64..10_000_000)) {
        let mut refusal = SimpleRefusal::new(StatusCode::SERVICE_UNAVAILABLE, 14, message.clone());
        if let Some(millis) = millis {
            refusal = refusal.with_retry_after(Duration::from_millis(millis));
        }
        let expected_secs = millis.map(|ms| ms.div_ceil(1000).max(1));

        let http = http_response::<Bytes>(&refusal);
        prop_assert_eq!(http.status(), StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_slice(http.body()).expect("valid JSON");
        prop_assert_eq!(json["error"].as_str(), Some(message.as_str()));
        prop_assert_eq!(json.get("retryAfter").and_then(serde_json::Value::as_u64), expected_secs);
        let header = http.headers().get("retry-after").map(|v| v.to_str().expect("ascii").parse::<u64>().expect("number"));
        prop_assert_eq!(header, expected_secs);

        let grpc = grpc_response::<Bytes>(&refusal);
        prop_assert_eq!(grpc.status(), StatusCode::OK);
        prop_assert_eq!(&grpc.headers()["grpc-status"], "14");
        let encoded = grpc.headers()["grpc-message"].to_str().expect("printable ASCII");
        prop_assert_eq!(percent_decode(encoded), message.as_bytes().to_vec());
        prop_assert!(grpc.body().is_empty());
    }
}
