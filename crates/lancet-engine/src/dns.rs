//! The DNS servers a protected container may reach by default (port 53,
//! TCP and UDP), chosen from trusted configuration only.
//!
//! Why not the container's own `/etc/resolv.conf`: the runtime bind-mounts
//! it writable, so root in the container could name any address there and
//! have it put on its own allow-list at the next re-apply (issue 17). The
//! servers come instead from what the runtime was told and did, read on the
//! host ([`NetworkFacts`]: `--dns`, the servers netavark reported, the
//! gateways of its networks), and from the host's own resolver
//! configuration, which podman and docker copy into containers on the
//! default bridge, the host network, slirp4netns and pasta.

use crate::attribution::{NetMode, NetworkFacts};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Name servers taken from one resolv.conf (glibc reads 3; a longer list
/// is not a configuration anyone wrote).
pub const MAX_NAMESERVERS: usize = 16;
/// Resolvers allowed to one container, at most.
pub const MAX_RESOLVERS: usize = 64;
/// A resolv.conf larger than this is not read.
const MAX_RESOLV_CONF: u64 = 64 << 10;
/// The host's resolver configuration.
pub const HOST_RESOLV_CONF: &str = "etc/resolv.conf";
/// What podman copies instead when the host's names only systemd-resolved's
/// stub on loopback (unreachable from another network namespace).
pub const RESOLVED_RESOLV_CONF: &str = "run/systemd/resolve/resolv.conf";
/// slirp4netns's built-in DNS forwarder (its default network's `.3`).
pub const SLIRP4NETNS_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3));

/// Name servers from a resolv.conf text, in order, at most
/// [`MAX_NAMESERVERS`] (an interface scope such as `%eth0` is dropped).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter(|rest| rest.starts_with([' ', '\t']))
        .filter_map(|rest| rest.split_whitespace().next()?.split('%').next()?.parse().ok())
        .take(MAX_NAMESERVERS)
        .collect()
}

/// An address a container may be allowed DNS to: not loopback (the
/// container's own, always allowed, and never the host's resolver inside
/// another network namespace), not unspecified, multicast or broadcast.
fn usable(ip: &IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
        v4 => *v4,
    };
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()),
    }
}

fn read_conf(host_root: &Path, rel: &str) -> Vec<IpAddr> {
    match crate::attribution::read_limited(&host_root.join(rel), MAX_RESOLV_CONF) {
        Ok(b) => nameservers(&String::from_utf8_lossy(&b)),
        Err(_) => Vec::new(),
    }
}

/// The host's resolvers, as podman copies them into a container: from
/// `/etc/resolv.conf`, or, when that names only loopback servers
/// (systemd-resolved's 127.0.0.53), from systemd-resolved's list of the
/// real ones. Loopback servers are left out either way.
pub fn host_resolvers(host_root: &Path) -> Vec<IpAddr> {
    let mut ns = read_conf(host_root, HOST_RESOLV_CONF);
    if !ns.is_empty() && !ns.iter().any(usable) {
        ns = read_conf(host_root, RESOLVED_RESOLV_CONF);
    }
    ns.retain(usable);
    ns
}

/// The resolvers a container may reach on port 53 by default: those its
/// runtime gave it (`--dns`, the network backend's DNS servers), the
/// gateways of its networks, slirp4netns's forwarder when it uses
/// slirp4netns, and `host`: the host's resolvers ([`host_resolvers`]) and
/// any the agent's configuration names. Nothing for a container without a
/// network. Never anything the container wrote.
pub fn trusted_resolvers(facts: &NetworkFacts, host: &[IpAddr]) -> Vec<IpAddr> {
    if facts.mode == NetMode::None {
        return Vec::new();
    }
    let slirp = (facts.mode == NetMode::Slirp).then_some(SLIRP4NETNS_DNS);
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in facts.dns_servers.iter().chain(&facts.gateways).chain(slirp.iter()).chain(host) {
        if usable(ip) && !out.contains(ip) && out.len() < MAX_RESOLVERS {
            out.push(*ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn resolv_conf_nameservers() {
        let r = nameservers(
            "# c\nnameserver 10.88.0.1\nnameserver fe80::1%eth0\nsearch dns.podman\nnameserver bogus\nnameserver\nnameservers 1.2.3.4\n",
        );
        assert_eq!(r, ips(&["10.88.0.1", "fe80::1"]));
        let many: String = (0..1000).map(|i| format!("nameserver 10.0.{}.{}\n", i / 256, i % 256)).collect();
        assert_eq!(nameservers(&many).len(), MAX_NAMESERVERS);
        assert!(nameservers("nameserver \u{0}\u{ffff}\n\n\r\n").is_empty());
    }

    #[test]
    fn host_resolvers_skip_loopback_and_follow_systemd_resolved() {
        let d = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        assert!(host_resolvers(d.path()).is_empty(), "no file");
        write(HOST_RESOLV_CONF, "nameserver 127.0.0.53\noptions edns0\n");
        write(RESOLVED_RESOLV_CONF, "nameserver 192.0.2.1\nnameserver 127.0.0.1\nnameserver 2001:db8::1\n");
        assert_eq!(host_resolvers(d.path()), ips(&["192.0.2.1", "2001:db8::1"]));
        write(HOST_RESOLV_CONF, "nameserver 127.0.0.1\nnameserver 10.255.255.53\n");
        assert_eq!(host_resolvers(d.path()), ips(&["10.255.255.53"]), "a real server listed: the stub's list is not read");
        write(HOST_RESOLV_CONF, &"x".repeat(MAX_RESOLV_CONF as usize + 1));
        assert!(host_resolvers(d.path()).is_empty(), "too large");
    }

    #[test]
    fn trusted_resolvers_come_from_the_runtime_and_the_host_only() {
        let facts = NetworkFacts {
            mode: NetMode::Bridge,
            networks: vec!["app".into()],
            gateways: ips(&["10.89.1.1", "0.0.0.0"]),
            dns_servers: ips(&["192.0.2.53", "10.89.1.1", "127.0.0.11", "224.0.0.251"]),
        };
        let host = ips(&["10.255.255.53", "::1"]);
        assert_eq!(trusted_resolvers(&facts, &host), ips(&["192.0.2.53", "10.89.1.1", "10.255.255.53"]));
        let slirp = NetworkFacts { mode: NetMode::Slirp, ..Default::default() };
        assert_eq!(trusted_resolvers(&slirp, &host), ips(&["10.0.2.3", "10.255.255.53"]));
        let none = NetworkFacts { mode: NetMode::None, gateways: ips(&["10.0.0.1"]), ..Default::default() };
        assert!(trusted_resolvers(&none, &host).is_empty());
        let unknown = NetworkFacts::default();
        assert_eq!(trusted_resolvers(&unknown, &host), ips(&["10.255.255.53"]), "another runtime: the host's");
        let flood = NetworkFacts { gateways: (0..200u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0001 + i))).collect(), ..facts };
        assert_eq!(trusted_resolvers(&flood, &host).len(), MAX_RESOLVERS);
    }
}
