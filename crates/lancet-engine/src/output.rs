//! Output formats. JSON follows Falco's alert shape and field names, so
//! Falcosidekick, SIEM parsers and anything else that reads Falco reads lancet.

use crate::attribution::{Attribution, ContainerInfo};
use crate::event::{Event, EventKind, FileOp, NetOp, Protocol};
use crate::printable::printable;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

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
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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
    match errno_name(errno) {
        Some(n) => n.into(),
        None => format!("E{errno}"),
    }
}

/// The name of an errno `evt.res` knows (`E<n>` for the others).
pub(crate) fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        0 => "SUCCESS",
        1 => "EPERM",
        13 => "EACCES",
        101 => "ENETUNREACH",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        _ => return None,
    })
}

pub(crate) fn category(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Exec(_) | EventKind::Fork { .. } | EventKind::Exit(_) => "process",
        EventKind::Net(_) => "network",
        EventKind::File(_) => "filesystem",
        EventKind::CgroupMkdir { .. } | EventKind::CgroupRmdir { .. } => "container",
    }
}

pub(crate) fn l4proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Falco's `output_fields`, typed: serialising a struct costs a fraction of
/// building a `serde_json::Map` per event, and this runs for every event
/// printed. Absent fields are left out, except `k8s.pod.name`, which Falco
/// always sets (null outside Kubernetes).
#[derive(Serialize, Default)]
struct Fields<'a> {
    #[serde(rename = "evt.time")]
    evt_time: u64,
    #[serde(rename = "evt.type")]
    evt_type: &'static str,
    #[serde(rename = "evt.res", skip_serializing_if = "Option::is_none")]
    evt_res: Option<String>,
    #[serde(rename = "proc.pid")]
    pid: u32,
    #[serde(rename = "proc.tid")]
    tid: u32,
    #[serde(rename = "proc.ppid")]
    ppid: u32,
    #[serde(rename = "proc.name")]
    name: &'a str,
    #[serde(rename = "user.uid")]
    uid: u32,
    #[serde(rename = "group.gid")]
    gid: u32,
    #[serde(rename = "cgroup.id")]
    cgroup_id: u64,
    #[serde(rename = "container.id")]
    container_id: &'a str,
    #[serde(rename = "container.full_id", skip_serializing_if = "Option::is_none")]
    container_full_id: Option<&'a str>,
    #[serde(rename = "container.name")]
    container_name: &'a str,
    #[serde(rename = "container.type", skip_serializing_if = "Option::is_none")]
    container_type: Option<String>,
    #[serde(rename = "container.image", skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(rename = "container.image.repository", skip_serializing_if = "Option::is_none")]
    image_repository: Option<&'a str>,
    #[serde(rename = "container.image.tag", skip_serializing_if = "Option::is_none")]
    image_tag: Option<&'a str>,
    #[serde(rename = "container.image.id", skip_serializing_if = "Option::is_none")]
    image_id: Option<&'a str>,
    #[serde(rename = "container.image.digest", skip_serializing_if = "Option::is_none")]
    image_digest: Option<&'a str>,
    #[serde(rename = "container.labels", skip_serializing_if = "Option::is_none")]
    labels: Option<&'a BTreeMap<String, String>>,
    #[serde(rename = "k8s.pod.name")]
    pod_name: Option<&'a str>,
    #[serde(rename = "k8s.ns.name", skip_serializing_if = "Option::is_none")]
    pod_namespace: Option<&'a str>,
    #[serde(rename = "k8s.pod.uid", skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    #[serde(rename = "k8s.container.name", skip_serializing_if = "Option::is_none")]
    pod_container: Option<&'a str>,
    #[serde(rename = "lancet.cgroup.path", skip_serializing_if = "Option::is_none")]
    unknown_cgroup_path: Option<Option<&'a str>>,
    #[serde(rename = "lancet.unknown_reason", skip_serializing_if = "Option::is_none")]
    unknown_reason: Option<&'a str>,
    #[serde(rename = "proc.exepath", skip_serializing_if = "Option::is_none")]
    exepath: Option<&'a str>,
    #[serde(rename = "proc.cmdline", skip_serializing_if = "Option::is_none")]
    cmdline: Option<String>,
    #[serde(rename = "proc.args", skip_serializing_if = "Option::is_none")]
    args: Option<String>,
    #[serde(rename = "proc.cwd", skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a str>,
    #[serde(rename = "proc.pname", skip_serializing_if = "Option::is_none")]
    pname: Option<&'a str>,
    #[serde(rename = "proc.pexepath", skip_serializing_if = "Option::is_none")]
    pexepath: Option<Option<&'a str>>,
    #[serde(rename = "proc.exe_ino", skip_serializing_if = "Option::is_none")]
    exe_ino: Option<u64>,
    #[serde(rename = "lancet.truncated", skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
    #[serde(rename = "proc.child_pid", skip_serializing_if = "Option::is_none")]
    child_pid: Option<u32>,
    #[serde(rename = "proc.exit_code", skip_serializing_if = "Option::is_none")]
    exit_code: Option<Option<i32>>,
    #[serde(rename = "proc.exit_signal", skip_serializing_if = "Option::is_none")]
    exit_signal: Option<Option<i32>>,
    #[serde(rename = "fd.name", skip_serializing_if = "Option::is_none")]
    fd_name: Option<String>,
    #[serde(rename = "fd.directory", skip_serializing_if = "Option::is_none")]
    fd_directory: Option<&'a str>,
    #[serde(rename = "fd.host_path", skip_serializing_if = "Option::is_none")]
    fd_host_path: Option<&'a str>,
    #[serde(rename = "fs.path.source", skip_serializing_if = "Option::is_none")]
    path_source: Option<&'a str>,
    #[serde(rename = "fs.path.target", skip_serializing_if = "Option::is_none")]
    path_target: Option<&'a str>,
    #[serde(rename = "fd.sip", skip_serializing_if = "Option::is_none")]
    sip: Option<IpAddr>,
    #[serde(rename = "fd.sport", skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    #[serde(rename = "fd.dip", skip_serializing_if = "Option::is_none")]
    dip: Option<IpAddr>,
    #[serde(rename = "fd.dport", skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    #[serde(rename = "fd.l4proto", skip_serializing_if = "Option::is_none")]
    l4proto: Option<&'static str>,
    #[serde(rename = "cgroup.path", skip_serializing_if = "Option::is_none")]
    cgroup_path: Option<&'a str>,
}

