//! Where the preset keeps the state several instances may share: the limiters' buckets
//! and the cache's entries. In process by default; in Redis with the `redis` feature and
//! [`HealthAiStackBuilder::redis`](crate::HealthAiStackBuilder::redis).
//!
//! Both seams are enums rather than type parameters, so that [`HealthAiStack`] and
//! [`HealthAi`](crate::HealthAi) keep one type whichever is chosen. Their in-process arm
//! adds a branch on a discriminant and nothing else: no allocation, no dynamic call (a
//! cache hit is still answered by [`MokaStore::get_now`]).
//!
//! [`HealthAiStack`]: crate::HealthAiStack

use std::fmt;
use std::future::{Future, Ready};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_lru_cache::{CacheKey, CacheStore, CachedResponse, Entry, MokaStore};
use tower_token_bucket::{Decision, InMemoryBackend, Quota, RateLimitBackend};

#[cfg(feature = "redis")]
pub use self::redis_config::{DEFAULT_REDIS_PREFIX, RedisConfig};

/// The backend of the preset's two limiters (per user and global): in process
/// ([`InMemoryBackend`]), or with the `redis` feature shared through Redis
/// (`RedisBackend`). Made by [`HealthAiStackBuilder::build`](crate::HealthAiStackBuilder::build).
pub struct PresetBackend<K: std::hash::Hash + Eq + Clone> {
    inner: BackendKind<K>,
}

enum BackendKind<K: std::hash::Hash + Eq + Clone> {
    InMemory(InMemoryBackend<K>),
    #[cfg(feature = "redis")]
    Redis(tower_token_bucket::RedisBackend<K>),
}

impl<K: std::hash::Hash + Eq + Clone> Clone for PresetBackend<K> {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            BackendKind::InMemory(b) => BackendKind::InMemory(b.clone()),
            #[cfg(feature = "redis")]
            BackendKind::Redis(b) => BackendKind::Redis(b.clone()),
        };
        Self { inner }
    }
}

impl<K: std::hash::Hash + Eq + Clone> fmt::Debug for PresetBackend<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            BackendKind::InMemory(_) => "in-memory",
            #[cfg(feature = "redis")]
            BackendKind::Redis(_) => "redis",
        };
        f.debug_struct("PresetBackend")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<K> PresetBackend<K>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Limits kept in this process, read on `clock`.
    pub(crate) fn in_memory(quota: Quota, clock: tower_token_bucket::Clock) -> Self {
        Self {
            inner: BackendKind::InMemory(InMemoryBackend::with_clock(
                &[quota],
                tower_token_bucket::DEFAULT_MAX_KEYS,
                tower_token_bucket::DEFAULT_PRUNE_INTERVAL,
                clock,
            )),
        }
    }

    /// Whether the limits are shared through Redis.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        match &self.inner {
            BackendKind::InMemory(_) => false,
            #[cfg(feature = "redis")]
            BackendKind::Redis(_) => true,
        }
    }
}

/// The future of a [`PresetBackend`] decision: the in-process backend's ready answer,
/// or a Redis decision.
pub struct PresetDecision {
    inner: DecisionKind,
}

enum DecisionKind {
    InMemory(Ready<Decision>),
    #[cfg(feature = "redis")]
    Redis(tower_token_bucket::RedisFuture),
}

impl fmt::Debug for PresetDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresetDecision").finish_non_exhaustive()
    }
}

impl Future for PresetDecision {
    type Output = Decision;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        match &mut self.get_mut().inner {
            DecisionKind::InMemory(ready) => Pin::new(ready).poll(cx),
            #[cfg(feature = "redis")]
            DecisionKind::Redis(future) => Pin::new(future).poll(cx),
        }
    }
}

/// The preset's limiters' keys: with the `redis` feature they must also have a Redis
/// key name.
#[cfg(feature = "redis")]
pub(crate) trait Key:
    tower_token_bucket::RedisKey + std::hash::Hash + Eq + Clone + Send + Sync + 'static
{
}
#[cfg(feature = "redis")]
impl<T> Key for T where
    T: tower_token_bucket::RedisKey + std::hash::Hash + Eq + Clone + Send + Sync + 'static
{
}
#[cfg(not(feature = "redis"))]
pub(crate) trait Key: std::hash::Hash + Eq + Clone + Send + Sync + 'static {}
#[cfg(not(feature = "redis"))]
impl<T> Key for T where T: std::hash::Hash + Eq + Clone + Send + Sync + 'static {}

