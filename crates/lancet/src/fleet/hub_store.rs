//! `lancet hub --state-dir DIR`: every alert the hub takes from the stream
//! is also kept in a store of its own (`DIR/hub.db`, the agent's store
//! format, with its bounds: 100 000 alerts, 7 days), with the stream
//! sequence it reached (`DIR/hub.cursor`). A restarted hub fills its window
//! from the store and goes on from the next sequence, so what it showed
//! stays when the stream has dropped it (the stream keeps a million
//! alerts), and the stream is not read again from its start.

use anyhow::{Context, Result};
use lancet_store::{AlertQuery, NewAlert, Store, StoreOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct Keep {
    store: Store,
    cursor_path: PathBuf,
    cursor: u64,
}

impl Keep {
    pub fn open(dir: &Path) -> Result<Keep> {
        crate::private::state_dir(dir, lancet_sensor::features::euid())?;
        let db = dir.join("hub.db");
        let store = Store::open(&db, StoreOptions::default()).with_context(|| format!("opening {}", db.display()))?;
        let cursor_path = dir.join("hub.cursor");
        let cursor = std::fs::read_to_string(&cursor_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Ok(Keep { store, cursor_path, cursor })
    }

    /// The first stream sequence not kept yet.
    pub fn next_sequence(&self) -> u64 {
        self.cursor + 1
    }

    /// The newest `n` alerts kept, oldest first, as the window holds them:
    /// (time, node, document).
    pub fn restore(&self, n: usize) -> Result<Vec<(u64, String, Value)>> {
        let rows = self.store.alerts(&AlertQuery { limit: n, ..Default::default() })?;
        Ok(rows
            .iter()
            .rev()
            .filter_map(|a| super::hub::parse_alert(a.alert.json.as_bytes()))
            .map(|(node, v)| (v["time_ns"].as_u64().unwrap_or(0), node, v))
            .collect())
    }

    /// Keeps one alert taken at stream sequence `seq` (committed, with the
    /// cursor, before the next is taken).
    pub fn record(&mut self, seq: u64, v: &Value) -> Result<()> {
        let f = &v["output_fields"];
        let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
        self.store.insert_alert(&NewAlert {
            time_ns: v["time_ns"].as_u64().unwrap_or(0),
            rule: s(&v["rule"]),
            priority: s(&v["priority"]),
            container_id: s(&f["container.full_id"]),
            container_name: s(&f["container.name"]),
            image: s(&f["container.image.repository"]),
            workload: s(&f["lancet.workload"]),
            action: "alert".into(),
            enforced: f["lancet.enforced"].as_bool().unwrap_or(false),
            count: 1,
            json: v.to_string(),
        })?;
        self.store.flush()?;
        self.cursor = seq;
        let tmp = self.cursor_path.with_extension("cursor.tmp");
        std::fs::write(&tmp, seq.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.cursor_path).with_context(|| format!("renaming to {}", self.cursor_path.display()))?;
        Ok(())
    }

    /// Once a minute: the store's bounds.
    pub fn prune(&mut self) -> Result<()> {
        self.store.prune(lancet_engine::event::now_ns())?;
        Ok(())
    }
}
