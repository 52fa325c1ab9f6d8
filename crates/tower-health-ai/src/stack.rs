//! The `HealthAiStack` preset: the five concerns stacked in one layer.

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::{Either, Full};
use pin_project::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use tower_breaker::fallback::FallbackLayer;
use tower_breaker::{
    CaptureHead, CircuitBreaker, CircuitBreakerLayer, Degraded, Timeout, TimeoutLayer,
};
use tower_lru_cache::{CacheLayer, CacheService, MokaStore, Partition};
use tower_priority_queue::{
    AdaptiveLimit, HttpReplay, Limit, PriorityQueue, PriorityQueueLayer, Retry, RetryLayer,
};
use tower_red_metrics::{
    Clock, ExtractLabels, HttpClassify, HttpLabels, PrometheusMetrics, RedMetrics,
    RedMetricsHandle, RedMetricsLayer, RequestLabels,
};
use tower_token_bucket::http::{HeaderKey, PeerIp};
use tower_token_bucket::{ExtractKeyExt, GlobalKey, Or, Quota, RateLimit, RateLimitLayer};

use crate::body::{BufferBody, BufferBodyLayer, RequestCheck, RequestRejected};
use crate::budget::{CallTimes, StartInTime};
use crate::count::CountCalls;
use crate::deadline::{Deadline, EnforceDeadline, OnDeadline, RequestDeadline};
use crate::degraded::DegradedCounters;
use crate::handle::HealthAiHandle;
use crate::lazy::CloneOnDrive;
use crate::policy::{
    BreakerClassifier, FallbackFn, FallbackOnUpstreamFailure, PresetFallback, PresetOverload,
    RetryClassifier,
};
use crate::priority::{PresetPriority, PriorityHeader};
use crate::refusal::{GLOBAL_LIMITER, Refusals, RefusalsLayer};
use crate::shared::{PresetBackend, PresetStore};

/// The header that names the user, by default (a stand-in for what authentication
/// middleware would put in a request extension).
pub const DEFAULT_USER_HEADER: &str = "x-user-id";
/// The per-user limiter's name (its `limiter` metric label).
pub const PER_USER_LIMITER: &str = "per-user";
/// The name of the cache, the queue and the breaker (their metric label).
pub const UPSTREAM_NAME: &str = "ai-service";
/// The longest user id the user header may carry: a longer one names no user, for the
/// per-user limit (whose buckets it would otherwise key), the cache partition and the
/// request's span alike, so that the three never disagree on who the user is.
pub const MAX_USER_ID_LEN: usize = 256;

/// The user header's value, when it names a user: not empty, not longer than
/// [`MAX_USER_ID_LEN`].
pub(crate) fn named_user(value: Option<&http::HeaderValue>) -> Option<&http::HeaderValue> {
    value.filter(|user| !user.is_empty() && user.len() <= MAX_USER_ID_LEN)
}

/// The largest request body read, by default: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The request budget, by default: 150 s from arrival.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(150);

/// How long a provider call must go unanswered to count as accepted, by default: an AI
/// provider refuses calls above its concurrency quota with a 429 that comes back in
/// milliseconds, so a call still running after 2 s has been taken.
pub const DEFAULT_ACCEPTED_AFTER: Duration = Duration::from_secs(2);

/// The preset's in-flight limit: adaptive, from the seed's 2 calls at once up to 32, with
/// the queue's defaults otherwise (decrease ×0.9, +1 per window, cool-downs capped at
/// 60 s), and growing on calls the provider holds ([`DEFAULT_ACCEPTED_AFTER`]): while
/// requests wait and the provider has held every call in flight for 2 s with no overload
/// answer, the limit takes a step up, within what successful calls confirmed, so that it
/// finds the provider's capacity soon after the first 45-90 s calls end; see
/// [`AdaptiveLimit`](tower_priority_queue::AdaptiveLimit).
pub const DEFAULT_ADAPTIVE_LIMIT: AdaptiveLimit =
    AdaptiveLimit::new().accepted_after(DEFAULT_ACCEPTED_AFTER);

/// The breaker's trip policy, by default: open when at least 65 % of the last 50 calls
/// failed, once 20 calls are counted, as `(rate, window, minimum_calls)`; see
/// [retries and the circuit](HealthAiStack#retries-and-the-circuit).
pub const DEFAULT_BREAKER_FAILURE_RATE: (f64, u32, u32) = (0.65, 50, 20);

/// The per-user key: the user header, else the client IP, else one key shared by every
/// caller that can be told apart by neither.
pub(crate) type UserKey = Or<Or<HeaderKey, PeerIp>, GlobalKey>;
/// What [`UserKey`] extracts.
pub(crate) type UserKeyOf = <UserKey as tower_token_bucket::KeyExtractor>::Key;

/// The stack inside [`HealthAi`], outermost first.
type Stacked<S> = RedMetrics<
    RequestDeadline<
        Refusals<
            RateLimit<
                BufferBody<
                    CacheService<
                        CloneOnDrive<
                            tower_breaker::fallback::Fallback<
                                EnforceDeadline<
                                    Retry<
                                        CircuitBreaker<
                                            PriorityQueue<
                                                StartInTime<
                                                    RateLimit<
                                                        StartInTime<Timeout<CountCalls<S>>>,
                                                        GlobalKey,
                                                        PresetBackend<()>,
                                                    >,
                                                >,
                                                PresetPriority,
                                                PresetOverload,
                                            >,
                                            BreakerClassifier,
                                        >,
                                        RetryClassifier,
                                        HttpReplay,
                                    >,
                                >,
                                CaptureHead,
                                PresetFallback,
                                FallbackOnUpstreamFailure,
                            >,
                        >,
                        PresetStore,
                    >,
                >,
                UserKey,
                PresetBackend<UserKeyOf>,
            >,
        >,
    >,
    PresetLabels,
    HttpClassify,
>;

/// The labels of the preset's RED layer: [`HttpLabels`]'s, and, when the preset's own
/// recording is turned off ([`HealthAiStackBuilder::red_metrics`]), a mark on every request
/// that makes the layer pass it through.
#[derive(Debug, Clone, Copy)]
pub struct PresetLabels {
    record: bool,
}

impl<B> ExtractLabels<Request<B>> for PresetLabels {
    fn extract<'r>(&self, request: &'r Request<B>) -> RequestLabels<'r> {
        HttpLabels.extract(request)
    }

    fn is_recorded(&self, request: &Request<B>) -> bool {
        !self.record || HttpLabels.is_recorded(request)
    }

    fn mark_recorded(&self, request: &mut Request<B>) {
        HttpLabels.mark_recorded(request);
    }
}

/// Where the preset's RED figures come from.
#[derive(Debug, Clone)]
enum RedSource {
    /// The preset's own RED layer.
    Own,
    /// None: the application records requests with a RED layer outside the preset.
    Off,
    /// The application's RED layer outside the preset, read through its handle.
    Outer(RedMetricsHandle),
}

