#!/usr/bin/env bash
# The main job on a fresh Debian 12 host, as root: set up, build lancet, start
# a small demo set of containers (a web server and a client that fetches from
# it, reads a secret and writes files), and trace them live until Ctrl-C.
# The demo containers are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p lancet --locked
lancet=target/release/lancet

"$lancet" doctor || { echo "demo: lancet doctor says monitoring cannot run here" >&2; exit 1; }

net=lancet-demo-net
cleanup() {
  podman rm -f -t 0 lancet-demo-web lancet-demo-client >/dev/null 2>&1 || true
  podman network rm -f "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
podman network create "$net" >/dev/null
podman run -d --name lancet-demo-web --network "$net" --label app=web \
  localhost/lancet-busybox:test httpd -f -p 8080 -h /www >/dev/null
podman run -d --name lancet-demo-client --network "$net" localhost/lancet-busybox:test sh -c '
  while true; do
    wget -q -O /dev/null http://lancet-demo-web:8080/index.html
    cat /etc/shadow > /dev/null
    echo "$(date)" > /tmp/last-run; chmod +x /tmp/last-run
    sleep 3
  done' >/dev/null

echo "demo: tracing the demo containers; press Ctrl-C to stop" >&2
"$lancet" trace -c lancet-demo-web -c lancet-demo-client "$@"
