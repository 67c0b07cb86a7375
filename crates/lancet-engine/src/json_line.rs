//! `lancet trace --format json` lines written straight into one reused
//! buffer: the same bytes as [`crate::output::write_falco_json`] (a test
//! holds them equal), without its per-event allocations (the time, the
//! `output` text, the fields struct's strings) and without formatting what
//! does not change: a container's fields are serialised once per container,
//! and the date and time of day once per second.

use crate::attribution::{Attribution, ContainerInfo, PodInfo};
use crate::event::{Event, EventKind, FileOp, NetEvent, NetOp};
use crate::output::{category, civil_from_days, errno_name, l4proto, split_image, Record};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

/// Containers whose fields are kept serialised; past it the cache starts
/// again (a host runs far fewer containers at once).
const MAX_CONTAINERS: usize = 1024;

/// Falco JSON lines, one per [`JsonLines::push`], in a buffer the caller
/// writes out and clears.
#[derive(Default)]
pub struct JsonLines {
    buf: Vec<u8>,
    /// The second `time_prefix` was made for, and `YYYY-MM-DDTHH:MM:SS`.
    second: Option<u64>,
    time_prefix: [u8; 19],
    /// The same second's decimal digits: `evt.time` (ns since the epoch)
    /// is them and the nine digits of the nanoseconds `time` has made.
    second_digits: Vec<u8>,
    /// A container's fields, from `"container.id"` to its last pod field,
    /// by the address of its `Arc` (held, so the address is not reused).
    containers: crate::FastMap<usize, (Arc<ContainerInfo>, Vec<u8>)>,
    /// The process fields of the last two processes seen: the next event
    /// of either (a stream of writes; a client and its server, turn about)
    /// copies them.
    processes: [ProcessFields; 2],
    /// Which of `processes` was used last.
    last_process: usize,
}

/// `"proc.pid"` to `"cgroup.id"` as written, and what they were made of.
#[derive(Default)]
struct ProcessFields {
    /// (pid, tid, ppid, uid, gid, cgroup id); None before the first line.
    key: Option<(u32, u32, u32, u32, u32, u64)>,
    comm: String,
    fields: Vec<u8>,
}

impl ProcessFields {
    fn key(ev: &Event) -> Option<(u32, u32, u32, u32, u32, u64)> {
        let p = &ev.process;
        Some((p.pid, p.tid, p.ppid, p.uid, p.gid, ev.cgroup_id))
    }

    /// Whether the fields are `ev`'s process's.
    fn is_for(&self, ev: &Event) -> bool {
        self.key == Self::key(ev) && self.comm == ev.process.comm
    }

    fn update(&mut self, ev: &Event) {
        let p = &ev.process;
        self.key = Self::key(ev);
        crate::batch::set_str(&mut self.comm, &p.comm);
        let b = &mut self.fields;
        b.clear();
        b.extend_from_slice(b",\"proc.pid\":");
        uint(b, p.pid.into());
        b.extend_from_slice(b",\"proc.tid\":");
        uint(b, p.tid.into());
        b.extend_from_slice(b",\"proc.ppid\":");
        uint(b, p.ppid.into());
        b.extend_from_slice(b",\"proc.name\":");
        string(b, &p.comm);
        b.extend_from_slice(b",\"user.uid\":");
        uint(b, p.uid.into());
        b.extend_from_slice(b",\"group.gid\":");
        uint(b, p.gid.into());
        b.extend_from_slice(b",\"cgroup.id\":");
        uint(b, ev.cgroup_id);
        b.push(b',');
    }
}

impl JsonLines {
    pub fn new() -> Self {
        JsonLines { buf: Vec::with_capacity(64 * 1024), ..JsonLines::default() }
    }

