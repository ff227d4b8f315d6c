// Package sockets is the master's side of baton's listening sockets.
//
// It parses listen specs (ParseSpec, ParseSpecs), opens them through
// tableflip's fd registry so that a re-executed master inherits them instead
// of binding again (Open), adopts sockets systemd passed to baton itself
// (TakeActivated), and lays them out for workers in the systemd
// socket-activation order: fd 3, 4, … in --listen order (Set.Files).
// For blue-green and canary, OpenGroup binds a generation's own sockets in a
// SO_REUSEPORT group instead, and Set.Steer attaches the program that
// picks one: eBPF over a map of baton's sockets where UseEBPF succeeded
// (ebpf.go), classic BPF elsewhere (reuseport.go). Members and Foreign list
// who else listens on the addresses (members.go). The worker's side is
// package listener. Linux only: every file but this one builds only on
// Linux.
package sockets
