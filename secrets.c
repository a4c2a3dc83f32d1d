/*
 * The secrets file: reading it safely, parsing it line by line, looking a
 * port up, and what changed between two tables (for SIGHUP).  The format
 * is in secrets.h.
 *
 * While parsing, an entry holds only the offset of its secret in the text;
 * secret bytes are copied once, into the finished table, so no stray copy
 * is left behind in freed memory.  secrets_load wipes the text it read.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secrets.h"
#include "sha256.h"

/* A memset that the compiler can't drop as a dead store before free(). */
static void
wipe(void *p, size_t n)
{
	volatile uint8_t *v = p;

	while (n-- > 0) {
		*v++ = 0;
	}
}

/* ==== parsing ============================================================ */

/* An entry while the file is read: its secret is text[off..off+len). */
struct pending {
	int lo, hi, line;
	size_t off, len;
};

/* Where the parser is, and where its phrase goes. */
struct where {
	const char *name;
	int line;
	char *why;
	size_t len;
};

/* Say "NAME line N: ..." and return -1. */
static int line_error(const struct where *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int
line_error(const struct where *w, const char *fmt, ...)
{
	va_list ap;
	int k;

	k = snprintf(w->why, w->len, "%s line %d: ", w->name, w->line);
	if (k >= 0 && (size_t)k < w->len) {
		va_start(ap, fmt);
		vsnprintf(w->why + k, w->len - (size_t)k, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* The end of the run of blanks (blank 1) or of a word (blank 0) that
 * starts at s[i], within s[0..n). */
static size_t
span(const char *s, size_t i, size_t n, int blank)
{
	while (i < n && is_blank(s[i]) == blank) {
		i++;
	}
	return i;
}

/* "8080" or "9000-9099", for phrases; ports are checked numbers by then,
 * never the file's own text. */
static const char *
range_str(int lo, int hi, char *buf, size_t n)
{
	if (lo == hi) {
		snprintf(buf, n, "%d", lo);
	} else {
		snprintf(buf, n, "%d-%d", lo, hi);
	}
	return buf;
}

/* A port from s[0..n): digits only.  -1 if it isn't a number, -2 if it is
 * outside 1..65535 (however many digits it has). */
static int
port_word(const char *s, size_t n)
{
	long v = 0;
	size_t i;

	if (n == 0) {
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9') {
			return -1;
		}
		if (v <= 65535) {
			v = v * 10 + (s[i] - '0');
		}
	}
	return v < 1 || v > 65535 ? -2 : (int)v;
}

/*
 * One line, s[0..n) without its '\n'.  0 for a blank or comment line, 1
 * with *e filled (its off counted from s; the caller adds the line), or -1
 * with a phrase.
 */
static int
parse_line(const char *s, size_t n, struct pending *e, const struct where *w)
{
	size_t i, w1, w1_end, w2, w2_end;
	const char *dash;
	int lo, hi;

	if (n > 0 && s[n - 1] == '\r') {
		n--;                    /* CRLF, from an editor elsewhere */
	}
	if (n > SECRETS_LINE_MAX) {
		return line_error(w, "longer than %d bytes", SECRETS_LINE_MAX);
	}
	w1 = span(s, 0, n, 1);
	if (w1 == n || s[w1] == '#') {
		return 0;
	}
	/* A NUL or escape in a secret would be invisible in an editor and
	 * would cut the secret short for code that takes it as a string. */
	for (i = w1; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			return line_error(w, "control character (want "
			                  "printable bytes, spaces and tabs)");
		}
	}
	w1_end = span(s, w1, n, 0);
	w2 = span(s, w1_end, n, 1);
	w2_end = span(s, w2, n, 0);
	i = span(s, w2_end, n, 1);     /* trailing blanks are dropped, */
	if (i < n && s[i] == '#') {
		i = n;                  /* and a comment after the secret */
	}

	if ((dash = memchr(s + w1, '-', w1_end - w1)) != NULL) {
		lo = port_word(s + w1, (size_t)(dash - (s + w1)));
		hi = port_word(dash + 1, (size_t)(s + w1_end - (dash + 1)));
	} else {
		lo = hi = port_word(s + w1, w1_end - w1);
	}
	if (lo == -1 || hi == -1) {
		return line_error(w, "want PORT SECRET or LO-HI SECRET");
	}
	if (lo == -2 || hi == -2) {
		return line_error(w, "port out of range (1-65535)");
	}
	if (lo > hi) {
		return line_error(w, "range %d-%d is backwards (want LO <= HI)",
		                  lo, hi);
	}
	if (w2 == n) {
		return line_error(w, "no secret after the port");
	}
	if (i < n) {
		return line_error(w, "more than one word after the port (a "
		                  "secret has no spaces)");
	}
	if (w2_end - w2 > SECRETS_SECRET_MAX) {
		return line_error(w, "secret longer than %d bytes",
		                  SECRETS_SECRET_MAX);
	}
	e->lo = lo;
	e->hi = hi;
	e->off = w2;
	e->len = w2_end - w2;
	return 1;
}

/*
 * Put e into p[0..*n), kept sorted by lo.  The ranges already there are
 * disjoint, so e can only overlap its neighbours: the last that starts at
 * or before it, or the first that starts after.  Checking as lines come
 * means the error names the first line that clashes with an earlier one.
 */
static int
insert(struct pending *p, size_t *n, const struct pending *e,
       const struct where *w)
{
	const struct pending *o = NULL;
	size_t a = 0, b = *n, mid;
	char r1[16], r2[16];

	while (a < b) {
		mid = a + (b - a) / 2;
		if (p[mid].lo <= e->lo) {
			a = mid + 1;
		} else {
			b = mid;
		}
	}
	if (a > 0 && p[a - 1].hi >= e->lo) {
		o = &p[a - 1];
	} else if (a < *n && p[a].lo <= e->hi) {
		o = &p[a];
	}
	if (o != NULL) {
		return line_error(w, "%s overlaps %s on line %d",
		                  range_str(e->lo, e->hi, r1, sizeof(r1)),
		                  range_str(o->lo, o->hi, r2, sizeof(r2)),
		                  o->line);
	}
	memmove(p + a + 1, p + a, (*n - a) * sizeof(*p));
	p[a] = *e;
	(*n)++;
	return 0;
}

int
secrets_parse(struct secrets *out, const char *name, const char *text,
              size_t n, char *why, size_t len)
{
	struct pending *p = NULL, e;
	struct secrets t = { NULL, 0 };
	struct where w = { name, 0, why, len };
	size_t np = 0, cap = 1, pos, end, i;
	const char *nl;
	int rc;

	if (n > SECRETS_FILE_MAX) {
		snprintf(why, len, "secrets file %s is larger than %d bytes",
		         name, SECRETS_FILE_MAX);
		return -1;
	}
	/* No more entries than lines: one allocation, never grown. */
	for (pos = 0; pos < n; pos = (size_t)(nl - text) + 1) {
		if ((nl = memchr(text + pos, '\n', n - pos)) == NULL) {
			break;
		}
		cap++;
	}
	if (cap > SECRETS_MAX) {
		cap = SECRETS_MAX;
	}
	if ((p = calloc(cap, sizeof(*p))) == NULL) {
		goto oom;
	}

	for (pos = 0; pos < n; pos = end + 1) {
		nl = memchr(text + pos, '\n', n - pos);
		end = nl != NULL ? (size_t)(nl - text) : n;
		w.line++;
		rc = parse_line(text + pos, end - pos, &e, &w);
		if (rc < 0) {
			goto fail;
		}
		if (rc == 0) {
			continue;
		}
		if (np == SECRETS_MAX) {
			line_error(&w, "more than %d entries", SECRETS_MAX);
			goto fail;
		}
		e.line = w.line;
		e.off += pos;
		if (insert(p, &np, &e, &w) != 0) {
			goto fail;
		}
	}

	if (np > 0 && (t.r = calloc(np, sizeof(*t.r))) == NULL) {
		goto oom;
	}
	for (i = 0; i < np; i++) {
		t.r[i].lo = p[i].lo;
		t.r[i].hi = p[i].hi;
		t.r[i].line = p[i].line;
		t.r[i].len = p[i].len;
		memcpy(t.r[i].secret, text + p[i].off, p[i].len);
	}
	t.n = np;
	free(p);
	*out = t;
	return 0;

oom:
	snprintf(why, len, "secrets file %s: out of memory", name);
fail:
	free(p);
	return -1;
}

/* ==== the file =========================================================== */

/* What group or others must not be able to do, worst first. */
static const char *
mode_breach(mode_t mode)
{
	if (mode & 044) {
		return "readable";
	}
	return "writable";
}

int
secrets_load(struct secrets *out, const char *path, char *why, size_t len)
{
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	ssize_t k;
	int fd, rc = -1;

	/* O_NONBLOCK: a FIFO in the file's place would otherwise hang the
	 * open (and the server) until something wrote to it; fstat then
	 * refuses it.  It changes nothing for a regular file. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		snprintf(why, len, "secrets file %s: %s", path,
		         strerror(errno));
		return -1;
	}
	/* fstat, not stat: the mode checked is that of the file read, even
	 * if the path is swapped in between. */
	if (fstat(fd, &st) != 0) {
		snprintf(why, len, "secrets file %s: %s", path,
		         strerror(errno));
		goto done;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, len, "secrets file %s is not a regular file",
		         path);
		goto done;
	}
	/* Read or write by others is what matters; an execute bit alone
	 * lets no one see or change the secrets. */
	if (st.st_mode & 066) {
		snprintf(why, len, "secrets file %s has mode %04o: it must "
		         "not be %s by group or others (chmod 600 it)", path,
		         (unsigned)(st.st_mode & 07777),
		         mode_breach(st.st_mode));
		goto done;
	}
	/* One byte past the limit, so that secrets_parse sees a file that is
	 * too big (or grew past it since fstat) and says so. */
	if ((buf = malloc(SECRETS_FILE_MAX + 1)) == NULL) {
		snprintf(why, len, "secrets file %s: out of memory", path);
		goto done;
	}
	while (got < SECRETS_FILE_MAX + 1) {
		k = read(fd, buf + got, SECRETS_FILE_MAX + 1 - got);
		if (k < 0 && errno == EINTR) {
			continue;
		}
		if (k < 0) {
			snprintf(why, len, "secrets file %s: %s", path,
			         strerror(errno));
			goto done;
		}
		if (k == 0) {
			break;
		}
		got += (size_t)k;
	}
	rc = secrets_parse(out, path, buf, got, why, len);
done:
	if (buf != NULL) {
		wipe(buf, got);
		free(buf);
	}
	close(fd);
	return rc;
}

/* ==== lookup, diff, free ================================================= */

const uint8_t *
secrets_find(const struct secrets *s, int port, size_t *len)
{
	size_t a = 0, b, mid;

	if (s == NULL) {
		return NULL;
	}
	/* The last range starting at or before port is the only candidate. */
	b = s->n;
	while (a < b) {
		mid = a + (b - a) / 2;
		if (s->r[mid].lo <= port) {
			a = mid + 1;
		} else {
			b = mid;
		}
	}
	if (a == 0 || s->r[a - 1].hi < port) {
		return NULL;
	}
	*len = s->r[a - 1].len;
	return s->r[a - 1].secret;
}

void
secrets_diff(const struct secrets *old, const struct secrets *new,
             int *added, int *removed, int *changed)
{
	size_t i = 0, j = 0, on = old ? old->n : 0, nn = new ? new->n : 0;

	*added = *removed = *changed = 0;
	/* Both are sorted by lo, with no lo twice: one merge walk. */
	while (i < on || j < nn) {
		const struct secret_range *a = i < on ? &old->r[i] : NULL;
		const struct secret_range *b = j < nn ? &new->r[j] : NULL;

		if (b == NULL || (a != NULL && a->lo < b->lo)) {
			(*removed)++;
			i++;
		} else if (a == NULL || b->lo < a->lo) {
			(*added)++;
			j++;
		} else if (a->hi != b->hi) {
			(*removed)++;
			(*added)++;
			i++;
			j++;
		} else {
			if (a->len != b->len ||
			    !equal_ct(a->secret, b->secret, a->len)) {
				(*changed)++;
			}
			i++;
			j++;
		}
	}
}

void
secrets_free(struct secrets *s)
{
	if (s == NULL) {
		return;
	}
	if (s->r != NULL) {
		wipe(s->r, s->n * sizeof(*s->r));
		free(s->r);
	}
	s->r = NULL;
	s->n = 0;
}
