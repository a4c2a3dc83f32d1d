#!/bin/sh
# The man pages and the usage texts name the same flags.  For server and
# client, the flags of `./PROG -h` (synopsis and flag list) are compared
# with those of dialback-PROG.1 (its SYNOPSIS and its .It Fl entries): each
# flag must be in all three, and one that is not fails, named.  Each page
# must also render without groff warnings; without groff that check is
# skipped.  Last line: "manpage: N passed, N failed, N skipped".  Run from
# anywhere.

cd "$(dirname "$0")/.." || exit 1
tl_name=manpage
# shellcheck source=tests/testlib.sh
. tests/testlib.sh

# words: one word a line, split at blanks, commas, brackets and bars.
words() {
	sed 's/[][,|]/ /g' | tr ' \t' '\n\n' | grep -E '^-[a-z][a-z0-9-]*$'
}

# usage_flags PROG: the flags in PROG -h.  Flag-list lines start with
# spaces and a dash; their description, after two spaces, may mention
# other programs' flags and is cut off.  The synopsis is every line
# before the first of those.
usage_flags() {
	"$1" -h >"$tmp/usage" 2>&1 || return 1
	{
		sed -n '/^ *-/q; p' "$tmp/usage"
		sed -n 's/^ *\(-.*\)$/\1/p' "$tmp/usage" | sed 's/  .*//'
	} | words | sort -u
}

# man_flags PAGE WHERE: the flags of PAGE's SYNOPSIS (WHERE=synopsis) or
# of its .It Fl entries (WHERE=list).  In mdoc, "Fl a | b" is two flags:
# Fl applies to every word up to the next macro.
man_flags() {
	awk -v where="$2" '
		/^\.Sh / { sect = $2 }
		{
			if (where == "synopsis" && sect != "SYNOPSIS") next
			if (where == "list" && $1 != ".It") next
			infl = 0
			for (i = 1; i <= NF; i++) {
				w = $i
				if (i == 1) sub(/^\./, "", w)
				if (w == "Fl") { infl = 1; continue }
				if (!infl || w == "|") continue
				if (w ~ /^[A-Z][a-z][a-z]?$/) { infl = 0; continue }
				print "-" w
			}
		}' "$1" | sort -u
}

for prog in server client; do
	page=dialback-$prog.1
	if [ ! -x "./$prog" ]; then
		fail "./$prog is not built (make)"
		continue
	fi
	if [ ! -f "$page" ]; then
		fail "$page is missing"
		continue
	fi
	if ! usage_flags "./$prog" >"$tmp/u"; then
		fail "./$prog -h failed"
		continue
	fi
	man_flags "$page" synopsis >"$tmp/s"
	man_flags "$page" list >"$tmp/l"
	if [ ! -s "$tmp/u" ] || [ ! -s "$tmp/s" ] || [ ! -s "$tmp/l" ]; then
		fail "$prog: found no flags in ./$prog -h or in $page"
		continue
	fi
	sort -u "$tmp/u" "$tmp/s" "$tmp/l" >"$tmp/all"
	while IFS= read -r flag; do
		missing=""
		grep -qx -- "$flag" "$tmp/u" || missing="$missing, ./$prog -h"
		grep -qx -- "$flag" "$tmp/s" || missing="$missing, $page SYNOPSIS"
		grep -qx -- "$flag" "$tmp/l" || missing="$missing, $page flag list"
		if [ -n "$missing" ]; then
			fail "$prog: $flag is missing from ${missing#, }"
		else
			pass
		fi
	done <"$tmp/all"
	if ! command -v groff >/dev/null 2>&1; then
		skip "$page renders" "groff not installed"
		continue
	fi
	groff -mdoc -ww -z "$page" >"$tmp/warn" 2>&1
	if [ -s "$tmp/warn" ]; then
		fail "$page: groff warns:"
		cat "$tmp/warn"
	else
		pass
	fi
done
finish
