//! The layer and its builder.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::in_memory::{DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL};
use crate::metrics::Recorder;
use crate::{Clock, GlobalKey, InMemoryBackend, KeyExtractor, Quota, RateLimit, RateLimitHandle};

/// What happens to a request that finds no tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Refuse it at once with [`RateLimitError::RateLimited`](crate::RateLimitError).
    Reject,
    /// Hold it until its tokens are there, for at most `max_wait`. A request whose wait
    /// would be longer is refused at once, not after waiting.
    ///
    /// A waiting request holds no reservation, so one that is dropped spends nothing.
    /// The price: waiters race for each token as it comes back, in no particular order,
    /// and one that loses waits again for the next token if that still fits in its
    /// `max_wait`, and is refused otherwise.
    Wait {
        /// The longest a request is held.
        max_wait: Duration,
    },
}

/// State shared by the layer, every service it makes, their clones and the handles.
pub(crate) struct Shared<X, B> {
    pub(crate) extractor: X,
    pub(crate) backend: B,
    pub(crate) mode: Mode,
    pub(crate) name: Cow<'static, str>,
    pub(crate) recorder: Recorder,
}

/// Applies a token-bucket rate limit to the services it wraps.
///
/// Built with [`RateLimitLayer::builder`]. Every service this layer makes, and every
/// clone of them, shares one limiter: the same layer on two axum routes limits both
/// together. To limit routes separately, build one layer per route.
///
/// See the [crate documentation](crate) for an example.
pub struct RateLimitLayer<X, B = InMemoryBackend<<X as KeyExtractor>::Key>>
where
    X: KeyExtractor,
{
    shared: Arc<Shared<X, B>>,
}

impl<X: KeyExtractor, B> Clone for RateLimitLayer<X, B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<X: KeyExtractor, B> fmt::Debug for RateLimitLayer<X, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name)
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer<GlobalKey> {
    /// Starts a builder enforcing `quota`, with one global bucket, reject mode and the
    /// name `"default"`. Same as [`RateLimitLayerBuilder::new`].
    pub fn builder(quota: Quota) -> RateLimitLayerBuilder<GlobalKey> {
        RateLimitLayerBuilder::new(quota)
    }
}

impl<X: KeyExtractor, B> RateLimitLayer<X, B>
where
    B: crate::RateLimitBackend<X::Key>,
{
    /// A cheap handle on this limiter's counts and per-key capacity.
    #[must_use]
    pub fn handle(&self) -> RateLimitHandle<X::Key> {
        RateLimitHandle::new(Arc::clone(&self.shared) as _)
    }

    /// The backend that makes the decisions.
    #[must_use]
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }
}

#[cfg(feature = "http")]
impl<X: KeyExtractor, B> RateLimitLayer<X, B> {
    /// This limiter in the form that answers its refusals itself: a refused
    /// `http::Request` gets the answer of its [`RateLimitError`](crate::RateLimitError)
    /// (see [`Refusal`](crate::Refusal)): 429 with `Retry-After`, `RateLimit-Policy` and
    /// `RateLimit`, or the gRPC trailers-only `RESOURCE_EXHAUSTED`, and the service keeps
    /// the inner service's error type. On an axum route it attaches with `.layer(...)`;
    /// see the [crate documentation](crate#refusals-as-errors-or-as-answers).
    ///
    /// The limiter is the same (shared state, handle, metrics); only its refusals are
    /// answered rather than returned.
    #[must_use]
    pub fn answer_refusals(
        self,
    ) -> tower_refusal::AnswerRefusalsLayer<Self, crate::RateLimitError> {
        tower_refusal::AnswerRefusalsLayer::new(self)
    }
}

impl<S, X: KeyExtractor, B> Layer<S> for RateLimitLayer<X, B> {
    type Service = RateLimit<S, X, B>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`RateLimitLayer`].
#[derive(Debug)]
#[must_use]
pub struct RateLimitLayerBuilder<X> {
    quotas: Vec<Quota>,
    extractor: X,
    mode: Mode,
    name: Cow<'static, str>,
    max_keys: usize,
    prune_interval: Duration,
    clock: Clock,
}

impl RateLimitLayerBuilder<GlobalKey> {
    /// Starts a builder enforcing `quota`, with one global bucket ([`GlobalKey`]),
    /// reject mode and the name `"default"`.
    pub fn new(quota: Quota) -> Self {
        Self {
            quotas: vec![quota],
            extractor: GlobalKey,
            mode: Mode::Reject,
            name: Cow::Borrowed("default"),
            max_keys: DEFAULT_MAX_KEYS,
            prune_interval: DEFAULT_PRUNE_INTERVAL,
            clock: Clock::Monotonic,
        }
    }
}

