/*
 * What the test programs share (tests/unit.c, tests/e2e.c,
 * tests/features.c, and the helpers tests/svc.c and tests/bench.c):
 * clocks, sockets with deadlines, a deterministic byte stream, child
 * processes and their logs, the checks of the unit tests, and the harness
 * of the end-to-end programs (struct test, fail, start_*, teardown,
 * tl_main).  Header-only; every function is static inline so a file that
 * uses only some of them compiles warning-free.  Times are milliseconds;
 * a "deadline" is an absolute tl_now_ms() value.
 */
#ifndef DIALBACK_TESTLIB_H
#define DIALBACK_TESTLIB_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- time ----------------------------------------------------------------- */

/* tl_now_ms: a monotonic clock in milliseconds. */
static inline int64_t
tl_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* tl_left: milliseconds until deadline, clamped to 0..INT32 for poll(). */
static inline int
tl_left(int64_t deadline)
{
	int64_t left = deadline - tl_now_ms();

	if (left < 0) {
		return 0;
	}
	if (left > 1000000) {
		return 1000000;
	}
	return (int)left;
}

/* tl_pause: the interval between two checks of a polled condition.  Never
 * used as a wait for something to have happened. */
static inline void
tl_pause(int ms)
{
	poll(NULL, 0, ms);
}

/* ---- deterministic stream ------------------------------------------------- */

/*
 * Byte i of the stream for a seed is the same wherever it is computed:
 * xorshift32 from a mixed seed, four bytes per step, low byte first.
 * Feed it incrementally with tl_stream_fill.
 */
struct tl_stream {
	uint32_t x;
	uint32_t word;
	unsigned left;
	uint64_t pos;
};

static inline void
tl_stream_init(struct tl_stream *s, uint32_t seed)
{
	s->x = seed * 2654435761u ^ 0x5bd1e995u;
	if (s->x == 0) {
		s->x = 1;
	}
	s->word = 0;
	s->left = 0;
	s->pos = 0;
}

static inline uint8_t
tl_stream_byte(struct tl_stream *s)
{
	uint8_t b;

	if (s->left == 0) {
		s->x ^= s->x << 13;
		s->x ^= s->x >> 17;
		s->x ^= s->x << 5;
		s->word = s->x;
		s->left = 4;
	}
	b = (uint8_t)(s->word & 0xff);
	s->word >>= 8;
	s->left--;
	s->pos++;
	return b;
}

static inline void
tl_stream_fill(struct tl_stream *s, uint8_t *buf, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		buf[i] = tl_stream_byte(s);
	}
}

/* ---- sockets -------------------------------------------------------------- */

static inline int
tl_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0) {
		return -1;
	}
	return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* tl_sockaddr: fill ss from a numeric ip ("127.0.0.1", "::1") and port.
 * Returns the length, or 0 if ip is not numeric. */
static inline socklen_t
tl_sockaddr(const char *ip, int port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		return sizeof(*s4);
	}
	if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		return sizeof(*s6);
	}
	return 0;
}

/* tl_fmt_addr: "127.0.0.1:P" or "[::1]:P" into buf (64 bytes). */
static inline const char *
tl_fmt_addr(char *buf, const char *host, int port)
{
	if (strchr(host, ':')) {
		snprintf(buf, 64, "[%s]:%d", host, port);
	} else {
		snprintf(buf, 64, "%s:%d", host, port);
	}
	return buf;
}

/* tl_listen: a listening socket on ip:port (port 0: any free one), or -1. */
static inline int
tl_listen(const char *ip, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = tl_sockaddr(ip, port, &ss);
	int fd, one = 1;

	if (len == 0) {
		errno = EINVAL;
		return -1;
	}
	fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0) {
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 511) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* tl_local_port: the port fd is bound to, or 0. */
static inline int
tl_local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
		return 0;
	}
	if (ss.ss_family == AF_INET) {
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	}
	if (ss.ss_family == AF_INET6) {
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	return 0;
}

/*
 * tl_free_ports: n distinct ports on ip that were free a moment ago (bind
 * port 0, read it back, close).  All n sockets are held until the end so
 * the kernel can't hand out one port twice.  0, or -1 with errno set.
 */
static inline int
tl_free_ports(const char *ip, int *ports, int n)
{
	int fds[16], i, got = 0, rc = 0;

	if (n > 16) {
		errno = EINVAL;
		return -1;
	}
	for (i = 0; i < n; i++) {
		struct sockaddr_storage ss;
		socklen_t len = tl_sockaddr(ip, 0, &ss);

		fds[i] = len ? socket(ss.ss_family, SOCK_STREAM, 0) : -1;
		if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&ss, len) < 0) {
			rc = -1;
			if (fds[i] >= 0) {
				got++;
			}
			break;
		}
		got++;
		ports[i] = tl_local_port(fds[i]);
		if (ports[i] == 0) {
			rc = -1;
			break;
		}
	}
	for (i = 0; i < got; i++) {
		int e = errno;

		close(fds[i]);
		errno = e;
	}
	return rc;
}

/*
 * tl_connect_start: start a non-blocking connect to ip:port, from source
 * address src (NULL: the kernel's choice; on Linux any 127.x.y.z works as
 * a distinct loopback source).  Returns the descriptor, connected or
 * connecting (wait for POLLOUT, then read SO_ERROR), or -1 with errno set.
 */
static inline int
tl_connect_start(const char *src, const char *ip, int port)
{
	struct sockaddr_storage ss, from;
	socklen_t len = tl_sockaddr(ip, port, &ss), flen = 0;
	int fd, e;

	if (len == 0 || (src && (flen = tl_sockaddr(src, 0, &from)) == 0)) {
		errno = EINVAL;
		return -1;
	}
	fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0) {
		return -1;
	}
	if (tl_set_nonblock(fd) < 0
	    || (src && bind(fd, (struct sockaddr *)&from, flen) < 0)) {
		goto fail;
	}
	if (connect(fd, (struct sockaddr *)&ss, len) == 0 || errno == EINPROGRESS
	    || errno == EINTR) {
		return fd;
	}
fail:
	e = errno;
	close(fd);
	errno = e;
	return -1;
}

/* tl_connect_result: after POLLOUT on a tl_connect_start descriptor, 0 if
 * the connect succeeded, else -1 with errno set to why it failed. */
static inline int
tl_connect_result(int fd)
{
	int err = 0;
	socklen_t elen = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0) {
		return -1;
	}
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

/* tl_wait_fd: poll one descriptor for events until deadline.  Returns
 * revents, 0 on timeout, -1 on error. */
static inline int
tl_wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd pfd;
	int r;

	for (;;) {
		pfd.fd = fd;
		pfd.events = events;
		pfd.revents = 0;
		r = poll(&pfd, 1, tl_left(deadline));
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0) {
			return -1;
		}
		return r == 0 ? 0 : pfd.revents;
	}
}

/* tl_await: tl_wait_fd, as 0 once ready or -1 with errno set (ETIMEDOUT
 * on timeout). */
static inline int
tl_await(int fd, short events, int64_t deadline)
{
	int r = tl_wait_fd(fd, events, deadline);

	if (r == 0) {
		errno = ETIMEDOUT;
	}
	return r > 0 ? 0 : -1;
}

/* tl_connect: connect to ip:port before deadline.  Returns a connected,
 * non-blocking descriptor, or -1 with errno set (ETIMEDOUT on timeout). */
