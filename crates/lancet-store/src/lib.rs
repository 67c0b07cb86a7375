//! lancet's embedded store: one SQLite file (`/var/lib/lancet/lancet.db` by default)
//! holding workload profiles with their history, alerts, and hourly activity summaries.
//!
//! The store keeps *opaque documents*: profiles are YAML/JSON strings keyed by image
//! digest, alerts are Falco-shaped JSON objects plus a few indexed columns. The engine's
//! types can therefore change without a schema migration, and this crate depends on no
//! other lancet crate.
//!
//! # Durability
//! The database runs in WAL mode with `synchronous=NORMAL`: a crash (even SIGKILL or
//! power loss) never corrupts it. Writes from the agent are *batched*: the first write
//! opens a transaction and [`Store::flush`] commits it; the agent calls `flush` at least
//! once a second, so a SIGKILL loses at most the last second of writes. A batch is also
//! committed by itself when it grows past [`StoreOptions::max_batch`] writes or when a
//! write arrives and the batch is older than [`StoreOptions::flush_interval`]. Dropping a
//! `Store` commits. A committed transaction survives the death of the process; with
//! `synchronous=NORMAL` only an OS crash / power loss can roll back the transactions
//! committed since the last WAL checkpoint (the file stays consistent).
//!
//! # Concurrency
//! One writer (the agent's thread) and any number of readers in other processes
//! ([`Store::open_read_only`], e.g. the CLI): WAL readers see the last committed state and
//! never block the writer. A second read-write opener (a CLI command that edits) waits
//! up to [`StoreOptions::busy_timeout`] for the agent's batch to be committed.
//!
//! # Corruption
//! [`Store::open`] runs `PRAGMA quick_check` and checks the schema version and tables; a
//! damaged or foreign file gives [`StoreError::Corrupt`], whose message tells how to move
//! it aside ([`Store::move_aside`] does it).
#![forbid(unsafe_code)]

mod alert_counts;
mod audit;
mod error;
mod files;
mod flows;
mod schema;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

pub use alert_counts::AlertCount;
pub use audit::{AuditQuery, AuditRecord, NewAudit};
pub use error::StoreError;
pub use flows::{FlowEndRecord, FlowNodeRecord, FlowRecord};
pub use schema::SCHEMA_VERSION;

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The default store file.
pub const DEFAULT_PATH: &str = "/var/lib/lancet/lancet.db";

/// Width of an activity bucket: one hour, in nanoseconds.
pub const HOUR_NS: u64 = 3_600 * 1_000_000_000;

/// Tunables of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Alerts whose last occurrence is older than this are pruned (default 7 days).
    pub alert_retention: Duration,
    /// At most this many alerts are kept; the oldest go first (default 100 000).
    pub max_alerts: u64,
    /// Versions kept per profile, current included (default 20, at least 1).
    pub profile_history: usize,
    /// Activity buckets older than this are pruned (default 30 days).
    pub activity_retention: Duration,
    /// Audit records older than this are pruned (default 90 days).
    pub audit_retention: Duration,
    /// At most this many audit records are kept; the oldest go first (default 100 000).
    pub max_audit: u64,
    /// Hourly flow rows older than this are pruned (default 7 days).
    pub flow_retention: Duration,
    /// At most this many hourly flow rows are kept; the oldest hours go first
    /// (default 500 000).
    pub max_flow_rows: u64,
    /// A batch is committed by itself once it holds this many writes (default 10 000).
    pub max_batch: usize,
    /// A write that finds the open batch older than this commits it (default 1 s).
    /// This bounds loss only while writes keep coming; the caller's periodic
    /// [`Store::flush`] bounds it when they stop.
    pub flush_interval: Duration,
    /// How long to wait for another connection's write lock (default 5 s).
    pub busy_timeout: Duration,
    /// Run `PRAGMA quick_check` when opening read-write (default true).
    pub check_on_open: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            alert_retention: Duration::from_secs(7 * 24 * 3600),
            max_alerts: 100_000,
            profile_history: 20,
            activity_retention: Duration::from_secs(30 * 24 * 3600),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            max_audit: 100_000,
            flow_retention: Duration::from_secs(7 * 24 * 3600),
            max_flow_rows: 500_000,
            max_batch: 10_000,
            flush_interval: Duration::from_secs(1),
            busy_timeout: Duration::from_secs(5),
            check_on_open: true,
        }
    }
}

