//! Loading and attaching lancet's BPF probes, and reading their ring buffer.
//!
//! Each probe is attached on its own: a kernel that refuses one program
//! (lockdown, a missing tracepoint) loses that probe only, and [`Sensor::status`]
//! says which and why. Minimum kernel: 5.17 (`tp_btf`, ring buffer,
//! `bpf_loop`, `bpf_get_current_task_btf`).

use crate::skel::lancet::{types, LancetSkel, LancetSkelBuilder, OpenLancetSkel};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder};
use serde::Serialize;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Names of the probes, index = `enum lancet_probe` in bpf/lancet.h.
pub const PROBE_NAMES: [&str; 7] = ["exec", "fork", "exit", "tcp_state", "udp_connect", "udp_bind", "cgroup"];

#[derive(Debug, Error)]
pub enum SensorError {
    #[error("opening the BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("loading the BPF programs (is this root, with BTF at /sys/kernel/btf/vmlinux?): {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("no probe could be attached: {0}")]
    NothingAttached(String),
    #[error("opening the cgroup v2 root {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("ring buffer: {0}")]
    RingBuffer(#[source] libbpf_rs::Error),
    #[error("reading the lost-event counters: {0}")]
    Counters(#[source] libbpf_rs::Error),
}

#[derive(Debug, Clone)]
pub struct SensorConfig {
    /// Ring buffer size in bytes; a power of two, a multiple of the page size.
    pub ring_bytes: u32,
    /// Wake the reader once this much is queued; below it, the reader's poll
    /// timeout collects the records. Trades latency for fewer wakeups.
    pub wakeup_bytes: u64,
    /// Bytes of argv kept per exec (at most 1024).
    pub args_max: u32,
    /// Host path of the cgroup v2 mount, for the socket hooks.
    pub cgroup2_root: PathBuf,
    /// Process whose own activity is never reported (the agent itself).
    pub self_tgid: u32,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            ring_bytes: 8 << 20,
            wakeup_bytes: 256 << 10,
            args_max: 1024,
            cgroup2_root: PathBuf::from("/sys/fs/cgroup"),
            self_tgid: std::process::id(),
        }
    }
}

/// Whether one probe is running, and the kernel's reason when not.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub program: String,
    pub hook: String,
    pub attached: bool,
    pub error: Option<String>,
}

/// The loaded probes. Dropping it detaches everything.
pub struct Sensor {
    links: Vec<Link>,
    status: Vec<ProbeStatus>,
    skel: LancetSkel<'static>,
}

/// The skeleton borrows its object storage for its whole life; the agent keeps
/// one sensor for its whole life, so the few bytes of storage are leaked rather
/// than threading a lifetime through every owner.
fn storage() -> &'static mut MaybeUninit<OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

fn open(cfg: &SensorConfig, only: Option<&str>, skip: &[String]) -> Result<OpenLancetSkel<'static>, SensorError> {
    let mut open = LancetSkelBuilder::default().open(storage()).map_err(SensorError::Open)?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.self_tgid = cfg.self_tgid;
        ro.wakeup_bytes = cfg.wakeup_bytes;
        ro.args_max = cfg.args_max.min(1024);
    }
    open.maps.events.set_max_entries(cfg.ring_bytes).map_err(SensorError::Open)?;
    select_programs(open.open_object_mut(), only, skip);
    Ok(open)
}

/// Loads only `only` when given, else every program not in `skip`: how a
/// load that the kernel refuses is narrowed down to the refused programs.
pub(crate) fn select_programs(obj: &mut libbpf_rs::OpenObject, only: Option<&str>, skip: &[String]) {
    for mut prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let load = match only {
            Some(o) => o == name,
            None => !skip.contains(&name),
        };
        prog.set_autoload(load);
    }
}

fn program_names() -> Result<Vec<(String, String)>, SensorError> {
    let open = LancetSkelBuilder::default().open(storage()).map_err(SensorError::Open)?;
    Ok(open.open_object().progs().map(|p| (p.name().to_string_lossy().into_owned(), p.section().to_string_lossy().into_owned())).collect())
}

