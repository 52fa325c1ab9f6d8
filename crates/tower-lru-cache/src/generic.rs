//! The cache for any request type: [`FnCacheLayer`], keyed by a user function, for
//! services with a `Clone` response (for example an AI SDK call).

use std::{
    borrow::Cow,
    fmt,
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::Clock;
use crate::{
    core::{Core, Flight, Found},
    error::{BoxError, CacheError},
    key::CacheKey,
    metrics::Outcome,
    stats::{CacheHandle, CacheSnapshot, HandleOps},
    store::{CacheStore, Entry, MokaStore},
};

type Predicate<Res> = Arc<dyn Fn(&Res) -> bool + Send + Sync>;

struct FnShared<K, Res, St> {
    core: Core<Res, St>,
    key: K,
    cacheable: Predicate<Res>,
    degraded: Predicate<Res>,
}

impl<K, Res, St> HandleOps for FnShared<K, Res, St>
where
    K: Send + Sync + 'static,
    Res: Send + Sync + 'static,
    St: CacheStore<Res>,
{
    fn snapshot(&self) -> CacheSnapshot {
        self.core.snapshot()
    }

    fn remove(&self, key: &CacheKey) {
        self.core.remove(key);
    }

    fn clear(&self) {
        self.core.clear();
    }

    #[cfg(feature = "http")]
    fn key_for(&self, _parts: &http::request::Parts, _body: &[u8]) -> Option<CacheKey> {
        None
    }
}

/// Caches the responses of any service: the key comes from `K: Fn(&Req) ->
/// Option<CacheKey>` (`None` bypasses), and the response must be `Clone`.
///
/// Same single-flight, TTL and stale-if-error semantics as the HTTP
/// [`CacheLayer`](crate::CacheLayer); the response is returned as is, unmarked.
///
/// ```
/// use std::{convert::Infallible, time::Duration};
///
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_lru_cache::{FnCacheLayer, KeyHasher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lru_cache::BoxError> {
/// let cache = FnCacheLayer::builder(|prompt: &String| {
///     let mut key = KeyHasher::new();
///     key.field(0, prompt.as_bytes());
///     Some(key.finish())
/// })
/// .name("ai-sdk")
/// .ttl(Duration::from_secs(3600))
/// .build();
/// let handle = cache.handle();
/// let svc = ServiceBuilder::new()
///     .layer(cache)
///     .service_fn(|prompt: String| async move { Ok::<_, Infallible>(format!("analysis of {prompt}")) });
///
/// assert_eq!(svc.clone().oneshot("x".to_owned()).await?, "analysis of x");
/// assert_eq!(svc.clone().oneshot("x".to_owned()).await?, "analysis of x");
/// assert_eq!((handle.snapshot().misses, handle.snapshot().hits), (1, 1));
/// # Ok(())
/// # }
/// ```
pub struct FnCacheLayer<K, Res, St = MokaStore<Res>> {
    shared: Arc<FnShared<K, Res, St>>,
}

impl<K, Res: Send + Sync + 'static> FnCacheLayer<K, Res> {
    /// A builder keyed by `key`: 100 entries, one hour TTL, no grace, every `Ok` cached.
    pub fn builder(key: K) -> FnCacheLayerBuilder<K, Res> {
        FnCacheLayerBuilder {
            name: Cow::Borrowed(crate::metrics::DEFAULT_NAME),
            store: MokaStore::with_max_entries(crate::metrics::DEFAULT_MAX_ENTRIES),
            ttl: crate::metrics::DEFAULT_TTL,
            grace: Duration::ZERO,
            clock: Clock::Monotonic,
            key,
            cacheable: Arc::new(|_: &Res| true),
            degraded: Arc::new(|_: &Res| false),
        }
    }
}

impl<K, Res, St> FnCacheLayer<K, Res, St>
where
    K: Send + Sync + 'static,
    Res: Send + Sync + 'static,
    St: CacheStore<Res>,
{
    /// A handle on the cache: statistics and invalidation.
    #[must_use]
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.clone())
    }
}

impl<K, Res, St> Clone for FnCacheLayer<K, Res, St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, Res, St> fmt::Debug for FnCacheLayer<K, Res, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCacheLayer")
            .field("cache", &self.shared.core)
            .finish()
    }
}

impl<S, K, Res, St> Layer<S> for FnCacheLayer<K, Res, St> {
    type Service = FnCacheService<S, K, Res, St>;

