//! The suite's two-thread bench harness: two OS threads, each driving its own
//! current-thread tokio runtime, released together, writing the same layer state.
//!
//! Two OS threads rather than two tasks on one two-worker runtime: tokio may start both
//! tasks on one worker (a worker takes a batch from the injection queue), and the
//! contention then disappears; a start gate that spins inside a task then never opens.
//!
//! ```
//! use bench_harness::{Overlap, contended};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let overlap = Overlap::default();
//! let shared = Arc::new(AtomicU64::new(0));
//! let per_thread = contended(1_000, &overlap, &shared, async |counter, _request| {
//!     counter.fetch_add(1, Ordering::Relaxed);
//! });
//! assert_eq!(shared.load(Ordering::Relaxed), 2_000);
//! assert!(per_thread > std::time::Duration::ZERO);
//! assert_eq!(overlap.runs(), 1);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the two threads of the contended runs actually ran together.
#[derive(Debug, Default)]
pub struct Overlap {
    runs: AtomicUsize,
    /// Runs where the loops overlapped for less than 90% of the longer one: for those,
    /// the figure is partly an uncontended one (the scheduler ran the two threads one
    /// after the other, or one thread won the shared cache lines far more often).
    apart: AtomicUsize,
}

impl Overlap {
    /// How many runs were measured.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }

    /// How many runs overlapped for less than 90% of the longer loop.
    pub fn apart(&self) -> usize {
        self.apart.load(Ordering::Relaxed)
    }

    /// Prints how many runs of bench `name` overlapped for less than 90%, if it ran (a
    /// filter may have skipped it).
    pub fn report(&self, name: &str) {
        if self.runs() > 0 {
            println!(
                "{name}: the two threads overlapped for less than 90% in {} of {} runs",
                self.apart(),
                self.runs()
            );
        }
    }
}

/// Runs `iters` requests on each of two OS threads at once and returns the mean
/// per-thread time, for criterion's `iter_custom`.
///
/// Each thread gets its own clone of `state` before the gate (as a connection task holds
/// its router), then awaits `run(&state, request)` `iters` times, where `request` is
/// `2 * i + thread` (distinct across threads). Whether the two loops overlapped is
/// counted in `overlap`.
///
/// # Panics
///
/// When a thread panics, or its runtime cannot be built.
pub fn contended<T, F>(iters: u64, overlap: &Overlap, state: &T, run: F) -> Duration
where
    T: Clone + Send,
    F: AsyncFn(&T, u64) + Sync,
{
    let gate = AtomicUsize::new(2);
    let run = &run;
    let results: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u64)
            .map(|thread| {
                let gate = &gate;
                let state = state.clone();
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("a current-thread runtime");
                    runtime.block_on(async move {
                        gate.fetch_sub(1, Ordering::AcqRel);
                        while gate.load(Ordering::Acquire) != 0 {
                            std::hint::spin_loop();
                        }
                        let start = Instant::now();
                        for i in 0..iters {
                            run(&state, i.wrapping_mul(2).wrapping_add(thread)).await;
                        }
                        (start, Instant::now())
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a bench thread"))
            .collect()
    });
    let [(s0, e0), (s1, e1)] = [results[0], results[1]];
    let longer = (e0 - s0).max(e1 - s1);
    let together = e0.min(e1).saturating_duration_since(s0.max(s1));
    overlap.runs.fetch_add(1, Ordering::Relaxed);
    if together.as_nanos() * 10 < longer.as_nanos() * 9 {
        overlap.apart.fetch_add(1, Ordering::Relaxed);
    }
    ((e0 - s0) + (e1 - s1)) / 2
}
