#!/bin/sh
# make demo: baton with 4 workers of examples/hello on $DEMO_ADDR, in the
# foreground until the master has stopped, whichever generation it is.
# After a reload the master that make started exits (the new one is its
# child, not make's), so this script follows the new ones through the
# control socket and stops them on Ctrl-C.
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
stopped=0
# Ctrl-C reaches the master too (same terminal); stop also covers a later
# master, which is not in this terminal's process group.
trap 'stopped=1; bin/baton stop --pid-file "$pidfile" >/dev/null 2>&1' INT TERM
bin/baton run --listen "http=$addr" --workers 4 --pid-file "$pidfile" -- bin/hello &
master=$!
wait $master
code=$?
if [ "$code" -gt 128 ] && [ "$stopped" = 1 ]; then
	wait $master # interrupted by the trap: now its real exit status
	code=$?
fi
if [ -f "$pidfile" ] && [ "$stopped" = 0 ]; then
	# Handed over to a new master: follow it until it stops.
	while [ "$stopped" = 0 ] && bin/baton status --pid-file "$pidfile" >/dev/null 2>&1; do
		sleep 1
	done
fi
[ "$stopped" = 1 ] && [ "$code" -eq 0 ] && echo "demo stopped"
exit "$code"
