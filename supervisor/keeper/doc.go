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
//	keeper.go     Run, the loop, signals, the masters' notes, exit status
//	handshake.go  the answer to a master's announcement
//	tree.go       the service's cgroup subtree; what is left at the end
//	oom.go        the keeper's lower OOM score, and its reserve of fds
package keeper
