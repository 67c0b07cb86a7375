//! Drift: an executable that did not ship in the image.
//!
//! Containers are immutable, so anything run from a file that was written,
//! modified or made executable after the container started, from tmpfs or a
//! memfd, from a deleted file, or handed to the dynamic loader or a script
//! interpreter while not being part of the image, is illegitimate. This module
//! classifies exec events (pure: the caller supplies what it learned from the
//! filesystem) and remembers, per container and bounded, which process wrote
//! which file, so a drift report can say how the file got there.

use crate::event::{Event, EventKind, ExecEvent, FileOp};
use serde::Serialize;
use std::collections::hash_map;
use std::fmt;

/// `statfs` magic numbers of the filesystems that matter here.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
pub const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
pub const OVERLAYFS_MAGIC: u64 = 0x794c_7630;

/// How an executable drifted from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// Created or copied in after the container started.
    Written,
    /// An image file overwritten or changed after start.
    Modified,
    /// Made executable at runtime (chmod +x).
    MadeExecutable,
    /// Run from tmpfs (`/dev/shm`, a tmpfs mount).
    Tmpfs,
    /// Run from an anonymous memory file (`memfd_create` + `fexecve`).
    Memfd,
    /// The file was deleted (nlink 0) when it ran.
    Deleted,
    /// A non-image file run through the dynamic loader (`ld-linux*.so FILE`).
    Loader,
    /// A non-image file handed to a script interpreter (`sh FILE`).
    Interpreter,
    /// Not in the image baseline (where one is known).
    NotInImage,
    /// Run from a volume, a bind mount or any mount of the container other
    /// than its image root: nothing there is an image file.
    Volume,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Written => "written",
            DriftKind::Modified => "modified",
            DriftKind::MadeExecutable => "made_executable",
            DriftKind::Tmpfs => "tmpfs",
            DriftKind::Memfd => "memfd",
            DriftKind::Deleted => "deleted",
            DriftKind::Loader => "loader",
            DriftKind::Interpreter => "interpreter",
            DriftKind::NotInImage => "not_in_image",
            DriftKind::Volume => "volume",
        }
    }
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who wrote a file, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub time_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub op: FileOp,
}

/// One drift finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub kind: DriftKind,
    /// The file that drifted, as the container sees it.
    pub path: String,
    /// How the file got there, when it was seen being written.
    pub origin: Option<Origin>,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            DriftKind::Written => "executable written after the container started",
            DriftKind::Modified => "image file modified after the container started",
            DriftKind::MadeExecutable => "file made executable at runtime",
            DriftKind::Tmpfs => "executable run from tmpfs",
            DriftKind::Memfd => "executable run from a memfd",
            DriftKind::Deleted => "executable deleted before it ran",
            DriftKind::Loader => "non-image file run through the dynamic loader",
            DriftKind::Interpreter => "non-image file run by a script interpreter",
            DriftKind::NotInImage => "executable not in the image baseline",
            DriftKind::Volume => "executable run from a volume or mount outside the image",
        };
        write!(f, "{what}: {}", self.path)?;
        if let Some(o) = &self.origin {
            write!(f, " ({} by {}[{}])", o.op.evt_type(), o.comm, o.pid)?;
        }
        Ok(())
    }
}

/// What the caller knows about a file from the filesystem (overlay upper
/// layer, the image baseline), for [`classify_exec`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileFacts {
    /// The file lies in the container's writable layer (created or copied up
    /// after start). None: storage is not overlay, or unknown.
    pub in_upper: Option<bool>,
    /// The path is in the image baseline. None: no baseline known.
    pub in_baseline: Option<bool>,
}

/// Interpreters whose first non-option argument is a script they run.
const INTERPRETERS: &[&str] =
    &["sh", "ash", "bash", "dash", "zsh", "ksh", "busybox", "python", "python2", "python3", "perl", "ruby", "node", "php", "lua"];

/// Whether a program run under this name (a path or a basename) runs a
/// script it is handed (`sh FILE`, `python3 FILE`): its execs must be
/// looked at one by one, never approved once for all.
pub fn is_interpreter(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or("");
    let base = base.strip_prefix('-').unwrap_or(base);
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    INTERPRETERS.contains(&base) || INTERPRETERS.contains(&stem)
}

