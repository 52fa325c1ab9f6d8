//! The HTTP and gRPC face: rejection responses and key extractors for `http::Request`.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{FORWARDED, HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode};
use tower_refusal::Refusal;

use crate::error::ceil_secs;
use crate::{ExtractKey, KeyError, KeyExtractor, Or, Quota, RateLimitError};

/// `RateLimit-Policy` (IETF httpapi rate-limit headers draft).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF httpapi rate-limit headers draft).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The rejection table's row for each refusal: 429 `RESOURCE_EXHAUSTED` when rate
/// limited, 413 `RESOURCE_EXHAUSTED` when the cost is larger than the quota, 503
/// `UNAVAILABLE` when the key cap is reached or the backend is unavailable, 400
/// `INVALID_ARGUMENT` without a key, 401 `UNAUTHENTICATED` without an identity.
///
/// The answers ([`Refusal::to_http_response`], [`Refusal::to_grpc_response`],
/// [`Refusal::to_response`]) carry the body `{"error":"...","retryAfter":s}`
/// (`retryAfter` only when a retry can succeed), `Retry-After` in whole seconds rounded up
/// (never 0), and for a rate-limited request the `RateLimit-Policy` and `RateLimit`
/// headers.
///
/// `RateLimit-Policy` states the quota's long-run rate in whole-second windows,
/// exactly where a window of at most an hour allows it (1 per 90 ms is
/// `q=100;w=9`, 3 per 1.5 s is `q=4;w=2`, 5 a second is `q=5;w=1`), else rounded
/// down: it never promises more than the limiter lets through.
///
/// To shape the response yourself, downcast the error in your error handler (axum
/// `HandleErrorLayer`, `tower::util::MapErr`) and build it from the fields.
impl Refusal for RateLimitError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::CostTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyCapacity { .. } | Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidKey { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        }
    }

    fn grpc_code(&self) -> i32 {
        match self {
            Self::RateLimited { .. } | Self::CostTooLarge { .. } => 8,
            Self::KeyCapacity { .. } | Self::Unavailable { .. } => 14,
            Self::InvalidKey { .. } => 3,
            Self::Unauthenticated { .. } => 16,
        }
    }

    fn message(&self) -> Cow<'_, str> {
        Cow::Owned(self.to_string())
    }

    fn retry_after(&self) -> Option<Duration> {
        RateLimitError::retry_after(self)
    }

    fn retry_after_secs(&self) -> Option<u64> {
        RateLimitError::retry_after_secs(self)
    }

    fn extra_headers(&self, headers: &mut HeaderMap) {
        let Self::RateLimited { quota, limiter, .. } = self else {
            return;
        };
        let Some(secs) = self.retry_after_secs() else {
            return;
        };
        let name = sf_string(limiter);
        let (q, w) = announced_policy(quota);
        let policy = format!("{name};q={q};w={w}");
        let state = format!("{name};r=0;t={secs}");
        if let (Ok(policy), Ok(state)) =
            (HeaderValue::try_from(policy), HeaderValue::try_from(state))
        {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
        }
    }
}

/// The longest window announced to state a rate exactly, in seconds, when the quota's
/// own period is shorter.
const MAX_EXACT_WINDOW: u64 = 3600;

