//! The queue's in-flight limit: fixed, or adaptive.
//!
//! The adaptive limit is loss-based AIMD driven by the upstream's overload signals (its
//! 429 and 503 answers and call timeouts), not by latency: at 45-90 s a call a
//! latency-based limiter gets too few samples to move, and an AI call's latency follows
//! the length of its answer, not queueing. [`Aimd`] is the pure controller; the queue feeds
//! it each call's outcome and admits by its current value.

use std::time::Duration;

/// How many requests the queue lets call the inner service at once.
///
/// [`Limit::Fixed`] is today's behaviour and the crate's default (2). An
/// [`AdaptiveLimit`] finds the upstream's capacity by itself; see its docs for the
/// algorithm and the numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Limit {
    /// At most this many at once (at least 1; 0 is taken as 1). Outcomes are not
    /// classified and the upstream's `Retry-After` starts no cool-down.
    Fixed(usize),
    /// A limit that follows the upstream's overload signals.
    Adaptive(AdaptiveLimit),
}

impl Limit {
    /// A fixed limit of `max_in_flight` (at least 1).
    #[must_use]
    pub const fn fixed(max_in_flight: usize) -> Self {
        Limit::Fixed(if max_in_flight == 0 { 1 } else { max_in_flight })
    }

    /// An adaptive limit with the default settings; see [`AdaptiveLimit`].
    #[must_use]
    pub const fn adaptive() -> AdaptiveLimit {
        AdaptiveLimit::new()
    }

    /// The limit requests are admitted by at first.
    pub(crate) fn initial(&self) -> usize {
        match self {
            Limit::Fixed(limit) => (*limit).max(1),
            Limit::Adaptive(adaptive) => adaptive.initial,
        }
    }
}

impl Default for Limit {
    fn default() -> Self {
        Limit::fixed(2)
    }
}

impl From<AdaptiveLimit> for Limit {
    fn from(adaptive: AdaptiveLimit) -> Self {
        Limit::Adaptive(adaptive)
    }
}

impl From<usize> for Limit {
    fn from(max_in_flight: usize) -> Self {
        Limit::fixed(max_in_flight)
    }
}

/// Successes at the plateau (the limit just below where overload last began) before the
/// first probe one step past it.
pub(crate) const PROBE_AFTER: u32 = 32;
/// The longest interval between probes: each probe that meets overload again doubles the
/// interval, up to this.
pub(crate) const MAX_PROBE_AFTER: u32 = 1024;

