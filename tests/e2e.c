/*
 * End-to-end tests: run the real ./server and ./client on 127.0.0.1 with
 * freshly picked ports, tests/svc as the local service, and users that
 * connect to the public port.  Run from the repository root:
 *
 *     ./tests/e2e [NAME-SUBSTRING]
 *
 * With E2E_KEEP set in the environment, logs are kept after a pass too.
 * With VALGRIND=1, ./server and ./client run under valgrind's memcheck
 * (a log per process, DIR/NAME.vg), deadlines are 5 times longer, the
 * heaviest tests are skipped, and each test fails if valgrind reports an
 * error or a definite or indirect leak.
 *
 * Each test starts its own processes, logs each to a file in a fresh
 * temporary directory, and stops only the PIDs it started.  Every wait has
 * a deadline; nothing sleeps blindly.  The harness is tests/testlib.h's:
 * "ok - NAME", "skip - NAME # why" or "FAIL - NAME: why" per test (with
 * the logs' tails after a failure), then "e2e: N passed, N failed, N
 * skipped".
 *
 * tests/e2e --resolve NAME prints NAME's addresses in getaddrinfo's order,
 * for local_fallback.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testlib.h"
#include "protocol.h"

#define SMALL_MS     T(15000) /* a small transfer */
#define BIG_MS       T(90000) /* tens of MiB, leaving room for ASan */
#define WATCHDOG_S   240      /* a test that takes longer is killed */
#define CHUNK        (32 * 1024)
#define MIB          (1024 * 1024)

/* ---- set-ups -------------------------------------------------------------- */

/* start_pool: the client's -pool for start_all; NULL for the default (a
 * pool the server sizes).  The tests that count descriptors set "0": a
 * pool sized by their bursts would hold descriptors for a minute. */
static const char *start_pool;

/* start_all: ports, tests/svc MODE [ARG] on the local port, server,
 * client attached.  0 or -1. */
static int
start_all(struct test *t, const char *mode, const char *arg)
{
	if (pick_server_ports(t, NULL, 4) < 0) {
		return -1;
	}
	t->svc = start_svc(t, "svc", mode, t->loc, arg);
	if (t->svc == NULL) {
		return -1;
	}
	t->server = start_server(t, "server", NULL);
	if (t->server == NULL) {
		return -1;
	}
	t->client = start_pool == NULL
	            ? start_client(t, "client", t->ctl, t->loc, NULL, 1, NULL)
	            : start_client(t, "client", t->ctl, t->loc, NULL, 1, "-pool",
	                           start_pool, NULL);
	if (t->client == NULL) {
		return -1;
	}
	return 0;
}

/* start_counted: start_all for a test that counts descriptors. */
static int
start_counted(struct test *t, const char *mode, const char *arg)
{
	int rc;

	start_pool = "0";
	rc = start_all(t, mode, arg);
	start_pool = NULL;
	return rc;
}

/* setup_counted: setup for a test that counts descriptors (see start_pool). */
static int setup(struct test *t);
static int
setup_counted(struct test *t)
{
	int rc;

	start_pool = "0";
	rc = setup(t);
	start_pool = NULL;
	return rc;
}

/* setup: start_all with svc echo, and the client's "forwarding" line
 * checked.  0 or -1. */
static int
setup(struct test *t)
{
	if (start_all(t, "echo", NULL) < 0) {
		return -1;
	}
	return expect_forwarding(t, t->client, t->pub, t->loc);
}

/* ---- data flows ----------------------------------------------------------- */

/*
 * One user connection's traffic: send send_n bytes of stream send_seed,
 * expect exactly expect_n bytes of stream expect_seed and then EOF.
 * shut_after_send: shutdown(SHUT_WR) once everything is sent.
 * shut_after_echo: ... and not before all expect_n bytes arrived.
 * write_first: read nothing until all is sent and shut.
 * reset_at: once this many bytes arrived, close with a reset; done.
 * pause_at: once this many bytes arrived, pump() leaves the flow alone
 * (it may return with the flow not done); clear it to go on.
 * may_end: an early EOF, a reset or a failed write ends the flow (ended,
 * end_how) instead of failing the test; what did arrive is still checked.
 * connecting: the fd is a tl_connect_start connect in progress.
 */
