//go:build tools

// Package tools records the Prometheus that e2e/node/build.sh builds for the real-pod tier: Debian's
// package is built without Kubernetes service discovery, which in-cluster scraping needs.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
