//! The per-container policy maps: flags and isolation deadline
//! (`cg_policy`), and the files whose exec kills (`kill_ino`).

use super::isolation::isolation_pins;
use super::net;
use super::{boot_time_ns, deadline, delete, key_cgid, kill_key, map_err, CgPolicy, Enforcer, PolicyFlags, Result};
use libbpf_rs::{MapCore, MapFlags};
use std::time::Duration;

impl Enforcer {
    pub(super) fn read_raw_policy(&self, cgid: u64) -> Result<Option<(u32, u64)>> {
        let v = self.cg_policy.lookup(&cgid.to_ne_bytes(), MapFlags::ANY).map_err(map_err("cg_policy", format!("cgroup {cgid}")))?;
        Ok(v.and_then(|v| {
            let flags = u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?);
            let until = u64::from_ne_bytes(v.get(8..16)?.try_into().ok()?);
            Some((flags, until))
        }))
    }

    pub(super) fn write_raw_policy(&self, cgid: u64, flags: u32, until_ns: u64) -> Result<()> {
        if flags == 0 {
            return delete(&self.cg_policy, &cgid.to_ne_bytes()).map_err(map_err("cg_policy", format!("cgroup {cgid}")));
        }
        let mut v = [0u8; 16];
        v[0..4].copy_from_slice(&flags.to_ne_bytes());
        v[8..16].copy_from_slice(&until_ns.to_ne_bytes());
        self.cg_policy.update(&cgid.to_ne_bytes(), &v, MapFlags::ANY).map_err(map_err("cg_policy", format!("cgroup {cgid}")))
    }

    /// Sets a container's policy. An isolation in force is kept unless
    /// `policy.flags` has ISOLATE itself (then `isolate_until` is its new
    /// deadline); isolation proper (the packet filters) is [`Enforcer::isolate`].
    /// Empty flags (and no isolation) remove the entry. REPORT_EROFS is
    /// taken as given, like the other flags ([`Enforcer::set_write_reports`]
    /// changes only it), and the program that reads it is attached or
    /// detached to match.
    pub fn set_policy(&self, cgid: u64, policy: CgPolicy) -> Result<()> {
        let old = self.read_raw_policy(cgid)?;
        let mut flags = policy.flags.bits();
        let mut until = 0;
        if policy.flags.contains(PolicyFlags::ISOLATE) {
            until = deadline(policy.isolate_until);
        } else if let Some((old, old_until)) = old {
            if old & PolicyFlags::ISOLATE.bits() != 0 && (old_until == 0 || old_until > boot_time_ns()) {
                flags |= PolicyFlags::ISOLATE.bits();
                until = old_until;
            }
        }
        let reports = PolicyFlags::REPORT_EROFS.bits();
        let had = old.is_some_and(|(f, _)| f & reports != 0);
        let wants = flags & reports != 0;
        if wants && !had {
            self.attach_write_reports()?;
        }
        self.write_raw_policy(cgid, flags, until)?;
        if had && !wants {
            self.sync_write_reports()?;
        }
        Ok(())
    }

    /// A container's policy, or None when it has none.
    pub fn policy(&self, cgid: u64) -> Result<Option<CgPolicy>> {
        Ok(self.read_raw_policy(cgid)?.map(|(flags, until)| CgPolicy {
            flags: PolicyFlags(flags),
            isolate_until: (until != 0).then(|| Duration::from_nanos(until.saturating_sub(boot_time_ns()))),
        }))
    }

    /// The cgroups that have a policy entry (for adoption after a restart).
    pub fn list_cgroups(&self) -> Result<Vec<u64>> {
        let mut v: Vec<u64> =
            self.cg_policy.keys().filter_map(|k| k.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)).collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Forgets a container: its policy, allow-list, kill list, applet lists
    /// and isolation links (and detaches the write reports' program if it
    /// was the last to want it). Call when it exits.
    pub fn clear(&self, cgid: u64) -> Result<()> {
        self.detach_isolation(cgid);
        let reported = self.read_raw_policy(cgid)?.is_some_and(|(f, _)| f & PolicyFlags::REPORT_EROFS.bits() != 0);
        delete(&self.cg_policy, &cgid.to_ne_bytes()).map_err(map_err("cg_policy", format!("cgroup {cgid}")))?;
        if reported {
            self.sync_write_reports()?;
        }
        self.remove_allow_entries(cgid, &std::collections::HashSet::new())?;
        for k in self.kill_ino.keys().collect::<Vec<_>>() {
            if key_cgid(&k) == Some(cgid) {
                delete(&self.kill_ino, &k).map_err(map_err("kill_ino", format!("cgroup {cgid}")))?;
            }
        }
        self.clear_applets(cgid)
    }

    /// Removes every entry of cgroups for which `live` says false (gone
    /// while the agent was down). Returns the cgroups removed.
    pub fn gc(&self, live: impl Fn(u64) -> bool) -> Result<Vec<u64>> {
        let mut all: std::collections::BTreeSet<u64> = self.list_cgroups()?.into_iter().collect();
        all.extend(self.net_allow.keys().filter_map(|k| net::key_cgid(&k)));
        all.extend(self.kill_ino.keys().filter_map(|k| key_cgid(&k)));
        all.extend(self.multicall.keys().filter_map(|k| key_cgid(&k)));
        all.extend(self.applets.keys().filter_map(|k| key_cgid(&k)));
        all.extend(isolation_pins(&self.cfg.pin_dir).into_iter().map(|(_, (cgid, _))| cgid));
        let mut removed = Vec::new();
        for cgid in all {
            if !live(cgid) {
                self.clear(cgid)?;
                removed.push(cgid);
            }
        }
        Ok(removed)
    }

    /// Kills, from now on, every exec in `cgid` of the file `dev`/`ino`
    /// (with the KILL_EXEC_INO flag set). `dev` is the kernel's encoding, as
    /// in exec events' `exe_dev`; convert a `stat` st_dev with [`kernel_dev`](crate::sys::kernel_dev).
    pub fn kill_ino(&self, cgid: u64, dev: u32, ino: u64) -> Result<()> {
        self.kill_ino
            .update(&kill_key(cgid, dev, ino), &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("kill_ino", format!("cgroup {cgid}, dev {dev:#x}, inode {ino}")))
    }

    pub fn forget_ino(&self, cgid: u64, dev: u32, ino: u64) -> Result<()> {
        delete(&self.kill_ino, &kill_key(cgid, dev, ino)).map_err(map_err("kill_ino", format!("cgroup {cgid}, dev {dev:#x}, inode {ino}")))
    }
}
