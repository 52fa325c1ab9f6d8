//! What an ideal gateway could do with the same workload in front of the same kind of
//! provider: a floor under the fallback share, to read the preset's figure against.
//!
//! The model is a discrete-event replay of the workload's arrivals, with no I/O and no
//! clock. Its gateway knows what the real one has to find out or cannot do:
//!
//! - its in-flight limit is the provider's capacity from the first second: no slow
//!   start, no probing, no 429;
//! - one call per key at a time (single-flight): every request for a key that is being
//!   called waits for that call;
//! - calls start in arrival order (first come, first served), a retry ahead of every
//!   waiting call;
//! - a call starts only for requests whose deadline leaves the median call time, as the
//!   preset's start-in-time rule; a request left with less gets the fallback then;
//! - a failed call is retried at once, up to the preset's attempts, while one of its
//!   requests still has time;
//! - every call runs to its end, and a success fills the cache (TTL from its end) even
//!   when each of its requests has already passed its deadline;
//! - a request gets a real answer if a success for its key comes by its deadline, and
//!   the fallback otherwise.
//!
//! The provider is the simulator's: latency uniform in `[min, max]`, a failure after the
//! latency with the configured probability, independently. One replay is one draw of the
//! provider's latencies and failures; [`fallback_share`] averages many.
//!
//! Other orders (newest first, earliest deadline first, the key with the most waiting
//! requests first) were tried in this model and gave fallback shares within a point of
//! first come, first served on the seed's workload: the floor comes from the capacity
//! and the deadline, not from the order.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::workload::{Arrival, SplitMix64};

/// The provider and the gateway's settings the model replays the workload against.
/// Times in (unscaled) seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Model {
    /// Calls the provider serves at once; `None` for unlimited.
    pub(crate) capacity: Option<usize>,
    /// The shortest call.
    pub(crate) latency_min: f64,
    /// The longest call.
    pub(crate) latency_max: f64,
    /// The share of calls that fail, after their latency.
    pub(crate) failure_rate: f64,
    /// Each request's deadline from arrival.
    pub(crate) deadline: f64,
    /// Calls per request, the first included.
    pub(crate) attempts: u32,
    /// How long a success stays in the cache.
    pub(crate) ttl: f64,
}

#[cfg(test)]
impl Model {
    /// The seed's provider (capacity 8, 45-90 s, 30% failures) and the preset's
    /// defaults (150 s deadline, 3 attempts, one-hour TTL).
    pub(crate) fn seed() -> Self {
        Self {
            capacity: Some(8),
            latency_min: 45.0,
            latency_max: 90.0,
            failure_rate: 0.3,
            deadline: 150.0,
            attempts: 3,
            ttl: 3600.0,
        }
    }
}

impl Model {
    /// The time a call is likely to need: the median latency, as the preset learns it.
    fn call_estimate(&self) -> f64 {
        f64::midpoint(self.latency_min, self.latency_max)
    }
}

/// The mean, lowest and highest fallback share over the draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Floor {
    pub(crate) mean: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) draws: u64,
}

/// The ideal gateway's fallback share of `arrivals`, over `draws` draws of the provider
/// (draw `d` seeded with `seed + d`).
pub(crate) fn fallback_share(model: &Model, arrivals: &[Arrival], seed: u64, draws: u64) -> Floor {
    let draws = draws.max(1);
    let shares: Vec<f64> = (0..draws)
        .map(|d| replay(model, arrivals, seed.wrapping_add(d)).fallback_share())
        .collect();
    Floor {
        mean: shares.iter().sum::<f64>() / shares.len() as f64,
        min: shares.iter().copied().fold(f64::INFINITY, f64::min),
        max: shares.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        draws,
    }
}

/// The floor as the results' JSON has it.
pub(crate) fn to_json(floor: &Floor) -> serde_json::Value {
    serde_json::json!({
        "mean": floor.mean,
        "min": floor.min,
        "max": floor.max,
        "draws": floor.draws,
    })
}

/// How one replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Replay {
    pub(crate) requests: usize,
    pub(crate) hits: usize,
    pub(crate) real: usize,
    pub(crate) fallbacks: usize,
    pub(crate) calls: usize,
}

impl Replay {
    fn fallback_share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.fallbacks as f64 / self.requests as f64
        }
    }
}

