//go:build tools

// Package tools pins what the e2e tier builds and runs for Gateway API: the conformance suite and its echo-basic
// backend (a package of the conformance module, built into the echo-basic image by deploy/image/build.py), so
// `go mod tidy` keeps their dependencies in go.mod/go.sum.
package tools

import (
	_ "sigs.k8s.io/gateway-api/apis/v1"
	_ "sigs.k8s.io/gateway-api/conformance"
	_ "sigs.k8s.io/gateway-api/conformance/echo-basic"
)
