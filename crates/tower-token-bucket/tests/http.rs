//! The HTTP face: trusted proxies given in any address form, and the `RateLimit-Policy`
//! header against the rate really enforced.
#![cfg(feature = "http")]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use proptest::prelude::*;
use tower_token_bucket::http::{ForwardedIp, IpNet, RATELIMIT_POLICY};
use tower_token_bucket::{ExtractKey, Quota, RateLimitError, Refusal};

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

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_mapped_trusted_proxy_does_not_trust_every_ipv4_client() {
    for trusted in [
        "::ffff:10.0.0.1",
        "::ffff:10.0.0.0/104",
        "::ffff:10.0.0.1/128",
    ] {
        let proxies = ForwardedIp::new([trusted.parse::<IpNet>().unwrap()]);
        // A client connecting directly over IPv4 forges the header: not believed.
        let direct = req("203.0.113.9:5000", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            proxies.extract_key(&direct),
            Ok(ip("203.0.113.9")),
            "{trusted}"
        );
        // The same client on a dual-stack socket (a mapped peer): not believed either.
        let mapped = req(
            "[::ffff:203.0.113.9]:5000",
            &[("x-forwarded-for", "1.1.1.1")],
        );
        assert_eq!(
            proxies.extract_key(&mapped),
            Ok(ip("203.0.113.9")),
            "{trusted}"
        );
        // The proxy itself, in either form, is trusted.
        for peer in ["10.0.0.1:80", "[::ffff:10.0.0.1]:80"] {
            let r = req(peer, &[("x-forwarded-for", "198.51.100.7")]);
            assert_eq!(
                proxies.extract_key(&r),
                Ok(ip("198.51.100.7")),
                "{trusted} {peer}"
            );
        }
    }
}

#[test]
fn mapped_networks_equal_their_ipv4_form() {
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    assert_eq!(net("::ffff:10.0.0.1"), net("10.0.0.1"));
    assert_eq!(net("::ffff:10.0.0.0/104"), net("10.0.0.0/8"));
    assert_eq!(IpNet::from(ip("::ffff:10.0.0.1")), net("10.0.0.1/32"));
    assert!(net("::ffff:10.0.0.0/104").contains(ip("10.255.0.1")));
    assert!(!net("::ffff:10.0.0.0/104").contains(ip("11.0.0.1")));
    // A prefix shorter than the mapped range covers IPv6 and IPv4 alike.
    assert!(net("::/0").contains(ip("192.0.2.1")));
    assert!(net("::/0").contains(ip("2001:db8::1")));
    assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
    assert!(net("0.0.0.0/0").contains(ip("::ffff:192.0.2.1")));
}

