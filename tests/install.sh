#!/bin/sh
# make install into a scratch DESTDIR with PREFIX=/usr: the two binaries
# and two man pages land under it with the right modes and nothing else
# does, the installed dialback-server and dialback-client run, and make
# uninstall takes the four files away again.  Last line: "install: N
# passed, N failed, N skipped".  Run from anywhere; MAKE names the make to
# use.

cd "$(dirname "$0")/.." || exit 1
tl_name=install
# shellcheck source=tests/testlib.sh
. tests/testlib.sh
dest=$tmp/dest

# mode_of FILE: the permission string of ls -l, "-rwxr-xr-x".
mode_of() {
	ls -ln "$1" 2>/dev/null | cut -c1-10
}

files="usr/bin/dialback-server -rwxr-xr-x
usr/bin/dialback-client -rwxr-xr-x
usr/share/man/man1/dialback-server.1 -rw-r--r--
usr/share/man/man1/dialback-client.1 -rw-r--r--"

${MAKE:-make} install DESTDIR="$dest" PREFIX=/usr >"$tmp/log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
	cat "$tmp/log"
fi
check "$rc" "make install DESTDIR=$dest PREFIX=/usr exited $rc"

while read -r f want; do
	got=$(mode_of "$dest/$f")
	[ "$got" = "$want" ]
	check $? "$f: want $want, got ${got:-no such file}"
done <<EOF
$files
EOF

n=$(find "$dest" -type f | wc -l)
[ "$n" -eq 4 ]
check $? "want 4 files installed, found $n: $(find "$dest" -type f)"

for prog in server client; do
	out=$("$dest/usr/bin/dialback-$prog" -h 2>&1)
	rc=$?
	case $out in
	usage:*) ok=$rc ;;
	*) ok=1 ;;
	esac
	check "$ok" "dialback-$prog -h: exit $rc, printed: $out"
done

${MAKE:-make} uninstall DESTDIR="$dest" PREFIX=/usr >/dev/null 2>&1
rc=$?
n=$(find "$dest" -type f | wc -l)
[ "$rc" -eq 0 ] && [ "$n" -eq 0 ]
check $? "make uninstall: exit $rc, $n files left"

finish
