/*
 * libFuzzer target for the secrets file parser (secrets.c): the input is
 * the file's text, given to secrets_parse.  Built and run by `make fuzz`
 * and `make fuzz-run` with tests/fuzz.c.
 *
 * A parse that fails must leave the table alone, and its phrase must be
 * one of secrets.c's with nothing from the input in it but numbers (so no
 * secret can reach a log).  It must name the first bad line N: the lines
 * before N parse, and lines 1..N fail with the same phrase.
 *
 * A parse that succeeds must give a table sorted by port, ranges disjoint
 * and within 1..65535, each secret one printable word of its line, found
 * by secrets_find at both edges of its range.  Written back out as text,
 * the table must parse to one that secrets_diff finds no change in.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzlib.h"
#include "secrets.h"

#define NAME "fuzz"

/* secrets.c's phrases after "NAME line N: ", digits taken out. */
static const char *const line_phrases[] = {
	"longer than  bytes",
	"control character (want printable bytes, spaces and tabs)",
	"want PORT SECRET or LO-HI SECRET",
	"port out of range (-)",
	"range - is backwards (want LO <= HI)",
	"no secret after the port",
	"more than one word after the port (a secret has no spaces)",
	"secret longer than  bytes",
	"more than  entries",
	" overlaps  on line ",
	"- overlaps  on line ",
	" overlaps - on line ",
	"- overlaps - on line ",
	NULL,
};

static void
strip_digits(const char *s, char *out)
{
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9') {
			*out++ = *s;
		}
	}
	*out = '\0';
}

/* The length of lines 1..k of text[0..n), with their newlines. */
static size_t
lines_len(const uint8_t *text, size_t n, long k)
{
	size_t i;

	for (i = 0; i < n && k > 0; i++) {
		if (text[i] == '\n') {
			k--;
		}
	}
	return i;
}

static long
count_lines(const uint8_t *text, size_t n)
{
	long lines = n > 0 && text[n - 1] != '\n';
	size_t i;

	for (i = 0; i < n; i++) {
		lines += text[i] == '\n';
	}
	return lines;
}

static void
check_failure(const uint8_t *text, size_t n, const char *why)
{
	char bare[512], again[512];
	struct secrets s = { NULL, 0 };
	const char *rest;
	char *end;
	long line;
	size_t i;
	int known = 0;

	CHECK(strlen(why) < sizeof(bare), "phrase too long: %s", why);
	if (strncmp(why, "secrets file " NAME, 17) == 0) {
		CHECK(strcmp(why, "secrets file " NAME ": out of memory") == 0,
		      "unknown phrase \"%s\"", why);
		return;
	}
	CHECK(strncmp(why, NAME " line ", 10) == 0, "phrase \"%s\"", why);
	line = strtol(why + 10, &end, 10);
	CHECK(end[0] == ':' && end[1] == ' ', "phrase \"%s\"", why);
	CHECK(line >= 1 && line <= count_lines(text, n),
	      "line %ld of %ld", line, count_lines(text, n));
	rest = end + 2;
	strip_digits(rest, bare);
	for (i = 0; line_phrases[i] != NULL; i++) {
		known |= strcmp(bare, line_phrases[i]) == 0;
	}
	CHECK(known, "unknown phrase \"%s\"", why);

	/* The first bad line: all before it is good, and it alone is enough
	 * for the same phrase. */
	CHECK(secrets_parse(&s, NAME, (const char *)text,
	                    lines_len(text, n, line - 1), again,
	                    sizeof(again)) == 0,
	      "lines before %ld fail: %s", line, again);
	secrets_free(&s);
	CHECK(secrets_parse(&s, NAME, (const char *)text,
	                    lines_len(text, n, line), again,
	                    sizeof(again)) == -1,
	      "lines up to %ld parse", line);
	CHECK(strcmp(why, again) == 0, "\"%s\", then \"%s\"", why, again);
}