/// The preset: RED metrics, a per-user rate limit, a response cache, a fallback, retries,
/// a circuit breaker, a priority queue, a global pace and a call timeout, outermost
/// first, with the seed's production defaults.
///
/// Why each sits where it does:
///
/// 1. **RED metrics** is outermost so that it sees every request, including those refused
///    further in: every refusal is turned into its response (429, 503, 504, 400, 413)
///    just inside it, so its totals equal what clients saw. Just inside it, each request
///    gets its [deadline](#a-deadline-for-each-request). Under a RED layer of the
///    application's (say, on the whole router), the preset's passes the requests through,
///    so each is counted once; [`outer_red_metrics`](HealthAiStackBuilder::outer_red_metrics)
///    makes the handle's JSON read the application's figures, and
///    [`red_metrics(false)`](HealthAiStackBuilder::red_metrics) turns the preset's layer
///    off.
/// 2. **Per-user token bucket** (reject, 5 req/s, burst 5), keyed by the user header
///    (`x-user-id`), else the client IP, else one key shared by every caller that can be
///    told apart by neither (see [who the user is](#who-the-user-is)): protects the
///    server from one client before any work is done for it, cached answers included. A
///    refusal is 429 with `Retry-After`, never degraded: it is the client's excess, not
///    our capacity.
/// 3. The request body is read here (at most 1 MiB, else 413), once: the cache hashes it
///    and the retry layer sends it again. An optional [request check](HealthAiStackBuilder::request_check)
///    runs on the whole request and may refuse it with a 4xx.
/// 4. **Response cache** (64 MiB of answers, 1 h TTL, SHA-256 keys partitioned by user,
///    single-flight, stale-if-error): a hit costs no upstream call. It sits above the
///    fallback so that a stale real answer beats a fallback, and degraded answers are
///    never stored. Callers known by neither a user nor an address are not cached: they
///    cannot be told apart, so they must not share answers.
/// 5. **Fallback**: answers from the user's local function, marked [`Degraded`] (and
///    `x-degraded: true`), when the call below fails for good (after retries), the
///    circuit is open, or our capacity cannot give a real answer in time (see
///    [degraded answers](#degraded-answers)).
/// 6. **Retry** (3 calls in all, full-jitter 2^n backoff from 1 s, a retry budget,
///    only where repeating is safe; timeouts are not retried): outside the breaker and
///    the queue, so that an open circuit stops retries at once and a request backing
///    off holds no queue slot. See [retries and the circuit](#retries-and-the-circuit).
/// 7. **Circuit breaker** (opens when 65 % of the last 50 calls failed, once 20 are
///    counted; 60 s open, then one half-open probe): outside the queue, so an open
///    circuit fails fast without queueing. Local refusals and the upstream's
///    backpressure (`429`, `503` with `Retry-After`) are ignored, not counted as
///    failures.
/// 8. **Priority queue** (urgent, high, normal, low, each level 10 s ahead of the one
///    below, so that none starves; 2 in flight; a bounded waiting room): bounds the
///    concurrency towards the upstream. The priority comes from a trusted source (see
///    [priorities](#priorities)).
/// 9. **Global token bucket** (wait mode, 2 req/s): paces the calls that really reach the
///    upstream; waits at most 30 s, else the request is refused (503, or degraded).
/// 10. **Call timeout** (120 s), innermost, so that time spent queueing or waiting for
///     the pace never counts as upstream slowness.
///
/// Every layer's state is created once, when the stack is built: every `layer()` call
/// and every clone of the resulting service share it, and so does the
/// [`HealthAiHandle`].
///
/// # Who the user is
///
/// The per-user limit and the cache partition take the user from the user header
/// (`x-user-id`, see [`user_header`](HealthAiStackBuilder::user_header)). **That header
/// must be set by your authentication layer, never taken as the client sent it**: a
/// client that names itself can spend other users' allowance, read their cached answers,
/// and mint fresh ids by the thousand to escape its own limit. Put a middleware in front
/// of the stack that removes whatever the client sent and inserts the id it verified:
///
/// ```
/// use axum::{Router, body::Body, extract::Request, middleware::{self, Next}};
/// use axum::response::Response;
/// use http::HeaderValue;
/// use tower::{BoxError, ServiceExt, service_fn};
/// use tower_health_ai::{HealthAiStack, UpstreamRequest};
///
/// /// Your session or token check; here a stand-in.
/// fn verified_user(request: &Request) -> Option<&'static str> {
///     let token = request.headers().get("authorization")?;
///     (token == "Bearer token-of-ada").then_some("ada")
/// }
///
/// async fn identify(mut request: Request, next: Next) -> Response {
///     // Whatever the client sent is dropped, every value of it.
///     request.headers_mut().remove("x-user-id");
///     if let Some(user) = verified_user(&request) {
///         request
///             .headers_mut()
///             .insert("x-user-id", HeaderValue::from_static(user));
///     }
///     next.run(request).await
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// // The upstream echoes who the stack thinks the user is.
/// let upstream = service_fn(|request: UpstreamRequest| async move {
///     let user = request.headers().get("x-user-id").cloned();
///     let user = user.as_ref().map_or("nobody", |v| v.to_str().unwrap_or("?")).to_owned();
///     Ok::<_, BoxError>(http::Response::new(Body::from(user)))
/// });
/// let stack = HealthAiStack::new();
/// let app: Router = Router::new()
///     .route_service("/analyze", tower::Layer::layer(&stack, upstream))
///     .layer(middleware::from_fn(identify)); // runs before the stack
///
/// let forged = Request::post("/analyze")
///     .header("x-user-id", "grace")
///     .header("authorization", "Bearer token-of-ada")
///     .body(Body::empty())?;
/// let response = app.oneshot(forged).await?;
/// let body = axum::body::to_bytes(response.into_body(), 1024).await?;
/// assert_eq!(body, "ada");
/// # Ok(())
/// # }
/// ```
///
/// Without the header, the user is the client IP: axum's `ConnectInfo<SocketAddr>`, or
/// a `SocketAddr` request extension. Plain `axum::serve(listener, app)` gives neither;
/// serve with `app.into_make_service_with_connect_info::<SocketAddr>()` to give the
/// preset the peer address. Behind a reverse proxy the peer is the proxy: set the user
/// header, or, in a middleware that trusts only your proxy (see
/// [`ForwardedIp`](tower_token_bucket::http::ForwardedIp)), replace the `ConnectInfo`
/// with the forwarded client address. A request with neither is not refused (a
/// well-formed request is never a 400): every such caller shares **one** bucket of the
/// per-user quota, and none of them is cached.
///
/// # Priorities
///
/// The queue takes a request's priority from a
/// [`Priority`](tower_priority_queue::Priority) in its extensions, put there by the
/// application (from the user's plan, after authentication: in a middleware before the
/// stack, or in the [request check](HealthAiStackBuilder::request_check)). The client's
/// `x-priority` header is only trusted as far as
/// [`priority_header`](HealthAiStackBuilder::priority_header) says, by default
/// [`PriorityHeader::LowerOnly`]: a client may lower its own requests to `low`, and
/// `high` or `urgent` count as `normal`. So what one user gains by claiming urgent is
/// nothing: urgent arrivals jump the queue and displace other users' waiting requests,
/// which only the application may grant. A public deployment must not trust the raw
/// header ([`PriorityHeader::Trusted`] is for demos and private networks).
///
/// # A deadline for each request
///
/// Each request must be answered within a budget from its arrival (150 s by default,
/// [`request_deadline`](HealthAiStackBuilder::request_deadline)), which a client may
/// shorten, never lengthen, with `grpc-timeout` or `x-request-timeout` (seconds;
/// malformed or huge values are ignored). The deadline covers the wait behind an
/// identical request's call, queueing, pacing, every attempt and every backoff; the
/// upstream service can read it as a [`Deadline`](crate::Deadline) extension. Past it,
/// the fallback answers, degraded, when there is one; else 504 (gRPC 4
/// `DEADLINE_EXCEEDED`). No answer comes later than the deadline (plus at most
/// [`DEADLINE_GRACE`](crate::DEADLINE_GRACE), 100 ms, for a request waiting on an
/// identical request's call), and no upstream answer's body outlasts it: one still
/// arriving at the deadline ends there with an error
/// ([`DeadlineBody`](crate::DeadlineBody)), so that the client sees an incomplete
/// answer as such, and the cache keeps nothing of it.
///
/// A call already running at the upstream when its request's deadline passes is not
/// thrown away: it has been billed, and its answer is what the next identical request
/// needs. The request is answered at its deadline all the same; the call runs on, in a
/// task of its own, to its end (at most the
/// [call timeout](HealthAiStackBuilder::call_timeout) from the deadline, its answer's
/// body included), keeping its slot of the in-flight limit, since the upstream is still
/// working on it; a success is stored in the cache
/// ([`LateAnswer`](tower_lru_cache::LateAnswer)). The identical requests waiting on the
/// call, and those arriving while it runs on, wait for its answer until their own
/// deadlines rather than call again (its answer comes to them as a cache miss; the
/// fallback answers at their deadlines if it is too late). If it fails, those that
/// waited on it get the fallback, and those that arrived meanwhile make a call of their
/// own, time allowing. Nothing else starts for that request after its deadline: no
/// retry, no wait in the queue. Requests that bypass the cache
/// have their calls ended at the deadline, as their answers could serve no one; so does
/// a request whose client shortened its deadline, when the fallback answers it above the
/// cache (its call may be shared with identical requests that have longer: it ends when
/// that request is answered, and one of them calls again).
///
/// # Retries and the circuit
///
/// The upstream call the preset is made for is an analysis with no side effects: safe to
/// repeat, but billed once it has run. So by default
/// ([`retry_idempotent(true)`](HealthAiStackBuilder::retry_idempotent)) a failed call is
/// retried whatever the method: a connection failure, an error, a 5xx, and the
/// upstream's overload answers (`429`, `503`) after their `Retry-After`. A call that
/// **timed out** is not retried
/// ([`retry_timeouts(false)`](HealthAiStackBuilder::retry_timeouts)): it may have run,
/// and been billed, in full, and a slow prompt tends to be slow again, so a retry would
/// cost another 120 s and another call for the same outcome; the fallback (or a 504)
/// answers after the first timeout. Every retry stays within the request's deadline and
/// the retry budget.
///
/// The breaker sees each attempt, so it must tell an outage from the provider's normal
/// failure rate (30 % of calls, independently, on a bad day), and one bad prompt from a
/// bad provider. It opens when at least 65 % of the last 50 calls failed, once it has
/// counted 20 ([`breaker_failure_rate`](HealthAiStackBuilder::breaker_failure_rate)).
/// The numbers, at 30 % independent failures (simulated, 40 000 and 3 000 runs):
///
/// | trip policy | P(opens within 500 calls) | within 10 000 calls | outage: calls until open |
/// |---|---|---|---|
/// | 3 failures in a row (the seed's) | ≈ 100 % (every 51 calls on average) | 100 % | 3 |
/// | 60 % of the last 20, at least 10 | 48 % | 100 % | 10 to 12 |
/// | **65 % of the last 50, at least 20** | **0.13 %** | **0.2 %** | **20 to 33** |
///
/// Most of that 0.2 % is the first decision, at 20 calls (13 failures of 20 happen with
/// probability 0.13 %); once the window is full, 33 failures of 50 has probability
/// 1.6 · 10⁻⁷ per call. At 40 % failures it opens with probability 4 % within 500 calls.
/// In an outage (every call fails) it opens at the 20th call after a start or a reset,
/// and at the latest at the 33rd whatever the window held: 33 failures of 50 is 65 %.
/// With 3 calls per failed request, that is 7 to 11 requests.
///
/// One slow prompt does not open it either: it times out once per request (timeouts
/// are not retried), and a few such failures are far below 65 % of 20 calls. With
/// [`retry_timeouts(true)`](HealthAiStackBuilder::retry_timeouts) a request makes
/// at most two 120 s attempts within its 150 s deadline.
///
/// # Degraded answers
///
/// When a request cannot get a real answer in time because of our capacity (the waiting
/// room is full, a higher priority displaced it, its level's maximum wait or the global
/// pace's passed, or its deadline passed) and a fallback is configured, the fallback
/// answers at once, marked degraded, with a `Retry-After` saying when a real answer is
/// likely (the queue's or the pace's estimate, 5 s for a deadline). A 503 would only
/// make the client come back into the same overload; the fallback's answer is useful
/// now. Without a fallback, or with
/// [`degrade_on_overload(false)`](HealthAiStackBuilder::degrade_on_overload), these stay
/// 503 (504 for the deadline). Degraded answers are counted by reason in the metrics
/// JSON (`degraded`) and in the `degraded_total{reason}` counter.
///
/// # Not starting what cannot end
///
/// A provider bills a call once it runs, and an AI call takes tens of seconds. Under a
/// sustained overload the queue holds requests whose deadline will pass before a call
/// started now could end: starting it spends a slot and a billed call on an answer that
/// comes too late, while the requests behind it wait longer still. So the stack learns
/// how long the upstream's successful calls take (the median of the last 64, once ten
/// have succeeded; capped at half the request budget; forgotten, window and all, after
/// five minutes without a success) and starts a call only when it is more likely than
/// not to end in time:
///
/// - a request does not wait in the queue past the point where its call could still end:
///   it is answered then as the queue's timeout (the fallback, degraded with reason
///   `queue_timeout`, else 503);
/// - a call (a retry included) is not started, and takes no token of the global pace,
///   when the deadline leaves less than that: the request is answered as for its
///   deadline (the fallback, degraded with reason `deadline`, else 504).
///
/// Either way its slot goes to a request that can still be answered. Until the stack
/// knows, and for an upstream much quicker than the deadline, nothing changes.
/// [`start_calls_in_time(false)`](HealthAiStackBuilder::start_calls_in_time) turns it
/// off.
#[derive(Clone)]
pub struct HealthAiStack {
    red: RedMetricsLayer<PresetLabels, HttpClassify>,
    per_user: RateLimitLayer<UserKey, PresetBackend<UserKeyOf>>,
    body: BufferBodyLayer,
    cache: CacheLayer<PresetStore>,
    fallback: FallbackLayer<CaptureHead, PresetFallback, FallbackOnUpstreamFailure>,
    retry: RetryLayer<RetryClassifier, HttpReplay>,
    breaker: CircuitBreakerLayer<BreakerClassifier>,
    queue: PriorityQueueLayer<PresetPriority, PresetOverload>,
    global: RateLimitLayer<GlobalKey, PresetBackend<()>>,
    timeout: TimeoutLayer,
    call_times: Arc<CallTimes>,
    start_in_time: bool,
    on_deadline: OnDeadline,
    upstream_calls: Arc<AtomicU64>,
    handle: HealthAiHandle,
    user_header: &'static str,
    priority_header: PriorityHeader,
}