    fn layer(&self, inner: S) -> Self::Service {
        FnCacheService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Configures an [`FnCacheLayer`].
pub struct FnCacheLayerBuilder<K, Res, St = MokaStore<Res>> {
    name: Cow<'static, str>,
    store: St,
    ttl: Duration,
    grace: Duration,
    clock: Clock,
    key: K,
    cacheable: Predicate<Res>,
    degraded: Predicate<Res>,
}

impl<K, Res, St> fmt::Debug for FnCacheLayerBuilder<K, Res, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCacheLayerBuilder")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("grace", &self.grace)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl<K, Res: Send + Sync + 'static> FnCacheLayerBuilder<K, Res> {
    /// Holds at most `n` entries (default 100), evicting the least recently used.
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.store = MokaStore::with_max_entries(n);
        self
    }

    /// Holds entries whose weights (`weigher`, for example a size in bytes) add up to at
    /// most `max_weight`.
    #[must_use]
    pub fn max_weight(
        mut self,
        max_weight: u64,
        weigher: impl Fn(&Res) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.store = MokaStore::with_weigher(max_weight, weigher);
        self
    }
}

impl<K, Res, St> FnCacheLayerBuilder<K, Res, St> {
    /// The cache's name: the `cache` label of its metrics (default `"default"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How long an entry is fresh (default one hour).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Stale-if-error: keep entries this long past their TTL (default zero) and serve one
    /// when the refill fails or answers degraded.
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

    /// Which responses may be stored (default: all).
    #[must_use]
    pub fn cacheable(mut self, f: impl Fn(&Res) -> bool + Send + Sync + 'static) -> Self {
        self.cacheable = Arc::new(f);
        self
    }

    /// Which responses are degraded (default: none): never stored, and failures for
    /// stale-if-error.
    #[must_use]
    pub fn degraded_if(mut self, f: impl Fn(&Res) -> bool + Send + Sync + 'static) -> Self {
        self.degraded = Arc::new(f);
        self
    }

    /// Stores entries in `store` instead of the default in-process moka store.
    #[must_use]
    pub fn store<St2: CacheStore<Res>>(self, store: St2) -> FnCacheLayerBuilder<K, Res, St2> {
        FnCacheLayerBuilder {
            name: self.name,
            store,
            ttl: self.ttl,
            grace: self.grace,
            clock: self.clock,
            key: self.key,
            cacheable: self.cacheable,
            degraded: self.degraded,
        }
    }
}

impl<K, Res, St> FnCacheLayerBuilder<K, Res, St>
where
    Res: Send + Sync + 'static,
    St: CacheStore<Res>,
{
    /// Builds the layer, resolving its metric handles now: install the `metrics`
    /// recorder before calling this.
    #[must_use]
    pub fn build(self) -> FnCacheLayer<K, Res, St> {
        let core = Core::new(self.name, self.store, self.ttl, self.grace, self.clock);
        FnCacheLayer {
            shared: Arc::new(FnShared {
                core,
                key: self.key,
                cacheable: self.cacheable,
                degraded: self.degraded,
            }),
        }
    }
}

/// The service built by [`FnCacheLayer`].
///
/// Request: any `Req` the key function accepts. Response: the inner `Res: Clone`.
/// Error: [`BoxError`] (the inner error unchanged, or a boxed [`CacheError`]).
/// Always ready; misses drive a clone of the inner service to readiness in the future.
pub struct FnCacheService<S, K, Res, St = MokaStore<Res>> {
    inner: S,
    shared: Arc<FnShared<K, Res, St>>,
}

impl<S, K, Res, St> FnCacheService<S, K, Res, St> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, Res, St> Clone for FnCacheService<S, K, Res, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K, Res, St> fmt::Debug for FnCacheService<S, K, Res, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCacheService")
            .field("inner", &self.inner)
            .field("cache", &self.shared.core)
            .finish()
    }
}

