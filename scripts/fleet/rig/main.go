//go:build linux

// Command rig builds a fleet on one machine to try scripts/fleet on, and is
// the harness of its test (fleet_test.go). As root:
//
//	go run ./scripts/fleet/rig up [-hosts 3] [-workers 2] [-listen 127.0.0.1:8080] [-dir DIR]
//	go run ./scripts/fleet/rig down -dir DIR   # a rig whose `up` was killed
//
// `up` builds examples/hello and baton, then: N hosts as network
// namespaces on a bridge (10.231.0.0/24, which exists only inside the
// rig), each with a key-only sshd and a baton running release v1 with
// --chdir APP_ROOT/current; HAProxy with health checks and a runtime API
// socket, its frontend on loopback; an inventory and an ansible.cfg. It
// prints how to deploy, and tears everything down on Ctrl-C or SIGTERM.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rig up [-hosts N] [-workers N] [-listen ADDR] [-dir DIR] | rig down -dir DIR")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want up or down)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rig: "+err.Error())
		os.Exit(1)
	}
}

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	hosts := fs.Int("hosts", 3, "application hosts")
	workers := fs.Int("workers", 2, "baton workers per host")
	listen := fs.String("listen", "127.0.0.1:8080", "HAProxy's frontend (loopback)")
	dir := fs.String("dir", "", "directory for everything the rig writes (default: a new one under /tmp, removed at the end)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := loopbackOnly(*listen); err != nil {
		return err
	}
	if m := Missing(); len(m) > 0 {
		return fmt.Errorf("install the Debian packages %s first (make fleet-deps)", strings.Join(m, ", "))
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the rig creates network namespaces and runs sshd")
	}
	d := *dir
	if d == "" {
		tmp, err := os.MkdirTemp("", "baton-fleet-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		d = tmp
	} else if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(d, "bin")
	for _, b := range []struct{ out, pkg string }{{"baton", "./cmd/baton"}, {"hello", "./examples/hello"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b.out), b.pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s (run rig from the repository's top directory): %w", b.pkg, err)
		}
	}
	for _, id := range []string{"v1", "v2"} {
		if err := WriteRelease(filepath.Join(d, id+".tar.gz"), filepath.Join(bin, "hello"), RunScript(id, "")); err != nil {
			return err
		}
	}
	r, err := Up(Config{Dir: d, Hosts: *hosts, Workers: *workers, Baton: filepath.Join(bin, "baton"),
		Release: filepath.Join(d, "v1.tar.gz"), ReleaseID: "v1", Listen: *listen, Log: os.Stderr})
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	ctl := "ip netns exec " + r.LB + " env ANSIBLE_CONFIG=" + r.AnsibleConfig
	fmt.Printf(`fleet rig up: %d hosts, HAProxy on http://%s, runtime API %s
  curl http://%s/
  %s ansible-playbook -i %s scripts/fleet/deploy.yml -e release_archive=%s/v2.tar.gz -e release_id=v2
  %s ansible-playbook -i %s scripts/fleet/rollback.yml
Ctrl-C tears it down.
`, len(r.Hosts), r.Frontend, r.Socket, r.Frontend, ctl, r.Inventory, d, ctl, r.Inventory)
	<-sig
	fmt.Fprintln(os.Stderr, "rig: tearing down")
	return r.Close()
}

func down(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	dir := fs.String("dir", "", "the rig's directory (holds rig.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("down: -dir is required")
	}
	r, err := Load(*dir)
	if err != nil {
		return err
	}
	return r.Close()
}
