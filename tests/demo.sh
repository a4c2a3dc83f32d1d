#!/bin/sh
# make demo, end to end: contrib/demo.sh on free ports (a DEMO_BASE from
# 20000-30000 whose four ports are not in use), in a session and process
# group of its own; once it prints "open http://...", the page is fetched
# with curl and must mention dialback; then SIGINT goes to the demo's whole
# process group, as a terminal's Ctrl-C does, and the demo must exit 0
# within 10 s leaving no process behind.  Without curl the fetch is
# skipped, except with CI=true, where it fails.  The demo is killed,
# group and session, whatever happens.  Last line: "demo: N passed, N
# failed, N skipped".  Run from anywhere.

cd "$(dirname "$0")/.." || exit 1
tl_name=demo
# shellcheck source=tests/testlib.sh
. tests/testlib.sh
pid=""
pgid=""

# kill_all: SIGKILL whatever of the demo still runs.  setsid made the demo
# a session leader, so its session ID is its PID, and every process it
# started (in whatever process group) is in that session.
kill_all() {
	if [ -n "$pid" ]; then
		kill -KILL "-${pgid:-$pid}" 2>/dev/null
		pkill -KILL -s "$pid" 2>/dev/null
	fi
}

# shellcheck disable=SC2317  # called by testlib.sh's EXIT trap
tl_cleanup() {
	kill_all
	rm -rf "$tmp"
}

tl_before_finish() {
	if [ "$failed" -ne 0 ] && [ -f "$tmp/log" ]; then
		echo "demo: its output:"
		sed 's/^/demo:   /' "$tmp/log"
	fi
}

# port_used PORT: PORT is some TCP socket's local port (/proc/net/tcp and
# tcp6 list it in hex, after the address); false where /proc lacks them.
port_used() {
	hex=$(printf ':%04X ' "$1")
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
		awk '{ print $2 " " }' | grep -q -- "$hex"
}

# pick_base: a DEMO_BASE whose ports (+7, +8, +9, +80) look free.
pick_base() {
	seed=$(( ($$ * 7919 + $(date +%s)) % 10000 ))
	tries=0
	while [ "$tries" -lt 50 ]; do
		b=$((20000 + (seed + tries * 173) % 10000))
		if ! port_used $((b + 7)) && ! port_used $((b + 8)) \
		    && ! port_used $((b + 9)) && ! port_used $((b + 80)); then
			echo "$b"
			return 0
		fi
		tries=$((tries + 1))
	done
	return 1
}

# The demo runs in the background, where a non-interactive shell starts
# it with SIGINT ignored, and an ignored signal cannot be trapped: undo
# that, since the point is how the demo takes a Ctrl-C.
if env --default-signal=INT true 2>/dev/null; then
	unignore="env"
elif command -v perl >/dev/null 2>&1; then
	unignore="perl"
else
	if in_ci; then
		check 1 "neither env --default-signal nor perl, and CI=true"
	else
		skip "the demo" "neither env --default-signal nor perl to let \
the demo see SIGINT"
	fi
	finish
fi
if ! command -v setsid >/dev/null 2>&1; then
	if in_ci; then
		check 1 "no setsid, and CI=true"
	else
		skip "the demo" "no setsid"
	fi
	finish
fi

# launch BASE: become the demo on DEMO_BASE=BASE, a session leader with
# SIGINT at its default (run it as an asynchronous list).
launch() {
	if [ "$unignore" = env ]; then
		DEMO_BASE=$1 exec setsid env --default-signal=INT sh contrib/demo.sh
	fi
	# shellcheck disable=SC2016
	DEMO_BASE=$1 exec setsid perl -e '$SIG{INT} = "DEFAULT"; exec @ARGV or die' \
	    sh contrib/demo.sh
}

# Start it, and wait for its address; a port taken meanwhile is retried.
url=""
for _ in 1 2 3; do
	base=$(pick_base) || { check 1 "no free DEMO_BASE found"; finish; }
	launch "$base" >"$tmp/log" 2>&1 &
	pid=$!
	pgid=""
	tries=0
	while [ "$tries" -lt 300 ]; do
		[ -n "$pgid" ] ||
			pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')
		url=$(sed -n 's|^open \(http://[^ ]*\).*|\1|p' "$tmp/log" | head -n 1)
		if [ -n "$url" ] || ! kill -0 "$pid" 2>/dev/null; then
			break
		fi
		tries=$((tries + 1))
		sleep 0.1
	done
	if [ -n "$url" ] || ! grep -q 'is a port taken' "$tmp/log"; then
		break
	fi
	wait "$pid" 2>/dev/null
	kill_all
	pid=""
done
if [ -z "$url" ]; then
	kill_all
	check 1 "no \"open http://\" line within 30 s (DEMO_BASE=$base)"
	finish
fi
check 0 ""
[ "$pgid" = "$pid" ]
check $? "the demo's process group is ${pgid:-unknown}, not its PID $pid"

if command -v curl >/dev/null 2>&1; then
	body=$(curl -fsS --max-time 10 "$url" 2>&1)
	rc=$?
	case $body in
	*dialback*) ok=$rc ;;
	*) ok=1 ;;
	esac
	check "$ok" "curl $url: exit $rc, and the page must mention dialback:
$body"
elif in_ci; then
	check 1 "no curl, and CI=true"
else
	skip "the page" "no curl to fetch it"
fi

# Ctrl-C: SIGINT to the whole process group.
kill -INT "-$pgid"
tries=0
while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 100 ]; do
	tries=$((tries + 1))
	sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
	kill_all
	wait "$pid" 2>/dev/null
	check 1 "still running 10 s after SIGINT"
else
	wait "$pid"
	rc=$?
	check "$rc" "exited with status $rc after SIGINT, want 0"
	grep -q '^demo: stopping' "$tmp/log"
	check $? "did not print \"demo: stopping\""
fi

# Nothing it started is left: not in its session, nor anything on its
# ports or from its build tree.
sleep 0.2
left=$(pgrep -s "$pid" 2>/dev/null;
	pgrep -f "127\\.0\\.0\\.1:($((base + 7))|$((base + 8))|$((base + 9))|$((base + 80)))([^0-9]|\$)" 2>/dev/null)
[ -z "$left" ]
check $? "processes left after the demo exited:
$(for p in $left; do ps -o pid=,args= -p "$p"; done)"
finish