impl fmt::Debug for HealthAiStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthAiStack")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Default for HealthAiStack {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthAiStack {
    /// The preset with every default, and no fallback function.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to change the defaults.
    pub fn builder() -> HealthAiStackBuilder {
        HealthAiStackBuilder::default()
    }

    /// The operator's handle: health, metrics JSON, and (with the `axum` feature) the
    /// ready-made routes.
    #[must_use]
    pub fn handle(&self) -> HealthAiHandle {
        self.handle.clone()
    }
}

impl<S> Layer<S> for HealthAiStack {
    type Service = HealthAi<S>;

    fn layer(&self, upstream: S) -> Self::Service {
        let inner = CountCalls::new(upstream, Arc::clone(&self.upstream_calls));
        let inner = self.timeout.layer(inner);
        let inner = StartInTime::new(
            inner,
            Arc::clone(&self.call_times),
            self.start_in_time,
            true,
        );
        let inner = self.global.layer(inner);
        let inner = StartInTime::new(
            inner,
            Arc::clone(&self.call_times),
            self.start_in_time,
            false,
        );
        let inner = self.queue.layer(inner);
        let inner = self.breaker.layer(inner);
        let inner = self.retry.layer(inner);
        // A call that outlives its caller runs on for the call timeout, body and all.
        let inner = EnforceDeadline::new(inner, self.timeout.timeout());
        let inner = self.fallback.layer(inner);
        // Cloned per request by axum and hyper: below the cache, only when a request
        // reaches it (a hit does not).
        let inner = CloneOnDrive::new(inner);
        let inner = self.cache.layer(inner);
        let inner = self.body.layer(inner);
        let inner = self.per_user.layer(inner);
        let inner = RefusalsLayer.layer(inner);
        let inner = RequestDeadline::new(inner, self.on_deadline.clone());
        HealthAi {
            inner: self.red.layer(inner),
            user_header: self.user_header,
            priority_header: self.priority_header,
        }
    }
}

