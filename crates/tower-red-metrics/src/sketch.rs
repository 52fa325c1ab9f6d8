//! The duration sketch: a log-linear histogram over a sliding window of time.
//!
//! This is the pure core behind the snapshot's `duration` figures. It has no tower and no
//! clock in it: the caller passes the current time (as a [`Duration`] since some fixed
//! start) to every call, so it is tested without a runtime.
//!
//! # Accuracy
//!
//! Values are nanoseconds. Below 128 ns every value has its own bucket (exact). Above,
//! each power of two is split into 128 equal buckets, so a bucket's width is at most
//! 1/128 of its lower bound, and the reported value (the bucket's midpoint) is within
//! **1/256 (0.39 %) relative error** of any value in that bucket. Quantiles are exact
//! ranks over the bucket counts, so a reported quantile is within 0.39 % of a true sample
//! at that rank. The average is computed from the same midpoints and has the same bound.
//! Values above 2^42 ns (about 73 minutes) are clamped to that.
//!
//! # Window
//!
//! The window is split into `slots` steps of `window / slots` each (the defaults are
//! 5 minutes and 10 steps of 30 s). A sample counts until its step leaves the window: a
//! sample leaves the figures between `window - step` and `window` after it was recorded.
//!
//! # Memory
//!
//! Fixed at build time: `slots` x 4,608 buckets x 4 bytes (184 KiB with the defaults),
//! whatever the traffic.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Bits of sub-bucket resolution within each power of two.
const SUB_BITS: u32 = 7;
/// Buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Largest recorded value, in nanoseconds (about 73 minutes).
const MAX_NANOS: u64 = (1 << 42) - 1;
/// Number of buckets needed to cover `0..=MAX_NANOS`.
pub(crate) const BUCKETS: usize = bucket_index(MAX_NANOS) + 1;
/// Marks a slot that has never held samples.
const EMPTY: u64 = u64::MAX;

/// The relative error bound of every reported value, as a fraction (1/256).
pub const RELATIVE_ERROR: f64 = 1.0 / 256.0;

/// The bucket that holds `nanos`.
#[allow(clippy::cast_possible_truncation)] // the index is below BUCKETS (4,608)
const fn bucket_index(nanos: u64) -> usize {
    let v = if nanos > MAX_NANOS { MAX_NANOS } else { nanos };
    if v < SUB {
        v as usize
    } else {
        let exponent = 63 - v.leading_zeros();
        let shift = exponent - SUB_BITS;
        let sub = (v >> shift) - SUB;
        ((shift as u64 + 1) * SUB + sub) as usize
    }
}

/// The midpoint of bucket `index`, in nanoseconds (as a float, for the averages).
#[allow(clippy::cast_precision_loss)] // values below 2^42 are exact in an f64
fn bucket_midpoint(index: usize) -> f64 {
    let index = index as u64;
    if index < SUB {
        index as f64
    } else {
        let shift = index / SUB - 1;
        let lower = (SUB + index % SUB) << shift;
        let width = 1u64 << shift;
        lower as f64 + (width - 1) as f64 / 2.0
    }
}

/// Bucket counts merged over a window: the read side of the sketch.
#[derive(Debug, Clone)]
pub(crate) struct Counts {
    buckets: Vec<u64>,
    total: u64,
}

impl Counts {
    /// An empty set of counts.
    pub(crate) fn new() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            total: 0,
        }
    }

    /// Adds one value (used by tests and by the window's merge).
    #[cfg(test)]
    pub(crate) fn add(&mut self, nanos: u64) {
        self.buckets[bucket_index(nanos)] += 1;
        self.total += 1;
    }

    /// How many values these counts hold.
    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), in nanoseconds; `None` when empty.
    ///
    /// Uses the nearest-rank definition: the smallest value with at least `q * total`
    /// values at or below it.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )] // rank is in 1..=total
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_midpoint(index));
            }
        }
        None
    }

    /// The mean, in nanoseconds; `None` when empty.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn mean(&self) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let sum: f64 = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, &count)| bucket_midpoint(index) * count as f64)
            .sum();
        Some(sum / self.total as f64)
    }
}

/// One step of the window.
#[derive(Debug)]
struct Slot {
    /// The step number (`now / step`) the counts belong to, or [`EMPTY`].
    epoch: AtomicU64,
    /// Taken only to move the slot to a new step (once per step), never to record.
    rotate: Mutex<()>,
    counts: Box<[AtomicU32]>,
}

