#!/usr/bin/env bash
# Fails when a service crate depends on another service crate. The services
# stand side by side: what several of them share lives in exchange-domain
# (pure types), exchange-store (the shared tables) or exchange-common (the
# runtime); only the `exchange` binary composes them. Tests may still start
# a sibling in-process (dev-dependencies), as a real pipeline needs it.
#
# Usage: tests/ops/crate_deps.sh   (needs cargo and jq)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
services='["exchange-gateway","exchange-order","exchange-matching","exchange-clearing","exchange-marketdata","exchange-wallet"]'
bad="$(cargo metadata --no-deps --format-version 1 --offline 2>/dev/null | jq -r --argjson s "$services" '
    .packages[] | select(.name as $n | $s | index($n)) | .name as $from
    | .dependencies[] | select(.kind == null and (.name as $d | $s | index($d)))
    | "\($from) depends on the service crate \(.name)"')"
if [ -n "$bad" ]; then
    printf '%s\n' "$bad"
    exit 1
fi
