#!/usr/bin/env bash
# Starts containerd and Docker Engine (Debian's containerd 1.6 and docker.io
# 20.10) by hand when they are not answering, and waits for their sockets:
# these hosts have no systemd as PID 1, so nothing else starts them. Safe to
# run again: a daemon that answers is left alone. scripts/setup.sh runs it,
# and so do the Docker and containerd helpers of lancet-testkit before their
# first container. Logs go to /var/log/lancet/{containerd,dockerd}.log.
#
# dockerd runs on the system containerd, as Debian's docker.service starts
# it (--containerd=/run/containerd/containerd.sock), with the configuration
# scripts/setup.sh writes to /etc/docker/daemon.json ("iptables": false,
# so podman's networks keep working; see docs/runtimes.md).
set -euo pipefail
log=/var/log/lancet
mkdir -p "$log"
# Debian's client: /usr/local/bin/docker may be another one (a Docker 28
# client without an engine sits there on these machines).
docker=/usr/bin/docker

containerd_up() { ctr --timeout 2s version >/dev/null 2>&1; }
dockerd_up() { timeout 5 "$docker" version >/dev/null 2>&1; }

# wait_for NAME CHECK LOG: up to 20 s.
wait_for() {
  local i
  for i in $(seq 200); do
    if "$2"; then return 0; fi
    sleep 0.1
  done
  echo "engines: $1 did not answer within 20 s; the end of $3:" >&2
  tail -n 20 "$3" >&2 || true
  return 1
}

for bin in containerd ctr dockerd "$docker"; do
  if ! command -v "$bin" >/dev/null; then
    echo "engines: $bin is not installed (scripts/setup.sh installs containerd and docker.io)" >&2
    exit 1
  fi
done

if ! containerd_up; then
  echo "engines: starting containerd (log: $log/containerd.log)" >&2
  setsid containerd </dev/null >>"$log/containerd.log" 2>&1 &
  wait_for containerd containerd_up "$log/containerd.log"
fi
if ! dockerd_up; then
  echo "engines: starting dockerd (log: $log/dockerd.log)" >&2
  setsid dockerd --containerd=/run/containerd/containerd.sock </dev/null >>"$log/dockerd.log" 2>&1 &
  wait_for dockerd dockerd_up "$log/dockerd.log"
fi
