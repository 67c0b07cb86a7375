//! The API's listeners, in a thread of their own: the control socket
//! (every call, decided by the peer's SO_PEERCRED credentials) and, opt-in,
//! TCP (reads; changes with the bearer token). Each listener puts an access check in
//! front of the same routes; the check decides, and tells the routes who
//! the caller is.

use super::access::{self, Access, Peer, ReadGroup};
use super::hook_identity::Verifier;
use super::routes::{self, Ctx};
use super::token::Token;
use super::{Caller, Channel, Inbox};
use anyhow::{bail, Context, Result};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::serve::IncomingStream;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use tokio::net::UnixListener;

/// The default control socket and its directory.
pub const DEFAULT_SOCKET: &str = "/run/lancet/lancet.sock";

/// What the API listens on, and who may do what.
#[derive(Clone)]
pub struct ApiConfig {
    pub socket: PathBuf,
    pub read_group: Option<ReadGroup>,
    /// TCP, opt-in (`--listen`).
    pub listen: Option<SocketAddr>,
    /// Allows changes over TCP.
    pub token: Option<Token>,
    /// For the hook's bundle reads.
    pub host_root: PathBuf,
    /// Our effective uid: the owner of the socket and its directory.
    pub euid: u32,
    pub feeds: super::Feeds,
    /// The agent's store, which reads open read-only.
    pub store: PathBuf,
}

/// The peer of a connection on the socket, from SO_PEERCRED at accept.
#[derive(Debug, Clone, Copy)]
struct UnixPeer(Option<(u32, u32, Option<u32>)>);

impl Connected<IncomingStream<'_, UnixListener>> for UnixPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        UnixPeer(stream.io().peer_cred().ok().map(|c| (c.uid(), c.gid(), c.pid().and_then(|p| u32::try_from(p).ok()))))
    }
}

#[derive(Clone)]
struct UnixAccess {
    ctx: Ctx,
    read_group: Option<ReadGroup>,
}

#[derive(Clone)]
struct TcpAccess {
    ctx: Ctx,
    token: Option<Token>,
}

/// The supplementary groups of a process (`Groups:` in its status).
fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        })
        .unwrap_or_default()
}

async fn unix_access(
    State(g): State<UnixAccess>,
    ConnectInfo(UnixPeer(cred)): ConnectInfo<UnixPeer>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some((uid, gid, pid)) = cred else {
        return routes::error(403, "permission denied: the peer's credentials could not be read");
    };
    let mut peer = Peer { uid, gid, pid, groups: Vec::new() };
    if let (Some(rg), Some(pid)) = (&g.read_group, pid) {
        if uid != 0 && gid != rg.gid {
            peer.groups = supplementary_groups(pid);
        }
    }
    let caller = Caller { channel: Channel::Unix, uid: Some(uid), pid };
    let access = Access::of_method(req.method().as_str());
    if let Err(r) = access::unix(&peer, access, g.read_group.as_ref()) {
        if access == Access::Change {
            g.ctx.refused(caller, req.method().as_str(), req.uri().path(), &r);
        }
        return routes::error(r.status, &r.reason);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn tcp_access(State(g): State<TcpAccess>, mut req: Request, next: Next) -> Response {
    let caller = Caller { channel: Channel::Tcp, uid: None, pid: None };
    let access = Access::of_method(req.method().as_str());
    let auth = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Err(r) = access::tcp(access, auth, g.token.as_ref()) {
        g.ctx.refused(caller, req.method().as_str(), req.uri().path(), &r);
        return routes::error(r.status, &r.reason);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Makes the socket's directory: created 0700 (0750 and owned by the read
/// group when there is one) if missing or if it is the default
/// `/run/lancet`; any other existing directory must be ours and writable by
/// no one else (so nobody can swap the socket).
fn socket_dir(dir: &Path, read_group: Option<&ReadGroup>, euid: u32) -> Result<()> {
    let mode = if read_group.is_some() { 0o750 } else { 0o700 };
    let created = match std::fs::symlink_metadata(dir) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir).with_context(|| format!("creating {}", dir.display()))?;
            true
        }
        Err(e) => return Err(e).with_context(|| format!("checking {}", dir.display())),
    };
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        bail!("{} is not a directory (a symbolic link is refused); lancet's control socket needs a directory of its own", dir.display());
    }
    if m.uid() != euid {
        bail!(
            "{} belongs to uid {}, not to the agent (uid {euid}); the control socket's directory must be the agent's",
            dir.display(),
            m.uid()
        );
    }
    if created || dir == Path::new(DEFAULT_SOCKET).parent().unwrap_or(Path::new("/")) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::chown(dir, None, Some(read_group.map_or(m.gid(), |g| g.gid)))
            .with_context(|| format!("giving {} to the read group", dir.display()))?;
    } else if m.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by others (mode {:o}); put the control socket in a directory only the agent can write",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// Removes a stale socket of ours; refuses anything else at the path (never
