//go:build linux

package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"
)

// Subnet is the rig's private /24. It exists only inside the rig's network
// namespaces: the root namespace gets no address, route or link from the rig.
const Subnet = "10.231.0"

// AppPort is where every host's baton listens, inside its namespace.
const AppPort = 8080

// Config describes a rig.
type Config struct {
	Dir       string // everything the rig writes goes here; keep it short (unix socket paths)
	Hosts     int    // application hosts, 1 to 200
	Workers   int    // baton workers per host; default 2
	Baton     string // the baton binary every host runs
	Release   string // release archive (see WriteRelease) every host starts on
	ReleaseID string
	Staged    map[string]string // more releases unpacked on every host, by id: archive
	Listen    string            // HAProxy's frontend in the root namespace; loopback only; default 127.0.0.1:0
	Log       io.Writer         // progress lines; nil discards them
}

// Host is one application host: a network namespace with its own sshd and
// baton. Hosts share the machine's file system; each has its own app root.
type Host struct {
	Name    string `json:"name"`     // h1, h2, …: inventory name, HAProxy server name, FLEET_HOST
	NetNS   string `json:"netns"`    // its network namespace
	Addr    string `json:"addr"`     // its address on Subnet
	AppRoot string `json:"app_root"` // releases/, current, previous, baton.pid, baton.log
	PIDFile string `json:"pid_file"`
}

// Rig is a fleet on one machine: N hosts as network namespaces on a bridge,
// and a load-balancer namespace that holds the bridge, HAProxy and the
// Ansible controller. HAProxy's frontend is a socket the rig opens on
// loopback in the root namespace and hands to HAProxy, so clients on this
// machine reach the fleet while nothing inside the rig can reach out.
type Rig struct {
	Dir           string   `json:"dir"`
	LB            string   `json:"lb_netns"` // namespace of the bridge, HAProxy and the Ansible controller
	Hosts         []*Host  `json:"hosts"`
	Frontend      string   `json:"frontend"`       // HAProxy's frontend, host:port on loopback
	Socket        string   `json:"haproxy_socket"` // HAProxy's runtime API (admin level)
	Inventory     string   `json:"inventory"`
	AnsibleConfig string   `json:"ansible_config"`
	Baton         string   `json:"baton"`
	Netns         []string `json:"netns"` // every namespace created, for teardown

	log       io.Writer
	procs     []*proc
	closeOnce sync.Once
	closeErr  error
}

var rigSeq atomic.Int32

// Up builds a rig. On error, whatever was built is torn down again.
func Up(cfg Config) (r *Rig, err error) {
	if cfg.Hosts < 1 || cfg.Hosts > 200 {
		return nil, fmt.Errorf("hosts %d: want 1 to 200", cfg.Hosts)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if err := loopbackOnly(cfg.Listen); err != nil {
		return nil, err
	}
	if m := Missing(); len(m) > 0 {
		return nil, fmt.Errorf("the rig needs the Debian packages %s (make fleet-deps)", strings.Join(m, ", "))
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the rig needs root (network namespaces, sshd)")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("rig directory %s: %w", cfg.Dir, err)
	}
	prefix := fmt.Sprintf("bfleet%d-%d", os.Getpid(), rigSeq.Add(1))
	r = &Rig{
		Dir:           dir,
		LB:            prefix + "-lb",
		Socket:        filepath.Join(dir, "haproxy.sock"),
		Inventory:     filepath.Join(dir, "inventory.yml"),
		AnsibleConfig: filepath.Join(dir, "ansible.cfg"),
		Baton:         cfg.Baton,
		log:           cfg.Log,
	}
	if r.log == nil {
		r.log = io.Discard
	}
	defer func() {
		if err != nil {
			r.Close()
			r = nil
		}
	}()
	for i := 1; i <= cfg.Hosts; i++ {
		name := fmt.Sprintf("h%d", i)
		app := filepath.Join(dir, name, "app")
		r.Hosts = append(r.Hosts, &Host{
			Name: name, NetNS: prefix + "-" + name, Addr: fmt.Sprintf("%s.%d", Subnet, i+1),
			AppRoot: app, PIDFile: filepath.Join(app, "baton.pid"),
		})
	}
	for _, d := range []string{filepath.Join(dir, "ssh"), filepath.Join(dir, "cp"), filepath.Join(dir, "ansible")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return r, fmt.Errorf("rig directory: %w", err)
		}
	}
	if err := r.saveState(); err != nil {
		return r, err
	}
	t0 := time.Now()
	if err := r.network(); err != nil {
		return r, err
	}
	if err := r.sshd(); err != nil {
		return r, err
	}
	if err := r.apps(cfg); err != nil {
		return r, err
	}
	if err := r.haproxy(cfg.Listen); err != nil {
		return r, err
	}
	if err := r.ansible(); err != nil {
		return r, err
	}
	fmt.Fprintf(r.log, "rig: %d hosts up in %s; HAProxy on http://%s\n", len(r.Hosts), time.Since(t0).Round(time.Millisecond), r.Frontend)
	return r, nil
}

