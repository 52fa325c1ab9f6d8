//! [`CachedResponse`]: what the HTTP cache stores for one answer.

use std::{cell::RefCell, fmt, sync::Arc};

use bytes::{Bytes, BytesMut};
use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version, header::AGE,
    response::Parts,
};

use crate::{body::CacheBody, store::Entry};

/// Response header saying how the cache answered: `HIT`, `MISS`, `STALE` or `BYPASS`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A buffered HTTP response: status, version, headers, body bytes and trailers.
///
/// Stored entries never keep the response's extensions (they may be per-request);
/// a response shared with coalesced requests does.
///
/// When the response named request headers in its `Vary`, the values those headers had
/// in the request that fetched it are kept with it ([`vary`](Self::vary)): the response
/// answers only requests whose values are the same.
#[derive(Clone)]
pub struct CachedResponse {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    extensions: Extensions,
    vary: Box<[(HeaderName, Vec<HeaderValue>)]>,
    /// The headers already hold `x-cache: HIT` and `age: 0`.
    marked_hit: bool,
}

impl CachedResponse {
    /// A response to store, for example one read back from a shared store.
    #[must_use]
    pub fn new(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self {
            status,
            version,
            headers,
            body,
            trailers,
            extensions: Extensions::new(),
            vary: Box::default(),
            marked_hit: false,
        }
    }

    /// The same response, answering only requests whose headers named in `vary` have
    /// exactly these values (an empty list: the header was absent). A shared store that
    /// reads entries back restores them with this.
    #[must_use]
    pub fn with_vary(mut self, vary: Vec<(HeaderName, Vec<HeaderValue>)>) -> Self {
        self.vary = vary.into_boxed_slice();
        self
    }

    /// The request headers this response varies on, with the values they had in the
    /// request that fetched it. Empty when the response has no `Vary`.
    #[must_use]
    pub fn vary(&self) -> &[(HeaderName, Vec<HeaderValue>)] {
        &self.vary
    }

    /// Whether this response answers a request with these headers: every header it
    /// varies on has the same values, in the same order. No allocation.
    pub(crate) fn vary_matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, values)| request.get_all(name).iter().eq(values.iter()))
    }

    /// A response with `parts`' head (copied, extensions included), no body yet, and
    /// the request header values its `Vary` names.
    pub(crate) fn from_head(
        parts: &Parts,
        vary: Option<Vec<(HeaderName, Vec<HeaderValue>)>>,
    ) -> Self {
        Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers.clone(),
            body: Bytes::new(),
            trailers: None,
            extensions: parts.extensions.clone(),
            vary: vary.map(Vec::into_boxed_slice).unwrap_or_default(),
            marked_hit: false,
        }
    }

    /// This head with its body and trailers.
    pub(crate) fn with_body(mut self, body: Bytes, trailers: Option<HeaderMap>) -> Self {
        self.body = body;
        self.trailers = trailers;
        self
    }

    pub(crate) fn from_parts(parts: Parts, body: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            trailers,
            extensions: parts.extensions,
            vary: Box::default(),
            marked_hit: false,
        }
    }

    /// A copy to store: without extensions, and with the `x-cache: HIT` and `age`
    /// headers already in place, so that a hit only rewrites the age.
    ///
    /// The body and the header values are copied into buffers of their own: read from
    /// the network, they are slices of a larger read buffer, which the entry would
    /// otherwise keep alive while being weighed as a few bytes. The copy is made once,
    /// on the miss that stores; hits share it.
    pub(crate) fn for_storage(&self) -> Self {
        let mut headers = compact(&self.headers);
        mark(&mut headers, "HIT", Some(0));
        let mut stored = Self::new(
            self.status,
            self.version,
            headers,
            Bytes::copy_from_slice(&self.body),
            self.trailers.as_ref().map(compact),
        );
        stored.vary = self.vary.clone();
        stored.marked_hit = true;
        stored
    }

    /// The status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The HTTP version.
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }

    /// The headers. A stored response also holds the `x-cache` and `age` headers that
    /// the cache rewrites on each replay.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body bytes.
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The trailers, if the response had any (gRPC responses do).
    #[must_use]
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// About how many bytes this response holds: body, header names and values, trailers.
    #[must_use]
    pub fn weight(&self) -> usize {
        fn headers(map: &HeaderMap) -> usize {
            map.iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 32)
                .sum()
        }
        let vary: usize = self
            .vary
            .iter()
            .map(|(k, v)| k.as_str().len() + v.iter().map(HeaderValue::len).sum::<usize>() + 32)
            .sum();
        self.body.len()
            + headers(&self.headers)
            + self.trailers.as_ref().map_or(0, headers)
            + vary
            + 64
    }

    /// A fresh response replaying this one, marked with `x-cache` and, when known, `age`
    /// (whole seconds since it was stored).
    pub(crate) fn replay<B>(
        &self,
        x_cache: &'static str,
        age_secs: Option<u64>,
    ) -> Response<CacheBody<B>> {
        self.replay_head(x_cache, age_secs)
            .map(|()| CacheBody::full(self.body.clone(), self.trailers.clone()))
    }

    /// A copy of this response's head, marked.
    #[inline(always)]
    fn replay_head(&self, x_cache: &'static str, age_secs: Option<u64>) -> Response<()> {
        let mut res = Response::new(());
        *res.status_mut() = self.status;
        *res.version_mut() = self.version;
        *res.headers_mut() = self.headers.clone();
        *res.extensions_mut() = self.extensions.clone();
        match (self.marked_hit, x_cache, age_secs) {
            // Already in place.
            (true, "HIT", Some(0)) => {}
            (true, "HIT", Some(age)) => set(res.headers_mut(), AGE, age_value(age)),
            _ => mark(res.headers_mut(), x_cache, age_secs),
        }
        res
    }
}

