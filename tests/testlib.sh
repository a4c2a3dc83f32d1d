# shellcheck shell=sh
# What the shell tests (tests/manpage.sh, tests/install.sh, tests/demo.sh;
# tests/run.sh for $tmp and the counters) share, as tests/testlib.h does
# for the C ones.  From the repository root, name the test and source this
# file:
#
#     tl_name=demo
#     . tests/testlib.sh
#
# $tmp is then a fresh directory, removed on exit by tl_cleanup (redefine
# it to do more first).  Results: pass; fail MESSAGE; check RC MESSAGE (0
# passes); skip WHAT WHY, for a check that cannot run here (never a
# pass); in_ci says whether CI=true, where what a check needs must be
# there.  finish runs tl_before_finish (redefine it to say more after a
# failure), prints "NAME: N passed, N failed, N skipped" and exits, 1 if
# anything failed.

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dialback-${tl_name:?}.XXXXXX") || exit 1
passed=0
failed=0
skipped=0

tl_cleanup() {
	rm -rf "$tmp"
}

tl_before_finish() {
	:
}

trap 'tl_cleanup' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pass() {
	passed=$((passed + 1))
}

fail() {
	echo "$tl_name: FAIL: $*"
	failed=$((failed + 1))
}

check() {
	if [ "$1" -eq 0 ]; then
		pass
	else
		fail "$2"
	fi
}

skip() {
	echo "skip - $tl_name: $1 # $2"
	skipped=$((skipped + 1))
}

in_ci() {
	[ "${CI:-}" = true ]
}

finish() {
	tl_before_finish
	echo "$tl_name: $passed passed, $failed failed, $skipped skipped"
	[ "$failed" -eq 0 ]
	exit
}
