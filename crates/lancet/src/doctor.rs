//! `lancet doctor`: what this host offers, and which of lancet's guarantees
//! hold as a result.

use lancet_sensor::features::{self, FanotifyCheck, ProgTypeCheck};
use lancet_sensor::probes::detect_cgroup2_root;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct Guarantee {
    pub name: &'static str,
    /// `monitoring` or `enforcement`.
    pub area: &'static str,
    pub holds: bool,
    /// The backend that provides it, or why nothing does.
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub root: bool,
    pub btf: Option<PathBuf>,
    pub lockdown: Option<String>,
    pub lsms: Option<Vec<String>>,
    pub cgroup2: Option<PathBuf>,
    pub program_types: Vec<ProgTypeCheck>,
    pub bpf_lsm: bool,
    pub fanotify: FanotifyCheck,
    pub runtimes: Vec<RuntimeFound>,
    pub guarantees: Vec<Guarantee>,
    /// Monitoring can run: the exit status is 0 exactly when this is true.
    pub monitoring_ok: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RuntimeFound {
    pub runtime: &'static str,
    /// The state directory found, under the host root.
    pub state: String,
}

/// Runtimes are found by their on-disk state, which is what attribution reads.
fn runtimes(host_root: &Path) -> Vec<RuntimeFound> {
    let candidates: [(&str, &str); 7] = [
        ("podman", "var/lib/containers/storage/overlay-containers"),
        ("cri-o", "run/crio"),
        ("docker", "var/lib/docker/containers"),
        ("containerd", "run/containerd/io.containerd.runtime.v2.task"),
        ("runc", "run/runc"),
        ("crun", "run/crun"),
        ("kubernetes", "var/lib/kubelet"),
    ];
    candidates
        .into_iter()
        .filter(|(_, p)| host_root.join(p).is_dir())
        .map(|(runtime, p)| RuntimeFound { runtime, state: format!("/{p}") })
        .collect()
}

fn prog<'a>(checks: &'a [ProgTypeCheck], kind: &str) -> Option<&'a ProgTypeCheck> {
    checks.iter().find(|c| c.kind == kind)
}

fn works(checks: &[ProgTypeCheck], kind: &str) -> bool {
    prog(checks, kind).map(|c| c.loads && c.attaches != Some(false)).unwrap_or(false)
}

fn why(checks: &[ProgTypeCheck], kind: &str) -> String {
    prog(checks, kind).and_then(|c| c.error.clone()).unwrap_or_else(|| format!("{kind} not probed"))
}

pub fn report(host_root: &Path) -> Report {
    let root = features::is_root();
    let cgroup2 = detect_cgroup2_root();
    let program_types = if root { features::check_program_types(cgroup2.as_deref()) } else { Vec::new() };
    let lsms = features::active_lsms();
    let lsm_listed = lsms.as_ref().map(|l| l.iter().any(|x| x == "bpf")).unwrap_or(false);
    let bpf_lsm = lsm_listed && works(&program_types, "lsm");
    let fanotify = features::check_fanotify();
    let btf = features::btf_path();
    let mut problems = Vec::new();
    if !root {
        problems.push("not running as root: BPF and fanotify need CAP_SYS_ADMIN (and CAP_BPF, CAP_PERFMON)".into());
    }
    if btf.is_none() {
        problems.push("no kernel BTF at /sys/kernel/btf/vmlinux: CO-RE probes cannot load (CONFIG_DEBUG_INFO_BTF=y is needed)".into());
    }
    if cgroup2.is_none() {
        problems.push("no cgroup v2 hierarchy mounted: events cannot be attributed to containers".into());
    }
    let tp_btf = works(&program_types, "tp_btf");
    let ringbuf = works(&program_types, "ringbuf");
    let cgroup_sock = works(&program_types, "cgroup_connect4");
    let process_ok = root && btf.is_some() && tp_btf && ringbuf;
    if root && !tp_btf {
        problems.push(format!("tp_btf programs are refused: {}", why(&program_types, "tp_btf")));
    }
    if root && !ringbuf {
        problems.push(format!("BPF ring buffer unavailable: {}", why(&program_types, "ringbuf")));
    }
    let g =
        |name, area, holds: bool, ok: &str, not: String| Guarantee { name, area, holds, detail: if holds { ok.to_string() } else { not } };
    let fan_err = |r: &Result<(), String>| r.clone().err().unwrap_or_default();
    let guarantees = vec![
        g("process exec/fork/exit", "monitoring", process_ok, "tp_btf sched_process_* + ring buffer", problems.join("; ")),
        g("TCP connect/accept/listen/close", "monitoring", process_ok, "tp_btf inet_sock_set_state", problems.join("; ")),
        g(
            "UDP connect/send/bind",
            "monitoring",
            process_ok && cgroup_sock && cgroup2.is_some(),
            "cgroup/connect4,6 + sendmsg4,6 + post_bind4,6 on the cgroup v2 root",
            why(&program_types, "cgroup_connect4"),
        ),
        g(
            "file create/modify/delete/rename/chmod",
            "monitoring",
            root && fanotify.report_dfid_name.is_ok(),
            "fanotify FAN_REPORT_DFID_NAME filesystem mark on container storage",
            fan_err(&fanotify.report_dfid_name),
        ),
        g(
            "sensitive file reads",
            "monitoring",
            root && fanotify.notify.is_ok(),
            "fanotify FAN_OPEN inode marks in each container root",
            fan_err(&fanotify.notify),
        ),
        g(
            "container attribution",
            "monitoring",
            cgroup2.is_some(),
            "cgroup v2 ids + runtime state on disk",
            "no cgroup v2 hierarchy".into(),
        ),
        g(
            "refuse exec / file open",
            "enforcement",
            root && (fanotify.permission.is_ok() || bpf_lsm),
            if bpf_lsm { "BPF-LSM (bprm_check_security, file_open)" } else { "fanotify FAN_OPEN_EXEC_PERM / FAN_OPEN_PERM" },
            format!("fanotify: {}; BPF-LSM: {}", fan_err(&fanotify.permission), why(&program_types, "lsm")),
        ),
        g(
            "BPF-LSM enforcement",
            "enforcement",
            bpf_lsm,
            "lsm programs load and attach",
            match (works(&program_types, "lsm"), lsm_listed) {
                (false, _) => why(&program_types, "lsm"),
                (true, false) => "lsm programs load, but \"bpf\" is not in the active LSM list".into(),
                (true, true) => String::new(),
            },
        ),
        g(
            "refuse one network connection",
            "enforcement",
            cgroup_sock && cgroup2.is_some(),
            "cgroup/connect4,6 + sendmsg4,6 + bind4,6 on the cgroup v2 root, with per-container allow-lists in maps",
            why(&program_types, "cgroup_connect4"),
        ),
        g(
            "network rules hold while the agent restarts",
            "enforcement",
            cgroup_sock && bpffs_mounted(),
            "maps and links pinned under /sys/fs/bpf/lancet",
            "bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)".into(),
        ),
        g(
            "kill one process at exec",
            "enforcement",
            works(&program_types, "bpf_send_signal") && tp_btf,
            "bpf_send_signal from tp_btf/sched_process_exec",
            why(&program_types, "bpf_send_signal"),
        ),
        g(
            "isolate a container's network",
            "enforcement",
            works(&program_types, "cgroup_skb") && cgroup2.is_some(),
            "cgroup_skb ingress/egress programs",
            why(&program_types, "cgroup_skb"),
        ),
        g(
            "freeze a container",
            "enforcement",
            cgroup2.as_ref().map(|c| c.join("cgroup.freeze").exists() || Path::new("/sys/fs/cgroup/freezer").is_dir()).unwrap_or(false)
                || Path::new("/sys/fs/cgroup/freezer").is_dir(),
            "cgroup freezer",
            "no cgroup freezer".into(),
        ),
    ];
    Report {
        kernel: features::kernel_release(),
        root,
        btf,
        lockdown: features::lockdown(),
        lsms,
        cgroup2,
        program_types,
        bpf_lsm,
        fanotify,
        runtimes: runtimes(host_root),
        guarantees,
        monitoring_ok: process_ok,
        problems,
    }
}

