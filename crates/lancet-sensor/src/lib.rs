//! The kernel-facing side of lancet: loading the BPF probes, reading their ring
//! buffer, fanotify, and probing what the running kernel supports. This is the
//! only crate that contains `unsafe`; every block says why it is sound.

pub mod alloc_count;
pub mod decode;
pub mod enforce;
pub mod fanotify;
pub mod features;
pub mod mountinfo;
pub mod mounts;
pub mod overlay;
pub mod probes;
mod skel;
pub mod sys;

pub use decode::{decode, decode_into, Clock, DecodeError};

/// Unit tests count their thread's allocations (see [`alloc_count`]).
#[cfg(test)]
#[global_allocator]
static ALLOC: alloc_count::CountingAlloc = alloc_count::CountingAlloc;
pub use probes::{Sensor, SensorConfig, SensorError};

use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until one of `fds` is readable or `timeout` passes. Returns which
/// were readable. EINTR counts as a timeout: the caller's loop checks its
/// stop flag and comes back.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> std::io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid, exclusively borrowed array of `pfds.len()`
    // pollfd structs for the duration of the call.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(pfds.iter().map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0).collect())
}

/// A fixed set of fds to wait on, polled without allocating: the agent's
/// loop waits on the same sources for its whole life.
pub struct Poller {
    fds: Vec<libc::pollfd>,
    /// The fds as given (an unwatched one is -1 in `fds`).
    given: Vec<RawFd>,
}

impl Poller {
    /// At most 32 fds (the readiness of each is a bit of a `u32`).
    pub fn new(fds: &[RawFd]) -> Poller {
        let given: Vec<RawFd> = fds.iter().take(32).copied().collect();
        let fds = given.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        Poller { fds, given }
    }

    /// Whether `wait` wakes for the fds of the bits in `mask` (all are
    /// watched at first). An unwatched fd is left out of the poll set, not
    /// only masked: fanotify wakes every waiter on its queue whatever it
    /// asked for, and a masked fd would still wake the thread (to sleep
    /// again) at each event.
    pub fn watch(&mut self, mask: u32, on: bool) {
        for (i, p) in self.fds.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                p.fd = if on { self.given[i] } else { -1 };
            }
        }
    }

    /// Waits until one of the fds is readable or `timeout` passes. Bit `i`
    /// of the result is set when fd `i` was readable (or in error). EINTR
    /// counts as a timeout: the caller's loop checks its stop flag.
    pub fn wait(&mut self, timeout: Duration) -> std::io::Result<u32> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid, exclusively borrowed array of
        // `fds.len()` pollfd structs for the duration of the call.
        let r = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        let mut ready = 0u32;
        for (i, p) in self.fds.iter().enumerate() {
            if p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                ready |= 1 << i;
            }
        }
        Ok(ready)
    }
}

/// Sends libbpf's own messages to `tracing` at debug level instead of stderr:
/// lancet reports load and attach failures itself, with context, and the
/// feature probes expect some programs to be refused.
pub fn route_libbpf_logs() {
    fn print(level: libbpf_rs::PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::debug!(target: "libbpf", "{msg}"),
            _ => tracing::trace!(target: "libbpf", "{msg}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, print)));
}
