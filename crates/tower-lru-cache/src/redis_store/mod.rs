//! [`RedisStore`]: the in-process LRU (L1) in front of a Redis level (L2) shared by
//! every instance.

mod codec;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::StreamExt;
use metrics::Counter;
use redis::{
    AsyncCommands, Client, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, timeout},
};

use crate::{
    cached::CachedResponse,
    key::CacheKey,
    metrics::{CACHE_BACKEND_ERRORS_TOTAL, DEFAULT_MAX_ENTRIES, DEFAULT_NAME},
    store::{CacheStore, Entry, MokaStore},
};

/// Default key prefix in Redis: `tower-lru-cache:`.
pub const DEFAULT_REDIS_PREFIX: &str = "tower-lru-cache:";
/// Default longest wait for Redis on a request's path: 50 ms.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// Default largest value written to Redis: 1 MiB (encoded). Larger answers stay in L1.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// Longest wait for Redis off the request path (writes, invalidations, subscribing).
/// The longest fill lock: a lock is a wait for another instance's call, not a lease.
const MAX_FILL_LOCK: Duration = Duration::from_secs(3600);
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);
/// While Redis is down, one lookup in this interval tries it; the others skip it.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Writes waiting for the background writer; past this, new writes are dropped.
const WRITE_QUEUE: usize = 1024;
/// Invalidations kept for retry while Redis is unreachable; past this, one `clear`.
const MAX_PENDING: usize = 1024;
/// Operations sent to Redis in one pipeline.
const BATCH: usize = 64;

/// A [`CacheStore`] in two levels: an in-process moka LRU (L1, as [`MokaStore`]) in
/// front of Redis (L2), shared by every instance that uses the same Redis and prefix.
///
/// - **Reads**: an L1 hit never touches Redis. An L1 miss (or an L1 entry past its TTL)
///   makes one `GET` round trip; an L2 hit fills L1 with the entry's **remaining**
///   TTL (the entry keeps the time it was first stored), never a fresh one.
/// - **Writes**: an answer stored in L1 is written to L2 in the background with
///   `SET key value PX remaining`, where `remaining` is its TTL plus stale-if-error
///   grace, less its age. Values whose encoding exceeds
///   [`max_value_bytes`](RedisStoreBuilder::max_value_bytes) stay in L1 only.
/// - **Invalidation** ([`CacheHandle::invalidate`](crate::CacheHandle::invalidate),
///   [`invalidate_all`](crate::CacheHandle::invalidate_all)) drops the L1 copy, deletes
///   in L2 (`DEL`, or `SCAN` + `UNLINK` under the prefix) and publishes on the channel
///   `{prefix}invalidate`; every instance subscribes and drops its L1 copy. Pub/sub
///   loses messages while an instance is disconnected, so an instance **clears its L1
///   whenever it (re)subscribes** (the first time too, moments after
///   [`build`](RedisStoreBuilder::build): what it stored meanwhile is read again from L2). An invalidation that cannot reach Redis is retried
///   in the background until it does. To bound how long an instance that does not
///   notice a broken subscription serves an L1 copy, cap L1 with
///   [`l1_ttl`](RedisStoreBuilder::l1_ttl).
/// - **Across instances**, single-flight stays local by default (one call per key and
///   instance at a time); [`fill_lock`](RedisStoreBuilder::fill_lock) adds a short
///   Redis lock so that one instance calls while the others wait a bounded time for
///   its answer.
/// - **Redis down or slow**: a lookup waits at most the
///   [`timeout`](RedisStoreBuilder::timeout) (50 ms by default), then answers from L1
///   only; a request never fails because of Redis. Each failure counts in
///   [`CACHE_BACKEND_ERRORS_TOTAL`](crate::CACHE_BACKEND_ERRORS_TOTAL); the first of an
///   outage logs a warning. While Redis is down, lookups skip it except for one probe
///   every 250 ms, and the connection is re-established in the background.
///
/// # What lands in Redis
///
/// Keys are `{prefix}{hex SHA-256 request key}`: the same keys as L1, user partition
/// included, so no part of a request but its hash is in a key. **Values are the
/// answers themselves**: status, headers (with the request header values named by a
/// `Vary`), trailers and body, plus when they were stored (wall clock, milliseconds)
/// and their TTL, in a compact versioned binary format with a check bound to the key.
/// Anyone who can read Redis can read the cached answers: Redis must be as private as
/// the answers. A value of another format version, a corrupt or truncated one, or one
/// copied under another key is a miss, never served.
///
/// Instances compare wall clocks (a value's age is the reader's clock minus the
/// writer's): keep their clocks synchronised. A value dated in the future counts as
/// just stored.
///
/// Use one prefix per cache: two caches that share a prefix share entries. With the
/// fill lock, lock keys are `{prefix}lock:{hex key}`, holding `1`.
///
/// [`entry_count`](CacheStore::entry_count) (and so the `cache_entries` gauge and the
/// snapshot's `entries`) counts this instance's L1.
///
/// ```no_run
/// use std::time::Duration;
///
/// use tower_lru_cache::{CacheLayer, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379")?
///     .prefix("analyze:")
///     .l1_max_entries(100)
///     .build();
/// let cache = CacheLayer::builder()
///     .name("analyze")
///     .ttl(Duration::from_secs(3600))
///     .store(store)
///     .build();
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
pub struct RedisStore {
    l1: MokaStore<CachedResponse>,
    l1_ttl: Option<Duration>,
    shared: Arc<Shared>,
    writes: mpsc::Sender<Op>,
    tasks: Arc<Tasks>,
}

