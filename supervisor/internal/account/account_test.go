package account

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
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