/// `(q, w)` of `RateLimit-Policy`: `q` units every `w` whole seconds, at the quota's
/// long-run rate (`count / period`).
///
/// `w` is a whole number of seconds and the period need not be, so `q` is scaled to the
/// window. When a window no longer than an hour (or than the quota's period rounded up,
/// if that is longer) makes the rate exact, the shortest such window that is not
/// shorter than the period is announced: 1 per 90 ms is `q=100;w=9`, 3 per 1.5 s is
/// `q=4;w=2`, 100 a minute is `q=100;w=60`. Otherwise `q` is the units the quota refills
/// in `w`, rounded down (never more than the limiter lets through, so a client that
/// keeps to it is not refused for its rate), with `w` long enough for that rounding to
/// cost under 1% where an hour allows. The burst (the bucket's size) is not part of the
/// header: a client that has been idle may spend it at once.
pub(crate) fn announced_policy(quota: &Quota) -> (u64, u64) {
    const NANOS: u128 = 1_000_000_000;
    let count = u128::from(quota.count());
    let period = quota.period().as_nanos().max(1);
    let min_window = ceil_secs(quota.period());
    let max_window = min_window.max(MAX_EXACT_WINDOW);
    // The rate in units per second is num/den.
    let (mut num, mut den) = (count * NANOS, period);
    let g = gcd(num, den);
    num /= g;
    den /= g;
    let exact = u64::try_from(den).ok().and_then(|den| {
        let w = min_window.div_ceil(den).checked_mul(den)?;
        let q = u64::try_from(num.checked_mul(u128::from(w / den))?).ok()?;
        (w <= max_window).then_some((q, w))
    });
    exact.unwrap_or_else(|| {
        // At 100 units or more, rounding down loses under 1%.
        let w = (100 * period).div_ceil(count * NANOS);
        let w = u64::try_from(w)
            .unwrap_or(u64::MAX)
            .clamp(min_window, max_window);
        // count * w / period, rounded down; at least `count`, as w >= period.
        let q = count
            .checked_mul(u128::from(w))
            .and_then(|n| n.checked_mul(NANOS))
            .map_or(u128::from(u64::MAX), |n| n / period);
        (u64::try_from(q).unwrap_or(u64::MAX), w)
    })
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A structured-field string: printable ASCII, quoted, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// The key is a request header's value (e.g. `x-user-id`), copied so that the limiter
/// never holds on to the connection's read buffer.
///
/// A missing or empty header, or one longer than [`max_len`](Self::max_len) bytes
/// (default 256), is a [`KeyError::invalid`]: combine with [`or`](crate::ExtractKeyExt::or)
/// to fall back to another key.
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
    max_len: usize,
}

impl HeaderKey {
    /// The value of header `name`.
    #[must_use]
    pub fn new(name: HeaderName) -> Self {
        Self { name, max_len: 256 }
    }

    /// The value of header `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid lower-case header name (a constant, checked at setup).
    #[must_use]
    pub fn from_static(name: &'static str) -> Self {
        Self::new(HeaderName::from_static(name))
    }

    /// Values longer than this are refused rather than stored.
    #[must_use]
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }
}

impl KeyExtractor for HeaderKey {
    type Key = Bytes;
}

impl<B> ExtractKey<Request<B>> for HeaderKey {
    fn extract_key(&self, request: &Request<B>) -> Result<Bytes, KeyError> {
        let value = request
            .headers()
            .get(&self.name)
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
            .ok_or(KeyError::invalid("rate-limit key header missing"))?;
        if value.len() > self.max_len {
            return Err(KeyError::invalid("rate-limit key header too long"));
        }
        Ok(Bytes::copy_from_slice(value))
    }
}

/// The key is a typed request extension, such as a user id put there by authentication
/// middleware. A request without it is [`KeyError::unauthenticated`] (401).
pub struct ExtensionKey<T>(PhantomData<fn() -> T>);

impl<T> ExtensionKey<T> {
    /// The extension of type `T`.
    #[must_use]
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for ExtensionKey<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for ExtensionKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ExtensionKey<T> {}

impl<T> fmt::Debug for ExtensionKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExtensionKey<")?;
        f.write_str(std::any::type_name::<T>())?;
        f.write_str(">")
    }
}

impl<T> KeyExtractor for ExtensionKey<T>
where
    T: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = T;
}

impl<T, B> ExtractKey<Request<B>> for ExtensionKey<T>
where
    T: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    fn extract_key(&self, request: &Request<B>) -> Result<T, KeyError> {
        request
            .extensions()
            .get::<T>()
            .cloned()
            .ok_or(KeyError::unauthenticated("no authenticated identity"))
    }
}

/// The key of the requests whose peer address the server does not provide (see
/// [`PeerIp`]): the unspecified address `0.0.0.0`, which no real peer has.
pub const UNKNOWN_PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// The peer's address, from axum's `ConnectInfo<SocketAddr>` (feature `axum`) or a
/// `SocketAddr` request extension; [`UNKNOWN_PEER`], with one warning per process,
/// when the server provides neither.
fn peer_ip(extensions: &http::Extensions) -> IpAddr {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return info.0.ip().to_canonical();
    }
    if let Some(addr) = extensions.get::<SocketAddr>() {
        return addr.ip().to_canonical();
    }
    warn_unknown_peer();
    UNKNOWN_PEER
}