/// The preset cache's default bound: 64 MiB of answers (see
/// [`HealthAiStackBuilder::cache_max_bytes`]).
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What bounds the preset's cache.
#[derive(Clone, Copy, Debug)]
enum CacheBound {
    Entries(u64),
    Bytes(u64),
}

/// Configures a [`HealthAiStack`]. Every setting has the seed's default.
#[must_use]
pub struct HealthAiStackBuilder {
    user_header: &'static str,
    per_user_quota: Quota,
    max_body_bytes: usize,
    request_check: Option<RequestCheck>,
    cache_bound: CacheBound,
    cache_ttl: Duration,
    cache_stale_grace: Duration,
    fallback: Option<FallbackFn>,
    retry_attempts: u32,
    retry_base_delay: Duration,
    retry_max_delay: Duration,
    retry_budget: (Duration, u32, f32),
    retry_idempotent: bool,
    retry_timeouts: bool,
    breaker_failure_rate: (f64, u32, u32),
    breaker_failures: Option<u32>,
    breaker_open_for: Duration,
    breaker_probes: u32,
    limit: Limit,
    queue_capacity: usize,
    max_queue_wait: Option<Duration>,
    queue_aging: Option<Duration>,
    global_quota: Quota,
    global_max_wait: Duration,
    call_timeout: Duration,
    cost_per_call_usd: f64,
    prometheus: Option<PrometheusMetrics>,
    priority_header: PriorityHeader,
    request_deadline: Duration,
    degrade_on_overload: bool,
    start_in_time: bool,
    red: RedSource,
    clock: Clock,
    #[cfg(feature = "redis")]
    redis: Option<crate::shared::RedisConfig>,
}

impl Default for HealthAiStackBuilder {
    fn default() -> Self {
        Self {
            user_header: DEFAULT_USER_HEADER,
            per_user_quota: Quota::per_second(5),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_check: None,
            cache_bound: CacheBound::Bytes(DEFAULT_CACHE_MAX_BYTES),
            cache_ttl: Duration::from_secs(3600),
            cache_stale_grace: Duration::from_secs(3600),
            fallback: None,
            retry_attempts: 3,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(30),
            retry_budget: (Duration::from_secs(10), 1, 0.2),
            retry_idempotent: true,
            retry_timeouts: false,
            breaker_failure_rate: DEFAULT_BREAKER_FAILURE_RATE,
            breaker_failures: None,
            breaker_open_for: Duration::from_secs(60),
            breaker_probes: 1,
            limit: Limit::Adaptive(DEFAULT_ADAPTIVE_LIMIT),
            queue_capacity: 100,
            max_queue_wait: None,
            queue_aging: None,
            global_quota: Quota::per_second(2),
            global_max_wait: Duration::from_secs(30),
            call_timeout: Duration::from_secs(120),
            cost_per_call_usd: 0.01,
            prometheus: None,
            priority_header: PriorityHeader::LowerOnly,
            request_deadline: DEFAULT_REQUEST_DEADLINE,
            degrade_on_overload: true,
            start_in_time: true,
            red: RedSource::Own,
            clock: Clock::Monotonic,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl fmt::Debug for HealthAiStackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthAiStackBuilder")
            .field("user_header", &self.user_header)
            .field("per_user_quota", &self.per_user_quota)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("cache_bound", &self.cache_bound)
            .field("cache_ttl", &self.cache_ttl)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_idempotent", &self.retry_idempotent)
            .field("retry_timeouts", &self.retry_timeouts)
            .field("breaker_failure_rate", &self.breaker_failure_rate)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open_for", &self.breaker_open_for)
            .field("limit", &self.limit)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_queue_wait", &self.max_queue_wait)
            .field("queue_aging", &self.queue_aging)
            .field("global_quota", &self.global_quota)
            .field("call_timeout", &self.call_timeout)
            .field("priority_header", &self.priority_header)
            .field("request_deadline", &self.request_deadline)
            .field("degrade_on_overload", &self.degrade_on_overload)
            .field("start_in_time", &self.start_in_time)
            .field("red", &self.red)
            .field("clock", &self.clock)
            .field("shared_through_redis", &self.shares_through_redis())
            .finish_non_exhaustive()
    }
}

impl HealthAiStackBuilder {
    /// The header that names the user, for the per-user limit and the cache partition
    /// (default `x-user-id`). Without it (or with an empty value, or one longer than
    /// [`MAX_USER_ID_LEN`] bytes), the client IP (axum's
    /// `ConnectInfo`, or a `SocketAddr` extension) is the user; without either, one shared
    /// key. Your authentication layer must set this header from the identity it verified,
    /// overwriting whatever the client sent (see [who the user is](HealthAiStack#who-the-user-is)).
    ///
    /// # Panics
    ///
    /// If `header` is not a valid header name in lowercase (`x-user-id`, not
    /// `X-User-Id`), as [`HeaderName::from_static`] does: a mistake in the code, told
    /// here rather than by the first request.
    pub fn user_header(mut self, header: &'static str) -> Self {
        let valid =
            HeaderName::from_bytes(header.as_bytes()).is_ok_and(|name| name.as_str() == header);
        assert!(
            valid,
            "user_header({header:?}): not a valid header name in lowercase"
        );
        self.user_header = header;
        self
    }

