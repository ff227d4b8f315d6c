//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	"unsafe"
)

// largeFolioShare maps path, touches every page, and returns the share of
// its pages that the page cache holds in folios larger than 4 KiB
// (/proc/kpageflags: compound head or tail), or an error when the page
// flags cannot be read (they need root).
func largeFolioShare(t *testing.T, path string) (float64, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	size := int(st.Size())
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		return 0, err
	}
	defer kf.Close()
	base := unsafePointer(m) / 4096
	large, n := 0, 0
	var b [8]byte
	var sum byte
	for i := 0; i < size/4096; i++ {
		sum += m[i*4096] // fault it in
		if _, err := pm.ReadAt(b[:], int64(base+uintptr(i))*8); err != nil {
			return 0, err
		}
		e := binary.LittleEndian.Uint64(b[:])
		if e>>63 == 0 {
			continue
		}
		pfn := e & (1<<55 - 1)
		if pfn == 0 {
			return 0, os.ErrPermission // pagemap hides frames from the unprivileged
		}
		if _, err := kf.ReadAt(b[:], int64(pfn)*8); err != nil {
			return 0, err
		}
		flags := binary.LittleEndian.Uint64(b[:])
		n++
		if flags&(1<<15|1<<16) != 0 { // KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL
			large++
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("no page of %s present after reading it (sum %d)", path, sum)
	}
	return float64(large) / float64(n), nil
}

// The binaries zdbench runs are copies, as installed ones are, not the
// file Go's linker wrote through a shared mapping: that file sits in the
// page cache in 4 KiB pages, and each exec of it cost a new master 1.4 ms
// more CPU than a copy.
func TestBenchRunsCopiesOfTheLinkersFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "linked")
	// Written as the linker writes: through a shared mapping.
	const size = 4 << 20
	f, err := os.OpenFile(src, os.O_RDWR|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = byte(i * 7)
	}
	unix.Munmap(m)
	f.Close()
	linked, err := largeFolioShare(t, src)
	if err != nil {
		t.Skipf("SKIP: page flags unreadable (needs root): %v", err)
	}
	// What this kernel and filesystem do with a file written in 64 KiB
	// pieces, as cp(1) and tar write: the reference for "a copy".
	data, _ := os.ReadFile(src)
	ref := filepath.Join(dir, "written")
	w, err := os.Create(ref)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 64 << 10 {
		w.Write(data[off:min(off+64<<10, len(data))])
	}
	w.Close()
	written, _ := largeFolioShare(t, ref)
	if linked > 0.5 || written < 0.5 {
		t.Skipf("SKIP: this kernel and filesystem give the linker's file %.0f%% and a written file %.0f%% of their pages in large folios: nothing to tell apart", linked*100, written*100)
	}
	dst, err := copyBinary(src, filepath.Join(dir, "copy"))
	if err != nil {
		t.Fatal(err)
	}
	copied, _ := largeFolioShare(t, dst)
	if copied < 0.9 {
		t.Fatalf("the copy has %.0f%% of its pages in large folios (the linker's file %.0f%%, a written file %.0f%%), want nearly all", copied*100, linked*100, written*100)
	}
}

func unsafePointer(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
