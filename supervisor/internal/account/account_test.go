package account

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeGetent puts a getent on PATH that answers like glibc's for one
// account only NSS knows (nssuser, uid 4242, group nssgroup 4343) and exits
// 2 (not found) for anything else.
func fakeGetent(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	script := `#!/bin/sh
case "$1 $2" in
"passwd nssuser"|"passwd 4242") echo "nssuser:*:4242:4343:NSS only:/home/nssuser:/bin/sh" ;;
"initgroups nssuser") echo "nssuser               4343 5000" ;;
"group nssgroup"|"group 4343") echo "nssgroup:*:4343:nssuser" ;;
"initgroups root") echo "root                  0 7777" ;;
"passwd slowuser") sleep 3 & exec sleep 30 ;;
*) exit 2 ;;
esac
`
	if err := os.WriteFile(filepath.Join(dir, "getent"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func TestLocalAccountsNeedNoGetent(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no getent at all
	u, err := LookupUser("root")
	if err != nil || u.UID != 0 || u.GID != 0 {
		t.Fatalf("LookupUser(root) = %+v, %v; want uid 0, gid 0", u, err)
	}
	if u, err := LookupUser("0"); err != nil || u.UID != 0 {
		t.Fatalf("LookupUser(0) = %+v, %v; want uid 0", u, err)
	}
	if gid, err := LookupGroup("root"); err != nil || gid != 0 {
		t.Fatalf("LookupGroup(root) = %d, %v; want 0", gid, err)
	}
	if _, err := LookupUser("nssuser"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookupUser(nssuser) without getent: %v; want ErrNotFound", err)
	}
}

// An account only NSS knows (LDAP, sssd) is found through getent, which
// os/user without cgo never asks.
func TestAccountsOnlyNSSKnowsComeFromGetent(t *testing.T) {
	fakeGetent(t)
	for _, name := range []string{"nssuser", "4242"} {
		u, err := LookupUser(name)
		if err != nil {
			t.Fatalf("LookupUser(%s): %v", name, err)
		}
		if u.UID != 4242 || u.GID != 4343 {
			t.Fatalf("LookupUser(%s) = %+v; want uid 4242, gid 4343", name, u)
		}
		if !slices.Equal(u.Groups, []int{4343, 5000}) {
			t.Fatalf("LookupUser(%s) groups %v; want [4343 5000] from getent initgroups", name, u.Groups)
		}
	}
	if gid, err := LookupGroup("nssgroup"); err != nil || gid != 4343 {
		t.Fatalf("LookupGroup(nssgroup) = %d, %v; want 4343", gid, err)
	}
	for _, name := range []string{"nosuchuser", "-s", ""} {
		if _, err := LookupUser(name); !errors.Is(err, ErrNotFound) {
			t.Fatalf("LookupUser(%q): %v; want ErrNotFound", name, err)
		}
	}
	if _, err := LookupGroup("nosuchgroup"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LookupGroup(nosuchgroup): %v; want ErrNotFound", err)
	}
}

// A local account's groups are NSS's too (a group only LDAP or nss-systemd
// lists for a user of /etc/passwd), as a cgo build's initgroups would see.
func TestLocalAccountsGroupsComeFromNSS(t *testing.T) {
	fakeGetent(t)
	u, err := LookupUser("root")
	if err != nil || u.UID != 0 {
		t.Fatalf("LookupUser(root) = %+v, %v", u, err)
	}
	if !slices.Equal(u.Groups, []int{0, 7777}) {
		t.Fatalf("LookupUser(root) groups %v; want [0 7777] from getent initgroups", u.Groups)
	}
	if uid, err := LookupUID("nssuser"); err != nil || uid != 4242 {
		t.Fatalf("LookupUID(nssuser) = %d, %v; want 4242", uid, err)
	}
}

// A getent that does not answer is given up on at the timeout, even when a
// child of its keeps the output pipe open; the error is not "not found".
func TestGetentThatHangsIsCutAtTheTimeout(t *testing.T) {
	fakeGetent(t)
	old := getentTimeout
	getentTimeout = 200 * time.Millisecond
	t.Cleanup(func() { getentTimeout = old })
	t0 := time.Now()
	_, err := LookupUser("slowuser")
	took := time.Since(t0)
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("LookupUser(slowuser) = %v; want a timeout error", err)
	}
	// The timeout and WaitDelay's second; the grandchild holds the pipe 3 s.
	if took > 2500*time.Millisecond {
		t.Fatalf("LookupUser(slowuser) took %s: the pipe a child of getent held kept it", took)
	}
}