impl Clone for RedisStore {
    fn clone(&self) -> Self {
        Self {
            l1: self.l1.clone(),
            l1_ttl: self.l1_ttl,
            shared: Arc::clone(&self.shared),
            writes: self.writes.clone(),
            tasks: Arc::clone(&self.tasks),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("l1", &self.l1)
            .field("prefix", &self.shared.prefix)
            .field("timeout", &self.shared.timeout)
            .field("max_value_bytes", &self.shared.max_value_bytes)
            .field("subscribed", &self.is_subscribed())
            .field(
                "redis_down",
                &self.shared.health.down.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

/// Aborts the subscriber when the last clone of the store goes away (the writer ends
/// by itself when its queue closes).
struct Tasks {
    subscriber: JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// What the store, its lookups and its background tasks share.
struct Shared {
    connection: ConnectionManager,
    prefix: String,
    channel: String,
    timeout: Duration,
    max_value_bytes: usize,
    /// The fill lock's expiry, when enabled.
    lock: Option<Duration>,
    /// The L1 in use (replaced once by `retain_at_most`), for the subscriber.
    l1: Mutex<MokaStore<CachedResponse>>,
    /// Bumped by every invalidation, local or remote: a lookup that started before
    /// one does not fill L1 with what it read.
    generation: AtomicU64,
    subscribed: AtomicBool,
    /// A write queue overflowed with an invalidation in it: clear everything.
    overflowed: AtomicBool,
    health: Health,
    name: OnceLock<(String, Counter)>,
}

/// Whether Redis is answering; warns once per outage.
struct Health {
    down: AtomicBool,
    epoch: Instant,
    /// Milliseconds since `epoch` of the next probe while down.
    next_probe: AtomicU64,
}

impl Shared {
    fn name(&self) -> &str {
        self.name.get().map_or(DEFAULT_NAME, |(name, _)| name)
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}lock:{key}", self.prefix)
    }

    fn l1(&self) -> MokaStore<CachedResponse> {
        self.l1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether a lookup should skip Redis now: it is down, and this is not the probe.
    fn skip(&self) -> bool {
        if !self.health.down.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.now_ms();
        let next = self.health.next_probe.load(Ordering::Relaxed);
        if now < next {
            return true;
        }
        let later = now.saturating_add(ms(PROBE_INTERVAL));
        self.health
            .next_probe
            .compare_exchange(next, later, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    }

    fn now_ms(&self) -> u64 {
        ms(self.health.epoch.elapsed())
    }

    fn answered(&self) {
        if self.health.down.swap(false, Ordering::Relaxed) {
            tracing::info!(cache = %self.name(), "redis answers again; the shared level is back");
        }
    }

    fn failed(&self, what: &str, error: Option<&RedisError>) {
        if let Some((_, counter)) = self.name.get() {
            counter.increment(1);
        } else {
            metrics::counter!(CACHE_BACKEND_ERRORS_TOTAL, "cache" => DEFAULT_NAME).increment(1);
        }
        self.health.next_probe.store(
            self.now_ms().saturating_add(ms(PROBE_INTERVAL)),
            Ordering::Relaxed,
        );
        if !self.health.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cache = %self.name(),
                operation = what,
                error = error.map(tracing::field::display),
                "redis unreachable or slow; caching in process only until it answers"
            );
        } else {
            tracing::debug!(cache = %self.name(), operation = what, error = error.map(tracing::field::display), "redis failed");
        }
    }

    /// Drops every L1 entry (a missed invalidation may have left old answers there).
    fn clear_l1(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.l1().clear();
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// One write for the background writer, in the order the cache made them.
enum Op {
    Set(CacheKey, Arc<Entry<CachedResponse>>),
    Del(CacheKey),
    Clear,
}

impl Op {
    fn is_invalidation(&self) -> bool {
        !matches!(self, Self::Set(..))
    }
}

/// Configures a [`RedisStore`]. Start from [`RedisStore::builder`].
pub struct RedisStoreBuilder {
    client: Client,
    prefix: String,
    timeout: Duration,
    max_value_bytes: usize,
    l1: MokaStore<CachedResponse>,
    l1_ttl: Option<Duration>,
    lock: Option<Duration>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("l1", &self.l1)
            .field("l1_ttl", &self.l1_ttl)
            .field("fill_lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for a store on the Redis at `url` (`redis://host:port/db`,
    /// `redis+unix:///path`).
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL.
    pub fn builder(url: &str) -> Result<RedisStoreBuilder, RedisError> {
        Ok(RedisStoreBuilder::new(Client::open(url)?))
    }

    /// Whether this instance is subscribed to the invalidation channel now (it clears
    /// its L1 each time it subscribes).
    #[must_use]
    pub fn is_subscribed(&self) -> bool {
        self.shared.subscribed.load(Ordering::Acquire)
    }

    fn entry_from(&self, key: &CacheKey, bytes: Vec<u8>) -> Option<Arc<Entry<CachedResponse>>> {
        decode_entry(&self.shared, key, bytes)
    }

    /// Takes the fill lock (`None`: this instance fills), or waits for the instance
    /// that holds it to store its answer (`Some`), at most `expiry`.
    async fn wait_for_filler(&self, key: CacheKey, expiry: Duration) -> Found {
        let shared = &self.shared;
        let lock_key = shared.lock_key(&key);
        let mut connection = shared.connection.clone();
        let taken = timeout(
            shared.timeout,
            redis::cmd("SET")
                .arg(&lock_key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms(expiry).max(1))
                .query_async::<Option<String>>(&mut connection),
        )
        .await;
        match taken {
            Ok(Ok(Some(_))) => {
                shared.answered();
                return None;
            }
            Ok(Ok(None)) => shared.answered(),
            Ok(Err(e)) => {
                shared.failed("lock", Some(&e));
                return None;
            }
            Err(_) => {
                shared.failed("lock (timed out)", None);
                return None;
            }
        }
        let generation = shared.generation.load(Ordering::Acquire);
        let poll = (expiry / 50).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let deadline = Instant::now().checked_add(expiry)?;
        let value_key = shared.redis_key(&key);
        loop {
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
            if Instant::now() >= deadline {
                return None;
            }
            let reply = timeout(
                shared.timeout,
                redis::pipe()
                    .get(&value_key)
                    .exists(&lock_key)
                    .query_async::<(Option<Vec<u8>>, bool)>(&mut connection),
            )
            .await;
            match reply {
                Ok(Ok((Some(bytes), _))) => {
                    shared.answered();
                    let entry = self.entry_from(&key, bytes)?;
                    if shared.generation.load(Ordering::Acquire) == generation {
                        self.l1.insert(key, Arc::clone(&entry));
                    }
                    return Some(entry);
                }
                Ok(Ok((None, true))) => shared.answered(),
                // The holder went away, or its answer was not stored: call.
                Ok(Ok((None, false))) => {
                    shared.answered();
                    return None;
                }
                Ok(Err(e)) => {
                    shared.failed("lock wait", Some(&e));
                    return None;
                }
                Err(_) => {
                    shared.failed("lock wait (timed out)", None);
                    return None;
                }
            }
        }
    }
}

impl RedisStoreBuilder {
    /// A builder on `client`, with the defaults: prefix `tower-lru-cache:`, 50 ms
    /// timeout, values up to 1 MiB, L1 of 100 entries.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self {
            client,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            l1: MokaStore::with_max_entries(DEFAULT_MAX_ENTRIES),
            l1_ttl: None,
            lock: None,
        }
    }

    /// The prefix of every key, and of the invalidation channel `{prefix}invalidate`
    /// (default `tower-lru-cache:`). One prefix per cache.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a request waits for Redis (default 50 ms); past it, the lookup is
    /// answered from L1 only.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Answers whose encoding is larger stay in L1 only (default 1 MiB).
    #[must_use]
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// L1 holds at most `n` entries (default 100).
    #[must_use]
    pub fn l1_max_entries(mut self, n: u64) -> Self {
        self.l1 = MokaStore::with_max_entries(n);
        self
    }

    /// L1 holds at most about `bytes` of answers ([`CachedResponse::weight`]).
    #[must_use]
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1 = MokaStore::with_max_bytes(bytes);
        self
    }

    /// Drops L1 entries this long after they entered L1, even when their TTL is longer
    /// (they are read again from L2): bounds how long an instance whose subscription
    /// broke unnoticed serves an invalidated answer. Default: the cache's TTL.
    #[must_use]
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// Cross-instance single-flight, best effort (off by default): the instance about to
    /// call the inner service for a key first takes a short Redis lock
    /// (`SET {prefix}lock:{key} 1 NX PX expiry`). The others wait for its answer to
    /// appear in Redis, polling, and serve it (`x-cache: HIT`); they call themselves
    /// when the lock goes away without an answer (the answer was not storable, or too
    /// large) or after `expiry` at most, so a dead lock holder blocks nobody for longer
    /// than the lock's expiry. Set `expiry` to about the inner service's latency. The
    /// lock is released when the answer is written; Redis down: no lock, no wait. An
    /// `expiry` over an hour (`Duration::MAX` included) is an hour.
    #[must_use]
    pub fn fill_lock(mut self, expiry: Duration) -> Self {
        self.lock = Some(expiry.min(MAX_FILL_LOCK)).filter(|e| !e.is_zero());
        self
    }

    /// Builds the store. Nothing is connected yet: the first lookup connects, so a
    /// service starts even while Redis is down. The subscription to the invalidation
    /// channel starts now, in the background, and is re-established (with backoff from
    /// 50 ms to 1 s) whenever it breaks.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the store starts its background tasks).
    #[must_use]
    pub fn build(self) -> RedisStore {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(BACKGROUND_TIMEOUT))
            .set_response_timeout(Some(BACKGROUND_TIMEOUT))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        // `new_lazy_with_config` fails only for options this builder does not set.
        #[allow(clippy::expect_used)]
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .expect("a lazy connection manager without a push sender");
        let mut l1 = self.l1;
        if let Some(ttl) = self.l1_ttl {
            l1.retain_at_most(ttl);
        }
        let shared = Arc::new(Shared {
            connection,
            channel: format!("{}invalidate", self.prefix),
            prefix: self.prefix,
            timeout: self.timeout,
            max_value_bytes: self.max_value_bytes,
            lock: self.lock,
            l1: Mutex::new(l1.clone()),
            generation: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            health: Health {
                down: AtomicBool::new(false),
                epoch: Instant::now(),
                next_probe: AtomicU64::new(0),
            },
            name: OnceLock::new(),
        });
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(writer(Arc::clone(&shared), queue));
        let subscriber = tokio::spawn(subscriber(Arc::clone(&shared), self.client));
        RedisStore {
            l1,
            l1_ttl: self.l1_ttl,
            shared,
            writes,
            tasks: Arc::new(Tasks { subscriber }),
        }
    }
}

fn decode_entry(
    shared: &Shared,
    key: &CacheKey,
    bytes: Vec<u8>,
) -> Option<Arc<Entry<CachedResponse>>> {
    let Some(decoded) = codec::decode(key, &Bytes::from(bytes)) else {
        tracing::warn!(cache = %shared.name(), %key, "unreadable value in redis (another version, or corrupt); treated as a miss");
        return None;
    };
    let age =
        Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(decoded.stored_at_ms));
    if age >= decoded.ttl.saturating_add(decoded.grace) {
        return None;
    }
    // The entry keeps the time it was first stored: its remaining TTL, never a fresh one.
    let stored_at = Instant::now().checked_sub(age)?;
    Some(Arc::new(Entry::new(
        decoded.response,
        stored_at,
        decoded.ttl,
        decoded.grace,
    )))
}

/// The future of [`RedisStore`]'s lookups: ready on an L1 hit, one Redis round trip
/// (bounded by the timeout) otherwise.
pub struct RedisGet {
    inner: GetInner,
}

type Found = Option<Arc<Entry<CachedResponse>>>;

enum GetInner {
    Ready(Option<Found>),
    Remote(Pin<Box<dyn Future<Output = Found> + Send>>),
}

impl fmt::Debug for RedisGet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGet").finish_non_exhaustive()
    }
}

