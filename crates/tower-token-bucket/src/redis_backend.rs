//! Limits shared by every instance: GCRA in one Lua script on Redis (feature `redis`).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use metrics::Counter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};

use crate::backend::{Decision, RateLimitBackend};
use crate::in_memory::{DEFAULT_MAX_KEYS, DEFAULT_PRUNE_INTERVAL};
use crate::metrics::{ERROR, LABEL_LIMITER, LABEL_REASON, RATELIMIT_BACKEND_ERRORS_TOTAL, TIMEOUT};
use crate::{EitherKey, InMemoryBackend, Quota};

/// The default time a decision may take before the [`FailurePolicy`] answers instead.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// The default `Retry-After` of a request refused by [`FailurePolicy::FailClosed`].
pub const DEFAULT_UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The default prefix of every Redis key the backend writes.
pub const DEFAULT_REDIS_PREFIX: &str = "ratelimit:";

/// While Redis is failing, how often one decision tries it again (the others decide by
/// the failure policy at once).
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// The GCRA decision, atomic on the server. Times are integers in microseconds; every
/// value stays below 2^53 (about 285 years of microseconds), so Lua's doubles hold them
/// exactly: `now` is about 1.8e15 in 2026, and a quota's whole bucket refills within a
/// century (3.2e15 µs, see `Quota::gcra_interval`), so no intermediate value exceeds
/// `now + 2 * 3.2e15`.
///
/// - `KEYS[i]`: quota i's theoretical arrival time (TAT), in µs of the clock used.
/// - `ARGV[1]`: the cost. `ARGV[2]`: the time in µs, or `""` to read the server's `TIME`
///   (the default: instances' clocks do not matter). `ARGV[2i+1]`, `ARGV[2i+2]`: quota
///   i's emission interval and tolerance (`interval * (burst - 1)`), in µs.
/// - Returns `{1, 0, 0}` when the cost was spent from every quota, or `{0, i, wait}` when
///   quota i refuses: nothing is spent, and the same cost fits in `wait` µs.
///
/// A spent key expires (`PX`) when its bucket is full again, so idle keys cost nothing.
/// Numbers are written with `%.0f`: Lua's default conversion keeps 14 digits only.
const SCRIPT: &str = r"
local cost = tonumber(ARGV[1])
local now
local server_time = ARGV[2] == ''
if server_time then
  if redis.replicate_commands then pcall(redis.replicate_commands) end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i + 1])
  local tolerance = tonumber(ARGV[2 * i + 2])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local fits_at = new_tat - interval - tolerance
  if fits_at > now then
    return {0, i, fits_at - now}
  end
  tats[i] = new_tat
end
for i = 1, #KEYS do
  local tat = string.format('%.0f', tats[i])
  if server_time then
    local ttl = string.format('%.0f', math.ceil((tats[i] - now) / 1000))
    redis.call('SET', KEYS[i], tat, 'PX', ttl)
  else
    redis.call('SET', KEYS[i], tat)
  end
end
return {1, 0, 0}
";

/// What a [`RedisBackend`] decides when Redis does not answer within the
/// [timeout](RedisBackendBuilder::timeout) (unreachable, slow, or an error).
///
/// | policy | the request |
/// |---|---|
/// | [`Local`](Self::Local) (default) | decided in process, at the quota ÷ [instances](RedisBackendBuilder::instances): 429 when that refuses |
/// | [`FailOpen`](Self::FailOpen) | admitted, unlimited |
/// | [`FailClosed`](Self::FailClosed) | refused: 503 (gRPC 14 `UNAVAILABLE`) with `Retry-After` |
///
/// In every policy no request waits on Redis longer than the timeout; the first failure
/// of an outage logs one warning and recovery one info line; every failed attempt counts
/// in `ratelimit_backend_errors_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Decide with an in-memory limiter whose quotas are the configured ones divided by
    /// the number of instances (same period ×N, burst ÷N, at least 1), so that N
    /// instances together admit about what Redis would have.
    #[default]
    Local,
    /// Admit every request while Redis is failing.
    FailOpen,
    /// Refuse every request while Redis is failing, as
    /// [`RateLimitError::Unavailable`](crate::RateLimitError::Unavailable).
    FailClosed,
}

