//! The `enforce_events` ring buffer: one record per denied (or, with
//! NET_AUDIT, would-be-denied) connect/sendmsg/bind, per exec kill (with,
//! for an applet of a multi-call binary, the applet's name), per listener
//! killed or reported, and per write refused by a read-only mount (with
//! the syscall and its path).
//!
//! The programs submit with the ring's adaptive wakeup: the reader is woken
//! at once when it has caught up (records are rare, and a denial is worth
//! seeing now), and a burst costs one wakeup. The ring is pinned: records
//! written while the agent is down wait for the next reader (up to 256 KiB:
//! ~1500 records of 160 bytes, or ~600 write refusals, which alone carry a
//! 256-byte path; the rest are counted in `EnforceStats::events_lost`).

use super::records::{decode_record, EnforceRecord};
use super::{EnforceError, Result};
use crate::decode::Clock;
use libbpf_rs::{MapHandle, RingBuffer, RingBufferBuilder};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Queue = Arc<Mutex<Vec<EnforceRecord>>>;

/// Reads `enforce_events`. `Send`: it can live in its own thread.
pub struct EnforceEvents {
    rb: RingBuffer<'static>,
    queue: Queue,
    bad: Arc<AtomicU64>,
    // Kept open for as long as the ring buffer reads it (declared after
    // `rb`, so dropped after it).
    _map: MapHandle,
}

impl std::fmt::Debug for EnforceEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforceEvents").field("undecodable", &self.undecodable()).finish()
    }
}

impl EnforceEvents {
    /// Opens the ring pinned in `pin_dir` (no [`super::Enforcer`] needed).
    pub fn open(pin_dir: &Path) -> Result<EnforceEvents> {
        let path = pin_dir.join("enforce_events");
        let map = MapHandle::from_pinned_path(&path).map_err(|source| EnforceError::RingBuffer { map: path.clone(), source })?;
        Self::from_map(map, path)
    }

    pub(crate) fn from_map(map: MapHandle, path: PathBuf) -> Result<EnforceEvents> {
        let queue: Queue = Arc::default();
        let bad = Arc::new(AtomicU64::new(0));
        let clock = Clock::now();
        let (q, b) = (Arc::clone(&queue), Arc::clone(&bad));
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&map, move |data: &[u8]| {
                match decode_record(data, &clock) {
                    Ok(r) => q.lock().unwrap_or_else(|p| p.into_inner()).push(r),
                    Err(e) => {
                        b.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("enforce_events: {e}");
                    }
                }
                0
            })
            .map_err(|source| EnforceError::RingBuffer { map: path.clone(), source })?;
        let rb = builder.build().map_err(|source| EnforceError::RingBuffer { map: path, source })?;
        Ok(EnforceEvents { rb, queue, bad, _map: map })
    }

    /// Waits up to `timeout` for records, and returns all that are queued.
    pub fn poll(&self, timeout: Duration) -> Result<Vec<EnforceRecord>> {
        self.rb.poll(timeout).map_err(|source| EnforceError::RingBuffer { map: PathBuf::from("enforce_events"), source })?;
        Ok(self.take())
    }

    /// Returns the queued records without waiting.
    pub fn drain(&self) -> Result<Vec<EnforceRecord>> {
        self.rb.consume().map_err(|source| EnforceError::RingBuffer { map: PathBuf::from("enforce_events"), source })?;
        Ok(self.take())
    }

    fn take(&self) -> Vec<EnforceRecord> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// An fd that becomes readable when records arrive, for callers that multiplex.
    pub fn epoll_fd(&self) -> i32 {
        self.rb.epoll_fd()
    }

    /// Records that could not be decoded (a version mismatch).
    pub fn undecodable(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }
}
