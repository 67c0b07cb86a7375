//! Per-container network allow-lists: the `net_allow` LPM trie.
//!
//! A key is `{prefixlen, cgid, proto, dir, port, addr}` (packed, 32 bytes;
//! `struct lancet_net_key` in bpf/lancet.h). Everything before the address
//! is always matched whole, so one trie holds every container's rules and a
//! lookup can only ever hit the caller's own. IPv4 is stored v4-mapped, so
//! an IPv4 CIDR /n has prefixlen 96 + 96 + n. The programs look up
//! (proto, port), (proto, any), (any, port), (any, any): at most four
//! lookups, and only for a cgroup that has a policy. Loopback (127.0.0.0/8,
//! ::1) is always allowed: traffic on a container's own loopback never
//! leaves its network namespace, so it is not a network flow to police.

use super::{delete, map_err, Enforcer, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libbpf_rs::{MapCore, MapFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

const KEY_LEN: usize = 32;
/// Bits before the address: cgid 64 + proto 8 + dir 8 + port 16.
const FIXED_BITS: u32 = 96;
const DIR_EGRESS: u8 = 0;
const DIR_BIND: u8 = 1;
const DIR_ISOLATION: u8 = 0x80;
const ALLOW_DURING_ISOLATION: u32 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

pub use lancet_engine::event::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// connect() and sendto(): `cidr`/`port` are the peer's.
    Egress,
    /// bind(): `cidr`/`port` are the local address and port the container
    /// may listen on (0.0.0.0/0 for any address).
    Bind,
}

/// One allow rule of a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetRule {
    pub cidr: IpNet,
    /// None: any port.
    pub port: Option<u16>,
    /// None: TCP and UDP (and any other protocol).
    pub proto: Option<Protocol>,
    pub dir: Direction,
    /// Also allowed while the container is isolated (e.g. the DNS server
    /// or a forensics collector). For Egress rules this also lets the
    /// peer's packets through the isolation packet filters.
    pub during_isolation: bool,
}

impl NetRule {
    /// An egress rule to `cidr` (any port, any protocol).
    pub fn egress(cidr: IpNet) -> NetRule {
        NetRule { cidr, port: None, proto: None, dir: Direction::Egress, during_isolation: false }
    }

    pub fn port(mut self, port: u16) -> NetRule {
        self.port = (port != 0).then_some(port);
        self
    }

    pub fn proto(mut self, proto: Protocol) -> NetRule {
        self.proto = Some(proto);
        self
    }

    pub fn bind(cidr: IpNet) -> NetRule {
        NetRule { cidr, port: None, proto: None, dir: Direction::Bind, during_isolation: false }
    }

    pub fn during_isolation(mut self) -> NetRule {
        self.during_isolation = true;
        self
    }
}

fn proto_num(p: Option<Protocol>) -> u8 {
    match p {
        None => 0,
        Some(Protocol::Tcp) => IPPROTO_TCP,
        Some(Protocol::Udp) => IPPROTO_UDP,
    }
}

/// The trie key of `rule` for `cgid` in key space `dir` (with or without
/// the isolation bit).
pub(crate) fn rule_key(cgid: u64, rule: &NetRule, isolation: bool) -> [u8; KEY_LEN] {
    let (addr, bits) = match rule.cidr.trunc() {
        IpNet::V4(n) => (n.addr().to_ipv6_mapped().octets(), 96 + u32::from(n.prefix_len())),
        IpNet::V6(n) => (n.addr().octets(), u32::from(n.prefix_len())),
    };
    let mut dir = match rule.dir {
        Direction::Egress => DIR_EGRESS,
        Direction::Bind => DIR_BIND,
    };
    if isolation {
        dir |= DIR_ISOLATION;
    }
    let mut k = [0u8; KEY_LEN];
    k[0..4].copy_from_slice(&(FIXED_BITS + bits).to_ne_bytes());
    k[4..12].copy_from_slice(&cgid.to_ne_bytes());
    k[12] = proto_num(rule.proto);
    k[13] = dir;
    k[14..16].copy_from_slice(&rule.port.unwrap_or(0).to_be_bytes());
    k[16..32].copy_from_slice(&addr);
    k
}

pub(crate) fn key_cgid(k: &[u8]) -> Option<u64> {
    k.get(4..12).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
}

/// The rule a key stands for, and whether it is in the isolation key space.
pub(crate) fn key_rule(k: &[u8]) -> Option<(NetRule, bool)> {
    if k.len() != KEY_LEN {
        return None;
    }
    let plen = u32::from_ne_bytes(k[0..4].try_into().ok()?).checked_sub(FIXED_BITS)?;
    let proto = match k[12] {
        0 => None,
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        _ => return None,
    };
    let isolation = k[13] & DIR_ISOLATION != 0;
    let dir = match k[13] & !DIR_ISOLATION {
        DIR_EGRESS => Direction::Egress,
        DIR_BIND => Direction::Bind,
        _ => return None,
    };
    let port = u16::from_be_bytes([k[14], k[15]]);
    let octets: [u8; 16] = k[16..32].try_into().ok()?;
    let v6 = Ipv6Addr::from(octets);
    let cidr = match v6.to_ipv4_mapped() {
        Some(v4) if plen >= 96 => IpNet::V4(Ipv4Net::new(v4, (plen - 96) as u8).ok()?),
        _ => IpNet::V6(Ipv6Net::new(v6, plen.min(128) as u8).ok()?),
    };
    Some((NetRule { cidr, port: (port != 0).then_some(port), proto, dir, during_isolation: false }, isolation))
}

