//! fanotify's exec permission events name the *file*, so a multi-call binary
//! (busybox: `sh`, `nc`, `wget`, … are one inode, the applet chosen by
//! argv[0]) could only be approved whole. [`Enforcer::set_applets`] lists
//! such a file for a container with the applets it may run; with
//! [`PolicyFlags::KILL_APPLET`] set, `enf_exec` reads argv[0] of every exec
//! of that file from the new image and kills the process before its first
//! instruction when the applet is not listed (also when busybox re-executes
//! itself through `/proc/self/exe` with argv[0] = the applet, or runs
//! `busybox APPLET`). Other execs pay one hash lookup. What no exec hook
//! can see: busybox's `sh` runs its NOFORK applets (`echo`, `true`, `test`,
//! …) in the shell and its NOEXEC applets (`id`, `ls`, `cp`, `rm`, `env`, … in
//! Debian's build) in a forked child without any exec, so an allowed `sh`
//! runs those unchecked.

use super::{delete, key_cgid, kill_key, map_err, EnforceError, Enforcer, Result, APPLET_KEY_LEN, APPLET_NAME_MAX, DISPATCHER_MAX};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;

impl Enforcer {
    /// Makes `dev`/`ino` a multi-call file of `cgid` whose execs (with the
    /// KILL_APPLET flag set) run only as one of `names`, replacing what was
    /// allowed for it before. `dispatcher` is the name under which the file
    /// runs the applet named by its next argument ([`BUSYBOX_DISPATCHER`](super::BUSYBOX_DISPATCHER)
    /// for busybox, None for a binary that has none); a dispatcher alone
    /// (`busybox` without an applet) is never allowed.
    ///
    /// Names are what argv[0] is judged by: basenames (no '/'), at most
    /// [`APPLET_NAME_MAX`] bytes; an empty list lets no applet run. The
    /// update never refuses an applet that stays allowed: new names are
    /// added, then the file is listed, then stale names are removed. On
    /// error nothing was removed (some new names may already be allowed).
    pub fn set_applets(&self, cgid: u64, dev: u32, ino: u64, dispatcher: Option<&str>, names: &[&str]) -> Result<()> {
        let disp = dispatcher_value(dispatcher)?;
        let mut want = std::collections::BTreeSet::new();
        for name in names {
            check_applet_name(name, dispatcher)?;
            want.insert(*name);
        }
        let what = || format!("cgroup {cgid}, dev {dev:#x}, inode {ino}");
        let file = kill_key(cgid, dev, ino);
        let have: Vec<Vec<u8>> = self.applets.keys().filter(|k| k.get(..24) == Some(&file[..])).collect();
        for name in &want {
            self.applets.update(&applet_key(&file, name), &1u32.to_ne_bytes(), MapFlags::ANY).map_err(map_err("applets", what()))?;
        }
        self.multicall.update(&file, &disp, MapFlags::ANY).map_err(map_err("multicall", what()))?;
        for k in have {
            if !want.contains(key_applet_name(&k).as_str()) {
                delete(&self.applets, &k).map_err(map_err("applets", what()))?;
            }
        }
        Ok(())
    }

    /// Stops checking the applets of `dev`/`ino` in `cgid` (every applet of
    /// it runs again) and forgets its list.
    pub fn forget_applets(&self, cgid: u64, dev: u32, ino: u64) -> Result<()> {
        let what = || format!("cgroup {cgid}, dev {dev:#x}, inode {ino}");
        let file = kill_key(cgid, dev, ino);
        // The file first: while its list shrinks, no exec is judged by half of it.
        delete(&self.multicall, &file).map_err(map_err("multicall", what()))?;
        for k in self.applets.keys().filter(|k| k.get(..24) == Some(&file[..])).collect::<Vec<_>>() {
            delete(&self.applets, &k).map_err(map_err("applets", what()))?;
        }
        Ok(())
    }

    /// [`Enforcer::forget_applets`] for every multi-call file of `cgid`.
    pub fn clear_applets(&self, cgid: u64) -> Result<()> {
        for k in self.multicall.keys().filter(|k| key_cgid(k) == Some(cgid)).collect::<Vec<_>>() {
            delete(&self.multicall, &k).map_err(map_err("multicall", format!("cgroup {cgid}")))?;
        }
        for k in self.applets.keys().filter(|k| key_cgid(k) == Some(cgid)).collect::<Vec<_>>() {
            delete(&self.applets, &k).map_err(map_err("applets", format!("cgroup {cgid}")))?;
        }
        Ok(())
    }

