//! The circuit breaker's state machine: no tower inside, time passed in by the caller.
//!
//! The state lives in one atomic word (state, forced flag, generation). In the closed
//! state, admitting a call is one atomic load, and recording its outcome touches only
//! atomics (a consecutive-failure counter or a lock-free window). A mutex is taken only
//! to change state, to admit and settle half-open probes, and on the open path once the
//! open duration has passed. Every state change bumps the generation, so an outcome from
//! an earlier state does not count in a later one (a permit keeps 28 bits of the
//! generation: a stale outcome could count only after 2^28 state changes during one call).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::classify::Verdict;
use crate::window::{Window, WindowCounts};

/// A circuit breaker's state.
///
/// Serializes and displays as `CLOSED`, `OPEN` or `HALF_OPEN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls fail fast without reaching the inner service.
    Open,
    /// A limited number of probe calls pass; their verdict closes or reopens.
    HalfOpen,
}

impl State {
    /// `CLOSED`, `OPEN` or `HALF_OPEN`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
        }
    }

    /// The value of the `circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    #[must_use]
    pub const fn as_gauge(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    const fn from_word(word: u64) -> Self {
        match word & STATE_MASK {
            0 => Self::Closed,
            1 => Self::Open,
            _ => Self::HalfOpen,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of state, as given to the transition callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
}

const STATE_MASK: u64 = 0b011;
const FORCED: u64 = 0b100;
const GENERATION_SHIFT: u32 = 3;

/// The breaker's configuration, checked by the builder.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) window: Option<WindowConfig>,
    pub(crate) open_duration: Duration,
    /// Growth factor and cap of the open duration on each re-trip.
    pub(crate) backoff: Option<(f64, Duration)>,
    pub(crate) half_open_probes: u32,
    pub(crate) max_half_open: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(3),
            window: None,
            open_duration: Duration::from_secs(60),
            backoff: None,
            half_open_probes: 1,
            max_half_open: None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowConfig {
    pub(crate) size: u32,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow: Option<SlowCalls>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SlowCalls {
    pub(crate) threshold: Duration,
    pub(crate) rate: f64,
}

impl Config {
    fn slow_threshold(&self) -> Option<Duration> {
        self.window.and_then(|w| w.slow).map(|s| s.threshold)
    }

    /// The open duration after `reopens` consecutive re-trips.
    fn open_duration(&self, reopens: u32) -> Duration {
        let base = self.open_duration;
        match self.backoff {
            Some((factor, cap)) if reopens > 0 => {
                // A cap below the base means no growth: the circuit never opens for less
                // than its base duration (a zero cap would let every call be a probe).
                let cap = cap.max(base);
                let exponent = i32::try_from(reopens).unwrap_or(i32::MAX);
                Duration::try_from_secs_f64(base.as_secs_f64() * factor.powi(exponent))
                    .map_or(cap, |grown| grown.clamp(base, cap))
            }
            _ => base,
        }
    }
}

/// Leave to call the inner service, taken before the call and settled after it.
///
/// Eight bytes, moved in one register, so that a call's future stays small: the permit
/// form of the state word it was admitted under (state, forced flag, 28 bits of
/// generation and a marker bit that makes a permit never zero; a permit admitted
/// half-open is a probe) and, when calls are timed, its start in milliseconds since the
/// machine's epoch, wrapping (0 when untimed). A stale permit could pass for a current
/// one only if 2^28 state changes happened during its call; a call is timed correctly up
/// to 49 days.
#[derive(Debug)]
#[must_use]
pub(crate) struct Permit {
    /// Start stamp in the high half, state word in the low half: one register to move.
    bits: u64,
}

/// The permit form of a state word: its low 31 bits and a marker bit, so never zero.
#[allow(
    clippy::cast_possible_truncation,
    reason = "permits keep the low bits of the state word on purpose"
)]
const fn permit_word(word: u64) -> u32 {
    (word as u32) | PERMIT_MARK
}

const PERMIT_MARK: u32 = 1 << 31;

/// The low bits that mark a refusal in an [`Admission`]: `0b11`, a state no permit has.
const REFUSED: u64 = 0b11;

/// The answer to a request for leave, packed in one word so that storing it in a service
/// between `poll_ready` and `call` costs one store and one load: 0 when not asked yet, a
/// permit's bits, or a refusal (low bits `0b11`, then the retry-after in nanoseconds plus
/// one, 0 for unknown).
#[derive(Debug)]
pub(crate) struct Admission(u64);

impl Admission {
    pub(crate) const UNCHECKED: Self = Self(0);

    fn refused(rejected: Rejected) -> Self {
        let nanos = rejected.retry_after.map_or(0, |wait| {
            u64::try_from(wait.as_nanos())
                .unwrap_or(u64::MAX)
                .min(u64::MAX >> 3)
                + 1
        });
        Self(nanos << 2 | REFUSED)
    }

    #[inline]
    pub(crate) fn is_unchecked(&self) -> bool {
        self.0 == 0
    }

    #[inline]
    pub(crate) fn is_refused(&self) -> bool {
        self.0 & REFUSED == REFUSED
    }

    /// Whether this is a permit (neither unchecked nor a refusal).
    #[inline]
    pub(crate) fn is_permit(&self) -> bool {
        self.0 != 0 && !self.is_refused()
    }

    /// The permit, once [`is_permit`](Self::is_permit) said so; any other admission
    /// gives the settled permit, which settles as nothing.
    #[inline]
    pub(crate) fn into_permit(self) -> Permit {
        if self.is_permit() {
            Permit { bits: self.0 }
        } else {
            Permit::SETTLED
        }
    }

    /// The permit form of the state word a permit was admitted under (meaningless for
    /// other admissions).
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a permit's word is the low half of its bits"
    )]
    #[inline]
    const fn permit_word(&self) -> u32 {
        self.0 as u32
    }

    /// The permit or the refusal; `None` if leave was not asked.
    pub(crate) fn into_result(self) -> Option<Result<Permit, Rejected>> {
        match self.0 {
            0 => None,
            bits if bits & REFUSED == REFUSED => Some(Err(Rejected {
                retry_after: match bits >> 2 {
                    0 => None,
                    nanos => Some(Duration::from_nanos(nanos - 1)),
                },
            })),
            bits => Some(Ok(Permit { bits })),
        }
    }
}

