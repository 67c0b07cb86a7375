//! The agent's signals, with who sent them: SIGTERM and SIGINT ask the loop
//! to stop (it finishes its batch first), SIGHUP reloads the policies. A
//! signal from a process that is not root is logged at warn ("signal SIGHUP
//! from uid 1000 pid 1234"): only root or a process of our uid can signal
//! the agent, so this records attempts that arrive anyway, e.g. from root in
//! a container with CAP_KILL in the host's pid namespace (uid mapped).

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::{Handle, SignalsInfo};
use signal_hook::low_level::siginfo::Origin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Watches the signals until dropped.
pub struct SignalWatch {
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How a signal is logged: a warning for one sent by a process that is not
/// root, None otherwise (the kernel's own, or root's).
pub fn describe(origin: &Origin) -> Option<String> {
    let p = origin.process.as_ref().filter(|p| p.uid != 0)?;
    let name =
        signal_hook::low_level::signal_name(origin.signal).map(str::to_string).unwrap_or_else(|| format!("signal {}", origin.signal));
    Some(format!("signal {name} from uid {} pid {}", p.uid, p.pid))
}

/// Starts watching: SIGTERM/SIGINT set `stop`, SIGHUP sets `reload`.
pub fn watch(stop: Arc<AtomicBool>, reload: Arc<AtomicBool>) -> Result<SignalWatch> {
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new().name("lancet-signals".into()).spawn(move || {
        for origin in signals.forever() {
            match describe(&origin) {
                Some(what) => tracing::warn!("{what}"),
                None => tracing::info!(signal = origin.signal, pid = ?origin.process.map(|p| p.pid), "signal received"),
            }
            if origin.signal == SIGHUP {
                reload.store(true, Ordering::Relaxed);
            } else {
                stop.store(true, Ordering::Relaxed);
            }
        }
    })?;
    Ok(SignalWatch { handle, thread: Some(thread) })
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_root_senders_are_named() {
        // Origin is non-exhaustive: take a real one from a signal we send
        // ourselves, then vary the sender.
        let mut signals = SignalsInfo::<WithOrigin>::new([signal_hook::consts::SIGUSR2]).unwrap();
        signal_hook::low_level::raise(signal_hook::consts::SIGUSR2).unwrap();
        let mut origin = signals.forever().next().unwrap();
        let me = std::process::id() as i32;
        assert_eq!(origin.process.map(|p| p.pid), Some(me));
        origin.signal = SIGHUP;
        if let Some(p) = origin.process.as_mut() {
            p.uid = 1000;
            p.pid = 1234;
        }
        assert_eq!(describe(&origin).as_deref(), Some("signal SIGHUP from uid 1000 pid 1234"));
        if let Some(p) = origin.process.as_mut() {
            p.uid = 0;
        }
        assert_eq!(describe(&origin), None, "root's signals are ordinary");
        origin.process = None;
        assert_eq!(describe(&origin), None);
    }
}
