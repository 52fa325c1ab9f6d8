//! The value format of the Redis level: compact, versioned, checked on read.
//!
//! ```text
//! magic "TLC" | version u8 = 1
//! stored_at  u64   milliseconds since the Unix epoch (wall clock: shared by instances)
//! ttl        u64   milliseconds
//! grace      u64   milliseconds (stale-if-error)
//! status     u16
//! version    u8    0 = HTTP/0.9, 1 = 1.0, 2 = 1.1, 3 = 2, 4 = 3
//! headers    map
//! trailers   u8 (0 = none, 1 = present) [map]
//! vary       u32 count, each: name (u16 len, bytes), u32 count, each value (u32 len, bytes)
//! body       u32 len, bytes
//! check      8 bytes: the first eight bytes of SHA-256(cache key ‖ everything above)
//! map        = u32 count, each: name (u16 len, bytes), value (u32 len, bytes)
//! ```
//!
//! Integers are big-endian. The check binds a value to its key: a value that is
//! truncated, corrupt, of another version, or copied under another key decodes to
//! `None` (a miss), never to a wrong answer, and decoding never panics.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use sha2::{Digest, Sha256};

use crate::{cached::CachedResponse, key::CacheKey};

const MAGIC: &[u8; 3] = b"TLC";
/// The format version written, and the only one read.
pub(crate) const VERSION: u8 = 1;
const CHECK: usize = 8;

/// A response read back from Redis, with its timing.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) response: CachedResponse,
    /// Milliseconds since the Unix epoch.
    pub(crate) stored_at_ms: u64,
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn put_len16(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

fn put_len32(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

fn put_map(out: &mut Vec<u8>, map: &HeaderMap) -> Option<()> {
    out.extend_from_slice(&u32::try_from(map.len()).ok()?.to_be_bytes());
    for (name, value) in map {
        put_len16(out, name.as_str().as_bytes())?;
        put_len32(out, value.as_bytes())?;
    }
    Some(())
}

fn version_byte(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

/// Encodes `response` for `key`; `None` when a part is too long for the format (a body
/// over 4 GiB, a header name over 64 KiB), in which case nothing is written.
pub(crate) fn encode(
    key: &CacheKey,
    response: &CachedResponse,
    stored_at_ms: u64,
    ttl: Duration,
    grace: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(response.weight() + 64);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&stored_at_ms.to_be_bytes());
    out.extend_from_slice(&millis(ttl).to_be_bytes());
    out.extend_from_slice(&millis(grace).to_be_bytes());
    out.extend_from_slice(&response.status().as_u16().to_be_bytes());
    out.push(version_byte(response.version()));
    put_map(&mut out, response.headers())?;
    match response.trailers() {
        None => out.push(0),
        Some(trailers) => {
            out.push(1);
            put_map(&mut out, trailers)?;
        }
    }
    out.extend_from_slice(&u32::try_from(response.vary().len()).ok()?.to_be_bytes());
    for (name, values) in response.vary() {
        put_len16(&mut out, name.as_str().as_bytes())?;
        out.extend_from_slice(&u32::try_from(values.len()).ok()?.to_be_bytes());
        for value in values {
            put_len32(&mut out, value.as_bytes())?;
        }
    }
    put_len32(&mut out, response.body())?;
    let check = check(key, &out);
    out.extend_from_slice(&check);
    Some(out)
}

fn check(key: &CacheKey, bytes: &[u8]) -> [u8; CHECK] {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update(bytes);
    let digest = hasher.finalize();
    let mut out = [0; CHECK];
    out.copy_from_slice(&digest[..CHECK]);
    out
}

/// Reads fields off the front of a value; every read is bounds-checked.
struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.at.checked_add(n)?;
        if end > self.bytes.len() {
            return None;
        }
        let out = self.bytes.slice(self.at..end);
        self.at = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.at.checked_add(N)?;
        let out = self.bytes.get(self.at..end)?.try_into().ok()?;
        self.at = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    /// A count of items each at least `min` bytes long: no more than the rest can hold,
    /// so a corrupt count never makes a large allocation.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.u32()?).ok()?;
        (n <= self.remaining() / min).then_some(n)
    }

    fn name(&mut self) -> Option<HeaderName> {
        let len = usize::from(self.u16()?);
        HeaderName::from_bytes(&self.take(len)?).ok()
    }

    fn value(&mut self) -> Option<HeaderValue> {
        let len = usize::try_from(self.u32()?).ok()?;
        // Copied: a header value keeps alive only its own bytes.
        HeaderValue::from_bytes(&self.take(len)?).ok()
    }

    fn map(&mut self) -> Option<HeaderMap> {
        let n = self.count(6)?;
        let mut map = HeaderMap::with_capacity(n);
        for _ in 0..n {
            let name = self.name()?;
            let value = self.value()?;
            map.append(name, value);
        }
        Some(map)
    }
}

