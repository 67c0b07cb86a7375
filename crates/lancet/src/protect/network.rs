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

    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        let mut rules: Vec<NetRule> = g.allow.iter().map(to_rule).collect();
        let mut e = self.enforcer.borrow_mut();
        // Rules already pinned for this container stay: a peer whose address
        // is not known yet (just after a restart) must not lose its flow.
        if let Ok(old) = e.allow_rules(g.cgroup_id) {
            for r in old {
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
        e.set_allow(g.cgroup_id, &rules).map_err(|e| e.to_string())?;
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
