//go:build linux

package spawn

import (
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A generation's starts run at once from up to MaxThreads threads
// made beforehand (Grow), and a worker lives while its spawner does,
// whichever thread forked it and whatever became of the goroutine that
// asked: PR_SET_PDEATHSIG follows the forking thread, which must never end
// under a live master.
func TestSpawnerConcurrentStartsKeepPdeathsig(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1) here: " + err.Error())
	}
	// Four threads even on a machine with fewer than 8 CPUs: the path of
	// starts at once is the one under test.
	defer func(n int) { MaxThreads = n }(MaxThreads)
	MaxThreads = 4
	sp := New(UnblockCaught)
	defer sp.Stop()
	const n = 8
	sp.Grow(n)
	threads := sp.Threads()
	if threads != MaxThreads {
		t.Fatalf("%d spawning threads after grow(%d), want %d", threads, n, MaxThreads)
	}
	cmds := make([]*exec.Cmd, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		cmds[i] = &exec.Cmd{Path: sleep, Args: []string{"sleep", "60"},
			SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}}
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = sp.Start(cmds[i]) }()
	}
	wg.Wait()
	exited := make(chan int, n)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		c := cmds[i]
		t.Cleanup(func() { c.Process.Kill() }) // by pid: ours
		go func() { c.Wait(); exited <- c.Process.Pid }()
	}
	threads = sp.Threads()
	if threads != MaxThreads {
		t.Fatalf("%d spawning threads after %d starts, want %d", threads, n, MaxThreads)
	}
	// Threads the runtime may retire: goroutines that end locked take
	// theirs with them. The spawner's must not be among them.
	for range 8 {
		done := make(chan struct{})
		go func() { runtime.LockOSThread(); close(done) }()
		<-done
	}
	runtime.GC()
	select {
	case pid := <-exited:
		t.Fatalf("worker %d exited while its spawner lives", pid)
	case <-time.After(300 * time.Millisecond):
	}
}

// StartAll returns each command's own result in order, whichever thread's
// run it was in, and when each start returned: a run's starts go back to
// back on one thread, and a start that fails fails alone.
func TestStartAllResultsInOrder(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1) here: " + err.Error())
	}
	for _, threads := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d threads", threads), func(t *testing.T) {
			defer func(n int) { MaxThreads = n }(MaxThreads)
			MaxThreads = threads
			sp := New(UnblockCaught)
			defer sp.Stop()
			const n, bad = 5, 3
			cmds := make([]*exec.Cmd, n)
			for i := range cmds {
				path := sleep
				if i == bad {
					path = "/nonexistent/baton-test-server"
				}
				cmds[i] = &exec.Cmd{Path: path, Args: []string{"sleep", "60"},
					SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}}
			}
			before := time.Now()
			errs, at := sp.StartAll(cmds)
			after := time.Now()
			for i, c := range cmds {
				if i == bad {
					if errs[i] == nil || c.Process != nil {
						t.Fatalf("start %d of a missing binary: err %v, process %v", i, errs[i], c.Process)
					}
					continue
				}
				if errs[i] != nil {
					t.Fatalf("start %d: %v", i, errs[i])
				}
				t.Cleanup(func() { c.Process.Kill(); c.Wait() }) // by pid: ours
				if at[i].Before(before) || at[i].After(after) {
					t.Fatalf("start %d returned at %v, outside the call (%v .. %v)", i, at[i], before, after)
				}
			}
			if got := sp.Threads(); got != threads {
				t.Fatalf("%d spawning threads after StartAll of %d with MaxThreads %d", got, n, threads)
			}
		})
	}
}
