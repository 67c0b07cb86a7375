//! The response ladder and the protect-mode decisions that the enforcement
//! backends ask for.
//!
//! The ladder, mildest first: refuse the one operation (block), kill the one
//! process, isolate the container's network, freeze the container. A verdict
//! gets the step its rule names; it climbs only when the rule has an
//! `escalate` clause and keeps matching (N times in a window). Isolation and
//! freezing always carry an expiry. Killing the container is not a step.
//!
//! Exec and open decisions run on the fanotify permission path, so
//! [`decide_exec`] and [`decide_open`] allocate nothing and read only
//! in-memory state; the backend gathers the facts (a `stat`, the task's
//! exec) and carries the answer out.

use crate::drift::{classify_file, classify_indirect, DriftKind, FileFacts, Origin, ProgramSource};
use crate::policy::{Action, Verdict};
use crate::profile::parent_dir;
use crate::profile::{Flow, Listen, Peer, Profile, Protocol};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

/// What to do about one verdict in protect mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Response {
    pub action: Action,
    /// The rule's `escalate` clause raised the step.
    pub escalated: bool,
    /// For isolate and freeze: when the measure ends by itself.
    pub expire: Option<Duration>,
}

/// Counts matches per (container, rule) to apply `escalate` clauses.
/// Bounded: at most `capacity` (container, rule) pairs are tracked.
#[derive(Debug)]
pub struct Ladder {
    default_expire: Duration,
    capacity: usize,
    hits: HashMap<(String, String), VecDeque<u64>>,
}

impl Ladder {
    pub fn new(default_expire: Duration, capacity: usize) -> Self {
        Ladder { default_expire, capacity: capacity.max(1), hits: HashMap::new() }
    }

    /// The step for a verdict in protect mode, counting it toward its rule's
    /// escalation.
    pub fn respond(&mut self, container_id: &str, v: &Verdict, now_ns: u64) -> Response {
        let mut action = v.action;
        let mut escalated = false;
        let mut expire = None;
        if let Some(esc) = v.escalate {
            let window = esc.within.0.as_nanos() as u64;
            let key = (container_id.to_string(), v.rule.to_string());
            if !self.hits.contains_key(&key) && self.hits.len() >= self.capacity {
                // Forget the pair whose last hit is oldest.
                if let Some(old) = self.hits.iter().min_by_key(|(_, q)| q.back().copied().unwrap_or(0)).map(|(k, _)| k.clone()) {
                    self.hits.remove(&old);
                }
            }
            let q = self.hits.entry(key).or_default();
            while q.front().is_some_and(|&t| now_ns.saturating_sub(t) > window) {
                q.pop_front();
            }
            q.push_back(now_ns);
            // Never more entries than the threshold needs.
            while q.len() > esc.after as usize {
                q.pop_front();
            }
            if q.len() >= esc.after as usize && esc.to > action {
                action = esc.to;
                escalated = true;
            }
            expire = esc.expire.map(|s| s.0);
        }
        if matches!(action, Action::Isolate | Action::Freeze) {
            expire = Some(expire.unwrap_or(self.default_expire));
        } else {
            expire = None;
        }
        Response { action, escalated, expire }
    }

    /// Drops the counters of a container that went away.
    pub fn forget_container(&mut self, container_id: &str) {
        self.hits.retain(|(c, _), _| c != container_id);
    }
}

/// Why protect mode refused an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    Drift(DriftKind),
    NotInProfile,
    /// An approved interpreter handed inline code, or a program on stdin,
    /// that its profile never learned for it.
    UnlearnedCode,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Drift(k) => k.as_str(),
            DenyReason::NotInProfile => "not_in_profile",
            DenyReason::UnlearnedCode => "unlearned_code",
        }
    }
}

/// The answer to an exec permission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecVerdict {
    /// `remember`: the approval may be cached in the kernel (an ignore mark
    /// on the inode, which the kernel drops when the file changes).
    Allow {
        remember: bool,
    },
    Deny(DenyReason),
    /// An approved interpreter or loader: allowed if what it was handed
    /// (a script, inline code, stdin) passes [`decide_program`].
    JudgeProgram,
}

