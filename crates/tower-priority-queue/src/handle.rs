//! A cheap handle on a queue's state.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

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

    /// The most requests in flight at once.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        self.shared.settings.max_in_flight
    }

    /// The current state. Takes the waiting room's lock briefly.
    #[must_use]
    pub fn snapshot(&self) -> QueueSnapshot {
        let processing = self.shared.in_flight();
        let ([urgent, high, normal, low], queue_size) = self.shared.depths();
        QueueSnapshot {
            queue_size,
            processing,
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
/// Serializes as `{"queueSize":…,"processing":…,"urgent":…,"high":…,"normal":…,"low":…}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct QueueSnapshot {
    /// Requests waiting, all levels together.
    pub queue_size: usize,
    /// Requests holding a slot (in flight).
    pub processing: usize,
    /// Urgent requests waiting.
    pub urgent: usize,
    /// High-priority requests waiting.
    pub high: usize,
    /// Normal-priority requests waiting.
    pub normal: usize,
    /// Low-priority requests waiting.
    pub low: usize,
}
