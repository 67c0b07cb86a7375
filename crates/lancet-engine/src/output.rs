//! Output formats. JSON follows Falco's alert shape and field names, so
//! Falcosidekick, SIEM parsers and anything else that reads Falco reads lancet.

use crate::attribution::{Attribution, ContainerInfo};
use crate::event::{Event, EventKind, FileOp, L4Proto, NetOp};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;

/// An event with everything attribution found for it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub event: &'a Event,
    pub attribution: &'a Attribution,
    /// Hostname of this machine, as Falco reports it.
    pub hostname: &'a str,
}

impl Record<'_> {
    pub fn container(&self) -> Option<&ContainerInfo> {
        match self.attribution {
            Attribution::Container(c) => Some(c),
            _ => None,
        }
    }

    /// `host`, a container's name, or `unknown`.
    pub fn container_label(&self) -> &str {
        match self.attribution {
            Attribution::Host => "host",
            Attribution::Container(c) if !c.name.is_empty() => &c.name,
            Attribution::Container(c) => c.short_id(),
            Attribution::Unknown { .. } => "unknown",
        }
    }
}

/// RFC 3339 UTC with nanoseconds, as Falco prints `time`.
pub fn rfc3339_nanos(epoch_ns: u64) -> String {
    let secs = (epoch_ns / 1_000_000_000) as i64;
    let nanos = epoch_ns % 1_000_000_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Splits an image reference into repository and tag the way Falco does
/// (`registry:5000/app:1.2` → `registry:5000/app`, `1.2`); a digest reference
/// has no tag.
pub fn split_image(image: &str) -> (&str, &str) {
    let image = image.split('@').next().unwrap_or(image);
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, ""),
    }
}

/// Falco's `evt.res`: `SUCCESS` or the errno name.
fn evt_res(errno: i32) -> String {
    match errno {
        0 => "SUCCESS".into(),
        1 => "EPERM".into(),
        13 => "EACCES".into(),
        101 => "ENETUNREACH".into(),
        104 => "ECONNRESET".into(),
        110 => "ETIMEDOUT".into(),
        111 => "ECONNREFUSED".into(),
        113 => "EHOSTUNREACH".into(),
        n => format!("E{n}"),
    }
}

fn category(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Exec(_) | EventKind::Fork { .. } | EventKind::Exit(_) => "process",
        EventKind::Net(_) => "network",
        EventKind::File(_) => "filesystem",
        EventKind::CgroupMkdir { .. } | EventKind::CgroupRmdir { .. } => "container",
    }
}

fn proc_name(ev: &Event) -> &str {
    &ev.process.comm
}

/// The command line as Falco prints `proc.cmdline`: name then arguments.
fn cmdline(ev: &Event) -> Option<String> {
    match &ev.kind {
        EventKind::Exec(x) => {
            let mut s = String::from(proc_name(ev));
            for a in x.argv.iter().skip(1) {
                s.push(' ');
                s.push_str(a);
            }
            Some(s)
        }
        _ => None,
    }
}

fn net_fd_name(n: &crate::event::NetEvent) -> String {
    match n.op {
        NetOp::Listen | NetOp::Bind => format!("{}:{}", n.saddr, n.sport),
        _ => format!("{}:{}->{}:{}", n.saddr, n.sport, n.daddr, n.dport),
    }
}

