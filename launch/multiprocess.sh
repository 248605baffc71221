#!/usr/bin/env bash
# A multi-host run in miniature: N processes of jaxlab.main on this machine, joined by
# JAX's distributed runtime (coordinator on 127.0.0.1, gloo collectives on CPU), each
# with DEVICES simulated CPU devices.
#
#   launch/multiprocess.sh N CONFIG [key=value ...]
#   launch/multiprocess.sh 2 configs/quickstart.py:toy train.steps=20
#   WORKDIR=runs/mp DEVICES=4 launch/multiprocess.sh 2 configs/quickstart.py
#   launch/multiprocess.sh --dry-run 2 configs/quickstart.py     # print what would run
#
# Environment: WORKDIR (default runs/multiprocess), DEVICES per process (default 4),
# PORT (coordinator port, default a free one), HEARTBEAT_TIMEOUT (seconds after which a
# dead process stops the others, default 20), PYTHON (default .venv/bin/python if present).
# Rerun the same command to resume from the last checkpoint.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [--dry-run] N CONFIG [key=value ...]" >&2
  exit 2
fi
N=$1; CONFIG=$2; shift 2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
WORKDIR="${WORKDIR:-runs/multiprocess}"

ARGS=(--processes "$N" --devices-per-process "${DEVICES:-4}" --heartbeat-timeout "${HEARTBEAT_TIMEOUT:-20}")
if [[ -n "${PORT:-}" ]]; then ARGS+=(--port "$PORT"); fi
if [[ $DRY_RUN == 1 ]]; then ARGS+=(--dry-run); fi

cd "$ROOT"
exec "$PYTHON" -m jaxlab.distributed "${ARGS[@]}" -- \
  "$PYTHON" -m jaxlab.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