macro_rules! preset_backend {
    ($($key:ty),*) => {$(
        impl RateLimitBackend<$key> for PresetBackend<$key> {
            type Future = PresetDecision;

            #[inline]
            fn check(&self, key: &$key, cost: NonZeroU32) -> PresetDecision {
                check(&self.inner, key, cost)
            }

            fn quotas(&self) -> &[Quota] {
                quotas(&self.inner)
            }

            fn remaining(&self, key: &$key) -> Option<u32> {
                remaining(&self.inner, key)
            }

            fn tracked_keys(&self) -> Option<usize> {
                tracked_keys(&self.inner)
            }
        }
    )*};
}
// The per-user key, spelled out (`UserKeyOf`): a projection could be `()` as far as
// coherence knows.
preset_backend!(
    (),
    tower_token_bucket::EitherKey<
        tower_token_bucket::EitherKey<bytes::Bytes, std::net::IpAddr>,
        (),
    >
);

#[inline]
fn check<K: Key>(backend: &BackendKind<K>, key: &K, cost: NonZeroU32) -> PresetDecision {
    let inner = match backend {
        BackendKind::InMemory(b) => DecisionKind::InMemory(b.check(key, cost)),
        #[cfg(feature = "redis")]
        BackendKind::Redis(b) => DecisionKind::Redis(b.check(key, cost)),
    };
    PresetDecision { inner }
}

fn quotas<K: Key>(backend: &BackendKind<K>) -> &[Quota] {
    match backend {
        BackendKind::InMemory(b) => b.quotas(),
        #[cfg(feature = "redis")]
        BackendKind::Redis(b) => b.quotas(),
    }
}

fn remaining<K: Key>(backend: &BackendKind<K>, key: &K) -> Option<u32> {
    match backend {
        BackendKind::InMemory(b) => b.remaining(key),
        #[cfg(feature = "redis")]
        BackendKind::Redis(b) => b.remaining(key),
    }
}

fn tracked_keys<K: Key>(backend: &BackendKind<K>) -> Option<usize> {
    match backend {
        BackendKind::InMemory(b) => b.tracked_keys(),
        #[cfg(feature = "redis")]
        BackendKind::Redis(b) => b.tracked_keys(),
    }
}

/// The store of the preset's cache: in process ([`MokaStore`]), or with the `redis`
/// feature the in-process LRU in front of a second level in Redis (`RedisStore`). Made
/// by [`HealthAiStackBuilder::build`](crate::HealthAiStackBuilder::build).
pub struct PresetStore {
    inner: StoreKind,
}

enum StoreKind {
    InMemory(MokaStore<CachedResponse>),
    #[cfg(feature = "redis")]
    Redis(tower_lru_cache::RedisStore),
}

impl Clone for PresetStore {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            StoreKind::InMemory(s) => StoreKind::InMemory(s.clone()),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => StoreKind::Redis(s.clone()),
        };
        Self { inner }
    }
}

impl fmt::Debug for PresetStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            StoreKind::InMemory(s) => f.debug_tuple("PresetStore").field(s).finish(),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => f.debug_tuple("PresetStore").field(s).finish(),
        }
    }
}

impl PresetStore {
    /// Entries kept in this process.
    pub(crate) fn in_memory(store: MokaStore<CachedResponse>) -> Self {
        Self {
            inner: StoreKind::InMemory(store),
        }
    }

    /// Whether answers are shared through Redis.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        match &self.inner {
            StoreKind::InMemory(_) => false,
            #[cfg(feature = "redis")]
            StoreKind::Redis(_) => true,
        }
    }
}

/// The future of a [`PresetStore`] lookup.
pub struct PresetLookup {
    inner: LookupKind,
}

type Found = Option<Arc<Entry<CachedResponse>>>;

enum LookupKind {
    InMemory(Ready<Found>),
    #[cfg(feature = "redis")]
    Redis(tower_lru_cache::RedisGet),
}

impl fmt::Debug for PresetLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresetLookup").finish_non_exhaustive()
    }
}

impl Future for PresetLookup {
    type Output = Found;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Found> {
        match &mut self.get_mut().inner {
            LookupKind::InMemory(ready) => Pin::new(ready).poll(cx),
            #[cfg(feature = "redis")]
            LookupKind::Redis(get) => Pin::new(get).poll(cx),
        }
    }
}

impl CacheStore<CachedResponse> for PresetStore {
    type Get = PresetLookup;

    fn get(&self, key: &CacheKey) -> PresetLookup {
        let inner = match &self.inner {
            StoreKind::InMemory(s) => LookupKind::InMemory(s.get(key)),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => LookupKind::Redis(s.get(key)),
        };
        PresetLookup { inner }
    }