/// One version of a workload's profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredProfile {
    pub digest: String,
    pub image: String,
    pub mode: String,
    pub version: u64,
    pub document: String,
    pub updated_ns: u64,
}

/// A profile's head, without its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileSummary {
    pub digest: String,
    pub image: String,
    pub mode: String,
    pub version: u64,
    pub updated_ns: u64,
}

/// An alert to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    pub time_ns: u64,
    pub rule: String,
    pub priority: String,
    /// Full 64-hex container id.
    pub container_id: String,
    pub container_name: String,
    pub image: String,
    /// The workload key (image digest).
    pub workload: String,
    pub action: String,
    pub enforced: bool,
    pub count: u64,
    /// The full Falco-shaped JSON object, stored as is.
    pub json: String,
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredAlert {
    pub id: u64,
    /// First occurrence.
    pub time_ns: u64,
    /// Last occurrence (equal to `time_ns` until [`Store::update_alert_count`]).
    pub last_time_ns: u64,
    pub rule: String,
    pub priority: String,
    pub container_id: String,
    pub container_name: String,
    pub image: String,
    pub workload: String,
    pub action: String,
    pub enforced: bool,
    pub count: u64,
    pub json: String,
}

/// The columns [`alert_row`] reads, in its order.
pub(crate) const ALERT_COLUMNS: &str =
    "id, time_ns, last_time_ns, rule, priority, container_id, container_name, image, workload, action, enforced, count, json";

/// A row of [`ALERT_COLUMNS`] as a [`StoredAlert`].
pub(crate) fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredAlert> {
    Ok(StoredAlert {
        id: to_u64(r.get(0)?),
        time_ns: to_u64(r.get(1)?),
        last_time_ns: to_u64(r.get(2)?),
        rule: r.get(3)?,
        priority: r.get(4)?,
        container_id: r.get(5)?,
        container_name: r.get(6)?,
        image: r.get(7)?,
        workload: r.get(8)?,
        action: r.get(9)?,
        enforced: r.get(10)?,
        count: to_u64(r.get(11)?),
        json: r.get(12)?,
    })
}

/// Which alerts [`Store::alerts`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    /// Only alerts whose last occurrence is at or after this time.
    pub since_ns: Option<u64>,
    /// A container name (exact) or a container id prefix.
    pub container: Option<String>,
    /// A rule name (exact).
    pub rule: Option<String>,
    /// At most this many; 0 means no limit.
    pub limit: usize,
}

/// One hourly activity counter of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityBucket {
    /// Start of the hour (ns since the epoch, a multiple of [`HOUR_NS`]).
    pub hour_ns: u64,
    /// `exec`, `net`, `file`, ...
    pub kind: String,
    pub count: u64,
}

/// What one [`Store::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    pub alerts_expired: u64,
    pub alerts_capped: u64,
    pub activity_expired: u64,
    pub profile_versions_dropped: u64,
    pub audit_expired: u64,
    pub audit_capped: u64,
    pub flows_expired: u64,
    pub flows_capped: u64,
}

/// The embedded store. Not `Sync`: one thread writes; other processes read through
/// their own [`Store::open_read_only`].
pub struct Store {
    conn: Connection,
    path: PathBuf,
    opts: StoreOptions,
    read_only: bool,
    /// When the open batch transaction began, if one is open.
    batch_started: Option<Instant>,
    /// Writes in the open batch.
    pending: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Store {
    /// Opens (creating it and its directory if missing) the store at `path` for
    /// reading and writing, checks it, and migrates it to [`SCHEMA_VERSION`].
    /// The files are private: a new directory is 0700, the database and its
    /// `-wal` and `-shm` 0600; a database path that is a symbolic link is
    /// refused.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store> {
        let path = path.to_path_buf();
        if std::fs::symlink_metadata(&path).is_err() {
            set_aside_orphans(&path)?;
        }
        files::prepare(&path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        check_header(&path)?;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| StoreError::sqlite(&path, e))?;
        let mut store = Store { conn, path, opts, read_only: false, batch_started: None, pending: 0 };
        store.setup_rw()?;
        files::tighten(&store.path)?;
        Ok(store)
    }

