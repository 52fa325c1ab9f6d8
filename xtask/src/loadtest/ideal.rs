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
//!
//! [`Gateway::Preset`] replays the same workload as the preset runs it, so that the gap
//! between the preset's figure and the floor can be read as the sum of its parts:
//!
//! - the in-flight limit is the one the preset had at each moment of a run (its
//!   adaptive limit's cold start), capped by the provider's capacity;
//! - the requests waiting on a call share its leader's fate when the leader's time runs
//!   out before a call starts (too little left): every one of them gets the fallback;
//! - a call running at the leader's deadline runs on to its end, its slot held, and a
//!   success fills the cache; a failure is not retried. The leader gets the fallback at
//!   its deadline; the requests waiting on the call, and those arriving for its key
//!   meanwhile, wait for it until their own deadlines. If it fails, the ones that
//!   waited on it from the start get the fallback (the cache shares the leader's), and
//!   the ones that arrived meanwhile queue a call of their own.

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

/// Which gateway a replay models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Gateway<'a> {
    /// The ideal one of the module docs.
    Ideal,
    /// The preset as it runs: `limit` is its in-flight limit over a run, as
    /// `(seconds from the start, limit)` in time order (empty: the provider's capacity).
    Preset { limit: &'a [(f64, usize)] },
}

/// The fallback share of `arrivals` through `gateway`, over `draws` draws of the
/// provider (draw `d` seeded with `seed + d`).
pub(crate) fn fallback_share(
    model: &Model,
    gateway: Gateway<'_>,
    arrivals: &[Arrival],
    seed: u64,
    draws: u64,
) -> Floor {
    let draws = draws.max(1);
    let shares: Vec<f64> = (0..draws)
        .map(|d| replay(model, gateway, arrivals, seed.wrapping_add(d)).fallback_share())
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
    /// The most calls running at once.
    pub(crate) peak_running: usize,
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
    Arrival {
        index: usize,
    },
    CallEnds {
        key: (u32, u32),
        call: u64,
        failed: bool,
    },
    /// The deadline of the request leading a call ([`Gateway::Preset`] only).
    Cut {
        key: (u32, u32),
        call: u64,
    },
    /// The preset's limit changes ([`Gateway::Preset`] only).
    Limit,
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
    /// In arrival order: the first is the leader, with the earliest deadline.
    waiting: Vec<f64>,
    calls: u32,
    /// The running call's number, 0 when none runs.
    call: u64,
}

/// A call running on past its leader's deadline, and the requests waiting for it.
#[derive(Debug)]
struct RunningOn {
    key: (u32, u32),
    /// The deadlines of the requests that waited on the call before its leader's passed.
    coalesced: Vec<f64>,
    /// The deadlines of the requests that arrived for the key since.
    arrived: Vec<f64>,
}

