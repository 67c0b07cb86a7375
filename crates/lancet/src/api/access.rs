//! Who may do what over which channel. Pure decisions, tested without a
//! socket:
//!
//! | channel | caller | reads (GET) | changes (POST, DELETE) | hook |
//! |---|---|---|---|---|
//! | Unix socket | uid 0 | yes | yes | yes (identity checked) |
//! | Unix socket | member of `readGroup` | yes | 403 | 403 |
//! | Unix socket | anyone else | 403 | 403 | 403 |
//! | TCP (opt-in) | anyone who connects | yes | with the bearer token (else 401, 403 for a wrong one) | 403 (needs the peer's credentials) |

use super::token::Token;
use super::Channel;

/// Whether a request reads or changes something (by its HTTP method: GET
/// and HEAD read; everything else, dry runs included, is a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Change,
}

impl Access {
    pub fn of_method(method: &str) -> Access {
        if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
            Access::Read
        } else {
            Access::Change
        }
    }
}

/// The group allowed to read over the socket (config `readGroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadGroup {
    pub name: String,
    pub gid: u32,
}

/// The read group named by `spec` (a group name or a gid) in the text of
/// `/etc/group`.
pub fn resolve_group(spec: &str, etc_group: &str) -> Option<ReadGroup> {
    let entries = etc_group.lines().filter_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let gid = f.nth(1)?.parse::<u32>().ok()?;
        Some((name, gid))
    });
    let mut entries: Vec<(&str, u32)> = entries.collect();
    if let Some(&(name, gid)) = entries.iter().find(|(n, _)| *n == spec) {
        return Some(ReadGroup { name: name.to_string(), gid });
    }
    let gid = spec.parse::<u32>().ok()?;
    entries.retain(|(_, g)| *g == gid);
    Some(ReadGroup { name: entries.first().map_or_else(|| spec.to_string(), |(n, _)| n.to_string()), gid })
}

/// A Unix-socket peer: SO_PEERCRED's uid, gid and pid, and its
/// supplementary groups when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
    pub groups: Vec<u32>,
}

/// A refusal: an HTTP status and the reason, shown to the caller as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: String) -> Result<(), Refusal> {
    Err(Refusal { status, reason })
}

/// What the socket allows, in words (for refusals).
fn socket_rule(read_group: Option<&ReadGroup>) -> String {
    match read_group {
        Some(g) => format!("lancet's control socket needs root (or group {} for reading)", g.name),
        None => "lancet's control socket needs root (no read group is configured: `readGroup`)".to_string(),
    }
}

/// The decision for a request over the Unix socket.
pub fn unix(peer: &Peer, access: Access, read_group: Option<&ReadGroup>) -> Result<(), Refusal> {
    if peer.uid == 0 {
        return Ok(());
    }
    let member = read_group.is_some_and(|g| peer.gid == g.gid || peer.groups.contains(&g.gid));
    match (access, member) {
        (Access::Read, true) => Ok(()),
        (Access::Change, true) => {
            refuse(403, format!("permission denied: uid {} may only read; changes need root ({})", peer.uid, socket_rule(read_group)))
        }
        (_, false) => refuse(403, format!("permission denied: {} (uid {})", socket_rule(read_group), peer.uid)),
    }
}

/// The decision for a request over TCP: reads for anyone who can connect,
/// changes only with `Authorization: Bearer <token>`.
pub fn tcp(access: Access, authorization: Option<&str>, token: Option<&Token>) -> Result<(), Refusal> {
    if access == Access::Read {
        return Ok(());
    }
    let Some(token) = token else {
        return refuse(403, "permission denied: the TCP API is read-only here; use the control socket as root".into());
    };
    let presented = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim);
    match presented {
        None => refuse(
            401,
            "permission denied: a change over TCP needs `Authorization: Bearer <token>` (the token is in the agent's \
             <state-dir>/api.token, readable by root); or use the control socket as root"
                .into(),
        ),
        Some(p) if token.matches(p) => Ok(()),
        Some(_) => refuse(403, "permission denied: the bearer token does not match the agent's".into()),
    }
}

