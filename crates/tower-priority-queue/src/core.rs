//! The waiting room: which waiter is served next, who is shed when it is full.
//!
//! Pure data structure, no tower, no runtime, no clock: every operation that needs the
//! time takes it as a parameter, so the scheduling rules are tested deterministically.
//!
//! # Order of service: priority with aging
//!
//! Each waiter gets a key when it arrives: its arrival time plus `aging` for every level it
//! sits below urgent (urgent +0, high +1·aging, normal +2·aging, low +3·aging). The next
//! free slot goes to the waiter with the smallest key; ties go to the higher level. Within
//! a level the keys grow with arrival, so each level is FIFO.
//!
//! This is strict priority among requests that arrive close together, and no starvation
//! over time: a low request that arrived at `t` is served before every urgent request that
//! arrives after `t + 3·aging`, every high request after `t + 2·aging` and every normal
//! request after `t + aging`. Its wait is therefore bounded by `3·aging` plus the time to
//! serve the waiters that were already ahead of it, however much urgent work keeps coming.
//! With `aging = Duration::MAX` the order is strict priority.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::priority::Priority;

/// One waiter in the room.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    /// Unique within one queue.
    pub(crate) id: u64,
    /// When it arrived.
    pub(crate) enqueued: Instant,
    /// Service order: smaller is served first.
    key: u64,
    /// What the caller attached (the waker cell in the service; anything in tests).
    pub(crate) payload: T,
}

/// The result of [`WaitQueue::push`].
#[derive(Debug)]
pub(crate) enum Push<T> {
    /// The arrival waits, under this id.
    Queued(u64),
    /// The arrival waits under this id, and took the place of a lower-priority waiter,
    /// which leaves the queue and must be told it was shed.
    Displaced(u64, Priority, Entry<T>),
    /// The room (or the arrival's level) is full and nobody below it can be displaced.
    Rejected,
}

/// Sizes and aging of a waiting room.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most waiters in total.
    pub(crate) capacity: usize,
    /// Most waiters per level, indexed by [`Priority::index`].
    pub(crate) level_capacity: [usize; 4],
    /// How much earlier each level counts than the one below it.
    pub(crate) aging: Duration,
}

/// A bounded, four-level waiting room.
#[derive(Debug)]
pub(crate) struct WaitQueue<T> {
    levels: [VecDeque<Entry<T>>; 4],
    len: usize,
    limits: Limits,
    aging_nanos: u64,
    epoch: Instant,
    next_id: u64,
}

impl<T> WaitQueue<T> {
    /// An empty room; `epoch` is any instant not after the first arrival.
    pub(crate) fn new(limits: Limits, epoch: Instant) -> Self {
        WaitQueue {
            levels: Default::default(),
            len: 0,
            limits,
            aging_nanos: u64::try_from(limits.aging.as_nanos()).unwrap_or(u64::MAX),
            epoch,
            next_id: 0,
        }
    }

    /// Waiters in total.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether nobody waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waiters at one level.
    pub(crate) fn depth(&self, priority: Priority) -> usize {
        self.levels[priority.index()].len()
    }

    /// Whether an arrival at `priority` would wait without displacing anyone: its level
    /// and the room both have a place.
    pub(crate) fn has_place(&self, priority: Priority) -> bool {
        let index = priority.index();
        self.levels[index].len() < self.limits.level_capacity[index]
            && self.len < self.limits.capacity
    }

