//go:build linux

package sockets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// This file is the privileged way to steer a reuseport group: an eBPF
// SK_REUSEPORT program that picks a socket out of a REUSEPORT_SOCKARRAY
// map, never out of the group itself.
//
// Why: the classic program (reuseport.go) returns an index into the
// group, and the group is whatever the kernel holds: any process of the
// same uid may join it (a stray server started with SO_REUSEPORT, a worker
// that opens its own socket, a leftover that keeps an old generation's
// socket open), and the kernel moves the last socket into the slot of one
// that leaves. The map instead holds exactly baton's sockets, by key:
//
//	key gen%2       this generation's socket (inserted by its own master)
//	key (gen+1)%2   the other live generation's: the candidate during an
//	                upgrade, the previous one while it drains
//
// A socket that is not in the map is never chosen, whatever the kernel's
// order. The kernel removes a socket from the map when it stops listening.
//
// The program, per connection:
//
//	probe source (IPv4)  -> the other generation's key, or drop
//	users                -> the first-choice key (own, or the other one
//	                        for the canary share, by the flow hash), then
//	                        the second, then drop
//
// Dropping is the SYN only: the client retransmits it (after 1 s) and the
// next try finds a socket. Returning "pass" without a selection would hand
// the connection to the kernel's hash over the whole group, stray sockets
// included, which is what this program exists to prevent. Both keys hold
// baton's own running generations, so falling over to the second one is
// safe: that is the re-steer when one generation's socket is gone.
//
// The map's fd travels to the next master through tableflip's registry
// (name mapName), like a listening socket: the program attached to the
// group refers to this map, so the next generation must insert its
// socket into the same one.
//
// The program is loaded with the SELECT_OR_MIGRATE attach type where the
// kernel has it (Linux >= 5.14): when a socket closes, the kernel runs it
// for every request still in the handshake or the accept queue of that
// socket and moves them to the socket it selects (the closing socket has
// already left the map), instead of resetting them; this needs no
// net.ipv4.tcp_migrate_req. Earlier kernels (>= 4.19 for the map) load
// it as a plain SELECT program; baton still waits for accept queues to
// empty before closing (bluegreen.go), which covers all but handshakes in
// flight.

// mapName is the registry name of the map of spec's group.
func mapName(spec Spec) string { return "reuseport-map:" + spec.Network + ":" + spec.Addr }

// Offsets in struct sk_reuseport_md (linux/bpf.h).
const (
	mdHash = 32
)

// bpfHdrStartNet is BPF_HDR_START_NET for bpf_skb_load_bytes_relative.
const bpfHdrStartNet = 1

// steerProg is one group's eBPF steering state.
type steerProg struct {
	m *ebpf.Map
	// migrate: the program last attached was loaded as
	// SELECT_OR_MIGRATE, so the kernel moves a closing socket's queue
	// and handshakes to the socket it selects.
	migrate bool
	// loaded are the programs loaded for this group so far, by canary
	// percentage (the keys are the Set's, fixed for its life). Loading
	// one (the verifier, the JIT) took 0.5-0.9 ms of CPU here, twice on a
	// blue-green handover's path (Steer(0) before it, Steer(100) at the
	// switch); attaching a loaded one is one setsockopt. At most a few:
	// 0, the switch's weight, and 100 at a canary's promotion.
	loaded map[int]loadedSteer
}

type loadedSteer struct {
	prog    *ebpf.Program
	migrate bool
}

// program returns the group's program for canaryPct, loading it the first
// time.
func (p *steerProg) program(live, cand uint32, canaryPct int) (loadedSteer, error) {
	if l, ok := p.loaded[canaryPct]; ok {
		return l, nil
	}
	prog, migrate, err := loadSteer(p.m, live, cand, canaryPct)
	if err != nil {
		return loadedSteer{}, err
	}
	if p.loaded == nil {
		p.loaded = make(map[int]loadedSteer, 2)
	}
	l := loadedSteer{prog, migrate}
	p.loaded[canaryPct] = l
	return l, nil
}

