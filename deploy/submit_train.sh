#!/usr/bin/env bash
# Submit a training job to the cluster whose dashboard is at $RAY_ADDRESS (default: the local
# port that `ray dashboard cluster.yaml` forwards). Extra arguments go to `alae-ray train`.
#   deploy/submit_train.sh --preset ffhq1024 --data s3://my-bucket/datasets/ffhq \
#       --storage s3://my-bucket/runs --workers 8 --gpu
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
exec ray job submit --runtime-env deploy/runtime_env.yaml --working-dir . -- alae-ray train "$@"