/// Whose clock a [`RedisBackend`]'s decisions read.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum RedisClock {
    /// The server's `TIME`, read inside the script (default): instances' clocks do not
    /// matter.
    #[default]
    Server,
    /// A clock the caller moves, passed to the script with each decision: for
    /// deterministic tests against a real Redis. Keys then do not expire (they live
    /// in real time and this clock does not): never use it in production.
    Manual(ManualClock),
}

/// A clock that moves only when told to; see [`RedisClock::Manual`]. Clones share the
/// time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (in whole microseconds, saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// The time since the clock was made, as moved.
    #[must_use]
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.micros())
    }

    fn micros(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a rate-limit key is written into a Redis key name.
///
/// Two different keys must write different bytes, and the same key the same bytes in
/// every process (no random hashing). Provided for `()` (`global`), integers (decimal),
/// strings and byte strings (as they are), IP addresses (their text form) and
/// [`EitherKey`] (`1:` or `2:` and the inner key).
///
/// The bytes go between the `{` and `}` of a Redis Cluster hash tag, so the keys of all
/// the quotas of one rate-limit key live in one slot. An empty encoding is written as
/// one NUL byte (an empty hash tag would not hold the quotas together).
pub trait RedisKey {
    /// Appends this key's bytes to `out`.
    fn write_redis_key(&self, out: &mut Vec<u8>);
}

impl RedisKey for () {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"global");
    }
}

impl RedisKey for str {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RedisKey for [u8] {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

macro_rules! redis_key_deref {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            fn write_redis_key(&self, out: &mut Vec<u8>) {
                (**self).write_redis_key(out);
            }
        }
    )*};
}
redis_key_deref!(String, Box<str>, Arc<str>, Vec<u8>, Bytes, &'static str);

macro_rules! redis_key_display {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            fn write_redis_key(&self, out: &mut Vec<u8>) {
                use std::io::Write as _;
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
redis_key_display!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, IpAddr, Ipv4Addr, Ipv6Addr
);

impl<A: RedisKey, B: RedisKey> RedisKey for EitherKey<A, B> {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        match self {
            Self::First(a) => {
                out.extend_from_slice(b"1:");
                a.write_redis_key(out);
            }
            Self::Second(b) => {
                out.extend_from_slice(b"2:");
                b.write_redis_key(out);
            }
        }
    }
}

/// Configures a [`RedisBackend`]: made by [`RedisBackend::builder`] or
/// [`from_url`](RedisBackendBuilder::from_url), finished by
/// [`build`](Self::build) or by the layer builder's
/// [`build_redis`](crate::RateLimitLayerBuilder::build_redis).
#[derive(Debug)]
#[must_use]
pub struct RedisBackendBuilder<C> {
    connection: C,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    instances: NonZeroU32,
    unavailable_retry_after: Duration,
    clock: RedisClock,
    name: Option<Cow<'static, str>>,
    max_keys: usize,
    prune_interval: Duration,
}

impl RedisBackendBuilder<ConnectionManager> {
    /// A builder on a reconnecting [`ConnectionManager`] to `url`
    /// (`redis://host:port/db`, `rediss://` with a TLS feature of `redis`,
    /// `redis+unix:///path`).
    ///
    /// Nothing is connected yet: the first decision connects, so a service starts even
    /// while Redis is down (its requests then follow the [`FailurePolicy`]). Lost
    /// connections are re-established in the background, with backoff from 10 ms to 1 s.
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the manager starts a task).
    pub fn from_url(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(8);
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self::new(manager))
    }
}