impl Future for RedisGet {
    type Output = Option<Arc<Entry<CachedResponse>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            GetInner::Ready(found) => Poll::Ready(found.take().flatten()),
            GetInner::Remote(future) => future.as_mut().poll(cx),
        }
    }
}

fn fresh(entry: &Entry<CachedResponse>) -> bool {
    entry.stored_at().elapsed() < entry.ttl()
}

impl RedisStore {
    fn ready(found: Option<Arc<Entry<CachedResponse>>>) -> RedisGet {
        RedisGet {
            inner: GetInner::Ready(Some(found)),
        }
    }
}

impl CacheStore<CachedResponse> for RedisStore {
    type Get = RedisGet;

    fn get(&self, key: &CacheKey) -> RedisGet {
        let local = self.l1.get_now(key).flatten();
        if local.as_deref().is_some_and(fresh) || self.shared.skip() {
            return Self::ready(local);
        }
        let this = self.clone();
        let key = *key;
        RedisGet {
            inner: GetInner::Remote(Box::pin(async move {
                let shared = &this.shared;
                let generation = shared.generation.load(Ordering::Acquire);
                let mut connection = shared.connection.clone();
                let redis_key = shared.redis_key(&key);
                let reply = timeout(
                    shared.timeout,
                    connection.get::<_, Option<Vec<u8>>>(&redis_key),
                )
                .await;
                let bytes = match reply {
                    Ok(Ok(bytes)) => {
                        shared.answered();
                        bytes
                    }
                    Ok(Err(e)) => {
                        shared.failed("get", Some(&e));
                        None
                    }
                    Err(_) => {
                        shared.failed("get (timed out)", None);
                        None
                    }
                };
                let Some(remote) = bytes.and_then(|bytes| this.entry_from(&key, bytes)) else {
                    return local;
                };
                // An older L1 entry wins only if Redis has nothing newer.
                if local
                    .as_ref()
                    .is_some_and(|l| l.stored_at() >= remote.stored_at())
                {
                    return local;
                }
                if shared.generation.load(Ordering::Acquire) == generation {
                    this.l1.insert(key, Arc::clone(&remote));
                }
                Some(remote)
            })),
        }
    }

