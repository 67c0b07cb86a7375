//! Checking: what in an event departs from the profile (a `Deviation`),
//! and the queries the enforcement backends ask without allocating.

use super::*;

/// What in an event is not in the profile. `NewName`: a known executable
/// run under a name (argv\[0\]) it was never run under, such as another
/// applet of a multi-call binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Deviation {
    NewExecutable {
        path: String,
    },
    NewParent {
        path: String,
        parent: String,
    },
    NewName {
        path: String,
        name: String,
    },
    /// An interpreter run with inline code (or a program on stdin, code
    /// `<stdin>`) it was never run with.
    NewCode {
        path: String,
        code: String,
    },
    NewListen {
        port: u16,
        proto: Protocol,
    },
    NewOutbound {
        peer: Peer,
        port: u16,
        proto: Protocol,
    },
    NewInbound {
        peer: Peer,
        port: u16,
        proto: Protocol,
    },
    /// A write outside the writable set whose anchor the profile lacks:
    /// allowed, alerted once per anchor per container life.
    NewWrittenDir {
        dir: String,
    },
    NewSensitiveRead {
        path: String,
    },
    /// A write in the protected set (`entry` names which part): refused in
    /// protect mode whatever was learned; no profile entry can allow it
    /// (a policy's `writable` can).
    ProtectedWrite {
        path: String,
        entry: String,
    },
}

impl Deviation {
    /// Stable snake_case name (`new_executable`, …), for rule names and tags.
    pub fn kind(&self) -> &'static str {
        match self {
            Deviation::NewExecutable { .. } => "new_executable",
            Deviation::NewParent { .. } => "new_parent",
            Deviation::NewName { .. } => "new_name",
            Deviation::NewCode { .. } => "new_code",
            Deviation::NewListen { .. } => "new_listen",
            Deviation::NewOutbound { .. } => "new_outbound",
            Deviation::NewInbound { .. } => "new_inbound",
            Deviation::NewWrittenDir { .. } => "new_written_dir",
            Deviation::NewSensitiveRead { .. } => "new_sensitive_read",
            Deviation::ProtectedWrite { .. } => "protected_write",
        }
    }

    /// Whether protect mode refuses it. A write outside both sets is
    /// allowed (and alerted): a service's normal life must go on.
    pub fn refused_in_protect(&self) -> bool {
        !matches!(self, Deviation::NewWrittenDir { .. })
    }
}

impl fmt::Display for Deviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deviation::NewExecutable { path } => write!(f, "executable {path} is not in the profile"),
            Deviation::NewParent { path, parent } => write!(f, "{path} started by {parent}, not a parent in the profile"),
            Deviation::NewName { path, name } => write!(f, "{path} run as {name} is not in the profile"),
            Deviation::NewCode { path, code } => write!(f, "{path} run with code {code:?} is not in the profile"),
            Deviation::NewListen { port, proto } => write!(f, "listening on {port}/{proto} is not in the profile"),
            Deviation::NewOutbound { peer, port, proto } => {
                write!(f, "outbound connection to {peer} port {port}/{proto} is not in the profile")
            }
            Deviation::NewInbound { peer, port, proto } => {
                write!(f, "inbound connection from {peer} to port {port}/{proto} is not in the profile")
            }
            Deviation::NewWrittenDir { dir } => write!(f, "writing in {dir} is not in the profile"),
            Deviation::NewSensitiveRead { path } => write!(f, "reading {path} is not in the profile"),
            Deviation::ProtectedWrite { path, entry } => write!(f, "writing {path} ({entry}) is never part of a workload's normal life"),
        }
    }
}

/// The writable set of a container nothing more is known of: scratch.
pub(super) fn default_writable() -> &'static WritableSet {
    static SET: std::sync::OnceLock<WritableSet> = std::sync::OnceLock::new();
    SET.get_or_init(WritableSet::default)
}

impl Profile {
    /// Whether the profile lists this executable (the protect-mode exec
    /// check, which runs on the permission-event path: no allocation).
    pub fn has_executable(&self, path: &str) -> bool {
        self.index.exec.contains_key(path)
    }

    /// The learned entry of an executable path.
    pub fn executable(&self, path: &str) -> Option<&Executable> {
        self.index.exec.get(path).map(|i| &self.spec.executables[i.pos])
    }

    /// Whether the interpreter at `path` was learned with this inline code
    /// (already normalised). No allocation.
    pub fn has_code(&self, path: &str, code: &str) -> bool {
        self.index.exec.get(path).is_some_and(|i| i.code.contains(code))
    }

    /// Whether files were learned being written in this directory: it,
    /// or an ancestor, is a learned anchor.
    pub fn has_written_dir(&self, dir: &str) -> bool {
        self.written_anchor(dir).is_some()
    }

