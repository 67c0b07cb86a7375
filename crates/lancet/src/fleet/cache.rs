//! What the other nodes said, kept on this node's disk (`<state-dir>/fleet/`,
//! private like the store): their observations and the fleet's modes, one
//! file per KV key, written by the fleet thread as the watch brings them.
//! At start they are handed to the loop before NATS is even tried, so an
//! agent restarted while NATS is away enforces what it enforced before
//! (its own profile merged with the others', in the fleet's modes), not
//! its own profile alone.
//!
//! The files are read back with the same checks as values from NATS, and
//! bounded like them ([`MAX_BYTES`]).

use super::keys::{self, Key, ModeDoc};
use super::FromFleet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bytes of cached values at most (as the loop keeps of other nodes').
const MAX_BYTES: usize = 128 << 20;

pub struct Cache {
    dir: PathBuf,
    sizes: HashMap<String, usize>,
    bytes: usize,
}

impl Cache {
    /// The cache under `state_dir`; None (logged) when it cannot be made.
    pub fn open(state_dir: &Path) -> Option<Cache> {
        let dir = state_dir.join("fleet");
        if let Err(e) = crate::private::state_dir(&dir, lancet_sensor::features::euid()) {
            tracing::warn!(dir = %dir.display(), "fleet: no cache of the other nodes' values: {e:#}");
            return None;
        }
        Some(Cache { dir, sizes: HashMap::new(), bytes: 0 })
    }

    /// Every cached value as the loop's message (checked, bounded); our own
    /// node's observations are not cached.
    pub fn load(&mut self) -> Vec<FromFleet> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return out };
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
            let Some(key) = Key::parse(&name) else { continue };
            let Ok(data) = std::fs::read(e.path()) else { continue };
            if self.bytes + data.len() > MAX_BYTES {
                tracing::warn!("fleet: the cache holds more than its bound; the rest is not read");
                break;
            }
            let msg = match key {
                Key::Observations { workload, node } => keys::parse_observations(&data, &workload).map(|p| FromFleet::Observations {
                    workload,
                    node,
                    profile: Box::new(p),
                    bytes: data.len(),
                }),
                Key::Mode { workload } => parse_mode(&data).map(|(mode, revision, by)| FromFleet::Mode { workload, mode, revision, by }),
            };
            match msg {
                Some(m) => {
                    self.bytes += data.len();
                    self.sizes.insert(name, data.len());
                    out.push(m);
                }
                None => tracing::warn!(file = %e.path().display(), "fleet: cached value refused"),
            }
        }
        out
    }

    /// Keeps `value` of `key` (a key [`Key::parse`] accepted: a safe file
    /// name); a mode with its revision.
    pub fn put(&mut self, key: &str, value: &[u8], revision: Option<u64>) {
        let data = match revision {
            Some(r) => [format!("{r}\n").as_bytes(), value].concat(),
            None => value.to_vec(),
        };
        let old = self.sizes.get(key).copied().unwrap_or(0);
        if self.bytes - old + data.len() > MAX_BYTES {
            tracing::warn!(key, "fleet: the cache is full; this value is not kept on disk");
            return;
        }
        let (path, tmp) = (self.dir.join(key), self.dir.join(format!(".{key}.tmp")));
        match std::fs::write(&tmp, &data).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                self.bytes = self.bytes - old + data.len();
                self.sizes.insert(key.to_string(), data.len());
            }
            Err(e) => tracing::warn!(key, "fleet: value not cached: {e}"),
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(b) = self.sizes.remove(key) {
            self.bytes -= b;
        }
        let _ = std::fs::remove_file(self.dir.join(key));
    }
}

/// A cached mode: `<revision>\n<mode document>`.
fn parse_mode(data: &[u8]) -> Option<(lancet_engine::profile::Mode, u64, String)> {
    let nl = data.iter().position(|&b| b == b'\n')?;
    let revision = std::str::from_utf8(&data[..nl]).ok()?.parse().ok()?;
    let (mode, by) = ModeDoc::parse(&data[nl + 1..])?;
    Some((mode, revision, by))
}
