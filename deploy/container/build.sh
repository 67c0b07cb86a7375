#!/usr/bin/env bash
# Builds the agent's image from a lancet binary built on this host, without
# pulling anything:
#   deploy/container/build.sh [BINARY [IMAGE]]
# BINARY defaults to target/release/lancet (cargo build --release -p lancet),
# IMAGE to localhost/lancet:<the binary's version>. The libraries come from
# this host, so the image runs the binary exactly as the host does (glibc as
# new as the build host's); nodes need no library of their own.
# Then on each node: `podman save IMAGE | ctr -n k8s.io images import -` (or
# push IMAGE to a registry the nodes use and set it in the manifests).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/lancet}
[ -x "$bin" ] || { echo "build: no lancet binary at $bin (cargo build --release -p lancet)" >&2; exit 1; }
version=$("$bin" --version | awk '{print $2}')
image=${2:-localhost/lancet:$version}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
install -D -m 755 "$bin" "$root/usr/bin/lancet"
# A debug build carries its debug info (hundreds of MB); the image needs none.
strip --strip-debug "$root/usr/bin/lancet"
# Every library under the name the loader asks for (ldd's left column
# resolved on the right), plus the loader itself at its PT_INTERP path.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ -n "$libs" ] || { echo "build: ldd found no libraries for $bin (a static binary needs none; this script expects glibc's)" >&2; exit 1; }
for lib in $libs; do
  install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
done
interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[ -e "$root$interp" ] || { echo "build: the loader $interp is not among ldd's libraries" >&2; exit 1; }
# /tmp for the agent's temporary files (an emptyDir in the DaemonSet), and
# the directories the DaemonSet mounts over.
install -d -m 1777 "$root/tmp"
install -d -m 700 "$root/var/lib/lancet" "$root/run/lancet"
install -d -m 755 "$root/host" "$root/sys/fs/bpf" "$root/sys/fs/cgroup" "$root/proc" "$root/etc"
cp "$here/Containerfile" "$ctx/Containerfile"
podman build --quiet --pull=never --build-arg "VERSION=$version" -t "$image" "$ctx" >/dev/null
echo "$image"