impl<C> RedisBackendBuilder<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A builder on `connection`: a [`ConnectionManager`] (reconnecting, multiplexed:
    /// one is enough for any number of concurrent decisions), or with the
    /// `redis-cluster` feature a `redis::cluster_async::ClusterConnection`.
    pub fn new(connection: C) -> Self {
        Self {
            connection,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            policy: FailurePolicy::Local,
            instances: NonZeroU32::MIN,
            unavailable_retry_after: DEFAULT_UNAVAILABLE_RETRY_AFTER,
            clock: RedisClock::Server,
            name: None,
            max_keys: DEFAULT_MAX_KEYS,
            prune_interval: DEFAULT_PRUNE_INTERVAL,
        }
    }

    /// The start of every key name (default `ratelimit:`). Keys are
    /// `{prefix}{{key}}:{quota index}`, e.g. `ratelimit:per-user:{1:alice}:0`: give each
    /// limiter its own prefix, and every instance of one limiter the same prefix and the
    /// same quotas, in the same order.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest a decision waits for Redis (default 50 ms); then the
    /// [`FailurePolicy`] decides.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to decide while Redis fails (default [`FailurePolicy::Local`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How many instances share the limit (default 1; zero is one): under
    /// [`FailurePolicy::Local`] each one admits its share.
    pub fn instances(mut self, instances: u32) -> Self {
        self.instances = NonZeroU32::new(instances).unwrap_or(NonZeroU32::MIN);
        self
    }

    /// The `Retry-After` of a request refused by [`FailurePolicy::FailClosed`]
    /// (default 1 s).
    pub fn unavailable_retry_after(mut self, retry_after: Duration) -> Self {
        self.unavailable_retry_after = retry_after;
        self
    }

    /// Whose clock decides (default [`RedisClock::Server`]).
    pub fn clock(mut self, clock: RedisClock) -> Self {
        self.clock = clock;
        self
    }

    /// The `limiter` label of `ratelimit_backend_errors_total` (default: the layer's
    /// name with [`build_redis`](crate::RateLimitLayerBuilder::build_redis), else
    /// `"default"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The most keys held in process (default 100,000; with
    /// [`build_redis`](crate::RateLimitLayerBuilder::build_redis), the layer
    /// builder's `max_keys`): by the local refusal cache, and by the
    /// [`FailurePolicy::Local`] limiter (see [`InMemoryBackend`]).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    pub(crate) fn defaults(
        mut self,
        name: Cow<'static, str>,
        max_keys: usize,
        prune_interval: Duration,
    ) -> Self {
        if self.name.is_none() {
            self.name = Some(name);
        }
        self.max_keys = max_keys.max(1);
        self.prune_interval = prune_interval;
        self
    }

    /// The backend, enforcing `quotas` in order.
    ///
    /// Install the `metrics` recorder before this call.
    ///
    /// # Panics
    ///
    /// If `quotas` is empty.
    pub fn build<K>(self, quotas: &[Quota]) -> RedisBackend<K, C>
    where
        K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    {
        assert!(
            !quotas.is_empty(),
            "a rate limiter needs at least one quota"
        );
        let name = self.name.unwrap_or(Cow::Borrowed("default"));
        let counter = |reason: &'static str| {
            metrics::counter!(
                RATELIMIT_BACKEND_ERRORS_TOTAL,
                LABEL_LIMITER => name.to_string(),
                LABEL_REASON => reason
            )
        };
        let local_quotas: Vec<Quota> = quotas.iter().map(|q| share(*q, self.instances)).collect();
        let smallest = *quotas
            .iter()
            .min_by_key(|q| q.burst())
            .unwrap_or(&quotas[0]);
        let mut args = Vec::with_capacity(quotas.len() * 2);
        for q in quotas {
            let interval = micros(q.gcra_interval()).max(1);
            args.push(interval);
            args.push(interval.saturating_mul(u64::from(q.burst() - 1)));
        }
        let tsc = quanta::Clock::new();
        let start = tsc.raw();
        RedisBackend {
            inner: Arc::new(Inner {
                connection: self.connection,
                script: redis::Script::new(SCRIPT),
                quotas: quotas.into(),
                args: args.into(),
                smallest,
                prefix: self.prefix,
                timeout: self.timeout,
                policy: self.policy,
                unavailable_retry_after: self.unavailable_retry_after,
                clock: self.clock,
                local: InMemoryBackend::with_limits(
                    &local_quotas,
                    self.max_keys,
                    self.prune_interval,
                ),
                refused: DashMap::with_hasher(foldhash::fast::RandomState::default()),
                max_refused: self.max_keys,
                last_sweep: AtomicU64::new(0),
                sweeping: Mutex::new(()),
                down: AtomicBool::new(false),
                next_probe: AtomicU64::new(0),
                tsc,
                start,
                timeouts: counter(TIMEOUT),
                errors: counter(ERROR),
                name,
                stats: Stats::default(),
            }),
        }
    }
}