    /// Opens an existing store for reading only (the CLI, while the agent writes). It
    /// sees what the writer has committed; it never migrates.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let path = path.to_path_buf();
        if !path.exists() {
            return Err(StoreError::NotFound { path });
        }
        check_header(&path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| StoreError::sqlite(&path, e))?;
        let opts = StoreOptions::default();
        conn.busy_timeout(opts.busy_timeout).map_err(|e| StoreError::sqlite(&path, e))?;
        let store = Store { conn, path, opts, read_only: true, batch_started: None, pending: 0 };
        let version = store.user_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { path: store.path.clone(), found: version, supported: SCHEMA_VERSION });
        }
        if version < SCHEMA_VERSION {
            return Err(StoreError::SchemaTooOld { path: store.path.clone(), found: version, supported: SCHEMA_VERSION });
        }
        store.check_tables()?;
        Ok(store)
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::sqlite(&self.path, e)
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), detail: detail.into() }
    }

    fn user_version(&self) -> Result<u32> {
        let v: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        u32::try_from(v).map_err(|_| self.corrupt(format!("invalid schema version {v}")))
    }

    fn setup_rw(&mut self) -> Result<()> {
        self.conn.busy_timeout(self.opts.busy_timeout).map_err(|e| self.err(e))?;
        // The first statement that reads the file: "file is not a database" shows here.
        let version = self.user_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { path: self.path.clone(), found: version, supported: SCHEMA_VERSION });
        }
        if self.opts.check_on_open {
            let started = Instant::now();
            self.quick_check()?;
            tracing::debug!(path = %self.path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "store quick_check ok");
        }
        let mode: String = self.conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %self.path.display(), mode, "the store could not switch to WAL mode");
        }
        self.conn
            .execute_batch(
                "PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA journal_size_limit = 67108864;",
            )
            .map_err(|e| self.err(e))?;
        if version == 0 {
            let objects: i64 = self.conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).map_err(|e| self.err(e))?;
            if objects > 0 {
                return Err(self.corrupt("it is a SQLite database but not a lancet store (schema version 0 with tables in it)"));
            }
        }
        self.migrate(version)?;
        self.check_tables()?;
        Ok(())
    }

    /// Runs `PRAGMA quick_check`; anything but `ok` is corruption.
    fn quick_check(&self) -> Result<()> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check(5)").map_err(|e| self.err(e))?;
        let rows: Vec<String> = stmt.query_map([], |r| r.get::<_, String>(0)).and_then(|rows| rows.collect()).map_err(|e| self.err(e))?;
        if rows.len() == 1 && rows[0] == "ok" {
            return Ok(());
        }
        Err(self.corrupt(format!("integrity check failed: {}", rows.join("; ").replace('\n', "; "))))
    }

    fn migrate(&mut self, from: u32) -> Result<()> {
        if from >= SCHEMA_VERSION {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| StoreError::sqlite(&path, e))?;
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(from as usize) {
            let to = i as u32 + 1;
            tx.execute_batch(sql).map_err(|e| StoreError::sqlite(&path, e))?;
            tx.pragma_update(None, "user_version", to).map_err(|e| StoreError::sqlite(&path, e))?;
            tracing::info!(path = %path.display(), to, "store schema migrated");
        }
        tx.commit().map_err(|e| StoreError::sqlite(&path, e))
    }

    fn check_tables(&self) -> Result<()> {
        for table in schema::TABLES {
            let found: Option<i64> = self
                .conn
                .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if found.is_none() {
                return Err(self.corrupt(format!("schema version {SCHEMA_VERSION} but the table `{table}` is missing")));
            }
        }
        Ok(())
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for [`Store::open_read_only`] stores.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The journal mode in force (`wal` for a read-write store).
    pub fn journal_mode(&self) -> Result<String> {
        self.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(|e| self.err(e))
    }

    /// Writes in the batch that [`Store::flush`] has not committed yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    // ---- batching -------------------------------------------------------------------

    /// Makes sure a batch transaction is open before a write.
    fn begin_write(&mut self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly { path: self.path.clone() });
        }
        if self.batch_started.is_some() && self.conn.is_autocommit() {
            // SQLite rolled the transaction back by itself (e.g. disk full, I/O error).
            tracing::error!(path = %self.path.display(), lost = self.pending, "store batch was rolled back by SQLite; its writes are lost");
            self.batch_started = None;
            self.pending = 0;
        }
        if self.batch_started.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.err(e))?;
            self.batch_started = Some(Instant::now());
            self.pending = 0;
        }
        Ok(())
    }

    /// Counts one write; commits the batch when it is big or old enough.
    fn end_write(&mut self) -> Result<()> {
        self.pending += 1;
        let old = self.batch_started.is_some_and(|t| t.elapsed() >= self.opts.flush_interval);
        if self.pending >= self.opts.max_batch.max(1) || old {
            self.flush()?;
        }
        Ok(())
    }

    /// Commits the open batch, if any. The agent calls this at least once a second; it
    /// is cheap when nothing is pending.
    pub fn flush(&mut self) -> Result<()> {
        if self.batch_started.is_none() {
            return Ok(());
        }
        let pending = self.pending;
        self.batch_started = None;
        self.pending = 0;
        if self.conn.is_autocommit() {
            tracing::error!(path = %self.path.display(), lost = pending, "store batch was rolled back by SQLite; its writes are lost");
            return Ok(());
        }
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                tracing::trace!(writes = pending, "store batch committed");
                Ok(())
            }
            Err(e) => {
                // Leave no half-open transaction behind: the next write starts afresh.
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::error!(path = %self.path.display(), lost = pending, "store commit failed: {e}");
                Err(self.err(e))
            }
        }
    }

    /// Commits and closes, reporting errors that a drop would only log.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        if !self.read_only {
            // Cheap; keeps the query planner's statistics fresh.
            let _ = self.conn.execute_batch("PRAGMA optimize");
        }
        let path = self.path.clone();
        let conn = std::mem::replace(&mut self.conn, Connection::open_in_memory().map_err(|e| StoreError::sqlite(&path, e))?);
        conn.close().map_err(|(_, e)| StoreError::sqlite(&path, e))
    }

    // ---- profiles -------------------------------------------------------------------

    /// Stores `document` as the profile of `digest` and returns its version. A new
    /// version is made only when the document differs from the current one; when only
    /// `image` or `mode` changed, the head is updated and the version stays. Versions
    /// start at 1; only the last [`StoreOptions::profile_history`] are kept.
    pub fn put_profile(&mut self, digest: &str, image: &str, mode: &str, document: &str, now_ns: u64) -> Result<u64> {
        if digest.is_empty() {
            return Err(StoreError::Invalid("a profile needs a non-empty digest".into()));
        }
        self.begin_write()?;
        let keep = self.opts.profile_history.max(1) as i64;
        let path = self.path.clone();
        let e = |e| StoreError::sqlite(&path, e);
        let sp = self.conn.savepoint().map_err(e)?;
        let head: Option<(String, String, i64, String)> = sp
            .prepare_cached(
                "SELECT p.image, p.mode, p.version, v.document FROM profiles p
                 JOIN profile_versions v ON v.digest = p.digest AND v.version = p.version
                 WHERE p.digest = ?1",
            )
            .and_then(|mut s| s.query_row([digest], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional())
            .map_err(e)?;
        let version = match head {
            Some((old_image, old_mode, version, old_doc)) if old_doc == document => {
                if old_image != image || old_mode != mode {
                    sp.prepare_cached("UPDATE profiles SET image = ?2, mode = ?3, updated_ns = ?4 WHERE digest = ?1")
                        .and_then(|mut s| s.execute(params![digest, image, mode, to_i64(now_ns)]))
                        .map_err(e)?;
                }
                version
            }
            head => {
                let version = head.map_or(1, |h| h.2 + 1);
                sp.prepare_cached(
                    "INSERT INTO profiles (digest, image, mode, version, updated_ns) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (digest) DO UPDATE SET image = excluded.image, mode = excluded.mode,
                         version = excluded.version, updated_ns = excluded.updated_ns",
                )
                .and_then(|mut s| s.execute(params![digest, image, mode, version, to_i64(now_ns)]))
                .map_err(e)?;
                sp.prepare_cached(
                    "INSERT INTO profile_versions (digest, version, image, mode, document, created_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| s.execute(params![digest, version, image, mode, document, to_i64(now_ns)]))
                .map_err(e)?;
                sp.prepare_cached("DELETE FROM profile_versions WHERE digest = ?1 AND version <= ?2")
                    .and_then(|mut s| s.execute(params![digest, version - keep]))
                    .map_err(e)?;
                tracing::debug!(digest, version, "profile version stored");
                version
            }
        };
        sp.commit().map_err(e)?;
        self.end_write()?;
        Ok(to_u64(version))
    }

    /// The current version of the profile of `digest`.
    pub fn profile(&self, digest: &str) -> Result<Option<StoredProfile>> {
        self.conn
            .prepare_cached(
                "SELECT p.digest, p.image, p.mode, p.version, v.document, p.updated_ns FROM profiles p
                 JOIN profile_versions v ON v.digest = p.digest AND v.version = p.version
                 WHERE p.digest = ?1",
            )
            .and_then(|mut s| s.query_row([digest], stored_profile).optional())
            .map_err(|e| self.err(e))
    }

    /// The stored versions of the profile of `digest`, newest first, at most `limit`
    /// (0: all). Each carries the image and mode it was written with and its creation
    /// time as `updated_ns`.
    pub fn profile_history(&self, digest: &str, limit: usize) -> Result<Vec<StoredProfile>> {
        let limit = if limit == 0 { -1 } else { i64::try_from(limit).unwrap_or(i64::MAX) };
        self.conn
            .prepare_cached(
                "SELECT digest, image, mode, version, document, created_ns FROM profile_versions
                 WHERE digest = ?1 ORDER BY version DESC LIMIT ?2",
            )
            .and_then(|mut s| s.query_map(params![digest, limit], stored_profile)?.collect())
            .map_err(|e| self.err(e))
    }

    /// Every profile's head, ordered by digest.
    pub fn list_profiles(&self) -> Result<Vec<ProfileSummary>> {
        self.conn
            .prepare_cached("SELECT digest, image, mode, version, updated_ns FROM profiles ORDER BY digest")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(ProfileSummary {
                        digest: r.get(0)?,
                        image: r.get(1)?,
                        mode: r.get(2)?,
                        version: to_u64(r.get(3)?),
                        updated_ns: to_u64(r.get(4)?),
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Deletes the profile of `digest` and its whole history (a reset: the next
    /// [`Store::put_profile`] starts again at version 1). Returns whether it existed.
    pub fn delete_profile(&mut self, digest: &str) -> Result<bool> {
        self.begin_write()?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM profiles WHERE digest = ?1")
            .and_then(|mut s| s.execute([digest]))
            .map_err(|e| self.err(e))?;
        self.end_write()?;
        tracing::info!(digest, existed = n > 0, "profile deleted");
        Ok(n > 0)
    }

    // ---- alerts ---------------------------------------------------------------------

    /// Stores an alert (in the open batch) and returns its id.
    pub fn insert_alert(&mut self, a: &NewAlert) -> Result<u64> {
        self.begin_write()?;
        self.conn
            .prepare_cached(
                "INSERT INTO alerts (time_ns, last_time_ns, rule, priority, container_id, container_name, image,
                                     workload, action, enforced, count, json)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    to_i64(a.time_ns),
                    a.rule,
                    a.priority,
                    a.container_id,
                    a.container_name,
                    a.image,
                    a.workload,
                    a.action,
                    a.enforced,
                    to_i64(a.count),
                    a.json,
                ])
            })
            .map_err(|e| self.err(e))?;
        let id = to_u64(self.conn.last_insert_rowid());
        self.end_write()?;
        Ok(id)
    }

    /// Records that a deduplicated alert happened `count` times in all, the last at
    /// `last_time_ns`. Returns false when the alert no longer exists (pruned).
    pub fn update_alert_count(&mut self, id: u64, count: u64, last_time_ns: u64) -> Result<bool> {
        self.begin_write()?;
        let n = self
            .conn
            .prepare_cached("UPDATE alerts SET count = ?2, last_time_ns = max(last_time_ns, ?3) WHERE id = ?1")
            .and_then(|mut s| s.execute(params![to_i64(id), to_i64(count), to_i64(last_time_ns)]))
            .map_err(|e| self.err(e))?;
        self.end_write()?;
        Ok(n > 0)
    }

    /// Alerts matching `q`, newest (by last occurrence) first.
    pub fn alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(since) = q.since_ns {
            args.push(Value::Integer(to_i64(since)));
            sql.push_str(&format!(" AND last_time_ns >= ?{}", args.len()));
        }
        if let Some(c) = q.container.as_deref().filter(|c| !c.is_empty()) {
            args.push(Value::Text(c.to_string()));
            let n = args.len();
            sql.push_str(&format!(" AND (container_name = ?{n} OR substr(container_id, 1, length(?{n})) = ?{n})"));
        }
        if let Some(rule) = q.rule.as_deref() {
            args.push(Value::Text(rule.to_string()));
            sql.push_str(&format!(" AND rule = ?{}", args.len()));
        }
        args.push(Value::Integer(if q.limit == 0 { -1 } else { i64::try_from(q.limit).unwrap_or(i64::MAX) }));
        sql.push_str(&format!(" ORDER BY last_time_ns DESC, id DESC LIMIT ?{}", args.len()));
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_map(rusqlite::params_from_iter(args), alert_row)?.collect())
            .map_err(|e| self.err(e))
    }

    /// Number of stored alerts.
    pub fn alert_count(&self) -> Result<u64> {
        self.conn.query_row("SELECT count(*) FROM alerts", [], |r| r.get::<_, i64>(0)).map(to_u64).map_err(|e| self.err(e))
    }

    // ---- activity -------------------------------------------------------------------

    /// Adds `n` events of `kind` (`exec`, `net`, `file`) to the hour bucket of `now_ns`
    /// for workload `digest`.
    pub fn bump_activity(&mut self, digest: &str, kind: &str, n: u64, now_ns: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if kind.is_empty() {
            return Err(StoreError::Invalid("an activity kind must not be empty".into()));
        }
        self.begin_write()?;
        let hour = now_ns - now_ns % HOUR_NS;
        self.conn
            .prepare_cached(
                "INSERT INTO activity (digest, hour_ns, kind, n) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest, hour_ns, kind) DO UPDATE SET n = n + excluded.n",
            )
            .and_then(|mut s| s.execute(params![digest, to_i64(hour), kind, to_i64(n)]))
            .map_err(|e| self.err(e))?;
        self.end_write()
    }

    /// The activity buckets of `digest` from the hour that holds `since_ns` on, oldest
    /// first, then by kind.
    pub fn activity(&self, digest: &str, since_ns: u64) -> Result<Vec<ActivityBucket>> {
        let from = since_ns - since_ns % HOUR_NS;
        self.conn
            .prepare_cached("SELECT hour_ns, kind, n FROM activity WHERE digest = ?1 AND hour_ns >= ?2 ORDER BY hour_ns, kind")
            .and_then(|mut s| {
                s.query_map(params![digest, to_i64(from)], |r| {
                    Ok(ActivityBucket { hour_ns: to_u64(r.get(0)?), kind: r.get(1)?, count: to_u64(r.get(2)?) })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    // ---- retention ------------------------------------------------------------------

    /// Applies retention: alerts older than [`StoreOptions::alert_retention`], alerts
    /// beyond [`StoreOptions::max_alerts`] (oldest first), activity older than
    /// [`StoreOptions::activity_retention`], profile versions beyond
    /// [`StoreOptions::profile_history`], audit records beyond
    /// [`StoreOptions::audit_retention`] and [`StoreOptions::max_audit`], flow rollups beyond
    /// [`StoreOptions::flow_retention`] and [`StoreOptions::max_flow_rows`]. Commits. Cheap when there is nothing to do
    /// (index range scans); meant to be called every minute.
    pub fn prune(&mut self, now_ns: u64) -> Result<PruneStats> {
        self.begin_write()?;
        let mut stats = PruneStats::default();
        let alert_cut = now_ns.saturating_sub(dur_ns(self.opts.alert_retention));
        stats.alerts_expired = self.exec("DELETE FROM alerts WHERE last_time_ns < ?1", params![to_i64(alert_cut)])?;
        // ids only grow, so max - min + 1 bounds the count: skip the walk when under the cap.
        let (min, max): (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT (SELECT min(id) FROM alerts), (SELECT max(id) FROM alerts)", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        if let (Some(min), Some(max)) = (min, max) {
            let cap = to_i64(self.opts.max_alerts);
            if max - min + 1 > cap {
                stats.alerts_capped =
                    self.exec("DELETE FROM alerts WHERE id <= (SELECT id FROM alerts ORDER BY id DESC LIMIT 1 OFFSET ?1)", params![cap])?;
            }
        }
        let activity_cut = now_ns.saturating_sub(dur_ns(self.opts.activity_retention));
        let activity_cut = activity_cut - activity_cut % HOUR_NS;
        stats.activity_expired = self.exec("DELETE FROM activity WHERE hour_ns < ?1", params![to_i64(activity_cut)])?;
        let keep = self.opts.profile_history.max(1) as i64;
        stats.profile_versions_dropped = self.exec(
            "DELETE FROM profile_versions WHERE version <=
                 (SELECT p.version FROM profiles p WHERE p.digest = profile_versions.digest) - ?1",
            params![keep],
        )?;
        (stats.audit_expired, stats.audit_capped) = self.prune_audit(now_ns)?;
        (stats.flows_expired, stats.flows_capped) = self.prune_flows(now_ns)?;
        self.pending += 1;
        self.flush()?;
        if stats != PruneStats::default() {
            tracing::info!(?stats, "store pruned");
        }
        Ok(stats)
    }

    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> Result<u64> {
        self.conn.prepare_cached(sql).and_then(|mut s| s.execute(p)).map(|n| n as u64).map_err(|e| self.err(e))
    }

    // ---- recovery -------------------------------------------------------------------

    /// Renames a store out of the way: `-wal`, `-shm` (and a stray `-journal`) first,
    /// then the database itself, each with the suffix `.corrupt-<UTC timestamp>`, so a
    /// fresh store can be created at `path`. Returns the new name of the database (or
    /// of its WAL when only that existed). Fails with `NotFound` when none existed.
    pub fn move_aside(path: &Path) -> Result<PathBuf> {
        let suffix = unique_suffix(path, "corrupt");
        // The WAL first: a WAL left next to a fresh database would be replayed into it.
        let mut moved = None;
        for ext in ["-wal", "-shm", "-journal", ""] {
            let from = with_suffix(path, ext);
            if !from.exists() {
                continue;
            }
            let to = with_suffix(&from, &suffix);
            std::fs::rename(&from, &to).map_err(|source| StoreError::Io { path: from.clone(), what: "moving the store aside", source })?;
            tracing::warn!(from = %from.display(), to = %to.display(), "store file moved aside");
            moved = Some(to);
        }
        moved.ok_or_else(|| StoreError::Io {
            path: path.to_path_buf(),
            what: "moving the store aside",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no store files there"),
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("store: the last batch was not committed at drop: {e}");
        }
    }
}

fn stored_profile(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredProfile> {
    Ok(StoredProfile {
        digest: r.get(0)?,
        image: r.get(1)?,
        mode: r.get(2)?,
        version: to_u64(r.get(3)?),
        document: r.get(4)?,
        updated_ns: to_u64(r.get(5)?),
    })
}

/// Checks the 100-byte SQLite header against the file's length, catching what
/// `quick_check` can miss: a file cut inside a page, or cut short of the size its header
/// records (lost free pages would be reused later and corrupt the store then). A missing
/// or empty file is fine (a new store).
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), detail };
    let io = |source| StoreError::Io { path: path.to_path_buf(), what: "reading the database header", source };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let len = f.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(());
    }
    let mut h = [0u8; 100];
    let mut got = 0;
    while got < h.len() {
        match f.read(&mut h[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    if got < 16 || &h[..16] != b"SQLite format 3\0" {
        return Err(corrupt("not a SQLite database (bad header)".into()));
    }
    if got < h.len() {
        return Err(corrupt(format!("truncated: only {len} bytes")));
    }
    let page = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65_536u64,
        p => u64::from(p),
    };
    if !(512..=65_536).contains(&page) || !page.is_power_of_two() {
        return Err(corrupt(format!("bad page size {page} in the header")));
    }
    // With a non-empty WAL the database file may lag behind or be in the middle of a
    // checkpoint (another process writing it); recovery replays the WAL, and
    // `quick_check` still runs. Judge the length only when the file stands alone.
    let wal_len = std::fs::metadata(with_suffix(path, "-wal")).map_or(0, |m| m.len());
    if wal_len > 0 {
        return Ok(());
    }
    if len % page != 0 {
        return Err(corrupt(format!("truncated: {len} bytes is not a whole number of {page}-byte pages")));
    }
    let be32 = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let pages = u64::from(be32(28));
    let size_valid = pages > 0 && be32(24) == be32(92);
    if size_valid && len < pages * page {
        return Err(corrupt(format!("truncated: {len} bytes but the header records {pages} pages of {page} bytes")));
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `.{what}-YYYYMMDDTHHMMSSZ`, with `-N` added if a file of that name exists already.
fn unique_suffix(path: &Path, what: &str) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let base = format!(".{what}-{}", utc_stamp(secs));
    let taken = |s: &str| ["", "-wal", "-shm", "-journal"].iter().any(|e| with_suffix(&with_suffix(path, e), s).exists());
    if !taken(&base) {
        return base;
    }
    (1u32..).map(|n| format!("{base}-{n}")).find(|s| !taken(s)).unwrap_or(base)
}

/// When the database file is missing but a `-wal`/`-shm` is there (someone moved only
/// the database aside), SQLite would replay that WAL into the new, empty database. Move
/// the orphans aside first.
fn set_aside_orphans(path: &Path) -> Result<()> {
    let suffix = unique_suffix(path, "orphan");
    for ext in ["-wal", "-shm", "-journal"] {
        let from = with_suffix(path, ext);
        if from.exists() {
            let to = with_suffix(&from, &suffix);
            std::fs::rename(&from, &to).map_err(|source| StoreError::Io {
                path: from.clone(),
                what: "moving an orphaned journal aside",
                source,
            })?;
            tracing::warn!(from = %from.display(), to = %to.display(), "orphaned store journal moved aside (its database is gone)");
        }
    }
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch (proleptic Gregorian, UTC).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_764_331_199), "20251128T115959Z");
    }

    #[test]
    fn suffixes() {
        assert_eq!(with_suffix(Path::new("/x/lancet.db"), "-wal"), PathBuf::from("/x/lancet.db-wal"));
    }
}
