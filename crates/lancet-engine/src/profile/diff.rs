//! Comparing and combining profiles: `diff` for people (what one adds
//! and lacks, with the images' baselines), `merge` for replicas and
//! imports.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Executables,
    Listening,
    Outbound,
    Inbound,
    WrittenDirs,
    SensitiveReads,
    /// The images' baselines (executables shipped), when both profiles
    /// have one: what an image update changed.
    Image,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Executables => "executables",
            Section::Listening => "listening",
            Section::Outbound => "outbound",
            Section::Inbound => "inbound",
            Section::WrittenDirs => "writtenDirs",
            Section::SensitiveReads => "sensitiveReads",
            Section::Image => "image",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    Added,
    Removed,
    /// In both, with other content (an image executable whose hash differs).
    Changed,
}

/// One entry that `other` has and `self` lacks (added), the reverse
/// (removed), or that differs (changed). Prints as `+ executables: /bin/sh`,
/// `- listening: 8080/tcp`, `+ executables: /bin/httpd <- /bin/sh` (a
/// parent), `+ executables: /proc/self/exe as ls` (a run name),
/// `~ image: /bin/busybox sha256 0123456789ab -> 89abcdef0123`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiffLine {
    pub section: Section,
    pub change: Change,
    pub entry: String,
}

impl fmt::Display for DiffLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.change {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Changed => '~',
        };
        write!(f, "{sign} {}: {}", self.section.as_str(), self.entry)
    }
}

/// Short form of a hash for people: its first 12 characters.
pub(super) fn short_hash(h: &str) -> &str {
    h.char_indices().nth(12).map_or(h, |(i, _)| &h[..i])
}

/// Executables added, removed and changed from baseline `a` to `b` (both
/// sorted by path), as [`Section::Image`] lines.
pub(super) fn diff_baselines(a: &Baseline, b: &Baseline, out: &mut Vec<DiffLine>) {
    let line = |change, entry: String| DiffLine { section: Section::Image, change, entry };
    let (mut x, mut y) = (a.executables().iter().peekable(), b.executables().iter().peekable());
    loop {
        match (x.peek(), y.peek()) {
            (Some(f), Some(g)) if f.path == g.path => {
                if f.sha256 != g.sha256 {
                    out.push(line(Change::Changed, format!("{} sha256 {} -> {}", f.path, short_hash(&f.sha256), short_hash(&g.sha256))));
                }
                x.next();
                y.next();
            }
            (Some(f), Some(g)) if f.path < g.path => {
                out.push(line(Change::Removed, f.path.clone()));
                x.next();
            }
            (Some(f), None) => {
                out.push(line(Change::Removed, f.path.clone()));
                x.next();
            }
            (_, Some(g)) => {
                out.push(line(Change::Added, g.path.clone()));
                y.next();
            }
            (None, None) => break,
        }
    }
}

impl Profile {
    /// Folds `other` (another replica, or an earlier run) into this profile:
    /// union of entries, earliest `firstSeen`, latest `lastSeen`, summed
    /// counts and overflow. Section bounds still hold: entries that do not
    /// fit are counted as overflow. Mode, metadata and image stay this
    /// profile's; the learning window widens to cover both. The baseline is
    /// this profile's, or `other`'s when this one has none (both come from
    /// the same image).
    pub fn merge(&mut self, other: &Profile) {
        let o = &other.spec;
        if self.spec.baseline.is_none() {
            self.spec.baseline.clone_from(&o.baseline);
        }
        let mut new = false;
        for e in &o.executables {
            let seen = Seen { first: e.first_seen.0, last: e.last_seen.0, count: e.count };
            let Some((pos, n)) = self.learn_exec(&e.path, seen) else { continue };
            new |= n;
            for p in &e.parents {
                new |= self.learn_parent(pos, p, 0);
            }
            for n in &e.names {
                new |= self.learn_name(pos, n, 0);
            }
            if e.args_pattern.is_some() {
                let x = &mut self.spec.executables[pos];
                new |= x.args_pattern.is_none();
                x.args_pattern = Some(ArgsPattern::Any);
                x.args.clear();
            }
            for a in &e.args {
                new |= self.learn_args(pos, a);
            }
            for c in &e.code {
                new |= self.learn_program(pos, &Program::Code(c.clone()), 0);
            }
            if e.stdin {
                new |= self.learn_program(pos, &Program::Stdin, 0);
            }
            if let Some(h) = &e.sha256 {
                let x = &mut self.spec.executables[pos];
                if x.sha256.is_none() {
                    x.sha256 = Some(h.clone());
                }
            }
        }
        for l in &o.listening {
            new |= self.learn_listen(l.port, l.protocol, Seen { first: l.first_seen.0, last: l.last_seen.0, count: l.count });
        }
        for (inbound, flows) in [(false, &o.outbound), (true, &o.inbound)] {
            for f in flows {
                let seen = Seen { first: f.first_seen.0, last: f.last_seen.0, count: f.count };
                let fix = if inbound { &self.index.inbound } else { &self.index.outbound };
                match fix.find_exact(&f.peer, f.port, f.protocol) {
                    Some(pos) => {
                        let x = &mut self.flows_mut(inbound).0[pos];
                        seen.apply(&mut x.first_seen, &mut x.last_seen, &mut x.count);
                    }
                    None => new |= self.learn_flow(inbound, f.peer.clone(), f.port, f.protocol, seen),
                }
            }
        }
        for (section, paths) in [(Section::WrittenDirs, &o.written_dirs), (Section::SensitiveReads, &o.sensitive_reads)] {
            for p in paths {
                new |= self.learn_path(section, &p.path, Seen { first: p.first_seen.0, last: p.last_seen.0, count: p.count });
            }
        }
        let (a, b) = (&mut self.spec.overflow, &o.overflow);
        for (x, y) in [
            (&mut a.executables, b.executables),
            (&mut a.listening, b.listening),
            (&mut a.outbound, b.outbound),
            (&mut a.inbound, b.inbound),
            (&mut a.written_dirs, b.written_dirs),
            (&mut a.sensitive_reads, b.sensitive_reads),
        ] {
            *x = x.saturating_add(y);
        }
        let l = &mut self.spec.learning;
        l.started = l.started.min(o.learning.started);
        if new {
            l.last_new = l.last_new.max(o.learning.last_new);
        }
    }

