//! Cache keys: SHA-256 over an unambiguous, length-prefixed encoding of request fields.
//!
//! This is the pure core of key building: no tower, no I/O, no clock.

use std::fmt;

use sha2::{Digest, Sha256};

/// A cache key: the SHA-256 digest of a request's encoded fields.
///
/// Build one with a [`KeyHasher`]; the HTTP layer builds them with a
/// [`KeyBuilder`](crate::KeyBuilder).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl std::hash::Hash for CacheKey {
    /// Writes the first eight digest bytes as one `u64`: equal keys hash equally, and a
    /// digest needs no further mixing.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.prefix_u64());
    }
}

impl CacheKey {
    /// Wraps a digest computed elsewhere (for example by a shared store that keys by digest).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 digest bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn prefix_u64(&self) -> u64 {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(eight)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl fmt::Display for CacheKey {
    /// Lower-case hexadecimal, 64 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// An incremental SHA-256 over tagged, length-prefixed fields.
///
/// Every field is written as its tag (one byte), its length (LEB128, a prefix-free
/// variable-length integer) and its bytes, so two different sequences of fields can never
/// produce the same input to the hash: `("ab", "c")` and `("a", "bc")` differ in their
/// length prefixes, and a missing field differs from an empty one when the caller writes
/// a presence marker (see [`KeyHasher::optional`]). Short prefixes keep a typical
/// request's head within one SHA-256 block.
///
/// ```
/// use tower_lru_cache::KeyHasher;
///
/// let mut a = KeyHasher::new();
/// a.field(1, b"ab").field(1, b"c");
/// let mut b = KeyHasher::new();
/// b.field(1, b"a").field(1, b"bc");
/// assert_ne!(a.finish(), b.finish());
/// ```
#[derive(Clone)]
pub struct KeyHasher {
    sha: Sha256,
    /// Small writes gather here and reach SHA-256 in one call.
    buf: [u8; BUF],
    len: usize,
}

const BUF: usize = 64;

impl Default for KeyHasher {
    fn default() -> Self {
        Self {
            sha: Sha256::new(),
            buf: [0; BUF],
            len: 0,
        }
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher").finish_non_exhaustive()
    }
}

impl KeyHasher {
    /// A hasher with nothing written yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes one field: `tag`, the length of `bytes`, then `bytes`.
    #[inline]
    pub fn field(&mut self, tag: u8, bytes: &[u8]) -> &mut Self {
        self.count(tag, bytes.len());
        self.write(bytes);
        self
    }

    /// Writes a field that may be absent: absent and empty encode differently.
    #[inline]
    pub fn optional(&mut self, tag: u8, bytes: Option<&[u8]>) -> &mut Self {
        match bytes {
            None => self.count(tag, 0),
            Some(bytes) => self.count(tag, 1).field(tag, bytes),
        }
    }

    /// Writes a count (for example how many values a header has) under `tag`.
    #[inline]
    pub fn count(&mut self, tag: u8, n: usize) -> &mut Self {
        if self.len + 11 <= BUF {
            self.len += prefix_into(tag, n, &mut self.buf[self.len..]);
        } else {
            let mut buf = [0u8; 11];
            let len = prefix_into(tag, n, &mut buf);
            self.write(&buf[..len]);
        }
        self
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            self.sha.update(&self.buf[..self.len]);
            self.len = 0;
            if bytes.len() < BUF {
                self.buf[..bytes.len()].copy_from_slice(bytes);
                self.len = bytes.len();
            } else {
                self.sha.update(bytes);
            }
        }
    }

    /// The digest of everything written.
    #[must_use]
    #[inline]
    pub fn finish(mut self) -> CacheKey {
        self.digest()
    }

    /// The digest of everything written, taken in place (moving the hasher into
    /// [`finish`](Self::finish) copies its state); the hasher is left reset.
    #[inline]
    pub(crate) fn digest(&mut self) -> CacheKey {
        self.sha.update(&self.buf[..self.len]);
        self.len = 0;
        // Finalizing in place spares a copy of the hash state.
        CacheKey(self.sha.finalize_reset().into())
    }
}

