//go:build linux

package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/baton-sh/baton/supervisor/sockets"
)

func TestWorkerBaseEnvStripsWhatDescribesBaton(t *testing.T) {
	have := workerBaseEnv([]string{
		"PATH=/bin", "HOME=/root", "NOTIFY_SOCKET=/run/systemd/notify", "LISTEN_FDS=2", "LISTEN_PID=1",
		"LISTEN_FDNAMES=a", "WATCHDOG_USEC=1", "WATCHDOG_PID=1", "TABLEFLIP_HAS_PARENT_7DIU3=yes",
		"BATON_WORKERS=4", "BATON_MASTER_GENERATION=3", "NOTIFY_SOCKETS=kept", "MY_LISTEN_FDS=kept",
		"NODE_CHANNEL_FD=3", "NODE_CHANNEL_SERIALIZATION_MODE=json", "NODE_UNIQUE_ID=1", "NODE_ENV=kept",
		"EINHORN_FD_0=3", "EINHORN_FDS=3", "SERVER_STARTER_PORT=:80=3", "UNICORN_FD=3", "GUNICORN_FD=3",
		"PUMA_INHERIT_0=3:tcp://:80", "SYSTEMD_EXEC_PID=1", "JOURNAL_STREAM=8:123", "INVOCATION_ID=kept",
	}, true)
	want := []string{"PATH=/bin", "HOME=/root", "NOTIFY_SOCKETS=kept", "MY_LISTEN_FDS=kept", "NODE_ENV=kept", "INVOCATION_ID=kept"}
	if !slices.Equal(have, want) {
		t.Fatalf("have %q\nwant %q", have, want)
	}
	// With inherited output the workers' stderr is baton's: the journal.
	if have := workerBaseEnv([]string{"JOURNAL_STREAM=8:123"}, false); !slices.Equal(have, []string{"JOURNAL_STREAM=8:123"}) {
		t.Fatalf("inherited output: have %q, want JOURNAL_STREAM kept", have)
	}
}

func TestMergeEnvLetsTheFileWin(t *testing.T) {
	have := mergeEnv([]string{"A=1", "B=2", "C=3"}, []string{"B=two", "D=4"})
	want := []string{"A=1", "C=3", "B=two", "D=4"}
	if !slices.Equal(have, want) {
		t.Fatalf("have %q, want %q", have, want)
	}
}

func TestReadEnvFile(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "env")
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	have, err := ReadEnvFile(write("# comment\n\nA=1\nexport B = two words \nC=\"quoted\"\nD='single'\nE=\nF=a=b\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A=1", "B=two words", "C=quoted", "D=single", "E=", "F=a=b"}
	if !slices.Equal(have, want) {
		t.Fatalf("have %q, want %q", have, want)
	}
	for _, bad := range []string{"NOEQUALS\n", "=value\n", "A B=1\n", "A=1\nbad line\n"} {
		if _, err := ReadEnvFile(write(bad)); err == nil || !strings.Contains(err.Error(), "--env-file") {
			t.Errorf("%q: err %v, want a --env-file error", bad, err)
		}
	}
	if _, err := ReadEnvFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestCompatEnv(t *testing.T) {
	m := &master{gen: 7, cfg: Config{
		Listen: []sockets.Spec{{Network: "tcp", Addr: "127.0.0.1:80"}, {Network: "unix", Addr: "/run/a.sock"}},
		Compat: []string{"einhorn", "server-starter"},
	}}
	have := m.compatEnv()
	want := []string{"EINHORN_FD_COUNT=2", "EINHORN_FD_0=3", "EINHORN_FD_1=4", "EINHORN_FDS=3 4",
		"SERVER_STARTER_PORT=127.0.0.1:80=3;/run/a.sock=4", "SERVER_STARTER_GENERATION=7"}
	if !slices.Equal(have, want) {
		t.Fatalf("have %q\nwant %q", have, want)
	}
}

func TestExitReason(t *testing.T) {
	for _, tt := range []struct {
		script, want string
	}{
		{"exit 3", "exit status 3"},
		{"exit 0", "exit status 0"},
		{"kill -KILL $$", "signal SIGKILL"},
		{"kill -TERM $$", "signal SIGTERM"},
	} {
		cmd := exec.Command("/bin/sh", "-c", tt.script)
		cmd.Run()
		if have := statusOf(cmd.ProcessState).String(); have != tt.want {
			t.Errorf("%q: have %q, want %q", tt.script, have, tt.want)
		}
	}
}

func TestShimCommand(t *testing.T) {
	path, argv := shimCommand("/bin/sh", []string{"./server", "-x"})
	if path != "/bin/sh" || !slices.Equal(argv[len(argv)-3:], []string{"baton-worker", "./server", "-x"}) {
		t.Fatalf("shell trampoline: %s %q", path, argv)
	}
	// The script itself: LISTEN_PID becomes the shell's pid, which exec keeps.
	cmd := exec.Command("/bin/sh", "-c", shellShim, "baton-worker", "/bin/sh", "-c", `echo "$LISTEN_PID $$ ${BATON_SHIM_PPID:-unset}"`)
	cmd.Env = []string{"BATON_SHIM_PPID=" + strconv.Itoa(os.Getpid())}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 3 || f[0] != f[1] || f[2] != "unset" {
		t.Fatalf("trampoline output %q: want LISTEN_PID equal to the pid, and BATON_SHIM_PPID gone", out)
	}
	// A parent other than the master: refuse.
	cmd = exec.Command("/bin/sh", "-c", shellShim, "baton-worker", "/bin/true")
	cmd.Env = []string{"BATON_SHIM_PPID=1"}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "master 1 is gone") {
		t.Fatalf("trampoline under the wrong parent: %v %q", err, out)
	}
	path, argv = shimCommand("", []string{"./server"})
	if path != "/proc/self/exe" || !slices.Equal(argv, []string{"baton", ShimArg, "./server"}) {
		t.Fatalf("self trampoline: %s %q", path, argv)
	}
}

func TestEveryConfigErrorIsErrBadConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("not an env file\n"), 0o644)
	ok := func() Config {
		return Config{Listen: []sockets.Spec{{Network: "tcp", Addr: "127.0.0.1:1"}}, Workers: 1, Command: []string{"/bin/sh"}}
	}
	for _, tt := range []struct {
		name   string
		change func(*Config)
		names  string // the flag and value, once
	}{
		{"no command", func(c *Config) { c.Command = nil }, "no command given"},
		{"no listen", func(c *Config) { c.Listen = nil }, "no --listen given"},
		{"workers", func(c *Config) { c.Workers = 0 }, "--workers 0: "},
		{"chdir missing", func(c *Config) { c.Chdir = filepath.Join(dir, "gone") }, `--chdir "` + dir + `/gone": no such file`},
		{"chdir a file", func(c *Config) { c.Chdir = file }, `--chdir "` + file + `": not a directory`},
		{"command", func(c *Config) { c.Command = []string{"no-such-command-baton"} }, `command "no-such-command-baton": not found`},
		{"command not executable", func(c *Config) { c.Command = []string{file} }, `command "` + file + `": not executable: permission denied`},
		{"pid file dir", func(c *Config) { c.PIDFile = filepath.Join(dir, "no/b.pid") }, `--pid-file "` + dir + `/no/b.pid": directory not writable: no such file`},
		{"env file", func(c *Config) { c.EnvFile = file }, `--env-file "` + file + `": line 1`},
		{"compat", func(c *Config) { c.Compat = []string{"inetd"} }, `--compat "inetd": want`},
	} {
		c := ok()
		tt.change(&c)
		err := c.Check()
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(fmt.Sprint(err), tt.names) || strings.Count(fmt.Sprint(err), tt.names) != 1 {
			t.Errorf("%s: %v; want ErrBadConfig naming %q once", tt.name, err, tt.names)
		}
	}
	if err := (&Config{Listen: ok().Listen, Workers: 1, Command: []string{filepath.Join(dir, "gone")}}).Check(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the cause is not wrapped: %v", err)
	}
	for _, bad := range []struct {
		flag string
		err  func() error
	}{
		{"--ready", func() error { _, err := ParseReadyRule("sometimes"); return err }},
		{"--drain-signal", func() error { _, err := ParseSignal("NOPE"); return err }},
		{"--env-file", func() error { _, err := ReadEnvFile(filepath.Join(dir, "gone")); return err }},
	} {
		err := bad.err()
		if !errors.Is(err, ErrBadConfig) || strings.Count(fmt.Sprint(err), bad.flag) != 1 {
			t.Errorf("%v: want ErrBadConfig naming %s once", err, bad.flag)
		}
	}
}
