//! The four priority levels and how a request's level is found.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::QueueError;

/// The priority of a request: which waiter gets the next free slot.
///
/// Ordered from lowest to highest, so `Priority::Urgent > Priority::Low`. The default is
/// [`Priority::Normal`], which is also what a request without any priority gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work: served last, shed first.
    Low,
    /// The default level.
    #[default]
    Normal,
    /// Served before normal and low work.
    High,
    /// Served before everything else, and never displaced.
    Urgent,
}

impl Priority {
    /// All levels, from highest to lowest.
    pub const ALL: [Priority; 4] = [
        Priority::Urgent,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// The lowercase name of the level: `urgent`, `high`, `normal` or `low`.
    ///
    /// This is also the value of the `priority` metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Parses a level name, ignoring ASCII case and surrounding spaces or tabs.
    ///
    /// Returns `None` for anything but `urgent`, `high`, `normal` or `low`.
    #[must_use]
    #[inline]
    pub fn from_bytes(value: &[u8]) -> Option<Self> {
        // Runs on every request: pack the (at most 6) bytes into a word, fold ASCII case by
        // setting bit 5 of each byte, compare with the four names. Setting bit 5 maps a
        // byte to a given lowercase letter only if it is that letter in either case, and
        // the names are letters only, so this is exact.
        let value = value.trim_ascii();
        if value.is_empty() || value.len() > 6 {
            return None;
        }
        // Gathered in a register (a copy through memory would stall on store forwarding):
        // two overlapping 4-byte loads for 4 to 6 bytes, first/middle/last byte below.
        let len = value.len();
        let word = match (value.first_chunk::<4>(), value.last_chunk::<4>()) {
            (Some(head), Some(tail)) => {
                u64::from(u32::from_le_bytes(*head))
                    | u64::from(u32::from_le_bytes(*tail)) << (8 * (len - 4))
            }
            _ => {
                u64::from(value[0])
                    | u64::from(value[len / 2]) << (8 * (len / 2))
                    | u64::from(value[len - 1]) << (8 * (len - 1))
            }
        };
        // Bit 5 of each of the value's bytes, none of the zero bytes above them.
        let fold = 0x2020_2020_2020_2020_u64 & ((1_u64 << (8 * len)) - 1);
        match word | fold {
            URGENT => Some(Priority::Urgent),
            HIGH => Some(Priority::High),
            NORMAL => Some(Priority::Normal),
            LOW => Some(Priority::Low),
            _ => None,
        }
    }

    /// Dense index, 0 for urgent to 3 for low.
    pub(crate) const fn index(self) -> usize {
        match self {
            Priority::Urgent => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }
    }

    /// How many levels this one is below urgent: 0 for urgent to 3 for low.
    pub(crate) const fn rank_below_urgent(self) -> u64 {
        self.index() as u64
    }
}

const URGENT: u64 = u64::from_le_bytes(*b"urgent\0\0");
const HIGH: u64 = u64::from_le_bytes(*b"high\0\0\0\0");
const NORMAL: u64 = u64::from_le_bytes(*b"normal\0\0");
const LOW: u64 = u64::from_le_bytes(*b"low\0\0\0\0\0");

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::from_bytes(s.as_bytes()).ok_or(QueueError::InvalidPriority)
    }
}

/// Finds the priority of a request.
///
/// Implementations are provided for a fixed [`Priority`] (every request gets that level),
/// for closures through [`priority_fn`], and with the `http` feature for the `x-priority`
/// header ([`HeaderPriority`](crate::HeaderPriority)) and a typed request extension
/// ([`ExtensionPriority`](crate::ExtensionPriority)).
///
/// Extraction runs on every request, before admission, so keep it cheap.
pub trait PriorityExtractor<Req> {
    /// Returns the priority of `request`.
    ///
    /// # Errors
    ///
    /// Returns [`QueueError::InvalidPriority`] when the request names a priority that does
    /// not exist. The request is then refused without being queued.
    fn extract(&self, request: &Req) -> Result<Priority, QueueError>;

