//! Admission of new sockets: the client's address (taken from a trusted proxy's
//! `X-Forwarded-For` entry only) and the per-IP and per-user connection caps. A slot is held
//! for the life of the socket and released when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use parking_lot::Mutex;

/// An IP network, `addr/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address. When the peer is a trusted proxy, the last `X-Forwarded-For` entry
/// (the one that proxy appended) is the client; any earlier entries were written by the client
/// itself and are never believed. Any other peer is the client.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    if !trusted.iter().any(|c| c.contains(peer_ip)) {
        return peer_ip;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .unwrap_or(peer_ip)
}

#[derive(Default)]
struct Counts {
    by_ip: HashMap<IpAddr, u32>,
    by_user: HashMap<String, u32>,
}

/// Per-IP and per-user socket counts.
pub struct Admission {
    counts: Mutex<Counts>,
    per_ip: u32,
    per_user: u32,
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Ip,
    User,
}

/// Held for the life of a socket.
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    user: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
        if let Some(n) = c.by_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.by_user.remove(&self.user);
            }
        }
    }
}

impl Admission {
    pub fn new(per_ip: u32, per_user: u32) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::new(Counts::default()),
            per_ip,
            per_user,
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr, user: &str) -> Result<Slot, Refused> {
        let mut c = self.counts.lock();
        if c.by_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip {
            return Err(Refused::Ip);
        }
        if c.by_user.get(user).copied().unwrap_or(0) >= self.per_user {
            return Err(Refused::User);
        }
        *c.by_ip.entry(ip).or_default() += 1;
        *c.by_user.entry(user.to_owned()).or_default() += 1;
        Ok(Slot {
            admission: self.clone(),
            ip,
            user: user.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_networks_only() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_its_last_entry() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "9.9.9.9:4000".parse().unwrap();
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(stranger, &h, &trusted),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn slots_count_per_ip_and_user_and_free_on_drop() {
        let a = Admission::new(2, 1);
        let ip: IpAddr = "1.1.1.1".parse().unwrap();
        let s1 = a.admit(ip, "u1").unwrap();
        assert_eq!(a.admit(ip, "u1").err(), Some(Refused::User));
        let _s2 = a.admit(ip, "u2").unwrap();
        assert_eq!(a.admit(ip, "u3").err(), Some(Refused::Ip));
        drop(s1);
        assert!(a.admit(ip, "u3").is_ok());
    }
}
