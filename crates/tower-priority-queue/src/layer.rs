//! The priority queue layer and its builder.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_layer::Layer;

use crate::core::{Limits, WaitQueue};
use crate::handle::QueueHandle;
use crate::limit::Limit;
use crate::overload::TimeoutOverload;
use crate::priority::Priority;
use crate::service::PriorityQueue;
use crate::shared::{Settings, Shared};

/// Applies priority admission to a service; see the [crate docs](crate).
///
/// Every service this layer builds, and every clone of those services, shares one set of
/// slots and one waiting room: build the layer once per queue you want.
#[derive(Clone)]
pub struct PriorityQueueLayer<E, C = TimeoutOverload> {
    shared: Arc<Shared>,
    extractor: E,
    classifier: C,
}

#[cfg(feature = "http")]
impl PriorityQueueLayer<crate::http::HeaderPriority> {
    /// A queue with the default settings, reading priorities from the `x-priority` header.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder with the default settings, reading priorities from the `x-priority`
    /// header; change the source with [`PriorityQueueLayerBuilder::extractor`].
    #[must_use]
    pub fn builder() -> PriorityQueueLayerBuilder<crate::http::HeaderPriority> {
        PriorityQueueLayerBuilder::with_extractor(crate::http::HeaderPriority::new())
    }
}

#[cfg(feature = "http")]
impl Default for PriorityQueueLayer<crate::http::HeaderPriority> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E, C> PriorityQueueLayer<E, C> {
    /// A handle on the queue's state, shared with every service the layer builds.
    #[must_use]
    pub fn handle(&self) -> QueueHandle {
        QueueHandle::new(Arc::clone(&self.shared))
    }
}

#[cfg(feature = "http")]
impl<E, C> PriorityQueueLayer<E, C> {
    /// This queue in the form that answers its refusals itself: a refused
    /// `http::Request` gets the answer of its [`QueueError`](crate::QueueError) (see
    /// [`Refusal`](crate::Refusal)): 503 with `Retry-After` for a full room, a cool-down
    /// or an exceeded wait, 400 for a malformed priority, or their gRPC trailers-only
    /// forms; and the service keeps the inner service's error type. On an axum route it
    /// attaches with `.layer(...)`; see the
    /// [crate documentation](crate#refusals-as-errors-or-as-answers).
    ///
    /// The queue is the same (shared slots and room, handle, metrics); only its refusals
    /// are answered rather than returned. Put a [`RetryLayer`](crate::RetryLayer) outside
    /// the error-returning form instead: it must see a refusal to leave it alone.
    #[must_use]
    pub fn answer_refusals(self) -> tower_refusal::AnswerRefusalsLayer<Self, crate::QueueError> {
        tower_refusal::AnswerRefusalsLayer::new(self)
    }
}

impl<S, E: Clone, C: Clone> Layer<S> for PriorityQueueLayer<E, C> {
    type Service = PriorityQueue<S, E, C>;

    fn layer(&self, inner: S) -> Self::Service {
        PriorityQueue::new(
            inner,
            self.extractor.clone(),
            self.classifier.clone(),
            Arc::clone(&self.shared),
        )
    }
}

impl<E, C> fmt::Debug for PriorityQueueLayer<E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityQueueLayer")
            .field("name", &self.shared.settings.name)
            .field("limit", &self.shared.settings.limit)
            .finish_non_exhaustive()
    }
}

/// Configures a [`PriorityQueueLayer`].
///
/// | setting | default |
/// |---|---|
/// | [`name`](Self::name) | `"default"` |
/// | [`limit`](Self::limit) (or [`max_in_flight`](Self::max_in_flight)) | fixed, 2 |
/// | [`overload_classifier`](Self::overload_classifier) | [`TimeoutOverload`] (use [`HttpOverload`](crate::HttpOverload) for HTTP answers) |
/// | [`capacity`](Self::capacity) (waiting, all levels) | 32 |
/// | [`level_capacity`](Self::level_capacity) | the total capacity |
/// | [`max_wait`](Self::max_wait) | 60 s at every level |
/// | [`aging`](Self::aging) | 10 s per level |
/// | [`retry_after`](Self::retry_after) | 5 s |
#[derive(Clone, Debug)]
pub struct PriorityQueueLayerBuilder<E, C = TimeoutOverload> {
    name: Cow<'static, str>,
    limit: Limit,
    classifier: C,
    capacity: usize,
    level_capacity: [Option<usize>; 4],
    max_wait: [Option<Duration>; 4],
    aging: Duration,
    retry_after: Duration,
    extractor: E,
}