/// The OCI hook hands a container over only on the socket, from uid 0 with
/// a known pid (the identity check starts from the peer).
pub fn hook(channel: Channel, uid: Option<u32>, pid: Option<u32>) -> Result<u32, Refusal> {
    match (channel, uid, pid) {
        (Channel::Unix, Some(0), Some(pid)) if pid > 0 => Ok(pid),
        (Channel::Unix, Some(0), _) => Err(Refusal { status: 403, reason: "hook refused: the peer's pid is unknown".into() }),
        (Channel::Unix, _, _) => Err(Refusal { status: 403, reason: "permission denied: the OCI hook must run as root".into() }),
        (Channel::Tcp, _, _) => Err(Refusal {
            status: 403,
            reason: "permission denied: the OCI hook is accepted only on the control socket (its identity comes from the peer)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer { uid, gid, pid: Some(1234), groups: groups.to_vec() }
    }

    #[test]
    fn groups_by_name_or_gid() {
        let etc = "root:x:0:\nadm:x:4:syslog\nlancet:x:990:alice,bob\n# comment\n";
        assert_eq!(resolve_group("lancet", etc), Some(ReadGroup { name: "lancet".into(), gid: 990 }));
        assert_eq!(resolve_group("4", etc), Some(ReadGroup { name: "adm".into(), gid: 4 }));
        assert_eq!(resolve_group("1234", etc), Some(ReadGroup { name: "1234".into(), gid: 1234 }));
        assert_eq!(resolve_group("nosuch", etc), None);
    }

    #[test]
    fn methods() {
        assert_eq!(Access::of_method("GET"), Access::Read);
        assert_eq!(Access::of_method("HEAD"), Access::Read);
        for m in ["POST", "DELETE", "PUT", "PATCH", "OPTIONS"] {
            assert_eq!(Access::of_method(m), Access::Change, "{m}");
        }
    }

    #[test]
    fn root_may_do_everything_on_the_socket() {
        for a in [Access::Read, Access::Change] {
            assert_eq!(unix(&peer(0, 0, &[]), a, None), Ok(()));
            assert_eq!(unix(&peer(0, 5, &[]), a, Some(&ReadGroup { name: "adm".into(), gid: 4 })), Ok(()));
        }
    }

    #[test]
    fn the_read_group_may_only_read() {
        let g = ReadGroup { name: "lancet".into(), gid: 990 };
        // By primary group and by a supplementary one.
        for p in [peer(1000, 990, &[]), peer(1000, 1000, &[27, 990])] {
            assert_eq!(unix(&p, Access::Read, Some(&g)), Ok(()));
            let r = unix(&p, Access::Change, Some(&g)).unwrap_err();
            assert_eq!(r.status, 403);
            assert!(r.reason.starts_with("permission denied:") && r.reason.contains("group lancet for reading"), "{}", r.reason);
        }
    }

    #[test]
    fn anyone_else_is_refused_with_the_reason() {
        let g = ReadGroup { name: "lancet".into(), gid: 990 };
        for (group, a) in [(None, Access::Read), (None, Access::Change), (Some(&g), Access::Read), (Some(&g), Access::Change)] {
            let r = unix(&peer(65534, 65534, &[]), a, group).unwrap_err();
            assert_eq!(r.status, 403);
            assert!(r.reason.contains("lancet's control socket needs root"), "{}", r.reason);
            assert!(r.reason.contains("uid 65534"), "{}", r.reason);
        }
    }

    #[test]
    fn tcp_reads_are_open_and_changes_need_the_token() {
        let t = Token::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(tcp(Access::Read, None, Some(&t)), Ok(()));
        assert_eq!(tcp(Access::Read, None, None), Ok(()));
        assert_eq!(tcp(Access::Change, None, Some(&t)).unwrap_err().status, 401);
        assert_eq!(tcp(Access::Change, Some("Basic abc"), Some(&t)).unwrap_err().status, 401);
        assert_eq!(tcp(Access::Change, Some(&format!("Bearer {}", "cd".repeat(32))), Some(&t)).unwrap_err().status, 403);
        assert_eq!(tcp(Access::Change, Some("Bearer "), Some(&t)).unwrap_err().status, 403);
        assert_eq!(tcp(Access::Change, Some(&format!("Bearer {}", "ab".repeat(32))), Some(&t)), Ok(()));
        assert_eq!(tcp(Access::Change, Some(&format!("Bearer {}", "ab".repeat(32))), None).unwrap_err().status, 403);
    }

    #[test]
    fn the_hook_needs_root_on_the_socket() {
        assert_eq!(hook(Channel::Unix, Some(0), Some(42)), Ok(42));
        assert_eq!(hook(Channel::Unix, Some(0), None).unwrap_err().status, 403);
        assert!(hook(Channel::Unix, Some(1000), Some(42)).unwrap_err().reason.contains("must run as root"));
        assert!(hook(Channel::Tcp, None, None).unwrap_err().reason.contains("only on the control socket"));
    }
}
