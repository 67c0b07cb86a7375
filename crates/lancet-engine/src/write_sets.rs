//! Where a workload writes by design, and what it must never write.
//!
//! A stateful service writes all day: Redis saves `temp-<pid>.rdb` and
//! renames it, PostgreSQL makes `base/<oid>/` for every new database, both
//! keep pid files and sockets under `/run`. A profile that learned exact
//! directories for a minute cannot know those, and protect mode would then
//! break the service (Redis refuses every client write once a save fails).
//! So writes are judged against two sets instead:
//!
//! - the **writable set**, by design and recursive: every mount other than
//!   the root filesystem (volumes, binds, tmpfs), the image's declared
//!   volumes, directories the service's own user owns (or that are
//!   world-writable with the sticky bit), scratch (`/tmp`, `/var/tmp`,
//!   `/run`, `/dev/shm`), what a policy declares, and the anchors the
//!   profile learned. Writes there are allowed without an alert.
//! - the **protected set**: code, system configuration and the places
//!   persistence lives (`/usr`, `/bin`, `/etc`, cron, `.ssh`, shell rc
//!   files, `/root`, package databases). Writes there are refused in
//!   protect mode and alerted in monitor, whatever was learned. Only a
//!   mount the operator gave the container (a volume on `/etc/app`) or a
//!   policy's own entry takes a path out of it.
//!
//! Everything else is allowed, with one alert per anchor per container
//! life. An *anchor* is the directory a write is remembered by: the
//! writable directory that holds it, else a short prefix under the usual
//! data roots (`/var/lib/<a>/<b>`), with numbers, hex ids and pids in path
//! components collapsed (`base/16390` → `base/*`), so that a service's
//! normal life folds into a few entries.

use std::borrow::Cow;

/// Directories every container may write: scratch space by convention.
pub const SCRATCH: [&str; 4] = ["/tmp", "/var/tmp", "/run", "/dev/shm"];

/// Roots under which a learned write is remembered two levels deep
/// (`/var/lib/postgresql/15` for a write in `/var/lib/postgresql/15/main/base/16390`).
const DATA_ROOTS: [&str; 6] = ["/var/lib", "/var/cache", "/var/log", "/srv", "/data", "/opt"];

/// Entries a writable set holds at most: the container's mounts and owned
/// directories come from files the container can shape, so it is bounded.
pub const MAX_WRITABLE: usize = 256;

/// Why a directory is in the writable set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WritableKind {
    /// A mount of the container's other than its root filesystem (a volume,
    /// a bind mount, a tmpfs): the operator gave it to the container.
    Mount,
    /// A volume the image declares (`Config.Volumes`).
    ImageVolume,
    /// Declared writable by a policy.
    Policy,
    /// Owned by the user the container runs as (not root).
    Owned,
    /// World-writable with the sticky bit (mode 1777 or 3777).
    Shared,
    /// Scratch space by convention ([`SCRATCH`]).
    Scratch,
    /// An anchor the profile learned.
    Learned,
}

impl WritableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WritableKind::Mount => "mount",
            WritableKind::ImageVolume => "image volume",
            WritableKind::Policy => "policy",
            WritableKind::Owned => "owned by the service",
            WritableKind::Shared => "world-writable, sticky",
            WritableKind::Scratch => "scratch",
            WritableKind::Learned => "learned",
        }
    }

    /// The operator's own decision: it takes a path out of the protected
    /// set.
    fn overrides_protection(self) -> bool {
        matches!(self, WritableKind::Mount | WritableKind::Policy | WritableKind::ImageVolume)
    }
}

/// One directory of the writable set, as the container sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritableDir {
    pub path: String,
    pub kind: WritableKind,
}

/// The writable set of one container: clean absolute directories, each
/// covering everything below it. Bounded by [`MAX_WRITABLE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritableSet {
    dirs: Vec<WritableDir>,
    /// Entries refused because the set was full.
    pub overflow: u64,
}