impl<S, K, Req, Res, St> Service<Req> for FnCacheService<S, K, Res, St>
where
    S: Service<Req, Response = Res> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    K: Fn(&Req) -> Option<CacheKey> + Send + Sync + 'static,
    Req: Send + 'static,
    Res: Clone + Send + Sync + 'static,
    St: CacheStore<Res>,
{
    type Response = Res;
    type Error = BoxError;
    type Future = FnCacheFuture<S, Req, Res, St>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let core = &self.shared.core;
        let state = match (self.shared.key)(&req) {
            // The store answers at once: a hit clones neither the service nor the state.
            Some(key) => match core.store.get_now(&key) {
                Some(found) => match Arc::clone(&self.shared).hit_or_miss(
                    found,
                    key,
                    || self.inner.clone(),
                    req,
                ) {
                    Ok(hit) => FnState::Done { out: Some(hit) },
                    Err(fut) => FnState::Miss { fut },
                },
                None => FnState::Lookup {
                    get: core.store.get(&key),
                    key,
                    call: Some((self.inner.clone(), req)),
                    shared: self.shared.clone(),
                },
            },
            None => {
                core.record(Outcome::Bypass);
                FnState::Ready {
                    svc: self.inner.clone(),
                    req: Some(req),
                }
            }
        };
        FnCacheFuture { state }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The type-erased part of the shared state that a pending lookup needs: the store's
/// lookups are typed by `St`, the rest is reached through this.
trait FnMiss<S, Req, Res>: Send + Sync {
    fn hit_or_miss_with(
        self: Arc<Self>,
        found: Option<Arc<Entry<Res>>>,
        key: CacheKey,
        svc: S,
        req: Req,
    ) -> Result<Res, BoxFuture<Result<Res, BoxError>>>;
}

impl<K, Res, St> FnShared<K, Res, St>
where
    K: Send + Sync + 'static,
    Res: Clone + Send + Sync + 'static,
    St: CacheStore<Res>,
{
    /// A fresh entry answers; anything else takes the miss path, with `svc()`.
    fn hit_or_miss<S, Req>(
        self: Arc<Self>,
        found: Option<Arc<Entry<Res>>>,
        key: CacheKey,
        svc: impl FnOnce() -> S,
        req: Req,
    ) -> Result<Res, BoxFuture<Result<Res, BoxError>>>
    where
        S: Service<Req, Response = Res> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        Req: Send + 'static,
    {
        let stale = match self.core.classify(found, self.core.now()) {
            Found::Fresh(entry) => {
                self.core.record(Outcome::Hit);
                return Ok(entry.value().clone());
            }
            Found::Stale(entry) => Some(entry),
            Found::Absent => None,
        };
        Err(Box::pin(fn_miss(self, svc(), req, key, stale)))
    }
}

impl<S, K, Req, Res, St> FnMiss<S, Req, Res> for FnShared<K, Res, St>
where
    S: Service<Req, Response = Res> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    K: Send + Sync + 'static,
    Req: Send + 'static,
    Res: Clone + Send + Sync + 'static,
    St: CacheStore<Res>,
{
    fn hit_or_miss_with(
        self: Arc<Self>,
        found: Option<Arc<Entry<Res>>>,
        key: CacheKey,
        svc: S,
        req: Req,
    ) -> Result<Res, BoxFuture<Result<Res, BoxError>>> {
        self.hit_or_miss(found, key, move || svc, req)
    }
}

enum Own<Res> {
    Hit(Res),
    Value { value: Res, failed: bool },
    Error(BoxError),
}

async fn fn_miss<S, K, Req, Res, St>(
    shared: Arc<FnShared<K, Res, St>>,
    svc: S,
    req: Req,
    key: CacheKey,
    stale: Option<Arc<Entry<Res>>>,
) -> Result<Res, BoxError>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
    Res: Clone + Send + Sync + 'static,
    St: CacheStore<Res>,
{
    let core = &shared.core;
    let mut call = Some((svc, req));
    let mut own = None;
    let flight = core
        .flight(key, async {
            let Some((mut svc, req)) = call.take() else {
                return Flight::Alone;
            };
            let generation = core.generation();
            if let Found::Fresh(entry) =
                core.classify(core.store.get_recent(&key).await, core.now())
            {
                own = Some(Own::Hit(entry.value().clone()));
                return Flight::Stored(entry);
            }
            // Another instance may be filling this key (a shared store's lock).
            if let Some(turn) = core.store.fill_turn(&key)
                && let Found::Fresh(entry) = core.classify(turn.await, core.now())
            {
                own = Some(Own::Hit(entry.value().clone()));
                return Flight::Stored(entry);
            }
            let ready: Result<(), BoxError> =
                poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into);
            let result = match ready {
                Ok(()) => svc.call(req).await.map_err(Into::into),
                Err(e) => Err(e),
            };
            match result {
                Err(e) => {
                    let message = e.to_string().into();
                    own = Some(Own::Error(e));
                    Flight::Failed(message)
                }
                Ok(value) => {
                    let degraded = (shared.degraded)(&value);
                    if !degraded && (shared.cacheable)(&value) {
                        own = Some(Own::Value {
                            value: value.clone(),
                            failed: false,
                        });
                        match core.store(key, value, core.ttl, generation) {
                            Ok(entry) => Flight::Stored(entry),
                            Err(value) => Flight::Shared {
                                value,
                                failed: false,
                            },
                        }
                    } else {
                        own = Some(Own::Value {
                            value: value.clone(),
                            failed: degraded,
                        });
                        Flight::Shared {
                            value,
                            failed: degraded,
                        }
                    }
                }
            }
        })
        .await;
    let serve_stale = |entry: &Entry<Res>| {
        core.record(Outcome::Stale);
        Ok(entry.value().clone())
    };
    // Judged now, when it would be served: the call may have outlived the grace.
    let stale = core.still_stale(stale.as_deref());
    if let Some(own) = own {
        return match (own, stale) {
            (Own::Hit(value), _) => {
                core.record(Outcome::Hit);
                Ok(value)
            }
            (Own::Value { failed: true, .. } | Own::Error(_), Some(entry)) => serve_stale(entry),
            (Own::Value { value, .. }, _) => {
                core.record(Outcome::Miss);
                Ok(value)
            }
            (Own::Error(e), None) => {
                core.record(Outcome::Miss);
                Err(e)
            }
        };
    }
    match (&*flight, stale) {
        (Flight::Shared { failed: true, .. } | Flight::Failed(_), Some(entry)) => {
            serve_stale(entry)
        }
        (Flight::Stored(entry), _) => {
            core.record(Outcome::Coalesced);
            Ok(entry.value().clone())
        }
        (Flight::Shared { value, .. }, _) => {
            core.record(Outcome::Coalesced);
            Ok(value.clone())
        }
        (Flight::Failed(message), None) => {
            core.record(Outcome::Coalesced);
            Err(CacheError::Coalesced {
                message: Arc::clone(message),
            }
            .into())
        }
        (Flight::Alone | Flight::Streaming(_), _) => {
            let Some((mut svc, req)) = call.take() else {
                return Err(CacheError::Coalesced {
                    message: "leading request's answer was not shared".into(),
                }
                .into());
            };
            core.record(Outcome::Miss);
            poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into)?;
            svc.call(req).await.map_err(Into::into)
        }
    }
}

