#!/usr/bin/env bash
# prod-preflight.sh on what an overlay's pods will get: the base's and the
# overlay's config.env, the overlay's secrets/secrets.env and
# secrets/redis.env, APP_VERSION = the image tag of its version component,
# and the consumer names the pods take from their names. Run it before every
# `kubectl apply` (docs/RUNBOOK.md, "Kubernetes").
#
# Usage: deploy/k8s/preflight.sh [OVERLAY_DIR]   (default deploy/k8s/overlays/production)
# Exit status: prod-preflight.sh's (0 ok, 1 problems listed, 66 a file missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
overlay="${1:-$root/deploy/k8s/overlays/production}"
base="$root/deploy/k8s/base"
for f in "$base/config.env" "$overlay/config.env" "$overlay/secrets/secrets.env" "$overlay/secrets/redis.env" \
    "$overlay/version/kustomization.yaml"; do
    if [ ! -r "$f" ]; then
        echo "k8s preflight: cannot read $f (secrets: copy the .example beside it and fill it in)" >&2
        exit 66
    fi
done
version="$(sed -n 's/^ *newTag: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$overlay/version/kustomization.yaml" | tail -n 1)"
redis_gateway="$(sed -n 's/^REDIS_URL_GATEWAY=//p' "$overlay/secrets/redis.env" | tail -n 1)"

env_file="$(mktemp "${TMPDIR:-/tmp}/k8s-preflight.XXXXXX")"
trap 'rm -f "$env_file"' EXIT
# Secret values are literal in Kubernetes (no $ expansion): single-quoted
# here, so preflight reads them as written.
quote_values() {
    sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' -e "/^[A-Za-z_][A-Za-z0-9_]*='/!s/^\([A-Za-z_][A-Za-z0-9_]*\)=\(.*\)$/\1='\2'/" "$1"
}
{
    cat "$base/config.env" "$overlay/config.env"
    quote_values "$overlay/secrets/secrets.env"
    quote_values "$overlay/secrets/redis.env"
    echo "APP_VERSION=$version"
    # Each pod's REDIS_URL is its own REDIS_URL_<SERVICE> (all checked above).
    echo "REDIS_URL='$redis_gateway'"
    # What the workloads set from metadata.name (StatefulSet pods: name-0, -1, ...).
    echo "GATEWAY_CONSUMER_NAME=gateway-pod"
    echo "MATCHING_CONSUMER_NAME=matching-0"
    echo "CLEARING_CONSUMER_NAME=clearing-0"
    echo "MARKETDATA_CONSUMER_NAME=marketdata-0"
    echo "MARKETDATA_CONSUMER_GROUP=marketdata-0"
} >"$env_file"
echo "k8s preflight: $overlay (image tag $version)"
bash "$root/exchange-common/scripts/prod-preflight.sh" "$env_file"
