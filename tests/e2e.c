/*
 * End-to-end tests: run the real ./server and ./client on 127.0.0.1 with
 * freshly picked ports, tests/svc as the local service, and users that
 * connect to the public port.  Run from the repository root:
 *
 *     ./tests/e2e [NAME-SUBSTRING]
 *
 * With E2E_KEEP set in the environment, logs are kept after a pass too.
 *
 * Each test starts its own processes, logs each to a file in a fresh
 * temporary directory, and stops only the PIDs it started.  Every wait has
 * a deadline; nothing sleeps blindly.  Output is "ok - NAME" or
 * "FAIL - NAME: why" per test (with the logs' tails after a failure), then
 * "e2e: N passed, N failed".
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testlib.h"

#define START_MS     15000   /* a process reaches "listening"/"forwarding" */
#define SMALL_MS     15000   /* a small transfer */
#define BIG_MS       90000   /* tens of MiB, leaving room for ASan */
#define WATCHDOG_S   240     /* a test that takes longer is killed */
#define MAX_PROCS    12
#define TAIL_LINES   30
#define CHUNK        (32 * 1024)
#define MIB          (1024 * 1024)

static const char *const sanitizer_marks[] = {
	"AddressSanitizer", "LeakSanitizer", "runtime error:", NULL
};

/* ---- per-test state ------------------------------------------------------- */

struct test {
	const char *name;
	char dir[128];
	const char *host;            /* "127.0.0.1" or "::1" */
	struct tl_proc procs[MAX_PROCS];
	int nprocs;
	int *fds;                    /* user sockets still open */
	size_t nfds, capfds;
	int failed;
	char why[1024];
	const char *skip;
	int ctl, tun, pub, loc;      /* ports */
	struct tl_proc *server, *client, *svc;
};

static struct test *current;     /* for the watchdog only */
static int n_passed, n_failed;

/* fail: record why the test failed (the first reason wins).  Returns -1 so
 * a test can say "return fail(t, ...)". */