/// One instance's share of `quota`: the same rate over `instances` (period ×N), and
/// the burst ÷N, at least 1.
fn share(quota: Quota, instances: NonZeroU32) -> Quota {
    let n = instances.get();
    let period = quota.period().checked_mul(n).unwrap_or(Duration::MAX);
    Quota::new(quota.count(), period).with_burst((quota.burst() / n).max(1))
}

/// `d` in whole microseconds, rounded to the nearest, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().saturating_add(500) / 1000).unwrap_or(u64::MAX)
}

/// Rate-limit state in Redis, shared by every instance that uses the same Redis, prefix
/// and quotas (feature `redis`).
///
/// - **One round trip per decision**: one Lua script (`EVALSHA`; loaded again by
///   itself after `SCRIPT FLUSH` or a failover) runs GCRA for every quota of the key
///   atomically, on the server's `TIME`, so instances' clocks do not matter. The
///   semantics are the [`InMemoryBackend`]'s: quotas checked in order, the first
///   refusal wins and nothing is spent; a weighted cost; a refusal carries the exact
///   time until the same cost fits (which wait mode sleeps); a cost larger than the
///   smallest burst is refused as [`Decision::CostTooLarge`] without a round trip.
/// - **Microseconds**: times are integer microseconds (exact in Lua's doubles, see
///   the script in the source). A quota's interval is rounded to the nearest
///   microsecond, at least one: a quota faster than a million tokens a second per key
///   is enforced at a million.
/// - **Keys** are `{prefix}{{key}}:{quota index}` (a hash tag: one key's quotas share
///   a Redis Cluster slot), hold one integer, and expire by themselves once their
///   bucket is full again.
/// - **A local fast path**: a key that Redis refused until T, for a cost c, is refused
///   in process until T for the same cost, with no round trip and the same exact
///   retry-after (tokens only come back with time, so Redis could not answer
///   otherwise). Another instance may spend the key's tokens meanwhile: the retry-after
///   is then early, and the retry goes to Redis, which refuses again with the new one. A client that floods costs Redis
///   one command per refill. At most [`max_keys`](RedisBackendBuilder::max_keys)
///   refusals are remembered; expired ones are swept when the cache is full, and a
///   refusal that finds it full of live ones is simply not cached.
/// - **Failures**: a decision that takes longer than the
///   [timeout](RedisBackendBuilder::timeout) (default 50 ms) or fails is decided by the
///   [`FailurePolicy`]. While Redis fails, one decision every 100 ms tries it again and
///   the others follow the policy at once; the connection is re-established in the
///   background.
///
/// Cloning is cheap and clones share the connection and the caches.
///
/// ```no_run
/// use tower_token_bucket::{http::user_or_peer_ip, Quota, RateLimitLayer, RedisBackend};
///
/// # fn main() -> Result<(), tower_token_bucket::redis::RedisError> {
/// let redis = RedisBackend::from_url("redis://127.0.0.1:6379")?
///     .prefix("gateway:per-user:")
///     .instances(3);
/// let per_user = RateLimitLayer::builder(Quota::per_second(5))
///     .name("per-user")
///     .key(user_or_peer_ip("x-user-id"))
///     .build_redis(redis);
/// # let _ = per_user;
/// # Ok(())
/// # }
/// ```
pub struct RedisBackend<K: Hash + Eq + Clone, C = ConnectionManager> {
    inner: Arc<Inner<K, C>>,
}

impl<K: Hash + Eq + Clone, C> Clone for RedisBackend<K, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq + Clone, C> fmt::Debug for RedisBackend<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("RedisBackend")
            .field("name", &inner.name)
            .field("prefix", &inner.prefix)
            .field("quotas", &inner.quotas)
            .field("timeout", &inner.timeout)
            .field("policy", &inner.policy)
            .field("clock", &inner.clock)
            .finish_non_exhaustive()
    }
}

impl RedisBackend<(), ConnectionManager> {
    /// Same as [`RedisBackendBuilder::from_url`].
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the manager starts a task).
    pub fn from_url(
        url: &str,
    ) -> Result<RedisBackendBuilder<ConnectionManager>, redis::RedisError> {
        RedisBackendBuilder::from_url(url)
    }
}

impl<C> RedisBackend<(), C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Same as [`RedisBackendBuilder::new`].
    pub fn builder(connection: C) -> RedisBackendBuilder<C> {
        RedisBackendBuilder::new(connection)
    }
}

