//! Freshness and storability rules: the pure core of the cache's time and
//! `Cache-Control` decisions. No tower, no clock: instants come in as parameters.

use std::time::Duration;

use tokio::time::Instant;

/// How an entry stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Within its TTL: served as a hit.
    Fresh,
    /// Past its TTL but within the grace period: served only if a refill fails.
    Stale,
    /// Past TTL and grace: as good as absent.
    Expired,
}

/// Where an entry stored at `stored_at` with time-to-live `ttl` stands at `now`, given a
/// stale-if-error `grace` period.
pub(crate) fn freshness(
    stored_at: Instant,
    ttl: Duration,
    grace: Duration,
    now: Instant,
) -> Freshness {
    freshness_at_age(now.saturating_duration_since(stored_at), ttl, grace)
}

/// Where an entry `age` old with time-to-live `ttl` stands, given a stale-if-error
/// `grace` period.
pub(crate) fn freshness_at_age(age: Duration, ttl: Duration, grace: Duration) -> Freshness {
    if age < ttl {
        Freshness::Fresh
    } else if age < ttl.saturating_add(grace) {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// The response `Cache-Control` directives a shared, server-side cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl Directives {
    /// Parses every `Cache-Control` value given. Unknown directives are ignored; a
    /// malformed delta-seconds counts as `0` (RFC 9111 §1.2.2: treat as stale), an
    /// overflowing one saturates.
    pub(crate) fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut out = Self::default();
        for value in values {
            for directive in value.split(|b| *b == b',') {
                let directive = directive.trim_ascii();
                let (name, arg) = match directive.iter().position(|b| *b == b'=') {
                    Some(eq) => (
                        directive[..eq].trim_ascii(),
                        Some(directive[eq + 1..].trim_ascii()),
                    ),
                    None => (directive, None),
                };
                if name.eq_ignore_ascii_case(b"no-store") {
                    out.no_store = true;
                } else if name.eq_ignore_ascii_case(b"no-cache") {
                    out.no_cache = true;
                } else if name.eq_ignore_ascii_case(b"private") {
                    out.private = true;
                } else if name.eq_ignore_ascii_case(b"public") {
                    out.public = true;
                } else if name.eq_ignore_ascii_case(b"must-revalidate") {
                    out.must_revalidate = true;
                } else if name.eq_ignore_ascii_case(b"max-age") {
                    out.max_age = Some(delta_seconds(arg));
                } else if name.eq_ignore_ascii_case(b"s-maxage") {
                    out.s_maxage = Some(delta_seconds(arg));
                }
            }
        }
        out
    }

    /// Whether a response to a request with `Authorization` may be stored by a shared
    /// cache (RFC 9111 §3.5): only when it says `public`, `s-maxage` or
    /// `must-revalidate`.
    pub(crate) fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage.is_some() || self.must_revalidate
    }

    /// How long a response carrying these directives may be stored, or `None` when it
    /// must not be stored.
    ///
    /// - `no-store` and `no-cache`: not stored (this cache never revalidates).
    /// - `private`: stored only when the cache is `partitioned` (one user's entries are
    ///   never served to another), else not stored.
    /// - `s-maxage`, else `max-age`: the entry's TTL, capped at `ttl`; `0` means not stored.
    /// - none of these: `ttl`.
    pub(crate) fn storable_for(&self, ttl: Duration, partitioned: bool) -> Option<Duration> {
        if self.no_store || self.no_cache || (self.private && !partitioned) {
            return None;
        }
        let ttl = match self.s_maxage.or(self.max_age) {
            Some(secs) => ttl.min(Duration::from_secs(secs)),
            None => ttl,
        };
        (!ttl.is_zero()).then_some(ttl)
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
fn delta_seconds(arg: Option<&[u8]>) -> u64 {
    let Some(arg) = arg else { return 0 };
    let arg = arg
        .strip_prefix(b"\"")
        .and_then(|a| a.strip_suffix(b"\""))
        .unwrap_or(arg);
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    arg.iter()
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn parse(s: &str) -> Directives {
        Directives::parse([s.as_bytes()])
    }

    #[test]
    fn freshness_boundaries() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let grace = Duration::from_secs(5);
        assert_eq!(freshness(t0, ttl, grace, t0), Freshness::Fresh);
        assert_eq!(
            freshness(t0, ttl, grace, t0 + Duration::from_millis(9_999)),
            Freshness::Fresh
        );
        assert_eq!(freshness(t0, ttl, grace, t0 + ttl), Freshness::Stale);
        assert_eq!(
            freshness(t0, ttl, grace, t0 + Duration::from_millis(14_999)),
            Freshness::Stale
        );
        assert_eq!(
            freshness(t0, ttl, grace, t0 + ttl + grace),
            Freshness::Expired
        );
        assert_eq!(
            freshness(t0, ttl, Duration::ZERO, t0 + ttl),
            Freshness::Expired
        );
    }

    #[test]
    fn authorized_answers_need_an_explicit_permission() {
        assert!(!parse("").allows_authorized());
        assert!(!parse("max-age=60").allows_authorized());
        assert!(parse("Public").allows_authorized());
        assert!(parse("s-maxage=5").allows_authorized());
        assert!(parse("must-revalidate").allows_authorized());
    }

    #[test]
    fn directives() {
        assert_eq!(parse("").storable_for(HOUR, false), Some(HOUR));
        assert_eq!(parse("no-store").storable_for(HOUR, true), None);
        assert_eq!(parse("No-Cache").storable_for(HOUR, true), None);
        assert_eq!(parse("private").storable_for(HOUR, false), None);
        assert_eq!(
            parse("private, max-age=60").storable_for(HOUR, true),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse("max-age=60").storable_for(HOUR, false),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse("max-age=60, s-maxage=30").storable_for(HOUR, false),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse("max-age=\"120\"").storable_for(HOUR, false),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse("max-age=99999").storable_for(HOUR, false), Some(HOUR));
        assert_eq!(parse("max-age=0").storable_for(HOUR, false), None);
        assert_eq!(parse("max-age=abc").storable_for(HOUR, false), None);
        assert_eq!(parse("max-age").storable_for(HOUR, false), None);
        assert_eq!(
            parse("public, max-age=99999999999999999999999").storable_for(HOUR, false),
            Some(HOUR)
        );
        assert_eq!(
            Directives::parse([&b"max-age=5"[..], &b"no-store"[..]]).storable_for(HOUR, false),
            None
        );
    }

    proptest! {
        /// No input panics, and a stored TTL never exceeds the configured one.
        #[test]
        fn parse_never_panics_and_caps(bytes in proptest::collection::vec(any::<u8>(), 0..64), partitioned: bool) {
            let d = Directives::parse([bytes.as_slice()]);
            if let Some(ttl) = d.storable_for(HOUR, partitioned) {
                prop_assert!(ttl <= HOUR && !ttl.is_zero());
            }
        }

        /// The three states are ordered in time.
        #[test]
        fn freshness_is_monotonic(ttl in 0u64..100, grace in 0u64..100, a in 0u64..300, b in 0u64..300) {
            let t0 = Instant::now();
            let (ttl, grace) = (Duration::from_secs(ttl), Duration::from_secs(grace));
            let rank = |s: u64| freshness(t0, ttl, grace, t0 + Duration::from_secs(s)) as u8;
            if a <= b {
                prop_assert!(rank(a) <= rank(b));
            }
        }
    }
}
