#!/usr/bin/env bash
# Build the e2e control-plane binaries from the Go module proxy into a cache outside the checkout.
#
#   e2e/cluster/build.sh [--print-bin-dir] [TARGET...]
#
# TARGETs (default: all, in this order): etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kwok helm minio
# Binaries land in ${REALM_E2E_CACHE:-$HOME/.cache/realm-e2e}/<key>/bin/, key = hash(versions.env + go version).
# A binary already present is skipped, so re-running is cheap. Each binary is built in a wrapper module of its own
# under <key>/src/<target>/ (GOWORK=off, CGO_ENABLED=0, -trimpath, -p ${REALM_E2E_BUILD_JOBS:-2}).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
versions_file="$here/versions.env"
# shellcheck source=versions.env
source "$versions_file"

export GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
jobs="${REALM_E2E_BUILD_JOBS:-2}"

go_version="$(go version)"
key="$( { cat "$versions_file"; echo "$go_version"; } | sha256sum | cut -c1-16)"
cache_root="${REALM_E2E_CACHE:-$HOME/.cache/realm-e2e}"
key_dir="$cache_root/$key"
bin_dir="$key_dir/bin"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
    echo "$bin_dir"
    exit 0
fi

all_targets=(etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kwok helm minio)
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${all_targets[@]}")
fi

mkdir -p "$bin_dir" "$key_dir/src"
cp "$versions_file" "$key_dir/versions.env"
echo "$go_version" >"$key_dir/go-version.txt"

# One build per key at a time.
exec 9>"$key_dir/.lock"
flock 9

log() { echo "[build.sh $(date +%H:%M:%S)] $*" >&2; }

# new_wrapper TARGET: an empty wrapper module at $key_dir/src/TARGET, printed on stdout.
new_wrapper() {
    local dir="$key_dir/src/$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$dir" && go mod init "realm-e2e/build/$1" >/dev/null 2>&1)
    echo "$dir"
}

# pin_kubernetes_staging DIR: replace each k8s.io staging module k8s.io/kubernetes points at ./staging/... with
# its published v0.MINOR.PATCH (replace directives of a dependency are ignored, and it requires them at v0.0.0).
pin_kubernetes_staging() {
    local dir="$1" gomod staging_version name
    staging_version="v0.${KUBERNETES_VERSION#v1.}"
    gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')" || return 1
    local -a edits=()
    while read -r name; do
        edits+=("-replace=$name=$name@$staging_version")
    done < <(sed -nE 's#^[[:space:]]*(replace[[:space:]]+)?(k8s\.io/[A-Za-z0-9._-]+)[[:space:]]+=>[[:space:]]+\./staging/.*#\2#p' "$gomod")
    if [[ ${#edits[@]} -eq 0 ]]; then
        echo "no staging replaces found in $gomod" >&2
        return 1
    fi
    log "pinning ${#edits[@]} staging modules to $staging_version"
    (cd "$dir" && go mod edit "${edits[@]}") || return 1
}

kube_ldflags() {
    local minor="${KUBERNETES_VERSION#v1.}"
    minor="${minor%%.*}"
    local flags="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}

# build_in_wrapper TARGET PACKAGE VERSION [LDFLAGS] [setup function]
# (Called from an `if`, where `set -e` does not apply: every step checks its status itself.)
build_in_wrapper() {
    local target="$1" pkg="$2" version="$3" ldflags="${4:-}" setup="${5:-}" dir
    dir="$(new_wrapper "$target")" || return 1
    if [[ -n "$setup" ]]; then
        "$setup" "$dir" || return 1
    fi
    (cd "$dir" && go get "$pkg@$version") || return 1
    (cd "$dir" && go build -p "$jobs" -trimpath -ldflags "${ldflags:--s -w}" -o "$bin_dir/.$target.tmp" "$pkg") ||
        return 1
    mv -f "$bin_dir/.$target.tmp" "$bin_dir/$target"
}

# kwok does nothing without Stage objects: collect the module's default node and pod stages (what kwokctl uses:
# node-initialize, node-heartbeat, pod create/ready/complete/delete) into bin/kwok-stages.yaml.
kwok_stages() {
    local dir out="$bin_dir/kwok-stages.yaml" f
    dir="$(cd "$key_dir/src/kwok" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')" || return 1
    : >"$out.tmp"
    for f in "$dir"/kustomize/stage/node/fast/node-initialize.yaml "$dir"/kustomize/stage/node/heartbeat/node-heartbeat.yaml \
        "$dir"/kustomize/stage/pod/general/pod-*.yaml; do
        { echo "---"; cat "$f"; } >>"$out.tmp" || return 1
    done
    mv -f "$out.tmp" "$out"
}

build_target() {
    case "$1" in
        etcd) build_in_wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
            "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" ;;
        kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
            build_in_wrapper "$1" "k8s.io/kubernetes/cmd/$1" "$KUBERNETES_VERSION" "$(kube_ldflags)" \
                pin_kubernetes_staging ;;
        kwok) build_in_wrapper kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" \
            "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" && kwok_stages ;;
        helm) build_in_wrapper helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
            "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
        # The S3 server of the storage tests (tests/s3server.py), not part of the control plane.
        minio) build_in_wrapper minio github.com/minio/minio "$MINIO_VERSION" ;;
        *) echo "unknown target: $1 (known: ${all_targets[*]})" >&2; return 2 ;;
    esac
}

# Rough build times on 2 cores (seconds), printed so a first build says how long it will take. The
# first Kubernetes binary compiles the dependencies the others share, hence kube-apiserver's share.
estimate() {
    case "$1" in
        etcd) echo 150 ;; kube-apiserver) echo 420 ;; kubectl) echo 30 ;; kube-controller-manager) echo 80 ;;
        kube-scheduler) echo 20 ;; kwok) echo 60 ;; helm) echo 60 ;; minio) echo 180 ;; *) echo 60 ;;
    esac
}

main() {
    local failed=() todo=() target start secs total=0
    for target in "${targets[@]}"; do
        if ! [[ -x "$bin_dir/$target" && ("$target" != kwok || -s "$bin_dir/kwok-stages.yaml") ]]; then
            todo+=("$target")
            total=$((total + $(estimate "$target")))
        fi
    done
    if [[ ${#todo[@]} -gt 0 ]]; then
        log "building ${todo[*]} from the Go module proxy: about $(((total + 59) / 60)) min on 2 cores" \
            "(-p $jobs), once; cached in $bin_dir (key: versions.env + go version)"
    fi
    for target in "${targets[@]}"; do
        if [[ -x "$bin_dir/$target" && ("$target" != kwok || -s "$bin_dir/kwok-stages.yaml") ]]; then
            log "$target: present, skipping ($bin_dir/$target)"
            continue
        fi
        log "$target: building (about $(estimate "$target") s)"
        start=$SECONDS
        if build_target "$target"; then
            secs=$((SECONDS - start))
            log "$target: built in ${secs}s"
            echo "$(date -u +%FT%TZ) $target ${secs}s jobs=$jobs nproc=$(nproc)" >>"$key_dir/build-times.txt"
        else
            log "$target: FAILED after $((SECONDS - start))s"
            failed+=("$target")
        fi
    done

    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "failed: ${failed[*]} (the go lines above say why; a module download needs the Go module proxy)" >&2
        echo "retry: e2e/cluster/build.sh ${failed[*]}   (binaries already built are kept)" >&2
        return 1
    fi
    echo "$bin_dir"
}

# Everything above is parsed before anything runs, so editing this file during a build is harmless.
main
exit $?