/// Counts kept for tests and dashboards.
#[derive(Debug, Default)]
struct Stats {
    round_trips: AtomicU64,
    local_refusals: AtomicU64,
    failures: AtomicU64,
}

/// What a [`RedisBackend`] has done since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Decisions sent to Redis (answered or not).
    pub round_trips: u64,
    /// Decisions refused from the local cache of refusals, without a round trip.
    pub local_refusals: u64,
    /// Decisions made by the [`FailurePolicy`] (Redis failed, timed out, or is
    /// between two probes of an outage).
    pub failures: u64,
}

struct Inner<K: Hash + Eq + Clone, C> {
    connection: C,
    script: redis::Script,
    quotas: Box<[Quota]>,
    /// Per quota: the emission interval and the tolerance, in µs.
    args: Box<[u64]>,
    smallest: Quota,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    unavailable_retry_after: Duration,
    clock: RedisClock,
    /// The [`FailurePolicy::Local`] limiter.
    local: InMemoryBackend<K>,
    /// Keys Redis refused: until when (µs since `start`), for what cost, by which quota.
    refused: DashMap<K, Refused, foldhash::fast::RandomState>,
    max_refused: usize,
    /// When the full refusal cache was last swept (µs since `start`).
    last_sweep: AtomicU64,
    sweeping: Mutex<()>,
    /// Redis is failing: decide by policy, probing every `PROBE_INTERVAL`.
    down: AtomicBool,
    /// When the next probe may go (µs since `start`).
    next_probe: AtomicU64,
    /// The local clock of the refusal cache and the outage probes, with the server's
    /// clock: the CPU's time-stamp counter, as the in-memory backend's (a refused key
    /// is answered at about the in-memory backend's cost). Decisions never read it.
    tsc: quanta::Clock,
    /// `tsc`'s reading when the backend was built.
    start: u64,
    timeouts: Counter,
    errors: Counter,
    name: Cow<'static, str>,
    stats: Stats,
}

#[derive(Clone, Copy, Debug)]
struct Refused {
    until: u64,
    cost: u32,
    quota: usize,
}

impl<K, C> RedisBackend<K, C>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Whether the last decision sent to Redis was answered (`true` before the first).
    #[must_use]
    pub fn is_reachable(&self) -> bool {
        !self.inner.down.load(Ordering::Relaxed)
    }

    /// Counts since the backend was built.
    #[must_use]
    pub fn stats(&self) -> RedisStats {
        let s = &self.inner.stats;
        RedisStats {
            round_trips: s.round_trips.load(Ordering::Relaxed),
            local_refusals: s.local_refusals.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
        }
    }

    /// The Redis key names of `key`, one per quota, in order.
    #[must_use]
    pub fn redis_keys(&self, key: &K) -> Vec<Vec<u8>> {
        self.inner.redis_keys(key)
    }

    /// The failure policy in force.
    #[must_use]
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.policy
    }
}

