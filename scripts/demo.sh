#!/bin/sh
# make demo: baton with 4 workers of examples/hello on $DEMO_ADDR, in the
# foreground until the master has stopped, whichever generation it is.
# After a reload the master that make started exits (the new one is its
# child, not make's), so this script follows the new ones through the
# control socket and stops them on Ctrl-C.
set -u
addr=${DEMO_ADDR:-127.0.0.1:8080}
pidfile=bin/baton.pid
echo "baton demo on http://$addr/"
echo "  curl $addr/ ; bin/baton reload --pid-file $pidfile ; bin/baton status --pid-file $pidfile ; Ctrl-C stops"
bin/baton run --listen "http=$addr" --workers 4 --pid-file "$pidfile" -- bin/hello &
trap 'bin/baton stop --pid-file "$pidfile" >/dev/null 2>&1' INT TERM
wait $!
code=$?
[ -f "$pidfile" ] || exit "$code" # stopped (or never started): its exit status
while bin/baton status --pid-file "$pidfile" >/dev/null 2>&1; do
	sleep 1
done