func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q: want a loopback address (the rig stays on this machine)", addr)
	}
	return nil
}

// saveState writes rig.json, from which `rig down` tears a rig down when
// the process that built it is gone.
func (r *Rig) saveState() error {
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(filepath.Join(r.Dir, "rig.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("rig state: %w", err)
	}
	return nil
}

func (r *Rig) addNetNS(name string) error {
	if err := run(tool("ip"), "netns", "add", name); err != nil {
		return err
	}
	r.Netns = append(r.Netns, name)
	if err := r.saveState(); err != nil {
		return err
	}
	return run(tool("ip"), "-n", name, "link", "set", "lo", "up")
}

// network makes the namespaces: the bridge with .1 in the LB namespace, and
// per host a veth pair, one end on the bridge, the other as eth0 of the host.
func (r *Rig) network() error {
	ip := tool("ip")
	if err := r.addNetNS(r.LB); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", r.LB, "link", "add", "br0", "type", "bridge"},
		{"-n", r.LB, "addr", "add", Subnet + ".1/24", "dev", "br0"},
		{"-n", r.LB, "link", "set", "br0", "up"},
	}
	for _, h := range r.Hosts {
		if err := r.addNetNS(h.NetNS); err != nil {
			return err
		}
		steps = append(steps,
			[]string{"-n", r.LB, "link", "add", h.Name, "type", "veth", "peer", "name", "eth0", "netns", h.NetNS},
			[]string{"-n", r.LB, "link", "set", h.Name, "master", "br0", "up"},
			[]string{"-n", h.NetNS, "addr", "add", h.Addr + "/24", "dev", "eth0"},
			[]string{"-n", h.NetNS, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := run(ip, s...); err != nil {
			return err
		}
	}
	return nil
}

const sshdConfig = `# sshd of rig host {{.Name}}: key-only, root, this host's address only.
ListenAddress {{.Addr}}:22
HostKey {{.Dir}}/{{.Name}}/ssh_host_ed25519_key
AuthorizedKeysFile {{.Dir}}/ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile none
MaxStartups 100
MaxSessions 100
LogLevel ERROR
Subsystem sftp internal-sftp
`

// sshd generates the client key and per-host host keys, writes known_hosts,
// and starts one sshd in each host's namespace.
func (r *Rig) sshd() error {
	keygen := tool("ssh-keygen")
	key := filepath.Join(r.Dir, "ssh", "id_ed25519")
	if err := run(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "baton-fleet-rig", "-f", key); err != nil {
		return err
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		return fmt.Errorf("rig client key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(r.Dir, "ssh", "authorized_keys"), pub, 0o600); err != nil {
		return fmt.Errorf("authorized_keys: %w", err)
	}
	// sshd refuses to start without its privilege separation directory,
	// which systemd creates on a normal boot but a container may lack.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return fmt.Errorf("sshd privilege separation directory: %w", err)
	}
	tmpl := template.Must(template.New("sshd").Parse(sshdConfig))
	var known strings.Builder
	for _, h := range r.Hosts {
		hdir := filepath.Join(r.Dir, h.Name)
		if err := os.MkdirAll(hdir, 0o755); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		hk := filepath.Join(hdir, "ssh_host_ed25519_key")
		if err := run(keygen, "-q", "-t", "ed25519", "-N", "", "-C", "rig "+h.Name, "-f", hk); err != nil {
			return err
		}
		hpub, err := os.ReadFile(hk + ".pub")
		if err != nil {
			return fmt.Errorf("host %s key: %w", h.Name, err)
		}
		f := strings.Fields(string(hpub))
		fmt.Fprintf(&known, "%s %s %s\n", h.Addr, f[0], f[1])
		cfgPath := filepath.Join(hdir, "sshd_config")
		var b strings.Builder
		tmpl.Execute(&b, map[string]string{"Name": h.Name, "Addr": h.Addr, "Dir": r.Dir})
		if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("host %s sshd_config: %w", h.Name, err)
		}
		p, err := startProc("sshd "+h.Name, filepath.Join(hdir, "sshd.log"), cleanEnv(), nil,
			tool("ip"), "netns", "exec", h.NetNS, tool("sshd"), "-D", "-e", "-f", cfgPath)
		if err != nil {
			return err
		}
		r.procs = append(r.procs, p)
	}
	if err := os.WriteFile(filepath.Join(r.Dir, "ssh", "known_hosts"), []byte(known.String()), 0o644); err != nil {
		return fmt.Errorf("known_hosts: %w", err)
	}
	for i, h := range r.Hosts {
		p := r.procs[len(r.procs)-len(r.Hosts)+i]
		addr := [4]byte(net.ParseIP(h.Addr).To4())
		if !waitFor(10*time.Second, func() bool { return p.exited() || listeningIn(p.cmd.Process.Pid, addr, 22) }) || p.exited() {
			return fmt.Errorf("host %s: sshd did not listen on %s:22 within 10s (see %s)", h.Name, h.Addr, filepath.Join(r.Dir, h.Name, "sshd.log"))
		}
	}
	return nil
}

// apps installs the first release on every host and starts its baton,
// listening on :AppPort inside the host's namespace, with
// --chdir APP_ROOT/current: the layout deploy.yml expects.
func (r *Rig) apps(cfg Config) error {
	for _, h := range r.Hosts {
		for id, archive := range cfg.Staged {
			if err := unpack(archive, filepath.Join(h.AppRoot, "releases", id)); err != nil {
				return fmt.Errorf("host %s: %w", h.Name, err)
			}
		}
		rel := filepath.Join(h.AppRoot, "releases", cfg.ReleaseID)
		if err := unpack(cfg.Release, rel); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		if err := os.Symlink(rel, filepath.Join(h.AppRoot, "current")); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
		p, err := startProc("baton "+h.Name, filepath.Join(h.AppRoot, "baton.out"), cleanEnv("FLEET_HOST="+h.Name), nil,
			tool("ip"), "netns", "exec", h.NetNS, cfg.Baton, "run",
			"--listen", fmt.Sprintf(":%d", AppPort), "--workers", strconv.Itoa(cfg.Workers),
			"--pid-file", h.PIDFile, "--chdir", filepath.Join(h.AppRoot, "current"),
			"--log-file", filepath.Join(h.AppRoot, "baton.log"), "--worker-output", "tagged",
			"--drain-timeout", "10s", "--", "./run")
		if err != nil {
			return err
		}
		r.procs = append(r.procs, p)
	}
	for _, h := range r.Hosts {
		var st struct {
			State string `json:"state"`
		}
		ok := waitFor(30*time.Second, func() bool {
			out, err := output(r.Baton, "status", "--json", "--pid-file", h.PIDFile)
			return err == nil && json.Unmarshal(out, &st) == nil && st.State == "serving"
		})
		if !ok {
			return fmt.Errorf("host %s: baton not serving within 30s (see %s)", h.Name, filepath.Join(h.AppRoot, "baton.log"))
		}
	}
	return nil
}

const haproxyConfig = `# HAProxy of the fleet rig. It runs in the rig's LB namespace; its
# frontend is a socket on loopback in the root namespace, passed as fd 3.
global
    stats socket {{.Socket}} mode 600 level admin
    stats timeout 10s

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 10s
    # A check slower than this fails; without it the check interval is the
    # timeout, and a busy machine marks healthy servers DOWN.
    timeout check 2s

frontend fleet
    bind fd@3
    default_backend app

backend app
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
{{- range .Hosts}}
    server {{.Name}} {{.Addr}}:{{$.Port}} check inter 500ms fall 3 rise 2
{{- end}}
`

// haproxy starts HAProxy in the LB namespace and waits until every server
// is UP.
func (r *Rig) haproxy(listen string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("HAProxy frontend %s: %w", listen, err)
	}
	defer ln.Close()
	r.Frontend = ln.Addr().String()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return fmt.Errorf("HAProxy frontend %s: %w", listen, err)
	}
	defer f.Close()
	var b strings.Builder
	template.Must(template.New("haproxy").Parse(haproxyConfig)).Execute(&b, map[string]any{
		"Socket": r.Socket, "Hosts": r.Hosts, "Port": AppPort,
	})
	cfgPath := filepath.Join(r.Dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("haproxy.cfg: %w", err)
	}
	p, err := startProc("haproxy", filepath.Join(r.Dir, "haproxy.log"), cleanEnv(), []*os.File{f},
		tool("ip"), "netns", "exec", r.LB, tool("haproxy"), "-db", "-f", cfgPath)
	if err != nil {
		return err
	}
	r.procs = append(r.procs, p)
	if err := r.saveState(); err != nil {
		return err
	}
	var last map[string]ServerState
	ok := waitFor(15*time.Second, func() bool {
		if p.exited() {
			return false
		}
		last, err = r.Servers()
		if err != nil || len(last) != len(r.Hosts) {
			return false
		}
		for _, s := range last {
			if s.Status != "UP" {
				return false
			}
		}
		return true
	})
	if !ok {
		return fmt.Errorf("HAProxy: servers not all UP within 15s: %v, %v (see %s)", last, err, filepath.Join(r.Dir, "haproxy.log"))
	}
	return nil
}

