//! The agent's private files: the state directory is 0700 (created so, and
//! tightened when an older lancet left it looser); the alerts file is 0600,
//! opened with `O_NOFOLLOW` (a symbolic link there is refused) and created
//! new with `O_EXCL`. The store makes its own files private
//! (`lancet_store`), the API its token (`api::token`).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates the state directory 0700, or tightens an existing one of ours
/// to 0700.
pub fn state_dir(dir: &Path, owner: u32) -> Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("checking the state directory {}", dir.display())),
        Ok(m) if !m.is_dir() => bail!("the state directory {} is not a directory", dir.display()),
        Ok(m) => {
            if m.uid() != owner {
                bail!("the state directory {} belongs to uid {}, not to the agent (uid {owner})", dir.display(), m.uid());
            }
            if m.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, Permissions::from_mode(0o700))
                    .with_context(|| format!("making {} private", dir.display()))?;
                tracing::info!(dir = %dir.display(), "state directory made private (0700)");
            }
            Ok(())
        }
    }
}

/// Opens the alerts file for appending: created 0600 when new
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`), an existing one must be ours and not a
/// symbolic link, and is made 0600.
pub fn open_alerts(path: &Path, owner: u32) -> Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_symlink() {
            bail!(
                "the alerts file {} is a symbolic link; lancet does not follow it (name the file itself, or `-` for stdout)",
                path.display()
            );
        }
    }
    let f = match OpenOptions::new().append(true).create_new(true).mode(0o600).custom_flags(flags).open(path) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
            .append(true)
            .custom_flags(flags)
            .open(path)
            .with_context(|| format!("opening the alerts file {} (a symbolic link is refused)", path.display()))?,
        Err(e) => return Err(e).with_context(|| format!("creating the alerts file {}", path.display())),
    };
    let m = f.metadata()?;
    if m.file_type().is_file() {
        if m.uid() != owner {
            bail!(
                "the alerts file {} belongs to uid {}, not to the agent (uid {owner}); remove it or name another",
                path.display(),
                m.uid()
            );
        }
        if m.mode() & 0o077 != 0 {
            f.set_permissions(Permissions::from_mode(0o600))?;
            tracing::info!(path = %path.display(), "alerts file made private (0600)");
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn state_dir_is_created_0700_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let me = lancet_sensor::features::euid();
        let state = dir.path().join("a").join("state");
        state_dir(&state, me).unwrap();
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, Permissions::from_mode(0o755)).unwrap();
        state_dir(&state, me).unwrap();
        assert_eq!(mode(&state), 0o700);
        assert!(state_dir(&state, me + 1).is_err(), "another owner's directory");
    }

    #[test]
    fn alerts_file_is_private_and_never_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let me = lancet_sensor::features::euid();
        let p = dir.path().join("alerts.jsonl");
        drop(open_alerts(&p, me).unwrap());
        assert_eq!(mode(&p), 0o600, "created 0600");
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        drop(open_alerts(&p, me).unwrap());
        assert_eq!(mode(&p), 0o600, "an existing one is tightened");
        assert!(format!("{:#}", open_alerts(&p, me + 1).unwrap_err()).contains("belongs to uid"));

        let target = dir.path().join("target");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_alerts(&link, me).unwrap_err();
        assert!(format!("{e:#}").contains("is a symbolic link"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");
        // A dangling link is refused too (nothing is created through it).
        let dangling = dir.path().join("dangling.jsonl");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(open_alerts(&dangling, me).is_err());
        assert!(!dir.path().join("nowhere").exists());
    }
}
