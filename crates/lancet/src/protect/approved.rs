//! What a protected container may execute, as file identities (device and
//! inode), worked out once per profile and container root. fanotify reports
//! the file an exec opens, and its path is whatever the container's mount
//! namespace makes of it; a file identity cannot be imitated by a container
//! that builds a look-alike directory tree.
//!
//! Besides the profile's programs this approves what the kernel opens with
//! exec intent on their behalf: their ELF interpreters (`PT_INTERP`) and the
//! interpreters named on their `#!` lines. A loader approved that way is
//! not approved to be run directly (`ld.so FILE`): the process backend kills
//! such an exec in the kernel. Files run under names other than their own
//! (busybox applets, `sh` → `dash`) are checked by name too, in the kernel.

use super::host::resolve_in_root;
use lancet_engine::drift::is_interpreter;
use lancet_engine::exe::{elf_interpreter, shebang, BINPRM_BUF_SIZE};
use lancet_engine::profile::{Profile, SELF_EXE};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file inside the container: the path it was resolved from, and its
/// identity as `stat` gives it (the same as the permission event's `fstat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
}

impl Resolved {
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// Everything a protected container may execute.
#[derive(Debug, Default)]
pub struct Approved {
    /// Every file an exec may open: the profile's programs, their ELF and
    /// script interpreters.
    pub files: HashSet<(u64, u64)>,
    /// Files that run a script they are handed (shells, python…, busybox
    /// approved as `sh`): each exec's script operand is checked, so they are
    /// never approved once for all in the kernel.
    pub interpreters: HashSet<(u64, u64)>,
    /// ELF interpreters approved only because approved programs need them.
    pub loaders: Vec<Resolved>,
    /// Files reached under names other than their own, with every name
    /// (argv\[0\] basename) they may run as.
    pub applets: Vec<(Resolved, Vec<String>)>,
    /// Profile paths that resolve to no file in this container.
    pub missing: Vec<String>,
    /// The inline code each interpreter file may run (normalised), from
    /// every profile path that resolves to it: a shell is approved with its
    /// code, never for whatever it is handed.
    pub code: HashMap<(u64, u64), HashSet<String>>,
    /// Interpreter files that may read their program from standard input.
    pub stdin: HashSet<(u64, u64)>,
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Whether a run name is busybox's own (which the kernel check dispatches
/// on: any name that begins with it).
fn is_dispatcher(name: &str) -> bool {
    basename(name).trim_start_matches('-').starts_with(lancet_sensor::enforce::BUSYBOX_DISPATCHER)
}

/// Resolves `path` inside `root` and stats it.
fn resolve(root: &Path, path: &str) -> Option<Resolved> {
    let inside = resolve_in_root(root, path)?;
    let m = std::fs::metadata(root.join(inside.trim_start_matches('/'))).ok()?;
    m.is_file().then(|| Resolved { path: inside, dev: m.dev(), ino: m.ino() })
}

/// The first bytes of a file inside the root (for `#!`), and its ELF
/// interpreter. Errors (unreadable, malformed ELF) mean "none".
fn interpreters_of(root: &Path, file: &Resolved) -> (Option<String>, Option<String>) {
    let Ok(mut f) = std::fs::File::open(root.join(file.path.trim_start_matches('/'))) else { return (None, None) };
    let mut head = [0u8; BINPRM_BUF_SIZE];
    let n = f.read(&mut head).unwrap_or(0);
    if let Some(s) = shebang(&head[..n]) {
        return (None, Some(s.interpreter));
    }
    (elf_interpreter(&mut f).ok().flatten(), None)
}

/// Works out what a container whose root the host sees at `root` may run
/// under `profile`. `names_checked` says that the kernel checks the name a
/// multi-call file runs as (the process backend holds): busybox run by its
/// own name then runs only applets of the profile, so it is an interpreter
/// (asked about at every exec, never approved once for all) only when one
/// of those is (`sh`). Without that check, or run by no other name, it
/// stays one: `busybox sh FILE` runs any script.
pub fn approve(profile: &Profile, root: &Path, names_checked: bool) -> Approved {
    let mut a = Approved::default();
    // Names each file is run under, and the names any re-exec of
    // /proc/self/exe was seen with (they belong to every multi-call file).
    let mut names: HashMap<(u64, u64), (Resolved, BTreeSet<String>)> = HashMap::new();
    let mut self_exe_names = BTreeSet::new();
    let mut programs = Vec::new();
    for (path, run_as) in profile.run_names() {
        let learned = profile.executable(path);
        if path == SELF_EXE {
            self_exe_names.extend(run_as.filter(|n| *n != basename(SELF_EXE)).map(str::to_string));
            continue;
        }
        let Some(file) = resolve(root, path) else {
            a.missing.push(path.to_string());
            continue;
        };
        if let Some(e) = learned {
            if !e.code.is_empty() {
                a.code.entry(file.id()).or_default().extend(e.code.iter().cloned());
            }
            if e.stdin {
                a.stdin.insert(file.id());
            }
        }
        let entry = names.entry(file.id()).or_insert_with(|| (file.clone(), BTreeSet::new()));
        let run_as: Vec<String> = run_as.map(str::to_string).collect();
        if run_as.iter().any(|n| is_interpreter(n) && !(names_checked && is_dispatcher(n))) {
            a.interpreters.insert(file.id());
        }
        entry.1.extend(run_as);
        a.files.insert(file.id());
        programs.push(file);
    }
    // What the kernel opens with exec intent for them: script interpreters
    // (run as the `#!` line names them), then ELF interpreters of the
    // programs and of those script interpreters.
    let mut with_scripts = programs.clone();
    for p in &programs {
        if let (_, Some(interp)) = interpreters_of(root, p) {
            if let Some(file) = resolve(root, &interp) {
                a.files.insert(file.id());
                a.interpreters.insert(file.id());
                names.entry(file.id()).or_insert_with(|| (file.clone(), BTreeSet::new())).1.insert(basename(&interp).to_string());
                with_scripts.push(file);
            }
        }
    }
    let profile_files: HashSet<(u64, u64)> = a.files.clone();
    for p in &with_scripts {
        if let (Some(loader), _) = interpreters_of(root, p) {
            if let Some(file) = resolve(root, &loader) {
                a.files.insert(file.id());
                // Run directly it is refused, unless the profile runs it so.
                if !profile_files.contains(&file.id()) && !a.loaders.iter().any(|l| l.id() == file.id()) {
                    a.loaders.push(file);
                }
            }
        }
    }
    for (_, (file, mut run_as)) in names {
        let own = basename(&file.path);
        if run_as.iter().all(|n| n == own) {
            // Not checked by name in the kernel (it has no other): a
            // dispatcher run by its own name runs whatever it is handed.
            if is_dispatcher(own) || run_as.iter().any(|n| is_dispatcher(n)) {
                a.interpreters.insert(file.id());
            }
            continue;
        }
        // (A login shell's `-sh` is judged as `sh`: the kernel drops one
        // leading dash, as busybox does.)
        run_as.extend(self_exe_names.iter().cloned());
        a.applets.push((file, run_as.into_iter().collect()));
    }
    a.applets.sort_by(|x, y| x.0.path.cmp(&y.0.path));
    // Code a multi-call file ran re-executing itself is learned under
    // SELF_EXE: it belongs to whichever interpreter file did that.
    if let Some(e) = profile.executable(SELF_EXE) {
        for id in &a.interpreters {
            if !e.code.is_empty() {
                a.code.entry(*id).or_default().extend(e.code.iter().cloned());
            }
            if e.stdin {
                a.stdin.insert(*id);
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancet_engine::event::{Event, EventKind, ExecEvent, ProcessRef};

    fn learn(p: &mut Profile, filename: &str, argv0: &str) {
        let ev = Event {
            time_ns: 1,
            cgroup_id: 1,
            process: ProcessRef { pid: 2, ..ProcessRef::default() },
            kind: EventKind::Exec(ExecEvent {
                filename: filename.into(),
                argv: vec![argv0.into()],
                parent_outside: true,
                ..ExecEvent::default()
            }),
        };
        p.observe(&ev, None, 1);
    }

    fn exe(root: &Path, path: &str, content: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let f = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, content).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn programs_loaders_scripts_and_applets() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // A real dynamic program (its PT_INTERP is the host's loader path)
        // and a stand-in loader at that path inside the root.
        exe(r, "/usr/bin/true-dyn", &std::fs::read("/bin/true").unwrap());
        let interp = elf_interpreter(&mut std::fs::File::open("/bin/true").unwrap()).unwrap().unwrap();
        exe(r, &interp, b"\x7fELF loader stand-in");
        exe(r, "/bin/busybox", b"static");
        std::os::unix::fs::symlink("busybox", r.join("bin/httpd")).unwrap();
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
        exe(r, "/app/run.sh", b"#!/bin/sh -e\necho hi\n");
        let mut p = Profile::new("img", "sha256:x", 1);
        learn(&mut p, "/usr/bin/true-dyn", "true-dyn");
        learn(&mut p, "/bin/httpd", "httpd");
        learn(&mut p, "/app/run.sh", "/app/run.sh");
        learn(&mut p, "/gone", "gone");
        let a = approve(&p, r, true);
        let id = |path: &str| resolve(r, path).unwrap().id();
        for f in ["/usr/bin/true-dyn", "/bin/busybox", "/app/run.sh", interp.as_str()] {
            assert!(a.files.contains(&id(f)), "{f} approved");
        }
        assert_eq!(a.loaders.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(), [interp.as_str()]);
        assert!(a.interpreters.contains(&id("/bin/busybox")), "busybox runs /app/run.sh as sh");
        assert!(!a.interpreters.contains(&id("/usr/bin/true-dyn")));
        let (file, names) = &a.applets[0];
        assert_eq!(file.path, "/bin/busybox");
        assert_eq!(names, &["httpd", "sh"], "httpd as learned, sh from the #! line");
        assert_eq!(a.missing, ["/gone"]);
    }

    #[test]
    fn busybox_is_an_interpreter_only_when_it_may_run_one() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        exe(r, "/bin/busybox", b"static");
        for l in ["true", "sleep", "sh"] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(l)).unwrap();
        }
        let bb = resolve(r, "/bin/busybox").unwrap().id();
        // Run as `true` and `busybox sleep`: the kernel allows those
        // applets only, so its execs may be approved once for all.
        let mut p = Profile::new("img", "sha256:x", 1);
        learn(&mut p, "/bin/true", "/bin/true");
        learn(&mut p, "/bin/busybox", "busybox");
        assert!(!approve(&p, r, true).interpreters.contains(&bb));
        // Without the kernel's name check, `busybox sh FILE` could run.
        assert!(approve(&p, r, false).interpreters.contains(&bb));
        // With `sh` among its names it runs scripts.
        learn(&mut p, "/bin/sh", "sh");
        assert!(approve(&p, r, true).interpreters.contains(&bb));
        // Run by its own name only: nothing checks what it dispatches to.
        let mut q = Profile::new("img", "sha256:x", 1);
        learn(&mut q, "/bin/busybox", "busybox");
        let a = approve(&q, r, true);
        assert!(a.interpreters.contains(&bb) && a.applets.is_empty());
    }

