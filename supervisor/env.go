//go:build linux

package supervisor

import (
	"os"
	"strconv"
	"strings"
)

// This file owns what a worker's environment is made of, apart from the
// per-worker variables (workerEnv).

// Variables in baton's own environment that describe baton's fds, streams
// or process, which a launcher set for baton: passed on unchanged they
// would tell a worker about an fd it never received (or, worse, one of its
// listening sockets at the same number) or name baton's pid as its own.
// None of them reaches a worker; what baton passes on purpose (LISTEN_*,
// NOTIFY_SOCKET, the --compat variables) is set anew for each worker. The
// README's "Worker environment" lists the same.
var (
	strippedEnv = map[string]string{
		"NOTIFY_SOCKET":                   "systemd: the service manager's notify socket, for baton",
		"SYSTEMD_EXEC_PID":                "systemd: baton's pid",
		"FDSTORE":                         "systemd: baton's fd store size",
		"NODE_CHANNEL_FD":                 "Node child_process.fork: IPC channel fd of the launcher",
		"NODE_CHANNEL_SERIALIZATION_MODE": "Node: that channel's format",
		"NODE_UNIQUE_ID":                  "Node cluster: the launcher's worker id; a worker would act as a cluster worker",
		"UNICORN_FD":                      "Unicorn: inherited listener fds",
		"GUNICORN_FD":                     "gunicorn: inherited listener fds",
		"GUNICORN_PID":                    "gunicorn: the old arbiter's pid",
		"NGINX":                           "nginx: inherited listener fds",
		"WAYLAND_SOCKET":                  "Wayland: a connected socket fd for one client",
	}
	strippedEnvPrefixes = map[string]string{
		"LISTEN_":         "systemd socket activation (and systemfd, catflap): baton's sockets",
		"WATCHDOG_":       "systemd: baton's watchdog",
		"TABLEFLIP_":      "tableflip: the upgrade sentinel",
		"BATON_":          "baton's own, between masters",
		"EINHORN_":        "einhorn: fds and control socket of an einhorn above baton",
		"SERVER_STARTER_": "Server::Starter: its ports as fds",
		"PUMA_INHERIT_":   "puma: inherited listener fds",
		"HUPTIME_":        "huptime: its pipe and state",
	}
)

// stripEnv reports whether a variable of baton's own environment must not
// reach workers (strippedEnv, strippedEnvPrefixes). JOURNAL_STREAM names
// the device and inode of baton's stderr when that is the journal: true for
// workers whose output is inherited, false when their stderr is a pipe to
// baton (tagged), where a server would wrongly switch to journal framing.
func stripEnv(kv string, tagged bool) bool {
	k, _, _ := strings.Cut(kv, "=")
	if _, ok := strippedEnv[k]; ok {
		return true
	}
	if k == "JOURNAL_STREAM" {
		return tagged
	}
	for p := range strippedEnvPrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// workerBaseEnv is environ without what stripEnv drops; tagged says the
// workers' output goes through baton.
func workerBaseEnv(environ []string, tagged bool) []string {
	out := make([]string, 0, len(environ)+8)
	for _, kv := range environ {
		if !stripEnv(kv, tagged) {
			out = append(out, kv)
		}
	}
	return out
}

// nextEnv is the environment the next generation's workers will get: its
// master reads --env-file anew at its start, so this does too (a deploy
// may have changed the file); the rest is this master's. Commands run for
// the next generation (the --before-upgrade hook, the smoke test) get it.
func (m *master) nextEnv() []string {
	if m.cfg.EnvFile == "" {
		return m.baseEnv
	}
	extra, err := ReadEnvFile(m.cfg.EnvFile)
	if err != nil {
		// The new master will refuse to start on it and say why.
		return m.baseEnv
	}
	return mergeEnv(workerBaseEnv(os.Environ(), m.cfg.WorkerOutput == OutputTagged), extra)
}

// mergeEnv returns base with extra's assignments, extra winning.
func mergeEnv(base, extra []string) []string {
	keys := make(map[string]bool, len(extra))
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); !keys[k] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// compatEnv describes the sockets in other supervisors' conventions too.
func (m *master) compatEnv() []string {
	var env []string
	n := len(m.cfg.Listen)
	for _, c := range m.cfg.Compat {
		switch c {
		case "einhorn":
			fds := make([]string, n)
			env = append(env, "EINHORN_FD_COUNT="+strconv.Itoa(n))
			for i := range n {
				fds[i] = strconv.Itoa(3 + i)
				env = append(env, "EINHORN_FD_"+strconv.Itoa(i)+"="+fds[i])
			}
			env = append(env, "EINHORN_FDS="+strings.Join(fds, " "))
		case "server-starter":
			ports := make([]string, n)
			for i, s := range m.cfg.Listen {
				ports[i] = s.Addr + "=" + strconv.Itoa(3+i)
			}
			env = append(env, "SERVER_STARTER_PORT="+strings.Join(ports, ";"),
				"SERVER_STARTER_GENERATION="+strconv.Itoa(m.gen))
		}
	}
	return env
}