/// A point in the replay: an arrival, or the end of a call for a key.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Arrival { index: usize },
    CallEnds { key: (u32, u32), failed: bool },
}

/// An event at a time; the heap pops the earliest first, ties in the order pushed.
#[derive(Debug, Clone, Copy)]
struct Timed {
    at: f64,
    order: u64,
    event: Event,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Timed {}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.order.cmp(&self.order))
    }
}

/// The requests waiting for one key's answer, with their deadlines.
#[derive(Debug, Default)]
struct Flight {
    waiting: Vec<f64>,
    calls: u32,
}

struct Replayer<'a> {
    model: &'a Model,
    rng: SplitMix64,
    events: BinaryHeap<Timed>,
    order: u64,
    flights: HashMap<(u32, u32), Flight>,
    queue: VecDeque<(u32, u32)>,
    running: usize,
    cached_until: HashMap<(u32, u32), f64>,
    out: Replay,
}

impl Replayer<'_> {
    fn push(&mut self, at: f64, event: Event) {
        self.order += 1;
        self.events.push(Timed {
            at,
            order: self.order,
            event,
        });
    }

    /// Starts calls while the provider has room, first come first served.
    fn start_calls(&mut self, now: f64) {
        let estimate = self.model.call_estimate();
        while self.model.capacity.is_none_or(|c| self.running < c) {
            let Some(key) = self.queue.pop_front() else {
                return;
            };
            let Entry::Occupied(mut flight) = self.flights.entry(key) else {
                continue;
            };
            let before = flight.get().waiting.len();
            flight
                .get_mut()
                .waiting
                .retain(|&deadline| deadline - now >= estimate);
            self.out.fallbacks += before - flight.get().waiting.len();
            if flight.get().waiting.is_empty() {
                flight.remove();
                continue;
            }
            flight.get_mut().calls += 1;
            self.running += 1;
            self.out.calls += 1;
            let latency = self.model.latency_min
                + self.rng.next_f64() * (self.model.latency_max - self.model.latency_min);
            let failed = self.rng.next_f64() < self.model.failure_rate;
            self.push(now + latency, Event::CallEnds { key, failed });
        }
    }

    fn arrive(&mut self, now: f64, key: (u32, u32)) {
        self.out.requests += 1;
        if self
            .cached_until
            .get(&key)
            .is_some_and(|&until| until > now)
        {
            self.out.hits += 1;
            self.out.real += 1;
            return;
        }
        let deadline = now + self.model.deadline;
        match self.flights.entry(key) {
            Entry::Occupied(mut flight) => flight.get_mut().waiting.push(deadline),
            Entry::Vacant(slot) => {
                slot.insert(Flight {
                    waiting: vec![deadline],
                    calls: 0,
                });
                self.queue.push_back(key);
            }
        }
        self.start_calls(now);
    }

    fn call_ends(&mut self, now: f64, key: (u32, u32), failed: bool) {
        self.running -= 1;
        if let Entry::Occupied(mut flight) = self.flights.entry(key) {
            let waiting = std::mem::take(&mut flight.get_mut().waiting);
            let (in_time, late): (Vec<f64>, Vec<f64>) =
                waiting.into_iter().partition(|&deadline| deadline >= now);
            self.out.fallbacks += late.len();
            if !failed {
                self.out.real += in_time.len();
                flight.remove();
                self.cached_until.insert(key, now + self.model.ttl);
            } else if in_time.is_empty() || flight.get().calls >= self.model.attempts {
                self.out.fallbacks += in_time.len();
                flight.remove();
            } else {
                flight.get_mut().waiting = in_time;
                self.queue.push_front(key);
            }
        }
        self.start_calls(now);
    }
}

/// One replay of `arrivals` with the provider's draws seeded by `seed`.
pub(crate) fn replay(model: &Model, arrivals: &[Arrival], seed: u64) -> Replay {
    let mut replayer = Replayer {
        model,
        rng: SplitMix64::new(seed),
        events: BinaryHeap::new(),
        order: 0,
        flights: HashMap::new(),
        queue: VecDeque::new(),
        running: 0,
        cached_until: HashMap::new(),
        out: Replay::default(),
    };
    for (index, arrival) in arrivals.iter().enumerate() {
        replayer.push(arrival.at_secs, Event::Arrival { index });
    }
    while let Some(Timed { at, event, .. }) = replayer.events.pop() {
        match event {
            Event::Arrival { index } => {
                let arrival = &arrivals[index];
                replayer.arrive(at, (arrival.user, arrival.record));
            }
            Event::CallEnds { key, failed } => replayer.call_ends(at, key, failed),
        }
    }
    replayer.out
}