static int fail(struct test *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int
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

static void
on_alarm(int sig)
{
	char buf[256];
	int i, n;

	(void)sig;
	if (current != NULL) {
		for (i = 0; i < current->nprocs; i++) {
			if (!current->procs[i].done && current->procs[i].pid > 0) {
				kill(current->procs[i].pid, SIGKILL);
			}
		}
		n = snprintf(buf, sizeof(buf),
		             "FAIL - %s: watchdog: still running after %d s; "
		             "logs in %s\ne2e: %d passed, %d failed\n",
		             current->name, WATCHDOG_S, current->dir, n_passed,
		             n_failed + 1);
		if (n > 0 && write(1, buf, (size_t)n) < 0) {
			/* Nothing left to tell. */
		}
	}
	_exit(1);
}

/* ---- user sockets --------------------------------------------------------- */

static void
track_fd(struct test *t, int fd)
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

/* user_close: close a socket from user_connect (and forget it). */
static void
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

/* user_reset: close a socket from user_connect with a reset (linger 0). */
static void
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

/* user_connect: a user's connection to port on t->host; -1 and fail(). */
static int
user_connect(struct test *t, int port)
{
	int fd = tl_connect(t->host, port, tl_now_ms() + 5000);

	if (fd < 0) {
		return fail(t, "connect %s port %d: %s", t->host, port,
		            strerror(errno));
	}
	track_fd(t, fd);
	return fd;
}

/* ---- processes ------------------------------------------------------------ */

/*
 * start: run argv (NULL-ended) as a child named name.  Its stdout and
 * stderr go to DIR/name.log, or with split_out stdout to DIR/name.out and
 * stderr to DIR/name.log.  env as for tl_spawn.  NULL and fail() on error.
 */
static struct tl_proc *
start(struct test *t, const char *name, const char *const argv[],
      const char *const env[], int split_out)
{
	struct tl_proc *p;
	char out[256];

	if (t->nprocs == MAX_PROCS) {
		fail(t, "too many processes");
		return NULL;
	}
	p = &t->procs[t->nprocs];
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(p->log, sizeof(p->log), "%s/%s.log", t->dir, name);
	snprintf(out, sizeof(out), "%s/%s.out", t->dir, name);
	p->pid = tl_spawn((char *const *)argv, env, split_out ? out : p->log,
	                  split_out ? p->log : NULL);
	if (p->pid < 0) {
		fail(t, "fork: %s", strerror(errno));
		return NULL;
	}
	t->nprocs++;
	return p;
}

/* wait_log: wait for s in p's log; fail() with the reason if it doesn't
 * show up.  0 or -1. */
static int
wait_log(struct test *t, struct tl_proc *p, const char *s, int ms)
{
	char st[32];
	int r = tl_wait_log(p, s, ms);

	if (r == 1) {
		return 0;
	}
	if (r < 0) {
		return fail(t, "%s exited (%s) before logging \"%s\"", p->name,
		            tl_status_str(p, st, sizeof(st)), s);
	}
	return fail(t, "%s did not log \"%s\" within %d ms", p->name, s, ms);
}

/* expect_exit: p must exit with status code within ms. */
static int
expect_exit(struct test *t, struct tl_proc *p, int code, int ms)
{
	char st[32];

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

/* expect_alive: p must still be running. */
static int
expect_alive(struct test *t, struct tl_proc *p)
{
	char st[32];

	if (tl_proc_poll(p)) {
		return fail(t, "%s is gone (%s)", p->name,
		            tl_status_str(p, st, sizeof(st)));
	}
	return 0;
}

/* fmt_addr: "127.0.0.1:P" or "[::1]:P" into buf (64 bytes). */
static const char *
fmt_addr(char *buf, const char *host, int port)
{
	if (strchr(host, ':')) {
		snprintf(buf, 64, "[%s]:%d", host, port);
	} else {
		snprintf(buf, 64, "%s:%d", host, port);
	}
	return buf;
}

/* pick_ports: fresh control, tunnel, public and local ports. */
static int
pick_ports(struct test *t)
{
	int p[4];

	if (tl_free_ports(t->host, p, 4) < 0) {
		return fail(t, "picking free ports on %s: %s", t->host,
		            strerror(errno));
	}
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	t->loc = p[3];
	return 0;
}

/* start_server: ./server on t's ports with -heartbeat 1 and, if token is
 * not NULL, -token token; waits for "listening". */
static struct tl_proc *
start_server(struct test *t, const char *name, const char *token)
{
	char c[64], u[64], p[64];
	const char *argv[16] = {
		"./server", "-control", fmt_addr(c, t->host, t->ctl),
		"-tunnel", fmt_addr(u, t->host, t->tun),
		"-public", fmt_addr(p, t->host, t->pub),
		"-heartbeat", "1", NULL
	};
	struct tl_proc *s;

	if (token) {
		argv[9] = "-token";
		argv[10] = token;
		argv[11] = NULL;
	}
	s = start(t, name, argv, NULL, 0);
	if (s == NULL || wait_log(t, s, "listening", START_MS) < 0) {
		return NULL;
	}
	return s;
}

/* start_client: ./client -remote HOST:CTL -local HOST:LOC [-token token]
 * with env; waits for "forwarding" when wait is set. */
static struct tl_proc *
start_client(struct test *t, const char *name, const char *token,
             const char *const env[], int wait)
{
	char r[64], l[64];
	const char *argv[16] = {
		"./client", "-remote", fmt_addr(r, t->host, t->ctl),
		"-local", fmt_addr(l, t->host, t->loc), NULL
	};
	struct tl_proc *c;

	if (token) {
		argv[5] = "-token";
		argv[6] = token;
		argv[7] = NULL;
	}
	c = start(t, name, argv, env, 0);
	if (c == NULL) {
		return NULL;
	}
	if (wait && wait_log(t, c, "forwarding", START_MS) < 0) {
		return NULL;
	}
	return c;
}

/* start_svc: tests/svc MODE HOST:PORT [NBYTES]; waits for "ready". */
static struct tl_proc *
start_svc(struct test *t, const char *name, const char *mode, int port,
          uint64_t nbytes)
{
	char a[64], n[32];
	const char *argv[8] = { "tests/svc", mode, fmt_addr(a, t->host, port),
	                        NULL, NULL };
	struct tl_proc *s;

	if (strcmp(mode, "source") == 0) {
		snprintf(n, sizeof(n), "%llu", (unsigned long long)nbytes);
		argv[3] = n;
	}
	s = start(t, name, argv, NULL, 0);
	if (s == NULL || wait_log(t, s, "ready", START_MS) < 0) {
		return NULL;
	}
	return s;
}

/* expect_forwarding_line: c's log names the public address and the local
 * service as "forwarding PUBLIC -> LOCAL". */
static int
expect_forwarding_line(struct test *t, struct tl_proc *c)
{
	char pub[64], loc[64], want[160];

	snprintf(want, sizeof(want), "forwarding %s -> %s",
	         fmt_addr(pub, t->host, t->pub), fmt_addr(loc, t->host, t->loc));
	if (!tl_file_contains(c->log, want)) {
		return fail(t, "%s log lacks \"%s\"", c->name, want);
	}
	return 0;
}

/* setup: ports, svc echo, server, client attached.  0 or -1. */
static int
setup(struct test *t)
{
	if (pick_ports(t) < 0) {
		return -1;
	}
	t->svc = start_svc(t, "svc", "echo", t->loc, 0);
	if (t->svc == NULL) {
		return -1;
	}
	t->server = start_server(t, "server", NULL);
	if (t->server == NULL) {
		return -1;
	}
	t->client = start_client(t, "client", NULL, NULL, 1);
	if (t->client == NULL) {
		return -1;
	}
	return expect_forwarding_line(t, t->client);
}

/* ---- data flows ----------------------------------------------------------- */

/*
 * One user connection's traffic: send send_n bytes of stream send_seed,
 * expect exactly expect_n bytes of stream expect_seed and then EOF.
 * shut_after_send: shutdown(SHUT_WR) once everything is sent.
 * write_first: read nothing until all is sent and shut.
 * reset_at: once this many bytes arrived, close with a reset; done.
 */
struct flow {
	int fd;
	uint64_t send_n, expect_n, reset_at;
	int shut_after_send, write_first;
	uint64_t sent, got;
	int shut, eof, done;
	struct tl_stream tx, rx;
	uint8_t *chunk;
	size_t coff, clen;
};

static void
flow_init(struct flow *f, int fd, uint64_t send_n, uint32_t send_seed,
          uint64_t expect_n, uint32_t expect_seed)
{
	memset(f, 0, sizeof(*f));
	f->fd = fd;
	f->send_n = send_n;
	f->expect_n = expect_n;
	f->shut_after_send = 1;
	tl_stream_init(&f->tx, send_seed);
	tl_stream_init(&f->rx, expect_seed);
}

/* flow_write: send what the socket takes.  -1 and fail() on error. */
static int
flow_write(struct test *t, struct flow *f, int i, const char *what)
{
	ssize_t w;

	while (f->sent < f->send_n) {
		if (f->clen == 0) {
			uint64_t left = f->send_n - f->sent;

			f->clen = left < CHUNK ? (size_t)left : CHUNK;
			f->coff = 0;
			tl_stream_fill(&f->tx, f->chunk, f->clen);
		}
		w = send(f->fd, f->chunk + f->coff, f->clen, MSG_NOSIGNAL);
		if (w > 0) {
			f->coff += (size_t)w;
			f->clen -= (size_t)w;
			f->sent += (uint64_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 0;
		}
		return fail(t, "%s: user %d: write after %llu of %llu bytes "
		            "(received %llu): %s", what, i,
		            (unsigned long long)f->sent,
		            (unsigned long long)f->send_n,
		            (unsigned long long)f->got, strerror(errno));
	}
	return 0;
}

/* flow_read: take and check what arrived.  -1 and fail() on a wrong byte,
 * too many bytes, an early EOF or an error. */
static int
flow_read(struct test *t, struct flow *f, int i, const char *what)
{
	static uint8_t got[65536], want[65536];
	ssize_t r;
	size_t k;

	while (!f->eof && !f->done) {
		r = read(f->fd, got, sizeof(got));
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 0;
		}
		if (r < 0) {
			return fail(t, "%s: user %d: read after %llu of %llu bytes "
			            "(sent %llu of %llu): %s", what, i,
			            (unsigned long long)f->got,
			            (unsigned long long)f->expect_n,
			            (unsigned long long)f->sent,
			            (unsigned long long)f->send_n, strerror(errno));
		}
		if (r == 0) {
			f->eof = 1;
			if (f->got != f->expect_n) {
				return fail(t, "%s: user %d: EOF after %llu of %llu "
				            "bytes (sent %llu of %llu)", what, i,
				            (unsigned long long)f->got,
				            (unsigned long long)f->expect_n,
				            (unsigned long long)f->sent,
				            (unsigned long long)f->send_n);
			}
			return 0;
		}
		if (f->got + (uint64_t)r > f->expect_n) {
			return fail(t, "%s: user %d: %llu bytes arrived, expected "
			            "only %llu", what, i,
			            (unsigned long long)(f->got + (uint64_t)r),
			            (unsigned long long)f->expect_n);
		}
		tl_stream_fill(&f->rx, want, (size_t)r);
		if (memcmp(got, want, (size_t)r) != 0) {
			for (k = 0; got[k] == want[k]; k++) {
				continue;
			}
			return fail(t, "%s: user %d: byte %llu is 0x%02x, expected "
			            "0x%02x", what, i,
			            (unsigned long long)(f->got + k), got[k], want[k]);
		}
		f->got += (uint64_t)r;
		if (f->reset_at && f->got >= f->reset_at) {
			return 0;   /* pump() resets it */
		}
	}
	return 0;
}

/* flow_done: the flow has nothing more to do. */
static int
flow_done(const struct flow *f)
{
	return f->done || (f->eof && f->sent == f->send_n
	                   && (f->shut || !f->shut_after_send));
}

/*
 * pump: drive n flows in one poll loop until all are done or ms pass.
 * 0, or -1 with fail() naming the first problem.  Sockets stay open
 * (except reset ones); the caller closes them.
 */
static int
pump(struct test *t, struct flow *fl, int n, int ms, const char *what)
{
	int64_t deadline = tl_now_ms() + ms;
	struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
	int *idx = calloc((size_t)n, sizeof(*idx));
	int i, rc = -1;

	if (pfd == NULL || idx == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		fl[i].chunk = malloc(CHUNK);
		if (fl[i].chunk == NULL) {
			fail(t, "out of memory");
			goto out;
		}
	}
	for (;;) {
		int np = 0, r;

		for (i = 0; i < n; i++) {
			struct flow *f = &fl[i];
			short ev = 0;

			if (f->done) {
				continue;
			}
			if (f->reset_at && f->got >= f->reset_at) {
				user_reset(t, f->fd);
				f->fd = -1;
				f->done = 1;
				continue;
			}
			if (!f->shut && f->shut_after_send && f->sent == f->send_n) {
				if (shutdown(f->fd, SHUT_WR) < 0) {
					fail(t, "%s: user %d: shutdown: %s", what, i,
					     strerror(errno));
					goto out;
				}
				f->shut = 1;
			}
			if (flow_done(f)) {
				f->done = 1;
				continue;
			}
			if (f->sent < f->send_n) {
				ev |= POLLOUT;
			}
			if (!f->eof && !(f->write_first && f->sent < f->send_n)) {
				ev |= POLLIN;
			}
			pfd[np].fd = f->fd;
			pfd[np].events = ev;
			pfd[np].revents = 0;
			idx[np++] = i;
		}
		if (np == 0) {
			rc = 0;
			goto out;
		}
		if (tl_now_ms() >= deadline) {
			for (i = 0; i < n && fl[i].done; i++) {
				continue;
			}
			fail(t, "%s: timeout after %d ms: user %d of %d sent %llu of "
			     "%llu, received %llu of %llu, eof %d, shut %d", what, ms,
			     i, n, (unsigned long long)fl[i].sent,
			     (unsigned long long)fl[i].send_n,
			     (unsigned long long)fl[i].got,
			     (unsigned long long)fl[i].expect_n, fl[i].eof,
			     fl[i].shut);
			goto out;
		}
		r = poll(pfd, (nfds_t)np, tl_left(deadline));
		if (r < 0 && errno != EINTR) {
			fail(t, "poll: %s", strerror(errno));
			goto out;
		}
		for (i = 0; r > 0 && i < np; i++) {
			struct flow *f = &fl[idx[i]];
			short re = pfd[i].revents;

			if (re & (POLLOUT | POLLERR | POLLHUP)) {
				if ((pfd[i].events & POLLOUT)
				    && flow_write(t, f, idx[i], what) < 0) {
					goto out;
				}
			}
			if (re & (POLLIN | POLLERR | POLLHUP)) {
				if ((pfd[i].events & POLLIN)
				    && flow_read(t, f, idx[i], what) < 0) {
					goto out;
				}
			}
		}
	}
out:
	for (i = 0; i < n; i++) {
		free(fl[i].chunk);
		fl[i].chunk = NULL;
	}
	free(pfd);
	free(idx);
	return rc;
}

/* echo_once: one user on port sends size bytes (seed), half-closes and
 * expects them back and EOF.  write_first: send and shut before reading. */
static int
echo_once(struct test *t, int port, uint64_t size, uint32_t seed,
          int write_first, int ms, const char *what)
{
	struct flow f;
	int fd = user_connect(t, port), rc;

	if (fd < 0) {
		return -1;
	}
	flow_init(&f, fd, size, seed, size, seed);
	f.write_first = write_first;
	rc = pump(t, &f, 1, ms, what);
	user_close(t, fd);
	return rc;
}

/* ---- the tests ------------------------------------------------------------ */

static void
test_echo_sizes(struct test *t)
{
	static const uint64_t sizes[] = { 0, 1, 65535, 65536, 65537, MIB };
	char what[64];
	size_t i;

	if (setup(t) < 0) {
		return;
	}
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(what, sizeof(what), "echo %llu bytes",
		         (unsigned long long)sizes[i]);
		if (echo_once(t, t->pub, sizes[i], 100 + (uint32_t)i, 0, SMALL_MS,
		              what) < 0) {
			return;
		}
	}
}

static void
test_echo_32mib(struct test *t)
{
	if (setup(t) < 0) {
		return;
	}
	echo_once(t, t->pub, 32 * MIB, 7, 0, BIG_MS, "echo 32 MiB");
}

static void
test_download_64mib(struct test *t)
{
	struct flow f;
	int fd;

	if (pick_ports(t) < 0) {
		return;
	}
	t->svc = start_svc(t, "svc", "source", t->loc, 64 * MIB);
	if (t->svc == NULL) {
		return;
	}
	t->server = start_server(t, "server", NULL);
	if (t->server == NULL) {
		return;
	}
	t->client = start_client(t, "client", NULL, NULL, 1);
	if (t->client == NULL) {
		return;
	}
	fd = user_connect(t, t->pub);
	if (fd < 0) {
		return;
	}
	flow_init(&f, fd, 0, 0, 64 * MIB, 1);
	f.shut_after_send = 0;
	pump(t, &f, 1, BIG_MS, "download 64 MiB");
	user_close(t, fd);
}

static void
test_half_close(struct test *t)
{
	if (setup(t) < 0) {
		return;
	}
	echo_once(t, t->pub, 100 * 1024, 11, 1, SMALL_MS, "half-close 100 KiB");
}

/* many_echo: n users at once, each size bytes of its own stream. */
static int
many_echo(struct test *t, int port, int n, uint64_t size, int ms,
          const char *what)
{
	struct flow *fl = calloc((size_t)n, sizeof(*fl));
	int i, rc = -1;

	if (fl == NULL) {
		return fail(t, "out of memory");
	}
	for (i = 0; i < n; i++) {
		fl[i].fd = -1;
	}
	for (i = 0; i < n; i++) {
		int fd = user_connect(t, port);

		if (fd < 0) {
			goto out;
		}
		flow_init(&fl[i], fd, size, 1000 + (uint32_t)i, size,
		          1000 + (uint32_t)i);
	}
	rc = pump(t, fl, n, ms, what);
out:
	for (i = 0; i < n; i++) {
		user_close(t, fl[i].fd);
	}
	free(fl);
	return rc;
}

static void
test_concurrent_200(struct test *t)
{
	if (setup(t) < 0) {
		return;
	}
	many_echo(t, t->pub, 200, 4096, 30000, "200 users");
}

static void
test_no_client(struct test *t)
{
	const char *how = "";
	int fd;

	if (pick_ports(t) < 0) {
		return;
	}
	t->server = start_server(t, "server", NULL);
	if (t->server == NULL) {
		return;
	}
	fd = user_connect(t, t->pub);
	if (fd < 0) {
		return;
	}
	if (tl_wait_closed(fd, tl_now_ms() + 2000, NULL, &how) < 0) {
		fail(t, "user not closed within 2 s with no client attached");
	}
	user_close(t, fd);
	expect_alive(t, t->server);
}

static void
test_local_down(struct test *t)
{
	const char *how = "";
	int fd;

	if (pick_ports(t) < 0) {
		return;
	}
	t->server = start_server(t, "server", NULL);
	if (t->server == NULL) {
		return;
	}
	t->client = start_client(t, "client", NULL, NULL, 1);
	if (t->client == NULL) {
		return;
	}
	fd = user_connect(t, t->pub);
	if (fd < 0) {
		return;
	}
	if (tl_wait_closed(fd, tl_now_ms() + 3000, NULL, &how) < 0) {
		fail(t, "user not closed within 3 s while the local service "
		     "is down");
		user_close(t, fd);
		return;
	}
	user_close(t, fd);
	if (expect_alive(t, t->client) < 0) {
		return;
	}
	t->svc = start_svc(t, "svc", "echo", t->loc, 0);
	if (t->svc == NULL) {
		return;
	}
	if (echo_once(t, t->pub, 65536, 21, 0, SMALL_MS,
	              "echo after the service came up") < 0) {
		return;
	}
	expect_alive(t, t->client);
}

static void
test_wrong_token(struct test *t)
{
	static const char *const env_right[] = {
		"DIALBACK_TOKEN=right-secret", NULL
	};
	struct tl_proc *c;

	if (pick_ports(t) < 0) {
		return;
	}
	t->server = start_server(t, "server", "right-secret");
	if (t->server == NULL) {
		return;
	}

	c = start_client(t, "client-wrong", "wrong-secret", NULL, 0);
	if (c == NULL || expect_exit(t, c, 1, 5000) < 0) {
		return;
	}
	if (!tl_file_contains(c->log, "token")) {
		fail(t, "client-wrong exited 1 but its log does not mention "
		     "\"token\"");
		return;
	}

	c = start_client(t, "client-env", NULL, env_right, 1);
	if (c == NULL) {
		return;
	}
	tl_proc_stop(c);

	c = start_client(t, "client-flag-wins", "wrong-secret", env_right, 0);
	if (c == NULL || expect_exit(t, c, 1, 5000) < 0) {
		return;
	}
	if (!tl_file_contains(c->log, "token")) {
		fail(t, "client-flag-wins exited 1 but its log does not mention "
		     "\"token\"");
		return;
	}
	expect_alive(t, t->server);
}

static void
test_second_client(struct test *t)
{
	struct tl_proc *c2;

	if (setup(t) < 0) {
		return;
	}
	c2 = start_client(t, "client2", NULL, NULL, 0);
	if (c2 == NULL || wait_log(t, c2, "already served by", 10000) < 0) {
		return;
	}
	if (echo_once(t, t->pub, 65536, 31, 0, SMALL_MS,
	              "echo with a second client waiting") < 0) {
		return;
	}
	if (expect_alive(t, c2) < 0) {
		return;
	}
	expect_alive(t, t->client);
}

/* A garbage payload and the port it goes to. */
struct garbage {
	const char *what;
	int tunnel;
	uint8_t *data;
	size_t len;
};

static void
test_garbage(struct test *t)
{
	static const char http[] = "GET / HTTP/1.1\r\n\r\n";
	static uint8_t rnd[4096], big_hdr[3] = { 1, 0xff, 0xff }, join[51];
	struct garbage g[] = {
		{ "control: HTTP", 0, (uint8_t *)http, sizeof(http) - 1 },
		{ "control: 4 KiB random", 0, rnd, sizeof(rnd) },
		{ "control: type 1 length 0xFFFF", 0, big_hdr, sizeof(big_hdr) },
		{ "tunnel: HTTP", 1, (uint8_t *)http, sizeof(http) - 1 },
		{ "tunnel: 4 KiB random", 1, rnd, sizeof(rnd) },
		{ "tunnel: type 1 length 0xFFFF", 1, big_hdr, sizeof(big_hdr) },
		{ "tunnel: forged JOIN", 1, join, sizeof(join) },
	};
	enum { NG = sizeof(g) / sizeof(g[0]) };
	int fds[NG], i;
	struct tl_stream s;

	if (setup(t) < 0) {
		return;
	}
	tl_stream_init(&s, 4242);
	tl_stream_fill(&s, rnd, sizeof(rnd));
	join[0] = 10;
	join[1] = 0;
	join[2] = 48;
	tl_stream_fill(&s, join + 3, 48);

	for (i = 0; i < NG; i++) {
		fds[i] = user_connect(t, g[i].tunnel ? t->tun : t->ctl);
		if (fds[i] < 0) {
			return;
		}
		/* The server may close before taking it all: a failed write
		 * is a close too, and the read below sees it. */
		tl_write_all(fds[i], g[i].data, g[i].len, tl_now_ms() + 2000);
	}
	for (i = 0; i < NG; i++) {
		const char *how = "";

		if (tl_wait_closed(fds[i], tl_now_ms() + 6000, NULL, &how) < 0) {
			fail(t, "%s: connection still open after 6 s", g[i].what);
			return;
		}
		user_close(t, fds[i]);
		fds[i] = -1;
	}
	if (expect_alive(t, t->server) < 0) {
		return;
	}
	echo_once(t, t->pub, 65536, 41, 0, SMALL_MS, "echo after garbage");
}

/* readme_has_lines: every non-empty line of out (trailing spaces cut)
 * is a line of README.md, verbatim or indented four spaces as in a
 * Markdown code block.  0 or -1 and fail(). */
static int
readme_has_lines(struct test *t, const char *readme, const char *out,
                 const char *what)
{
	char *text = tl_read_file(out, NULL), *line, *next, *p;
	int rc = 0;

	if (text == NULL) {
		return fail(t, "%s: can't read its stdout", what);
	}
	if (text[0] == '\0') {
		free(text);
		return fail(t, "%s printed nothing on stdout", what);
	}
	for (line = text; line && *line; line = next) {
		size_t len;
		const char *r;
		int found = 0;

		next = strchr(line, '\n');
		if (next) {
			*next++ = '\0';
		}
		len = strlen(line);
		while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'
		                   || line[len - 1] == '\r')) {
			line[--len] = '\0';
		}
		if (len == 0) {
			continue;
		}
		for (r = readme; r && *r; r = p ? p + 1 : NULL) {
			size_t rl;

			p = strchr(r, '\n');
			rl = p ? (size_t)(p - r) : strlen(r);
			while (rl > 0 && (r[rl - 1] == ' ' || r[rl - 1] == '\t'
			                  || r[rl - 1] == '\r')) {
				rl--;
			}
			/* As is, or as the content of a Markdown code block
			 * indented by four spaces. */
			if ((rl == len && memcmp(r, line, len) == 0)
			    || (rl == len + 4 && memcmp(r, "    ", 4) == 0
			        && memcmp(r + 4, line, len) == 0)) {
				found = 1;
				break;
			}
		}
		if (!found) {
			rc = fail(t, "%s line not in README.md: \"%s\"", what, line);
			break;
		}
	}
	free(text);
	return rc;
}