impl<K, C> Inner<K, C>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Microseconds on the backend's local clock (since it was built, or the manual
    /// clock's).
    fn now(&self) -> u64 {
        match &self.clock {
            RedisClock::Server => self.tsc.delta_as_nanos(self.start, self.tsc.raw()) / 1000,
            RedisClock::Manual(clock) => clock.micros(),
        }
    }

    fn redis_keys(&self, key: &K) -> Vec<Vec<u8>> {
        let mut base = Vec::with_capacity(self.prefix.len() + 32);
        base.extend_from_slice(self.prefix.as_bytes());
        base.push(b'{');
        let at = base.len();
        key.write_redis_key(&mut base);
        if base.len() == at {
            base.push(0);
        }
        base.extend_from_slice(b"}:");
        (0..self.quotas.len())
            .map(|i| {
                let mut k = base.clone();
                k.extend_from_slice(i.to_string().as_bytes());
                k
            })
            .collect()
    }

    /// A refusal Redis made that still holds for `cost`, answered in process.
    fn cached_refusal(&self, key: &K, cost: u32) -> Option<Decision> {
        let entry = *self.refused.get(key)?;
        let now = self.now();
        if entry.until <= now {
            self.refused.remove_if(key, |_, e| e.until <= now);
            return None;
        }
        if cost != entry.cost {
            // A smaller cost may fit sooner, a larger one may be refused by another
            // quota first: only the same cost has a known, exact answer.
            return None;
        }
        self.stats.local_refusals.fetch_add(1, Ordering::Relaxed);
        Some(Decision::Limited {
            retry_after: Duration::from_micros(entry.until - now),
            quota: self.quotas[entry.quota],
        })
    }

    fn remember_refusal(&self, key: K, refused: Refused) {
        if self.refused.len() >= self.max_refused {
            let now = self.now();
            // Sweep expired refusals at most once a second: a cache full of live ones
            // just stops caching until they expire.
            let last = self.last_sweep.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1_000_000
                && self
                    .last_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let _sweep = self.sweeping.lock().unwrap_or_else(PoisonError::into_inner);
                self.refused.retain(|_, e| e.until > now);
            }
            if self.refused.len() >= self.max_refused {
                return;
            }
        }
        self.refused.insert(key, refused);
    }

    /// While Redis is failing, whether this decision skips it (another probe went less
    /// than `PROBE_INTERVAL` ago).
    fn skip_while_down(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.now();
        let next = self.next_probe.load(Ordering::Relaxed);
        if now < next {
            return true;
        }
        // This decision probes; the others skip until the next interval.
        let later = now.saturating_add(micros(PROBE_INTERVAL));
        self.next_probe
            .compare_exchange(next, later, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(limiter = %self.name, "redis answers again; limits are shared again");
        }
    }

    fn failed(&self, timed_out: bool, error: Option<&redis::RedisError>) {
        if timed_out {
            self.timeouts.increment(1);
        } else {
            self.errors.increment(1);
        }
        self.next_probe.store(
            self.now().saturating_add(micros(PROBE_INTERVAL)),
            Ordering::Relaxed,
        );
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limiter = %self.name,
                policy = ?self.policy,
                timed_out,
                error = error.map(tracing::field::display),
                "redis unreachable; rate limits decided by the failure policy until it answers"
            );
        }
    }

    /// The decision of the failure policy.
    fn by_policy(&self, key: &K, cost: NonZeroU32) -> Decision {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        match self.policy {
            FailurePolicy::Local => match self.local.decide(key, cost) {
                // A cost that fits the shared quota but not this instance's share of its
                // burst: refused for as long as the share takes to gather it.
                Decision::CostTooLarge { quota } => Decision::Limited {
                    retry_after: quota.replenish_interval().saturating_mul(cost.get()),
                    quota,
                },
                decision => decision,
            },
            FailurePolicy::FailOpen => Decision::Allowed,
            FailurePolicy::FailClosed => Decision::Unavailable {
                retry_after: self.unavailable_retry_after,
            },
        }
    }

    async fn decide(self: Arc<Self>, key: K, cost: NonZeroU32) -> Decision {
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let sent = self.now();
        let mut invocation = self.script.prepare_invoke();
        for k in self.redis_keys(&key) {
            invocation.key(k);
        }
        invocation.arg(cost.get());
        match self.clock {
            RedisClock::Server => invocation.arg(""),
            RedisClock::Manual(_) => invocation.arg(sent),
        };
        for a in &self.args {
            invocation.arg(*a);
        }
        let mut connection = self.connection.clone();
        let reply = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(u8, usize, u64)>(&mut connection),
        )
        .await;
        match reply {
            Ok(Ok((1, _, _))) => {
                self.answered();
                // A smaller cost got through: a cached refusal of a larger one now
                // fits later than it said.
                if self.refused.contains_key(&key) {
                    self.refused.remove(&key);
                }
                Decision::Allowed
            }
            Ok(Ok((_, i, wait))) if (1..=self.quotas.len()).contains(&i) => {
                self.answered();
                let quota = i - 1;
                self.remember_refusal(
                    key,
                    Refused {
                        until: sent.saturating_add(wait),
                        cost: cost.get(),
                        quota,
                    },
                );
                Decision::Limited {
                    retry_after: Duration::from_micros(wait),
                    quota: self.quotas[quota],
                }
            }
            Ok(Ok(_)) => {
                let error = redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "unexpected reply from the rate-limit script",
                ));
                self.failed(false, Some(&error));
                self.by_policy(&key, cost)
            }
            Ok(Err(error)) => {
                self.failed(false, Some(&error));
                self.by_policy(&key, cost)
            }
            Err(_elapsed) => {
                self.failed(true, None);
                self.by_policy(&key, cost)
            }
        }
    }
}