    /// The multi-call files of `cgid` with their allowed applets (sorted),
    /// for status and tests. Applets left without their file (by an update
    /// cut short) are not listed.
    pub fn applets(&self, cgid: u64) -> Result<Vec<MulticallFile>> {
        let mut files = Vec::new();
        for k in self.multicall.keys().filter(|k| key_cgid(k) == Some(cgid)) {
            let Some(v) = self.multicall.lookup(&k, MapFlags::ANY).map_err(map_err("multicall", format!("cgroup {cgid}")))? else {
                continue;
            };
            let (Some(ino), Some(dev)) = (
                k.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes),
                k.get(16..20).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes),
            ) else {
                continue;
            };
            let dispatcher = nul_padded(&v);
            let mut applets: Vec<String> =
                self.applets.keys().filter(|a| a.get(..24) == k.get(..24)).map(|a| key_applet_name(&a)).collect();
            applets.sort();
            files.push(MulticallFile { dev, ino, dispatcher: (!dispatcher.is_empty()).then_some(dispatcher), applets });
        }
        files.sort_by_key(|f| (f.dev, f.ino));
        Ok(files)
    }
}

/// A multi-call file of one container and the applets it may run as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MulticallFile {
    /// The kernel's dev (as `exe_dev`) and the inode.
    pub dev: u32,
    pub ino: u64,
    pub dispatcher: Option<String>,
    pub applets: Vec<String>,
}

/// Refuses a name the kernel could never match as it is meant: it judges
/// the basename of argv[0], at most [`APPLET_NAME_MAX`] bytes.
pub(super) fn check_applet_name(name: &str, dispatcher: Option<&str>) -> Result<()> {
    let why = if name.is_empty() {
        "is empty (an empty argv[0] is never allowed)"
    } else if name.len() > APPLET_NAME_MAX {
        "is longer than 31 bytes: the kernel cuts argv[0] there and never allows a cut name"
    } else if name.contains('/') {
        "contains '/': applets are judged by the basename of argv[0]"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if dispatcher.is_some_and(|d| name.starts_with(d)) {
        "begins with the dispatcher: such an argv[0] is judged by the next argument, never by itself"
    } else {
        return Ok(());
    };
    Err(EnforceError::AppletName { name: name.to_string(), why })
}

/// The `multicall` value: the dispatcher, NUL-padded.
pub(super) fn dispatcher_value(dispatcher: Option<&str>) -> Result<[u8; DISPATCHER_MAX + 1]> {
    let mut v = [0u8; DISPATCHER_MAX + 1];
    let Some(d) = dispatcher else { return Ok(v) };
    let why = if d.is_empty() {
        "is empty (use None for a binary without one)"
    } else if d.len() > DISPATCHER_MAX {
        "is longer than 15 bytes"
    } else if d.contains('/') || d.contains('\0') {
        "contains '/' or a NUL byte"
    } else {
        v[..d.len()].copy_from_slice(d.as_bytes());
        return Ok(v);
    };
    Err(EnforceError::Dispatcher { name: d.to_string(), why })
}

/// `struct lancet_applet_key`: the file's key, then the name NUL-padded.
pub(super) fn applet_key(file: &[u8; 24], name: &str) -> [u8; APPLET_KEY_LEN] {
    let mut k = [0u8; APPLET_KEY_LEN];
    k[..24].copy_from_slice(file);
    k[24..24 + name.len()].copy_from_slice(name.as_bytes());
    k
}

pub(super) fn key_applet_name(k: &[u8]) -> String {
    nul_padded(k.get(24..).unwrap_or_default())
}

pub(super) fn nul_padded(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::BUSYBOX_DISPATCHER;

    #[test]
    fn applet_names_the_kernel_cannot_match_are_refused() {
        let bb = Some(BUSYBOX_DISPATCHER);
        for ok in ["sh", "nc", "-sh", "s".repeat(31).as_str(), "[["] {
            check_applet_name(ok, bb).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in ["", "s".repeat(32).as_str(), "bin/sh", "a\0b", "busybox", "busybox.static"] {
            let e = check_applet_name(bad, bb).expect_err(bad);
            assert!(matches!(e, EnforceError::AppletName { .. }), "{e}");
        }
        check_applet_name("busybox", None).unwrap();
        let long = check_applet_name(&"x".repeat(40), None).unwrap_err().to_string();
        assert!(long.contains("longer than 31 bytes"), "{long}");
    }

    #[test]
    fn applet_keys_and_dispatchers_are_laid_out_as_the_header_says() {
        let file = kill_key(7, 0x80_0001, 42);
        let k = applet_key(&file, "nc");
        assert_eq!(&k[..24], &file[..]);
        assert_eq!(&k[24..27], b"nc\0");
        assert!(k[26..].iter().all(|&b| b == 0));
        assert_eq!(key_cgid(&k), Some(7));
        assert_eq!(key_applet_name(&k), "nc");
        assert_eq!(key_applet_name(&applet_key(&file, &"a".repeat(31))), "a".repeat(31));
        assert_eq!(dispatcher_value(None).unwrap(), [0u8; 16]);
        assert_eq!(&dispatcher_value(Some("busybox")).unwrap()[..8], b"busybox\0");
        assert!(dispatcher_value(Some("")).is_err());
        assert!(dispatcher_value(Some(&"d".repeat(16))).is_err());
    }
}