#[cold]
fn warn_unknown_peer() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "the rate limiter found no peer address in a request: every such request \
             shares one bucket; serve axum with `into_make_service_with_connect_info::<SocketAddr>()` \
             (feature `axum`), or insert the peer's `SocketAddr` as a request extension"
        );
    }
}

/// The key is the IP address of the connection's peer, from axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`) or a `SocketAddr` request
/// extension (any server: insert it where the connection is accepted, as
/// `tower::util::MapRequest` or hyper's `service_fn` over the accepted stream can).
/// Forwarding headers are ignored: see [`ForwardedIp`] behind a proxy.
///
/// A server that provides neither is a deployment error, not the client's: such
/// requests are never refused for it; they share one bucket, under [`UNKNOWN_PEER`], and
/// the first one logs a warning that says how to provide the address.
///
/// IPv4-mapped IPv6 addresses are keyed as IPv4.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    type Key = IpAddr;
}

impl<B> ExtractKey<Request<B>> for PeerIp {
    fn extract_key(&self, request: &Request<B>) -> Result<IpAddr, KeyError> {
        Ok(peer_ip(request.extensions()))
    }
}

/// A network, `addr/prefix`, such as `10.0.0.0/8` or `::1/128`.
///
/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as dual-stack sockets report IPv4
/// peers) are the IPv4 addresses they carry, in a network as in a peer:
/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`. An IPv6 network whose prefix is shorter than
/// the mapped range's 96 bits (`::/0`) also contains the IPv4 addresses in that range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// Normalised: an IPv4-mapped network of prefix 96 or more is stored as IPv4.
    addr: IpAddr,
    prefix: u8,
}

/// The 96-bit prefix of IPv4-mapped IPv6 addresses, `::ffff:0:0/96`.
const MAPPED_PREFIX: u8 = 96;

impl IpNet {
    /// The network of `addr` with a prefix of `prefix` bits, or `None` if the prefix is
    /// longer than the address. [`try_new`](Self::try_new) says why.
    #[must_use]
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        Self::try_new(addr, prefix).ok()
    }

    /// The network of `addr` with a prefix of `prefix` bits.
    ///
    /// An IPv4-mapped address with a prefix of 96 bits or more is stored as the IPv4
    /// network it denotes (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).
    ///
    /// ```
    /// use tower_token_bucket::http::IpNet;
    ///
    /// let mapped = IpNet::try_new("::ffff:10.0.0.0".parse().unwrap(), 104).unwrap();
    /// assert_eq!(mapped, "10.0.0.0/8".parse().unwrap());
    /// let err = IpNet::try_new("10.0.0.1".parse().unwrap(), 128).unwrap_err();
    /// assert_eq!(err.to_string(), "invalid IP network: prefix /128 is longer than an IPv4 address (32 bits)");
    /// ```
    ///
    /// # Errors
    ///
    /// If `prefix` is longer than the address: 32 bits for IPv4, 128 for IPv6.
    pub fn try_new(addr: IpAddr, prefix: u8) -> Result<Self, InvalidIpNet> {
        match addr {
            IpAddr::V4(_) if prefix > 32 => Err(InvalidIpNet::too_long(prefix.into(), 32)),
            IpAddr::V6(_) if prefix > 128 => Err(InvalidIpNet::too_long(prefix.into(), 128)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= MAPPED_PREFIX => Ok(Self {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - MAPPED_PREFIX,
                }),
                _ => Ok(Self { addr, prefix }),
            },
            IpAddr::V4(_) => Ok(Self { addr, prefix }),
        }
    }

    /// The network's address (IPv4 for an IPv4-mapped network).
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits, of [`addr`](Self::addr).
    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. An IPv4-mapped `ip` is its IPv4 address.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Both as IPv6 (IPv4 as mapped), the prefix counted in 128 bits.
        let (net, prefix) = as_v6(self.addr, self.prefix);
        let (ip, _) = as_v6(ip, 0);
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        net & mask == ip & mask
    }
}