static void
test_usage_readme(struct test *t)
{
	static const char *const server_h[] = { "./server", "-h", NULL };
	static const char *const client_h[] = { "./client", "-h", NULL };
	char out[256], *readme;
	struct tl_proc *p;

	p = start(t, "server-h", server_h, NULL, 1);
	if (p == NULL || expect_exit(t, p, 0, 5000) < 0) {
		return;
	}
	p = start(t, "client-h", client_h, NULL, 1);
	if (p == NULL || expect_exit(t, p, 0, 5000) < 0) {
		return;
	}
	readme = tl_read_file("README.md", NULL);
	if (readme == NULL) {
		fail(t, "README.md: %s", strerror(errno));
		return;
	}
	snprintf(out, sizeof(out), "%s/server-h.out", t->dir);
	if (readme_has_lines(t, readme, out, "./server -h") == 0) {
		snprintf(out, sizeof(out), "%s/client-h.out", t->dir);
		readme_has_lines(t, readme, out, "./client -h");
	}
	free(readme);
}

static void
test_bad_flags(struct test *t)
{
	static const char *const nope[] = { "./server", "-nope", NULL };
	static const char *const bigport[] = {
		"./server", "-control", "70000", NULL
	};
	static const char *const noremote[] = { "./client", NULL };
	static const struct {
		const char *name;
		const char *const *argv;
	} cases[] = {
		{ "server-nope", nope },
		{ "server-control-70000", bigport },
		{ "client-no-remote", noremote },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tl_proc *p = start(t, cases[i].name, cases[i].argv, NULL, 1);
		size_t len;
		char *err;

		if (p == NULL || expect_exit(t, p, 2, 5000) < 0) {
			return;
		}
		err = tl_read_file(p->log, &len);
		if (err == NULL || len == 0) {
			free(err);
			fail(t, "%s: exit 2 but nothing on stderr", cases[i].name);
			return;
		}
		/* One line: a single newline, at the very end. */
		if (strchr(err, '\n') != err + len - 1) {
			fail(t, "%s: stderr is not exactly one line: \"%s\"",
			     cases[i].name, err);
			free(err);
			return;
		}
		free(err);
	}
}

