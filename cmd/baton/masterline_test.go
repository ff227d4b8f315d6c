//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/baton-sh/baton/supervisor"
	"github.com/urfave/cli/v2"
)

// A master's command line read by runMaster's parse (masterContext) gives
// what urfave/cli's parse of the same line gives: the same Config, or the
// same error, flags given on the command line or in BATON_* variables,
// aliases included.
func TestMasterLineParsedAsByTheCLI(t *testing.T) {
	dir := t.TempDir()
	pid := filepath.Join(dir, "b.pid")
	cmd := []string{"--", "/bin/sh", "-c", "exec sleep 1"}
	cases := []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"short names", nil, []string{"-l", "127.0.0.1:1", "-w", "4", "--pid-file", pid}},
		{"long names", nil, []string{"--listen", "127.0.0.1:1", "--workers", "3", "--pid-file", pid}},
		{"repeated listen", nil, []string{"-l", "a=127.0.0.1:1", "--listen", "b=127.0.0.1:2", "-l", "c=127.0.0.1:3,d=127.0.0.1:4"}},
		{"every kind of flag", nil, []string{"-l", "127.0.0.1:1", "--ready", "delay:1s", "--ready-timeout", "3s", "--drain-signal", "QUIT",
			"--drain-timeout", "2s", "--control", filepath.Join(dir, "c.sock"), "--worker-output", "tagged", "--log-format", "json",
			"--before-upgrade", "true", "--before-upgrade-timeout", "1m", "--before-start", "--strategy", "canary",
			"--health-check", "tcp", "--health-timeout", "4s", "--health-interval", "2s", "--smoke-test", "true",
			"--smoke-timeout", "5s", "--bake", "7s", "--canary-weight", "30", "--compat", "einhorn", "--metrics", "127.0.0.1:9"}},
		{"bool flag with a value", nil, []string{"-l", "127.0.0.1:1", "--before-upgrade", "true", "--before-start=false"}},
		{"from the environment", map[string]string{"BATON_WORKERS": "5", "BATON_LISTEN": "127.0.0.1:1,127.0.0.1:2", "BATON_STRATEGY": "blue-green", "BATON_BAKE": "3s"}, nil},
		{"environment and command line", map[string]string{"BATON_LISTEN": "127.0.0.1:1", "BATON_WORKERS": "5"}, []string{"-l", "127.0.0.1:2", "-w", "2"}},
		{"rollout flag from the environment, shared", map[string]string{"BATON_BAKE": "3s"}, []string{"-l", "127.0.0.1:1"}},
		{"rollout flag, shared", nil, []string{"-l", "127.0.0.1:1", "--canary-weight", "5", "--strategy", "blue-green"}},
		{"two forms of one flag", nil, []string{"-l", "127.0.0.1:1", "-w", "2", "--workers", "3"}},
		{"unknown flag", nil, []string{"-l", "127.0.0.1:1", "--no-such-flag"}},
		{"bad value", nil, []string{"-l", "127.0.0.1:1", "-w", "many"}},
		{"bad duration", nil, []string{"-l", "127.0.0.1:1", "--drain-timeout", "0s"}},
		{"bad environment value", map[string]string{"BATON_WORKERS": "x"}, []string{"-l", "127.0.0.1:1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"BATON_WORKERS", "BATON_LISTEN", "BATON_STRATEGY", "BATON_BAKE"} {
				t.Setenv(k, "") // restored after the test
				os.Unsetenv(k)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := append(append([]string(nil), tc.args...), cmd...)
			want, wantErr := cliConfig(args)
			got, gotErr := fastConfig(args)
			if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Fatalf("error %v, urfave/cli's %v", gotErr, wantErr)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("config\n%+v\nurfave/cli's\n%+v", got, want)
			}
		})
	}
}

// cliConfig is baton run's parse of args by urfave/cli, up to configFrom.
func cliConfig(args []string) (supervisor.Config, error) {
	var cfg supervisor.Config
	var cfgErr error
	app := newApp()
	for _, c := range app.Commands {
		if c.Name == "run" {
			c.Action = func(c *cli.Context) error {
				cfg, cfgErr = configFrom(c)
				return nil
			}
		}
	}
	if err := app.Run(append([]string{"baton", "run"}, args...)); err != nil {
		var ue *usageError
		if e, ok := err.(*usageError); ok {
			ue = e
		}
		if ue == nil {
			return cfg, fmt.Errorf("not a usage error: %w", err)
		}
		return cfg, ue.err
	}
	return cfg, cfgErr
}

// fastConfig is runMaster's parse of the same args, up to configFrom.
func fastConfig(args []string) (supervisor.Config, error) {
	c, err := masterContext(args)
	if err != nil {
		return supervisor.Config{}, err
	}
	return configFrom(c)
}
