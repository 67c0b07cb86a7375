//! Signalling one process without hitting another that reused its pid.
//!
//! `pidfd_open` (5.3) pins the process a pid names at that moment; its start
//! time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot), read
//! after the pidfd is open, proves it is the process the caller meant; the
//! signal then goes through the pidfd (`pidfd_send_signal`, 5.1), which can
//! only ever reach that process even if it exits and the pid is reused.

use super::{EnforceError, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The start time of `pid` in clock ticks after boot (`/proc/<pid>/stat`
/// field 22): with the pid, it names one process for the life of the host.
pub fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat: no start time")))
}

/// Clock ticks per second, as `/proc/<pid>/stat` counts them.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a constant by value and reads no memory.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// A `start_boottime` (ns, as the probes record it) as `/proc/<pid>/stat`'s
/// start time (clock ticks since boot), what [`kill_process`] compares.
pub fn start_ticks(start_ns: u64) -> u64 {
    start_ns / (1_000_000_000 / ticks_per_second())
}

/// The other way: a `/proc` start time in the probes' nanoseconds (exact
/// back through [`start_ticks`]).
pub fn start_ns_of_ticks(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000_000 / ticks_per_second())
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // comm (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'. Field 3 (state) is then the first; field 22 the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn gone_or(pid: u32, e: io::Error) -> EnforceError {
    match e.raw_os_error() {
        Some(libc::ESRCH) | Some(libc::ENOENT) => EnforceError::ProcessGone { pid },
        Some(libc::EPERM) | Some(libc::EACCES) => EnforceError::NotPermitted { pid },
        _ => EnforceError::Process { pid, source: e },
    }
}

/// Sends `signal` to `pid`, but only if it is still the process that
/// started at `expected_start_time_ticks` (see [`process_start_time`]; None
/// skips the check). Errors: [`EnforceError::ProcessGone`] when it already
/// exited, [`EnforceError::PidReused`] when the pid names another process,
/// [`EnforceError::NotPermitted`] on EPERM.
pub fn kill_process(pid: u32, expected_start_time_ticks: Option<u64>, signal: i32) -> Result<()> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(EnforceError::Process { pid, source: io::Error::from_raw_os_error(libc::EINVAL) });
    }
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new fd
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(gone_or(pid, io::Error::last_os_error()));
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if let Some(expected) = expected_start_time_ticks {
        let found = process_start_time(pid).map_err(|e| gone_or(pid, e))?;
        if found != expected {
            return Err(EnforceError::PidReused { pid, expected, found });
        }
    }
    // SAFETY: `pidfd` is open for the call; a null siginfo is allowed (the
    // kernel fills it as for kill(2)); flags must be 0.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0 as libc::c_uint)
    };
    if r < 0 {
        return Err(gone_or(pid, io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_comms() {
        let s = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(s), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert!(process_start_time(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn kills_a_child_and_refuses_a_wrong_start_time() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = process_start_time(pid).unwrap();
        assert!(matches!(kill_process(pid, Some(start + 1), libc::SIGKILL), Err(EnforceError::PidReused { .. })));
        kill_process(pid, Some(start), libc::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(matches!(kill_process(pid, Some(start), libc::SIGKILL), Err(EnforceError::ProcessGone { .. })));
    }
}
