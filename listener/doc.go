// Package listener is the worker side of baton: what a Go server run by
// baton (or by systemd socket activation) imports.
//
// It gives the inherited sockets by name (Listeners, Listener), says ready
// (Ready, Notify: sd_notify(3)), and serves HTTP with a drain that loses no
// request (ServeHTTP, HTTPDrainer). Servers that already speak systemd
// socket activation need none of it. The master's side of the sockets
// (listen specs, binding through tableflip) is in supervisor/sockets.
package listener