/// following a symbolic link) and a socket some agent still listens on.
fn clear_stale(path: &Path, euid: u32) -> Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    if !m.file_type().is_socket() || m.uid() != euid {
        bail!("{} exists and is not a socket lancet owns; remove it (or choose another --socket) and start again", path.display());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another lancet agent is listening on {}; stop it first (or choose another --socket)", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    tracing::info!(path = %path.display(), "stale control socket removed");
    Ok(())
}

/// Binds the control socket: 0600 owned by the agent (0660 with the read
/// group's gid when there is one), in a private directory.
fn bind_socket(path: &Path, read_group: Option<&ReadGroup>, euid: u32) -> Result<std::os::unix::net::UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    socket_dir(dir, read_group, euid)?;
    clear_stale(path, euid)?;
    let l = std::os::unix::net::UnixListener::bind(path).with_context(|| format!("listening on the control socket {}", path.display()))?;
    let mode = if read_group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = read_group {
        std::os::unix::fs::chown(path, None, Some(g.gid)).with_context(|| format!("giving {} to group {}", path.display(), g.name))?;
    }
    Ok(l)
}

/// Removes the control socket at exit (only if it is still a socket).
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Starts the API in a thread of its own; returns the inbox the event loop
/// answers from.
pub fn serve(cfg: ApiConfig) -> Result<Inbox> {
    let unix = bind_socket(&cfg.socket, cfg.read_group.as_ref(), cfg.euid)?;
    unix.set_nonblocking(true)?;
    let tcp = match cfg.listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr} for the local API"))?;
            l.set_nonblocking(true)?;
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the TCP API listens beyond loopback: anyone who reaches it can read profiles and alerts");
            }
            Some(l)
        }
        None => None,
    };
    let (tx, rx) = sync_channel(64);
    let (hook_tx, hooks) = sync_channel(64);
    let ctx = Ctx::new(tx, hook_tx, super::reads::Reads::new(cfg.store.clone()), Verifier::system(&cfg.host_root), cfg.feeds.clone());
    let router = routes::router(ctx.clone());
    let unix_app = router
        .clone()
        .layer(from_fn_with_state(UnixAccess { ctx: ctx.clone(), read_group: cfg.read_group.clone() }, unix_access))
        .into_make_service_with_connect_info::<UnixPeer>();
    let tcp_app = router.layer(from_fn_with_state(TcpAccess { ctx, token: cfg.token.clone() }, tcp_access));
    let socket = cfg.socket.clone();
    // Each listener on a thread (and runtime) of its own: whatever anyone
    // who reaches the TCP API sends, the control socket, through which the
    // OCI hook hands containers over, is served on its own thread.
    on_own_thread("lancet-api-unix", async move {
        match UnixListener::from_std(unix) {
            Ok(l) => {
                if let Err(e) = axum::serve(l, unix_app).await {
                    tracing::error!(socket = %socket.display(), "control socket stopped: {e}");
                }
            }
            Err(e) => tracing::error!("control socket not started: {e}"),
        }
    })?;
    if let Some(l) = tcp {
        on_own_thread("lancet-api-tcp", async move {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, tcp_app).await {
                        tracing::error!("TCP API stopped: {e}");
                    }
                }
                Err(e) => tracing::error!("TCP API not started: {e}"),
            }
        })?;
    }
    Ok(Inbox { hooks, rx })
}

/// Runs `serve` on a new thread with a single-threaded runtime of its own.
fn on_own_thread(name: &str, serve: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let name_owned = name.to_string();
    std::thread::Builder::new().name(name_owned.clone()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
            Ok(rt) => rt.block_on(serve),
            Err(e) => tracing::error!(thread = %name_owned, "local API listener not started: {e}"),
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        lancet_sensor::features::euid()
    }

    #[test]
    fn the_socket_is_private_and_stale_ones_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run").join("lancet.sock");
        let l = bind_socket(&sock, None, me()).unwrap();
        let run = std::fs::metadata(dir.path().join("run")).unwrap();
        assert_eq!(run.mode() & 0o7777, 0o700, "a directory it creates");
        let m = std::fs::symlink_metadata(&sock).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o7777, 0o600);
        // Still listened on: refused.
        let e = bind_socket(&sock, None, me()).unwrap_err();
        assert!(format!("{e:#}").contains("another lancet agent is listening"), "{e:#}");
        drop(l);
        // Stale: replaced.
        let _l = bind_socket(&sock, None, me()).unwrap();
    }

    #[test]
    fn anything_else_at_the_socket_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        let sock = run.join("lancet.sock");
        std::fs::write(&sock, "").unwrap();
        assert!(format!("{:#}", bind_socket(&sock, None, me()).unwrap_err()).contains("not a socket lancet owns"));
        std::fs::remove_file(&sock).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, &sock).unwrap();
        assert!(format!("{:#}", bind_socket(&sock, None, me()).unwrap_err()).contains("not a socket lancet owns"));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep", "the link was not followed");
        // A directory others can write.
        std::fs::remove_file(&sock).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(format!("{:#}", bind_socket(&sock, None, me()).unwrap_err()).contains("writable by others"));
    }
}
