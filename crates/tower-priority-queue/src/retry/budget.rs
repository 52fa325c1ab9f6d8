//! tower's [`TpsBudget`], with deposits batched off the per-request path.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// Deposits are handed to the budget in batches of this many.
const BATCH: u32 = 16;

/// A [`TpsBudget`] whose deposits (one per request) are counted in an atomic and handed
/// over every [`BATCH`] requests, and before every withdrawal.
///
/// `TpsBudget::deposit` takes a mutex and reads the clock; doing that once per 16 requests
/// instead of once per request keeps the retry layer's cost per request to one atomic
/// increment. The budget's view of recent traffic lags by at most 15 requests, which is
/// far below its floor.
pub(crate) struct BatchedBudget {
    budget: TpsBudget,
    pending: AtomicU32,
}

impl BatchedBudget {
    pub(crate) fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        BatchedBudget {
            budget: TpsBudget::new(ttl, min_per_sec, retry_percent),
            pending: AtomicU32::new(0),
        }
    }

    fn flush(&self) {
        for _ in 0..self.pending.swap(0, Ordering::Relaxed) {
            self.budget.deposit();
        }
    }
}

impl Budget for BatchedBudget {
    fn deposit(&self) {
        if self.pending.fetch_add(1, Ordering::Relaxed) + 1 >= BATCH {
            self.flush();
        }
    }

    fn withdraw(&self) -> bool {
        self.flush();
        self.budget.withdraw()
    }
}

impl fmt::Debug for BatchedBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchedBudget")
            .field("budget", &self.budget)
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_allowed(budget: &BatchedBudget) -> usize {
        std::iter::from_fn(|| budget.withdraw().then_some(()))
            .take(10_000)
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn allows_the_same_share_of_retries_as_tower() {
        for requests in [0, 1, 15, 16, 17, 100, 1000] {
            let batched = BatchedBudget::new(Duration::from_secs(10), 0, 0.2);
            let plain = TpsBudget::new(Duration::from_secs(10), 0, 0.2);
            for _ in 0..requests {
                batched.deposit();
                plain.deposit();
            }
            let expected = std::iter::from_fn(|| plain.withdraw().then_some(()))
                .take(10_000)
                .count();
            assert_eq!(retries_allowed(&batched), expected, "{requests} requests");
            assert_eq!(expected, requests / 5);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_with_the_window() {
        let budget = BatchedBudget::new(Duration::from_secs(1), 0, 1.0);
        for _ in 0..32 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(retries_allowed(&budget), 0);
    }
}
