//! Issue 17 item 3, as root with real podman containers: a protected
//! container cannot write its own network allow-list. Its `/etc/resolv.conf`
//! is a bind mount it may write; the agent used to allow every `nameserver`
//! named there on port 53 whenever it (re-)applied the container's rules,
//! and kept every rule it had ever pinned. Here the container names a second
//! container as its "resolver", the agent restarts (which re-applies), and
//! a TCP connection to that container's port 53 must still be refused; a
//! rule an older agent pinned for that address (put in the pinned map by
//! hand) must be gone after the next re-apply, while the DNS servers
//! configured on the host (the network's gateway, the agent's
//! `dnsServers`) stay allowed.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Another image than the protected one: the listener is another workload,
/// never protected here.
const LISTENER_IMAGE: &str = "localhost/lancet-musl:test";

/// One rule of the pinned `net_allow` trie (`struct lancet_net_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pinned {
    cgid: u64,
    addr: IpAddr,
    prefix: u32,
    port: u16,
    proto: u8,
    dir: u8,
}

/// The allow rules of `cgid` as the kernel holds them, read from the
/// pinned map with bpftool (not through the agent, whose view is what is
/// under test).
fn pinned_rules(pin_dir: &Path, cgid: u64) -> Vec<Pinned> {
    let map = pin_dir.join("net_allow");
    let out = run(Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&map));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool JSON: {e}: {out}"));
    let mut rules = Vec::new();
    for entry in v.as_array().into_iter().flatten() {
        let key: Vec<u8> = entry["key"]
            .as_array()
            .unwrap_or_else(|| panic!("no key in {entry}"))
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap_or_default().trim_start_matches("0x"), 16).expect("hex byte"))
            .collect();
        assert_eq!(key.len(), 32, "{entry}");
        let bits = u32::from_ne_bytes(key[0..4].try_into().unwrap()) - 96;
        let octets: [u8; 16] = key[16..32].try_into().unwrap();
        let v6 = std::net::Ipv6Addr::from(octets);
        let (addr, prefix) = match v6.to_ipv4_mapped() {
            Some(v4) if bits >= 96 => (IpAddr::V4(v4), bits - 96),
            _ => (IpAddr::V6(v6), bits),
        };
        let rule = Pinned {
            cgid: u64::from_ne_bytes(key[4..12].try_into().unwrap()),
            addr,
            prefix,
            port: u16::from_be_bytes([key[14], key[15]]),
            proto: key[12],
            dir: key[13],
        };
        if rule.cgid == cgid {
            rules.push(rule);
        }
    }
    rules
}

/// Pins an egress rule `ip/32`, port `port`, any protocol, for `cgid`, the
/// way an older agent pinned a resolver it had read from the container.
fn pin_rule(pin_dir: &Path, cgid: u64, ip: Ipv4Addr, port: u16) {
    let mut key = Vec::with_capacity(32);
    key.extend((96u32 + 96 + 32).to_ne_bytes());
    key.extend(cgid.to_ne_bytes());
    key.extend([0u8, 0u8]);
    key.extend(port.to_be_bytes());
    key.extend(ip.to_ipv6_mapped().octets());
    let hex: Vec<String> = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = Command::new("bpftool");
    cmd.args(["map", "update", "pinned"]).arg(pin_dir.join("net_allow")).args(["key", "hex"]).args(&hex);
    cmd.args(["value", "hex", "00", "00", "00", "00"]);
    run(&mut cmd);
}

/// The cgroup id the agent guards container `id` under (`lancet status`).
fn guarded_cgroup(agent: &Agent, id: &str) -> u64 {
    let st: serde_json::Value = serde_json::from_str(&agent.cli(&["status"])).expect("status is JSON");
    fn find(v: &serde_json::Value, id: &str) -> Option<u64> {
        match v {
            serde_json::Value::Object(o) if o.get("id").and_then(|i| i.as_str()) == Some(id) && o.contains_key("cgroupId") => {
                o["cgroupId"].as_u64()
            }
            serde_json::Value::Object(o) => o.values().find_map(|x| find(x, id)),
            serde_json::Value::Array(a) => a.iter().find_map(|x| find(x, id)),
            _ => None,
        }
    }
    find(&st, id).unwrap_or_else(|| panic!("container {id} is not guarded: {st:#}"))
}

/// The agent stops without releasing anything (as after a crash or an
/// upgrade) and starts again: every protected container's rules are
/// re-applied.
fn restart(agent: &mut Agent, id: &str) {
    agent.kill9();
    agent.spawn();
    agent.wait_guarded(id, Duration::from_secs(20));
}

