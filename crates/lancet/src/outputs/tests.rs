//! Outputs against real receivers on loopback: an HTTP server that fails
//! first and then takes alerts, UDP and TCP syslog listeners, a receiver
//! that is down.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

const ALERT: &str = r#"{"time":"2026-12-07T03:00:00.000000000Z","rule":"Drift: written","priority":"Error","output":"x","output_fields":{"container.name":"web"}}"#;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(15), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP server answering 503 to the first request and 200 after,
/// keeping the bodies it took.
fn http_receiver() -> (String, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/falco", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            let mut line = String::new();
            let mut ctype = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("content-type:") {
                    ctype = v.trim().to_string();
                }
                line.clear();
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let status = if n == 0 { "503 Service Unavailable" } else { "200 OK" };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if n > 0 {
                assert_eq!(ctype, "application/json");
                let _ = tx.send(String::from_utf8(body).unwrap());
            }
        }
    });
    (url, rx)
}

#[test]
fn http_posts_falcos_json_and_retries_a_failure() {
    let (url, got) = http_receiver();
    let out = Outputs::start(&OutputConfig { http: vec![url], syslog: None }, "node-1").unwrap();
    out.send(&Arc::from(ALERT));
    let body = got.recv_timeout(Duration::from_secs(10)).expect("the alert arrived after a retry");
    assert_eq!(body, ALERT, "posted as is");
    let (_, c) = out.counts().next().unwrap();
    wait_until("counted as sent", || c.sent.load(Ordering::Relaxed) == 1);
    assert_eq!(c.retried.load(Ordering::Relaxed), 1);
    assert_eq!(c.dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_dead_receiver_costs_a_bounded_queue_and_counts() {
    // Nothing listens on this port: every alert is retried, then dropped;
    // past the queue, new ones are dropped at once, without waiting.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Outputs::start(&OutputConfig { http: vec![format!("http://127.0.0.1:{port}/")], syslog: None }, "n").unwrap();
    let alert: Arc<str> = Arc::from(ALERT);
    let t0 = Instant::now();
    for _ in 0..QUEUE + 100 {
        out.send(&alert);
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "sending never waits on the receiver");
    let (_, c) = out.counts().next().unwrap();
    assert!(c.dropped.load(Ordering::Relaxed) >= 99, "what did not fit is counted");
}

#[test]
fn syslog_over_udp_and_tcp_is_rfc_5424() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let (u, t) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let out_u = Outputs::start(&OutputConfig { http: vec![], syslog: Some(format!("udp://{u}").parse().unwrap()) }, "node 1").unwrap();
    let out_t = Outputs::start(&OutputConfig { http: vec![], syslog: Some(format!("tcp://{t}").parse().unwrap()) }, "node-1").unwrap();
    out_u.send(&Arc::from(ALERT));
    out_t.send(&Arc::from(ALERT));
    let mut buf = [0u8; 9000];
    let n = udp.recv(&mut buf).expect("a datagram");
    let msg = std::str::from_utf8(&buf[..n]).unwrap();
    // local0 (16) * 8 + error (3) = 131; spaces cannot be in HOSTNAME.
    let expect = format!("<131>1 2026-12-07T03:00:00.000000000Z node1 lancet {} ALERT - {ALERT}", std::process::id());
    assert_eq!(msg, expect);
    let (mut s, _) = tcp.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tcp_msg = expect.replace("node1", "node-1");
    let framed = format!("{} {tcp_msg}", tcp_msg.len());
    let mut got = vec![0u8; framed.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), framed, "octet-counting framing");
}

#[test]
fn syslog_targets_parse_or_say_why() {
    assert_eq!("udp://127.0.0.1:514".parse::<SyslogTarget>(), Ok(SyslogTarget::Udp("127.0.0.1:514".into())));
    assert_eq!("unix:///dev/log".parse::<SyslogTarget>(), Ok(SyslogTarget::Unix("/dev/log".into())));
    for bad in ["127.0.0.1:514", "udp://", "http://x:1", "tcp://nohostport", "unix://relative"] {
        let e = bad.parse::<SyslogTarget>().unwrap_err();
        assert!(e.contains("expected udp://HOST:PORT"), "{bad}: {e}");
    }
    // Garbage in the alert never panics the formatter.
    assert!(syslog::format("not json", "h", 1).starts_with("<135>1 - h lancet 1 ALERT - not json"));
}

/// Debian's rsyslog receives what the syslog output sends (UDP and TCP),
/// parses it as RFC 5424: host, app-name and severity come out right.
#[test]
fn rsyslog_receives_the_alerts() {
    let Some(rsyslogd) = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"].into_iter().find(|p| std::path::Path::new(p).exists()) else {
        lancet_testkit::skip("rsyslogd is not installed (scripts/setup.sh installs rsyslog)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let free_udp = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let free_tcp = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out_file = dir.path().join("received.log");
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\n\
             module(load=\"imudp\")\ninput(type=\"imudp\" address=\"127.0.0.1\" port=\"{free_udp}\")\n\
             module(load=\"imtcp\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{free_tcp}\")\n\
             template(name=\"raw\" type=\"string\" string=\"%hostname% %app-name% %syslogseverity-text% %msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{f}\" template=\"raw\")\n",
            d = dir.path().display(),
            f = out_file.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(rsyslogd)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslogd.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until it listens: a TCP connect succeeds.
    wait_until("rsyslogd listens", || std::net::TcpStream::connect(("127.0.0.1", free_tcp)).is_ok());
    let udp =
        Outputs::start(&OutputConfig { http: vec![], syslog: Some(format!("udp://127.0.0.1:{free_udp}").parse().unwrap()) }, "node-a")
            .unwrap();
    let tcp =
        Outputs::start(&OutputConfig { http: vec![], syslog: Some(format!("tcp://127.0.0.1:{free_tcp}").parse().unwrap()) }, "node-b")
            .unwrap();
    udp.send(&Arc::from(ALERT));
    tcp.send(&Arc::from(ALERT));
    let text = || std::fs::read_to_string(&out_file).unwrap_or_default();
    let t0 = Instant::now();
    while !(text().contains("node-a") && text().contains("node-b")) && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let got = text();
    for host in ["node-a", "node-b"] {
        let line = got.lines().find(|l| l.starts_with(host)).unwrap_or_else(|| panic!("nothing from {host} in:\n{got}"));
        assert!(line.starts_with(&format!("{host} lancet err {{")), "{line}");
        assert!(line.contains(r#""rule":"Drift: written""#), "{line}");
    }
}
