//go:build linux

package spawn

import (
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