static void
test_port_in_use(struct test *t)
{
	char c[64], u[64], p[64];
	const char *argv[8] = { "./server", "-control", NULL, "-tunnel", NULL,
	                        "-public", NULL, NULL };
	struct tl_proc *s;
	int lfd;

	if (pick_ports(t) < 0) {
		return;
	}
	lfd = tl_listen(t->host, 0);
	if (lfd < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	track_fd(t, lfd);
	argv[2] = fmt_addr(c, t->host, tl_local_port(lfd));
	argv[4] = fmt_addr(u, t->host, t->tun);
	argv[6] = fmt_addr(p, t->host, t->pub);
	s = start(t, "server", argv, NULL, 1);
	if (s == NULL || expect_exit(t, s, 1, 5000) < 0) {
		return;
	}
	if (!tl_file_contains(s->log, "address in use")) {
		fail(t, "server exited 1 but stderr lacks \"address in use\"");
	}
}

static void
test_sigterm(struct test *t)
{
	if (setup(t) < 0) {
		return;
	}
	kill(t->client->pid, SIGTERM);
	if (expect_exit(t, t->client, 0, 3000) < 0) {
		return;
	}
	kill(t->server->pid, SIGTERM);
	if (expect_exit(t, t->server, 0, 3000) < 0) {
		return;
	}

	/* SIGINT too, on a fresh pair. */
	if (pick_ports(t) < 0) {
		return;
	}
	t->server = start_server(t, "server-int", NULL);
	if (t->server == NULL) {
		return;
	}
	t->client = start_client(t, "client-int", NULL, NULL, 1);
	if (t->client == NULL) {
		return;
	}
	kill(t->client->pid, SIGINT);
	if (expect_exit(t, t->client, 0, 3000) < 0) {
		return;
	}
	kill(t->server->pid, SIGINT);
	if (expect_exit(t, t->server, 0, 3000) < 0) {
		return;
	}
}

static void
test_ipv6(struct test *t)
{
	int fd = tl_listen("::1", 0);

	if (fd < 0) {
		t->skip = "no ::1";
		return;
	}
	close(fd);
	t->host = "::1";
	if (setup(t) < 0) {
		return;
	}
	echo_once(t, t->pub, 256 * 1024, 51, 0, SMALL_MS, "echo over ::1");
}

/* fds_settle: wait until p's descriptor count is at most base. */
static int
fds_settle(struct test *t, struct tl_proc *p, int base, int ms)
{
	int64_t deadline = tl_now_ms() + ms;
	int n;

	for (;;) {
		n = tl_count_fds(p->pid);
		if (n >= 0 && n <= base) {
			return 0;
		}
		if (tl_now_ms() >= deadline) {
			return fail(t, "%s holds %d descriptors %d ms after the users "
			            "ended; %d before them", p->name, n, ms, base);
		}
		tl_pause(20);
	}
}

static void
test_no_fd_leak(struct test *t)
{
	enum { BATCH = 60, ROUNDS = 5 };  /* 300 users */
	struct flow fl[BATCH];
	int base_s, base_c, round, i, n = 0;

	if (tl_count_fds(getpid()) < 0) {
		t->skip = "no /proc";
		return;
	}
	if (setup(t) < 0) {
		return;
	}
	base_s = tl_count_fds(t->server->pid);
	base_c = tl_count_fds(t->client->pid);
	if (base_s < 0 || base_c < 0) {
		fail(t, "can't count descriptors of server or client");
		return;
	}
	for (round = 0; round < ROUNDS; round++) {
		n = 0;
		for (i = 0; i < BATCH; i++) {
			uint32_t seed = 5000 + (uint32_t)(round * BATCH + i);
			int fd = user_connect(t, t->pub);

			if (fd < 0) {
				goto out;
			}
			switch (i % 4) {
			case 0:     /* a clean echo, then close */
				flow_init(&fl[n++], fd, 4096, seed, 4096, seed);
				break;
			case 1:     /* half-close before reading */
				flow_init(&fl[n], fd, 32768, seed, 32768, seed);
				fl[n++].write_first = 1;
				break;
			case 2:     /* reset in the middle of a transfer */
				flow_init(&fl[n], fd, 256 * 1024, seed, 256 * 1024, seed);
				fl[n++].reset_at = 16384;
				break;
			default:    /* connect and leave at once */
				user_close(t, fd);
				break;
			}
		}
		if (pump(t, fl, n, SMALL_MS, "fd-leak users") < 0) {
			goto out;
		}
		for (i = 0; i < n; i++) {
			user_close(t, fl[i].fd);
			fl[i].fd = -1;
		}
	}
	if (fds_settle(t, t->server, base_s, 5000) < 0
	    || fds_settle(t, t->client, base_c, 5000) < 0) {
		return;
	}
	if (expect_alive(t, t->server) == 0 && expect_alive(t, t->client) == 0) {
		echo_once(t, t->pub, 4096, 99, 0, SMALL_MS, "echo afterwards");
	}
	return;
out:
	for (i = 0; i < n; i++) {
		user_close(t, fl[i].fd);
	}
}

/* svc_direct: tests/svc on its own, no server or client; only run when
 * named exactly.  Tells a broken test service from a broken product. */
static void
test_svc_direct(struct test *t)
{
	static const uint64_t sizes[] = { 0, 1, 65535, 65536, 65537, MIB };
	struct flow f;
	size_t i;
	int fd;

	if (pick_ports(t) < 0) {
		return;
	}
	t->svc = start_svc(t, "svc", "echo", t->loc, 0);
	if (t->svc == NULL) {
		return;
	}
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		if (echo_once(t, t->loc, sizes[i], 100 + (uint32_t)i, 0, SMALL_MS,
		              "svc echo") < 0) {
			return;
		}
	}
	if (echo_once(t, t->loc, 32 * MIB, 7, 0, BIG_MS, "svc echo 32 MiB") < 0
	    || echo_once(t, t->loc, 100 * 1024, 11, 1, SMALL_MS,
	                 "svc half-close") < 0
	    || many_echo(t, t->loc, 200, 4096, 30000, "svc 200 users") < 0) {
		return;
	}
	if (start_svc(t, "svc-source", "source", t->tun, 64 * MIB) == NULL) {
		return;
	}
	fd = user_connect(t, t->tun);
	if (fd < 0) {
		return;
	}
	flow_init(&f, fd, 0, 0, 64 * MIB, 1);
	f.shut_after_send = 0;
	pump(t, &f, 1, BIG_MS, "svc source 64 MiB");
	user_close(t, fd);
}

