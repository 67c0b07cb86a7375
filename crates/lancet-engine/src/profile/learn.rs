//! Learning: adding what an event shows to the profile, in learn mode,
//! from an operator's "add to profile", and the writable-set anchors any
//! mode keeps learning; every section bounded, overflow counted.

use super::*;

#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) count: u64,
}

impl Seen {
    pub(super) fn now(now: u64) -> Self {
        Seen { first: now, last: now, count: 1 }
    }
    pub(super) fn apply(self, first: &mut Timestamp, last: &mut Timestamp, count: &mut u64) {
        first.0 = first.0.min(self.first);
        last.0 = last.0.max(self.last);
        *count = count.saturating_add(self.count);
    }
}

impl Profile {
    /// Learns from one event. `peer` names the other end of a connect or
    /// accept when the caller knows it (else the event's remote address is
    /// used). Returns true when something new was learned (and moves
    /// `learning.lastNew` to `now`); otherwise only `lastSeen`/`count` of the
    /// matching entries move.
    pub fn observe(&mut self, ev: &Event, peer: Option<&PeerRef>, now: u64) -> bool {
        self.observe_in(ev, peer, default_writable(), now)
    }

    /// [`observe`](Self::observe) for a container whose writable set is
    /// known: a write in it is learned by the writable directory that holds
    /// it; a write in the protected set is never learned; any other write
    /// by its anchor ([`collapsed_anchor`]).
    pub fn observe_in(&mut self, ev: &Event, peer: Option<&PeerRef>, set: &WritableSet, now: u64) -> bool {
        let Some(obs) = classify(ev, peer) else { return false };
        let seen = Seen::now(now);
        let new = match obs {
            Obs::Exec { path, parent, args, name, program } => {
                let (pos, mut new) = match self.learn_exec(path, seen) {
                    Some(x) => x,
                    None => return false,
                };
                if let Some(p) = parent {
                    new |= self.learn_parent(pos, p, 1);
                }
                if let Some(n) = name {
                    new |= self.learn_name(pos, n, 1);
                }
                if let Some(a) = args {
                    new |= self.learn_args(pos, a);
                }
                if let Some(p) = program {
                    new |= self.learn_program(pos, &p, 1);
                }
                new
            }
            Obs::Listen { port, proto } => self.learn_listen(port, proto, seen),
            Obs::Flow { inbound, peer, port, proto } => {
                let fix = if inbound { &self.index.inbound } else { &self.index.outbound };
                match fix.find(peer, port, proto) {
                    Some(pos) => {
                        let f = &mut self.flows_mut(inbound).0[pos];
                        seen.apply(&mut f.first_seen, &mut f.last_seen, &mut f.count);
                        false
                    }
                    None => self.learn_flow(inbound, peer.to_peer(), port, proto, seen),
                }
            }
            Obs::Written { content: false, .. } => false,
            Obs::Written { path, dir, content: true } => match classify_write(path, set) {
                WriteClass::Protected(_) => false,
                WriteClass::Writable(d) => self.learn_path(Section::WrittenDirs, &d.path, seen),
                WriteClass::Outside => match self.written_anchor(dir) {
                    Some(pos) => {
                        let p = &mut self.spec.written_dirs[pos];
                        seen.apply(&mut p.first_seen, &mut p.last_seen, &mut p.count);
                        false
                    }
                    None => self.learn_path(Section::WrittenDirs, &collapsed_anchor(dir), seen),
                },
            },
            Obs::Sensitive(path) => self.learn_path(Section::SensitiveReads, path, seen),
        };
        if new {
            self.learned_new(now);
        }
        new
    }

    /// Something new was learned at `now`: when learning last found
    /// something new (what promotion waits on to settle).
    fn learned_new(&mut self, now: u64) {
        self.spec.learning.last_new = Timestamp(self.spec.learning.last_new.0.max(now));
    }

    /// Learns a write that lies in the container's writable set, in any
    /// mode: new anchors keep being learned in monitor and protect mode
    /// (nothing there is refused or alerted). Returns whether it was new;
    /// None when the event is not such a write, and so is for
    /// [`Profile::check_in`] to judge (which finds nothing to say of one
    /// that is: the caller need not ask it).
    pub fn learn_writable(&mut self, ev: &Event, set: &WritableSet, now: u64) -> Option<bool> {
        let Some(Obs::Written { path, content: true, .. }) = classify(ev, None) else { return None };
        let WriteClass::Writable(d) = classify_write(path, set) else { return None };
        // As `observe_in` learns it, without classifying the event again.
        let new = self.learn_path(Section::WrittenDirs, &d.path, Seen::now(now));
        if new {
            self.learned_new(now);
        }
        Some(new)
    }

