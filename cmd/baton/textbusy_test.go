//go:build linux

package main

import (
	"bufio"
	"os"
	"os/exec"
	"testing"
	"time"
)

// A package manager renamed a new baton binary into place while a process
// it forked still held the file open for writing: the new master's exec
// fails with ETXTBSY. The master retries (upgrade_exec_busy) and the
// upgrade goes through once the descriptor is gone; without the retry the
// reload failed ("text file busy").
func TestUpgradeRetriesBusyBinary(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	b, self := startCopiedBaton(t, "-l", addr, "-w", "1", "--", bin("hello"))
	data, err := os.ReadFile(bin("baton"))
	if err != nil {
		t.Fatal(err)
	}
	b.waitReady()

	// The new binary, held open for writing by another process (the
	// package manager's child) until the test closes that one's stdin.
	next := self + ".new"
	if err := writeExecutable(next, data); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("/bin/sh", "-c", `exec 3>>"$1" && echo held && { read x; exit 0; }`, "sh", next)
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		holder.Process.Kill()
		holder.Wait()
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "held\n" {
		t.Fatalf("holder %d: %q, %v", holder.Process.Pid, line, err)
	}
	if err := os.Rename(next, self); err != nil { // as package managers do
		t.Fatal(err)
	}

	from := b.log.len()
	res := reloadAsync(b)
	ev, _ := b.log.waitFrom(t, from, "upgrade_exec_busy", nil, 30*time.Second)
	if ev.num("attempt") != 1 || ev.str("binary") != self {
		t.Errorf("first retry: %v; want attempt 1 of binary %s", ev, self)
	}
	stdin.Close() // the holder exits, and its descriptor goes with it
	if err := holder.Wait(); err != nil {
		t.Fatalf("holder: %v", err)
	}
	r := <-res
	if code := r[1].(int); code != 0 {
		t.Fatalf("reload exit %d, want 0 (handed over after the retry):\n%s", code, r[0])
	}
	if body := mustGet(t, addr, "/"); field(body, "generation") != "2" {
		t.Fatalf("served %q, want generation 2", body)
	}
}
