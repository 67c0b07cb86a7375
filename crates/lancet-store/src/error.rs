//! The store's errors. Every error that means "this file cannot be used" tells the
//! operator how to get out of it, so the agent never ends up in a crash loop without a
//! way forward.

use std::path::{Path, PathBuf};

/// Errors of [`crate::Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a SQLite database, is truncated or damaged, or is a SQLite
    /// database that is not a lancet store.
    #[error(
        "the lancet store {} is unusable: {detail}; move {} aside (e.g. `mv {} {}.corrupt`) and start again; \
         lancet will create a fresh store (move {}-wal and {}-shm along with it if they exist, \
         or use `Store::move_aside`, which does all three)",
        path.display(), path.display(), path.display(), path.display(), path.display(), path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    /// The store was written by a newer lancet whose schema this build does not know.
    #[error(
        "the lancet store {} has schema version {found}, newer than this build supports ({supported}); \
         run the newer lancet again, or move {} aside (e.g. `mv {} {}.corrupt`) and start again; \
         lancet will create a fresh store",
        path.display(), path.display(), path.display(), path.display()
    )]
    SchemaTooNew { path: PathBuf, found: u32, supported: u32 },

    /// A read-only open found a store that the agent has not yet migrated.
    #[error(
        "the lancet store {} has schema version {found}, older than this build's {supported}; \
         it is migrated when the agent opens it read-write (start `lancet run` once)",
        path.display()
    )]
    SchemaTooOld { path: PathBuf, found: u32, supported: u32 },

    /// A read-only open of a store that does not exist.
    #[error("there is no lancet store at {} (the agent creates it on its first start)", path.display())]
    NotFound { path: PathBuf },

    /// A write on a store opened with [`crate::Store::open_read_only`].
    #[error("the lancet store {} is open read-only", path.display())]
    ReadOnly { path: PathBuf },

    /// A caller passed an argument the store refuses (e.g. an empty digest).
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// Any other SQLite failure (busy past the timeout, disk full, I/O error...).
    #[error("lancet store {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A filesystem operation around the store failed.
    #[error("lancet store {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Turns a SQLite error into a store error, recognising the codes that mean the file
    /// is damaged or is not a database at all.
    pub(crate) fn sqlite(path: &Path, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
                StoreError::Corrupt { path: path.to_path_buf(), detail: e.to_string() }
            }
            _ => StoreError::Sqlite { path: path.to_path_buf(), source: e },
        }
    }

    /// True when the remedy is to move the file aside ([`StoreError::Corrupt`]).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }
}
