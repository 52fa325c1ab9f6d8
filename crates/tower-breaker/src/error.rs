//! The refusals of this crate's layers.

use std::fmt;
use std::time::Duration;

/// A call refused by this crate's layers, returned boxed in a
/// [`BoxError`](crate::BoxError); recognise it with
/// `error.downcast_ref::<BreakerError>()`.
///
/// Errors of the inner service are never wrapped in this type: they pass through boxed
/// and unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerError {
    /// The circuit is open (or half-open with every probe slot taken): the call was
    /// refused without reaching the inner service.
    CircuitOpen {
        /// Time left until the circuit lets a probe through, when known. Unknown when the
        /// circuit was forced open or when half-open probes are already in flight.
        retry_after: Option<Duration>,
    },
    /// The inner call did not complete within the call timeout and was cancelled.
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
}

impl BreakerError {
    /// How long a caller should wait before trying again, when that is known.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_after } => *retry_after,
            Self::Timeout { .. } => None,
        }
    }

    /// Whether this is [`BreakerError::CircuitOpen`].
    #[must_use]
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, Self::CircuitOpen { .. })
    }

    /// Whether this is [`BreakerError::Timeout`].
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The short, fixed message used in HTTP bodies and `grpc-message`.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Self::CircuitOpen { .. } => "circuit breaker is open",
            Self::Timeout { .. } => "upstream call timed out",
        }
    }
}

impl fmt::Display for BreakerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())?;
        match self {
            Self::CircuitOpen {
                retry_after: Some(wait),
            } => write!(f, "; retry after {wait:?}"),
            Self::CircuitOpen { retry_after: None } => Ok(()),
            Self::Timeout { after } => write!(f, " after {after:?}"),
        }
    }
}

impl std::error::Error for BreakerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_only_where_a_retry_makes_sense() {
        let open = BreakerError::CircuitOpen {
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(open.retry_after(), Some(Duration::from_secs(3)));
        let timeout = BreakerError::Timeout {
            after: Duration::from_secs(120),
        };
        assert_eq!(timeout.retry_after(), None);
        assert_eq!(timeout.to_string(), "upstream call timed out after 120s");
    }

    #[test]
    fn is_send_sync_static_and_downcasts() {
        let boxed: crate::BoxError = Box::new(BreakerError::CircuitOpen { retry_after: None });
        assert!(boxed.downcast_ref::<BreakerError>().is_some());
    }
}