static inline int
tl_connect(const char *ip, int port, int64_t deadline)
{
	int fd = tl_connect_start(NULL, ip, port), e;

	if (fd < 0) {
		return -1;
	}
	if (tl_await(fd, POLLOUT, deadline) < 0 || tl_connect_result(fd) < 0) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* tl_write_all: send all n bytes before deadline.  0, or -1 with errno
 * (ETIMEDOUT on timeout, EPIPE/ECONNRESET if the peer went away). */
static inline int
tl_write_all(int fd, const void *buf, size_t n, int64_t deadline)
{
	const uint8_t *p = buf;
	ssize_t w;

	while (n > 0) {
		w = send(fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			return -1;
		}
		if (tl_await(fd, POLLOUT, deadline) < 0) {
			return -1;
		}
	}
	return 0;
}

/* tl_read_full: read until n bytes or EOF, before deadline.  Returns the
 * count (less than n means EOF came first), or -1 with errno (ETIMEDOUT). */
static inline ssize_t
tl_read_full(int fd, void *buf, size_t n, int64_t deadline)
{
	uint8_t *p = buf;
	size_t got = 0;
	ssize_t r;

	while (got < n) {
		r = read(fd, p + got, n - got);
		if (r > 0) {
			got += (size_t)r;
			continue;
		}
		if (r == 0) {
			break;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			return -1;
		}
		if (tl_await(fd, POLLIN, deadline) < 0) {
			return -1;
		}
	}
	return (ssize_t)got;
}

/*
 * tl_wait_closed: wait until the peer closes fd: read returns 0 or fails
 * (ECONNRESET and the like).  Bytes that arrive first are discarded and
 * counted in *extra (may be NULL).  0 if closed, -1 on timeout.  *how (may
 * be NULL) gets "EOF" or the error text.
 */
static inline int
tl_wait_closed(int fd, int64_t deadline, size_t *extra, const char **how)
{
	uint8_t buf[4096];
	ssize_t r;
	int w;

	if (extra) {
		*extra = 0;
	}
	for (;;) {
		r = read(fd, buf, sizeof(buf));
		if (r > 0) {
			if (extra) {
				*extra += (size_t)r;
			}
			if (tl_now_ms() >= deadline) {
				return -1;   /* a peer that never stops talking */
			}
			continue;
		}
		if (r == 0) {
			if (how) {
				*how = "EOF";
			}
			return 0;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			if (how) {
				*how = strerror(errno);
			}
			return 0;
		}
		w = tl_wait_fd(fd, POLLIN, deadline);
		if (w == 0) {
			return -1;
		}
		if (w < 0) {
			if (how) {
				*how = strerror(errno);
			}
			return 0;
		}
	}
}

/* tl_reset_close: close fd so that the peer sees a reset (SO_LINGER 0). */
static inline void
tl_reset_close(int fd)
{
	struct linger lg;

	lg.l_onoff = 1;
	lg.l_linger = 0;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/* ---- files ---------------------------------------------------------------- */

/* tl_read_file: the whole file, NUL-terminated, malloc'd; NULL if it can't
 * be read.  *len (may be NULL) gets its size. */
static inline char *
tl_read_file(const char *path, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf, *nb;
	ssize_t r;
	int fd = open(path, O_RDONLY);

	if (fd < 0) {
		return NULL;
	}
	buf = malloc(cap + 1);
	if (buf == NULL) {
		close(fd);
		return NULL;
	}
	for (;;) {
		if (n == cap) {
			cap *= 2;
			nb = realloc(buf, cap + 1);
			if (nb == NULL) {
				free(buf);
				close(fd);
				return NULL;
			}
			buf = nb;
		}
		r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r <= 0) {
			break;
		}
		n += (size_t)r;
	}
	close(fd);
	/* NULs in a log would hide what follows them from strstr. */
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\0') {
			buf[i] = '?';
		}
	}
	buf[n] = '\0';
	if (len) {
		*len = n;
	}
	return buf;
}

/* tl_write_file: the file at path holds the n bytes of data.  0 or -1. */
static inline int
tl_write_file(const char *path, const void *data, size_t n)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (f == NULL) {
		return -1;
	}
	ok = fwrite(data, 1, n, f) == n;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* tl_count_in_file: how many times s occurs in the file (0 if unreadable). */
static inline int
tl_count_in_file(const char *path, const char *s)
{
	char *buf = tl_read_file(path, NULL), *p;
	int count = 0;

	if (buf == NULL) {
		return 0;
	}
	for (p = buf; (p = strstr(p, s)) != NULL; p += strlen(s)) {
		count++;
	}
	free(buf);
	return count;
}

static inline int
tl_file_contains(const char *path, const char *s)
{
	return tl_count_in_file(path, s) > 0;
}

/*
 * tl_print_tail: the last lines of the file at path, under a "# --- LABEL
 * (PATH)" line, each as "#   LINE" cut at width characters (0: whole).
 * Prints nothing and returns -1 if the file can't be read; else 0.
 */
static inline int
tl_print_tail(const char *label, const char *path, int lines, int width)
{
	size_t len;
	char *text = tl_read_file(path, &len), *p;
	int n = 0;

	if (text == NULL) {
		return -1;
	}
	printf("# --- %s (%s)\n", label, path);
	for (p = text + len; p > text; p--) {
		if (p[-1] == '\n' && p != text + len && ++n == lines) {
			break;
		}
	}
	while (*p) {
		char *nl = strchr(p, '\n');

		if (nl) {
			*nl = '\0';
		}
		if (width > 0) {
			printf("#   %.*s\n", width, p);
		} else {
			printf("#   %s\n", p);
		}
		if (nl == NULL) {
			break;
		}
		p = nl + 1;
	}
	free(text);
	return 0;
}

/* tl_remove_tree: rm -r dir (no symlinks followed). */
static inline void
tl_remove_tree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	struct stat st;
	char path[1024];

	if (d == NULL) {
		unlink(dir);
		return;
	}
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
			continue;
		}
		if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name)
		    >= (int)sizeof(path)) {
			continue;     /* cut short, it would name another file */
		}
		if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			tl_remove_tree(path);
		} else {
			unlink(path);
		}
	}
	closedir(d);
	rmdir(dir);
}

/* tl_cpu_ms: user + system CPU time of pid so far, from /proc; -1 unknown. */
static inline long
tl_cpu_ms(pid_t pid)
{
	unsigned long ut, st;
	char path[64], *text, *p;
	long hz = sysconf(_SC_CLK_TCK), ms = -1;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if ((text = tl_read_file(path, NULL)) == NULL) {
		return -1;
	}
	/* Fields 14 and 15, counted after the ")" that ends the name. */
	p = strrchr(text, ')');
	if (p != NULL && hz > 0 && sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u "
	                                  "%*u %*u %*u %*u %lu %lu", &ut, &st)
	                           == 2) {
		ms = (long)((ut + st) * 1000 / (unsigned long)hz);
	}
	free(text);
	return ms;
}

/* tl_each_fd: call fn(arg, FD, TARGET) for each descriptor pid holds, FD
 * its number and TARGET what /proc/PID/fd says it is ("socket:[INODE]",
 * "pipe:[INODE]", a path).  0, or -1 if /proc can't tell. */