impl Default for WritableSet {
    /// The set every container has: scratch.
    fn default() -> Self {
        let mut s = WritableSet { dirs: Vec::new(), overflow: 0 };
        for d in SCRATCH {
            s.add(d, WritableKind::Scratch);
        }
        s
    }
}

impl WritableSet {
    /// Adds `path` (cleaned; a path that is not absolute, or has `..`, is
    /// refused). A path already there keeps the kind that protects least
    /// (an operator's mount wins over an owned directory). Returns whether
    /// the set changed.
    pub fn add(&mut self, path: &str, kind: WritableKind) -> bool {
        let Some(path) = clean(path) else { return false };
        if let Some(d) = self.dirs.iter_mut().find(|d| d.path == path) {
            if kind < d.kind {
                d.kind = kind;
                return true;
            }
            return false;
        }
        if self.dirs.len() >= MAX_WRITABLE {
            self.overflow += 1;
            return false;
        }
        self.dirs.push(WritableDir { path: path.into_owned(), kind });
        true
    }

    pub fn dirs(&self) -> &[WritableDir] {
        &self.dirs
    }

    /// The deepest entry that is `path` or one of its ancestors.
    ///
    /// Asked up to three times per write: an entry whose first character
    /// after the '/' differs is passed over before any comparison.
    pub fn covering(&self, path: &str) -> Option<&WritableDir> {
        let second = path.as_bytes().get(1);
        self.dirs
            .iter()
            .filter(|d| (d.path.len() < 2 || d.path.as_bytes().get(1) == second) && is_under(path, &d.path))
            .max_by_key(|d| d.path.len())
    }

    /// Entries inside the protected set that stay writable because the
    /// operator said so or the service owns them (`/etc/redis`): the
    /// read-only mounts of protect mode leave them writable.
    pub fn carve_outs(&self) -> impl Iterator<Item = &WritableDir> {
        self.dirs.iter().filter(|d| protected(&d.path).is_some() && exempt(&d.path, d.kind))
    }
}

/// Code and root's home.
const SYSTEM: [&str; 9] = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/root"];
/// Package databases (`/lib/apk/db` lies in `/lib`).
const PACKAGES: [&str; 5] = ["/var/lib/dpkg", "/var/lib/apt", "/var/lib/rpm", "/var/lib/pacman", "/var/lib/yum"];
const CRON: [&str; 3] = ["/var/spool/cron", "/var/spool/anacron", "/var/spool/at"];

/// The directories of the protected set, for the read-only mounts of
/// protect mode (`.ssh` directories and shell rc files anywhere are
/// protected too, but have no fixed place).
pub fn protected_dirs() -> impl Iterator<Item = &'static str> {
    SYSTEM.into_iter().chain(["/etc"]).chain(PACKAGES).chain(CRON)
}

/// Why a path is protected: the name of its entry of the protected set.
///
/// Every file event of a container asks, so the fixed places are settled
/// by the path's first component alone, and the names found anywhere
/// (`.ssh`, shell rc files) are looked for only in a path with a dotted
/// component: a few byte scans instead of a comparison per entry.
pub fn protected(path: &str) -> Option<&'static str> {
    const RC_FILES: [&str; 12] = [
        ".bashrc",
        ".bash_profile",
        ".bash_login",
        ".bash_logout",
        ".profile",
        ".zshrc",
        ".zshenv",
        ".zprofile",
        ".zlogin",
        ".kshrc",
        ".cshrc",
        ".tcshrc",
    ];
    // Byte scans: a `char` pattern compares each match through `memcmp`.
    let first = path.strip_prefix('/').map(|rest| rest.bytes().position(|b| b == b'/').map_or(rest, |i| &rest[..i]));
    match first {
        Some("root") => return Some("root's home"),
        Some(f) if SYSTEM.iter().any(|d| &d[1..] == f) => return Some("system files"),
        Some("var") => {
            if PACKAGES.iter().any(|d| is_under(path, d)) {
                return Some("package database");
            }
            if CRON.iter().any(|d| is_under(path, d)) {
                return Some("cron");
            }
        }
        _ => {}
    }
    if path.starts_with('.') || path.as_bytes().windows(2).any(|w| w == b"/.") {
        if path.split('/').any(|c| c == ".ssh") {
            return Some("ssh keys");
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        if RC_FILES.contains(&name) {
            return Some("shell start-up file");
        }
    }
    if first == Some("etc") {
        return Some(etc_entry(path));
    }
    None
}

