#!/usr/bin/env bash
# Submit a Tune sweep to the cluster at $RAY_ADDRESS. Extra arguments go to `alae-ray tune`.
#   deploy/submit_tune.sh --sweep tuning/ffhq256_level.yaml --storage s3://my-bucket/tune
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
exec ray job submit --runtime-env deploy/runtime_env.yaml --working-dir . -- alae-ray tune "$@"