/// Where an interpreter (or the dynamic loader) takes the program it runs
/// from, read from its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramSource {
    /// A file operand (`sh FILE`, `python3 FILE`, `ld.so FILE`), made
    /// absolute against the exec's working directory.
    File(String),
    /// Inline code (`sh -c CODE`, `python3 -c CODE`, `perl -e CODE`), as
    /// given (see [`normalise_code`]); several `-e` are joined by newlines.
    Code(String),
    /// The program comes on standard input: no operand (`… | sh`), `sh -s`,
    /// or `-` as the operand.
    Stdin,
    /// Nothing to judge here: a module by name (`python3 -m`), a version
    /// query, a loader option that lists rather than runs.
    Other,
}

/// Interpreter families, by how their command lines name the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Loader,
    Shell,
    Python,
    /// perl, ruby: repeatable `-e CODE`.
    PerlLike,
    Node,
    Php,
    Lua,
}

fn family(name: &str) -> Option<Family> {
    if name.starts_with("ld-linux") || name.starts_with("ld-musl") || name == "ld.so" {
        return Some(Family::Loader);
    }
    if !is_interpreter(name) {
        return None;
    }
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    Some(match stem {
        "python" => Family::Python,
        "perl" | "ruby" => Family::PerlLike,
        "node" => Family::Node,
        "php" => Family::Php,
        "lua" => Family::Lua,
        _ => Family::Shell,
    })
}

/// The name a re-exec of `/proc/self/exe` runs as: argv\[0\]'s basename
/// (busybox runs its applets so; the kernel then names the process `exe`).
/// None for any other exec, whose file names it.
pub fn reexec_name(exec: &ExecEvent) -> Option<&str> {
    let base = exec.filename.rsplit('/').next().unwrap_or("");
    if !(exec.filename.starts_with("/proc/") && base == "exe") {
        return None;
    }
    let argv0 = exec.argv.first()?;
    Some(argv0.rsplit('/').next().unwrap_or(argv0).trim_start_matches('-')).filter(|n| !n.is_empty())
}

/// The name an exec runs as, for judging its arguments, and where its own
/// arguments start: the path's basename, except that a re-exec of
/// `/proc/self/exe` runs as argv\[0\] and `busybox NAME …` as NAME.
fn run_as(exec: &ExecEvent) -> Option<(&str, usize)> {
    let base = exec.filename.rsplit('/').next().unwrap_or("");
    let reexec = exec.filename.starts_with("/proc/") && base == "exe";
    let mut name = if reexec { reexec_name(exec)? } else { base };
    let mut start = 1;
    // `busybox sh FILE`, also as a re-exec named busybox.
    if name == "busybox" {
        name = exec.argv.get(1)?.as_str();
        start = 2;
    }
    Some((name, start))
}