const inventory = `# Inventory of the fleet rig (scripts/fleet/rig). Each host is a network
# namespace on {{.Subnet}}.0/24 with its own sshd and baton.
all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: {{.Dir}}/ssh/id_ed25519
    ansible_ssh_common_args: -F /dev/null -o UserKnownHostsFile={{.Dir}}/ssh/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
    ansible_python_interpreter: /usr/bin/python3
    baton_bin: {{.Baton}}
    haproxy_socket: {{.Socket}}
    haproxy_backend: app
    drain_timeout: 20
    health_timeout: 5
  children:
    app:
      hosts:
{{- range .Hosts}}
        {{.Name}}:
          ansible_host: {{.Addr}}
          app_root: {{.AppRoot}}
          baton_pid_file: {{.PIDFile}}
          health_url: http://{{.Addr}}:{{$.Port}}/healthz
          haproxy_server: {{.Name}}
{{- end}}
`

const ansibleConfig = `# Ansible settings for the fleet rig: speed (pipelining, one SSH connection
# per host kept open) and nothing written outside the rig's directory.
[defaults]
forks = 20
host_key_checking = True
retry_files_enabled = False
local_tmp = {{.Dir}}/ansible/tmp
remote_tmp = {{.Dir}}/ansible/remote-tmp

[ssh_connection]
pipelining = True
control_path_dir = {{.Dir}}/cp
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
`

