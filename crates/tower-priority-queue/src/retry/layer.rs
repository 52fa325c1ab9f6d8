//! The retry layer and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::backoff::FullJitterBackoffMaker;
use super::budget::BatchedBudget;
use super::handle::RetryHandle;
use super::policy::{RetryPolicy, RetryShared};
use super::replay::IdempotentIf;
use super::service::Retry;
use crate::metrics::RetryMetrics;

/// Retries failed calls with backoff, within a budget; see the [crate docs](crate).
///
/// Every service this layer builds, and every clone of those, shares one retry budget.
pub struct RetryLayer<C, R> {
    shared: Arc<RetryShared<C, R>>,
}

#[cfg(feature = "http")]
impl RetryLayer<super::HttpClassifier, super::HttpReplay> {
    /// A retry layer for HTTP services with the default settings.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for HTTP services: [`HttpClassifier`](super::HttpClassifier) and
    /// [`HttpReplay`](super::HttpReplay), and the default settings.
    #[must_use]
    pub fn builder() -> RetryLayerBuilder<super::HttpClassifier, super::HttpReplay> {
        RetryLayerBuilder::with(super::HttpClassifier::new(), super::HttpReplay::new())
    }
}

#[cfg(feature = "http")]
impl Default for RetryLayer<super::HttpClassifier, super::HttpReplay> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, R> RetryLayer<C, R> {
    /// A handle on the layer's retry counts, shared with every service it builds.
    #[must_use]
    pub fn handle(&self) -> RetryHandle {
        RetryHandle::new(Arc::clone(&self.shared.metrics.stats))
    }

    /// The layer's policy, for use with tower's own [`tower::retry::Retry`] around a
    /// service whose error type is already [`tower::BoxError`]. It shares the layer's
    /// settings, budget and counts.
    #[must_use]
    pub fn policy(&self) -> RetryPolicy<C, R> {
        RetryPolicy::new(Arc::clone(&self.shared))
    }
}

impl<C, R> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C, R> fmt::Debug for RetryLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, C, R> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, RetryPolicy::new(Arc::clone(&self.shared)))
    }
}

/// Configures a [`RetryLayer`].
///
/// | setting | default |
/// |---|---|
/// | [`max_attempts`](Self::max_attempts) (all calls, the first included) | 3 |
/// | [`backoff`](Self::backoff) | base 1 s, cap 30 s: retry `n` waits `U[0, min(30 s, 2^n s))` |
/// | [`retry_after_cap`](Self::retry_after_cap) | 60 s |
/// | [`deadline`](Self::deadline) | none |
/// | [`budget`](Self::budget) | retries ≤ 20 % of requests over 10 s, plus 1 retry/s |
/// | [`idempotent`](Self::idempotent) | no: the [`Replay`](crate::Replay) decides per request |
/// | [`retry_timeouts`](Self::retry_timeouts) | yes, for idempotent requests |
///
/// Every duration may be anything from `Duration::ZERO` to `Duration::MAX`: zero means
/// no wait (or, for the deadline, no retry), and a duration too long for the clock means
/// "never" (no deadline, or a wait as long as the upstream asks).
#[derive(Clone, Debug)]
pub struct RetryLayerBuilder<C, R> {
    classifier: C,
    replay: R,
    max_attempts: u32,
    backoff: FullJitterBackoffMaker,
    retry_after_cap: Duration,
    deadline: Option<Duration>,
    idempotent: bool,
    retry_timeouts: bool,
    budget: (Duration, u32, f32),
}

/// The former name of [`RetryLayerBuilder`].
#[deprecated(
    since = "0.1.1",
    note = "renamed `RetryLayerBuilder`, after the layer it builds"
)]
pub type RetryBuilder<C, R> = RetryLayerBuilder<C, R>;

impl<C, R> RetryLayerBuilder<C, R> {
    /// A builder with this classifier and request replay, and the default settings.
    pub fn with(classifier: C, replay: R) -> Self {
        RetryLayerBuilder {
            classifier,
            replay,
            max_attempts: 3,
            backoff: FullJitterBackoffMaker::new(Duration::from_secs(1), Duration::from_secs(30)),
            retry_after_cap: Duration::from_secs(60),
            deadline: None,
            idempotent: false,
            retry_timeouts: true,
            budget: (Duration::from_secs(10), 1, 0.2),
        }
    }

