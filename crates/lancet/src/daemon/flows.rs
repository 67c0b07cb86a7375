//! The daemon's side of the flow map: each connect, accept, close and
//! refused connection of a container is counted in the engine's bounded
//! [`FlowTable`] (one hash lookup, no allocation: containers are numbered
//! once, addresses are kept inline), and what changed is written to the
//! store's hourly rollups once a second, with the rule or profile entry
//! that decided each flow put into words there, not per connection.
//!
//! Which side counts a connection: the side that opened it, when that side
//! is a container here (its connect and its close); the accepting side
//! only when the peer is not one of this host's containers (inbound from
//! the host or from outside), so that a connection between two containers
//! is counted once.

use super::workloads::Workloads;
use lancet_engine::attribution::ContainerInfo;
use lancet_engine::event::{NetEvent, NetOp};
use lancet_engine::flows::{Decider, Endpoint, FlowEnd, FlowKey, FlowLimits, FlowRow, FlowTable, NodeId, Observation, Recorded, Verdict};
use lancet_engine::profile::{Mode, PeerRef, Profile, Protocol};
use lancet_store::{FlowNodeRecord, Store};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Containers numbered for the table; numbers of ended containers are
/// reused once no row names them.
const MAX_NODES: usize = 16_384;
/// Container addresses remembered.
const MAX_ADDRESSES: usize = 65_536;
/// How often the host's own addresses are read again.
const HOST_ADDRESSES_EVERY: Duration = Duration::from_secs(60);
/// How soon an address nobody here has is looked for among the host's again.
const HOST_ADDRESSES_AGAIN: Duration = Duration::from_secs(1);

/// A numbered container.
struct Node {
    info: Arc<ContainerInfo>,
    workload: String,
    /// Written to the store's `flow_nodes` this hour.
    stored: bool,
    /// The address it was last seen with (already in `addresses`).
    addr: Option<IpAddr>,
}

/// A scan the table just started summarising, for the caller to alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScanStarted {
    /// True: the container opened many new flows; false: many new peers
    /// connected to it.
    pub(super) outbound: bool,
}

pub(super) struct Flows {
    pub(super) table: FlowTable,
    nodes: Vec<Option<Node>>,
    by_id: lancet_engine::FastMap<String, NodeId>,
    free: Vec<NodeId>,
    addresses: lancet_engine::FastMap<IpAddr, NodeId>,
    host: lancet_engine::FastSet<IpAddr>,
    host_read: Option<Instant>,
    /// The host's network namespace: a container that shares it
    /// (`--network host`) has the host's addresses, which must never be
    /// taken for its own (the host's traffic would be drawn as its).
    host_netns: Option<u32>,
    /// Connections of containers that could not be numbered.
    pub(super) unnumbered: u64,
    rows: Vec<FlowRow>,
    /// The container of the last event and its number: consecutive events
    /// of one container (most of them) skip hashing its 64-character id.
    last: Option<(*const ContainerInfo, NodeId)>,
    /// The last remote address looked up, for which container: (container,
    /// address, what it is). Cleared when an address is learned.
    last_remote: Option<(NodeId, IpAddr, Endpoint)>,
    /// The last flow judged, under which profile generation: a repeated
    /// connection skips the profile lookup.
    last_judged: Option<(FlowKey, u64, Verdict, Decider)>,
}

impl Flows {
    pub(super) fn new() -> Flows {
        Flows {
            table: FlowTable::new(FlowLimits::default()),
            nodes: Vec::new(),
            by_id: Default::default(),
            free: Vec::new(),
            addresses: Default::default(),
            host: Default::default(),
            host_read: None,
            host_netns: crate::protect::netns_inode(1),
            unnumbered: 0,
            rows: Vec::new(),
            last: None,
            last_remote: None,
            last_judged: None,
        }
    }

