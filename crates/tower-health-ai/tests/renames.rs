//! The builders' former names still compile (deprecated), as the same types.
#![allow(deprecated)]

use tower_health_ai::breaker::{CircuitBreakerBuilder, CircuitBreakerLayer};
use tower_health_ai::priority_queue::{PriorityQueueLayer, QueueBuilder, RetryBuilder, RetryLayer};
use tower_health_ai::red_metrics::{RedMetricsBuilder, RedMetricsLayer};

#[test]
fn the_former_builder_names_are_the_same_types() {
    let _breaker: CircuitBreakerBuilder = CircuitBreakerLayer::builder();
    let _queue: QueueBuilder<_> = PriorityQueueLayer::builder();
    let _retry: RetryBuilder<_, _> = RetryLayer::builder();
    let _red: RedMetricsBuilder<_, _> = RedMetricsLayer::builder();
}
