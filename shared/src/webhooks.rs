//! Webhooks as the Standard Webhooks specification defines them: event types, `whsec_`
//! secrets, the `v1` signature (HMAC-SHA256 of `id.timestamp.body`), the retry schedule, and
//! which addresses a webhook may be sent to.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A new connection, through a connect flow or `POST /v1/connections`.
    #[serde(rename = "connection.created")]
    Created,
    /// New tokens or credentials for a connection that existed.
    #[serde(rename = "connection.reconnected")]
    Reconnected,
    /// The provider refused the refresh token or the credentials: the end user must connect again.
    #[serde(rename = "connection.needs_reauth")]
    NeedsReauth,
    /// Refreshes have failed, for reasons that may pass, for longer than the threshold.
    #[serde(rename = "connection.refresh_failing")]
    RefreshFailing,
    /// Back to working after `needs_reauth` or `refresh_failing`.
    #[serde(rename = "connection.recovered")]
    Recovered,
    #[serde(rename = "connection.deleted")]
    Deleted,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Created,
        EventType::Reconnected,
        EventType::NeedsReauth,
        EventType::RefreshFailing,
        EventType::Recovered,
        EventType::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "connection.created",
            EventType::Reconnected => "connection.reconnected",
            EventType::NeedsReauth => "connection.needs_reauth",
            EventType::RefreshFailing => "connection.refresh_failing",
            EventType::Recovered => "connection.recovered",
            EventType::Deleted => "connection.deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Delays before the 2nd, 3rd, … attempt of a delivery: from seconds to about a day in all
/// (28.7 h), after which the delivery is marked failed and kept (it can be sent again by hand).
pub const RETRY_SCHEDULE_SECS: [u64; 10] = [5, 30, 120, 600, 1800, 3600, 7200, 18_000, 36_000, 36_000];

/// How long an endpoint has to answer.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The delay before attempt `attempts + 1`, given `attempts` made; `None` when none is left.
/// ±10% jitter, so deliveries that failed together do not all come back together.
pub fn retry_delay(attempts: u32) -> Option<Duration> {
    use rand::Rng;
    let base = *RETRY_SCHEDULE_SECS.get(attempts.checked_sub(1)? as usize)?;
    Some(Duration::from_secs(base).mul_f64(rand::thread_rng().gen_range(0.9..1.1)))
}

/// A signing secret, `whsec_` and the base64 of its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

impl SigningSecret {
    pub const PREFIX: &'static str = "whsec_";

    /// A new random secret of 32 bytes.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        Self(b)
    }

    /// Reads `whsec_<base64>`; 24 to 64 bytes.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s.strip_prefix(Self::PREFIX).ok_or("a webhook secret starts with `whsec_`")?;
        let bytes = STANDARD.decode(b64).map_err(|_| "a webhook secret is `whsec_` then base64")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err("a webhook secret holds 24 to 64 bytes".into());
        }
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> String {
        format!("{}{}", Self::PREFIX, STANDARD.encode(&self.0))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut msg = Vec::with_capacity(id.len() + 24 + body.len());
        msg.extend_from_slice(id.as_bytes());
        msg.push(b'.');
        msg.extend_from_slice(timestamp.to_string().as_bytes());
        msg.push(b'.');
        msg.extend_from_slice(body);
        format!("v1,{}", STANDARD.encode(hmac_sha256(&self.0, &msg)))
    }
}

/// The `webhook-signature` value: one `v1,…` per live secret, separated by spaces.
pub fn signature_header(secrets: &[SigningSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| s.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// Verifies a delivery as a receiver does: any `v1` signature made with `secret` matches, and
/// the timestamp is within `tolerance` of `now` (replays of old deliveries are refused).
pub fn verify(
    secret: &SigningSecret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else { return false };
    if now.abs_diff(ts) > tolerance.as_secs() {
        return false;
    }
    let expected = secret.sign(id, ts, body);
    signatures.split(' ').any(|s| crate::crypto::same_digest(s.as_bytes(), expected.as_bytes()))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// Whether a webhook may be sent to this address when private addresses are not allowed:
/// only globally routable unicast. Loopback, private (RFC 1918, unique-local), link-local
/// (which holds cloud metadata services), shared (CGNAT), documentation, benchmarking,
/// multicast, broadcast and unspecified addresses are refused, and so are IPv4 addresses
/// written inside IPv6 ones.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: an IPv4 address inside
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible
}

/// Checks a webhook URL as given: http(s), a host, no credentials; `http://` and literal
/// non-public addresses only when private addresses are allowed. (Names are checked again
/// when each delivery is sent, against the addresses they resolve to then.)
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    let u = url::Url::parse(raw).map_err(|e| format!("url is not an absolute URL ({e})"))?;
    match u.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err("url must be https:// (http:// only when AUTHBRIDGE_WEBHOOK_ALLOW_PRIVATE is set)".into()),
        _ => return Err("url must be an https:// URL".into()),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("url must not hold a user name or password".into());
    }
    if u.fragment().is_some() {
        return Err("url must not have a fragment".into());
    }
    let literal = match u.host() {
        None => return Err("url must have a host".into()),
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => (d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"))
            .then_some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    if !allow_private && literal.is_some_and(|ip| !is_public(ip)) {
        return Err("url points at a loopback, private or link-local address (allowed only with \
                    AUTHBRIDGE_WEBHOOK_ALLOW_PRIVATE)"
            .into());
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than a block is hashed first.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn signatures_match_the_specifications_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let s = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let (id, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", br#"{"test": 2432232314}"#);
        assert_eq!(s.sign(id, 1614265330, body), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // Several secrets sign side by side; any one of them verifies.
        let header = signature_header(&[SigningSecret::generate(), s.clone()], id, 1614265330, body);
        let check = |body: &[u8], now: i64| verify(&s, id, "1614265330", &header, body, now, Duration::from_secs(300));
        assert!(check(body, 1614265331));
        assert!(!check(br#"{"test": 1}"#, 1614265331), "another body");
        assert!(!check(body, 1614265331 + 600), "too old: a replay");
        assert!(!verify(&s, id, "not a time", &header, body, 1614265331, Duration::from_secs(300)));
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = SigningSecret::generate();
        assert_eq!(SigningSecret::parse(&s.expose()).unwrap(), s);
        assert!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningSecret::parse("whsec_!!!").is_err());
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err());
        assert!(!format!("{s:?}").contains(&s.expose()[6..]));
    }

    #[test]
    fn only_public_addresses_pass_unless_allowed() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_url("http://hooks.example.com/x", false).is_err());
        assert!(check_url("https://127.0.0.1/x", false).is_err());
        assert!(check_url("https://localhost/x", false).is_err());
        assert!(check_url("https://[::1]/x", false).is_err());
        assert!(check_url("https://u:p@hooks.example.com/x", false).is_err());
        assert!(check_url("ftp://hooks.example.com/x", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/x", true).is_ok());
    }

    #[test]
    fn retries_run_from_seconds_to_about_a_day() {
        assert_eq!(retry_delay(0), None);
        let first = retry_delay(1).unwrap();
        assert!(first >= Duration::from_millis(4500) && first <= Duration::from_millis(5500));
        assert!(retry_delay(RETRY_SCHEDULE_SECS.len() as u32).is_some());
        assert_eq!(retry_delay(RETRY_SCHEDULE_SECS.len() as u32 + 1), None);
        let total: u64 = RETRY_SCHEDULE_SECS.iter().sum();
        assert!((20 * 3600..=30 * 3600).contains(&total), "{total}");
    }
}