/// Decodes a value stored under `key`: `None` for anything but a whole, intact value
/// of this version.
pub(crate) fn decode(key: &CacheKey, bytes: &Bytes) -> Option<Decoded> {
    let payload_len = bytes.len().checked_sub(CHECK)?;
    if bytes.get(..3)? != MAGIC || *bytes.get(3)? != VERSION {
        return None;
    }
    if bytes.get(payload_len..)? != check(key, bytes.get(..payload_len)?) {
        return None;
    }
    let mut r = Reader {
        bytes: bytes.slice(..payload_len),
        at: 4,
    };
    let stored_at_ms = r.u64()?;
    let ttl = Duration::from_millis(r.u64()?);
    let grace = Duration::from_millis(r.u64()?);
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let version = match r.u8()? {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return None,
    };
    let headers = r.map()?;
    let trailers = match r.u8()? {
        0 => None,
        1 => Some(r.map()?),
        _ => return None,
    };
    let n = r.count(6)?;
    let mut vary = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.name()?;
        let m = r.count(4)?;
        let mut values = Vec::with_capacity(m);
        for _ in 0..m {
            values.push(r.value()?);
        }
        vary.push((name, values));
    }
    let len = usize::try_from(r.u32()?).ok()?;
    let body = r.take(len)?;
    if r.remaining() != 0 {
        return None;
    }
    let response = CachedResponse::new(status, version, headers, body, trailers).with_vary(vary);
    Some(Decoded {
        response,
        stored_at_ms,
        ttl,
        grace,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::key::test_key as key;

    fn name() -> impl Strategy<Value = HeaderName> {
        "[a-z][a-z0-9-]{0,12}".prop_map(|s| HeaderName::from_bytes(s.as_bytes()).unwrap())
    }

    fn value() -> impl Strategy<Value = HeaderValue> {
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..24)
            .prop_map(|v| HeaderValue::from_bytes(&v).unwrap())
    }

    fn map() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec((name(), value()), 0..6).prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (n, v) in pairs {
                map.append(n, v);
            }
            map
        })
    }

    prop_compose! {
        fn response()(
            status in 100u16..600,
            version in 0u8..5,
            headers in map(),
            trailers in proptest::option::of(map()),
            vary in proptest::collection::vec(
                (name(), proptest::collection::vec(value(), 0..3)), 0..3),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) -> CachedResponse {
            let version = [Version::HTTP_09, Version::HTTP_10, Version::HTTP_11,
                Version::HTTP_2, Version::HTTP_3][usize::from(version)];
            CachedResponse::new(
                StatusCode::from_u16(status).unwrap(), version, headers, Bytes::from(body), trailers,
            ).with_vary(vary)
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&key(1), &Bytes::from(bytes));
        }

        #[test]
        fn decoding_arbitrary_bytes_behind_a_valid_prefix_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = b"TLC\x01".to_vec();
            bytes.extend_from_slice(&tail);
            // Make the check pass so that the parser itself sees the arbitrary bytes.
            let check = check(&key(1), &bytes);
            bytes.extend_from_slice(&check);
            let _ = decode(&key(1), &Bytes::from(bytes));
        }

        #[test]
        fn roundtrip(res in response(), stored in any::<u64>(), ttl in any::<u32>(), grace in any::<u32>()) {
            let ttl = Duration::from_millis(u64::from(ttl));
            let grace = Duration::from_millis(u64::from(grace));
            let bytes = encode(&key(1), &res, stored, ttl, grace).unwrap();
            let back = decode(&key(1), &Bytes::from(bytes.clone())).unwrap();
            prop_assert_eq!(back.stored_at_ms, stored);
            prop_assert_eq!(back.ttl, ttl);
            prop_assert_eq!(back.grace, grace);
            let got = &back.response;
            prop_assert_eq!(got.status(), res.status());
            prop_assert_eq!(got.version(), res.version());
            prop_assert_eq!(got.headers(), res.headers());
            prop_assert_eq!(got.trailers(), res.trailers());
            prop_assert_eq!(got.body(), res.body());
            prop_assert_eq!(got.vary(), res.vary());
            // Under another key, the same bytes are not an answer.
            prop_assert!(decode(&key(2), &Bytes::from(bytes.clone())).is_none());
            // Every truncation is a miss.
            for len in 0..bytes.len() {
                prop_assert!(decode(&key(1), &Bytes::copy_from_slice(&bytes[..len])).is_none());
            }
        }

        #[test]
        fn any_flipped_bit_is_a_miss(res in response(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode(&key(1), &res, 1, Duration::from_secs(1), Duration::ZERO).unwrap();
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            prop_assert!(decode(&key(1), &Bytes::from(bytes)).is_none());
        }
    }

    #[test]
    fn another_version_is_a_miss() {
        let res = CachedResponse::new(
            StatusCode::OK,
            Version::HTTP_11,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
            None,
        );
        let mut bytes = encode(&key(1), &res, 1, Duration::from_secs(1), Duration::ZERO).unwrap();
        assert!(decode(&key(1), &Bytes::from(bytes.clone())).is_some());
        bytes[3] = VERSION + 1;
        let len = bytes.len() - CHECK;
        let check = check(&key(1), &bytes[..len]);
        bytes[len..].copy_from_slice(&check);
        assert!(decode(&key(1), &Bytes::from(bytes)).is_none());
    }
}
