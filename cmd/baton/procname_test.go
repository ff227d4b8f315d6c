//go:build linux

package main

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestProcessNames: the keeper and every master, the first one and those
// tableflip re-executes, are named baton (comm: ps -C baton, pgrep -x
// baton, top), and their command lines tell them apart: baton run for the
// keeper, baton master for a master.
func TestProcessNames(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b := startBaton(t, nil, "-l", addr, "-w", "1", "--", bin("hello"))
	b.waitReady()
	check := func(what string, pid int, word string) {
		t.Helper()
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if err != nil {
			t.Fatalf("%s %d: %v", what, pid, err)
		}
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if strings.TrimSpace(string(comm)) != "baton" || len(argv) < 2 || argv[1] != word {
			t.Errorf("%s %d: comm %q, argv %q; want comm baton and %q after the binary", what, pid, comm, argv, word)
		}
	}
	check("keeper", b.pid, "run")
	check("first master", b.firstMaster(), "master")
	for gen := 1; gen <= 2; gen++ {
		if code, out := b.ctl(t, "reload"); code != 0 {
			t.Fatalf("reload %d: exit %d: %s", gen, code, out)
		}
		st := statusJSON(t, b)
		check("re-executed master of generation "+strconv.Itoa(st.Generation), st.MasterPID, "master")
	}
	check("keeper", b.pid, "run")
	st := statusJSON(t, b)
	pgrep, err := exec.LookPath("pgrep")
	if err != nil {
		t.Skip("pgrep not installed (Debian package procps): comm checked in /proc only")
	}
	out, err := exec.Command(pgrep, "-x", "baton").Output()
	if err != nil {
		t.Fatalf("pgrep -x baton: %v", err)
	}
	pids := strings.Fields(string(out))
	for _, pid := range []int{b.pid, st.MasterPID} {
		if !slices.Contains(pids, strconv.Itoa(pid)) {
			t.Errorf("pgrep -x baton lists %v, not %d", pids, pid)
		}
	}
}
