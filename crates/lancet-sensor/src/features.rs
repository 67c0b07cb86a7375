//! What this host offers lancet, found by trying rather than by reading
//! version numbers: lockdown, kernel config and LSM order all refuse program
//! types that a kernel's version would allow.

use crate::skel::probe::ProbeSkelBuilder;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use serde::Serialize;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// One BPF program type and whether it loads and attaches here.
#[derive(Debug, Clone, Serialize)]
pub struct ProgTypeCheck {
    /// e.g. `tp_btf`, `lsm`.
    pub kind: String,
    /// The section of the probe program tried.
    pub section: String,
    /// Minimum kernel for the type, for the reader's orientation.
    pub min_kernel: &'static str,
    pub loads: bool,
    pub attaches: Option<bool>,
    pub error: Option<String>,
}

fn min_kernel(prog: &str) -> &'static str {
    match prog {
        "probe_tracepoint" => "4.7",
        "probe_raw_tp" => "4.17",
        "probe_tp_btf" => "5.5",
        "probe_kprobe" => "4.1",
        "probe_fentry" => "5.5",
        "probe_lsm" => "5.7",
        "probe_cgroup_connect4" => "4.17",
        "probe_cgroup_sock_create" => "4.10",
        "probe_cgroup_skb" => "4.10",
        "probe_ringbuf" => "5.8",
        "probe_send_signal" => "5.3",
        _ => "?",
    }
}

fn kind_of(prog: &str) -> String {
    match prog {
        "probe_ringbuf" => "ringbuf".into(),
        "probe_send_signal" => "bpf_send_signal".into(),
        p => p.trim_start_matches("probe_").to_string(),
    }
}

/// Loads each probe program on its own and, where harmless, attaches it for
/// an instant (the programs do nothing and allow everything).
pub fn check_program_types(cgroup2_root: Option<&Path>) -> Vec<ProgTypeCheck> {
    let names: Vec<(String, String)> = {
        let mut storage = MaybeUninit::<OpenObject>::uninit();
        let opened = ProbeSkelBuilder::default().open(&mut storage);
        match opened {
            Ok(open) => open
                .open_object()
                .progs()
                .map(|p| (p.name().to_string_lossy().into_owned(), p.section().to_string_lossy().into_owned()))
                .collect::<Vec<_>>(),
            Err(e) => {
                return vec![ProgTypeCheck {
                    kind: "bpf".into(),
                    section: String::new(),
                    min_kernel: "?",
                    loads: false,
                    attaches: None,
                    error: Some(format!("cannot open the probe object: {e}")),
                }]
            }
        }
    };
    let cgroup = cgroup2_root.and_then(|p| std::fs::File::open(p).ok());
    names
        .into_iter()
        .map(|(name, section)| {
            let mut check =
                ProgTypeCheck { kind: kind_of(&name), section, min_kernel: min_kernel(&name), loads: false, attaches: None, error: None };
            let mut storage = MaybeUninit::<OpenObject>::uninit();
            let mut open = match ProbeSkelBuilder::default().open(&mut storage) {
                Ok(o) => o,
                Err(e) => {
                    check.error = Some(e.to_string());
                    return check;
                }
            };
            for mut p in open.open_object_mut().progs_mut() {
                let this = p.name().to_string_lossy() == name;
                p.set_autoload(this);
            }
            let skel = match open.load() {
                Ok(s) => s,
                Err(e) => {
                    check.error = Some(format!("load: {e}"));
                    return check;
                }
            };
            check.loads = true;
            if name == "probe_send_signal" {
                return check;
            }
            use libbpf_rs::skel::Skel;
            for p in skel.object().progs_mut() {
                if p.name().to_string_lossy() != name {
                    continue;
                }
                let res = if check.section.starts_with("cgroup") {
                    match &cgroup {
                        Some(f) => p.attach_cgroup(f.as_raw_fd()),
                        None => {
                            check.error = Some("no cgroup v2 mount to attach to".into());
                            continue;
                        }
                    }
                } else {
                    p.attach()
                };
                match res {
                    Ok(link) => {
                        check.attaches = Some(true);
                        drop(link);
                    }
                    Err(e) => {
                        check.attaches = Some(false);
                        let hint = if (check.kind == "tracepoint" || check.kind == "kprobe") && !tracefs_mounted() {
                            " (tracefs is not mounted at /sys/kernel/tracing; kprobes may also be compiled out)"
                        } else {
                            ""
                        };
                        check.error = Some(format!("attach: {e}{hint}"));
                    }
                }
            }
            check
        })
        .collect()
}

/// Whether tracefs is mounted: perf-event based attach (tracepoint,
/// kprobe) needs its event ids.
pub fn tracefs_mounted() -> bool {
    Path::new("/sys/kernel/tracing/events").is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir()
}

/// Whether securityfs is mounted, where the LSM list and lockdown mode live.
pub fn securityfs_mounted() -> bool {
    Path::new("/sys/kernel/security/lsm").exists()
}

/// The active LSMs, in order (`/sys/kernel/security/lsm`).
pub fn active_lsms() -> Option<Vec<String>> {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .ok()
        .map(|s| s.trim().split(',').filter(|x| !x.is_empty()).map(str::to_string).collect())
}

/// Kernel lockdown mode, e.g. `integrity` (`/sys/kernel/security/lockdown`).
pub fn lockdown() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    s.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
}

/// Which fanotify modes this kernel grants us.
#[derive(Debug, Clone, Serialize)]
pub struct FanotifyCheck {
    pub notify: Result<(), String>,
    /// `FAN_REPORT_DFID_NAME`: file changes with names (5.9).
    pub report_dfid_name: Result<(), String>,
    /// `FAN_CLASS_CONTENT`: permission events (exec/open refusal).
    pub permission: Result<(), String>,
}

/// Creates (and drops) a fanotify group with `flags`.
fn try_fanotify_init(flags: u32) -> Result<(), String> {
    crate::fanotify::fanotify_init(flags | libc::FAN_CLOEXEC, libc::O_RDONLY as u32).map(drop).map_err(|e| e.to_string())
}

pub fn check_fanotify() -> FanotifyCheck {
    const FAN_REPORT_DFID_NAME: u32 = 0x0000_0c00;
    FanotifyCheck {
        notify: try_fanotify_init(libc::FAN_CLASS_NOTIF),
        report_dfid_name: try_fanotify_init(libc::FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME),
        permission: try_fanotify_init(libc::FAN_CLASS_CONTENT),
    }
}

/// Kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn btf_path() -> Option<PathBuf> {
    let p = PathBuf::from("/sys/kernel/btf/vmlinux");
    p.exists().then_some(p)
}

/// Whether we are root (or at least have an effective uid of 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Our effective uid (the owner that files we create get).
pub fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}