impl<X: KeyExtractor> RateLimitLayerBuilder<X> {
    /// Adds another quota (say 100 a minute on top of 5 a second). Quotas are checked in
    /// the order they were added; the first that refuses decides, and a refused request
    /// spends nothing from any of them.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// What requests are limited by. Defaults to [`GlobalKey`].
    pub fn key<Y: KeyExtractor>(self, extractor: Y) -> RateLimitLayerBuilder<Y> {
        RateLimitLayerBuilder {
            quotas: self.quotas,
            extractor,
            mode: self.mode,
            name: self.name,
            max_keys: self.max_keys,
            prune_interval: self.prune_interval,
            clock: self.clock,
        }
    }

    /// The limiter's name: the `limiter` metric label and the `RateLimit` header's policy
    /// name. Defaults to `"default"`.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Refuse requests that find no tokens (the default).
    pub fn reject(mut self) -> Self {
        self.mode = Mode::Reject;
        self
    }

    /// Hold requests that find no tokens until their tokens are there, at most
    /// `max_wait`.
    ///
    /// `Duration::MAX` (or any wait too long to add to the current time) is no limit: a
    /// request waits as long as its tokens take. `Duration::ZERO` never holds a request:
    /// one that finds no tokens is refused at once, as in [`reject`](Self::reject) mode.
    pub fn wait(mut self, max_wait: Duration) -> Self {
        self.mode = Mode::Wait { max_wait };
        self
    }

    /// The most keys tracked at once ([`InMemoryBackend`]; default 100,000; zero is one).
    ///
    /// A new key is never refused for lack of room: when the cap is reached, the keys
    /// whose bucket is full again are forgotten (nothing is lost: a new key starts with a
    /// full bucket), then if need be the keys closest to a full bucket, a sixteenth of the
    /// cap at a time. Users mid-burst keep their state through a flood of made-up keys
    /// that spend less than they did. See [`InMemoryBackend`] for the details.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How often idle keys are pruned ([`InMemoryBackend`]; default 10 s).
    ///
    /// `Duration::ZERO`, or an interval too long to schedule (`Duration::MAX`), turns the
    /// periodic prune off: memory is then bounded by [`max_keys`](Self::max_keys) alone,
    /// whose cap frees room as it is reached.
    pub fn prune_interval(mut self, every: Duration) -> Self {
        self.prune_interval = every;
        self
    }

    /// The clock the [`InMemoryBackend`] reads (default [`Clock::Monotonic`], the CPU's
    /// time-stamp counter). Tests that pause tokio's time and advance it to see tokens
    /// come back use [`Clock::Tokio`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the layer on the in-process [`InMemoryBackend`].
    ///
    /// Install the `metrics` recorder before this call.
    pub fn build(self) -> RateLimitLayer<X> {
        let backend = InMemoryBackend::with_clock(
            &self.quotas,
            self.max_keys,
            self.prune_interval,
            self.clock,
        );
        self.build_with_backend(backend)
    }

    /// Builds the layer on a [`RedisBackend`](crate::RedisBackend) (feature `redis`):
    /// the limit is shared by every instance using the same Redis, prefix and quotas.
    ///
    /// The builder's quotas, name, [`max_keys`](Self::max_keys) and
    /// [`prune_interval`](Self::prune_interval) go to the backend (the name only if
    /// `redis` has none). See [`RedisBackend`](crate::RedisBackend) for an example.
    ///
    /// Install the `metrics` recorder before this call.
    #[cfg(feature = "redis")]
    pub fn build_redis<C>(
        self,
        redis: crate::RedisBackendBuilder<C>,
    ) -> RateLimitLayer<X, crate::RedisBackend<X::Key, C>>
    where
        X::Key: crate::RedisKey,
        C: ::redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    {
        let backend = redis
            .defaults(self.name.clone(), self.max_keys, self.prune_interval)
            .build(&self.quotas);
        self.build_with_backend(backend)
    }

    /// Builds the layer on another backend (its quotas replace the builder's).
    pub fn build_with_backend<B>(self, backend: B) -> RateLimitLayer<X, B>
    where
        B: crate::RateLimitBackend<X::Key>,
    {
        let recorder = Recorder::new(&self.name);
        RateLimitLayer {
            shared: Arc::new(Shared {
                extractor: self.extractor,
                backend,
                mode: self.mode,
                name: self.name,
                recorder,
            }),
        }
    }
}
