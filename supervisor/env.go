package supervisor

import (
	"strconv"
	"strings"
)

// This file owns what a worker's environment is made of, apart from the
// per-worker variables (workerEnv).

// stripEnv reports whether a variable of baton's own environment must not
// reach workers: systemd's per-process protocol variables (they describe
// baton, not the worker), tableflip's sentinel, and baton's own.
func stripEnv(kv string) bool {
	k, _, _ := strings.Cut(kv, "=")
	return k == "NOTIFY_SOCKET" ||
		strings.HasPrefix(k, "LISTEN_") ||
		strings.HasPrefix(k, "WATCHDOG_") ||
		strings.HasPrefix(k, "TABLEFLIP_") ||
		strings.HasPrefix(k, "BATON_")
}

func workerBaseEnv(environ []string) []string {
	out := make([]string, 0, len(environ)+8)
	for _, kv := range environ {
		if !stripEnv(kv) {
			out = append(out, kv)
		}
	}
	return out
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
