#!/bin/sh
# Run the unit tests, the end-to-end tests (arguments go to e2e), the
# feature tests, the -metrics tests, the man page check, the make install check and the make
# demo check, and print the sum of their "N passed, N failed, N skipped"
# lines as the very last line (a missing ", N skipped" counts as 0).  A
# skip is never a pass.
# Exits non-zero if a binary failed, reported a failure, or printed no
# summary line.  Run from the repository root (make test does).

# $tmp and the counters come from the shell tests' own library.
tl_name=run
# shellcheck source=tests/testlib.sh
. tests/testlib.sh
bad=0
summary='^(.*[^0-9])?([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?.*$'

# run NAME COMMAND...: run it with its output shown and kept, then add its
# last summary line to the totals.
run() {
	name=$1
	shift
	{ "$@"; echo $? >"$tmp/$name.rc"; } 2>&1 | tee "$tmp/$name.out"
	rc=$(cat "$tmp/$name.rc" 2>/dev/null)
	line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$tmp/$name.out" | tail -n 1)
	if [ -z "$line" ]; then
		echo "run.sh: $name printed no \"N passed, N failed\" line" >&2
		bad=1
		failed=$((failed + 1))
	else
		counts=$(printf '%s\n' "$line" | sed -E "s/$summary/\\2 \\3 \\5/")
		read -r p f s <<-END
		$counts
		END
		passed=$((passed + p))
		failed=$((failed + f))
		skipped=$((skipped + ${s:-0}))
		if [ "$f" -ne 0 ]; then
			bad=1
		fi
	fi
	if [ "$rc" != 0 ]; then
		echo "run.sh: $name exited with status ${rc:-unknown}" >&2
		bad=1
	fi
}

run unit ./tests/unit
run unit-portable ./tests/unit-portable
run e2e ./tests/e2e "$@"
# The relay's portable read/write path, which Linux runs only when told:
# the tests that move bytes, once more through it.
# And the portable poll() loop, which Linux runs only when told.
if [ $# -eq 0 ]; then
	run copy-unit env DIALBACK_NO_SPLICE=1 ./tests/unit
	# Tunnels are sealed by default; with -plaintext on both sides they
	# carry raw bytes, spliced, or copied with DIALBACK_NO_SPLICE.
	for t in echo download half_close concurrent no_fd_leak urgent_data; do
		run "plain-$t" env DIALBACK_TEST_PLAINTEXT=1 ./tests/e2e "$t"
		run "copy-$t" env DIALBACK_TEST_PLAINTEXT=1 DIALBACK_NO_SPLICE=1 \
			./tests/e2e "$t"
	done
	for t in echo concurrent user_flood garbage no_fd_leak local_down; do
		run "poll-$t" env DIALBACK_POLL=1 ./tests/e2e "$t"
	done
	for t in paths stalled cap; do
		run "poll-metrics-$t" env DIALBACK_POLL=1 ./tests/metrics "$t"
	done
fi
run features ./tests/features
run metrics ./tests/metrics
run cli sh tests/cli.sh
run manpage sh tests/manpage.sh
run install sh tests/install.sh
run demo sh tests/demo.sh

echo "$passed passed, $failed failed, $skipped skipped"
[ "$bad" -eq 0 ]