#[test]
fn a_protected_container_cannot_allow_itself_a_dns_server() {
    skip_unless_ready!(true);
    if !Command::new("podman").args(["image", "exists", LISTENER_IMAGE]).status().is_ok_and(|s| s.success()) {
        lancet_testkit::skip(&format!("test image {LISTENER_IMAGE} missing (scripts/setup.sh builds it)"));
        return;
    }
    if Command::new("bpftool").arg("version").output().map(|o| !o.status.success()).unwrap_or(true) {
        lancet_testkit::skip("bpftool is not installed (scripts/setup.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let net = Network::create(&unique("lancet-dns-net"));
    let gateway: IpAddr =
        podman(&["network", "inspect", "-f", "{{range .Subnets}}{{.Gateway}}{{end}}", &net.0]).parse().expect("the network's gateway");
    let listener_name = unique("lancet-dns-listener");
    let listener_id =
        podman(&["run", "-d", "--name", &listener_name, "--network", &net.0, LISTENER_IMAGE, "httpd", "-f", "-p", "53", "-h", "/tmp"]);
    let listener = Container { id: listener_id, name: listener_name };
    let victim = Container::start(&unique("lancet-dns-victim"), &["--network", &net.0], &["sleep", "600"]);
    let lip: Ipv4Addr = listener.ip().parse().expect("listener address");
    let connect = |to: Ipv4Addr| out_text(&victim.exec(&["sh", "-c", &format!("nc -w 2 {to} 53 </dev/null; echo rc=$?")]));
    // Before any agent runs (nothing learns it): the listener answers.
    assert!(connect(lip).contains("rc=0"), "the listener does not answer on port 53");

    // A resolver the operator names in lancet's configuration (documentation
    // address: nothing answers there, it only has to be on the list).
    let configured: IpAddr = "192.0.2.99".parse().unwrap();
    let config = format!("interpreterCode: any\ndnsServers: [{configured}]\n");
    let mut agent = Agent::start_with_config(&state, &policies, &alerts, &config, &[]);
    // Learn what the test later runs, without a flow to the listener: a
    // connection attempt on loopback, and a write of resolv.conf as it is.
    for script in ["nc -w 1 127.0.0.1 1 </dev/null; echo rc=$?", "cat /etc/resolv.conf > /tmp/r && cat /tmp/r > /etc/resolv.conf"] {
        let o = victim.exec(&["sh", "-c", script]);
        assert!(o.status.success(), "`{script}` while learning: {}", out_text(&o));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let out = agent.cli(&["profile", "promote", &victim.name, "--to", "protect"]);
    assert!(out.contains("protect"), "{out}");
    agent.wait_guarded(&victim.id, Duration::from_secs(10));
    let cgid = guarded_cgroup(&agent, &victim.id);
    let to_listener = |rules: &[Pinned]| rules.iter().filter(|r| r.addr == IpAddr::V4(lip)).cloned().collect::<Vec<_>>();
    let dns_to = |rules: &[Pinned], ip: IpAddr| rules.iter().any(|r| r.addr == ip && r.prefix == 32 && r.port == 53 && r.dir == 0);

    // Protected, the learned profile has no flow to the listener.
    let pinned = pinned_rules(&agent.pin_dir, cgid);
    assert!(to_listener(&pinned).is_empty(), "{pinned:#?}");
    assert!(dns_to(&pinned, gateway), "the network's gateway is not allowed as a DNS server: {pinned:#?}");
    assert!(dns_to(&pinned, configured), "dnsServers from the configuration is not allowed: {pinned:#?}");
    let text = connect(lip);
    assert!(text.contains("not permitted") && !text.contains("rc=0"), "connected to the listener while protected: {text}");

    // The attack: the container names the listener as its resolver, and
    // the rules are re-applied.
    let o = victim.exec(&["sh", "-c", &format!("echo nameserver {lip} > /etc/resolv.conf")]);
    assert!(o.status.success(), "writing resolv.conf: {}", out_text(&o));
    restart(&mut agent, &victim.id);
    assert_eq!(guarded_cgroup(&agent, &victim.id), cgid);
    let text = connect(lip);
    assert!(text.contains("not permitted") && !text.contains("rc=0"), "the container allowed itself the listener: {text}");
    let pinned = pinned_rules(&agent.pin_dir, cgid);
    assert!(to_listener(&pinned).is_empty(), "the container's resolv.conf put the listener on its allow-list: {pinned:#?}");
    assert!(dns_to(&pinned, gateway), "the gateway's DNS rule was lost: {pinned:#?}");

    // A rule an older agent pinned from the container's resolv.conf (put
    // there by hand): it holds until the next re-apply, which removes it.
    pin_rule(&agent.pin_dir, cgid, lip, 53);
    assert_eq!(to_listener(&pinned_rules(&agent.pin_dir, cgid)).len(), 1);
    let text = connect(lip);
    assert!(text.contains("rc=0"), "the hand-pinned rule does not let the connection through, so the test proves nothing: {text}");
    restart(&mut agent, &victim.id);
    let text = connect(lip);
    assert!(text.contains("not permitted") && !text.contains("rc=0"), "the stale rule still lets the connection through: {text}");
    let pinned = pinned_rules(&agent.pin_dir, cgid);
    assert!(to_listener(&pinned).is_empty(), "the stale rule was kept: {pinned:#?}");
    assert!(dns_to(&pinned, gateway), "the gateway's DNS rule was lost: {pinned:#?}");
    drop(agent);
}
