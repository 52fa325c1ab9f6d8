//! The circuit breaker layer and its builder.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::classify::DefaultClassifier;
use crate::handle::{Breaker, CircuitBreakerHandle, TransitionCallback};
use crate::machine::{Config, SlowCalls, Transition, WindowConfig};
use crate::service::CircuitBreaker;

/// The default breaker name (the `breaker` metric label).
pub const DEFAULT_NAME: &str = "default";

/// Wraps services in a [`CircuitBreaker`].
///
/// The layer owns one breaker: every service it builds, and every clone of it, shares
/// that breaker's state, so a layer applied under axum's `Router::layer` or tonic's
/// `Server::layer` guards the upstream as one.
///
/// Defaults (the seed's): opens after 3 consecutive failures, stays open 60 s, then lets
/// one half-open probe through, whose verdict closes or reopens it.
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: Arc<Breaker<C>>,
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            breaker: Arc::clone(&self.breaker),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerLayer {
    /// A breaker with the defaults and the [`DefaultClassifier`].
    ///
    /// Install the `metrics` recorder before building a layer (see
    /// [`metrics`](crate::metrics)).
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, starting from the defaults.
    #[must_use]
    pub fn builder() -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder {
            name: Cow::Borrowed(DEFAULT_NAME),
            config: Config::default(),
            classifier: DefaultClassifier::new(),
            on_transition: None,
        }
    }
}

impl<C: Send + Sync + 'static> CircuitBreakerLayer<C> {
    /// A handle on this layer's breaker.
    #[must_use]
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.clone())
    }
}

#[cfg(feature = "http")]
impl<C> CircuitBreakerLayer<C> {
    /// This breaker in the form that answers its refusals itself: a call refused by an
    /// open circuit gets the answer of [`BreakerError::CircuitOpen`](crate::BreakerError)
    /// (see [`Refusal`](crate::Refusal)): 503 with `Retry-After` (the time left open), or
    /// the gRPC trailers-only `UNAVAILABLE`; and the service keeps the inner service's
    /// error type. On an axum route it attaches with `.layer(...)`; see the
    /// [crate documentation](crate#refusals-as-errors-or-as-answers).
    ///
    /// The breaker is the same (state, handle, metrics); only its refusals are answered
    /// rather than returned. Put a [`FallbackLayer`](crate::FallbackLayer) or a retry
    /// above the error-returning form instead: they must see the refusal.
    #[must_use]
    pub fn answer_refusals(self) -> tower_refusal::AnswerRefusalsLayer<Self, crate::BreakerError> {
        tower_refusal::AnswerRefusalsLayer::new(self)
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, Arc::clone(&self.breaker))
    }
}

/// Configures a [`CircuitBreakerLayer`].
///
/// Trip policies: consecutive failures (the default, 3), and a failure rate and/or a
/// slow-call rate over a sliding window of the last N calls. When both kinds are set the
/// circuit opens when either fires.
pub struct CircuitBreakerLayerBuilder<C = DefaultClassifier> {
    name: Cow<'static, str>,
    config: Config,
    classifier: C,
    on_transition: Option<TransitionCallback>,
}

/// The former name of [`CircuitBreakerLayerBuilder`].
#[deprecated(
    since = "0.1.1",
    note = "renamed `CircuitBreakerLayerBuilder`, after the layer it builds"
)]
pub type CircuitBreakerBuilder<C = DefaultClassifier> = CircuitBreakerLayerBuilder<C>;

impl<C> fmt::Debug for CircuitBreakerLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayerBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn check_rate(rate: f64, what: &str) {
    assert!(
        rate > 0.0 && rate <= 1.0,
        "{what} must be in (0, 1], got {rate}"
    );
}

