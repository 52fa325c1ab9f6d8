//! Errors of this crate.
//!
//! The layer itself never refuses a request: its service's error is the inner service's
//! error, boxed and otherwise unchanged. The only error of this crate's own is installing
//! the Prometheus recorder.

#[cfg(feature = "prometheus")]
use std::fmt;

#[cfg(feature = "prometheus")]
/// Why [`PrometheusConfig::install`](crate::PrometheusConfig::install) or
/// [`build`](crate::PrometheusConfig::build) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InstallError {
    /// Another global `metrics` recorder was installed before (not by this crate): its
    /// metrics cannot be rendered from here.
    AlreadyInstalled,
    /// The histogram buckets are empty, not finite, or not strictly increasing.
    InvalidBuckets,
}

#[cfg(feature = "prometheus")]
impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AlreadyInstalled => "a different global metrics recorder is already installed",
            Self::InvalidBuckets => {
                "histogram buckets must be finite, strictly increasing and not empty"
            }
        })
    }
}

#[cfg(feature = "prometheus")]
impl std::error::Error for InstallError {}

/// The error type of [`RedMetrics`](crate::RedMetrics): the inner service's error, boxed
/// and otherwise unchanged (the same type as `tower::BoxError`, so it can be downcast).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
