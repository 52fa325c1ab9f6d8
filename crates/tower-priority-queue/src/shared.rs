//! State shared by every clone of a queue service: the slots and the waiting room.
//!
//! # Slots
//!
//! One atomic word holds the number of slots in use (shifted left by one) and a flag that
//! says someone waits. While nobody waits and a slot is free, admission is one
//! compare-and-swap and release is one more: no lock, no clock read, no allocation.
//!
//! The flag is only set (under the room's lock) when every slot is taken, and it stays set
//! while anyone waits. While it is set, a finishing request does not give its slot back:
//! under the lock it hands the slot to the next waiter, so a slot can never be taken by a
//! newcomer ahead of a waiter, and the count of slots in use never moves. The flag is
//! cleared, under the lock, when the room becomes empty.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;
use tower::BoxError;

use crate::core::{Push, WaitQueue};
use crate::error::QueueError;
use crate::metrics::{QueueMetrics, ShedReason};
use crate::priority::Priority;

const WAITERS: usize = 1;
const ONE_SLOT: usize = 2;

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
    pub(crate) max_in_flight: usize,
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
    room: Mutex<WaitQueue<Arc<WaitCell>>>,
    pub(crate) settings: Settings,
    pub(crate) metrics: QueueMetrics,
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
        Shared {
            state: SlotWord(AtomicUsize::new(0)),
            room: Mutex::new(room),
            settings,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, WaitQueue<Arc<WaitCell>>> {
        // Nothing panics while the lock is held; if something ever did, the room is still
        // consistent (every operation on it completes before returning), so go on.
        self.room.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Slots in use.
    pub(crate) fn in_flight(&self) -> usize {
        self.state.load(Ordering::Acquire) >> 1
    }

    /// Waiters per level (urgent first) and in total.
    pub(crate) fn depths(&self) -> ([usize; 4], usize) {
        let room = self.lock();
        (Priority::ALL.map(|level| room.depth(level)), room.len())
    }

    /// Takes a free slot if nobody waits. Lock-free.
    pub(crate) fn try_acquire(&self) -> bool {
        let max = self.settings.max_in_flight;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & WAITERS != 0 || state >> 1 >= max {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state + ONE_SLOT,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.metrics.admitted();
                    return true;
                }
                Err(actual) => state = actual,
            }
        }
    }

    /// Takes a free slot, or waits in the room, or is shed.
    pub(crate) fn acquire_or_wait(self: &Arc<Self>, priority: Priority, now: Instant) -> Admission {
        let mut room = self.lock();
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & WAITERS != 0 {
                break;
            }
            let (next, admitted) = if state >> 1 < self.settings.max_in_flight {
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
        let cell = Arc::new(WaitCell::new());
        let (id, displaced) = match room.push(priority, now, Arc::clone(&cell)) {
            Push::Queued(id) => (id, None),
            Push::Displaced(id, level, victim) => (id, Some((level, victim))),
            Push::Rejected => {
                if room.is_empty() {
                    self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                }
                drop(room);
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
        drop(room);
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

/// A slot held by one request; dropping it releases the slot.
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Arc<Shared>,
}

impl Permit {
    /// Wraps a slot that was just taken.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Permit { shared }
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