struct Replayer<'a> {
    model: &'a Model,
    gateway: Gateway<'a>,
    rng: SplitMix64,
    events: BinaryHeap<Timed>,
    order: u64,
    flights: HashMap<(u32, u32), Flight>,
    /// Calls running on past their leader's deadline ([`Gateway::Preset`]), by call.
    running_on: HashMap<u64, RunningOn>,
    /// The call running on for each key.
    running_on_for: HashMap<(u32, u32), u64>,
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

    /// The gateway's in-flight limit at `now`, `None` for unlimited.
    fn limit_at(&self, now: f64) -> Option<usize> {
        let own = match self.gateway {
            Gateway::Preset { limit } if !limit.is_empty() => {
                let seen = limit.partition_point(|&(at, _)| at <= now);
                Some(limit[seen.saturating_sub(1)].1)
            }
            _ => None,
        };
        match (self.model.capacity, own) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
    }

    /// Starts calls while the gateway's limit has room, first come first served.
    fn start_calls(&mut self, now: f64) {
        let estimate = self.model.call_estimate();
        let preset = matches!(self.gateway, Gateway::Preset { .. });
        while self.limit_at(now).is_none_or(|l| self.running < l) {
            let Some(key) = self.queue.pop_front() else {
                return;
            };
            let Entry::Occupied(mut flight) = self.flights.entry(key) else {
                continue;
            };
            let waiting = &mut flight.get_mut().waiting;
            let before = waiting.len();
            if preset {
                // Too little time for the leader: the fallback for all of them.
                if waiting.first().is_some_and(|&lead| lead - now < estimate) {
                    waiting.clear();
                }
            } else {
                waiting.retain(|&deadline| deadline - now >= estimate);
            }
            self.out.fallbacks += before - waiting.len();
            let Some(&lead) = waiting.first() else {
                flight.remove();
                continue;
            };
            self.order += 1;
            let call = self.order;
            flight.get_mut().calls += 1;
            flight.get_mut().call = call;
            self.running += 1;
            self.out.peak_running = self.out.peak_running.max(self.running);
            self.out.calls += 1;
            let latency = self.model.latency_min
                + self.rng.next_f64() * (self.model.latency_max - self.model.latency_min);
            let failed = self.rng.next_f64() < self.model.failure_rate;
            self.push(now + latency, Event::CallEnds { key, call, failed });
            if preset {
                self.push(lead, Event::Cut { key, call });
            }
        }
    }

    /// The leader's deadline passed with its call running: the leader gets the fallback,
    /// and the call runs on, the other requests waiting for it.
    fn cut(&mut self, key: (u32, u32), call: u64) {
        if let Entry::Occupied(flight) = self.flights.entry(key)
            && flight.get().call == call
        {
            let mut coalesced = flight.remove().waiting;
            coalesced.remove(0);
            self.out.fallbacks += 1;
            self.running_on.insert(
                call,
                RunningOn {
                    key,
                    coalesced,
                    arrived: Vec::new(),
                },
            );
            self.running_on_for.insert(key, call);
        }
    }

    /// A call that ran on ends: the requests waiting for it get its answer by their
    /// deadlines, or, if it failed, the fallback (those that waited on it from the
    /// start) or a call of their own (those that arrived since, with time left).
    fn running_on_ends(&mut self, now: f64, on: RunningOn, failed: bool) {
        self.running_on_for.remove(&on.key);
        let in_time = |deadlines: &[f64]| deadlines.iter().filter(|&&d| d >= now).count();
        let total = on.coalesced.len() + on.arrived.len();
        if !failed {
            self.cached_until.insert(on.key, now + self.model.ttl);
            let real = in_time(&on.coalesced) + in_time(&on.arrived);
            self.out.real += real;
            self.out.fallbacks += total - real;
            return;
        }
        self.out.fallbacks += on.coalesced.len();
        let (waiting, late): (Vec<f64>, Vec<f64>) = on
            .arrived
            .into_iter()
            .partition(|&deadline| deadline >= now);
        self.out.fallbacks += late.len();
        if !waiting.is_empty() {
            self.flights.insert(
                on.key,
                Flight {
                    waiting,
                    calls: 0,
                    call: 0,
                },
            );
            self.queue.push_back(on.key);
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
        if let Some(call) = self.running_on_for.get(&key)
            && let Some(on) = self.running_on.get_mut(call)
        {
            on.arrived.push(deadline);
            return;
        }
        match self.flights.entry(key) {
            Entry::Occupied(mut flight) => flight.get_mut().waiting.push(deadline),
            Entry::Vacant(slot) => {
                slot.insert(Flight {
                    waiting: vec![deadline],
                    calls: 0,
                    call: 0,
                });
                self.queue.push_back(key);
            }
        }
        self.start_calls(now);
    }

    fn call_ends(&mut self, now: f64, key: (u32, u32), call: u64, failed: bool) {
        if let Some(on) = self.running_on.remove(&call) {
            self.running -= 1;
            self.running_on_ends(now, on, failed);
            self.start_calls(now);
            return;
        }
        let Entry::Occupied(mut flight) = self.flights.entry(key) else {
            return;
        };
        flight.get_mut().call = 0;
        self.running -= 1;
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
        self.start_calls(now);
    }
}

