//! The priority queue layer and its builder.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;

use crate::core::{Limits, WaitQueue};
use crate::handle::QueueHandle;
use crate::priority::Priority;
use crate::service::PriorityQueue;
use crate::shared::{Settings, Shared};

/// Applies priority admission to a service; see the [crate docs](crate).
///
/// Every service this layer builds, and every clone of those services, shares one set of
/// slots and one waiting room: build the layer once per queue you want.
#[derive(Clone)]
pub struct PriorityQueueLayer<E> {
    shared: Arc<Shared>,
    extractor: E,
}

#[cfg(feature = "http")]
impl PriorityQueueLayer<crate::http::HeaderPriority> {
    /// A queue with the default settings, reading priorities from the `x-priority` header.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder with the default settings, reading priorities from the `x-priority`
    /// header; change the source with [`QueueBuilder::extractor`].
    #[must_use]
    pub fn builder() -> QueueBuilder<crate::http::HeaderPriority> {
        QueueBuilder::with_extractor(crate::http::HeaderPriority::new())
    }
}

#[cfg(feature = "http")]
impl Default for PriorityQueueLayer<crate::http::HeaderPriority> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> PriorityQueueLayer<E> {
    /// A handle on the queue's state, shared with every service the layer builds.
    #[must_use]
    pub fn handle(&self) -> QueueHandle {
        QueueHandle::new(Arc::clone(&self.shared))
    }
}

impl<S, E: Clone> Layer<S> for PriorityQueueLayer<E> {
    type Service = PriorityQueue<S, E>;

    fn layer(&self, inner: S) -> Self::Service {
        PriorityQueue::new(inner, self.extractor.clone(), Arc::clone(&self.shared))
    }
}

impl<E> fmt::Debug for PriorityQueueLayer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueueLayer")
            .field("name", &self.shared.settings.name)
            .field("max_in_flight", &self.shared.settings.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// Configures a [`PriorityQueueLayer`].
///
/// | setting | default |
/// |---|---|
/// | [`name`](Self::name) | `"default"` |
/// | [`max_in_flight`](Self::max_in_flight) | 2 |
/// | [`capacity`](Self::capacity) (waiting, all levels) | 32 |
/// | [`level_capacity`](Self::level_capacity) | the total capacity |
/// | [`max_wait`](Self::max_wait) | 60 s at every level |
/// | [`aging`](Self::aging) | 10 s per level |
/// | [`retry_after`](Self::retry_after) | 5 s |
#[derive(Clone, Debug)]
pub struct QueueBuilder<E> {
    name: Cow<'static, str>,
    max_in_flight: usize,
    capacity: usize,
    level_capacity: [Option<usize>; 4],
    max_wait: [Option<Duration>; 4],
    aging: Duration,
    retry_after: Duration,
    extractor: E,
}

impl<E> QueueBuilder<E> {
    /// A builder with the default settings and this priority source.
    pub fn with_extractor(extractor: E) -> Self {
        QueueBuilder {
            name: Cow::Borrowed("default"),
            max_in_flight: 2,
            capacity: 32,
            level_capacity: [None; 4],
            max_wait: [Some(Duration::from_secs(60)); 4],
            aging: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            extractor,
        }
    }

    /// The queue's name: the `queue` label of its metrics and the `queue` field of its
    /// tracing events.
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The most requests in flight at once (at least 1; 0 is taken as 1).
    #[must_use]
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// The most requests waiting, all levels together. With 0, a request that finds every
    /// slot busy is refused at once ("reject instead of queue").
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most requests waiting at one level. An arrival whose level is full is refused
    /// (it displaces nobody).
    #[must_use]
    pub fn level_capacity(mut self, priority: Priority, capacity: usize) -> Self {
        self.level_capacity[priority.index()] = Some(capacity);
        self
    }

    /// The longest a request of this level may wait for a slot before it is refused with
    /// [`QueueError::QueueTimeout`](crate::QueueError::QueueTimeout). `Duration::MAX`
    /// means no limit.
    #[must_use]
    pub fn max_wait(mut self, priority: Priority, max_wait: Duration) -> Self {
        self.max_wait[priority.index()] = Some(max_wait).filter(|wait| *wait != Duration::MAX);
        self
    }

    /// The same maximum wait for every level; see [`max_wait`](Self::max_wait).
    #[must_use]
    pub fn max_wait_all(mut self, max_wait: Duration) -> Self {
        for priority in Priority::ALL {
            self = self.max_wait(priority, max_wait);
        }
        self
    }

    /// How much earlier each level counts than the one below it when the next slot is
    /// handed out: an urgent request is served before a low one that arrived less than
    /// `3 × aging` before it, but not before one that has waited longer. This bounds how
    /// long lower levels can be starved. `Duration::MAX` gives strict priority, with no
    /// such bound.
    #[must_use]
    pub fn aging(mut self, aging: Duration) -> Self {
        self.aging = aging;
        self
    }

    /// The `Retry-After` hint given with [`QueueFull`](crate::QueueError::QueueFull) and
    /// [`QueueTimeout`](crate::QueueError::QueueTimeout) refusals.
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Where priorities come from: any [`PriorityExtractor`](crate::PriorityExtractor)
    /// for the service's request type.
    #[must_use]
    pub fn extractor<E2>(self, extractor: E2) -> QueueBuilder<E2> {
        QueueBuilder {
            name: self.name,
            max_in_flight: self.max_in_flight,
            capacity: self.capacity,
            level_capacity: self.level_capacity,
            max_wait: self.max_wait,
            aging: self.aging,
            retry_after: self.retry_after,
            extractor,
        }
    }

    /// Builds the layer. Metric handles are resolved here: install the `metrics` recorder
    /// first.
    #[must_use]
    pub fn build(self) -> PriorityQueueLayer<E> {
        let limits = Limits {
            capacity: self.capacity,
            level_capacity: self
                .level_capacity
                .map(|capacity| capacity.unwrap_or(self.capacity)),
            aging: self.aging,
        };
        let settings = Settings {
            name: self.name,
            max_in_flight: self.max_in_flight,
            max_wait: self.max_wait,
            retry_after: self.retry_after,
        };
        let shared = Shared::new(settings, WaitQueue::new(limits, Instant::now()));
        PriorityQueueLayer {
            shared: Arc::new(shared),
            extractor: self.extractor,
        }
    }
}
