//! Header reading shared by the suite's crates.

use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};

/// Up to this many header values, [`first_value`] finds a header by comparing names in
/// place, which costs less than hashing the name for `HeaderMap::get` (FNV, a byte at a
/// time); beyond, by `get`.
pub const SCAN_LIMIT: usize = 16;

/// The first value of `name` in `headers`, as `HeaderMap::get` returns it, found the
/// cheaper way for the map's size (see [`SCAN_LIMIT`]). Header maps keep names
/// lowercase, so names compare byte for byte.
///
/// ```
/// use http::{HeaderMap, HeaderName, HeaderValue};
/// use tower_refusal::first_value;
///
/// let mut headers = HeaderMap::new();
/// headers.append("x-priority", HeaderValue::from_static("high"));
/// headers.append("x-priority", HeaderValue::from_static("low"));
/// let name = HeaderName::from_static("x-priority");
/// assert_eq!(first_value(&headers, &name).map(|v| v.as_bytes()), Some(&b"high"[..]));
/// ```
#[inline]
#[must_use]
pub fn first_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() <= SCAN_LIMIT {
        headers
            .iter()
            .find_map(|(key, value)| (key == name).then_some(value))
    } else {
        headers.get(name)
    }
}

/// [`first_value`] of a header named by a lowercase string literal: the scan compares
/// with a constant, which the compiler turns into a few instructions once inlined.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use tower_refusal::first_value_static;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("grpc-status", HeaderValue::from_static("14"));
/// assert_eq!(first_value_static(&headers, "grpc-status").map(|v| v.as_bytes()), Some(&b"14"[..]));
/// assert!(first_value_static(&headers, "grpc-message").is_none());
/// ```
#[inline]
#[must_use]
pub fn first_value_static<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Option<&'a HeaderValue> {
    if headers.len() <= SCAN_LIMIT {
        headers
            .iter()
            .find_map(|(key, value)| (key.as_str() == name).then_some(value))
    } else {
        headers.get(name)
    }
}

/// Whether a request speaks gRPC: its `content-type` starts with `application/grpc`
/// (`application/grpc`, `application/grpc+proto`, `application/grpc-web`…).
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use tower_refusal::is_grpc;
///
/// let mut headers = HeaderMap::new();
/// assert!(!is_grpc(&headers));
/// headers.insert("content-type", HeaderValue::from_static("application/grpc+proto"));
/// assert!(is_grpc(&headers));
/// ```
#[inline]
#[must_use]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(name: &HeaderName) -> &'static str {
        match name.as_str() {
            "x-priority" => "x-priority",
            "grpc-status" => "grpc-status",
            _ => "content-type",
        }
    }

    /// The in-place scan (small maps) and `HeaderMap::get` (large maps) find the same
    /// value: the first of the header's values, whatever else the map holds.
    #[test]
    fn first_value_is_found_in_small_and_large_maps_alike() {
        for name in ["x-priority", "grpc-status", "content-type"] {
            let name = HeaderName::from_static(name);
            for others in [0usize, 3, SCAN_LIMIT - 2, SCAN_LIMIT + 5] {
                let mut headers = HeaderMap::new();
                for i in 0..others {
                    let other = HeaderName::from_bytes(format!("x-other-{i}").as_bytes())
                        .expect("header name");
                    headers.insert(other, HeaderValue::from_static("other"));
                }
                // A near miss in name is not read.
                let near = &name.as_str()[..name.as_str().len() - 1];
                headers.insert(
                    HeaderName::from_bytes(near.as_bytes()).expect("header name"),
                    HeaderValue::from_static("near"),
                );
                assert_eq!(first_value(&headers, &name), None, "{name} among {others}");
                assert_eq!(first_value_static(&headers, leak(&name)), None);
                headers.append(name.clone(), HeaderValue::from_static("first"));
                headers.append(name.clone(), HeaderValue::from_static("second"));
                assert_eq!(
                    first_value(&headers, &name).map(HeaderValue::as_bytes),
                    Some(&b"first"[..]),
                    "{name} among {others} other headers"
                );
                assert_eq!(
                    first_value_static(&headers, leak(&name)).map(HeaderValue::as_bytes),
                    Some(&b"first"[..]),
                );
            }
        }
    }
}
