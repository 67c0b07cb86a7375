//! What a process spent on the CPU, and what it printed, for the per-event
//! columns of `cargo xtask bench`: agent CPU in nanoseconds from
//! `/proc/<pid>/task/*/schedstat` (the first field of each thread: time on
//! the CPU, in ns, not the 10 ms ticks of `/proc/<pid>/stat`), lines counted
//! off a pipe, `lancet run`'s event counters from its `/metrics`, and
//! bpftrace printing one line per event of the same loop.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nanoseconds on the CPU of every live thread of `pid` (the sum of the
/// first field of `/proc/<pid>/task/<tid>/schedstat`). A process's own
/// `/proc/<pid>/schedstat` is its main thread's only; `lancet run` has an
/// API thread and a tokio runtime besides its loop.
pub(crate) fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Counts the lines a child writes to its stdout pipe, reading (and
/// dropping) them on a thread of its own, as a consumer of `lancet trace
/// --format json | ...` would.
pub(crate) struct LineCounter {
    lines: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The first line, kept (bpftrace's "Attaching N probes...").
    first: Arc<std::sync::Mutex<Option<String>>>,
}

impl LineCounter {
    pub(crate) fn start(mut out: ChildStdout) -> LineCounter {
        let lines = Arc::new(AtomicU64::new(0));
        let first = Arc::new(std::sync::Mutex::new(None));
        let (l, f) = (Arc::clone(&lines), Arc::clone(&first));
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut head = Vec::new();
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if l.load(Ordering::Relaxed) == 0 {
                    if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                        head.extend_from_slice(&chunk[..i]);
                        if let Ok(mut g) = f.lock() {
                            *g = Some(String::from_utf8_lossy(&head).into_owned());
                        }
                    } else {
                        head.extend_from_slice(chunk);
                    }
                }
                l.fetch_add(chunk.iter().filter(|&&b| b == b'\n').count() as u64, Ordering::Relaxed);
            }
        });
        LineCounter { lines, reader: Some(reader), first }
    }

    /// Every line, once the writer closed the pipe (it exited).
    pub(crate) fn lines_at_eof(&mut self) -> u64 {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines()
    }

    pub(crate) fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    pub(crate) fn first_line(&self) -> Option<String> {
        self.first.lock().ok().and_then(|g| g.clone())
    }
}

/// Waits until `count` stops growing (the same value for `quiet`), at most
/// `max`; returns the last value. How the bench knows a reader has drained
/// what a loop queued, whatever its batching delay.
pub(crate) fn settle(mut count: impl FnMut() -> u64, quiet: Duration, max: Duration) -> u64 {
    let t0 = Instant::now();
    let mut last = count();
    let mut since = Instant::now();
    while t0.elapsed() < max {
        std::thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

/// Sums of `lancet run`'s counters from `/metrics` on its control socket,
/// one per name prefix asked (`lancet_events_total{` is every event its loop
/// counted, whatever the type); None when the agent did not answer.
pub(crate) fn run_counters<const N: usize>(socket: &str, prefixes: [&str; N]) -> Option<[u64; N]> {
    let out = Command::new("curl").args(["-s", "--max-time", "10", "--unix-socket", socket, "http://lancet/metrics"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("lancet_events_total") {
        return None;
    }
    let mut sums = [0u64; N];
    for line in text.lines() {
        for (i, p) in prefixes.iter().enumerate() {
            if line.starts_with(p) {
                sums[i] += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
            }
        }
    }
    Some(sums)
}

/// bpftrace programs printing one line per event of each loop, comparable
/// with what lancet reports for it: an exec, each TCP state change of the
/// bench's port, and the loop's own openat, write and unlink.
pub(crate) fn bpftrace_program(loop_name: &str) -> &'static str {
    match loop_name {
        "exec" => {
            r#"tracepoint:sched:sched_process_exec /comm == "true"/ { printf("%d %d %s exec %s\n", pid, uid, comm, str(args->filename)); }"#
        }
        "connect" => {
            r#"tracepoint:sock:inet_sock_set_state /args->dport == 9000 || args->sport == 9000/ { printf("%d %d %d->%d %d %d\n", pid, cgroup, args->oldstate, args->newstate, args->sport, args->dport); }"#
        }
        _ => {
            r#"tracepoint:syscalls:sys_enter_openat /comm == "loadgen"/ { printf("%d %d %s openat %s\n", pid, cgroup, comm, str(args->filename)); }
tracepoint:syscalls:sys_enter_write /comm == "loadgen"/ { printf("%d %d %s write %d %d\n", pid, cgroup, comm, args->fd, args->count); }
tracepoint:syscalls:sys_enter_unlink /comm == "loadgen"/ { printf("%d %d %s unlink %s\n", pid, cgroup, comm, str(args->pathname)); }"#
        }
    }
}

/// A running bpftrace, its stdout counted; stopped (SIGINT, by pid) on drop.
pub(crate) struct Bpftrace {
    child: Child,
    pub(crate) out: LineCounter,
}

impl Bpftrace {
    /// Whether bpftrace is installed.
    pub(crate) fn available() -> bool {
        Command::new("bpftrace").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    /// Starts `program` and waits until its probes are attached.
    pub(crate) fn start(program: &str, errs: &std::path::Path) -> Result<Bpftrace> {
        let mut child = Command::new("bpftrace")
            .args(["-B", "full", "-e", program])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(errs)?)
            .spawn()
            .context("starting bpftrace")?;
        let out = LineCounter::start(child.stdout.take().context("bpftrace stdout")?);
        let mut b = Bpftrace { child, out };
        let t0 = Instant::now();
        while b.out.first_line().is_none() {
            if let Ok(Some(st)) = b.child.try_wait() {
                let err = std::fs::read_to_string(errs).unwrap_or_default();
                bail!("bpftrace exited ({st}): {}", err.trim());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("bpftrace did not attach within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // "Attaching N probes..." comes before the probes are attached.
        std::thread::sleep(Duration::from_millis(500));
        Ok(b)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines printed after the "Attaching" banner.
    pub(crate) fn lines(&self) -> u64 {
        self.out.lines().saturating_sub(1)
    }

    /// Stops bpftrace (SIGINT, by pid) and returns every line it printed
    /// after its banner: it buffers its output, so what it printed is known
    /// only once it flushed and exited.
    pub(crate) fn finish(mut self) -> u64 {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).output();
        let _ = self.child.wait();
        self.out.lines_at_eof().saturating_sub(1)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).output();
            let _ = self.child.wait();
        }
    }
}