    /// Calls per request, the first included (at least 1; 1 means no retries).
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Exponential backoff with full jitter: retry `n` (from 0) waits a random time in
    /// `[0, min(cap, base · 2^n))`.
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff = FullJitterBackoffMaker::new(base, cap);
        self
    }

    /// The longest wait an upstream `Retry-After` may impose before a retry. A retry is
    /// still made after the cap; to give up instead, set a [`deadline`](Self::deadline).
    #[must_use]
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Stops retrying when the next attempt would start more than `deadline` after the
    /// request arrived; the last outcome is returned. Costs one clock read per request.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Declares every call through this layer idempotent: a failure after which the
    /// upstream may have processed the request (a 500, a reset, a timeout) is retried
    /// whatever the request's method. Use it for a layer in front of an upstream whose
    /// calls are safe to repeat; for some requests only, see
    /// [`idempotent_if`](Self::idempotent_if).
    ///
    /// By default only requests the [`Replay`](crate::Replay) knows to be idempotent are
    /// retried after such failures ([`HttpReplay`](crate::HttpReplay): by method or an
    /// `Idempotency-Key` header). Failures that show the upstream did not process the
    /// request (a refused connection, 429, 503) are retried for every request.
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Declares the requests for which `predicate` is true idempotent, in addition to those
    /// the replay knows (see [`idempotent`](Self::idempotent)); e.g. the calls of one
    /// route:
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower_priority_queue::RetryLayer;
    ///
    /// let retry = RetryLayer::builder()
    ///     .idempotent_if(|request: &http::Request<Full<Bytes>>| {
    ///         request.uri().path().starts_with("/v1/embeddings")
    ///     })
    ///     .build();
    /// ```
    #[must_use]
    pub fn idempotent_if<F>(self, predicate: F) -> RetryLayerBuilder<C, IdempotentIf<R, F>> {
        let replay = IdempotentIf::new(self.replay, predicate);
        RetryLayerBuilder {
            classifier: self.classifier,
            replay,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            deadline: self.deadline,
            idempotent: self.idempotent,
            retry_timeouts: self.retry_timeouts,
            budget: self.budget,
        }
    }

    /// Whether an attempt that timed out is retried when the request is idempotent (it is
    /// by default). A timed-out call may still be running upstream, and costs the whole
    /// timeout again: `false` returns the timeout at once. This covers the outcomes the
    /// classifier calls [`RetryIfIdempotentTimedOut`](crate::RetryDecision::RetryIfIdempotentTimedOut).
    #[must_use]
    pub fn retry_timeouts(mut self, retry_timeouts: bool) -> Self {
        self.retry_timeouts = retry_timeouts;
        self
    }

    /// The retry budget, tower's [`TpsBudget`](tower::retry::budget::TpsBudget): over a
    /// sliding window of `ttl` (clamped to 1-60 s), retries may be at most `retry_percent`
    /// of requests (0.2 = 20 %, clamped to 0-1000), plus a floor of `min_per_sec` retries
    /// per second. The budget takes one deposit per 16 requests, worth 16 requests, so
    /// its mutex and clock read stay off the per-request path (it lags traffic by at most
    /// 15 requests; shares below 6.25 % or above 100 % deposit per request).
    #[must_use]
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        self.budget = (ttl, min_per_sec, retry_percent);
        self
    }

    /// Which outcomes are retried.
    #[must_use]
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayerBuilder<C2, R> {
        RetryLayerBuilder {
            classifier,
            replay: self.replay,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            deadline: self.deadline,
            idempotent: self.idempotent,
            retry_timeouts: self.retry_timeouts,
            budget: self.budget,
        }
    }

    /// How requests are copied for another attempt.
    #[must_use]
    pub fn replay<R2>(self, replay: R2) -> RetryLayerBuilder<C, R2> {
        RetryLayerBuilder {
            classifier: self.classifier,
            replay,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            deadline: self.deadline,
            idempotent: self.idempotent,
            retry_timeouts: self.retry_timeouts,
            budget: self.budget,
        }
    }

    /// Builds the layer. Metric handles are resolved here: install the `metrics` recorder
    /// first.
    #[must_use]
    pub fn build(self) -> RetryLayer<C, R> {
        let (ttl, min_per_sec, retry_percent) = self.budget;
        // `TpsBudget::new` asserts these bounds; keep within them.
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let min_per_sec = min_per_sec.min(i32::MAX as u32 - 1);
        let retry_percent = if retry_percent.is_nan() {
            0.0
        } else {
            retry_percent.clamp(0.0, 1000.0)
        };
        RetryLayer {
            shared: Arc::new(RetryShared {
                classifier: self.classifier,
                replay: self.replay,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                retry_after_cap: self.retry_after_cap,
                deadline: self.deadline,
                idempotent: self.idempotent,
                retry_timeouts: self.retry_timeouts,
                budget: BatchedBudget::new(ttl, min_per_sec, retry_percent),
                metrics: RetryMetrics::new(),
            }),
        }
    }
}
