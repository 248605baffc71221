#!/usr/bin/env bash
# A jaxlab run on every worker of a Cloud TPU VM slice (e.g. v4-16: 2 workers x 4 chips),
# started with one `gcloud ... ssh --worker=all`; JAX finds the other workers from the
# TPU VM metadata (JAXLAB_DISTRIBUTED=tpu).
#
#   TPU=my-v4-16 ZONE=us-central2-b launch/tpu_vm.sh CONFIG WORKDIR [key=value ...]
#   TPU=my-v4-16 ZONE=us-central2-b launch/tpu_vm.sh --dry-run configs/quickstart.py gs://bucket/runs/q
#
# Environment: TPU (the TPU VM name) and ZONE (required), PROJECT (optional gcloud
# project), REMOTE_DIR (the jaxlab checkout on every worker, default ~/jaxlab), PYTHON
# (on the workers, default .venv/bin/python). Install jaxlab with `pip install -e .
# jax[tpu]` on every worker first (same command with --worker=all). WORKDIR must be
# shared by all workers (a gs:// bucket). Rerun the same command to resume.
set -euo pipefail

# Print a command as one shell line, quoting only the words that need it (like shlex.quote).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"
  elif [[ "$1" != *[\$\`\\\!]* ]]; then printf '"%s"' "${1//\"/\\\"}"   # double quotes read best
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
print_command() { local words=() w; for w in "$@"; do words+=("$(quote "$w")"); done; echo "${words[*]}"; }

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 2 || -z "${TPU:-}" || -z "${ZONE:-}" ]]; then
  echo "usage: TPU=NAME ZONE=ZONE $0 [--dry-run] CONFIG WORKDIR [key=value ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
REMOTE_DIR="${REMOTE_DIR:-~/jaxlab}"
PYTHON="${PYTHON:-.venv/bin/python}"

# The command each worker runs, quoted once for the remote shell (~ is left to expand there).
REMOTE="cd $REMOTE_DIR && JAXLAB_DISTRIBUTED=tpu $(print_command "$PYTHON" -m jaxlab.main --config "$CONFIG" --workdir "$WORKDIR" "$@")"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then CMD+=(--project="$PROJECT"); fi
CMD+=(--command="$REMOTE")

if [[ $DRY_RUN == 1 ]]; then
  print_command "${CMD[@]}"
  exit 0
fi
exec "${CMD[@]}"