/// How an exec of an interpreter or of the dynamic loader gets its
/// program: `None` when the exec is neither. Options are read per family
/// (`sh -e FILE` runs FILE; `perl -e CODE` runs CODE), and the options
/// that take a value skip it.
pub fn program_source(exec: &ExecEvent) -> Option<(DriftKind, ProgramSource)> {
    let (name, start) = run_as(exec)?;
    let fam = family(name)?;
    let kind = if fam == Family::Loader { DriftKind::Loader } else { DriftKind::Interpreter };
    let args = exec.argv.get(start..).unwrap_or(&[]);
    let file = |a: &str| {
        if a == "-" {
            ProgramSource::Stdin
        } else if a.starts_with('/') {
            ProgramSource::File(a.to_string())
        } else {
            ProgramSource::File(format!("{}/{}", exec.cwd.trim_end_matches('/'), a))
        }
    };
    let mut code: Option<String> = None;
    let mut add_code = |c: &str| match code.as_mut() {
        Some(s) => {
            s.push('\n');
            s.push_str(c);
        }
        None => code = Some(c.to_string()),
    };
    let mut i = 0;
    // Shells: a `c` among the option letters makes the first operand the
    // code, an `s` makes standard input the program.
    let (mut inline, mut stdin) = (false, false);
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if a == "--" {
            break;
        }
        match fam {
            Family::Loader => match a {
                "--library-path" | "--preload" | "--audit" | "--argv0" | "--inhibit-rpath" => i += 1,
                _ if a.starts_with('-') => {}
                _ => return Some((kind, file(a))),
            },
            Family::Shell => {
                if a == "-o" || a == "+o" || a == "-O" || a == "+O" || a == "--rcfile" || a == "--init-file" {
                    i += 1;
                } else if a.starts_with("--") {
                } else if let Some(letters) = a.strip_prefix('-').filter(|l| !l.is_empty()) {
                    inline |= letters.contains('c');
                    stdin |= letters.contains('s');
                } else if a.starts_with('+') && a.len() > 1 {
                } else {
                    i -= 1;
                    break;
                }
            }
            Family::Python => {
                let Some(letters) = a.strip_prefix('-').filter(|l| !l.is_empty() && !l.starts_with('-')) else {
                    if a.starts_with("--") {
                        continue;
                    }
                    return Some((kind, file(a)));
                };
                for (at, c) in letters.char_indices() {
                    let rest = &letters[at + 1..];
                    let value = || if rest.is_empty() { args.get(i).map(String::as_str) } else { Some(rest) };
                    match c {
                        'c' => return Some((kind, ProgramSource::Code(value().unwrap_or("").to_string()))),
                        'm' => return Some((kind, ProgramSource::Other)),
                        'W' | 'X' => {
                            if rest.is_empty() {
                                i += 1;
                            }
                            break;
                        }
                        _ => {}
                    }
                }
            }
            Family::PerlLike if a.starts_with('-') && !a.starts_with("--") && a.len() > 1 => {
                let letters = &a[1..];
                match letters.as_bytes()[0] {
                    // Options whose value follows, attached or as the next argument.
                    b'I' | b'M' | b'm' | b'r' | b'C' | b'x' | b'i' | b'0' | b'F' | b'd' | b'D' => {
                        if letters.len() == 1 && matches!(letters, "I" | "M" | "m" | "r" | "C") {
                            i += 1;
                        }
                    }
                    _ => {
                        // A cluster such as `-lne CODE`: the code follows `e`.
                        if let Some(at) = letters.find(['e', 'E']) {
                            let rest = &letters[at + 1..];
                            if rest.is_empty() {
                                add_code(args.get(i).map(String::as_str).unwrap_or(""));
                                i += 1;
                            } else {
                                add_code(rest);
                            }
                        }
                    }
                }
            }
            Family::PerlLike | Family::Node | Family::Php | Family::Lua => {
                let (code_flags, value_flags): (&[&str], &[&str]) = match fam {
                    Family::PerlLike => (&[], &[]),
                    Family::Node => (&["-e", "--eval", "-p", "--print"], &["-r", "--require", "--import", "--loader"]),
                    Family::Php => (&["-r"], &["-c", "-d", "-z"]),
                    _ => (&["-e"], &["-l"]),
                };
                if let Some(f) = code_flags.iter().find(|f| a == **f || a.starts_with(&format!("{f}="))) {
                    let attached = &a[f.len()..];
                    if attached.is_empty() {
                        add_code(args.get(i).map(String::as_str).unwrap_or(""));
                        i += 1;
                    } else {
                        add_code(&attached[1..]);
                    }
                    continue;
                }
                if value_flags.contains(&a) {
                    i += 1;
                    continue;
                }
                if fam == Family::Php && a == "-f" {
                    return Some((kind, args.get(i).map_or(ProgramSource::Stdin, |f| file(f))));
                }
                if a.starts_with('-') && a != "-" {
                    continue;
                }
                // Once there is code, the operands are its arguments.
                return Some((kind, code.map_or_else(|| file(a), ProgramSource::Code)));
            }
        }
    }
    if let Some(c) = code {
        return Some((kind, ProgramSource::Code(c)));
    }
    let operand = args.get(i).map(String::as_str);
    let src = match (fam, operand) {
        (Family::Shell, _) if inline => ProgramSource::Code(operand.unwrap_or("").to_string()),
        (Family::Shell, _) if stdin => ProgramSource::Stdin,
        (Family::Shell, Some(a)) => file(a),
        (Family::Loader, _) => ProgramSource::Other,
        _ => ProgramSource::Stdin,
    };
    Some((kind, src))
}

/// Inline code as a profile keeps it: whitespace runs collapsed to one
/// space, none at either end, so `sh -c 'wget  …'` and a reflowed copy are
/// one entry.
pub fn normalise_code(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    for w in code.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out
}

/// The file an exec really runs besides the executable itself: the program
/// handed to the dynamic loader, or the script handed to an interpreter.
pub fn indirect_target(exec: &ExecEvent) -> Option<(DriftKind, String)> {
    match program_source(exec)? {
        (kind, ProgramSource::File(path)) => Some((kind, path)),
        _ => None,
    }
}

