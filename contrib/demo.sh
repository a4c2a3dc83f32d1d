#!/bin/sh
# make demo: dialback on one machine, on loopback only.  A small web page
# (tests/svc http) listens on one port, ./server on three more, and
# ./client joins them; the page is then reachable at the server's public
# port, through the tunnel.  Ctrl-C (SIGINT) or SIGTERM stops everything
# this script started and exits 0.
#
# Ports: DEMO_BASE (default 18000) + 9 control, + 8 tunnel, + 7 public,
# + 80 the page.  Run from anywhere; MAKE names the make to build with.

cd "$(dirname "$0")/.." || exit 1

base=${DEMO_BASE:-18000}
case $base in
'' | *[!0-9]*)
	echo "demo: DEMO_BASE=$base: want a number" >&2
	exit 2
	;;
esac
if [ "$base" -lt 1024 ] || [ "$base" -gt 65400 ]; then
	echo "demo: DEMO_BASE=$base: want 1024 to 65400" >&2
	exit 2
fi
control=$((base + 9))
tunnel=$((base + 8))
public=$((base + 7))
page=$((base + 80))
ip=127.0.0.1

${MAKE:-make} -s all tests/svc || exit 1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dialback-demo.XXXXXX") || exit 1
procs=""     # the programs, stopped by signal
loggers=""   # their log readers, which end at the programs' EOF
ticker=""

cleanup() {
	for pid in $ticker $procs; do
		kill "$pid" 2>/dev/null
	done
	for pid in $ticker $procs $loggers; do
		wait "$pid" 2>/dev/null
	done
	rm -rf "$tmp"
}

stop() {
	echo "demo: stopping"
	cleanup
	exit 0
}

fail() {
	echo "demo: $*" >&2
	cleanup
	exit 1
}

trap stop INT TERM
# Background jobs in process groups of their own: Ctrl-C then reaches this
# script alone, and stop() ends them in order, instead of racing them to
# the signal and taking their exit for a crash.
set -m 2>/dev/null

# start NAME COMMAND...: run COMMAND with stdout and stderr going to the
# terminal, each line prefixed with NAME, and to $tmp/NAME.log.
start() {
	name=$1
	shift
	mkfifo "$tmp/$name.fifo" || fail "mkfifo failed"
	while IFS= read -r line; do
		printf '%-6s | %s\n' "$name" "$line"
		printf '%s\n' "$line" >>"$tmp/$name.log"
	done <"$tmp/$name.fifo" &
	loggers="$loggers $!"
	"$@" >"$tmp/$name.fifo" 2>&1 &
	pid=$!
	procs="$procs $pid"
}

# await NAME PID PATTERN: wait up to 10 s for PATTERN in NAME's log.
await() {
	tries=0
	while ! grep -q "$3" "$tmp/$1.log" 2>/dev/null; do
		if ! kill -0 "$2" 2>/dev/null; then
			fail "$1 exited (is a port taken? try DEMO_BASE=28000 make demo)"
		fi
		tries=$((tries + 1))
		if [ "$tries" -gt 100 ]; then
			fail "$1 did not get ready in 10 s"
		fi
		sleep 0.1 2>/dev/null || sleep 1
	done
}

start page ./tests/svc http "$ip:$page" contrib/demo
page_pid=$pid
await page "$page_pid" '^ready$'

start server ./server -control "$ip:$control" -tunnel "$ip:$tunnel" \
	-public "$ip:$public" -token demo
server_pid=$pid
await server "$server_pid" 'listening'

start client ./client -remote "$ip:$control" -local "$ip:$page" -token demo
client_pid=$pid
await client "$client_pid" 'forwarding'

echo
echo "demo: the page listens on $ip:$page; the server's public port"
echo "demo: $public reaches it only through the client's tunnel."
echo "open http://$ip:$public/"
echo "demo: Ctrl-C stops the demo."
echo

# Wait in a way a trapped signal interrupts at once (wait returns early;
# a foreground sleep would delay the trap until it ends).
while kill -0 "$page_pid" 2>/dev/null && kill -0 "$server_pid" 2>/dev/null \
    && kill -0 "$client_pid" 2>/dev/null; do
	sleep 1 &
	ticker=$!
	wait "$ticker"
	ticker=""
done
fail "a process stopped by itself; stopping the rest"