    fn get_now(&self, key: &CacheKey) -> Option<Option<Arc<Entry<CachedResponse>>>> {
        let local = self.l1.get_now(key).flatten();
        if local.as_deref().is_some_and(fresh) {
            return Some(local);
        }
        None
    }

    fn fill_turn(&self, key: &CacheKey) -> Option<RedisGet> {
        let expiry = self.shared.lock?;
        if self.shared.skip() {
            return None;
        }
        let this = self.clone();
        let key = *key;
        Some(RedisGet {
            inner: GetInner::Remote(Box::pin(
                async move { this.wait_for_filler(key, expiry).await },
            )),
        })
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    fn get_recent(&self, key: &CacheKey) -> RedisGet {
        Self::ready(self.l1.get_now(key).flatten())
    }

    fn insert(&self, key: CacheKey, entry: Arc<Entry<CachedResponse>>) {
        self.l1.insert(key, Arc::clone(&entry));
        if self.writes.try_send(Op::Set(key, entry)).is_err() {
            tracing::debug!(cache = %self.shared.name(), %key, "redis write queue full; kept in process only");
        }
    }

    fn remove(&self, key: &CacheKey) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.l1.remove(key);
        if self.writes.try_send(Op::Del(*key)).is_err() {
            self.shared.overflowed.store(true, Ordering::Release);
        }
    }

