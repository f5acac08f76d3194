#!/usr/bin/env bash
# Submit a Tune sweep to the cluster at $RAY_ADDRESS. Extra arguments go to `alae-ray tune`.
#   deploy/submit_tune.sh --sweep tuning/ffhq256_level.yaml --storage s3://my-bucket/tune
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
# Token authentication (Ray 2.60's default): the head's token, unless the caller set one or opted out
# (RAY_AUTH_MODE=disabled, as a local test cluster started that way).
if [ "${RAY_AUTH_MODE:-token}" = token ] && [ -z "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]; then
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$(deploy/cluster_token.sh "${ALAE_RAY_CLUSTER:-cluster.yaml}")"
fi
exec ray job submit --runtime-env deploy/runtime_env.yaml --working-dir . -- alae-ray tune "$@"
