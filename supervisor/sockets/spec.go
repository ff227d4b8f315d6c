//go:build linux

package sockets

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/baton-sh/baton/supervisor/internal/account"
)

// Spec is one parsed --listen value.
type Spec struct {
	Name string // LISTEN_FDNAMES entry; "listen<i>" when not given
	// Network is tcp, tcp4, tcp6, mptcp or unix. tcp* sockets are plain
	// TCP (IPPROTO_TCP) even where Go would make them Multipath TCP; mptcp
	// is a TCP socket with IPPROTO_MPTCP, only when asked for.
	Network string
	Addr    string // host:port, or a filesystem path / "@abstract" name for unix
	// Perm is what a unix socket file is given after bind, systemd's
	// SocketMode=, SocketUser= and SocketGroup=; nil leaves it as bound
	// (umask, baton's user). Only for unix paths.
	Perm *Perm
}

// Perm is a unix socket file's mode and owner.
type Perm struct {
	Mode os.FileMode // permission bits; 0: unchanged
	UID  int         // -1: unchanged
	GID  int         // -1: unchanged
}

// String is the spec as ParseSpec reads it back, owners as numeric ids.
func (s Spec) String() string {
	out := s.Name + "=" + s.Network + "://" + s.Addr
	if p := s.Perm; p != nil {
		var q []string
		if p.Mode != 0 {
			q = append(q, fmt.Sprintf("mode=%#o", p.Mode))
		}
		if p.UID >= 0 {
			q = append(q, "user="+strconv.Itoa(p.UID))
		}
		if p.GID >= 0 {
			q = append(q, "group="+strconv.Itoa(p.GID))
		}
		out += "?" + strings.Join(q, "&")
	}
	return out
}

// ErrBadSpec is wrapped by every ParseSpec error.
var ErrBadSpec = errors.New("bad listen spec")

// ParseSpec parses a --listen value. index names the spec when it carries no
// name of its own. Accepted forms:
//
//	:8080  127.0.0.1:8080  [::1]:8080  localhost:8080
//	tcp://…  tcp4://…  tcp6://…  mptcp://…  unix:///run/app.sock  unix://@abstract
//	unix:///run/app.sock?mode=0660&user=app&group=www-data
//	NAME=any of the above
//
// user and group are looked up here (names or numeric ids).
func ParseSpec(value string, index int) (Spec, error) {
	fail := func(why string) (Spec, error) {
		return Spec{}, fmt.Errorf("%w %q: %s", ErrBadSpec, value, why)
	}
	rest := strings.TrimSpace(value)
	if rest == "" {
		return fail("empty")
	}
	s := Spec{Name: "listen" + strconv.Itoa(index), Network: "tcp"}

	// A name never contains ':' or '/', so "a=b" before any of them is a name.
	if eq := strings.IndexByte(rest, '='); eq >= 0 && !strings.ContainsAny(rest[:eq], ":/[") {
		s.Name, rest = rest[:eq], rest[eq+1:]
		if err := checkName(s.Name); err != nil {
			return fail(err.Error())
		}
	}
	if scheme, addr, ok := strings.Cut(rest, "://"); ok {
		switch scheme {
		case "tcp", "tcp4", "tcp6", "mptcp", "unix":
			s.Network = scheme
		default:
			return fail(fmt.Sprintf("unknown scheme %q (want tcp, tcp4, tcp6, mptcp or unix)", scheme))
		}
		rest = addr
	}
	if s.Network == "unix" {
		if path, query, ok := strings.Cut(rest, "?"); ok {
			perm, err := parsePerm(query)
			if err != nil {
				return fail(err.Error())
			}
			if strings.HasPrefix(path, "@") {
				return fail("an abstract socket has no file mode or owner")
			}
			rest, s.Perm = path, perm
		}
		if rest == "" || rest == "@" {
			return fail("empty unix socket path")
		}
		// sun_path holds 108 bytes: a path needs its NUL terminator, an
		// abstract name ("@…", the '@' standing for a leading NUL) does not.
		if err := CheckUnixPath(rest); err != nil {
			return fail(err.Error())
		}
		s.Addr = rest
		return s, nil
	}

	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return fail("want [host]:port")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
		return fail(fmt.Sprintf("port %q is not a number from 0 to 65535", port))
	}
	port = strconv.Itoa(n) // canonical, so ":080" and ":80" are one address
	if ip := net.ParseIP(host); ip != nil {
		v6 := strings.Contains(host, ":")
		host = ip.String() // canonical too: [0:0::1] is [::1]
		if v6 && ip.To4() != nil {
			host = "::ffff:" + host // keep the v4-mapped form the user wrote
		}
	}
	if ip := net.ParseIP(host); host != "" && ip == nil && !validHostname(host) {
		return fail(fmt.Sprintf("host %q is neither an IP address nor a host name", host))
	} else if ip != nil {
		switch {
		case s.Network == "tcp4" && ip.To4() == nil:
			return fail("tcp4 with an IPv6 address")
		case s.Network == "tcp6" && ip.To4() != nil && !strings.Contains(host, ":"):
			return fail("tcp6 with an IPv4 address")
		}
	}
	s.Addr = net.JoinHostPort(host, port)
	return s, nil
}