    fn clear(&self) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.l1.clear();
        if self.writes.try_send(Op::Clear).is_err() {
            self.shared.overflowed.store(true, Ordering::Release);
        }
    }

    fn entry_count(&self) -> u64 {
        self.l1.entry_count()
    }

    fn retain_at_most(&mut self, retain: Duration) {
        let mut l1 = self.l1.clone();
        // An `l1_ttl` set on the builder only ever shortens the retention.
        l1.retain_at_most(self.l1_ttl.map_or(retain, |cap| cap.min(retain)));
        *self
            .shared
            .l1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = l1.clone();
        self.l1 = l1;
    }

    fn set_name(&mut self, name: &str) {
        let counter = metrics::counter!(CACHE_BACKEND_ERRORS_TOTAL, "cache" => name.to_owned());
        let _ = self.shared.name.set((name.to_owned(), counter));
    }
}

/// Writes to Redis in the order the cache made them, a pipeline at a time; keeps
/// invalidations that failed and retries them until Redis answers.
async fn writer(shared: Arc<Shared>, mut queue: mpsc::Receiver<Op>) {
    let mut pending: Vec<Op> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut pending);
        if batch.is_empty() {
            match queue.recv().await {
                Some(op) => batch.push(op),
                None => return,
            }
        } else {
            // Retry the failed invalidations after a pause, or sooner with new work.
            match timeout(PROBE_INTERVAL, queue.recv()).await {
                Ok(Some(op)) => batch.push(op),
                // The store is gone: one last try.
                Ok(None) => {
                    run(&shared, batch).await;
                    return;
                }
                Err(_) => {}
            }
        }
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if shared.overflowed.swap(false, Ordering::AcqRel) {
            batch.push(Op::Clear);
        }
        pending = run(&shared, batch).await;
        if pending.len() > MAX_PENDING {
            pending = vec![Op::Clear];
        }
    }
}