    /// Lets an arrival wait, displacing the newest waiter of the lowest level below it if
    /// the room is full.
    pub(crate) fn push(&mut self, priority: Priority, now: Instant, payload: T) -> Push<T> {
        let index = priority.index();
        if self.levels[index].len() >= self.limits.level_capacity[index] {
            return Push::Rejected;
        }
        let mut displaced = None;
        if self.len >= self.limits.capacity {
            // Lowest level first; only levels strictly below the arrival's.
            let victim_level = (index + 1..self.levels.len())
                .rev()
                .find(|&level| !self.levels[level].is_empty());
            let Some(level) = victim_level else {
                return Push::Rejected;
            };
            let Some(victim) = self.levels[level].pop_back() else {
                return Push::Rejected;
            };
            self.len -= 1;
            displaced = Some((Priority::ALL[level], victim));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let since_epoch =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let key = since_epoch.saturating_add(
            self.aging_nanos
                .saturating_mul(priority.rank_below_urgent()),
        );
        self.levels[index].push_back(Entry {
            id,
            enqueued: now,
            key,
            payload,
        });
        self.len += 1;
        match displaced {
            Some((level, victim)) => Push::Displaced(id, level, victim),
            None => Push::Queued(id),
        }
    }

    /// Takes the waiter that the next free slot goes to.
    pub(crate) fn pop_next(&mut self) -> Option<(Priority, Entry<T>)> {
        let mut best: Option<(usize, u64)> = None;
        for (index, level) in self.levels.iter().enumerate() {
            if let Some(head) = level.front()
                && best.is_none_or(|(_, key)| head.key < key)
            {
                best = Some((index, head.key));
            }
        }
        let (index, _) = best?;
        let entry = self.levels[index].pop_front()?;
        self.len -= 1;
        Some((Priority::ALL[index], entry))
    }

    /// What every waiter attached, in no particular order.
    pub(crate) fn payloads(&self) -> impl Iterator<Item = &T> {
        self.levels
            .iter()
            .flat_map(|level| level.iter().map(|entry| &entry.payload))
    }

    /// Removes a waiter that gave up (cancelled or timed out).
    pub(crate) fn remove(&mut self, priority: Priority, id: u64) -> Option<Entry<T>> {
        let level = &mut self.levels[priority.index()];
        let position = level.iter().position(|entry| entry.id == id)?;
        let entry = level.remove(position)?;
        self.len -= 1;
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(capacity: usize, aging: Duration) -> Limits {
        Limits {
            capacity,
            level_capacity: [capacity; 4],
            aging,
        }
    }

    fn queued<T>(push: Push<T>) -> u64 {
        match push {
            Push::Queued(id) => id,
            other => panic!("expected Queued, got {}", describe(&other)),
        }
    }

    fn describe<T>(push: &Push<T>) -> &'static str {
        match push {
            Push::Queued(_) => "Queued",
            Push::Displaced(..) => "Displaced",
            Push::Rejected => "Rejected",
        }
    }

    fn order(queue: &mut WaitQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop_next().map(|(_, entry)| entry.payload)).collect()
    }

