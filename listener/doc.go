// Package listener owns baton's listening sockets.
//
// On the master side it parses listen specs (ParseSpec), opens them through
// tableflip's fd registry so that a re-executed master inherits them instead
// of binding again (Open), and lays them out for workers in the systemd
// socket-activation order: fd 3, 4, … in --listen order.
//
// On the worker side it gives Go servers the inherited sockets by name
// (Listeners, Listener) and the readiness call (Ready). Servers that already
// speak systemd socket activation need none of it.
package listener
