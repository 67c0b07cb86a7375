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
# The disk is shared and not sized for us: say what is free before and after
# (a CI run once ended in 'no space left on device' while building an image).
disk() { df -h --output=avail,target . /var/lib/containers 2>/dev/null | sed 's/^/test: disk /' >&2 || true; }
disk
cargo build --workspace --all-targets --locked
# deploy/ (manifests, chart, unit, .deb, image), checked with the binary
# just built; its failure fails the run after the tests have run too.
set +e
bash scripts/check-deploy.sh
deploy_status=$?
set -e
log=$(mktemp)
# Tests that cannot run here return early (the harness counts them as
# passed); each records itself in this file (lancet-testkit's skip).
export LANCET_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$LANCET_SKIP_LOG"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
skipped=$(wc -l < "$LANCET_SKIP_LOG")
if [ "$skipped" -gt 0 ]; then
  echo "skipped tests:" >&2
  sed 's/^/  /' "$LANCET_SKIP_LOG" >&2
fi
# CI runs as root with everything installed: a skip there hides a test.
if [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && [ "$skipped" -gt 0 ]; then
  echo "test: $skipped test(s) skipped in CI as root; every test must run here" >&2
  status=1
fi
if [ "$deploy_status" -ne 0 ]; then
  echo "test: scripts/check-deploy.sh failed" >&2
  status=1
fi
# One closing line for the whole workspace (cargo prints one per test
# binary); skipped tests are not counted as passed.
disk
awk -v s="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "lancet: %d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
exit "$status"