    /// Each numbered container's addresses (in its network namespace, or
    /// seen on its sockets), by container id: what the fleet's map needs to
    /// put another node's connection to one of them on it.
    pub(super) fn addresses_by_container(&self) -> HashMap<&str, Vec<IpAddr>> {
        let mut out: HashMap<&str, Vec<IpAddr>> = HashMap::new();
        for (ip, n) in &self.addresses {
            if let Some(Some(node)) = self.nodes.get(*n as usize) {
                out.entry(node.info.id.as_str()).or_default().push(*ip);
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }

    /// The container's number, numbering it (and learning its addresses
    /// from its network namespace) the first time.
    fn node(&mut self, c: &Arc<ContainerInfo>, workload: &str, pid: u32) -> Option<NodeId> {
        // Only compared, never followed. The pointer is that of the node's
        // own `Arc`, which the node keeps alive, so no other container can
        // be allocated there while it is cached (`forget_ended` clears it).
        if let Some((p, n)) = self.last {
            if std::ptr::eq(p, Arc::as_ptr(c)) {
                return Some(n);
            }
        }
        if let Some(&n) = self.by_id.get(c.id.as_str()) {
            self.last = self.nodes.get(n as usize).and_then(Option::as_ref).map(|node| (Arc::as_ptr(&node.info), n));
            return Some(n);
        }
        let n = match self.free.pop() {
            Some(n) => n,
            None if self.nodes.len() < MAX_NODES => {
                self.nodes.push(None);
                (self.nodes.len() - 1) as NodeId
            }
            None => {
                self.unnumbered += 1;
                return None;
            }
        };
        let info = Arc::clone(c);
        self.last = Some((Arc::as_ptr(&info), n));
        self.nodes[n as usize] = Some(Node { info, workload: workload.to_string(), stored: false, addr: None });
        self.by_id.insert(c.id.clone(), n);
        // Its addresses before its first connection is seen from the other
        // side: a peer that connects first is then named right away.
        for p in [c.pid, Some(pid)].into_iter().flatten().filter(|p| *p != 0) {
            if self.host_netns.is_some() && crate::protect::netns_inode(p) == self.host_netns {
                break;
            }
            let found = crate::protect::netns_addresses(p);
            if !found.is_empty() {
                for ip in found {
                    if self.addresses.len() < MAX_ADDRESSES {
                        self.addresses.insert(ip, n);
                    }
                }
                // Its network may be new, and with it the host's address
                // on that network (the bridge's gateway).
                self.read_host_addresses();
                self.last_remote = None;
                break;
            }
        }
        Some(n)
    }

    /// A container was seen (its first process, or it ran before the
    /// agent): numbered now, so that its addresses are known before anyone
    /// connects to it.
    pub(super) fn see(&mut self, c: &Arc<ContainerInfo>, workload: &str, pid: u32) {
        let _ = self.node(c, workload, pid);
    }

    /// Remembers the local address of a container's socket (looked up only
    /// when it is not the one it was last seen with).
    fn learn_address(&mut self, me: NodeId, ip: IpAddr) {
        if ip.is_unspecified() || ip.is_loopback() {
            return;
        }
        let Some(node) = self.nodes.get_mut(me as usize).and_then(Option::as_mut) else { return };
        if node.addr == Some(ip) {
            return;
        }
        node.addr = Some(ip);
        if self.addresses.len() < MAX_ADDRESSES {
            self.addresses.entry(ip).or_insert(me);
            self.last_remote = None;
        }
    }

    /// What an address is: a container here, the host, or outside.
    fn endpoint(&mut self, ip: IpAddr, me: NodeId) -> Endpoint {
        if ip.is_loopback() {
            return Endpoint::Container(me);
        }
        if let Some((n, a, e)) = self.last_remote {
            if n == me && a == ip {
                return e;
            }
        }
        let e = match self.addresses.get(&ip).copied() {
            Some(n) => Endpoint::Container(n),
            None if self.is_host(ip) => Endpoint::Host(ip),
            None => Endpoint::Ip(ip),
        };
        self.last_remote = Some((me, ip, e));
        e
    }

    /// Whether `ip` is one of the host's own addresses. A network made
    /// after the last read (podman makes a bridge, and gives the host its
    /// gateway address, when the first container joins it) would otherwise
    /// draw the host's own connections as from outside for up to a minute:
    /// an unknown address re-reads the host's, at most once a second.
    fn is_host(&mut self, ip: IpAddr) -> bool {
        if !self.host.contains(&ip) && self.host_read.is_none_or(|t| t.elapsed() >= HOST_ADDRESSES_AGAIN) {
            self.read_host_addresses();
        }
        self.host.contains(&ip)
    }

    fn read_host_addresses(&mut self) {
        self.host = crate::protect::netns_addresses(1).into_iter().collect();
        self.host_read = Some(Instant::now());
    }

    /// A remote end as profiles name it (for a close, whose event carries no
    /// peer): a container here by its workload, else its address.
    fn peer_of(&self, e: Endpoint) -> Option<PeerRef> {
        match e {
            Endpoint::Container(n) => self.nodes.get(n as usize)?.as_ref().map(|node| PeerRef::Workload(node.workload.as_str().into())),
            Endpoint::Host(ip) | Endpoint::Ip(ip) => Some(PeerRef::Ip(ip)),
            Endpoint::Others => None,
        }
    }

    /// The verdict of a new connection of `key` (inbound: judged by the
    /// accepting side's profile), reused while the same flow repeats under
    /// the same profile.
    fn verdict(
        &mut self,
        key: FlowKey,
        inbound: bool,
        port: u16,
        profile: Option<(&Profile, u64)>,
        peer: Option<&PeerRef>,
    ) -> Option<(Verdict, Decider)> {
        let ((profile, generation), peer) = (profile?, peer?);
        if let Some((k, g, v, d)) = self.last_judged {
            if k == key && g == generation {
                return Some((v, d));
            }
        }
        let (v, d) = Self::judge(profile, inbound, peer, port, key.proto);
        self.last_judged = Some((key, generation, v, d));
        Some((v, d))
    }

    /// The verdict of a flow in `profile`'s eyes (the profile of the side
    /// that decides: the opener's for outbound flows, the accepter's for
    /// inbound ones).
    fn judge(profile: &Profile, inbound: bool, peer: &PeerRef, port: u16, p: Protocol) -> (Verdict, Decider) {
        let entry = profile.flow_entry(inbound, peer, port, p);
        match (profile.mode(), entry) {
            (Mode::Learn, Some(i)) => (Verdict::Learning, Decider::Entry { inbound, index: i as u32 }),
            (Mode::Learn, None) => (Verdict::Learning, Decider::None),
            (_, Some(i)) => (Verdict::Allowed, Decider::Entry { inbound, index: i as u32 }),
            (_, None) => (Verdict::Unlisted, Decider::NotInProfile { inbound }),
        }
    }

    /// Counts one network event of container `c` (workload `key`, whose
    /// profile is `profile`, after the event was learned or checked).
    /// `peer` is the remote end as the profile names it. Returns a scan
    /// that just started, for an alert.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_net(
        &mut self,
        time_ns: u64,
        pid: u32,
        c: &Arc<ContainerInfo>,
        key: &str,
        n: &NetEvent,
        profile: Option<(&Profile, u64)>,
        peer: Option<&PeerRef>,
    ) -> Option<ScanStarted> {
        if matches!(n.op, NetOp::Listen | NetOp::Bind) {
            return None;
        }
        let me = self.node(c, key, pid)?;
        if Some(n.netns) != self.host_netns {
            self.learn_address(me, n.saddr);
        }
        let remote = self.endpoint(n.daddr, me);
        let p = n.proto;
        let (key, o) = match n.op {
            NetOp::Connect => {
                let ok = n.result == 0;
                let key = FlowKey { src: Endpoint::Container(me), dst: remote, port: n.dport, proto: p };
                let verdict = self.verdict(key, false, n.dport, profile, peer);
                (key, Observation { time_ns, connections: ok as u64, failed: (!ok) as u64, verdict, ..Default::default() })
            }
            NetOp::Accept => {
                if matches!(remote, Endpoint::Container(_)) {
                    // The container that connected counts it.
                    return None;
                }
                let key = FlowKey { src: remote, dst: Endpoint::Container(me), port: n.sport, proto: p };
                let verdict = self.verdict(key, true, n.sport, profile, peer);
                (key, Observation { time_ns, connections: 1, verdict, ..Default::default() })
            }
            NetOp::Close => {
                let t = n.totals?;
                let (key, inbound, port, bytes_out, bytes_in) = match t.outbound {
                    Some(true) => (
                        FlowKey { src: Endpoint::Container(me), dst: remote, port: n.dport, proto: p },
                        false,
                        n.dport,
                        t.bytes_sent,
                        t.bytes_received,
                    ),
                    Some(false) if !matches!(remote, Endpoint::Container(_)) => (
                        FlowKey { src: remote, dst: Endpoint::Container(me), port: n.sport, proto: p },
                        true,
                        n.sport,
                        t.bytes_received,
                        t.bytes_sent,
                    ),
                    _ => return None,
                };
                // A close is usually counted on its connection's row. When it
                // is the first its row sees (a connection older than the
                // hour, or than the agent), it is judged as its connection
                // would be: a row must say what decides it.
                let verdict = if self.table.has_row(&key) {
                    None
                } else {
                    // (Close events come without a peer: it is the row's.)
                    let peer = self.peer_of(remote);
                    self.verdict(key, inbound, port, profile, peer.as_ref())
                };
                (key, Observation { time_ns, bytes_out, bytes_in, verdict, ..Default::default() })
            }
            NetOp::Listen | NetOp::Bind => return None,
        };
        match self.table.record(key, &o) {
            Recorded::Summarised { scan_started: true, .. } => Some(ScanStarted { outbound: matches!(key.src, Endpoint::Container(_)) }),
            _ => None,
        }
    }

    /// A connection the kernel refused in protect mode (its record).
    pub(super) fn on_refused(&mut self, c: &Arc<ContainerInfo>, key: &str, r: &lancet_sensor::enforce::EnforceRecord) {
        let Some(addr) = r.addr else { return };
        let Some(me) = self.node(c, key, 0) else { return };
        let remote = self.endpoint(addr, me);
        let p = r.proto.unwrap_or(Protocol::Tcp);
        let isolated = r.reason == lancet_sensor::enforce::EnforceReason::Isolated;
        let o = Observation {
            time_ns: r.time_ns,
            refused: 1,
            verdict: Some((Verdict::Refused, Decider::AllowList { isolated })),
            ..Default::default()
        };
        self.table.record(FlowKey { src: Endpoint::Container(me), dst: remote, port: r.port, proto: p }, &o);
    }

    fn end(&self, e: &Endpoint) -> FlowEnd {
        match e {
            Endpoint::Container(n) => match self.nodes.get(*n as usize).and_then(Option::as_ref) {
                Some(node) => FlowEnd {
                    kind: "container".into(),
                    id: node.info.id.clone(),
                    name: node.info.name.clone(),
                    workload: node.workload.clone(),
                },
                None => FlowEnd { kind: "others".into(), ..Default::default() },
            },
            Endpoint::Host(ip) => FlowEnd { kind: "host".into(), id: ip.to_string(), ..Default::default() },
            Endpoint::Ip(ip) => FlowEnd { kind: "external".into(), id: ip.to_string(), ..Default::default() },
            Endpoint::Others => FlowEnd { kind: "others".into(), ..Default::default() },
        }
    }

    /// The words for what decided a flow: the deciding workload's profile
    /// entry, or the rule.
    fn decided_by(&self, k: &FlowKey, d: Decider, workloads: &Workloads) -> String {
        let (local, _) = k.local();
        let workload = match local {
            Endpoint::Container(n) => self.nodes.get(n as usize).and_then(Option::as_ref).map(|n| n.workload.as_str()),
            _ => None,
        };
        let profile = workload.and_then(|w| workloads.map.get(w)).map(|w| &w.profile);
        match d {
            Decider::None => String::new(),
            Decider::Entry { inbound, index } => {
                let list = if inbound { "inbound" } else { "outbound" };
                let entries = profile.map(|p| if inbound { &p.spec().inbound } else { &p.spec().outbound });
                match entries.and_then(|e| e.get(index as usize)) {
                    Some(f) => format!("profile {list}[{index}]: {} {}/{}", f.peer, f.port, f.protocol),
                    None => format!("profile {list}[{index}]"),
                }
            }
            Decider::NotInProfile { inbound } => {
                format!("not in the profile's {} list", if inbound { "inbound" } else { "outbound" })
            }
            Decider::AllowList { isolated: true } => "refused: the container is isolated".into(),
            Decider::AllowList { isolated: false } => "refused: not in the network allow-list (from the profile)".into(),
            Decider::Rule(r) => format!("rule {r}"),
        }
    }

    /// Once a second: what changed goes to the store; the host's addresses
    /// are read again every minute; at a new hour, numbers of containers
    /// that ended are freed.
    pub(super) fn persist(&mut self, store: &mut Store, workloads: &Workloads, now: u64) -> anyhow::Result<()> {
        if self.host_read.is_none_or(|t| t.elapsed() >= HOST_ADDRESSES_EVERY) {
            self.read_host_addresses();
        }
        let mut rows = std::mem::take(&mut self.rows);
        rows.clear();
        let mut drained: Vec<(FlowKey, lancet_engine::flows::FlowStats)> = Vec::new();
        let rolled = self.table.drain(now, |k, s| drained.push((*k, *s)));
        let mut nodes = Vec::new();
        for (k, s) in &drained {
            for e in [k.src, k.dst] {
                if let Endpoint::Container(n) = e {
                    if let Some(node) = self.nodes.get_mut(n as usize).and_then(Option::as_mut) {
                        if !node.stored {
                            node.stored = true;
                            nodes.push(node_record(node, s.counts.last_ns));
                        }
                    }
                }
            }
            rows.push(FlowRow {
                hour_ns: s.counts.first_ns,
                src: self.end(&k.src),
                dst: self.end(&k.dst),
                port: k.port,
                proto: k.proto.to_string(),
                counts: s.counts,
                verdict: s.verdict.as_str().to_string(),
                rule: self.decided_by(k, s.decider, workloads),
            });
        }
        store.put_flow_nodes(&nodes)?;
        store.add_flows(&rows)?;
        self.rows = rows;
        if rolled {
            self.forget_ended(workloads);
        }
        Ok(())
    }

    /// Frees the numbers of containers that ended and that no row names
    /// (after the table was emptied at a new hour, none does).
    fn forget_ended(&mut self, workloads: &Workloads) {
        self.last = None;
        self.last_remote = None;
        self.last_judged = None;
        for i in 0..self.nodes.len() {
            let gone = match &self.nodes[i] {
                Some(n) => !workloads.containers.contains_key(&n.info.id),
                None => false,
            };
            if !gone || self.table.mentions(i as NodeId) {
                if let Some(n) = self.nodes[i].as_mut() {
                    // A new hour: written to the store again when seen.
                    n.stored = false;
                }
                continue;
            }
            if let Some(n) = self.nodes[i].take() {
                self.by_id.remove(&n.info.id);
                self.free.push(i as NodeId);
            }
        }
        let nodes = &self.nodes;
        self.addresses.retain(|_, n| nodes.get(*n as usize).is_some_and(Option::is_some));
    }
}

fn node_record(n: &Node, last_ns: u64) -> FlowNodeRecord {
    FlowNodeRecord {
        id: n.info.id.clone(),
        name: n.info.name.clone(),
        workload: n.workload.clone(),
        image: n.info.image.clone(),
        namespace: n.info.pod.as_ref().map(|p| p.namespace.clone()).unwrap_or_default(),
        labels: serde_json::to_string(&n.info.labels).unwrap_or_else(|_| "{}".into()),
        last_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancet_engine::event::TcpTotals;
    use lancet_engine::profile::Mode;

    fn container(id: &str) -> Arc<ContainerInfo> {
        Arc::new(ContainerInfo { id: id.repeat(64 / id.len()), name: format!("{id}-name"), image: "img".into(), ..Default::default() })
    }

    fn net(op: NetOp, local: (&str, u16), remote: (&str, u16), totals: Option<TcpTotals>) -> NetEvent {
        NetEvent {
            op,
            proto: Protocol::Tcp,
            saddr: local.0.parse().unwrap(),
            sport: local.1,
            daddr: remote.0.parse().unwrap(),
            dport: remote.1,
            result: 0,
            netns: 1,
            totals,
        }
    }

    fn rows(f: &mut Flows) -> Vec<(FlowKey, lancet_engine::flows::FlowStats)> {
        let mut v = Vec::new();
        f.table.drain(1, |k, s| v.push((*k, *s)));
        v
    }

    #[test]
    fn each_connection_is_counted_once_from_the_side_that_opened_it() {
        let mut f = Flows::new();
        let (a, b) = (container("a"), container("b"));
        let mut p = Profile::new("img", "w", 1);
        p.set_mode(Mode::Monitor, 1);
        let prof = Some((&p, 7u64));
        let peer = PeerRef::Workload("w".into());
        // b's address is learned from its own socket.
        f.on_net(10, 1, &b, "w", &net(NetOp::Listen, ("10.0.0.2", 80), ("0.0.0.0", 0), None), prof, None);
        f.on_net(10, 1, &b, "w", &net(NetOp::Accept, ("10.0.0.2", 80), ("10.0.0.9", 4000), None), prof, Some(&peer));
        // a connects to b: counted on a's side; b's accept from a is not.
        f.on_net(11, 2, &a, "w", &net(NetOp::Connect, ("10.0.0.1", 5000), ("10.0.0.2", 80), None), prof, Some(&peer));
        f.on_net(12, 1, &b, "w", &net(NetOp::Accept, ("10.0.0.2", 80), ("10.0.0.1", 5000), None), prof, Some(&peer));
        let out = TcpTotals { bytes_sent: 100, bytes_received: 2000, outbound: Some(true) };
        let inb = TcpTotals { bytes_sent: 2000, bytes_received: 100, outbound: Some(false) };
        f.on_net(13, 2, &a, "w", &net(NetOp::Close, ("10.0.0.1", 5000), ("10.0.0.2", 80), Some(out)), prof, None);
        f.on_net(13, 1, &b, "w", &net(NetOp::Close, ("10.0.0.2", 80), ("10.0.0.1", 5000), Some(inb)), prof, None);
        // The outside client's close: its bytes, from b's side.
        let ext = TcpTotals { bytes_sent: 50, bytes_received: 5, outbound: Some(false) };
        f.on_net(14, 1, &b, "w", &net(NetOp::Close, ("10.0.0.2", 80), ("10.0.0.9", 4000), Some(ext)), prof, None);
        // Loopback inside a container is the container itself.
        f.on_net(15, 2, &a, "w", &net(NetOp::Connect, ("127.0.0.1", 6000), ("127.0.0.1", 8080), None), prof, Some(&peer));
        let got = rows(&mut f);
        let (na, nb) = (f.by_id[&a.id], f.by_id[&b.id]);
        let find = |src, dst, port| got.iter().find(|(k, _)| k.src == src && k.dst == dst && k.port == port).map(|(_, s)| *s);
        let ab = find(Endpoint::Container(na), Endpoint::Container(nb), 80).expect("a -> b");
        assert_eq!((ab.counts.connections, ab.counts.bytes_out, ab.counts.bytes_in), (1, 100, 2000));
        assert_eq!(ab.verdict, Verdict::Unlisted, "monitor mode, not in the profile");
        let ext_ip: IpAddr = "10.0.0.9".parse().unwrap();
        let xb = find(Endpoint::Ip(ext_ip), Endpoint::Container(nb), 80).expect("outside -> b");
        assert_eq!((xb.counts.connections, xb.counts.bytes_out, xb.counts.bytes_in), (1, 5, 50));
        assert!(find(Endpoint::Container(na), Endpoint::Container(na), 8080).is_some(), "loopback");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn a_cached_verdict_follows_the_profile_generation() {
        let mut f = Flows::new();
        let a = container("a");
        let peer = PeerRef::Ip("10.0.0.5".parse().unwrap());
        let mut p = Profile::new("img", "w", 1);
        p.set_mode(Mode::Monitor, 1);
        let c = net(NetOp::Connect, ("10.0.0.1", 5000), ("10.0.0.5", 443), None);
        f.on_net(1, 1, &a, "w", &c, Some((&p, 1)), Some(&peer));
        assert_eq!(rows(&mut f)[0].1.verdict, Verdict::Unlisted);
        // Learned (a new generation): allowed by the entry now.
        let d = lancet_engine::profile::Deviation::NewOutbound { peer: (&peer).into(), port: 443, proto: Protocol::Tcp };
        assert!(p.allow(&d, 2));
        f.on_net(3, 1, &a, "w", &c, Some((&p, 2)), Some(&peer));
        let r = rows(&mut f);
        assert_eq!(r[0].1.verdict, Verdict::Allowed);
        assert_eq!(r[0].1.decider, Decider::Entry { inbound: false, index: 0 });
    }

    #[test]
    fn a_close_that_opens_its_row_says_what_decides_it() {
        // A connection older than the hour (or the agent): its close is the
        // first its row sees, and must not read "learning" with no entry.
        let mut f = Flows::new();
        let a = container("a");
        let peer = PeerRef::Ip("10.0.0.5".parse().unwrap());
        let mut p = Profile::new("img", "w", 1);
        p.set_mode(Mode::Monitor, 1);
        let out = TcpTotals { bytes_sent: 10, bytes_received: 20, outbound: Some(true) };
        f.on_net(1, 1, &a, "w", &net(NetOp::Close, ("10.0.0.1", 5000), ("10.0.0.5", 443), Some(out)), Some((&p, 1)), Some(&peer));
        let r = rows(&mut f);
        assert_eq!((r[0].1.counts.connections, r[0].1.counts.bytes_out), (0, 10));
        assert_eq!((r[0].1.verdict, r[0].1.decider), (Verdict::Unlisted, Decider::NotInProfile { inbound: false }));
    }

    #[test]
    fn a_container_on_the_hosts_network_never_takes_the_hosts_addresses() {
        let mut f = Flows::new();
        let Some(host_netns) = f.host_netns else { return };
        let (a, hostnet) = (container("a"), container("h"));
        let mut e = net(NetOp::Connect, ("10.0.0.7", 5000), ("10.0.0.5", 443), None);
        e.netns = host_netns;
        f.on_net(1, 1, &hostnet, "w", &e, None, None);
        // Another container connecting to that address reaches the host
        // (or whatever owns it), not the host-network container.
        f.on_net(2, 2, &a, "w", &net(NetOp::Connect, ("10.0.0.1", 5001), ("10.0.0.7", 80), None), None, None);
        let got = rows(&mut f);
        let na = f.by_id[&a.id];
        let to = got.iter().find(|(k, _)| k.src == Endpoint::Container(na)).map(|(k, _)| k.dst);
        assert_eq!(to, Some(Endpoint::Ip("10.0.0.7".parse().unwrap())));
    }
}
