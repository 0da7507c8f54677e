//! The egress guard: what tidings may connect to on a tenant's behalf (webhooks now, the
//! email, SMS and chat providers later).
//!
//! A tenant-chosen URL must be `http` or `https` with a host, and no address it leads to may
//! be loopback, private, link-local, unique-local, unspecified, shared (CGNAT), multicast,
//! broadcast or reserved, including IPv4 addresses embedded in IPv6 (mapped, compatible,
//! NAT64, 6to4). URLs are checked when set ([`check_url`]) and the addresses a name resolves
//! to on every connection (the delivery stage's resolver calls [`check_ip`]). Operators can
//! allow private targets with `egress.allow_private`.

use crate::error::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;

/// Whether `ip` is a public unicast address tidings may connect to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
}

/// The IPv4 address inside a mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(low);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

fn forbidden(m: impl Into<String>) -> Error {
    Error::invalid("url_not_allowed", m)
}

/// Check an address a connection is about to use.
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<()> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(forbidden(
            "the destination is a loopback, private or reserved address",
        ))
    }
}

/// Check a tenant-supplied URL: `invalid_url` when it is not an absolute http(s) URL with a
/// host, `url_not_allowed` when its host is an address or name that leads inside.
pub fn check_url(raw: &str, allow_private: bool) -> Result<()> {
    let invalid = |m: &str| Error::invalid("invalid_url", format!("url: {m}"));
    if raw.len() > MAX_URL_LEN {
        return Err(invalid(&format!("longer than {MAX_URL_LEN} bytes")));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(&format!("cannot parse it: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    match url.host() {
        None => return Err(invalid("it has no host")),
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow_private)?,
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow_private)?,
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if !allow_private && (d == "localhost" || d.ends_with(".localhost")) {
                return Err(forbidden("localhost is not a destination"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "127.8.9.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!is_public(ip), "{a} must be refused");
            assert!(check_ip(ip, true).is_ok(), "{a} allowed when configured");
        }
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(a.parse().unwrap()), "{a} is public");
        }
    }

    #[test]
    fn urls_are_checked_when_set() {
        let code = |u: &str| check_url(u, false).map_or_else(|e| e.code, |()| "ok");
        assert_eq!(code("https://hooks.example.com/x?y=1"), "ok");
        assert_eq!(code("http://203.0.113.9:8080/"), "ok");
        assert_eq!(code("http://127.0.0.1/x"), "url_not_allowed");
        assert_eq!(code("http://169.254.169.254/latest"), "url_not_allowed");
        assert_eq!(code("http://[::1]:8080/"), "url_not_allowed");
        assert_eq!(code("http://[::ffff:7f00:1]/"), "url_not_allowed");
        assert_eq!(code("http://2130706433/"), "url_not_allowed"); // 127.0.0.1 as a number
        assert_eq!(code("http://0x7f.1/"), "url_not_allowed");
        assert_eq!(code("http://LOCALHOST./"), "url_not_allowed");
        assert_eq!(code("http://a.localhost:9/"), "url_not_allowed");
        assert_eq!(code("not a url"), "invalid_url");
        assert_eq!(code("http+unix:///var/run/docker.sock"), "invalid_url");
        assert_eq!(code("unix:/var/run/x.sock"), "invalid_url");
        assert_eq!(code("ftp://example.com/"), "invalid_url");
        assert_eq!(code("file:///etc/passwd"), "invalid_url");
        assert_eq!(
            code(&format!("http://e.com/{}", "a".repeat(3000))),
            "invalid_url"
        );
        assert!(check_url("http://127.0.0.1:9/", true).is_ok());
    }
}
