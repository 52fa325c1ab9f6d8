//! A lock-free, count-based sliding window over the last `N` call outcomes.
//!
//! Memory is bounded by the window size, not by the number of calls: one byte per slot and
//! three counters. Every slot change is a `swap`, and the counters are adjusted by the
//! difference between the old and the new slot value, so the counters always converge to
//! the sum over the slots, even when recording races with a reset.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

/// Slot bits: recorded, failed, slow.
const RECORDED: u8 = 0b001;
const FAILED: u8 = 0b010;
const SLOW: u8 = 0b100;

/// The counts of a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    /// Outcomes held (at most the window size).
    pub(crate) calls: u32,
    /// Failed outcomes held.
    pub(crate) failures: u32,
    /// Slow outcomes held.
    pub(crate) slow: u32,
}

impl WindowCounts {
    /// `failures / calls`, or 0 when empty.
    pub(crate) fn failure_rate(self) -> f64 {
        ratio(self.failures, self.calls)
    }

    /// `slow / calls`, or 0 when empty.
    pub(crate) fn slow_rate(self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

#[derive(Debug)]
pub(crate) struct Window {
    slots: Box<[AtomicU8]>,
    cursor: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl Window {
    /// A window of `size` slots. `size` is at least 1 (checked by the builder).
    pub(crate) fn new(size: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            cursor: AtomicU64::new(0),
            calls: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// Records one outcome, evicting the oldest when full, and returns the counts after it.
    pub(crate) fn record(&self, failed: bool, slow: bool) -> WindowCounts {
        let len = self.slots.len() as u64;
        let index = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        // `index < len` and `len` came from a `u32`, so this cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let slot = &self.slots[index as usize];
        let mut new = RECORDED;
        if failed {
            new |= FAILED;
        }
        if slow {
            new |= SLOW;
        }
        let old = slot.swap(new, Ordering::AcqRel);
        self.apply(old, new);
        self.counts()
    }

    /// Empties the window (on a state change).
    pub(crate) fn clear(&self) {
        for slot in &*self.slots {
            let old = slot.swap(0, Ordering::AcqRel);
            self.apply(old, 0);
        }
    }

    fn apply(&self, old: u8, new: u8) {
        for (bit, counter) in [
            (RECORDED, &self.calls),
            (FAILED, &self.failures),
            (SLOW, &self.slow),
        ] {
            match (old & bit != 0, new & bit != 0) {
                (false, true) => {
                    counter.fetch_add(1, Ordering::AcqRel);
                }
                (true, false) => {
                    counter.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
    }

    /// The counts now. Under concurrent recording a counter may briefly lag its slots; it
    /// is clamped to `0..=size` so a transient value never reads as nonsense.
    pub(crate) fn counts(&self) -> WindowCounts {
        let size = i64::try_from(self.slots.len()).unwrap_or(i64::MAX);
        let read = |counter: &AtomicI64| {
            u32::try_from(counter.load(Ordering::Acquire).clamp(0, size)).unwrap_or(u32::MAX)
        };
        let calls = read(&self.calls);
        WindowCounts {
            calls,
            failures: read(&self.failures).min(calls),
            slow: read(&self.slow).min(calls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_outcome_leaves_the_window() {
        let window = Window::new(3);
        window.record(true, false);
        window.record(false, false);
        let counts = window.record(false, true);
        assert_eq!(
            counts,
            WindowCounts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // The failure is the oldest: it leaves now.
        let counts = window.record(false, false);
        assert_eq!(
            counts,
            WindowCounts {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
    }

    #[test]
    fn clear_empties_the_counts() {
        let window = Window::new(4);
        for _ in 0..10 {
            window.record(true, true);
        }
        assert_eq!(window.counts().calls, 4);
        window.clear();
        assert_eq!(window.counts(), WindowCounts::default());
    }

    #[test]
    fn counters_match_the_slots_after_concurrent_recording_and_clearing() {
        let window = std::sync::Arc::new(Window::new(64));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let window = std::sync::Arc::clone(&window);
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        window.record((i + t) % 3 == 0, i % 5 == 0);
                        if t == 0 && i % 4_999 == 0 {
                            window.clear();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recorder");
        }
        let (mut calls, mut failures, mut slow) = (0, 0, 0);
        for slot in &*window.slots {
            let bits = slot.load(Ordering::Acquire);
            calls += u32::from(bits & RECORDED != 0);
            failures += u32::from(bits & FAILED != 0);
            slow += u32::from(bits & SLOW != 0);
        }
        assert_eq!(
            window.counts(),
            WindowCounts {
                calls,
                failures,
                slow
            }
        );
    }

    #[test]
    fn rates() {
        let counts = WindowCounts {
            calls: 4,
            failures: 1,
            slow: 2,
        };
        assert!((counts.failure_rate() - 0.25).abs() < f64::EPSILON);
        assert!((counts.slow_rate() - 0.5).abs() < f64::EPSILON);
        assert!(WindowCounts::default().failure_rate().abs() < f64::EPSILON);
    }
}
