//! Syslog, RFC 5424: `<PRI>1 TIMESTAMP HOST lancet PID ALERT - MSG`, the
//! message being the alert's JSON (what Falco sends with `json_output`).
//! UDP (one datagram per alert), TCP (octet-counting framing, RFC 6587,
//! reconnected on failure) or a unix datagram socket (`/dev/log`).

use super::Counts;
use serde_json::Value;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

/// Facility `local0` (16): the one left to applications.
const FACILITY: u8 = 16;
/// Longest message sent over UDP: bigger datagrams are often dropped on
/// the way; the JSON is cut there (a receiver still gets the head).
const UDP_MAX: usize = 8192;

/// Where syslog goes: `udp://HOST:PORT`, `tcp://HOST:PORT` or
/// `unix:///dev/log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    Udp(String),
    Tcp(String),
    Unix(String),
}

impl std::str::FromStr for SyslogTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("syslog target {s:?}: expected udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH");
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match scheme {
            "udp" if rest.contains(':') => Ok(SyslogTarget::Udp(rest.into())),
            "tcp" if rest.contains(':') => Ok(SyslogTarget::Tcp(rest.into())),
            "unix" if rest.starts_with('/') => Ok(SyslogTarget::Unix(rest.into())),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTarget::Udp(a) => write!(f, "udp://{a}"),
            SyslogTarget::Tcp(a) => write!(f, "tcp://{a}"),
            SyslogTarget::Unix(p) => write!(f, "unix://{p}"),
        }
    }
}

/// Syslog severity of a Falco priority.
fn severity(priority: &str) -> u8 {
    match priority {
        "Emergency" => 0,
        "Alert" => 1,
        "Critical" => 2,
        "Error" => 3,
        "Warning" => 4,
        "Notice" => 5,
        "Informational" => 6,
        _ => 7,
    }
}

/// One RFC 5424 message of an alert (its JSON line).
pub(super) fn format(alert: &str, hostname: &str, pid: u32) -> String {
    let v: Value = serde_json::from_str(alert).unwrap_or(Value::Null);
    let pri = u16::from(FACILITY) * 8 + u16::from(severity(v["priority"].as_str().unwrap_or("")));
    let time = v["time"].as_str().filter(|t| t.len() <= 64 && !t.contains(' ')).unwrap_or("-");
    // HOSTNAME is printable ASCII without spaces, at most 255 characters.
    let host: String = hostname.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    let host = if host.is_empty() { "-".to_string() } else { host };
    format!("<{pri}>1 {time} {host} lancet {pid} ALERT - {alert}")
}

enum Conn {
    Udp(UdpSocket),
    Tcp(Option<TcpStream>),
    Unix(UnixDatagram),
}

pub(super) fn run(target: &SyslogTarget, hostname: &str, rx: Receiver<Arc<str>>, counts: &Counts) {
    let pid = std::process::id();
    let mut conn = match target {
        SyslogTarget::Udp(_) => UdpSocket::bind("0.0.0.0:0").map(Conn::Udp),
        SyslogTarget::Tcp(_) => Ok(Conn::Tcp(None)),
        SyslogTarget::Unix(_) => UnixDatagram::unbound().map(Conn::Unix),
    };
    for alert in rx {
        let msg = format(&alert, hostname, pid);
        let ok = match (&mut conn, target) {
            (Ok(Conn::Udp(s)), SyslogTarget::Udp(addr)) => s.send_to(cut(&msg, UDP_MAX), addr.as_str()).is_ok(),
            (Ok(Conn::Unix(s)), SyslogTarget::Unix(path)) => s.send_to(cut(&msg, UDP_MAX), path).is_ok(),
            (Ok(Conn::Tcp(stream)), SyslogTarget::Tcp(addr)) => send_tcp(stream, addr, &msg, counts),
            (Err(e), _) => {
                tracing::debug!(%target, "syslog socket: {e}");
                false
            }
            _ => false,
        };
        let c = if ok { &counts.sent } else { &counts.dropped };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Octet-counting framing; one reconnect and retry on a broken connection.
fn send_tcp(stream: &mut Option<TcpStream>, addr: &str, msg: &str, counts: &Counts) -> bool {
    let frame = format!("{} {msg}", msg.len());
    for attempt in 0..2 {
        if attempt > 0 {
            counts.retried.fetch_add(1, Ordering::Relaxed);
        }
        if stream.is_none() {
            *stream = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .ok()
                .and_then(|mut a| a.next())
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).ok());
            if let Some(s) = stream.as_ref() {
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        if s.write_all(frame.as_bytes()).is_ok() {
            return true;
        }
        *stream = None;
    }
    false
}

/// At most `max` bytes of `s`, on a character boundary.
fn cut(s: &str, max: usize) -> &[u8] {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}