/// The future of a [`RedisBackend`] decision: ready at once when decided in process
/// (cost too large, a cached refusal, an outage between probes), else one round trip.
pub struct RedisFuture {
    state: FutureState,
}

enum FutureState {
    Ready(Option<Decision>),
    Pending(Pin<Box<dyn Future<Output = Decision> + Send>>),
}

impl fmt::Debug for RedisFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            FutureState::Ready(_) => "ready",
            FutureState::Pending(_) => "pending",
        };
        f.debug_struct("RedisFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for RedisFuture {
    type Output = Decision;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        match &mut self.state {
            FutureState::Ready(decision) => match decision.take() {
                Some(decision) => Poll::Ready(decision),
                // Polled after completion.
                None => Poll::Pending,
            },
            FutureState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<K, C> RateLimitBackend<K> for RedisBackend<K, C>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    type Future = RedisFuture;

    fn check(&self, key: &K, cost: NonZeroU32) -> RedisFuture {
        let inner = &*self.inner;
        let ready = |decision| RedisFuture {
            state: FutureState::Ready(Some(decision)),
        };
        if cost.get() > inner.smallest.burst() {
            return ready(Decision::CostTooLarge {
                quota: inner.smallest,
            });
        }
        if let Some(decision) = inner.cached_refusal(key, cost.get()) {
            return ready(decision);
        }
        if inner.skip_while_down() {
            return ready(inner.by_policy(key, cost));
        }
        RedisFuture {
            state: FutureState::Pending(Box::pin(
                Arc::clone(&self.inner).decide(key.clone(), cost),
            )),
        }
    }

    fn quotas(&self) -> &[Quota] {
        &self.inner.quotas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_share_a_hash_tag_and_never_an_empty_one() {
        let b = RedisBackend::from_url("redis://127.0.0.1:1")
            .unwrap()
            .prefix("p:")
            .build::<EitherKey<String, IpAddr>>(&[Quota::per_second(1), Quota::per_minute(5)]);
        let keys = b.redis_keys(&EitherKey::First("alice".into()));
        assert_eq!(
            keys,
            vec![b"p:{1:alice}:0".to_vec(), b"p:{1:alice}:1".to_vec()]
        );
        let ip = b.redis_keys(&EitherKey::Second(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(ip[0], b"p:{2:127.0.0.1}:0".to_vec());
        let b = RedisBackend::from_url("redis://127.0.0.1:1")
            .unwrap()
            .build::<String>(&[Quota::per_second(1)]);
        assert_eq!(
            b.redis_keys(&String::new())[0],
            b"ratelimit:{\0}:0".to_vec()
        );
        assert_eq!(
            b.redis_keys(&"x".to_owned())[0],
            b"ratelimit:{x}:0".to_vec()
        );
    }

    /// A Redis Cluster connection is a connection the backend takes.
    #[cfg(feature = "redis-cluster")]
    #[test]
    fn a_cluster_connection_fits() {
        fn takes<C: ConnectionLike + Clone + Send + Sync + 'static>() {}
        takes::<redis::cluster_async::ClusterConnection>();
    }

    #[test]
    fn a_share_keeps_the_rate_over_the_instances() {
        let three = NonZeroU32::new(3).unwrap();
        let q = share(Quota::per_second(5), three);
        assert_eq!(
            (q.count(), q.period(), q.burst()),
            (5, Duration::from_secs(3), 1)
        );
        let q = share(Quota::per_second(30).with_burst(12), three);
        assert_eq!(q.burst(), 4);
        assert_eq!(q.replenish_interval(), Duration::from_millis(100));
        let q = share(Quota::new(1, Duration::MAX), three);
        assert_eq!(q.period(), Duration::MAX);
    }

    #[test]
    fn microseconds_round_to_the_nearest() {
        assert_eq!(micros(Duration::from_nanos(333_333_333)), 333_333);
        assert_eq!(micros(Duration::from_nanos(1_499)), 1);
        assert_eq!(micros(Duration::from_nanos(1_500)), 2);
        assert_eq!(micros(Duration::MAX), u64::MAX);
    }
}
