//! What a request ended as: its status label and its class. Pure, no tower, no I/O.

use std::borrow::Cow;
use std::fmt;

use crate::state::Recording;

/// Decides how a response ended and records it, exactly once, through its [`Recording`].
///
/// [`HttpClassify`](crate::HttpClassify) is the implementation for `http::Response`;
/// [`classify_fn`] makes one from a closure for any other response type.
pub trait Classify<Res> {
    /// The response handed back to the caller (e.g. with its body wrapped).
    type Output;

    /// Records `response` through `recording` now, or moves `recording` into the output
    /// to record later (e.g. when the body ends; call [`Recording::mark_in_flight`]
    /// then, so that the request counts in flight meanwhile). A `recording` dropped
    /// without [`finish`](Recording::finish) records [`Status::Cancelled`].
    fn classify(&self, response: Res, recording: Recording) -> Self::Output;
}

/// A [`Classify`] from a closure that reads the status of a response.
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

/// Classifies responses with `f`, recording at once and returning the response unchanged.
///
/// ```
/// use tower_red_metrics::{classify_fn, Status};
///
/// struct Analysis { ok: bool }
/// let classify = classify_fn(|a: &Analysis| if a.ok { Status::Http(200) } else { Status::Error });
/// # let _ = classify;
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn { f }
}

impl<F, Res> Classify<Res> for ClassifyFn<F>
where
    F: Fn(&Res) -> Status,
{
    type Output = Res;

    fn classify(&self, response: Res, recording: Recording) -> Res {
        recording.finish((self.f)(&response));
        response
    }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

/// How a request ended, as recorded in the `status` label.
///
/// | variant | `status` label | class |
/// |---|---|---|
/// | `Http(100..=399)` | the code, e.g. `"200"` | [`Class::Success`] |
/// | `Http(429)` | `"429"` | [`Class::RateLimited`] |
/// | `Http(400..=499)`, other than 429 | the code | [`Class::ClientError`] |
/// | `Http(500..=999)` | the code | [`Class::Error`] |
/// | `Http` outside `100..=999` | `"error"` | [`Class::Error`] |
/// | `Grpc(0)` | `"OK"` | [`Class::Success`] |
/// | `Grpc(8)` | `"RESOURCE_EXHAUSTED"` | [`Class::RateLimited`] (the gRPC face of a 429) |
/// | `Grpc(n)`, other non-zero codes | the code's name, e.g. `"UNAVAILABLE"` | [`Class::Error`] |
/// | `Grpc` above 16 | `"UNKNOWN"` | [`Class::Error`] |
/// | `Error` | `"error"` | [`Class::Error`] |
/// | `Cancelled` | `"cancelled"` | [`Class::ClientError`] (like nginx's 499) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// An HTTP response with this status code.
    Http(u16),
    /// A gRPC response with this `grpc-status` code.
    Grpc(u32),
    /// The service returned an error, or the response body failed while streaming.
    Error,
    /// The caller dropped the response future, or the response body before its outcome
    /// (a gRPC status) was known.
    Cancelled,
}

/// The four classes that every request falls into exactly once.
///
/// `total = success + errors + rate_limited + client_errors`, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// 1xx-3xx, gRPC `OK`.
    Success,
    /// 4xx other than 429, and cancelled requests.
    ClientError,
    /// 429, gRPC `RESOURCE_EXHAUSTED`.
    RateLimited,
    /// 5xx, other non-OK gRPC codes, service and body errors.
    Error,
}

impl Class {
    /// The index of this class in per-class counters.
    pub(crate) const fn index(self) -> usize {
        match self {
            Self::Success => 0,
            Self::ClientError => 1,
            Self::RateLimited => 2,
            Self::Error => 3,
        }
    }
}

/// gRPC status code names, indexed by code.
const GRPC_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC `UNKNOWN`: what a missing or unreadable `grpc-status` means.
pub(crate) const GRPC_UNKNOWN: u32 = 2;

/// gRPC `RESOURCE_EXHAUSTED`.
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;

/// HTTP codes that get a pre-allocated counter slot; others take a slower, locked path.
const COMMON_HTTP: [u16; 34] = [
    100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406,
    408, 409, 410, 412, 413, 415, 422, 429, 431, 499, 500, 501, 502, 503, 504,
];

/// Number of pre-allocated status slots: `error`, `cancelled`, 17 gRPC codes, common HTTP.
/// Marks an HTTP code without a pre-allocated slot in [`HTTP_SLOTS`].
const NO_SLOT: u8 = u8::MAX;

/// HTTP code -> index in [`COMMON_HTTP`], for codes below 600: a lookup per request.
#[allow(clippy::cast_possible_truncation)] // COMMON_HTTP has fewer than 255 codes
const HTTP_SLOTS: [u8; 600] = {
    let mut slots = [NO_SLOT; 600];
    let mut index = 0;
    while index < COMMON_HTTP.len() {
        slots[COMMON_HTTP[index] as usize] = index as u8;
        index += 1;
    }
    slots
};

pub(crate) const STATUS_SLOTS: usize = 2 + GRPC_NAMES.len() + COMMON_HTTP.len();