    /// The lines pushed since the last [`clear`](Self::clear).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Appends one line (with its newline) for `r`.
    pub fn push(&mut self, r: &Record<'_>, rule: &str, priority: &str) {
        let ev = r.event;
        let time = self.time(ev.time_ns);
        let process = self.process_fields(ev);
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"time\":\"");
        b.extend_from_slice(&time);
        b.extend_from_slice(b"\",\"rule\":");
        string(b, rule);
        b.extend_from_slice(b",\"priority\":");
        string(b, priority);
        b.extend_from_slice(b",\"source\":\"lancet\",\"hostname\":");
        string(b, r.hostname);
        b.extend_from_slice(b",\"tags\":[\"lancet\",\"");
        b.extend_from_slice(category(&ev.kind).as_bytes());
        b.extend_from_slice(b"\"],\"output\":\"");
        b.extend_from_slice(&time);
        b.push(b' ');
        b.extend_from_slice(ev.kind.evt_type().as_bytes());
        b.extend_from_slice(b" by ");
        escape(b, &ev.process.comm);
        b.extend_from_slice(b" (pid=");
        uint(b, ev.process.pid.into());
        b.extend_from_slice(b") in ");
        escape(b, r.container_label());
        b.extend_from_slice(b": ");
        let written = summary(b, ev);
        b.extend_from_slice(b"\",\"output_fields\":{\"evt.time\":");
        if ev.time_ns >= 1_000_000_000 {
            b.extend_from_slice(&self.second_digits);
            b.extend_from_slice(&time[20..29]);
        } else {
            uint(b, ev.time_ns);
        }
        b.extend_from_slice(b",\"evt.type\":\"");
        b.extend_from_slice(ev.kind.evt_type().as_bytes());
        b.push(b'"');
        if let EventKind::Net(n) = &ev.kind {
            b.extend_from_slice(b",\"evt.res\":\"");
            errno(b, n.result);
            b.push(b'"');
        }
        b.extend_from_slice(&self.processes[process].fields);
        match r.attribution {
            Attribution::Host => b.extend_from_slice(b"\"container.id\":\"host\",\"container.name\":\"host\",\"k8s.pod.name\":null"),
            Attribution::Unknown { cgroup_path, reason, .. } => {
                b.extend_from_slice(
                    b"\"container.id\":\"unknown\",\"container.name\":\"unknown\",\"k8s.pod.name\":null,\"lancet.cgroup.path\":",
                );
                match cgroup_path {
                    Some(path) => string(b, path),
                    None => b.extend_from_slice(b"null"),
                }
                b.extend_from_slice(b",\"lancet.unknown_reason\":");
                string(b, reason);
            }
            Attribution::Container(c) => {
                let key = Arc::as_ptr(c) as usize;
                if !self.containers.contains_key(&key) {
                    if self.containers.len() >= MAX_CONTAINERS {
                        self.containers.clear();
                    }
                    self.containers.insert(key, (Arc::clone(c), container_fields(c)));
                }
                if let Some((_, fields)) = self.containers.get(&key) {
                    b.extend_from_slice(fields);
                }
            }
        }
        kind_fields(b, ev, written);
        b.extend_from_slice(b"}}\n");
    }

    /// Which of `processes` holds `ev`'s process's fields, made anew in the
    /// one used longer ago when neither does.
    fn process_fields(&mut self, ev: &Event) -> usize {
        let last = self.last_process;
        if !self.processes[last].is_for(ev) {
            let other = 1 - last;
            if !self.processes[other].is_for(ev) {
                self.processes[other].update(ev);
            }
            self.last_process = other;
        }
        self.last_process
    }

    /// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the date and time of day made
    /// once per second.
    fn time(&mut self, epoch_ns: u64) -> [u8; 30] {
        let secs = epoch_ns / 1_000_000_000;
        if self.second != Some(secs) {
            let days = (secs / 86_400) as i64;
            let rem = secs % 86_400;
            let (y, m, d) = civil_from_days(days);
            let mut w = &mut self.time_prefix[..];
            // Years past 9999 (a clock gone wrong) are cut to their last
            // four digits rather than shift every field.
            let _ = write!(w, "{:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", y % 10_000, rem / 3600, rem / 60 % 60, rem % 60);
            self.second = Some(secs);
            self.second_digits.clear();
            uint(&mut self.second_digits, secs);
        }
        let mut t = [0u8; 30];
        t[..19].copy_from_slice(&self.time_prefix);
        t[19] = b'.';
        let mut nanos = epoch_ns % 1_000_000_000;
        for i in (20..29).rev() {
            t[i] = b'0' + (nanos % 10) as u8;
            nanos /= 10;
        }
        t[29] = b'Z';
        t
    }
}

