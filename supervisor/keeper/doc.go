// Package keeper is the one process `baton run` stays for the service's
// whole life. Masters come and go at every upgrade (tableflip re-executes
// them); the keeper starts the first one, adopts every later one as a
// child subreaper, forwards the user's signals to the master of record,
// relays the masters' sd_notify messages to the service manager as its
// own, owns the pid file and the service's cgroup subtree, and exits with
// the last master's status. It holds no sockets and no workers: nothing
// of the data path goes through it. Its protocol with the masters is
// package supervisor/internal/link.
//
// Linux only: every file but this one builds only on Linux (pidfds,
// PR_SET_CHILD_SUBREAPER).
//
//	keeper.go     Run, the loop and its state (the masters, the master of
//	              record, the stop), signals, the masters' notes, the
//	              exit status
//	handshake.go  the answer to a master's announcement
//	sys.go        the OS seam every decision acts through (start, watch,
//	              signal, reap, notify the manager, answer, end the
//	              service); osSys the real one, a fake in the in-process
//	              tests (fake_test.go, keeper_test.go)
//	tree.go       the service's cgroup subtree; what is left at the end
//	oom.go        the keeper's lower OOM score, and its reserve of fds
//
// One goroutine, the loop in Run, owns the keeper's state; the masters'
// watchers, the notify socket's reader and the terminal's watch only post
// to it. A master is known by the object the keeper made for it, and
// signalled through a pidfd, never by a pid that may be reused.
package keeper