/* ---- runner --------------------------------------------------------------- */

static const struct {
	const char *name;
	void (*fn)(struct test *t);
	int explicit_only;
} tests[] = {
	{ "echo_sizes", test_echo_sizes, 0 },
	{ "echo_32mib", test_echo_32mib, 0 },
	{ "download_64mib", test_download_64mib, 0 },
	{ "half_close", test_half_close, 0 },
	{ "concurrent_200", test_concurrent_200, 0 },
	{ "no_client", test_no_client, 0 },
	{ "local_down", test_local_down, 0 },
	{ "wrong_token", test_wrong_token, 0 },
	{ "second_client", test_second_client, 0 },
	{ "garbage", test_garbage, 0 },
	{ "usage_readme", test_usage_readme, 0 },
	{ "bad_flags", test_bad_flags, 0 },
	{ "port_in_use", test_port_in_use, 0 },
	{ "sigterm", test_sigterm, 0 },
	{ "ipv6", test_ipv6, 0 },
	{ "no_fd_leak", test_no_fd_leak, 0 },
	{ "svc_direct", test_svc_direct, 1 },
};

/* print_tail: the last lines of a log, each prefixed with "# ". */
static void
print_tail(const char *label, const char *path)
{
	size_t len;
	char *text = tl_read_file(path, &len), *p;
	int lines = 0;

	printf("# --- %s (%s)\n", label, path);
	if (text == NULL) {
		printf("#   (no log)\n");
		return;
	}
	for (p = text + len; p > text; p--) {
		if (p[-1] == '\n' && p != text + len && ++lines == TAIL_LINES) {
			break;
		}
	}
	while (*p) {
		char *nl = strchr(p, '\n');

		if (nl) {
			*nl = '\0';
		}
		printf("#   %s\n", p);
		if (nl == NULL) {
			break;
		}
		p = nl + 1;
	}
	free(text);
}

