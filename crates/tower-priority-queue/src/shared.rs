//! State shared by every clone of a queue service: the slots and the waiting room.
//!
//! # Slots
//!
//! One atomic word holds the number of slots in use (shifted left by one) and a flag that
//! says someone waits. While nobody waits and a slot is free, admission is one
//! compare-and-swap and release is one more: no lock, no clock read, no allocation.
//!
//! The flag is set (under the room's lock) when an arrival finds no slot it can take
//! (every slot is taken, or a cool-down runs), and it stays set while anyone waits: also
//! while such an arrival, still holding the lock, hands out slots the limit has just
//! gained before it takes its place. While it is set, a
//! finishing request does not give its slot back to newcomers: under the lock it hands the
//! slot to the next waiter (unless the limit has been lowered below the slots in use, or a
//! cool-down runs, when the slot is given back), so a slot can never be taken by a newcomer
//! ahead of a waiter. The flag is cleared, under the lock, when the room becomes empty.
//!
//! # Limit and cool-down
//!
//! The limit is an atomic word: fixed, or moved by the adaptive controller when calls
//! complete. A second flag in the slot word says a cool-down runs (the upstream asked for
//! a pause with `Retry-After`): nothing is admitted until it ends. When the limit rises or
//! a cool-down ends (a waiter's timer, an arrival or a release notices), [`Shared::pump`]
//! hands free slots to waiters, in priority order.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::BoxError;

use crate::core::{Push, WaitQueue};
use crate::error::QueueError;
use crate::limit::{Aimd, Limit};
use crate::metrics::{QueueMetrics, ShedReason};
use crate::overload::Signal;
use crate::priority::Priority;

const WAITERS: usize = 1;
const COOLING: usize = 2;
const ONE_SLOT: usize = 4;
const SLOT_SHIFT: u32 = 2;

/// Waiting: in the room.
const WAITING: u8 = 0;
/// Given a slot by a finishing request; the waiter owns that slot now.
const GRANTED: u8 = 1;
/// Displaced from the room by a higher-priority arrival.
const DISPLACED: u8 = 2;
/// The waiter has seen its outcome (or left); nothing more to do.
const SETTLED: u8 = 3;

/// Where a waiter learns its fate.
#[derive(Debug)]
pub(crate) struct WaitCell {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl WaitCell {
    fn new() -> Self {
        WaitCell {
            state: AtomicU8::new(WAITING),
            waker: Mutex::new(None),
        }
    }