/// A container's own fields, in `output_fields`' order, serialised once.
fn container_fields(c: &ContainerInfo) -> Vec<u8> {
    #[derive(Serialize)]
    struct Block<'a> {
        #[serde(rename = "container.id")]
        id: &'a str,
        #[serde(rename = "container.full_id")]
        full_id: &'a str,
        #[serde(rename = "container.name")]
        name: &'a str,
        #[serde(rename = "container.type")]
        runtime: String,
        #[serde(rename = "container.image")]
        image: &'a str,
        #[serde(rename = "container.image.repository")]
        repository: &'a str,
        #[serde(rename = "container.image.tag")]
        tag: &'a str,
        #[serde(rename = "container.image.id")]
        image_id: &'a str,
        #[serde(rename = "container.image.digest")]
        digest: &'a str,
        #[serde(rename = "container.labels", skip_serializing_if = "Option::is_none")]
        labels: Option<&'a BTreeMap<String, String>>,
        #[serde(rename = "k8s.pod.name")]
        pod_name: Option<&'a str>,
        #[serde(flatten)]
        pod: Option<Pod<'a>>,
    }
    #[derive(Serialize)]
    struct Pod<'a> {
        #[serde(rename = "k8s.ns.name")]
        namespace: &'a str,
        #[serde(rename = "k8s.pod.uid")]
        uid: &'a str,
        #[serde(rename = "k8s.container.name")]
        container: &'a str,
    }
    let (repository, tag) = split_image(&c.image);
    fn pod(p: &PodInfo) -> Pod<'_> {
        Pod { namespace: &p.namespace, uid: &p.uid, container: &p.container_name }
    }
    let block = Block {
        id: c.short_id(),
        full_id: &c.id,
        name: &c.name,
        runtime: c.runtime.to_string(),
        image: &c.image,
        repository,
        tag,
        image_id: &c.image_id,
        digest: &c.image_digest,
        labels: Some(&c.labels).filter(|l| !l.is_empty()),
        pod_name: c.pod.as_ref().map(|p| p.name.as_str()),
        pod: c.pod.as_ref().map(pod),
    };
    let mut v = serde_json::to_vec(&block).unwrap_or_default();
    // The object's members, without its braces.
    if v.len() >= 2 {
        v.pop();
        v.remove(0);
    }
    v
}