/// One line of `lancet trace --format json`.
pub fn falco_json(r: &Record<'_>, rule: &str, priority: &str) -> Value {
    let ev = r.event;
    let mut f = Map::new();
    f.insert("evt.time".into(), json!(ev.time_ns));
    f.insert("evt.type".into(), json!(ev.kind.evt_type()));
    f.insert("proc.pid".into(), json!(ev.process.pid));
    f.insert("proc.tid".into(), json!(ev.process.tid));
    f.insert("proc.ppid".into(), json!(ev.process.ppid));
    f.insert("proc.name".into(), json!(ev.process.comm));
    f.insert("user.uid".into(), json!(ev.process.uid));
    f.insert("group.gid".into(), json!(ev.process.gid));
    f.insert("cgroup.id".into(), json!(ev.cgroup_id));
    match r.attribution {
        Attribution::Host => {
            f.insert("container.id".into(), json!("host"));
            f.insert("container.name".into(), json!("host"));
        }
        Attribution::Container(c) => {
            let (repo, tag) = split_image(&c.image);
            f.insert("container.id".into(), json!(c.short_id()));
            f.insert("container.full_id".into(), json!(c.id));
            f.insert("container.name".into(), json!(c.name));
            f.insert("container.type".into(), json!(c.runtime.to_string()));
            f.insert("container.image".into(), json!(c.image));
            f.insert("container.image.repository".into(), json!(repo));
            f.insert("container.image.tag".into(), json!(tag));
            f.insert("container.image.id".into(), json!(c.image_id));
            f.insert("container.image.digest".into(), json!(c.image_digest));
            if !c.labels.is_empty() {
                f.insert("container.labels".into(), json!(c.labels));
            }
            if let Some(p) = &c.pod {
                f.insert("k8s.pod.name".into(), json!(p.name));
                f.insert("k8s.ns.name".into(), json!(p.namespace));
                f.insert("k8s.pod.uid".into(), json!(p.uid));
                f.insert("k8s.container.name".into(), json!(p.container_name));
            }
        }
        Attribution::Unknown { cgroup_path, reason, .. } => {
            f.insert("container.id".into(), json!("unknown"));
            f.insert("container.name".into(), json!("unknown"));
            f.insert("lancet.cgroup.path".into(), json!(cgroup_path));
            f.insert("lancet.unknown_reason".into(), json!(reason));
        }
    }
    if r.container().map(|c| c.pod.is_none()).unwrap_or(true) {
        f.insert("k8s.pod.name".into(), Value::Null);
    }
    let summary = match &ev.kind {
        EventKind::Exec(x) => {
            f.insert("proc.exepath".into(), json!(x.filename));
            f.insert("proc.cmdline".into(), json!(cmdline(ev)));
            f.insert("proc.args".into(), json!(x.argv.iter().skip(1).cloned().collect::<Vec<_>>().join(" ")));
            f.insert("proc.cwd".into(), json!(x.cwd));
            f.insert("proc.pname".into(), json!(x.parent_comm));
            f.insert("proc.pexepath".into(), json!(x.parent_exe));
            f.insert("proc.exe_ino".into(), json!(x.exe_ino));
            if x.truncated {
                f.insert("lancet.truncated".into(), json!(true));
            }
            format!("{} {}", x.filename, x.argv.iter().skip(1).cloned().collect::<Vec<_>>().join(" "))
        }
        EventKind::Fork { child_pid } => {
            f.insert("proc.child_pid".into(), json!(child_pid));
            format!("child pid {child_pid}")
        }
        EventKind::Exit(x) => {
            f.insert("proc.exit_code".into(), json!(x.code));
            f.insert("proc.exit_signal".into(), json!(x.signal));
            match (x.code, x.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (_, Some(s)) => format!("killed by signal {s}"),
                _ => "exit".into(),
            }
        }
        EventKind::Net(n) => {
            let name = net_fd_name(n);
            f.insert("fd.name".into(), json!(name));
            f.insert("fd.sip".into(), json!(n.saddr.to_string()));
            f.insert("fd.sport".into(), json!(n.sport));
            f.insert("fd.l4proto".into(), json!(match n.proto {
                L4Proto::Tcp => "tcp",
                L4Proto::Udp => "udp",
            }));
            if !matches!(n.op, NetOp::Listen | NetOp::Bind) {
                f.insert("fd.dip".into(), json!(n.daddr.to_string()));
                f.insert("fd.dport".into(), json!(n.dport));
            }
            f.insert("evt.res".into(), json!(evt_res(n.result)));
            if n.result != 0 {
                format!("{name} ({})", evt_res(n.result))
            } else {
                name
            }
        }
        EventKind::File(x) => {
            f.insert("fd.name".into(), json!(x.path));
            f.insert("fd.directory".into(), json!(x.path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d })));
            f.insert("fd.host_path".into(), json!(x.host_path));
            if let Some(old) = &x.old_path {
                f.insert("fs.path.source".into(), json!(old));
                f.insert("fs.path.target".into(), json!(x.path));
            }
            match (x.op, &x.old_path) {
                (FileOp::Rename, Some(old)) => format!("{old} -> {}", x.path),
                _ => x.path.clone(),
            }
        }
        EventKind::CgroupMkdir { path, .. } | EventKind::CgroupRmdir { path, .. } => {
            f.insert("cgroup.path".into(), json!(path));
            path.clone()
        }
    };
    let output = format!(
        "{} {} by {} (pid={}) in {}{}",
        rfc3339_nanos(ev.time_ns),
        ev.kind.evt_type(),
        ev.process.comm,
        ev.process.pid,
        r.container_label(),
        if summary.is_empty() { String::new() } else { format!(": {summary}") },
    );
    json!({
        "time": rfc3339_nanos(ev.time_ns),
        "rule": rule,
        "priority": priority,
        "source": "lancet",
        "hostname": r.hostname,
        "tags": ["lancet", category(&ev.kind)],
        "output": output,
        "output_fields": Value::Object(f),
    })
}

/// Column widths of the table format. Fixed, because the table streams.
const COLS: [(&str, usize); 6] =
    [("TIME", 15), ("CONTAINER", 16), ("IMAGE", 24), ("PID", 7), ("PROCESS", 15), ("EVENT", 8)];

pub fn table_header() -> String {
    let mut s = String::new();
    for (name, w) in COLS {
        let _ = write!(s, "{name:<w$} ");
    }
    s.push_str("DETAILS");
    s
}

fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        format!("{s:<w$}")
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// One line of `lancet trace --format table`.
pub fn table_row(r: &Record<'_>) -> String {
    let ev = r.event;
    let j = falco_json(r, "", "");
    let time = rfc3339_nanos(ev.time_ns);
    let clock = time.get(11..26).unwrap_or(&time);
    let image = r.container().map(|c| c.image.as_str()).unwrap_or("-");
    let details = j["output"].as_str().and_then(|o| o.split_once(": ").map(|(_, d)| d)).unwrap_or("").to_string();
    let cells = [clock.to_string(), r.container_label().to_string(), image.to_string(), ev.process.pid.to_string(), ev.process.comm.clone(), ev.kind.evt_type().to_string()];
    let mut s = String::new();
    for (cell, (_, w)) in cells.iter().zip(COLS) {
        s.push_str(&fit(cell, w));
        s.push(' ');
    }
    s.push_str(&details);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339_utc() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(1_795_873_138_089_530_083), "2026-11-28T13:38:58.089530083Z");
        assert_eq!(rfc3339_nanos(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn image_refs_split_like_falco() {
        assert_eq!(split_image("localhost/app:test"), ("localhost/app", "test"));
        assert_eq!(split_image("registry:5000/team/app:1.2"), ("registry:5000/team/app", "1.2"));
        assert_eq!(split_image("registry:5000/app"), ("registry:5000/app", ""));
        assert_eq!(split_image("app@sha256:abcd"), ("app", ""));
        assert_eq!(split_image(""), ("", ""));
    }
}