/// A fresh response replaying a stored entry, marked with `x-cache` and `age` (whole
/// seconds since it was stored). The body is the entry itself: its bytes are shared
/// when the body is polled.
#[inline(always)]
pub(crate) fn replay_entry<B>(
    entry: Arc<Entry<CachedResponse>>,
    x_cache: &'static str,
    age_secs: u64,
) -> Response<CacheBody<B>> {
    let head = entry.value().replay_head(x_cache, Some(age_secs));
    head.map(|()| CacheBody::stored(entry))
}

/// A copy of `map` whose values all live in one buffer of their own (one allocation for
/// the values, whatever their number).
fn compact(map: &HeaderMap) -> HeaderMap {
    let total = map.iter().map(|(_, v)| v.len()).sum();
    let mut buf = BytesMut::with_capacity(total);
    for (_, value) in map {
        buf.extend_from_slice(value.as_bytes());
    }
    let buf = buf.freeze();
    let mut out = HeaderMap::with_capacity(map.keys_len());
    let mut at = 0;
    for (name, value) in map {
        let end = at + value.len();
        let mut copy =
            HeaderValue::from_maybe_shared(buf.slice(at..end)).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        at = end;
        out.append(name.clone(), copy);
    }
    out
}

/// Sets `x-cache`, and `age` when given (else removes it), in place when present.
pub(crate) fn mark(headers: &mut HeaderMap, x_cache: &'static str, age_secs: Option<u64>) {
    set(headers, X_CACHE, HeaderValue::from_static(x_cache));
    match age_secs {
        Some(0) => set(headers, AGE, HeaderValue::from_static("0")),
        Some(age) => set(headers, AGE, age_value(age)),
        None => {
            headers.remove(AGE);
        }
    }
}

/// The `age` header's value for `age` seconds.
///
/// Ages under [`STATIC_AGES`] (the default TTL with its grace fits) are slices of one
/// static table: cloning and dropping them touch no reference count. Older ages come
/// from a small per-thread cache of the last values formatted (an entry's age moves
/// once a second, so hits replay the same few): a hit clones one (a reference count)
/// rather than formatting and allocating.
fn age_value(age: u64) -> HeaderValue {
    const SLOTS: usize = 8;
    thread_local! {
        static AGES: RefCell<[Option<(u64, HeaderValue)>; SLOTS]> =
            const { RefCell::new([const { None }; SLOTS]) };
    }
    if let Some(digits) = static_age(age)
        && let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from_static(digits))
    {
        return value;
    }
    let slot = usize::try_from(age % SLOTS as u64).unwrap_or_default();
    AGES.try_with(|ages| {
        let mut ages = ages.try_borrow_mut().ok()?;
        let slot = ages.get_mut(slot)?;
        match slot {
            Some((at, value)) if *at == age => Some(value.clone()),
            _ => {
                let value = HeaderValue::from(age);
                *slot = Some((age, value.clone()));
                Some(value)
            }
        }
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| HeaderValue::from(age))
}

/// Ages below this many seconds (2 h 46 min) have a static `age` value.
const STATIC_AGES: usize = 10_000;

/// `0000` to `9999`, four digits each.
// Each cast is of one decimal digit (0 to 9).
#[allow(clippy::cast_possible_truncation)]
static AGE_DIGITS: [u8; 4 * STATIC_AGES] = {
    let mut digits = [0u8; 4 * STATIC_AGES];
    let mut n = 0;
    while n < STATIC_AGES {
        digits[4 * n] = b'0' + (n / 1000 % 10) as u8;
        digits[4 * n + 1] = b'0' + (n / 100 % 10) as u8;
        digits[4 * n + 2] = b'0' + (n / 10 % 10) as u8;
        digits[4 * n + 3] = b'0' + (n % 10) as u8;
        n += 1;
    }
    digits
};

/// The decimal digits of `age` (no leading zero) from [`AGE_DIGITS`], if it is there.
fn static_age(age: u64) -> Option<&'static [u8]> {
    let n = usize::try_from(age).ok().filter(|&n| n < STATIC_AGES)?;
    let leading_zeros = match n {
        0..10 => 3,
        10..100 => 2,
        100..1000 => 1,
        _ => 0,
    };
    AGE_DIGITS.get(4 * n + leading_zeros..4 * n + 4)
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    match headers.get_mut(&name) {
        Some(slot) => *slot = value,
        None => {
            headers.insert(name, value);
        }
    }
}

impl fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResponse")
            .field("status", &self.status)
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("trailers", &self.trailers)
            .field("vary", &self.vary)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_values_are_the_ages_whatever_the_slot() {
        // Past the static table, 10,001 and 10,009 share a slot of the per-thread cache;
        // each read must give its own age, fresh or kept.
        for age in [
            10_001,
            10_009,
            10_001,
            10_009,
            10_009,
            10_017,
            u64::MAX,
            10_001,
            0,
            9_999,
        ] {
            assert_eq!(age_value(age), HeaderValue::from(age), "age {age}");
        }
    }

    #[test]
    fn every_static_age_is_its_decimal_form() {
        for age in 0..STATIC_AGES as u64 + 2 {
            assert_eq!(age_value(age), HeaderValue::from(age), "age {age}");
        }
        assert_eq!(static_age(9_999), Some(&b"9999"[..]));
        assert_eq!(static_age(10_000), None);
    }
}