pub fn print_table(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let mark = |b: bool| if b { "ok  " } else { "NO  " };
    writeln!(out, "kernel        {}", r.kernel)?;
    writeln!(out, "root          {}", if r.root { "yes" } else { "no" })?;
    writeln!(out, "BTF           {}", r.btf.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "missing".into()))?;
    let unknown = if features::securityfs_mounted() { "unknown" } else { "unknown (securityfs is not mounted)" };
    writeln!(out, "lockdown      {}", r.lockdown.as_deref().unwrap_or(unknown))?;
    writeln!(out, "LSMs          {}", r.lsms.as_ref().map(|l| l.join(",")).unwrap_or_else(|| unknown.into()))?;
    writeln!(out, "cgroup v2     {}", r.cgroup2.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "missing".into()))?;
    let rt: Vec<String> = r.runtimes.iter().map(|x| format!("{} ({})", x.runtime, x.state)).collect();
    writeln!(out, "runtimes      {}", if rt.is_empty() { "none found".into() } else { rt.join(", ") })?;
    writeln!(out, "\nBPF program types")?;
    for p in &r.program_types {
        let ok = p.loads && p.attaches != Some(false);
        writeln!(
            out,
            "  {}{:<20} (>= {:<4}) {}",
            mark(ok),
            p.kind,
            p.min_kernel,
            p.error.as_deref().unwrap_or(if p.attaches.is_some() { "loads and attaches" } else { "loads" })
        )?;
    }
    if r.program_types.is_empty() {
        writeln!(out, "  (not probed: needs root)")?;
    }
    writeln!(out, "\nfanotify")?;
    for (name, res) in [
        ("notification events", &r.fanotify.notify),
        ("file ids with names", &r.fanotify.report_dfid_name),
        ("permission events", &r.fanotify.permission),
    ] {
        writeln!(out, "  {}{:<20} {}", mark(res.is_ok()), name, res.as_ref().err().map(String::as_str).unwrap_or(""))?;
    }
    for area in ["monitoring", "enforcement"] {
        writeln!(out, "\n{area}")?;
        for g in r.guarantees.iter().filter(|g| g.area == area) {
            writeln!(out, "  {}{:<40} {}", mark(g.holds), g.name, g.detail)?;
        }
    }
    if !r.problems.is_empty() {
        writeln!(out, "\nproblems")?;
        for p in &r.problems {
            writeln!(out, "  - {p}")?;
        }
    }
    writeln!(out, "\nmonitoring: {}", if r.monitoring_ok { "can run" } else { "cannot run" })?;
    Ok(())
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf")))
        .unwrap_or(false)
}
