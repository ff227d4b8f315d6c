package osutil

import (
	"os"
	"strconv"
)

// Fd is one open file descriptor of this process with what it points to
// (the /proc/self/fd link: "socket:[123]", "anon_inode:[eventpoll]", a path).
type Fd struct {
	Num  int
	Link string
}

// OwnFds lists this process's open fds. A listing that cannot be read
// yields none.
func OwnFds() []Fd {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	out := make([]Fd, 0, len(ents))
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // closed since the listing (ReadDir's own fd)
		}
		out = append(out, Fd{fd, link})
	}
	return out
}