/// An in-flight limit that finds the upstream's real capacity: loss-based AIMD with a
/// memory of where overload began.
///
/// Each call's outcome is classified by the queue's
/// [`OverloadClassifier`](crate::OverloadClassifier) (HTTP: a 429 or 503, or a call
/// timeout, is overload):
///
/// - **Decrease.** On overload the limit becomes `min(⌊limit × decrease_factor⌋,
///   limit − 1)`, at least `min`. Only calls admitted after the last decrease can lower it
///   again, so the burst of 429s that one overload causes lowers it once. The limit in
///   force when the overload began is remembered as the *ceiling*.
/// - **Increase**, only while the limit is in use (at least half of it in flight when a
///   call completes), so an idle period does not inflate it:
///   - well below the ceiling (under `ceiling × decrease_factor`, as after an outage),
///     `+increase` per successful call: recovery is fast;
///   - below the ceiling, `+increase` per window (a limit's worth of successful calls);
///   - at the plateau (one step below the ceiling), the limit stays put for 32 successful
///     calls, then probes one step past it. A probe that meets overload again doubles the
///     wait before the next one (up to 1024 calls); a probe that holds for another full
///     interval means the capacity grew, and the ceiling is forgotten.
///   - until the first overload, `+increase` per successful call
///     (slow start: each window doubles the limit), so that from the seed's 2 a capacity
///     of 32 is found in four windows, not thirty; with no ceiling after that (a probe
///     past it held), `+increase` per window.
/// - **Cool-down.** A 429 or 503 with `Retry-After` stops all admission until it ends
///   (waiting requests stay queued, bounded by their maximum wait), capped by
///   [`max_cooldown`](Self::max_cooldown).
/// - **Accepted calls** (off unless [`accepted_after`](Self::accepted_after) is set). An
///   upstream that refuses what it cannot take at once (an AI provider's 429 above its
///   concurrency quota comes back in milliseconds) holds every call it has not answered
///   within that time. When a request has to wait, every slot is in use, no call has been
///   handed out for `accepted_after` and no overload (429, 503, time-out) came since, the
///   limit grows by `increase`, but only where completions have been: below the plateau
///   or in slow start, and up to twice the most calls seen in flight at a successful
///   completion since the last overload (twice `initial` before any). A hung upstream
///   holds calls too, so held calls never probe past the plateau, never clear the
///   ceiling, and never take the limit further than that from what successes confirmed;
///   one that serves some calls and hangs others can still raise it, each success
///   confirming the calls then in flight, until its hung calls time out (an overload,
///   which forgets what successes confirmed). Against calls of 45-90 s and
///   a capacity of 8, the limit reaches 4 while the first calls run and 8 a few steps
///   after the first success, where completions alone need two windows of calls. The
///   check runs when a request arrives to wait, so growth follows arrivals. A slot is
///   counted from when the queue hands it out: a call held below the queue (by a rate
///   limiter, a connection pool) looks accepted too. Use it only with an upstream that
///   refuses excess calls at once; one that queues them would look as if it took them.
///
/// **Steady state.** Against an upstream that accepts `C` calls at once and answers 429
/// above that, with enough demand to fill it, the limit settles at `C` and spends a few
/// calls at `C + 1` once per probe interval: it lies within
/// `[min(⌊(C + 1) × decrease_factor⌋, C), C + 1]` (for C ≤ 9 with the defaults, `C` or
/// `C + 1`), and the share of calls that meet a 429 is about one per probe interval
/// (under 1/32, falling as the interval doubles).
///
/// **Recovery.** After an outage has driven the limit to `min` (a run of timeouts keeps
/// the ceiling from where it began), it climbs back to `⌊ceiling × decrease_factor⌋` in
/// at most `(ceiling × decrease_factor − min) / increase` successful calls, and to the
/// plateau in at most `ceiling` further windows of calls: for a ceiling of 16 with the
/// defaults, about 14 + 2 × 15 = 44 successful calls.
///
/// | setting | default |
/// |---|---|
/// | [`min`](Self::min) | 1 |
/// | [`max`](Self::max) | 32 |
/// | [`initial`](Self::initial) | 2 |
/// | [`increase`](Self::increase) | 1 |
/// | [`decrease_factor`](Self::decrease_factor) | 0.9 (Netflix's concurrency-limits default) |
/// | [`max_cooldown`](Self::max_cooldown) | 60 s |
/// | [`accepted_after`](Self::accepted_after) | off |
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveLimit {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) initial: usize,
    pub(crate) increase: f64,
    pub(crate) decrease_factor: f64,
    pub(crate) max_cooldown: Duration,
    pub(crate) accepted_after: Option<Duration>,
}

impl Default for AdaptiveLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl AdaptiveLimit {
    /// The default settings (table above).
    #[must_use]
    pub const fn new() -> Self {
        AdaptiveLimit {
            min: 1,
            max: 32,
            initial: 2,
            increase: 1.0,
            decrease_factor: 0.9,
            max_cooldown: Duration::from_secs(60),
            accepted_after: None,
        }
    }

    /// The lowest the limit goes (at least 1; 0 is taken as 1). `max` and `initial` are
    /// raised to it if below.
    #[must_use]
    pub fn min(mut self, min: usize) -> Self {
        self.min = min.max(1);
        self.max = self.max.max(self.min);
        self.initial = self.initial.clamp(self.min, self.max);
        self
    }

    /// The highest the limit goes (at least `min`).
    #[must_use]
    pub fn max(mut self, max: usize) -> Self {
        self.max = max.max(self.min);
        self.initial = self.initial.clamp(self.min, self.max);
        self
    }

