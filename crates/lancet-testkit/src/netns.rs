//! Networks for containers whose runtime makes none: `ctr run` gives a
//! container an empty network namespace unless a CNI plugin is set up
//! (Kubernetes does that with a bridge). [`Bridge`] is that bridge, with a
//! /24 of its own on the host, and [`Netns`] a named namespace on it (`ip
//! netns add`, a veth pair, an address, a default route through the bridge)
//! for a container to join (`ctr run --with-ns network:<path>`). Both are
//! removed when dropped; declare the bridge first, then the namespaces, then
//! the containers, so they drop in the reverse order.

use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("ip {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A short hex tag for interface names (at most 15 bytes in all), unique
/// within the process (a counter) and unlikely to repeat across processes.
fn tag() -> String {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{:06x}", ((nanos >> 10) ^ std::process::id().rotate_left(12) ^ n.wrapping_mul(0x9e37)) & 0xff_ffff)
}

/// A Linux bridge with the gateway address `10.214.<n>.1/24`, removed on
/// drop.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    /// `10.214.<n>`: the /24's first three octets.
    prefix: String,
    next_host: AtomicU8,
}

impl Bridge {
    /// A bridge on a /24 that no interface of the host uses yet.
    pub fn create() -> Bridge {
        let used = ip(&["-4", "-o", "addr"]).expect("ip addr");
        let start = std::process::id() as usize;
        let n =
            (0..250).map(|i| (start + i * 7) % 250 + 1).find(|n| !used.contains(&format!("10.214.{n}."))).expect("a free 10.214.x.0/24");
        let b = Bridge { name: format!("lcb{}", tag()), prefix: format!("10.214.{n}"), next_host: AtomicU8::new(2) };
        ip(&["link", "add", &b.name, "type", "bridge"]).expect("bridge");
        // From here on the bridge is removed on drop, whatever fails next.
        let gw = format!("{}/24", b.gateway());
        ip(&["addr", "add", &gw, "dev", &b.name]).expect("bridge address");
        ip(&["link", "set", &b.name, "up"]).expect("bridge up");
        b
    }

    /// The bridge's (the host's) address on the network.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A new network namespace on this bridge, with the next free address.
    pub fn join(&self, name: &str) -> Netns {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(host < 250, "too many namespaces on one test bridge");
        let ns = Netns { name: name.to_string(), ip: format!("{}.{host}", self.prefix) };
        ip(&["netns", "add", &ns.name]).expect("ip netns add");
        // Removed on drop from here on (the veth pair goes with it).
        let t = tag();
        let (outer, inner) = (format!("lch{t}"), format!("lcc{t}"));
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]).expect("veth pair");
        ip(&["link", "set", &inner, "netns", &ns.name]).expect("veth into the namespace");
        ip(&["link", "set", &outer, "master", &self.name, "up"]).expect("veth on the bridge");
        let addr = format!("{}/24", ns.ip);
        let gw = self.gateway();
        for args in [
            vec!["-n", &ns.name, "link", "set", &inner, "name", "eth0"],
            vec!["-n", &ns.name, "addr", "add", &addr, "dev", "eth0"],
            vec!["-n", &ns.name, "link", "set", "eth0", "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
            vec!["-n", &ns.name, "route", "add", "default", "via", &gw],
        ] {
            ip(&args).expect("namespace set-up");
        }
        ns
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// A named network namespace (`/run/netns/<name>`) with one address,
/// removed on drop (with its end of the veth pair, which takes the other).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// Its IPv4 address on the bridge.
    pub ip: String,
}

impl Netns {
    /// The namespace's file, for `--with-ns network:<path>`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
