//! A container whose filesystem protect mode made read-only gets EROFS from
//! every write, and no other hook sees it. [`Enforcer::set_write_reports`]
//! flags the container ([`PolicyFlags::REPORT_EROFS`]); `enf_sys_exit` then
//! sends one [`EnforceOp::WriteRefused`] record per syscall of its tasks that
//! failed with EROFS (the writer, the syscall, its path or fd), at most
//! 64 a second per container (the rest are counted). Any `sys_exit`
//! program puts every syscall of every task on the host on the tracepoint
//! slow path, so the program is attached (pinned as `link-enf_sys_exit`)
//! only while at least one cgroup has the flag, and detached with the last.

use super::pins::{destroy_pinned_link, obj_pin};
use super::status::{program_runs, ProgramRuns};
use super::{EnforceError, Enforcer, PolicyFlags, Result, LINK_PREFIX, SYS_EXIT_PROGRAM};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// `BPF_RAW_TRACEPOINT_OPEN`: attaches a raw_tp program by fd; the result is
/// a link fd (pinnable; it detaches when the last fd and pin are gone).
pub(super) fn raw_tracepoint_open(prog: &OwnedFd, tracepoint: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: `tracepoint` is NUL-terminated and `prog` open for the
    // duration of the call.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_raw_tracepoint_open(tracepoint.as_ptr(), prog.as_raw_fd()) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the call returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Enforcer {
    /// Turns the reports of `cgid`'s writes refused with EROFS on or off
    /// (the REPORT_EROFS flag; the container's other flags stay). The
    /// program that sends them, `enf_sys_exit`, sees every syscall exit on
    /// the host, so it is attached (pinned as `link-enf_sys_exit`, so it
    /// outlives the agent like the rules) when the first cgroup turns them
    /// on, and detached when the last turns them off, is cleared or
    /// collected. Turning on fails, and changes nothing, when the program
    /// cannot be attached.
    pub fn set_write_reports(&self, cgid: u64, on: bool) -> Result<()> {
        let (flags, until) = self.read_raw_policy(cgid)?.unwrap_or((0, 0));
        let bit = PolicyFlags::REPORT_EROFS.bits();
        if on {
            // The program first: a flag without it would report nothing.
            self.attach_write_reports()?;
            if let Err(e) = self.write_raw_policy(cgid, flags | bit, until) {
                let _ = self.sync_write_reports();
                return Err(e);
            }
            Ok(())
        } else {
            self.write_raw_policy(cgid, flags & !bit, until)?;
            self.sync_write_reports()
        }
    }

    /// The cgroups whose refused writes are reported.
    pub fn write_reports(&self) -> Result<Vec<u64>> {
        let bit = PolicyFlags::REPORT_EROFS.bits();
        let mut v = Vec::new();
        for cgid in self.list_cgroups()? {
            if self.read_raw_policy(cgid)?.is_some_and(|(f, _)| f & bit != 0) {
                v.push(cgid);
            }
        }
        Ok(v)
    }

    /// Whether the write reports' program is attached now (its link is pinned).
    pub fn write_reports_attached(&self) -> bool {
        self.sys_exit_pin().exists()
    }

    /// The write reports' program as loaded by this enforcer (its id, and
    /// its run statistics while [`RunTimeStats`](super::RunTimeStats) are on), or None when it
    /// did not load. Whether it is attached: [`Enforcer::write_reports_attached`].
    pub fn write_reports_program(&self) -> Option<ProgramRuns> {
        self.sys_exit.as_ref().and_then(|(_, id)| program_runs(*id))
    }

    pub(super) fn sys_exit_pin(&self) -> PathBuf {
        self.cfg.pin_dir.join(format!("{LINK_PREFIX}{SYS_EXIT_PROGRAM}"))
    }

    /// Attaches `enf_sys_exit` unless a link is pinned already (ours, or
    /// an earlier agent's not replaced).
    pub(super) fn attach_write_reports(&self) -> Result<()> {
        let path = self.sys_exit_pin();
        if path.exists() {
            return Ok(());
        }
        let link = self.new_sys_exit_link()?;
        match obj_pin(&link, &path) {
            // Another enforcer on this pin dir was quicker: its link does.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(|source| EnforceError::Pin { path, source }),
        }
    }

    pub(super) fn new_sys_exit_link(&self) -> Result<OwnedFd> {
        let Some((prog, _)) = &self.sys_exit else {
            let why = self.status.iter().find(|s| s.program == SYS_EXIT_PROGRAM).and_then(|s| s.error.clone());
            return Err(EnforceError::NotLoaded { program: SYS_EXIT_PROGRAM, why: why.unwrap_or_default() });
        };
        raw_tracepoint_open(prog, c"sys_exit").map_err(|source| EnforceError::Attach {
            program: SYS_EXIT_PROGRAM.into(),
            target: PathBuf::from("raw_tp/sys_exit"),
            source,
        })
    }

    /// Unpins the link: it goes when no one holds it (the enforcer keeps
    /// no fd of it). A raw tracepoint link cannot be detached while held.
    pub(super) fn detach_write_reports(&self) {
        let path = self.sys_exit_pin();
        if let Err(e) = destroy_pinned_link(&path) {
            tracing::warn!(pin = %path.display(), "removing the write reports' link: {e}");
        }
    }

    /// Attached exactly while some cgroup has REPORT_EROFS.
    pub(super) fn sync_write_reports(&self) -> Result<()> {
        if self.write_reports()?.is_empty() {
            self.detach_write_reports();
            Ok(())
        } else {
            self.attach_write_reports()
        }
    }

    /// At open: a link an earlier agent pinned is replaced by one of this
    /// enforcer's program (attached before the old one goes, so no refused
    /// write is missed) while some cgroup wants reports, and removed when
    /// none does; a cgroup flagged with no link pinned gets one.
    pub(super) fn adopt_write_reports(&mut self) {
        let path = self.sys_exit_pin();
        let had = path.exists();
        let want = match self.write_reports() {
            Ok(v) => !v.is_empty(),
            Err(e) => {
                tracing::warn!("reading which cgroups report refused writes: {e}");
                had
            }
        };
        let res = match (want, had) {
            (true, true) => self.new_sys_exit_link().and_then(|link| {
                let _ = destroy_pinned_link(&path);
                obj_pin(&link, &path).map_err(|source| EnforceError::Pin { path: path.clone(), source })
            }),
            (true, false) => self.attach_write_reports(),
            (false, _) => {
                self.detach_write_reports();
                Ok(())
            }
        };
        if let Some(st) = self.status.iter_mut().find(|s| s.program == SYS_EXIT_PROGRAM) {
            match res {
                Ok(()) => st.adopted = had && want,
                Err(e) => {
                    tracing::warn!("write reports not in force: {e}");
                    st.holds = false;
                    st.error = Some(e.to_string());
                }
            }
        }
    }
}
