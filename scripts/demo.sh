#!/bin/sh
# make demo: baton with 4 workers of examples/hello on $DEMO_ADDR, in the
# foreground until it stops. The process started here stays through every
# reload (masters come and go below it), so Ctrl-C reaches it and stops the
# service gracefully, whichever generation serves.
#
# Ctrl-C is a normal way to end the demo: the script then exits 0, so make
# reports no error.
set -u
addr=${DEMO_ADDR:-127.0.0.1:8080}
pidfile=bin/baton.pid
echo "baton demo on http://$addr/ (DEMO_ADDR=host:port to change); in another terminal:"
echo "  curl $addr/"
echo "  bin/baton reload --pid-file $pidfile"
echo "  bin/baton status --pid-file $pidfile"
echo "Ctrl-C stops it."
# Not exec'd: the shell waits while baton handles the Ctrl-C (it exits 0
# after a graceful stop), then says so. The trap keeps the shell from
# dying of the same Ctrl-C.
trap ':' INT TERM
bin/baton run --listen "http=$addr" --workers 4 --pid-file "$pidfile" -- bin/hello
code=$?
[ "$code" -eq 0 ] && echo "demo stopped"
exit "$code"
