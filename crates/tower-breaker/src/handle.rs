//! The breaker's shared state, and the handle that reads and steers it.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::BreakerError;
use crate::classify::Verdict;
use crate::machine::{Admission, Config, Event, Machine, Permit, State, Transition};
use crate::metrics::{BreakerMetrics, Outcome};
use crate::window::WindowCounts;

pub(crate) type TransitionCallback = Arc<dyn Fn(Transition) + Send + Sync>;

/// One breaker: its state and its classifier, shared by the layer, its services, their
/// clones and every call's future.
pub(crate) struct Breaker<C> {
    pub(crate) shared: Shared,
    pub(crate) classifier: C,
}

impl<C> fmt::Debug for Breaker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<C: Send + Sync + 'static> Breaker<C> {
    pub(crate) fn new(
        name: Cow<'static, str>,
        config: Config,
        on_transition: Option<TransitionCallback>,
        classifier: C,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this: &Weak<Self>| {
            let this: Weak<dyn HasShared> = this.clone();
            Self {
                shared: Shared::new(name, config, on_transition, this),
                classifier,
            }
        })
    }
}

/// The classifier-free view of a [`Breaker`], for handles and timers.
pub(crate) trait HasShared: Send + Sync {
    fn shared(&self) -> &Shared;
}

impl<C: Send + Sync> HasShared for Breaker<C> {
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// A breaker's state, metrics and callback.
pub(crate) struct Shared {
    machine: Machine,
    name: Cow<'static, str>,
    metrics: BreakerMetrics,
    on_transition: Option<TransitionCallback>,
    this: Weak<dyn HasShared>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("machine", &self.machine)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(
        name: Cow<'static, str>,
        config: Config,
        on_transition: Option<TransitionCallback>,
        this: Weak<dyn HasShared>,
    ) -> Self {
        let metrics = BreakerMetrics::new(name.clone());
        let gauge = metrics.state.clone();
        let on_state = Box::new(move |state: State| gauge.set(f64::from(state.as_gauge())));
        Self {
            machine: Machine::new(config, Instant::now(), on_state),
            name,
            metrics,
            on_transition,
            this,
        }
    }

    /// Leave to call, or a refusal.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        match self.machine.admit_closed() {
            Some(admission) => admission,
            None => self.admit_slow(),
        }
    }

    /// [`admit`](Self::admit) off the closed path.
    #[inline(never)]
    fn admit_slow(&self) -> Admission {
        let mut events = Vec::new();
        let admission = self.machine.admit(Instant::now, &mut events);
        self.emit(&events);
        admission
    }

    /// Whether a permit was admitted under the current state (see
    /// [`Machine::is_current`]).
    #[inline]
    pub(crate) fn is_current(&self, admission: &Admission) -> bool {
        self.machine.is_current(admission)
    }

    /// Counts a refusal returned to a caller.
    #[cold]
    #[inline(never)]
    pub(crate) fn refused(&self, retry_after: Option<Duration>) -> BreakerError {
        self.metrics.call(Outcome::Rejected);
        tracing::debug!(
            breaker = %self.name,
            retry_after_ms = retry_after.map(|wait| wait.as_millis()),
            "circuit breaker refused a call",
        );
        BreakerError::CircuitOpen { retry_after }
    }

    /// Whether permits need the call's start time.
    #[inline]
    pub(crate) fn times_calls(&self) -> bool {
        self.machine.times_calls()
    }

    /// Restarts a timed permit's clock at the start of the call.
    pub(crate) fn restart(&self, permit: &mut Permit) {
        self.machine.restart(permit, Instant::now());
    }

    #[inline]
    pub(crate) fn record(&self, permit: Permit, verdict: Verdict) {
        self.metrics.call(match verdict {
            Verdict::Success => Outcome::Success,
            Verdict::Failure | Verdict::FailureRetryAfter(_) => Outcome::Failure,
            Verdict::Ignored => Outcome::Ignored,
        });
        if verdict == Verdict::Success && self.machine.record_success(&permit) {
            return;
        }
        self.record_outcome(permit, verdict);
    }

    /// The machine's side of [`record`](Self::record), off the closed path.
    #[inline(never)]
    fn record_outcome(&self, permit: Permit, verdict: Verdict) {
        let mut events = Vec::new();
        self.machine
            .record(permit, verdict, Instant::now, &mut events);
        self.emit(&events);
    }

    pub(crate) fn release(&self, permit: Permit) {
        self.metrics.call(Outcome::Cancelled);
        self.machine.release(permit);
    }

    fn state(&self) -> State {
        let mut events = Vec::new();
        let state = self.machine.state(Instant::now(), &mut events);
        self.emit(&events);
        state
    }

    fn with_events<T>(&self, f: impl FnOnce(&Machine, &mut Vec<Event>) -> T) -> T {
        let mut events = Vec::new();
        let value = f(&self.machine, &mut events);
        self.emit(&events);
        value
    }

    /// Publishes state changes: metrics, tracing, the user's callback, and a timer for
    /// the next timed transition so that the gauge changes even without traffic.
    #[inline]
    fn emit(&self, events: &[Event]) {
        if !events.is_empty() {
            self.publish(events);
        }
    }

    #[cold]
    #[inline(never)]
    fn publish(&self, events: &[Event]) {
        for event in events {
            let Transition { from, to } = event.transition;
            self.metrics.transition(event.transition);
            match to {
                State::Open => {
                    tracing::warn!(breaker = %self.name, %from, %to, "circuit breaker opened");
                }
                State::HalfOpen => {
                    tracing::info!(breaker = %self.name, %from, %to, "circuit breaker half-open");
                }
                State::Closed => {
                    tracing::info!(breaker = %self.name, %from, %to, "circuit breaker closed");
                }
            }
            if let Some(callback) = &self.on_transition {
                callback(event.transition);
            }
            if let Some(deadline) = event.deadline {
                self.wake_at(deadline);
            }
        }
    }

    fn wake_at(&self, deadline: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: the next call or handle read applies the transition.
            return;
        };
        let this = self.this.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(breaker) = this.upgrade() {
                breaker.shared().state();
            }
        });
    }
}