    /// The per-user quota (default 5 requests a second, burst 5).
    pub fn per_user_quota(mut self, quota: Quota) -> Self {
        self.per_user_quota = quota;
        self
    }

    /// The largest request body read (default 1 MiB); larger bodies get 413.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// A check run on every request once its body is read (after the per-user limit,
    /// before the cache): it may refuse the request with a [`RequestRejected`] (a 4xx)
    /// or add extensions that the upstream service and the fallback read.
    pub fn request_check<F>(mut self, check: F) -> Self
    where
        F: Fn(&mut http::request::Parts, &Bytes) -> Result<(), RequestRejected>
            + Send
            + Sync
            + 'static,
    {
        self.request_check = Some(Arc::new(check));
        self
    }

    /// Bounds the cache by a number of entries instead of by bytes (the default, see
    /// [`cache_max_bytes`](Self::cache_max_bytes)), evicting the least recently used.
    pub fn cache_capacity(mut self, entries: u64) -> Self {
        self.cache_bound = CacheBound::Entries(entries);
        self
    }

    /// Bounds the cache by the size of what it holds (default
    /// [`DEFAULT_CACHE_MAX_BYTES`], 64 MiB: bodies, headers and trailers), evicting the
    /// least recently used.
    ///
    /// Why bytes and not the seed's 100 entries: an answer costs a provider call of a
    /// cent and a minute, and takes a few kilobytes to keep. A hundred entries hold the
    /// answers of a few users' records: in the load test (20 users, 10 records each) a
    /// 100-entry cache evicts answers that are asked for again within the hour, and its
    /// hit rate stays near 63-66% however fast the provider is, against 76-78% when
    /// nothing is evicted. 64 MiB hold tens of thousands of such answers and still
    /// bound the memory whatever the answers' sizes.
    pub fn cache_max_bytes(mut self, bytes: u64) -> Self {
        self.cache_bound = CacheBound::Bytes(bytes);
        self
    }

    /// Cache time to live (default 1 h).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long past its TTL an entry may still answer when the upstream fails
    /// (stale-if-error; default 1 h, zero disables).
    pub fn cache_stale_grace(mut self, grace: Duration) -> Self {
        self.cache_stale_grace = grace;
        self
    }

    /// The local answer for a failed upstream call or an open circuit: it sees the
    /// request's head (with the extensions the request check added) and the error, and
    /// returns a response, or `None` to let the error through (502/503/504). The
    /// response is marked [`Degraded`] and never cached. Without one, failures reach
    /// the client as errors.
    pub fn fallback<F>(mut self, answer: F) -> Self
    where
        F: Fn(&http::request::Parts, &BoxError) -> Option<Response<Bytes>> + Send + Sync + 'static,
    {
        self.fallback = Some(Arc::new(answer));
        self
    }

    /// Calls per request, the first included (default 3; 1 disables retries).
    pub fn retry_attempts(mut self, attempts: u32) -> Self {
        self.retry_attempts = attempts;
        self
    }

    /// Retry backoff: retry `n` waits a random time below `min(max, base · 2^n)`
    /// (default base 1 s, max 30 s).
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base_delay = base;
        self.retry_max_delay = max;
        self
    }

    /// The retry budget: over a sliding `window` (1-60 s), retries may be at most
    /// `retry_ratio` of requests (0.2 = 20 %), plus `min_per_second` retries a second
    /// (default 10 s, 1, 0.2). It keeps retries from multiplying the load on an upstream
    /// that is already failing.
    pub fn retry_budget(mut self, window: Duration, min_per_second: u32, retry_ratio: f32) -> Self {
        self.retry_budget = (window, min_per_second, retry_ratio);
        self
    }

    /// Whether the upstream call is safe to repeat after it may have run (default
    /// `true`: the preset's call is an analysis with no side effects). Then a failed call
    /// (an error, a 5xx) is retried whatever the request's method. With `false`, only the
    /// failures that show the upstream did not process the request (a refused
    /// connection, `429`, `503`) are retried, and others only for idempotent methods or
    /// requests with an `Idempotency-Key` header. See
    /// [retries and the circuit](HealthAiStack#retries-and-the-circuit).
    pub fn retry_idempotent(mut self, idempotent: bool) -> Self {
        self.retry_idempotent = idempotent;
        self
    }

    /// Whether a call that timed out (the [call timeout](Self::call_timeout), or an
    /// upstream `504`) is retried (default `false`). A timed-out call may have run, and
    /// been billed, in full, and a retry waits the whole timeout again: by default the
    /// request gets the fallback (or 504) after one timeout. With `true` it is retried
    /// like any other failure, within the request's deadline.
    pub fn retry_timeouts(mut self, retry: bool) -> Self {
        self.retry_timeouts = retry;
        self
    }