/// The protected entry a path below `/etc` falls under (for the alert).
fn etc_entry(path: &str) -> &'static str {
    let rest = path.strip_prefix("/etc/").unwrap_or("");
    let first = rest.split('/').next().unwrap_or("");
    match first {
        "ld.so.preload" | "ld.so.conf" | "ld.so.conf.d" | "ld.so.cache" => "dynamic loader",
        "passwd" | "passwd-" | "shadow" | "shadow-" | "group" | "group-" | "gshadow" | "gshadow-" | "sudoers" | "sudoers.d" | "pam.d"
        | "security" => "accounts and authentication",
        "ssh" => "ssh keys",
        f if f.starts_with("cron") || f == "anacrontab" => "cron",
        f if f.starts_with("profile") || f.starts_with("bash") || f == "environment" || f == "zsh" => "shell start-up file",
        _ => "system configuration",
    }
}

/// Whether a writable entry inside the protected set stays writable: the
/// operator's mounts and policy entries; a directory the service owns
/// directly under `/etc` (`/etc/redis`), unless it is one of the entries
/// persistence lives in.
fn exempt(path: &str, kind: WritableKind) -> bool {
    if kind.overrides_protection() {
        return true;
    }
    kind == WritableKind::Owned
        && path.strip_prefix("/etc/").is_some_and(|app| !app.is_empty() && !app.contains('/'))
        && etc_entry(path) == "system configuration"
}

/// How a write is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteClass<'a> {
    /// In the writable set: allowed, no alert.
    Writable(&'a WritableDir),
    /// In the protected set: refused in protect mode, alerted in monitor.
    Protected(&'static str),
    /// Neither: allowed, one alert per anchor per container life (unless
    /// the profile learned its anchor).
    Outside,
}

/// Judges a write at `path` (the file or directory written).
pub fn classify_write<'a>(path: &str, set: &'a WritableSet) -> WriteClass<'a> {
    let covering = set.covering(path);
    match protected(path) {
        // The carve-out must itself hold the path: a volume at /etc/app does
        // not open /etc.
        Some(_) if covering.is_some_and(|d| exempt(&d.path, d.kind)) => WriteClass::Writable(covering.expect("checked")),
        Some(why) => WriteClass::Protected(why),
        None => covering.map_or(WriteClass::Outside, WriteClass::Writable),
    }
}

/// The anchor a write in directory `dir` is remembered by: the writable
/// directory holding it; else two levels under a data root
/// (`/var/lib/postgresql/15`), or the directory itself; with numbers, hex
/// ids and pids collapsed in every component.
pub fn anchor(dir: &str, set: &WritableSet) -> String {
    if let Some(d) = set.covering(dir) {
        return d.path.clone();
    }
    collapsed_anchor(dir)
}