    /// Adds what `d` found missing to the profile, as an operator's
    /// decision ("add to profile" from an alert): the executable, its
    /// parent or run name, the port, the peer, the directory or the path.
    /// Returns false when it was there already (or its section is full,
    /// which is counted as overflow).
    pub fn allow(&mut self, d: &Deviation, now: u64) -> bool {
        let seen = Seen::now(now);
        let added = match d {
            Deviation::NewExecutable { path } => self.learn_exec(path, seen).is_some_and(|(_, new)| new),
            Deviation::NewParent { path, parent } => match self.learn_exec(path, seen) {
                Some((pos, new)) => self.learn_parent(pos, parent, 1) | new,
                None => false,
            },
            Deviation::NewName { path, name } => match self.learn_exec(path, seen) {
                Some((pos, new)) => self.learn_name(pos, name, 1) | new,
                None => false,
            },
            Deviation::NewCode { path, code } => match self.learn_exec(path, seen) {
                Some((pos, new)) => {
                    let p = if code == STDIN_CODE { Program::Stdin } else { Program::Code(normalise_code(code)) };
                    self.learn_program(pos, &p, 1) | new
                }
                None => false,
            },
            Deviation::NewListen { port, proto } => self.learn_listen(*port, *proto, seen),
            Deviation::NewOutbound { peer, port, proto } => {
                self.index.outbound.find_exact(peer, *port, *proto).is_none() && self.learn_flow(false, peer.clone(), *port, *proto, seen)
            }
            Deviation::NewInbound { peer, port, proto } => {
                self.index.inbound.find_exact(peer, *port, *proto).is_none() && self.learn_flow(true, peer.clone(), *port, *proto, seen)
            }
            Deviation::NewWrittenDir { dir } => self.learn_path(Section::WrittenDirs, dir, seen),
            Deviation::NewSensitiveRead { path } => self.learn_path(Section::SensitiveReads, path, seen),
            // Only a policy's writable entries take a path out of the
            // protected set.
            Deviation::ProtectedWrite { .. } => false,
        };
        if added {
            self.learned_new(now);
        }
        added
    }

    /// Finds or adds the executable; `None` when the section is full.
    pub(super) fn learn_exec(&mut self, path: &str, seen: Seen) -> Option<(usize, bool)> {
        if let Some(i) = self.index.exec.get(path) {
            let e = &mut self.spec.executables[i.pos];
            seen.apply(&mut e.first_seen, &mut e.last_seen, &mut e.count);
            return Some((i.pos, false));
        }
        if self.spec.executables.len() >= MAX_ENTRIES {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(seen.count.max(1));
            return None;
        }
        let pos = self.spec.executables.len();
        self.spec.executables.push(Executable {
            path: path.to_string(),
            first_seen: Timestamp(seen.first),
            last_seen: Timestamp(seen.last),
            count: seen.count,
            ..Executable::default()
        });
        self.index.exec.insert(path.to_string(), ExecIdx { pos, ..ExecIdx::default() });
        Some((pos, true))
    }

    pub(super) fn learn_parent(&mut self, pos: usize, parent: &str, overflow_count: u64) -> bool {
        let e = &mut self.spec.executables[pos];
        let Some(ix) = self.index.exec.get_mut(&e.path) else { return false };
        if ix.parents.contains(parent) {
            return false;
        }
        if e.parents.len() >= MAX_PARENTS {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(overflow_count.max(1));
            return false;
        }
        e.parents.push(parent.to_string());
        ix.parents.insert(parent.to_string());
        true
    }

    pub(super) fn learn_name(&mut self, pos: usize, name: &str, overflow_count: u64) -> bool {
        let e = &mut self.spec.executables[pos];
        let Some(ix) = self.index.exec.get_mut(&e.path) else { return false };
        if ix.names.contains(name) {
            return false;
        }
        if e.names.len() >= MAX_NAMES || name.len() > MAX_ARG_BYTES {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(overflow_count.max(1));
            return false;
        }
        e.names.push(name.to_string());
        ix.names.insert(name.to_string());
        true
    }