    /// The limit at first, clamped to `[min, max]`.
    #[must_use]
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial.clamp(self.min, self.max);
        self
    }

    /// The increase step: how much the limit grows per window of successful calls (and
    /// per call while recovering). Finite and positive; anything else is taken as 1.
    #[must_use]
    pub fn increase(mut self, step: f64) -> Self {
        self.increase = if step.is_finite() && step > 0.0 {
            step
        } else {
            1.0
        };
        self
    }

    /// What the limit is multiplied by on overload, in `(0, 1)`; anything else is taken
    /// as 0.9. Whatever the factor, a decrease lowers the limit by at least one.
    #[must_use]
    pub fn decrease_factor(mut self, factor: f64) -> Self {
        self.decrease_factor = if factor > 0.0 && factor < 1.0 {
            factor
        } else {
            0.9
        };
        self
    }

    /// The longest cool-down an upstream's `Retry-After` can start, so that a broken or
    /// hostile upstream cannot freeze the queue for hours. `Duration::ZERO` turns
    /// cool-downs off.
    #[must_use]
    pub fn max_cooldown(mut self, cap: Duration) -> Self {
        self.max_cooldown = cap;
        self
    }

    /// Counts a call the upstream has not answered within `after` as accepted, and grows
    /// the limit when the upstream holds every slot that way, within what successful
    /// calls confirmed (see "Accepted calls" above). For upstreams that refuse excess
    /// calls at once, as AI providers do with 429; `after` should exceed the time such a
    /// refusal takes to come back. `Duration::ZERO` is taken as off.
    #[must_use]
    pub const fn accepted_after(mut self, after: Duration) -> Self {
        self.accepted_after = if after.is_zero() { None } else { Some(after) };
        self
    }
}

/// A change of the integer limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// The adaptive limit's controller: pure, with no clock and no tower in it.
#[derive(Clone, Debug)]
pub(crate) struct Aimd {
    settings: AdaptiveLimit,
    /// The limit, with its fraction (additive increases come in fractions of a step).
    limit: f64,
    /// The integer limit in force when overload last began.
    ceiling: Option<usize>,
    /// Decreases since the last successful call: a cascade keeps the ceiling from where
    /// it began.
    cascade: bool,
    /// Successful calls at the plateau since the last probe.
    plateau: u32,
    /// Successful calls at the plateau before the next probe.
    probe_after: u32,
    /// Bumped by each decrease; a call admitted before the current epoch cannot lower
    /// the limit again.
    epoch: u64,
    /// No overload met yet.
    slow_start: bool,
    /// The most calls in flight when a call completed successfully since the last
    /// overload: a level the upstream has been seen to serve, not only to hold.
    confirmed: usize,
}

impl Aimd {
    pub(crate) fn new(settings: AdaptiveLimit) -> Self {
        #[allow(clippy::cast_precision_loss)] // limits are far below 2^52
        let limit = settings.initial as f64;
        Aimd {
            settings,
            limit,
            ceiling: None,
            cascade: false,
            plateau: 0,
            probe_after: PROBE_AFTER,
            epoch: 0,
            slow_start: true,
            confirmed: 0,
        }
    }

    /// The integer limit requests are admitted by.
    pub(crate) fn current(&self) -> usize {
        // A window's worth of fractional steps adds up to a whole step, give or take the
        // rounding of the fractions.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // within [min, max]
        let limit = (self.limit + 1e-9) as usize;
        limit.clamp(self.settings.min, self.settings.max)
    }

    /// The current epoch: record it when a call is admitted.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ceiling, if overload has been met.
    #[cfg(test)]
    pub(crate) fn ceiling(&self) -> Option<usize> {
        self.ceiling
    }

    /// A call completed without an overload signal while `in_flight` calls (itself
    /// included) were in flight.
    pub(crate) fn on_success(&mut self, in_flight: usize) -> Option<Change> {
        self.cascade = false;
        self.confirmed = self.confirmed.max(in_flight);
        let from = self.current();
        if from >= self.settings.max || in_flight.saturating_mul(2) < from {
            return None;
        }
        let next = from + 1;
        let step = self.settings.increase;
        #[allow(clippy::cast_precision_loss)] // limits are far below 2^52
        match self.ceiling {
            Some(ceiling) if next >= ceiling => {
                self.plateau += 1;
                if self.plateau >= self.probe_after {
                    self.plateau = 0;
                    self.limit = (from as f64 + step).max(next as f64);
                    if next > ceiling {
                        // A probe past the ceiling held: the capacity grew.
                        self.ceiling = None;
                        self.probe_after = PROBE_AFTER;
                    }
                }
            }
            Some(ceiling) => {
                let recovering = (from as f64) < ceiling as f64 * self.settings.decrease_factor;
                self.limit += if recovering { step } else { step / from as f64 };
                // Below the ceiling, growth stops at the plateau.
                self.limit = self.limit.min((ceiling - 1) as f64).max(from as f64);
            }
            // No overload met yet: slow start, as TCP does (a window of successes doubles
            // the limit), so that a large capacity is found in a few windows.
            None if self.slow_start => self.limit += step,
            None => self.limit += step / from as f64,
        }
        self.clamp();
        let to = self.current();
        (to != from).then_some(Change { from, to })
    }

