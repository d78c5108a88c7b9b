#!/usr/bin/env bash
# Installs Python grpcio (a real, independent gRPC peer for tests) into its own virtualenv
# and prints the path of that venv's python.
set -euo pipefail
V=${MESH_GRPC_VENV:-/var/cache/mesh-tools/grpc-venv}
if [ ! -x "$V/bin/python" ]; then python3 -m venv "$V" >/dev/null; fi
if ! "$V/bin/python" -c "import grpc" 2>/dev/null; then "$V/bin/pip" install -q grpcio >&2; fi
echo "$V/bin/python"