static inline int
tl_each_fd(pid_t pid,
           void (*fn)(void *arg, const char *fd, const char *target),
           void *arg)
{
	char dir[64], path[400], target[256];
	struct dirent *e;
	ssize_t len;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%ld/fd", (long)pid);
	if ((d = opendir(dir)) == NULL) {
		return -1;
	}
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.') {
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len < 0) {
			continue;     /* closed while we looked */
		}
		target[len] = '\0';
		fn(arg, e->d_name, target);
	}
	closedir(d);
	return 0;
}

static inline void
tl_count_one(void *arg, const char *fd, const char *target)
{
	(void)fd;
	(void)target;
	++*(int *)arg;
}

/* tl_count_fds: open descriptors of pid, from /proc/PID/fd; -1 if unknown. */
static inline int
tl_count_fds(pid_t pid)
{
	int n = 0;

	return tl_each_fd(pid, tl_count_one, &n) < 0 ? -1 : n;
}

/* What a process's descriptors are, from /proc/PID/fd. */
struct tl_fds {
	int total;
	int sockets;
	int pipes;          /* pipe ends */
	int unpaired;       /* pipe ends whose other end the process lacks */
	int other;          /* files, /dev/null, epoll, ... */
	int urandom;        /* /dev/urandom, one of other */
};

/* tl_fd_census's tally while it walks. */
struct tl_census {
	struct tl_fds *c;
	unsigned long *ino; /* the pipes' inodes */
	size_t n, cap;
};

static inline int
tl_cmp_ulong(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;

	return x < y ? -1 : x > y;
}

static inline void
tl_census_one(void *arg, const char *fd, const char *target)
{
	struct tl_census *w = arg;
	unsigned long v, *more;
	size_t cap;

	(void)fd;
	w->c->total++;
	if (strncmp(target, "socket:", 7) == 0) {
		w->c->sockets++;
	} else if (sscanf(target, "pipe:[%lu]", &v) == 1) {
		w->c->pipes++;
		if (w->n == w->cap) {
			cap = w->cap ? w->cap * 2 : 64;
			if ((more = realloc(w->ino, cap * sizeof(*more))) == NULL) {
				return;
			}
			w->ino = more;
			w->cap = cap;
		}
		w->ino[w->n++] = v;
	} else {
		w->c->other++;
		w->c->urandom += strcmp(target, "/dev/urandom") == 0;
	}
}

/* tl_fd_census: sort pid's descriptors into *c.  0, or -1 if /proc can't
 * tell. */
static inline int
tl_fd_census(pid_t pid, struct tl_fds *c)
{
	struct tl_census w = { c, NULL, 0, 0 };
	size_t i, j;
	int rc;

	memset(c, 0, sizeof(*c));
	rc = tl_each_fd(pid, tl_census_one, &w);
	if (w.n > 0) {
		qsort(w.ino, w.n, sizeof(*w.ino), tl_cmp_ulong);
	}
	for (i = 0; i < w.n; i = j) {
		for (j = i; j < w.n && w.ino[j] == w.ino[i]; j++) {
			continue;
		}
		if (j - i == 1) {
			c->unpaired++;
		}
	}
	free(w.ino);
	return rc;
}

/* ---- processes ------------------------------------------------------------ */

/* A child we started.  done is set once it has been reaped; status then
 * holds what waitpid said. */
struct tl_proc {
	pid_t pid;
	int done;
	int status;
	int killed;         /* the test sent it SIGKILL on purpose */
	int product;        /* ./server or ./client: must exit 0 on SIGTERM */
	int expect;         /* the exit status the test expects; -1: none,
	                     * it must still run at teardown */
	int group;          /* leads a process group of its own */
	int tool;           /* not built here (nginx, chromium) */
	char name[32];
	char log[256];      /* stdout and stderr */
	char vglog[256];    /* valgrind's log; "" when not run under it */
};

/* tl_proc_init: p cleared and called name, logging to DIR/name.log;
 * product set if argv0 is ./server or ./client, tool if it is an
 * absolute path. */
static inline void
tl_proc_init(struct tl_proc *p, const char *dir, const char *name,
             const char *argv0)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(p->log, sizeof(p->log), "%s/%s.log", dir, name);
	p->product = strcmp(argv0, "./server") == 0
	             || strcmp(argv0, "./client") == 0;
	p->tool = argv0[0] == '/';
	p->expect = -1;
}

/*
 * tl_spawn: fork and execv argv[0] with stdin from /dev/null, stdout to
 * out and stderr to err (err NULL: the same file as out; both truncated).
 * env entries "NAME=VALUE" are set, bare "NAME" unset, in the child only.
 * Signal dispositions and mask are reset and descriptors above 2 closed,
 * so the child sees none of the test's sockets.  Returns the pid or -1.
 */
