//! Metric names and their recording.
//!
//! Handles are resolved, with their labels, when a layer is built: install the `metrics`
//! recorder **before** building the layers, or their metrics go nowhere. Recording on the
//! request path is then a few atomic operations, with no label lookup.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | [`QUEUE_DEPTH`] | gauge | `queue`, `priority` |
//! | [`QUEUE_IN_FLIGHT`] | gauge | `queue` |
//! | [`QUEUE_WAIT_SECONDS`] | histogram | `queue`, `priority` |
//! | [`QUEUE_SHED_TOTAL`] | counter | `queue`, `priority`, `reason` |
//! | [`QUEUE_LIMIT`] | gauge | `queue` |
//! | [`QUEUE_COOLDOWNS_TOTAL`] | counter | `queue` |
//! | [`QUEUE_COOLDOWN_SECONDS`] | gauge | `queue` |
//! | [`RETRY_ATTEMPTS_TOTAL`] | counter | `outcome` |

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::priority::Priority;
use crate::retry::RetryStats;

/// Waiting requests per level (gauge; labels `queue`, `priority`).
pub const QUEUE_DEPTH: &str = "queue_depth";
/// Requests holding a slot (gauge; label `queue`).
pub const QUEUE_IN_FLIGHT: &str = "queue_in_flight";
/// Time from arrival to admission of requests that had to wait (histogram; labels
/// `queue`, `priority`). Requests admitted at once are not observed, so that the admit
/// path stays free of clock reads.
pub const QUEUE_WAIT_SECONDS: &str = "queue_wait_seconds";
/// Refused requests (counter; labels `queue`, `priority`, `reason`). `reason` is `full`
/// (the room was full on arrival), `displaced` (a higher level took its place), `timeout`
/// (waited longer than its level allows), `cooldown` (the upstream's pause outlasts what
/// its level may wait) or `invalid` (with `priority="invalid"`: the
/// request named no valid priority).
pub const QUEUE_SHED_TOTAL: &str = "queue_shed_total";
/// The in-flight limit requests are admitted by (gauge; label `queue`): fixed, or moved
/// by the adaptive limit.
pub const QUEUE_LIMIT: &str = "queue_limit";
/// Cool-downs started by an upstream's `Retry-After` (counter; label `queue`).
pub const QUEUE_COOLDOWNS_TOTAL: &str = "queue_cooldowns_total";
/// The length of the cool-down in progress, 0 when none runs (gauge; label `queue`).
pub const QUEUE_COOLDOWN_SECONDS: &str = "queue_cooldown_seconds";
/// Retry decisions (counter; label `outcome`): `returned` (the outcome was not retryable
/// and went back to the caller), `retried`, `exhausted` (retryable, but it was the last
/// attempt), `budget_exhausted`, `deadline_exceeded` (the backoff would end past the
/// overall deadline) and `not_replayable` (the request could not be copied, so it was sent
/// once).
pub const RETRY_ATTEMPTS_TOTAL: &str = "retry_attempts_total";

/// Registers the descriptions and units of this crate's metrics with the installed
/// recorder. Optional; call it once after installing the recorder.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Requests waiting in the priority queue."
    );
    metrics::describe_gauge!(
        QUEUE_IN_FLIGHT,
        Unit::Count,
        "Requests holding a queue slot."
    );
    metrics::describe_histogram!(
        QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time queued requests waited for a slot."
    );
    metrics::describe_counter!(
        QUEUE_SHED_TOTAL,
        Unit::Count,
        "Requests refused by the queue."
    );
    metrics::describe_gauge!(QUEUE_LIMIT, Unit::Count, "The queue's in-flight limit.");
    metrics::describe_counter!(
        QUEUE_COOLDOWNS_TOTAL,
        Unit::Count,
        "Cool-downs started by an upstream's Retry-After."
    );
    metrics::describe_gauge!(
        QUEUE_COOLDOWN_SECONDS,
        Unit::Seconds,
        "The length of the cool-down in progress (0 when none)."
    );
    metrics::describe_counter!(
        RETRY_ATTEMPTS_TOTAL,
        Unit::Count,
        "Retry decisions by outcome."
    );
}

/// Why a request was shed, as the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShedReason {
    Full,
    Displaced,
    Timeout,
    CoolingDown,
}

impl ShedReason {
    const ALL: [ShedReason; 4] = [
        ShedReason::Full,
        ShedReason::Displaced,
        ShedReason::Timeout,
        ShedReason::CoolingDown,
    ];

    const fn as_str(self) -> &'static str {
        match self {
            ShedReason::Full => "full",
            ShedReason::Displaced => "displaced",
            ShedReason::Timeout => "timeout",
            ShedReason::CoolingDown => "cooldown",
        }
    }

    const fn index(self) -> usize {
        match self {
            ShedReason::Full => 0,
            ShedReason::Displaced => 1,
            ShedReason::Timeout => 2,
            ShedReason::CoolingDown => 3,
        }
    }
}