/// Classifies the executable of an exec event. `written` is what
/// [`WriteLog`] knows of the executed path; `facts` what the caller learned
/// from the filesystem. The checks run from the most specific to the most
/// general, and the first that holds names the drift.
pub fn classify_exec(exec: &ExecEvent, written: Option<&Origin>, facts: FileFacts) -> Option<Drift> {
    let inode = Inode { ino: exec.exe_ino, nlink: exec.exe_nlink, fs_magic: exec.exe_fs_magic };
    classify_file(&exec.filename, Some(inode), written, facts).map(|kind| Drift {
        kind,
        path: exec.filename.clone(),
        origin: written.cloned(),
    })
}

/// The identity of an executed file as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub nlink: u32,
    pub fs_magic: u64,
}

/// [`classify_exec`] without the event: `inode` is None where the caller
/// (the permission path) did not look. Allocates nothing.
pub fn classify_file(path: &str, inode: Option<Inode>, written: Option<&Origin>, facts: FileFacts) -> Option<DriftKind> {
    // Scripts: the kernel reports the interpreter's file, so the path tells.
    if path.starts_with("/dev/shm/") {
        return Some(DriftKind::Tmpfs);
    }
    if let Some(i) = inode {
        if i.nlink == 0 && i.ino != 0 {
            // memfds live on the kernel's internal shmem (or hugetlbfs) mount
            // and never have a link; anything else unlinked was deleted.
            let memfd = matches!(i.fs_magic, TMPFS_MAGIC | HUGETLBFS_MAGIC | RAMFS_MAGIC);
            return Some(if memfd { DriftKind::Memfd } else { DriftKind::Deleted });
        }
        if matches!(i.fs_magic, TMPFS_MAGIC | RAMFS_MAGIC) {
            return Some(DriftKind::Tmpfs);
        }
    }
    // A re-exec through an open file (`/proc/self/exe`, `fexecve` of a
    // linked file): the name says nothing about the file, and the inode
    // checks above covered what it can be.
    if path.starts_with("/proc/") || path.starts_with("/dev/fd/") {
        return None;
    }
    if let Some(o) = written {
        return Some(match o.op {
            // A file the image shipped as an executable, changed (a mode
            // change cannot make it "newly" executable).
            _ if facts.in_baseline == Some(true) => DriftKind::Modified,
            // Only a mode change: an existing file made runnable.
            FileOp::Chmod => DriftKind::MadeExecutable,
            _ => DriftKind::Written,
        });
    }
    if facts.in_upper == Some(true) {
        return Some(if facts.in_baseline == Some(true) { DriftKind::Modified } else { DriftKind::Written });
    }
    if facts.in_baseline == Some(false) {
        return Some(DriftKind::NotInImage);
    }
    None
}

/// Classifies the file an interpreter or the loader was asked to run (see
/// [`indirect_target`]): drift when it was written at runtime, lies in the
/// writable layer, or is outside the baseline.
pub fn classify_indirect(kind: DriftKind, path: &str, written: Option<&Origin>, facts: FileFacts) -> Option<Drift> {
    let drifted = written.is_some() || facts.in_upper == Some(true) || facts.in_baseline == Some(false) || path.starts_with("/dev/shm/");
    drifted.then(|| Drift { kind, path: path.to_string(), origin: written.cloned() })
}

/// Which process wrote which file, per container, bounded: at most
/// `per_container` paths per container (oldest forgotten first) and
/// `containers` containers.
///
/// A container writing new files all day (a log, a cache, temporary files)
/// evicts one entry per new name, so eviction is the hot path: each
/// container keeps a ring of entries, reused in place (no allocation per
/// file), and a table of ring positions by path hash; the oldest entry
/// leaves the table by its stored hash and position, without hashing or
/// comparing its path again. One hash of the new path per event.
#[derive(Debug)]
pub struct WriteLog {
    per_container: usize,
    containers: usize,
    /// By the caller's number for each container.
    logs: crate::FastMap<u64, ContainerWrites>,
    /// Keyed at random per process (like [`crate::FastMap`]): paths are the
    /// container's to choose.
    hasher: ahash::RandomState,
}

#[derive(Debug, Default)]
struct ContainerWrites {
    /// Positions in `ring`, by [`Entry::hash`].
    index: hashbrown::HashTable<u32>,
    ring: Vec<Entry>,
    /// The oldest entry once `ring` is full: the next one reused.
    oldest: usize,
}

