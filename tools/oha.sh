#!/usr/bin/env bash
# Installs oha (crates.io: an HTTP load generator with open-loop rate limiting, latency
# correction and JSON output) for `cargo xtask bench data`, and prints the path of the
# binary. Built once with `cargo install --locked` (a few minutes) into a cache outside
# the workspace, so it does not share the workspace's target directory or lock.
set -euo pipefail
ROOT=${MESH_OHA_ROOT:-/var/cache/mesh-tools/oha}
VERSION=${MESH_OHA_VERSION:-1.16.0}
bin="$ROOT/bin/oha"
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$VERSION"; then
  CARGO_TARGET_DIR="$ROOT/target" cargo install --locked --quiet --root "$ROOT" --version "$VERSION" oha >&2
  rm -rf "$ROOT/target"
fi
[ -x "$bin" ] || { echo "oha not found in $ROOT" >&2; exit 1; }
echo "$bin"
