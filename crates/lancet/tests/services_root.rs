//! A real stateful service's whole normal life under protect mode, as
//! root: Redis and PostgreSQL from Debian packages (each in its own
//! debootstrap image, `scripts/setup.sh`) and a Python app writing uploads
//! to a volume, all started before the agent, learned for a few seconds
//! under client traffic and `podman exec` health checks, promoted to
//! protect, then their second day: saves, AOF, new databases, sorts that
//! spill to temp files, a parallel query through `/dev/shm`, `VACUUM
//! FULL`, checkpoints, restarts with recovery. Nothing may be refused,
//! every service keeps its data across `podman restart`, and each raises
//! at most one alert. Then attacks through the services' own features
//! (Redis run as root writing its dump as root's `.profile` or a crontab,
//! PostgreSQL's `COPY … TO PROGRAM`) are each refused with an alert, and
//! `COPY … TO` a shell start-up file in the service's own home is alerted. Prints the table (service × operation × result) the README
//! keeps.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const REDIS: &str = "localhost/lancet-redis:test";
const POSTGRES: &str = "localhost/lancet-postgres:test";
const DEBIAN: &str = "localhost/lancet-debian:test";

/// Starts `image` detached; removed by id on drop.
fn start(hooks: &Path, name: &str, extra: &[&str], image: &str, cmd: &[&str]) -> Container {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.push(image);
    args.extend_from_slice(cmd);
    let o = podman_h(hooks, &args);
    assert!(o.status.success(), "podman run {image}: {}", out_text(&o));
    Container { id: String::from_utf8_lossy(&o.stdout).trim().to_string(), name: name.to_string() }
}

