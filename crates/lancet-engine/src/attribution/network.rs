//! What the runtime says about a container's network: the networks it is
//! on, their gateways, the DNS servers it was given.
//!
//! Why it exists: protect mode allows a container DNS to its resolvers
//! (unconnected UDP to a resolver is not seen while learning). Those used
//! to be read from the container's own `/etc/resolv.conf`, a bind mount
//! the container may write, so root in the container could put any
//! address on its own allow-list (issue 17). Everything here comes from
//! the runtime's state and configuration on the host instead, which the
//! container cannot reach. All of it is written by the runtime, yet parsed
//! as untrusted: bounded lists, checked names, no panics.

use super::bolt::BoltDb;
use super::runtimes::{bounded_json, Reader};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// Networks kept per container: podman and docker allow a few dozen at most
/// in practice; a longer list is not something either writes.
pub const MAX_NETWORKS: usize = 64;
/// Addresses (gateways, DNS servers) kept per container.
pub const MAX_ADDRESSES: usize = 32;
/// podman's default network, when no configuration file overrides it
/// (`podman`, 10.88.0.0/16): its gateway.
pub const PODMAN_DEFAULT_NETWORK: &str = "podman";
pub const PODMAN_DEFAULT_GATEWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 88, 0, 1));

/// How the container's network namespace was set up, as the runtime
/// recorded it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Nothing was read (a runtime whose network state lancet does not
    /// read, or a record without it).
    #[default]
    Unknown,
    /// A namespace of its own on the runtime's networks (bridges).
    Bridge,
    /// The host's network namespace.
    Host,
    /// slirp4netns (rootless podman's default): DNS through slirp's own
    /// forwarder.
    Slirp,
    /// pasta: the host's resolvers, reached through pasta.
    Pasta,
    /// No network at all.
    None,
}

/// A container's network as its runtime recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFacts {
    pub mode: NetMode,
    /// The runtime's networks it is attached to (checked names).
    pub networks: Vec<String>,
    /// The gateways of those networks (netavark's aardvark-dns answers
    /// there).
    pub gateways: Vec<IpAddr>,
    /// DNS servers the runtime gave it: `--dns`, and those the network
    /// backend reported when it set the network up.
    pub dns_servers: Vec<IpAddr>,
}

impl NetworkFacts {
    fn add_gateway(&mut self, ip: IpAddr) {
        if !self.gateways.contains(&ip) && self.gateways.len() < MAX_ADDRESSES {
            self.gateways.push(ip);
        }
    }

    fn add_dns(&mut self, ip: IpAddr) {
        if !self.dns_servers.contains(&ip) && self.dns_servers.len() < MAX_ADDRESSES {
            self.dns_servers.push(ip);
        }
    }

    fn add_network(&mut self, name: &str) {
        if network_name_ok(name) && !self.networks.iter().any(|n| n == name) && self.networks.len() < MAX_NETWORKS {
            self.networks.push(name.to_string());
        }
    }
}

/// A network name as podman and docker accept them
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, bounded): a name is joined into a file
/// path, so nothing else is taken.
pub fn network_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// An address from a JSON string (`"10.88.0.1"`; an interface scope such as
/// `fe80::1%eth0` is dropped).
fn ip(v: &Value) -> Option<IpAddr> {
    v.as_str()?.split('%').next()?.trim().parse().ok()
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten().take(MAX_ADDRESSES)
}

/// libpod's record of a podman container (4.x, BoltDB): `config` (the
/// creation's settings), `state` (what it set up when it started, with
/// netavark's answer in `networkStatus`) and the names in its `networks`
/// bucket. `gateways_of(name)` reads a network's configuration, for a
/// network the state has no answer for yet (a container still starting).
pub(crate) fn podman(
    config: &Value,
    state: Option<&Value>,
    networks: &[&str],
    mut gateways_of: impl FnMut(&str) -> Vec<IpAddr>,
) -> NetworkFacts {
    let mut f = NetworkFacts { mode: podman_mode(config), ..Default::default() };
    for s in strings(config.get("dnsServer")).filter_map(ip) {
        f.add_dns(s);
    }
    let status = state.and_then(|s| s.get("networkStatus")).and_then(Value::as_object);
    for (name, block) in status.into_iter().flatten().take(MAX_NETWORKS) {
        f.add_network(name);
        let interfaces = block.get("interfaces").and_then(Value::as_object);
        for iface in interfaces.into_iter().flat_map(|i| i.values()).take(MAX_NETWORKS) {
            for subnet in strings(iface.get("subnets")) {
                if let Some(g) = subnet.get("gateway").and_then(ip) {
                    f.add_gateway(g);
                }
            }
        }
        for s in strings(block.get("dns_server_ips")).filter_map(ip) {
            f.add_dns(s);
        }
    }
    let answered: Vec<&String> = status.map(|s| s.keys().collect()).unwrap_or_default();
    for name in networks.iter().take(MAX_NETWORKS) {
        if !network_name_ok(name) {
            continue;
        }
        f.add_network(name);
        if answered.iter().any(|a| a.as_str() == *name) {
            continue;
        }
        let mut gws = gateways_of(name);
        if gws.is_empty() && *name == PODMAN_DEFAULT_NETWORK {
            gws.push(PODMAN_DEFAULT_GATEWAY);
        }
        for g in gws {
            f.add_gateway(g);
        }
    }
    if f.mode == NetMode::Unknown && !f.networks.is_empty() {
        f.mode = NetMode::Bridge;
    }
    f
}