/// Where the exec'd file lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMount {
    /// The container's root filesystem (the image and its writable layer).
    Root,
    /// Another mount of the container: a volume, a bind mount, a tmpfs.
    /// Nothing there is an image file. `content_learned`: the profile
    /// learned an executable at this path with the content the file has
    /// now (the caller hashes it only for such mounts).
    Other { tmpfs: bool, content_learned: bool },
}

/// What the exec permission path knows about one request.
#[derive(Debug, Clone, Copy)]
pub struct ExecRequest<'a> {
    /// As the container sees it; empty when it was longer than PATH_MAX
    /// (then the file's identity alone decides).
    pub path: &'a str,
    pub mount: ExecMount,
    /// The file is approved only as an interpreter or loader.
    pub interpreter: bool,
    /// The file lies in the container's writable layer.
    pub in_upper: Option<bool>,
    /// The path is in the image baseline (None: no baseline).
    pub in_baseline: Option<bool>,
    /// What the write log knows about the path.
    pub written: Option<&'a Origin>,
    /// The profile lists this file (by any name that resolves to it:
    /// fanotify reports the file, not the symlink that was run).
    pub in_profile: bool,
}

/// Protect mode's exec rule: drift is always refused (a file off the root
/// filesystem is drift unless learned there with its content); anything
/// else must be in the learned profile, and an interpreter's program is
/// judged too. Only approvals of image files are remembered in the
/// kernel, so a file that may still change is asked about every time.
pub fn decide_exec(req: &ExecRequest<'_>) -> ExecVerdict {
    if let ExecMount::Other { tmpfs, content_learned } = req.mount {
        if content_learned {
            return ExecVerdict::Allow { remember: false };
        }
        let kind = if tmpfs || req.path.starts_with("/dev/shm/") { DriftKind::Tmpfs } else { DriftKind::Volume };
        return ExecVerdict::Deny(DenyReason::Drift(kind));
    }
    if req.path.is_empty() {
        // An interpreter's operand cannot be placed without the path.
        return if req.in_profile && !req.interpreter {
            ExecVerdict::Allow { remember: false }
        } else {
            ExecVerdict::Deny(DenyReason::NotInProfile)
        };
    }
    let facts = FileFacts { in_upper: req.in_upper, in_baseline: req.in_baseline };
    if let Some(kind) = classify_file(req.path, None, req.written, facts) {
        return ExecVerdict::Deny(DenyReason::Drift(kind));
    }
    if !req.in_profile {
        return ExecVerdict::Deny(DenyReason::NotInProfile);
    }
    if req.interpreter {
        return ExecVerdict::JudgeProgram;
    }
    ExecVerdict::Allow { remember: req.written.is_none() && req.in_upper != Some(true) }
}

/// What the backend found out about what an approved interpreter was
/// handed (see [`ProgramSource`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramFacts {
    /// A script or loader target: on another mount than the root
    /// filesystem, and what the root's layers say of it.
    File {
        off_root: bool,
        facts: FileFacts,
    },
    /// Inline code: its profile learned it for this interpreter.
    Code {
        learned: bool,
    },
    /// A program on stdin: learned for this interpreter, or a terminal
    /// (an operator's interactive shell, judged as the program alone).
    Stdin {
        learned: bool,
        terminal: bool,
    },
    Other,
}

