//go:build linux

// Package tasks reads the limits on how many tasks (processes and
// threads) this process and its children may have: the pids cgroup
// controller's pids.max (cgroup v1 or v2, this cgroup and each ancestor,
// as systemd's TasksMax= and a container's --pids-limit set it) and
// RLIMIT_NPROC. Callers check an estimate against Headroom before they
// fork, so that a start or an upgrade that would not fit is refused in one
// line instead of failing half way (Go aborts a whole process when it
// cannot create a thread).
package tasks

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/baton-sh/baton/supervisor/internal/osutil"
)

// Headroom is the tightest task limit found: how many more tasks fit.
type Headroom struct {
	Left    int64  // tasks that may still be created; math.MaxInt64 when unlimited
	Max     int64  // the limit
	Current int64  // tasks counted against it now
	Source  string // "pids.max of cgroup /sys/fs/cgroup/pids/app" or "RLIMIT_NPROC (ulimit -u) of uid 1000"
	// Limit names the kind of limit, stable for logs and tests: LimitPidsMax
	// or LimitNproc; "" when unlimited.
	Limit string
}

// Kinds of task limit (Headroom.Limit).
const (
	LimitPidsMax = "pids.max"     // a pids cgroup's
	LimitNproc   = "RLIMIT_NPROC" // the user's, ulimit -u
)

// Unlimited reports whether no limit was found.
func (h Headroom) Unlimited() bool { return h.Left == math.MaxInt64 }

// String names the limit and its numbers, for a refusal.
func (h Headroom) String() string {
	if h.Unlimited() {
		return "no task limit"
	}
	return fmt.Sprintf("%s is %d with %d in use, %d left", h.Source, h.Max, h.Current, h.Left)
}

// Find returns the tightest of this process's task limits. Limits that
// cannot be read are left out (a missing controller is no limit).
func Find() Headroom {
	best := Headroom{Left: math.MaxInt64}
	for _, dir := range cgroupDirs() {
		lim, err1 := readInt(filepath.Join(dir, "pids.max"))
		cur, err2 := readInt(filepath.Join(dir, "pids.current"))
		if err1 != nil || err2 != nil || lim < 0 {
			continue
		}
		if left := lim - cur; left < best.Left {
			best = Headroom{Left: max(left, 0), Max: lim, Current: cur, Source: "pids.max of cgroup " + dir, Limit: LimitPidsMax}
		}
	}
	if h, ok := nproc(); ok && h.Left < best.Left {
		best = h
	}
	return best
}

// readInt reads a cgroup file holding a number or "max" (-1).
func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return -1, nil
	}
	return strconv.ParseInt(s, 10, 64)
}

// cgroupDirs lists this process's pids cgroup directory and its ancestors
// up to the hierarchy's mount point: the v1 "pids" hierarchy if mounted,
// else the v2 one (where pids.max exists only below the root, and only
// when the controller is enabled).
func cgroupDirs() []string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	var v1, v2 string
	found1, found2 := false, false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			v2, found2 = f[2], true
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "pids" {
				v1, found1 = f[2], true
			}
		}
	}
	if found1 {
		if mnt, root, ok := mountOf("cgroup", "pids"); ok {
			return ancestors(mnt, root, v1)
		}
	}
	if found2 {
		if mnt, root, ok := mountOf("cgroup2", ""); ok {
			return ancestors(mnt, root, v2)
		}
	}
	return nil
}

// ancestors maps cgroup path p (as /proc/self/cgroup names it) into the
// mount at mnt whose root is root, and lists it with its parents up to mnt.
func ancestors(mnt, root, p string) []string {
	rel, err := filepath.Rel(root, p)
	if err != nil || strings.HasPrefix(rel, "..") {
		rel = "." // the cgroup is outside this mount's view (a namespace): its root
	}
	var out []string
	for d := filepath.Join(mnt, rel); ; d = filepath.Dir(d) {
		out = append(out, d)
		if d == mnt || len(d) <= len(mnt) {
			return out
		}
	}
}

// mountOf finds the mount point and root of a cgroup file system: fstype
// "cgroup" with controller opt among its super options, or "cgroup2".
func mountOf(fstype, opt string) (mnt, root string, ok bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, found := strings.Cut(sc.Text(), " - ")
		if !found {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 || b[0] != fstype {
			continue
		}
		if opt != "" && !hasOpt(b[2], opt) {
			continue
		}
		return unescape(a[4]), unescape(a[3]), true
	}
	return "", "", false
}

func hasOpt(opts, opt string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// nproc is RLIMIT_NPROC's headroom: the kernel counts every task of the
// real user against it, and does not apply it to root.
func nproc() (Headroom, bool) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(6 /* RLIMIT_NPROC */, &lim); err != nil || lim.Cur == math.MaxUint64 || os.Getuid() == 0 {
		return Headroom{}, false
	}
	uid := os.Getuid()
	cur, err := tasksOfUser(uid)
	if err != nil {
		return Headroom{}, false
	}
	m := int64(lim.Cur)
	return Headroom{Left: max(m-cur, 0), Max: m, Current: cur,
		Source: fmt.Sprintf("RLIMIT_NPROC (ulimit -u) of uid %d", uid), Limit: LimitNproc}, true
}

// tasksOfUser counts the threads of every process whose real uid is uid.
func tasksOfUser(uid int) (int64, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		st, err := readStatus(e.Name())
		if err == nil && st.uid == uid {
			n += st.threads
		}
	}
	return n, nil
}

type status struct {
	uid     int
	threads int64
}

func readStatus(pid string) (status, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return status{}, err
	}
	var st status
	st.uid = -1
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		switch {
		case k == "Uid" && len(f) > 0:
			st.uid, _ = strconv.Atoi(f[0])
		case k == "Threads" && len(f) > 0:
			st.threads, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	if st.uid < 0 {
		return st, errors.New("no Uid line")
	}
	return st, nil
}

// Threads returns the thread count of process pid (1 if unreadable: a
// process is at least one task).
func Threads(pid int) int64 {
	st, err := readStatus(strconv.Itoa(pid))
	if err != nil || st.threads < 1 {
		return 1
	}
	return st.threads
}

// Tree returns the tasks of pid and all its descendants: every thread of
// every process in the tree.
func Tree(pid int) int64 {
	n := Threads(pid)
	for _, c := range osutil.ChildrenOf(pid, 0) {
		n += Tree(c)
	}
	return n
}

// LimitHits returns how often a fork or thread creation in this process's
// pids cgroups (this one and its ancestors) failed because pids.max was
// reached: the sum of their pids.events "max" counters. Comparing it
// before and after an operation tells whether the operation hit the limit.
func LimitHits() int64 {
	var n int64
	for _, dir := range cgroupDirs() {
		b, err := os.ReadFile(filepath.Join(dir, "pids.events"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, " "); ok && k == "max" {
				if c, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
					n += c
				}
			}
		}
	}
	return n
}

// Dir returns the directory of this process's own cgroup in the pids
// hierarchy (v1 "pids" controller, else cgroup v2), and whether there is
// one. A child cgroup made there with its own pids.max confines what is
// moved into it.
func Dir() (string, bool) {
	dirs := cgroupDirs()
	if len(dirs) == 0 {
		return "", false
	}
	return dirs[0], true
}
