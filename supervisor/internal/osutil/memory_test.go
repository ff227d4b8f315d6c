//go:build linux

package osutil

import (
	"os"
	"runtime/debug"
	"strings"
	"testing"
)

const smapsSample = `00400000-009f2000 r-xp 00000000 fe:00 99 /usr/bin/baton
Rss:                5128 kB
Shared_Dirty:       5128 kB
Anonymous:             0 kB
009f2000-01094000 r--p 005f2000 fe:00 99 /usr/bin/baton
Rss:                4936 kB
Anonymous:             0 kB
01094000-010ff000 rw-p 00c94000 fe:00 99 /usr/bin/baton
Rss:                 300 kB
Anonymous:           192 kB
02000000-02001000 r--p 00000000 fe:00 99 /usr/bin/baton
Rss:                   4 kB
Anonymous:             4 kB
03000000-03001000 r--p 00000000 fe:00 99 /usr/bin/baton
Rss:                   0 kB
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 12 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 828 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 fe:00 13 /srv/new baton (deleted)
Rss:                  64 kB
Anonymous:             0 kB
`

// cleanMappings keeps only what can be dropped without losing a byte: the
// binary's read-only mappings that hold resident pages and no page the
// process wrote to; never a writable mapping, another file's, or one with
// a copied-on-write page.
func TestCleanMappings(t *testing.T) {
	got := cleanMappings(strings.NewReader(smapsSample), "/usr/bin/baton")
	want := []mapping{{0x400000, 0x9f2000, 5128 << 10}, {0x9f2000, 0x1094000, 4936 << 10}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	// A binary replaced by a deploy keeps running from its old inode.
	got = cleanMappings(strings.NewReader(smapsSample), "/srv/new baton (deleted)")
	if len(got) != 1 || got[0].start != 0x7f0000200000 {
		t.Errorf("deleted binary: got %+v", got)
	}
}

// Trim unmaps resident pages of this test binary, and the code it dropped
// still runs afterwards (it faults back in from the page cache).
func TestTrim(t *testing.T) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Skipf("no /proc/self/exe: %v", err)
	}
	before := exeRSS(t, exe)
	dropped := Trim()
	after := exeRSS(t, exe)
	if dropped <= 0 || after >= before {
		t.Fatalf("Trim dropped %d bytes; the binary's resident pages went %d -> %d KiB", dropped, before, after)
	}
	// Code and read-only data dropped are mapped again on use.
	if got := strings.Repeat("ab", 3); got != "ababab" {
		t.Fatalf("after Trim: %q", got)
	}
	if again := exeRSS(t, exe); again <= 0 {
		t.Fatalf("after Trim and some work: %d KiB resident", again)
	}
}

// exeRSS is how many KiB of exe's read-only mappings are resident.
func exeRSS(t *testing.T, exe string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	var kb int64
	for _, m := range cleanMappings(f, exe) {
		kb += m.rss >> 10
	}
	return kb
}

// LowGC sets the collector's target once: each setting stops the world,
// and a master trims (and calls it) after every upgrade.
func TestLowGCSetsTheTargetOnce(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	LowGC()
	got := debug.SetGCPercent(77)
	if os.Getenv("GOGC") == "" && got != lowGC {
		t.Fatalf("after LowGC the GC target was %d, want %d", got, lowGC)
	}
	LowGC()
	if got := debug.SetGCPercent(100); got != 77 {
		t.Fatalf("a second LowGC set the GC target again (%d, want 77 left as it was)", got)
	}
}
