//! `lancet run` settings: flags, over `/etc/lancet/lancet.yaml`, over
//! defaults. An unknown key in the file is an error with its position.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/lancet/lancet.yaml";
/// The CLI's default `--api`: the agent's control socket.
pub const DEFAULT_API: &str = crate::api::DEFAULT_SOCKET;
/// Where the CLI looks for the TCP API's token (`--token-file`).
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/lancet/api.token";

/// Parses `90s`, `10m`, `1h`, `2d`, `500ms` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    lancet_engine::profile::parse_duration(s).map_err(anyhow::Error::msg)
}

/// The file's shape. Every key optional; flags win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    pub mode: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub policy_dir: Option<PathBuf>,
    pub alerts: Option<String>,
    /// The TCP API (opt-in): reads for anyone who connects, changes with
    /// the bearer token.
    pub listen: Option<SocketAddr>,
    /// The control socket (default /run/lancet/lancet.sock).
    pub socket: Option<PathBuf>,
    /// A group (name or gid) whose members may read over the control
    /// socket (default: none, root only).
    pub read_group: Option<String>,
    pub min_learning: Option<String>,
    pub quiet_period: Option<String>,
    pub auto_protect_after: Option<String>,
    pub dedupe_window: Option<String>,
    pub ring_mb: Option<u32>,
    pub files: Option<bool>,
    pub sensitive_paths: Option<Vec<String>>,
    /// How a permission event is answered when lancet cannot decide (an
    /// internal error): `allow` (default; containers never hang on lancet)
    /// or `deny`.
    pub fail_mode: Option<FailModeSetting>,
    /// Where pinned BPF maps and links live (default /sys/fs/bpf/lancet).
    pub pin_dir: Option<PathBuf>,
    /// How long isolation and freezing last when a rule sets no expiry.
    pub response_expiry: Option<String>,
    /// Files in protected containers whose reads are refused unless learned
    /// (default: /etc/shadow, /etc/gshadow, /etc/sudoers, /root/.ssh/authorized_keys).
    pub protected_files: Option<Vec<String>>,
    /// Directories in protected containers where opening files for writing
    /// is refused unless learned (default: none). Every open in them, reads
    /// and the loader's too, becomes a permission round trip: name only
    /// directories the workload rarely opens. Replaced binaries are refused
    /// at exec as drift without this.
    pub readonly_dirs: Option<Vec<String>>,
    /// Remember approved executables in the kernel (fanotify ignore marks,
    /// dropped when the file changes), so repeated execs skip lancet.
    /// `false` asks lancet on every exec (audit trails, benchmarks).
    pub exec_cache: Option<bool>,
    /// What an approved shell or interpreter may run as inline code (`sh
    /// -c CODE`, `python3 -c CODE`) or from stdin: `learned` (default: only
    /// the code strings its profile learned) or `any` (the interpreter is
    /// approved whatever it is handed; script files are still checked).
    pub interpreter_code: Option<InterpreterCode>,
    /// DNS servers every protected container may reach on port 53, on top
    /// of those its runtime configured and the host's resolvers (a
    /// Kubernetes cluster DNS service, which no runtime state names).
    /// Never read from a container's own resolv.conf: it can write that.
    pub dns_servers: Option<Vec<IpAddr>>,
    /// The fleet's NATS server(s) (`--nats`): see docs/fleet.md.
    pub nats: Option<String>,
    /// This node's name in the fleet (`--node`; default the hostname).
    pub node: Option<String>,
    /// The node's cluster (`--cluster`; default `default`).
    pub cluster: Option<String>,
    /// A NATS `.creds` file (`--nats-creds`): a path, never the secret.
    pub nats_creds: Option<PathBuf>,
    /// A file holding the node's nkey seed (`--nats-nkey`).
    pub nats_nkey: Option<PathBuf>,
    /// The CA bundle of the NATS servers (`--nats-ca`; TLS required).
    pub nats_ca: Option<PathBuf>,
    /// A client certificate and its key for mutual TLS (`--nats-cert`,
    /// `--nats-key`).
    pub nats_cert: Option<PathBuf>,
    pub nats_key: Option<PathBuf>,
    /// URLs that take each alert as Falco's `http_output` posts it
    /// (Falcosidekick's `/`), retried, from a bounded queue.
    pub http_outputs: Option<Vec<String>>,
    /// Syslog (RFC 5424) target for every alert: `udp://HOST:PORT`,
    /// `tcp://HOST:PORT` or `unix:///dev/log`.
    pub syslog: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterpreterCode {
    #[default]
    Learned,
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailModeSetting {
    #[default]
    Allow,
    Deny,
}

pub const DEFAULT_PROTECTED_FILES: &[&str] = &["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/root/.ssh/authorized_keys"];
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lancet";

/// Reads the config file; a missing default file is fine, a missing
/// explicit one is an error.
pub fn load_file(path: &Path, explicit: bool) -> Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(FileConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(&text).map_err(|e| {
        let at = lancet_engine::yaml_error_position(&text, &e).map(|(l, c)| format!("{l}:{c}:")).unwrap_or_default();
        anyhow::anyhow!("{}:{at} {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn config_file_unknown_keys_are_errors_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lancet.yaml");
        std::fs::write(&p, "mode: monitor\nquietPeriod: 5m\nbogus: 1\n").unwrap();
        let e = load_file(&p, true).unwrap_err().to_string();
        assert!(e.contains("lancet.yaml:3:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&p, "mode: monitor\nquietPeriod: 5m\n").unwrap();
        let c = load_file(&p, true).unwrap();
        assert_eq!(c.mode.as_deref(), Some("monitor"));
        assert!(load_file(&dir.path().join("missing.yaml"), false).is_ok());
        assert!(load_file(&dir.path().join("missing.yaml"), true).is_err());
    }

    #[test]
    fn dns_servers_are_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lancet.yaml");
        std::fs::write(&p, "dnsServers: [10.96.0.10, \"fd00::a\"]\n").unwrap();
        let want: Vec<IpAddr> = vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()];
        assert_eq!(load_file(&p, true).unwrap().dns_servers, Some(want));
        std::fs::write(&p, "mode: protect\ndnsServers: [kube-dns]\n").unwrap();
        let e = load_file(&p, true).unwrap_err().to_string();
        assert!(e.contains("lancet.yaml:2:"), "{e}");
    }
}