static inline pid_t
tl_spawn(char *const argv[], const char *const env[], const char *out,
         const char *err)
{
	pid_t pid = fork();
	struct rlimit rl;
	long max = 4096, fd;
	sigset_t none;
	int o, e, i;

	if (pid != 0) {
		return pid;
	}
	o = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	e = err ? open(err, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644) : o;
	i = open("/dev/null", O_RDONLY);
	if (o < 0 || e < 0 || i < 0) {
		_exit(127);
	}
	dup2(i, 0);
	dup2(o, 1);
	dup2(e, 2);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
	    && rl.rlim_cur < 65536) {
		max = (long)rl.rlim_cur;
	} else {
		max = 65536;
	}
	for (fd = 3; fd < max; fd++) {
		close((int)fd);
	}
	signal(SIGPIPE, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGCHLD, SIG_DFL);
	signal(SIGALRM, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (i = 0; env && env[i]; i++) {
		const char *eq = strchr(env[i], '=');

		if (eq) {
			char name[128];
			size_t n = (size_t)(eq - env[i]);

			if (n >= sizeof(name)) {
				continue;
			}
			memcpy(name, env[i], n);
			name[n] = '\0';
			setenv(name, eq + 1, 1);
		} else {
			unsetenv(env[i]);
		}
	}
	execv(argv[0], argv);
	dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

/*
 * tl_proc_start: run argv as p (set up by tl_proc_init), env as for
 * tl_spawn.  stdout and stderr go to p's log, or with split_out stdout to
 * DIR/name.out and stderr to the log.  The pid (also in p->pid), or -1.
 */
static inline pid_t
tl_proc_start(struct tl_proc *p, const char *dir, char *const argv[],
              const char *const env[], int split_out)
{
	char out[256];

	snprintf(out, sizeof(out), "%s/%s.out", dir, p->name);
	p->pid = tl_spawn(argv, env, split_out ? out : p->log,
	                  split_out ? p->log : NULL);
	return p->pid;
}

/* tl_proc_poll: reap p if it has exited.  1 if it has (now or before). */
static inline int
tl_proc_poll(struct tl_proc *p)
{
	pid_t r;

	if (p->done || p->pid <= 0) {
		return 1;
	}
	do {
		r = waitpid(p->pid, &p->status, WNOHANG);
	} while (r < 0 && errno == EINTR);
	if (r == p->pid || (r < 0 && errno == ECHILD)) {
		p->done = 1;
		return 1;
	}
	return 0;
}

/* tl_proc_wait: wait until p exits, up to ms.  1 exited, 0 still running. */
static inline int
tl_proc_wait(struct tl_proc *p, int ms)
{
	int64_t deadline = tl_now_ms() + ms;

	for (;;) {
		if (tl_proc_poll(p)) {
			return 1;
		}
		if (tl_now_ms() >= deadline) {
			return 0;
		}
		tl_pause(10);
	}
}

/*
 * tl_proc_stop_ms: SIGTERM, up to ms to exit, then SIGKILL and reap.
 * Returns 0 if it exited on its own or after SIGTERM, -1 if it needed
 * SIGKILL.  A stopped process is continued first, so that it can act on
 * the SIGTERM.  Only ever signals p's own pid.
 */
static inline int
tl_proc_stop_ms(struct tl_proc *p, int ms)
{
	pid_t r;

	if (tl_proc_poll(p)) {
		return 0;
	}
	/* SIGCONT first: sent after SIGTERM it could cancel the SIGSTOP by
	 * which LeakSanitizer's exit-time tracer stops the process, leaving
	 * both waiting forever. */
	kill(p->pid, SIGCONT);
	kill(p->pid, SIGTERM);
	if (tl_proc_wait(p, ms)) {
		return 0;
	}
	kill(p->pid, SIGKILL);
	do {
		r = waitpid(p->pid, &p->status, 0);
	} while (r < 0 && errno == EINTR);
	p->done = 1;
	return -1;
}

/* tl_proc_stop: tl_proc_stop_ms with 3 s. */
static inline int
tl_proc_stop(struct tl_proc *p)
{
	return tl_proc_stop_ms(p, 3000);
}

/* tl_status_str: "exit 1", "signal 9" or "running" into buf. */
static inline const char *
tl_status_str(const struct tl_proc *p, char *buf, size_t len)
{
	if (!p->done) {
		snprintf(buf, len, "running");
	} else if (WIFEXITED(p->status)) {
		snprintf(buf, len, "exit %d", WEXITSTATUS(p->status));
	} else if (WIFSIGNALED(p->status)) {
		snprintf(buf, len, "signal %d", WTERMSIG(p->status));
	} else {
		snprintf(buf, len, "status 0x%x", (unsigned)p->status);
	}
	return buf;
}

/*
 * tl_wait_log_count: wait up to ms until p's log contains s at least n
 * times, checking every 20 ms.  1 found; 0 timeout; -1 p exited first.
 */
static inline int
tl_wait_log_count(struct tl_proc *p, const char *s, int n, int ms)
{
	int64_t deadline = tl_now_ms() + ms;
	int exited;

	for (;;) {
		exited = tl_proc_poll(p);
		if (tl_count_in_file(p->log, s) >= n) {
			return 1;
		}
		if (exited) {
			return -1;
		}
		if (tl_now_ms() >= deadline) {
			return 0;
		}
		tl_pause(20);
	}
}

/* tl_wait_log: tl_wait_log_count for one occurrence. */
static inline int
tl_wait_log(struct tl_proc *p, const char *s, int ms)
{
	return tl_wait_log_count(p, s, 1, ms);
}

/* tl_proc_frozen: pid is stopped by a signal (SIGSTOP), from /proc; 0 where
 * /proc can't tell.  A ptrace stop ('t', as LeakSanitizer's exit-time
 * tracer makes) is not one. */
static inline int
tl_proc_frozen(pid_t pid)
{
	char path[64], *text, *p;
	int frozen = 0;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if ((text = tl_read_file(path, NULL)) == NULL) {
		return 0;
	}
	p = strrchr(text, ')');
	frozen = p != NULL && p[1] == ' ' && p[2] == 'T';
	free(text);
	return frozen;
}

/* ---- small things --------------------------------------------------------- */

/* tl_hex: n bytes as lowercase hex into out (2n + 1 bytes). */
static inline void
tl_hex(const uint8_t *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = '\0';
}

/* tl_find_prog: name in $PATH or an sbin directory, into buf.  0 or -1. */
static inline int
tl_find_prog(const char *name, char *buf, size_t len)
{
	static const char extra[] = ":/usr/local/sbin:/usr/sbin:/sbin";
	const char *path = getenv("PATH");
	char all[4096];
	const char *p, *end;

	snprintf(all, sizeof(all), "%s%s", path ? path : "/usr/bin:/bin", extra);
	for (p = all; *p; p = *end ? end + 1 : end) {
		end = strchr(p, ':');
		if (end == NULL) {
			end = p + strlen(p);
		}
		if (end > p && (size_t)(end - p) + strlen(name) + 2 <= len) {
			snprintf(buf, len, "%.*s/%s", (int)(end - p), p, name);
			if (access(buf, X_OK) == 0) {
				return 0;
			}
		}
	}
	buf[0] = '\0';
	return -1;
}

/* tl_in_ci: CI=true in the environment: what a test needs must be there,
 * and a test that can't run fails instead of skipping. */
static inline int
tl_in_ci(void)
{
	const char *ci = getenv("CI");

	return ci != NULL && strcmp(ci, "true") == 0;
}

/* tl_ipv6_ok: ::1 can be bound. */
static inline int
tl_ipv6_ok(void)
{
	int fd = tl_listen("::1", 0);

	if (fd < 0) {
		return 0;
	}
	close(fd);
	return 1;
}

/* ---- unit checks ---------------------------------------------------------- */

/*
 * For tests that count checks (tests/unit.c): each CHECK counts a pass or
 * prints "FILE:LINE: what" for a failure; tally_skip prints "skip - WHAT #
 * WHY" for checks that could not run here.  tally_report prints the last
 * line, "PROG: N passed, N failed, N skipped", and returns the exit status.
 */
struct tally {
	int pass, fail, skip;
};

static inline void tally_check(struct tally *t, int ok, const char *file,
                               int line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static inline void
tally_check(struct tally *t, int ok, const char *file, int line,
            const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		t->pass++;
		return;
	}
	t->fail++;
	printf("%s:%d: ", file, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static inline void
tally_check_mem(struct tally *t, const void *got, const void *want, size_t n,
                const char *file, int line, const char *what)
{
	char g[2 * 64 + 1], w[2 * 64 + 1];
	size_t shown = n < 64 ? n : 64;

	if (memcmp(got, want, n) == 0) {
		tally_check(t, 1, file, line, "%s", what);
		return;
	}
	tl_hex(got, shown, g);
	tl_hex(want, shown, w);
	tally_check(t, 0, file, line, "%s: got %s%s, want %s%s", what,
	            g, shown < n ? "..." : "", w, shown < n ? "..." : "");
}

/* CHECK_INT and CHECK_STR: got is evaluated once, so it may be a call. */
static inline void
tally_check_int(struct tally *t, long long got, long long want,
                const char *file, int line, const char *what)
{
	tally_check(t, got == want, file, line, "%s: got %lld, want %lld", what,
	            got, want);
}

static inline void
tally_check_str(struct tally *t, const char *got, const char *want,
                const char *file, int line, const char *what)
{
	tally_check(t, got != NULL && strcmp(got, want) == 0, file, line,
	            "%s: got \"%s\", want \"%s\"", what, got ? got : "(null)",
	            want);
}

static inline void
tally_skip(struct tally *t, const char *what, const char *why)
{
	printf("skip - %s # %s\n", what, why);
	t->skip++;
}

static inline int
tally_report(const struct tally *t, const char *prog)
{
	printf("%s: %d passed, %d failed, %d skipped\n", prog, t->pass, t->fail,
	       t->skip);
	return t->fail > 0 ? 1 : 0;
}

#define CHECK(t, cond) \
	tally_check((t), !!(cond), __FILE__, __LINE__, "%s", #cond)
#define CHECKF(t, cond, ...) \
	tally_check((t), !!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_INT(t, got, want) \
	tally_check_int((t), (long long)(got), (long long)(want), __FILE__, \
	                __LINE__, #got)
#define CHECK_STR(t, got, want) \
	tally_check_str((t), (got), (want), __FILE__, __LINE__, #got)
#define CHECK_MEM(t, got, want, n) \
	tally_check_mem((t), (got), (want), (n), __FILE__, __LINE__, #got)

/* ==== the harness ===========================================================
 *
 * A test program (tests/e2e.c, tests/features.c) is a table of tl_case
 * that tl_main runs.  Each test gets a struct test: a fresh directory for
 * logs, and the processes (start) and user sockets (user_open) it starts,
 * which teardown ends.  A test says why it failed with fail() (the first
 * reason wins), or why it could not run with t->skip, which is never a
 * pass.  At teardown every ./server and ./client must either still run
 * and exit 0 on SIGTERM, or have exited with the status the test expected
 * (expect_exit, stop), or have been killed on purpose (kill_hard); one
 * that died by a signal or exited otherwise fails the test, even after
 * the test's last check.  Per test one line, "ok - NAME (S s)", "skip -
 * NAME # WHY" or "FAIL - NAME: WHY" (then the logs' tails); last line
 * "PROG: N passed, N failed, N skipped".
 */

/* Deadlines scale with tl_h.tscale (5 under valgrind): T(ms). */
#define T(ms)        ((ms) * tl_h.tscale)
#define START_MS     T(15000) /* a process reaches "listening"/"forwarding" */
#define STOP_MS      T(3000)  /* SIGTERM to exit */
#define TL_MAX_PROCS 12
#define TL_TAIL      30       /* log lines shown after a failure */

struct test {
	const char *name;
	char dir[128];
	const char *host;            /* "127.0.0.1", or "::1" */
	const char *pub_host;        /* start_server's -public; NULL: host */
	struct tl_proc procs[TL_MAX_PROCS];
	int nprocs;
	int *fds;                    /* user sockets still open */
	size_t nfds, capfds;
	int failed;
	char why[1024];
	const char *skip;            /* why it could not run */
	int ctl, tun, pub, loc;      /* ports */
	struct tl_proc *server, *client, *svc;
};

/* One test of a program's table. */
struct tl_case {
	const char *name;
	void (*fn)(struct test *t);
	int flags;
};
#define TL_EXPLICIT 1                /* runs only when named in full */
#define TL_HEAVY    2                /* skipped under valgrind */

/* The program's state; set up by tl_main and tl_use_valgrind. */
static struct {
	const char *prog;            /* "e2e": in summaries and directories */
	char self[256];              /* this program, re-run by TL_GROUP */
	int watchdog_s;              /* a test that takes longer is killed */
	int tscale;
	char valgrind[256];          /* "" unless VALGRIND=1 */
	int passed, failed, skipped;
	struct test *current;        /* for the watchdog only */
} tl_h = { "test", "", 120, 1, "", 0, 0, 0, NULL };

static const char *const tl_sanitizer_marks[] = {
	"AddressSanitizer", "LeakSanitizer", "runtime error:", NULL
};

/* What valgrind -q writes only when something is wrong. */
static const char *const tl_valgrind_marks[] = {
	"definitely lost", "indirectly lost", "Invalid ", "uninitialised",
	"Mismatched free", "Syscall param", "overlap", "Process terminating",
	NULL
};

static inline int fail(struct test *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* fail: record why the test failed (the first reason wins).  Returns -1 so
 * a test can say "return fail(t, ...)". */
static inline int
fail(struct test *t, const char *fmt, ...)
{
	va_list ap;

	if (!t->failed) {
		va_start(ap, fmt);
		vsnprintf(t->why, sizeof(t->why), fmt, ap);
		va_end(ap);
		t->failed = 1;
	}
	return -1;
}

/* missing_tool: a test whose tool (or whatever it needs) is absent is
 * skipped, or fails with CI=true. */
static inline void
missing_tool(struct test *t, const char *why)
{
	if (tl_in_ci()) {
		fail(t, "%s, and CI=true (.ci/run installs it)", why);
	} else {
		t->skip = why;
	}
}

/* ---- harness: user sockets ------------------------------------------------ */

static inline void
user_track(struct test *t, int fd)
{
	if (t->nfds == t->capfds) {
		size_t ncap = t->capfds ? t->capfds * 2 : 64;
		int *n = realloc(t->fds, ncap * sizeof(*n));

		if (n == NULL) {
			return;
		}
		t->fds = n;
		t->capfds = ncap;
	}
	t->fds[t->nfds++] = fd;
}

/* user_open: a user's connection to host:port, closed at teardown if the
 * test leaves it open.  -1 and fail(). */
static inline int
user_open(struct test *t, const char *host, int port)
{
	int fd = tl_connect(host, port, tl_now_ms() + T(5000));

	if (fd < 0) {
		return fail(t, "connect %s port %d: %s", host, port,
		            strerror(errno));
	}
	user_track(t, fd);
	return fd;
}

/* user_connect: user_open on t->host. */
static inline int
user_connect(struct test *t, int port)
{
	return user_open(t, t->host, port);
}

/* user_close: close a socket from user_open (and forget it). */
static inline void
user_close(struct test *t, int fd)
{
	size_t i;

	if (fd < 0) {
		return;
	}
	for (i = 0; i < t->nfds; i++) {
		if (t->fds[i] == fd) {
			t->fds[i] = t->fds[--t->nfds];
			break;
		}
	}
	close(fd);
}

/* user_reset: close a socket from user_open with a reset (linger 0). */
static inline void
user_reset(struct test *t, int fd)
{
	struct linger lg;

	if (fd < 0) {
		return;
	}
	lg.l_onoff = 1;
	lg.l_linger = 0;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	user_close(t, fd);
}

/* ---- harness: processes --------------------------------------------------- */

#define TL_SPLIT_OUT 1   /* stdout to DIR/NAME.out, stderr to the log */
#define TL_GROUP     2   /* in a process group of its own, killed whole */

/*
 * start: run argv (NULL-ended) as a child called name, its stdout and
 * stderr to DIR/name.log (flags as above), env as for tl_spawn.  Under
 * valgrind, ./server and ./client run under memcheck, which logs to
 * DIR/name.vg and exits 99 on an error or leak.  TL_GROUP re-runs this
 * program as "--in-group ARGV...", which tl_main turns into setpgid and
 * exec.  NULL and fail() on error.
 */
static inline struct tl_proc *
start(struct test *t, const char *name, const char *const argv[],
      const char *const env[], int flags)
{
	static const char *const vg_opts[] = {
		"-q", "--error-exitcode=99", "--leak-check=full",
		"--show-leak-kinds=definite,indirect",
		"--errors-for-leak-kinds=definite,indirect", "--track-fds=no",
	};
	enum { NOPTS = sizeof(vg_opts) / sizeof(vg_opts[0]), MAXARGS = 64 };
	const char *args[MAXARGS];
	char vglog[300];
	struct tl_proc *p;
	int i, n = 0;

	if (t->nprocs == TL_MAX_PROCS) {
		fail(t, "too many processes");
		return NULL;
	}
	p = &t->procs[t->nprocs];
	tl_proc_init(p, t->dir, name, argv[0]);
	p->tool = p->tool && strcmp(argv[0], tl_h.self) != 0;
	if (flags & TL_GROUP) {
		args[n++] = tl_h.self;
		args[n++] = "--in-group";
	}
	if (tl_h.valgrind[0] != '\0' && p->product) {
		snprintf(p->vglog, sizeof(p->vglog), "%s/%s.vg", t->dir, name);
		snprintf(vglog, sizeof(vglog), "--log-file=%s", p->vglog);
		args[n++] = tl_h.valgrind;
		for (i = 0; i < NOPTS; i++) {
			args[n++] = vg_opts[i];
		}
		args[n++] = vglog;
	}
	for (i = 0; argv[i] != NULL && n < MAXARGS - 1; i++) {
		args[n++] = argv[i];
	}
	args[n] = NULL;
	if (tl_proc_start(p, t->dir, (char *const *)args, env,
	                  flags & TL_SPLIT_OUT) < 0) {
		fail(t, "fork: %s", strerror(errno));
		return NULL;
	}
	p->group = (flags & TL_GROUP) != 0;
	t->nprocs++;
	return p;
}

/* wait_log_count: wait up to ms for n occurrences of s in p's log.  0, or
 * -1 and fail() if they don't show up or p exits first. */
static inline int
wait_log_count(struct test *t, struct tl_proc *p, const char *s, int n,
               int ms)
{
	char st[32];
	int r = tl_wait_log_count(p, s, n, ms);

	if (r == 1) {
		return 0;
	}
	if (r < 0 && n == 1) {
		return fail(t, "%s exited (%s) before logging \"%s\"", p->name,
		            tl_status_str(p, st, sizeof(st)), s);
	}
	if (r < 0) {
		return fail(t, "%s exited (%s) after logging \"%s\" %d times, "
		            "waiting for %d", p->name,
		            tl_status_str(p, st, sizeof(st)), s,
		            tl_count_in_file(p->log, s), n);
	}
	if (n == 1) {
		return fail(t, "%s did not log \"%s\" within %d ms", p->name, s,
		            ms);
	}
	return fail(t, "%s logged \"%s\" %d times within %d ms, waiting for %d",
	            p->name, s, tl_count_in_file(p->log, s), ms, n);
}

/* wait_log: wait_log_count for one occurrence. */
static inline int
wait_log(struct test *t, struct tl_proc *p, const char *s, int ms)
{
	return wait_log_count(t, p, s, 1, ms);
}

/* expect_log: p's log holds s now.  0, or -1 and fail(). */
static inline int
expect_log(struct test *t, struct tl_proc *p, const char *s)
{
	if (!tl_file_contains(p->log, s)) {
		return fail(t, "%s log lacks \"%s\"", p->name, s);
	}
	return 0;
}

/* expect_alive: p is still running.  0, or -1 and fail(). */
static inline int
expect_alive(struct test *t, struct tl_proc *p)
{
	char st[32];

	if (tl_proc_poll(p)) {
		return fail(t, "%s is gone (%s)", p->name,
		            tl_status_str(p, st, sizeof(st)));
	}
	return 0;
}

/* expect_exit: p exits with status code within ms, which teardown then
 * takes as expected.  0, or -1 and fail(). */
static inline int
expect_exit(struct test *t, struct tl_proc *p, int code, int ms)
{
	char st[32];

	p->expect = code;
	if (!tl_proc_wait(p, ms)) {
		return fail(t, "%s still running after %d ms (expected exit %d)",
		            p->name, ms, code);
	}
	if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != code) {
		return fail(t, "%s: %s, expected exit %d", p->name,
		            tl_status_str(p, st, sizeof(st)), code);
	}
	return 0;
}

/* stop: SIGTERM p now; it must exit 0 within STOP_MS. */
static inline int
stop(struct test *t, struct tl_proc *p)
{
	if (expect_alive(t, p) < 0) {
		return -1;
	}
	kill(p->pid, SIGTERM);
	return expect_exit(t, p, 0, STOP_MS);
}

/* kill_hard: SIGKILL p on purpose and reap it.  0, or -1 and fail() if
 * it was gone already or outlives the signal by STOP_MS. */
static inline int
kill_hard(struct test *t, struct tl_proc *p)
{
	if (expect_alive(t, p) < 0) {
		return -1;
	}
	kill(p->pid, SIGKILL);
	p->killed = 1;
	if (!tl_proc_wait(p, STOP_MS)) {
		return fail(t, "%s still there %d ms after SIGKILL", p->name,
		            STOP_MS);
	}
	return 0;
}

/* tl_kill_group: SIGKILL p, and its process group if it leads one. */
static inline void
tl_kill_group(struct tl_proc *p)
{
	if (p->done || p->pid <= 0) {
		return;
	}
	if (p->group) {
		kill(-p->pid, SIGKILL);
	}
	kill(p->pid, SIGKILL);
}

/* ---- harness: ports and the product --------------------------------------- */

/* pick_ports: n distinct ports on t->host that were free a moment ago. */
static inline int
pick_ports(struct test *t, int *ports, int n)
{
	if (tl_free_ports(t->host, ports, n) < 0) {
		return fail(t, "picking free ports on %s: %s", t->host,
		            strerror(errno));
	}
	return 0;
}

/* pick_server_ports: n (3 to 16) free ports: the first three become t's
 * control, tunnel and public ports, a fourth its local service port; all
 * n go to p, which may be NULL for n <= 4. */
static inline int
pick_server_ports(struct test *t, int *p, int n)
{
	int own[4];

	if (p == NULL) {
		p = own;
		n = n > 4 ? 4 : n;
	}
	if (pick_ports(t, p, n) < 0) {
		return -1;
	}
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	t->loc = n > 3 ? p[3] : 0;
	return 0;
}

/* tl_plaintext: DIALBACK_TEST_PLAINTEXT is set: start_server and
 * start_client add -plaintext, so a test moves its bytes through the raw
 * (splice or copy) relay instead of sealed records. */
static inline int
tl_plaintext(void)
{
	const char *v = getenv("DIALBACK_TEST_PLAINTEXT");

	return v != NULL && v[0] != '\0';
}

/*
 * start_server: ./server called name, -control and -tunnel on t->host,
 * -public on t->pub_host (NULL: t->host), -heartbeat 1 unless the
 * arguments that follow (up to a NULL) give another; waits for
 * "listening".  NULL and fail() on error.
 */
static inline struct tl_proc *start_server(struct test *t, const char *name,
                                           ...)
	__attribute__((sentinel));

static inline struct tl_proc *
start_server(struct test *t, const char *name, ...)
{
	enum { MAX_EXTRA = 20 };
	char c[64], u[64], p[64];
	const char *argv[32] = {
		"./server", "-control", tl_fmt_addr(c, t->host, t->ctl),
		"-tunnel", tl_fmt_addr(u, t->host, t->tun),
		"-public", tl_fmt_addr(p, t->pub_host ? t->pub_host : t->host,
		                       t->pub), NULL
	};
	const char *extra[MAX_EXTRA], *a;
	struct tl_proc *s;
	int n = 7, k = 0, i, hb = 0;
	va_list ap;

	va_start(ap, name);
	while ((a = va_arg(ap, const char *)) != NULL && k < MAX_EXTRA) {
		hb |= strcmp(a, "-heartbeat") == 0;
		extra[k++] = a;
	}
	va_end(ap);
	if (!hb) {
		argv[n++] = "-heartbeat";
		argv[n++] = "1";
	}
	if (tl_plaintext()) {
		argv[n++] = "-plaintext";
	}
	for (i = 0; i < k; i++) {
		argv[n++] = extra[i];
	}
	argv[n] = NULL;
	s = start(t, name, argv, NULL, 0);
	if (s == NULL || wait_log(t, s, "listening", START_MS) < 0) {
		return NULL;
	}
	return s;
}

/*
 * start_client_v: ./client called name, -remote t->host:remote, -local
 * t->host:loc, then args (NULL-ended; NULL for none); env as for
 * tl_spawn.  With wait, waits for "forwarding".  NULL and fail() on error.
 */
static inline struct tl_proc *
start_client_v(struct test *t, const char *name, int remote, int loc,
               const char *const env[], int wait, const char *const args[])
{
	char r[64], l[64];
	const char *argv[32] = {
		"./client", "-remote", tl_fmt_addr(r, t->host, remote),
		"-local", tl_fmt_addr(l, t->host, loc), NULL
	};
	struct tl_proc *c;
	int n = 5, i;

	if (tl_plaintext()) {
		argv[n++] = "-plaintext";
	}
	for (i = 0; args != NULL && args[i] != NULL && n < 31; i++) {
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	c = start(t, name, argv, env, 0);
	if (c == NULL || !wait) {
		return c;
	}
	return wait_log(t, c, "forwarding", START_MS) < 0 ? NULL : c;
}

/* start_client: start_client_v with the arguments that follow, up to a
 * NULL. */
static inline struct tl_proc *start_client(struct test *t, const char *name,
                                           int remote, int loc,
                                           const char *const env[], int wait,
                                           ...)
	__attribute__((sentinel));

static inline struct tl_proc *
start_client(struct test *t, const char *name, int remote, int loc,
             const char *const env[], int wait, ...)
{
	const char *args[24], *a;
	int n = 0;
	va_list ap;

	va_start(ap, wait);
	while ((a = va_arg(ap, const char *)) != NULL && n < 23) {
		args[n++] = a;
	}
	va_end(ap);
	args[n] = NULL;
	return start_client_v(t, name, remote, loc, env, wait, args);
}

/* expect_forwarding: c's log names the public port and the service as
 * "forwarding HOST:PUB -> HOST:LOC" (HOST: t->host).  0, or -1 and
 * fail(). */
static inline int
expect_forwarding(struct test *t, struct tl_proc *c, int pub, int loc)
{
	char p[64], l[64], want[160];

	snprintf(want, sizeof(want), "forwarding %s -> %s",
	         tl_fmt_addr(p, t->host, pub), tl_fmt_addr(l, t->host, loc));
	return expect_log(t, c, want);
}

/* start_svc: tests/svc MODE HOST:PORT [ARG] (HOST: t->host; arg NULL for
 * none); waits for "ready".  NULL and fail() on error. */
static inline struct tl_proc *
start_svc(struct test *t, const char *name, const char *mode, int port,
          const char *arg)
{
	char a[64];
	const char *argv[6] = { "tests/svc", mode, tl_fmt_addr(a, t->host, port),
	                        arg, NULL };
	struct tl_proc *s = start(t, name, argv, NULL, 0);

	if (s == NULL || wait_log(t, s, "ready", START_MS) < 0) {
		return NULL;
	}
	return s;
}

/* ---- harness: running ----------------------------------------------------- */

/* tl_valgrind_clean: p's valgrind log reports nothing; else fail(). */
static inline void
tl_valgrind_clean(struct test *t, const struct tl_proc *p)
{
	char *text = tl_read_file(p->vglog, NULL), *q;
	int k;

	if (text == NULL) {
		fail(t, "%s: no valgrind log %s", p->name, p->vglog);
		return;
	}
	for (k = 0; tl_valgrind_marks[k]; k++) {
		if (strstr(text, tl_valgrind_marks[k]) != NULL) {
			fail(t, "%s: valgrind reports \"%s\" (see %s)", p->name,
			     tl_valgrind_marks[k], p->vglog);
		}
	}
	for (q = text; (q = strstr(q, "ERROR SUMMARY: ")) != NULL; q++) {
		if (q[15] >= '1' && q[15] <= '9') {
			fail(t, "%s: valgrind %.30s (see %s)", p->name, q, p->vglog);
		}
	}
	free(text);
}

/*
 * stop_checked: stop p if it still runs (a process group: SIGKILL to all
 * of it; else SIGTERM, and SIGCONT first if a test left it frozen), then
 * judge a product by how it ended: SIGTERM must end it with exit 0; if it
 * ended before, by a signal or with another status than expect_exit
 * named, it fails the test.  Processes killed on purpose are exempt.
 * Only SIGCONT when frozen: a SIGCONT would cancel the SIGSTOP with which
 * LeakSanitizer's exit-time tracer attaches, leaving it hung (SAN=1).
 */
static inline void
stop_checked(struct test *t, struct tl_proc *p)
{
	int running = !tl_proc_poll(p);
	char st[32];

	if (running && p->group) {
		tl_kill_group(p);
		tl_proc_wait(p, STOP_MS);
		return;
	}
	if (running) {
		if (tl_proc_frozen(p->pid)) {
			kill(p->pid, SIGCONT);
		}
		kill(p->pid, SIGTERM);
		if (!tl_proc_wait(p, STOP_MS)) {
			tl_kill_group(p);
			tl_proc_wait(p, STOP_MS);
			if (p->product) {
				fail(t, "%s did not exit within %d ms of SIGTERM",
				     p->name, STOP_MS);
			}
			return;
		}
	}
	if (!p->product || p->killed) {
		return;
	}
	tl_status_str(p, st, sizeof(st));
	if (p->vglog[0] && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 99) {
		fail(t, "%s: exit 99: valgrind found errors or leaks", p->name);
	} else if (running) {
		if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != 0) {
			fail(t, "%s: %s after SIGTERM, expected exit 0", p->name, st);
		}
	} else if (WIFSIGNALED(p->status)) {
		fail(t, "%s died: %s", p->name, st);
	} else if (p->expect < 0) {
		fail(t, "%s exited on its own (%s) before the test's end",
		     p->name, st);
	} else if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != p->expect) {
		fail(t, "%s: %s, expected exit %d", p->name, st, p->expect);
	}
}

/* tl_tail: the tail of the file at path under label; "(no log)" when
 * there is none and missing_ok is not set. */
static inline void
tl_tail(const char *label, const char *path, int missing_ok)
{
	/* Lines cut short: chromium's and nginx's logs run long. */
	if (tl_print_tail(label, path, TL_TAIL, 300) < 0 && !missing_ok) {
		printf("# --- %s (%s)\n#   (no log)\n", label, path);
	}
}

/* teardown: close user sockets, stop every process (newest first:
 * clients go before the server they talk to), check the logs, and show
 * their tails after a failure; the directory goes after a pass unless
 * PROG_KEEP (E2E_KEEP, FEATURES_KEEP) is set. */
static inline void
teardown(struct test *t)
{
	char path[256], st[32], label[96], keep[64];
	int i, k;

	while (t->nfds > 0) {
		user_close(t, t->fds[t->nfds - 1]);
	}
	free(t->fds);
	t->fds = NULL;
	for (i = t->nprocs - 1; i >= 0; i--) {
		stop_checked(t, &t->procs[i]);
	}
	for (i = 0; i < t->nprocs; i++) {
		for (k = 0; !t->procs[i].tool && tl_sanitizer_marks[k]; k++) {
			if (tl_file_contains(t->procs[i].log, tl_sanitizer_marks[k])) {
				fail(t, "%s log contains \"%s\"", t->procs[i].name,
				     tl_sanitizer_marks[k]);
			}
		}
		if (t->procs[i].vglog[0]) {
			tl_valgrind_clean(t, &t->procs[i]);
		}
	}
	if (!t->failed) {
		for (i = 0; tl_h.prog[i] != '\0' && i < 50; i++) {
			keep[i] = (char)(tl_h.prog[i] >= 'a' && tl_h.prog[i] <= 'z'
			                 ? tl_h.prog[i] - 'a' + 'A' : tl_h.prog[i]);
		}
		snprintf(keep + i, sizeof(keep) - (size_t)i, "_KEEP");
		if (getenv(keep) == NULL) {
			tl_remove_tree(t->dir);
		}
		return;
	}
	for (i = 0; i < t->nprocs; i++) {
		snprintf(label, sizeof(label), "%s, %s", t->procs[i].name,
		         tl_status_str(&t->procs[i], st, sizeof(st)));
		tl_tail(label, t->procs[i].log, 0);
		snprintf(path, sizeof(path), "%s/%s.out", t->dir, t->procs[i].name);
		tl_tail(label, path, 1);
		if (t->procs[i].vglog[0]) {
			tl_tail(label, t->procs[i].vglog, 0);
		}
	}
	printf("# logs kept in %s\n", t->dir);
}

static inline int
tl_watchdog_s(void)
{
	return tl_h.watchdog_s * (tl_h.tscale > 1 ? 3 : 1);
}

/* tl_on_alarm: the watchdog: kill the test's processes, say so, end. */
static inline void
tl_on_alarm(int sig)
{
	struct test *t = tl_h.current;
	char buf[512];
	int i, n;

	(void)sig;
	if (t != NULL) {
		for (i = 0; i < t->nprocs; i++) {
			tl_kill_group(&t->procs[i]);
		}
		n = snprintf(buf, sizeof(buf),
		             "FAIL - %s: watchdog: still running after %d s; "
		             "logs in %s\n%s: %d passed, %d failed, %d skipped\n",
		             t->name, tl_watchdog_s(), t->dir, tl_h.prog,
		             tl_h.passed, tl_h.failed + 1, tl_h.skipped);
		if (n > 0 && write(1, buf, (size_t)n) < 0) {
			/* Nothing left to tell. */
		}
	}
	_exit(1);
}

/* run_test: one test, from a fresh directory to its result line. */
static inline void
run_test(const struct tl_case *c)
{
	struct test t;
	int64_t t0 = tl_now_ms();
	const char *tmp = getenv("TMPDIR");

	if ((c->flags & TL_HEAVY) && tl_h.valgrind[0] != '\0') {
		printf("skip - %s # too heavy under valgrind\n", c->name);
		tl_h.skipped++;
		return;
	}
	memset(&t, 0, sizeof(t));
	t.name = c->name;
	t.host = "127.0.0.1";
	snprintf(t.dir, sizeof(t.dir), "%s/dialback-%s-%s-XXXXXX",
	         tmp && *tmp ? tmp : "/tmp", tl_h.prog, c->name);
	if (mkdtemp(t.dir) == NULL) {
		printf("FAIL - %s: mkdtemp %s: %s\n", c->name, t.dir,
		       strerror(errno));
		tl_h.failed++;
		return;
	}
	tl_h.current = &t;
	alarm((unsigned)tl_watchdog_s());
	c->fn(&t);
	alarm(0);
	teardown(&t);
	tl_h.current = NULL;
	if (t.failed) {
		printf("FAIL - %s: %s\n", c->name, t.why);
		tl_h.failed++;
	} else if (t.skip != NULL) {
		printf("skip - %s # %s\n", c->name, t.skip);
		tl_h.skipped++;
	} else {
		printf("ok - %s (%.1f s)\n", c->name,
		       (double)(tl_now_ms() - t0) / 1000.0);
		tl_h.passed++;
	}
	fflush(stdout);
}

/* tl_use_valgrind: with VALGRIND set (and not 0), ./server and ./client
 * run under valgrind's memcheck and deadlines are 5 times longer.  0, or
 * -1 if there is no valgrind to use. */
static inline int
tl_use_valgrind(void)
{
	const char *vg = getenv("VALGRIND");

	if (vg == NULL || strcmp(vg, "") == 0 || strcmp(vg, "0") == 0) {
		return 0;
	}
	if (tl_find_prog("valgrind", tl_h.valgrind, sizeof(tl_h.valgrind)) < 0) {
		fprintf(stderr, "VALGRIND=%s but no valgrind in PATH\n", vg);
		return -1;
	}
	tl_h.tscale = 5;
	printf("# ./server and ./client run under %s\n", tl_h.valgrind);
	return 0;
}

/*
 * tl_main: "PROG [NAME-SUBSTRING]": the tests whose names contain the
 * argument (all without one; a TL_EXPLICIT test only when named in
 * full), then the summary line.  "PROG --in-group ARGV..." is start's
 * TL_GROUP: setpgid, then exec.  Returns main's exit status: 1 if a test
 * failed or none matched.
 */
static inline int
tl_main(int argc, char **argv, const char *prog, int watchdog_s,
        const struct tl_case *cases, size_t n)
{
	const char *filter = argc > 1 ? argv[1] : NULL;
	struct sigaction sa;
	size_t i;
	int ran = 0;

	if (argc >= 3 && strcmp(argv[1], "--in-group") == 0) {
		setpgid(0, 0);
		execv(argv[2], argv + 2);
		fprintf(stderr, "exec %s: %s\n", argv[2], strerror(errno));
		return 127;
	}
	tl_h.prog = prog;
	tl_h.watchdog_s = watchdog_s;
	if (strchr(argv[0], '/') != NULL) {
		snprintf(tl_h.self, sizeof(tl_h.self), "%s", argv[0]);
	} else {
		snprintf(tl_h.self, sizeof(tl_h.self), "./tests/%s", prog);
	}
	if (argc > 2 || (filter && strcmp(filter, "-h") == 0)) {
		printf("usage: tests/%s [NAME-SUBSTRING]\n", prog);
		return argc > 2 ? 2 : 0;
	}
	/* stdout line-buffered; SIGPIPE ignored, so that a peer gone away is
	 * an error from send, not the end of the run; SIGALRM, the
	 * watchdog. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = tl_on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	/* Tests choose the token themselves. */
	unsetenv("DIALBACK_TOKEN");

	for (i = 0; i < n; i++) {
		if ((cases[i].flags & TL_EXPLICIT)
		    ? (filter == NULL || strcmp(filter, cases[i].name) != 0)
		    : (filter != NULL && strstr(cases[i].name, filter) == NULL)) {
			continue;
		}
		run_test(&cases[i]);
		ran++;
	}
	if (ran == 0) {
		fprintf(stderr, "%s: no test matches \"%s\"\n", prog, filter);
	}
	printf("%s: %d passed, %d failed, %d skipped\n", prog, tl_h.passed,
	       tl_h.failed, tl_h.skipped);
	return tl_h.failed > 0 || ran == 0 ? 1 : 0;
}

#endif