fn podman_mode(config: &Value) -> NetMode {
    match config.get("networkMode").and_then(Value::as_str).unwrap_or_default() {
        "bridge" => NetMode::Bridge,
        "host" => NetMode::Host,
        "slirp4netns" => NetMode::Slirp,
        "pasta" => NetMode::Pasta,
        "none" => NetMode::None,
        // podman 4 leaves the mode out for the host's namespace (and for a
        // namespace path), and creates none of its own.
        "" if config.get("createNetNS").and_then(Value::as_bool) == Some(false) => NetMode::Host,
        _ => NetMode::Unknown,
    }
}

/// The container whose network namespace a podman container joined
/// (`--network container:…`, and every container of a pod but its
/// infra), when it names one by a plausible id.
pub(crate) fn podman_joined(config: &Value) -> Option<&str> {
    let id = config.get("netNsCtr").and_then(Value::as_str)?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The gateways of one netavark network configuration file
/// (`/etc/containers/networks/<name>.json`), if it describes `name`.
pub(crate) fn netavark_gateways(doc: &Value, name: &str) -> Vec<IpAddr> {
    if doc.get("name").and_then(Value::as_str) != Some(name) {
        return Vec::new();
    }
    strings(doc.get("subnets")).filter_map(|s| s.get("gateway").and_then(ip)).collect()
}

/// A docker container's `config.v2.json` (its networks, with the gateway
/// the daemon assigned) and `hostconfig.json` (`--dns`).
pub(crate) fn docker(config: &Value, hostconfig: Option<&Value>) -> NetworkFacts {
    let mut f = NetworkFacts::default();
    let nets = config.get("NetworkSettings").and_then(|n| n.get("Networks")).and_then(Value::as_object);
    for (name, n) in nets.into_iter().flatten().take(MAX_NETWORKS) {
        match name.as_str() {
            "host" => f.mode = NetMode::Host,
            "none" => f.mode = NetMode::None,
            _ => {
                f.add_network(name);
                if f.mode == NetMode::Unknown {
                    f.mode = NetMode::Bridge;
                }
            }
        }
        for g in ["Gateway", "IPv6Gateway"].iter().filter_map(|k| n.get(*k).and_then(ip)) {
            f.add_gateway(g);
        }
    }
    for s in strings(hostconfig.and_then(|h| h.get("Dns"))).filter_map(ip) {
        f.add_dns(s);
    }
    f
}

impl Reader {
    /// The network of podman container `id` from libpod's record (that of
    /// the container whose namespace it joined, one hop, when it joined
    /// one), with netavark's files under `net_dir` for networks the state
    /// has no answer for yet.
    pub(super) fn podman_network(&self, bdb: &BoltDb<'_>, id: &str, config: &Value, state: Option<&Value>, net_dir: &str) -> NetworkFacts {
        if let Some(joined) = podman_joined(config) {
            let record = |key: &[u8]| bdb.get(&[b"ctr", joined.as_bytes()], key).and_then(|b| bounded_json(b).ok());
            let Some(jc) = record(b"config") else { return NetworkFacts::default() };
            return self.podman_network_of(bdb, joined, &jc, record(b"state").as_ref(), net_dir);
        }
        self.podman_network_of(bdb, id, config, state, net_dir)
    }

    fn podman_network_of(&self, bdb: &BoltDb<'_>, id: &str, config: &Value, state: Option<&Value>, net_dir: &str) -> NetworkFacts {
        let names: Vec<&str> = bdb
            .entries(&[b"ctr", id.as_bytes(), b"networks"], MAX_NETWORKS)
            .into_iter()
            .filter_map(|(k, _)| std::str::from_utf8(k).ok())
            .collect();
        podman(config, state, &names, |name| {
            // `name` passed network_name_ok: no separator, no `..`.
            match self.json(&format!("{net_dir}/{name}.json")) {
                Ok(Some(doc)) => netavark_gateways(&doc, name),
                _ => Vec::new(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn podman_state_answers_first_and_config_files_fill_in() {
        let config = json!({"networkMode": "bridge", "createNetNS": true, "dnsServer": ["192.0.2.53", "bogus"]});
        let state = json!({"networkStatus": {"app": {
            "interfaces": {"eth0": {"subnets": [{"ipnet": "10.89.1.2/24", "gateway": "10.89.1.1"}, {"ipnet": "fd00::2/64", "gateway": "fd00::1"}]}},
            "dns_server_ips": ["10.89.1.1"]
        }}});
        let mut asked = Vec::new();
        let f = podman(&config, Some(&state), &["app", "podman", "other", "../etc"], |n| {
            asked.push(n.to_string());
            if n == "other" {
                ips(&["10.90.0.1"])
            } else {
                Vec::new()
            }
        });
        assert_eq!(f.mode, NetMode::Bridge);
        assert_eq!(f.networks, ["app", "podman", "other"]);
        assert_eq!(f.gateways, ips(&["10.89.1.1", "fd00::1", "10.88.0.1", "10.90.0.1"]));
        assert_eq!(f.dns_servers, ips(&["192.0.2.53", "10.89.1.1"]));
        assert_eq!(asked, ["podman", "other"], "the state answered for app; a bad name is never looked up");
    }

    #[test]
    fn podman_modes() {
        let mode = |c: Value| podman(&c, None, &[], |_| Vec::new()).mode;
        assert_eq!(mode(json!({"networkMode": "slirp4netns"})), NetMode::Slirp);
        assert_eq!(mode(json!({"networkMode": "pasta"})), NetMode::Pasta);
        assert_eq!(mode(json!({"networkMode": "none"})), NetMode::None);
        assert_eq!(mode(json!({"createNetNS": false})), NetMode::Host);
        assert_eq!(mode(json!({})), NetMode::Unknown);
        assert_eq!(podman(&json!({}), None, &["podman"], |_| Vec::new()).mode, NetMode::Bridge);
        let id = "8".repeat(64);
        assert_eq!(podman_joined(&json!({"netNsCtr": id})), Some(id.as_str()));
        assert_eq!(podman_joined(&json!({"netNsCtr": "../../x"})), None);
    }

    #[test]
    fn hostile_records_are_bounded_and_never_panic() {
        let many: Vec<String> = (0..10_000).map(|i| format!("10.{}.{}.1", i / 256 % 256, i % 256)).collect();
        let nets: serde_json::Map<String, Value> = (0..1000)
            .map(|i| {
                (
                    format!("n{i}"),
                    json!({"interfaces": {"eth0": {"subnets": many.iter().map(|g| json!({"gateway": g})).collect::<Vec<_>>()}}}),
                )
            })
            .collect();
        let f = podman(&json!({"dnsServer": many}), Some(&json!({"networkStatus": nets})), &[], |_| Vec::new());
        assert!(f.networks.len() <= MAX_NETWORKS && f.gateways.len() <= MAX_ADDRESSES && f.dns_servers.len() <= MAX_ADDRESSES);
        for junk in [
            json!(null),
            json!([1, 2]),
            json!({"networkStatus": "x", "dnsServer": {"a": 1}}),
            json!({"networkStatus": {"a": {"interfaces": [1]}}}),
        ] {
            let f = podman(&junk, Some(&junk), &[], |_| Vec::new());
            assert!(f.gateways.is_empty() && f.dns_servers.is_empty(), "{junk}");
            let f = docker(&junk, Some(&junk));
            assert!(f.gateways.is_empty() && f.dns_servers.is_empty(), "{junk}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "-x", "a b", "ä", &"a".repeat(129)] {
            assert!(!network_name_ok(bad), "{bad:?}");
        }
        assert!(network_name_ok("lancet-dns_net.1"));
    }

    #[test]
    fn netavark_files_must_describe_the_network_asked_for() {
        let doc = json!({"name": "app", "subnets": [{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}, {"subnet": "10.89.9.0/24"}]});
        assert_eq!(netavark_gateways(&doc, "app"), ips(&["10.89.0.1"]));
        assert!(netavark_gateways(&doc, "other").is_empty());
    }

    #[test]
    fn docker_networks_and_dns() {
        let config = json!({"NetworkSettings": {"Networks": {"bridge": {"Gateway": "172.17.0.1", "IPv6Gateway": ""}, "app": {"Gateway": "172.18.0.1"}}}});
        let mut f = docker(&config, Some(&json!({"Dns": ["192.0.2.1"]})));
        // serde_json's map order depends on its features: compare sorted.
        f.networks.sort();
        f.gateways.sort();
        assert_eq!((f.mode, f.networks.clone()), (NetMode::Bridge, vec!["app".to_string(), "bridge".to_string()]));
        assert_eq!(f.gateways, ips(&["172.17.0.1", "172.18.0.1"]));
        assert_eq!(f.dns_servers, ips(&["192.0.2.1"]));
        let host = docker(&json!({"NetworkSettings": {"Networks": {"host": {"Gateway": ""}}}}), None);
        assert_eq!((host.mode, host.gateways.len()), (NetMode::Host, 0));
    }
}
