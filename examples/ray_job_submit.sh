#!/usr/bin/env bash
# Submits `jaxcloak migrate` to a running Ray cluster (see BUILD.md, "Archive scale", for
# starting one by hand; cluster/README.md for `ray up`, which starts one and runs the job
# with `ray submit`). Run from the repository root:
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
# Weights: each node's actors fetch and verify the ones it lacks into its default
# weights folder (or run `jaxcloak weights fetch all` on each node first). Set
# WEIGHTS only to a folder at the same path on every node (shared disk, baked image).
WEIGHTS_FLAG=()
if [[ -n "${WEIGHTS:-}" ]]; then WEIGHTS_FLAG=(--weights-dir "$WEIGHTS"); fi
ray job submit \
  --address "$RAY_ADDRESS" \
  --working-dir . \
  --runtime-env-json '{
    "excludes": [".venv*", ".git", "weights", "out", "reports", "*.egg-info", "__pycache__"],
    "env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  }' \
  -- python examples/ray_migrate.py "$SRC" "$DST" \
     "${WEIGHTS_FLAG[@]}" --compile-cache /tmp/jaxcloak-xla-cache "$@"
