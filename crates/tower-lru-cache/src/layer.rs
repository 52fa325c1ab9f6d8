//! [`CacheLayer`] and its builder.

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use http::response::Parts;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::Clock;
use crate::{
    cached::CachedResponse,
    core::Core,
    http_key::{KeyBuilder, Partition, RequestKey},
    metrics::{DEFAULT_MAX_ENTRIES, DEFAULT_NAME, DEFAULT_TTL},
    service::CacheService,
    shared::{HttpShared, LateWait, Pending, ResponsePredicate},
    stats::CacheHandle,
    store::{CacheStore, MokaStore},
};

/// Default largest request body read to build a key: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
/// Default largest response body buffered to be cached: 4 MiB.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 4 << 20;

/// Default longest wait for an answer whose body is streaming to another request: 30 s.
pub const DEFAULT_BODY_WAIT: Duration = Duration::from_secs(30);

/// A [`tower_layer::Layer`] that caches HTTP responses. See the crate docs.
///
/// Every service it builds, and every clone of it, shares one cache.
pub struct CacheLayer<St = MokaStore<CachedResponse>> {
    shared: Arc<HttpShared<St>>,
}

impl CacheLayer {
    /// A cache with every default: 100 entries, one hour TTL, no stale grace, `2xx`
    /// answers cached, keyed by [`RequestKey::new`] (**not partitioned**: answers are
    /// shared between users).
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder starting from the defaults.
    #[must_use]
    pub fn builder() -> CacheLayerBuilder {
        CacheLayerBuilder::default()
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<St> CacheLayer<St> {
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<HttpShared<St>> {
        &self.shared
    }
}

impl<St: CacheStore<CachedResponse>> CacheLayer<St> {
    /// A handle on the cache: statistics and invalidation.
    #[must_use]
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.clone())
    }
}

impl<St> CacheLayer<St> {
    /// This cache in the form that answers its refusals itself: a [`CacheError`]
    /// (a request body that could not be read, 400; an upstream body that failed, or a
    /// failed call shared with coalesced requests, 502) becomes its answer (see
    /// [`Refusal`](crate::Refusal)), JSON or gRPC trailers-only, and the service keeps the
    /// inner service's error type. On an axum route it attaches with `.layer(...)`; see
    /// the [crate documentation](crate#refusals-as-errors-or-as-answers).
    ///
    /// The cache is the same (shared entries, handle, metrics); only its refusals are
    /// answered rather than returned.
    ///
    /// [`CacheError`]: crate::CacheError
    #[must_use]
    pub fn answer_refusals(self) -> tower_refusal::AnswerRefusalsLayer<Self, crate::CacheError> {
        tower_refusal::AnswerRefusalsLayer::new(self)
    }
}

impl<St> Clone for CacheLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St> fmt::Debug for CacheLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.shared)
            .finish()
    }
}

impl<S, St> Layer<S> for CacheLayer<St> {
    type Service = CacheService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`CacheLayer`]. Start from [`CacheLayer::builder`].
pub struct CacheLayerBuilder<St = MokaStore<CachedResponse>> {
    name: Cow<'static, str>,
    store: St,
    ttl: Duration,
    grace: Duration,
    clock: Clock,
    key: Arc<dyn KeyBuilder>,
    max_request_body: usize,
    max_response_body: usize,
    cacheable: ResponsePredicate,
    degraded: ResponsePredicate,
    cache_control: bool,
    share_failures: bool,
    body_wait: Duration,
    late_wait: Option<LateWait>,
}

impl Default for CacheLayerBuilder {
    fn default() -> Self {
        Self {
            name: Cow::Borrowed(DEFAULT_NAME),
            store: MokaStore::with_max_entries(DEFAULT_MAX_ENTRIES),
            ttl: DEFAULT_TTL,
            grace: Duration::ZERO,
            clock: Clock::Monotonic,
            key: Arc::new(RequestKey::new()),
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            cacheable: Arc::new(|parts: &Parts| parts.status.is_success()),
            degraded: Arc::new(|_: &Parts| false),
            cache_control: true,
            share_failures: true,
            body_wait: DEFAULT_BODY_WAIT,
            late_wait: None,
        }
    }
}

