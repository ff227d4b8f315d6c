//go:build linux

package supervisor

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// release is what one generation runs: the real directory and command,
// resolved once when the generation boots. Every worker of the generation
// starts from them, so a replacement after a crash or a TTIN worker runs
// the same release as its siblings even after --chdir's symlink has moved
// (a deploy step not yet followed by a reload). A new generation resolves
// anew and so follows the symlink.
type release struct {
	dir     string   // workers' working directory, symlinks resolved; "" for baton's
	command []string // argv; [0] an absolute path when it named one
}

// resolveRelease pins cfg's --chdir and command. The command's directory
// is resolved, not the file itself: an interpreter such as a virtualenv's
// bin/python is a symlink that must keep its own path to find its home.
// Errors are ConfigErrors naming the flag.
func resolveRelease(cfg Config) (release, error) {
	r := release{command: append([]string(nil), cfg.Command...)}
	if cfg.Chdir != "" {
		dir, err := filepath.EvalSymlinks(cfg.Chdir)
		if err != nil {
			return release{}, badConfig("--chdir", strconv.Quote(cfg.Chdir), "", err)
		}
		r.dir = dir
	}
	path, err := ResolveCommand(r.dir, cfg.Command[0])
	if err != nil {
		return release{}, err
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return release{}, badConfig("command", strconv.Quote(cfg.Command[0]), "", err)
	}
	r.command[0] = filepath.Join(dir, filepath.Base(path))
	return r, nil
}

func (r release) String() string {
	return fmt.Sprintf("%s in %s", r.command[0], r.dir)
}
