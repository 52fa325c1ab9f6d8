//! The loadtest's workload: who asks for which record, at which priority, and when.
//!
//! Pure and seeded: the same [`WorkloadConfig`] always gives the same arrivals, on every
//! machine and with every version of every dependency (the generator is written here,
//! not borrowed), so that a before and an after run see exactly the same traffic.

use serde::Serialize;

/// A small, fast, well-mixed generator (`SplitMix64`), good enough for a workload and
/// stable forever: its output is part of what makes two runs comparable.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 bits of precision.
    pub(crate) fn next_f64(&mut self) -> f64 {
        // The top 53 bits fit an f64 mantissa exactly.
        let top = (self.next_u64() >> 11) as f64;
        top / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`), by rejection so that no value is favoured.
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        let n = u64::from(n.max(1));
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                // `x % n < n <= u32::MAX`.
                #[allow(clippy::cast_possible_truncation)]
                return (x % n) as u32;
            }
        }
    }

    /// An exponential draw with this rate (events per unit of time): the gap between two
    /// arrivals of a Poisson process.
    pub(crate) fn exponential(&mut self, rate: f64) -> f64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        -(1.0 - self.next_f64()).ln() / rate
    }
}

/// Zipf-like popularity over ranks `0..n`: rank `k` is drawn with a weight of
/// `1 / (k + 1)^s`, so the first few records of each user are asked for again and again.
#[derive(Debug, Clone)]
pub(crate) struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// `n` ranks (at least one) with exponent `s` (0 is uniform; about 1 is typical).
    pub(crate) fn new(n: u32, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|rank| {
                total += 1.0 / f64::from(rank).powf(s);
                total
            })
            .collect::<Vec<_>>();
        let cumulative = cumulative.into_iter().map(|c| c / total).collect();
        Self { cumulative }
    }

    /// The probability of each rank, most popular first.
    #[cfg(test)]
    pub(crate) fn probabilities(&self) -> Vec<f64> {
        let mut previous = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let p = c - previous;
                previous = c;
                p
            })
            .collect()
    }

    pub(crate) fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let u = rng.next_f64();
        let rank = self.cumulative.partition_point(|&c| c <= u);
        // At most `n - 1`, which came from a u32.
        #[allow(clippy::cast_possible_truncation)]
        let last = (self.cumulative.len() - 1) as u32;
        u32::try_from(rank).map_or(last, |r| r.min(last))
    }
}

/// The `x-priority` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Priority {
    Urgent,
    High,
    Normal,
    Low,
}

impl Priority {
    pub(crate) const ALL: [Self; 4] = [Self::Urgent, Self::High, Self::Normal, Self::Low];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Urgent => "urgent",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

/// The share of each priority in the workload, in the order of [`Priority::ALL`]: a few
/// urgent requests, most of them normal.
pub(crate) const PRIORITY_MIX: [f64; 4] = [0.05, 0.20, 0.50, 0.25];

fn priority(rng: &mut SplitMix64) -> Priority {
    let u = rng.next_f64();
    let mut cumulative = 0.0;
    for (priority, share) in Priority::ALL.into_iter().zip(PRIORITY_MIX) {
        cumulative += share;
        if u < cumulative {
            return priority;
        }
    }
    Priority::Low
}

/// What the workload looks like. Times are unscaled: the provider's real time.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkloadConfig {
    pub(crate) seed: u64,
    /// Distinct users, each equally active.
    pub(crate) users: u32,
    /// Records per user; each user's own records, never shared.
    pub(crate) records_per_user: u32,
    /// The Zipf exponent of a user's record popularity.
    pub(crate) zipf_exponent: f64,
    /// Mean arrivals per minute (a Poisson process: open loop, arrivals do not wait for
    /// answers).
    pub(crate) rate_per_min: f64,
    /// How long requests keep arriving, in minutes.
    pub(crate) minutes: f64,
}

/// One request of the workload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Arrival {
    /// When it is sent, in unscaled seconds from the start of the run.
    pub(crate) at_secs: f64,
    pub(crate) user: u32,
    /// The record's popularity rank among the user's records, 0 the most asked for.
    pub(crate) record: u32,
    pub(crate) priority: Priority,
}

impl Arrival {
    /// The `x-user-id` header.
    pub(crate) fn user_id(&self) -> String {
        format!("user-{:03}", self.user)
    }

    /// The `{id}` of `/api/health-records/{id}/analyze`.
    pub(crate) fn record_id(&self) -> String {
        format!("rec-{:03}-{:02}", self.user, self.record)
    }
}

/// Every arrival of the workload, in time order.
pub(crate) fn generate(config: &WorkloadConfig) -> Vec<Arrival> {
    let mut rng = SplitMix64::new(config.seed);
    let zipf = Zipf::new(config.records_per_user, config.zipf_exponent);
    let rate_per_sec = config.rate_per_min / 60.0;
    let end = config.minutes * 60.0;
    let mut arrivals = Vec::new();
    if rate_per_sec <= 0.0 || config.users == 0 {
        return arrivals;
    }
    let mut at = rng.exponential(rate_per_sec);
    while at < end {
        let user = rng.below(config.users);
        let record = zipf.sample(&mut rng);
        let priority = priority(&mut rng);
        arrivals.push(Arrival {
            at_secs: at,
            user,
            record,
            priority,
        });
        at += rng.exponential(rate_per_sec);
    }
    arrivals
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn config() -> WorkloadConfig {
        WorkloadConfig {
            seed: 42,
            users: 20,
            records_per_user: 10,
            zipf_exponent: 1.1,
            rate_per_min: 12.0,
            minutes: 60.0,
        }
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // Reference values of SplitMix64 seeded with 1234567.
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
        for _ in 0..1000 {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(7) < 7);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let a = generate(&config());
        assert_eq!(a, generate(&config()));
        let other = generate(&WorkloadConfig {
            seed: 43,
            ..config()
        });
        assert_ne!(a, other);
    }

    #[test]
    fn arrivals_are_ordered_within_the_window_at_the_set_rate() {
        let arrivals = generate(&config());
        assert!(arrivals.windows(2).all(|w| w[0].at_secs <= w[1].at_secs));
        assert!(arrivals.iter().all(|a| (0.0..3600.0).contains(&a.at_secs)));
        // 12 a minute for an hour: 720 expected, sd about 27.
        let n = arrivals.len();
        assert!((620..820).contains(&n), "{n} arrivals");
        // Poisson: the gaps' coefficient of variation is about 1 (a fixed pace would be 0).
        let count = (n - 1) as f64;
        let gaps: Vec<f64> = arrivals
            .windows(2)
            .map(|w| w[1].at_secs - w[0].at_secs)
            .collect();
        let mean = gaps.iter().sum::<f64>() / count;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / count).sqrt();
        assert!((0.8..1.2).contains(&(sd / mean)), "cv {}", sd / mean);
    }

    #[test]
    fn zipf_weights_fall_with_rank() {
        let zipf = Zipf::new(10, 1.0);
        let p = zipf.probabilities();
        assert_eq!(p.len(), 10);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // 1/k: rank 1 twice as likely as rank 2, ten times rank 10.
        assert!((p[0] / p[1] - 2.0).abs() < 1e-9);
        assert!((p[0] / p[9] - 10.0).abs() < 1e-9);
        let uniform = Zipf::new(4, 0.0).probabilities();
        assert!(uniform.iter().all(|&q| (q - 0.25).abs() < 1e-12));
    }

    #[test]
    fn zipf_samples_follow_the_weights() {
        let zipf = Zipf::new(10, 1.0);
        let mut rng = SplitMix64::new(7);
        let mut counts = [0u32; 10];
        let n = 200_000;
        for _ in 0..n {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        for (count, p) in counts.iter().zip(zipf.probabilities()) {
            let observed = f64::from(*count) / f64::from(n);
            assert!((observed - p).abs() < 0.005, "{observed} vs {p}");
        }
        assert!(counts.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(Zipf::new(1, 1.0).sample(&mut rng), 0);
    }

    #[test]
    fn users_repeat_their_records_and_never_share_them() {
        let arrivals = generate(&config());
        let distinct: HashSet<String> = arrivals.iter().map(Arrival::record_id).collect();
        // Repeats happen: far fewer distinct records than requests.
        assert!(distinct.len() * 3 < arrivals.len());
        assert!(distinct.len() <= 20 * 10);
        let mut owner: HashMap<String, String> = HashMap::new();
        for a in &arrivals {
            let previous = owner.entry(a.record_id()).or_insert_with(|| a.user_id());
            assert_eq!(*previous, a.user_id());
        }
        let users: HashSet<u32> = arrivals.iter().map(|a| a.user).collect();
        assert_eq!(users.len(), 20);
    }

    #[test]
    fn priorities_follow_the_mix() {
        let arrivals = generate(&WorkloadConfig {
            rate_per_min: 600.0,
            ..config()
        });
        let n = arrivals.len() as f64;
        for (priority, share) in Priority::ALL.into_iter().zip(PRIORITY_MIX) {
            let observed = arrivals.iter().filter(|a| a.priority == priority).count() as f64 / n;
            assert!((observed - share).abs() < 0.01, "{priority:?}: {observed}");
        }
    }

    #[test]
    fn an_empty_workload_is_empty() {
        let none = WorkloadConfig {
            rate_per_min: 0.0,
            ..config()
        };
        assert!(generate(&none).is_empty());
        assert!(
            generate(&WorkloadConfig {
                users: 0,
                ..config()
            })
            .is_empty()
        );
    }
}