#[cfg(test)]
mod tests {
    use super::super::workload::{Priority, WorkloadConfig, generate};
    use super::*;

    fn seed_workload(seed: u64) -> Vec<Arrival> {
        generate(&WorkloadConfig {
            seed,
            users: 20,
            records_per_user: 10,
            zipf_exponent: 1.1,
            rate_per_min: 12.0,
            minutes: 60.0,
        })
    }

    fn arrival(at_secs: f64, user: u32, record: u32) -> Arrival {
        Arrival {
            at_secs,
            user,
            record,
            priority: Priority::Normal,
        }
    }

    #[test]
    fn a_provider_that_never_fails_and_has_room_leaves_no_fallback() {
        let model = Model {
            capacity: None,
            failure_rate: 0.0,
            ..Model::seed()
        };
        let arrivals = seed_workload(42);
        let out = replay(&model, &arrivals, 1);
        assert_eq!(out.fallbacks, 0);
        assert_eq!(out.real, arrivals.len());
        assert!(
            out.hits > 0 && out.calls + out.hits <= arrivals.len(),
            "{out:?}"
        );
    }

    #[test]
    fn identical_requests_share_one_call_and_then_the_cache() {
        let model = Model {
            failure_rate: 0.0,
            ..Model::seed()
        };
        let mut arrivals: Vec<Arrival> = (0..10).map(|i| arrival(f64::from(i), 1, 1)).collect();
        arrivals.push(arrival(500.0, 1, 1));
        let out = replay(&model, &arrivals, 1);
        assert_eq!((out.calls, out.real, out.hits), (1, 11, 1), "{out:?}");
    }

    #[test]
    fn a_deadline_shorter_than_a_call_starts_nothing() {
        let model = Model {
            deadline: 60.0,
            ..Model::seed()
        };
        let arrivals = seed_workload(7);
        let out = replay(&model, &arrivals, 3);
        assert_eq!((out.calls, out.fallbacks), (0, arrivals.len()));
    }

    #[test]
    fn a_provider_that_always_fails_is_called_the_attempts_and_no_more() {
        let model = Model {
            capacity: None,
            failure_rate: 1.0,
            latency_min: 10.0,
            latency_max: 10.0,
            deadline: 1000.0,
            attempts: 3,
            ..Model::seed()
        };
        let out = replay(&model, &[arrival(0.0, 1, 1), arrival(5.0, 1, 1)], 1);
        assert_eq!((out.calls, out.fallbacks, out.real), (3, 2, 0));
    }

    #[test]
    fn the_provider_never_runs_more_calls_than_its_capacity() {
        // 20 distinct keys at once against a capacity of 4 and 100 s calls: four calls
        // end by 100 s, four more by 200 s; past a 250 s deadline, the rest are late or
        // were never started.
        let model = Model {
            capacity: Some(4),
            failure_rate: 0.0,
            latency_min: 100.0,
            latency_max: 100.0,
            deadline: 250.0,
            ..Model::seed()
        };
        let arrivals: Vec<Arrival> = (0..20).map(|u| arrival(0.0, u, 0)).collect();
        let out = replay(&model, &arrivals, 1);
        assert_eq!((out.calls, out.real, out.fallbacks), (8, 8, 12), "{out:?}");
    }

    #[test]
    fn more_capacity_and_a_longer_deadline_lower_the_floor() {
        let arrivals = seed_workload(42);
        let share = |model: Model| fallback_share(&model, &arrivals, 0, 20).mean;
        let seed = share(Model::seed());
        let roomy = share(Model {
            capacity: Some(16),
            ..Model::seed()
        });
        let patient = share(Model {
            deadline: 300.0,
            ..Model::seed()
        });
        assert!(roomy < seed && patient < seed, "{seed} {roomy} {patient}");
        // The seed's settings cannot be served without fallbacks: 30% of calls fail after
        // 45-90 s, and a cold cache meets 12 new keys a minute with room for about 7 calls.
        assert!(seed > 0.05, "{seed}");
    }
}