    /// The waiter's task, to wake without settling anything.
    fn waker(&self) -> Option<Waker> {
        self.waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the outcome (under the room's lock) and returns the waker to wake once the
    /// lock is released.
    fn settle(&self, outcome: u8) -> Option<Waker> {
        self.state.store(outcome, Ordering::Release);
        self.waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The configuration the queue runs with.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) name: Cow<'static, str>,
    pub(crate) limit: Limit,
    pub(crate) max_wait: [Option<Duration>; 4],
    pub(crate) retry_after: Duration,
}

/// The slot word, alone on its cache line(s): it is written by every request, and must
/// not share a line with the `Arc` counts or with unrelated allocations.
#[derive(Debug)]
#[repr(align(128))]
struct SlotWord(AtomicUsize);

impl std::ops::Deref for SlotWord {
    type Target = AtomicUsize;

    fn deref(&self) -> &AtomicUsize {
        &self.0
    }
}

/// State shared by all clones of a queue service and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    state: SlotWord,
    /// The slots requests are admitted by.
    limit: AtomicUsize,
    room: Mutex<WaitQueue<Arc<WaitCell>>>,
    /// The adaptive controller, when the limit is adaptive.
    adaptive: Option<Adaptive>,
    /// The current cool-down; written under the room's lock.
    cooldown: Mutex<Option<Pause>>,
    pub(crate) settings: Settings,
    pub(crate) metrics: QueueMetrics,
}

/// A cool-down in progress.
#[derive(Clone, Copy, Debug)]
struct Pause {
    /// When it ends.
    until: Instant,
    /// How long the upstream asked for (capped): the `queue_cooldown_seconds` gauge.
    length: Duration,
}

/// The adaptive limit's state.
#[derive(Debug)]
struct Adaptive {
    aimd: Mutex<Controller>,
    /// The controller's epoch, readable without its lock at admission.
    epoch: AtomicU64,
    max_cooldown: Duration,
    /// See [`AdaptiveLimit::accepted_after`](crate::AdaptiveLimit::accepted_after).
    accepted_after: Option<Duration>,
}

/// The adaptive controller, and what it needs to judge accepted calls, under one lock:
/// an overload and the check for accepted calls cannot interleave.
#[derive(Debug)]
struct Controller {
    aimd: Aimd,
    /// Since when no call was admitted from the room and no overload came, while
    /// requests wait.
    quiet_since: Option<Instant>,
}

/// The outcome of asking for a slot.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A slot is taken.
    Admitted,
    /// In the room.
    Waiting(WaitGuard),
    /// Shed on arrival.
    Refused(QueueError),
}

impl Shared {
    pub(crate) fn new(settings: Settings, room: WaitQueue<Arc<WaitCell>>) -> Self {
        let metrics = QueueMetrics::new(&settings.name);
        let initial = settings.limit.initial();
        metrics.set_limit(initial);
        let adaptive = match settings.limit {
            Limit::Fixed(_) => None,
            Limit::Adaptive(adaptive) => Some(Adaptive {
                aimd: Mutex::new(Controller {
                    aimd: Aimd::new(adaptive),
                    quiet_since: None,
                }),
                epoch: AtomicU64::new(0),
                max_cooldown: adaptive.max_cooldown,
                accepted_after: adaptive.accepted_after,
            }),
        };
        Shared {
            state: SlotWord(AtomicUsize::new(0)),
            limit: AtomicUsize::new(initial),
            room: Mutex::new(room),
            adaptive,
            cooldown: Mutex::new(None),
            settings,
            metrics,
        }
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether calls' outcomes feed an adaptive limit.
    pub(crate) fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    /// The epoch a call admitted now belongs to.
    fn epoch(&self) -> u64 {
        self.adaptive
            .as_ref()
            .map_or(0, |adaptive| adaptive.epoch.load(Ordering::Relaxed))
    }

    /// The time left in the current cool-down, if one runs.
    pub(crate) fn cooling_down(&self, now: Instant) -> Option<Duration> {
        if self.state.load(Ordering::Acquire) & COOLING == 0 {
            return None;
        }
        let pause = *self.cooldown.lock().unwrap_or_else(PoisonError::into_inner);
        pause
            .map(|pause| pause.until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    fn lock(&self) -> MutexGuard<'_, WaitQueue<Arc<WaitCell>>> {
        // Nothing panics while the lock is held; if something ever did, the room is still
        // consistent (every operation on it completes before returning), so go on.
        self.room.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Slots in use.
    pub(crate) fn in_flight(&self) -> usize {
        self.state.load(Ordering::Acquire) >> SLOT_SHIFT
    }

    /// Waiters per level (urgent first) and in total.
    pub(crate) fn depths(&self) -> ([usize; 4], usize) {
        let room = self.lock();
        (Priority::ALL.map(|level| room.depth(level)), room.len())
    }

    /// Takes a free slot if nobody waits. Lock-free.
    pub(crate) fn try_acquire(&self) -> bool {
        let taken = self.take_free_slot();
        if taken {
            self.metrics.admitted();
        }
        taken
    }

    /// Takes a free slot if nobody waits and no cool-down runs, without recording it.
    fn take_free_slot(&self) -> bool {
        let max = self.limit.load(Ordering::Relaxed);
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & (WAITERS | COOLING) != 0 || state >> SLOT_SHIFT >= max {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state + ONE_SLOT,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Takes a free slot, or waits in the room, or is shed.
    pub(crate) fn acquire_or_wait(self: &Arc<Self>, priority: Priority, now: Instant) -> Admission {
        let mut room = self.lock();
        self.end_cooldown_if_due(now);
        if let Some(left) = self.cooldown_left(now)
            && self.settings.max_wait[priority.index()].is_some_and(|wait| left > wait)
        {
            // The pause outlasts what this request may wait: refuse it now, not after
            // its whole maximum wait.
            drop(room);
            self.metrics.shed(priority, ShedReason::CoolingDown);
            tracing::debug!(
                queue = %self.settings.name,
                %priority,
                cooldown_left_ms = left.as_millis(),
                "priority queue cooling down past the max wait: request shed"
            );
            return Admission::Refused(QueueError::CoolingDown {
                priority,
                retry_after: left,
            });
        }
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & WAITERS != 0 {
                break;
            }
            let (next, admitted) = if state & COOLING == 0
                && state >> SLOT_SHIFT < self.limit.load(Ordering::Relaxed)
            {
                (state + ONE_SLOT, true)
            } else {
                (state | WAITERS, false)
            };
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if admitted => {
                    drop(room);
                    self.metrics.admitted();
                    return Admission::Admitted;
                }
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        self.grow_if_accepted(room.is_empty());
        // A slot may be free while others wait (the limit just rose, a cool-down just
        // ended, or a raise by a completing call has not been handed out yet). If this
        // arrival would find no place, the free slots go to those already waiting first,
        // so that it is not refused, nor displaces one of them, beside a free slot.
        // Otherwise it takes its place first and competes for them by priority.
        let mut granted = if room.has_place(priority) {
            Vec::new()
        } else {
            self.hand_out(&mut room)
        };
        let cell = Arc::new(WaitCell::new());
        let (id, displaced) = match room.push(priority, now, Arc::clone(&cell)) {
            Push::Queued(id) => (id, None),
            Push::Displaced(id, level, victim) => (id, Some((level, victim))),
            Push::Rejected => {
                // Slots freed under the lock (a cool-down that ended above) still go out.
                // `pump_locked` clears the flag if the room is empty.
                granted.extend(self.pump_locked(&mut room));
                drop(room);
                wake_all(granted);
                self.metrics.shed(priority, ShedReason::Full);
                tracing::debug!(queue = %self.settings.name, %priority, "priority queue full: request shed");
                return Admission::Refused(QueueError::QueueFull {
                    priority,
                    retry_after: self.settings.retry_after,
                });
            }
        };
        self.metrics.set_depth(priority, room.depth(priority));
        let to_wake = displaced.map(|(level, victim)| {
            self.metrics.set_depth(level, room.depth(level));
            (level, victim.payload.settle(DISPLACED))
        });
        // Slots may be free while others wait (the limit rose, a cool-down ended): hand
        // them out in priority order, this arrival included.
        granted.extend(self.pump_locked(&mut room));
        drop(room);
        wake_all(granted);
        if let Some((level, waker)) = to_wake {
            self.metrics.shed(level, ShedReason::Displaced);
            tracing::debug!(
                queue = %self.settings.name,
                priority = %level,
                by = %priority,
                "priority queue full: waiter displaced by a higher priority"
            );
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        Admission::Waiting(WaitGuard {
            shared: Arc::clone(self),
            cell,
            id,
            priority,
            enqueued: now,
        })
    }

    /// Takes a free slot for a request that may not wait, or refuses it: it never enters
    /// the room. Under the room's lock, so that a cool-down that is over ends here.
    pub(crate) fn acquire_without_waiting(
        &self,
        priority: Priority,
        now: Instant,
    ) -> Result<(), QueueError> {
        let mut room = self.lock();
        self.end_cooldown_if_due(now);
        // Slots the end of a cool-down frees go to those already waiting first.
        let granted = self.pump_locked(&mut room);
        let cooldown = self.cooldown_left(now);
        let admitted = self.take_free_slot();
        drop(room);
        wake_all(granted);
        if admitted {
            self.metrics.admitted();
            return Ok(());
        }
        if let Some(left) = cooldown {
            self.metrics.shed(priority, ShedReason::CoolingDown);
            tracing::debug!(
                queue = %self.settings.name,
                %priority,
                cooldown_left_ms = left.as_millis(),
                "priority queue cooling down and the request may not wait: request shed"
            );
            return Err(QueueError::CoolingDown {
                priority,
                retry_after: left,
            });
        }
        self.metrics.shed(priority, ShedReason::Timeout);
        tracing::debug!(
            queue = %self.settings.name,
            %priority,
            "priority queue full and the request may not wait: request shed"
        );
        Err(QueueError::QueueTimeout {
            priority,
            waited: Duration::ZERO,
            retry_after: self.settings.retry_after,
        })
    }

    /// Gives a slot back, or hands it to the next waiter.
    pub(crate) fn release(&self) {
        let mut state = self.state.load(Ordering::Relaxed);
        while state & WAITERS == 0 {
            match self.state.compare_exchange_weak(
                state,
                state - ONE_SLOT,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.metrics.released();
                    return;
                }
                Err(actual) => state = actual,
            }
        }
        let mut room = self.lock();
        self.end_cooldown_if_due(Instant::now());
        let state = self.state.load(Ordering::Acquire);
        if state & COOLING != 0 || state >> SLOT_SHIFT > self.limit.load(Ordering::Relaxed) {
            // A cool-down runs, or the limit was lowered below the slots in use: the slot
            // goes back, and the waiters wait for the end of the cool-down or a free slot
            // under the new limit.
            self.state.fetch_sub(ONE_SLOT, Ordering::AcqRel);
            drop(room);
            self.metrics.released();
            return;
        }
        let Some((priority, entry)) = room.pop_next() else {
            // The room emptied (timeouts, cancellations) since the flag was read.
            self.state.fetch_and(!WAITERS, Ordering::AcqRel);
            self.state.fetch_sub(ONE_SLOT, Ordering::AcqRel);
            drop(room);
            self.metrics.released();
            return;
        };
        if room.is_empty() {
            self.state.fetch_and(!WAITERS, Ordering::AcqRel);
        }
        self.metrics.set_depth(priority, room.depth(priority));
        let waker = entry.payload.settle(GRANTED);
        self.restart_quiet();
        drop(room);
        self.metrics.waited(
            priority,
            Instant::now().saturating_duration_since(entry.enqueued),
        );
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Shared {
    /// Hands free slots to waiters, in priority order, while no cool-down runs and the
    /// limit allows; returns the wakers to wake once the lock is released.
    fn pump_locked(&self, room: &mut WaitQueue<Arc<WaitCell>>) -> Vec<Waker> {
        let wakers = self.hand_out(room);
        if room.is_empty() {
            self.state.fetch_and(!WAITERS, Ordering::AcqRel);
        }
        wakers
    }

    /// [`pump_locked`](Self::pump_locked), leaving the `WAITERS` flag set even if the room
    /// empties: for an arrival that is about to wait, which no lock-free admission may
    /// pass meanwhile.
    fn hand_out(&self, room: &mut WaitQueue<Arc<WaitCell>>) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let mut handed_out = false;
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state & COOLING != 0
                || state >> SLOT_SHIFT >= self.limit.load(Ordering::Relaxed)
                || room.is_empty()
            {
                break;
            }
            let Some((priority, entry)) = room.pop_next() else {
                break;
            };
            self.state.fetch_add(ONE_SLOT, Ordering::AcqRel);
            self.metrics.admitted();
            self.metrics.set_depth(priority, room.depth(priority));
            handed_out = true;
            self.metrics.waited(
                priority,
                Instant::now().saturating_duration_since(entry.enqueued),
            );
            if let Some(waker) = entry.payload.settle(GRANTED) {
                wakers.push(waker);
            }
        }
        if handed_out {
            self.restart_quiet();
        }
        wakers
    }

    /// A call was admitted from the room: the upstream has not yet shown it holds every
    /// call in flight.
    fn restart_quiet(&self) {
        if let Some(Adaptive {
            accepted_after: Some(_),
            aimd,
            ..
        }) = &self.adaptive
        {
            aimd.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .quiet_since = Some(Instant::now());
        }
    }

    /// A request is about to wait (the room's lock is held; `room_empty`: nobody waited
    /// before it). If every slot is in use, none was handed out for `accepted_after` and
    /// no overload came since, the upstream holds the whole limit: grow it (see
    /// [`AdaptiveLimit::accepted_after`](crate::AdaptiveLimit::accepted_after)).
    fn grow_if_accepted(&self, room_empty: bool) {
        let Some(Adaptive {
            aimd,
            accepted_after: Some(after),
            ..
        }) = &self.adaptive
        else {
            return;
        };
        let change = {
            let mut controller = aimd.lock().unwrap_or_else(PoisonError::into_inner);
            // Read under the lock, so that the quiet time never moves backwards.
            let now = Instant::now();
            let quiet_for = match controller.quiet_since {
                Some(since) if !room_empty => now.saturating_duration_since(since),
                // Nobody waited (calls may have been admitted a moment ago without the
                // room), or nothing started the clock: it starts now.
                _ => {
                    controller.quiet_since = Some(now);
                    return;
                }
            };
            let state = self.state.load(Ordering::Acquire);
            let in_flight = state >> SLOT_SHIFT;
            if quiet_for < *after
                || state & COOLING != 0
                || in_flight < self.limit.load(Ordering::Relaxed)
            {
                return;
            }
            controller.quiet_since = Some(now);
            let change = controller.aimd.on_accepted(in_flight);
            if let Some(change) = change {
                self.limit.store(change.to, Ordering::Release);
            }
            change
        };
        if let Some(change) = change {
            self.publish_limit();
            tracing::debug!(
                queue = %self.settings.name,
                from = change.from,
                to = change.to,
                "priority queue: the upstream holds every call in flight: limit raised"
            );
        }
    }

    /// Sets the `queue_limit` gauge to the limit in force, after a change.
    ///
    /// Outside the controller's lock (the recorder is the user's code), so changes may be
    /// recorded out of order: each writer reads the limit again after setting the gauge
    /// and sets it again if the limit moved meanwhile. The last value set is then the
    /// limit in force: a change made after it is followed by its own writer's setting.
    fn publish_limit(&self) {
        let mut limit = self.limit.load(Ordering::Acquire);
        loop {
            self.metrics.set_limit(limit);
            let now = self.limit.load(Ordering::Acquire);
            if now == limit {
                return;
            }
            limit = now;
        }
    }

    /// Hands free slots to waiters after the limit rose.
    ///
    /// Always under the room's lock, never after a lock-free look at `WAITERS`: an
    /// arrival decides to wait (it reads the limit and sets `WAITERS`) under that lock,
    /// so either it ran first and its waiter is in the room now, or it runs after and
    /// reads the raised limit. A lock-free look could see no waiters yet while the arrival
    /// still read the old limit, and leave it waiting beside a free slot until the next
    /// release. The limit rises at most once per window of calls: the lock costs nothing
    /// that matters.
    fn pump(&self) {
        let mut room = self.lock();
        let granted = self.pump_locked(&mut room);
        drop(room);
        wake_all(granted);
    }

    /// When the current cool-down ends, if one runs.
    fn cooldown_end(&self) -> Option<Instant> {
        if self.state.load(Ordering::Acquire) & COOLING == 0 {
            return None;
        }
        self.cooldown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|pause| pause.until)
    }

    /// What is left of the cool-down (the room's lock is held).
    fn cooldown_left(&self, now: Instant) -> Option<Duration> {
        if self.state.load(Ordering::Acquire) & COOLING == 0 {
            return None;
        }
        let pause = *self.cooldown.lock().unwrap_or_else(PoisonError::into_inner);
        pause.map(|pause| pause.until.saturating_duration_since(now))
    }

    /// Ends the cool-down if it is due (the room's lock is held).
    fn end_cooldown_if_due(&self, now: Instant) {
        if self.state.load(Ordering::Acquire) & COOLING == 0 {
            return;
        }
        {
            let mut pause = self.cooldown.lock().unwrap_or_else(PoisonError::into_inner);
            if pause.is_some_and(|pause| pause.until > now) {
                return;
            }
            *pause = None;
            self.state.fetch_and(!COOLING, Ordering::AcqRel);
        }
        self.publish_cooldown();
        tracing::debug!(queue = %self.settings.name, "priority queue: cool-down over");
    }

    /// Sets the `queue_cooldown_seconds` gauge to the cool-down in progress (0 if none),
    /// after a change; as [`publish_limit`](Self::publish_limit), a writer that raced
    /// with a later change sets it again.
    fn publish_cooldown(&self) {
        let length = || {
            self.cooldown
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .map_or(Duration::ZERO, |pause| pause.length)
        };
        let mut published = length();
        loop {
            self.metrics.set_cooldown(published);
            let now = length();
            if now == published {
                return;
            }
            published = now;
        }
    }

    /// Ends the cool-down if it is due and hands out the free slots.
    fn end_cooldown(&self) {
        let mut room = self.lock();
        self.end_cooldown_if_due(Instant::now());
        let granted = self.pump_locked(&mut room);
        drop(room);
        wake_all(granted);
    }

    /// Starts (or extends) a cool-down of `wait`, capped; a timer task ends it.
    fn start_cooldown(&self, wait: Duration, max_cooldown: Duration) {
        let wait = wait.min(max_cooldown);
        if wait.is_zero() {
            return;
        }
        let now = Instant::now();
        // A pause too long to represent (a cap of Duration::MAX) lasts a year.
        let end = now
            .checked_add(wait)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(now);
        let waiters = {
            let room = self.lock();
            let mut pause = self.cooldown.lock().unwrap_or_else(PoisonError::into_inner);
            if pause.is_some_and(|pause| pause.until >= end) {
                return;
            }
            *pause = Some(Pause {
                until: end,
                length: wait,
            });
            self.state.fetch_or(COOLING, Ordering::AcqRel);
            // Those already waiting may wait for a slot alone, with no timer for the end
            // of the pause: they look again and wait for its end too.
            room.payloads()
                .filter_map(|cell| cell.waker())
                .collect::<Vec<_>>()
        };
        wake_all(waiters);
        self.metrics.cooldown_started();
        self.publish_cooldown();
        tracing::warn!(
            queue = %self.settings.name,
            cooldown_ms = wait.as_millis(),
            "priority queue: the upstream asked for a pause (Retry-After): admission paused"
        );
        // No timer task: the waiters' futures wait for the end (`WaitGuard::poll_cooldown`;
        // those that waited before it began were woken above to do so), and an arrival or
        // a release after the end ends it too.
    }

    /// Feeds one completed call's load signal to the adaptive limit. `in_flight` counts
    /// the call itself.
    pub(crate) fn record(self: &Arc<Self>, signal: Signal, admitted_epoch: u64) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        if signal == Signal::Ignore {
            return;
        }
        let in_flight = self.in_flight();
        let change = {
            let mut controller = adaptive.aimd.lock().unwrap_or_else(PoisonError::into_inner);
            let change = if signal.is_overload() {
                if adaptive.accepted_after.is_some() {
                    controller.quiet_since = Some(Instant::now());
                }
                controller.aimd.on_overload(admitted_epoch)
            } else {
                controller.aimd.on_success(in_flight)
            };
            adaptive
                .epoch
                .store(controller.aimd.epoch(), Ordering::Relaxed);
            if let Some(change) = change {
                self.limit.store(change.to, Ordering::Release);
            }
            change
        };
        if let Some(change) = change {
            self.publish_limit();
            if change.to < change.from {
                tracing::warn!(
                    queue = %self.settings.name,
                    from = change.from,
                    to = change.to,
                    "priority queue: upstream overloaded: limit lowered"
                );
            } else {
                tracing::debug!(
                    queue = %self.settings.name,
                    from = change.from,
                    to = change.to,
                    "priority queue: limit raised"
                );
                self.pump();
            }
        }
        if let Signal::OverloadRetryAfter(wait) = signal {
            self.start_cooldown(wait, adaptive.max_cooldown);
        }
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// A slot held by one request; dropping it releases the slot.
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Arc<Shared>,
    /// The adaptive limit's epoch when the slot was taken.
    epoch: u64,
}

impl Permit {
    /// Wraps a slot that was just taken.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let epoch = shared.epoch();
        Permit { shared, epoch }
    }

    /// Whether this call's outcome is classified (the limit is adaptive).
    #[inline]
    pub(crate) fn classifies(&self) -> bool {
        self.shared.is_adaptive()
    }

    /// Feeds this call's load signal to the adaptive limit.
    pub(crate) fn record(&self, signal: Signal) {
        self.shared.record(signal, self.epoch);
    }

    /// The request held this slot past its maximum wait while the inner service was not
    /// ready: the slot goes back and the request is shed.
    pub(crate) fn time_out(self, priority: Priority, arrived: Instant, now: Instant) -> BoxError {
        let waited = now.saturating_duration_since(arrived);
        let retry_after = self.shared.settings.retry_after;
        self.shared.metrics.shed(priority, ShedReason::Timeout);
        tracing::debug!(
            queue = %self.shared.settings.name,
            %priority,
            waited_ms = waited.as_millis(),
            "priority queue: inner service not ready within the max wait: request shed"
        );
        drop(self);
        QueueError::QueueTimeout {
            priority,
            waited,
            retry_after,
        }
        .into()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A place in the waiting room; dropping it leaves the room (or passes on a slot that was
/// granted but never used).
#[derive(Debug)]
pub(crate) struct WaitGuard {
    shared: Arc<Shared>,
    cell: Arc<WaitCell>,
    id: u64,
    priority: Priority,
    enqueued: Instant,
}

impl WaitGuard {
    /// When the waiter arrived.
    pub(crate) fn enqueued(&self) -> Instant {
        self.enqueued
    }

    /// The waiter's level.
    pub(crate) fn priority(&self) -> Priority {
        self.priority
    }

    fn outcome(&self, state: u8) -> Option<Result<Permit, QueueError>> {
        match state {
            GRANTED => {
                self.cell.state.store(SETTLED, Ordering::Relaxed);
                Some(Ok(Permit::new(Arc::clone(&self.shared))))
            }
            DISPLACED => {
                self.cell.state.store(SETTLED, Ordering::Relaxed);
                Some(Err(QueueError::QueueFull {
                    priority: self.priority,
                    retry_after: self.shared.settings.retry_after,
                }))
            }
            _ => None,
        }
    }

    /// Checks for a slot or a displacement, registering the task to be woken otherwise.
    pub(crate) fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Result<Permit, QueueError>> {
        if let Some(outcome) = self.outcome(self.cell.state.load(Ordering::Acquire)) {
            return Poll::Ready(outcome);
        }
        {
            let mut waker = self
                .cell
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &mut *waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        match self.outcome(self.cell.state.load(Ordering::Acquire)) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }

    /// While a cool-down keeps this waiter out, waits for its end in `sleep`; at the end,
    /// ends it and hands out the free slots, and is ready. Pending when no cool-down runs.
    pub(crate) fn poll_cooldown(
        &self,
        mut sleep: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let Some(end) = self.shared.cooldown_end() else {
            sleep.set(None);
            return Poll::Pending;
        };
        match sleep.as_mut().as_pin_mut() {
            Some(timer) if timer.deadline() == end => {}
            Some(timer) => timer.reset(end),
            None => sleep.set(Some(tokio::time::sleep_until(end))),
        }
        let Some(timer) = sleep.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        std::task::ready!(timer.poll(cx));
        sleep.set(None);
        self.shared.end_cooldown();
        Poll::Ready(())
    }

    /// The waiter's maximum wait is over: leave the room, unless a slot came just in time.
    pub(crate) fn time_out(&self, now: Instant) -> Result<Permit, QueueError> {
        let mut room = self.shared.lock();
        let state = self.cell.state.load(Ordering::Acquire);
        if let Some(outcome) = self.outcome(state) {
            return outcome;
        }
        self.leave(&mut room);
        drop(room);
        let waited = now.saturating_duration_since(self.enqueued);
        self.shared.metrics.shed(self.priority, ShedReason::Timeout);
        tracing::debug!(
            queue = %self.shared.settings.name,
            priority = %self.priority,
            waited_ms = waited.as_millis(),
            "priority queue wait exceeded: request shed"
        );
        Err(QueueError::QueueTimeout {
            priority: self.priority,
            waited,
            retry_after: self.shared.settings.retry_after,
        })
    }

    /// Removes this waiter from the room (the lock is held, the cell says waiting).
    fn leave(&self, room: &mut WaitQueue<Arc<WaitCell>>) {
        self.cell.state.store(SETTLED, Ordering::Relaxed);
        if room.remove(self.priority, self.id).is_some() {
            self.shared
                .metrics
                .set_depth(self.priority, room.depth(self.priority));
        }
        if room.is_empty() {
            self.shared.state.fetch_and(!WAITERS, Ordering::AcqRel);
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.cell.state.load(Ordering::Acquire) == SETTLED {
            return;
        }
        let mut room = self.shared.lock();
        match self.cell.state.load(Ordering::Acquire) {
            WAITING => self.leave(&mut room),
            GRANTED => {
                // A slot was handed over but the waiter is gone: pass it on.
                self.cell.state.store(SETTLED, Ordering::Relaxed);
                drop(room);
                self.shared.release();
            }
            _ => {}
        }
    }
}
