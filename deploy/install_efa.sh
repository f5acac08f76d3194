#!/usr/bin/env bash
# EFA's user-space libraries (libfabric) and the aws-ofi-nccl plugin, inside a worker's container on
# an EFA instance (p4d): NCCL then talks EFA instead of TCP between nodes. The kernel driver is the
# host AMI's. Idempotent; run by cluster.yaml's gpu_8x worker_setup_commands. Not run on the machines
# this project was built on (no AWS there): see docs/cluster.md.
set -euo pipefail
if [ -e /opt/amazon/efa/lib/libfabric.so ] && [ -d /opt/amazon/ofi-nccl/lib ]; then
  exit 0
fi
work="$(mktemp -d)"
cd "$work"
curl -fsSL --retry 5 -o efa.tar.gz https://efa-installer.amazonaws.com/aws-efa-installer-latest.tar.gz
tar -xf efa.tar.gz
cd aws-efa-installer
sudo ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify
rm -rf "$work"
