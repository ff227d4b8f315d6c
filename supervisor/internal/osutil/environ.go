package osutil

import (
	"bytes"
	"os"
	"strconv"
	"strings"
)

// Environ returns the value of key in pid's initial environment
// (/proc/PID/environ: what it was executed with), and whether it is set.
func Environ(pid int, key string) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return "", false
	}
	prefix := []byte(key + "=")
	for _, kv := range bytes.Split(b, []byte{0}) {
		if bytes.HasPrefix(kv, prefix) {
			return string(kv[len(prefix):]), true
		}
	}
	return "", false
}

// Command returns pid's command line, arguments joined by spaces, or its
// name in brackets when it has none (a kernel thread, a zombie), "" when
// it is gone.
func Command(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err == nil && len(b) > 0 {
		return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	}
	if c, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil {
		return "[" + strings.TrimSpace(string(c)) + "]"
	}
	return ""
}
