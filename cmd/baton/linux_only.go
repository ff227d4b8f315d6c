//go:build !linux

package main

import (
	"fmt"
	"os"
	"runtime"
)

// baton is Linux-only (pidfds, SO_REUSEPORT groups steered by classic BPF
// or eBPF, PR_SET_CHILD_SUBREAPER, /proc): elsewhere this command only says so.
func main() {
	fmt.Fprintf(os.Stderr, "baton: Linux only (this is %s)\n", runtime.GOOS)
	os.Exit(1)
}
