//! The lookup index behind `check`: rebuilt from the spec on load and
//! kept in step by every learning step, so a known event costs hash
//! lookups and no allocation.

use super::*;
// Looked up at every event a profile checks or learns: the event path's maps.
use crate::{FastMap, FastSet};

/// A peer borrowed from an event or a caller, for allocation-free lookups.
#[derive(Debug, Clone, Copy)]
pub(super) enum PeerKey<'a> {
    Workload(&'a str),
    Host(&'a str),
    Ip(IpAddr),
}

impl<'a> From<&'a PeerRef> for PeerKey<'a> {
    fn from(p: &'a PeerRef) -> Self {
        match p {
            PeerRef::Workload(w) => PeerKey::Workload(w),
            PeerRef::Host(h) => PeerKey::Host(h),
            PeerRef::Ip(ip) => PeerKey::Ip(ip.to_canonical()),
        }
    }
}

impl PeerKey<'_> {
    pub(super) fn to_peer(self) -> Peer {
        match self {
            PeerKey::Workload(w) => Peer::Workload(w.to_string()),
            PeerKey::Host(h) => Peer::Host(h.to_string()),
            PeerKey::Ip(ip) => Peer::Cidr(IpNet::from(ip)),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct ExecIdx {
    pub(super) pos: usize,
    pub(super) parents: FastSet<String>,
    pub(super) names: FastSet<String>,
    pub(super) code: FastSet<String>,
}

pub(super) type PortKey = (u16, Protocol);

#[derive(Debug, Clone, Default)]
pub(super) struct FlowIndex {
    pub(super) workloads: FastMap<String, FastMap<PortKey, usize>>,
    pub(super) hosts: FastMap<String, FastMap<PortKey, usize>>,
    /// Host-prefix CIDRs (single addresses).
    pub(super) ips: FastMap<(IpAddr, u16, Protocol), usize>,
    /// Wider CIDRs, searched in order when the address is not listed itself.
    pub(super) nets: Vec<(IpNet, u16, Protocol, usize)>,
}

impl FlowIndex {
    /// The entry covering `peer` (an address may fall in a wider CIDR).
    pub(super) fn find(&self, peer: PeerKey<'_>, port: u16, proto: Protocol) -> Option<usize> {
        match peer {
            PeerKey::Workload(w) => self.workloads.get(w)?.get(&(port, proto)).copied(),
            PeerKey::Host(h) => self.hosts.get(h)?.get(&(port, proto)).copied(),
            PeerKey::Ip(ip) => self
                .ips
                .get(&(ip, port, proto))
                .copied()
                .or_else(|| self.nets.iter().find(|(n, p, pr, _)| *p == port && *pr == proto && n.contains(&ip)).map(|e| e.3)),
        }
    }

    /// The entry with exactly this peer.
    pub(super) fn find_exact(&self, peer: &Peer, port: u16, proto: Protocol) -> Option<usize> {
        match peer {
            Peer::Cidr(n) if n.prefix_len() < n.max_prefix_len() => {
                self.nets.iter().find(|(m, p, pr, _)| m == n && *p == port && *pr == proto).map(|e| e.3)
            }
            _ => self.find(peer.key(), port, proto),
        }
    }

    /// False when the entry was already there.
    pub(super) fn insert(&mut self, peer: &Peer, port: u16, proto: Protocol, pos: usize) -> bool {
        if self.find_exact(peer, port, proto).is_some() {
            return false;
        }
        match peer {
            Peer::Workload(w) => self.workloads.entry(w.clone()).or_default().insert((port, proto), pos).is_none(),
            Peer::Host(h) => self.hosts.entry(h.clone()).or_default().insert((port, proto), pos).is_none(),
            Peer::Cidr(n) if n.prefix_len() == n.max_prefix_len() => self.ips.insert((n.addr(), port, proto), pos).is_none(),
            Peer::Cidr(n) => {
                self.nets.push((*n, port, proto, pos));
                true
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    pub(super) exec: FastMap<String, ExecIdx>,
    pub(super) listen: FastMap<PortKey, usize>,
    pub(super) outbound: FlowIndex,
    pub(super) inbound: FlowIndex,
    pub(super) written: FastMap<String, usize>,
    pub(super) sensitive: FastMap<String, usize>,
}

impl Index {
    pub(super) fn build(spec: &ProfileSpec) -> Result<Index, String> {
        let mut ix = Index::default();
        for (pos, e) in spec.executables.iter().enumerate() {
            let parents = e.parents.iter().cloned().collect();
            let names = e.names.iter().cloned().collect();
            let code = e.code.iter().cloned().collect();
            if ix.exec.insert(e.path.clone(), ExecIdx { pos, parents, names, code }).is_some() {
                return Err(format!("executables[{pos}]: {} is listed twice", e.path));
            }
        }
        for (pos, l) in spec.listening.iter().enumerate() {
            if ix.listen.insert((l.port, l.protocol), pos).is_some() {
                return Err(format!("listening[{pos}]: {}/{} is listed twice", l.port, l.protocol));
            }
        }
        for (name, flows, fix) in [("outbound", &spec.outbound, &mut ix.outbound), ("inbound", &spec.inbound, &mut ix.inbound)] {
            for (pos, f) in flows.iter().enumerate() {
                if !fix.insert(&f.peer, f.port, f.protocol, pos) {
                    return Err(format!("{name}[{pos}]: {} {}/{} is listed twice", f.peer, f.port, f.protocol));
                }
            }
        }
        for (name, paths, pix) in
            [("writtenDirs", &spec.written_dirs, &mut ix.written), ("sensitiveReads", &spec.sensitive_reads, &mut ix.sensitive)]
        {
            for (pos, p) in paths.iter().enumerate() {
                if pix.insert(p.path.clone(), pos).is_some() {
                    return Err(format!("{name}[{pos}]: {} is listed twice", p.path));
                }
            }
        }
        Ok(ix)
    }
}
