//! What holds on this host: each program's hook, the kernel it needs,
//! whether it is attached now (`lancet doctor`, [`Enforcer::status`]), and
//! the kernel's counters and run statistics.

use super::isolation::{isolation_pins, Skb};
use super::loader::open_skel;
use super::pins::link_cgroup;
use super::{euid, map_err, EnforceError, EnforceStats, Enforcer, Result, STAT_COUNT, SYS_EXIT_PROGRAM};
use libbpf_rs::skel::{OpenSkel, Skel};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Whether one enforcement program holds on this host (for `lancet doctor`).
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub program: String,
    pub hook: String,
    pub min_kernel: &'static str,
    /// What it is attached to: the cgroup v2 root, all execs, or isolated
    /// containers only.
    pub target: String,
    /// Loaded, and (for the root hooks) its pinned link is attached now.
    pub holds: bool,
    /// A pinned link existed when the enforcer opened and was taken over:
    /// pointed at the new program (`BPF_LINK_UPDATE`), or, for link types
    /// that cannot change program (the `tp_btf` one), replaced by a new link
    /// attached before the old one was detached.
    pub adopted: bool,
    pub pin: Option<PathBuf>,
    pub error: Option<String>,
}

/// What each program hooks, and since when the kernel has it.
pub(super) fn program_info(name: &str) -> (&'static str, HookKind) {
    match name {
        "enf_connect4" | "enf_connect6" | "enf_bind4" | "enf_bind6" => ("4.17", HookKind::Root),
        "enf_sendmsg4" | "enf_sendmsg6" => ("4.18", HookKind::Root),
        "enf_exec" => ("5.5 (tp_btf), 5.3 (bpf_send_signal)", HookKind::Global),
        "enf_listen" | "enf_listen_port" => ("5.11 (bpf_get_current_task_btf), 5.5 (tp_btf)", HookKind::Global),
        SYS_EXIT_PROGRAM => ("5.11 (bpf_get_current_task_btf), 4.17 (raw_tp)", HookKind::OnDemand),
        "enf_skb_in" => ("4.18 (bpf_skb_cgroup_id)", HookKind::Isolation(Skb::Ingress)),
        "enf_skb_out" => ("4.18 (bpf_skb_cgroup_id)", HookKind::Isolation(Skb::Egress)),
        _ => ("?", HookKind::Global),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HookKind {
    /// A cgroup hook attached at the cgroup v2 root.
    Root,
    /// A tracing hook (all tasks).
    Global,
    /// A tracing hook attached only while some cgroup needs it (its cost is
    /// host-wide): `enf_sys_exit`, while a cgroup has REPORT_EROFS.
    OnDemand,
    /// A packet filter attached to a container's cgroup while it is isolated.
    Isolation(Skb),
}

/// Kernel accounting of BPF program run time (`BPF_ENABLE_STATS`, 5.8),
/// on while this value lives. Reference-counted by the kernel, so it never
/// turns off statistics someone else (the `kernel.bpf_stats_enabled`
/// sysctl, another holder) turned on. Costs two clock reads per program run
/// while on; for measurements, not for production.
#[derive(Debug)]
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> io::Result<RunTimeStats> {
        // SAFETY: plain syscall wrapper without pointers; on success it
        // returns a new fd that nothing else owns.
        let fd = unsafe { libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME) };
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(-fd));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        Ok(RunTimeStats { _fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }
}

/// What the kernel reports about a loaded program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgramRuns {
    /// The program's id (as in `bpftool prog`, and `prog_id` of its links).
    pub id: u32,
    /// Runs and their total time, counted while [`RunTimeStats`] are on.
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Instructions the verifier walked to accept it (its complexity).
    pub verified_insns: u32,
}

/// What the kernel says about program `id`, if it is loaded.
pub(super) fn program_runs(id: u32) -> Option<ProgramRuns> {
    libbpf_rs::query::ProgInfoIter::default().find(|p| p.id == id).map(|p| ProgramRuns {
        id,
        run_cnt: p.run_cnt,
        run_time_ns: p.run_time_ns,
        verified_insns: p.verified_insns,
    })
}

/// The id of the program `fd` refers to.
pub(super) fn prog_id(fd: &OwnedFd) -> io::Result<u32> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: `fd` is open; `info` is writable memory of `len` bytes for
    // the duration of the call, and the kernel writes at most `len` bytes.
    let r = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    Ok(info.id)
}

/// One entry per program of the object, nothing known yet.
pub(super) fn initial_status(cgroup2_root: &Path) -> Result<Vec<HookStatus>> {
    let mut storage = MaybeUninit::uninit();
    let open = open_skel(&mut storage, None, None, &[])?;
    let status = open
        .open_object()
        .progs()
        .map(|p| {
            let program = p.name().to_string_lossy().into_owned();
            let (min_kernel, kind) = program_info(&program);
            let target = match kind {
                HookKind::Root => format!("cgroup v2 root {}", cgroup2_root.display()),
                HookKind::Global if program == "enf_exec" => "every exec".to_string(),
                HookKind::Global if program == "enf_listen" => "every TCP socket going to LISTEN".to_string(),
                HookKind::Global if program == "enf_listen_port" => "every SIGKILL delivered".to_string(),
                HookKind::Global => "all tasks".to_string(),
                HookKind::OnDemand => "every syscall exit, while a cgroup reports refused writes".to_string(),
                HookKind::Isolation(_) => "the cgroup of each isolated container".to_string(),
            };
            HookStatus {
                program,
                hook: p.section().to_string_lossy().into_owned(),
                min_kernel,
                target,
                holds: false,
                adopted: false,
                pin: None,
                error: None,
            }
        })
        .collect();
    Ok(status)
}

