//! Writes NATS refused by its permissions. The server answers a publish to
//! a subject the user may not publish to with an asynchronous
//! `-ERR 'Permissions Violation for Publish to "<subject>"'` and drops it,
//! keeping the connection: the write that waits for its acknowledgement
//! would only time out, which looks like NATS being away. The connection's
//! event callback puts each such error here; a write waits for its
//! acknowledgement or for a refusal naming its subject, whichever comes
//! first, and a refused write is reported as such ([`Refused`]) while the
//! session goes on.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Refusals remembered (the newest).
const KEEP: usize = 64;

/// A write NATS refused by permission: the connection is fine; what was
/// written is kept to try again.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NATS refused it: {}", self.0)
    }
}

impl std::error::Error for Refused {}

#[derive(Default)]
pub struct Refusals {
    seen: Mutex<VecDeque<String>>,
    notify: Notify,
}

impl Refusals {
    /// From the connection's event callback: a server error.
    pub fn server_error(&self, message: &str) {
        if !message.to_ascii_lowercase().contains("permissions violation") {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= KEEP {
            seen.pop_front();
        }
        seen.push_back(message.chars().take(512).collect());
        drop(seen);
        self.notify.notify_waiters();
    }

    fn take(&self, subject: &str) -> Option<String> {
        let quoted = format!("\"{subject}\"");
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let i = seen.iter().position(|m| m.contains(&quoted))?;
        seen.remove(i)
    }

    /// Waits for a refusal of a publish to `subject` (forever, if none
    /// comes: race it with the write).
    pub async fn of(&self, subject: &str) -> Refused {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(m) = self.take(subject) {
                return Refused(m);
            }
            n.await;
        }
    }

    /// `op` (a write to `subject` that waits for its acknowledgement), or
    /// [`Refused`] as soon as NATS refuses that subject.
    pub async fn race<T, E: Into<anyhow::Error>>(
        &self,
        subject: &str,
        op: impl std::future::Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            r = op => r.map_err(Into::into),
            refused = self.of(subject) => Err(refused.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_its_subject() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = Refusals::default();
        r.server_error("Permissions Violation for Publish to \"lancet.alerts.c.b.warning\"");
        r.server_error("some other error");
        let got = rt.block_on(async {
            r.race("lancet.alerts.c.b.warning", std::future::pending::<Result<(), std::io::Error>>()).await.unwrap_err()
        });
        assert!(got.downcast_ref::<Refused>().is_some(), "{got:#}");
        // Taken once; another subject's write is not refused by it.
        let ok = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(50), r.of("lancet.alerts.c.b.warning")).await.is_err()
        });
        assert!(ok);
        let done = rt.block_on(r.race("x", async { Ok::<_, std::io::Error>(7) })).unwrap();
        assert_eq!(done, 7);
    }
}