/// Runs `batch` in order; returns the invalidations that did not reach Redis.
async fn run(shared: &Shared, batch: Vec<Op>) -> Vec<Op> {
    let mut ops = batch.into_iter().peekable();
    let mut failed = Vec::new();
    while ops.peek().is_some() {
        if matches!(ops.peek(), Some(Op::Clear)) {
            ops.next();
            if !clear_remote(shared).await {
                failed.push(Op::Clear);
            }
            continue;
        }
        // Consecutive sets and deletes: one pipeline.
        let mut pipe = redis::pipe();
        let mut segment = Vec::new();
        while let Some(op) = ops.next_if(|op| !matches!(op, Op::Clear)) {
            match &op {
                Op::Set(key, entry) => {
                    if let Some((bytes, px)) = encode_entry(shared, key, entry) {
                        pipe.cmd("SET")
                            .arg(shared.redis_key(key))
                            .arg(bytes)
                            .arg("PX")
                            .arg(px)
                            .ignore();
                    }
                    // Written (or not to be written): the instances waiting may go on.
                    if shared.lock.is_some() {
                        pipe.cmd("DEL").arg(shared.lock_key(key)).ignore();
                    }
                }
                Op::Del(key) => {
                    pipe.cmd("DEL").arg(shared.redis_key(key)).ignore();
                    pipe.cmd("PUBLISH")
                        .arg(&shared.channel)
                        .arg(key.to_string())
                        .ignore();
                }
                Op::Clear => {}
            }
            segment.push(op);
        }
        let mut connection = shared.connection.clone();
        let reply = timeout(BACKGROUND_TIMEOUT, pipe.query_async::<()>(&mut connection)).await;
        match reply {
            Ok(Ok(())) => shared.answered(),
            Ok(Err(e)) => {
                shared.failed("write", Some(&e));
                failed.extend(segment.into_iter().filter(Op::is_invalidation));
            }
            Err(_) => {
                shared.failed("write (timed out)", None);
                failed.extend(segment.into_iter().filter(Op::is_invalidation));
            }
        }
    }
    failed
}

