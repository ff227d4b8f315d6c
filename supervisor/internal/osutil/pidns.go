package osutil

import (
	"os"
	"strconv"
	"strings"
)

// PIDNamespace names this process's pid namespace as the kernel does
// ("pid:[4026531836]"), "" if /proc cannot say.
func PIDNamespace() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}

// PIDFromNamespace returns the pid, as this process sees it, of the
// process that is nsPID in pid namespace ns (as PIDNamespace names it),
// or 0 when none such is visible from here (ns is not this namespace nor
// one below it). It reads /proc/*/ns/pid and NSpid of every process: for
// rare paths only.
func PIDFromNamespace(ns string, nsPID int) int {
	if ns == "" || ns == PIDNamespace() {
		return nsPID
	}
	ents, _ := os.ReadDir("/proc")
	want := strconv.Itoa(nsPID)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, _ := os.Readlink("/proc/" + e.Name() + "/ns/pid"); l != ns {
			continue
		}
		// NSpid: its pid here, then in each namespace below, its own last.
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(strings.TrimPrefix(line, "NSpid:")); strings.HasPrefix(line, "NSpid:") && len(f) > 0 && f[len(f)-1] == want {
				return pid
			}
		}
	}
	return 0
}