    #[test]
    fn interpreters_are_approved_with_their_learned_code() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        exe(r, "/bin/busybox", b"static");
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
        let bb = resolve(r, "/bin/busybox").unwrap().id();
        let mut p = Profile::new("img", "sha256:x", 1);
        let run = |p: &mut Profile, filename: &str, argv: &[&str]| {
            let ev = Event {
                time_ns: 1,
                cgroup_id: 1,
                process: ProcessRef { pid: 2, ..ProcessRef::default() },
                kind: EventKind::Exec(ExecEvent {
                    filename: filename.into(),
                    argv: argv.iter().map(|a| a.to_string()).collect(),
                    parent_outside: true,
                    ..ExecEvent::default()
                }),
            };
            p.observe(&ev, None, 1);
        };
        run(&mut p, "/bin/sh", &["sh", "-c", "wget  -q -O - http://127.0.0.1/"]);
        run(&mut p, SELF_EXE, &["sh", "-c", "true"]);
        let a = approve(&p, r, true);
        assert!(a.interpreters.contains(&bb));
        let code = &a.code[&bb];
        assert!(code.contains("wget -q -O - http://127.0.0.1/") && code.contains("true"), "{code:?}");
        assert!(!code.contains("id") && a.stdin.is_empty());
        run(&mut p, "/bin/sh", &["sh"]);
        assert!(approve(&p, r, true).stdin.contains(&bb), "a program on stdin, learned");
    }

    #[test]
    fn a_loader_the_profile_runs_itself_is_not_killed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        exe(r, "/usr/bin/true-dyn", &std::fs::read("/bin/true").unwrap());
        let interp = elf_interpreter(&mut std::fs::File::open("/bin/true").unwrap()).unwrap().unwrap();
        exe(r, &interp, b"loader");
        let mut p = Profile::new("img", "sha256:x", 1);
        learn(&mut p, "/usr/bin/true-dyn", "true-dyn");
        learn(&mut p, &interp, basename(&interp));
        let a = approve(&p, r, true);
        assert!(a.loaders.is_empty(), "{:?}", a.loaders);
    }
}