/// The fields of one kind of event, each after a comma. What the `output`
/// text wrote already (`written`: a file event's escaped path, a socket
/// record's addresses and ports) they copy from the line rather than
/// escape or format again.
fn kind_fields(b: &mut Vec<u8>, ev: &Event, written: Written) {
    match &ev.kind {
        EventKind::Exec(x) => {
            b.extend_from_slice(b",\"proc.exepath\":");
            string(b, &x.filename);
            b.extend_from_slice(b",\"proc.cmdline\":\"");
            escape(b, &ev.process.comm);
            for a in x.argv.iter().skip(1) {
                b.push(b' ');
                escape(b, a);
            }
            b.extend_from_slice(b"\",\"proc.args\":\"");
            for (i, a) in x.argv.iter().skip(1).enumerate() {
                if i > 0 {
                    b.push(b' ');
                }
                escape(b, a);
            }
            b.extend_from_slice(b"\",\"proc.cwd\":");
            string(b, &x.cwd);
            b.extend_from_slice(b",\"proc.pname\":");
            string(b, &x.parent_comm);
            b.extend_from_slice(b",\"proc.pexepath\":");
            match &x.parent_exe {
                Some(p) => string(b, p),
                None => b.extend_from_slice(b"null"),
            }
            b.extend_from_slice(b",\"proc.exe_ino\":");
            uint(b, x.exe_ino);
            if x.truncated {
                b.extend_from_slice(b",\"lancet.truncated\":true");
            }
        }
        EventKind::Fork { child_pid, .. } => {
            b.extend_from_slice(b",\"proc.child_pid\":");
            uint(b, (*child_pid).into());
        }
        EventKind::Exit(x) => {
            b.extend_from_slice(b",\"proc.exit_code\":");
            opt_int(b, x.code);
            b.extend_from_slice(b",\"proc.exit_signal\":");
            opt_int(b, x.signal);
        }
        EventKind::Net(n) => {
            b.extend_from_slice(b",\"fd.name\":\"");
            let Written::Net { name, spans } = written else { return };
            b.extend_from_within(name);
            b.extend_from_slice(b"\",\"fd.sip\":\"");
            b.extend_from_within(spans.sip);
            b.extend_from_slice(b"\",\"fd.sport\":");
            b.extend_from_within(spans.sport);
            if let Some((dip, dport)) = spans.dest {
                b.extend_from_slice(b",\"fd.dip\":\"");
                b.extend_from_within(dip);
                b.extend_from_slice(b"\",\"fd.dport\":");
                b.extend_from_within(dport);
            }
            b.extend_from_slice(b",\"fd.l4proto\":\"");
            b.extend_from_slice(l4proto(n.proto).as_bytes());
            b.push(b'"');
        }
        EventKind::File(x) => {
            let Written::Path(path) = written else { return };
            b.extend_from_slice(b",\"fd.name\":\"");
            b.extend_from_within(path.clone());
            b.push(b'"');
            // Escaping leaves '/' alone and writes none: the escaped path's
            // last '/' ends the escaped directory.
            if let Some(at) = b[path.clone()].iter().rposition(|&c| c == b'/') {
                b.extend_from_slice(b",\"fd.directory\":\"");
                if at == 0 {
                    b.push(b'/');
                } else {
                    b.extend_from_within(path.start..path.start + at);
                }
                b.push(b'"');
            }
            b.extend_from_slice(b",\"fd.host_path\":\"");
            // The container's path is the end of the host's, as a rule.
            match x.host_path.strip_suffix(x.path.as_str()) {
                Some(root) => {
                    escape(b, root);
                    b.extend_from_within(path);
                }
                None => escape(b, &x.host_path),
            }
            b.push(b'"');
            if let Some(old) = &x.old_path {
                b.extend_from_slice(b",\"fs.path.source\":");
                string(b, old);
                b.extend_from_slice(b",\"fs.path.target\":");
                string(b, &x.path);
            }
        }
        EventKind::CgroupMkdir { path, .. } | EventKind::CgroupRmdir { path, .. } => {
            b.extend_from_slice(b",\"cgroup.path\":");
            string(b, path);
        }
    }
}

/// What the `output` text wrote that a field of the line repeats, by where
/// it lies in the line.
enum Written {
    Nothing,
    /// A file event's path, escaped.
    Path(Range<usize>),
    /// A socket record's `addr:port->addr:port`, and its parts.
    Net {
        name: Range<usize>,
        spans: NetSpans,
    },
}

/// Where [`net_name`] wrote an address's parts.
struct NetSpans {
    sip: Range<usize>,
    sport: Range<usize>,
    /// The destination's address and port; None for listen and bind.
    dest: Option<(Range<usize>, Range<usize>)>,
}

/// The human part of the `output` text (escaped): [`crate::output::summary`].
fn summary(b: &mut Vec<u8>, ev: &Event) -> Written {
    match &ev.kind {
        EventKind::Exec(x) => {
            escape(b, &x.filename);
            for a in x.argv.iter().skip(1) {
                b.push(b' ');
                escape(b, a);
            }
        }
        EventKind::Fork { child_pid, .. } => {
            b.extend_from_slice(b"child pid ");
            uint(b, (*child_pid).into());
        }
        EventKind::Exit(x) => match (x.code, x.signal) {
            (Some(c), _) => {
                b.extend_from_slice(b"exit code ");
                int(b, c.into());
            }
            (_, Some(s)) => {
                b.extend_from_slice(b"killed by signal ");
                int(b, s.into());
            }
            _ => b.extend_from_slice(b"exit"),
        },
        EventKind::Net(n) => {
            let start = b.len();
            let spans = net_name(b, n);
            let name = start..b.len();
            if n.result != 0 {
                b.extend_from_slice(b" (");
                errno(b, n.result);
                b.push(b')');
            }
            return Written::Net { name, spans };
        }
        EventKind::File(x) => {
            if let (FileOp::Rename, Some(old)) = (x.op, &x.old_path) {
                escape(b, old);
                b.extend_from_slice(b" -> ");
            }
            return Written::Path(written(b, |b| escape(b, &x.path)));
        }
        EventKind::CgroupMkdir { path, .. } | EventKind::CgroupRmdir { path, .. } => escape(b, path),
    }
    Written::Nothing
}

