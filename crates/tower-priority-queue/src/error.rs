//! The queue's refusals.

use std::fmt;
use std::time::Duration;

use crate::priority::Priority;

/// Why the priority queue refused a request.
///
/// Services built by this crate return it boxed in a [`tower::BoxError`]; recognise it with
/// `error.downcast_ref::<QueueError>()`. Errors of the inner service pass through unchanged.
/// With the `http` feature, `status_code`, `grpc_code` and the `to_*_response` methods
/// turn it into the response a client should see (503 or 400).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueError {
    /// The waiting room was full, or a higher-priority arrival took this waiter's place.
    QueueFull {
        /// The level of the refused request.
        priority: Priority,
        /// When a client may try again.
        retry_after: Duration,
    },
    /// The upstream asked for a pause (`Retry-After`) longer than this request's level may
    /// wait: refused at once rather than after its whole maximum wait.
    CoolingDown {
        /// The level of the refused request.
        priority: Priority,
        /// What is left of the cool-down: when a client may try again.
        retry_after: Duration,
    },
    /// The request waited longer than its level's maximum wait.
    QueueTimeout {
        /// The level of the refused request.
        priority: Priority,
        /// How long it waited.
        waited: Duration,
        /// When a client may try again.
        retry_after: Duration,
    },
    /// The request named a priority that does not exist.
    InvalidPriority,
}

impl QueueError {
    /// How long a client should wait before trying again, when a retry makes sense.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            QueueError::QueueFull { retry_after, .. }
            | QueueError::CoolingDown { retry_after, .. }
            | QueueError::QueueTimeout { retry_after, .. } => Some(*retry_after),
            QueueError::InvalidPriority => None,
        }
    }

    /// The level of the refused request, if it had a valid one.
    #[must_use]
    pub fn priority(&self) -> Option<Priority> {
        match self {
            QueueError::QueueFull { priority, .. }
            | QueueError::CoolingDown { priority, .. }
            | QueueError::QueueTimeout { priority, .. } => Some(*priority),
            QueueError::InvalidPriority => None,
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::QueueFull { priority, .. } => {
                write!(f, "queue full: {priority} priority request shed")
            }
            QueueError::CoolingDown {
                priority,
                retry_after,
            } => write!(
                f,
                "upstream cooling down: {priority} priority request shed, {} s of pause left",
                retry_after.as_secs()
            ),
            QueueError::QueueTimeout {
                priority, waited, ..
            } => write!(
                f,
                "queue wait exceeded: {priority} priority request waited {} ms",
                waited.as_millis()
            ),
            QueueError::InvalidPriority => f.write_str(
                "invalid priority: expected one of urgent, high, normal, low (case-insensitive)",
            ),
        }
    }
}

impl std::error::Error for QueueError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_only_where_a_retry_makes_sense() {
        let full = QueueError::QueueFull {
            priority: Priority::Low,
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(full.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(QueueError::InvalidPriority.retry_after(), None);
        assert!(
            QueueError::InvalidPriority
                .to_string()
                .contains("urgent, high, normal, low")
        );
        let boxed: tower::BoxError = Box::new(full.clone());
        assert_eq!(boxed.downcast_ref::<QueueError>(), Some(&full));
    }
}