/// Judges what an approved interpreter (`interpreter`, its path) was
/// handed: a script or loader target that drifted from the image, or
/// inline code or a program on stdin its profile did not learn for it
/// (unless `code_check` is off, `interpreterCode: any`). Returns the path
/// to name in the alert and why it is refused.
pub fn decide_program<'a>(
    kind: DriftKind,
    source: &'a ProgramSource,
    facts: ProgramFacts,
    interpreter: &'a str,
    code_check: bool,
) -> Option<(&'a str, DenyReason)> {
    match (source, facts) {
        (ProgramSource::File(target), ProgramFacts::File { off_root, facts }) => {
            if off_root {
                return Some((target, DenyReason::Drift(kind)));
            }
            classify_indirect(kind, target, None, facts).map(|d| (target.as_str(), DenyReason::Drift(d.kind)))
        }
        (ProgramSource::Code(_) | ProgramSource::Stdin, _) if !code_check => None,
        (ProgramSource::Code(_), ProgramFacts::Code { learned }) => (!learned).then_some((interpreter, DenyReason::UnlearnedCode)),
        (ProgramSource::Stdin, ProgramFacts::Stdin { learned, terminal }) => {
            (!learned && !terminal).then_some((interpreter, DenyReason::UnlearnedCode))
        }
        // Facts of another kind than the source: nothing known, refused
        // for file and code sources alike.
        (ProgramSource::File(target), _) => Some((target, DenyReason::Drift(kind))),
        (ProgramSource::Code(_) | ProgramSource::Stdin, _) => Some((interpreter, DenyReason::UnlearnedCode)),
        (ProgramSource::Other, _) => None,
    }
}

/// What the open permission path knows about one request.
#[derive(Debug, Clone, Copy)]
pub struct OpenRequest<'a> {
    pub path: &'a str,
    /// A protected file (`/etc/shadow`), rather than a file in a
    /// write-protected directory.
    pub protected_file: bool,
    /// The opener's write intent; None: it could not be read.
    pub write: Option<bool>,
}

/// The answer to an open permission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenVerdict {
    Allow,
    /// Allowed without knowing whether it writes (fail open; the backend
    /// counts these).
    AllowUnknownIntent,
    Deny,
}

/// Protect mode's open rule: a protected file is read only where its
/// profile learned that read; in a write-protected directory reads pass and
/// writes only where the profile learned writes.
pub fn decide_open(profile: &Profile, req: &OpenRequest<'_>) -> OpenVerdict {
    if req.protected_file {
        return if profile.has_sensitive_read(req.path) { OpenVerdict::Allow } else { OpenVerdict::Deny };
    }
    match req.write {
        None => OpenVerdict::AllowUnknownIntent,
        Some(false) => OpenVerdict::Allow,
        Some(true) if profile.has_written_dir(parent_dir(req.path)) => OpenVerdict::Allow,
        Some(true) => OpenVerdict::Deny,
    }
}

/// One entry of a container's kernel allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct NetAllow {
    pub cidr: IpNet,
    /// None: any port.
    pub port: Option<u16>,
    /// None: TCP and UDP.
    pub proto: Option<Protocol>,
    /// `false`: outbound (connect, sendmsg); `true`: bind/listen.
    pub bind: bool,
}

/// A container's kernel allow-list as computed from its profile, and the
/// learned flows whose workload peer has no known address now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Sorted, without duplicates.
    pub rules: Vec<NetAllow>,
    /// (port, protocol) of learned flows to workload peers with no address
    /// known now. A peer's addresses are those seen since the agent
    /// started, so just after a restart most are not known yet.
    pub pending: Vec<(u16, Protocol)>,
}

/// What a re-apply writes to the kernel ([`AllowList::replace`]): the
/// container's whole new list, and how it differs from what was pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowPlan {
    pub rules: Vec<NetAllow>,
    pub added: Vec<NetAllow>,
    pub removed: Vec<NetAllow>,
}