impl Status {
    /// This status with out-of-range codes folded into their documented labels.
    pub(crate) const fn normalized(self) -> Self {
        match self {
            Self::Http(code) if code < 100 || code > 999 => Self::Error,
            Self::Grpc(code) if code as usize >= GRPC_NAMES.len() => Self::Grpc(GRPC_UNKNOWN),
            other => other,
        }
    }

    /// The class this status counts in.
    #[must_use]
    pub const fn class(self) -> Class {
        match self.normalized() {
            Self::Http(429) | Self::Grpc(GRPC_RESOURCE_EXHAUSTED) => Class::RateLimited,
            Self::Http(100..=399) | Self::Grpc(0) => Class::Success,
            Self::Http(400..=499) | Self::Cancelled => Class::ClientError,
            Self::Http(_) | Self::Grpc(_) | Self::Error => Class::Error,
        }
    }

    /// The `status` label value.
    #[must_use]
    pub fn label(self) -> Cow<'static, str> {
        match self.normalized() {
            Self::Http(code) => Cow::Owned(code.to_string()),
            Self::Grpc(code) => Cow::Borrowed(GRPC_NAMES[code as usize]),
            Self::Error => Cow::Borrowed("error"),
            Self::Cancelled => Cow::Borrowed("cancelled"),
        }
    }

    /// The pre-allocated counter slot of this status, if it has one.
    pub(crate) fn slot(self) -> Option<usize> {
        match self.normalized() {
            Self::Error => Some(0),
            Self::Cancelled => Some(1),
            Self::Grpc(code) => Some(2 + code as usize),
            Self::Http(code) => match HTTP_SLOTS.get(usize::from(code)) {
                Some(&index) if index != NO_SLOT => Some(2 + GRPC_NAMES.len() + usize::from(index)),
                _ => None,
            },
        }
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// Parses a `grpc-status` value: ASCII digits of a known code, else `UNKNOWN`.
pub(crate) fn parse_grpc_status(value: &[u8]) -> u32 {
    if value.is_empty() || value.len() > 2 || !value.iter().all(u8::is_ascii_digit) {
        return GRPC_UNKNOWN;
    }
    let code = value
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    if (code as usize) < GRPC_NAMES.len() {
        code
    } else {
        GRPC_UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classes_follow_the_table() {
        assert_eq!(Status::Http(200).class(), Class::Success);
        assert_eq!(Status::Http(304).class(), Class::Success);
        assert_eq!(Status::Http(101).class(), Class::Success);
        assert_eq!(Status::Http(429).class(), Class::RateLimited);
        assert_eq!(Status::Http(404).class(), Class::ClientError);
        assert_eq!(Status::Http(500).class(), Class::Error);
        assert_eq!(Status::Http(503).class(), Class::Error);
        assert_eq!(Status::Http(42).class(), Class::Error);
        assert_eq!(Status::Grpc(0).class(), Class::Success);
        assert_eq!(Status::Grpc(8).class(), Class::RateLimited);
        assert_eq!(Status::Grpc(14).class(), Class::Error);
        assert_eq!(Status::Grpc(3).class(), Class::Error);
        assert_eq!(Status::Grpc(99).class(), Class::Error);
        assert_eq!(Status::Error.class(), Class::Error);
        assert_eq!(Status::Cancelled.class(), Class::ClientError);
    }

    #[test]
    fn labels_are_bounded_names() {
        assert_eq!(Status::Http(200).label(), "200");
        assert_eq!(Status::Http(7).label(), "error");
        assert_eq!(Status::Http(60_000).label(), "error");
        assert_eq!(Status::Grpc(14).label(), "UNAVAILABLE");
        assert_eq!(Status::Grpc(1_000).label(), "UNKNOWN");
        assert_eq!(Status::Cancelled.label(), "cancelled");
    }

    #[test]
    fn grpc_status_parsing_is_total() {
        assert_eq!(parse_grpc_status(b"0"), 0);
        assert_eq!(parse_grpc_status(b"14"), 14);
        assert_eq!(parse_grpc_status(b"17"), GRPC_UNKNOWN);
        assert_eq!(parse_grpc_status(b""), GRPC_UNKNOWN);
        assert_eq!(parse_grpc_status(b"-1"), GRPC_UNKNOWN);
        assert_eq!(parse_grpc_status(b"999999999999"), GRPC_UNKNOWN);
    }

    proptest! {
        #[test]
        fn slots_are_unique_and_in_range(a in any::<u16>(), b in any::<u16>(), g in any::<u32>()) {
            for status in [Status::Http(a), Status::Http(b), Status::Grpc(g), Status::Error, Status::Cancelled] {
                if let Some(slot) = status.slot() {
                    prop_assert!(slot < STATUS_SLOTS);
                }
            }
            let (sa, sb) = (Status::Http(a).slot(), Status::Http(b).slot());
            if sa.is_some() && sa == sb {
                prop_assert_eq!(Status::Http(a).label(), Status::Http(b).label());
            }
        }

        #[test]
        fn grpc_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert!(parse_grpc_status(&bytes) < 17);
        }
    }
}