    /// Opens the circuit when at least `rate` (in `(0, 1]`) of the last `window` calls
    /// failed, once the window holds at least `minimum_calls` (default 0.65 of the last
    /// 50 calls, at least 20; see
    /// [retries and the circuit](HealthAiStack#retries-and-the-circuit) for why).
    /// Out-of-range values are clamped: `rate` to `(0, 1]` (NaN is 1), `window` to at
    /// least 1, `minimum_calls` to `1..=window`.
    pub fn breaker_failure_rate(mut self, rate: f64, window: u32, minimum_calls: u32) -> Self {
        let rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(f64::MIN_POSITIVE, 1.0)
        };
        let window = window.max(1);
        self.breaker_failure_rate = (rate, window, minimum_calls.clamp(1, window));
        self
    }

    /// Also opens the circuit after this many upstream failures in a row (at least 1;
    /// default: off, only the [failure rate](Self::breaker_failure_rate) opens it).
    ///
    /// A small count opens the circuit on a provider's normal failures: at 30 %
    /// independent failures, 3 in a row come every 50 calls or so.
    pub fn breaker_failures(mut self, failures: u32) -> Self {
        self.breaker_failures = Some(failures.max(1));
        self
    }

    /// How long the circuit stays open before a probe (default 60 s).
    pub fn breaker_open_for(mut self, duration: Duration) -> Self {
        self.breaker_open_for = duration;
        self
    }

    /// Probe calls let through while half-open; their verdict closes or reopens the
    /// circuit (default 1, at least 1).
    pub fn breaker_half_open_probes(mut self, probes: u32) -> Self {
        self.breaker_probes = probes.max(1);
        self
    }

    /// A fixed limit of upstream calls in flight at once, in place of the default
    /// adaptive one (the seed's setting was 2).
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.limit = Limit::fixed(calls);
        self
    }

    /// The adaptive in-flight limit's maximum (default 32); it starts at 2 and finds the
    /// upstream's capacity below this. Makes the limit adaptive if
    /// [`max_in_flight`](Self::max_in_flight) had fixed it.
    pub fn max_in_flight_ceiling(mut self, calls: usize) -> Self {
        let adaptive = match self.limit {
            Limit::Adaptive(adaptive) => adaptive,
            _ => DEFAULT_ADAPTIVE_LIMIT,
        };
        self.limit = Limit::Adaptive(adaptive.max(calls));
        self
    }

    /// The in-flight limit, fixed or adaptive, with every setting (default
    /// [`DEFAULT_ADAPTIVE_LIMIT`]).
    pub fn limit(mut self, limit: impl Into<Limit>) -> Self {
        self.limit = limit.into();
        self
    }

    /// Requests that may wait for a slot, over all priorities (default 100).
    pub fn queue_capacity(mut self, requests: usize) -> Self {
        self.queue_capacity = requests;
        self
    }

    /// The longest a request waits for a slot, at every priority (default: the
    /// queue's own per-level defaults).
    pub fn max_queue_wait(mut self, wait: Duration) -> Self {
        self.max_queue_wait = Some(wait);
        self
    }

    /// How much earlier each priority level counts than the one below it when the next
    /// slot is handed out (default: the queue's, 10 s): an urgent request goes before a
    /// low one that arrived less than `3 × aging` before it, not before one that has
    /// waited longer, so that a lower level's wait is bounded by that plus the work
    /// already ahead of it. `Duration::MAX` gives strict priority. See
    /// [`PriorityQueueLayerBuilder::aging`](tower_priority_queue::PriorityQueueLayerBuilder::aging).
    pub fn queue_aging(mut self, aging: Duration) -> Self {
        self.queue_aging = Some(aging);
        self
    }

    /// The global pace of upstream calls (default 2 a second).
    pub fn global_quota(mut self, quota: Quota) -> Self {
        self.global_quota = quota;
        self
    }

    /// The longest a call waits for the global pace (default 30 s); a longer wait is
    /// refused at once with 503.
    pub fn global_max_wait(mut self, wait: Duration) -> Self {
        self.global_max_wait = wait;
        self
    }

    /// The timeout of one upstream call (default 120 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// What one upstream call costs, in US dollars, for the cost figures (default 0.01).
    pub fn cost_per_call_usd(mut self, usd: f64) -> Self {
        self.cost_per_call_usd = usd;
        self
    }

    /// The Prometheus recorder's handle, served by the handle's `/metrics` route.
    /// Install the recorder (`tower_red_metrics::PrometheusConfig::install`, or
    /// [`install_prometheus`](crate::install_prometheus)) **before** building the stack:
    /// the layers resolve their metric handles when they are built.
    pub fn prometheus(mut self, metrics: PrometheusMetrics) -> Self {
        self.prometheus = Some(metrics);
        self
    }

    /// How far the client's `x-priority` header is trusted (default
    /// [`PriorityHeader::LowerOnly`]: a client may lower its own requests to `low`, and
    /// `high` or `urgent` count as `normal`).
    ///
    /// The trusted source of a priority is a
    /// [`Priority`](tower_priority_queue::Priority) in the request's extensions, which the
    /// application inserts (before the stack, or in the
    /// [request check](Self::request_check)) from what it knows about the caller, such as
    /// its plan. It always wins over the header. A public deployment must not trust the
    /// raw header: [`PriorityHeader::Trusted`] lets any client put its requests ahead of
    /// everyone else's and displace their waiting requests; keep it for demos and
    /// private networks.
    pub fn priority_header(mut self, trust: PriorityHeader) -> Self {
        self.priority_header = trust;
        self
    }

    /// The budget of each request, from its arrival (default 150 s): it covers the
    /// wait for an identical request's call, queueing, pacing, every attempt and every
    /// backoff. A client may shorten it, never lengthen it, with `grpc-timeout` or
    /// `x-request-timeout` (seconds, e.g. `2.5`; malformed values are ignored). Past it
    /// the fallback answers, marked degraded (unless
    /// [`degrade_on_overload(false)`](Self::degrade_on_overload)), else the answer is 504
    /// (gRPC 4 `DEADLINE_EXCEEDED`). `Duration::MAX` means no deadline.
    pub fn request_deadline(mut self, budget: Duration) -> Self {
        self.request_deadline = budget;
        self
    }

    /// Whether the fallback also answers when our capacity cannot give a real answer in
    /// time (default `true`): the waiting room is full, a higher priority displaced the
    /// request, its level's maximum wait or the global pace's passed, or its deadline
    /// passed. The answer comes at once, marked degraded, with a `Retry-After` saying
    /// when a real answer is likely. With `false`, or without a fallback, these are 503
    /// (504 for the deadline). The per-user limit's 429 is never degraded: that is the
    /// client's excess, not our capacity.
    pub fn degrade_on_overload(mut self, degrade: bool) -> Self {
        self.degrade_on_overload = degrade;
        self
    }

    /// Whether a call is started only when the request's deadline leaves it time to end
    /// (default `true`). The stack learns how long the upstream's successful calls take
    /// (the median of the last 64, once ten have succeeded) and neither starts a
    /// call with less time left than that, nor lets a request wait in the queue past the
    /// point where its call could still end in time: such a request is answered then
    /// (the fallback, degraded, else 503 or 504), instead of at its deadline, with a
    /// call billed for an answer that comes too late for it. Its slot goes to a request
    /// that can still be answered. See [not starting what cannot end](HealthAiStack#not-starting-what-cannot-end).
    pub fn start_calls_in_time(mut self, enabled: bool) -> Self {
        self.start_in_time = enabled;
        self
    }

    /// Whether the preset records RED metrics itself (default `true`).
    ///
    /// Under a RED layer of the application's, the preset's layer passes every request
    /// through anyway (the outer layer marks the requests it records, see
    /// [`RedRecorded`](tower_red_metrics::RedRecorded)), so a request is never counted
    /// twice. With `false` the preset records nothing itself, wherever it sits, and the
    /// handle's `requests` and `duration` stay at zero; prefer
    /// [`outer_red_metrics`](Self::outer_red_metrics), which reports the application's
    /// figures instead.
    pub fn red_metrics(mut self, record: bool) -> Self {
        self.red = if record {
            RedSource::Own
        } else {
            RedSource::Off
        };
        self
    }

    /// The application records RED metrics with a layer of its own outside the preset
    /// (e.g. on the whole router): the preset's own RED layer is turned off, and the
    /// handle's `requests` and `duration` (in `/api/metrics`) are read from `outer`.
    ///
    /// ```
    /// use tower_health_ai::HealthAiStack;
    /// use tower_health_ai::red_metrics::RedMetricsLayer;
    ///
    /// let red = RedMetricsLayer::new(); // goes on the whole router
    /// let stack = HealthAiStack::builder().outer_red_metrics(red.handle()).build();
    /// assert_eq!(stack.handle().metrics().requests.total, 0);
    /// ```
    pub fn outer_red_metrics(mut self, outer: RedMetricsHandle) -> Self {
        self.red = RedSource::Outer(outer);
        self
    }

    /// The clock the limiters, the cache and the RED layer read (default
    /// [`Clock::Monotonic`], the CPU's time-stamp counter). Tests that pause tokio's time
    /// (`#[tokio::test(start_paused = true)]`) and advance it use [`Clock::Tokio`], so
    /// that tokens come back, entries age and durations are counted as the test's clock
    /// says. The queue, the breaker and the deadlines wait on tokio's timers, so they
    /// read tokio's clock whatever this says.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Shares the per-user limit, the global pace and the cache's answers with every
    /// other instance on the same Redis (feature `redis`; default: each instance keeps
    /// its own). See [`RedisConfig`](crate::RedisConfig) for what is shared, under which
    /// keys, and what happens while Redis is unreachable.
    ///
    /// Every instance must use the same prefix and the same quotas. [`build`](Self::build)
    /// must then run inside a tokio runtime (the cache starts its background tasks).
    ///
    /// ```no_run
    /// use tower_health_ai::{HealthAiStack, RedisConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let redis = RedisConfig::from_url("redis://127.0.0.1:6379")?
    ///     .prefix("gateway:")
    ///     .instances(3);
    /// let stack = HealthAiStack::builder().redis(redis).build();
    /// # let _ = stack;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(mut self, redis: crate::shared::RedisConfig) -> Self {
        self.redis = Some(redis);
        self
    }

    fn shares_through_redis(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.redis.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// The per-user and global limiters' backends.
    fn limiter_backends(
        &self,
        clock: tower_token_bucket::Clock,
    ) -> (PresetBackend<UserKeyOf>, PresetBackend<()>) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return (
                redis.backend(PER_USER_LIMITER, self.per_user_quota),
                redis.backend(GLOBAL_LIMITER, self.global_quota),
            );
        }
        (
            PresetBackend::in_memory(self.per_user_quota, clock),
            PresetBackend::in_memory(self.global_quota, clock),
        )
    }

    /// The cache's store, bounded as configured.
    fn cache_store(&self) -> PresetStore {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return match self.cache_bound {
                CacheBound::Entries(entries) => redis.store(Some(entries), None),
                CacheBound::Bytes(bytes) => redis.store(None, Some(bytes)),
            };
        }
        PresetStore::in_memory(match self.cache_bound {
            CacheBound::Entries(entries) => MokaStore::with_max_entries(entries),
            CacheBound::Bytes(bytes) => MokaStore::with_max_bytes(bytes),
        })
    }

    /// Builds the stack and its shared state.
    ///
    /// # Panics
    ///
    /// With [`redis`](Self::redis), outside a tokio runtime.
    pub fn build(self) -> HealthAiStack {
        let user_header = self.user_header;
        let limiter_clock = match self.clock {
            Clock::Tokio => tower_token_bucket::Clock::Tokio,
            _ => tower_token_bucket::Clock::Monotonic,
        };
        let cache_clock = match self.clock {
            Clock::Tokio => tower_lru_cache::Clock::Tokio,
            _ => tower_lru_cache::Clock::Monotonic,
        };
        let (per_user_backend, global_backend) = self.limiter_backends(limiter_clock);
        let store = self.cache_store();
        let red = RedMetricsLayer::builder()
            .labels(PresetLabels {
                record: matches!(self.red, RedSource::Own),
            })
            .clock(self.clock)
            .build();
        let red_figures = match self.red {
            RedSource::Outer(outer) => outer,
            RedSource::Own | RedSource::Off => red.handle(),
        };
        let per_user = RateLimitLayer::builder(self.per_user_quota)
            .name(PER_USER_LIMITER)
            .key(
                HeaderKey::from_static(user_header)
                    .max_len(MAX_USER_ID_LEN)
                    .or(PeerIp)
                    .or(GlobalKey),
            )
            .build_with_backend(per_user_backend);
        let mut body = BufferBodyLayer::new(self.max_body_bytes);
        if let Some(check) = self.request_check {
            body = body.check(check);
        }
        let cache = CacheLayer::builder()
            .name(UPSTREAM_NAME)
            .store(store)
            .ttl(self.cache_ttl)
            .stale_if_error(self.cache_stale_grace)
            .max_request_body(self.max_body_bytes)
            .partition({
                let user_header = HeaderName::from_static(user_header);
                Partition::from_fn(move |parts| user_of(parts, &user_header))
            })
            .degraded_if(|parts| parts.extensions.get::<Degraded>().is_some())
            // Below the cache, upstream failures come back as fallback answers (shared
            // with coalesced waiters); the errors that still reach it are local refusals,
            // which each waiter must get as itself (503 with its Retry-After), not as a
            // shared 502.
            .share_failures(false)
            // A call that outlives its caller's deadline runs on (`EnforceDeadline`):
            // the requests waiting on it, or arriving for its key, wait for its answer
            // until their own deadlines rather than share the caller's fallback or call
            // again.
            .wait_for_late_answers(|extensions| extensions.get::<Deadline>().map(|d| d.instant()))
            .clock(cache_clock)
            .build();
        let degraded = Arc::new(DegradedCounters::new());
        // Capped at half the request budget (see the budget module).
        let call_times = Arc::new(CallTimes::capped(self.request_deadline / 2));
        let on_deadline = OnDeadline {
            budget: self.request_deadline,
            fallback: self.fallback.clone().filter(|_| self.degrade_on_overload),
            counters: Arc::clone(&degraded),
        };
        let fallback = FallbackLayer::new(
            CaptureHead,
            PresetFallback::new(self.fallback, Arc::clone(&degraded)),
        )
        .policy(FallbackOnUpstreamFailure::new(self.degrade_on_overload));
        let retry = RetryLayer::builder()
            .max_attempts(self.retry_attempts)
            .backoff(self.retry_base_delay, self.retry_max_delay)
            .budget(
                self.retry_budget.0,
                self.retry_budget.1,
                self.retry_budget.2,
            )
            .idempotent(self.retry_idempotent)
            .retry_timeouts(self.retry_timeouts)
            .classifier(RetryClassifier::default())
            .build();
        let (rate, window, minimum_calls) = self.breaker_failure_rate;
        let mut breaker = CircuitBreakerLayer::builder()
            .name(UPSTREAM_NAME)
            .failure_rate(rate, window, minimum_calls);
        if let Some(failures) = self.breaker_failures {
            breaker = breaker.consecutive_failures(failures);
        }
        let breaker = breaker
            .open_duration(self.breaker_open_for)
            .half_open_probes(self.breaker_probes)
            .classifier(BreakerClassifier::default())
            .build();
        let mut queue = PriorityQueueLayer::builder()
            .extractor(
                PresetPriority::new(self.priority_header)
                    .waiting_in_time(self.start_in_time.then(|| Arc::clone(&call_times))),
            )
            .name(UPSTREAM_NAME)
            .limit(self.limit)
            .overload_classifier(PresetOverload::default())
            .capacity(self.queue_capacity);
        if let Some(wait) = self.max_queue_wait {
            queue = queue.max_wait_all(wait);
        }
        if let Some(aging) = self.queue_aging {
            queue = queue.aging(aging);
        }
        let queue = queue.build();
        let global = RateLimitLayer::builder(self.global_quota)
            .name(GLOBAL_LIMITER)
            .wait(self.global_max_wait)
            .build_with_backend(global_backend);
        let timeout = TimeoutLayer::new(self.call_timeout);
        let upstream_calls = Arc::new(AtomicU64::new(0));
        let handle = HealthAiHandle::new(crate::handle::Parts {
            red: red_figures,
            per_user: per_user.handle(),
            global: global.handle(),
            cache: cache.handle(),
            queue: queue.handle(),
            breaker: breaker.handle(),
            upstream_calls: Arc::clone(&upstream_calls),
            degraded,
            cost_per_call_usd: self.cost_per_call_usd,
            prometheus: self.prometheus,
        });
        HealthAiStack {
            red,
            per_user,
            body,
            cache,
            fallback,
            retry,
            breaker,
            queue,
            global,
            timeout,
            call_times,
            start_in_time: self.start_in_time,
            on_deadline,
            upstream_calls,
            handle,
            user_header,
            priority_header: self.priority_header,
        }
    }
}

