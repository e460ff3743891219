#!/usr/bin/env bash
# Submits `jaxcloak migrate` to a running Ray cluster (see BUILD.md, "Archive scale", for
# starting one). Run from the repository root:
#
#   RAY_ADDRESS=http://HEAD_IP:8265 examples/ray_job_submit.sh /data/archive /data/cloaked
#
# Ray >= 2.5x enables token authentication: export the cluster's token
# (`ray get-auth-token` on the head prints it) as RAY_AUTH_TOKEN, or keep it in
# ~/.ray/auth_token, with RAY_AUTH_MODE=token, before submitting.
set -euo pipefail
SRC=${1:?usage: $0 SRC DST [migrate flags...]}
DST=${2:?usage: $0 SRC DST [migrate flags...]}
shift 2
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

# working_dir ships this checkout to every node (the package, not the weights
# or the virtualenv); the nodes need jaxcloak's dependencies installed (same
# image/venv on every node), or add "pip": ["jaxcloak[cuda]"] to the runtime env.
# WEIGHTS must exist at the same path on every node (shared disk or baked image).
WEIGHTS=${WEIGHTS:-$PWD/weights}
ray job submit \
  --address "$RAY_ADDRESS" \
  --working-dir . \
  --runtime-env-json '{
    "excludes": [".venv*", ".git", "weights", "out", "reports", "*.egg-info", "__pycache__"],
    "env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  }' \
  -- python examples/ray_migrate.py "$SRC" "$DST" \
     --weights-dir "$WEIGHTS" --compile-cache /tmp/jaxcloak-xla-cache "$@"
