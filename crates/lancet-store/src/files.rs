//! The store's files are private: the database holds every workload's
//! profile and every alert (command lines, paths, addresses). The directory
//! is created 0700, the database 0600 (created new with `O_EXCL|O_NOFOLLOW`,
//! never through a symbolic link). SQLite creates `-wal` and `-shm` with the
//! mode of the database file (its unix VFS copies it and fchmods away the
//! umask), so they are 0600 too; files left looser by an older lancet are
//! tightened at open.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{with_suffix, Result, StoreError};

/// Mode of the store's files.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of a state directory the store creates.
pub(crate) const DIR_MODE: u32 = 0o700;

fn io_err(path: &Path, what: &'static str, source: io::Error) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), what, source }
}

/// Before SQLite opens `path` read-write: its directory exists (created
/// 0700 when missing), the path is not a symbolic link, and a missing
/// database is created empty with mode 0600 (SQLite takes an empty file
/// as a new database).
pub(crate) fn prepare(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(|e| io_err(dir, "creating the state directory", e))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io_err(path, "opening the store", io::Error::other("it is a symbolic link; lancet does not follow it")));
        }
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, "opening the store", e)),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(drop)
        .map_err(|e| io_err(path, "creating the store", e))
}

/// After the open: the database, `-wal` and `-shm` that exist are 0600
/// (regular files only; nothing is followed).
pub(crate) fn tighten(path: &Path) -> Result<()> {
    for ext in ["", "-wal", "-shm"] {
        let p = with_suffix(path, ext);
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.file_type().is_file() && m.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&p, Permissions::from_mode(FILE_MODE)).map_err(|e| io_err(&p, "making the store private", e))?;
            tracing::info!(path = %p.display(), "store file made private (0600)");
        }
    }
    Ok(())
}