/// The queue's pre-resolved metric handles.
#[derive(Debug)]
pub(crate) struct QueueMetrics {
    depth: [Gauge; 4],
    in_flight: Gauge,
    wait: [Histogram; 4],
    shed: [[Counter; 4]; 4],
    invalid: Counter,
    limit: Gauge,
    cooldowns: Counter,
    cooldown: Gauge,
}

impl QueueMetrics {
    // Each label needs its own owned `Cow`: borrowed names stay allocation-free.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn new(queue: &Cow<'static, str>) -> Self {
        let by_level = |level: usize| Priority::ALL[level].as_str();
        QueueMetrics {
            depth: std::array::from_fn(
                |level| metrics::gauge!(QUEUE_DEPTH, "queue" => queue.clone(), "priority" => by_level(level)),
            ),
            in_flight: metrics::gauge!(QUEUE_IN_FLIGHT, "queue" => queue.clone()),
            wait: std::array::from_fn(
                |level| metrics::histogram!(QUEUE_WAIT_SECONDS, "queue" => queue.clone(), "priority" => by_level(level)),
            ),
            shed: std::array::from_fn(|level| {
                std::array::from_fn(|reason| {
                    metrics::counter!(
                        QUEUE_SHED_TOTAL,
                        "queue" => queue.clone(),
                        "priority" => by_level(level),
                        "reason" => ShedReason::ALL[reason].as_str()
                    )
                })
            }),
            invalid: metrics::counter!(
                QUEUE_SHED_TOTAL,
                "queue" => queue.clone(),
                "priority" => "invalid",
                "reason" => "invalid"
            ),
            limit: metrics::gauge!(QUEUE_LIMIT, "queue" => queue.clone()),
            cooldowns: metrics::counter!(QUEUE_COOLDOWNS_TOTAL, "queue" => queue.clone()),
            cooldown: metrics::gauge!(QUEUE_COOLDOWN_SECONDS, "queue" => queue.clone()),
        }
    }

    pub(crate) fn set_depth(&self, priority: Priority, depth: usize) {
        #[allow(clippy::cast_precision_loss)] // a queue depth is far below 2^52
        self.depth[priority.index()].set(depth as f64);
    }

    pub(crate) fn admitted(&self) {
        self.in_flight.increment(1.0);
    }

    pub(crate) fn released(&self) {
        self.in_flight.decrement(1.0);
    }

    pub(crate) fn waited(&self, priority: Priority, waited: Duration) {
        self.wait[priority.index()].record(waited.as_secs_f64());
    }

    pub(crate) fn shed(&self, priority: Priority, reason: ShedReason) {
        self.shed[priority.index()][reason.index()].increment(1);
    }

    pub(crate) fn invalid(&self) {
        self.invalid.increment(1);
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        #[allow(clippy::cast_precision_loss)] // a limit is far below 2^52
        self.limit.set(limit as f64);
    }

    pub(crate) fn cooldown_started(&self) {
        self.cooldowns.increment(1);
    }

    pub(crate) fn set_cooldown(&self, length: Duration) {
        self.cooldown.set(length.as_secs_f64());
    }
}

/// The outcome of one retry decision, as the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryOutcome {
    Returned,
    Retried,
    Exhausted,
    BudgetExhausted,
    DeadlineExceeded,
    NotReplayable,
}

impl RetryOutcome {
    const ALL: [RetryOutcome; 6] = [
        RetryOutcome::Returned,
        RetryOutcome::Retried,
        RetryOutcome::Exhausted,
        RetryOutcome::BudgetExhausted,
        RetryOutcome::DeadlineExceeded,
        RetryOutcome::NotReplayable,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Returned => "returned",
            RetryOutcome::Retried => "retried",
            RetryOutcome::Exhausted => "exhausted",
            RetryOutcome::BudgetExhausted => "budget_exhausted",
            RetryOutcome::DeadlineExceeded => "deadline_exceeded",
            RetryOutcome::NotReplayable => "not_replayable",
        }
    }
}

/// The retry layer's pre-resolved metric handles, and the counts its handle reads.
#[derive(Debug)]
pub(crate) struct RetryMetrics {
    attempts: [Counter; 6],
    pub(crate) stats: Arc<RetryStats>,
}

impl RetryMetrics {
    pub(crate) fn new() -> Self {
        RetryMetrics {
            stats: Arc::default(),
            attempts: RetryOutcome::ALL.map(
                |outcome| metrics::counter!(RETRY_ATTEMPTS_TOTAL, "outcome" => outcome.as_str()),
            ),
        }
    }

    pub(crate) fn record(&self, outcome: RetryOutcome) {
        self.attempts[outcome as usize].increment(1);
        match outcome {
            RetryOutcome::Returned => {}
            RetryOutcome::Retried => self.stats.retried(),
            RetryOutcome::Exhausted => self.stats.exhausted(),
            RetryOutcome::BudgetExhausted => self.stats.budget_exhausted(),
            RetryOutcome::DeadlineExceeded => self.stats.deadline_exceeded(),
            RetryOutcome::NotReplayable => self.stats.not_replayable(),
        }
    }
}
