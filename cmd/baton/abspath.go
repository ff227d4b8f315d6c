//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/baton-sh/baton/supervisor/earlysig"
)

// A master re-executes itself (tableflip runs os.Args in the master's
// working directory) long after it started. Nothing it needs may depend on
// the directory it was started from, which a deploy tool may prune: the
// binary, every path flag and relative unix socket path are made absolute
// here, in os.Args and in the BATON_* variables alike, so the next master
// parses the same absolute values; then baton re-executes itself in "/"
// (reexecFromRoot), because tableflip starts every new master in the
// directory its package saw at init. Workers get the start directory as
// their default --chdir instead.

// envStartDir carries the directory baton run was started in across that
// re-exec, for the workers' default directory. Workers never see it
// (every BATON_ variable is stripped).
const envStartDir = "BATON_START_DIR"

// reexecFromRoot executes this binary again with the same (absolutized)
// arguments in "/". The pid stays; fds not marked close-on-exec, such as
// systemd's sockets, stay too. It executes os.Args[0], the absolute path
// absolutize found, rather than /proc/self/exe: the process is named after
// the file executed, and must stay "baton" for ps -C baton and pgrep -x
// baton. It returns only on error.
func reexecFromRoot(cwd string) error {
	if os.Getenv(envStartDir) == "" {
		os.Setenv(envStartDir, cwd)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	// Signals caught so far (package earlysig) are handled by the new
	// image, not lost with this one.
	earlysig.Carry()
	return syscall.Exec(os.Args[0], os.Args, os.Environ())
}

// pathFlags are the run flags whose values are filesystem paths.
var pathFlags = map[string]bool{"pid-file": true, "chdir": true, "env-file": true, "log-file": true, "control": true}

// absolutize rewrites os.Args and the BATON_* variables of baton run with
// absolute paths relative to cwd. It returns argv[0]'s absolute path, or
// an error when the running binary cannot be found from argv[0].
func absolutize(cwd string) error {
	args := os.Args
	bin := args[0]
	if !strings.Contains(bin, "/") {
		p, err := exec.LookPath(bin)
		if err != nil {
			return err
		}
		bin = p
	}
	args[0] = absIn(cwd, bin)
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		name, value, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		if !inline {
			if i+1 >= len(args) || !(pathFlags[name] || name == "listen" || name == "l") {
				continue
			}
			i++
			args[i] = absValue(cwd, name, args[i])
			continue
		}
		args[i] = a[:len(a)-len(value)] + absValue(cwd, name, value)
	}
	for name := range pathFlags {
		env := "BATON_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok && v != "" {
			os.Setenv(env, absValue(cwd, name, v))
		}
	}
	if v := os.Getenv("BATON_LISTEN"); v != "" {
		parts := strings.Split(v, ",")
		for i, p := range parts {
			parts[i] = absValue(cwd, "listen", p)
		}
		os.Setenv("BATON_LISTEN", strings.Join(parts, ","))
	}
	return nil
}

// absValue makes the path in one flag value absolute: the whole value for
// a path flag, the path of a unix:// listen spec (keeping NAME= and ?…).
func absValue(cwd, flag, v string) string {
	if pathFlags[flag] {
		if v == "" || strings.HasPrefix(v, "@") {
			return v
		}
		return absIn(cwd, v)
	}
	if flag != "listen" && flag != "l" {
		return v
	}
	i := strings.Index(v, "unix://")
	if i < 0 || strings.ContainsAny(v[:i], ":/") {
		return v
	}
	path, query, hasQuery := strings.Cut(v[i+len("unix://"):], "?")
	if path == "" || strings.HasPrefix(path, "@") || filepath.IsAbs(path) {
		return v
	}
	out := v[:i] + "unix://" + absIn(cwd, path)
	if hasQuery {
		out += "?" + query
	}
	return out
}

func absIn(cwd, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(cwd, p)
}