/// The kernel allow-list of a protected workload, from its profile:
/// learned outbound flows (workload peers resolved to their current
/// addresses through `addresses_of`), learned listening ports, and DNS to
/// `resolvers` (unconnected UDP to a resolver is not seen while learning,
/// and refusing it would break name resolution). `resolvers` must come from
/// trusted configuration ([`crate::dns::trusted_resolvers`]), never from a
/// file the container can write.
pub fn net_allow_list(profile: &Profile, addresses_of: impl Fn(&str) -> Vec<IpAddr>, resolvers: &[IpAddr]) -> AllowList {
    let spec = profile.spec();
    let mut out = Vec::with_capacity(spec.outbound.len() + spec.listening.len() + resolvers.len());
    let mut pending = Vec::new();
    for Flow { peer, port, protocol, .. } in &spec.outbound {
        let nets: Vec<IpNet> = match peer {
            Peer::Cidr(n) => vec![*n],
            Peer::Workload(w) => {
                let known: Vec<IpNet> = addresses_of(w).into_iter().map(IpNet::from).collect();
                if known.is_empty() && !pending.contains(&(*port, *protocol)) {
                    pending.push((*port, *protocol));
                }
                known
            }
            // A name resolves to addresses the kernel cannot know; such
            // flows stay alert-only.
            Peer::Host(_) => Vec::new(),
        };
        for cidr in nets {
            out.push(NetAllow { cidr, port: Some(*port), proto: Some(*protocol), bind: false });
        }
    }
    for Listen { port, protocol, .. } in &spec.listening {
        for any in ["0.0.0.0/0", "::/0"] {
            let cidr: IpNet = any.parse().expect("literal network");
            out.push(NetAllow { cidr, port: Some(*port), proto: Some(*protocol), bind: true });
        }
    }
    for r in resolvers {
        out.push(NetAllow { cidr: IpNet::from(*r), port: Some(53), proto: None, bind: false });
    }
    sort_rules(&mut out);
    pending.sort();
    AllowList { rules: out, pending }
}

fn sort_rules(rules: &mut Vec<NetAllow>) {
    rules.sort_by_key(|a| (a.bind, a.cidr, a.port, a.proto));
    rules.dedup();
}