/// The cache partition: the user header, else the client IP; `None` (no caching) when
/// neither is known. An empty user header, or one over [`MAX_USER_ID_LEN`], names no
/// user, as for the per-user limit.
fn user_of(parts: &http::request::Parts, user_header: &HeaderName) -> Option<PartitionBytes> {
    let mut partition = PartitionBytes::default();
    if let Some(user) = named_user(parts.headers.get(user_header)) {
        partition.push(b"user:");
        partition.push(user.as_bytes());
        return Some(partition);
    }
    let ip = peer_ip(parts)?;
    // Writing into `PartitionBytes` cannot fail.
    let _ = write!(partition, "ip:{ip}");
    Some(partition)
}

/// A partition's bytes, inline while they fit (every IP address, and user ids of up to
/// 59 bytes), so that keying a request allocates nothing.
enum PartitionBytes {
    Inline { bytes: [u8; 64], len: usize },
    Heap(Vec<u8>),
}

impl Default for PartitionBytes {
    fn default() -> Self {
        Self::Inline {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl PartitionBytes {
    fn push(&mut self, part: &[u8]) {
        let spilled = match self {
            Self::Heap(heap) => {
                heap.extend_from_slice(part);
                return;
            }
            Self::Inline { bytes, len } => match bytes.get_mut(*len..*len + part.len()) {
                Some(room) => {
                    room.copy_from_slice(part);
                    *len += part.len();
                    return;
                }
                None => [&bytes[..*len], part].concat(),
            },
        };
        *self = Self::Heap(spilled);
    }
}

impl fmt::Write for PartitionBytes {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push(text.as_bytes());
        Ok(())
    }
}

impl AsRef<[u8]> for PartitionBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Inline { bytes, len } => &bytes[..*len],
            Self::Heap(bytes) => bytes,
        }
    }
}