/// The future of [`FnCacheService`]: a hit completes without allocating.
#[pin_project]
pub struct FnCacheFuture<S, Req, Res, St>
where
    S: Service<Req>,
    St: CacheStore<Res>,
{
    #[pin]
    state: FnState<S, Req, Res, St>,
}

#[pin_project(project = FnStateProj)]
enum FnState<S, Req, Res, St>
where
    S: Service<Req>,
    St: CacheStore<Res>,
{
    Lookup {
        #[pin]
        get: St::Get,
        key: CacheKey,
        call: Option<(S, Req)>,
        shared: Arc<dyn FnMiss<S, Req, Res>>,
    },
    Ready {
        svc: S,
        req: Option<Req>,
    },
    Call {
        #[pin]
        fut: S::Future,
    },
    Miss {
        fut: BoxFuture<Result<Res, BoxError>>,
    },
    Done {
        out: Option<Res>,
    },
}

impl<S, Req, Res, St> Future for FnCacheFuture<S, Req, Res, St>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
    St: CacheStore<Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                FnStateProj::Lookup {
                    get,
                    key,
                    call,
                    shared,
                } => {
                    let found = ready!(get.poll(cx));
                    let Some((svc, req)) = call.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    match Arc::clone(shared).hit_or_miss_with(found, *key, svc, req) {
                        Ok(hit) => return Poll::Ready(Ok(hit)),
                        Err(fut) => FnState::Miss { fut },
                    }
                }
                FnStateProj::Ready { svc, req } => {
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    FnState::Call { fut: svc.call(req) }
                }
                FnStateProj::Call { fut } => return fut.poll(cx).map_err(Into::into),
                FnStateProj::Miss { fut } => return fut.as_mut().poll(cx),
                FnStateProj::Done { out } => {
                    return Poll::Ready(out.take().ok_or_else(polled_after_completion));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

fn polled_after_completion() -> BoxError {
    "cache future polled after completion".into()
}

impl<S, Req, Res, St> fmt::Debug for FnCacheFuture<S, Req, Res, St>
where
    S: Service<Req>,
    St: CacheStore<Res>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCacheFuture").finish_non_exhaustive()
    }
}
