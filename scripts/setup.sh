#!/usr/bin/env bash
# Prepares a fresh Debian 12 host (as root) for building and testing lancet:
# Debian packages, podman configuration, bpffs, and the locally built test
# image. Safe to run again: it only changes what is missing, and says what.
set -euo pipefail
cd "$(dirname "$0")/.."

# iptables: netavark executes it for every container network, and podman's
# --no-install-recommends install does not pull it in (a fresh host failed
# every networked container with "netavark: No such file or directory").
need=(clang llvm libelf-dev zlib1g-dev pkg-config make gcc libc6-dev
      podman runc busybox-static netavark aardvark-dns iptables iproute2 bpftool ca-certificates)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Podman on this kind of host: runc (crun refuses hybrid cgroups), cgroupfs
# (no systemd), and ulimits within what the VM grants without CAP_SYS_RESOURCE.
conf=/etc/containers/containers.conf
if ! grep -qs '^# lancet' "$conf"; then
  echo "setup: writing $conf (runtime runc, cgroupfs, bounded ulimits)" >&2
  mkdir -p /etc/containers
  [ -f "$conf" ] && cp "$conf" "$conf.before-lancet"
  cat > "$conf" <<'CONF'
# lancet test hosts: see shared/DESIGN.md "Facts about these machines"
[containers]
default_ulimits = ["nofile=1024:1024","nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi

if ! mountpoint -q /sys/fs/bpf; then
  echo "setup: mounting bpffs on /sys/fs/bpf" >&2
  mount -t bpf bpf /sys/fs/bpf
fi

# The test image: a busybox-static rootfs, imported, never pulled. It also
# carries the host's dynamic loader, libc and one dynamic program (for the
# loader-trick drift test) and a static memfd launcher (for the memfd one).
# The version label makes an older image be rebuilt.
image=localhost/lancet-busybox:test
version=2
if [ "$(podman image inspect -f '{{index .Labels "lancet.test.version"}}' "$image" 2>/dev/null)" != "$version" ]; then
  echo "setup: building $image from /bin/busybox" >&2
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,www,root,var/log,lib64,lib/x86_64-linux-gnu,usr/bin,usr/local/bin}
  cp /bin/busybox "$root/bin/busybox"
  for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nwww:x:33:\n' > "$root/etc/group"
  printf 'root:*:19000:0:99999:7:::\nwww:*:19000:0:99999:7:::\n' > "$root/etc/shadow"
  chmod 600 "$root/etc/shadow"
  echo '<h1>lancet</h1>' > "$root/www/index.html"
  chmod 1777 "$root/tmp"
  cp /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
  cp /lib/x86_64-linux-gnu/libc.so.6 "$root/lib/x86_64-linux-gnu/"
  cp /usr/bin/true "$root/usr/bin/true-dyn"
  gcc -O2 -static -o "$root/usr/local/bin/memfd-exec" crates/lancet/tests/fixtures/memfd_exec.c
  tar -C "$root" -c . | podman import --change 'CMD ["/bin/sh"]' --change "LABEL lancet.test.version=$version" - "$image" >/dev/null
fi
echo "setup: ready" >&2
