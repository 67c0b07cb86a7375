#!/usr/bin/env bash
# A local fleet on this one host, as root (docs/fleet.md):
#   1. a NATS cluster of three servers with JetStream, on loopback ports;
#   2. two agents as the nodes "a" and "b", each following only the
#      containers labelled for it (--only-label), and `lancet hub`;
#   3. one container of the same image on each node (busybox httpd), and
#      node a learning what its container does;
#   4. then it waits for the one promotion, on node a, that it prints (the
#      second command), or makes it itself with --no-wait;
#   5. shows node b's container guarded, a dropped binary refused there,
#      and the hub's nodes and alerts; keeps running until Ctrl-C.
# Ctrl-C (or any exit) removes exactly what it started: the containers by
# name, the agents, hub and servers by pid, the BPF pins and its directory.
#
#   sudo ./scripts/fleet-demo.sh            # waits for your promotion
#   sudo ./scripts/fleet-demo.sh --no-wait  # promotes, shows, cleans up
# Environment: LANCET (the binary; default: build target/release/lancet).
set -euo pipefail
cd "$(dirname "$0")/.."

no_wait=0
for a in "$@"; do
  case $a in
    --no-wait) no_wait=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fleet-demo: unknown argument $a (try --help)" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "fleet-demo: run it as root (BPF, fanotify and podman need it)" >&2; exit 1; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }

bash scripts/setup.sh
lancet=${LANCET:-}
if [ -z "$lancet" ]; then
  cargo build --release -p lancet --locked
  lancet=$PWD/target/release/lancet
fi
nats=/opt/lancet-fleet-tools/venv/bin/nats-server
image=localhost/lancet-busybox:test
dir=/run/lancet-fleet-demo
[ ! -e "$dir" ] || { echo "fleet-demo: $dir exists: another demo runs (or remove it)" >&2; exit 1; }
mkdir -p "$dir"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  podman rm -f -t 0 lancet-demo-a lancet-demo-b >/dev/null 2>&1 || true
  rm -rf /sys/fs/bpf/lancet-fleet-demo-a /sys/fs/bpf/lancet-fleet-demo-b
  rm -rf --one-file-system "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# GET a URL (python3 is there: set-up's venvs need it; curl may not be),
