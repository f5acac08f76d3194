#!/usr/bin/env bash
# Submit a training job to the cluster whose dashboard is at $RAY_ADDRESS (default: the local
# port that `ray dashboard cluster.yaml` forwards). Extra arguments go to `alae-ray train`.
#   deploy/submit_train.sh --preset ffhq1024 --data s3://my-bucket/datasets/ffhq \
#       --storage s3://my-bucket/runs --workers 8 --gpu
#   deploy/submit_train.sh --preset celebahq256 --data s3://my-bucket/datasets/celebahq \
#       --storage s3://my-bucket/runs --workers 2-8 --gpu    # elastic: spot nodes may come and go
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
# Token authentication (Ray 2.60's default): the head's token, unless the caller set one or opted out
# (RAY_AUTH_MODE=disabled, as a local test cluster started that way).
if [ "${RAY_AUTH_MODE:-token}" = token ] && [ -z "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]; then
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$(deploy/cluster_token.sh "${ALAE_RAY_CLUSTER:-cluster.yaml}")"
fi
exec ray job submit --runtime-env deploy/runtime_env.yaml --working-dir . -- alae-ray train "$@"