struct flow {
	int fd;
	uint64_t send_n, expect_n, reset_at, pause_at;
	int shut_after_send, shut_after_echo, write_first, may_end, connecting;
	uint64_t sent, got;
	int shut, eof, done, ended;
	const char *end_how;
	struct tl_stream tx, rx;
	struct tl_stream tx_chunk;   /* tx where chunk[0] came from */
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

/* flow_end: a may_end flow's connection is gone. */
static void
flow_end(struct flow *f, const char *how)
{
	f->ended = 1;
	f->done = 1;
	f->end_how = how;
}

/* flow_write: send what the socket takes, at most WRITE_TURN bytes, so
 * that a peer that drains as fast as we write can't starve the other
 * flows (nor our reading).  -1 and fail() on error. */
#define WRITE_TURN (8 * CHUNK)

static int
flow_write(struct test *t, struct flow *f, int i, const char *what)
{
	uint64_t turn_end = f->sent + WRITE_TURN;
	ssize_t w;

	while (f->sent < f->send_n && f->sent < turn_end) {
		if (f->clen == 0) {
			uint64_t left = f->send_n - f->sent;

			f->clen = left < CHUNK ? (size_t)left : CHUNK;
			f->coff = 0;
			f->tx_chunk = f->tx;
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
		if (f->may_end) {
			flow_end(f, strerror(errno));
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
		if (r < 0 && f->may_end) {
			flow_end(f, strerror(errno));
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
			if (f->got != f->expect_n && f->may_end) {
				flow_end(f, "EOF");
				return 0;
			}
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
		if (f->pause_at && f->got >= f->pause_at) {
			return 0;
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

/* flow_want_shut: time to shut down the writing half. */
static int
flow_want_shut(const struct flow *f)
{
	return !f->shut && f->shut_after_send && f->sent == f->send_n
	       && (!f->shut_after_echo || f->got == f->expect_n);
}

/* flow_chunk: give f its send buffer back for a pump(), rebuilding bytes
 * a previous pump() left unsent.  -1 if out of memory. */
static int
flow_chunk(struct flow *f)
{
	size_t size = f->send_n < CHUNK ? (size_t)f->send_n : CHUNK;

	f->chunk = malloc(size ? size : 1);
	if (f->chunk == NULL) {
		return -1;
	}
	if (f->clen > 0) {
		struct tl_stream s = f->tx_chunk;

		tl_stream_fill(&s, f->chunk, f->coff + f->clen);
	}
	return 0;
}

/*
 * pump: drive n flows in one poll loop until each is done or paused, or
 * ms pass.  0, or -1 with fail() naming the first problem.  Sockets stay
 * open (except reset ones); the caller closes them.
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
		if (flow_chunk(&fl[i]) < 0) {
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
			if (f->connecting) {
				ev = POLLOUT;
				goto add;
			}
			if (f->reset_at && f->got >= f->reset_at) {
				user_reset(t, f->fd);
				f->fd = -1;
				f->done = 1;
				continue;
			}
			if (f->pause_at && f->got >= f->pause_at) {
				continue;
			}
			if (flow_want_shut(f)) {
				if (shutdown(f->fd, SHUT_WR) < 0) {
					if (f->may_end) {
						flow_end(f, strerror(errno));
						continue;
					}
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
add:
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
			struct flow *f = &fl[idx[0]];

			fail(t, "%s: timeout after %d ms: user %d of %d %s: sent %llu "
			     "of %llu, received %llu of %llu, eof %d, shut %d "
			     "(%d users not done)", what, ms, idx[0], n,
			     f->connecting ? "still connecting" : "stuck",
			     (unsigned long long)f->sent,
			     (unsigned long long)f->send_n,
			     (unsigned long long)f->got,
			     (unsigned long long)f->expect_n, f->eof, f->shut, np);
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

			if (re == 0) {
				continue;
			}
			if (f->connecting) {
				if (tl_connect_result(f->fd) < 0) {
					fail(t, "%s: user %d: connect: %s", what, idx[i],
					     strerror(errno));
					goto out;
				}
				f->connecting = 0;
				continue;
			}
			if (re & (POLLOUT | POLLERR | POLLHUP)) {
				if ((pfd[i].events & POLLOUT)
				    && flow_write(t, f, idx[i], what) < 0) {
					goto out;
				}
			}
			if (re & (POLLIN | POLLERR | POLLHUP)) {
				if ((pfd[i].events & POLLIN) && !f->done
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

/* download_once: one user on port takes size bytes of stream 1 (tests/svc
 * source) and then EOF, sending nothing. */
static int
download_once(struct test *t, int port, uint64_t size, int ms,
              const char *what)
{
	struct flow f;
	int fd = user_connect(t, port), rc;

	if (fd < 0) {
		return -1;
	}
	flow_init(&f, fd, 0, 0, size, 1);
	f.shut_after_send = 0;
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
	if (start_all(t, "source", "67108864") < 0) {
		return;
	}
	download_once(t, t->pub, 64 * MIB, BIG_MS, "download 64 MiB");
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
	many_echo(t, t->pub, 200, 4096, T(30000), "200 users");
}

static void
test_no_client(struct test *t)
{
	const char *how = "";
	int fd;

	if (pick_server_ports(t, NULL, 4) < 0) {
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
	if (tl_wait_closed(fd, tl_now_ms() + T(2000), NULL, &how) < 0) {
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

	if (pick_server_ports(t, NULL, 4) < 0) {
		return;
	}
	t->server = start_server(t, "server", NULL);
	if (t->server == NULL) {
		return;
	}
	t->client = start_client(t, "client", t->ctl, t->loc, NULL, 1, NULL);
	if (t->client == NULL) {
		return;
	}
	fd = user_connect(t, t->pub);
	if (fd < 0) {
		return;
	}
	if (tl_wait_closed(fd, tl_now_ms() + T(3000), NULL, &how) < 0) {
		fail(t, "user not closed within 3 s while the local service "
		     "is down");
		user_close(t, fd);
		return;
	}
	user_close(t, fd);
	if (expect_alive(t, t->client) < 0) {
		return;
	}
	t->svc = start_svc(t, "svc", "echo", t->loc, NULL);
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

	if (pick_server_ports(t, NULL, 4) < 0) {
		return;
	}
	t->server = start_server(t, "server", "-token", "right-secret", NULL);
	if (t->server == NULL) {
		return;
	}

	c = start_client(t, "client-wrong", t->ctl, t->loc, NULL, 0, "-token",
	                 "wrong-secret", NULL);
	if (c == NULL || expect_exit(t, c, 1, T(5000)) < 0) {
		return;
	}
	if (!tl_file_contains(c->log, "wrong token") ||
	    !tl_file_contains(c->log, "server could not prove it knows the "
	                      "token: wrong server or wrong token")) {
		fail(t, "client-wrong exited 1 but its log does not say \"wrong "
		     "token\" and that the server could not prove it");
		return;
	}

	c = start_client(t, "client-env", t->ctl, t->loc, env_right, 1, NULL);
	if (c == NULL) {
		return;
	}
	stop(t, c);

	c = start_client(t, "client-flag-wins", t->ctl, t->loc, env_right, 0,
	                 "-token", "wrong-secret", NULL);
	if (c == NULL || expect_exit(t, c, 1, T(5000)) < 0) {
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
	c2 = start_client(t, "client2", t->ctl, t->loc, NULL, 0, NULL);
	if (c2 == NULL || wait_log(t, c2, "already served by", T(10000)) < 0) {
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

/*
 * Garbage at the control and tunnel ports.  A silent or stalled
 * connection is dropped at the handshake deadline (HANDSHAKE_MS) anyway,
 * so being closed proves nothing: each must be closed within GARBAGE_MS
 * of its bytes, well before that deadline, and the server must have
 * logged the drop with this connection's address and the reason.  Then
 * the server must serve users as before.
 */
#define GARBAGE_MS (tl_h.tscale > 1 ? 4000 : 1500)  /* < HANDSHAKE_MS */

/* A garbage payload, the port it goes to, and the server's reason. */
struct garbage {
	const char *what;
	int tunnel;
	uint8_t *data;
	size_t len;
	const char *why;
};

static void
test_garbage(struct test *t)
{
	static const char http[] = "GET / HTTP/1.1\r\n\r\n",
	                  bad_ctl[] = "not a dialback client (bad first bytes)",
	                  bad_tun[] = "expected JOIN, got garbage";
	static uint8_t rnd[4096], big_hdr[3] = { 1, 0xff, 0xff }, join[35];
	struct garbage g[] = {
		{ "control: HTTP", 0, (uint8_t *)http, sizeof(http) - 1, bad_ctl },
		{ "control: 4 KiB random", 0, rnd, sizeof(rnd), bad_ctl },
		{ "control: type 1 length 0xFFFF", 0, big_hdr, sizeof(big_hdr),
		  bad_ctl },
		{ "tunnel: HTTP", 1, (uint8_t *)http, sizeof(http) - 1, bad_tun },
		{ "tunnel: 4 KiB random", 1, rnd, sizeof(rnd), bad_tun },
		{ "tunnel: type 1 length 0xFFFF", 1, big_hdr, sizeof(big_hdr),
		  bad_tun },
		{ "tunnel: forged JOIN", 1, join, sizeof(join),
		  "JOIN names no waiting user" },
	};
	enum { NG = sizeof(g) / sizeof(g[0]) };
	int fds[NG], i;
	int64_t sent[NG];
	char peer[NG][64], line[256];
	struct tl_stream s;

	if (GARBAGE_MS >= HANDSHAKE_MS) {
		fail(t, "GARBAGE_MS must stay below HANDSHAKE_MS");
		return;
	}
	if (setup(t) < 0) {
		return;
	}
	tl_stream_init(&s, 4242);
	tl_stream_fill(&s, rnd, sizeof(rnd));
	join[0] = 10;
	join[1] = 0;
	join[2] = 32;
	tl_stream_fill(&s, join + 3, 32);

	for (i = 0; i < NG; i++) {
		fds[i] = user_connect(t, g[i].tunnel ? t->tun : t->ctl);
		if (fds[i] < 0) {
			return;
		}
		/* The server names a peer by the address it sees: ours. */
		tl_fmt_addr(peer[i], t->host, tl_local_port(fds[i]));
		/* The server may close before taking it all: a failed write
		 * is a close too, and the read below sees it. */
		tl_write_all(fds[i], g[i].data, g[i].len, tl_now_ms() + T(2000));
		sent[i] = tl_now_ms();
	}
	for (i = 0; i < NG; i++) {
		const char *how = "";

		if (tl_wait_closed(fds[i], sent[i] + GARBAGE_MS, NULL, &how) < 0) {
			fail(t, "%s: connection still open %d ms after the garbage; "
			     "it must not wait for the %d ms handshake deadline",
			     g[i].what, GARBAGE_MS, HANDSHAKE_MS);
			return;
		}
		user_close(t, fds[i]);
		fds[i] = -1;
		snprintf(line, sizeof(line), "%s %s dropped: %s",
		         g[i].tunnel ? "tunnel" : "control", peer[i], g[i].why);
		if (wait_log(t, t->server, line, T(1000)) < 0) {
			return;
		}
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

	p = start(t, "server-h", server_h, NULL, TL_SPLIT_OUT);
	if (p == NULL || expect_exit(t, p, 0, T(5000)) < 0) {
		return;
	}
	p = start(t, "client-h", client_h, NULL, TL_SPLIT_OUT);
	if (p == NULL || expect_exit(t, p, 0, T(5000)) < 0) {
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
		struct tl_proc *p = start(t, cases[i].name, cases[i].argv, NULL,
		                          TL_SPLIT_OUT);
		size_t len;
		char *err;

		if (p == NULL || expect_exit(t, p, 2, T(5000)) < 0) {
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

	if (pick_server_ports(t, NULL, 4) < 0) {
		return;
	}
	lfd = tl_listen(t->host, 0);
	if (lfd < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	user_track(t, lfd);
	argv[2] = tl_fmt_addr(c, t->host, tl_local_port(lfd));
	argv[4] = tl_fmt_addr(u, t->host, t->tun);
	argv[6] = tl_fmt_addr(p, t->host, t->pub);
	s = start(t, "server", argv, NULL, TL_SPLIT_OUT);
	if (s == NULL || expect_exit(t, s, 1, T(5000)) < 0) {
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
	if (expect_exit(t, t->client, 0, T(3000)) < 0) {
		return;
	}
	kill(t->server->pid, SIGTERM);
	if (expect_exit(t, t->server, 0, T(3000)) < 0) {
		return;
	}

	/* SIGINT too, on a fresh pair. */
	if (pick_server_ports(t, NULL, 4) < 0) {
		return;
	}
	t->server = start_server(t, "server-int", NULL);
	if (t->server == NULL) {
		return;
	}
	t->client = start_client(t, "client-int", t->ctl, t->loc, NULL, 1, NULL);
	if (t->client == NULL) {
		return;
	}
	kill(t->client->pid, SIGINT);
	if (expect_exit(t, t->client, 0, T(3000)) < 0) {
		return;
	}
	kill(t->server->pid, SIGINT);
	if (expect_exit(t, t->server, 0, T(3000)) < 0) {
		return;
	}
}

static void
test_ipv6(struct test *t)
{
	if (!tl_ipv6_ok()) {
		t->skip = "no ::1";
		return;
	}
	t->host = "::1";
	if (setup(t) < 0) {
		return;
	}
	echo_once(t, t->pub, 256 * 1024, 51, 0, SMALL_MS, "echo over ::1");
}

/*
 * -local NAME where NAME resolves to two loopback addresses: the service
 * listens on the second only, so the first connect is refused (after
 * EINPROGRESS) and the client must go on to the second.  It once closed
 * the refused socket without telling the event loop, got the same
 * descriptor number for the next one, and never heard it connect: the
 * user timed out.
 *
 * The name is DUAL_NAME, given to ::1 (127.0.0.2 without IPv6) and
 * 127.0.0.1 by a hosts file of the test's own that only the client sees:
 * it runs in a private mount namespace (unshare -m, or -r -m without
 * root) with that file bound over /etc/hosts; the machine's stays as it
 * is.  Where no such namespace is allowed, a system name that resolves to
 * both ::1 and 127.0.0.1 does ("localhost" on many systems); with neither
 * the test is skipped, except with CI=true, where it fails.  Either way
 * the first address is seen to refuse before the client starts.
 */
#define DUAL_NAME "dialback-dual.test"

/* The order of a name's addresses, as the client's getaddrinfo sees it. */
struct dual {
	char first[64], second[64];
	const char *wrap[12];        /* runs a command in the namespace */
	char unshare[256], hosts[256];
};

/* print_addrs: tests/e2e --resolve NAME: NAME's addresses, numeric, one a
 * line, in getaddrinfo's order and with the client's hints. */
static int
print_addrs(const char *name)
{
	struct addrinfo hints, *res, *ai;
	char ip[INET6_ADDRSTRLEN];

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(name, "1", &hints, &res) != 0) {
		return 1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (getnameinfo(ai->ai_addr, ai->ai_addrlen, ip, sizeof(ip), NULL,
		                0, NI_NUMERICHOST) == 0) {
			printf("addr %s\n", ip);
		}
	}
	freeaddrinfo(res);
	return 0;
}

/* dual_read: the first two "addr" lines of a --resolve log, if their
 * addresses differ.  0 or -1. */
static int
dual_read(const char *log, struct dual *d)
{
	char *text = tl_read_file(log, NULL);
	int n = text ? sscanf(text, "addr %63s addr %63s", d->first,
	                      d->second) : 0;

	free(text);
	return n == 2 && strcmp(d->first, d->second) != 0 ? 0 : -1;
}

/* dual_namespace: a hosts file naming DUAL_NAME, and a way to run a
 * command that sees it (d->wrap, ending where the command goes); 0, or -1
 * if no unshare here will do. */
static int
dual_namespace(struct test *t, struct dual *d)
{
	static const char script[] = "mount --bind \"$0\" /etc/hosts && "
	                             "exec \"$@\"";
	static const char *const modes[][2] = { { "-m", NULL }, { "-r", "-m" } };
	char text[128];
	size_t m;

	if (tl_find_prog("unshare", d->unshare, sizeof(d->unshare)) < 0) {
		return -1;
	}
	snprintf(d->hosts, sizeof(d->hosts), "%s/hosts", t->dir);
	snprintf(text, sizeof(text), "%s %s\n127.0.0.1 %s\n",
	         tl_ipv6_ok() ? "::1" : "127.0.0.2", DUAL_NAME, DUAL_NAME);
	if (tl_write_file(d->hosts, text, strlen(text)) < 0) {
		return fail(t, "writing %s: %s", d->hosts, strerror(errno));
	}
	for (m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
		const char *argv[16];
		struct tl_proc *p;
		int n = 0, k;

		/* Private propagation: the bind mount never reaches the
		 * machine's own mount namespace. */
		d->wrap[n++] = d->unshare;
		d->wrap[n++] = "--propagation";
		d->wrap[n++] = "private";
		d->wrap[n++] = modes[m][0];
		if (modes[m][1] != NULL) {
			d->wrap[n++] = modes[m][1];
		}
		d->wrap[n++] = "sh";
		d->wrap[n++] = "-c";
		d->wrap[n++] = script;
		d->wrap[n++] = d->hosts;
		d->wrap[n] = NULL;
		for (k = 0; k < n; k++) {
			argv[k] = d->wrap[k];
		}
		argv[n++] = tl_h.self;
		argv[n++] = "--resolve";
		argv[n++] = DUAL_NAME;
		argv[n] = NULL;
		p = start(t, m == 0 ? "resolve" : "resolve-userns", argv, NULL, 0);
		if (p == NULL) {
			return -1;
		}
		if (tl_proc_wait(p, T(5000)) && WIFEXITED(p->status)
		    && WEXITSTATUS(p->status) == 0 && dual_read(p->log, d) == 0) {
			return 0;
		}
	}
	return -1;
}

/* dual_system: a name of this machine's that resolves to ::1 and
 * 127.0.0.1 (in either order) into *name.  0 or -1. */
static int
dual_system(struct dual *d, const char **name)
{
	static const char *const names[] = { "localhost", "ip6-localhost",
	                                     "localhost6", "ip6-loopback" };
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct addrinfo hints, *res = NULL;

		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		if (getaddrinfo(names[i], "1", &hints, &res) != 0) {
			continue;
		}
		if (res->ai_next != NULL &&
		    res->ai_family != res->ai_next->ai_family) {
			snprintf(d->first, sizeof(d->first), "%s",
			         res->ai_family == AF_INET6 ? "::1" : "127.0.0.1");
			snprintf(d->second, sizeof(d->second), "%s",
			         res->ai_family == AF_INET6 ? "127.0.0.1" : "::1");
			*name = names[i];
		}
		freeaddrinfo(res);
		if (*name != NULL) {
			return 0;
		}
	}
	return -1;
}

static void
test_local_fallback(struct test *t)
{
	struct dual d;
	const char *name = NULL, *argv[32];
	char r[64], l[96];
	int n = 0, k, fd;

	memset(&d, 0, sizeof(d));
	if (dual_namespace(t, &d) == 0) {
		name = DUAL_NAME;
	} else if (t->failed || dual_system(&d, &name) < 0) {
		missing_tool(t, "no private mount namespace (unshare -m) for a "
		             "name with two addresses, and no system name with "
		             "both ::1 and 127.0.0.1");
		return;
	}
	t->host = d.second;
	if (pick_server_ports(t, NULL, 4) < 0
	    || (t->svc = start_svc(t, "svc", "echo", t->loc, NULL)) == NULL
	    || (t->server = start_server(t, "server", NULL)) == NULL) {
		return;
	}
	/* The client's first connect must be refused, or this proves
	 * nothing. */
	fd = tl_connect(d.first, t->loc, tl_now_ms() + T(5000));
	if (fd >= 0 || errno != ECONNREFUSED) {
		fail(t, "%s port %d, %s's first address, does not refuse (%s)",
		     d.first, t->loc, name, fd >= 0 ? "it accepts"
		                                    : strerror(errno));
		if (fd >= 0) {
			close(fd);
		}
		return;
	}
	for (k = 0; d.wrap[k] != NULL; k++) {
		argv[n++] = d.wrap[k];
	}
	argv[n++] = "./client";
	argv[n++] = "-remote";
	argv[n++] = tl_fmt_addr(r, t->host, t->ctl);
	argv[n++] = "-local";
	snprintf(l, sizeof(l), "%s:%d", name, t->loc);
	argv[n++] = l;
	argv[n] = NULL;
	t->client = start(t, "client", argv, NULL, 0);
	if (t->client == NULL) {
		return;
	}
	/* Through unshare and sh, it becomes ./client by exec: judge it as
	 * one. */
	t->client->product = 1;
	t->client->tool = 0;
	if (wait_log(t, t->client, "forwarding", START_MS) < 0
	    || expect_log(t, t->client, l) < 0) {
		return;
	}
	echo_once(t, t->pub, 4096, 61, 0, SMALL_MS, "echo via the second address");
}

/*
 * A user sends TCP urgent data (MSG_OOB) in the middle of bulk uploads.
 * splice(2) stops at the urgent mark and then returns EAGAIN while poll
 * keeps reporting the socket readable, so a relay that only splices spins
 * at full CPU there and the direction never moves again.  The server now
 * splices only in bulk and falls back to read() on such an EAGAIN; read()
 * steps over the urgent byte (as any proxy that reads drops it).  TCP
 * keeps only the latest urgent byte apart, and a new one frees a reader
 * stuck at the last, so an urgent '!' follows each segment but the last:
 * whatever follows the final one must still come back, the stream with at
 * most a '!' at each segment's end, and the server must then sit idle.
 */
#define URGENT_IDLE_MS 500
#define URGENT_CPU_MS  100

static void
test_urgent_data(struct test *t)
{
	enum { SEG = 256 * 1024, SEGS = 24 };
	static uint8_t out[SEG * SEGS], in[64 * 1024];
	size_t sent = 0, matched = 0, i, inlined = 0;
	int64_t deadline;
	long cpu0, cpu1;
	struct tl_stream st;
	int fd, bang_ok = 0;

	if (setup(t) < 0 || (fd = user_connect(t, t->pub)) < 0) {
		return;
	}
	tl_stream_init(&st, 71);
	tl_stream_fill(&st, out, sizeof(out));
	for (i = 0; i < sizeof(out); i++) {
		out[i] = out[i] == '!' ? '?' : out[i];
	}
	deadline = tl_now_ms() + T(10000);
	while (matched < sizeof(out)) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t k;

		if (sent < sizeof(out)) {
			p.events |= POLLOUT;
		}
		if (poll(&p, 1, tl_left(deadline)) <= 0) {
			fail(t, "the echo stalled after urgent data: %zu of %zu bytes "
			     "back", matched, sizeof(out));
			return;
		}
		if (p.revents & POLLOUT) {
			k = send(fd, out + sent, SEG - sent % SEG, MSG_NOSIGNAL);
			if (k > 0 && (sent += (size_t)k) % SEG == 0 &&
			    sent < sizeof(out) &&
			    send(fd, "!", 1, MSG_OOB | MSG_NOSIGNAL) != 1) {
				fail(t, "send MSG_OOB: %s", strerror(errno));
				return;
			}
		}
		if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) {
			continue;
		}
		k = read(fd, in, sizeof(in));
		if (k <= 0 && !(k < 0 && errno == EAGAIN)) {
			fail(t, "the echo ended after %zu bytes: %s", matched,
			     k == 0 ? "EOF" : strerror(errno));
			return;
		}
		for (i = 0; k > 0 && i < (size_t)k; i++) {
			if (in[i] == '!' && bang_ok) {
				bang_ok = 0;
				inlined++;
				continue;
			}
			if (matched == sizeof(out) || in[i] != out[matched]) {
				fail(t, "echo byte %zu is 0x%02x, expected 0x%02x", matched,
				     in[i], matched < sizeof(out) ? out[matched] : 0);
				return;
			}
			bang_ok = ++matched % SEG == 0;
		}
	}
	printf("# %d urgent bytes sent, %zu came back inline\n", SEGS - 1,
	       inlined);
	if ((cpu0 = tl_cpu_ms(t->server->pid)) < 0) {
		return;         /* no /proc: the echo was the test */
	}
	tl_pause(URGENT_IDLE_MS);
	cpu1 = tl_cpu_ms(t->server->pid);
	if (cpu1 - cpu0 > URGENT_CPU_MS) {
		fail(t, "the server used %ld ms of CPU in %d ms with nothing to do",
		     cpu1 - cpu0, URGENT_IDLE_MS);
		return;
	}
	expect_alive(t, t->server);
}

/* fds_settle: wait until p's descriptor count is at most base. */
static const char *const tcp_states[] = {
	"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
};

/* tcp_describe: "local -> remote STATE" for socket inode ino, from
 * /proc/net/tcp and tcp6, into buf; "" if not found. */
static void
tcp_describe(unsigned long ino, char *buf, size_t len)
{
	static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	char line[512], la[64], ra[64];
	unsigned st, i;
	unsigned long lino;
	FILE *f;

	buf[0] = '\0';
	for (i = 0; i < 2; i++) {
		f = fopen(files[i], "r");
		if (f == NULL) {
			continue;
		}
		while (fgets(line, sizeof(line), f)) {
			/* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
			if (sscanf(line, "%*s %63s %63s %x %*s %*s %*s %*s %*s %lu",
			           la, ra, &st, &lino) == 4 && lino == ino) {
				snprintf(buf, len, "%s -> %s %s", la, ra,
				         st < sizeof(tcp_states) / sizeof(tcp_states[0])
				         ? tcp_states[st] : "?");
				fclose(f);
				return;
			}
		}
		fclose(f);
	}
}

static void
print_fd(void *arg, const char *fd, const char *target)
{
	char tcp[200] = "";
	unsigned long ino;

	(void)arg;
	if (sscanf(target, "socket:[%lu]", &ino) == 1) {
		tcp_describe(ino, tcp, sizeof(tcp));
	}
	printf("#   %s -> %s %s\n", fd, target, tcp);
}

/* print_fds: what p's descriptors are, as "# " lines (ports in hex, as
 * /proc/net/tcp has them). */
static void
print_fds(const struct tl_proc *p)
{
	printf("# descriptors of %s (pid %ld):\n", p->name, (long)p->pid);
	tl_each_fd(p->pid, print_fd, NULL);
}

/*
 * fds_settle: wait until p holds no more descriptors of each kind than at
 * base: sockets, pipe ends (the relay's splice pipes, whose spares go back
 * once no relay is left) and other files.  0, or -1 and fail() with what
 * p holds, each descriptor listed.
 */
static int
fds_settle(struct test *t, struct tl_proc *p, const struct tl_fds *base,
           int ms)
{
	int64_t deadline = tl_now_ms() + ms;
	struct tl_fds c;

	for (;;) {
		int ok = tl_fd_census(p->pid, &c) == 0;

		if (ok && c.sockets <= base->sockets && c.other <= base->other
		    && c.pipes <= base->pipes && c.unpaired <= base->unpaired) {
			return 0;
		}
		if (tl_now_ms() >= deadline) {
			if (!t->failed) {
				print_fds(p);
			}
			return fail(t, "%s holds %d sockets, %d pipe ends (%d "
			            "unpaired), %d other descriptors %d ms after the "
			            "users ended; %d, %d (%d), %d before them", p->name,
			            c.sockets, c.pipes, c.unpaired, c.other, ms,
			            base->sockets, base->pipes, base->unpaired,
			            base->other);
		}
		tl_pause(20);
	}
}

/*
 * mixed_rounds: rounds of BATCH users each: clean echoes, half-closes,
 * resets in mid-transfer, and users who connect and leave at once.
 * 0, or -1 after fail().
 */
enum { BATCH = 60 };

static int
mixed_rounds(struct test *t, int rounds, uint32_t seed0)
{
	struct flow fl[BATCH];
	int round, i, n = 0;

	for (round = 0; round < rounds; round++) {
		n = 0;
		for (i = 0; i < BATCH; i++) {
			uint32_t seed = seed0 + (uint32_t)(round * BATCH + i);
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
		if (pump(t, fl, n, SMALL_MS, "mixed users") < 0) {
			goto out;
		}
		for (i = 0; i < n; i++) {
			user_close(t, fl[i].fd);
			fl[i].fd = -1;
		}
	}
	return 0;
out:
	for (i = 0; i < n; i++) {
		user_close(t, fl[i].fd);
	}
	return -1;
}

static void
test_no_fd_leak(struct test *t)
{
	struct tl_fds base_s, base_c;

	if (tl_count_fds(getpid()) < 0) {
		t->skip = "no /proc";
		return;
	}
	if (setup_counted(t) < 0) {
		return;
	}
	if (tl_fd_census(t->server->pid, &base_s) < 0
	    || tl_fd_census(t->client->pid, &base_c) < 0) {
		fail(t, "can't count descriptors of server or client");
		return;
	}
	if (mixed_rounds(t, 5, 5000) < 0) {     /* 300 users */
		return;
	}
	if (fds_settle(t, t->server, &base_s, T(5000)) < 0
	    || fds_settle(t, t->client, &base_c, T(5000)) < 0) {
		return;
	}
	if (expect_alive(t, t->server) == 0 && expect_alive(t, t->client) == 0) {
		echo_once(t, t->pub, 4096, 99, 0, SMALL_MS, "echo afterwards");
	}
}

/*
 * heap_kib: SIGUSR1 p and read "heap: N KiB in use" from the status line
 * it logs (the n-th "status: up").  -1 after fail(); -2 if the status has
 * no heap figure (a C library that can't tell).
 */
static long
heap_kib(struct test *t, struct tl_proc *p, int n)
{
	static const char key[] = "heap: ";
	char *text, *at, *line = NULL;
	size_t len;
	long kib = -2;
	int seen = 0;

	kill(p->pid, SIGUSR1);
	if (tl_wait_log_count(p, "status: up", n, T(5000)) != 1) {
		return fail(t, "%s logged no status line #%d after SIGUSR1",
		            p->name, n);
	}
	if ((text = tl_read_file(p->log, &len)) == NULL) {
		return fail(t, "can't read %s", p->log);
	}
	for (at = text; (at = strstr(at, "status: up")) != NULL && seen < n;
	     at++) {
		line = at;
		seen++;
	}
	if (line != NULL && (at = strstr(line, key)) != NULL &&
	    (strchr(line, '\n') == NULL || at < strchr(line, '\n'))) {
		kib = strtol(at + strlen(key), NULL, 10);
	}
	free(text);
	return kib;
}

/*
 * No growth over a long run: once two warm-up rounds have brought pools
 * and arrays to their working size, 2,400 more users of every kind leave
 * malloc's live bytes in both processes where they were, give or take
 * GROWTH_KIB (the poll backend's arrays may still reach a new high).
 * Forgetting to free 32 bytes per user would add 75 KiB.
 */
#define GROWTH_KIB 16

static void
test_no_memory_growth(struct test *t)
{
	long s0, c0, s1, c1;
	struct tl_fds base_s, base_c;

	if (setup_counted(t) < 0
	    || tl_fd_census(t->server->pid, &base_s) < 0
	    || tl_fd_census(t->client->pid, &base_c) < 0
	    || mixed_rounds(t, 2, 7000) < 0
	    || fds_settle(t, t->server, &base_s, T(5000)) < 0
	    || fds_settle(t, t->client, &base_c, T(5000)) < 0) {
		return;
	}
	if ((s0 = heap_kib(t, t->server, 1)) == -1
	    || (c0 = heap_kib(t, t->client, 1)) == -1) {
		return;
	}
	if (s0 == -2 || c0 == -2) {
		t->skip = "the C library reports no heap figure";
		return;
	}
	if (mixed_rounds(t, 40, 9000) < 0
	    || fds_settle(t, t->server, &base_s, T(5000)) < 0
	    || fds_settle(t, t->client, &base_c, T(5000)) < 0
	    || (s1 = heap_kib(t, t->server, 2)) < 0
	    || (c1 = heap_kib(t, t->client, 2)) < 0) {
		return;
	}
	printf("# heap in use after warm-up and after 2,400 more users: server "
	       "%ld -> %ld KiB, client %ld -> %ld KiB\n", s0, s1, c0, c1);
	if (s1 - s0 > GROWTH_KIB || c1 - c0 > GROWTH_KIB) {
		fail(t, "heap grew: server %ld -> %ld KiB, client %ld -> %ld KiB "
		     "over 2,400 users", s0, s1, c0, c1);
	}
}

/* ---- faults and floods ---------------------------------------------------- */

/* base_fds: p's descriptors now, into *c; -1 and fail() if /proc can't
 * tell. */
static int
base_fds(struct test *t, struct tl_proc *p, struct tl_fds *c)
{
	if (tl_fd_census(p->pid, c) < 0) {
		return fail(t, "can't count the descriptors of %s", p->name);
	}
	return 0;
}

/* need_proc: skip the test (and return -1) where /proc is missing. */
static int
need_proc(struct test *t)
{
	if (tl_count_fds(getpid()) < 0) {
		t->skip = "no /proc";
		return -1;
	}
	return 0;
}

static void
test_server_restart(struct test *t)
{
	int retries;

	if (setup(t) < 0
	    || echo_once(t, t->pub, 65536, 61, 0, SMALL_MS,
	                 "echo before the restart") < 0) {
		return;
	}
	kill_hard(t, t->server);
	/* The lost connection, then at least one refused attempt: the client
	 * must keep trying against a closed port, not only reconnect once. */
	if (wait_log_count(t, t->client, "retrying", 2, T(5000)) < 0) {
		return;
	}
	t->server = start_server(t, "server2", NULL);
	if (t->server == NULL
	    || wait_log_count(t, t->client, "forwarding", 2, T(5000)) < 0) {
		return;
	}
	retries = tl_count_in_file(t->client->log, "retrying");
	if (retries >= 20) {
		fail(t, "client logged %d \"retrying\" lines while the server "
		     "was down for about a second", retries);
		return;
	}
	if (expect_forwarding(t, t->client, t->pub, t->loc) == 0) {
		echo_once(t, t->pub, 65536, 62, 0, SMALL_MS,
		          "echo after the restart");
	}
}

static void
test_client_killed(struct test *t)
{
	struct flow f;
	struct tl_proc *c2;
	struct tl_fds base_s;
	int fd, echo_port, have_proc = tl_count_fds(getpid()) >= 0;

	if (pick_server_ports(t, NULL, 4) < 0
	    || tl_free_ports(t->host, &echo_port, 1) < 0) {
		fail(t, "picking free ports: %s", strerror(errno));
		return;
	}
	t->svc = start_svc(t, "svc", "source", t->loc, "1073741824");
	if (t->svc == NULL || (t->server = start_server(t, "server", NULL)) == NULL
	    || (t->client = start_client(t, "client", t->ctl, t->loc, NULL, 1,
	                                 "-pool", "0", NULL)) == NULL) {
		return;
	}
	if (have_proc && base_fds(t, t->server, &base_s) < 0) {
		return;
	}
	fd = user_connect(t, t->pub);
	if (fd < 0) {
		return;
	}
	flow_init(&f, fd, 0, 0, 1024ULL * MIB, 1);
	f.shut_after_send = 0;
	f.pause_at = 4 * MIB;
	if (pump(t, &f, 1, SMALL_MS, "download before the kill") < 0) {
		return;
	}
	kill_hard(t, t->client);
	f.pause_at = 0;
	f.may_end = 1;
	if (pump(t, &f, 1, T(5000), "download after the client was killed") < 0) {
		return;
	}
	user_close(t, fd);

	/* The public port is free again: a new client attaches, here to an
	 * echo service. */
	t->loc = echo_port;
	if (start_svc(t, "svc-echo", "echo", t->loc, NULL) == NULL) {
		return;
	}
	c2 = start_client(t, "client2", t->ctl, t->loc, NULL, 0, "-pool", "0",
	                  NULL);
	if (c2 == NULL || wait_log(t, c2, "forwarding", T(5000)) < 0) {
		return;
	}
	t->client = c2;
	if (echo_once(t, t->pub, 65536, 63, 0, SMALL_MS,
	              "echo through the second client") < 0) {
		return;
	}
	if (have_proc) {
		fds_settle(t, t->server, &base_s, T(5000));
	}
}

static void
test_local_killed(struct test *t)
{
	struct flow fl[2];
	const char *how = "";
	int a, b;

	if (start_all(t, "echo", "rst") < 0) {
		return;
	}
	a = user_connect(t, t->pub);
	b = user_connect(t, t->pub);
	if (a < 0 || b < 0) {
		return;
	}
	/* Both relaying: a round trip each, the connections left open. */
	flow_init(&fl[0], a, 65536, 71, 65536, 71);
	fl[0].shut_after_send = 0;
	fl[0].pause_at = 65536;
	flow_init(&fl[1], b, 1024ULL * MIB, 72, 1024ULL * MIB, 72);
	fl[1].shut_after_send = 0;
	fl[1].pause_at = 256 * 1024;
	if (pump(t, fl, 2, SMALL_MS, "two users relaying") < 0) {
		return;
	}

	/* The service resets user a's connection. */
	if (tl_write_all(a, "RST!", 4, tl_now_ms() + T(2000)) < 0) {
		fail(t, "user a: writing RST!: %s", strerror(errno));
		return;
	}
	if (tl_wait_closed(a, tl_now_ms() + T(3000), NULL, &how) < 0) {
		fail(t, "user a still open 3 s after the service reset its "
		     "connection");
		return;
	}
	user_close(t, a);

	/* User b goes on, byte-exact. */
	fl[1].pause_at = fl[1].got + MIB;
	if (pump(t, &fl[1], 1, SMALL_MS, "user b after a's reset") < 0) {
		return;
	}

	/* The whole service dies in the middle of b's transfer. */
	kill_hard(t, t->svc);
	fl[1].pause_at = 0;
	fl[1].may_end = 1;
	if (pump(t, &fl[1], 1, T(3000), "user b after the service died") < 0) {
		return;
	}
	user_close(t, b);
	if (expect_alive(t, t->client) < 0 || expect_alive(t, t->server) < 0) {
		return;
	}
	if (start_svc(t, "svc2", "echo", t->loc, NULL) == NULL) {
		return;
	}
	if (echo_once(t, t->pub, 65536, 73, 0, SMALL_MS,
	              "echo after the service came back") == 0) {
		expect_alive(t, t->client);
	}
}

static void
test_frozen_client(struct test *t)
{
	struct tl_proc *c1, *c2;
	int64_t deadline;

	if (setup(t) < 0) {
		return;
	}
	c1 = t->client;
	kill(c1->pid, SIGSTOP);
	c2 = start_client(t, "client2", t->ctl, t->loc, NULL, 0, NULL);
	/* Until the server calls c1 dead (3 heartbeats of 1 s), c2 is told
	 * the port is taken and backs off: 0.5 s, 1 s, 2 s, 4 s, +-50%. */
	if (c2 == NULL || wait_log(t, c2, "forwarding", T(15000)) < 0) {
		kill(c1->pid, SIGCONT);
		return;
	}
	if (!tl_file_contains(t->server->log, "silent for")) {
		fail(t, "client2 attached but the server did not log that the "
		     "frozen client was \"silent for\" long");
		kill(c1->pid, SIGCONT);
		return;
	}
	if (echo_once(t, t->pub, 65536, 81, 0, SMALL_MS,
	              "echo through client2 while client1 is frozen") < 0) {
		kill(c1->pid, SIGCONT);
		return;
	}
	kill(c1->pid, SIGCONT);
	/* c1 finds its session gone and the port served by c2. */
	deadline = tl_now_ms() + T(10000);
	while (!tl_file_contains(c1->log, "already served by")
	       && tl_count_in_file(c1->log, "forwarding") < 2
	       && !tl_proc_poll(c1) && tl_now_ms() < deadline) {
		tl_pause(20);
	}
	if (expect_alive(t, c1) < 0 || expect_alive(t, c2) < 0) {
		return;
	}
	if (!tl_file_contains(c1->log, "already served by")
	    && tl_count_in_file(c1->log, "forwarding") < 2) {
		fail(t, "client1 neither logged \"already served by\" nor "
		     "reattached after SIGCONT");
		return;
	}
	if (echo_once(t, t->pub, 65536, 82, 0, SMALL_MS,
	              "echo after client1 woke up") < 0) {
		return;
	}
	if (expect_alive(t, c1) == 0) {
		expect_alive(t, c2);
	}
}

/* silent_open: n connections to port on 127.0.0.1 that never say a word,
 * from source addresses 127.0.0.2, .3, ..., per from each (per 0: all
 * from 127.0.0.2).  0 or -1 and fail(). */
static int
silent_open(struct test *t, int *fds, int n, int port, int per)
{
	char src[32];
	int i;

	for (i = 0; i < n; i++) {
		snprintf(src, sizeof(src), "127.0.0.%d", 2 + (per ? i / per : 0));
		fds[i] = tl_connect_start(src, "127.0.0.1", port);
		if (fds[i] < 0) {
			return fail(t, "silent connection %d from %s to port %d: %s",
			            i, src, port, strerror(errno));
		}
		user_track(t, fds[i]);
	}
	return 0;
}

/*
 * silent_wait: wait until every socket in fds has finished connecting
 * (closed 0), or has been closed by the server: reads EOF or an error
 * (closed 1).  A refused connect fails the test.  0 or -1 and fail().
 */
static int
silent_wait(struct test *t, const int *fds, int n, int closed,
            int64_t deadline, const char *what)
{
	struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
	int i, left = n, rc = -1;
	uint8_t buf[512];

	if (pfd == NULL) {
		return fail(t, "out of memory");
	}
	for (i = 0; i < n; i++) {
		pfd[i].fd = fds[i];
		pfd[i].events = closed ? POLLIN : POLLOUT;
	}
	while (left > 0) {
		int r = poll(pfd, (nfds_t)n, tl_left(deadline));

		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0) {
			fail(t, "poll: %s", strerror(errno));
			goto out;
		}
		if (r == 0) {
			fail(t, "%s: %d of %d still %s", what, left, n,
			     closed ? "open" : "connecting");
			goto out;
		}
		for (i = 0; i < n; i++) {
			ssize_t got;

			if (pfd[i].fd < 0 || pfd[i].revents == 0) {
				continue;
			}
			if (!closed) {
				if (tl_connect_result(fds[i]) < 0
				    && errno != ECONNRESET && errno != EPIPE) {
					fail(t, "%s: connect %d: %s", what, i,
					     strerror(errno));
					goto out;
				}
				pfd[i].fd = -1;
				left--;
				continue;
			}
			got = read(fds[i], buf, sizeof(buf));
			if (got == 0 || (got < 0 && errno != EAGAIN
			                 && errno != EWOULDBLOCK && errno != EINTR)) {
				pfd[i].fd = -1;
				left--;
			}
		}
	}
	rc = 0;
out:
	free(pfd);
	return rc;
}

static void
silent_flood(struct test *t, int per)
{
	enum { SILENT = 500 };
	int ctl_fds[SILENT], tun_fds[SILENT], i;
	struct tl_fds base_s;
	struct tl_proc *c2;
	int64_t t0;

	if (need_proc(t) < 0 || setup_counted(t) < 0
	    || base_fds(t, t->server, &base_s) < 0) {
		return;
	}
	/* The baseline holds an attached client's control connection; the
	 * client started during the flood takes its place. */
	kill(t->client->pid, SIGTERM);
	if (expect_exit(t, t->client, 0, STOP_MS) < 0
	    || wait_log(t, t->server, "detached", T(3000)) < 0) {
		return;
	}
	t0 = tl_now_ms();
	if (silent_open(t, ctl_fds, SILENT, t->ctl, per) < 0
	    || silent_open(t, tun_fds, SILENT, t->tun, per) < 0
	    || silent_wait(t, ctl_fds, SILENT, 0, t0 + T(4000),
	                   "silent control connections") < 0
	    || silent_wait(t, tun_fds, SILENT, 0, t0 + T(4000),
	                   "silent tunnel connections") < 0) {
		return;
	}
	c2 = start_client(t, "client2", t->ctl, t->loc, NULL, 0, "-pool", "0",
	                  NULL);
	if (c2 == NULL || wait_log(t, c2, "forwarding", T(5000)) < 0) {
		return;
	}
	t->client = c2;
	if (echo_once(t, t->pub, 65536, 91, 0, SMALL_MS,
	              "echo during the flood") < 0
	    || expect_alive(t, t->server) < 0) {
		return;
	}
	/* Their handshake and JOIN deadlines are 5 s. */
	if (silent_wait(t, ctl_fds, SILENT, 1, t0 + T(8000),
	                "silent control connections 8 s after the flood") < 0
	    || silent_wait(t, tun_fds, SILENT, 1, t0 + T(8000),
	                   "silent tunnel connections 8 s after the flood") < 0) {
		return;
	}
	for (i = 0; i < SILENT; i++) {
		user_close(t, ctl_fds[i]);
		user_close(t, tun_fds[i]);
	}
	if (fds_settle(t, t->server, &base_s, T(3000)) < 0
	    || expect_alive(t, c2) < 0) {
		return;
	}
	echo_once(t, t->pub, 65536, 92, 0, SMALL_MS, "echo after the flood");
}

/* 500 silent connections to each of control and tunnel, 5 per source
 * address: the global caps must make room for the real client. */
static void
test_silent_flood(struct test *t)
{
	silent_flood(t, 5);
}

/* All 500 from one address: the per-source cap. */
static void
test_silent_flood_one_source(struct test *t)
{
	silent_flood(t, 0);
}

static void
test_user_flood(struct test *t)
{
	enum { N = 2000, SIZE = 100 };
	struct flow *fl;
	struct rlimit rl;
	struct tl_fds base_s, base_c;
	int i, n = 0, have_proc = tl_count_fds(getpid()) >= 0;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < N + 256) {
		t->skip = "descriptor limit too low for 2000 users";
		return;
	}
	if (setup_counted(t) < 0) {
		return;
	}
	if (have_proc && (base_fds(t, t->server, &base_s) < 0
	                  || base_fds(t, t->client, &base_c) < 0)) {
		return;
	}
	fl = calloc(N, sizeof(*fl));
	if (fl == NULL) {
		fail(t, "out of memory");
		return;
	}
	/* All connects start at once; pump() finishes them in its loop. */
	for (n = 0; n < N; n++) {
		int fd = tl_connect_start(NULL, t->host, t->pub);

		if (fd < 0) {
			fail(t, "user %d: connect: %s", n, strerror(errno));
			goto out;
		}
		user_track(t, fd);
		flow_init(&fl[n], fd, SIZE, 20000 + (uint32_t)n, SIZE,
		          20000 + (uint32_t)n);
		fl[n].connecting = 1;
		fl[n].shut_after_echo = 1;
	}
	if (pump(t, fl, N, T(30000), "2000 users at once") < 0) {
		goto out;
	}
	for (i = 0; i < n; i++) {
		user_close(t, fl[i].fd);
		fl[i].fd = -1;
	}
	if (have_proc && fds_settle(t, t->server, &base_s, T(10000)) == 0) {
		fds_settle(t, t->client, &base_c, T(10000));
	}
out:
	for (i = 0; i < n; i++) {
		user_close(t, fl[i].fd);
	}
	free(fl);
}

/* ---- per-port secrets ------------------------------------------------------ */

/* write_secrets: the test's secrets file holds text, with mode. */
static int
write_secrets(struct test *t, char *path, size_t len, const char *text,
              mode_t mode)
{
	snprintf(path, len, "%s/secrets", t->dir);
	if (tl_write_file(path, text, strlen(text)) != 0 ||
	    chmod(path, mode) != 0) {
		return fail(t, "writing %s: %s", path, strerror(errno));
	}
	return 0;
}

/* secrets_ports: six free ports, the two highest becoming the ports of
 * services a and b (the -ports range), so the range holds none of the
 * others. */
static int
secrets_ports(struct test *t, int *a, int *b)
{
	int p[6], i, j, k;

	if (pick_ports(t, p, 6) < 0) {
		return -1;
	}
	for (i = 0; i < 6; i++) {
		for (j = i + 1; j < 6; j++) {
			if (p[j] < p[i]) {
				k = p[i];
				p[i] = p[j];
				p[j] = k;
			}
		}
	}
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	t->loc = p[3];
	*a = p[4];
	*b = p[5];
	return 0;
}

/* secrets_server: the echo service, and a server offering ports a to b
 * whose secrets file (its name into path) holds text; other ports take a
 * token no test client holds. */
static int
secrets_server(struct test *t, int a, int b, const char *text, char *path,
               size_t len)
{
	char range[32];

	if (write_secrets(t, path, len, text, 0600) < 0 ||
	    (t->svc = start_svc(t, "svc", "echo", t->loc, NULL)) == NULL) {
		return -1;
	}
	snprintf(range, sizeof(range), "%d-%d", a, b);
	t->server = start_server(t, "server", "-ports", range, "-secrets", path,
	                         "-token", "the-token-for-the-rest", NULL);
	return t->server == NULL ? -1 : 0;
}

/* A file readable by others: the server refuses to start, naming it and
 * its mode. */
static void
test_secrets_mode(struct test *t)
{
	char path[256], want[300];
	const char *argv[10] = { "./server", "-control", NULL, "-tunnel", NULL,
	                         "-public", NULL, "-secrets", path, NULL };
	char c[64], u[64], p[64];
	struct tl_proc *s;

	if (pick_server_ports(t, NULL, 4) < 0 ||
	    write_secrets(t, path, sizeof(path), "8080 a-secret-word\n",
	                  0644) < 0) {
		return;
	}
	argv[2] = tl_fmt_addr(c, t->host, t->ctl);
	argv[4] = tl_fmt_addr(u, t->host, t->tun);
	argv[6] = tl_fmt_addr(p, t->host, t->pub);
	snprintf(want, sizeof(want), "%s has mode 0644", path);
	if ((s = start(t, "server", argv, NULL, 0)) == NULL ||
	    expect_exit(t, s, 1, T(3000)) < 0 || expect_log(t, s, want) < 0) {
		return;
	}
	if (tl_file_contains(s->log, "a-secret-word")) {
		fail(t, "the server logged a secret");
	}
}

/* echo_some: on fd, n bytes of stream seed out and back. */
static int
echo_some(struct test *t, int fd, size_t n, uint32_t seed, const char *what)
{
	static uint8_t out[256 * 1024], in[256 * 1024];
	struct tl_stream s;

	tl_stream_init(&s, seed);
	tl_stream_fill(&s, out, n);
	/* n is small enough for the socket buffers on the way to hold it
	 * all, so writing it before reading can't deadlock. */
	if (tl_write_all(fd, out, n, tl_now_ms() + T(5000)) != 0 ||
	    tl_read_full(fd, in, n, tl_now_ms() + T(5000)) != (ssize_t)n ||
	    memcmp(in, out, n) != 0) {
		return fail(t, "%s: %zu bytes did not come back intact", what, n);
	}
	return 0;
}

/*
 * A client holding port A's secret can't take port B; SIGHUP adding B lets
 * B's client in without disturbing a connection relaying through A; a bad
 * file is refused and the old secrets stay; a changed secret detaches A's
 * session, whose client lets its relaying connection finish and then
 * exits 1.
 */
static void
test_secrets_reload(struct test *t)
{
	char path[256], file[512], pa[16], pb[16], want[128];
	struct tl_proc *ca, *cb, *bad;
	int a, b, fd;

	if (secrets_ports(t, &a, &b) < 0) {
		return;
	}
	snprintf(pa, sizeof(pa), "%d", a);
	snprintf(pb, sizeof(pb), "%d", b);
	snprintf(file, sizeof(file), "# one service\n%d secret-of-a-000000\n", a);
	if (secrets_server(t, a, b, file, path, sizeof(path)) < 0) {
		return;
	}
	/* A's secret on port B: refused (B is not in the file yet, so B
	 * takes the token), and A's secret does not open port B later. */
	bad = start_client(t, "client-bad", t->ctl, t->loc, NULL, 0, "-port", pb,
	                   "-token", "secret-of-a-000000", NULL);
	if (bad == NULL || expect_exit(t, bad, 1, T(5000)) < 0 ||
	    expect_log(t, bad, "wrong token") < 0) {
		return;
	}
	ca = start_client(t, "client-a", t->ctl, t->loc, NULL, 1, "-port", pa,
	                  "-token", "secret-of-a-000000", NULL);
	if (ca == NULL || (fd = user_connect(t, a)) < 0 ||
	    echo_some(t, fd, 200 * 1024, 1, "through A before SIGHUP") < 0) {
		return;
	}
	/* Add B. */
	snprintf(file, sizeof(file), "%d secret-of-a-000000\n%d secret-of-b-111111\n",
	         a, b);
	if (write_secrets(t, path, sizeof(path), file, 0600) < 0) {
		return;
	}
	kill(t->server->pid, SIGHUP);
	if (wait_log(t, t->server, "1 added, 0 removed, 0 changed; 0 sessions "
	             "detached", T(3000)) < 0) {
		return;
	}
	cb = start_client(t, "client-b", t->ctl, t->loc, NULL, 1, "-port", pb,
	                  "-token", "secret-of-b-111111", NULL);
	if (cb == NULL || echo_once(t, b, 100 * 1024, 2, 0, SMALL_MS,
	                            "through B after SIGHUP") < 0 ||
	    echo_some(t, fd, 200 * 1024, 3, "through A after SIGHUP") < 0) {
		return;
	}
	/* A's secret can't take port B now either. */
	bad = start_client(t, "client-bad2", t->ctl, t->loc, NULL, 0, "-port", pb,
	                   "-token", "secret-of-a-000000", NULL);
	snprintf(want, sizeof(want), "wrong secret for public port %d", b);
	if (bad == NULL || expect_exit(t, bad, 1, T(5000)) < 0 ||
	    expect_log(t, bad, want) < 0) {
		return;
	}
	/* A bad file: refused whole, naming the line; nothing changes. */
	if (write_secrets(t, path, sizeof(path), "# bad\nnot-a-port x\n",
	                  0600) < 0) {
		return;
	}
	kill(t->server->pid, SIGHUP);
	if (wait_log(t, t->server, "line 2", T(3000)) < 0 ||
	    expect_log(t, t->server, "the old ones stay") < 0 ||
	    echo_once(t, b, 1000, 4, 0, SMALL_MS, "B after a bad file") < 0 ||
	    echo_some(t, fd, 1000, 5, "A after a bad file") < 0) {
		return;
	}
	/* A's secret changes: its session is detached, and its client,
	 * refused on its way back, lets the relaying connection finish. */
	snprintf(file, sizeof(file), "%d secret-of-a-CHANGED\n%d secret-of-b-111111\n",
	         a, b);
	if (write_secrets(t, path, sizeof(path), file, 0600) < 0) {
		return;
	}
	kill(t->server->pid, SIGHUP);
	if (wait_log(t, t->server, "0 added, 0 removed, 1 changed; 1 session "
	             "detached", T(3000)) < 0 ||
	    wait_log(t, ca, "exiting once 1 relaying connection finishes",
	             T(5000)) < 0 ||
	    echo_some(t, fd, 100 * 1024, 6, "A while its client drains") < 0) {
		return;
	}
	if (tl_proc_poll(ca)) {
		fail(t, "client-a exited before its relaying connection ended");
		return;
	}
	shutdown(fd, SHUT_WR);
	if (tl_wait_closed(fd, tl_now_ms() + T(3000), NULL, NULL) < 0) {
		fail(t, "A's connection did not end after its half-close");
		return;
	}
	user_close(t, fd);
	snprintf(want, sizeof(want), "wrong secret for public port %d", a);
	if (expect_exit(t, ca, 1, T(5000)) < 0 || expect_log(t, ca, want) < 0) {
		return;
	}
	if (tl_file_contains(t->server->log, "secret-of") ||
	    tl_file_contains(t->server->log, "CHANGED")) {
		fail(t, "the server logged a secret");
		return;
	}
	echo_once(t, b, 1000, 7, 0, SMALL_MS, "B after A's change");
	expect_alive(t, cb);
}

/*
 * A client's own -secrets file: one client serves port A and port B, each
 * proving its own secret from the file while -token is wrong for both.  A
 * file with B's secret wrong gets B refused with a hint naming the file;
 * one others may read is refused at start, as the server's is.
 */
static void
test_secrets_client(struct test *t)
{
	char path[256], cpath[256], file[256], pa[16], pb[16], lb[96], l[64];
	char want[400];
	struct tl_proc *c, *bad;
	int a, b;

	if (secrets_ports(t, &a, &b) < 0) {
		return;
	}
	snprintf(pa, sizeof(pa), "%d", a);
	snprintf(pb, sizeof(pb), "%d", b);
	snprintf(lb, sizeof(lb), "%d=%s", b, tl_fmt_addr(l, t->host, t->loc));
	snprintf(file, sizeof(file), "%d secret-of-a-000000\n%d secret-of-b-111111\n",
	         a, b);
	if (secrets_server(t, a, b, file, path, sizeof(path)) < 0) {
		return;
	}
	/* The client's file, as a range for B's neighbour to show LO-HI. */
	snprintf(cpath, sizeof(cpath), "%s/client-secrets", t->dir);
	snprintf(file, sizeof(file), "# the client's\n%d secret-of-a-000000\n"
	         "%d-%d secret-of-b-111111\n", a, b, b);
	if (tl_write_file(cpath, file, strlen(file)) != 0 ||
	    chmod(cpath, 0600) != 0) {
		fail(t, "writing %s: %s", cpath, strerror(errno));
		return;
	}
	c = start_client(t, "client", t->ctl, t->loc, NULL, 0, "-port", pa,
	                 "-local", lb, "-secrets", cpath, "-token",
	                 "not-the-token-at-all", NULL);
	if (c == NULL || wait_log(t, c, "forwarding", START_MS) < 0 ||
	    echo_once(t, a, 100 * 1024, 1, 0, SMALL_MS, "through A") < 0 ||
	    echo_once(t, b, 100 * 1024, 2, 0, SMALL_MS, "through B") < 0) {
		return;
	}
	/* B's secret wrong in the file: B is refused, with the file named. */
	snprintf(file, sizeof(file), "%d secret-of-b-WRONG\n", b);
	if (tl_write_file(cpath, file, strlen(file)) != 0) {
		fail(t, "writing %s: %s", cpath, strerror(errno));
		return;
	}
	bad = start_client(t, "client-bad", t->ctl, t->loc, NULL, 0, "-port",
	                   pb, "-secrets", cpath, "-token",
	                   "secret-of-b-111111", NULL);
	snprintf(want, sizeof(want), "check port %d's secret in %s against the "
	         "server's", b, cpath);
	if (bad == NULL || expect_exit(t, bad, 1, T(5000)) < 0 ||
	    expect_log(t, bad, want) < 0) {
		return;
	}
	/* Readable by others: refused at start, naming the mode. */
	if (chmod(cpath, 0644) != 0) {
		fail(t, "chmod %s: %s", cpath, strerror(errno));
		return;
	}
	bad = start_client(t, "client-mode", t->ctl, t->loc, NULL, 0,
	                   "-secrets", cpath, NULL);
	snprintf(want, sizeof(want), "%s has mode 0644", cpath);
	if (bad == NULL || expect_exit(t, bad, 1, T(3000)) < 0 ||
	    expect_log(t, bad, want) < 0) {
		return;
	}
	if (tl_file_contains(c->log, "secret-of") ||
	    tl_file_contains(bad->log, "secret-of")) {
		fail(t, "a client logged a secret");
		return;
	}
	echo_once(t, a, 1000, 3, 0, SMALL_MS, "A at the end");
	expect_alive(t, c);
}

static void
test_wrong_token_no_loop(struct test *t)
{
	struct tl_proc *c;
	int n;

	if (pick_server_ports(t, NULL, 4) < 0) {
		return;
	}
	t->server = start_server(t, "server", "-token", "right-secret", NULL);
	if (t->server == NULL) {
		return;
	}
	c = start_client(t, "client", t->ctl, t->loc, NULL, 0, "-token",
	                 "wrong-secret", NULL);
	if (c == NULL || expect_exit(t, c, 1, T(5000)) < 0) {
		return;
	}
	/* The server sends the ERROR before it logs, so wait for the line;
	 * once it is there, the client is gone and no other can follow. */
	if (wait_log(t, t->server, "wrong token", T(3000)) < 0) {
		return;
	}
	n = tl_count_in_file(t->server->log, "wrong token");
	if (n != 1) {
		fail(t, "server logged \"wrong token\" %d times for one client "
		     "start, expected once", n);
		return;
	}
	n = tl_count_in_file(c->log, "retrying");
	if (n != 0) {
		fail(t, "client with a wrong token logged \"retrying\" %d times",
		     n);
		return;
	}
	expect_alive(t, t->server);
}

/* users_closed: each of n fds is closed by the far end before deadline
 * (bytes before the close are discarded).  0 or -1 and fail(). */
static int
users_closed(struct test *t, const int *fds, int n, int64_t deadline,
             const char *what)
{
	int i;

	for (i = 0; i < n; i++) {
		if (tl_wait_closed(fds[i], deadline, NULL, NULL) < 0) {
			return fail(t, "%s: user %d of %d still open", what, i, n);
		}
	}
	return 0;
}

static void
test_no_fd_leak_faults(struct test *t)
{
	enum { BATCH = 50, ROUNDS = 3, FEW = 20, BIG = 10 };
	struct flow fl[BATCH];
	int fds[FEW], round, i, k, n = 0;
	struct tl_fds base_s, base_c;
	struct tl_proc *c2;

	if (need_proc(t) < 0 || start_counted(t, "echo", "rst") < 0
	    || base_fds(t, t->server, &base_s) < 0
	    || base_fds(t, t->client, &base_c) < 0) {
		return;
	}

	/* 1. Users that end every way a user or the service can end them. */
	for (round = 0; round < ROUNDS; round++) {
		n = 0;
		for (i = 0; i < BATCH; i++) {
			uint32_t seed = 7000 + (uint32_t)(round * BATCH + i);
			int fd = user_connect(t, t->pub);

			if (fd < 0) {
				goto out;
			}
			switch (i % 5) {
			case 0:     /* a clean echo, then close */
				flow_init(&fl[n++], fd, 4096, seed, 4096, seed);
				break;
			case 1:     /* half-close before reading */
				flow_init(&fl[n], fd, 32768, seed, 32768, seed);
				fl[n++].write_first = 1;
				break;
			case 2:     /* the user resets mid-transfer, never having
			             * shut its side: more than the buffers hold */
				flow_init(&fl[n], fd, 64 * MIB, seed, 64 * MIB, seed);
				fl[n].shut_after_send = 0;
				fl[n++].reset_at = 16384;
				break;
			case 3:     /* the service resets mid-transfer: below */
				flow_init(&fl[n], fd, 16384, seed, 16384, seed);
				fl[n].shut_after_send = 0;
				fl[n++].pause_at = 8192;
				break;
			default:    /* connect and leave at once */
				user_close(t, fd);
				break;
			}
		}
		if (pump(t, fl, n, SMALL_MS, "fault users") < 0) {
			goto out;
		}
		for (i = 0; i < n; i++) {
			if (fl[i].pause_at) {
				if (tl_write_all(fl[i].fd, "RST!", 4,
				                 tl_now_ms() + T(2000)) < 0) {
					fail(t, "user %d: writing RST!: %s", i,
					     strerror(errno));
					goto out;
				}
				fl[i].pause_at = 0;
				fl[i].may_end = 1;
			}
		}
		if (pump(t, fl, n, T(5000), "users whose service reset them") < 0) {
			goto out;
		}
		for (i = 0; i < n; i++) {
			user_close(t, fl[i].fd);
			fl[i].fd = -1;
		}
	}
	n = 0;

	/* 2. The local service is down: the client refuses the users. */
	kill(t->svc->pid, SIGTERM);
	if (expect_exit(t, t->svc, 0, T(3000)) < 0) {
		return;
	}
	for (k = 0; k < FEW; k++) {
		if ((fds[k] = user_connect(t, t->pub)) < 0) {
			return;
		}
	}
	if (users_closed(t, fds, FEW, tl_now_ms() + T(3000),
	                 "users while the service is down") < 0) {
		return;
	}
	for (k = 0; k < FEW; k++) {
		user_close(t, fds[k]);
	}
	t->svc = start_svc(t, "svc2", "echo", t->loc, "rst");
	if (t->svc == NULL || fds_settle(t, t->server, &base_s, T(5000)) < 0
	    || fds_settle(t, t->client, &base_c, T(5000)) < 0) {
		return;
	}

	/* 3. Users waiting for a join whose session dies: the client is
	 * frozen, the server calls it dead after 3 heartbeats of 1 s. */
	kill(t->client->pid, SIGSTOP);
	for (k = 0; k < FEW; k++) {
		if ((fds[k] = user_connect(t, t->pub)) < 0) {
			kill(t->client->pid, SIGCONT);
			return;
		}
	}
	if (users_closed(t, fds, FEW, tl_now_ms() + T(8000),
	                 "users waiting on a frozen client") < 0) {
		kill(t->client->pid, SIGCONT);
		return;
	}
	kill(t->client->pid, SIGCONT);
	for (k = 0; k < FEW; k++) {
		user_close(t, fds[k]);
	}
	if (wait_log_count(t, t->client, "forwarding", 2, T(10000)) < 0
	    || echo_once(t, t->pub, 4096, 7900, 0, SMALL_MS,
	                 "echo after the client woke up") < 0
	    || fds_settle(t, t->server, &base_s, T(5000)) < 0
	    || fds_settle(t, t->client, &base_c, T(5000)) < 0) {
		return;
	}

	/* 4. The client is killed in the middle of transfers. */
	for (n = 0; n < BIG; n++) {
		int fd = user_connect(t, t->pub);

		if (fd < 0) {
			goto out;
		}
		/* More than all the buffers on the way hold. */
		flow_init(&fl[n], fd, 1024 * MIB, 7950 + (uint32_t)n, 1024 * MIB,
		          7950 + (uint32_t)n);
		fl[n].pause_at = 256 * 1024;
	}
	if (pump(t, fl, n, SMALL_MS, "users before the client is killed") < 0) {
		goto out;
	}
	kill_hard(t, t->client);
	for (i = 0; i < n; i++) {
		fl[i].pause_at = 0;
		fl[i].may_end = 1;
	}
	if (pump(t, fl, n, T(5000), "users after the client was killed") < 0) {
		goto out;
	}
	for (i = 0; i < n; i++) {
		user_close(t, fl[i].fd);
		fl[i].fd = -1;
	}
	n = 0;
	c2 = start_client(t, "client2", t->ctl, t->loc, NULL, 0, "-pool", "0",
	                  NULL);
	if (c2 == NULL || wait_log(t, c2, "forwarding", T(5000)) < 0) {
		return;
	}
	t->client = c2;
	if (echo_once(t, t->pub, 4096, 7999, 0, SMALL_MS,
	              "echo through client2") == 0) {
		fds_settle(t, t->server, &base_s, T(5000));
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
	size_t i;

	if (pick_server_ports(t, NULL, 4) < 0) {
		return;
	}
	t->svc = start_svc(t, "svc", "echo", t->loc, NULL);
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
	    || many_echo(t, t->loc, 200, 4096, T(30000), "svc 200 users") < 0) {
		return;
	}
	if (start_svc(t, "svc-source", "source", t->tun, "67108864") == NULL) {
		return;
	}
	download_once(t, t->tun, 64 * MIB, BIG_MS, "svc source 64 MiB");
}

/* ---- runner --------------------------------------------------------------- */

static const struct tl_case tests[] = {
	{ "echo_sizes", test_echo_sizes, 0 },
	{ "echo_32mib", test_echo_32mib, TL_HEAVY },
	{ "download_64mib", test_download_64mib, TL_HEAVY },
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
	{ "local_fallback", test_local_fallback, 0 },
	{ "urgent_data", test_urgent_data, 0 },
	{ "no_fd_leak", test_no_fd_leak, 0 },
	{ "no_memory_growth", test_no_memory_growth, TL_HEAVY },
	{ "server_restart", test_server_restart, 0 },
	{ "client_killed", test_client_killed, 0 },
	{ "local_killed", test_local_killed, 0 },
	{ "frozen_client", test_frozen_client, 0 },
	{ "silent_flood", test_silent_flood, 0 },
	{ "silent_flood_one_source", test_silent_flood_one_source, 0 },
	{ "user_flood", test_user_flood, 0 },
	{ "wrong_token_no_loop", test_wrong_token_no_loop, 0 },
	{ "secrets_mode", test_secrets_mode, 0 },
	{ "secrets_reload", test_secrets_reload, 0 },
	{ "secrets_client", test_secrets_client, 0 },
	{ "no_fd_leak_faults", test_no_fd_leak_faults, 0 },
	{ "svc_direct", test_svc_direct, TL_EXPLICIT },
};

int
main(int argc, char **argv)
{
	struct rlimit rl;

	/* Floods hold thousands of sockets; children inherit the limit. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (argc == 3 && strcmp(argv[1], "--resolve") == 0) {
		return print_addrs(argv[2]);
	}
	if (tl_use_valgrind() < 0) {
		return 1;
	}
	return tl_main(argc, argv, "e2e", WATCHDOG_S, tests,
	               sizeof(tests) / sizeof(tests[0]));
}