fn peer_ip(parts: &http::request::Parts) -> Option<std::net::IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    parts.extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

/// The service of [`HealthAiStack`]: never fails (every error is a response), so it
/// drops straight into axum's `Router::route_service` or tonic's `Server::layer`.
///
/// The upstream service must be `Clone + Send + Sync`, as axum and tonic require of any
/// service: the clones of a `HealthAi` (one per request under axum) share the layers
/// below the cache until one is driven ([`CloneOnDrive`](crate::CloneOnDrive)), so a
/// request the cache answers copies none of them. A `BoxCloneService` upstream is not
/// `Sync`; `BoxCloneSyncService` is.
pub struct HealthAi<S> {
    inner: Stacked<S>,
    user_header: &'static str,
    priority_header: PriorityHeader,
}

impl<S> HealthAi<S> {
    /// The upstream service the stack was built on.
    pub fn get_ref(&self) -> &S {
        // One step per layer of `Stacked`, outermost first.
        self.inner
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
            .get_ref()
    }
}

impl<S: Clone> HealthAi<S> {
    /// Unwraps every layer of the stack, returning the upstream service it was built
    /// on. The stack's shared state (the limiters' buckets, the cache, the breaker, the
    /// queue, the [`HealthAiHandle`]) lives on in the [`HealthAiStack`] and its other
    /// services.
    ///
    /// The clones of a `HealthAi` share the layers below the cache until one is driven,
    /// so this gives a clone of the upstream service when other clones still share it.
    pub fn into_inner(self) -> S {
        // One step per layer of `Stacked`, outermost first.
        self.inner
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
    }
}

impl<S: Clone> Clone for HealthAi<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            user_header: self.user_header,
            priority_header: self.priority_header,
        }
    }
}

impl<S> fmt::Debug for HealthAi<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthAi").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HealthAi<S>
where
    Stacked<S>: Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = Infallible;
    type Future = HealthAiFuture<<Stacked<S> as Service<Request<ReqBody>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The stack never fails: a readiness error below is answered by `Refusals`.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let span = crate::span::request_span(&request, self.user_header, self.priority_header);
        // Entered for the call below only: not `in_scope`, whose closure would take the
        // request by value, one more copy of it.
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        HealthAiFuture { inner, span }
    }
}

/// The future of [`HealthAi`].
#[pin_project]
pub struct HealthAiFuture<F> {
    #[pin]
    inner: F,
    /// The request's `health_ai.request` span, entered while the stack runs.
    span: tracing::Span,
}

impl<F> fmt::Debug for HealthAiFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthAiFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody> Future for HealthAiFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
{
    type Output = Result<Response<Either<ResBody, Full<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let Ok(response) = ready!(this.inner.poll(cx));
        let response = response.map(Either::Left);
        crate::span::record_outcome(this.span, &response);
        Poll::Ready(Ok(response))
    }
}

/// The request type the upstream service receives: the body is read whole.
pub type UpstreamRequest = Request<Full<Bytes>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(request: Request<()>) -> http::request::Parts {
        request.into_parts().0
    }

    #[test]
    fn the_partition_is_the_user_else_the_peer_ip() {
        let header = HeaderName::from_static(DEFAULT_USER_HEADER);
        let user = parts(
            Request::builder()
                .header(DEFAULT_USER_HEADER, "ada")
                .body(())
                .unwrap(),
        );
        assert_eq!(user_of(&user, &header).unwrap().as_ref(), b"user:ada");
        // A user id too long to keep inline gives the same bytes.
        let long = "u".repeat(200);
        let user = parts(
            Request::builder()
                .header(DEFAULT_USER_HEADER, &long)
                .body(())
                .unwrap(),
        );
        assert_eq!(
            user_of(&user, &header).unwrap().as_ref(),
            format!("user:{long}").as_bytes()
        );
        // One over the limit names no user: the peer's address, as for the per-user
        // limit.
        let mut too_long = parts(
            Request::builder()
                .header(DEFAULT_USER_HEADER, "u".repeat(MAX_USER_ID_LEN + 1))
                .body(())
                .unwrap(),
        );
        assert!(user_of(&too_long, &header).is_none());
        too_long
            .extensions
            .insert(SocketAddr::from(([10, 0, 0, 8], 80)));
        assert_eq!(
            user_of(&too_long, &header).unwrap().as_ref(),
            b"ip:10.0.0.8"
        );
        let mut peer = parts(Request::new(()));
        assert!(
            user_of(&peer, &header).is_none(),
            "no user, no peer: no partition"
        );
        let v6: SocketAddr = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:80"
            .parse()
            .unwrap();
        peer.extensions.insert(v6);
        assert_eq!(
            user_of(&peer, &header).unwrap().as_ref(),
            b"ip:2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        peer.extensions
            .insert(SocketAddr::from(([10, 0, 0, 7], 80)));
        assert_eq!(user_of(&peer, &header).unwrap().as_ref(), b"ip:10.0.0.7");
    }
}
