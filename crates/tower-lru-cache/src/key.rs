//! Cache keys: SHA-256 over an unambiguous, length-prefixed encoding of request fields.
//!
//! This is the pure core of key building: no tower, no I/O, no clock.

use std::fmt;

use sha2::block_api::compress256;

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
    /// The SHA-256 state after the whole blocks written so far.
    state: [u32; 8],
    /// The bytes of the block being filled: `len` of them.
    buf: [u8; BLOCK],
    len: usize,
    /// Whole blocks compressed into `state`.
    blocks: u64,
}

/// SHA-256's block size in bytes.
const BLOCK: usize = 64;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

impl Default for KeyHasher {
    fn default() -> Self {
        Self {
            state: IV,
            buf: [0; BLOCK],
            len: 0,
            blocks: 0,
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
    #[inline(always)]
    pub fn field(&mut self, tag: u8, bytes: &[u8]) -> &mut Self {
        self.count(tag, bytes.len());
        self.write(bytes);
        self
    }

    /// Writes a field that may be absent: absent and empty encode differently.
    #[inline(always)]
    pub fn optional(&mut self, tag: u8, bytes: Option<&[u8]>) -> &mut Self {
        match bytes {
            None => self.count(tag, 0),
            Some(bytes) => self.count(tag, 1).field(tag, bytes),
        }
    }

    /// Writes a count (for example how many values a header has) under `tag`.
    #[inline(always)]
    pub fn count(&mut self, tag: u8, n: usize) -> &mut Self {
        // Counts and lengths under 128 (a request's usual fields) are one LEB128 byte.
        if let Ok(short @ 0..0x80) = u8::try_from(n)
            && let Some(room) = self.buf.get_mut(self.len..self.len + 2)
        {
            room.copy_from_slice(&[tag, short]);
            self.len += 2;
        } else {
            self.long_count(tag, n);
        }
        self
    }

    #[inline(never)]
    fn long_count(&mut self, tag: u8, n: usize) {
        let mut buf = [0u8; 11];
        let len = prefix_into(tag, n, &mut buf);
        self.write(&buf[..len]);
    }

    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            copy_short(room, bytes);
            self.len += bytes.len();
        } else {
            self.overflow(bytes);
        }
    }

    /// Writes `bytes`, which overflow the block: fills it, compresses it, then every
    /// whole block of the rest straight from `bytes`, and keeps the tail.
    #[inline(never)]
    fn overflow(&mut self, bytes: &[u8]) {
        let (head, rest) = bytes.split_at(BLOCK - self.len);
        self.buf[self.len..].copy_from_slice(head);
        self.compress_buf();
        let (blocks, tail) = rest.as_chunks::<BLOCK>();
        compress256(&mut self.state, blocks);
        self.blocks = self.blocks.wrapping_add(blocks.len() as u64);
        self.buf[..tail.len()].copy_from_slice(tail);
        self.len = tail.len();
    }

    /// Compresses the (full) block buffer.
    #[inline]
    fn compress_buf(&mut self) {
        compress256(&mut self.state, std::slice::from_ref(&self.buf));
        self.blocks = self.blocks.wrapping_add(1);
        self.len = 0;
    }

    /// The digest of everything written.
    #[must_use]
    #[inline]
    pub fn finish(mut self) -> CacheKey {
        self.digest()
    }

    /// The digest of everything written, taken in place (moving the hasher into
    /// [`finish`](Self::finish) copies its state); the hasher is left reset.
    ///
    /// SHA-256's own padding (FIPS 180-4, 5.1.1) around the `sha2` crate's compression
    /// function: the key of a typical request is one block, compressed once from this
    /// buffer, with none of the copies a general-purpose hasher makes.
    #[inline]
    pub(crate) fn digest(&mut self) -> CacheKey {
        if self.len == BLOCK {
            self.compress_buf();
        }
        let bits = self
            .blocks
            .wrapping_mul(BLOCK as u64)
            .wrapping_add(self.len as u64)
            .wrapping_mul(8);
        self.buf[self.len] = 0x80;
        self.buf[self.len + 1..].fill(0);
        if self.len + 1 > BLOCK - 8 {
            self.compress_buf();
            self.buf.fill(0);
        }
        self.buf[BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
        compress256(&mut self.state, std::slice::from_ref(&self.buf));
        let mut out = [0u8; 32];
        for (bytes, word) in out.as_chunks_mut::<4>().0.iter_mut().zip(self.state) {
            *bytes = word.to_be_bytes();
        }
        *self = Self::default();
        CacheKey(out)
    }
}

/// Copies `src` into `dst` (of the same length). A request's fields are mostly a few
/// bytes (a method, a short path, an empty body): those are copied with a few fixed-size
/// moves, two of them overlapping, rather than a call to `memcpy`.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    match (dst.len() == len, len) {
        (false, _) | (_, 0) => {}
        (true, 1..4) => {
            // First, middle and last byte cover lengths 1 to 3.
            dst[0] = src[0];
            dst[len / 2] = src[len / 2];
            dst[len - 1] = src[len - 1];
        }
        (true, 4..8) => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[len - 4..].copy_from_slice(&src[len - 4..]);
        }
        (true, 8..=16) => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[len - 8..].copy_from_slice(&src[len - 8..]);
        }
        (true, _) => dst.copy_from_slice(src),
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
    use sha2::{Digest, Sha256};

    #[test]
    fn digests_are_sha256_at_every_padding_boundary() {
        // One write, and the same bytes written one at a time, across the lengths where
        // the padding takes a second block (56) and the buffer fills (64).
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for len in (0..=130).chain([191, 192, 193, 255, 256, 300]) {
            let direct: [u8; 32] = Sha256::digest(&data[..len]).into();
            let mut whole = KeyHasher::new();
            whole.write(&data[..len]);
            assert_eq!(*whole.finish().as_bytes(), direct, "length {len}");
            let mut bytewise = KeyHasher::new();
            for byte in &data[..len] {
                bytewise.write(std::slice::from_ref(byte));
            }
            assert_eq!(
                *bytewise.finish().as_bytes(),
                direct,
                "length {len}, bytewise"
            );
        }
    }

    #[test]
    fn short_copies_copy_every_byte() {
        let src: Vec<u8> = (1..=40).collect();
        for len in 0..=40 {
            let mut dst = vec![0u8; len];
            copy_short(&mut dst, &src[..len]);
            assert_eq!(dst, src[..len], "length {len}");
        }
    }

    #[test]
    fn a_digest_resets_the_hasher() {
        let mut h = KeyHasher::new();
        h.field(1, b"first");
        let first = h.digest();
        h.field(1, b"first");
        assert_eq!(h.digest(), first);
        assert_eq!(
            h.digest().to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

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