func (r *Rig) ansible() error {
	data := map[string]any{"Dir": r.Dir, "Subnet": Subnet, "Baton": r.Baton, "Socket": r.Socket, "Hosts": r.Hosts, "Port": AppPort}
	for path, text := range map[string]string{r.Inventory: inventory, r.AnsibleConfig: ansibleConfig} {
		var b strings.Builder
		template.Must(template.New(filepath.Base(path)).Parse(text)).Execute(&b, data)
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return r.saveState()
}

// Env is the environment for Ansible run as the rig's controller.
func (r *Rig) Env() []string {
	return cleanEnv("ANSIBLE_CONFIG="+r.AnsibleConfig, "ANSIBLE_HOME="+filepath.Join(r.Dir, "ansible"),
		"ANSIBLE_NOCOLOR=1", "ANSIBLE_FORCE_COLOR=0")
}

// Command returns a command run as the rig's controller: inside the LB
// namespace (the only place the hosts are reachable from), with Env.
func (r *Rig) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, tool("ip"), append([]string{"netns", "exec", r.LB}, args...)...)
	cmd.Env = r.Env()
	return cmd
}

// ServerState is one server's line of HAProxy's `show stat`.
type ServerState struct {
	Status   string // UP, DOWN, DRAIN, MAINT, …
	Weight   int
	Sessions int // scur
}

