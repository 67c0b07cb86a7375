//! Where alerts go besides the alerts file, the store and the dashboard:
//! the outputs users already run. An HTTP endpoint that takes Falco's JSON
//! (Falcosidekick, or anything behind Falco's `http_output`), and syslog
//! (RFC 5424 over UDP, TCP or a unix socket).
//!
//! Each target has a thread and a bounded queue of its own: the agent
//! hands an alert over without waiting (a slow or dead receiver never
//! delays the event loop), and what does not fit is counted, never queued
//! without bound. Counters per target: sent, retried, dropped.

mod http;
mod syslog;

pub use syslog::SyslogTarget;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Alerts waiting for one target; past it new ones are dropped (counted).
const QUEUE: usize = 1024;

/// The outputs configured (`httpOutputs`, `syslog` in lancet.yaml).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputConfig {
    /// URLs that take one alert per POST, as Falco's `http_output` sends it.
    pub http: Vec<String>,
    pub syslog: Option<SyslogTarget>,
}

/// What one target did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

struct Target {
    name: String,
    tx: SyncSender<Arc<str>>,
    counts: Arc<Counts>,
}

/// The running outputs; dropping it lets their threads finish what is
/// queued and end.
#[derive(Default)]
pub struct Outputs {
    targets: Vec<Target>,
}

impl Outputs {
    /// Starts a thread per configured target. Nothing is connected yet: a
    /// receiver that is down at start is retried like one that goes down.
    pub fn start(cfg: &OutputConfig, hostname: &str) -> std::io::Result<Outputs> {
        let mut targets = Vec::new();
        for url in &cfg.http {
            let counts = Arc::new(Counts::default());
            let (tx, rx) = sync_channel::<Arc<str>>(QUEUE);
            let (url2, c) = (url.clone(), Arc::clone(&counts));
            std::thread::Builder::new().name("lancet-out-http".into()).spawn(move || http::run(&url2, rx, &c))?;
            targets.push(Target { name: format!("http {url}"), tx, counts });
        }
        if let Some(t) = &cfg.syslog {
            let counts = Arc::new(Counts::default());
            let (tx, rx) = sync_channel::<Arc<str>>(QUEUE);
            let (t2, c, host) = (t.clone(), Arc::clone(&counts), hostname.to_string());
            std::thread::Builder::new().name("lancet-out-syslog".into()).spawn(move || syslog::run(&t2, &host, rx, &c))?;
            targets.push(Target { name: format!("syslog {t}"), tx, counts });
        }
        Ok(Outputs { targets })
    }

    /// Hands one alert (Falco's JSON object, one line) to every target,
    /// without waiting.
    pub fn send(&self, alert: &Arc<str>) {
        for t in &self.targets {
            match t.tx.try_send(Arc::clone(alert)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    t.counts.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// (target, counts) for `/metrics`.
    pub fn counts(&self) -> impl Iterator<Item = (&str, &Counts)> {
        self.targets.iter().map(|t| (t.name.as_str(), &*t.counts))
    }
}

#[cfg(test)]
mod tests;