/// `addr` as a 128-bit IPv6 address (IPv4 as IPv4-mapped), and `prefix` counted in it.
fn as_v6(addr: IpAddr, prefix: u8) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), prefix + MAPPED_PREFIX),
        IpAddr::V6(v6) => (u128::from(v6), prefix),
    }
}

impl From<IpAddr> for IpNet {
    /// The network of the one address `addr` (`/32`, `/128`; an IPv4-mapped address is
    /// its IPv4 address, `/32`).
    fn from(addr: IpAddr) -> Self {
        match addr.to_canonical() {
            IpAddr::V4(v4) => Self {
                addr: IpAddr::V4(v4),
                prefix: 32,
            },
            v6 @ IpAddr::V6(_) => Self {
                addr: v6,
                prefix: 128,
            },
        }
    }
}

/// An [`IpNet`] that did not parse, or whose prefix is longer than its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidIpNet(Reason);

impl InvalidIpNet {
    fn too_long(prefix: u32, bits: u8) -> Self {
        Self(Reason::PrefixTooLong { prefix, bits })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Syntax,
    PrefixTooLong { prefix: u32, bits: u8 },
}

impl fmt::Display for InvalidIpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Reason::Syntax => f.write_str("invalid IP network (expected `addr` or `addr/prefix`)"),
            Reason::PrefixTooLong { prefix, bits } => {
                let family = if bits == 32 { "IPv4" } else { "IPv6" };
                write!(
                    f,
                    "invalid IP network: prefix /{prefix} is longer than an {family} address ({bits} bits)"
                )
            }
        }
    }
}

impl std::error::Error for InvalidIpNet {}

impl FromStr for IpNet {
    type Err = InvalidIpNet;

    fn from_str(s: &str) -> Result<Self, InvalidIpNet> {
        const SYNTAX: InvalidIpNet = InvalidIpNet(Reason::Syntax);
        match s.split_once('/') {
            None => s.parse::<IpAddr>().map(Self::from).map_err(|_| SYNTAX),
            Some((addr, prefix)) => {
                let addr = addr.parse().map_err(|_| SYNTAX)?;
                // Digits only: `u32::from_str` also takes a leading `+`.
                if !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SYNTAX);
                }
                let prefix: u32 = prefix.parse().map_err(|_| SYNTAX)?;
                let bits = if matches!(addr, IpAddr::V4(_)) {
                    32
                } else {
                    128
                };
                let prefix =
                    u8::try_from(prefix).map_err(|_| InvalidIpNet::too_long(prefix, bits))?;
                Self::try_new(addr, prefix)
            }
        }
    }
}

/// The client IP behind trusted reverse proxies.
///
/// When the peer is one of the trusted proxies, `X-Forwarded-For` (or, after
/// [`rfc7239`](Self::rfc7239), the `Forwarded` header) is read from the right: trusted
/// hops are skipped and the first untrusted one is the client. Entries further left were
/// written by the client and are never believed. When the peer is not trusted, the
/// headers are ignored and the peer is the key. An entry that does not parse (`unknown`,
/// an obfuscated name, garbage) stops the walk at the last trusted hop.
///
/// Read only the header your proxies write: a proxy that appends to `X-Forwarded-For`
/// passes a client's made-up `Forwarded` header through untouched.
///
/// Proxies may be listed in IPv4, IPv6 or IPv4-mapped IPv6 form (`::ffff:10.0.0.1`, as
/// dual-stack sockets log them): a mapped address, in the list, in the peer or in a hop,
/// is the IPv4 address it carries (see [`IpNet`]).
#[derive(Clone, Debug)]
pub struct ForwardedIp {
    trusted: Vec<IpNet>,
    rfc7239: bool,
}