/// The former name of [`PriorityQueueLayerBuilder`].
#[deprecated(
    since = "0.1.1",
    note = "renamed `PriorityQueueLayerBuilder`, after the layer it builds"
)]
pub type QueueBuilder<E, C = TimeoutOverload> = PriorityQueueLayerBuilder<E, C>;

impl<E> PriorityQueueLayerBuilder<E> {
    /// A builder with the default settings and this priority source.
    pub fn with_extractor(extractor: E) -> Self {
        PriorityQueueLayerBuilder {
            name: Cow::Borrowed("default"),
            limit: Limit::default(),
            classifier: TimeoutOverload,
            capacity: 32,
            level_capacity: [None; 4],
            max_wait: [Some(Duration::from_secs(60)); 4],
            aging: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            extractor,
        }
    }
}

impl<E, C> PriorityQueueLayerBuilder<E, C> {
    /// The queue's name: the `queue` label of its metrics and the `queue` field of its
    /// tracing events.
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// A fixed limit: the most requests in flight at once (at least 1; 0 is taken as 1).
    /// The same as `limit(Limit::fixed(max_in_flight))`.
    #[must_use]
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.limit = Limit::fixed(max_in_flight);
        self
    }

    /// The in-flight limit: [`Limit::Fixed`] (the default, 2) or an
    /// [`AdaptiveLimit`](crate::AdaptiveLimit) that finds the upstream's capacity from its
    /// overload signals. An adaptive limit reads each call's outcome through the
    /// [overload classifier](Self::overload_classifier): for HTTP answers set
    /// [`HttpOverload`](crate::HttpOverload), or only timeouts count.
    ///
    /// ```
    /// use tower_priority_queue::{HttpOverload, Limit, PriorityQueueLayer};
    ///
    /// let layer = PriorityQueueLayer::builder()
    ///     .limit(Limit::adaptive().initial(2).max(32))
    ///     .overload_classifier(HttpOverload::new())
    ///     .build();
    /// assert_eq!(layer.handle().max_in_flight(), 2);
    /// ```
    #[must_use]
    pub fn limit(mut self, limit: impl Into<Limit>) -> Self {
        self.limit = limit.into();
        self
    }

    /// What each call's outcome says about the upstream's load, for an adaptive limit:
    /// any [`OverloadClassifier`](crate::OverloadClassifier) for the inner service's response type.
    #[must_use]
    pub fn overload_classifier<C2>(self, classifier: C2) -> PriorityQueueLayerBuilder<E, C2> {
        PriorityQueueLayerBuilder {
            name: self.name,
            limit: self.limit,
            classifier,
            capacity: self.capacity,
            level_capacity: self.level_capacity,
            max_wait: self.max_wait,
            aging: self.aging,
            retry_after: self.retry_after,
            extractor: self.extractor,
        }
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
    /// means no limit; `Duration::ZERO` means no wait: a request of this level that finds
    /// no free slot is refused at once, without entering the room (it displaces nobody).
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
    pub fn extractor<E2>(self, extractor: E2) -> PriorityQueueLayerBuilder<E2, C> {
        PriorityQueueLayerBuilder {
            name: self.name,
            limit: self.limit,
            classifier: self.classifier,
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
    pub fn build(self) -> PriorityQueueLayer<E, C> {
        let limits = Limits {
            capacity: self.capacity,
            level_capacity: self
                .level_capacity
                .map(|capacity| capacity.unwrap_or(self.capacity)),
            aging: self.aging,
        };
        let settings = Settings {
            name: self.name,
            limit: self.limit,
            max_wait: self.max_wait,
            retry_after: self.retry_after,
        };
        let shared = Shared::new(settings, WaitQueue::new(limits, Instant::now()));
        PriorityQueueLayer {
            shared: Arc::new(shared),
            extractor: self.extractor,
            classifier: self.classifier,
        }
    }
}