impl Permit {
    /// A word no permit can hold: its state bits are `0b11`, which no state uses. Marks a
    /// permit as settled.
    pub(crate) const SETTLED: Self = Self::new(u32::MAX, 0);

    const fn new(word: u32, start: u32) -> Self {
        Self {
            bits: (start as u64) << 32 | word as u64,
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "the low half holds the permit's word"
    )]
    const fn word(&self) -> u32 {
        self.bits as u32
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "the high half holds a 32-bit stamp"
    )]
    const fn start(&self) -> u32 {
        (self.bits >> 32) as u32
    }

    fn into_admission(self) -> Admission {
        Admission(self.bits)
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.word() == u32::MAX
    }

    fn is_probe_word(word: u32) -> bool {
        State::from_word(u64::from(word)) == State::HalfOpen
    }

    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        Self::is_probe_word(self.word())
    }

    #[cfg(test)]
    pub(crate) fn admitted_word(&self) -> u32 {
        self.word()
    }
}

/// A refused call: the circuit is open (or half-open with every probe slot taken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub(crate) retry_after: Option<Duration>,
}

/// A state change, with the instant at which the next one falls due (if timed).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub(crate) transition: Transition,
    pub(crate) deadline: Option<Instant>,
}

/// What a handle shows: the machine at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    pub(crate) state: State,
    pub(crate) forced: bool,
    pub(crate) consecutive_failures: u32,
    pub(crate) window: Option<WindowCounts>,
    pub(crate) rejected: u64,
    pub(crate) time_until_half_open: Option<Duration>,
    pub(crate) open_duration: Option<Duration>,
    pub(crate) probes_in_flight: u32,
    pub(crate) reopens: u32,
}

struct Inner {
    reopens: u32,
    open_until: Instant,
    open_for: Duration,
    half_open_since: Instant,
    probes_in_flight: u32,
    probes_succeeded: u32,
}