/// An [`Origin`] kept in the ring: the command name inline (the kernel's
/// is at most 15 bytes), so an entry reused for a new name writes one heap
/// string (the path), not two.
#[derive(Debug)]
struct Entry {
    hash: u64,
    path: String,
    time_ns: u64,
    pid: u32,
    op: FileOp,
    comm: [u8; COMM_LEN],
    comm_len: u8,
}

/// The kernel's `TASK_COMM_LEN`, with its terminating NUL.
const COMM_LEN: usize = 16;

impl Entry {
    fn origin(&self) -> Origin {
        let comm = String::from_utf8_lossy(&self.comm[..self.comm_len as usize]).into_owned();
        Origin { time_ns: self.time_ns, pid: self.pid, comm, op: self.op }
    }

    /// A longer name (none comes from the kernel) is cut at a character.
    fn set_comm(&mut self, comm: &str) {
        let mut n = comm.len().min(COMM_LEN);
        while !comm.is_char_boundary(n) {
            n -= 1;
        }
        self.comm[..n].copy_from_slice(&comm.as_bytes()[..n]);
        self.comm_len = n as u8;
    }
}

impl ContainerWrites {
    fn find(&self, hash: u64, path: &str) -> Option<&Entry> {
        let i = *self.index.find(hash, |&i| self.ring[i as usize].path == path)?;
        Some(&self.ring[i as usize])
    }
}