#[derive(Serialize)]
struct Alert<'a> {
    time: &'a str,
    rule: &'a str,
    priority: &'a str,
    source: &'static str,
    hostname: &'a str,
    tags: [&'static str; 2],
    output: String,
    output_fields: Fields<'a>,
}

/// The human part of an event: what was run, connected, written.
pub fn summary(ev: &Event) -> String {
    match &ev.kind {
        EventKind::Exec(x) => {
            let mut s = x.filename.clone();
            for a in x.argv.iter().skip(1) {
                s.push(' ');
                s.push_str(a);
            }
            s
        }
        EventKind::Fork { child_pid, .. } => format!("child pid {child_pid}"),
        EventKind::Exit(x) => match (x.code, x.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "exit".into(),
        },
        EventKind::Net(n) if n.result != 0 => format!("{} ({})", net_fd_name(n), evt_res(n.result)),
        EventKind::Net(n) => net_fd_name(n),
        EventKind::File(x) => match (x.op, &x.old_path) {
            (FileOp::Rename, Some(old)) => format!("{old} -> {}", x.path),
            _ => x.path.clone(),
        },
        EventKind::CgroupMkdir { path, .. } | EventKind::CgroupRmdir { path, .. } => path.clone(),
    }
}

fn fields<'a>(r: &Record<'a>) -> Fields<'a> {
    let ev = r.event;
    let mut f = Fields {
        evt_time: ev.time_ns,
        evt_type: ev.kind.evt_type(),
        pid: ev.process.pid,
        tid: ev.process.tid,
        ppid: ev.process.ppid,
        name: &ev.process.comm,
        uid: ev.process.uid,
        gid: ev.process.gid,
        cgroup_id: ev.cgroup_id,
        container_id: "host",
        container_name: "host",
        ..Fields::default()
    };
    match r.attribution {
        Attribution::Host => {}
        Attribution::Container(c) => {
            let (repo, tag) = split_image(&c.image);
            f.container_id = c.short_id();
            f.container_full_id = Some(&c.id);
            f.container_name = &c.name;
            f.container_type = Some(c.runtime.to_string());
            f.image = Some(&c.image);
            f.image_repository = Some(repo);
            f.image_tag = Some(tag);
            f.image_id = Some(&c.image_id);
            f.image_digest = Some(&c.image_digest);
            f.labels = Some(&c.labels).filter(|l| !l.is_empty());
            if let Some(p) = &c.pod {
                f.pod_name = Some(&p.name);
                f.pod_namespace = Some(&p.namespace);
                f.pod_uid = Some(&p.uid);
                f.pod_container = Some(&p.container_name);
            }
        }
        Attribution::Unknown { cgroup_path, reason, .. } => {
            f.container_id = "unknown";
            f.container_name = "unknown";
            f.unknown_cgroup_path = Some(cgroup_path.as_deref());
            f.unknown_reason = Some(reason);
        }
    }
    match &ev.kind {
        EventKind::Exec(x) => {
            let args = x.argv.get(1..).unwrap_or_default().join(" ");
            f.exepath = Some(&x.filename);
            f.cmdline = Some(if args.is_empty() { ev.process.comm.clone() } else { format!("{} {args}", ev.process.comm) });
            f.args = Some(args);
            f.cwd = Some(&x.cwd);
            f.pname = Some(&x.parent_comm);
            f.pexepath = Some(x.parent_exe.as_deref());
            f.exe_ino = Some(x.exe_ino);
            f.truncated = x.truncated.then_some(true);
        }
        EventKind::Fork { child_pid, .. } => f.child_pid = Some(*child_pid),
        EventKind::Exit(x) => {
            f.exit_code = Some(x.code);
            f.exit_signal = Some(x.signal);
        }
        EventKind::Net(n) => {
            f.fd_name = Some(net_fd_name(n));
            f.sip = Some(n.saddr);
            f.sport = Some(n.sport);
            f.l4proto = Some(l4proto(n.proto));
            if !matches!(n.op, NetOp::Listen | NetOp::Bind) {
                f.dip = Some(n.daddr);
                f.dport = Some(n.dport);
            }
            f.evt_res = Some(evt_res(n.result));
        }
        EventKind::File(x) => {
            f.fd_name = Some(x.path.clone());
            f.fd_directory = x.path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d });
            f.fd_host_path = Some(&x.host_path);
            if let Some(old) = &x.old_path {
                f.path_source = Some(old);
                f.path_target = Some(&x.path);
            }
        }
        EventKind::CgroupMkdir { path, .. } | EventKind::CgroupRmdir { path, .. } => f.cgroup_path = Some(path),
    }
    f
}

