//! tower's [`TpsBudget`], deposited once per batch of requests.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Requests per deposit, when the retry share allows it.
const BATCH: u32 = 16;

/// A [`TpsBudget`] that takes one deposit per [`BATCH`] requests, each worth that many
/// requests (the budget is built with `retry_percent × BATCH`).
///
/// `TpsBudget::deposit` takes a mutex and reads the clock; once per 16 requests instead of
/// once per request, the retry layer's cost per request is one atomic increment. The
/// budget lags traffic by at most 15 requests (3 retries at 20 %), far below its floor.
/// Shares below `1/BATCH` (6.25 %) or above 100 % cannot be batched accurately and deposit
/// per request; a share of 0 never deposits (only the floor allows retries).
pub(crate) struct BatchedBudget {
    budget: TpsBudget,
    batch: u32,
    requests: AtomicU32,
}

impl BatchedBudget {
    /// `ttl` must be within 1-60 s and `retry_percent` within 0-1000, as `TpsBudget`
    /// asserts; the layer's builder clamps them.
    pub(crate) fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        #[allow(clippy::cast_precision_loss)] // BATCH is 16
        let batched = retry_percent * BATCH as f32;
        // Batch only where `TpsBudget`'s integer withdrawal cost stays within 2 %.
        let (batch, share) = if batched > 1.0 && retry_percent <= 1.0 {
            (BATCH, batched)
        } else {
            (1, retry_percent)
        };
        BatchedBudget {
            budget: TpsBudget::new(ttl, min_per_sec, share),
            batch: if retry_percent > 0.0 { batch } else { 0 },
            requests: AtomicU32::new(0),
        }
    }
}

impl Budget for BatchedBudget {
    fn deposit(&self) {
        match self.batch {
            0 => {}
            1 => self.budget.deposit(),
            batch => {
                // 2^32 is a multiple of the batch, so wrapping keeps the rhythm.
                if self.requests.fetch_add(1, Ordering::Relaxed) % batch == batch - 1 {
                    self.budget.deposit();
                }
            }
        }
    }

    fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }
}

impl fmt::Debug for BatchedBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchedBudget")
            .field("budget", &self.budget)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_allowed(budget: &impl Budget) -> usize {
        std::iter::from_fn(|| budget.withdraw().then_some(()))
            .take(100_000)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn allows_the_share_of_retries_that_tower_allows() {
        for percent in [0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0] {
            for requests in [0usize, 1, 15, 16, 17, 100, 1000, 5000] {
                let batched = BatchedBudget::new(Duration::from_secs(10), 0, percent);
                let plain = TpsBudget::new(Duration::from_secs(10), 0, percent);
                for _ in 0..requests {
                    batched.deposit();
                    plain.deposit();
                }
                let (batched, plain) = (retries_allowed(&batched), retries_allowed(&plain));
                // At most one batch behind; the rounding of `TpsBudget`'s withdrawal
                // cost is within a few percent.
                let slack = 16.0 * f64::from(percent) + plain as f64 * 0.02 + 1.0;
                assert!(
                    (plain as f64 - batched as f64).abs() <= slack,
                    "{percent}: {requests} requests: batched {batched}, tower {plain}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_the_floor_and_the_window() {
        let budget = BatchedBudget::new(Duration::from_secs(1), 3, 0.2);
        assert_eq!(retries_allowed(&budget), 3);
        let budget = BatchedBudget::new(Duration::from_secs(1), 0, 1.0);
        for _ in 0..32 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(retries_allowed(&budget), 0);
    }
}
