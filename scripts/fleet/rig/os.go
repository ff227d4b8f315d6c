//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// run runs a command to completion; its error names the command and carries
// the command's last output line.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLine(out))
	}
	return nil
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// tool returns the absolute path of a program, also from the sbin
// directories a non-login root shell may lack on $PATH; "" if it is absent.
func tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Missing lists the Debian packages the rig needs and this machine lacks
// (see make fleet-deps), or nil.
func Missing() []string {
	var pkgs []string
	need := func(pkg string, tools ...string) {
		for _, t := range tools {
			if tool(t) == "" {
				pkgs = append(pkgs, pkg)
				return
			}
		}
	}
	need("iproute2", "ip")
	need("openssh-server", "sshd")
	need("openssh-client", "ssh", "ssh-keygen")
	need("haproxy", "haproxy")
	need("tar", "tar")
	need("ansible", "ansible-playbook", "python3")
	if !slices.Contains(pkgs, "ansible") {
		// ansible-core alone lacks community.general, whose haproxy module
		// the playbooks use; Debian's ansible package carries it.
		if exec.Command(ansiblePython(), "-c", "import ansible_collections.community.general.plugins.modules.haproxy").Run() != nil {
			pkgs = append(pkgs, "ansible")
		}
	}
	return pkgs
}

// ansiblePython is the interpreter ansible-playbook runs on (its #! line),
// which is where its collections are installed; python3 on $PATH may be
// another one (pyenv, a virtualenv).
func ansiblePython() string {
	b, err := os.ReadFile(tool("ansible-playbook"))
	if err == nil && bytes.HasPrefix(b, []byte("#!")) {
		line, _, _ := bytes.Cut(b[2:], []byte("\n"))
		if f := strings.Fields(string(line)); len(f) == 1 {
			return f[0]
		}
	}
	return tool("python3")
}

// proc is a process the rig started and waits for.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
}

// startProc starts a command whose output is appended to logPath. extra
// become fds 3, 4, … of the process.
func startProc(name, logPath string, env []string, extra []*os.File, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.ExtraFiles = extra
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, strings.Join(args, " "), err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, and SIGKILL if the process is still there after
// grace; it returns once the process is reaped.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.done
}

// netnsInode is the inode of a named network namespace (/run/netns/NAME is
// a bind mount of the namespace file).
func netnsInode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+name, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", name, err)
	}
	return st.Ino, nil
}

// pidsIn lists the processes whose network namespace has inode ino.
func pidsIn(ino uint64) []int {
	want := fmt.Sprintf("net:[%d]", ino)
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && l == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// signalNetNS signals every process in the namespace with inode ino. Each is
// pinned with a pidfd and checked again through it, so a pid reused by
// another process between the listing and the signal is never hit.
func signalNetNS(ino uint64, sig syscall.Signal) int {
	n := 0
	want := fmt.Sprintf("net:[%d]", ino)
	for _, pid := range pidsIn(ino) {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone already
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && l == want {
			if unix.PidfdSendSignal(fd, sig, nil, 0) == nil {
				n++
			}
		}
		unix.Close(fd)
	}
	return n
}

// emptyNetNS ends every process in a rig namespace: SIGTERM, then SIGKILL
// for what is left after grace. Every process in it was started by the rig
// or by what the rig started (sshd sessions, baton's masters and workers,
// HAProxy, Ansible's SSH connections).
func emptyNetNS(name string, grace time.Duration) error {
	ino, err := netnsInode(name)
	if err != nil {
		return err
	}
	if signalNetNS(ino, syscall.SIGTERM) == 0 {
		return nil
	}
	if waitFor(grace, func() bool { return len(pidsIn(ino)) == 0 }) {
		return nil
	}
	signalNetNS(ino, syscall.SIGKILL)
	if !waitFor(5*time.Second, func() bool { return len(pidsIn(ino)) == 0 }) {
		return fmt.Errorf("network namespace %s: processes %v still there after SIGKILL", name, pidsIn(ino))
	}
	return nil
}

// waitFor polls cond every 20 ms until it holds (true) or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listeningIn reports whether process pid's network namespace has a TCP
// socket listening on addr (IPv4) and port, from /proc/PID/net/tcp.
func listeningIn(pid int, addr [4]byte, port int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return false
	}
	// Addresses are the 32-bit word in host (little-endian) order.
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", addr[3], addr[2], addr[1], addr[0], port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[1] == want && f[3] == "0A" {
			return true
		}
	}
	return false
}

// cleanEnv is this process's environment without what would change how the
// rig's programs behave behind its back: baton's own flags (BATON_*),
// systemd's socket passing and notification, Ansible's settings, and HELLO_*.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "BATON_") || strings.HasPrefix(k, "LISTEN_") || strings.HasPrefix(k, "ANSIBLE_") ||
			strings.HasPrefix(k, "HELLO_") || k == "NOTIFY_SOCKET" || k == "WATCHDOG_USEC" || k == "WATCHDOG_PID" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// output runs a command and returns its stdout; errors carry stderr's last line.
func output(name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLine(stderr.Bytes()))
	}
	return out, nil
}