/// Writes one line of `lancet trace --format json` (without the newline).
pub fn write_falco_json<W: std::io::Write>(out: W, r: &Record<'_>, rule: &str, priority: &str) -> serde_json::Result<()> {
    let ev = r.event;
    let time = rfc3339_nanos(ev.time_ns);
    let output = format!(
        "{time} {} by {} (pid={}) in {}: {}",
        ev.kind.evt_type(),
        ev.process.comm,
        ev.process.pid,
        r.container_label(),
        summary(ev)
    );
    let alert = Alert {
        time: &time,
        rule,
        priority,
        source: "lancet",
        hostname: r.hostname,
        tags: ["lancet", category(&ev.kind)],
        output,
        output_fields: fields(r),
    };
    serde_json::to_writer(out, &alert)
}

/// The same object as a `serde_json::Value`, for callers that inspect it.
pub fn falco_json(r: &Record<'_>, rule: &str, priority: &str) -> Value {
    let mut buf = Vec::with_capacity(1024);
    match write_falco_json(&mut buf, r, rule, priority) {
        Ok(()) => serde_json::from_slice(&buf).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn net_fd_name(n: &crate::event::NetEvent) -> String {
    match n.op {
        NetOp::Listen | NetOp::Bind => format!("{}:{}", n.saddr, n.sport),
        _ => format!("{}:{}->{}:{}", n.saddr, n.sport, n.daddr, n.dport),
    }
}

/// Column widths of the table format. Fixed, because the table streams.
const COLS: [(&str, usize); 6] = [("TIME", 15), ("CONTAINER", 16), ("IMAGE", 24), ("PID", 7), ("PROCESS", 15), ("EVENT", 8)];

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
    let time = rfc3339_nanos(ev.time_ns);
    let clock = time.get(11..26).unwrap_or(&time);
    let image = r.container().map(|c| c.image.as_str()).unwrap_or("-");
    let details = summary(ev);
    // Names, paths and command lines come from containers: no control
    // character reaches the terminal.
    let cells = [
        clock.to_string(),
        printable(r.container_label()).into_owned(),
        printable(image).into_owned(),
        ev.process.pid.to_string(),
        printable(&ev.process.comm).into_owned(),
        ev.kind.evt_type().to_string(),
    ];
    let mut s = String::new();
    for (cell, (_, w)) in cells.iter().zip(COLS) {
        s.push_str(&fit(cell, w));
        s.push(' ');
    }
    s.push_str(&printable(&details));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::{ContainerInfo, PodInfo, Runtime};
    use crate::event::{ExecEvent, FileEvent, NetEvent, ProcessRef};
    use std::sync::Arc;

    fn container() -> Attribution {
        Attribution::Container(Arc::new(ContainerInfo {
            id: "2e8bdd302d6f3109f54b92f320cfa00a76d6653727e89863aa6329a9cdbbea02".into(),
            runtime: Runtime::Crio,
            name: "web".into(),
            image: "registry:5000/team/web:1.2".into(),
            image_digest: "sha256:0f36".into(),
            pod: Some(PodInfo { name: "web-7d".into(), namespace: "shop".into(), uid: "u-1".into(), container_name: "web".into() }),
            ..Default::default()
        }))
    }

    fn event(kind: EventKind) -> Event {
        Event {
            time_ns: 1_795_873_138_000_000_001,
            cgroup_id: 7,
            process: ProcessRef { pid: 10, tid: 10, ppid: 1, uid: 0, gid: 0, comm: "sh".into(), start_ns: 0, runtime: false },
            kind,
        }
    }

    #[test]
    fn exec_json_has_falco_shape_and_fields() {
        let ev = event(EventKind::Exec(ExecEvent {
            filename: "/bin/id".into(),
            cwd: "/".into(),
            argv: vec!["id".into(), "-u".into()],
            parent_comm: "bash".into(),
            parent_exe: Some("/bin/bash".into()),
            ..Default::default()
        }));
        let a = container();
        let v = falco_json(&Record { event: &ev, attribution: &a, hostname: "h" }, "lancet trace", "Informational");
        assert_eq!(v["time"], "2026-11-28T13:38:58.000000001Z");
        assert_eq!(v["priority"], "Informational");
        assert_eq!(v["tags"][1], "process");
        let f = &v["output_fields"];
        assert_eq!(f["evt.type"], "execve");
        assert_eq!(f["proc.exepath"], "/bin/id");
        assert_eq!(f["proc.cmdline"], "sh -u");
        assert_eq!(f["proc.pname"], "bash");
        assert_eq!(f["proc.pexepath"], "/bin/bash");
        assert_eq!(f["container.id"], "2e8bdd302d6f");
        assert_eq!(f["container.type"], "crio");
        assert_eq!(f["container.image.repository"], "registry:5000/team/web");
        assert_eq!(f["container.image.tag"], "1.2");
        assert_eq!(f["k8s.pod.name"], "web-7d");
        assert_eq!(f["k8s.ns.name"], "shop");
        assert!(f.get("fd.name").is_none(), "no network fields on an exec");
        assert!(v["output"].as_str().unwrap_or("").contains("in web: /bin/id -u"));
    }

    #[test]
    fn network_and_file_json_carry_fd_fields() {
        let ev = event(EventKind::Net(NetEvent {
            op: NetOp::Connect,
            proto: Protocol::Tcp,
            saddr: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            daddr: "10.0.0.3".parse().unwrap(),
            dport: 8080,
            result: 111,
            netns: 1,
            totals: None,
        }));
        let v = falco_json(&Record { event: &ev, attribution: &Attribution::Host, hostname: "h" }, "r", "p");
        let f = &v["output_fields"];
        assert_eq!(f["fd.name"], "10.0.0.2:40000->10.0.0.3:8080");
        assert_eq!(f["fd.dip"], "10.0.0.3");
        assert_eq!(f["fd.dport"], 8080);
        assert_eq!(f["fd.l4proto"], "tcp");
        assert_eq!(f["evt.res"], "ECONNREFUSED");
        assert_eq!(f["container.id"], "host");
        assert!(f["k8s.pod.name"].is_null());
        let ev = event(EventKind::File(FileEvent {
            op: FileOp::Rename,
            path: "/tmp/b".into(),
            old_path: Some("/tmp/a".into()),
            host_path: "/var/lib/x/diff/tmp/b".into(),
            is_dir: false,
        }));
        let a = container();
        let r = Record { event: &ev, attribution: &a, hostname: "h" };
        let f = falco_json(&r, "r", "p")["output_fields"].clone();
        assert_eq!(f["evt.type"], "rename");
        assert_eq!(f["fd.name"], "/tmp/b");
        assert_eq!(f["fs.path.source"], "/tmp/a");
        assert_eq!(f["fd.directory"], "/tmp");
        let row = table_row(&r);
        assert!(row.contains("web") && row.contains("rename") && row.ends_with("/tmp/a -> /tmp/b"), "{row}");
        // Columns line up on screen: compare character positions (the cut
        // image name ends in a multi-byte '…').
        let col = |s: &str, what: &str| s.find(what).map(|b| s[..b].chars().count());
        assert_eq!(col(&row, "rename"), col(&table_header(), "EVENT"));
    }

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