/* Does line (1-based) of text hold the secret as a word of its own? */
static int
line_has_word(const uint8_t *text, size_t n, long line, const uint8_t *w,
              size_t wlen)
{
	size_t start = lines_len(text, n, line - 1), end = start, i;

	while (end < n && text[end] != '\n') {
		end++;
	}
	/* Never at the start: the port comes first. */
	for (i = start + 1; i + wlen <= end; i++) {
		if (memcmp(text + i, w, wlen) == 0 &&
		    (text[i - 1] == ' ' || text[i - 1] == '\t') &&
		    (i + wlen == end || text[i + wlen] == ' ' ||
		     text[i + wlen] == '\t' || text[i + wlen] == '\r')) {
			return 1;
		}
	}
	return 0;
}

static void
check_success(const uint8_t *text, size_t n, const struct secrets *s)
{
	static char out[SECRETS_MAX * (12 + SECRETS_SECRET_MAX + 1)];
	struct secrets back = { NULL, 0 };
	const struct secret_range *r;
	char why[512];
	size_t i, j, len, off = 0;
	int added, removed, changed;

	for (i = 0; i < s->n; i++) {
		r = &s->r[i];
		CHECK(r->lo >= 1 && r->lo <= r->hi && r->hi <= 65535,
		      "range %d-%d", r->lo, r->hi);
		CHECK(i == 0 || s->r[i - 1].hi < r->lo, "%d-%d after %d-%d",
		      r->lo, r->hi, s->r[i - 1].lo, s->r[i - 1].hi);
		CHECK(r->len >= 1 && r->len <= SECRETS_SECRET_MAX &&
		      r->secret[r->len] == '\0', "secret of %zu bytes", r->len);
		for (j = 0; j < r->len; j++) {
			CHECK(r->secret[j] > ' ' && r->secret[j] != 0x7f,
			      "byte 0x%02x in a secret", r->secret[j]);
		}
		CHECK(line_has_word(text, n, r->line, r->secret, r->len),
		      "the secret for %d-%d is not a word of line %d", r->lo,
		      r->hi, r->line);
		CHECK(secrets_find(s, r->lo, &len) == r->secret &&
		      len == r->len, "lookup of %d", r->lo);
		CHECK(secrets_find(s, r->hi, &len) == r->secret &&
		      len == r->len, "lookup of %d", r->hi);
		CHECK(secrets_find(s, r->lo - 1, &len) ==
		      (i > 0 && s->r[i - 1].hi == r->lo - 1 ?
		       s->r[i - 1].secret : NULL), "lookup of %d", r->lo - 1);
		off += (size_t)snprintf(out + off, sizeof(out) - off, "%d-%d ",
		                        r->lo, r->hi);
		memcpy(out + off, r->secret, r->len);
		off += r->len;
		out[off++] = '\n';
	}
	secrets_diff(s, s, &added, &removed, &changed);
	CHECK(added == 0 && removed == 0 && changed == 0, "self diff");

	CHECK(secrets_parse(&back, NAME, out, off, why, sizeof(why)) == 0,
	      "the table written out fails: %s", why);
	CHECK(back.n == s->n, "%zu entries, then %zu", s->n, back.n);
	secrets_diff(s, &back, &added, &removed, &changed);
	CHECK(added == 0 && removed == 0 && changed == 0,
	      "written out and read back: +%d -%d ~%d", added, removed,
	      changed);
	secrets_free(&back);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct secret_range sentinel = { .lo = 7, .hi = 7, .len = 1 };
	struct secrets s = { &sentinel, 1 };
	char why[512];

	why[0] = '\0';
	if (secrets_parse(&s, NAME, (const char *)data, size, why,
	                  sizeof(why)) != 0) {
		CHECK(s.r == &sentinel && s.n == 1, "a failed parse wrote");
		check_failure(data, size, why);
		return 0;
	}
	CHECK(why[0] == '\0', "a phrase on success: %s", why);
	check_success(data, size, &s);
	secrets_free(&s);
	return 0;
}