    /// The upstream holds all `in_flight` calls, every slot of the limit, and has
    /// refused none of them for a while. Evidence that it takes them, not that it serves
    /// them (a hung upstream holds calls too), so it only ever moves the limit a step up
    /// to at most twice the most calls seen in flight at a successful completion since
    /// the last overload (twice `initial` before any), and only below the plateau (the
    /// level under the last overload) or in slow start. Never past the plateau: probes,
    /// and forgetting the ceiling, wait for successful calls.
    pub(crate) fn on_accepted(&mut self, in_flight: usize) -> Option<Change> {
        let from = self.current();
        if in_flight < from {
            return None;
        }
        let step = self.settings.increase;
        #[allow(clippy::cast_precision_loss)] // limits are far below 2^52
        // Saturating: `max` and `initial` may be set as high as `usize::MAX`.
        let confirmed = self
            .confirmed
            .max(self.settings.initial)
            .saturating_mul(2)
            .max(from);
        let cap = match self.ceiling {
            Some(ceiling) if from.saturating_add(1) >= ceiling => return None,
            Some(ceiling) => (ceiling - 1).min(confirmed) as f64,
            None if self.slow_start => confirmed as f64,
            None => return None,
        };
        self.limit = (self.limit + step).min(cap).max(from as f64);
        self.clamp();
        let to = self.current();
        (to != from).then_some(Change { from, to })
    }

    /// Keeps the limit within `[min, max]`.
    fn clamp(&mut self) {
        #[allow(clippy::cast_precision_loss)] // limits are far below 2^52
        {
            self.limit = self
                .limit
                .clamp(self.settings.min as f64, self.settings.max as f64);
        }
    }

