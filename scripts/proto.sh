#!/usr/bin/env bash
# Generate the Python gRPC code of proto/ into OUT (default: src/). Used by `make proto` and
# by the test that checks the committed code is current. PYTHON: an interpreter with grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-src}"
"${PYTHON:-.venv/bin/python}" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/themisdb/replication/v1/wal.proto