// close closes the group's map and its loaded programs (a group keeps the
// one attached to it).
func (p *steerProg) close() {
	for _, l := range p.loaded {
		l.prog.Close()
	}
	p.loaded = nil
	p.m.Close()
}

// ebpfCapable says whether spec's group can be steered by the eBPF program:
// its probes must be recognisable by source address, which an IPv6-only
// listener's are not (they carry ProbeMark, which the program cannot read).
func ebpfCapable(spec Spec) bool { return spec.Network != "tcp6" }

// UseEBPF switches s to eBPF steering (see above) for every group that
// allows it: it takes each group's map from reg (inherited from the
// previous master) or creates one, inserts this generation's socket at key
// gen%2 and registers the map for the next master. It returns an error,
// and s stays on classic BPF, where the kernel or the privilege is
// missing (creating a map needs CAP_BPF or CAP_SYS_ADMIN).
func (s *Set) UseEBPF(reg Registry, gen int) error {
	progs := make([]*steerProg, len(s.specs))
	fail := func(err error) error {
		for _, p := range progs {
			if p != nil {
				p.close()
			}
		}
		return err
	}
	for i, spec := range s.specs {
		if !ebpfCapable(spec) {
			continue
		}
		m, err := groupMap(reg, spec)
		if err != nil {
			return fail(err)
		}
		progs[i] = &steerProg{m: m}
		if err := insertSock(m, uint32(gen%2), s.files[i]); err != nil {
			return fail(fmt.Errorf("insert %s into its REUSEPORT_SOCKARRAY: %w", spec, err))
		}
		if reg != nil {
			if err := registerMap(reg, spec, m); err != nil {
				return fail(fmt.Errorf("pass the map of %s on to the next master: %w", spec, err))
			}
		}
	}
	s.progs, s.key = progs, uint32(gen%2)
	return nil
}

// registerMap hands a copy of m's fd to reg for the next master. The
// os.File is a dup of its own: its finalizer must not close the fd
// cilium/ebpf owns.
func registerMap(reg Registry, spec Spec, m *ebpf.Map) error {
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), mapName(spec))
	defer f.Close()
	return reg.AddFile(mapName(spec), f) // keeps a dup of its own
}

// groupMap returns the inherited map of spec's group, or a new one.
func groupMap(reg Registry, spec Spec) (*ebpf.Map, error) {
	if reg != nil {
		f, err := reg.File(mapName(spec))
		if err != nil {
			return nil, fmt.Errorf("inherit the map of %s: %w", spec, err)
		}
		if f != nil {
			// Close-on-exec, like every fd of a master but the sockets it
			// passes on (dup(2) would clear it): a worker, hook or smoke
			// test given the map could steer users' connections.
			fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("inherit the map of %s: %w", spec, err)
			}
			m, err := ebpf.NewMapFromFD(fd)
			if err != nil {
				return nil, fmt.Errorf("inherit the map of %s: %w", spec, err)
			}
			return m, nil
		}
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "baton_group", Type: ebpf.ReusePortSockArray, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if errors.Is(err, unix.EPERM) && !bpfCapable() {
		// cilium/ebpf suggests raising RLIMIT_MEMLOCK on every EPERM;
		// without the capability that is not the cause.
		return nil, fmt.Errorf("create a REUSEPORT_SOCKARRAY map: %w: the process has neither CAP_BPF nor CAP_SYS_ADMIN (run as root or grant CAP_BPF)", unix.EPERM)
	}
	if err != nil {
		return nil, fmt.Errorf("create a REUSEPORT_SOCKARRAY map (needs CAP_BPF or CAP_SYS_ADMIN, Linux >= 4.19): %w", err)
	}
	return m, nil
}

// bpfCapable reports whether this process's effective capabilities hold
// CAP_BPF or CAP_SYS_ADMIN (false where /proc/self/status cannot tell).
func bpfCapable() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && eff&(1<<unix.CAP_BPF|1<<unix.CAP_SYS_ADMIN) != 0
		}
	}
	return false
}