impl Enforcer {
    /// Replaces the allow-list of `cgid` with `rules`. New entries go in
    /// before stale ones go out, so a rule in both lists never lapses.
    pub fn set_allow(&self, cgid: u64, rules: &[NetRule]) -> Result<()> {
        let mut want: HashSet<[u8; KEY_LEN]> = HashSet::new();
        for r in rules {
            want.insert(rule_key(cgid, r, false));
            if r.during_isolation {
                want.insert(rule_key(cgid, r, true));
            }
        }
        for k in &want {
            let isolation = k[13] & DIR_ISOLATION != 0;
            let value = if isolation { ALLOW_DURING_ISOLATION } else { 0 };
            self.net_allow.update(k, &value.to_ne_bytes(), MapFlags::ANY).map_err(|source| {
                let rule = key_rule(k).map(|(r, _)| format!("{r:?}")).unwrap_or_default();
                super::EnforceError::Map { map: "net_allow", context: format!("cgroup {cgid}, rule {rule}"), source }
            })?;
        }
        self.remove_allow_entries(cgid, &want)
    }

    /// Deletes the entries of `cgid` not in `keep`.
    pub(crate) fn remove_allow_entries(&self, cgid: u64, keep: &HashSet<[u8; KEY_LEN]>) -> Result<()> {
        let stale: Vec<Vec<u8>> = self
            .net_allow
            .keys()
            .filter(|k| key_cgid(k) == Some(cgid))
            .filter(|k| <[u8; KEY_LEN]>::try_from(k.as_slice()).map(|a| !keep.contains(&a)).unwrap_or(true))
            .collect();
        for k in stale {
            delete(&self.net_allow, &k).map_err(map_err("net_allow", format!("cgroup {cgid}")))?;
        }
        Ok(())
    }

    /// The allow-list of `cgid` as the kernel holds it (sorted).
    pub fn allow_rules(&self, cgid: u64) -> Result<Vec<NetRule>> {
        let mut normal = Vec::new();
        let mut isolation = HashSet::new();
        for k in self.net_allow.keys().filter(|k| key_cgid(k) == Some(cgid)) {
            match key_rule(&k) {
                Some((r, true)) => {
                    isolation.insert(r);
                }
                Some((r, false)) => normal.push(r),
                None => tracing::warn!(cgid, "net_allow holds a key this build cannot read"),
            }
        }
        for r in normal.iter_mut() {
            r.during_isolation = isolation.contains(r);
        }
        normal.sort_by_key(|r| (r.dir, r.cidr, r.proto, r.port, r.during_isolation));
        Ok(normal)
    }
}

/// Whether `ip` is one the programs always allow.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_keys_are_v4_mapped_with_the_documented_prefixlen() {
        let r = NetRule::egress("10.1.2.3/24".parse().unwrap()).port(8080).proto(Protocol::Tcp);
        let k = rule_key(7, &r, false);
        assert_eq!(u32::from_ne_bytes(k[0..4].try_into().unwrap()), 64 + 8 + 8 + 16 + 96 + 24);
        assert_eq!(u64::from_ne_bytes(k[4..12].try_into().unwrap()), 7);
        assert_eq!(k[12], 6);
        assert_eq!(k[13], 0);
        assert_eq!(&k[14..16], &8080u16.to_be_bytes());
        assert_eq!(&k[16..32], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 0]);
        let (back, iso) = key_rule(&k).unwrap();
        assert!(!iso);
        assert_eq!(back, NetRule::egress("10.1.2.0/24".parse().unwrap()).port(8080).proto(Protocol::Tcp));
    }

    #[test]
    fn v6_and_bind_and_isolation_keys_round_trip() {
        let r = NetRule::bind("fd00::/8".parse().unwrap()).port(53).proto(Protocol::Udp);
        let k = rule_key(1, &r, true);
        assert_eq!(u32::from_ne_bytes(k[0..4].try_into().unwrap()), 96 + 8);
        assert_eq!(k[13], 1 | 0x80);
        let (back, iso) = key_rule(&k).unwrap();
        assert!(iso);
        assert_eq!(back, r);
        let any = NetRule::egress("0.0.0.0/0".parse().unwrap());
        let (back, _) = key_rule(&rule_key(1, &any, false)).unwrap();
        assert_eq!(back, any);
    }

    #[test]
    fn loopback_is_recognised_in_every_form() {
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::2", "::ffff:10.0.0.1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
