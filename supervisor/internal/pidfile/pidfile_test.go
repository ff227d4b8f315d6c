//go:build linux

package pidfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTakeHoldsTheFileUntilRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "baton.pid")
	l, stale, err := Take(path, 42)
	if err != nil || stale != 0 {
		t.Fatalf("Take: stale %d, %v", stale, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "42\n" {
		t.Fatalf("pid file holds %q, want \"42\\n\"", b)
	}
	if pid, held := Holder(path); !held || pid != 42 {
		t.Fatalf("Holder: %d held %v, want 42 held", pid, held)
	}
	// A second keeper (another open file description, even in this
	// process) is refused and told who holds it.
	if _, _, err := Take(path, 43); !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "pid 42") {
		t.Fatalf("second Take: %v, want ErrHeld naming pid 42", err)
	}
	l.Release()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("pid file after Release: %v, want removed", err)
	}
	if _, held := Holder(path); held {
		t.Fatal("Holder says held after Release")
	}
}

func TestTakeReplacesAStaleFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "baton.pid")
	os.WriteFile(path, []byte("777\n"), 0o644) // a keeper that was SIGKILLed
	if pid, held := Holder(path); held || pid != 777 {
		t.Fatalf("Holder of a stale file: %d held %v, want 777 not held", pid, held)
	}
	l, stale, err := Take(path, 42)
	if err != nil || stale != 777 {
		t.Fatalf("Take over a stale file: stale %d, %v; want 777", stale, err)
	}
	defer l.Release()
	if b, _ := os.ReadFile(path); string(b) != "42\n" {
		t.Fatalf("pid file holds %q, want \"42\\n\"", b)
	}
}

func TestReleaseLeavesAFileThatIsNotItsOwn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "baton.pid")
	l, _, err := Take(path, 42)
	if err != nil {
		t.Fatal(err)
	}
	// Someone removed it and another keeper wrote its own.
	os.Remove(path)
	os.WriteFile(path, []byte("43\n"), 0o644)
	l.Release()
	if b, _ := os.ReadFile(path); string(b) != "43\n" {
		t.Fatalf("pid file after Release: %q, want the other keeper's \"43\\n\" left alone", b)
	}
}

func TestTakeRefusesADirectory(t *testing.T) {
	if _, _, err := Take(t.TempDir(), 42); err == nil {
		t.Fatal("Take of a directory succeeded")
	}
}
