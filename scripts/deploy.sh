#!/usr/bin/env bash
# deploy.sh [--verify URL] RELEASE_DIR — Capistrano-style deploy under baton.
#
# Points APP_ROOT/current at RELEASE_DIR atomically, asks baton to upgrade,
# and waits for the outcome. If the new release does not come up, current
# is pointed back at the previous release (baton has already rolled the
# workers back) and the script exits non-zero with baton's reason.
#
# With --verify URL (for a staging host, before the real deploy), the upgrade
# runs under `baton verify --url URL` load instead: if any request fails or
# the upgrade fails, current is pointed back, the previous release is
# reloaded (it may already have been replaced), and the script exits 1.
#
# Environment:
#   APP_ROOT       directory holding the `current` symlink (default: parent of RELEASE_DIR's parent,
#                  i.e. /srv/app for /srv/app/releases/42)
#   BATON          baton binary (default: baton on $PATH, else bin/baton of the checkout
#                  this script is in, as make build leaves it)
#   BATON_CONTROL  or BATON_PID_FILE: how to reach the master (see baton reload --help)
#   RELOAD_TIMEOUT how long to wait for the new generation (default 10m)
#   VERIFY_FLAGS   more flags for baton verify, e.g. "--slow /report --version-header X-Release"
set -euo pipefail

die() { echo "deploy: $*" >&2; exit 1; }

verify_url=""
if [ "${1:-}" = "--verify" ] && [ $# -ge 2 ]; then
	verify_url=$2
	shift 2
fi
[ $# -eq 1 ] || die "usage: deploy.sh [--verify URL] RELEASE_DIR"
release=$(cd "$1" 2>/dev/null && pwd -P) || die "release directory $1 does not exist"
app_root=${APP_ROOT:-$(dirname "$(dirname "$release")")}
current="$app_root/current"

# Find baton and make sure it runs before anything is touched: a deploy that
# cannot ask baton must not move current (nor "roll back" a release that was
# never tried).
if [ -n "${BATON:-}" ]; then
	baton=$BATON
elif command -v baton >/dev/null 2>&1; then
	baton=baton
else
	# A checkout's bin/ (scripts/deploy.sh), or an installed tree's
	# (PREFIX/share/baton/deploy.sh beside PREFIX/bin/baton).
	here=$(cd "$(dirname "$0")" && pwd)
	baton="$here/../bin/baton"
	[ -x "$baton" ] || baton="$here/../../bin/baton"
fi
command -v "$baton" >/dev/null 2>&1 ||
	die "baton not found (tried ${BATON:-baton on \$PATH, then $baton}): run make install, or set BATON=/path/to/baton; nothing changed"
ver=$("$baton" --version 2>&1) ||
	die "cannot run $baton --version: $(echo "$ver" | head -n 1); nothing changed"

previous=""
if [ -L "$current" ]; then
	previous=$(readlink "$current")
fi

# Swap atomically: a new symlink under a temporary name, renamed over the
# old one (rename(2) replaces it in one step; ln -sf would unlink first).
swap() {
	local tmp="$app_root/.current.$$"
	ln -sfn "$1" "$tmp"
	mv -T "$tmp" "$current"
}

swap "$release"
echo "deploy: current -> $release ($ver)"

set +e
if [ -n "$verify_url" ]; then
	# VERIFY_FLAGS is a list of flags: split on purpose.
	# shellcheck disable=SC2086
	out=$("$baton" verify --url "$verify_url" --timeout "${RELOAD_TIMEOUT:-10m}" ${VERIFY_FLAGS:-} 2>&1)
else
	out=$("$baton" reload --timeout "${RELOAD_TIMEOUT:-10m}" 2>&1)
fi
code=$?
set -e
echo "$out"

if [ $code -eq 0 ]; then
	echo "deploy: $release is live"
	exit 0
fi
# baton verify exits 4 when the service did not answer before any upgrade:
# nothing was upgraded, as with 2.
if [ $code -ne 1 ] && [ $code -ne 2 ] && [ $code -ne 4 ]; then
	# No answer in time (3) or worse: the release may still take over, so
	# current stays where it points; moving it back would make the next
	# reload quietly revert to the old release.
	die "outcome unknown (baton exit $code); current still -> $release; check 'baton status' before deploying again"
fi
if [ -n "$previous" ]; then
	swap "$previous"
	echo "deploy: current -> $previous (rolled back)" >&2
else
	rm -f "$current"
	echo "deploy: removed current (there was no previous release)" >&2
fi
if [ -n "$verify_url" ] && [ $code -eq 1 ]; then
	# The new release may have taken over and then failed requests.
	[ -n "$previous" ] || die "release $release failed verification; no previous release to go back to"
	"$baton" reload --timeout "${RELOAD_TIMEOUT:-10m}" ||
		die "release $release failed verification, and reloading $previous failed too; check 'baton status'"
	die "release $release failed verification (see above); $previous serves again"
fi
case $code in
	1) die "release $release failed to start; the previous generation keeps serving" ;;
	2) die "upgrade not started (see above); nothing changed" ;;
	4) die "the service did not answer before the upgrade (see above); nothing was upgraded" ;;
	*) die "outcome unknown (baton reload exit $code); check 'baton status'" ;;
esac
