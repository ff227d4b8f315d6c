//go:build linux

package osutil

import (
	"bufio"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// This file keeps baton's own processes small at rest. A keeper or master
// runs its start-up once (package initialisation, flag parsing, the CLI's
// and the metrics library's set-up) and then waits in one loop for
// signals: most of the heap it built and most of its binary's pages it
// mapped are never used again.

// lowGC is the GC percent of a process that holds almost nothing: the
// runtime's default (100) lets a heap of a few hundred KiB grow to its 4 MiB
// minimum goal before the first collection, and the garbage of each upgrade
// (log lines, /proc reads, notify messages) fills that in the meantime.
const lowGC = 25

// LowGC lowers the garbage collector's target for a process whose live heap
// is small, unless the user set GOGC. Only the first call sets it: setting
// the target stops the world, and a master calls this at every trim.
func LowGC() { lowGCOnce() }

var lowGCOnce = sync.OnceFunc(func() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(lowGC)
	}
})

// OneProc runs this process's Go code on one CPU at a time (GOMAXPROCS
// 1), unless the user set GOMAXPROCS, for a process that waits for events
// and handles each in microseconds: each processor the runtime runs keeps
// its own cache of partly used heap spans (one per size class) and its own
// garbage collection worker, which cost such a process more memory than
// the parallelism is worth. Blocking system calls still run on threads of
// their own. Call once, early.
func OneProc() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}

// Trim returns to the kernel what this process holds but no longer uses,
// and reports how many bytes of its binary's pages it unmapped. It runs a
// full collection and returns the heap's free pages (debug.FreeOSMemory),
// then drops this process's mappings of its own binary's read-only pages
// (code and read-only data) that start-up touched: they are clean copies of
// the file, still in the page cache, and the next use maps them again with
// a minor fault. Only mappings without a private (written) page are
// dropped, so nothing the process wrote is ever lost. Blocks for about a
// millisecond; safe to call at any time.
func Trim() int64 {
	// First: a collection reads the type data and stack maps of whatever
	// it scans, which are pages of the binary.
	debug.FreeOSMemory()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0
	}
	defer f.Close()
	var dropped int64
	for _, m := range cleanMappings(f, exe) {
		// MADV_RANDOM: a fault on a page the page cache no longer holds
		// reads that page alone, not a readahead window. It does not stop
		// the kernel's fault-around: a fault on a cached page still maps
		// the cached pages of its 64 KiB-aligned window (Linux 6.18: the
		// binary's mappings carry the rr flag in smaps and come back in
		// whole 64 KiB runs, per /proc/PID/pagemap).
		madvise(m, unix.MADV_RANDOM)
		if madvise(m, unix.MADV_DONTNEED) == nil {
			dropped += m.rss
		}
	}
	return dropped
}

func madvise(m mapping, advice int) error {
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, uintptr(advice)); errno != 0 {
		return errno
	}
	return nil
}

type mapping struct {
	start, end uintptr
	rss        int64 // bytes resident
}

// cleanMappings lists the read-only private mappings of path in smaps (the
// format of /proc/PID/smaps) that hold resident pages and no anonymous
// (copied-on-write) ones. It reads line by line: the file is some hundred
// KiB, and its garbage is what Trim is there to avoid.
func cleanMappings(smaps io.Reader, path string) []mapping {
	var (
		out  []mapping
		cur  mapping
		keep bool // cur is a read-only mapping of path
		anon int64
	)
	flush := func() {
		if keep && anon == 0 && cur.rss > 0 {
			out = append(out, cur)
		}
		keep, anon = false, 0
	}
	sc := bufio.NewScanner(smaps)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			flush()
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil || len(f) < 6 {
				continue
			}
			perms := f[1]
			keep = strings.Join(f[5:], " ") == path && perms[1] == '-' && perms[3] == 'p' // not writable, private
			cur = mapping{start: uintptr(start), end: uintptr(end)}
			continue
		}
		if !keep || len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			cur.rss = kb << 10
		case "Anonymous:":
			// A private page written to (copied on write) exists only
			// here; the page cache's own dirty pages (a binary just
			// built) are the file's, and count as Shared/Private_Dirty.
			anon += kb
		}
	}
	flush()
	return out
}
