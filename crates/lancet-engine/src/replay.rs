//! Reading recorded `lancet trace --format json` lines back into events, so
//! policies can be tried against what really happened (`lancet policy test`).

use crate::attribution::{ContainerInfo, PodInfo, Runtime};
use crate::event::{Event, EventKind, ExecEvent, ExitEvent, FileEvent, FileOp, L4Proto, NetEvent, NetOp, ProcessRef};
use serde_json::Value;
use std::net::IpAddr;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no output_fields object")]
    NoFields,
    #[error("evt.type {0:?} cannot be replayed")]
    UnknownType(String),
    #[error("field {0} is missing or malformed")]
    Field(&'static str),
}

fn s<'a>(f: &'a Value, k: &str) -> &'a str {
    f.get(k).and_then(Value::as_str).unwrap_or("")
}

fn u(f: &Value, k: &str) -> u64 {
    f.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn ip(f: &Value, k: &'static str) -> Result<IpAddr, ReplayError> {
    match f.get(k).and_then(Value::as_str) {
        Some(v) => v.parse().map_err(|_| ReplayError::Field(k)),
        None => Ok(IpAddr::from([0, 0, 0, 0])),
    }
}

fn runtime(name: &str) -> Runtime {
    match name {
        "podman" => Runtime::Podman,
        "docker" => Runtime::Docker,
        "containerd" => Runtime::Containerd,
        "crio" => Runtime::Crio,
        _ => Runtime::Runc,
    }
}

/// One recorded line → the event and, when it happened in a container, what
/// attribution knew of that container.
pub fn from_falco_json(line: &str) -> Result<(Event, Option<ContainerInfo>), ReplayError> {
    let v: Value = serde_json::from_str(line).map_err(|e| ReplayError::Json(e.to_string()))?;
    let f = v.get("output_fields").filter(|f| f.is_object()).ok_or(ReplayError::NoFields)?;
    let process = ProcessRef {
        pid: u(f, "proc.pid") as u32,
        tid: u(f, "proc.tid") as u32,
        ppid: u(f, "proc.ppid") as u32,
        uid: u(f, "user.uid") as u32,
        gid: u(f, "group.gid") as u32,
        comm: s(f, "proc.name").to_string(),
        runtime: false,
    };
    let ty = s(f, "evt.type");
    let net = |op| -> Result<EventKind, ReplayError> {
        Ok(EventKind::Net(NetEvent {
            op,
            proto: if s(f, "fd.l4proto") == "udp" { L4Proto::Udp } else { L4Proto::Tcp },
            saddr: ip(f, "fd.sip")?,
            sport: u(f, "fd.sport") as u16,
            daddr: ip(f, "fd.dip")?,
            dport: u(f, "fd.dport") as u16,
            result: if matches!(s(f, "evt.res"), "" | "SUCCESS") { 0 } else { 1 },
            netns: 0,
            totals: None,
        }))
    };
    let file = |op| {
        EventKind::File(FileEvent {
            op,
            path: s(f, "fd.name").to_string(),
            old_path: f.get("fs.path.source").and_then(Value::as_str).map(str::to_string),
            host_path: s(f, "fd.host_path").to_string(),
            is_dir: false,
        })
    };
    let kind = match ty {
        "execve" => {
            let args = s(f, "proc.args");
            let exe = s(f, "proc.exepath");
            let mut argv = vec![exe.rsplit('/').next().unwrap_or(exe).to_string()];
            argv.extend(args.split_whitespace().map(str::to_string));
            EventKind::Exec(ExecEvent {
                filename: exe.to_string(),
                cwd: s(f, "proc.cwd").to_string(),
                argv,
                parent_comm: s(f, "proc.pname").to_string(),
                parent_exe: f.get("proc.pexepath").and_then(Value::as_str).map(str::to_string),
                exe_ino: u(f, "proc.exe_ino"),
                ..Default::default()
            })
        }
        "clone" => EventKind::Fork { child_pid: u(f, "proc.child_pid") as u32 },
        "procexit" => EventKind::Exit(ExitEvent {
            code: f.get("proc.exit_code").and_then(Value::as_i64).map(|c| c as i32),
            signal: f.get("proc.exit_signal").and_then(Value::as_i64).map(|c| c as i32),
        }),
        "connect" => net(NetOp::Connect)?,
        "accept" => net(NetOp::Accept)?,
        "listen" => net(NetOp::Listen)?,
        "bind" => net(NetOp::Bind)?,
        "close" => net(NetOp::Close)?,
        "creat" => file(FileOp::Create),
        "write" => file(FileOp::Modify),
        "unlink" => file(FileOp::Delete),
        "rename" => file(FileOp::Rename),
        "chmod" => file(FileOp::Chmod),
        "open" => file(FileOp::Open),
        other => return Err(ReplayError::UnknownType(other.to_string())),
    };
    let container = match s(f, "container.full_id") {
        "" => None,
        id => Some(ContainerInfo {
            id: id.to_string(),
            runtime: runtime(s(f, "container.type")),
            name: s(f, "container.name").to_string(),
            image: s(f, "container.image").to_string(),
            image_id: s(f, "container.image.id").to_string(),
            image_digest: s(f, "container.image.digest").to_string(),
            labels: f
                .get("container.labels")
                .and_then(Value::as_object)
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default(),
            pod: f.get("k8s.pod.name").and_then(Value::as_str).map(|name| PodInfo {
                name: name.to_string(),
                namespace: s(f, "k8s.ns.name").to_string(),
                uid: s(f, "k8s.pod.uid").to_string(),
                container_name: s(f, "k8s.container.name").to_string(),
            }),
            ..Default::default()
        }),
    };
    Ok((Event { time_ns: u(f, "evt.time"), cgroup_id: u(f, "cgroup.id"), process, kind }, container))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Attribution;
    use crate::output::{falco_json, Record};
    use std::sync::Arc;

    #[test]
    fn trace_output_replays_into_the_same_event() {
        let ev = Event {
            time_ns: 5,
            cgroup_id: 9,
            process: ProcessRef { pid: 3, tid: 3, ppid: 1, uid: 0, gid: 0, comm: "wget".into(), runtime: false },
            kind: EventKind::Net(NetEvent {
                op: NetOp::Connect,
                proto: L4Proto::Tcp,
                saddr: "10.0.0.2".parse().unwrap(),
                sport: 4000,
                daddr: "10.0.0.3".parse().unwrap(),
                dport: 8080,
                result: 0,
                netns: 0,
                totals: None,
            }),
        };
        let c = ContainerInfo {
            id: "a".repeat(64),
            name: "web".into(),
            image: "localhost/web:1".into(),
            runtime: Runtime::Podman,
            ..Default::default()
        };
        let a = Attribution::Container(Arc::new(c.clone()));
        let line = falco_json(&Record { event: &ev, attribution: &a, hostname: "h" }, "r", "p").to_string();
        let (back, container) = from_falco_json(&line).unwrap();
        assert_eq!(back, Event { kind: ev.kind.clone(), ..ev.clone() });
        let container = container.unwrap();
        assert_eq!((container.name.as_str(), container.image.as_str()), ("web", "localhost/web:1"));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(matches!(from_falco_json("{"), Err(ReplayError::Json(_))));
        assert_eq!(from_falco_json("{}"), Err(ReplayError::NoFields));
        assert_eq!(from_falco_json(r#"{"output_fields":{"evt.type":"ptrace"}}"#), Err(ReplayError::UnknownType("ptrace".into())));
        assert_eq!(from_falco_json(r#"{"output_fields":{"evt.type":"connect","fd.dip":"nope"}}"#), Err(ReplayError::Field("fd.dip")));
    }
}
