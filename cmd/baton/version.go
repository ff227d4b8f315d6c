//go:build linux

package main

import "runtime/debug"

// version is stamped at build time by the Makefile:
//
//	go build -ldflags "-X main.version=$(git describe --tags --always --dirty)"
//
// Left empty, buildVersion falls back to what the Go toolchain recorded.
var version string

// buildVersion returns baton's version: the stamped one, else the module
// version the toolchain recorded (a tagged version for `go install
// …@vX.Y.Z`, a pseudo-version such as v0.0.0-20250101120000-abcdef123456
// for a build inside a git checkout), else "dev".
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