// ParseSpecs parses every value and rejects duplicate names and addresses.
func ParseSpecs(values []string) ([]Spec, error) {
	specs := make([]Spec, 0, len(values))
	names := make(map[string]bool)
	addrs := make(map[string]bool)
	for i, v := range values {
		s, err := ParseSpec(v, i)
		if err != nil {
			return nil, err
		}
		if names[s.Name] {
			return nil, fmt.Errorf("%w %q: name %q used twice", ErrBadSpec, v, s.Name)
		}
		if key := s.Network + " " + s.Addr; addrs[key] {
			return nil, fmt.Errorf("%w %q: address listed twice", ErrBadSpec, v)
		} else {
			addrs[key] = true
		}
		names[s.Name] = true
		specs = append(specs, s)
	}
	return specs, nil
}

// MaxUnixPath is the longest unix socket path bind(2) and connect(2)
// accept: sun_path holds 108 bytes, with room for the terminating NUL.
const MaxUnixPath = 107

// ErrPathTooLong is wrapped by CheckUnixPath's error.
var ErrPathTooLong = errors.New("unix socket path too long")

// CheckUnixPath refuses a path the kernel cannot bind or connect to. An
// abstract name ("@…", the '@' standing for a leading NUL) needs no NUL
// terminator, so it may be one byte longer. Errors wrap ErrPathTooLong.
func CheckUnixPath(path string) error {
	if len(path) > MaxUnixPath && !(path[0] == '@' && len(path) <= MaxUnixPath+1) {
		return fmt.Errorf("%w (%d bytes, longer than %d bytes)", ErrPathTooLong, len(path), MaxUnixPath)
	}
	return nil
}

// parsePerm parses "mode=0660&user=app&group=www-data" (any subset).
func parsePerm(query string) (*Perm, error) {
	p := &Perm{UID: -1, GID: -1}
	for _, kv := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "mode":
			m, err := strconv.ParseUint(v, 8, 32)
			if err != nil || m == 0 || m > 0o777 {
				return nil, fmt.Errorf("mode %q: want octal permission bits such as 0660", v)
			}
			p.Mode = os.FileMode(m)
		case "user":
			uid, err := account.LookupUID(v)
			if errors.Is(err, account.ErrNotFound) {
				return nil, fmt.Errorf("user %q: no such user", v)
			} else if err != nil {
				return nil, fmt.Errorf("user %q: %w", v, err)
			}
			p.UID = uid
		case "group":
			gid, err := account.LookupGroup(v)
			if errors.Is(err, account.ErrNotFound) {
				return nil, fmt.Errorf("group %q: no such group", v)
			} else if err != nil {
				return nil, fmt.Errorf("group %q: %w", v, err)
			}
			p.GID = gid
		default:
			return nil, fmt.Errorf("unknown option %q (want mode, user or group)", k)
		}
	}
	return p, nil
}

// DefaultPerm gives unix socket files that name no owner of their own to
// the workers' user (uid, gid), with systemd's default SocketMode= 0666:
// under --user the server itself and a proxy running as another user can
// then connect, where the bound file would be root's with the umask's mode.
// Directory permissions still decide who reaches the path.
func DefaultPerm(specs []Spec, uid, gid int) {
	for i := range specs {
		s := &specs[i]
		if s.Network != "unix" || strings.HasPrefix(s.Addr, "@") {
			continue
		}
		if s.Perm == nil {
			s.Perm = &Perm{UID: -1, GID: -1}
		}
		if s.Perm.Mode == 0 {
			s.Perm.Mode = 0o666
		}
		if s.Perm.UID < 0 {
			s.Perm.UID = uid
		}
		if s.Perm.GID < 0 {
			s.Perm.GID = gid
		}
	}
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty name before '='")
	}
	if len(name) > 255 {
		return errors.New("name longer than 255 bytes")
	}
	for _, r := range name {
		// sd_listen_fds_with_names(3) splits on ':'; keep names printable ASCII.
		if r <= ' ' || r >= 0x7f || r == ':' {
			return fmt.Errorf("name %q may hold only printable ASCII other than ':'", name)
		}
	}
	return nil
}

func validHostname(h string) bool {
	// All digits and dots is a mistyped address (256.1.1.1), not a name.
	if len(h) > 253 || strings.Trim(h, "0123456789.") == "" {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}
