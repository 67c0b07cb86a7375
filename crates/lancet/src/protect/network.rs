//! The network backend: per-container allow-lists in pinned cgroup BPF maps.

use super::{holds, merge_flags, Backend, Guarded, SharedEnforcer};
use lancet_engine::response::NetAllow;
use lancet_sensor::enforce::{self, NetRule, PolicyFlags};

/// Per-container allow-lists in cgroup BPF maps (connect, sendmsg, bind).
pub(super) struct NetBackend {
    pub(super) enforcer: SharedEnforcer,
}

impl Backend for NetBackend {
    fn name(&self) -> &'static str {
        "network (cgroup connect/sendmsg/bind allow-lists)"
    }

    fn availability(&self) -> Result<(), String> {
        holds(&self.enforcer.borrow(), "connect")
    }

    /// Replaces the container's pinned list with the one computed now
    /// (see [`AllowList::replace`]): new rules go in, stale ones (a resolver
    /// an older agent read from the container, a flow no longer learned)
    /// come out; only what may be a workload peer's address not seen since
    /// a restart stays.
    ///
    /// [`AllowList::replace`]: lancet_engine::response::AllowList::replace
    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        let mut e = self.enforcer.borrow_mut();
        let pinned: Vec<NetAllow> = e.allow_rules(g.cgroup_id).map_err(|e| e.to_string())?.iter().map(from_rule).collect();
        let plan = g.allow.replace(&pinned);
        let rules: Vec<NetRule> = plan.rules.iter().map(to_rule).collect();
        e.set_allow(g.cgroup_id, &rules).map_err(|e| e.to_string())?;
        if !plan.removed.is_empty() {
            let shown: Vec<String> = plan.removed.iter().take(8).map(describe).collect();
            tracing::info!(container = %g.name, removed = plan.removed.len(), rules = ?shown, "stale network allow rules removed");
        }
        merge_flags(&mut e, g.cgroup_id, PolicyFlags::NET_ENFORCE, PolicyFlags::NONE)
    }

    fn release(&mut self, g: &Guarded) {
        let mut e = self.enforcer.borrow_mut();
        let _ = e.set_allow(g.cgroup_id, &[]);
        let _ = merge_flags(&mut e, g.cgroup_id, PolicyFlags::NONE, PolicyFlags::NET_ENFORCE);
    }
}

fn to_rule(a: &NetAllow) -> NetRule {
    NetRule {
        cidr: a.cidr,
        port: a.port,
        proto: a.proto,
        dir: if a.bind { enforce::Direction::Bind } else { enforce::Direction::Egress },
        during_isolation: false,
    }
}

/// A pinned rule as the engine describes rules (the agent never pins one
/// for isolation, so that mark has nothing to map to).
fn from_rule(r: &NetRule) -> NetAllow {
    NetAllow { cidr: r.cidr, port: r.port, proto: r.proto, bind: r.dir == enforce::Direction::Bind }
}

/// `10.89.0.2/32:53/any` (`bind` for a listening rule), for the log.
fn describe(a: &NetAllow) -> String {
    let port = a.port.map(|p| p.to_string()).unwrap_or_else(|| "any".into());
    let proto = a.proto.map_or_else(|| "any".to_string(), |p| p.to_string());
    format!("{}{}:{port}/{proto}", if a.bind { "bind " } else { "" }, a.cidr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancet_engine::profile::Protocol;

    #[test]
    fn pinned_rules_convert_both_ways() {
        for (cidr, port, proto, bind) in [("10.89.0.1/32", Some(53), None, false), ("::/0", Some(8080), Some(Protocol::Tcp), true)] {
            let a = NetAllow { cidr: cidr.parse().unwrap(), port, proto, bind };
            assert_eq!(from_rule(&to_rule(&a)), a);
        }
        let udp = NetAllow { cidr: "10.0.0.0/8".parse().unwrap(), port: None, proto: Some(Protocol::Udp), bind: false };
        assert_eq!(from_rule(&to_rule(&udp)), udp);
        assert_eq!(describe(&udp), "10.0.0.0/8:any/udp");
    }
}