impl WriteLog {
    pub fn new(per_container: usize, containers: usize) -> Self {
        WriteLog {
            per_container: per_container.clamp(1, u32::MAX as usize),
            containers: containers.max(1),
            logs: crate::FastMap::default(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// Records a file event of container `container` (the caller's number
    /// for it, given once: a 64-character id is not hashed per write):
    /// creates, writes, renames (the new name) and chmods. Other events are
    /// ignored.
    pub fn record(&mut self, container: u64, ev: &Event) {
        let EventKind::File(f) = &ev.kind else { return };
        if f.is_dir || !matches!(f.op, FileOp::Create | FileOp::Modify | FileOp::Rename | FileOp::Chmod) {
            return;
        }
        let full = self.logs.len() >= self.containers;
        let log = match self.logs.entry(container) {
            hash_map::Entry::Occupied(o) => o.into_mut(),
            hash_map::Entry::Vacant(v) if !full => v.insert(ContainerWrites::default()),
            hash_map::Entry::Vacant(_) => return,
        };
        let hash = self.hasher.hash_one(f.path.as_str());
        // The first write says how the file got there (a chmod that
        // follows a create is part of writing it).
        if log.find(hash, &f.path).is_some() {
            return;
        }
        let ContainerWrites { index, ring, oldest } = log;
        let at = if ring.len() < self.per_container {
            ring.push(Entry { hash, path: String::new(), time_ns: 0, pid: 0, op: f.op, comm: [0; COMM_LEN], comm_len: 0 });
            ring.len() - 1
        } else {
            // Full: the oldest entry goes, and its path string is reused.
            let at = *oldest;
            *oldest = (at + 1) % self.per_container;
            if let Ok(gone) = index.find_entry(ring[at].hash, |&i| i as usize == at) {
                gone.remove();
            }
            at
        };
        let e = &mut ring[at];
        e.hash = hash;
        crate::batch::set_str(&mut e.path, &f.path);
        e.set_comm(&ev.process.comm);
        (e.time_ns, e.pid, e.op) = (ev.time_ns, ev.process.pid, f.op);
        // `at` < `per_container` <= u32::MAX (see `new`).
        index.insert_unique(hash, at as u32, |&i| ring[i as usize].hash);
    }

    /// Who wrote `path` first in container `container`, if it is still
    /// remembered. Made on demand: asked per exec and refusal, not per write.
    pub fn lookup(&self, container: u64, path: &str) -> Option<Origin> {
        let log = self.logs.get(&container)?;
        log.find(self.hasher.hash_one(path), path).map(Entry::origin)
    }

    pub fn forget_container(&mut self, container: u64) {
        self.logs.remove(&container);
    }

    pub fn len(&self) -> usize {
        self.logs.values().map(|l| l.index.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FileEvent, ProcessRef};

    fn exec(filename: &str, argv: &[&str]) -> ExecEvent {
        ExecEvent {
            filename: filename.into(),
            cwd: "/work".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            parent_comm: "sh".into(),
            parent_exe: None,
            parent_outside: false,
            exe_ino: 42,
            exe_dev: 7,
            exe_nlink: 1,
            exe_fs_magic: OVERLAYFS_MAGIC,
            truncated: false,
            in_host_root: false,
            in_parent_mnt_ns: false,
        }
    }

    fn file(op: FileOp, path: &str, pid: u32) -> Event {
        Event {
            time_ns: 1_000,
            cgroup_id: 9,
            process: ProcessRef { pid, comm: "cp".into(), ..Default::default() },
            kind: EventKind::File(FileEvent { op, path: path.into(), old_path: None, host_path: String::new(), is_dir: false }),
        }
    }

    #[test]
    fn image_binary_is_not_drift() {
        let facts = FileFacts { in_upper: Some(false), in_baseline: Some(true) };
        assert_eq!(classify_exec(&exec("/bin/ls", &["ls"]), None, facts), None);
        assert_eq!(classify_exec(&exec("/bin/ls", &["ls"]), None, FileFacts::default()), None);
    }

    #[test]
    fn written_file_names_its_writer() {
        let mut log = WriteLog::new(8, 8);
        log.record(1, &file(FileOp::Create, "/tmp/ls", 77));
        let e = exec("/tmp/ls", &["/tmp/ls"]);
        let d = classify_exec(&e, log.lookup(1, "/tmp/ls").as_ref(), FileFacts::default()).unwrap();
        assert_eq!(d.kind, DriftKind::Written);
        assert_eq!(d.origin.as_ref().unwrap().pid, 77);
        assert_eq!(d.to_string(), "executable written after the container started: /tmp/ls (creat by cp[77])");
        assert!(log.lookup(2, "/tmp/ls").is_none(), "per container");
    }

    #[test]
    fn chmod_alone_is_made_executable_and_modified_image_file() {
        let mut log = WriteLog::new(8, 8);
        log.record(3, &file(FileOp::Create, "/app/x", 1));
        log.record(3, &file(FileOp::Chmod, "/app/x", 2));
        let d = classify_exec(&exec("/app/x", &["x"]), log.lookup(3, "/app/x").as_ref(), FileFacts::default()).unwrap();
        assert_eq!((d.kind, d.origin.unwrap().pid), (DriftKind::Written, 1), "created, then made executable: written");
        log.record(3, &file(FileOp::Chmod, "/opt/tool", 3));
        let d = classify_exec(&exec("/opt/tool", &["tool"]), log.lookup(3, "/opt/tool").as_ref(), FileFacts::default()).unwrap();
        assert_eq!(d.kind, DriftKind::MadeExecutable);
        log.record(3, &file(FileOp::Modify, "/bin/ls", 3));
        let facts = FileFacts { in_upper: Some(true), in_baseline: Some(true) };
        assert_eq!(classify_exec(&exec("/bin/ls", &["ls"]), log.lookup(3, "/bin/ls").as_ref(), facts).unwrap().kind, DriftKind::Modified);
        // Seen only through the upper layer (written before the agent ran).
        assert_eq!(classify_exec(&exec("/bin/ls", &["ls"]), None, facts).unwrap().kind, DriftKind::Modified);
        let fresh = FileFacts { in_upper: Some(true), in_baseline: None };
        assert_eq!(classify_exec(&exec("/opt/new", &["new"]), None, fresh).unwrap().kind, DriftKind::Written);
    }

    #[test]
    fn tmpfs_memfd_deleted_and_not_in_image() {
        let mut e = exec("/dev/shm/x.sh", &["/dev/shm/x.sh"]);
        assert_eq!(classify_exec(&e, None, FileFacts::default()).unwrap().kind, DriftKind::Tmpfs);
        e = exec("/run/x", &["x"]);
        e.exe_fs_magic = TMPFS_MAGIC;
        assert_eq!(classify_exec(&e, None, FileFacts::default()).unwrap().kind, DriftKind::Tmpfs);
        e = exec("/proc/self/fd/3", &["x"]);
        e.exe_fs_magic = TMPFS_MAGIC;
        e.exe_nlink = 0;
        assert_eq!(classify_exec(&e, None, FileFacts::default()).unwrap().kind, DriftKind::Memfd);
        e = exec("/usr/bin/gone", &["gone"]);
        e.exe_nlink = 0;
        assert_eq!(classify_exec(&e, None, FileFacts::default()).unwrap().kind, DriftKind::Deleted);
        let facts = FileFacts { in_upper: Some(false), in_baseline: Some(false) };
        assert_eq!(classify_exec(&exec("/usr/bin/x", &["x"]), None, facts).unwrap().kind, DriftKind::NotInImage);
        // busybox re-executing itself.
        assert_eq!(classify_exec(&exec("/proc/self/exe", &["wget"]), None, facts), None);
    }

    #[test]
    fn loader_and_interpreter_targets() {
        let e = exec("/lib64/ld-linux-x86-64.so.2", &["/lib64/ld-linux-x86-64.so.2", "--library-path", "/x", "./evil"]);
        // `--library-path` takes a value; the first plain argument after the
        // options is the value, which is a directory that then fails the
        // checks, so list forms with values are best-effort.
        assert_eq!(indirect_target(&e).unwrap().0, DriftKind::Loader);
        let e = exec("/lib64/ld-linux-x86-64.so.2", &["ld.so", "/tmp/evil"]);
        assert_eq!(indirect_target(&e), Some((DriftKind::Loader, "/tmp/evil".into())));
        let e = exec("/bin/sh", &["sh", "-x", "run.sh"]);
        assert_eq!(indirect_target(&e), Some((DriftKind::Interpreter, "/work/run.sh".into())));
        assert_eq!(indirect_target(&exec("/bin/sh", &["sh", "-c", "id"])), None);
        assert_eq!(indirect_target(&exec("/usr/bin/python3.11", &["python3", "/tmp/a.py"])).unwrap().1, "/tmp/a.py");
        assert_eq!(indirect_target(&exec("/usr/bin/python3", &["python3", "-m", "http.server"])), None, "a module, not a file");
        assert!(is_interpreter("/usr/bin/python3.11") && is_interpreter("-sh") && !is_interpreter("/usr/sbin/nginx"));
        assert_eq!(indirect_target(&exec("/bin/busybox", &["busybox", "sh", "/tmp/a"])).unwrap().1, "/tmp/a");
        assert_eq!(indirect_target(&exec("/bin/busybox", &["busybox", "ls", "/tmp"])), None);
        assert_eq!(indirect_target(&exec("/bin/ls", &["ls", "/tmp"])), None);
        let mut log = WriteLog::new(4, 4);
        log.record(3, &file(FileOp::Create, "/tmp/evil", 5));
        let d = classify_indirect(DriftKind::Loader, "/tmp/evil", log.lookup(3, "/tmp/evil").as_ref(), FileFacts::default()).unwrap();
        assert_eq!(d.origin.unwrap().pid, 5);
        assert!(classify_indirect(
            DriftKind::Interpreter,
            "/app/start.sh",
            None,
            FileFacts { in_upper: Some(false), in_baseline: Some(true) }
        )
        .is_none());
    }

    #[test]
    fn program_sources_per_interpreter_family() {
        use ProgramSource::*;
        let src = |f: &str, argv: &[&str]| program_source(&exec(f, argv)).map(|(_, s)| s);
        let code = |c: &str| Some(Code(c.to_string()));
        // Shells: `-e` is an option (errexit), `c` anywhere in a cluster
        // makes the first operand the code, `-s` or no operand is stdin.
        assert_eq!(src("/bin/sh", &["sh", "-e", "/data/s.sh"]), Some(File("/data/s.sh".into())));
        assert_eq!(src("/bin/sh", &["sh", "-c", "id"]), code("id"));
        assert_eq!(src("/bin/bash", &["bash", "-lc", "id", "x"]), code("id"));
        assert_eq!(src("/bin/bash", &["bash", "-o", "pipefail", "-c", "id"]), code("id"));
        assert_eq!(src("/bin/sh", &["sh", "-c"]), code(""));
        assert_eq!(src("/bin/sh", &["sh"]), Some(Stdin));
        assert_eq!(src("/bin/sh", &["sh", "-s", "arg"]), Some(Stdin));
        assert_eq!(src("/bin/dash", &["dash", "-", "x"]), Some(Stdin));
        assert_eq!(src("/bin/sh", &["sh", "--", "s.sh"]), Some(File("/work/s.sh".into())));
        // busybox by its own name, and re-executing itself as sh.
        assert_eq!(src("/bin/busybox", &["busybox", "sh", "-c", "id"]), code("id"));
        assert_eq!(src("/proc/self/exe", &["sh", "-c", "id"]), code("id"));
        assert_eq!(src("/proc/self/exe", &["wget", "-q"]), None);
        // Python.
        assert_eq!(src("/usr/bin/python3", &["python3", "-c", "print(1)"]), code("print(1)"));
        assert_eq!(src("/usr/bin/python3.11", &["python3", "-Bc", "print(1)"]), code("print(1)"));
        assert_eq!(src("/usr/bin/python3", &["python3", "-u", "/app/x.py"]), Some(File("/app/x.py".into())));
        assert_eq!(src("/usr/bin/python3", &["python3", "-W", "ignore", "x.py"]), Some(File("/work/x.py".into())));
        assert_eq!(src("/usr/bin/python3", &["python3", "-m", "http.server"]), Some(Other));
        assert_eq!(src("/usr/bin/python3", &["python3"]), Some(Stdin));
        assert_eq!(src("/usr/bin/python3", &["python3", "-"]), Some(Stdin));
        // perl and ruby: repeatable -e, clusters; node, php, lua.
        assert_eq!(src("/usr/bin/perl", &["perl", "-e", "print 1;", "-e", "print 2;"]), code("print 1;\nprint 2;"));
        assert_eq!(src("/usr/bin/perl", &["perl", "-lne", "print", "/etc/passwd"]), code("print"));
        assert_eq!(src("/usr/bin/perl", &["perl", "-I", "/lib", "x.pl"]), Some(File("/work/x.pl".into())));
        assert_eq!(src("/usr/bin/ruby", &["ruby", "-e", "p 1"]), code("p 1"));
        assert_eq!(src("/usr/bin/node", &["node", "-e", "1"]), code("1"));
        assert_eq!(src("/usr/bin/node", &["node", "--eval=1"]), code("1"));
        assert_eq!(src("/usr/bin/node", &["node", "/app/main.js"]), Some(File("/app/main.js".into())));
        assert_eq!(src("/usr/bin/php", &["php", "-r", "echo 1;"]), code("echo 1;"));
        // Not interpreters.
        assert_eq!(src("/usr/sbin/nginx", &["nginx", "-c", "/etc/nginx.conf"]), None);
    }

    #[test]
    fn code_is_normalised_by_whitespace() {
        assert_eq!(normalise_code("  wget -q  -O -\n\thttp://x/ "), "wget -q -O - http://x/");
        assert_eq!(normalise_code(""), "");
        assert_eq!(normalise_code("id"), "id");
    }

    #[test]
    fn write_log_is_bounded() {
        let mut log = WriteLog::new(2, 1);
        for (i, p) in ["/a", "/b", "/c"].iter().enumerate() {
            log.record(3, &file(FileOp::Create, p, i as u32));
        }
        assert!(log.lookup(3, "/a").is_none());
        // The entry that made room holds its new writer, not the old one.
        assert_eq!(log.lookup(3, "/c").map(|o| (o.pid, o.op)), Some((2, FileOp::Create)));
        assert_eq!(log.lookup(3, "/b").map(|o| o.pid), Some(1));
        log.record(9, &file(FileOp::Create, "/x", 1));
        assert!(log.lookup(9, "/x").is_none(), "container limit");
        assert_eq!(log.len(), 2);
        log.forget_container(3);
        assert!(log.is_empty());
        // A name longer than the kernel's is cut at a character, not a byte.
        let mut ev = file(FileOp::Create, "/y", 3);
        ev.process.comm = "é".repeat(10);
        log.record(3, &ev);
        assert_eq!(log.lookup(3, "/y").map(|o| o.comm), Some("é".repeat(8)));
    }

    proptest::proptest! {
        /// The ring and its table answer as a plain first-in-first-out list
        /// would: a name keeps its first writer until it is among the oldest
        /// names past the bound, and nothing else is remembered.
        #[test]
        fn write_log_is_a_bounded_fifo_of_first_writes(
            bound in 1usize..6,
            names in proptest::collection::vec(0u8..12, 0..80),
        ) {
            let mut log = WriteLog::new(bound, 1);
            let mut model: std::collections::VecDeque<(String, u32)> = Default::default();
            for (pid, n) in names.iter().enumerate() {
                let path = format!("/d/{n}");
                log.record(3, &file(FileOp::Modify, &path, pid as u32));
                if !model.iter().any(|(p, _)| *p == path) {
                    if model.len() == bound {
                        model.pop_front();
                    }
                    model.push_back((path, pid as u32));
                }
                for k in 0..12u8 {
                    let path = format!("/d/{k}");
                    let want = model.iter().find(|(p, _)| *p == path).map(|(_, pid)| *pid);
                    proptest::prop_assert_eq!(log.lookup(3, &path).map(|o| o.pid), want);
                }
                proptest::prop_assert_eq!(log.len(), model.len());
            }
        }
    }
}
