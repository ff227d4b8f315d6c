//go:build linux

package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The release is pinned per generation: after current moved (no reload
// yet), a worker replaced after a crash and a worker added with TTIN run
// the generation's release, for --chdir current and for a command named
// through the symlink; status shows the release; a reload follows the link.
func TestGenerationRunsOneRelease(t *testing.T) {
	t.Parallel()
	for _, viaChdir := range []bool{true, false} {
		t.Run("chdir="+strconv.FormatBool(viaChdir), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			release(t, dir, "v1", "HELLO_TAG=v1 exec "+bin("hello"))
			release(t, dir, "v2", "HELLO_TAG=v2 exec "+bin("hello"))
			pointCurrent(t, dir, "v1")
			addr := freeAddr(t)
			args := []string{"-l", addr, "--", filepath.Join(dir, "current", "server")}
			if viaChdir {
				args = []string{"-l", addr, "--chdir", filepath.Join(dir, "current"), "--", "./server"}
			}
			b := startBaton(t, nil, args...)
			b.waitReady()
			pointCurrent(t, dir, "v2")

			// Worker 0 crashes and is replaced.
			from := b.log.len()
			syscall.Kill(b.workerPids(1)[0], syscall.SIGKILL)
			b.log.waitFrom(t, from, "worker_ready", func(e logEvent) bool { return e.num("worker") == 0 }, 20*time.Second)
			if tag := field(mustGet(t, addr, "/"), "tag"); tag != "v1" {
				t.Fatalf("replacement after a crash serves %s, want v1 (the generation's release)", tag)
			}
			// TTIN adds worker 1.
			from = b.log.len()
			b.signal(syscall.SIGTTIN)
			b.log.waitFrom(t, from, "worker_ready", func(e logEvent) bool { return e.num("worker") == 1 }, 20*time.Second)
			seen := false
			for i := 0; i < 200 && !seen; i++ {
				body := mustGet(t, addr, "/")
				if field(body, "worker") == "1" {
					seen = true
					if tag := field(body, "tag"); tag != "v1" {
						t.Fatalf("TTIN worker serves %s, want v1", tag)
					}
				}
			}
			if !seen {
				t.Fatal("worker 1 answered none of 200 requests")
			}
			v1 := resolvedPath(t, filepath.Join(dir, "releases", "v1"))
			if code, out := b.ctl(t, "status"); code != 0 || !strings.Contains(out, v1) {
				t.Fatalf("status does not show the release %s: exit %d\n%s", v1, code, out)
			}
			if code, out := b.ctl(t, "reload"); code != 0 {
				t.Fatalf("reload: exit %d\n%s", code, out)
			}
			if tag := field(mustGet(t, addr, "/"), "tag"); tag != "v2" {
				t.Fatalf("after reload served %s, want v2", tag)
			}
		})
	}
}