    /// Entries `other` has that this profile lacks (`Added`) and the reverse
    /// (`Removed`), section by section, sorted. When both profiles carry a
    /// baseline, the last section ([`Section::Image`]) lists the executables
    /// the images ship that were added, removed or changed (another
    /// SHA-256) from this image to `other`'s: what an image update brings,
    /// next to what its workload was seen doing.
    pub fn diff(&self, other: &Profile) -> Vec<DiffLine> {
        let (a, b) = (self.diff_keys(), other.diff_keys());
        let mut out: Vec<DiffLine> = b
            .difference(&a)
            .map(|(section, entry)| DiffLine { section: *section, change: Change::Added, entry: entry.clone() })
            .chain(a.difference(&b).map(|(section, entry)| DiffLine { section: *section, change: Change::Removed, entry: entry.clone() }))
            .collect();
        if let (Some(x), Some(y)) = (self.baseline(), other.baseline()) {
            diff_baselines(x, y, &mut out);
        }
        out.sort_by(|x, y| (x.section, &x.entry, x.change).cmp(&(y.section, &y.entry, y.change)));
        out
    }

    /// Whether `other` allows and refuses exactly what this profile does:
    /// the same mode and entries in every section, with their parents,
    /// names, arguments, code and hashes, and the same baseline. When and
    /// how often each entry was seen, the learning clock and the overflow
    /// counters do not count: a node sharing its profile again with only
    /// those changed must not make the others apply their enforcement
    /// again.
    pub fn same_rules(&self, other: &Profile) -> bool {
        fn strip(s: &ProfileSpec) -> ProfileSpec {
            let mut s = s.clone();
            s.mode_since = Timestamp::default();
            s.learning = Learning::default();
            s.overflow = Overflow::default();
            for e in &mut s.executables {
                (e.first_seen, e.last_seen, e.count) = Default::default();
            }
            for l in &mut s.listening {
                (l.first_seen, l.last_seen, l.count) = Default::default();
            }
            for f in s.outbound.iter_mut().chain(s.inbound.iter_mut()) {
                (f.first_seen, f.last_seen, f.count) = Default::default();
            }
            for p in s.written_dirs.iter_mut().chain(s.sensitive_reads.iter_mut()) {
                (p.first_seen, p.last_seen, p.count) = Default::default();
            }
            s
        }
        strip(&self.spec) == strip(&other.spec)
    }

    pub(super) fn diff_keys(&self) -> BTreeSet<(Section, String)> {
        let s = &self.spec;
        let mut k = BTreeSet::new();
        for e in &s.executables {
            k.insert((Section::Executables, e.path.clone()));
            for p in &e.parents {
                k.insert((Section::Executables, format!("{} <- {p}", e.path)));
            }
            for n in &e.names {
                k.insert((Section::Executables, format!("{} as {n}", e.path)));
            }
            for c in &e.code {
                k.insert((Section::Executables, format!("{} -c {c:?}", e.path)));
            }
            if e.stdin {
                k.insert((Section::Executables, format!("{} {STDIN_CODE}", e.path)));
            }
        }
        for l in &s.listening {
            k.insert((Section::Listening, format!("{}/{}", l.port, l.protocol)));
        }
        for (section, flows) in [(Section::Outbound, &s.outbound), (Section::Inbound, &s.inbound)] {
            for f in flows {
                k.insert((section, format!("{} {}/{}", f.peer, f.port, f.protocol)));
            }
        }
        for (section, paths) in [(Section::WrittenDirs, &s.written_dirs), (Section::SensitiveReads, &s.sensitive_reads)] {
            for p in paths {
                k.insert((section, p.path.clone()));
            }
        }
        k
    }
}
