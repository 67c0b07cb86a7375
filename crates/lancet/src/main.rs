//! lancet: a runtime security agent for container hosts.
//!
//! The binary is thin: argument parsing, wiring of the sensor, engine and
//! outputs, and error reporting. Errors print with their whole context chain.
#![forbid(unsafe_code)]

mod agent;
mod api;
mod audit_cmd;
mod config;
mod counters;
mod daemon;
mod doctor;
mod fleet;
mod hook;
mod manage;
mod map_cmd;
mod outputs;
mod policy_cmd;
mod private;
mod protect;
mod scan;
mod signals;

mod trace;

/// Unit tests count their thread's allocations (the hot paths' tests).
#[cfg(test)]
#[global_allocator]
static ALLOC: lancet_sensor::alloc_count::CountingAlloc = lancet_sensor::alloc_count::CountingAlloc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "lancet", version, about = "Runtime security agent for container hosts")]
struct Cli {
    /// Prefix for every host path lancet reads (runtime state, /proc is not
    /// prefixed). For running inside a container with the host mounted.
    #[arg(long, global = true, env = "HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// Log filter (tracing syntax), e.g. `info` or `lancet=debug`.
    #[arg(long, global = true, env = "LANCET_LOG", default_value = "warn")]
    log: String,
    /// The running agent's API: its control socket (a path; root, or its
    /// read group for reads) or a TCP address (`lancet run --listen`;
    /// changes need the token, see --token-file).
    #[arg(long, global = true, env = "LANCET_API", default_value = config::DEFAULT_API)]
    api: String,
    /// The TCP API's bearer token, sent when --api is a TCP address and
    /// the file is readable (root): the agent's `<state-dir>/api.token`.
    #[arg(long, global = true, env = "LANCET_TOKEN_FILE", default_value = config::DEFAULT_TOKEN_FILE, value_name = "FILE")]
    token_file: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

// Parsed once per process: the size of `Run`'s arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Report what this host offers and which guarantees hold. Exits 0 when
    /// monitoring can run.
    Doctor {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Stream what containers do (execs, network, file changes, sensitive
    /// reads) until Ctrl-C.
    Trace(trace::TraceArgs),
    /// The agent: learn each workload, then alert (and later protect) on what
    /// departs from it.
    Run(daemon::RunArgs),
    /// Check policy files, or replay recorded events through them.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// Print the JSON Schema of policy or profile files (for editors and CI).
    Schema {
        #[arg(value_parser = ["policy", "profile"])]
        kind: String,
    },
    /// Inspect and steer the learned profiles of a running agent.
    #[command(subcommand)]
    Profile(manage::ProfileCmd),
    /// Alerts the agent raised.
    /// Hand containers to the agent before they start (OCI hooks.d).
    #[command(subcommand)]
    Hook(hook::HookCmd),
    /// Cut a container's network, except flows allowed during isolation,
    /// until released or expired. The container keeps running.
    Isolate {
        #[arg(value_name = "NAME|ID")]
        container: String,
        /// Expiry (default: the agent's `responseExpiry`, 15m).
        #[arg(long = "for", value_name = "DURATION")]
        expire: Option<String>,
    },
    /// Freeze every process of a container (cgroup freezer) until released
    /// or expired.
    Freeze {
        #[arg(value_name = "NAME|ID")]
        container: String,
        #[arg(long = "for", value_name = "DURATION")]
        expire: Option<String>,
    },
    /// Enforcement backends and whether they hold, protected containers,
    /// isolations and freezes in force (from the running agent).
    Status,
    /// Undo isolate and freeze for a container.
    Release {
        #[arg(value_name = "NAME|ID")]
        container: String,
    },
    Alerts {
        /// Only alerts newer than this (e.g. 1h, 30m).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Only this container (name or id prefix).
        #[arg(long, value_name = "NAME|ID")]
        container: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Where to read alerts when no agent answers on --api.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/lancet")]
        state_dir: PathBuf,
    },
    /// Who talks to whom: the container-to-container map (table, JSON or
    /// Graphviz dot), or network policy for the observed flows
    /// (`--export networkpolicy|cilium`).
    Map(map_cmd::MapArgs),
    /// Who changed what through the agent (modes, profiles, responses,
    /// containers handed over by the hook, refused attempts).
    Audit {
        /// Only records newer than this (e.g. 1h, 30m).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The fleet's dashboard and API, from NATS: nodes, workloads and the
    /// map across nodes, every node's alerts (behind the hub's token).
    Hub(fleet::hub::HubArgs),
    /// Derive an image's baseline and risky findings, for CI (exit 1 on
    /// findings at --fail-on or above, 2 when it cannot scan). See
    /// `lancet scan --help`.
    #[command(disable_help_flag = true)]
    Scan {
        /// TARGET and options, parsed by `lancet scan` itself.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

fn run(cli: Cli) -> Result<ExitCode> {
    api::set_token_file(cli.token_file.clone());
    match cli.command {
        Command::Doctor { format } => {
            let report = doctor::report(&cli.host_root);
            let mut out = io::stdout().lock();
            match format {
                Format::Json => {
                    serde_json::to_writer_pretty(&mut out, &report)?;
                    writeln!(out)?;
                }
                Format::Table => doctor::print_table(&report, &mut out)?,
            }
            out.flush()?;
            Ok(if report.monitoring_ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Trace(args) => trace::run(&cli.host_root, args),
        Command::Profile(cmd) => manage::profile(&cli.api, cmd),
        Command::Run(args) => daemon::run(&cli.host_root, args),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Schema { kind } => {
            let schema = if kind == "policy" { lancet_engine::policy::policy_schema() } else { lancet_engine::profile::profile_schema() };
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &schema)?;
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hook(cmd) => hook::run(&cli.api, cmd),
        Command::Isolate { container, expire } => manage::respond(&cli.api, &container, "isolate", expire.as_deref()),
        Command::Freeze { container, expire } => manage::respond(&cli.api, &container, "freeze", expire.as_deref()),
        Command::Status => {
            let v = api::Client::new(&cli.api).get("/v1/enforcement")?;
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &v)?;
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Release { container } => manage::respond(&cli.api, &container, "release", None),
        Command::Scan { args } => scan::run(&args),
        Command::Alerts { since, container, format, state_dir } => {
            manage::alerts(&cli.api, &state_dir, since.as_deref(), container.as_deref(), format)
        }
        Command::Audit { since, format } => audit_cmd::run(&cli.api, since.as_deref(), format),
        Command::Map(args) => map_cmd::run(&cli.api, args),
        Command::Hub(args) => fleet::hub::run(args),
    }
}

/// SIGINT and SIGTERM ask the loop to stop; it finishes its batch first.
pub fn install_stop_signals(stop: &std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(stop)).context("installing signal handlers")?;
    }
    Ok(())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<io::Error>().map(|io| io.kind() == io::ErrorKind::BrokenPipe).unwrap_or(false))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout and usage errors to stderr.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).init();
    lancet_sensor::route_libbpf_logs();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lancet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
