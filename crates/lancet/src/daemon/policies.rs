//! The policies in force: the built-in defaults plus the policy directory,
//! reloaded on SIGHUP or when a file there changes. An invalid file never
//! replaces the running set.

use crate::policy_cmd::read_policies;
use lancet_engine::policy::{Policy, PolicySet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Reads every `*.yaml`/`*.yml` in the policy directory. All errors of all
/// files are returned (each `file:line:col: message`).
pub fn load_policy_dir(dir: &Path) -> std::result::Result<Vec<Policy>, Vec<String>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => {
            rd.flatten().map(|e| e.path()).filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    files.sort();
    match read_policies(&files) {
        (policies, errors) if errors.is_empty() => Ok(policies),
        (_, errors) => Err(errors),
    }
}

/// A fingerprint of the policy directory (names, sizes, mtimes), to notice
/// edits without inotify.
fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.path(), m.len(), m.modified().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The policy set in force and the directory it came from.
pub(super) struct Policies {
    pub(super) set: PolicySet,
    dir: PathBuf,
    stamp: Vec<(PathBuf, u64, SystemTime)>,
}

impl Policies {
    /// Loads the directory; every error of every file is returned
    /// (`file:line:col: message`).
    pub(super) fn load(dir: &Path) -> Result<Policies, String> {
        let set = match load_policy_dir(dir) {
            Ok(p) => PolicySet::new(p, true).map_err(|e| e.to_string())?,
            Err(errors) => return Err(format!("invalid policies:\n{}", errors.join("\n"))),
        };
        Ok(Policies { set, dir: dir.to_path_buf(), stamp: dir_stamp(dir) })
    }

    /// Reloads when asked (SIGHUP) or when the directory changed.
    /// Returns whether the running set was replaced.
    pub(super) fn reload_if_changed(&mut self, asked: bool) -> bool {
        let stamp = dir_stamp(&self.dir);
        if asked || stamp != self.stamp {
            self.stamp = stamp;
            return self.reload();
        }
        false
    }

    /// An invalid policy never replaces the running set.
    fn reload(&mut self) -> bool {
        match load_policy_dir(&self.dir).map(|p| PolicySet::new(p, true)) {
            Ok(Ok(set)) => {
                self.set = set;
                tracing::info!(dir = %self.dir.display(), "policies reloaded");
                return true;
            }
            Ok(Err(e)) => tracing::error!("policies not reloaded, the previous ones stay in force: {e}"),
            Err(errors) => {
                for e in errors {
                    tracing::error!("{e}");
                }
                tracing::error!("policies not reloaded, the previous ones stay in force");
            }
        }
        false
    }
}