impl ForwardedIp {
    /// Trusts the proxies in `trusted`, which write `X-Forwarded-For`.
    #[must_use]
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
            rfc7239: false,
        }
    }

    /// Reads the `Forwarded` header (RFC 7239) instead of `X-Forwarded-For`.
    #[must_use]
    pub fn rfc7239(mut self) -> Self {
        self.rfc7239 = true;
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client address given the peer and the request headers.
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let name = if self.rfc7239 {
            FORWARDED
        } else {
            X_FORWARDED_FOR
        };
        let mut last = peer;
        for line in headers.get_all(name).iter().rev() {
            let Ok(line) = line.to_str() else {
                return last;
            };
            for element in line.rsplit(',') {
                let node = if self.rfc7239 {
                    forwarded_for(element)
                } else {
                    Some(element)
                };
                let Some(ip) = node.and_then(parse_node) else {
                    return last;
                };
                if !self.is_trusted(ip) {
                    return ip;
                }
                last = ip;
            }
        }
        last
    }
}

/// The `for=` value of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// An IP from `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

impl KeyExtractor for ForwardedIp {
    type Key = IpAddr;
}

impl<B> ExtractKey<Request<B>> for ForwardedIp {
    fn extract_key(&self, request: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = peer_ip(request.extensions());
        if peer == UNKNOWN_PEER {
            // Without the peer, no forwarding header can be trusted.
            return Ok(UNKNOWN_PEER);
        }
        Ok(self.client(peer, request.headers()))
    }
}

/// The key of [`user_or_peer_ip`].
pub type UserOrIpKey = crate::EitherKey<Bytes, IpAddr>;

/// The value of header `header` (such as `x-user-id`), else the peer IP.
///
/// # Panics
///
/// If `header` is not a valid lower-case header name (a constant, checked at setup).
#[must_use]
pub fn user_or_peer_ip(header: &'static str) -> Or<HeaderKey, PeerIp> {
    crate::ExtractKeyExt::or(HeaderKey::from_static(header), PeerIp)
}

#[cfg(test)]
mod tests {
    use http::Response;
    use http::header::{CONTENT_TYPE, RETRY_AFTER};

    use super::*;

    const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

    fn limited(retry_after: Duration) -> RateLimitError {
        RateLimitError::RateLimited {
            retry_after,
            quota: Quota::per_second(5),
            limiter: "per-user".into(),
        }
    }