    /// Learns an interpreter's inline code (normalised) or that it reads
    /// stdin; code past [`MAX_CODES`] or [`MAX_CODE_BYTES`] is overflow.
    pub(super) fn learn_program(&mut self, pos: usize, program: &Program, overflow_count: u64) -> bool {
        let e = &mut self.spec.executables[pos];
        let Some(ix) = self.index.exec.get_mut(&e.path) else { return false };
        let code = match program {
            Program::Stdin => return !std::mem::replace(&mut e.stdin, true),
            Program::Code(c) => c,
        };
        if ix.code.contains(code) {
            return false;
        }
        if e.code.len() >= MAX_CODES || code.len() > MAX_CODE_BYTES {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(overflow_count.max(1));
            return false;
        }
        e.code.push(code.clone());
        ix.code.insert(code.clone());
        true
    }

    pub(super) fn learn_args(&mut self, pos: usize, argv: &[String]) -> bool {
        let e = &mut self.spec.executables[pos];
        if e.args_pattern.is_some() || e.args.iter().any(|a| a.as_slice() == argv) {
            return false;
        }
        if e.args.len() >= MAX_ARGS_LISTS || argv.len() > MAX_ARGV || argv.iter().any(|a| a.len() > MAX_ARG_BYTES) {
            e.args.clear();
            e.args_pattern = Some(ArgsPattern::Any);
        } else {
            e.args.push(argv.to_vec());
        }
        true
    }

    pub(super) fn learn_listen(&mut self, port: u16, proto: Protocol, seen: Seen) -> bool {
        if let Some(&pos) = self.index.listen.get(&(port, proto)) {
            let l = &mut self.spec.listening[pos];
            seen.apply(&mut l.first_seen, &mut l.last_seen, &mut l.count);
            return false;
        }
        if self.spec.listening.len() >= MAX_ENTRIES {
            self.spec.overflow.listening = self.spec.overflow.listening.saturating_add(seen.count.max(1));
            return false;
        }
        self.index.listen.insert((port, proto), self.spec.listening.len());
        self.spec.listening.push(Listen {
            port,
            protocol: proto,
            first_seen: Timestamp(seen.first),
            last_seen: Timestamp(seen.last),
            count: seen.count,
        });
        true
    }

    pub(super) fn flows_mut(&mut self, inbound: bool) -> (&mut Vec<Flow>, &mut FlowIndex, &mut u64) {
        if inbound {
            (&mut self.spec.inbound, &mut self.index.inbound, &mut self.spec.overflow.inbound)
        } else {
            (&mut self.spec.outbound, &mut self.index.outbound, &mut self.spec.overflow.outbound)
        }
    }

    /// Adds a flow the caller found missing.
    pub(super) fn learn_flow(&mut self, inbound: bool, peer: Peer, port: u16, protocol: Protocol, seen: Seen) -> bool {
        let (flows, fix, overflow) = self.flows_mut(inbound);
        if flows.len() >= MAX_ENTRIES {
            *overflow = overflow.saturating_add(seen.count.max(1));
            return false;
        }
        fix.insert(&peer, port, protocol, flows.len());
        flows.push(Flow { peer, port, protocol, first_seen: Timestamp(seen.first), last_seen: Timestamp(seen.last), count: seen.count });
        true
    }

    pub(super) fn learn_path(&mut self, section: Section, path: &str, seen: Seen) -> bool {
        let (paths, pix, overflow) = match section {
            Section::WrittenDirs => (&mut self.spec.written_dirs, &mut self.index.written, &mut self.spec.overflow.written_dirs),
            _ => (&mut self.spec.sensitive_reads, &mut self.index.sensitive, &mut self.spec.overflow.sensitive_reads),
        };
        if let Some(&pos) = pix.get(path) {
            let p = &mut paths[pos];
            seen.apply(&mut p.first_seen, &mut p.last_seen, &mut p.count);
            return false;
        }
        if paths.len() >= MAX_ENTRIES {
            *overflow = overflow.saturating_add(seen.count.max(1));
            return false;
        }
        pix.insert(path.to_string(), paths.len());
        paths.push(PathEntry {
            path: path.to_string(),
            first_seen: Timestamp(seen.first),
            last_seen: Timestamp(seen.last),
            count: seen.count,
        });
        true
    }

    /// Records the content hash of a learned executable that lives outside
    /// the image (see [`Executable::sha256`]); the newest content wins.
    /// Returns whether it changed.
    pub fn set_sha256(&mut self, path: &str, sha256: &str) -> bool {
        let Some(i) = self.index.exec.get(path) else { return false };
        let e = &mut self.spec.executables[i.pos];
        if e.sha256.as_deref() == Some(sha256) {
            return false;
        }
        e.sha256 = Some(sha256.to_string());
        true
    }
}
