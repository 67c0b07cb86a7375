//! Real `nats-server` processes for the fleet's tests, with JetStream, on
//! loopback ports: one server, or a cluster of three, or one server from a
//! configuration file the test writes (TLS, users, permissions). Each keeps
//! its JetStream store in a temporary directory, so a server stopped and
//! started again (same ports) has what it had. Killed by pid on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where set-up installs the server (`scripts/setup.sh`).
const INSTALLED: &str = "/opt/lancet-fleet-tools/venv/bin/nats-server";

/// The server binary: `LANCET_NATS_SERVER`, else where set-up puts it,
/// else `nats-server` on PATH; None when there is none.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LANCET_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    if Path::new(INSTALLED).exists() {
        return Some(INSTALLED.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("nats-server")).find(|p| p.exists())
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// One server of a test.
pub struct Server {
    bin: PathBuf,
    name: String,
    pub port: u16,
    cluster_port: Option<u16>,
    routes: Vec<u16>,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// Started from `<store>/server.conf` (with these environment
    /// variables) rather than from flags.
    config: Option<(String, Vec<(String, String)>)>,
}

impl Server {
    fn args(&self) -> Vec<String> {
        if let Some((text, _)) = &self.config {
            let path = self.store.path().join("server.conf");
            let head = format!(
                "listen: \"127.0.0.1:{}\"\nserver_name: {}\njetstream {{ store_dir: \"{}\" }}\n",
                self.port,
                self.name,
                self.store.path().join("js").display()
            );
            std::fs::write(&path, format!("{head}{text}\n")).expect("writing the server's configuration");
            return vec!["-c".into(), path.display().to_string()];
        }
        let mut a = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-js".into(),
            "-sd".into(),
            self.store.path().display().to_string(),
            "--server_name".into(),
            self.name.clone(),
        ];
        if let Some(cp) = self.cluster_port {
            a.extend(["--cluster_name".into(), "lancet-test".into(), "--cluster".into(), format!("nats://127.0.0.1:{cp}")]);
            let routes: Vec<String> = self.routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
            a.extend(["--routes".into(), routes.join(",")]);
        }
        a
    }

    /// Starts (or starts again) the process and waits for its port.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let env = self.config.as_ref().map(|(_, e)| e.clone()).unwrap_or_default();
        let child = Command::new(&self.bin)
            .args(self.args())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // LANCET_NATS_LOG=1: the server's log, to see why it did not start.
            .stderr(if std::env::var_os("LANCET_NATS_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server {} did not listen on {} within 20 s", self.name, self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (by its pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One server (`n` = 1) or a cluster of `n`, started.
pub fn start(n: usize) -> Option<Vec<Server>> {
    let bin = binary()?;
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut servers: Vec<Server> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, cp))| Server {
            bin: bin.clone(),
            name: format!("n{i}"),
            port: *p,
            cluster_port: (n > 1).then_some(*cp),
            routes: if n > 1 { ports.iter().filter(|(q, _)| q != p).map(|(_, c)| *c).collect() } else { Vec::new() },
            store: tempfile::tempdir().expect("tempdir"),
            child: None,
            config: None,
        })
        .collect();
    for s in &mut servers {
        s.start();
    }
    Some(servers)
}

/// One server from a configuration: `text` follows the lines that set its
/// port, name and JetStream store; `files` are written next to it first
/// (for `include`), `env` is its environment (the `$VARIABLES` a
/// configuration may name). None when no server binary is installed.
pub fn start_configured(text: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Option<Server> {
    let bin = binary()?;
    let store = tempfile::tempdir().expect("tempdir");
    for (name, body) in files {
        std::fs::write(store.path().join(name), body).expect("writing a configuration file");
    }
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut s = Server {
        bin,
        name: "n0".into(),
        port: free_port(),
        cluster_port: None,
        routes: Vec::new(),
        store,
        child: None,
        config: Some((text.to_string(), env)),
    };
    s.start();
    Some(s)
}

/// Every server's URL, comma separated (the client picks one and learns
/// the others).
pub fn urls(servers: &[Server]) -> String {
    servers.iter().map(Server::url).collect::<Vec<_>>().join(",")
}