/// [`anchor`] without a writable set: what a profile learns.
pub fn collapsed_anchor(dir: &str) -> String {
    let comps: Vec<&str> = dir.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let keep =
        DATA_ROOTS.iter().find(|r| is_under(dir, r)).map(|r| r.split('/').filter(|c| !c.is_empty()).count() + 2).unwrap_or(comps.len());
    let mut out = String::with_capacity(dir.len());
    for c in comps.iter().take(keep) {
        out.push('/');
        out.push_str(&collapse(c));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// One path component with what changes from run to run replaced by `*`:
/// all digits (`16390`, a pid), a long hex id or a UUID, and runs of three
/// or more digits inside a name (`temp-167.rdb` → `temp-*.rdb`,
/// `PostgreSQL.1804289383` → `PostgreSQL.*`). Short digit runs stay:
/// `python3.11`, `15` in `/var/lib/postgresql/15` (a version) is kept only
/// because it is short.
pub fn collapse(component: &str) -> Cow<'_, str> {
    let b = component.as_bytes();
    if b.is_empty() {
        return Cow::Borrowed(component);
    }
    let all_digits = b.iter().all(u8::is_ascii_digit);
    let hex_id = b.len() >= 12 && b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-') && b.iter().any(u8::is_ascii_digit);
    if (all_digits && b.len() > 2) || hex_id {
        return Cow::Borrowed("*");
    }
    if all_digits {
        return Cow::Borrowed(component);
    }
    let mut out = String::new();
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i - start >= 3 {
            out.push('*');
            changed = true;
        } else if i > start {
            out.push_str(&component[start..i]);
        } else {
            // One character (not a digit): copy it whole (it may be more
            // than one byte).
            let ch = component[i..].chars().next().expect("not at the end");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(component)
    }
}

/// `path` is `dir` or below it (both clean absolute paths).
pub fn is_under(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// An absolute path without `.`/`..`, repeated or trailing slashes; None
/// when it is not absolute or climbs.
fn clean(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if comps.contains(&"..") {
        return None;
    }
    let joined = format!("/{}", comps.join("/"));
    Some(if joined == path { Cow::Borrowed(path) } else { Cow::Owned(joined) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, WritableKind)]) -> WritableSet {
        let mut s = WritableSet::default();
        for (p, k) in entries {
            s.add(p, *k);
        }
        s
    }

    #[test]
    fn components_that_change_between_runs_collapse() {
        for (c, want) in [
            ("16390", "*"),
            ("1", "1"),
            ("15", "15"),
            ("temp-167.rdb", "temp-*.rdb"),
            ("PostgreSQL.1804289383", "PostgreSQL.*"),
            ("python3.11", "python3.11"),
            ("pg_stat_tmp", "pg_stat_tmp"),
            ("4f9a2c1e8b7d", "*"),
            ("123e4567-e89b-12d3-a456-426614174000", "*"),
            ("deadbeefcafe", "deadbeefcafe"),
            ("été-2026", "été-*"),
            ("", ""),
        ] {
            assert_eq!(collapse(c), want, "{c}");
        }
    }

    #[test]
    fn anchors_fold_a_services_life() {
        let empty = WritableSet { dirs: Vec::new(), overflow: 0 };
        assert_eq!(anchor("/var/lib/postgresql/15/main/base/16390", &empty), "/var/lib/postgresql/15");
        assert_eq!(anchor("/var/lib/postgresql/15/main/base/16391", &empty), "/var/lib/postgresql/15");
        assert_eq!(anchor("/var/lib/redis", &empty), "/var/lib/redis");
        assert_eq!(anchor("/opt/app/cache/123456", &empty), "/opt/app/cache");
        assert_eq!(anchor("/www/uploads/20261206", &empty), "/www/uploads/*");
        assert_eq!(anchor("/", &empty), "/");
        // The writable directory that holds it is the anchor.
        let s = set(&[("/var/lib/redis", WritableKind::Owned)]);
        assert_eq!(anchor("/var/lib/redis/appendonlydir", &s), "/var/lib/redis");
        assert_eq!(anchor("/tmp/x/y", &s), "/tmp");
    }

    #[test]
    fn the_protected_set() {
        for (p, why) in [
            ("/usr/bin/x", "system files"),
            ("/bin", "system files"),
            ("/lib64/ld-linux-x86-64.so.2", "system files"),
            ("/root/.bashrc", "root's home"),
            ("/etc/passwd", "accounts and authentication"),
            ("/etc/ld.so.preload", "dynamic loader"),
            ("/etc/cron.d/x", "cron"),
            ("/var/spool/cron/crontabs/root", "cron"),
            ("/var/lib/postgresql/.ssh/authorized_keys", "ssh keys"),
            ("/home/app/.profile", "shell start-up file"),
            ("/var/lib/dpkg/status", "package database"),
            ("/etc/nginx/nginx.conf", "system configuration"),
            ("/etc/profile.d/x.sh", "shell start-up file"),
        ] {
            assert_eq!(protected(p), Some(why), "{p}");
        }
        for p in ["/var/lib/redis/dump.rdb", "/tmp/x", "/etc2/x", "/usrx", "/var/spool/postfix", "/run/postgresql/.s.PGSQL.5432"] {
            assert_eq!(protected(p), None, "{p}");
        }
        // Every fixed entry, itself and below, and nothing beside it.
        for d in SYSTEM.into_iter().chain(PACKAGES).chain(CRON).chain(["/etc"]) {
            assert!(protected(d).is_some() && protected(&format!("{d}/x/y")).is_some(), "{d}");
            assert_eq!(protected(&format!("{d}x")), None, "{d}x");
        }
        assert_eq!(protected("/var/lib/x/.ssh"), Some("ssh keys"));
        assert_eq!(protected(".ssh/id_rsa"), Some("ssh keys"));
        assert_eq!(protected(".bashrc"), Some("shell start-up file"));
        assert_eq!(protected("/etc/skel/.bashrc"), Some("shell start-up file"));
        assert_eq!(protected("/"), None);
    }

    #[test]
    fn writes_are_judged_by_both_sets() {
        let s = set(&[
            ("/var/lib/redis", WritableKind::Owned),
            ("/etc/redis", WritableKind::Owned),
            ("/etc/cron.d", WritableKind::Owned),
            ("/data", WritableKind::Mount),
            ("/etc/app", WritableKind::Mount),
            ("/usr/local/app", WritableKind::Owned),
            ("/var/lib/redis/.ssh", WritableKind::Learned),
        ]);
        assert!(matches!(classify_write("/var/lib/redis/temp-167.rdb", &s), WriteClass::Writable(d) if d.kind == WritableKind::Owned));
        assert!(matches!(classify_write("/tmp/x", &s), WriteClass::Writable(d) if d.kind == WritableKind::Scratch));
        assert!(matches!(classify_write("/data/x/y", &s), WriteClass::Writable(d) if d.kind == WritableKind::Mount));
        // A service's own /etc/<app> directory stays writable; cron does
        // not, whoever owns it.
        assert!(matches!(classify_write("/etc/redis/redis.conf", &s), WriteClass::Writable(_)));
        assert_eq!(classify_write("/etc/cron.d/evil", &s), WriteClass::Protected("cron"));
        // An operator's mount at /etc/app opens that mount only.
        assert!(matches!(classify_write("/etc/app/x", &s), WriteClass::Writable(_)));
        assert_eq!(classify_write("/etc/passwd", &s), WriteClass::Protected("accounts and authentication"));
        // Owned or learned does not open the protected set.
        assert_eq!(classify_write("/usr/local/app/x", &s), WriteClass::Protected("system files"));
        assert_eq!(classify_write("/var/lib/redis/.ssh/authorized_keys", &s), WriteClass::Protected("ssh keys"));
        assert_eq!(classify_write("/srv/www/x", &s), WriteClass::Outside);
        let carve: Vec<&str> = s.carve_outs().map(|d| d.path.as_str()).collect();
        assert_eq!(carve, ["/etc/redis", "/etc/app"]);
    }

    #[test]
    fn the_set_is_clean_and_bounded() {
        let mut s = WritableSet::default();
        assert!(!s.add("relative", WritableKind::Mount));
        assert!(!s.add("/a/../etc", WritableKind::Mount));
        assert!(s.add("//data/./x/", WritableKind::Owned));
        assert_eq!(s.covering("/data/x/y").map(|d| d.path.as_str()), Some("/data/x"));
        // The kind that protects least wins.
        assert!(s.add("/data/x", WritableKind::Mount));
        assert_eq!(s.covering("/data/x").map(|d| d.kind), Some(WritableKind::Mount));
        assert!(!s.add("/data/x", WritableKind::Learned));
        for i in 0..MAX_WRITABLE * 2 {
            s.add(&format!("/d{i}"), WritableKind::Learned);
        }
        assert_eq!(s.dirs().len(), MAX_WRITABLE);
        assert!(s.overflow > 0);
        assert!(!is_under("/variable", "/var"));
        assert!(is_under("/var/x", "/var"));
        assert!(is_under("/x", "/"));
    }
}