    /// The longest `request` may wait in the room for a slot, when the request itself
    /// bounds it (for example by a deadline it carries, less the time a call needs): the
    /// shorter of this and its level's [maximum wait](crate::PriorityQueueLayerBuilder::max_wait)
    /// applies, and past it the request is refused with
    /// [`QueueError::QueueTimeout`]; a request that may not wait at all (zero) is refused
    /// at once without entering the room, so it displaces nobody. Asked only of a request
    /// that has to wait, never on the path that finds a free slot. `None` (the default):
    /// only its level's bound.
    fn max_wait(&self, request: &Req) -> Option<Duration> {
        let _ = request;
        None
    }
}

impl<Req> PriorityExtractor<Req> for Priority {
    fn extract(&self, _request: &Req) -> Result<Priority, QueueError> {
        Ok(*self)
    }
}

/// A [`PriorityExtractor`] built from a closure; see [`priority_fn`].
#[derive(Clone, Copy)]
pub struct PriorityFn<F> {
    f: F,
}

impl<F> fmt::Debug for PriorityFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityFn").finish_non_exhaustive()
    }
}

/// Uses a closure `Fn(&Req) -> Priority` as a [`PriorityExtractor`].
///
/// ```
/// use tower_priority_queue::{priority_fn, Priority, PriorityExtractor};
///
/// struct Job { interactive: bool }
///
/// let extractor = priority_fn(|job: &Job| {
///     if job.interactive { Priority::High } else { Priority::Low }
/// });
/// assert_eq!(extractor.extract(&Job { interactive: true }).ok(), Some(Priority::High));
/// ```
pub fn priority_fn<F, Req>(f: F) -> PriorityFn<F>
where
    F: Fn(&Req) -> Priority,
{
    PriorityFn { f }
}

impl<F, Req> PriorityExtractor<Req> for PriorityFn<F>
where
    F: Fn(&Req) -> Priority,
{
    fn extract(&self, request: &Req) -> Result<Priority, QueueError> {
        Ok((self.f)(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively_and_trims() {
        assert_eq!(Priority::from_bytes(b"URGENT"), Some(Priority::Urgent));
        assert_eq!(Priority::from_bytes(b" High\t"), Some(Priority::High));
        assert_eq!(Priority::from_bytes(b"normal"), Some(Priority::Normal));
        assert_eq!(Priority::from_bytes(b"lOw"), Some(Priority::Low));
        assert_eq!(Priority::from_bytes(b""), None);
        assert_eq!(Priority::from_bytes(b"lowest"), None);
        assert_eq!(Priority::from_bytes(b"urgenT"), Some(Priority::Urgent));
        assert_eq!(Priority::from_bytes(b"nOrMaL"), Some(Priority::Normal));
        for wrong in [&b"lox"[..], b"hig!", b"urgend", b"xormal", b"u", b"highs"] {
            assert_eq!(Priority::from_bytes(wrong), None);
        }
        assert_eq!(Priority::from_bytes(&[0xff, 0xfe]), None);
        assert!("critical".parse::<Priority>().is_err());
    }

    proptest::proptest! {
        /// Exactly the four names, in any case, with optional surrounding blanks.
        #[test]
        fn parses_exactly_the_four_names(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10)) {
            let expected = Priority::ALL
                .into_iter()
                .find(|level| value.trim_ascii().eq_ignore_ascii_case(level.as_str().as_bytes()));
            proptest::prop_assert_eq!(Priority::from_bytes(&value), expected);
        }

        /// Near misses: a name with its case flipped at random and maybe one byte changed.
        #[test]
        fn rejects_near_misses(level in 0usize..4, case in proptest::prelude::any::<u8>(), change in proptest::option::of((0usize..6, proptest::prelude::any::<u8>()))) {
            let mut value = Priority::ALL[level].as_str().as_bytes().to_vec();
            for (index, byte) in value.iter_mut().enumerate() {
                if case & (1 << index) != 0 {
                    byte.make_ascii_uppercase();
                }
            }
            if let Some((index, byte)) = change {
                let index = index % value.len();
                value[index] = byte;
            }
            let expected = Priority::ALL
                .into_iter()
                .find(|level| value.trim_ascii().eq_ignore_ascii_case(level.as_str().as_bytes()));
            proptest::prop_assert_eq!(Priority::from_bytes(&value), expected);
        }
    }

    #[test]
    fn orders_low_to_urgent() {
        assert!(Priority::Urgent > Priority::High);
        assert!(Priority::High > Priority::Normal);
        assert!(Priority::Normal > Priority::Low);
        assert_eq!(Priority::default(), Priority::Normal);
    }
}