    #[inline]
    fn get_now(&self, key: &CacheKey) -> Option<Found> {
        match &self.inner {
            StoreKind::InMemory(s) => s.get_now(key),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.get_now(key),
        }
    }

    fn get_recent(&self, key: &CacheKey) -> PresetLookup {
        let inner = match &self.inner {
            StoreKind::InMemory(s) => LookupKind::InMemory(s.get_recent(key)),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => LookupKind::Redis(s.get_recent(key)),
        };
        PresetLookup { inner }
    }

    fn fill_turn(&self, key: &CacheKey) -> Option<PresetLookup> {
        let inner = match &self.inner {
            StoreKind::InMemory(s) => LookupKind::InMemory(s.fill_turn(key)?),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => LookupKind::Redis(s.fill_turn(key)?),
        };
        Some(PresetLookup { inner })
    }

    fn generation(&self) -> u64 {
        match &self.inner {
            StoreKind::InMemory(s) => s.generation(),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.generation(),
        }
    }

    fn insert(&self, key: CacheKey, entry: Arc<Entry<CachedResponse>>) {
        match &self.inner {
            StoreKind::InMemory(s) => s.insert(key, entry),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.insert(key, entry),
        }
    }

    fn remove(&self, key: &CacheKey) {
        match &self.inner {
            StoreKind::InMemory(s) => s.remove(key),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.remove(key),
        }
    }

    fn clear(&self) {
        match &self.inner {
            StoreKind::InMemory(s) => s.clear(),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.clear(),
        }
    }

    fn entry_count(&self) -> u64 {
        match &self.inner {
            StoreKind::InMemory(s) => s.entry_count(),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.entry_count(),
        }
    }

    fn retain_at_most(&mut self, retain: Duration) {
        match &mut self.inner {
            StoreKind::InMemory(s) => s.retain_at_most(retain),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.retain_at_most(retain),
        }
    }

    fn set_name(&mut self, name: &str) {
        match &mut self.inner {
            StoreKind::InMemory(s) => s.set_name(name),
            #[cfg(feature = "redis")]
            StoreKind::Redis(s) => s.set_name(name),
        }
    }
}

#[cfg(feature = "redis")]
mod redis_config {
    use std::fmt;
    use std::time::Duration;

    use tower_lru_cache::RedisStoreBuilder;
    use tower_token_bucket::redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use tower_token_bucket::redis::{Client, RedisError};
    use tower_token_bucket::{FailurePolicy, Quota, RedisBackend};

    use super::{BackendKind, Key, PresetBackend, PresetStore, StoreKind};

    /// The default start of every Redis key and channel the preset writes.
    pub const DEFAULT_REDIS_PREFIX: &str = "health-ai:";

    /// How the preset shares its state through Redis (feature `redis`): the per-user
    /// limit, the global pace and the cache's second level, given to
    /// [`HealthAiStackBuilder::redis`](crate::HealthAiStackBuilder::redis).
    ///
    /// Every instance that uses the same Redis, the same [prefix](Self::prefix) and the
    /// same quotas shares:
    ///
    /// - **the per-user limit** (keys `{prefix}per-user:{…}:0`) and **the global pace**
    ///   (`{prefix}global:{global}:0`), decided by one Lua script per decision on the
    ///   server's clock, with a local cache of refusals (see
    ///   [`RedisBackend`](tower_token_bucket::RedisBackend));
    /// - **the cache's answers** (keys `{prefix}cache:{hex SHA-256}`, invalidations on
    ///   the channel `{prefix}cache:invalidate`): an L1 miss reads Redis, an answer
    ///   stored by one instance is served by the others (see
    ///   [`RedisStore`](tower_lru_cache::RedisStore), whose docs say exactly what lands in
    ///   Redis: the answers themselves, so Redis must be as private as they are).
    ///
    /// The breaker and the queue stay per instance. When Redis is unreachable or slower
    /// than the [timeout](Self::timeout) (50 ms by default), the limiters follow the
    /// [failure policy](Self::failure_policy) (by default each instance limits on its own
    /// at the quota ÷ [instances](Self::instances)) and the cache works from its L1 only;
    /// no request fails because of Redis, and both recover by themselves.
    #[derive(Clone)]
    pub struct RedisConfig {
        client: Client,
        connection: ConnectionManager,
        prefix: String,
        instances: u32,
        timeout: Duration,
        failure_policy: FailurePolicy,
        fill_lock: Option<Duration>,
    }

