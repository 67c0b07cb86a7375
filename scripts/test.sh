#!/usr/bin/env bash
# Runs every lancet test: set-up first (Debian packages, podman configuration,
# the local test image), then the whole workspace. Root tests run when this
# runs as root and skip, saying why, otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  bash scripts/setup.sh
else
  echo "test: not root: skipping set-up; root tests will skip" >&2
fi
# Two cores: keep the build and the root tests (which start containers) calm.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --workspace --all-targets --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "lancet: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
