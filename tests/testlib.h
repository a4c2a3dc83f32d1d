/*
 * Helpers shared by the test programs (tests/e2e.c, tests/features.c,
 * tests/svc.c, tests/bench.c): clocks, sockets with deadlines, a
 * deterministic byte stream, child processes and their logs, and the
 * harness around a test.  Header-only; every function is static inline so
 * a file that uses only some of them compiles warning-free.  Times are
 * milliseconds; a "deadline" is an absolute tl_now_ms() value.
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

/* tl_count_fds: open descriptors of pid, from /proc/PID/fd; -1 if unknown. */
static inline int
tl_count_fds(pid_t pid)
{
	char path[64];
	DIR *d;
	struct dirent *e;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%ld/fd", (long)pid);
	d = opendir(path);
	if (d == NULL) {
		return -1;
	}
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
			n++;
		}
	}
	closedir(d);
	return n;
}

/* What a process's descriptors are, from /proc/PID/fd. */
struct tl_fds {
	int total;
	int sockets;
	int pipes;          /* pipe ends */
	int unpaired;       /* pipe ends whose other end the process lacks */
	int other;          /* files, /dev/null, epoll, ... */
};

static inline int
tl_cmp_ulong(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;

	return x < y ? -1 : x > y;
}

/* tl_fd_census: sort pid's descriptors into *c.  0, or -1 if /proc can't
 * tell. */
static inline int
tl_fd_census(pid_t pid, struct tl_fds *c)
{
	char dir[64], path[400], target[128];
	unsigned long *ino = NULL, *more, v;
	size_t n = 0, cap = 0, i, j;
	struct dirent *e;
	DIR *d;

	memset(c, 0, sizeof(*c));
	snprintf(dir, sizeof(dir), "/proc/%ld/fd", (long)pid);
	d = opendir(dir);
	if (d == NULL) {
		return -1;
	}
	while ((e = readdir(d)) != NULL) {
		ssize_t len;

		if (e->d_name[0] == '.') {
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len < 0) {
			continue;     /* closed while we looked */
		}
		target[len] = '\0';
		c->total++;
		if (strncmp(target, "socket:", 7) == 0) {
			c->sockets++;
		} else if (sscanf(target, "pipe:[%lu]", &v) == 1) {
			c->pipes++;
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				more = realloc(ino, cap * sizeof(*ino));
				if (more == NULL) {
					break;
				}
				ino = more;
			}
			ino[n++] = v;
		} else {
			c->other++;
		}
	}
	closedir(d);
	if (n > 0) {
		qsort(ino, n, sizeof(*ino), tl_cmp_ulong);
	}
	for (i = 0; i < n; i = j) {
		for (j = i; j < n && ino[j] == ino[i]; j++) {
			continue;
		}
		if (j - i == 1) {
			c->unpaired++;
		}
	}
	free(ino);
	return 0;
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
	char name[32];
	char log[256];      /* stdout and stderr */
	char vglog[256];    /* valgrind's log; "" when not run under it */
};

/* tl_proc_init: p cleared and called name, logging to DIR/name.log;
 * product set if argv0 is ./server or ./client. */
static inline void
tl_proc_init(struct tl_proc *p, const char *dir, const char *name,
             const char *argv0)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(p->log, sizeof(p->log), "%s/%s.log", dir, name);
	p->product = strcmp(argv0, "./server") == 0
	             || strcmp(argv0, "./client") == 0;
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

/* ---- checks -------------------------------------------------------------- */

/* Each check is 0 if it holds, else -1 with the reason, for the test's
 * failure line, in why (len bytes). */

/* tl_check_log: s shows up in p's log within ms. */
static inline int
tl_check_log(struct tl_proc *p, const char *s, int ms, char *why, size_t len)
{
	char st[32];
	int r = tl_wait_log(p, s, ms);

	if (r == 1) {
		return 0;
	}
	if (r < 0) {
		snprintf(why, len, "%s exited (%s) before logging \"%s\"", p->name,
		         tl_status_str(p, st, sizeof(st)), s);
	} else {
		snprintf(why, len, "%s did not log \"%s\" within %d ms", p->name,
		         s, ms);
	}
	return -1;
}

/* tl_check_exit: p exits with status code within ms. */
static inline int
tl_check_exit(struct tl_proc *p, int code, int ms, char *why, size_t len)
{
	char st[32];

	if (!tl_proc_wait(p, ms)) {
		snprintf(why, len, "%s still running after %d ms (expected exit %d)",
		         p->name, ms, code);
		return -1;
	}
	if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != code) {
		snprintf(why, len, "%s: %s, expected exit %d", p->name,
		         tl_status_str(p, st, sizeof(st)), code);
		return -1;
	}
	return 0;
}

/* tl_check_alive: p is still running. */
static inline int
tl_check_alive(struct tl_proc *p, char *why, size_t len)
{
	char st[32];

	if (tl_proc_poll(p)) {
		snprintf(why, len, "%s is gone (%s)", p->name,
		         tl_status_str(p, st, sizeof(st)));
		return -1;
	}
	return 0;
}

/* ---- the harness --------------------------------------------------------- */

/* tl_harness_init: stdout line-buffered; SIGPIPE ignored, so that a peer
 * gone away is an error from send, not the end of the run; SIGALRM to
 * on_alarm, the watchdog. */
static inline void
tl_harness_init(void (*on_alarm)(int))
{
	struct sigaction sa;

	setvbuf(stdout, NULL, _IOLBF, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
}

/* tl_test_dir: a fresh directory $TMPDIR/dialback-PROG-NAME-XXXXXX (/tmp
 * without TMPDIR) into dir.  0, or -1 with errno set. */
static inline int
tl_test_dir(char *dir, size_t len, const char *prog, const char *name)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(dir, len, "%s/dialback-%s-%s-XXXXXX",
	         tmp && *tmp ? tmp : "/tmp", prog, name);
	return mkdtemp(dir) == NULL ? -1 : 0;
}

/* tl_report: a test's result line: "FAIL - NAME: WHY" when why is not
 * NULL, else "ok - NAME # skip: SKIP" or "ok - NAME (S s)" from t0.
 * 1 if it counts as passed, 0 if not. */
static inline int
tl_report(const char *name, const char *why, const char *skip, int64_t t0)
{
	if (why != NULL) {
		printf("FAIL - %s: %s\n", name, why);
	} else if (skip != NULL) {
		printf("ok - %s # skip: %s\n", name, skip);
	} else {
		printf("ok - %s (%.1f s)\n", name,
		       (double)(tl_now_ms() - t0) / 1000.0);
	}
	fflush(stdout);
	return why == NULL;
}

#endif
