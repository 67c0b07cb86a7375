#!/usr/bin/env bash
# Checks everything under deploy/ that can be checked without a Kubernetes
# API server or a booted systemd (neither runs here): renders the
# kustomization and the Helm chart, validates every object against
# Kubernetes' own schemas (1.30 to 1.34, strict), lints the YAML, checks
# that the manifests keep what the agent needs and pass only flags that
# `lancet run` accepts, has the agent parse the default configuration,
# builds the .deb and the container image from the binary just built,
# verifies the systemd unit and runs the agent under the unit's capability
# bounding set. Each check prints ok or FAIL with what went wrong; a check
# whose tool is missing is skipped, except in CI as root, where set-up
# installs every tool and a skip fails.
#
#   scripts/check-deploy.sh            # uses ${CARGO_TARGET_DIR:-target}/debug/lancet
#   LANCET_BIN=PATH scripts/check-deploy.sh
set -uo pipefail
cd "$(dirname "$0")/.."

tools=/opt/lancet-deploy-tools
venv=$tools/venv/bin
target=${CARGO_TARGET_DIR:-target}
bin=${LANCET_BIN:-$target/debug/lancet}
k8s_versions=(1.30.0 1.31.0 1.32.0 1.33.0 1.34.0)
strict=0
[ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && strict=1

work=$(mktemp -d /tmp/lancet-check-deploy.XXXXXX)
cleanup_cmds=()
# Undone last first: the agent stops before its container and image go.
cleanup() {
  local i
  for ((i = ${#cleanup_cmds[@]} - 1; i >= 0; i--)); do eval "${cleanup_cmds[i]}" >/dev/null 2>&1; done
  rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0 skipped=0
failures=()
# check NAME COMMAND...: runs COMMAND with its output captured; prints ok,
# or FAIL and the output.
check() {
  local name=$1; shift
  local out=$work/out.$((passed + failed + skipped)) t0=$SECONDS
  if "$@" >"$out" 2>&1; then
    passed=$((passed + 1))
    printf 'deploy: ok    %-58s %3ss\n' "$name" $((SECONDS - t0))
  else
    failed=$((failed + 1)); failures+=("$name")
    printf 'deploy: FAIL  %s\n' "$name"
    sed 's/^/    /' "$out" | tail -n 60
  fi
}
skip() {
  skipped=$((skipped + 1))
  printf 'deploy: skip  %s: %s\n' "$1" "$2"
  if [ "$strict" = 1 ]; then
    failed=$((failed + 1)); failures+=("$1 (skipped in CI as root)")
  fi
}
# tool NAME: the tool from set-up's folder, else from PATH, else nothing.
tool() {
  if [ -x "$tools/bin/$1" ]; then echo "$tools/bin/$1"
  elif [ -x "$venv/$1" ]; then echo "$venv/$1"
  else command -v "$1" || true
  fi
}
kubectl=$(tool kubectl) helm=$(tool helm) yamllint=$(tool yamllint)
kvalidate=$(tool kubernetes-validate) cargo_deb=$(tool cargo-deb)
# PyYAML comes with the venv's yamllint.
py=$venv/python; [ -x "$py" ] || py=python3
chart=deploy/helm/lancet
renders=()

# --- Rendering ---------------------------------------------------------------
if [ -n "$kubectl" ]; then
  check "kubectl kustomize deploy/kubernetes" sh -c '"$1" kustomize deploy/kubernetes > "$2"' sh "$kubectl" "$work/kustomize.yaml"
  [ -s "$work/kustomize.yaml" ] && renders+=("$work/kustomize.yaml")
else
  skip "kubectl kustomize deploy/kubernetes" "no kubectl (scripts/setup.sh installs one)"
fi

# The values a fleet node would use, besides the defaults: every optional
# branch of the templates is rendered.
fleet_values=(--set natsUrl=tls://nats.lancet-system.svc:4222 --set clusterName=prod
              --set natsSecret.name=lancet-nats --set 'natsSecret.nkey=$(NODE_NAME).nk' --set natsSecret.ca=ca.crt
              --set natsSecret.cert=tls.crt --set natsSecret.key=tls.key
              --set config.failMode=deny --set 'nodeSelector.kubernetes\.io/os=linux'
              --set namespace.create=false --set image.tag=0.1.0-test --set mode=monitor)
if [ -n "$helm" ]; then
  check "helm lint --strict (defaults, fleet values)" bash -c '"$1" lint --strict "$2" && "$1" lint --strict "$2" "${@:3}"' \
    sh "$helm" "$chart" "${fleet_values[@]}"
  check "helm template (defaults)" sh -c '"$1" template lancet "$2" --namespace lancet-system > "$3"' \
    sh "$helm" "$chart" "$work/helm-default.yaml"
  check "helm template (fleet values)" bash -c '"$1" template fleet "$2" --namespace security "${@:4}" > "$3"' \
    sh "$helm" "$chart" "$work/helm-fleet.yaml" "${fleet_values[@]}"
  for f in helm-default helm-fleet; do [ -s "$work/$f.yaml" ] && renders+=("$work/$f.yaml"); done
  # values.schema.json is in force: a wrong mode and an unknown key are
  # refused at render time, not passed to the agent.
  refuses_bad_values() {
    local v
    for v in mode=protekt listn=127.0.0.1:7447 'listen=localhost' 'pinDir=/tmp/pins'; do
      if "$helm" template x "$chart" --set "$v" >/dev/null 2>&1; then
        echo "helm rendered the chart with --set $v; values.schema.json should refuse it"; return 1
      fi
    done
  }
  check "helm refuses values the schema forbids" refuses_bad_values
else
  for c in "helm lint" "helm template" "helm schema"; do skip "$c" "no helm (scripts/setup.sh installs one)"; done
fi

# --- Validation --------------------------------------------------------------
if [ -n "$kvalidate" ] && ((${#renders[@]})); then
  for v in "${k8s_versions[@]}"; do
    check "kubernetes-validate --strict, Kubernetes ${v%.0}" \
      "$kvalidate" --strict --quiet --kubernetes-version "$v" "${renders[@]}"
  done
else
  skip "kubernetes-validate" "no kubernetes-validate or nothing rendered (scripts/setup.sh installs it)"
fi

if [ -n "$yamllint" ]; then
  check "yamllint deploy/ and every rendered stream" \
    "$yamllint" --strict -c deploy/.yamllint.yaml deploy "${renders[@]}"
else
  skip "yamllint" "no yamllint (scripts/setup.sh installs it)"
fi

# What the agent needs from its pod, checked on every rendered stream; and
# every flag passed to `lancet run` is one this binary's --help lists (the
# fleet's --nats/--node/--cluster are reported, not required, until the
# agent has them).
if [ -x "$bin" ]; then
  "$bin" run --help > "$work/run-help.txt" 2>&1
fi
check_objects() {
  "$py" - "$work/run-help.txt" "$@" <<'PY'
import re, sys, yaml
help_file, streams = sys.argv[1], sys.argv[2:]
try:
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", open(help_file).read()))
except OSError:
    known = None
FLEET = {"--nats", "--node", "--cluster"}
bad = []
def need(cond, what):
    if not cond:
        bad.append(f"{stream}: {what}")
for stream in streams:
    text = open(stream).read()
    # A template reading a value that does not exist renders this, and the
    # schemas take it for a string like any other.
    need("<no value>" not in text, "a template rendered <no value> (a misspelt .Values key)")
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"):
        need(k in kinds, f"no {k}")
    for ns in kinds.get("Namespace", []):
        need(ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged",
             "the Namespace is not labelled pod-security.kubernetes.io/enforce=privileged")
    for role in kinds.get("ClusterRole", []):
        rules = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
        want = {(r, v) for r in ("pods", "nodes") for v in ("get", "list", "watch")}
        need(rules == want, f"ClusterRole grants {sorted(rules)}, not get/list/watch on pods and nodes only")
    for ds in kinds.get("DaemonSet", []):
        spec = ds["spec"]["template"]["spec"]
        need(spec.get("hostPID") is True, "hostPID is not true")
        need(spec.get("hostNetwork") is True, "hostNetwork is not true")
        need({"operator": "Exists"} in spec.get("tolerations", []), "no toleration of every taint (operator: Exists)")
        (c,) = [c for c in spec["containers"] if c["name"] == "lancet"]
        need(c.get("securityContext", {}).get("privileged") is True, "the container is not privileged")
        env = {e["name"]: e for e in c.get("env", [])}
        need(env.get("HOST_ROOT", {}).get("value") == "/host", "HOST_ROOT is not /host")
        need(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
             "NODE_NAME does not come from spec.nodeName")
        res = c.get("resources", {})
        for side in ("requests", "limits"):
            for r in ("cpu", "memory"):
                need(r in res.get(side, {}), f"no {side}.{r}")
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        def host(path):
            return {vols[m["name"]].get("hostPath", {}).get("path") for m in mounts.values() if m["mountPath"] == path}
        need(host("/sys/fs/bpf") == {"/sys/fs/bpf"} and mounts["/sys/fs/bpf"].get("mountPropagation") == "Bidirectional",
             "/sys/fs/bpf is not the host's with Bidirectional propagation")
        need(host("/sys/fs/cgroup") == {"/sys/fs/cgroup"}, "/sys/fs/cgroup is not the host's")
        need(host("/host/proc") == {"/proc"}, "the host's /proc is not at /host/proc")
        for p in ("/run", "/var/lib"):
            need(host("/host" + p) == {p} and mounts["/host" + p].get("mountPropagation") == "HostToContainer",
                 f"the host's {p} is not at /host{p} with HostToContainer propagation")
        need(vols[mounts["/var/lib/lancet"]["name"]].get("hostPath") is not None, "the state directory is not a host path")
        args = c.get("args", [])
        need(args[:1] == ["run"], f"the container does not run `lancet run`: {args}")
        modes = [a.split("=", 1)[1] for a in args if a.startswith("--mode=")]
        need(len(modes) == 1 and modes[0] in ("learn", "monitor", "protect"), f"--mode is not one of learn, monitor, protect: {modes}")
        flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        listen = [a.split("=", 1)[1] for a in args if a.startswith("--listen=")]
        need(len(listen) == 1, "no single --listen=ADDR (the probes need the TCP API)")
        if known is not None:
            unknown = flags - known - FLEET
            need(not unknown, f"flags `lancet run --help` does not list: {sorted(unknown)}")
            for f in sorted(flags & FLEET - known):
                print(f"    note: {stream.rsplit('/', 1)[-1]}: {f} is the fleet's flag (issue 18); this binary lacks it")
        # The fleet's NATS files: paths into a read-only Secret whose files
        # are 0400 (the agent refuses a seed or key others may read).
        nats_files = [a for a in args if a.split("=", 1)[0] in ("--nats-creds", "--nats-nkey", "--nats-ca", "--nats-cert", "--nats-key")]
        if nats_files:
            m = mounts.get("/etc/lancet/nats")
            need(m is not None and m.get("readOnly") is True, "the NATS files are not mounted read-only at /etc/lancet/nats")
            if m is not None:
                need(vols[m["name"]].get("secret", {}).get("defaultMode") == 0o400,
                     "the NATS Secret's defaultMode is not 0400 (the agent refuses a seed or key others may read)")
            for a in nats_files:
                need(a.split("=", 1)[1].startswith("/etc/lancet/nats/"), f"{a} is not a file of the mounted Secret")
        if listen:
            lhost, lport = listen[0].rsplit(":", 1)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                g = c.get(probe, {}).get("httpGet", {})
                need(g.get("path") == "/healthz" and str(g.get("port")) == lport
                     and g.get("host") == lhost.strip("[]"),
                     f"{probe} does not GET /healthz on --listen {listen[0]}: {g}")
if bad:
    print("\n".join(bad))
    sys.exit(1)
PY
}
if ((${#renders[@]})); then
  [ -s "$work/run-help.txt" ] || echo "deploy: note: no lancet binary at $bin: flags are not checked against it"
  check "DaemonSet has what the agent needs, flags lancet accepts" check_objects "${renders[@]}"
fi

# --- The agent's configuration --------------------------------------------------
# `lancet run` reads its file before anything else, then checks the state
# directory: given a regular file as the state directory, it stops there,
# so "is not a directory" means every setting of the file was accepted,
# with nothing loaded and nothing written.
parses_config() {
  local cfg=$1 out
  : > "$work/not-a-dir"
  out=$("$bin" run --config "$cfg" --state-dir "$work/not-a-dir" 2>&1)
  if [[ $out == *"is not a directory"* ]]; then return 0; fi
  echo "$cfg:"; echo "$out"; return 1
}
config_checks() {
  # The shipped file, then the same with every commented example taken in.
  parses_config deploy/systemd/lancet.yaml || return 1
  sed -E 's/^# ( *- |[a-z][a-zA-Z]*:)/\1/' deploy/systemd/lancet.yaml > "$work/lancet-examples.yaml"
  parses_config "$work/lancet-examples.yaml" || return 1
  if [ -s "$work/helm-fleet.yaml" ]; then
    "$py" -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap": sys.stdout.write(d["data"]["lancet.yaml"])' "$work/helm-fleet.yaml" > "$work/helm-config.yaml"
    [ -s "$work/helm-config.yaml" ] || { echo "the fleet render has no ConfigMap with lancet.yaml"; return 1; }
    parses_config "$work/helm-config.yaml" || return 1
  fi
}
if [ -x "$bin" ]; then
  check "lancet accepts deploy/systemd/lancet.yaml, its examples, the chart's" config_checks
else
  skip "lancet accepts the configuration files" "no lancet binary at $bin (cargo build -p lancet)"
fi

# --- Debian package ------------------------------------------------------------
# cargo-deb packs ${target}/<profile>/lancet: the dev profile's binary when
# that is what was built (stripped, so the package stays small), the
# release one for a release.
deb=$work/lancet.deb
build_deb() {
  local profile=release
  [[ $bin == */debug/lancet ]] && profile=dev
  [[ $bin == "$target"/*/lancet ]] || { echo "LANCET_BIN must be under $target/<profile>/ for cargo-deb"; return 1; }
  "$cargo_deb" -p lancet --no-build --quiet --fast --profile "$profile" -o "$deb" || return 1
  mkdir -p "$work/root" && dpkg-deb -x "$deb" "$work/root"
}
# A file of the package's control archive.
control() { dpkg-deb --ctrl-tarfile "$deb" | tar -xO --wildcards "*$1"; }
deb_contents() {
  local want got
  want=$(printf '%s\n' etc/lancet/lancet.yaml lib/systemd/system/lancet.service usr/bin/lancet \
    usr/share/doc/lancet/README.md usr/share/doc/lancet/copyright usr/share/doc/lancet/deploy.md)
  got=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\.\//, "", $6); print $6 }' | sort)
  [ "$got" = "$want" ] || { echo "dpkg-deb -c lists:"; echo "$got"; echo "expected:"; echo "$want"; return 1; }
  dpkg-deb -c "$deb" | grep -qE '^-rwxr-xr-x (root/root|0/0) .* (\./)?usr/bin/lancet$' || { dpkg-deb -c "$deb"; echo "usr/bin/lancet is not 0755 root:root"; return 1; }
  [ "$(dpkg-deb -f "$deb" Package)" = lancet ] || { echo "Package is not lancet"; return 1; }
  dpkg-deb -f "$deb" Depends | grep -q 'libelf1' || { echo "Depends lacks libelf1: $(dpkg-deb -f "$deb" Depends)"; return 1; }
  control conffiles | grep -qx /etc/lancet/lancet.yaml || { echo "/etc/lancet/lancet.yaml is not a conffile"; return 1; }
  # Installed but neither enabled nor started: the generated postinst only
  # re-enables a unit the admin had enabled (the debian-installed guard
  # that enable = false yields), and restarts one only if it was running.
  control postinst > "$work/postinst"
  grep -q 'deb-systemd-helper debian-installed lancet.service' "$work/postinst" \
    || { cat "$work/postinst"; echo "postinst enables lancet.service on a first install"; return 1; }
  if grep -E 'deb-systemd-invoke (start|restart) |systemctl (--system )?(start|enable) ' "$work/postinst"; then
    echo "postinst starts lancet.service"; return 1
  fi
  cmp deploy/systemd/lancet.service "$work/root/lib/systemd/system/lancet.service" || return 1
  cmp deploy/systemd/lancet.yaml "$work/root/etc/lancet/lancet.yaml" || return 1
  [ "$("$work/root/usr/bin/lancet" --version)" = "$("$bin" --version)" ] || { echo "the packaged binary is not $bin"; return 1; }
}
if [ -n "$cargo_deb" ] && [ -x "$bin" ] && command -v dpkg-deb >/dev/null; then
  check "cargo deb -p lancet (from $bin)" build_deb
  if [ -s "$deb" ]; then
    check "dpkg-deb -c/-I: files, modes, Depends, conffiles, scripts" deb_contents
  fi
else
  skip "cargo deb" "needs cargo-deb (scripts/setup.sh), dpkg-deb and a lancet binary at $bin"
fi

# --- systemd unit --------------------------------------------------------------
# No systemd runs as PID 1 here: the unit is verified offline in the
# package's own tree, with the host's units for its dependencies. verify
# exits 0 even on an ignored line, so any output is a failure.
unit_verify() {
  cp -an /lib/systemd/system/. "$work/root/lib/systemd/system/"
  mkdir -p "$work/root/bin" && cp /bin/kill "$work/root/bin/kill"
  local out
  out=$(systemd-analyze verify --root="$work/root" lancet.service 2>&1)
  [ -z "$out" ] || { echo "$out"; return 1; }
}
# systemd's own score of the sandbox, 0 (tight) to 10: no worse than today's
# 5.5 (the capabilities and writable /sys the agent needs cost the rest).
unit_exposure() {
  systemd-analyze security --offline=true --root="$work/root" --threshold=55 lancet.service >"$work/security.txt" 2>&1 \
    || { grep Overall "$work/security.txt"
         echo "each setting's share: systemd-analyze security --offline=true deploy/systemd/lancet.service"; return 1; }
}
if command -v systemd-analyze >/dev/null && [ -f "$work/root/lib/systemd/system/lancet.service" ]; then
  check "systemd-analyze verify lancet.service (in the .deb's tree)" unit_verify
  check "systemd-analyze security: exposure at most 5.5" unit_exposure
else
  skip "systemd-analyze" "needs systemd-analyze and the extracted .deb"
fi

# The unit's CapabilityBoundingSet and NoNewPrivileges, for real: the agent
# runs under exactly that bounding set (setpriv), learns a container of an
# image of its own (a workload is an image, so no one else's containers
# are touched), is promoted to protect, and must report every backend
# holding and refuse a binary dropped into the container.
unit_caps() {
  local caps name img t pins sock api apid ok=0 i
  caps=$(sed -n 's/^CapabilityBoundingSet=//p' deploy/systemd/lancet.service | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
  [ -n "$caps" ] || { echo "no CapabilityBoundingSet= in the unit"; return 1; }
  t=$work/caps; mkdir -p "$t"
  name=lancet-check-deploy-$$ img=localhost/lancet-check-deploy:$$
  pins=/sys/fs/bpf/lancet-check-deploy-$$ sock=$t/lancet.sock
  api=127.0.0.1:$((20000 + $$ % 20000))
  cleanup_cmds+=("podman rm -f -t0 $name" "podman rmi -f $img" "rm -rf $pins")
  printf 'FROM localhost/lancet-busybox:test\nLABEL lancet.check-deploy=%s\n' "$$" \
    | podman build -q --pull=never -t "$img" -f - "$t" >/dev/null || return 1
  podman run -d --name "$name" "$img" sh -c 'while true; do sleep 1; done' >/dev/null || return 1
  setpriv --bounding-set="-all,$caps" --inh-caps=-all --no-new-privs -- \
    "$bin" run --mode learn --state-dir "$t/state" --socket "$sock" --pin-dir "$pins" --listen "$api" \
    --min-learning 1h --quiet-period 1h --log warn 2>"$t/agent.log" &
  apid=$!
  cleanup_cmds+=("kill $apid; wait $apid")
  for i in $(seq 90); do
    curl -sf "http://$api/healthz" >/dev/null && { ok=1; break; }
    kill -0 "$apid" 2>/dev/null || break
    sleep 1
  done
  [ "$ok" = 1 ] || { echo "the agent did not answer on $api"; cat "$t/agent.log"; return 1; }
  echo "bounding set: $(grep CapBnd "/proc/$apid/status")"
  podman exec "$name" cp /bin/busybox /tmp/learned
  sleep 2
  "$bin" --api "$sock" profile promote "$name" --to protect --force || return 1
  for i in $(seq 20); do
    "$bin" --api "$sock" status > "$t/status.json" 2>&1
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); b=[x for x in d["backends"] if x["backend"] != "bpf-lsm"]; sys.exit(0 if b and all(x["holds"] for x in b) else 1)' "$t/status.json" && break
    sleep 1
  done
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
bad=[(x["backend"], x.get("error", x.get("reason", ""))) for x in d["backends"] if x["backend"] != "bpf-lsm" and not x["holds"]]
print("backends:", ", ".join(("%s %s" % (x["backend"], "holds" if x["holds"] else ("not on this kernel (not required)" if x["backend"] == "bpf-lsm" else "FAILS"))) for x in d["backends"]))
sys.exit(1 if bad or not d["backends"] else 0)' "$t/status.json" || { cat "$t/agent.log"; return 1; }
  podman exec "$name" cp /bin/busybox /tmp/dropped
  if podman exec "$name" /tmp/dropped true; then
    echo "a binary dropped into the protected container ran"; cat "$t/agent.log"; return 1
  fi
  # A capability the unit lacks shows as EPERM in a warning (setns,
  # mknod, a BPF attach), even where a backend still reports holding.
  if grep -iE 'not permitted|permission denied' "$t/agent.log"; then
    echo "the agent was refused something under the unit's bounding set"; return 1
  fi
}
if [ "$(id -u)" = 0 ] && [ -x "$bin" ] && command -v podman >/dev/null && command -v setpriv >/dev/null \
   && podman image exists localhost/lancet-busybox:test 2>/dev/null && mountpoint -q /sys/fs/bpf; then
  check "agent under the unit's capabilities: backends hold, drift refused" unit_caps
else
  skip "agent under the unit's capabilities" "needs root, podman, setpriv, bpffs, the test image and $bin"
fi

# --- Container image -----------------------------------------------------------
image_check() {
  local image=localhost/lancet-check-deploy:image-$$
  cleanup_cmds+=("podman rmi -f $image")
  bash deploy/container/build.sh "$bin" "$image" || return 1
  local v
  v=$(podman run --rm --network=none --read-only "$image" --version) || return 1
  [ "$v" = "$("$bin" --version)" ] || { echo "the image says $v"; return 1; }
  # No shell in the image: nothing but lancet and its libraries.
  if podman run --rm --network=none --entrypoint /bin/sh "$image" -c true 2>/dev/null; then
    echo "the image has a /bin/sh"; return 1
  fi
}
if [ "$(id -u)" = 0 ] && [ -x "$bin" ] && command -v podman >/dev/null; then
  check "deploy/container/build.sh: image runs lancet, has no shell" image_check
else
  skip "container image" "needs root, podman and $bin"
fi

printf 'deploy: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
if ((failed)); then
  printf 'deploy: failed: %s\n' "${failures[@]}"
  exit 1
fi
