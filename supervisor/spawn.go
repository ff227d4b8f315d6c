//go:build linux

package supervisor

import (
	"os/exec"
	"runtime"
)

// spawner starts every worker from one OS thread that lives as long as the
// master. Workers get PR_SET_PDEATHSIG so they die with a SIGKILLed master,
// but Linux fires it when the *thread* that forked them exits (golang/go#27505);
// an ordinary goroutine's thread may be retired under a live master.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd   *exec.Cmd
	reply chan<- error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *spawner) loop() {
	// Never unlocked: when the loop ends the thread exits with it, which
	// SIGKILLs any worker still alive, as a dead master would.
	runtime.LockOSThread()
	spawnerMask() // signals.go: what children inherit blocked
	for {
		select {
		case r := <-s.reqs:
			r.reply <- r.cmd.Start()
		case <-s.done:
			return
		}
	}
}

func (s *spawner) start(cmd *exec.Cmd) error {
	reply := make(chan error, 1)
	s.reqs <- spawnReq{cmd, reply}
	return <-reply
}

func (s *spawner) stop() { close(s.done) }