# with the hub's token when it exists.
get() {
  python3 -c 'import sys, urllib.request
req = urllib.request.Request(sys.argv[1])
if sys.argv[2]: req.add_header("Authorization", "Bearer " + open(sys.argv[2]).read().strip())
sys.stdout.write(urllib.request.urlopen(req, timeout=5).read().decode())' "$1" "${2:-}"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

say "A NATS cluster of three servers (JetStream) on loopback"
ports=() cports=()
for i in 0 1 2; do ports+=("$(free_port)"); cports+=("$(free_port)"); done
for i in 0 1 2; do
  routes=$(for j in 0 1 2; do [ "$j" = "$i" ] || printf 'nats://127.0.0.1:%s,' "${cports[$j]}"; done)
  mkdir -p "$dir/nats$i"
  "$nats" -a 127.0.0.1 -p "${ports[$i]}" -js -sd "$dir/nats$i" --server_name "n$i" \
    --cluster_name lancet-demo --cluster "nats://127.0.0.1:${cports[$i]}" --routes "${routes%,}" \
    > "$dir/nats$i.log" 2>&1 &
  pids+=($!)
done
url=$(printf 'nats://127.0.0.1:%s,' "${ports[@]}"); url=${url%,}
note "$url"

say "Two agents (nodes a and b) and the hub"
api_a=127.0.0.1:$(free_port) api_b=127.0.0.1:$(free_port) hub=127.0.0.1:$(free_port)
for n in a b; do
  api=api_$n
  mkdir -p "$dir/$n/state" "$dir/$n/policies"
  # An approved shell runs whatever code it is handed (the default,
  # `learned`, would refuse `sh -c` with new code before anything else):
  # what is shown below is what lies under the shell.
  echo 'interpreterCode: any' > "$dir/$n/none.yaml"
  "$lancet" run --config "$dir/$n/none.yaml" --mode learn --min-learning 1h --quiet-period 1h \
    --state-dir "$dir/$n/state" --policy-dir "$dir/$n/policies" --alerts "$dir/$n/alerts.jsonl" \
    --socket "$dir/$n.sock" --pin-dir "/sys/fs/bpf/lancet-fleet-demo-$n" --listen "${!api}" \
    --nats "$url" --node "$n" --cluster demo --only-label "lancet.demo.node=$n" \
    > "$dir/$n.log" 2>&1 &
  pids+=($!)
done
for n in a b; do
  api=api_$n
  for _ in $(seq 1 300); do
    get "http://${!api}/v1/enforcement" 2>/dev/null | grep -q '"connected":true' && break
    sleep 0.2
  done
  get "http://${!api}/v1/enforcement" 2>/dev/null | grep -q '"connected":true' || { echo "fleet-demo: node $n did not join (see $dir/$n.log)" >&2; exit 1; }
  note "node $n: API http://${!api}, socket $dir/$n.sock"
done
"$lancet" hub --nats "$url" --listen "$hub" --hub-token-file "$dir/hub.token" > "$dir/hub.log" 2>&1 &
pids+=($!)
note "hub: the fleet's dashboard at http://$hub/ (sign in with the token in $dir/hub.token); API /v1/nodes, /v1/alerts, /v1/workloads, /v1/map"

say "One container of $image on each node; node a learns its own"
for n in a b; do
  podman run -d --name "lancet-demo-$n" --label "lancet.demo.node=$n" "$image" httpd -f -p 8080 -h /www >/dev/null
done
sleep 1
podman exec lancet-demo-a wget -q -O /dev/null http://127.0.0.1:8080/index.html
podman exec lancet-demo-a cat /www/index.html >/dev/null
podman exec lancet-demo-a sh -c true
podman exec lancet-demo-a sh -c 'echo x > /tmp/learned && rm /tmp/learned'
sleep 2
"$lancet" --api "$dir/a.sock" profile list

promote="$lancet --api $dir/a.sock profile promote lancet-demo-a --to protect"
if [ "$no_wait" = 1 ]; then
  say "Promoting once, on node a"
  $promote
else
  say "Now promote once, on node a (in another terminal, as root):"
  note "$promote"
fi
b_id=$(podman inspect -f '{{.Id}}' lancet-demo-b)
t0=$(date +%s%N)
until get "http://$api_b/v1/enforcement" 2>/dev/null | grep -q "$b_id"; do sleep 0.1; done
note "node b guards its container $((($(date +%s%N) - t0) / 1000000)) ms after the wait began"

say "On node b: a dropped binary, and what only node a learned"
if podman exec lancet-demo-b sh -c 'cp /bin/busybox /tmp/ls && /tmp/ls /' 2>&1; then
  echo "fleet-demo: the dropped binary ran on node b" >&2; exit 1
fi
podman exec lancet-demo-b cat /www/index.html
sleep 1
say "The hub: nodes, and node b's alerts"
get "http://$hub/v1/nodes" "$dir/hub.token" | python3 -c 'import json,sys
for n in json.load(sys.stdin):
    held = sum(g["holds"] for g in n["guarantees"] or [])
    print("node %s (cluster %s): last heartbeat %.1f s ago, %d guarantees hold" % (n["name"], n["cluster"], n["ageSeconds"], held))'
get "http://$hub/v1/alerts?node=b&limit=3" "$dir/hub.token" | python3 -c 'import json,sys; [print(a["node"], a["priority"], a["output"]) for a in json.load(sys.stdin)]'

if [ "$no_wait" = 1 ]; then exit 0; fi
say "Running until Ctrl-C"
while sleep 3600; do :; done
