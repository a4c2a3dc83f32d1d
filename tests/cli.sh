#!/bin/sh
# The command line both programs share (common.c's flags_apply): -version,
# the name the program was run as in usage and errors, and -config FILE
# with the command line winning over it.  Processes that stay up are
# started on loopback with a deadline for the line they print.
# Last line: "cli: N passed, N failed, N skipped".  Run from the repository
# root.

cd "$(dirname "$0")/.." || exit 1
tl_name=cli
# shellcheck source=tests/testlib.sh
. tests/testlib.sh

pids=""
tl_cleanup() {
	for p in $pids; do
		kill "$p" 2>/dev/null
	done
	rm -rf "$tmp"
}

# wait_for FILE PATTERN: until FILE has a line matching PATTERN, for at
# most 5 s.
wait_for() {
	i=0
	while [ $i -lt 100 ]; do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.05
		i=$((i + 1))
	done
	return 1
}

for prog in server client; do
	ln -s "$PWD/$prog" "$tmp/dialback-$prog"

	out=$("$tmp/dialback-$prog" -version 2>&1)
	check $? "dialback-$prog -version exits non-zero"
	case $out in
	"dialback-$prog 2."*" (protocol 2)") pass ;;
	*) fail "dialback-$prog -version printed '$out'" ;;
	esac

	"$tmp/dialback-$prog" -no-such-flag 2>"$tmp/err"
	[ $? -eq 2 ]
	check $? "$prog: an unknown flag does not exit 2"
	grep -q "^dialback-$prog: unknown flag '-no-such-flag' (see .*dialback-$prog -h)\$" \
		"$tmp/err"
	check $? "$prog: the usage error does not name dialback-$prog: $(cat "$tmp/err")"
	! grep -q '\./' "$tmp/err"
	check $? "$prog: the usage error names ./$prog"

	"$tmp/dialback-$prog" -h >"$tmp/usage" 2>&1
	head -n 1 "$tmp/usage" | grep -q "^usage: $tmp/dialback-$prog "
	check $? "$prog -h does not begin with the name run as"

	# An unknown word names the file and its line; exit 2.
	printf '# a comment\n\nv\nbogus 1\n' >"$tmp/bad.conf"
	"./$prog" -config "$tmp/bad.conf" 2>"$tmp/err"
	[ $? -eq 2 ]
	check $? "$prog: a config file with an unknown word does not exit 2"
	grep -q "bad.conf line 4: unknown word 'bogus'" "$tmp/err"
	check $? "$prog: the config error does not name the line: $(cat "$tmp/err")"

	# A value with no word before it ("= x", or "- x" with the word
	# missing after the dash) says so, not "unknown word ''", and keeps
	# the value to itself: it may be the token.
	printf 'v\n = s3cret\n' >"$tmp/noword.conf"
	"./$prog" -config "$tmp/noword.conf" 2>"$tmp/err"
	[ $? -eq 2 ]
	check $? "$prog: a config line with no word does not exit 2"
	grep -q "noword.conf line 2: a value with no word before it" "$tmp/err" &&
		! grep -q s3cret "$tmp/err"
	check $? "$prog: a config line with no word: $(cat "$tmp/err")"
	printf -- '-\tyes\n' >"$tmp/noword.conf"
	"./$prog" -config "$tmp/noword.conf" 2>"$tmp/err"
	grep -q "noword.conf line 1: a value with no word before it" "$tmp/err"
	check $? "$prog: a config line of a bare dash: $(cat "$tmp/err")"

	"./$prog" -config "$tmp/no-such.conf" 2>"$tmp/err"
	[ $? -eq 1 ]
	check $? "$prog: a missing config file does not exit 1"
	grep -q "no-such.conf: No such file" "$tmp/err"
	check $? "$prog: a missing config file is not named: $(cat "$tmp/err")"
done

# A server from a config file, one of its words overridden by the command
# line: it listens where the file and the flag together say.
cat >"$tmp/server.conf" <<END
# ports on loopback
control 127.0.0.1:0
tunnel = 127.0.0.1:0
-public 127.0.0.1:1
heartbeat 7
token a-token-long-enough-to-pass
END
./server -config "$tmp/server.conf" -public 127.0.0.1:0 2>"$tmp/server.log" &
pids="$pids $!"
wait_for "$tmp/server.log" "listening:"
check $? "the configured server did not start: $(cat "$tmp/server.log")"
grep -q "heartbeat 7s" "$tmp/server.log"
check $? "the config file's heartbeat was not applied: $(cat "$tmp/server.log")"
! grep -q "public 1[ ,]" "$tmp/server.log"
check $? "the config file's -public won over the command line's"
! grep -q "no -token" "$tmp/server.log"
check $? "the config file's token was not applied"

# A client from a config file: "local" lines repeat like the flag, one
# service each (named by its port in the log, as it retries a remote
# that refuses); -local on the command line replaces the file's list.
cat >"$tmp/client.conf" <<END
remote 127.0.0.1:1
local 9001=127.0.0.1:5432
local 9002=22
END
./client -config "$tmp/client.conf" 2>"$tmp/client.log" &
pid=$!
pids="$pids $pid"
wait_for "$tmp/client.log" "^.*\[9001\] connect 127.0.0.1:1" &&
	wait_for "$tmp/client.log" "^.*\[9002\] connect 127.0.0.1:1"
check $? "two local lines did not make two services: $(cat "$tmp/client.log")"
kill "$pid" 2>/dev/null
./client -config "$tmp/client.conf" -local 9003=1 -local 9004=2 \
	2>"$tmp/client2.log" &
pid=$!
pids="$pids $pid"
wait_for "$tmp/client2.log" "^.*\[9004\] connect 127.0.0.1:1"
check $? "-local on the command line made no service: $(cat "$tmp/client2.log")"
! grep -q "\[900[12]\]" "$tmp/client2.log"
check $? "the file's local lines were kept beside the command line's"
kill "$pid" 2>/dev/null

# A value the command line gives wins over a bad one in the file.
printf 'heartbeat nonsense\n' >"$tmp/hb.conf"
./server -config "$tmp/hb.conf" -heartbeat nonsense2 2>"$tmp/err"
grep -q "nonsense2" "$tmp/err"
check $? "the command line's value did not win: $(cat "$tmp/err")"

# The example config files name only real flags, their commented-out
# lines too.
for prog in server client; do
	ex=contrib/$prog.conf.example
	sed 's/^#\([a-z][a-z-]* \)/\1/' "$ex" >"$tmp/$prog.conf"
	for f in "$ex" "$tmp/$prog.conf"; do
		"./$prog" -config "$f" -version >/dev/null 2>"$tmp/err"
		check $? "$f: $(cat "$tmp/err")"
	done
done

finish