impl Slot {
    fn new() -> Self {
        Self {
            epoch: AtomicU64::new(EMPTY),
            rotate: Mutex::new(()),
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Makes this slot hold `epoch`; false when it already holds a later one.
    fn enter(&self, epoch: u64) -> bool {
        let current = self.epoch.load(Ordering::Acquire);
        if current == epoch {
            return true;
        }
        if current != EMPTY && current > epoch {
            return false;
        }
        let _guard = self.rotate.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.epoch.load(Ordering::Acquire);
        if current == EMPTY || current < epoch {
            for count in &self.counts {
                count.store(0, Ordering::Relaxed);
            }
            self.epoch.store(epoch, Ordering::Release);
            true
        } else {
            current == epoch
        }
    }
}

/// A duration histogram over a sliding window, safe to record into from many threads.
///
/// Recording is one atomic load and one atomic add in the common case; moving to a new
/// step takes a lock once per step.
#[derive(Debug)]
pub(crate) struct WindowedSketch {
    step_nanos: u64,
    slots: Box<[Slot]>,
    /// The step last recorded into, and its slot: `step << 6 | slot` ([`EMPTY`] at
    /// first). Saves the two divisions that find a step and its slot, except once per step.
    recent: AtomicU64,
}

impl WindowedSketch {
    /// A sketch over `window`, split into `slots` steps (at least 1 step of at least 1 ms).
    pub(crate) fn new(window: Duration, slots: u32) -> Self {
        let slots = u64::from(slots.max(1));
        let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let step_nanos = (window_nanos / slots).max(1_000_000);
        Self {
            step_nanos,
            slots: (0..slots).map(|_| Slot::new()).collect(),
            recent: AtomicU64::new(EMPTY),
        }
    }

    /// The window this sketch covers.
    pub(crate) fn window(&self) -> Duration {
        Duration::from_nanos(self.step_nanos.saturating_mul(self.slots.len() as u64))
    }

    fn epoch(&self, now: u64) -> u64 {
        now / self.step_nanos
    }

    /// The step `now` falls in, and its slot.
    #[inline]
    #[allow(clippy::cast_possible_truncation)] // slot indexes are below 64
    fn locate(&self, now: u64) -> (u64, &Slot) {
        let recent = self.recent.load(Ordering::Relaxed);
        if recent != EMPTY {
            let epoch = recent >> 6;
            // `epoch * step <= now` held when it was stored: no overflow.
            if now.wrapping_sub(epoch * self.step_nanos) < self.step_nanos {
                return (epoch, &self.slots[(recent & 63) as usize]);
            }
        }
        let epoch = self.epoch(now);
        let index = epoch % self.slots.len() as u64;
        // Steps are at least 1 ms: `epoch` is below 2^45, and there are at most 60 slots.
        self.recent.store(epoch << 6 | index, Ordering::Relaxed);
        (epoch, &self.slots[index as usize])
    }

    /// Records `value` nanoseconds at time `now` (nanoseconds since the sketch's start).
    #[inline]
    pub(crate) fn record(&self, now: u64, value: u64) {
        let (epoch, slot) = self.locate(now);
        if slot.enter(epoch) {
            slot.counts[bucket_index(value)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts of every sample still in the window at time `now` (nanoseconds since
    /// the sketch's start).
    pub(crate) fn counts(&self, now: u64) -> Counts {
        let current = self.epoch(now);
        let oldest = current.saturating_sub(self.slots.len() as u64 - 1);
        let mut merged = Counts::new();
        for slot in &self.slots {
            let epoch = slot.epoch.load(Ordering::Acquire);
            if epoch == EMPTY || epoch < oldest || epoch > current {
                continue;
            }
            for (sum, count) in merged.buckets.iter_mut().zip(slot.counts.iter()) {
                let count = u64::from(count.load(Ordering::Relaxed));
                *sum += count;
                merged.total += count;
            }
        }
        merged
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]
mod tests {
    use super::*;

    fn n(duration: Duration) -> u64 {
        u64::try_from(duration.as_nanos()).unwrap()
    }
    use proptest::prelude::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..SUB {
            assert!((bucket_midpoint(bucket_index(v)) - v as f64).abs() < f64::EPSILON);
        }
    }

    #[test]
    fn indexes_are_contiguous_and_monotonic() {
        let mut last = 0;
        for v in (0..1_000_000u64).chain([MAX_NANOS - 1, MAX_NANOS, u64::MAX]) {
            let index = bucket_index(v);
            assert!(
                index == last || index == last + 1 || v > 1_000_000,
                "gap at {v}"
            );
            assert!(index >= last);
            last = index;
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_uniform_distribution() {
        // 1..=100,000 microseconds: the true p50 is 50 ms, p95 95 ms, p99 99 ms.
        let mut counts = Counts::new();
        for micros in 1..=100_000u64 {
            counts.add(micros * 1_000);
        }
        for (q, expected) in [(0.5, 50.0e6), (0.95, 95.0e6), (0.99, 99.0e6)] {
            let got = counts.quantile(q).unwrap();
            let error = (got - expected).abs() / expected;
            assert!(error < 0.01, "q{q}: {got} vs {expected} ({error})");
            assert!(
                error <= RELATIVE_ERROR,
                "q{q}: {error} above the documented bound"
            );
        }
        let mean = counts.mean().unwrap();
        assert!((mean - 50.0005e6).abs() / 50.0005e6 <= RELATIVE_ERROR);
    }

    #[test]
    fn empty_counts_have_no_figures() {
        let counts = Counts::new();
        assert_eq!(counts.quantile(0.5), None);
        assert_eq!(counts.mean(), None);
    }

    #[test]
    fn samples_leave_the_window() {
        let sketch = WindowedSketch::new(Duration::from_secs(300), 10);
        assert_eq!(sketch.window(), Duration::from_secs(300));
        sketch.record(n(Duration::from_secs(1)), n(Duration::from_millis(10)));
        sketch.record(n(Duration::from_secs(100)), n(Duration::from_millis(20)));
        assert_eq!(sketch.counts(n(Duration::from_secs(100))).total(), 2);
        // The first sample's step (0..30 s) leaves at 300 s; the second's (90..120 s) at 390 s.
        assert_eq!(sketch.counts(n(Duration::from_secs(299))).total(), 2);
        assert_eq!(sketch.counts(n(Duration::from_secs(300))).total(), 1);
        assert_eq!(sketch.counts(n(Duration::from_secs(389))).total(), 1);
        assert_eq!(sketch.counts(n(Duration::from_secs(390))).total(), 0);
        // A slot reused for a later step starts empty.
        sketch.record(n(Duration::from_secs(301)), n(Duration::from_millis(30)));
        let counts = sketch.counts(n(Duration::from_secs(301)));
        assert_eq!(counts.total(), 2);
        let p0 = counts.quantile(0.0).unwrap();
        assert!((p0 - 20e6).abs() / 20e6 <= RELATIVE_ERROR);
    }

    #[test]
    fn late_samples_for_a_reused_slot_are_dropped() {
        let sketch = WindowedSketch::new(Duration::from_secs(10), 10);
        sketch.record(n(Duration::from_secs(15)), n(Duration::from_millis(1)));
        // A sample stamped one full window earlier maps to the same slot: it is dropped
        // rather than counted in the wrong step.
        sketch.record(n(Duration::from_secs(5)), n(Duration::from_millis(1)));
        assert_eq!(sketch.counts(n(Duration::from_secs(15))).total(), 1);
    }

    #[test]
    fn out_of_order_samples_land_in_their_own_step() {
        // 100 s in 10 steps of 10 s. The step last recorded into is remembered; samples
        // from other steps must not land in it.
        let sketch = WindowedSketch::new(Duration::from_secs(100), 10);
        for secs in [25, 5, 12, 29] {
            sketch.record(n(Duration::from_secs(secs)), n(Duration::from_millis(1)));
        }
        assert_eq!(sketch.counts(n(Duration::from_secs(29))).total(), 4);
        // At 105 s, step 0 (0-10 s) has left the window: only the 5 s sample goes.
        assert_eq!(sketch.counts(n(Duration::from_secs(105))).total(), 3);
        // At 115 s, step 1 (10-20 s) has left too.
        assert_eq!(sketch.counts(n(Duration::from_secs(115))).total(), 2);
    }

    proptest! {
        #[test]
        fn every_value_is_within_the_relative_error(v in 0u64..MAX_NANOS) {
            let estimate = bucket_midpoint(bucket_index(v));
            let error = (estimate - v as f64).abs() / (v.max(1) as f64);
            prop_assert!(error <= RELATIVE_ERROR, "{} -> {} ({})", v, estimate, error);
        }

        #[test]
        fn quantiles_match_exact_ranks(mut values in proptest::collection::vec(1u64..10_000_000_000, 1..400), q in 0.0f64..=1.0) {
            let mut counts = Counts::new();
            for &v in &values {
                counts.add(v);
            }
            values.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = values[rank - 1] as f64;
            let got = counts.quantile(q).unwrap();
            prop_assert!((got - exact).abs() / exact <= RELATIVE_ERROR, "{} vs {}", got, exact);
        }

        #[test]
        fn the_window_counts_exactly_the_recent_samples(
            times in proptest::collection::vec(0u64..2_000, 1..200),
            at in 0u64..2_000,
        ) {
            // 100 s window in 10 steps of 10 s; times in seconds, recorded in order.
            let sketch = WindowedSketch::new(Duration::from_secs(100), 10);
            let mut times = times;
            times.sort_unstable();
            let at = at.max(*times.last().unwrap());
            for &t in &times {
                sketch.record(n(Duration::from_secs(t)), n(Duration::from_millis(1)));
            }
            let expected = times.iter().filter(|&&t| t / 10 + 10 > at / 10).count() as u64;
            prop_assert_eq!(sketch.counts(n(Duration::from_secs(at))).total(), expected);
        }
    }
}
