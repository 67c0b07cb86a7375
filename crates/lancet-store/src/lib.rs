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

mod activity;
mod alert_counts;
mod alerts;
mod audit;
mod error;
mod files;
mod flows;
mod profiles;
mod prune;
mod schema;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

pub use activity::ActivityBucket;
pub use alert_counts::AlertCount;
pub(crate) use alerts::{alert_row, ALERT_COLUMNS};
pub use alerts::{AlertQuery, NewAlert, StoredAlert};
pub use audit::{AuditQuery, AuditRecord, NewAudit};
pub use error::StoreError;
pub use flows::FlowNodeRecord;
pub use profiles::{ProfileSummary, StoredProfile};
pub use prune::PruneStats;
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
    /// Commits the open batch if it is older than `age`: what readers on
    /// their own connections see is then at most that old.
    pub fn flush_if_older(&mut self, age: std::time::Duration) -> Result<()> {
        match self.batch_started {
            Some(t) if t.elapsed() >= age => self.flush(),
            _ => Ok(()),
        }
    }

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
