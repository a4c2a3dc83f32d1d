/*
 * The per-service secrets file (secrets.c): which secret a client
 * must prove to serve a port.  One entry a line,
 *
 *     PORT SECRET        8080 s3cret
 *     LO-HI SECRET       9000-9099 other-s3cret
 *
 * with blank lines, '#' comment lines, and a comment after the secret
 * (a word that starts with '#').  SECRET is one word of printable bytes
 * (no spaces, no control characters; '#' is an ordinary byte there, even
 * its first).  Ports run 1..65535, LO <= HI, and no two entries share a
 * port.  Ports the file does not name use -token.  The server's file says
 * what each port asks for; the client's, what its services prove.
 *
 * Errors follow common.h: -1 and a phrase in (why, len) naming the file
 * and line.  No phrase ever quotes a word of the file, so a secret typed in
 * the wrong place can't reach a log.
 */
#ifndef DIALBACK_SECRETS_H
#define DIALBACK_SECRETS_H

#include <stddef.h>
#include <stdint.h>

#define SECRETS_MAX         4096             /* entries */
#define SECRETS_SECRET_MAX  256              /* bytes in one secret */
#define SECRETS_LINE_MAX    1024             /* bytes in a line, without CRLF */
#define SECRETS_FILE_MAX    (1024 * 1024)    /* bytes in the file */

struct secret_range {
	int lo, hi;                  /* ports lo..hi, 1 <= lo <= hi <= 65535 */
	int line;                    /* where the file gave it */
	size_t len;                  /* 1..SECRETS_SECRET_MAX */
	uint8_t secret[SECRETS_SECRET_MAX + 1];  /* NUL after len bytes too */
};

/* A table, sorted by port, ranges disjoint.  { NULL, 0 } is empty. */
struct secrets {
	struct secret_range *r;
	size_t n;
};

/*
 * secrets_load: read the file at path into *out.  Refuses a file that group
 * or others may read or write (mode & 066), naming its mode, before
 * reading it.
 * On error *out is untouched; on success it is overwritten, not freed: keep
 * the old table to diff against, then secrets_free it.
 */
int secrets_load(struct secrets *out, const char *path, char *why,
                 size_t len);

/*
 * secrets_parse: the same for text[0..n) held in memory; name stands for
 * the file in phrases.  text need not end in '\n' or hold a NUL.  On error
 * *out is untouched.
 */
int secrets_parse(struct secrets *out, const char *name, const char *text,
                  size_t n, char *why, size_t len);

/* secrets_find: port's secret (*len bytes, NUL-terminated as well), or
 * NULL if no entry names port; then -token applies.  s may be NULL. */
const uint8_t *secrets_find(const struct secrets *s, int port, size_t *len);

/* secrets_diff: for the reload log line, how many ranges new has that old
 * lacks, old has that new lacks, and both have with different secrets.  A
 * range is its LO-HI: one split in two counts as 1 removed, 2 added.
 * Either table may be NULL (empty).  Secrets are compared in constant time. */
void secrets_diff(const struct secrets *old, const struct secrets *new,
                  int *added, int *removed, int *changed);

/* secrets_free: wipe the secrets, free the table and leave it empty.
 * secrets_free(NULL) is a no-op. */
void secrets_free(struct secrets *s);

#endif
