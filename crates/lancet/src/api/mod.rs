//! The agent's local API, used by the other subcommands (`lancet profile`,
//! `lancet alerts`, `lancet audit`, `isolate`, the OCI hook). HTTP/JSON on a
//! root-owned Unix socket (every call, by the peer's credentials) and,
//! opt-in, on a TCP address (reads; changes only with the bearer token).
//! Requests are handed to the agent's event loop, which owns every piece of
//! state, and answered from there on its next tick (≤ 100 ms): no state is
//! shared between threads. The OCI hook's hand-overs have a queue of their
//! own, answered first; reads the store answers by itself ([`reads`]) never
//! reach the loop.
//!
//! The parts, one file each: [`access`] (who may do what, over which
//! channel), [`token`] (the TCP bearer token), [`hook_identity`] (the OCI
//! hook's container, from the peer and the runtime's state), [`routes`],
//! [`server`] (the listeners), [`client`]; and for the flow map, metrics
//! and dashboard: [`params`] (checked query parameters), [`views`] (JSON,
//! text and the live feed), [`ui`] and [`html`] (the dashboard's pages).

pub mod access;
mod client;
pub mod hook_identity;
pub(crate) mod html;
pub(crate) mod params;
mod reads;
mod routes;
mod server;
#[cfg(test)]
mod tests;
pub mod token;
pub(crate) mod ui;
mod views;

pub use client::{is_socket_path as client_is_socket, set_token_file, Client};
pub use hook_identity::HookIdentity;
pub use html::seg;
pub use server::{remove_socket, serve, ApiConfig, DEFAULT_SOCKET};

use serde_json::Value;
use std::sync::mpsc::{Receiver, SyncSender};

/// What a client asks of the agent.
#[derive(Debug)]
pub enum Request {
    Profiles,
    Profile {
        workload: String,
    },
    /// `force`: past the readiness check; `dry_run`: only say what the mode
    /// would refuse in the running containers now.
    Promote {
        workload: String,
        mode: String,
        force: bool,
        dry_run: bool,
        /// In a fleet: only if the workload's mode is still at this
        /// revision (what the caller saw); else the revision this node
        /// last saw.
        revision: Option<u64>,
    },
    Reset {
        workload: String,
    },
    Import {
        yaml: String,
    },
    Alerts {
        since_ns: Option<u64>,
        container: Option<String>,
        limit: usize,
    },
    Containers,
    /// From the OCI hook: a container is being created; put it under its
    /// posture before its first instruction runs. The identity was checked
    /// against the peer and the runtime's state by the API (never taken
    /// from the request body).
    Hook {
        identity: HookIdentity,
    },
    /// Operator response on one container: isolate, freeze or release.
    Respond {
        container: String,
        action: String,
        expire: Option<String>,
    },
    /// Which enforcement backends hold, with their counters.
    Enforcement,
    /// The audit log of control actions.
    Audit {
        since_ns: Option<u64>,
        limit: usize,
    },
    /// Flow rollups whose last connection is at or after `since_ns`, and
    /// the containers they name (`container`: only flows touching it).
    Flows {
        since_ns: u64,
        container: Option<String>,
        limit: usize,
    },
    /// The workloads at a glance, for the dashboard.
    Overview,
    /// One workload's profile for review (entries, baseline diff).
    Review {
        workload: String,
    },
    /// Adds what an alert found missing to its workload's profile.
    AddToProfile {
        alert: u64,
    },
    /// The Prometheus text of `/metrics`.
    Metrics,
    /// A mutating request the API refused (no root, no token, a hook whose
    /// identity did not check out): recorded in the audit log, not carried
    /// out.
    Refused {
        action: String,
        target: String,
        status: u16,
        reason: String,
    },
}

impl Request {
    /// The control action this request is, for the audit log: (action,
    /// target). None for reads (and dry runs, which change nothing).
    pub fn control_action(&self) -> Option<(String, String)> {
        match self {
            Request::Promote { dry_run: true, .. } => None,
            Request::Promote { workload, mode, .. } => Some((format!("promote to {mode}"), workload.clone())),
            Request::Reset { workload } => Some(("reset".into(), workload.clone())),
            Request::Import { .. } => Some(("import".into(), "profile".into())),
            Request::Respond { container, action, .. } => Some((action.clone(), container.clone())),
            Request::Hook { identity } => Some(("hook".into(), identity.id.clone())),
            Request::AddToProfile { alert } => Some(("add to profile".into(), format!("alert {alert}"))),
            Request::Refused { action, target, .. } => Some((action.clone(), target.clone())),
            _ => None,
        }
    }
}

/// What the dashboard reads besides the loop's answers: the live alert
/// feed (every alert the agent writes, as JSON) and `lancet doctor`'s
/// report, made once at start.
#[derive(Clone)]
pub struct Feeds {
    pub live: tokio::sync::broadcast::Sender<std::sync::Arc<str>>,
    pub doctor: std::sync::Arc<std::sync::OnceLock<Value>>,
    /// When the event loop last went round (ns since the epoch): what
    /// `GET /healthz` answers by, without asking the loop.
    pub heartbeat: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A loop silent this long is stuck: `/healthz` says 503.
pub const HEALTHY_WITHIN_NS: u64 = 10_000_000_000;

/// Which listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Unix,
    Tcp,
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Channel::Unix => "unix",
            Channel::Tcp => "tcp",
        })
    }
}

/// Who made a request: the peer's credentials on the Unix socket (from
/// SO_PEERCRED), nothing but the channel over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub channel: Channel,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
}

/// A request with its caller.
#[derive(Debug)]
pub struct Call {
    pub caller: Caller,
    pub request: Request,
}

/// An answer: a JSON document, or an HTTP status with a message.
pub type Reply = std::result::Result<Value, (u16, String)>;

type Envelope = (Call, SyncSender<Reply>);

/// The loop's side: requests waiting to be answered.
pub struct Inbox {
    /// The OCI hook's hand-overs: a container waits on each.
    hooks: Receiver<Envelope>,
    rx: Receiver<Envelope>,
}

/// How long one tick spends on requests other than the hook's.
const REQUEST_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);

/// Where one request's answer goes. Most are answered at once; a
/// promotion in a fleet keeps it until the fleet has answered (the API
/// waits 5 s at most).
pub struct Responder(SyncSender<Reply>);

impl Responder {
    pub fn send(self, reply: Reply) {
        let _ = self.0.send(reply);
    }
}

impl Inbox {
    /// Hands to `answer` every waiting hook hand-over, then other requests
    /// for at most [`REQUEST_BUDGET`] (the rest wait for the next tick,
    /// behind the hand-overs that arrive meanwhile), so the loop's events
    /// and the hook never wait on a queue of requests.
    pub fn serve(&self, mut answer: impl FnMut(Call, Responder)) {
        while let Ok((call, reply)) = self.hooks.try_recv() {
            answer(call, Responder(reply));
        }
        let start = std::time::Instant::now();
        while start.elapsed() < REQUEST_BUDGET {
            if let Ok((call, reply)) = self.hooks.try_recv() {
                answer(call, Responder(reply));
                continue;
            }
            let Ok((call, reply)) = self.rx.try_recv() else { break };
            answer(call, Responder(reply));
        }
    }
}