impl<C> CircuitBreakerLayerBuilder<C> {
    /// The breaker's name: the `breaker` label of its metrics and the field of its
    /// tracing events. Default [`DEFAULT_NAME`].
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Open after `failures` failures in a row (default 3). A success resets the count;
    /// ignored outcomes leave it as it is.
    ///
    /// # Panics
    ///
    /// If `failures` is 0.
    #[must_use]
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        assert!(failures > 0, "consecutive_failures must be at least 1");
        self.config.consecutive_failures = Some(failures);
        self
    }

    /// Open when at least `rate` (a fraction in `(0, 1]`, e.g. `0.5`) of the last
    /// `window` calls failed, once the window holds at least `minimum_calls` outcomes.
    ///
    /// The window is a ring of the last `window` outcomes (one byte each): an old
    /// outcome leaves it when a new one arrives. This replaces the consecutive-failure
    /// policy; call [`consecutive_failures`](Self::consecutive_failures) afterwards to
    /// keep both.
    ///
    /// # Panics
    ///
    /// If `rate` is not in `(0, 1]` or `window` is 0.
    #[must_use]
    pub fn failure_rate(mut self, rate: f64, window: u32, minimum_calls: u32) -> Self {
        check_rate(rate, "failure_rate");
        assert!(window > 0, "the window must hold at least one call");
        let slow = self.config.window.and_then(|w| w.slow);
        self.config.window = Some(WindowConfig {
            size: window,
            minimum_calls: minimum_calls.clamp(1, window),
            failure_rate: Some(rate),
            slow,
        });
        self.config.consecutive_failures = None;
        self
    }

    /// Also open when at least `rate` (a fraction in `(0, 1]`) of the calls in the window
    /// took longer than `threshold` (a call of exactly `threshold` is not slow). A slow
    /// half-open probe counts as a failed one.
    ///
    /// Uses the window set by [`failure_rate`](Self::failure_rate), or else a window of
    /// the last 100 calls with a minimum of 100.
    ///
    /// # Panics
    ///
    /// If `rate` is not in `(0, 1]`.
    #[must_use]
    pub fn slow_call_rate(mut self, rate: f64, threshold: Duration) -> Self {
        check_rate(rate, "slow_call_rate");
        let window = self.config.window.get_or_insert(WindowConfig {
            size: 100,
            minimum_calls: 100,
            failure_rate: None,
            slow: None,
        });
        window.slow = Some(SlowCalls { threshold, rate });
        self
    }

    /// How long the circuit stays open before letting probes through (default 60 s).
    /// `Duration::ZERO` lets probes through as soon as it opens; a duration too long for
    /// the clock keeps it open for about thirty years.
    #[must_use]
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.config.open_duration = duration;
        self
    }

    /// Grow the open duration by `factor` on each re-trip (a half-open probe failing),
    /// up to `max`; it returns to its base once the circuit closes. A `max` below the
    /// base [`open_duration`](Self::open_duration) means no growth.
    ///
    /// # Panics
    ///
    /// If `factor` is not a finite number of at least 1.
    #[must_use]
    pub fn open_duration_backoff(mut self, factor: f64, max: Duration) -> Self {
        assert!(
            factor.is_finite() && factor >= 1.0,
            "the backoff factor must be finite and at least 1, got {factor}"
        );
        self.config.backoff = Some((factor, max));
        self
    }

    /// How many probe calls the half-open state lets through (default 1). All must
    /// succeed to close the circuit; one failure reopens it.
    ///
    /// # Panics
    ///
    /// If `probes` is 0.
    #[must_use]
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        assert!(probes > 0, "half_open_probes must be at least 1");
        self.config.half_open_probes = probes;
        self
    }

    /// Reopen if the half-open state has not reached a verdict within `duration`
    /// (default: no limit). Probes still in flight then no longer count. `Duration::MAX`
    /// is as good as no limit.
    ///
    /// # Panics
    ///
    /// If `duration` is zero: the half-open state would end before any probe could be
    /// let through, and the circuit would never close again.
    #[must_use]
    pub fn max_half_open_duration(mut self, duration: Duration) -> Self {
        assert!(
            !duration.is_zero(),
            "max_half_open_duration must be longer than zero"
        );
        self.config.max_half_open = Some(duration);
        self
    }

    /// Called after each state change, outside the breaker's lock (it may read the
    /// handle). Under heavy concurrency two quick changes may reach it out of order; each
    /// carries its `from` and `to`.
    #[must_use]
    pub fn on_transition(mut self, callback: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Arc::new(callback));
        self
    }

    /// How results are judged (default [`DefaultClassifier`]): any
    /// [`Classify`](crate::Classify), including a closure
    /// `Fn(&Result<Res, BoxError>) -> Verdict`. The breaker keeps one classifier, shared
    /// by every call (it is never cloned).
    #[must_use]
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayerBuilder<C2> {
        CircuitBreakerLayerBuilder {
            name: self.name,
            config: self.config,
            classifier,
            on_transition: self.on_transition,
        }
    }

    /// Builds the layer: creates the breaker's shared state and resolves its metric
    /// handles (install the `metrics` recorder first).
    #[must_use]
    pub fn build(self) -> CircuitBreakerLayer<C>
    where
        C: Send + Sync + 'static,
    {
        CircuitBreakerLayer {
            breaker: Breaker::new(self.name, self.config, self.on_transition, self.classifier),
        }
    }
}
