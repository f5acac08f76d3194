#!/usr/bin/env bash
# Token authentication for `ray job submit` (on by default in Ray 2.60): prints the path of a file
# holding the cluster head's token, fetched once with `ray exec` and kept 0600 under ~/.ray.
#   export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$(deploy/cluster_token.sh cluster.yaml)"
# The submit scripts do this themselves when RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH are not set.
set -euo pipefail
config="${1:-cluster.yaml}"
name="$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["cluster_name"])' "$config")"
path="$HOME/.ray/alae-ray-$name.token"
if [ ! -s "$path" ]; then
  mkdir -p "$HOME/.ray"
  umask 077
  ray exec "$config" "ray get-auth-token" 2>/dev/null | tail -n 1 | tr -d '\r\n' > "$path.tmp"
  [ -s "$path.tmp" ] || { rm -f "$path.tmp"; echo "cluster_token.sh: no token from the head of $config" >&2; exit 1; }
  mv "$path.tmp" "$path"
fi
echo "$path"