// insertSock puts f's socket at key, unless it is there already (the
// kernel refuses a socket that a map holds).
func insertSock(m *ebpf.Map, key uint32, f *os.File) error {
	var cookie uint64
	if err := control(f, func(fd int) error {
		v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		cookie = v
		return err
	}); err != nil {
		return fmt.Errorf("SO_COOKIE: %w", err)
	}
	var held uint64
	if err := m.Lookup(key, &held); err == nil && held == cookie {
		return nil
	}
	return control(f, func(fd int) error { return m.Update(key, uint64(fd), ebpf.UpdateAny) })
}

// Claim makes each map hold this generation's socket at its key and
// nothing at the other one, unless keepOther (a candidate or a draining
// generation is still live). It is the re-steer after a foreign socket or
// a leftover was found, and runs before every upgrade. No-op on classic
// BPF.
func (s *Set) Claim(keepOther bool) error {
	for i, p := range s.progs {
		if p == nil {
			continue
		}
		if err := insertSock(p.m, s.key, s.files[i]); err != nil {
			return fmt.Errorf("re-insert %s into its map: %w", s.specs[i], err)
		}
		if keepOther {
			continue
		}
		if err := p.m.Delete(s.key ^ 1); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear the other generation's key of %s: %w", s.specs[i], err)
		}
	}
	return nil
}

// EBPF reports whether every group of s is steered by the eBPF program.
func (s *Set) EBPF() bool {
	if len(s.progs) == 0 {
		return false
	}
	for _, p := range s.progs {
		if p == nil {
			return false
		}
	}
	return true
}

// Steer attaches to every group of s a program that sends canaryPct
// percent (0..100) of users' new connections to the other generation's
// socket and the rest to this generation's, and baton's probes to the
// other's only: Steer(0) keeps users here, Steer(100) is the switch. It
// uses the eBPF program where UseEBPF succeeded and the classic one
// elsewhere. The kernel swaps a group's program atomically.
func (s *Set) Steer(canaryPct int) error {
	for i, f := range s.files {
		var p *steerProg
		if i < len(s.progs) {
			p = s.progs[i]
		}
		if p == nil {
			if err := attachClassic(f, Steer(0, 1, canaryPct)); err != nil {
				return fmt.Errorf("attach the steering program (SO_ATTACH_REUSEPORT_CBPF) to %s: %w", s.specs[i], err)
			}
			continue
		}
		l, err := p.program(s.key, s.key^1, canaryPct)
		if err != nil {
			return fmt.Errorf("load the eBPF steering program for %s: %w", s.specs[i], err)
		}
		p.migrate = l.migrate
		err = control(f, func(fd int) error {
			return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, l.prog.FD())
		})
		if err != nil {
			return fmt.Errorf("attach the steering program (SO_ATTACH_REUSEPORT_EBPF) to %s: %w", s.specs[i], err)
		}
	}
	return nil
}

// PrepareSteer loads, for every eBPF-steered group of s, the programs
// Steer will attach for each of canaryPcts, without attaching any, so that
// a later Steer only attaches (a master prepares its next upgrade's
// steering while it is idle). Classic groups need nothing. Errors name the
// group; a failed load is tried again by Steer.
func (s *Set) PrepareSteer(canaryPcts ...int) error {
	for i, p := range s.progs {
		if p == nil {
			continue
		}
		for _, pct := range canaryPcts {
			if _, err := p.program(s.key, s.key^1, pct); err != nil {
				return fmt.Errorf("load the eBPF steering program for %s: %w", s.specs[i], err)
			}
		}
	}
	return nil
}

func attachClassic(f *os.File, prog []unix.SockFilter) error {
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return control(f, func(fd int) error {
		return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fp)
	})
}

