//! `lancet run`'s settings: flags, then the configuration file, then
//! defaults.

use crate::agent::AgentOptions;
use crate::config::{self, parse_duration, FileConfig};
use crate::protect::ProtectOptions;
use anyhow::Result;
use lancet_engine::profile::{Lifecycle, Mode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Configuration file; flags given here win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Mode for workloads without a profile of their own.
    #[arg(long, value_parser = ["learn", "monitor", "protect"])]
    mode: Option<String>,
    /// Where the store lives (default /var/lib/lancet).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Policy files (*.yaml) (default /etc/lancet/policies.d).
    #[arg(long, value_name = "DIR")]
    policy_dir: Option<PathBuf>,
    /// Alerts as JSON lines to this file, or `-` for stdout.
    #[arg(long, value_name = "FILE|-")]
    alerts: Option<String>,
    /// Also serve the API on this TCP address (opt-in): reads for anyone
    /// who connects, changes only with the bearer token in
    /// `<state-dir>/api.token`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The control socket (default /run/lancet/lancet.sock): every call,
    /// root only (reads also for `--read-group`).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// A group (name or gid) whose members may read over the control socket.
    #[arg(long, value_name = "GROUP")]
    read_group: Option<String>,
    /// Learn at least this long before promoting (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    min_learning: Option<String>,
    /// Promote once nothing new was learned for this long (e.g. 5m).
    #[arg(long, value_name = "DURATION")]
    quiet_period: Option<String>,
    /// Promote monitor → protect after this long without a deviation.
    #[arg(long, value_name = "DURATION")]
    auto_protect_after: Option<String>,
    /// Where pinned BPF maps and links live (default /sys/fs/bpf/lancet).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Stop after this many seconds (for tests and benchmarks).
    #[arg(long, value_name = "SECONDS")]
    pub(super) duration: Option<f64>,
    /// Follow only containers carrying this label (KEY=VALUE): the others
    /// are neither learned nor guarded by this agent. For several agents on
    /// one host (a local fleet demo, the fleet tests), each with its own
    /// containers; a host protected for real runs one agent without it.
    #[arg(long, value_name = "KEY=VALUE")]
    only_label: Option<String>,
    #[command(flatten)]
    pub(super) fleet: crate::fleet::FleetArgs,
}

/// Settings after flags, file and defaults are merged.
#[derive(Debug)]
pub struct Settings {
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub alerts: Option<String>,
    pub listen: Option<SocketAddr>,
    pub socket: PathBuf,
    pub read_group: Option<String>,
    pub lifecycle: Lifecycle,
    pub dedupe_window: Duration,
    pub agent: AgentOptions,
    pub protect: ProtectOptions,
    /// Where alerts go besides the file, the store and the dashboard.
    pub outputs: crate::outputs::OutputConfig,
    /// `--only-label`: (key, value).
    pub only_label: Option<(String, String)>,
    /// `--nats` (or `nats:`): the fleet this agent joins.
    pub fleet: Option<crate::fleet::FleetConfig>,
}

impl Settings {
    /// Whether this agent follows container `c` (`--only-label`).
    pub fn follows(&self, c: &lancet_engine::attribution::ContainerInfo) -> bool {
        match &self.only_label {
            None => true,
            Some((k, v)) => c.labels.get(k) == Some(v),
        }
    }
}

pub fn settings(args: &RunArgs, host_root: &Path) -> Result<Settings> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let file: FileConfig = config::load_file(&path, explicit)?;
    let dur = |flag: &Option<String>, file: &Option<String>, default: Option<Duration>| -> Result<Option<Duration>> {
        match flag.as_ref().or(file.as_ref()) {
            Some(s) => Ok(Some(parse_duration(s)?)),
            None => Ok(default),
        }
    };
    let defaults = Lifecycle::default();
    let lifecycle = Lifecycle {
        min_learning: dur(&args.min_learning, &file.min_learning, Some(defaults.min_learning))?.unwrap_or(defaults.min_learning),
        quiet_period: dur(&args.quiet_period, &file.quiet_period, Some(defaults.quiet_period))?.unwrap_or(defaults.quiet_period),
        auto_protect_after: dur(&args.auto_protect_after, &file.auto_protect_after, defaults.auto_protect_after)?,
    };
    let state_dir = args.state_dir.clone().or(file.state_dir.clone()).unwrap_or_else(|| PathBuf::from("/var/lib/lancet"));
    let fleet = args.fleet.config(&file, &state_dir)?;
    let only_label = match args.only_label.as_deref() {
        None => None,
        Some(kv) => match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
            _ => anyhow::bail!("--only-label {kv:?}: expected KEY=VALUE"),
        },
    };
    Ok(Settings {
        mode: args.mode.as_deref().or(file.mode.as_deref()).unwrap_or("learn").parse::<Mode>().map_err(anyhow::Error::msg)?,
        state_dir: state_dir.clone(),
        policy_dir: args.policy_dir.clone().or(file.policy_dir).unwrap_or_else(|| PathBuf::from("/etc/lancet/policies.d")),
        alerts: args.alerts.clone().or(file.alerts),
        listen: args.listen.or(file.listen),
        socket: args.socket.clone().or(file.socket).unwrap_or_else(|| PathBuf::from(crate::api::DEFAULT_SOCKET)),
        read_group: args.read_group.clone().or(file.read_group),
        lifecycle,
        dedupe_window: dur(&None, &file.dedupe_window, Some(Duration::from_secs(60)))?.unwrap_or(Duration::from_secs(60)),
        agent: AgentOptions {
            ring_mb: file.ring_mb.unwrap_or(8),
            files: file.files.unwrap_or(true),
            sensitive: file.sensitive_paths.unwrap_or_default(),
            host_sensitive: false,
        },
        protect: ProtectOptions {
            pin_dir: args.pin_dir.clone().or(file.pin_dir).unwrap_or_else(|| PathBuf::from(config::DEFAULT_PIN_DIR)),
            fail_mode: file.fail_mode.unwrap_or_default(),
            exec_cache: file.exec_cache.unwrap_or(true),
            learned_code_only: file.interpreter_code.unwrap_or_default() == crate::config::InterpreterCode::Learned,
            response_expiry: dur(&None, &file.response_expiry, Some(Duration::from_secs(900)))?.unwrap_or(Duration::from_secs(900)),
            protected_files: file
                .protected_files
                .unwrap_or_else(|| config::DEFAULT_PROTECTED_FILES.iter().map(|s| s.to_string()).collect()),
            readonly_dirs: file.readonly_dirs.unwrap_or_default(),
            state_dir,
            host_root: host_root.to_path_buf(),
            dns_servers: file.dns_servers.unwrap_or_default(),
        },
        only_label,
        fleet,
        outputs: crate::outputs::OutputConfig {
            http: file.http_outputs.unwrap_or_default(),
            syslog: file.syslog.map(|s| s.parse()).transpose().map_err(|e: String| anyhow::anyhow!("{}: {e}", path.display()))?,
        },
    })
}