// HAProxyCmd sends one command to HAProxy's runtime API and returns the answer.
func (r *Rig) HAProxyCmd(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", r.Socket, 2*time.Second)
	if err != nil {
		return "", fmt.Errorf("HAProxy runtime API %s: %w", r.Socket, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", fmt.Errorf("HAProxy %q: %w", cmd, err)
	}
	b, err := io.ReadAll(bufio.NewReader(c))
	if err != nil {
		return "", fmt.Errorf("HAProxy %q: %w", cmd, err)
	}
	return string(b), nil
}

// Servers returns the state of backend app's servers, by name.
func (r *Rig) Servers() (map[string]ServerState, error) {
	out, err := r.HAProxyCmd("show stat")
	if err != nil {
		return nil, err
	}
	rd := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# ")))
	rd.FieldsPerRecord = -1
	recs, err := rd.ReadAll()
	if err != nil || len(recs) < 1 {
		return nil, fmt.Errorf("HAProxy show stat: %v: %q", err, out)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	res := map[string]ServerState{}
	for _, rec := range recs[1:] {
		if len(rec) < len(recs[0]) || rec[col["pxname"]] != "app" || rec[col["svname"]] == "BACKEND" {
			continue
		}
		w, _ := strconv.Atoi(rec[col["weight"]])
		s, _ := strconv.Atoi(rec[col["scur"]])
		res[rec[col["svname"]]] = ServerState{Status: rec[col["status"]], Weight: w, Sessions: s}
	}
	return res, nil
}

// Close tears the rig down: every baton stopped gracefully, every process
// in the rig's namespaces ended, the namespaces deleted. It is safe to call
// more than once and on a rig that Up left half built.
func (r *Rig) Close() error {
	r.closeOnce.Do(func() {
		var errs []error
		for _, h := range r.Hosts {
			if _, err := os.Stat(h.PIDFile); err == nil && r.Baton != "" {
				// Best effort: whatever is left is ended below.
				exec.Command(r.Baton, "stop", "--timeout", "15s", "--pid-file", h.PIDFile).Run()
			}
		}
		for _, p := range r.procs {
			p.stop(5 * time.Second)
		}
		for _, ns := range r.Netns {
			if err := emptyNetNS(ns, 5*time.Second); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := run(tool("ip"), "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
		r.closeErr = errors.Join(errs...)
		if r.closeErr == nil {
			os.Remove(filepath.Join(r.Dir, "rig.json"))
		}
	})
	return r.closeErr
}

// Load reads a rig's state from DIR/rig.json, for Close.
func Load(dir string) (*Rig, error) {
	b, err := os.ReadFile(filepath.Join(dir, "rig.json"))
	if err != nil {
		return nil, fmt.Errorf("rig state: %w", err)
	}
	r := &Rig{log: io.Discard}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("rig state %s: %w", filepath.Join(dir, "rig.json"), err)
	}
	return r, nil
}

func unpack(archive, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("unpack %s: %w", archive, err)
	}
	return run(tool("tar"), "-xzf", archive, "-C", dir)
}

// WriteRelease writes a release archive (tar.gz) holding bin/hello, a copy
// of the hello binary, and run, the executable script baton starts as the
// worker (`baton run … -- ./run`).
func WriteRelease(archive, hello, runScript string) error {
	f, err := os.Create(archive)
	if err != nil {
		return fmt.Errorf("release %s: %w", archive, err)
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	bin, err := os.ReadFile(hello)
	if err != nil {
		return fmt.Errorf("release %s: %w", archive, err)
	}
	now := time.Now()
	files := []struct {
		name string
		mode int64
		body []byte
	}{
		{"bin/", 0o755, nil},
		{"bin/hello", 0o755, bin},
		{"run", 0o755, []byte(runScript)},
	}
	for _, e := range files {
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body)), ModTime: now, Typeflag: tar.TypeReg}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("release %s: %w", archive, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return fmt.Errorf("release %s: %w", archive, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("release %s: %w", archive, err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("release %s: %w", archive, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("release %s: %w", archive, err)
	}
	return nil
}

// RunScript is a release's run script: it tags every answer with the
// release id and starts hello. fault, if not empty, is shell run first (to
// inject a failure, e.g. on one host only: FLEET_HOST names the host).
func RunScript(id, fault string) string {
	s := "#!/bin/sh\n# release " + id + "\nexport HELLO_TAG=" + id + "\n"
	if fault != "" {
		s += fault + "\n"
	}
	return s + "exec ./bin/hello\n"
}