    #[test]
    fn sub_second_wait_is_retry_after_one() {
        let r: Response<String> = limited(Duration::from_millis(200))
            .to_http_response::<Bytes>()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[RATELIMIT_POLICY], "\"per-user\";q=5;w=1");
        assert_eq!(r.headers()[RATELIMIT], "\"per-user\";r=0;t=1");
        assert_eq!(
            r.body(),
            r#"{"error":"rate limit exceeded: 5 requests per 1s","retryAfter":1}"#
        );
    }

    #[test]
    fn waits_round_up() {
        let r: Response<Bytes> = limited(Duration::from_millis(1500)).to_http_response();
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        let r: Response<Bytes> = limited(Duration::ZERO).to_http_response();
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn grpc_form() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let r: Response<Bytes> = limited(Duration::from_millis(10)).to_response(&h);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[GRPC_STATUS], "8");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(
            r.headers()[GRPC_MESSAGE],
            "rate limit exceeded: 5 requests per 1s"
        );
    }

    #[test]
    fn statuses() {
        let e = RateLimitError::InvalidKey { reason: "x" };
        assert_eq!(
            (e.status_code(), e.grpc_code()),
            (StatusCode::BAD_REQUEST, 3)
        );
        let r: Response<Bytes> = e.to_http_response();
        assert!(r.headers().get(RETRY_AFTER).is_none());
        assert_eq!(r.body(), r#"{"error":"no rate-limit key: x"}"#.as_bytes());
        let e = RateLimitError::Unauthenticated { reason: "x" };
        assert_eq!(
            (e.status_code(), e.grpc_code()),
            (StatusCode::UNAUTHORIZED, 16)
        );
        let e = RateLimitError::KeyCapacity {
            retry_after: Duration::from_secs(10),
        };
        assert_eq!(
            (e.status_code(), e.grpc_code()),
            (StatusCode::SERVICE_UNAVAILABLE, 14)
        );
        let e = RateLimitError::CostTooLarge {
            cost: 9,
            quota: Quota::per_second(5),
        };
        assert_eq!(
            (e.status_code(), e.grpc_code()),
            (StatusCode::PAYLOAD_TOO_LARGE, 8)
        );
    }

    #[test]
    fn policy_name_is_a_valid_sf_string() {
        assert_eq!(sf_string("a\"b\\c\u{e9}"), "\"a\\\"b\\\\c_\"");
    }

    fn req(peer: &str, headers: &[(&'static str, &str)]) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        for (n, v) in headers {
            r.headers_mut()
                .append(*n, HeaderValue::from_str(v).unwrap());
        }
        r
    }

    fn proxies() -> ForwardedIp {
        ForwardedIp::new(["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let r = req("203.0.113.9:5000", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(proxies().extract_key(&r), Ok(ip("203.0.113.9")));
        let r = req("203.0.113.9:5000", &[("forwarded", "for=1.1.1.1")]);
        assert_eq!(proxies().rfc7239().extract_key(&r), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn a_forwarded_header_is_not_read_when_proxies_write_x_forwarded_for() {
        // The client sent `Forwarded`; the proxy appended its peer to X-Forwarded-For.
        let r = req(
            "10.0.0.2:80",
            &[
                ("forwarded", "for=1.1.1.1"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        );
        assert_eq!(proxies().extract_key(&r), Ok(ip("198.51.100.7")));
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        // The client prepended a fake address; the trusted proxies appended the truth.
        let r = req(
            "10.0.0.2:80",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.1")],
        );
        assert_eq!(proxies().extract_key(&r), Ok(ip("198.51.100.7")));
        // Several header lines read as one list.
        let r = req(
            "10.0.0.2:80",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "198.51.100.7:1234"),
            ],
        );
        assert_eq!(proxies().extract_key(&r), Ok(ip("198.51.100.7")));
    }

    #[test]
    fn forwarded_header() {
        let r = req(
            "[::1]:80",
            &[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=10.1.1.1",
            )],
        );
        assert_eq!(proxies().rfc7239().extract_key(&r), Ok(ip("2001:db8::7")));
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let r = req(
            "10.0.0.2:80",
            &[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.1")],
        );
        assert_eq!(proxies().extract_key(&r), Ok(ip("10.0.0.1")));
        let r = req("10.0.0.2:80", &[("forwarded", "for=unknown")]);
        assert_eq!(proxies().rfc7239().extract_key(&r), Ok(ip("10.0.0.2")));
        let r = req("10.0.0.2:80", &[]);
        assert_eq!(proxies().extract_key(&r), Ok(ip("10.0.0.2")));
    }

    #[test]
    fn requests_without_a_peer_share_one_key_rather_than_fail() {
        let r = Request::builder().body(()).unwrap();
        assert_eq!(PeerIp.extract_key(&r), Ok(UNKNOWN_PEER));
        let r = Request::builder()
            .header("x-forwarded-for", "1.1.1.1")
            .body(())
            .unwrap();
        assert_eq!(proxies().extract_key(&r), Ok(UNKNOWN_PEER));
    }

    #[test]
    fn mapped_v4_is_v4() {
        let r = req("[::ffff:203.0.113.9]:80", &[]);
        assert_eq!(PeerIp.extract_key(&r), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn ipnet() {
        let n: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(n.contains(ip("192.168.3.4")));
        assert!(!n.contains(ip("192.169.0.1")));
        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!("1.2.3.4/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }

    #[test]
    fn header_key() {
        let x = HeaderKey::from_static("x-user-id").max_len(4);
        assert_eq!(
            x.extract_key(&req("1.1.1.1:1", &[("x-user-id", "ab")])),
            Ok(Bytes::from_static(b"ab"))
        );
        assert!(
            x.extract_key(&req("1.1.1.1:1", &[("x-user-id", "abcde")]))
                .is_err()
        );
        assert!(
            x.extract_key(&req("1.1.1.1:1", &[("x-user-id", "")]))
                .is_err()
        );
        let both = user_or_peer_ip("x-user-id");
        assert_eq!(
            both.extract_key(&req("1.1.1.1:1", &[])),
            Ok(crate::EitherKey::Second(ip("1.1.1.1")))
        );
    }
}