    /// A call admitted in `admitted_epoch` met overload.
    pub(crate) fn on_overload(&mut self, admitted_epoch: u64) -> Option<Change> {
        if admitted_epoch < self.epoch {
            // Admitted under a limit that has been lowered since: already accounted for.
            return None;
        }
        let from = self.current();
        if !self.cascade {
            self.probe_after = if self.ceiling.is_some_and(|ceiling| from >= ceiling) {
                // A probe met overload where it began last time: probe less often.
                self.probe_after.saturating_mul(2).min(MAX_PROBE_AFTER)
            } else {
                PROBE_AFTER
            };
            self.ceiling = Some(from);
        }
        self.cascade = true;
        self.slow_start = false;
        // What successes confirmed was under the load that just failed.
        self.confirmed = 0;
        self.plateau = 0;
        self.epoch += 1;
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let lowered = ((from as f64 * self.settings.decrease_factor) as usize)
            .min(from.saturating_sub(1))
            .max(self.settings.min);
        #[allow(clippy::cast_precision_loss)]
        {
            self.limit = lowered as f64;
        }
        let to = self.current();
        (to != from).then_some(Change { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn aimd() -> Aimd {
        Aimd::new(AdaptiveLimit::new().max(64))
    }

    /// Drives the controller against an upstream that takes `capacity` calls at once:
    /// each round fills the limit; calls past the capacity are overloaded.
    fn run(aimd: &mut Aimd, capacity: usize, rounds: usize) -> (Vec<usize>, usize, usize) {
        let mut limits = Vec::new();
        let (mut calls, mut overloaded) = (0, 0);
        for _ in 0..rounds {
            let limit = aimd.current();
            let epoch = aimd.epoch();
            for call in 0..limit {
                calls += 1;
                if call >= capacity {
                    overloaded += 1;
                    aimd.on_overload(epoch);
                } else {
                    aimd.on_success(limit);
                }
            }
            limits.push(aimd.current());
        }
        (limits, calls, overloaded)
    }

    #[test]
    fn settings_are_clamped() {
        let settings = AdaptiveLimit::new().min(0).max(0).initial(100);
        assert_eq!((settings.min, settings.max, settings.initial), (1, 1, 1));
        let settings = AdaptiveLimit::new().min(5);
        assert_eq!((settings.min, settings.max, settings.initial), (5, 32, 5));
        let settings = AdaptiveLimit::new().increase(f64::NAN).decrease_factor(1.5);
        assert_eq!((settings.increase, settings.decrease_factor), (1.0, 0.9));
        assert_eq!(Limit::fixed(0), Limit::Fixed(1));
    }

    #[test]
    fn slow_start_finds_a_large_capacity_in_a_few_windows() {
        let mut aimd = Aimd::new(AdaptiveLimit::new().max(64));
        let mut windows = 0;
        while aimd.current() < 32 {
            let limit = aimd.current();
            for _ in 0..limit {
                aimd.on_success(limit);
            }
            windows += 1;
        }
        assert!(windows <= 4, "{windows} windows from 2 to 32");
        // After the first overload, growth is additive again.
        let epoch = aimd.epoch();
        aimd.on_overload(epoch);
        let after = aimd.current();
        for _ in 0..after {
            aimd.on_success(after);
        }
        assert!(aimd.current() <= after + 1);
    }

    #[test]
    fn accepted_calls_grow_the_limit_only_where_completions_have_been() {
        let mut aimd = Aimd::new(AdaptiveLimit::new().max(64));
        // Not every slot in use: no evidence.
        assert_eq!(aimd.on_accepted(1), None);
        // Slow start, before any success: a step per window, up to twice `initial`.
        assert_eq!(aimd.on_accepted(2), Some(Change { from: 2, to: 3 }));
        assert_eq!(aimd.on_accepted(3), Some(Change { from: 3, to: 4 }));
        assert_eq!(aimd.on_accepted(4), None, "a hung upstream holds calls too");
        // A success with 4 in flight confirms 4 (and, in slow start, adds its step):
        // accepted calls may now take the limit to 8.
        assert_eq!(aimd.on_success(4), Some(Change { from: 4, to: 5 }));
        for to in 6..=8 {
            let from = aimd.current();
            assert_eq!(aimd.on_accepted(from), Some(Change { from, to }));
        }
        assert_eq!(aimd.on_accepted(8), None);
        // Overload at 20: the plateau is 19, and what successes confirmed is forgotten.
        while aimd.current() < 20 {
            let limit = aimd.current();
            aimd.on_success(limit);
        }
        let overload = |aimd: &mut Aimd| {
            let epoch = aimd.epoch();
            aimd.on_overload(epoch);
        };
        overload(&mut aimd);
        overload(&mut aimd);
        assert_eq!((aimd.current(), aimd.ceiling()), (16, Some(20)));
        // Held calls alone do not climb back, and leave the cascade alone.
        assert_eq!(aimd.on_accepted(16), None);
        assert!(aimd.cascade, "held calls are not successes");
        // A success at 16 in flight confirms 16 (and, well below the ceiling, adds a step):
        // held calls then climb to the plateau, and no further.
        assert_eq!(aimd.on_success(16), Some(Change { from: 16, to: 17 }));
        assert_eq!(aimd.on_accepted(17), Some(Change { from: 17, to: 18 }));
        assert_eq!(aimd.on_accepted(18), Some(Change { from: 18, to: 19 }));
        for _ in 0..1_000 {
            assert_eq!(aimd.on_accepted(19), None);
        }
        assert_eq!(aimd.ceiling(), Some(20), "held calls never probe");
        // Driven down to 3 by a cascade, held calls may take it back to twice `initial`,
        // and the cascade keeps its ceiling.
        while aimd.current() > 3 {
            overload(&mut aimd);
        }
        assert!(aimd.cascade);
        assert_eq!(aimd.on_accepted(3), Some(Change { from: 3, to: 4 }));
        assert_eq!(aimd.on_accepted(4), None);
        assert!(aimd.cascade);
        // After a probe held (no ceiling, no slow start), only successes move it.
        let mut probed = Aimd::new(AdaptiveLimit::new().initial(8));
        probed.slow_start = false;
        assert_eq!(probed.on_accepted(8), None);
        // Limits as high as they can be set: no overflow.
        let mut huge = Aimd::new(AdaptiveLimit::new().max(usize::MAX).initial(usize::MAX));
        let at = huge.current();
        assert_eq!(huge.on_accepted(at), None);
        let epoch = huge.epoch();
        huge.on_overload(epoch);
        let at = huge.current();
        assert!(
            huge.on_accepted(at)
                .is_none_or(|change| change.to > change.from)
        );
        // Never past `max`.
        let mut full = Aimd::new(AdaptiveLimit::new().initial(32));
        full.on_success(32);
        assert_eq!(full.on_accepted(32), None);
    }

    #[test]
    fn an_idle_limit_does_not_grow() {
        let mut aimd = Aimd::new(AdaptiveLimit::new().initial(8));
        for _ in 0..1000 {
            assert_eq!(aimd.on_success(3), None);
        }
        assert_eq!(aimd.current(), 8);
    }

    #[test]
    fn a_burst_of_overloads_from_one_epoch_lowers_the_limit_once() {
        let mut aimd = Aimd::new(AdaptiveLimit::new().initial(20));
        let epoch = aimd.epoch();
        assert_eq!(aimd.on_overload(epoch), Some(Change { from: 20, to: 18 }));
        for _ in 0..10 {
            assert_eq!(aimd.on_overload(epoch), None);
        }
        assert_eq!(aimd.current(), 18);
        assert_eq!(aimd.ceiling(), Some(20));
    }

    #[test]
    fn each_capacity_is_found_with_few_overloads() {
        for capacity in 1..=32 {
            let mut aimd = aimd();
            let (limits, calls, overloaded) = run(&mut aimd, capacity, 3000);
            let settled = &limits[1000..];
            #[allow(clippy::cast_precision_loss)]
            let mean = settled.iter().sum::<usize>() as f64 / settled.len() as f64;
            #[allow(clippy::cast_precision_loss)]
            let capacity_f = capacity as f64;
            assert!(
                (mean - capacity_f).abs() <= 0.2 * capacity_f,
                "capacity {capacity}: mean limit {mean}"
            );
            assert!(
                settled.iter().all(|limit| *limit <= capacity + 1),
                "capacity {capacity}: above C + 1"
            );
            #[allow(clippy::cast_precision_loss)]
            let share = overloaded as f64 / calls as f64;
            assert!(
                share < 0.05,
                "capacity {capacity}: {share} of calls overloaded"
            );
        }
    }

    #[test]
    fn after_an_outage_the_limit_climbs_back_within_a_bound() {
        let mut aimd = aimd();
        run(&mut aimd, 16, 2000);
        assert!(aimd.current() >= 15);
        // An outage: every call times out until the limit is at its minimum.
        while aimd.current() > 1 {
            let epoch = aimd.epoch();
            aimd.on_overload(epoch);
        }
        let mut successes = 0;
        while aimd.current() < 15 {
            let limit = aimd.current();
            aimd.on_success(limit);
            successes += 1;
            assert!(
                successes <= 60,
                "still at {} after {successes}",
                aimd.current()
            );
        }
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_its_bounds(
            min in 1_usize..8,
            span in 0_usize..40,
            initial in 0_usize..64,
            events in prop::collection::vec((any::<bool>(), 0_usize..80, any::<bool>()), 0..400),
        ) {
            let settings = AdaptiveLimit::new().min(min).max(min + span).initial(initial);
            let mut aimd = Aimd::new(settings);
            for (overload, in_flight, stale) in events {
                let epoch = if stale { aimd.epoch().saturating_sub(1) } else { aimd.epoch() };
                if overload {
                    aimd.on_overload(epoch);
                } else {
                    aimd.on_success(in_flight);
                }
                prop_assert!(aimd.current() >= min && aimd.current() <= min + span);
            }
        }

        #[test]
        fn a_run_of_overloads_lowers_the_limit_to_min(initial in 1_usize..64, runs in 64_usize..100) {
            let mut aimd = Aimd::new(AdaptiveLimit::new().max(64).initial(initial));
            for _ in 0..runs {
                let epoch = aimd.epoch();
                let before = aimd.current();
                aimd.on_overload(epoch);
                prop_assert!(aimd.current() < before || before == 1);
            }
            prop_assert_eq!(aimd.current(), 1);
        }

        #[test]
        fn successes_at_full_use_raise_the_limit(initial in 1_usize..32) {
            let mut aimd = Aimd::new(AdaptiveLimit::new().max(64).initial(initial));
            let mut last = aimd.current();
            for _ in 0..64 {
                for _ in 0..aimd.current() {
                    aimd.on_success(aimd.current());
                }
                prop_assert!(aimd.current() > last);
                last = aimd.current();
                if last == 64 { break; }
            }
        }
    }
}