    /// The position of the learned anchor that holds `dir`: `dir` itself
    /// or its nearest ancestor, as written or with its varying components
    /// collapsed (`base/16390` is held by `base/*`). Allocates only when
    /// the plain path has no anchor.
    pub(super) fn written_anchor(&self, dir: &str) -> Option<usize> {
        let ix = &self.index.written;
        if ix.is_empty() {
            return None;
        }
        let lookup = |p: &str| -> Option<usize> {
            let mut cur = p;
            loop {
                if let Some(&pos) = ix.get(cur) {
                    return Some(pos);
                }
                // A path that is not absolute (a file event's path can be
                // cut or relative when it passes PATH_MAX) ends at "." or
                // "": every step must shorten it, or the walk stops.
                let up = parent_dir(cur);
                if cur == "/" || up.len() >= cur.len() {
                    return None;
                }
                cur = up;
            }
        };
        lookup(dir).or_else(|| {
            let collapsed: String = dir.split('/').filter(|c| !c.is_empty()).map(|c| format!("/{}", collapse(c))).collect();
            (collapsed != dir).then(|| lookup(&collapsed)).flatten()
        })
    }

    /// Whether reads of this sensitive path were learned.
    pub fn has_sensitive_read(&self, path: &str) -> bool {
        self.index.sensitive.contains_key(path)
    }

    /// What in `ev` is not in the profile, if anything. Allocates only when
    /// it returns a deviation, or to normalise an interpreter's inline code.
    pub fn check(&self, ev: &Event, peer: Option<&PeerRef>) -> Option<Deviation> {
        self.check_in(ev, peer, default_writable())
    }

    /// [`check`](Self::check) for a container whose writable set is known:
    /// writes in it are normal life; writes in the protected set are
    /// deviations whatever was learned; other writes are deviations when
    /// the profile has no anchor for them.
    pub fn check_in(&self, ev: &Event, peer: Option<&PeerRef>, set: &WritableSet) -> Option<Deviation> {
        let ix = &self.index;
        match classify(ev, peer)? {
            Obs::Exec { path, parent, name, program, .. } => match ix.exec.get(path) {
                None => Some(Deviation::NewExecutable { path: path.to_string() }),
                Some(e) => match (parent, name, program) {
                    (Some(p), _, _) if !e.parents.is_empty() && !e.parents.contains(p) => {
                        Some(Deviation::NewParent { path: path.to_string(), parent: p.to_string() })
                    }
                    (_, Some(n), _) if !e.names.contains(n) => Some(Deviation::NewName { path: path.to_string(), name: n.to_string() }),
                    (_, _, Some(Program::Code(c))) if !e.code.contains(&c) => Some(Deviation::NewCode { path: path.to_string(), code: c }),
                    (_, _, Some(Program::Stdin)) if !self.spec.executables[e.pos].stdin => {
                        Some(Deviation::NewCode { path: path.to_string(), code: STDIN_CODE.to_string() })
                    }
                    _ => None,
                },
            },
            Obs::Listen { port, proto } => (!ix.listen.contains_key(&(port, proto))).then_some(Deviation::NewListen { port, proto }),
            Obs::Flow { inbound, peer, port, proto } => {
                let fix = if inbound { &ix.inbound } else { &ix.outbound };
                if fix.find(peer, port, proto).is_some() {
                    None
                } else if inbound {
                    Some(Deviation::NewInbound { peer: peer.to_peer(), port, proto })
                } else {
                    Some(Deviation::NewOutbound { peer: peer.to_peer(), port, proto })
                }
            }
            Obs::Written { path, dir, content } => match classify_write(path, set) {
                WriteClass::Protected(entry) => Some(Deviation::ProtectedWrite { path: path.to_string(), entry: entry.to_string() }),
                WriteClass::Writable(_) => None,
                WriteClass::Outside if !content || self.written_anchor(dir).is_some() => None,
                WriteClass::Outside => Some(Deviation::NewWrittenDir { dir: anchor(dir, set) }),
            },
            Obs::Sensitive(path) => (!ix.sensitive.contains_key(path)).then(|| Deviation::NewSensitiveRead { path: path.to_string() }),
        }
    }

    /// The position of the `inbound` or `outbound` entry that covers a flow
    /// with `peer` on `port`, if one does (the flow map names the entry
    /// that allowed a connection). No allocation.
    pub fn flow_entry(&self, inbound: bool, peer: &PeerRef, port: u16, proto: Protocol) -> Option<usize> {
        let fix = if inbound { &self.index.inbound } else { &self.index.outbound };
        fix.find(PeerKey::from(peer), port, proto)
    }

    /// Each learned executable's path with the names it is run under: its
    /// own basename, then [`Executable::names`]. What protect mode needs to
    /// tell apart the files that are run under several names (multi-call
    /// binaries) once it has resolved each path to a file.
    ///
    /// The entry [`SELF_EXE`] stands for whichever file re-executed itself,
    /// which only the process that did it knows: its names belong to every
    /// multi-call file (a file two or more of these names reach).
    pub fn run_names(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str> + '_)> + '_ {
        self.spec
            .executables
            .iter()
            .map(|e| (e.path.as_str(), std::iter::once(basename(&e.path)).chain(e.names.iter().map(String::as_str))))
    }
}
