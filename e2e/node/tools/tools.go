//go:build tools

// Package tools records the commands e2e/node/build.sh builds for the real-pod tier's cluster
// (CoreDNS, the cluster DNS; local-path-provisioner, the volumes), so that `go mod tidy` keeps every
// module they need in go.mod and go.sum.
package tools

import (
	_ "github.com/coredns/coredns"
	_ "github.com/rancher/local-path-provisioner"
)