impl Sensor {
    /// Loads and attaches every probe the kernel accepts.
    pub fn load(cfg: &SensorConfig) -> Result<Sensor, SensorError> {
        let programs = program_names()?;
        let mut status: Vec<ProbeStatus> =
            programs.iter().map(|(p, s)| ProbeStatus { program: p.clone(), hook: s.clone(), attached: false, error: None }).collect();
        let skel = match open(cfg, None, &[])?.load() {
            Ok(s) => s,
            Err(all_err) => {
                // Find the programs this kernel refuses, one at a time, and
                // load the rest without them.
                tracing::warn!("loading all probes failed ({all_err}); probing them one by one");
                let mut skip = Vec::new();
                for st in status.iter_mut() {
                    if let Err(e) = open(cfg, Some(&st.program), &[])?.load() {
                        st.error = Some(format!("refused at load: {e}"));
                        skip.push(st.program.clone());
                    }
                }
                if skip.len() == status.len() {
                    return Err(SensorError::Load(all_err));
                }
                open(cfg, None, &skip)?.load().map_err(SensorError::Load)?
            }
        };
        let cgroup =
            std::fs::File::open(&cfg.cgroup2_root).map_err(|source| SensorError::Cgroup { path: cfg.cgroup2_root.clone(), source });
        let mut links = Vec::new();
        for prog in skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            let Some(st) = status.iter_mut().find(|s| s.program == name) else { continue };
            if st.error.is_some() {
                continue;
            }
            let res = if st.hook.starts_with("cgroup/") {
                match &cgroup {
                    Ok(f) => prog.attach_cgroup(f.as_raw_fd()),
                    Err(e) => {
                        st.error = Some(e.to_string());
                        continue;
                    }
                }
            } else {
                prog.attach()
            };
            match res {
                Ok(l) if st.hook.starts_with("iter/") => {
                    // One pass at start-up; the link is not kept.
                    match run_iter(&l) {
                        Ok(()) => st.attached = true,
                        Err(e) => st.error = Some(format!("iterator failed: {e}")),
                    }
                }
                Ok(l) => {
                    st.attached = true;
                    links.push(l);
                }
                Err(e) => st.error = Some(format!("refused at attach: {e}")),
            }
        }
        for st in status.iter().filter(|s| !s.attached) {
            tracing::warn!(program = %st.program, hook = %st.hook, error = ?st.error, "probe not running");
        }
        if links.is_empty() {
            let why = status.iter().filter_map(|s| s.error.clone()).collect::<Vec<_>>().join("; ");
            return Err(SensorError::NothingAttached(why));
        }
        Ok(Sensor { links, status, skel })
    }

    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// Records dropped because the ring buffer was full, per probe
    /// ([`PROBE_NAMES`] order), summed over CPUs.
    pub fn lost(&self) -> Result<Vec<u64>, SensorError> {
        let mut out = vec![0u64; PROBE_NAMES.len()];
        for (i, slot) in out.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            if let Some(per_cpu) = self.skel.maps.lost.lookup_percpu(&key, MapFlags::ANY).map_err(SensorError::Counters)? {
                *slot = per_cpu.iter().filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok())).map(u64::from_ne_bytes).sum();
            }
        }
        Ok(out)
    }

    /// A reader of the probes' ring buffer. `on_record` gets each raw record;
    /// decode it with [`crate::decode::decode`].
    pub fn ring_buffer<'a, F>(&'a self, on_record: F) -> Result<EventReader<'a>, SensorError>
    where
        F: FnMut(&[u8]) -> i32 + 'a,
    {
        let mut b = RingBufferBuilder::new();
        b.add(&self.skel.maps.events, on_record).map_err(SensorError::RingBuffer)?;
        Ok(EventReader { rb: b.build().map_err(SensorError::RingBuffer)? })
    }
}

/// Runs a BPF iterator to its end (its effect is on maps, not its output).
fn run_iter(link: &Link) -> std::io::Result<()> {
    use std::io::Read;
    let mut it = libbpf_rs::Iter::new(link).map_err(std::io::Error::other)?;
    let mut sink = [0u8; 4096];
    while it.read(&mut sink)? > 0 {}
    Ok(())
}

/// Drains the ring buffer. The probes wake the reader only past a fill level,
/// so [`EventReader::poll`] always consumes after its timeout too.
pub struct EventReader<'a> {
    rb: RingBuffer<'a>,
}

impl EventReader<'_> {
    /// Waits up to `timeout` for a wakeup, then hands every queued record to
    /// the callback.
    pub fn poll(&self, timeout: Duration) -> Result<(), SensorError> {
        self.rb.poll(timeout).map_err(SensorError::RingBuffer)?;
        self.rb.consume().map_err(SensorError::RingBuffer)
    }

    /// An fd that becomes readable on a wakeup, for callers that multiplex.
    pub fn epoll_fd(&self) -> i32 {
        self.rb.epoll_fd()
    }

    pub fn consume(&self) -> Result<(), SensorError> {
        self.rb.consume().map_err(SensorError::RingBuffer)
    }
}

/// Size of the exec record, exposed for benchmarks and tests.
pub const EXEC_RECORD_MAX: usize = std::mem::size_of::<types::lancet_exec>();

/// Finds the cgroup v2 mount in a mountinfo text (`/proc/self/mountinfo`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    crate::mountinfo::parse(mountinfo).into_iter().find(|m| m.fs_type == "cgroup2").map(|m| PathBuf::from(m.mount_point))
}

/// The cgroup v2 mount of this host.
pub fn detect_cgroup2_root() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| cgroup2_mount(&m)).or_else(|| {
        [Path::new("/sys/fs/cgroup/unified"), Path::new("/sys/fs/cgroup")]
            .into_iter()
            .find(|p| p.join("cgroup.procs").exists())
            .map(Path::to_path_buf)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_pure_layouts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      35 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "25 20 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("garbage\n - \n"), None);
    }
}