impl<St> fmt::Debug for CacheLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("grace", &self.grace)
            .field("clock", &self.clock)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("cache_control", &self.cache_control)
            .field("share_failures", &self.share_failures)
            .field("body_wait", &self.body_wait)
            .field("waits_for_late_answers", &self.late_wait.is_some())
            .finish_non_exhaustive()
    }
}

impl CacheLayerBuilder {
    /// Holds at most `n` entries (default 100), evicting the least recently used.
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.store = MokaStore::with_max_entries(n);
        self
    }

    /// Holds at most about `bytes` of responses (body, headers and trailers, as
    /// [`CachedResponse::weight`] counts them), instead of a number of entries.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.store = MokaStore::with_max_bytes(bytes);
        self
    }
}

impl<St> CacheLayerBuilder<St> {
    /// The cache's name: the `cache` label of its metrics (default `"default"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How long an entry is fresh (default one hour). A response's `Cache-Control` may
    /// shorten it, never lengthen it.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Stale-if-error: keep entries this long past their TTL (default zero), and serve
    /// one, marked `x-cache: STALE`, when the refill fails, answers with a server error,
    /// or answers degraded.
    #[must_use]
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The clock the cache reads (default [`Clock::Monotonic`], the CPU's time-stamp
    /// counter). Tests that pause tokio's time and advance it to see entries go stale
    /// use [`Clock::Tokio`].
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The key builder (default [`RequestKey::new`]).
    #[must_use]
    pub fn key(mut self, key: impl KeyBuilder) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Shorthand for `.key(RequestKey::new().partition(partition))`: the default key,
    /// partitioned by user.
    #[must_use]
    pub fn partition(self, partition: Partition) -> Self {
        self.key(RequestKey::new().partition(partition))
    }

    /// Requests whose body may be larger than this (by their `size_hint`, including
    /// bodies of unknown size) bypass the cache unread (default 1 MiB).
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// Responses with larger bodies are streamed through uncached: the cache's copy of
    /// a body stops at this many bytes (default 4 MiB).
    #[must_use]
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// Which answers may be stored (default: `2xx`). Degraded answers never are.
    #[must_use]
    pub fn cacheable(mut self, f: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.cacheable = Arc::new(f);
        self
    }

    /// Which answers are degraded (default: none), for example a fallback's answer marked
    /// by a response extension. Degraded answers are never stored, and count as failures
    /// for stale-if-error.
    #[must_use]
    pub fn degraded_if(mut self, f: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.degraded = Arc::new(f);
        self
    }

    /// Whether the response's `Cache-Control` (`no-store`, `no-cache`, `private`,
    /// `max-age`, `s-maxage`) is honoured (default `true`). The other sharing rules
    /// (`Set-Cookie`, `Authorization`, `Vary`, partial content, gRPC failures, event
    /// streams) hold either way.
    #[must_use]
    pub fn respect_cache_control(mut self, yes: bool) -> Self {
        self.cache_control = yes;
        self
    }

    /// What the requests coalesced behind a leader whose inner call failed with an error
    /// get (without a stale entry to serve). `true` (the default): the failure, as a
    /// [`CacheError::Coalesced`](crate::CacheError::Coalesced) carrying its message, so
    /// that a failing upstream sees one call, not one per waiter. `false`: each waiter
    /// calls the inner service itself, and gets its own answer or its own error (with
    /// its own type and status): right when the errors that reach the cache are local
    /// refusals (a full queue, a rate limit) rather than upstream failures. The
    /// waiters then coalesce again behind one of them, round after round, so that the
    /// inner service sees one call for the key at a time rather than one per waiter at
    /// once.
    #[must_use]
    pub fn share_failures(mut self, share: bool) -> Self {
        self.share_failures = share;
        self
    }

    /// How long a request waits for an identical request's answer whose head has
    /// arrived and whose body is still streaming to that request (default 30 s). The
    /// answer's head goes to the request that called at once and its body streams on;
    /// the cache keeps a copy, and the requests coalesced onto the call get the whole
    /// answer when it ends. Past this wait (or if the copy is abandoned: too large, the
    /// body failed, or the caller went away), they make a call of their own (one for
    /// all of them), so no request waits without bound on a body that another client
    /// reads.
    #[must_use]
    pub fn body_wait(mut self, wait: Duration) -> Self {
        self.body_wait = wait;
        self
    }

    /// Lets requests wait for a call that runs on after the request that made it was
    /// answered, until the instant `until` reads from their extensions (their deadline,
    /// say); a request for which it reads `None` does not wait. Off by default.
    ///
    /// A layer below the cache may answer a request before its call ends (a deadline
    /// answered by a fallback) and let the call run on, handing its answer to the
    /// [`LateAnswer`](crate::LateAnswer) the cache put in the request. The requests
    /// coalesced onto that call would otherwise share the early answer (a degraded one),
    /// or make calls of their own if it may not be shared (`no-store`, say), and the
    /// requests arriving meanwhile would make calls of their own, while the provider is
    /// still working on the key. With this setting, both wait for the call instead: its
    /// answer, once stored, answers them as a coalesced one. If it is not stored (the
    /// call failed, or its answer may not be kept) or `until` passes first, they go on
    /// as they would have.
    ///
    /// ```
    /// use tokio::time::Instant;
    /// use tower_lru_cache::CacheLayer;
    ///
    /// /// Put in each request's extensions by a layer above the cache.
    /// #[derive(Clone, Copy)]
    /// struct Deadline(Instant);
    ///
    /// let layer = CacheLayer::builder()
    ///     .wait_for_late_answers(|extensions| extensions.get::<Deadline>().map(|d| d.0))
    ///     .build();
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn wait_for_late_answers(
        mut self,
        until: impl Fn(&http::Extensions) -> Option<Instant> + Send + Sync + 'static,
    ) -> Self {
        self.late_wait = Some(Arc::new(until));
        self
    }

    /// Stores entries in `store` instead of the default in-process moka store; the
    /// `max_entries`/`max_bytes` bounds are then the store's own business.
    #[must_use]
    pub fn store<St2: CacheStore<CachedResponse>>(self, store: St2) -> CacheLayerBuilder<St2> {
        CacheLayerBuilder {
            name: self.name,
            store,
            ttl: self.ttl,
            grace: self.grace,
            clock: self.clock,
            key: self.key,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            cacheable: self.cacheable,
            degraded: self.degraded,
            cache_control: self.cache_control,
            share_failures: self.share_failures,
            body_wait: self.body_wait,
            late_wait: self.late_wait,
        }
    }
}

impl<St: CacheStore<CachedResponse>> CacheLayerBuilder<St> {
    /// Builds the layer, resolving its metric handles now: install the `metrics`
    /// recorder before calling this.
    #[must_use]
    pub fn build(self) -> CacheLayer<St> {
        let shared = HttpShared {
            core: Core::new(self.name, self.store, self.ttl, self.grace, self.clock),
            key: self.key,
            max_request_body: self.max_request_body as u64,
            max_response_body: self.max_response_body,
            cacheable: self.cacheable,
            degraded: self.degraded,
            cache_control: self.cache_control,
            share_failures: self.share_failures,
            body_wait: self.body_wait,
            streams: Pending::default(),
            late_wait: self.late_wait,
            running_on: Pending::default(),
        };
        CacheLayer {
            shared: Arc::new(shared),
        }
    }
}