/// `addr:port->addr:port` (`addr:port` for listen and bind); nothing in it
/// needs escaping.
fn net_name(b: &mut Vec<u8>, n: &NetEvent) -> NetSpans {
    let sip = written(b, |b| ip(b, n.saddr));
    b.push(b':');
    let sport = written(b, |b| uint(b, n.sport.into()));
    let mut dest = None;
    if !matches!(n.op, NetOp::Listen | NetOp::Bind) {
        b.extend_from_slice(b"->");
        let dip = written(b, |b| ip(b, n.daddr));
        b.push(b':');
        dest = Some((dip, written(b, |b| uint(b, n.dport.into()))));
    }
    NetSpans { sip, sport, dest }
}

/// Where `write` wrote in `b`.
fn written(b: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = b.len();
    write(b);
    start..b.len()
}

/// An address as `Display` writes it; IPv4 without the formatting
/// machinery (a fifth of the JSON's cost per socket record).
fn ip(b: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    b.push(b'.');
                }
                uint(b, o.into());
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(b, "{a}");
        }
    }
}

fn errno(b: &mut Vec<u8>, e: i32) {
    match errno_name(e) {
        Some(n) => b.extend_from_slice(n.as_bytes()),
        None => {
            b.push(b'E');
            int(b, e.into());
        }
    }
}

fn opt_int(b: &mut Vec<u8>, v: Option<i32>) {
    match v {
        Some(v) => int(b, v.into()),
        None => b.extend_from_slice(b"null"),
    }
}

/// "00" to "99": two digits per division (a line holds about twenty
/// integers: times, pids, ports, ids).
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Written in place, right to left: a fixed-size extend (a few inlined
/// stores) cut to the digits. Copying a variable-length slice of digits
/// would call `memmove` for a few bytes, ten times a line.
fn uint(b: &mut Vec<u8>, mut v: u64) {
    let n = v.checked_ilog10().map_or(1, |l| l as usize + 1);
    let start = b.len();
    b.extend_from_slice(&[0u8; 20]);
    b.truncate(start + n);
    let out = &mut b[start..];
    let mut i = n;
    while v >= 100 {
        let r = 2 * (v % 100) as usize;
        v /= 100;
        i -= 2;
        out[i] = DIGIT_PAIRS[r];
        out[i + 1] = DIGIT_PAIRS[r + 1];
    }
    if v >= 10 {
        let r = 2 * v as usize;
        out[0] = DIGIT_PAIRS[r];
        out[1] = DIGIT_PAIRS[r + 1];
    } else {
        out[0] = b'0' + v as u8;
    }
}

fn int(b: &mut Vec<u8>, v: i64) {
    if v < 0 {
        b.push(b'-');
    }
    uint(b, v.unsigned_abs());
}

/// A JSON string, quoted.
fn string(b: &mut Vec<u8>, s: &str) {
    b.push(b'"');
    escape(b, s);
    b.push(b'"');
}

/// Bytes JSON strings escape: `"`, `\` and the control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Whether any byte of `bytes` is a control character, `"` or `\\`: eight
/// bytes at a time (the classic "has a byte less than n / equal to n" bit
/// tricks, exact for whether any byte qualifies), the rest by the table.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
        if below_space || has_zero(w ^ (ONES * b'"' as u64)) || has_zero(w ^ (ONES * b'\\' as u64)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| NEEDS_ESCAPE[c as usize])
}

/// `s` escaped as serde_json escapes it: `"`, `\` and control characters
/// (the short forms where JSON has them, else `\u00XX` in lower case hex);
/// everything else as it is.
fn escape(b: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    // Paths, names and ids rarely hold any: one pass to find out.
    if !needs_escape(bytes) {
        b.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[c as usize] {
            continue;
        }
        let short: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => b"",
        };
        b.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            b.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 0xf) as usize]]);
        } else {
            b.extend_from_slice(short);
        }
        start = i + 1;
    }
    b.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests;