/// The value and its `PX` for an entry, or `None` when it is not to be written (too
/// large, or already past its retention).
fn encode_entry(
    shared: &Shared,
    key: &CacheKey,
    entry: &Entry<CachedResponse>,
) -> Option<(Vec<u8>, u64)> {
    let age = entry.stored_at().elapsed();
    let remaining = ms(entry.retain_for().saturating_sub(age));
    if remaining == 0 {
        return None;
    }
    let stored_at = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
    let grace = entry.retain_for().saturating_sub(entry.ttl());
    let bytes = codec::encode(key, entry.value(), unix_ms(stored_at), entry.ttl(), grace)?;
    if bytes.len() > shared.max_value_bytes {
        tracing::debug!(cache = %shared.name(), %key, len = bytes.len(), "answer over max_value_bytes; kept in process only");
        return None;
    }
    Some((bytes, remaining))
}

/// Deletes every key under the prefix, then tells every instance to clear its L1.
async fn clear_remote(shared: &Shared) -> bool {
    let result = timeout(BACKGROUND_TIMEOUT.saturating_mul(10), async {
        let mut connection = shared.connection.clone();
        let pattern = format!("{}*", escape_glob(&shared.prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(keys)
                    .query_async::<()>(&mut connection)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("PUBLISH")
            .arg(&shared.channel)
            .arg("*")
            .query_async::<()>(&mut connection)
            .await
    })
    .await;
    match result {
        Ok(Ok(())) => {
            shared.answered();
            true
        }
        Ok(Err(e)) => {
            shared.failed("clear", Some(&e));
            false
        }
        Err(_) => {
            shared.failed("clear (timed out)", None);
            false
        }
    }
}

fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Subscribes to the invalidation channel and drops the L1 copies it names; clears L1
/// on every (re)subscription, since messages sent meanwhile are lost.
async fn subscriber(shared: Arc<Shared>, client: Client) {
    let mut backoff = Duration::from_millis(50);
    let mut subscribed_before = false;
    loop {
        let connected = timeout(BACKGROUND_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&shared.channel).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                tracing::debug!(cache = %shared.name(), error = %e, "cannot subscribe to invalidations");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        shared.clear_l1();
        shared.subscribed.store(true, Ordering::Release);
        if subscribed_before {
            tracing::info!(cache = %shared.name(), "resubscribed to invalidations; cleared the in-process level");
        }
        subscribed_before = true;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            match message.get_payload_bytes() {
                b"*" => shared.clear_l1(),
                hex => match parse_key(hex) {
                    Some(key) => {
                        shared.generation.fetch_add(1, Ordering::AcqRel);
                        shared.l1().remove(&key);
                    }
                    // Not ours to understand: the safe reading is "everything".
                    None => shared.clear_l1(),
                },
            }
        }
        shared.subscribed.store(false, Ordering::Release);
        tracing::debug!(cache = %shared.name(), "invalidation subscription lost; resubscribing");
    }
}

fn parse_key(hex: &[u8]) -> Option<CacheKey> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(CacheKey::from_bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyHasher;

    #[test]
    fn keys_roundtrip_through_hex() {
        let mut h = KeyHasher::new();
        h.field(0, b"x");
        let key = h.finish();
        assert_eq!(parse_key(key.to_string().as_bytes()), Some(key));
        assert_eq!(parse_key(b"zz"), None);
        assert_eq!(parse_key(&[b'g'; 64]), None);
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
