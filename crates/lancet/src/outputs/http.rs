//! One HTTP target: each alert POSTed as Falco's `http_output` posts it
//! (`application/json`, the alert object as the body), retried on a
//! connection error or a 5xx with backoff, then dropped and counted.

use super::Counts;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

/// Attempts per alert, and the waits between them.
const BACKOFF: [Duration; 3] = [Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(3)];

pub(super) fn run(url: &str, rx: Receiver<Arc<str>>, counts: &Counts) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(5))).build().into();
    for alert in rx {
        let mut delivered = false;
        for (i, wait) in std::iter::once(Duration::ZERO).chain(BACKOFF).enumerate() {
            if i > 0 {
                counts.retried.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(wait);
            }
            match agent.post(url).header("Content-Type", "application/json").send(alert.as_bytes()) {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                // A 4xx will not get better by asking again.
                Ok(r) if r.status().is_client_error() => {
                    tracing::warn!(%url, status = %r.status(), "alert output refused an alert; dropped");
                    break;
                }
                Ok(r) => tracing::debug!(%url, status = %r.status(), "alert output failed; retrying"),
                Err(e) => tracing::debug!(%url, "alert output unreachable: {e}; retrying"),
            }
        }
        let c = if delivered { &counts.sent } else { &counts.dropped };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