/// A cheap, cloneable handle on one circuit breaker: reads its state and counts, and
/// steers it by hand. Every clone of the layer and of its services shares the breaker.
///
/// Reads are true at the moment read: once the open duration has passed, the handle
/// reports [`State::HalfOpen`] without waiting for traffic.
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    breaker: Arc<dyn HasShared>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.shared().name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreakerHandle {
    pub(crate) fn new(breaker: Arc<dyn HasShared>) -> Self {
        Self { breaker }
    }

    fn shared(&self) -> &Shared {
        self.breaker.shared()
    }

    /// The breaker's name (the `breaker` metric label).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// The state now.
    #[must_use]
    pub fn state(&self) -> State {
        self.shared().state()
    }

    /// Time left until the circuit turns half-open; `None` unless it is open (and not
    /// forced open).
    #[must_use]
    pub fn time_until_half_open(&self) -> Option<Duration> {
        self.snapshot_parts().time_until_half_open
    }

    /// The failure rate over the sliding window, when a window is configured.
    #[must_use]
    pub fn failure_rate(&self) -> Option<f64> {
        self.snapshot().failure_rate
    }

    /// Opens the circuit and holds it open (no half-open probes) until
    /// [`force_closed`](Self::force_closed) or [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.shared().with_events(Machine::force_open);
    }

    /// Closes the circuit and holds it closed (outcomes are not counted) until
    /// [`force_open`](Self::force_open) or [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.shared().with_events(Machine::force_closed);
    }

    /// Returns to normal operation: closed, counts cleared, open duration back to its
    /// base. Probes in flight no longer count.
    pub fn reset(&self) {
        self.shared().with_events(Machine::reset);
    }

    fn snapshot_parts(&self) -> crate::machine::Stats {
        self.shared()
            .with_events(|machine, events| machine.stats(Instant::now(), events))
    }

    /// The breaker at this moment.
    #[must_use]
    pub fn snapshot(&self) -> CircuitBreakerSnapshot {
        let stats = self.snapshot_parts();
        let window = stats.window;
        CircuitBreakerSnapshot {
            name: self.shared().name.to_string(),
            state: stats.state,
            forced: stats.forced,
            consecutive_failures: stats.consecutive_failures,
            window_calls: window.map(|w| w.calls),
            window_failures: window.map(|w| w.failures),
            window_slow_calls: window.map(|w| w.slow),
            failure_rate: window.map(WindowCounts::failure_rate),
            slow_call_rate: window.map(WindowCounts::slow_rate),
            rejected_calls: stats.rejected,
            time_until_half_open_ms: stats.time_until_half_open.map(millis),
            open_duration_ms: stats.open_duration.map(millis),
            probes_in_flight: stats.probes_in_flight,
            reopens: stats.reopens,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A circuit breaker at one moment; serializes with camelCase field names.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CircuitBreakerSnapshot {
    /// The breaker's name.
    pub name: String,
    /// The state: `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub state: State,
    /// Whether the state is held by `force_open` / `force_closed`.
    pub forced: bool,
    /// Failures in a row since the last success (consecutive-failure policy).
    pub consecutive_failures: u32,
    /// Outcomes in the sliding window (when one is configured).
    pub window_calls: Option<u32>,
    /// Failures in the sliding window.
    pub window_failures: Option<u32>,
    /// Slow calls in the sliding window.
    pub window_slow_calls: Option<u32>,
    /// `windowFailures / windowCalls` (0 when empty).
    pub failure_rate: Option<f64>,
    /// `windowSlowCalls / windowCalls` (0 when empty).
    pub slow_call_rate: Option<f64>,
    /// Calls refused since the breaker was built.
    pub rejected_calls: u64,
    /// Milliseconds until half-open, while open.
    pub time_until_half_open_ms: Option<u64>,
    /// The length of the current open period in milliseconds, while open.
    pub open_duration_ms: Option<u64>,
    /// Half-open probes in flight.
    pub probes_in_flight: u32,
    /// Re-trips since the circuit last closed (drives a growing open duration).
    pub reopens: u32,
}
