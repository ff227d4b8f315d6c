#!/usr/bin/env python3
"""A baton worker in plain Python 3 (standard library only).

Run it under baton, which owns the socket and starts N copies of it:

    baton run -l 127.0.0.1:8080 -w 4 -- python3 examples/python/server.py

    curl 127.0.0.1:8080/             -> python pid=123 worker=0 generation=1
    curl '127.0.0.1:8080/?sleep=2000' -> the same after 2 s
    kill -USR2 <baton master pid>     -> new workers start; these drain

The contract is systemd socket activation: listening sockets at fd 3, 4, ...
(LISTEN_FDS of them, meant for the process whose pid is LISTEN_PID), and
"READY=1" sent as one datagram to NOTIFY_SOCKET once serving, which is
baton's default --ready notify rule. No systemd library is needed for either.

On SIGTERM (baton's default drain signal), SIGQUIT or SIGINT it drains
without failing a request: it stops accepting (queued connections stay in the
shared socket for the next generation), answers further requests on kept-alive
connections with "Connection: close", closes keep-alive connections that stay
idle past a short grace, waits for in-flight requests, and exits 0.
"""

import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

SD_LISTEN_FDS_START = 3
IDLE_GRACE = 1.0      # s a kept-alive connection may stay idle once draining
NEW_CONN_GRACE = 5.0  # s a new connection gets to send its first request
DRAIN_TIMEOUT = 25.0  # s, below baton's default --drain-timeout of 30 s


def log(msg):
    print(f"python[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def inherited_sockets():
    """The listening sockets baton passed, as sd_listen_fds(3) finds them."""
    # LISTEN_PID guards against a child of ours inheriting the variables and
    # taking sockets that were not meant for it.
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("python: LISTEN_PID is not this process: run me under baton")
    n = int(os.environ.get("LISTEN_FDS", "0"))
    if n < 1:
        sys.exit("python: LISTEN_FDS says no sockets were passed")
    # socket(fileno=) reads family and type from the socket itself (TCP or
    # unix). It does not touch O_NONBLOCK: the flag lives on the open file
    # description that the master and every worker share, so it must stay as
    # baton set it (non-blocking). accept() may then raise BlockingIOError
    # when another worker took the connection; socketserver ignores that.
    return [socket.socket(fileno=fd)
            for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n)]


def sd_notify(msg):
    """Send one sd_notify(3) datagram; no-op outside a supervisor."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace, per sd_notify(3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(msg.encode())


class Connections:
    """Every accepted connection and whether it is mid-request.

    Draining must not close a connection that has a request under way, nor a
    new one whose first request has not been read yet: both would fail a
    request the client cannot safely retry. Only a kept-alive connection idle
    between requests may be closed; clients retry a request that met such a
    close (RFC 9112 section 9.3.1).
    """

    NEW, BUSY, IDLE = "new", "busy", "idle"

    def __init__(self):
        self.cond = threading.Condition()
        self.conns = {}  # socket -> [state, since]
        self.draining = False

    def add(self, sock):
        with self.cond:
            self.conns[sock] = [self.NEW, time.monotonic()]

    def remove(self, sock):
        with self.cond:
            self.conns.pop(sock, None)
            self.cond.notify_all()

    def set(self, sock, state):
        """Record a state change; False if the connection was closed."""
        with self.cond:
            entry = self.conns.get(sock)
            if entry is None:
                return False
            entry[0], entry[1] = state, time.monotonic()
            self.cond.notify_all()
            return True

    def drain(self, timeout):
        """Wait for every connection to go; close idle ones after a grace."""
        start = time.monotonic()
        with self.cond:
            self.draining = True
            while self.conns:
                now = time.monotonic()
                if now - start >= timeout:
                    return False
                if now - start >= IDLE_GRACE:
                    for sock, (state, since) in list(self.conns.items()):
                        if state == self.IDLE or (state == self.NEW and now - since >= NEW_CONN_GRACE):
                            # Forgotten first, so a request that still slips
                            # in is not served on a half-closed socket.
                            del self.conns[sock]
                            try:
                                sock.shutdown(socket.SHUT_RDWR)  # wakes its reader
                            except OSError:
                                pass
                self.cond.wait(0.05)
            return True


CONNS = Connections()
BODY = "python pid={} worker={} generation={}\n".format(
    os.getpid(), os.environ.get("BATON_WORKER", "?"), os.environ.get("BATON_GENERATION", "?")
).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as most clients use it
    timeout = 60                   # idle keep-alive / slow client bound

    def handle_one_request(self):
        if not CONNS.set(self.request, Connections.IDLE if self.served else Connections.NEW):
            self.close_connection = True
            return
        # Busy from the first byte of the request line: the drainer leaves
        # this connection alone from here on.
        try:
            started = self.rfile.peek(1)
        except OSError:  # idle timeout, or the client reset
            started = b""
        if not started or not CONNS.set(self.request, Connections.BUSY):
            self.close_connection = True
            return
        super().handle_one_request()
        self.served = True

    def setup(self):
        super().setup()
        self.served = False

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        try:
            ms = int(query.get("sleep", ["0"])[0])
        except ValueError:
            ms = 0
        if ms > 0:
            time.sleep(ms / 1000)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        if CONNS.draining:
            # The client leaves after this answer and reconnects to the
            # next generation; send_header makes us close after it too.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, fmt, *args):
        pass  # no access log: one line per request is noise here


class Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    """socketserver on an already listening socket: no bind, no listen()."""

    daemon_threads = True  # Connections, not thread joins, tracks the work

    def __init__(self, sock):
        super().__init__(sock.getsockname(), Handler)
        self.socket = sock

    def fileno(self):
        return self.socket.fileno()

    def get_request(self):
        return self.socket.accept()

    def process_request(self, request, client_address):
        # Registered in the accepting thread, so once serve_forever has
        # returned every accepted connection is known to the drainer.
        CONNS.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()
        CONNS.remove(request)

    def server_close(self):
        self.socket.close()

    def handle_error(self, request, client_address):
        log(f"connection error: {sys.exc_info()[1]!r}")


def main():
    # Signals go to the main thread only, which waits for them with sigwait;
    # threads started from here inherit the blocked mask.
    stop_signals = {signal.SIGTERM, signal.SIGQUIT, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    servers = [Server(s) for s in inherited_sockets()]
    threads = [threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
               for srv in servers]
    for t in threads:
        t.start()
    sd_notify("READY=1")

    sig = signal.sigwait(stop_signals)
    log(f"{signal.Signals(sig).name}: draining")
    CONNS.draining = True  # answers from now on carry Connection: close
    for srv in servers:
        srv.shutdown()      # stop accepting; queued connections stay for others
        srv.server_close()  # our copy of the fd only: the master keeps the socket
    if not CONNS.drain(DRAIN_TIMEOUT):
        log("drain timeout: exiting with requests in flight")
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