static void
remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char path[512];

	if (d == NULL) {
		return;
	}
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
			snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
			unlink(path);
		}
	}
	closedir(d);
	rmdir(dir);
}

/* teardown: close user sockets, stop every process, check their logs. */
static void
teardown(struct test *t)
{
	char path[256];
	int i, k;

	while (t->nfds > 0) {
		user_close(t, t->fds[t->nfds - 1]);
	}
	free(t->fds);
	t->fds = NULL;
	/* Newest first: clients go before the server they talk to. */
	for (i = t->nprocs - 1; i >= 0; i--) {
		tl_proc_stop(&t->procs[i]);
	}
	for (i = 0; i < t->nprocs; i++) {
		for (k = 0; sanitizer_marks[k]; k++) {
			if (tl_file_contains(t->procs[i].log, sanitizer_marks[k])) {
				fail(t, "%s log contains \"%s\"", t->procs[i].name,
				     sanitizer_marks[k]);
			}
		}
	}
	if (!t->failed) {
		if (getenv("E2E_KEEP") == NULL) {
			remove_dir(t->dir);
		}
		return;
	}
	for (i = 0; i < t->nprocs; i++) {
		char st[32], label[96];

		snprintf(label, sizeof(label), "%s, %s", t->procs[i].name,
		         tl_status_str(&t->procs[i], st, sizeof(st)));
		print_tail(label, t->procs[i].log);
		snprintf(path, sizeof(path), "%s/%s.out", t->dir,
		         t->procs[i].name);
		if (access(path, F_OK) == 0) {
			print_tail(label, path);
		}
	}
	printf("# logs kept in %s\n", t->dir);
}

