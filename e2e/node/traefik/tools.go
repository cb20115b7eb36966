//go:build tools

// Package tools records the Gateway API data plane of the real-pod tier (Traefik, whose Kubernetes
// Gateway provider serves HTTPRoute weights), in a module of its own: its dependencies would move
// CoreDNS's and Prometheus's. e2e/node/build.sh builds it.
package tools

import (
	_ "github.com/traefik/traefik/v3/cmd/traefik"
)