impl AllowList {
    /// The container's new list on a re-apply, given `pinned` (its rules as
    /// the kernel holds them): it replaces them. Every rule is computed
    /// again from the profile and trusted configuration; a pinned rule that
    /// is not is stale and goes (a resolver nothing trusted names any
    /// more, a flow taken out of the profile, an address an older agent
    /// read from the container). One kind stays: an egress rule to a single
    /// address on the port and protocol of a learned flow whose workload
    /// peer has no known address now. It may be that peer's, pinned before
    /// a restart, and dropping it would cut a learned flow until the next
    /// re-apply.
    pub fn replace(&self, pinned: &[NetAllow]) -> AllowPlan {
        let maybe_pending_peer = |p: &NetAllow| {
            !p.bind
                && p.cidr.prefix_len() == p.cidr.max_prefix_len()
                && matches!((p.port, p.proto), (Some(port), Some(proto)) if self.pending.contains(&(port, proto)))
        };
        let mut rules = self.rules.clone();
        rules.extend(pinned.iter().filter(|p| maybe_pending_peer(p)).copied());
        sort_rules(&mut rules);
        let added = rules.iter().filter(|r| !pinned.contains(r)).copied().collect();
        let removed = pinned.iter().filter(|p| !rules.contains(p)).copied().collect();
        AllowPlan { rules, added, removed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind, ExecEvent, FileOp, ProcessRef};
    use crate::policy::{parse_policies, PolicySet};
    use crate::profile::Span;

    fn verdict(action: Action, escalate: Option<crate::policy::Escalation>) -> Verdict {
        Verdict {
            rule: "r".into(),
            policy: "p".into(),
            severity: crate::policy::Severity::High,
            action,
            tags: Vec::<String>::new().into(),
            message: String::new(),
            escalate,
        }
    }

    #[test]
    fn ladder_climbs_only_when_the_rule_says_so() {
        let mut l = Ladder::new(Duration::from_secs(600), 16);
        let plain = verdict(Action::Block, None);
        for t in 0..10 {
            assert_eq!(l.respond("c", &plain, t).action, Action::Block);
        }
        let esc = crate::policy::Escalation { after: 3, within: Span(Duration::from_secs(60)), to: Action::KillProcess, expire: None };
        let v = verdict(Action::Block, Some(esc));
        let s = 1_000_000_000u64;
        assert_eq!(l.respond("c", &v, s).action, Action::Block);
        assert_eq!(l.respond("c", &v, 2 * s).action, Action::Block);
        let r = l.respond("c", &v, 3 * s);
        assert_eq!((r.action, r.escalated), (Action::KillProcess, true));
        // Another container counts on its own.
        assert_eq!(l.respond("d", &v, 3 * s).action, Action::Block);
        // Outside the window the count starts again.
        assert_eq!(l.respond("c", &v, 200 * s).action, Action::Block);
    }

    #[test]
    fn isolation_and_freeze_always_expire() {
        let mut l = Ladder::new(Duration::from_secs(900), 4);
        assert_eq!(l.respond("c", &verdict(Action::Isolate, None), 0).expire, Some(Duration::from_secs(900)));
        let esc = crate::policy::Escalation {
            after: 1,
            within: Span(Duration::from_secs(1)),
            to: Action::Freeze,
            expire: Some(Span(Duration::from_secs(30))),
        };
        let r = l.respond("c", &verdict(Action::Block, Some(esc)), 0);
        assert_eq!((r.action, r.expire), (Action::Freeze, Some(Duration::from_secs(30))));
        assert_eq!(l.respond("c", &verdict(Action::Block, None), 0).expire, None);
    }

    #[test]
    fn ladder_is_bounded() {
        let mut l = Ladder::new(Duration::from_secs(1), 2);
        let esc = crate::policy::Escalation { after: 5, within: Span(Duration::from_secs(60)), to: Action::KillProcess, expire: None };
        for c in ["a", "b", "c", "d"] {
            l.respond(c, &verdict(Action::Block, Some(esc)), 1);
        }
        assert!(l.hits.len() <= 2);
        l.forget_container("d");
        assert!(l.hits.keys().all(|(c, _)| c != "d"));
    }

    #[test]
    fn escalation_is_parsed_and_checked() {
        let doc = |esc: &str| {
            format!(
                "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  rules:\n    - name: r\n      match:\n        events: [execve]\n      action: block\n      severity: high\n      escalate:\n{esc}"
            )
        };
        let ok = parse_policies(&doc("        after: 3\n        within: 1m\n        to: kill-process\n"), "p.yaml").unwrap();
        let e = ok[0].spec.rules[0].escalate.unwrap();
        assert_eq!((e.after, e.within.0, e.to), (3, Duration::from_secs(60), Action::KillProcess));
        assert!(PolicySet::new(ok, false).is_ok());
        let errs = parse_policies(&doc("        after: 3\n        within: soon\n        to: kill-process\n"), "p.yaml").unwrap_err();
        let text = errs[0].to_string();
        assert!(text.starts_with("p.yaml:13:") && text.contains("escalate") && text.contains("soon"), "{text}");
        let weak = parse_policies(&doc("        after: 3\n        within: 1m\n        to: alert\n"), "p.yaml").unwrap();
        assert!(PolicySet::new(weak, false).is_err());
    }

    #[test]
    fn no_default_rule_kills_isolates_or_freezes() {
        for r in crate::policy::default_rules() {
            assert!(r.action <= Action::Block, "{} uses {}", r.name, r.action);
            assert!(r.escalate.is_none_or(|e| e.to <= Action::Block), "{}", r.name);
        }
    }

    fn learned(paths: &[&str]) -> Profile {
        let mut p = Profile::new("img", "sha256:1", 0);
        for path in paths {
            let ev = Event {
                time_ns: 1,
                cgroup_id: 1,
                process: ProcessRef::default(),
                kind: EventKind::Exec(ExecEvent {
                    filename: path.to_string(),
                    cwd: "/".into(),
                    argv: vec![path.to_string()],
                    parent_comm: "sh".into(),
                    parent_exe: None,
                    parent_outside: true,
                    exe_ino: 1,
                    exe_dev: 1,
                    exe_nlink: 1,
                    exe_fs_magic: crate::drift::OVERLAYFS_MAGIC,
                    truncated: false,
                    in_host_root: false,
                    in_parent_mnt_ns: false,
                }),
            };
            p.observe(&ev, None, 1);
        }
        p
    }

    #[test]
    fn exec_decisions() {
        let p = learned(&["/bin/httpd"]);
        let req = |path, in_upper, in_baseline, written| ExecRequest {
            path,
            mount: ExecMount::Root,
            interpreter: false,
            in_upper,
            in_baseline,
            written,
            in_profile: p.has_executable(path),
        };
        let decide_exec = |r: &ExecRequest<'_>| super::decide_exec(r);
        assert_eq!(decide_exec(&req("/bin/httpd", Some(false), Some(true), None)), ExecVerdict::Allow { remember: true });
        assert_eq!(decide_exec(&req("/bin/id", Some(false), Some(true), None)), ExecVerdict::Deny(DenyReason::NotInProfile));
        assert_eq!(decide_exec(&req("/tmp/ls", Some(true), None, None)), ExecVerdict::Deny(DenyReason::Drift(DriftKind::Written)));
        // A learned path that was since overwritten is drift, not approved.
        assert_eq!(
            decide_exec(&req("/bin/httpd", Some(true), Some(true), None)),
            ExecVerdict::Deny(DenyReason::Drift(DriftKind::Modified))
        );
        let o = Origin { time_ns: 1, pid: 2, comm: "cp".into(), op: FileOp::Create };
        assert_eq!(decide_exec(&req("/bin/httpd", None, None, Some(&o))), ExecVerdict::Deny(DenyReason::Drift(DriftKind::Written)));
        assert_eq!(decide_exec(&req("/dev/shm/x", None, None, None)), ExecVerdict::Deny(DenyReason::Drift(DriftKind::Tmpfs)));
        assert_eq!(
            decide_exec(&req("/bin/httpd", Some(false), Some(false), None)),
            ExecVerdict::Deny(DenyReason::Drift(DriftKind::NotInImage))
        );
    }

    #[test]
    fn execs_off_the_root_interpreters_and_long_paths() {
        let base = ExecRequest {
            path: "/data/tool",
            mount: ExecMount::Other { tmpfs: false, content_learned: false },
            interpreter: false,
            in_upper: None,
            in_baseline: None,
            written: None,
            in_profile: true,
        };
        // Nothing off the root filesystem is the image's, profile or not.
        assert_eq!(decide_exec(&base), ExecVerdict::Deny(DenyReason::Drift(DriftKind::Volume)));
        let tmpfs = ExecRequest { mount: ExecMount::Other { tmpfs: true, content_learned: false }, ..base };
        assert_eq!(decide_exec(&tmpfs), ExecVerdict::Deny(DenyReason::Drift(DriftKind::Tmpfs)));
        // Unless learned there with the content it still has: never remembered.
        let learned = ExecRequest { mount: ExecMount::Other { tmpfs: false, content_learned: true }, ..base };
        assert_eq!(decide_exec(&learned), ExecVerdict::Allow { remember: false });
        let root = ExecRequest { path: "/bin/sh", mount: ExecMount::Root, in_upper: Some(false), in_baseline: Some(true), ..base };
        assert_eq!(decide_exec(&root), ExecVerdict::Allow { remember: true });
        assert_eq!(decide_exec(&ExecRequest { interpreter: true, ..root }), ExecVerdict::JudgeProgram);
        // No path: the file's identity alone, and never for an interpreter.
        let long = ExecRequest { path: "", ..root };
        assert_eq!(decide_exec(&long), ExecVerdict::Allow { remember: false });
        assert_eq!(decide_exec(&ExecRequest { interpreter: true, ..long }), ExecVerdict::Deny(DenyReason::NotInProfile));
        assert_eq!(decide_exec(&ExecRequest { in_profile: false, ..long }), ExecVerdict::Deny(DenyReason::NotInProfile));
    }

    #[test]
    fn programs_handed_to_interpreters() {
        let clean = FileFacts { in_upper: Some(false), in_baseline: Some(true) };
        let script = ProgramSource::File("/app/run.sh".into());
        let file =
            |off_root, facts| decide_program(DriftKind::Interpreter, &script, ProgramFacts::File { off_root, facts }, "/bin/sh", true);
        assert_eq!(file(false, clean), None);
        assert_eq!(file(true, clean), Some(("/app/run.sh", DenyReason::Drift(DriftKind::Interpreter))));
        let written = FileFacts { in_upper: Some(true), in_baseline: Some(true) };
        assert_eq!(file(false, written), Some(("/app/run.sh", DenyReason::Drift(DriftKind::Interpreter))));
        let code = ProgramSource::Code("id".into());
        fn judge(src: &ProgramSource, facts: ProgramFacts, check: bool) -> Option<(&str, DenyReason)> {
            decide_program(DriftKind::Interpreter, src, facts, "/bin/sh", check)
        }
        assert_eq!(judge(&code, ProgramFacts::Code { learned: true }, true), None);
        assert_eq!(judge(&code, ProgramFacts::Code { learned: false }, true), Some(("/bin/sh", DenyReason::UnlearnedCode)));
        // `interpreterCode: any`.
        assert_eq!(judge(&code, ProgramFacts::Code { learned: false }, false), None);
        let stdin = ProgramSource::Stdin;
        assert_eq!(judge(&stdin, ProgramFacts::Stdin { learned: false, terminal: true }, true), None);
        assert_eq!(
            judge(&stdin, ProgramFacts::Stdin { learned: false, terminal: false }, true),
            Some(("/bin/sh", DenyReason::UnlearnedCode))
        );
        // Facts that do not fit the source are no facts: refused.
        assert_eq!(judge(&code, ProgramFacts::Other, true), Some(("/bin/sh", DenyReason::UnlearnedCode)));
        assert_eq!(judge(&ProgramSource::Other, ProgramFacts::Other, true), None);
    }

    #[test]
    fn open_decisions() {
        let mut p = learned(&[]);
        let file = |op, path: &str| Event {
            time_ns: 1,
            cgroup_id: 1,
            process: ProcessRef::default(),
            kind: EventKind::File(crate::event::FileEvent {
                op,
                path: path.into(),
                old_path: None,
                host_path: String::new(),
                is_dir: false,
            }),
        };
        p.observe(&file(FileOp::Open, "/etc/shadow"), None, 1);
        p.observe(&file(FileOp::Create, "/srv/data/a"), None, 1);
        let open = |path, protected_file, write| decide_open(&p, &OpenRequest { path, protected_file, write });
        assert_eq!(open("/etc/shadow", true, Some(false)), OpenVerdict::Allow);
        assert_eq!(open("/etc/gshadow", true, Some(false)), OpenVerdict::Deny);
        assert_eq!(open("/srv/data/b", false, Some(true)), OpenVerdict::Allow);
        assert_eq!(open("/srv/other/b", false, Some(true)), OpenVerdict::Deny);
        assert_eq!(open("/srv/other/b", false, Some(false)), OpenVerdict::Allow);
        assert_eq!(open("/srv/other/b", false, None), OpenVerdict::AllowUnknownIntent);
    }

    #[test]
    fn allow_list_from_profile() {
        let mut p = learned(&[]);
        let ev = |op, daddr: &str, dport| Event {
            time_ns: 1,
            cgroup_id: 1,
            process: ProcessRef::default(),
            kind: EventKind::Net(crate::event::NetEvent {
                op,
                proto: crate::event::Protocol::Tcp,
                saddr: "10.88.0.2".parse().unwrap(),
                sport: 8080,
                daddr: daddr.parse().unwrap(),
                dport,
                result: 0,
                netns: 1,
                totals: None,
            }),
        };
        p.observe(&ev(crate::event::NetOp::Listen, "0.0.0.0", 0), None, 1);
        p.observe(&ev(crate::event::NetOp::Connect, "10.88.0.3", 5432), Some(&crate::profile::PeerRef::Workload("db".into())), 1);
        p.observe(&ev(crate::event::NetOp::Connect, "192.0.2.7", 443), None, 1);
        let list =
            net_allow_list(&p, |w| if w == "db" { vec!["10.88.0.3".parse().unwrap()] } else { vec![] }, &["10.88.0.1".parse().unwrap()]);
        assert!(list.pending.is_empty(), "{list:?}");
        let list = list.rules;
        let has = |cidr: &str, port, bind| {
            list.iter().any(|a| a.cidr == cidr.parse::<IpNet>().unwrap() && a.port == Some(port) && a.bind == bind)
        };
        assert!(has("10.88.0.3/32", 5432, false), "{list:?}");
        assert!(has("192.0.2.7/32", 443, false));
        assert!(has("10.88.0.1/32", 53, false));
        assert!(has("0.0.0.0/0", 8080, true));
        assert!(!has("10.88.0.3/32", 5433, false));
    }

    fn rule(cidr: &str, port: Option<u16>, proto: Option<Protocol>) -> NetAllow {
        NetAllow { cidr: cidr.parse().unwrap(), port, proto, bind: false }
    }

    /// A profile with a learned flow to workload `db` on 5432/tcp and one
    /// to 192.0.2.7:443/tcp.
    fn with_peers() -> Profile {
        let mut p = learned(&[]);
        let ev = |daddr: &str, dport| Event {
            time_ns: 1,
            cgroup_id: 1,
            process: ProcessRef::default(),
            kind: EventKind::Net(crate::event::NetEvent {
                op: crate::event::NetOp::Connect,
                proto: crate::event::Protocol::Tcp,
                saddr: "10.88.0.2".parse().unwrap(),
                sport: 40000,
                daddr: daddr.parse().unwrap(),
                dport,
                result: 0,
                netns: 1,
                totals: None,
            }),
        };
        p.observe(&ev("10.88.0.3", 5432), Some(&crate::profile::PeerRef::Workload("db".into())), 1);
        p.observe(&ev("192.0.2.7", 443), None, 1);
        p
    }

    #[test]
    fn reapply_replaces_the_pinned_list() {
        let p = with_peers();
        let gw: IpAddr = "10.89.0.1".parse().unwrap();
        let list = net_allow_list(&p, |_| vec!["10.88.0.3".parse().unwrap()], &[gw]);
        let tcp = Some(Protocol::Tcp);
        let want = vec![rule("10.88.0.3/32", Some(5432), tcp), rule("10.89.0.1/32", Some(53), None), rule("192.0.2.7/32", Some(443), tcp)];
        assert_eq!(list.rules, want);
        // What an older agent pinned: a resolver it read from the
        // container's resolv.conf, a flow since taken out of the profile,
        // the peer's old address, and one rule still wanted.
        let pinned = [
            rule("10.89.0.2/32", Some(53), None),
            rule("198.51.100.1/32", Some(80), tcp),
            rule("10.88.0.9/32", Some(5432), tcp),
            rule("10.89.0.1/32", Some(53), None),
        ];
        let plan = list.replace(&pinned);
        assert_eq!(plan.rules, want, "the peer's address is known: its old one goes too");
        assert_eq!(plan.added, vec![rule("10.88.0.3/32", Some(5432), tcp), rule("192.0.2.7/32", Some(443), tcp)]);
        assert_eq!(plan.removed, vec![pinned[0], pinned[1], pinned[2]]);
        // Nothing pinned: everything is added; the same list again: nothing
        // changes.
        assert_eq!(list.replace(&[]).added, want);
        let again = list.replace(&want);
        assert!(again.added.is_empty() && again.removed.is_empty() && again.rules == want, "{again:?}");
    }

    #[test]
    fn reapply_keeps_what_may_be_a_peer_not_seen_since_a_restart() {
        let p = with_peers();
        let list = net_allow_list(&p, |_| Vec::new(), &[]);
        assert_eq!(list.pending, vec![(5432, Protocol::Tcp)]);
        let tcp = Some(Protocol::Tcp);
        let peer = rule("10.88.0.3/32", Some(5432), tcp);
        let pinned = [
            peer,
            // Not a learned workload flow's port and protocol, or not one
            // address, or a bind: stale.
            rule("10.88.0.3/32", Some(5432), Some(Protocol::Udp)),
            rule("10.88.0.3/32", Some(5432), None),
            rule("10.88.0.3/32", Some(53), None),
            rule("10.88.0.0/16", Some(5432), tcp),
            NetAllow { bind: true, ..peer },
        ];
        let plan = list.replace(&pinned);
        assert!(plan.rules.contains(&peer), "{plan:?}");
        assert_eq!(plan.removed, pinned[1..].to_vec());
        assert!(plan.added.iter().all(|r| !pinned.contains(r)));
    }
}
