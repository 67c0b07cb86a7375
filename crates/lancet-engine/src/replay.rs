//! Reading recorded `lancet trace --format json` lines back into events, so
//! policies can be tried against what really happened (`lancet policy test`).

use crate::attribution::{ContainerInfo, PodInfo, Runtime};
use crate::event::{Event, EventKind, ExecEvent, ExitEvent, FileEvent, FileOp, NetEvent, NetOp, ProcessRef, Protocol};
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
        start_ns: 0,
        runtime: false,
    };
    let ty = s(f, "evt.type");
    let net = |op| -> Result<EventKind, ReplayError> {
        Ok(EventKind::Net(NetEvent {
            op,
            proto: if s(f, "fd.l4proto") == "udp" { Protocol::Udp } else { Protocol::Tcp },
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
        "clone" => EventKind::Fork { child_pid: u(f, "proc.child_pid") as u32, child_start_ns: 0 },
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
            process: ProcessRef { pid: 3, tid: 3, ppid: 1, uid: 0, gid: 0, comm: "wget".into(), start_ns: 0, runtime: false },
            kind: EventKind::Net(NetEvent {
                op: NetOp::Connect,
                proto: Protocol::Tcp,
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

#[cfg(test)]
mod prop_tests {
    //! Trace files are replayed from wherever an operator got them: any
    //! line is an event or an error, and what `lancet trace` wrote replays
    //! into the event it was.
    use super::*;
    use crate::attribution::Attribution;
    use crate::output::{falco_json, Record};
    use lancet_testkit::mutate::{apply, edits};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(|b| std::net::Ipv6Addr::from(b).to_canonical())]
    }

    fn word() -> impl Strategy<Value = String> {
        // Arguments are split on whitespace when replayed.
        "[^\\s]{1,12}"
    }

    /// Events of every kind `lancet trace` prints, with the fields replay
    /// reads back.
    fn event() -> impl Strategy<Value = Event> {
        let process = (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), "[a-z0-9 ._-]{0,15}")
            .prop_map(|(pid, tid, ppid, uid, gid, comm)| ProcessRef { pid, tid, ppid, uid, gid, comm, start_ns: 0, runtime: false });
        let exec = (
            "(/[a-z0-9._-]{1,8}){1,3}",
            "/[a-z/]{0,10}",
            proptest::collection::vec(word(), 0..6),
            any::<String>(),
            proptest::option::of(any::<String>()),
            any::<u64>(),
        )
            .prop_map(|(filename, cwd, args, parent_comm, parent_exe, exe_ino)| {
                let mut argv = vec![filename.rsplit('/').next().unwrap_or(&filename).to_string()];
                argv.extend(args);
                EventKind::Exec(ExecEvent { filename, cwd, argv, parent_comm, parent_exe, exe_ino, ..Default::default() })
            });
        let net = (
            proptest::sample::select(vec![NetOp::Connect, NetOp::Accept, NetOp::Listen, NetOp::Bind, NetOp::Close]),
            any::<bool>(),
            ip(),
            any::<u16>(),
            ip(),
            any::<u16>(),
            0i32..2,
        )
            .prop_map(|(op, udp, saddr, sport, daddr, dport, result)| {
                let remote = !matches!(op, NetOp::Listen | NetOp::Bind);
                EventKind::Net(NetEvent {
                    op,
                    proto: if udp { Protocol::Udp } else { Protocol::Tcp },
                    saddr,
                    sport,
                    daddr: if remote { daddr } else { IpAddr::from([0, 0, 0, 0]) },
                    dport: if remote { dport } else { 0 },
                    result,
                    netns: 0,
                    totals: None,
                })
            });
        let file = (
            proptest::sample::select(vec![FileOp::Create, FileOp::Modify, FileOp::Delete, FileOp::Rename, FileOp::Chmod, FileOp::Open]),
            any::<String>(),
            proptest::option::of(any::<String>()),
            any::<String>(),
        )
            .prop_map(|(op, path, old_path, host_path)| EventKind::File(FileEvent { op, path, old_path, host_path, is_dir: false }));
        let kind = prop_oneof![
            exec,
            net,
            file,
            any::<u32>().prop_map(|child_pid| EventKind::Fork { child_pid, child_start_ns: 0 }),
            (proptest::option::of(any::<i32>()), proptest::option::of(any::<i32>()))
                .prop_map(|(code, signal)| EventKind::Exit(ExitEvent { code, signal })),
        ];
        (any::<u64>(), any::<u64>(), process, kind).prop_map(|(time_ns, cgroup_id, process, kind)| Event {
            time_ns,
            cgroup_id,
            process,
            kind,
        })
    }

    fn container() -> impl Strategy<Value = Option<ContainerInfo>> {
        proptest::option::of(
            ("[0-9a-f]{64}", any::<String>(), any::<String>(), proptest::collection::btree_map("[a-z.]{1,8}", any::<String>(), 0..4))
                .prop_map(|(id, name, image, labels)| ContainerInfo {
                    id,
                    name,
                    image,
                    labels,
                    runtime: Runtime::Podman,
                    ..Default::default()
                }),
        )
    }

    fn line(ev: &Event, c: &Option<ContainerInfo>) -> String {
        let a = match c {
            Some(c) => Attribution::Container(Arc::new(c.clone())),
            None => Attribution::Host,
        };
        falco_json(&Record { event: ev, attribution: &a, hostname: "h" }, "r", "p").to_string()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn traced_events_replay_into_themselves(ev in event(), c in container()) {
            let (back, bc) = from_falco_json(&line(&ev, &c)).unwrap();
            prop_assert_eq!(back, ev);
            prop_assert_eq!(bc.map(|b| (b.id, b.name, b.image, b.labels)), c.map(|c| (c.id, c.name, c.image, c.labels)));
        }

        #[test]
        fn mutated_lines_never_panic(ev in event(), c in container(), e in edits(4)) {
            let _ = from_falco_json(&apply(&line(&ev, &c), &e));
        }

        #[test]
        fn any_text_never_panics(s in any::<String>()) {
            let _ = from_falco_json(&s);
        }

        /// Fields of the wrong type or range are defaults or errors.
        #[test]
        fn odd_field_values(key in proptest::sample::select(vec!["proc.pid", "fd.dport", "fd.sip", "fd.dip", "evt.type", "proc.args", "container.labels", "proc.exit_code", "output_fields"]),
                            value in prop_oneof![Just(serde_json::json!(null)), Just(serde_json::json!(-1)), Just(serde_json::json!(1e300)), Just(serde_json::json!(u64::MAX)), Just(serde_json::json!("x")), Just(serde_json::json!([1, 2])), Just(serde_json::json!({"a": 1}))]) {
            let ev = Event { time_ns: 1, cgroup_id: 2, process: ProcessRef::default(), kind: EventKind::Fork { child_pid: 3, child_start_ns: 0 } };
            let mut v: serde_json::Value = serde_json::from_str(&line(&ev, &None)).unwrap();
            if key == "output_fields" {
                v[key] = value;
            } else {
                v["output_fields"][key] = value;
            }
            let _ = from_falco_json(&v.to_string());
        }
    }

    #[test]
    fn deep_and_huge_lines_are_errors_or_events() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(from_falco_json(&deep), Err(ReplayError::Json(_))), "serde_json's depth limit");
        let ev =
            Event { time_ns: 1, cgroup_id: 2, process: ProcessRef::default(), kind: EventKind::Fork { child_pid: 3, child_start_ns: 0 } };
        let mut v: serde_json::Value = serde_json::from_str(&line(&ev, &None)).unwrap();
        v["output_fields"]["proc.name"] = "x".repeat(10 << 20).into();
        let (back, _) = from_falco_json(&v.to_string()).unwrap();
        assert_eq!(back.process.comm.len(), 10 << 20);
    }
}
