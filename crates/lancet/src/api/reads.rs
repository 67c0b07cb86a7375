//! The reads the store answers by itself (alerts, the audit log, flow
//! rollups), answered off the event loop: on read-only connections of
//! their own (WAL readers never block the agent's writes), at most
//! [`READERS`] at a time with at most [`MAX_WAITING`] queued behind them
//! (the rest are told 503 at once). No number of readers can delay the
//! loop, and with it the OCI hook's hand-over of a starting container.
//!
//! What they see is what the agent committed: it commits its open batch
//! at least every 100 ms (see `Store::flush_if_older`).

use super::{Reply, Request};
use lancet_store::{AlertQuery, AuditQuery, Store};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Reads running at once (each holds one blocking thread and a connection).
const READERS: usize = 2;
/// Reads waiting for a slot; past it a read is refused, not queued.
const MAX_WAITING: usize = 64;
/// Rows one read returns at most (alerts, audit entries).
pub(super) const MAX_ROWS: u64 = 10_000;

pub(super) struct Reads {
    db: PathBuf,
    slots: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    /// Idle connections, reused.
    pool: Mutex<Vec<Store>>,
}

impl Reads {
    pub(super) fn new(db: PathBuf) -> Reads {
        Reads { db, slots: tokio::sync::Semaphore::new(READERS), waiting: AtomicUsize::new(0), pool: Mutex::new(Vec::new()) }
    }

    /// Whether the store alone answers `request` (so it never goes to the loop).
    pub(super) fn answers(request: &Request) -> bool {
        matches!(request, Request::Alerts { .. } | Request::Audit { .. } | Request::Flows { .. })
    }

    pub(super) async fn answer(self: &Arc<Self>, request: Request) -> Reply {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err((503, format!("too many reads at once (more than {MAX_WAITING} waiting); try again")));
        }
        let permit = self.slots.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|e| (503u16, e.to_string()))?;
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.run(request)).await.unwrap_or_else(|e| Err((500, e.to_string())))
    }

    fn run(&self, request: Request) -> Reply {
        let store = match self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            Some(s) => s,
            None => Store::open_read_only(&self.db).map_err(|e| (503u16, format!("the store cannot be read: {e}")))?,
        };
        let reply = read(&store, request);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(store);
        reply
    }
}

fn read(store: &Store, request: Request) -> Reply {
    let limit = |l: usize| l.min(MAX_ROWS as usize);
    match request {
        Request::Alerts { since_ns, container, limit: l } => {
            let rows =
                store.alerts(&AlertQuery { since_ns, container, rule: None, limit: limit(l) }).map_err(|e| (500u16, e.to_string()))?;
            Ok(json!(rows.iter().map(crate::manage::alert_json).collect::<Vec<_>>()))
        }
        Request::Audit { since_ns, limit: l } => {
            store.audit(&AuditQuery { since_ns, limit: limit(l) }).map(|rows| json!(rows)).map_err(|e| (500u16, e.to_string()))
        }
        Request::Flows { since_ns, container, limit } => {
            crate::daemon::flows_json(store, since_ns, container.as_deref(), limit).map_err(|e| (500u16, e))
        }
        other => Err((500, format!("not a store read: {other:?}"))),
    }
}