    impl fmt::Debug for RedisConfig {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedisConfig")
                .field("prefix", &self.prefix)
                .field("instances", &self.instances)
                .field("timeout", &self.timeout)
                .field("failure_policy", &self.failure_policy)
                .field("fill_lock", &self.fill_lock)
                .finish_non_exhaustive()
        }
    }

    impl RedisConfig {
        /// Shares through the Redis at `url` (`redis://host:port/db`,
        /// `redis+unix:///path`). Nothing is connected yet: the first request connects,
        /// so a gateway starts even while Redis is down.
        ///
        /// # Errors
        ///
        /// If `url` is not a Redis URL.
        ///
        /// # Panics
        ///
        /// Outside a tokio runtime (the connection manager starts a task).
        pub fn from_url(url: &str) -> Result<Self, RedisError> {
            Self::new(Client::open(url)?)
        }

        /// Shares through `client`'s Redis, the limiters over one reconnecting,
        /// multiplexed connection (the cache opens its own, and one for its
        /// invalidation channel).
        ///
        /// # Errors
        ///
        /// Never with the options set here; kept for the `redis` crate's signature.
        ///
        /// # Panics
        ///
        /// Outside a tokio runtime (the connection manager starts a task).
        pub fn new(client: Client) -> Result<Self, RedisError> {
            // The limiter's own settings (`RedisBackend::from_url`): connect within 1 s,
            // reconnect with backoff from 10 ms to 1 s.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(8);
            let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
            Ok(Self::with_connection(client, connection))
        }

        /// Shares through `client`'s Redis, the limiters over `connection` (which may be
        /// shared with the rest of the application).
        #[must_use]
        pub fn with_connection(client: Client, connection: ConnectionManager) -> Self {
            Self {
                client,
                connection,
                prefix: DEFAULT_REDIS_PREFIX.to_owned(),
                instances: 1,
                timeout: tower_token_bucket::DEFAULT_REDIS_TIMEOUT,
                failure_policy: FailurePolicy::Local,
                fill_lock: None,
            }
        }

        /// The start of every key and channel (default `health-ai:`): one prefix per
        /// deployment; every instance of it uses the same.
        #[must_use]
        pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = prefix.into();
            self
        }

        /// How many instances share the limits (default 1): while Redis fails, each
        /// admits its share under [`FailurePolicy::Local`].
        #[must_use]
        pub fn instances(mut self, instances: u32) -> Self {
            self.instances = instances.max(1);
            self
        }

        /// The longest a request waits for Redis, per limiter decision and per cache
        /// lookup (default 50 ms).
        #[must_use]
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }

        /// What the limiters decide while Redis fails (default
        /// [`FailurePolicy::Local`]).
        #[must_use]
        pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
            self.failure_policy = policy;
            self
        }

        /// Cross-instance single-flight for the cache, best effort (off by default): the
        /// instance about to call the upstream for a key takes a Redis lock for at most
        /// `expiry`, and the others wait for its answer that long at most (see
        /// [`RedisStoreBuilder::fill_lock`](tower_lru_cache::RedisStoreBuilder::fill_lock)).
        /// Set it to about an upstream call's latency.
        #[must_use]
        pub fn fill_lock(mut self, expiry: Duration) -> Self {
            self.fill_lock = Some(expiry).filter(|e| !e.is_zero());
            self
        }

        /// The backend of one limiter, named `name`, under `{prefix}{name}:`.
        pub(crate) fn backend<K: Key>(&self, name: &'static str, quota: Quota) -> PresetBackend<K> {
            let backend = RedisBackend::builder(self.connection.clone())
                .prefix(format!("{}{name}:", self.prefix))
                .name(name)
                .timeout(self.timeout)
                .failure_policy(self.failure_policy)
                .instances(self.instances)
                .build(&[quota]);
            PresetBackend {
                inner: BackendKind::Redis(backend),
            }
        }

        /// The cache's two levels, L1 bounded by a number of entries or of bytes.
        pub(crate) fn store(
            &self,
            l1_entries: Option<u64>,
            l1_max_bytes: Option<u64>,
        ) -> PresetStore {
            let mut builder = RedisStoreBuilder::new(self.client.clone())
                .prefix(format!("{}cache:", self.prefix))
                .timeout(self.timeout);
            if let Some(entries) = l1_entries {
                builder = builder.l1_max_entries(entries);
            }
            if let Some(bytes) = l1_max_bytes {
                builder = builder.l1_max_bytes(bytes);
            }
            if let Some(expiry) = self.fill_lock {
                builder = builder.fill_lock(expiry);
            }
            PresetStore {
                inner: StoreKind::Redis(builder.build()),
            }
        }
    }
}
