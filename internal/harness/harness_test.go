package harness

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

// Forget drops old entries but keeps every index as it was: a wait or a
// slice by index still finds the same entries afterwards.
func TestForgetKeepsIndices(t *testing.T) {
	r, w := io.Pipe()
	tl := New(r)
	defer w.Close()
	for i := 0; i < 5; i++ {
		fmt.Fprintf(w, `{"msg":"m","event":"e%d"}`+"\n", i)
	}
	ctx := context.Background()
	if _, _, err := tl.Wait(ctx, 0, 5*time.Second, "e4", Named("e4")); err != nil {
		t.Fatal(err)
	}
	tl.Forget(3)
	if n := tl.Len(); n != 5 {
		t.Fatalf("Len after Forget(3) = %d, want 5", n)
	}
	got := tl.Slice(0, -1)
	if len(got) != 2 || got[0].Name() != "e3" || got[1].Name() != "e4" {
		t.Fatalf("Slice(0, -1) after Forget(3) = %v, want e3 e4", got)
	}
	if got := tl.Slice(4, 5); len(got) != 1 || got[0].Name() != "e4" {
		t.Fatalf("Slice(4, 5) = %v, want e4", got)
	}
	if tl.ReadAt(4).IsZero() {
		t.Fatal("ReadAt(4) is zero")
	}
	fmt.Fprintln(w, `{"msg":"m","event":"e5"}`)
	// From an index already forgotten: the first kept entry on.
	ev, i, err := tl.Wait(ctx, 1, 5*time.Second, "e5", Named("e5"))
	if err != nil || i != 5 || ev.Name() != "e5" {
		t.Fatalf("Wait from 1 = %v, %d, %v; want e5 at 5", ev, i, err)
	}
	if ev, i, _ := tl.Wait(ctx, 0, time.Second, "e3", Named("e3")); i != 3 || ev.Name() != "e3" {
		t.Fatalf("Wait for e3 = %v at %d, want index 3", ev, i)
	}
}