/// `at + wait`, saturating at about thirty years from `at` instead of overflowing (a
/// configured or upstream-supplied wait can be arbitrarily large).
fn later(at: Instant, wait: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(wait.min(FAR))
        .or_else(|| at.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(at)
}

/// Reads the clock at most once, and only if asked.
struct LazyNow<F> {
    read: Option<F>,
    value: Option<Instant>,
}

impl<F: FnOnce() -> Instant> LazyNow<F> {
    fn new(read: F) -> Self {
        Self {
            read: Some(read),
            value: None,
        }
    }

    fn get(&mut self) -> Instant {
        if let Some(value) = self.value {
            return value;
        }
        let value = match self.read.take() {
            Some(read) => read(),
            None => Instant::now(),
        };
        self.value = Some(value);
        value
    }
}

/// A value alone on its cache lines (128 bytes: two lines, for adjacent-line prefetch).
#[derive(Debug, Default)]
#[repr(align(128))]
struct CachePadded<T>(T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Called with the new state while the transition lock is held, so that a gauge written
/// from it always ends on the latest state.
pub(crate) type StateHook = Box<dyn Fn(State) + Send + Sync>;

pub(crate) struct Machine {
    /// Read by every call: kept off the cache line of the `Arc` reference count that
    /// every service clone and call future writes.
    word: CachePadded<AtomicU64>,
    consecutive: CachePadded<AtomicU32>,
    window: Option<Window>,
    /// Nanoseconds since `epoch` until which the circuit stays open.
    open_until: AtomicU64,
    rejected: AtomicU64,
    epoch: Instant,
    config: Config,
    inner: Mutex<Inner>,
    on_state: StateHook,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field(
                "state",
                &State::from_word(self.word.load(Ordering::Acquire)),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A closed breaker. `now` anchors its internal clock.
    pub(crate) fn new(config: Config, now: Instant, on_state: StateHook) -> Self {
        on_state(State::Closed);
        Self {
            word: CachePadded(AtomicU64::new(0)),
            consecutive: CachePadded(AtomicU32::new(0)),
            window: config.window.map(|w| Window::new(w.size)),
            open_until: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            epoch: now,
            inner: Mutex::new(Inner {
                reopens: 0,
                open_until: now,
                open_for: Duration::ZERO,
                half_open_since: now,
                probes_in_flight: 0,
                probes_succeeded: 0,
            }),
            config,
            on_state,
        }
    }

    #[cfg(test)]
    pub(crate) fn current_word(&self) -> u32 {
        permit_word(self.word.load(Ordering::Acquire))
    }

    /// Whether outcomes need the call's start time (slow-call detection is on).
    #[inline]
    pub(crate) fn times_calls(&self) -> bool {
        self.config.slow_threshold().is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards plain counters that every path leaves consistent; a panic
        // elsewhere while holding it cannot leave them half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Milliseconds since the epoch, wrapping at 2^32.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "call start stamps wrap; elapsed times are taken with wrapping arithmetic"
    )]
    fn millis(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// The start stamp of a permit admitted at `now`: milliseconds since the epoch plus
    /// one, wrapping, so that 0 can mean "not timed".
    fn stamp(&self, now: Instant) -> u32 {
        if self.times_calls() {
            // Off by a millisecond once every 49 days, when the stamp would wrap to 0.
            self.millis(now).wrapping_add(1).max(1)
        } else {
            0
        }
    }

    /// Restarts a permit's clock (when calls are timed), so that the wait for the inner
    /// service's readiness does not count toward a slow call.
    pub(crate) fn restart(&self, permit: &mut Permit, now: Instant) {
        if permit.start() != 0 {
            *permit = Permit::new(permit.word(), self.stamp(now));
        }
    }

    /// Whether a permit was admitted under the current state: no state change since.
    /// A permit from an earlier state lets no call through (its outcome would not even
    /// count): it was taken in `poll_ready`, and the circuit opened (or went half-open)
    /// while the inner service got ready.
    #[inline]
    pub(crate) fn is_current(&self, admission: &Admission) -> bool {
        permit_word(self.word.load(Ordering::Acquire)) == admission.permit_word()
    }

    /// [`admit`](Self::admit)'s answer when it is one atomic load: closed and untimed.
    #[inline]
    pub(crate) fn admit_closed(&self) -> Option<Admission> {
        let word = self.word.load(Ordering::Acquire);
        (State::from_word(word) == State::Closed && !self.times_calls())
            .then(|| Permit::new(permit_word(word), 0).into_admission())
    }

    /// Asks leave to call. Closed: one atomic load, and the clock is read only when slow
    /// calls are detected.
    #[inline]
    pub(crate) fn admit(
        &self,
        now: impl FnOnce() -> Instant,
        events: &mut Vec<Event>,
    ) -> Admission {
        let word = self.word.load(Ordering::Acquire);
        if State::from_word(word) == State::Closed && !self.times_calls() {
            return Permit::new(permit_word(word), 0).into_admission();
        }
        match self.acquire_spermit_word(word, now(), events) {
            Ok(permit) => permit.into_admission(),
            Err(rejected) => Admission::refused(rejected),
        }
    }

    #[cfg(test)]
    pub(crate) fn acquire(
        &self,
        now: impl FnOnce() -> Instant,
        events: &mut Vec<Event>,
    ) -> Result<Permit, Rejected> {
        self.admit(now, events)
            .into_result()
            .expect("admit always answers")
    }

    #[cold]
    #[inline(never)]
    fn acquire_spermit_word(
        &self,
        word: u64,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<Permit, Rejected> {
        if State::from_word(word) == State::Closed {
            return Ok(Permit::new(permit_word(word), self.stamp(now)));
        }
        if State::from_word(word) == State::Open {
            if word & FORCED != 0 {
                return Err(self.reject(None));
            }
            let until = self.open_until.load(Ordering::Acquire);
            let at = self.nanos(now);
            if at < until {
                return Err(self.reject(Some(Duration::from_nanos(until - at))));
            }
        }
        let mut inner = self.lock();
        self.advance_locked(&mut inner, now, events);
        let word = self.word.load(Ordering::Acquire);
        match State::from_word(word) {
            State::Closed => Ok(Permit::new(permit_word(word), self.stamp(now))),
            State::Open => {
                let retry_after =
                    (word & FORCED == 0).then(|| inner.open_until.saturating_duration_since(now));
                Err(self.reject(retry_after))
            }
            State::HalfOpen => {
                if word & FORCED == 0
                    && inner.probes_in_flight + inner.probes_succeeded
                        < self.config.half_open_probes
                {
                    inner.probes_in_flight += 1;
                    Ok(Permit::new(permit_word(word), self.stamp(now)))
                } else {
                    Err(self.reject(None))
                }
            }
        }
    }

    fn reject(&self, retry_after: Option<Duration>) -> Rejected {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Rejected { retry_after }
    }

    /// Settles a success in one load (and a store only if a failure streak ends) when
    /// that is all [`record`](Self::record) would do: the permit is neither a probe nor
    /// timed and no window is kept. Returns `false`, leaving the permit unsettled, when
    /// the full path must run.
    #[inline]
    pub(crate) fn record_success(&self, permit: &Permit) -> bool {
        let admitted = permit.word();
        if self.window.is_some() || permit.start() != 0 || Permit::is_probe_word(admitted) {
            return false;
        }
        let word = self.word.load(Ordering::Acquire);
        if permit_word(word) == admitted
            && word & FORCED == 0
            && self.config.consecutive_failures.is_some()
            && self.consecutive.load(Ordering::Relaxed) != 0
        {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Settles a completed call with its verdict.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "a permit is settled once: taking it by value makes a second settlement a compile error"
    )]
    #[inline]
    pub(crate) fn record(
        &self,
        permit: Permit,
        verdict: Verdict,
        now: impl FnOnce() -> Instant,
        events: &mut Vec<Event>,
    ) {
        let (admitted, start) = (permit.word(), permit.start());
        let mut now = LazyNow::new(now);
        let slow = match self.config.slow_threshold() {
            // A call exactly at the threshold is not slow.
            Some(threshold) if start != 0 => {
                let elapsed = self.millis(now.get()).wrapping_add(1).wrapping_sub(start);
                Duration::from_millis(u64::from(elapsed)) > threshold
            }
            _ => false,
        };
        if Permit::is_probe_word(admitted) {
            self.record_probe(admitted, verdict, slow, now.get(), events);
            return;
        }
        let word = self.word.load(Ordering::Acquire);
        if permit_word(word) != admitted || word & FORCED != 0 {
            // Admitted under an earlier state, or forced closed: not counted.
            return;
        }
        let mut trip = false;
        let mut hold = None;
        match verdict {
            Verdict::Ignored => return,
            Verdict::Success => {
                if self.config.consecutive_failures.is_some()
                    && self.consecutive.load(Ordering::Relaxed) != 0
                {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            Verdict::Failure | Verdict::FailureRetryAfter(_) => {
                if let Some(threshold) = self.config.consecutive_failures {
                    trip |= self.consecutive.fetch_add(1, Ordering::AcqRel) + 1 >= threshold;
                }
                if let Verdict::FailureRetryAfter(wait) = verdict {
                    trip = true;
                    hold = Some(wait);
                }
            }
        }
        if let (Some(window), Some(config)) = (&self.window, self.config.window) {
            let counts = window.record(verdict.is_failure(), slow);
            if counts.calls >= config.minimum_calls {
                trip |= config
                    .failure_rate
                    .is_some_and(|rate| counts.failure_rate() >= rate);
                trip |= config.slow.is_some_and(|s| counts.slow_rate() >= s.rate);
            }
        }
        if trip {
            self.trip(word, now.get(), hold, events);
        }
    }

    /// Opens a closed circuit, unless another call already changed its state.
    #[cold]
    #[inline(never)]
    fn trip(&self, word: u64, now: Instant, hold: Option<Duration>, events: &mut Vec<Event>) {
        let mut inner = self.lock();
        if self.word.load(Ordering::Acquire) == word {
            self.open_locked(&mut inner, word, now, 0, hold, events);
        }
    }

    fn record_probe(
        &self,
        admitted: u32,
        verdict: Verdict,
        slow: bool,
        now: Instant,
        events: &mut Vec<Event>,
    ) {
        let mut inner = self.lock();
        self.advance_locked(&mut inner, now, events);
        let word = self.word.load(Ordering::Acquire);
        if permit_word(word) != admitted {
            // The half-open period this probe belonged to has ended; its slot went with it.
            return;
        }
        inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        match verdict {
            Verdict::Ignored => {}
            Verdict::Success if !slow => {
                inner.probes_succeeded += 1;
                if inner.probes_succeeded >= self.config.half_open_probes {
                    inner.reopens = 0;
                    self.clear_counts();
                    self.set_state(word, State::Closed, false, None, events);
                }
            }
            Verdict::Success | Verdict::Failure => {
                let reopens = inner.reopens.saturating_add(1);
                self.open_locked(&mut inner, word, now, reopens, None, events);
            }
            Verdict::FailureRetryAfter(wait) => {
                let reopens = inner.reopens.saturating_add(1);
                self.open_locked(&mut inner, word, now, reopens, Some(wait), events);
            }
        }
    }

    /// Settles a call that ended without a verdict (its future was dropped): a probe's
    /// slot comes back.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "a permit is settled once: taking it by value makes a second settlement a compile error"
    )]
    pub(crate) fn release(&self, permit: Permit) {
        let word = permit.word();
        if !Permit::is_probe_word(word) {
            return;
        }
        let mut inner = self.lock();
        if permit_word(self.word.load(Ordering::Acquire)) == word {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }

    /// The state at `now`, applying any transition that has fallen due.
    pub(crate) fn state(&self, now: Instant, events: &mut Vec<Event>) -> State {
        let word = self.word.load(Ordering::Acquire);
        match State::from_word(word) {
            State::Closed => State::Closed,
            State::Open
                if word & FORCED != 0
                    || self.nanos(now) < self.open_until.load(Ordering::Acquire) =>
            {
                State::Open
            }
            _ => {
                let mut inner = self.lock();
                self.advance_locked(&mut inner, now, events);
                State::from_word(self.word.load(Ordering::Acquire))
            }
        }
    }

    /// The machine at `now`, applying any transition that has fallen due.
    pub(crate) fn stats(&self, now: Instant, events: &mut Vec<Event>) -> Stats {
        let mut inner = self.lock();
        self.advance_locked(&mut inner, now, events);
        let word = self.word.load(Ordering::Acquire);
        let state = State::from_word(word);
        let forced = word & FORCED != 0;
        let open = state == State::Open && !forced;
        Stats {
            state,
            forced,
            consecutive_failures: self.consecutive.load(Ordering::Acquire),
            window: self.window.as_ref().map(Window::counts),
            rejected: self.rejected.load(Ordering::Relaxed),
            time_until_half_open: open.then(|| inner.open_until.saturating_duration_since(now)),
            open_duration: open.then_some(inner.open_for),
            probes_in_flight: if state == State::HalfOpen {
                inner.probes_in_flight
            } else {
                0
            },
            reopens: inner.reopens,
        }
    }

    /// Holds the circuit open until [`force_closed`](Self::force_closed) or
    /// [`reset`](Self::reset).
    pub(crate) fn force_open(&self, events: &mut Vec<Event>) {
        let _inner = self.lock();
        let word = self.word.load(Ordering::Acquire);
        self.set_state(word, State::Open, true, None, events);
    }

    /// Holds the circuit closed (outcomes are not counted) until
    /// [`force_open`](Self::force_open) or [`reset`](Self::reset).
    pub(crate) fn force_closed(&self, events: &mut Vec<Event>) {
        let _inner = self.lock();
        let word = self.word.load(Ordering::Acquire);
        self.clear_counts();
        self.set_state(word, State::Closed, true, None, events);
    }

    /// Back to normal operation: closed, counts cleared, open duration back to its base.
    pub(crate) fn reset(&self, events: &mut Vec<Event>) {
        let mut inner = self.lock();
        inner.reopens = 0;
        let word = self.word.load(Ordering::Acquire);
        self.clear_counts();
        self.set_state(word, State::Closed, false, None, events);
    }

    /// Applies the timed transitions that have fallen due by `now`. Each is dated when it
    /// fell due, not when it was noticed.
    fn advance_locked(&self, inner: &mut Inner, now: Instant, events: &mut Vec<Event>) {
        loop {
            let word = self.word.load(Ordering::Acquire);
            if word & FORCED != 0 {
                return;
            }
            match State::from_word(word) {
                State::Open if now >= inner.open_until => {
                    inner.half_open_since = inner.open_until;
                    inner.probes_in_flight = 0;
                    inner.probes_succeeded = 0;
                    let deadline = self
                        .config
                        .max_half_open
                        .map(|d| later(inner.half_open_since, d));
                    self.set_state(word, State::HalfOpen, false, deadline, events);
                }
                State::HalfOpen => match self.config.max_half_open {
                    Some(max) if now >= later(inner.half_open_since, max) => {
                        let at = later(inner.half_open_since, max);
                        // No verdict came: reopen for as long as last time.
                        let reopens = inner.reopens;
                        self.open_locked(inner, word, at, reopens, None, events);
                    }
                    _ => return,
                },
                _ => return,
            }
        }
    }

    fn open_locked(
        &self,
        inner: &mut Inner,
        word: u64,
        now: Instant,
        reopens: u32,
        hold: Option<Duration>,
        events: &mut Vec<Event>,
    ) {
        inner.reopens = reopens;
        let mut open_for = self.config.open_duration(inner.reopens);
        if let Some(hold) = hold {
            open_for = open_for.max(hold);
        }
        inner.open_for = open_for;
        inner.open_until = later(now, open_for);
        self.open_until
            .store(self.nanos(inner.open_until), Ordering::Release);
        self.set_state(word, State::Open, false, Some(inner.open_until), events);
    }

    fn clear_counts(&self) {
        self.consecutive.store(0, Ordering::Release);
        if let Some(window) = &self.window {
            window.clear();
        }
    }

    /// Stores the new state under a new generation. Called with the lock held.
    fn set_state(
        &self,
        word: u64,
        to: State,
        forced: bool,
        deadline: Option<Instant>,
        events: &mut Vec<Event>,
    ) {
        let from = State::from_word(word);
        let generation = (word >> GENERATION_SHIFT).wrapping_add(1);
        let new = (generation << GENERATION_SHIFT)
            | if forced { FORCED } else { 0 }
            | u64::from(to.as_gauge());
        self.word.store(new, Ordering::Release);
        (self.on_state)(to);
        if from != to {
            events.push(Event {
                transition: Transition { from, to },
                deadline,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(config: Config) -> (Machine, Instant) {
        let t0 = Instant::now();
        (Machine::new(config, t0, Box::new(|_| {})), t0)
    }

    fn call(m: &Machine, at: Instant, verdict: Verdict) -> Vec<Event> {
        let mut events = Vec::new();
        let permit = m.acquire(|| at, &mut events).expect("admitted");
        m.record(permit, verdict, || at, &mut events);
        events
    }

    fn state(m: &Machine, at: Instant) -> State {
        m.state(at, &mut Vec::new())
    }

    #[test]
    fn opens_after_three_consecutive_failures() {
        let (m, t0) = machine(Config::default());
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        assert_eq!(state(&m, t0), State::Closed);
        let events = call(&m, t0, Verdict::Failure);
        assert_eq!(state(&m, t0), State::Open);
        assert_eq!(
            events[0].transition,
            Transition {
                from: State::Closed,
                to: State::Open
            }
        );
        assert_eq!(events[0].deadline, Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let (m, t0) = machine(Config::default());
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Success);
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        assert_eq!(state(&m, t0), State::Closed);
    }

    /// The closed path's shortcut does what `record` does with a success, and declines
    /// the permits `record` must see (timed, probes, windowed).
    #[test]
    fn the_success_shortcut_matches_record_and_declines_what_it_cannot_settle() {
        let (m, t0) = machine(Config::default());
        let mut events = Vec::new();
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        let permit = m.acquire(|| t0, &mut events).expect("admitted");
        assert!(m.record_success(&permit));
        assert_eq!(m.consecutive.load(Ordering::Relaxed), 0);
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        assert_eq!(state(&m, t0), State::Closed);
        // A success admitted under an earlier state settles without resetting the count.
        let stale = m.acquire(|| t0, &mut events).expect("admitted");
        m.force_open(&mut events);
        m.reset(&mut events);
        call(&m, t0, Verdict::Failure);
        assert!(m.record_success(&stale));
        assert_eq!(m.consecutive.load(Ordering::Relaxed), 1);

        let windowed = Config {
            window: Some(WindowConfig {
                size: 10,
                minimum_calls: 10,
                failure_rate: Some(0.5),
                slow: None,
            }),
            ..Config::default()
        };
        let (m, t0) = machine(windowed);
        let permit = m.acquire(|| t0, &mut events).expect("admitted");
        assert!(!m.record_success(&permit));
        m.record(permit, Verdict::Success, || t0, &mut events);

        let (m, t0) = machine(Config::default());
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        let at = t0 + Duration::from_secs(60);
        let probe = m.acquire(|| at, &mut events).expect("a probe");
        assert!(probe.is_probe());
        assert!(!m.record_success(&probe));
        m.record(probe, Verdict::Success, || at, &mut events);
        assert_eq!(state(&m, at), State::Closed);

        let (m, t0) = machine(Config {
            window: Some(WindowConfig {
                size: 10,
                minimum_calls: 10,
                failure_rate: None,
                slow: Some(SlowCalls {
                    threshold: Duration::from_secs(1),
                    rate: 0.5,
                }),
            }),
            ..Config::default()
        });
        let timed = m.acquire(|| t0, &mut events).expect("admitted");
        assert!(!m.record_success(&timed));
        m.record(timed, Verdict::Success, || t0, &mut events);
    }

    #[test]
    fn ignored_outcomes_do_not_count() {
        let (m, t0) = machine(Config::default());
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Ignored);
        assert_eq!(state(&m, t0), State::Closed);
        call(&m, t0, Verdict::Failure);
        assert_eq!(state(&m, t0), State::Open);
    }

    #[test]
    fn rejection_reports_time_left_open() {
        let (m, t0) = machine(Config::default());
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        let at = t0 + Duration::from_secs(15);
        let rejected = m.acquire(|| at, &mut Vec::new()).expect_err("open");
        assert_eq!(rejected.retry_after, Some(Duration::from_secs(45)));
    }

    #[test]
    fn state_read_is_half_open_once_due_without_traffic() {
        let (m, t0) = machine(Config::default());
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        assert_eq!(state(&m, t0 + Duration::from_millis(59_999)), State::Open);
        let mut events = Vec::new();
        assert_eq!(
            m.state(t0 + Duration::from_secs(60), &mut events),
            State::HalfOpen
        );
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn half_open_admits_exactly_k_probes_and_closes_on_their_success() {
        let (m, t0) = machine(Config {
            half_open_probes: 2,
            ..Config::default()
        });
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        let at = t0 + Duration::from_secs(60);
        let mut events = Vec::new();
        let p1 = m.acquire(|| at, &mut events).expect("probe 1");
        let p2 = m.acquire(|| at, &mut events).expect("probe 2");
        assert!(p1.is_probe() && p2.is_probe());
        assert!(m.acquire(|| at, &mut events).is_err(), "a third probe");
        m.record(p1, Verdict::Success, || at, &mut events);
        assert_eq!(state(&m, at), State::HalfOpen);
        // The first probe's success does not free its slot for another probe.
        assert!(m.acquire(|| at, &mut events).is_err());
        m.record(p2, Verdict::Success, || at, &mut events);
        assert_eq!(state(&m, at), State::Closed);
    }

    #[test]
    fn a_dropped_or_ignored_probe_returns_its_slot() {
        let (m, t0) = machine(Config::default());
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        let at = t0 + Duration::from_secs(60);
        let mut events = Vec::new();
        let probe = m.acquire(|| at, &mut events).expect("probe");
        assert!(m.acquire(|| at, &mut events).is_err());
        m.release(probe);
        let probe = m.acquire(|| at, &mut events).expect("slot came back");
        m.record(probe, Verdict::Ignored, || at, &mut events);
        let probe = m.acquire(|| at, &mut events).expect("slot came back again");
        m.record(probe, Verdict::Failure, || at, &mut events);
        assert_eq!(state(&m, at), State::Open);
    }

    #[test]
    fn open_duration_grows_on_each_reopen_up_to_the_cap() {
        let (m, t0) = machine(Config {
            backoff: Some((2.0, Duration::from_secs(150))),
            ..Config::default()
        });
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        let mut at = t0;
        for expected in [60, 120, 150, 150] {
            let mut events = Vec::new();
            let stats = m.stats(at, &mut events);
            assert_eq!(stats.open_duration, Some(Duration::from_secs(expected)));
            at += Duration::from_secs(expected);
            let probe = m.acquire(|| at, &mut events).expect("probe");
            m.record(probe, Verdict::Failure, || at, &mut events);
        }
        // Recovery resets the growth.
        let probe = m
            .acquire(|| at + Duration::from_secs(150), &mut Vec::new())
            .expect("probe");
        m.record(probe, Verdict::Success, || at, &mut Vec::new());
        for _ in 0..3 {
            call(&m, at, Verdict::Failure);
        }
        let stats = m.stats(at, &mut Vec::new());
        assert_eq!(stats.open_duration, Some(Duration::from_secs(60)));
    }

    #[test]
    fn max_half_open_duration_reopens() {
        let (m, t0) = machine(Config {
            max_half_open: Some(Duration::from_secs(10)),
            ..Config::default()
        });
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        let at = t0 + Duration::from_secs(60);
        let probe = m.acquire(|| at, &mut Vec::new()).expect("probe");
        let later = at + Duration::from_secs(10);
        assert_eq!(state(&m, later), State::Open);
        // The late probe's verdict belongs to an ended period: it changes nothing.
        m.record(probe, Verdict::Success, || later, &mut Vec::new());
        assert_eq!(state(&m, later), State::Open);
    }

    fn window(size: u32, minimum_calls: u32, failure_rate: f64) -> Config {
        Config {
            consecutive_failures: None,
            window: Some(WindowConfig {
                size,
                minimum_calls,
                failure_rate: Some(failure_rate),
                slow: None,
            }),
            ..Config::default()
        }
    }

    #[test]
    fn failure_rate_waits_for_the_minimum_then_the_fifth_call_decides() {
        use Verdict::{Failure as F, Success as S};
        let (m, t0) = machine(window(5, 5, 0.5));
        for v in [F, F, F, S] {
            call(&m, t0, v);
        }
        assert_eq!(state(&m, t0), State::Closed, "4 calls < minimum 5");
        call(&m, t0, S);
        assert_eq!(state(&m, t0), State::Open, "3 of 5 failed");

        let (m, t0) = machine(window(5, 5, 0.5));
        for v in [F, F, S, S, S] {
            call(&m, t0, v);
        }
        assert_eq!(state(&m, t0), State::Closed, "2 of 5 failed");
        let (m, t0) = machine(window(5, 5, 0.5));
        for v in [F, F, S, S, F] {
            call(&m, t0, v);
        }
        assert_eq!(state(&m, t0), State::Open, "3 of 5 failed");
    }

    #[test]
    fn an_old_outcome_leaves_the_window() {
        let (m, t0) = machine(window(5, 5, 0.5));
        for _ in 0..10 {
            call(&m, t0, Verdict::Success);
        }
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        assert_eq!(state(&m, t0), State::Closed);
        // A running total would be 3 of 13; the window holds S,S,F,F,F.
        call(&m, t0, Verdict::Failure);
        assert_eq!(state(&m, t0), State::Open);
    }

    fn slow_config() -> Config {
        Config {
            consecutive_failures: None,
            window: Some(WindowConfig {
                size: 3,
                minimum_calls: 3,
                failure_rate: Some(0.5),
                slow: Some(SlowCalls {
                    threshold: Duration::from_secs(1),
                    rate: 1.0,
                }),
            }),
            ..Config::default()
        }
    }

    fn timed_call(m: &Machine, at: Instant, took: Duration) {
        let mut events = Vec::new();
        let permit = m.acquire(|| at, &mut events).expect("admitted");
        m.record(permit, Verdict::Success, || at + took, &mut events);
    }

    #[test]
    fn slow_calls_trip_without_failures() {
        let (m, t0) = machine(slow_config());
        for _ in 0..3 {
            timed_call(&m, t0, Duration::from_millis(1_001));
        }
        assert_eq!(state(&m, t0), State::Open);
    }

    #[test]
    fn a_call_exactly_at_the_slow_threshold_is_not_spermit_word() {
        let (m, t0) = machine(slow_config());
        for _ in 0..3 {
            timed_call(&m, t0, Duration::from_secs(1));
        }
        assert_eq!(state(&m, t0), State::Closed);
        assert_eq!(m.stats(t0, &mut Vec::new()).window.map(|w| w.slow), Some(0));
    }

    #[test]
    fn retry_after_verdict_holds_the_circuit_open() {
        let (m, t0) = machine(Config::default());
        call(&m, t0, Verdict::FailureRetryAfter(Duration::from_secs(300)));
        let rejected = m.acquire(|| t0, &mut Vec::new()).expect_err("open");
        assert_eq!(rejected.retry_after, Some(Duration::from_secs(300)));
    }

    #[test]
    fn admission_round_trips_permits_and_refusals() {
        assert!(Admission::UNCHECKED.into_result().is_none());
        for wait in [None, Some(Duration::ZERO), Some(Duration::new(45, 123))] {
            let refused = Admission::refused(Rejected { retry_after: wait });
            assert!(refused.is_refused() && !refused.is_unchecked());
            assert_eq!(
                refused.into_result().map(Result::err),
                Some(Some(Rejected { retry_after: wait }))
            );
        }
        for (word, start) in [(0, 0), (2, 7), (u64::MAX << 3 | 1, u32::MAX)] {
            let permit = Permit::new(permit_word(word), start).into_admission();
            assert!(!permit.is_refused() && !permit.is_unchecked());
            let permit = permit.into_result().expect("asked").expect("admitted");
            assert_eq!((permit.word(), permit.start()), (permit_word(word), start));
        }
    }

    #[test]
    fn huge_waits_saturate_instead_of_overflowing() {
        let (m, t0) = machine(Config {
            open_duration: Duration::MAX,
            max_half_open: Some(Duration::MAX),
            ..Config::default()
        });
        call(&m, t0, Verdict::FailureRetryAfter(Duration::MAX));
        let rejected = m.acquire(|| t0, &mut Vec::new()).expect_err("open");
        assert!(rejected.retry_after > Some(Duration::from_secs(365 * 24 * 3600)));
    }

    #[test]
    fn forced_states_hold_until_reset() {
        let (m, t0) = machine(Config::default());
        let mut events = Vec::new();
        m.force_open(&mut events);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(state(&m, later), State::Open);
        assert_eq!(
            m.acquire(|| later, &mut events).err(),
            Some(Rejected { retry_after: None })
        );
        m.force_closed(&mut events);
        for _ in 0..10 {
            call(&m, later, Verdict::Failure);
        }
        assert_eq!(state(&m, later), State::Closed);
        m.reset(&mut events);
        for _ in 0..3 {
            call(&m, later, Verdict::Failure);
        }
        assert_eq!(state(&m, later), State::Open);
    }

    #[test]
    fn an_outcome_from_an_earlier_state_is_not_counted() {
        let (m, t0) = machine(Config::default());
        let mut events = Vec::new();
        let stale = m.acquire(|| t0, &mut events).expect("admitted");
        m.force_open(&mut events);
        m.reset(&mut events);
        call(&m, t0, Verdict::Failure);
        call(&m, t0, Verdict::Failure);
        m.record(stale, Verdict::Failure, || t0, &mut events);
        assert_eq!(state(&m, t0), State::Closed);
    }

    #[test]
    fn the_state_hook_sees_every_state() {
        use std::sync::Arc;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let t0 = Instant::now();
        let m = Machine::new(
            Config::default(),
            t0,
            Box::new(move |s| log.lock().expect("log").push(s)),
        );
        for _ in 0..3 {
            call(&m, t0, Verdict::Failure);
        }
        let at = t0 + Duration::from_secs(60);
        call(&m, at, Verdict::Success);
        assert_eq!(
            *seen.lock().expect("log"),
            [State::Closed, State::Open, State::HalfOpen, State::Closed]
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Acquire,
        Complete(usize, Verdict),
        Drop(usize),
        Advance(u64),
        ForceOpen,
        Reset,
    }

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            Just(Verdict::Success),
            Just(Verdict::Failure),
            Just(Verdict::Ignored),
            (1u64..30).prop_map(|s| Verdict::FailureRetryAfter(Duration::from_secs(s))),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Acquire),
            4 => (any::<usize>(), verdict()).prop_map(|(i, v)| Op::Complete(i, v)),
            2 => any::<usize>().prop_map(Op::Drop),
            3 => (0u64..90_000).prop_map(Op::Advance),
            1 => Just(Op::ForceOpen),
            1 => Just(Op::Reset),
        ]
    }

    proptest! {
        /// Whatever happens to calls (completed with any verdict, dropped, outlived by
        /// their half-open period), there are never more than K probes in flight, the
        /// machine's probe count equals the probes really outstanding, and once every call
        /// is settled and the open duration has passed, a call is admitted: HALF_OPEN is
        /// never stuck.
        #[test]
        fn probes_are_bounded_and_never_leak(
            probes in 1u32..4,
            max_half_open in proptest::option::of(1u64..120),
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let t0 = Instant::now();
            let config = Config {
                half_open_probes: probes,
                max_half_open: max_half_open.map(Duration::from_secs),
                backoff: Some((2.0, Duration::from_secs(600))),
                ..Config::default()
            };
            let machine = Machine::new(config, t0, Box::new(|_| {}));
            let mut now = t0;
            let mut outstanding: Vec<Permit> = Vec::new();
            let mut events = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        if let Ok(permit) = machine.acquire(|| now, &mut events) {
                            outstanding.push(permit);
                        }
                    }
                    Op::Complete(i, verdict) if !outstanding.is_empty() => {
                        let permit = outstanding.swap_remove(i % outstanding.len());
                        machine.record(permit, verdict, || now, &mut events);
                    }
                    Op::Drop(i) if !outstanding.is_empty() => {
                        machine.release(outstanding.swap_remove(i % outstanding.len()));
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::ForceOpen => machine.force_open(&mut events),
                    Op::Reset => machine.reset(&mut events),
                    Op::Complete(..) | Op::Drop(_) => {}
                }
                let stats = machine.stats(now, &mut events);
                let word = machine.current_word();
                let live = outstanding
                    .iter()
                    .filter(|p| p.is_probe() && p.admitted_word() == word)
                    .count();
                prop_assert!(stats.probes_in_flight <= probes);
                if stats.state == State::HalfOpen {
                    prop_assert_eq!(stats.probes_in_flight as usize, live);
                } else {
                    prop_assert_eq!(stats.probes_in_flight, 0);
                }
            }
            // Settle everything; leave any forced state; let any open period pass.
            for permit in outstanding.drain(..) {
                machine.release(permit);
            }
            if machine.stats(now, &mut events).forced {
                machine.reset(&mut events);
            }
            // The longest open period is 600 s: within it a call must be admitted.
            let admitted = (0..=601).any(|_| {
                now += Duration::from_secs(1);
                machine.acquire(|| now, &mut events).is_ok()
            });
            prop_assert!(admitted, "never admitted: {:?}", machine.stats(now, &mut events));
        }
    }
}