/// Writes `tag`, then `n` in LEB128 (seven bits per byte, the high bit set on all but
/// the last) at the start of `out`, which has room for 11 bytes; returns the length.
#[inline]
fn prefix_into(tag: u8, n: usize, out: &mut [u8]) -> usize {
    out[0] = tag;
    let mut n = n as u64;
    let mut len = 1;
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out[len] = low;
            return len + 1;
        }
        out[len] = low | 0x80;
        len += 1;
    }
}

/// The key of a one-byte field `n`: distinct keys for unit tests.
#[cfg(test)]
pub(crate) fn test_key(n: u8) -> CacheKey {
    let mut h = KeyHasher::new();
    h.field(0, &[n]);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_of(fields: &[(u8, Vec<u8>)]) -> CacheKey {
        let mut h = KeyHasher::new();
        for (tag, bytes) in fields {
            h.field(*tag, bytes);
        }
        h.finish()
    }

    #[test]
    fn absent_and_empty_differ() {
        let mut a = KeyHasher::new();
        a.optional(7, None);
        let mut b = KeyHasher::new();
        b.optional(7, Some(b""));
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn counts_are_prefix_free() {
        // 128 encodes as two bytes; it must not read as 0 followed by something else.
        let mut a = KeyHasher::new();
        a.count(1, 128);
        let mut b = KeyHasher::new();
        b.count(1, 0).count(1, 1);
        assert_ne!(a.finish(), b.finish());
        let mut big = KeyHasher::new();
        big.count(1, usize::MAX);
        let _ = big.finish();
    }

    #[test]
    fn display_is_hex() {
        let key = KeyHasher::new().finish();
        let hex = key.to_string();
        assert_eq!(hex.len(), 64);
        // SHA-256 of the empty input.
        assert!(hex.starts_with("e3b0c442"));
    }

    /// The bytes `KeyHasher::field` feeds to SHA-256 for these fields.
    fn encode(fields: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, bytes) in fields {
            let mut buf = [0u8; 11];
            let len = prefix_into(*tag, bytes.len(), &mut buf);
            out.extend_from_slice(&buf[..len]);
            out.extend_from_slice(bytes);
        }
        out
    }

    fn decode(mut input: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
        let mut fields = Vec::new();
        while let Some((&tag, rest)) = input.split_first() {
            let (mut n, mut shift, mut rest) = (0u64, 0u32, rest);
            loop {
                let (&byte, tail) = rest.split_first()?;
                rest = tail;
                n |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            let n = usize::try_from(n).ok()?;
            if rest.len() < n {
                return None;
            }
            fields.push((tag, rest[..n].to_vec()));
            input = &rest[n..];
        }
        Some(fields)
    }

    proptest! {
        /// The hasher digests exactly the encoding, whatever the mix of small and large
        /// writes.
        #[test]
        fn hashes_the_encoding(
            fields in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..150)), 0..8),
        ) {
            let direct: [u8; 32] = Sha256::digest(encode(&fields)).into();
            prop_assert_eq!(*key_of(&fields).as_bytes(), direct);
        }

        /// The encoding is injective: it decodes back to exactly the fields written, so
        /// no two different requests feed SHA-256 the same bytes.
        #[test]
        fn encoding_round_trips(
            fields in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..6),
        ) {
            prop_assert_eq!(decode(&encode(&fields)), Some(fields));
        }

        /// Two field lists encode to the same bytes only if they are equal, so their
        /// keys collide only if they are equal.
        #[test]
        fn crafted_splits_never_collide(
            a in proptest::collection::vec((0u8..4, proptest::collection::vec(0u8..4, 0..200)), 0..4),
            b in proptest::collection::vec((0u8..4, proptest::collection::vec(0u8..4, 0..200)), 0..4),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(key_of(&a), key_of(&b));
        }

        /// Moving a split point between two adjacent fields changes the key.
        #[test]
        fn moving_a_split_changes_the_key(bytes in proptest::collection::vec(any::<u8>(), 1..32), cut in 0usize..32, cut2 in 0usize..32) {
            let cut = cut % (bytes.len() + 1);
            let cut2 = cut2 % (bytes.len() + 1);
            prop_assume!(cut != cut2);
            let a = key_of(&[(1, bytes[..cut].to_vec()), (1, bytes[cut..].to_vec())]);
            let b = key_of(&[(1, bytes[..cut2].to_vec()), (1, bytes[cut2..].to_vec())]);
            prop_assert_ne!(a, b);
        }
    }
}
