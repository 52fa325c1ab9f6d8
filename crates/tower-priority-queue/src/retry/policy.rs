//! The retry decision, as a tower [`Policy`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower::retry::Policy;
use tower::retry::backoff::MakeBackoff;
use tower::retry::budget::Budget;

use super::backoff::{FullJitterBackoff, FullJitterBackoffMaker};
use super::budget::BatchedBudget;
use super::classify::{Classify, RetryDecision};
use super::replay::Replay;
use crate::metrics::{RetryMetrics, RetryOutcome};

/// Settings and state shared by every clone of one retry layer's services.
pub(crate) struct RetryShared<C, R> {
    pub(crate) classifier: C,
    pub(crate) replay: R,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: FullJitterBackoffMaker,
    pub(crate) retry_after_cap: Duration,
    pub(crate) deadline: Option<Duration>,
    /// Every call is idempotent (the user said so).
    pub(crate) idempotent: bool,
    /// Timed-out attempts of idempotent requests are retried.
    pub(crate) retry_timeouts: bool,
    pub(crate) budget: BatchedBudget,
    pub(crate) metrics: RetryMetrics,
}

impl<C, R> RetryShared<C, R> {
    /// Whether `request` may be sent again after the upstream may have processed it.
    fn is_idempotent<Req>(&self, request: &Req) -> bool
    where
        R: Replay<Req>,
    {
        self.idempotent || self.replay.is_idempotent(request)
    }
}

impl<C, R> fmt::Debug for RetryShared<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryShared")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("deadline", &self.deadline)
            .field("idempotent", &self.idempotent)
            .field("retry_timeouts", &self.retry_timeouts)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// The [`tower::retry::Policy`] behind [`RetryLayer`](crate::RetryLayer): attempts,
/// classification, full-jitter backoff, `Retry-After`, an overall deadline and a
/// [`TpsBudget`](tower::retry::budget::TpsBudget).
///
/// tower's `Retry` clones the policy for every request; the clone carries that request's
/// attempt count, deadline and backoff, while the settings and the budget are shared.
pub struct RetryPolicy<C, R> {
    shared: Arc<RetryShared<C, R>>,
    /// Attempts that have completed for this request; 0 in the service's own copy.
    attempts: u32,
    deadline: Option<Instant>,
    backoff: Option<FullJitterBackoff>,
}

impl<C, R> RetryPolicy<C, R> {
    pub(crate) fn new(shared: Arc<RetryShared<C, R>>) -> Self {
        RetryPolicy {
            shared,
            attempts: 0,
            deadline: None,
            backoff: None,
        }
    }
}

impl<C, R> Clone for RetryPolicy<C, R> {
    fn clone(&self) -> Self {
        RetryPolicy {
            shared: Arc::clone(&self.shared),
            attempts: self.attempts,
            deadline: self.deadline,
            backoff: self.backoff.clone(),
        }
    }
}

impl<C, R> fmt::Debug for RetryPolicy<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("shared", &self.shared)
            .field("attempts", &self.attempts)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<C, R, Req, Res> Policy<Req, Res, BoxError> for RetryPolicy<C, R>
where
    C: Classify<Res>,
    R: Replay<Req>,
{
    type Future = Sleep;

    fn retry(&mut self, request: &mut Req, result: &mut Result<Res, BoxError>) -> Option<Sleep> {
        let calls = self.attempts.saturating_add(1);
        let next = self.next_attempt(request, result);
        if next.is_none() {
            // The calls made, once the last is known, on the request's span if it has
            // such a field (the preset's `health_ai.request` does); a no-op otherwise.
            // Recorded once: a formatting subscriber appends every recording of a field.
            tracing::Span::current().record("attempts", calls);
        }
        next
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        self.copy_request(request)
    }
}

impl<C, R> RetryPolicy<C, R> {
    /// Whether, and after how long, to make another attempt.
    fn next_attempt<Req, Res>(
        &mut self,
        request: &mut Req,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Sleep>
    where
        C: Classify<Res>,
        R: Replay<Req>,
    {
        let shared = &*self.shared;
        let after = match shared.classifier.classify(result) {
            RetryDecision::Retry => None,
            RetryDecision::RetryAfter(after) => Some(after),
            RetryDecision::RetryIfIdempotent if shared.is_idempotent(request) => None,
            RetryDecision::RetryIfIdempotentTimedOut
                if shared.retry_timeouts && shared.is_idempotent(request) =>
            {
                None
            }
            decision => {
                if decision != RetryDecision::Return {
                    shared.metrics.stats.unsafe_to_repeat();
                    tracing::debug!(
                        ?decision,
                        "retry: the upstream may have processed the request, which is not \
                         idempotent (or a timeout, which is not retried); not retried"
                    );
                }
                shared.metrics.record(RetryOutcome::Returned);
                return None;
            }
        };
        self.attempts = self.attempts.saturating_add(1);
        if self.attempts >= shared.max_attempts {
            shared.metrics.record(RetryOutcome::Exhausted);
            tracing::debug!(attempts = self.attempts, "retry: attempts exhausted");
            return None;
        }
        let backoff = self
            .backoff
            .get_or_insert_with(|| shared.backoff.clone().make_backoff());
        let mut delay = backoff.next_delay();
        if let Some(after) = after {
            delay = delay.max(after.min(shared.retry_after_cap));
        }
        if let Some(deadline) = self.deadline {
            let resume = Instant::now().checked_add(delay);
            if resume.is_none_or(|resume| resume >= deadline) {
                shared.metrics.record(RetryOutcome::DeadlineExceeded);
                tracing::debug!(
                    attempts = self.attempts,
                    delay_ms = delay.as_millis(),
                    "retry: the next attempt would start past the deadline"
                );
                return None;
            }
        }
        if !shared.budget.withdraw() {
            shared.metrics.record(RetryOutcome::BudgetExhausted);
            tracing::debug!(attempts = self.attempts, "retry: budget exhausted");
            return None;
        }
        shared.metrics.record(RetryOutcome::Retried);
        tracing::debug!(
            attempt = self.attempts + 1,
            delay_ms = delay.as_millis(),
            "retry: attempt failed, retrying"
        );
        Some(tokio::time::sleep(delay))
    }

    fn copy_request<Req>(&mut self, request: &Req) -> Option<Req>
    where
        R: Replay<Req>,
    {
        let shared = &*self.shared;
        if shared.max_attempts <= 1 {
            return None;
        }
        if self.attempts == 0 {
            // tower's `Retry::call` asks the service's own copy of the policy (which never
            // retries, so its count stays 0) for the copy, then clones the policy into the
            // response future: this is the start of a new request.
            shared.budget.deposit();
            self.deadline = shared
                .deadline
                .and_then(|deadline| Instant::now().checked_add(deadline));
            let copy = shared.replay.replay(request);
            if copy.is_none() {
                shared.metrics.record(RetryOutcome::NotReplayable);
                tracing::debug!("retry: request cannot be replayed; sent once");
            }
            return copy;
        }
        shared.replay.replay(request)
    }
}
