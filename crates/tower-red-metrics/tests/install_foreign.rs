//! Installing when another recorder is the global one is an error, not a panic.
#![allow(missing_docs, clippy::unwrap_used)]

use tower_red_metrics::{InstallError, PrometheusConfig};

#[test]
fn another_global_recorder_is_reported() {
    metrics_util::debugging::DebuggingRecorder::new()
        .install()
        .unwrap();
    let error = PrometheusConfig::new().install().unwrap_err();
    assert_eq!(error, InstallError::AlreadyInstalled);
    assert!(!error.to_string().is_empty());
}
