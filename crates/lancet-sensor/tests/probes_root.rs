//! The BPF probes on the real kernel, as root: an exec, TCP listen/connect/
//! accept/close on loopback, a refused connect and a UDP connect each arrive
//! decoded, with the right process and the test's own cgroup.

use lancet_engine::event::{Event, EventKind, NetOp, Protocol};
use lancet_sensor::probes::detect_cgroup2_root;
use lancet_sensor::{decode, Clock, Sensor, SensorConfig};
use std::cell::RefCell;
use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

fn skip() -> Option<&'static str> {
    if !lancet_sensor::features::is_root() {
        return Some("not root");
    }
    if lancet_sensor::features::btf_path().is_none() {
        return Some("no kernel BTF");
    }
    None
}

fn load() -> Sensor {
    let cfg = SensorConfig {
        // Report this test process too: it makes the connections.
        self_tgid: 0,
        // Wake on every record: the test waits for specific ones.
        wakeup_bytes: 0,
        cgroup2_root: detect_cgroup2_root().expect("cgroup2"),
        ..SensorConfig::default()
    };
    let s = Sensor::load(&cfg).expect("load probes");
    for st in s.status() {
        assert!(st.attached, "probe {} ({}) not attached: {:?}", st.program, st.hook, st.error);
    }
    s
}

fn collect_until(sensor: &Sensor, timeout: Duration, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let clock = Clock::now();
    let got: Rc<RefCell<Vec<Event>>> = Rc::default();
    let sink = Rc::clone(&got);
    let reader = sensor
        .ring_buffer(move |data| {
            sink.borrow_mut().push(decode(data, &clock).expect("every record decodes"));
            0
        })
        .expect("ring buffer");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        reader.poll(Duration::from_millis(50)).expect("poll");
        if done(&got.borrow()) {
            break;
        }
    }
    let v = got.borrow().clone();
    v
}

#[test]
fn exec_fork_exit_are_reported_with_argv_and_cwd() {
    if let Some(why) = skip() {
        lancet_testkit::skip(why);
        return;
    }
    let sensor = load();
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", "read x; exit 3", "lancet-arg"])
        .current_dir("/tmp")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = lancet_sensor::enforce::process_start_time(child.id()).expect("the child's start time");
    drop(child.stdin.take());
    assert_eq!(child.wait().expect("wait").code(), Some(3));
    let events = collect_until(&sensor, Duration::from_secs(5), |evs| {
        evs.iter().any(|e| matches!(&e.kind, EventKind::Exit(x) if x.code == Some(3)))
    });
    let exec = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Exec(x) if x.argv.get(2).map(String::as_str) == Some("read x; exit 3") => Some((e, x)),
            _ => None,
        })
        .expect("exec of /bin/sh -c 'read x; exit 3'");
    assert_eq!(exec.1.filename, "/bin/sh");
    assert_eq!(exec.1.argv, vec!["/bin/sh", "-c", "read x; exit 3", "lancet-arg"]);
    // Which process this was: the start the probe recorded is /proc's, so
    // a kill after the fact never hits a later process reusing the pid.
    assert_ne!(exec.0.process.start_ns, 0);
    assert_eq!(lancet_sensor::enforce::start_ticks(exec.0.process.start_ns), started);
    // A host process in the host's root and its parent's mount namespace
    // (what the runtime is, before it enters a container).
    assert!(exec.1.in_host_root && exec.1.in_parent_mnt_ns);
    assert_eq!(exec.1.cwd, "/tmp");
    assert_eq!(exec.0.process.ppid, std::process::id());
    assert_ne!(exec.0.cgroup_id, 0);
    let pid = exec.0.process.pid;
    let fork = events.iter().find_map(|e| match e.kind {
        EventKind::Fork { child_pid, child_start_ns } if child_pid == pid => Some(child_start_ns),
        _ => None,
    });
    assert_eq!(fork, Some(exec.0.process.start_ns), "the fork of {pid} records the child's start");
    assert!(events.iter().any(|e| e.process.pid == pid && matches!(&e.kind, EventKind::Exit(x) if x.code == Some(3))));
    assert!(sensor.lost().expect("lost").iter().all(|&n| n == 0));
}

#[test]
fn tcp_and_udp_lifecycle_is_reported() {
    if let Some(why) = skip() {
        lancet_testkit::skip(why);
        return;
    }
    let sensor = load();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (server_side, _) = listener.accept().expect("accept");
    drop(server_side);
    let mut b = [0u8; 1];
    let _ = client.read(&mut b);
    drop(client);
    // A refused connect: bind a port, then close it so nothing listens.
    let closed_port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    assert!(TcpStream::connect(("127.0.0.1", closed_port)).is_err());
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    udp.connect(("127.0.0.1", 5353)).expect("udp connect");
    let me = std::process::id();
    let net = |evs: &[Event], op: NetOp, f: &dyn Fn(&lancet_engine::event::NetEvent) -> bool| {
        evs.iter().any(|e| matches!(&e.kind, EventKind::Net(n) if n.op == op && f(n)) && e.process.pid == me)
    };
    let events =
        collect_until(&sensor, Duration::from_secs(5), |evs| net(evs, NetOp::Connect, &|n| n.proto == Protocol::Udp && n.dport == 5353));
    assert!(net(&events, NetOp::Listen, &|n| n.sport == port), "listen on {port}");
    assert!(net(&events, NetOp::Connect, &|n| n.dport == port && n.result == 0 && n.daddr.to_string() == "127.0.0.1"), "connect");
    assert!(net(&events, NetOp::Accept, &|n| n.sport == port), "accept");
    assert!(net(&events, NetOp::Close, &|n| n.dport == port && n.sport != 0), "client close, with its port");
    assert!(net(&events, NetOp::Close, &|n| n.sport == port), "server close");
    assert!(net(&events, NetOp::Connect, &|n| n.dport == closed_port && n.result == 111), "refused connect");
    assert!(net(&events, NetOp::Bind, &|n| n.proto == Protocol::Udp && n.sport != 0), "udp bind");
}

#[test]
fn accepts_on_a_socket_listening_before_the_agent_name_their_process() {
    if let Some(why) = skip() {
        lancet_testkit::skip(why);
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sensor = load();
    let _client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _server_side = listener.accept().expect("accept");
    let me = std::process::id();
    let is_accept = |e: &Event| matches!(&e.kind, EventKind::Net(n) if n.op == NetOp::Accept && n.sport == port);
    let events = collect_until(&sensor, Duration::from_secs(5), |evs| evs.iter().any(is_accept));
    let accept = events.iter().find(|e| is_accept(e)).expect("accept event");
    assert_eq!(accept.process.pid, me, "the iterator seeded the listener's owner");
    assert!(!accept.process.comm.is_empty());
}