    #[test]
    fn urgent_after_three_lows_is_served_first() {
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(limits(8, Duration::from_secs(10)), t0);
        queued(queue.push(Priority::Low, t0, "low1"));
        queued(queue.push(Priority::Low, t0 + Duration::from_millis(1), "low2"));
        queued(queue.push(Priority::Low, t0 + Duration::from_millis(2), "low3"));
        queued(queue.push(Priority::Urgent, t0 + Duration::from_millis(3), "urgent"));
        assert_eq!(order(&mut queue), ["urgent", "low1", "low2", "low3"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn fifo_within_a_level_even_at_the_same_instant() {
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(limits(8, Duration::from_secs(1)), t0);
        for name in ["a", "b", "c", "d"] {
            queued(queue.push(Priority::High, t0, name));
        }
        assert_eq!(order(&mut queue), ["a", "b", "c", "d"]);
    }

    #[test]
    fn full_room_displaces_the_newest_of_the_lowest_level() {
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(limits(3, Duration::MAX), t0);
        queued(queue.push(Priority::Normal, t0, "normal"));
        queued(queue.push(Priority::Low, t0, "low-old"));
        queued(queue.push(Priority::Low, t0, "low-new"));
        match queue.push(Priority::High, t0, "high") {
            Push::Displaced(_, level, victim) => {
                assert_eq!(level, Priority::Low);
                assert_eq!(victim.payload, "low-new");
            }
            other => panic!("expected Displaced, got {}", describe(&other)),
        }
        assert_eq!(queue.len(), 3);
        assert_eq!(order(&mut queue), ["high", "normal", "low-old"]);
    }

    #[test]
    fn full_room_rejects_an_arrival_with_nobody_below_it() {
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(limits(2, Duration::MAX), t0);
        queued(queue.push(Priority::Normal, t0, "n1"));
        queued(queue.push(Priority::Normal, t0, "n2"));
        assert!(matches!(
            queue.push(Priority::Normal, t0, "n3"),
            Push::Rejected
        ));
        assert!(matches!(
            queue.push(Priority::Low, t0, "low"),
            Push::Rejected
        ));
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn level_capacity_rejects_the_arrival() {
        let t0 = Instant::now();
        let mut limits = limits(10, Duration::MAX);
        limits.level_capacity[Priority::Low.index()] = 1;
        let mut queue = WaitQueue::new(limits, t0);
        queued(queue.push(Priority::Low, t0, "low1"));
        assert!(matches!(
            queue.push(Priority::Low, t0, "low2"),
            Push::Rejected
        ));
        queued(queue.push(Priority::Normal, t0, "normal"));
    }

    #[test]
    fn zero_capacity_rejects_everything() {
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(limits(0, Duration::MAX), t0);
        assert!(matches!(
            queue.push(Priority::Urgent, t0, ()),
            Push::Rejected
        ));
    }

    #[test]
    fn remove_takes_out_exactly_one_waiter() {
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(limits(8, Duration::MAX), t0);
        let a = queued(queue.push(Priority::Normal, t0, "a"));
        queued(queue.push(Priority::Normal, t0, "b"));
        assert!(queue.remove(Priority::High, a).is_none());
        assert_eq!(
            queue.remove(Priority::Normal, a).map(|e| e.payload),
            Some("a")
        );
        assert!(queue.remove(Priority::Normal, a).is_none());
        assert_eq!(queue.len(), 1);
        assert_eq!(order(&mut queue), ["b"]);
    }

    /// One slot, a new urgent request every second that takes one second to serve, and one
    /// low request: with aging `a` the low request is served within `3a` plus the backlog
    /// that was ahead of it.
    #[test]
    fn low_priority_is_not_starved_by_a_steady_urgent_stream() {
        let aging = Duration::from_secs(5);
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(limits(1000, aging), t0);
        // Two urgent requests already wait when the low one arrives.
        queued(queue.push(Priority::Urgent, t0, "urgent"));
        queued(queue.push(Priority::Urgent, t0, "urgent"));
        queued(queue.push(Priority::Low, t0, "low"));
        let mut served_low_at = None;
        for second in 1..=100u64 {
            let now = t0 + Duration::from_secs(second);
            // Two urgent arrivals per second: more than the one slot can serve.
            queued(queue.push(Priority::Urgent, now, "urgent"));
            queued(queue.push(Priority::Urgent, now, "urgent"));
            let (_, entry) = queue.pop_next().expect("work is waiting");
            if entry.payload == "low" {
                served_low_at = Some(second);
                break;
            }
        }
        let served = served_low_at.expect("the low request was starved");
        // Urgent arrivals up to t0 + 3a (inclusive of ties, which go to urgent) are ahead.
        assert!(
            served <= 3 * aging.as_secs() * 2 + 3,
            "served at {served} s"
        );
        // And strict priority would have starved it.
        let mut strict = WaitQueue::new(limits(1000, Duration::MAX), t0);
        queued(strict.push(Priority::Low, t0, "low"));
        for second in 1..=100u64 {
            let now = t0 + Duration::from_secs(second);
            queued(strict.push(Priority::Urgent, now, "urgent"));
            queued(strict.push(Priority::Urgent, now, "urgent"));
            let (_, entry) = strict.pop_next().expect("work is waiting");
            assert_eq!(entry.payload, "urgent");
        }
    }

    proptest! {
        /// Whatever happens, the room never exceeds its bounds, `len` matches the levels,
        /// and every pushed waiter leaves exactly once (served, displaced or removed).
        #[test]
        fn bounded_and_nothing_lost(
            ops in proptest::collection::vec((0u8..4, 0usize..4, 0u64..50), 1..200),
            capacity in 0usize..8,
            level_cap in 0usize..6,
        ) {
            let t0 = Instant::now();
            let limits = Limits { capacity, level_capacity: [level_cap; 4], aging: Duration::from_millis(20) };
            let mut queue = WaitQueue::new(limits, t0);
            let mut live: Vec<(Priority, u64)> = Vec::new();
            let mut left = 0usize;
            let mut pushed = 0usize;
            for (op, level, millis) in ops {
                let now = t0 + Duration::from_millis(millis);
                let priority = Priority::ALL[level];
                match op {
                    0 | 1 => match queue.push(priority, now, ()) {
                        Push::Queued(id) => { pushed += 1; live.push((priority, id)); }
                        Push::Displaced(id, victim_level, victim) => {
                            prop_assert!(victim_level < priority);
                            pushed += 1;
                            left += 1;
                            live.retain(|&(_, other)| other != victim.id);
                            live.push((priority, id));
                        }
                        Push::Rejected => {}
                    },
                    2 => if let Some((_, entry)) = queue.pop_next() {
                        left += 1;
                        live.retain(|&(_, other)| other != entry.id);
                    },
                    _ => if let Some(&(priority, id)) = live.first() {
                        prop_assert!(queue.remove(priority, id).is_some());
                        left += 1;
                        live.remove(0);
                    },
                }
                prop_assert!(queue.len() <= capacity);
                for level in Priority::ALL {
                    prop_assert!(queue.depth(level) <= level_cap);
                }
                let sum: usize = Priority::ALL.iter().map(|&p| queue.depth(p)).sum();
                prop_assert_eq!(sum, queue.len());
                prop_assert_eq!(queue.len(), live.len());
                prop_assert_eq!(pushed, left + live.len());
            }
        }
    }
}
