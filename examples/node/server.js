#!/usr/bin/env node
// A baton worker in plain Node.js (v20, core modules only).
//
// Run it under baton, which owns the socket and starts N copies of it:
//
//   baton run -l 127.0.0.1:8080 -w 4 \
//     --ready 'exec:grep -qF " @${NOTIFY_SOCKET#@}/$BATON_WORKER_PID/ready" /proc/net/unix' \
//     -- node examples/node/server.js
//
//   curl 127.0.0.1:8080/             -> node pid=123 worker=0 generation=1
//   curl '127.0.0.1:8080/?sleep=2000' -> the same after 2 s
//   kill -USR2 <baton master pid>     -> new workers start; these drain
//
// Sockets: baton passes them systemd-style at fd 3, 4, ... (LISTEN_FDS of
// them, for the process whose pid is LISTEN_PID); server.listen({fd}) takes
// them as they are.
//
// Readiness: baton's default rule wants "READY=1" as a datagram on the unix
// socket NOTIFY_SOCKET, and Node's core has no unix datagram sockets. Instead,
// once it serves, this server listens on an abstract unix stream socket named
// "$NOTIFY_SOCKET/<its pid>/ready" (shown in /proc/net/unix with a leading
// '@'), and the --ready exec: probe above (run by baton every 100 ms with
// BATON_WORKER_PID set, through /bin/sh) looks for that name there. Why this rule and not another:
//   - it says "this very worker is serving", which probing the shared port
//     cannot (any worker, old or new, may answer), and which --ready delay:
//     only guesses;
//   - the name vanishes with the process, so unlike a marker file nothing is
//     left behind for a later process with a recycled pid, and there is no
//     directory to configure or clean up;
//   - NOTIFY_SOCKET is random per baton master, so names cannot clash across
//     masters or containers sharing a network namespace;
//   - the probe needs only sh and grep (no systemd-notify, which may be
//     missing and would report its own pid, nor python or socat).
//
// On SIGTERM (baton's default drain signal), SIGQUIT or SIGINT it drains
// without failing a request: it stops accepting (queued connections stay in
// the shared socket for the next generation), answers further requests with
// "Connection: close", closes kept-alive connections that stay idle past a
// short grace, waits for in-flight requests, and exits 0.
'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');

const SD_LISTEN_FDS_START = 3;
const IDLE_GRACE_MS = 1000; // a kept-alive connection may stay idle this long once draining
const NEW_CONN_GRACE_MS = 5000; // a new connection gets this long to send its first request
const DRAIN_TIMEOUT_MS = 25000; // below baton's default --drain-timeout of 30 s

const log = (msg) => process.stderr.write(`node[${process.pid}]: ${msg}\n`);

// LISTEN_PID guards against a child of ours inheriting the variables and
// taking sockets that were not meant for it.
if (process.env.LISTEN_PID !== String(process.pid)) {
  log('LISTEN_PID is not this process: run me under baton');
  process.exit(1);
}
const nfds = Number.parseInt(process.env.LISTEN_FDS || '0', 10);
if (!(nfds >= 1)) {
  log('LISTEN_FDS says no sockets were passed');
  process.exit(1);
}

const body = `node pid=${process.pid} worker=${process.env.BATON_WORKER ?? '?'} ` +
  `generation=${process.env.BATON_GENERATION ?? '?'}\n`;
let draining = false;

// conns tracks every connection: busy while a request is under way, and
// whether it has finished one. Draining must not close a connection that has
// a request under way, nor a new one whose first request has not arrived:
// both would fail a request the client cannot safely retry. Only a kept-alive
// connection idle between requests may be closed; clients retry a request
// that met such a close (RFC 9112 section 9.3.1).
const conns = new Map(); // socket -> {busy, served, since}
let connsChanged = () => {};

function handler(req, res) {
  const c = conns.get(req.socket);
  if (c) {
    c.busy++;
    res.on('close', () => {
      c.busy--;
      c.served = true;
      c.since = Date.now();
      connsChanged();
    });
  }
  let ms = 0;
  try {
    ms = Number.parseInt(new URL(req.url, 'http://x').searchParams.get('sleep') || '0', 10);
  } catch {} // an unparsable URL answers at once instead of killing the worker
  setTimeout(() => {
    // Once draining, the client leaves after this answer and reconnects to
    // the next generation; Node closes the socket after it.
    const headers = { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
    if (draining) headers.Connection = 'close';
    res.writeHead(200, headers);
    res.end(body);
  }, ms > 0 ? ms : 0);
}

// Keep the shared accept queue as long as baton made it: listen() on an
// already listening socket resets its backlog, Node's default being 511.
let backlog = 511;
try {
  backlog = Number.parseInt(fs.readFileSync('/proc/sys/net/core/somaxconn', 'utf8'), 10) || backlog;
} catch {}

const servers = [];
const listening = [];
for (let fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + nfds; fd++) {
  const srv = http.createServer(handler);
  srv.on('connection', (sock) => {
    conns.set(sock, { busy: 0, served: false, since: Date.now() });
    sock.on('close', () => {
      conns.delete(sock);
      connsChanged();
    });
  });
  listening.push(new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen({ fd, backlog }, () => {
      srv.off('error', reject);
      // Later errors (accept() out of file descriptors, ...) are logged:
      // unhandled, they would end the worker and every request it holds.
      srv.on('error', (err) => log(`server: ${err.message}`));
      resolve();
    });
  }));
  servers.push(srv);
}

let readySock = null;
Promise.all(listening).then(() => {
  const ns = process.env.NOTIFY_SOCKET || '';
  if (!ns) return; // not under baton: nobody to tell
  // '\0' puts the name in the abstract namespace (shown as '@' in
  // /proc/net/unix). Nothing ever connects to it.
  readySock = net.createServer((s) => s.destroy());
  readySock.listen(`\0${ns.replace(/^@/, '')}/${process.pid}/ready`);
  readySock.unref();
}, (err) => {
  log(`listen on inherited socket: ${err.message}`);
  process.exit(1);
});

function drain(signal) {
  if (draining) return;
  draining = true;
  log(`${signal}: draining`);
  if (readySock) readySock.close();
  // net.Server's close stops accepting and leaves connections alone.
  // http.Server's close (Node >= 19) would also close every connection
  // without a request under way, new ones included: a client whose first
  // request was still in flight would see its connection reset.
  for (const srv of servers) net.Server.prototype.close.call(srv);

  const start = Date.now();
  const hardStop = setTimeout(() => {
    log('drain timeout: exiting with requests in flight');
    process.exit(1);
  }, DRAIN_TIMEOUT_MS);
  hardStop.unref();
  let timer = null;
  const check = () => {
    if (conns.size === 0) process.exit(0);
    const now = Date.now();
    if (now - start >= IDLE_GRACE_MS) {
      for (const [sock, c] of conns) {
        const idle = c.busy === 0 && (c.served || now - c.since >= NEW_CONN_GRACE_MS);
        if (idle) {
          conns.delete(sock);
          sock.destroy();
        }
      }
      if (conns.size === 0) process.exit(0);
    }
    // Look again when a connection changes, and at least every 100 ms for
    // the grace periods to run out.
    if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        check();
      }, 100);
    }
  };
  connsChanged = check;
  check();
}

for (const sig of ['SIGTERM', 'SIGQUIT', 'SIGINT']) process.on(sig, () => drain(sig));