/// One replay of `arrivals` through `gateway`, with the provider's draws seeded by
/// `seed`.
pub(crate) fn replay(
    model: &Model,
    gateway: Gateway<'_>,
    arrivals: &[Arrival],
    seed: u64,
) -> Replay {
    let mut replayer = Replayer {
        model,
        gateway,
        rng: SplitMix64::new(seed),
        events: BinaryHeap::new(),
        order: 0,
        flights: HashMap::new(),
        running_on: HashMap::new(),
        running_on_for: HashMap::new(),
        queue: VecDeque::new(),
        running: 0,
        cached_until: HashMap::new(),
        out: Replay::default(),
    };
    if let Gateway::Preset { limit } = gateway {
        for &(at, _) in limit {
            replayer.push(at, Event::Limit);
        }
    }
    for (index, arrival) in arrivals.iter().enumerate() {
        replayer.push(arrival.at_secs, Event::Arrival { index });
    }
    while let Some(Timed { at, event, .. }) = replayer.events.pop() {
        match event {
            Event::Arrival { index } => {
                let arrival = &arrivals[index];
                replayer.arrive(at, (arrival.user, arrival.record));
            }
            Event::CallEnds { key, call, failed } => replayer.call_ends(at, key, call, failed),
            Event::Cut { key, call } => replayer.cut(key, call),
            Event::Limit => replayer.start_calls(at),
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
        let out = replay(&model, Gateway::Ideal, &arrivals, 1);
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
        let out = replay(&model, Gateway::Ideal, &arrivals, 1);
        assert_eq!((out.calls, out.real, out.hits), (1, 11, 1), "{out:?}");
    }

    #[test]
    fn a_deadline_shorter_than_a_call_starts_nothing() {
        let model = Model {
            deadline: 60.0,
            ..Model::seed()
        };
        let arrivals = seed_workload(7);
        let out = replay(&model, Gateway::Ideal, &arrivals, 3);
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
        let out = replay(
            &model,
            Gateway::Ideal,
            &[arrival(0.0, 1, 1), arrival(5.0, 1, 1)],
            1,
        );
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
        let out = replay(&model, Gateway::Ideal, &arrivals, 1);
        assert_eq!((out.calls, out.real, out.fallbacks), (8, 8, 12), "{out:?}");
        assert_eq!(out.peak_running, 4);
    }

    #[test]
    fn the_preset_answers_at_its_leaders_deadline_and_the_others_wait_for_the_call_running_on() {
        // Calls of 100-200 s (a median of 150 s, so a call starts for a fresh request);
        // a key asked at 0 s and 20 s (deadlines 150 s and 170 s), at 160 s while the
        // call may be running on (deadline 310 s), and again at 400 s.
        let model = Model {
            capacity: None,
            failure_rate: 0.0,
            latency_min: 100.0,
            latency_max: 200.0,
            deadline: 150.0,
            ..Model::seed()
        };
        let arrivals = [
            arrival(0.0, 1, 1),
            arrival(20.0, 1, 1),
            arrival(160.0, 1, 1),
            arrival(400.0, 1, 1),
        ];
        let mut fallbacks = [0; 3];
        for seed in 0..64 {
            let ideal = replay(&model, Gateway::Ideal, &arrivals, seed);
            let preset = replay(&model, Gateway::Preset { limit: &[] }, &arrivals, seed);
            // One call, run to its end, filling the cache for 400 s (and for 160 s when
            // it ended by then). Past the first request's deadline it runs on; the
            // second waits for it until 170 s, and the third, arriving meanwhile, waits
            // for it rather than calling: as the ideal.
            assert_eq!(preset.calls, 1, "{preset:?}");
            assert_eq!(preset, ideal);
            fallbacks[preset.fallbacks] += 1;
        }
        // Ended by 150 s, by 170 s, and later: each happens.
        assert!(fallbacks.iter().all(|&n| n > 0), "{fallbacks:?}");
    }

    #[test]
    fn a_call_that_runs_on_and_fails_leaves_its_waiters_the_fallback_and_newcomers_a_call() {
        // Calls of 10-190 s (a median of 100 s), half of them failing; a 120 s deadline.
        // A key asked at 0 s and 10 s (deadlines 120 s and 130 s), and at 121 s (241 s).
        let model = Model {
            capacity: None,
            failure_rate: 0.5,
            latency_min: 10.0,
            latency_max: 190.0,
            deadline: 120.0,
            ..Model::seed()
        };
        let arrivals = [
            arrival(0.0, 1, 1),
            arrival(10.0, 1, 1),
            arrival(121.0, 1, 1),
        ];
        // A draw whose first call fails at 121-141 s (running on past 120 s, with time
        // left for one more call for the 121 s request), and whose second call succeeds
        // within 100 s.
        let seed = (0..10_000)
            .find(|&seed| {
                let mut rng = SplitMix64::new(seed);
                let [first, first_fails, second, second_fails] =
                    std::array::from_fn(|_| rng.next_f64());
                (111.0 / 180.0..131.0 / 180.0).contains(&first)
                    && first_fails < 0.5
                    && second < 90.0 / 180.0
                    && second_fails >= 0.5
            })
            .expect("such a draw");
        let preset = replay(&model, Gateway::Preset { limit: &[] }, &arrivals, seed);
        // The first request gets the fallback at its deadline; the second, which waited
        // on the call, when it fails; the third, arrived while it ran on, waited for it
        // rather than calling, then got a call of its own, in time.
        assert_eq!(
            (preset.calls, preset.real, preset.fallbacks),
            (2, 1, 2),
            "{preset:?}"
        );
    }

    #[test]
    fn the_preset_runs_no_more_calls_than_its_limit_had_room_for() {
        // 20 keys at once, 10 s calls: a limit of 2 for the first 15 s, then 6 (the
        // provider's capacity of 4 caps it).
        let model = Model {
            capacity: Some(4),
            failure_rate: 0.0,
            latency_min: 10.0,
            latency_max: 10.0,
            deadline: 1000.0,
            ..Model::seed()
        };
        let arrivals: Vec<Arrival> = (0..20).map(|u| arrival(0.0, u, 0)).collect();
        let limit = [(0.0, 2), (15.0, 6)];
        let out = replay(&model, Gateway::Preset { limit: &limit }, &arrivals, 1);
        assert_eq!(
            (out.calls, out.real, out.peak_running),
            (20, 20, 4),
            "{out:?}"
        );
        // Only two until 15 s: four calls ended by 20 s, not eight.
        let early: Vec<Arrival> = (0..20).map(|u| arrival(0.0, u, 0)).collect();
        let short = Model {
            deadline: 20.0,
            latency_min: 10.0,
            latency_max: 10.0,
            ..model
        };
        let out = replay(&short, Gateway::Preset { limit: &limit }, &early, 1);
        assert_eq!((out.real, out.peak_running), (4, 2), "{out:?}");
        let ideal = replay(&short, Gateway::Ideal, &early, 1);
        assert_eq!(ideal.real, 8, "{ideal:?}");
    }

    #[test]
    fn on_the_seeds_workload_the_preset_is_above_the_floor() {
        let arrivals = seed_workload(7);
        let model = Model::seed();
        let share = |gateway| fallback_share(&model, gateway, &arrivals, 0, 50).mean;
        let ideal = share(Gateway::Ideal);
        let flat = share(Gateway::Preset { limit: &[] });
        let cold = share(Gateway::Preset {
            limit: &[(0.0, 2), (60.0, 4), (120.0, 8)],
        });
        assert!(ideal < flat && flat < cold, "{ideal} {flat} {cold}");
    }

    #[test]
    fn more_capacity_and_a_longer_deadline_lower_the_floor() {
        let arrivals = seed_workload(42);
        let share = |model: Model| fallback_share(&model, Gateway::Ideal, &arrivals, 0, 20).mean;
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
