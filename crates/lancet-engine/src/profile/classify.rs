//! What an event can teach a profile: the one reading of events that
//! learning and checking share, so they never disagree on what counts.

use super::*;

/// What an event can teach a profile, borrowed from the event. An exec's
/// `name` is argv\[0\]'s basename where it differs from the path's.
pub(super) enum Obs<'a> {
    Exec {
        path: &'a str,
        parent: Option<&'a str>,
        args: Option<&'a [String]>,
        name: Option<&'a str>,
        program: Option<Program>,
    },
    Listen {
        port: u16,
        proto: Protocol,
    },
    Flow {
        inbound: bool,
        peer: PeerKey<'a>,
        port: u16,
        proto: Protocol,
    },
    /// A change at `path` in directory `dir`; `content` when it creates,
    /// writes or renames (a delete or chmod only counts in the protected
    /// set).
    Written {
        path: &'a str,
        dir: &'a str,
        content: bool,
    },
    Sensitive(&'a str),
}

/// The parent a profile records for processes the container runtime
/// started: which runtime process it was (conmon, runc, a shim) is noise.
pub const RUNTIME_PARENT: &str = "<container runtime>";

pub(super) fn parent_of(x: &ExecEvent) -> Option<&str> {
    if x.parent_outside {
        return Some(RUNTIME_PARENT);
    }
    match x.parent_exe.as_deref() {
        Some(p) if !p.is_empty() => Some(p),
        _ if !x.parent_comm.is_empty() => Some(&x.parent_comm),
        _ => None,
    }
}

/// The directory a path lies in: `/tmp/a` → `/tmp`, `/a` → `/`.
pub fn parent_dir(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    // A byte scan: `rfind('/')` compares each match through `memcmp`, and
    // this runs for every file event.
    match p.bytes().rposition(|b| b == b'/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None if path.starts_with('/') => "/",
        None => ".",
    }
}

pub(super) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The path an exec is learned under: the path given to execve, except that
/// every `/proc/<pid>/exe` is [`SELF_EXE`].
pub(super) fn exec_path(filename: &str) -> &str {
    let pid = filename.strip_prefix("/proc/").and_then(|r| r.strip_suffix("/exe"));
    match pid {
        Some(p) if p == "self" || (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) => SELF_EXE,
        _ => filename,
    }
}

/// The name a program was run under, when it is not its path's basename:
/// argv\[0\]'s basename, without the leading `-` of a login shell (busybox
/// drops it too when it picks the applet). `None` when argv\[0\] is missing
/// or empty: there is no name to learn or check.
pub(super) fn run_name<'a>(path: &str, argv: &'a [String]) -> Option<&'a str> {
    // busybox run by its own name runs the applet its next argument names
    // (`busybox true`); the kernel's applet check judges that name, up to
    // four hops, and so is it learned.
    for (hop, arg) in argv.iter().enumerate().take(5) {
        let name = basename(arg);
        let name = name.strip_prefix('-').unwrap_or(name);
        if name == MULTICALL_DISPATCHER && hop < 4 && argv.len() > hop + 1 {
            continue;
        }
        return (!name.is_empty() && name != basename(path)).then_some(name);
    }
    None
}

/// What an interpreter exec is judged with besides its file: its inline
/// code (normalised) or that it reads its program from stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Program {
    Code(String),
    Stdin,
}

/// The code string [`Deviation::NewCode`] names for a program on stdin.
pub const STDIN_CODE: &str = "<stdin>";

pub(super) fn program_of(x: &ExecEvent) -> Option<Program> {
    if x.truncated {
        // The code may be cut: judged as unknown, neither learned nor a
        // deviation (protect mode reads the whole command line itself).
        return None;
    }
    match crate::drift::program_source(x)?.1 {
        ProgramSource::Code(c) => Some(Program::Code(normalise_code(&c))),
        ProgramSource::Stdin => Some(Program::Stdin),
        _ => None,
    }
}

/// The multi-call binary whose own name means "the next argument is the
/// applet" (the kernel's applet check knows it by the same name).
pub(super) const MULTICALL_DISPATCHER: &str = "busybox";

pub(super) fn classify<'a>(ev: &'a Event, peer: Option<&'a PeerRef>) -> Option<Obs<'a>> {
    match &ev.kind {
        EventKind::Exec(x) if !x.filename.is_empty() => {
            let path = exec_path(&x.filename);
            Some(Obs::Exec {
                path,
                parent: parent_of(x),
                args: (!x.truncated).then(|| x.argv.get(1..).unwrap_or(&[])),
                // argv[0] is the first thing in the record: a cut argv still
                // has it whole unless it alone is longer than any name kept.
                name: run_name(path, &x.argv),
                program: program_of(x),
            })
        }
        EventKind::Net(n) if n.result == 0 => {
            let proto = n.proto;
            let remote = || peer.map(PeerKey::from).unwrap_or(PeerKey::Ip(n.daddr.to_canonical()));
            match n.op {
                NetOp::Listen | NetOp::Bind if n.sport != 0 => Some(Obs::Listen { port: n.sport, proto }),
                // A UDP socket connected to the unspecified address (this
                // host itself) reaches no peer: PostgreSQL does it at every
                // start. Not an outbound peer. (Loopback stays one: a DNS
                // stub listens there.)
                NetOp::Connect if proto == Protocol::Udp && n.daddr.to_canonical().is_unspecified() => None,
                NetOp::Connect if peer.is_some() || !n.daddr.is_unspecified() => {
                    Some(Obs::Flow { inbound: false, peer: remote(), port: n.dport, proto })
                }
                NetOp::Accept => Some(Obs::Flow { inbound: true, peer: remote(), port: n.sport, proto }),
                _ => None,
            }
        }
        EventKind::File(f) if !f.path.is_empty() => match f.op {
            FileOp::Create | FileOp::Modify | FileOp::Rename => {
                Some(Obs::Written { path: &f.path, dir: parent_dir(&f.path), content: true })
            }
            FileOp::Open => Some(Obs::Sensitive(&f.path)),
            FileOp::Delete | FileOp::Chmod => Some(Obs::Written { path: &f.path, dir: parent_dir(&f.path), content: false }),
        },
        _ => None,
    }
}