/// For `lancet doctor`, without touching any pin or rule: loads the
/// enforcement object with private (empty) maps and attaches each program
/// for an instant at `cgroup2_root` (with empty maps they let everything
/// through). `holds` then says whether that program type works here.
pub fn check(cgroup2_root: &Path) -> Vec<HookStatus> {
    let mut status = match initial_status(cgroup2_root) {
        Ok(s) => s,
        Err(e) => {
            return vec![HookStatus {
                program: "enforce".into(),
                hook: String::new(),
                min_kernel: "?",
                target: String::new(),
                holds: false,
                adopted: false,
                pin: None,
                error: Some(e.to_string()),
            }]
        }
    };
    let uid = euid();
    if uid != 0 {
        for st in status.iter_mut() {
            st.error = Some(EnforceError::NotRoot(uid).to_string());
        }
        return status;
    }
    let (mut first, mut retry) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    let skel = match Enforcer::load(None, &mut first, &mut retry, &mut status) {
        Ok(s) => s,
        Err(e) => {
            for st in status.iter_mut().filter(|s| s.error.is_none()) {
                st.error = Some(e.to_string());
            }
            return status;
        }
    };
    let root = std::fs::File::open(cgroup2_root);
    for prog in skel.object().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let Some(st) = status.iter_mut().find(|s| s.program == name) else { continue };
        if st.error.is_some() {
            continue;
        }
        let res = match (program_info(&name).1, &root) {
            (HookKind::Global | HookKind::OnDemand, _) => prog.attach(),
            (_, Ok(root)) => prog.attach_cgroup(root.as_raw_fd()),
            (_, Err(e)) => {
                st.error = Some(format!("cgroup v2 root {}: {e}", cgroup2_root.display()));
                continue;
            }
        };
        match res {
            Ok(link) => {
                st.holds = true;
                drop(link);
            }
            Err(e) => st.error = Some(format!("refused at attach: {e}")),
        }
    }
    status
}

impl Enforcer {
    /// Each program, whether it holds now (a root link still attached to the
    /// cgroup v2 root), and why not.
    pub fn status(&self) -> Vec<HookStatus> {
        let mut out = self.status.clone();
        let isolated = isolation_pins(&self.cfg.pin_dir).len() / 2;
        for st in out.iter_mut() {
            match program_info(&st.program).1 {
                HookKind::Root => {
                    if let Some((_, l)) = self.links.iter().find(|(n, _)| *n == st.program) {
                        if link_cgroup(l) == Some(0) {
                            st.holds = false;
                            st.error = Some("the link was detached".into());
                        }
                    }
                }
                HookKind::Isolation(_) => {
                    st.target = format!("the cgroup of each isolated container ({isolated} now)");
                }
                HookKind::OnDemand => {
                    let pin = self.sys_exit_pin();
                    let attached = pin.exists();
                    let flagged = self.write_reports().map(|v| v.len().to_string()).unwrap_or_else(|_| "?".into());
                    st.target = format!(
                        "every syscall exit, while a cgroup reports refused writes ({flagged} now; {})",
                        if attached { "attached" } else { "not attached" }
                    );
                    st.pin = attached.then_some(pin);
                }
                HookKind::Global => {}
            }
        }
        out
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<EnforceStats> {
        let mut v = [0u64; STAT_COUNT];
        for (i, slot) in v.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            if let Some(per_cpu) = self.stats.lookup_percpu(&key, MapFlags::ANY).map_err(map_err("enforce_stats", format!("index {i}")))? {
                *slot = per_cpu.iter().filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok())).map(u64::from_ne_bytes).sum();
            }
        }
        Ok(EnforceStats {
            denied_connect4: v[0],
            denied_connect6: v[1],
            denied_sendmsg4: v[2],
            denied_sendmsg6: v[3],
            denied_bind4: v[4],
            denied_bind6: v[5],
            audited: v[6],
            kills: v[7],
            kill_failed: v[8],
            isolate_dropped_ingress: v[9],
            isolate_dropped_egress: v[10],
            events_lost: v[11],
            write_refused: v[12],
            write_refused_dropped: v[13],
            listen_kills: v[14],
        })
    }

    /// Run statistics of the exec program (`enf_exec`) this enforcer
    /// attached, or None when it does not hold.
    pub fn exec_program_runs(&self) -> Result<Option<ProgramRuns>> {
        let Some((_, link)) = self.links.iter().find(|(n, _)| n == "enf_exec") else { return Ok(None) };
        let info = link.info().map_err(map_err("link-enf_exec", "reading the link"))?;
        Ok(program_runs(info.prog_id))
    }
}