/// Runs `cmd` in `c` until it succeeds (a service just started needs a
/// moment); its output.
fn until_ok(c: &Container, cmd: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let o = c.exec(cmd);
        if o.status.success() {
            return out_text(&o);
        }
        assert!(Instant::now() < deadline, "{cmd:?} in {} never succeeded: {}", c.name, out_text(&o));
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The rows of the table: (service, operation, result).
#[derive(Default)]
struct Table {
    rows: Vec<(&'static str, String, String)>,
    failures: Vec<String>,
}

impl Table {
    /// A normal operation: must succeed, and its output must contain `want`.
    fn normal(&mut self, service: &'static str, what: &str, c: &Container, cmd: &[&str], want: &str) {
        let o = c.exec(cmd);
        let text = out_text(&o);
        let ok = o.status.success() && text.contains(want);
        self.rows.push((service, what.to_string(), if ok { "allowed".into() } else { "FAILED".into() }));
        if !ok {
            self.failures.push(format!("{service}: {what}: {cmd:?}: {} {text}", o.status));
        }
    }

    /// An attack: must fail, its output containing one of `refusal`.
    fn attack(&mut self, service: &'static str, what: &str, c: &Container, cmd: &[&str], refusal: &[&str]) {
        let o = c.exec(cmd);
        let text = out_text(&o);
        let refused = refusal.iter().any(|r| text.contains(r));
        self.rows.push((service, what.to_string(), if refused { "refused".into() } else { "NOT REFUSED".into() }));
        if !refused {
            self.failures.push(format!("{service}: attack {what}: {cmd:?} was not refused: {} {text}", o.status));
        }
    }

    fn print(&self) {
        println!("\n| service | operation | result |\n|---|---|---|");
        for (s, op, r) in &self.rows {
            println!("| {s} | {op} | {r} |");
        }
    }
}

fn psql(sql: &str) -> Vec<&str> {
    vec!["psql", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-c", sql]
}

/// `psql` in database `db`, printing results unaligned.
fn psql_in<'a>(db: &'a str, sql: &'a str) -> Vec<&'a str> {
    vec!["psql", "-v", "ON_ERROR_STOP=1", "-X", "-At", "-d", db, "-c", sql]
}

/// Alerts naming `name` in `alerts`.
fn alerts_of<'a>(alerts: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    alerts.iter().filter(|a| a["output_fields"]["container.name"] == name).collect()
}

fn summary(alerts: &[&serde_json::Value]) -> String {
    alerts.iter().map(|a| a["output"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>().join("\n    ")
}

#[test]
fn stateful_services_live_their_second_day_in_protect_mode() {
    skip_unless_ready!(true);
    for image in [REDIS, POSTGRES, DEBIAN] {
        if !Command::new("podman").args(["image", "exists", image]).status().map(|s| s.success()).unwrap_or(false) {
            lancet_testkit::skip(&format!("test image {image} missing (scripts/setup.sh builds it)"));
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let hooks = dir.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let uploads = dir.path().join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let net = Network::create(&unique("lancet-svc-net"));

    // The services run before the agent. Redis as older versions shipped
    // it (protected configs settable), so that its own CONFIG SET is the
    // attacker's tool below, not something Redis itself refuses.
    let redis = start(
        &hooks,
        &unique("lancet-svc-redis"),
        &["--network", &net.0],
        REDIS,
        &[
            "redis-server",
            "/etc/redis/redis.conf",
            "--daemonize",
            "no",
            "--supervised",
            "no",
            "--protected-mode",
            "no",
            "--bind",
            "0.0.0.0",
            "--logfile",
            "",
            "--enable-protected-configs",
            "yes",
        ],
    );
    let pg = start(&hooks, &unique("lancet-svc-pg"), &["--network", &net.0, "--shm-size", "64m"], POSTGRES, &[]);
    let volume = format!("{}:/data", uploads.display());
    let app_script = "import os, time\nos.makedirs('/data/uploads', exist_ok=True)\ni = 0\nwhile True:\n    with open('/data/uploads/%d-%d.txt' % (time.time_ns(), i), 'w') as f:\n        f.write('upload')\n    with open('/tmp/app-%d.tmp' % i, 'w') as f:\n        f.write('x')\n    os.unlink('/tmp/app-%d.tmp' % i)\n    i += 1\n    time.sleep(0.5)\n";
    let app = start(&hooks, &unique("lancet-svc-app"), &["--network", &net.0, "-v", &volume], DEBIAN, &["python3", "-u", "-c", app_script]);
    until_ok(&redis, &["redis-cli", "ping"], Duration::from_secs(20));
    until_ok(&pg, &["pg_isready", "-q"], Duration::from_secs(30));

    let agent = Agent::start_with_config(&state, &policies, &alerts, "dedupeWindow: 1s\n", &[]);
    let out = agent.cli(&["hook", "install", "--dir", hooks.to_str().unwrap()]);
    assert!(out.contains("lancet.json"), "{out}");

    // Learning: a few seconds of clients and health checks.
    for i in 0..5 {
        until_ok(&redis, &["redis-cli", "ping"], Duration::from_secs(5));
        until_ok(&redis, &["redis-cli", "set", &format!("learn{i}"), "1"], Duration::from_secs(5));
        until_ok(&pg, &["pg_isready", "-q"], Duration::from_secs(5));
        until_ok(&pg, &psql("select 1"), Duration::from_secs(5));
        until_ok(&app, &["test", "-d", "/data/uploads"], Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(1500));
    for c in [&redis, &pg, &app] {
        let out = agent.cli(&["profile", "promote", &c.name, "--to", "protect"]);
        assert!(out.contains("protect"), "{out}");
    }
    for c in [&redis, &pg, &app] {
        agent.wait_guarded(&c.id, Duration::from_secs(20));
    }
    let (_, mut pos) = alerts_since(&alerts, 0);

    // The second day.
    let mut t = Table::default();
    t.normal("redis", "SET under protect", &redis, &["redis-cli", "set", "day2", "kept"], "OK");
    t.normal("redis", "BGSAVE (temp-<pid>.rdb, rename)", &redis, &["redis-cli", "bgsave"], "Background saving started");
    std::thread::sleep(Duration::from_secs(2));
    t.normal("redis", "BGSAVE succeeded", &redis, &["redis-cli", "info", "persistence"], "rdb_last_bgsave_status:ok");
    t.normal("redis", "AOF on (appendonlydir/)", &redis, &["redis-cli", "config", "set", "appendonly", "yes"], "OK");
    std::thread::sleep(Duration::from_secs(2));
    t.normal("redis", "AOF rewrite", &redis, &["redis-cli", "bgrewriteaof"], "rewriting");
    std::thread::sleep(Duration::from_secs(2));
    t.normal("redis", "AOF written", &redis, &["redis-cli", "info", "persistence"], "aof_last_bgrewrite_status:ok");
    t.normal("redis", "writes accepted after the saves", &redis, &["redis-cli", "set", "after", "1"], "OK");

    t.normal("postgres", "CREATE DATABASE (base/<oid>/)", &pg, &psql("create database day2"), "");
    t.normal(
        "postgres",
        "new table, 200 000 rows",
        &pg,
        &psql_in("day2", "create table t as select g as i, md5(g::text) as s from generate_series(1, 200000) g"),
        "",
    );
    t.normal(
        "postgres",
        "sort spilling to temp files (pgsql_tmp)",
        &pg,
        &psql_in("day2", "set work_mem='64kB'; set log_temp_files=0; select count(*) from (select s from t order by s) x"),
        "200000",
    );
    t.normal(
        "postgres",
        "parallel query (/dev/shm segments)",
        &pg,
        &psql_in("day2", "set max_parallel_workers_per_gather=2; set parallel_setup_cost=0; set parallel_tuple_cost=0; set min_parallel_table_scan_size=0; select count(*) from t where s like 'a%'"),
        "",
    );
    t.normal("postgres", "VACUUM FULL", &pg, &psql_in("day2", "vacuum full t"), "");
    t.normal("postgres", "CHECKPOINT", &pg, &psql("checkpoint"), "");

    // Restarts: through the hook, guarded from their first instruction;
    // each keeps its data.
    for c in [&redis, &pg, &app] {
        let o = podman_h(&hooks, &["restart", "-t", "5", &c.id]);
        t.rows.push((
            match c {
                c if c.id == redis.id => "redis",
                c if c.id == pg.id => "postgres",
                _ => "python app",
            },
            "podman restart".into(),
            if o.status.success() { "allowed".into() } else { "FAILED".into() },
        ));
        assert!(o.status.success(), "restart {}: {}", c.name, out_text(&o));
    }
    until_ok(&redis, &["redis-cli", "ping"], Duration::from_secs(20));
    let pg_ready = until_ok(&pg, &["pg_isready"], Duration::from_secs(30));
    assert!(pg_ready.contains("accepting"), "{pg_ready}");
    t.normal("redis", "data kept across the restart (AOF)", &redis, &["redis-cli", "get", "day2"], "kept");
    t.normal("postgres", "data kept across the restart (recovery)", &pg, &psql_in("day2", "select count(*) from t"), "200000");
    std::thread::sleep(Duration::from_secs(2));
    let before_uploads = std::fs::read_dir(uploads.join("uploads")).map(|d| d.count()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let after_uploads = std::fs::read_dir(uploads.join("uploads")).map(|d| d.count()).unwrap_or(0);
    t.rows.push(("python app", "keeps writing uploads after the restart".into(), format!("{before_uploads} → {after_uploads} files")));
    if after_uploads <= before_uploads {
        let (all, _) = alerts_since(&alerts, 0);
        let logs = podman(&["logs", "--tail", "20", &app.id]);
        t.failures.push(format!(
            "python app: stopped writing uploads ({before_uploads} → {after_uploads}); its logs:\n{logs}\n  its alerts:\n    {}",
            summary(&alerts_of(&all, &app.name))
        ));
    }

    // Nothing refused, at most one alert per service.
    let (day2, p) = wait_alerts(&alerts, pos, Duration::from_millis(500), Duration::from_millis(1500));
    pos = p;
    let mut noisy = Vec::new();
    for c in [&redis, &pg, &app] {
        let mine = alerts_of(&day2, &c.name);
        let refused: Vec<&serde_json::Value> = mine.iter().copied().filter(|a| a["output_fields"]["lancet.enforced"] == true).collect();
        if !refused.is_empty() || mine.len() > 1 {
            noisy.push(format!("{}: {} alerts, {} enforced:\n    {}", c.name, mine.len(), refused.len(), summary(&mine)));
        }
    }

    // Attacks through the services' own features. Redis run as root (a
    // replica of the same protected workload, started through the hook),
    // where nothing but lancet stops it from writing root's shell start-up
    // file or a cron file with SAVE.
    let root_redis = start(
        &hooks,
        &unique("lancet-svc-redis-root"),
        &["--network", &net.0, "--user", "root"],
        REDIS,
        &["redis-server", "--protected-mode", "no", "--enable-protected-configs", "yes", "--dir", "/tmp", "--logfile", ""],
    );
    until_ok(&root_redis, &["redis-cli", "ping"], Duration::from_secs(20));
    for (what, dir, file) in [
        ("CONFIG SET dir /root + dbfilename .profile + SAVE", "/root", ".profile"),
        ("CONFIG SET dir /etc + dbfilename crontab + SAVE", "/etc", "crontab"),
    ] {
        until_ok(&root_redis, &["redis-cli", "config", "set", "dir", dir], Duration::from_secs(5));
        until_ok(&root_redis, &["redis-cli", "config", "set", "dbfilename", file], Duration::from_secs(5));
        t.attack("redis (as root)", what, &root_redis, &["redis-cli", "save"], &["Read-only file system", "ERR"]);
        assert!(!root_redis.exec(&["test", "-e", &format!("{dir}/{file}")]).status.success(), "{what}: {dir}/{file} was written");
    }
    t.attack(
        "postgres",
        "COPY … TO PROGRAM 'id'",
        &pg,
        &psql("copy (select 1) to program 'id > /tmp/pwned'"),
        &["Permission denied", "Operation not permitted", "ERROR"],
    );
    assert!(!pg.exec(&["test", "-e", "/tmp/pwned"]).status.success(), "COPY TO PROGRAM ran its program");
    // A shell start-up file in the service's own home (its data
    // directory): no read-only mount can hold a file that does not exist
    // yet inside a writable directory, so it is alerted, not refused.
    let o = pg.exec(&psql("copy (select 'id') to '/var/lib/postgresql/.bashrc'"));
    t.rows.push(("postgres", "COPY … TO '/var/lib/postgresql/.bashrc'".into(), format!("alerted (written: {})", o.status.success())));
    // The services still serve.
    t.normal("redis", "serves after the attacks", &redis, &["redis-cli", "set", "still", "1"], "OK");
    t.normal("postgres", "serves after the attacks", &pg, &psql("select count(*) from pg_database"), "");
    let (attacks, _) = wait_alerts(&alerts, pos, Duration::from_secs(2), Duration::from_millis(1500));
    t.print();

    assert!(t.failures.is_empty(), "failures:\n  {}", t.failures.join("\n  "));
    assert!(noisy.is_empty(), "normal life raised alerts or was refused:\n  {}", noisy.join("\n  "));
    // Each attack is alerted, naming the container.
    let root_alerts = alerts_of(&attacks, &root_redis.name);
    assert!(
        root_alerts.iter().any(|a| a["output_fields"]["lancet.enforced"] == true),
        "the refused SAVE raised no enforced alert:\n    {}",
        summary(&root_alerts)
    );
    let pg_alerts = alerts_of(&attacks, &pg.name);
    assert!(
        pg_alerts
            .iter()
            .any(|a| a["rule"] == "profile deviation: protected_write" && a["output"].as_str().is_some_and(|o| o.contains(".bashrc"))),
        "the .bashrc write raised no protected-write alert:\n    {}",
        summary(&pg_alerts)
    );
    assert!(
        pg_alerts.iter().any(|a| a["output_fields"]["proc.exepath"].as_str().is_some_and(|p| p.ends_with("/sh") || p.ends_with("dash"))),
        "COPY TO PROGRAM raised no exec alert:\n    {}",
        summary(&pg_alerts)
    );
    drop(agent);
}