// steerInsns is the program described at the top of this file.
func steerInsns(m *ebpf.Map, live, cand uint32, canaryPct int) (asm.Instructions, error) {
	src := ProbeSource.As4()
	// The source address as a 32-bit load from packet bytes reads it
	// (network order in memory, so native order here).
	probeIP := int32(binary.NativeEndian.Uint32(src[:]))
	sel := func(key uint32, label string) asm.Instructions {
		ld := asm.LoadMapPtr(asm.R2, 0)
		if err := ld.AssociateMap(m); err != nil {
			panic(err) // only for a map without an fd, which m is not
		}
		return asm.Instructions{
			asm.StoreImm(asm.RFP, -20, int64(key), asm.Word).WithSymbol(label),
			asm.Mov.Reg(asm.R1, asm.R6),
			ld,
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -20),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnSkSelectReuseport.Call(),
			asm.JEq.Imm(asm.R0, 0, "pass"),
		}
	}
	first, second := live, cand
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// The first 16 bytes of the network header: version and, for
		// IPv4, the source address.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -16),
		asm.Mov.Imm(asm.R4, 16),
		asm.Mov.Imm(asm.R5, bpfHdrStartNet),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, "users"),
		asm.LoadMem(asm.R1, asm.RFP, -16, asm.Byte),
		asm.RSh.Imm(asm.R1, 4),
		asm.JNE.Imm(asm.R1, 4, "users"),
		asm.LoadMem(asm.R1, asm.RFP, -4, asm.Word),
		asm.JEq.Imm32(asm.R1, probeIP, "probe"),
	}
	users := asm.Instructions{asm.Mov.Imm(asm.R0, 0).WithSymbol("users")} // a label of its own
	switch {
	case canaryPct >= 100:
		first, second = cand, live
	case canaryPct > 0:
		users = append(users,
			asm.LoadMem(asm.R1, asm.R6, mdHash, asm.Word),
			asm.Mod.Imm(asm.R1, 100),
			asm.JLT.Imm(asm.R1, int32(canaryPct), "canary"),
		)
	}
	insns = append(insns, users...)
	insns = append(insns, sel(first, "first")...)
	insns = append(insns, sel(second, "second")...)
	insns = append(insns, asm.Ja.Label("drop"))
	if canaryPct > 0 && canaryPct < 100 {
		insns = append(insns, sel(cand, "canary")...)
		insns = append(insns, sel(live, "canary_second")...)
		insns = append(insns, asm.Ja.Label("drop"))
	}
	insns = append(insns, sel(cand, "probe")...)
	insns = append(insns,
		asm.Mov.Imm(asm.R0, 0).WithSymbol("drop"), // SK_DROP
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("pass"), // SK_PASS
		asm.Return(),
	)
	return insns, nil
}

// loadSteer loads the program with the migrate attach type where the
// kernel has it, else as a plain select program; migrate says which. The
// fallback is not silent: Set.Migration reports it, and the master logs it
// at start and when a generation's socket closes.
func loadSteer(m *ebpf.Map, live, cand uint32, canaryPct int) (p *ebpf.Program, migrate bool, err error) {
	insns, err := steerInsns(m, live, cand, canaryPct)
	if err != nil {
		return nil, false, err
	}
	spec := &ebpf.ProgramSpec{Name: "baton_steer", Type: ebpf.SkReuseport, AttachType: ebpf.AttachSkReuseportSelectOrMigrate,
		Instructions: insns, License: "MIT"}
	p, err = ebpf.NewProgram(spec)
	if err == nil {
		return p, true, nil
	}
	spec.AttachType = ebpf.AttachSkReuseportSelect
	p, err2 := ebpf.NewProgram(spec)
	if err2 != nil {
		return nil, false, fmt.Errorf("%w (and as SELECT_OR_MIGRATE: %v)", err2, err)
	}
	return p, false, nil
}

// Migration says how connections still queued on, or in the handshake
// with, a socket of s's groups survive its close: "ebpf" (every group's
// program is SELECT_OR_MIGRATE), "sysctl" (net.ipv4.tcp_migrate_req=1),
// or "none" (they are reset: baton waits for the accept queue to empty
// first, which does not see handshakes in flight). Meaningful once Steer
// has run in this process; before, an eBPF group counts by the sysctl.
func (s *Set) Migration() string {
	all := len(s.progs) > 0
	for _, p := range s.progs {
		if p == nil || !p.migrate {
			all = false
		}
	}
	if all {
		return "ebpf"
	}
	if on, err := MigrateReq(); err == nil && on {
		return "sysctl"
	}
	return "none"
}
