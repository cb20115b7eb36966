#!/usr/bin/env bash
# Build the binaries of the real-pod tier's node from Go modules: the control plane with kube-scheduler,
# kubelet and kube-proxy (tests/controlplane/build.sh node, pinned by its go.mod), and CoreDNS (pinned
# by e2e/node/coredns/go.mod). CoreDNS goes to ${OPTISERVE_NODE_HOME:-$HOME/.cache/optiserve/node}/bin.
# Idempotent: a marker records the inputs; FORCE=1 rebuilds anyway.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/../../tests/controlplane/build.sh" node

if command -v go >/dev/null 2>&1; then go=go; else go=/usr/local/go/bin/go; fi
home="${OPTISERVE_NODE_HOME:-$HOME/.cache/optiserve/node}"
bin="$home/bin"
mkdir -p "$bin"
cd "$here/tools"
export GOFLAGS=-trimpath GOTOOLCHAIN=local CGO_ENABLED=0
inputs="go=$("$go" env GOVERSION) inputs=$(cat go.mod go.sum tools.go "$here/build.sh" | sha256sum | cut -c1-16)"

build_tool() {
    local name="$1" pkg="$2" stamp t0
    stamp="$name=$("$go" list -m -f '{{.Version}}' "${3:-$pkg}") $inputs"
    if [[ "${FORCE:-0}" != 1 && -x "$bin/$name" && "$(cat "$bin/.$name-stamp" 2>/dev/null)" == "$stamp" ]]; then
        echo "node/build.sh: $name up to date ($stamp)"
        return
    fi
    t0=$(date +%s)
    "$go" build -ldflags="-s -w" ${TAGS:+-tags "$TAGS"} -o "$bin/$name.partial" "$pkg"
    mv -f "$bin/$name.partial" "$bin/$name"
    echo "$stamp" >"$bin/.$name-stamp"
    echo "node/build.sh: $name built in $(( $(date +%s) - t0 )) s"
}

build_tool coredns github.com/coredns/coredns
build_tool local-path-provisioner github.com/rancher/local-path-provisioner
# Prometheus has a module of its own (its dependencies would move CoreDNS's); Debian's package lacks
# Kubernetes service discovery.
cd "$here/prometheus"
inputs="go=$("$go" env GOVERSION) inputs=$(cat go.mod go.sum tools.go "$here/build.sh" | sha256sum | cut -c1-16)"
# Only the service discoveries the suite uses (kubernetes; file and http are always in): the cloud
# ones bring the AWS, Azure and Google SDKs, most of its cold build time.
TAGS=remove_all_sd,enable_kubernetes_sd build_tool prometheus github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus
# Traefik, the Gateway API data plane (its Kubernetes Gateway provider), in a module of its own too.
cd "$here/traefik"
inputs="go=$("$go" env GOVERSION) inputs=$(cat go.mod go.sum tools.go "$here/build.sh" | sha256sum | cut -c1-16)"
build_tool traefik github.com/traefik/traefik/v3/cmd/traefik github.com/traefik/traefik/v3
