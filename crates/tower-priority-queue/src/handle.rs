//! A cheap handle on a queue's state.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use tokio::time::Instant;

use crate::limit::Limit;
use crate::shared::Shared;

/// Reads the state of a priority queue: the layer and every service it built share it.
///
/// Cloning is one reference-count increment. Get one from
/// [`PriorityQueueLayer::handle`](crate::PriorityQueueLayer::handle) or
/// [`PriorityQueue::handle`](crate::PriorityQueue::handle).
#[derive(Clone)]
pub struct QueueHandle {
    shared: Arc<Shared>,
}

impl QueueHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        QueueHandle { shared }
    }

    /// The queue's name, the value of its `queue` metric label.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.settings.name
    }

    /// The most requests in flight at once now: the fixed limit, or the adaptive limit's
    /// current value.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        self.shared.limit()
    }

    /// The limit the queue was built with.
    #[must_use]
    pub fn limit_setting(&self) -> Limit {
        self.shared.settings.limit
    }

    /// The current state. Takes the waiting room's lock briefly.
    #[must_use]
    pub fn snapshot(&self) -> QueueSnapshot {
        let processing = self.shared.in_flight();
        let ([urgent, high, normal, low], queue_size) = self.shared.depths();
        let cooling_down_secs = self.shared.cooling_down(Instant::now()).map_or(0, |left| {
            left.as_secs()
                .saturating_add(u64::from(left.subsec_nanos() > 0))
        });
        QueueSnapshot {
            queue_size,
            processing,
            limit: self.shared.limit(),
            cooling_down_secs,
            urgent,
            high,
            normal,
            low,
        }
    }
}

impl fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueHandle")
            .field("name", &self.name())
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// A priority queue's state at one moment.
///
/// Serializes as `{"queueSize":…,"processing":…,"limit":…,"coolingDownSecs":…,"urgent":…,"high":…,"normal":…,"low":…}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct QueueSnapshot {
    /// Requests waiting, all levels together.
    pub queue_size: usize,
    /// Requests holding a slot (in flight).
    pub processing: usize,
    /// The in-flight limit now (fixed, or the adaptive limit's current value).
    pub limit: usize,
    /// Seconds left in the cool-down an upstream's `Retry-After` started (rounded up), 0
    /// when none runs.
    pub cooling_down_secs: u64,
    /// Urgent requests waiting.
    pub urgent: usize,
    /// High-priority requests waiting.
    pub high: usize,
    /// Normal-priority requests waiting.
    pub normal: usize,
    /// Low-priority requests waiting.
    pub low: usize,
}
