//! The metrics this crate emits, and their recording.
//!
//! Handles are resolved with their labels once, when the layer is built, so a call costs
//! at most one counter increment. **Install the `metrics` recorder before building the
//! layer**: handles resolved before a recorder exists stay no-ops.

use std::borrow::Cow;

use metrics::{Counter, Gauge};

use crate::machine::{State, Transition};

/// Gauge `circuit_state{breaker}`: 0 closed, 1 open, 2 half-open. One series per breaker,
/// written under the transition lock, so it always shows the latest state.
pub const CIRCUIT_STATE: &str = "circuit_state";
/// Counter `circuit_transitions_total{breaker,from,to}`, with `from`/`to` in `closed`,
/// `open`, `half_open`.
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "circuit_transitions_total";
/// Counter `circuit_calls_total{breaker,outcome}`, with `outcome` in [`OUTCOMES`].
pub const CIRCUIT_CALLS_TOTAL: &str = "circuit_calls_total";

/// The `outcome` label values of [`CIRCUIT_CALLS_TOTAL`]: a call that reached the inner
/// service ended as `success`, `failure` or `ignored` by the classifier, or `cancelled`
/// when its future was dropped; a call refused by the open circuit is `rejected`.
pub const OUTCOMES: [&str; 5] = ["success", "failure", "ignored", "cancelled", "rejected"];

/// The outcome of one call, as counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Success = 0,
    Failure = 1,
    Ignored = 2,
    Cancelled = 3,
    Rejected = 4,
}

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

fn label(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half_open",
    }
}

/// Pre-resolved handles for one breaker.
#[derive(Clone, Debug)]
pub(crate) struct BreakerMetrics {
    pub(crate) state: Gauge,
    calls: [Counter; 5],
    /// Indexed by `from * 3 + to`.
    transitions: [Counter; 9],
}

impl BreakerMetrics {
    pub(crate) fn new(breaker: Cow<'static, str>) -> Self {
        let calls = OUTCOMES.map(|outcome| {
            metrics::counter!(CIRCUIT_CALLS_TOTAL, "breaker" => breaker.clone(), "outcome" => outcome)
        });
        let transitions = std::array::from_fn(|i| {
            let (from, to) = (STATES[i / 3], STATES[i % 3]);
            metrics::counter!(
                CIRCUIT_TRANSITIONS_TOTAL,
                "breaker" => breaker.clone(),
                "from" => label(from),
                "to" => label(to),
            )
        });
        Self {
            state: metrics::gauge!(CIRCUIT_STATE, "breaker" => breaker),
            calls,
            transitions,
        }
    }

    pub(crate) fn call(&self, outcome: Outcome) {
        self.calls[outcome as usize].increment(1);
    }

    pub(crate) fn transition(&self, transition: Transition) {
        let index =
            usize::from(transition.from.as_gauge()) * 3 + usize::from(transition.to.as_gauge());
        self.transitions[index].increment(1);
    }
}
