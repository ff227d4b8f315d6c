//go:build linux

package sockets

import (
	"net"
	"os"
	"strings"
	"testing"
)

// TestForeign: baton's own socket is not reported; a stray that joined the
// group is, with this process as its holder; a listener on another port is
// not; one on a more specific address of the same port is.
func TestForeign(t *testing.T) {
	spec := freeSpec(t)
	own, err := OpenGroup([]Spec{spec}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	mine := map[uint64]bool{}
	for _, ino := range own.Inodes() {
		mine[ino] = true
	}
	if f, err := Foreign([]Spec{spec}, mine); err != nil || len(f) != 0 {
		t.Fatalf("alone in the group: foreign %v, %v", f, err)
	}
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	stray := strayListener(t, spec.Addr)
	f, err := Foreign([]Spec{spec}, mine)
	if err != nil {
		t.Fatal(err)
	}
	if len(f) != 1 {
		t.Fatalf("foreign %v, want the stray only", f)
	}
	strayIno := (&Set{files: []*os.File{stray}}).Inodes()[0]
	if f[0].Inode != strayIno || f[0].PID != os.Getpid() || f[0].Addr.String() != spec.Addr {
		t.Fatalf("foreign %+v, want inode %d, pid %d, %s", f[0], strayIno, os.Getpid(), spec.Addr)
	}
	if s := f[0].String(); !strings.Contains(s, "pid ") || !strings.Contains(s, spec.Addr) {
		t.Fatalf("description %q names no pid or address", s)
	}
	// A wildcard address overlaps a specific one of the same port.
	wild := Spec{Name: "w", Network: "tcp", Addr: ":" + strings.Split(spec.Addr, ":")[1]}
	ms, err := Members([]Spec{wild})
	if err != nil || len(ms) != 2 {
		t.Fatalf("members of %s: %v, %v; want 2", wild.Addr, ms, err)
	}
}

// BenchmarkMembershipCheck is the cost of one check as the master runs it
// (two sock_diag dumps of listening sockets, no foreign socket found).
func BenchmarkMembershipCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	spec := Spec{Name: "web", Network: "tcp", Addr: ln.Addr().String()}
	f, _ := ln.(*net.TCPListener).File()
	defer f.Close()
	own := map[uint64]bool{}
	for _, ino := range (&Set{files: []*os.File{f}}).Inodes() {
		own[ino] = true
	}
	for b.Loop() {
		if fs, err := Foreign([]Spec{spec}, own); err != nil || len(fs) != 0 {
			b.Fatal(fs, err)
		}
	}
}
