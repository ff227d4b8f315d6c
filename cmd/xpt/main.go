package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
	"github.com/baton-sh/baton/supervisor/sockets"
)

func main() {
	for _, a := range os.Args[1:] {
		pid, _ := strconv.Atoi(a)
		t0 := time.Now()
		kids := osutil.ChildrenOf(pid, 0)
		t1 := time.Now()
		n := len(sockets.SocketInodes(pid))
		t2 := time.Now()
		fmt.Println(pid, "children", len(kids), t1.Sub(t0), "inodes", n, t2.Sub(t1))
	}
	t0 := time.Now()
	ms, err := sockets.Members([]sockets.Spec{{Network: "tcp", Addr: "127.0.0.1:1"}})
	fmt.Println("members", len(ms), err, time.Since(t0))
}
