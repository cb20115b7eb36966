#!/usr/bin/env bash
# Build the cluster-tier control plane (etcd, kube-apiserver, kube-controller-manager) from source.
# `build.sh node` also builds what the real-pod tier's node runs besides (kube-scheduler, kubelet,
# kube-proxy: e2e/node/build.sh calls it so).
#
# Versions are pinned by tests/controlplane/go.mod (+ go.sum): k8s.io/kubernetes and the etcd
# server module that Kubernetes itself requires. Binaries go OUTSIDE the repository, into
#   ${OPTISERVE_CONTROLPLANE_HOME:-$HOME/.cache/optiserve/controlplane}/bin
# Idempotent: a marker file records what was built (go.mod, go.sum, this script, Go version);
# when it matches and every binary is there, nothing is rebuilt. FORCE=1 rebuilds anyway.
#
# Needs Go >= 1.24 (found on PATH or at /usr/local/go/bin/go) and the Go module proxy.
# Cold build on a 2-core machine: see docs/cluster-tests.md for the measured time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${OPTISERVE_CONTROLPLANE_HOME:-$HOME/.cache/optiserve/controlplane}"
bin="$home/bin"
marker="$bin/.optiserve-controlplane-stamp"

if command -v go >/dev/null 2>&1; then
    go=go
elif [[ -x /usr/local/go/bin/go ]]; then
    go=/usr/local/go/bin/go
else
    echo "build.sh: no Go toolchain found (need Go >= 1.24 on PATH or at /usr/local/go/bin/go)" >&2
    exit 1
fi

export GOFLAGS=-trimpath
export GOTOOLCHAIN=local
export CGO_ENABLED=0
# GOCACHE / GOMODCACHE: Go's default locations, unless the caller set them.

cd "$here"
k8s_version="$("$go" list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$("$go" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
go_version="$("$go" env GOVERSION)"
stamp="kubernetes=$k8s_version etcd=$etcd_version go=$go_version inputs=$(cat go.mod go.sum tools.go build.sh | sha256sum | cut -c1-16)"

binaries=(etcd kube-apiserver kube-controller-manager)
node_binaries=()
if [[ "${1:-}" == node ]]; then
    node_binaries=(kube-scheduler kubelet kube-proxy)
    stamp+=" node"
fi

up_to_date() {
    # A node build holds the plain one too.
    [[ -f "$marker" ]] && [[ "$(cat "$marker")" == "$stamp" || "$(cat "$marker")" == "$stamp node" ]] || return 1
    local b
    for b in "${binaries[@]}" "${node_binaries[@]}"; do
        [[ -x "$bin/$b" ]] || return 1
    done
}

mkdir -p "$bin"
# One build at a time (two pytest sessions, or a person and a test run).
exec 9>"$home/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

if [[ "${FORCE:-0}" != 1 ]] && up_to_date; then
    echo "build.sh: up to date in $bin ($stamp)"
    exit 0
fi

echo "build.sh: building $stamp"
echo "build.sh: into $bin (GOCACHE=$("$go" env GOCACHE), GOMODCACHE=$("$go" env GOMODCACHE))"
rm -f "$marker"
tmp="$(mktemp -d "$home/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

"$go" mod download

# What Kubernetes' own hack/lib/version.sh stamps in, so that /version tells the truth.
major="${k8s_version#v}"
major="${major%%.*}"
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build_one() {
    local name="$1" pkg="$2" ldflags="$3" t0 t1
    t0=$(date +%s)
    "$go" build "-ldflags=$ldflags" -o "$tmp/$name" "$pkg"
    t1=$(date +%s)
    echo "build.sh: $name built in $((t1 - t0)) s ($(du -h "$tmp/$name" | cut -f1))"
}

total0=$(date +%s)
build_one etcd go.etcd.io/etcd/server/v3 "-s -w"
build_one kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build_one kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
for b in "${node_binaries[@]}"; do
    build_one "$b" "k8s.io/kubernetes/cmd/$b" "$kube_ldflags"
done
total1=$(date +%s)

for b in "${binaries[@]}" "${node_binaries[@]}"; do
    mv -f "$tmp/$b" "$bin/$b"
done
echo "$stamp" >"$marker"
echo "build.sh: done in $((total1 - total0)) s"
"$bin/etcd" --version | sed -n 1p  # sed reads it all: head would close the pipe early (SIGPIPE under pipefail)
"$bin/kube-apiserver" --version