fn policy(quota: Quota) -> String {
    let error = RateLimitError::RateLimited {
        retry_after: Duration::from_millis(10),
        quota,
        limiter: "l".into(),
    };
    let response: Response<Bytes> = error.to_http_response();
    response.headers()[RATELIMIT_POLICY]
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn ratelimit_policy_states_the_rate_enforced() {
    // 1 per 90 ms is 11.1 a second: 100 every 9 s, exactly.
    assert_eq!(
        policy(Quota::new(1, Duration::from_millis(90))),
        "\"l\";q=100;w=9"
    );
    // 3 per 1.5 s is 2 a second.
    assert_eq!(
        policy(Quota::new(3, Duration::from_millis(1500))),
        "\"l\";q=4;w=2"
    );
    assert_eq!(policy(Quota::per_second(5)), "\"l\";q=5;w=1");
    assert_eq!(policy(Quota::per_minute(100)), "\"l\";q=100;w=60");
    assert_eq!(
        policy(Quota::new(2, Duration::from_millis(1500))),
        "\"l\";q=4;w=3"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The announced rate is never above the rate enforced, is within 1% of it when an
    /// hour's window holds 100 tokens, and the window is never shorter than the period.
    #[test]
    fn ratelimit_policy_never_promises_more_than_enforced(
        count in 1u32..10_000,
        period_ns in prop_oneof![
            1u64..1_000_000_000,
            1_000_000_000u64..100_000_000_000,
            (1u64..600).prop_map(|ms| ms * 1_000_000),
        ],
    ) {
        let period = Duration::from_nanos(period_ns);
        let header = policy(Quota::new(count, period));
        let (q, w) = header
            .strip_prefix("\"l\";q=")
            .and_then(|rest| rest.split_once(";w="))
            .map(|(q, w)| (q.parse::<u128>().unwrap(), w.parse::<u128>().unwrap()))
            .unwrap();
        let (count, period_ns) = (u128::from(count), u128::from(period_ns));
        prop_assert!(q >= 1 && w >= 1, "{header}");
        prop_assert!(w * 1_000_000_000 >= period_ns, "{header}: window shorter than the period");
        // q / w <= count / period
        prop_assert!(q * period_ns <= count * w * 1_000_000_000, "{header}: more than enforced");
        if count * 3_600_000_000_000 >= 100 * period_ns {
            prop_assert!(100 * q * period_ns >= 99 * count * w * 1_000_000_000, "{header}: far below");
        }
    }
}

mod contains {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;
    use tower_token_bucket::http::IpNet;

    /// An address in one of its forms: IPv4, IPv6, or IPv4 written as IPv4-mapped IPv6.
    #[derive(Clone, Copy, Debug)]
    enum Form {
        V4(u32),
        V6(u128),
        Mapped(u32),
    }

    impl Form {
        fn addr(self) -> IpAddr {
            match self {
                Self::V4(a) => IpAddr::V4(Ipv4Addr::from(a)),
                Self::V6(a) => IpAddr::V6(Ipv6Addr::from(a)),
                Self::Mapped(a) => IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()),
            }
        }

        fn bits(self) -> u8 {
            if matches!(self, Self::V4(_)) { 32 } else { 128 }
        }

        /// The reference's view: the address as a string of 128 bits, IPv4 as mapped.
        fn bit_string(self) -> Vec<bool> {
            let n = match self {
                Self::V4(a) | Self::Mapped(a) => (0xffff_u128 << 32) | u128::from(a),
                Self::V6(a) => a,
            };
            (0..128).rev().map(|i| n >> i & 1 == 1).collect()
        }
    }

    /// Addresses that often share long prefixes, so both answers are common.
    fn form() -> impl Strategy<Value = Form> {
        let v4 = prop_oneof![any::<u32>(), (0u32..4).prop_map(|low| 0x0a00_0000 | low)];
        let v6 = prop_oneof![
            any::<u128>(),
            (0u128..4).prop_map(|low| (0x2001_0db8_u128 << 96) | low),
            // The mapped range itself, as raw IPv6.
            any::<u32>().prop_map(|a| (0xffff_u128 << 32) | u128::from(a)),
        ];
        prop_oneof![
            v4.clone().prop_map(Form::V4),
            v6.prop_map(Form::V6),
            v4.prop_map(Form::Mapped),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// `contains` agrees with comparing the first bits of the two addresses, IPv4
        /// and IPv4-mapped being the same address; a prefix longer than its address is
        /// refused, never stored.
        #[test]
        fn contains_matches_a_bitwise_reference(net in form(), prefix in 0u8..=140, ip in form()) {
            match IpNet::try_new(net.addr(), prefix) {
                Err(e) => {
                    prop_assert!(prefix > net.bits());
                    prop_assert!(e.to_string().contains("longer than"), "{e}");
                }
                Ok(n) => {
                    prop_assert!(prefix <= net.bits());
                    // The prefix in the 128-bit space: IPv4 sits under the 96-bit mapped prefix.
                    let bits = usize::from(prefix) + if matches!(net, Form::V4(_)) { 96 } else { 0 };
                    let expected = net.bit_string()[..bits] == ip.bit_string()[..bits];
                    prop_assert_eq!(n.contains(ip.addr()), expected, "{:?} {:?}", n, ip);
                }
            }
        }
    }
}
