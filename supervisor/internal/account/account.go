// Package account resolves user and group names (or numeric ids) to ids.
//
// make build builds baton without cgo (a static binary: no dynamic loader
// and no libc to map at every master's start, which a handover waits for),
// so os/user reads /etc/passwd and /etc/group itself and cannot see
// accounts that only the system's NSS modules know (LDAP, sssd,
// nss-systemd). For a name os/user does not find, this package asks
// getent(1), which goes through NSS, before it says the account does not
// exist. In a cgo build os/user uses NSS already and the fallback finds
// nothing more.
package account

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) when neither os/user nor getent knows
// the account.
var ErrNotFound = errors.New("not found")

// getentTimeout bounds one getent call: an NSS module whose server does
// not answer must not hang a master's start. A variable for tests.
var getentTimeout = 5 * time.Second

// User is a user account's ids.
type User struct {
	UID, GID int   // the user's id and primary group
	Groups   []int // every group the user is in (supplementary groups)
}

// LookupUser resolves a user name or numeric uid. The user's groups are
// getent's (initgroups, through NSS: groups LDAP or nss-systemd know for an
// account in /etc/passwd too) when getent answers, else those /etc/group
// lists. It runs getent (blocking, at most getentTimeout per call) once
// or twice. The error wraps ErrNotFound when no source knows the account.
func LookupUser(name string) (User, error) {
	e, err := lookupPasswd(name)
	if err != nil {
		return User{}, err
	}
	u := User{UID: e.uid, GID: e.gid}
	if groups, ok := initgroups(e.name); ok {
		u.Groups = groups
	} else if e.local != nil {
		if gids, err := e.local.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.Atoi(g); err == nil {
					u.Groups = append(u.Groups, n)
				}
			}
		}
	}
	return u, nil
}

// LookupUID resolves a user name or numeric uid to the uid alone (a socket
// file's owner: no groups asked for), like LookupUser.
func LookupUID(name string) (int, error) {
	e, err := lookupPasswd(name)
	return e.uid, err
}

// passwdEntry is a user's passwd entry; local is os/user's when it came
// from /etc/passwd (nil: from getent).
type passwdEntry struct {
	name     string
	uid, gid int
	local    *user.User
}

// lookupPasswd finds name (or a numeric uid) with os/user, else with
// getent passwd; the error wraps ErrNotFound when neither knows it.
func lookupPasswd(name string) (passwdEntry, error) {
	u, err := user.Lookup(name)
	if err != nil {
		u, err = user.LookupId(name)
	}
	if err == nil {
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 == nil && err2 == nil {
			return passwdEntry{name: u.Username, uid: uid, gid: gid, local: u}, nil
		}
	}
	fields, err := getent("passwd", name)
	if err != nil {
		return passwdEntry{}, err
	}
	// name:password:uid:gid:gecos:home:shell
	if len(fields) < 4 {
		return passwdEntry{}, fmt.Errorf("getent answered %q: %w", strings.Join(fields, ":"), ErrNotFound)
	}
	uid, err1 := strconv.Atoi(fields[2])
	gid, err2 := strconv.Atoi(fields[3])
	if err1 != nil || err2 != nil {
		return passwdEntry{}, fmt.Errorf("getent answered ids %q:%q: %w", fields[2], fields[3], ErrNotFound)
	}
	return passwdEntry{name: fields[0], uid: uid, gid: gid}, nil
}

// initgroups returns every group of the named account through NSS, from
// getent's "NAME  GID GID …"; false when getent cannot say.
func initgroups(name string) ([]int, bool) {
	out, err := run("initgroups", name)
	if err != nil {
		return nil, false
	}
	f := strings.Fields(string(out))
	var groups []int
	for _, s := range f[min(1, len(f)):] {
		if n, err := strconv.Atoi(s); err == nil {
			groups = append(groups, n)
		}
	}
	return groups, true
}

// LookupGroup resolves a group name or numeric gid, like LookupUser.
func LookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		g, err = user.LookupGroupId(name)
	}
	if err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil {
			return gid, nil
		}
	}
	fields, err := getent("group", name)
	if err != nil {
		return 0, err
	}
	// name:password:gid:members
	if len(fields) < 3 {
		return 0, fmt.Errorf("getent answered %q: %w", strings.Join(fields, ":"), ErrNotFound)
	}
	gid, err := strconv.Atoi(fields[2])
	if err != nil {
		return 0, fmt.Errorf("getent answered gid %q: %w", fields[2], ErrNotFound)
	}
	return gid, nil
}

// getent returns the colon-separated fields of getent's one line for key
// in database db.
func getent(db, key string) ([]string, error) {
	out, err := run(db, key)
	if err != nil {
		return nil, err
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	return strings.Split(string(line), ":"), nil
}

// run runs getent DB KEY. Exit status 2 is getent's "key not found".
func run(db, key string) ([]byte, error) {
	if key == "" || strings.HasPrefix(key, "-") {
		return nil, ErrNotFound // never an option of getent's
	}
	ctx, cancel := context.WithTimeout(context.Background(), getentTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "getent", db, key)
	// A child of getent's that keeps the pipe open must not hold us past
	// the timeout (Output waits for the pipe to close otherwise).
	cmd.WaitDelay = time.Second
	out, err := cmd.Output()
	var ee *exec.ExitError
	switch {
	case err == nil && len(bytes.TrimSpace(out)) > 0:
		return out, nil
	case ctx.Err() != nil:
		return nil, fmt.Errorf("getent %s %s: no answer within %s", db, key, getentTimeout)
	case err == nil, errors.As(err, &ee) && ee.ExitCode() == 2:
		return nil, ErrNotFound
	case errors.Is(err, exec.ErrNotFound):
		// No getent (a minimal container): /etc/passwd, read above, is
		// all there is.
		return nil, ErrNotFound
	}
	return nil, fmt.Errorf("getent %s %s: %w", db, key, err)
}