static void
run_test(const char *name, void (*fn)(struct test *t))
{
	struct test t;
	const char *tmp = getenv("TMPDIR");

	memset(&t, 0, sizeof(t));
	t.name = name;
	t.host = "127.0.0.1";
	snprintf(t.dir, sizeof(t.dir), "%s/dialback-e2e-%s-XXXXXX",
	         tmp && *tmp ? tmp : "/tmp", name);
	if (mkdtemp(t.dir) == NULL) {
		printf("FAIL - %s: mkdtemp %s: %s\n", name, t.dir, strerror(errno));
		n_failed++;
		return;
	}
	current = &t;
	alarm(WATCHDOG_S);
	fn(&t);
	alarm(0);
	teardown(&t);
	current = NULL;
	if (t.failed) {
		printf("FAIL - %s: %s\n", name, t.why);
		n_failed++;
	} else if (t.skip) {
		printf("ok - %s # skip: %s\n", name, t.skip);
		n_passed++;
	} else {
		printf("ok - %s\n", name);
		n_passed++;
	}
	fflush(stdout);
}

int
main(int argc, char **argv)
{
	const char *filter = argc > 1 ? argv[1] : NULL;
	struct sigaction sa;
	size_t i;
	int ran = 0;

	if (filter && (strcmp(filter, "-h") == 0 || argc > 2)) {
		printf("usage: tests/e2e [NAME-SUBSTRING]\n");
		return strcmp(filter, "-h") == 0 ? 0 : 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	/* Tests choose the token themselves. */
	unsetenv("DIALBACK_TOKEN");

	for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		if (tests[i].explicit_only
		    ? (filter == NULL || strcmp(filter, tests[i].name) != 0)
		    : (filter != NULL && strstr(tests[i].name, filter) == NULL)) {
			continue;
		}
		run_test(tests[i].name, tests[i].fn);
		ran++;
	}
	if (ran == 0) {
		fprintf(stderr, "e2e: no test matches \"%s\"\n", filter);
	}
	printf("e2e: %d passed, %d failed\n", n_passed, n_failed);
	return n_failed > 0 || ran == 0 ? 1 : 0;
}
