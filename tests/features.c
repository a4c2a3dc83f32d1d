/*
 * Feature tests: several clients on one server (-ports/-port), the PROXY
 * protocol (-proxy-protocol v1|v2, checked by a parser of our own and by a
 * real nginx), SIGUSR1 status, a real browser loading a page through the
 * tunnel, the pool of pre-dialed tunnels (-pool N: filling, serving,
 * refilling, and what happens when the service, the client or the server
 * goes away), and protocol 2's defences, probed by a scripted client that
 * speaks the wire format itself with keys.c's handshake and records
 * (replayed JOIN and AUTH, a forged JOIN, a wrong token, another version,
 * a version 1 client, a client at the wrong port or at something that is
 * not dialback) and by a scripted server facing the real client (one that
 * cannot prove the token, a version 1 server, tampered, cut and replayed
 * tunnel records); -plaintext on one end or both; a packet capture of the
 * loopback interface showing neither the users' bytes nor the token on
 * the wire, unless -plaintext; and the failure handling the README
 * promises: a client's reconnect replacing its own session, joined pairs
 * outliving their control connection (scripted, and with the real client
 * behind a proxy that cuts it), the cap of 4096 users waiting for their
 * tunnel, a server out of file descriptors, and TCP keepalive on both
 * ends of the control connection (read from /proc/net/tcp); and several
 * services from one client (repeated -local, PUBLIC=, -local PORT, one
 * refused as busy while the others serve, -port 0 for any free port, a
 * -remote list with a dead first address, -tunnel through a relay, and
 * the malformed arguments that must exit 2).  Run from the
 * repository root:
 *
 *     ./tests/features [NAME-SUBSTRING]
 *
 * Like tests/e2e: each test starts its own processes, logs each to a file
 * in a fresh temporary directory, waits for conditions with deadlines,
 * compares bytes exactly, and stops only the PIDs it started.  nginx and
 * chromium are used when installed and skipped otherwise, except that with
 * CI=true in the environment a missing one is a failure.  With
 * FEATURES_KEEP set, logs are kept after a pass too.  The harness is
 * tests/testlib.h's: "ok - NAME", "skip - NAME # why" or "FAIL - NAME:
 * why" per test, then "features: N passed, N failed, N skipped".
 *
 * tests/features --pp-service ADDR is the PROXY-protocol test service: it
 * accepts one connection at a time, reads it to EOF, parses the PROXY
 * header at its start (HAProxy's proxy-protocol.txt, version 1 and 2), and
 * answers one line describing what it found, then closes.
 * tests/features --cut-proxy PORT TARGET is a relay that drops every
 * connection on SIGUSR1 (see cut_proxy), tests/features --nofile N
 * PROG ARGS runs PROG with RLIMIT_NOFILE N, soft and hard, and
 * tests/features --capture FILE PORT... records the TCP payloads of
 * those ports on loopback (see capture_run; root only).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* The capture needs Linux's packet-socket headers, which musl's static
 * build (STATIC=1) lacks; the glibc builds in the same CI run capture. */
#if defined(__linux__) && defined(__GLIBC__)
#define CAPTURE_PACKET 1
#endif
#ifdef CAPTURE_PACKET
#include <asm/socket.h>         /* SO_RCVBUFFORCE */
#include <linux/if_ether.h>     /* ETH_P_ALL */
#include <linux/if_packet.h>    /* sockaddr_ll, PACKET_STATISTICS */
#include <net/if.h>             /* if_nametoindex */
#endif

#include "tests/testlib.h"
#include "common.h"
#include "protocol.h"
#include "sha256.h"

#define IO_MS        15000   /* one user's exchange */
#define GONE_MS      5000    /* a port closes after its client left */
#define WATCHDOG_S   120     /* a test that takes longer is killed */
#define RANGE_N      5       /* ports in the test's -ports range */

/* ---- small helpers -------------------------------------------------------- */

/* sa_str: a socket address as "IP:PORT" or "[IP]:PORT" into buf (64). */
static const char *
sa_str(const struct sockaddr_storage *ss, char *buf)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(buf, 64, "%s:%d", ip, ntohs(s4->sin_port));
	} else {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, 64, "[%s]:%d", ip, ntohs(s6->sin6_port));
	}
	return buf;
}

/* fnv1a: 32-bit FNV-1a; the browser page computes the same in JS. */
static uint32_t
fnv1a(const uint8_t *p, size_t n)
{
	uint32_t h = 0x811c9dc5u;
	size_t i;

	for (i = 0; i < n; i++) {
		h = (h ^ p[i]) * 0x01000193u;
	}
	return h;
}

/* ---- ports ---------------------------------------------------------------- */

/*
 * pick_range: n consecutive free ports on 127.0.0.1 into *lo, then k more
 * (not among them) into others.  The range comes from below the usual
 * ephemeral ports (32768 up), where outgoing connections take every other
 * port on a busy host; a candidate is kept if all n ports bind, and all
 * stay bound until the others are picked.
 */
static int
pick_range(struct test *t, int n, int *lo, int *others, int k)
{
	int fds[RANGE_N], tries, i, got, rc;
	unsigned seed = (unsigned)getpid() * 2654435761u ^ (unsigned)tl_now_ms();

	for (tries = 0; tries < 100; tries++) {
		seed = seed * 1103515245u + 12345u;
		*lo = 20000 + (int)(seed >> 8) % (32000 - 20000);
		for (got = 0; got < n; got++) {
			fds[got] = tl_listen("127.0.0.1", *lo + got);
			if (fds[got] < 0) {
				break;
			}
		}
		rc = got == n ? tl_free_ports("127.0.0.1", others, k) : -1;
		for (i = 0; i < got; i++) {
			close(fds[i]);
		}
		if (got == n) {
			return rc < 0 ? fail(t, "picking free ports: %s",
			                     strerror(errno)) : 0;
		}
	}
	return fail(t, "found no %d consecutive free ports", n);
}

/* ---- processes ------------------------------------------------------------ */

/* signal_and_wait: send sig to p, then wait for the n-th occurrence of s. */
static int
signal_and_wait(struct test *t, struct tl_proc *p, int sig, const char *s,
                int n)
{
	char st[32];
	int r;

	kill(p->pid, sig);
	r = tl_wait_log_count(p, s, n, START_MS);
	if (r == 1) {
		return 0;
	}
	if (r < 0) {
		return fail(t, "%s exited (%s) after signal %d", p->name,
		            tl_status_str(p, st, sizeof(st)), sig);
	}
	return fail(t, "%s did not log \"%s\" (#%d) within %d ms of signal %d",
	            p->name, s, n, START_MS, sig);
}

/*
 * attach_client: ./client to our server for the service on 127.0.0.1:loc;
 * port > 0 adds -port, proxy ("v1", "v2") -proxy-protocol, pool > 0
 * -pool.  With wait, waits for "forwarding" and checks that the line names
 * the public port want_pub and the service.
 */
static struct tl_proc *
attach_client(struct test *t, const char *name, int loc, int port,
              const char *proxy, int pool, int wait, int want_pub)
{
	char pn[16], pl[16];
	const char *args[8];
	struct tl_proc *c;
	int n = 0;

	if (port > 0) {
		snprintf(pn, sizeof(pn), "%d", port);
		args[n++] = "-port";
		args[n++] = pn;
	}
	if (proxy != NULL) {
		args[n++] = "-proxy-protocol";
		args[n++] = proxy;
	}
	if (pool > 0) {
		snprintf(pl, sizeof(pl), "%d", pool);
		args[n++] = "-pool";
		args[n++] = pl;
	}
	args[n] = NULL;
	c = start_client_v(t, name, t->ctl, loc, NULL, wait, args);
	if (c == NULL || !wait) {
		return c;
	}
	/* The client names the public port with the -remote host. */
	return expect_forwarding(t, c, want_pub, loc) < 0 ? NULL : c;
}

/* start_pp_service: our PROXY-protocol service on 127.0.0.1:port. */
static struct tl_proc *
start_pp_service(struct test *t, int port)
{
	char a[64];
	const char *argv[4] = { tl_h.self, "--pp-service",
	                        tl_fmt_addr(a, "127.0.0.1", port), NULL };
	struct tl_proc *s = start(t, "pp-service", argv, NULL, 0);

	if (s == NULL || wait_log(t, s, "ready", START_MS) < 0) {
		return NULL;
	}
	return s;
}

/* ---- users ---------------------------------------------------------------- */

/*
 * exchange: send n bytes on fd, shut down writing, read until EOF into out
 * (at most cap - 1 bytes, then NUL-terminated).  Returns the count read;
 * -1 and fail() on an error, a timeout, or more than cap - 1 bytes.
 */
static ssize_t
exchange(struct test *t, int fd, const void *data, size_t n, char *out,
         size_t cap, const char *what)
{
	int64_t deadline = tl_now_ms() + IO_MS;
	ssize_t r;

	if (tl_write_all(fd, data, n, deadline) < 0) {
		return fail(t, "%s: sending %zu bytes: %s", what, n, strerror(errno));
	}
	if (shutdown(fd, SHUT_WR) < 0) {
		return fail(t, "%s: shutdown: %s", what, strerror(errno));
	}
	r = tl_read_full(fd, out, cap, deadline);
	if (r < 0) {
		return fail(t, "%s: reading: %s", what, strerror(errno));
	}
	if ((size_t)r == cap) {
		return fail(t, "%s: more than %zu bytes came back", what, cap - 1);
	}
	out[r] = '\0';
	return r;
}

/* download: a user on host:port gets exactly n bytes of svc source's
 * stream (seed 1) and then EOF.  0 or -1 and fail(). */
static int
download(struct test *t, const char *host, int port, size_t n,
         const char *what)
{
	uint8_t *got = malloc(n + 2), *want = malloc(n + 1);
	struct tl_stream s;
	ssize_t r;
	int fd = -1, rc = -1;

	if (got == NULL || want == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	fd = user_open(t, host, port);
	if (fd < 0) {
		goto out;
	}
	r = exchange(t, fd, "", 0, (char *)got, n + 2, what);
	if (r < 0) {
		goto out;
	}
	tl_stream_init(&s, 1);
	tl_stream_fill(&s, want, n);
	if ((size_t)r != n) {
		fail(t, "%s: got %zd bytes, want %zu (wrong service?)", what, r, n);
	} else if (memcmp(got, want, n) != 0) {
		fail(t, "%s: the %zu bytes differ from the service's stream", what,
		     n);
	} else {
		rc = 0;
	}
out:
	if (fd >= 0) {
		user_close(t, fd);
	}
	free(got);
	free(want);
	return rc;
}

/* expect_refused: a connect to 127.0.0.1:port is refused at once. */
static int
expect_refused(struct test *t, int port, const char *what)
{
	int fd = tl_connect("127.0.0.1", port, tl_now_ms() + 5000);

	if (fd >= 0) {
		close(fd);
		return fail(t, "%s: port %d accepts a connection", what, port);
	}
	if (errno != ECONNREFUSED) {
		return fail(t, "%s: port %d: %s, want \"connection refused\"", what,
		            port, strerror(errno));
	}
	return 0;
}

/* wait_refused: 127.0.0.1:port refuses connections within ms. */
static int
wait_refused(struct test *t, int port, int ms, const char *what)
{
	int64_t deadline = tl_now_ms() + ms;
	int fd;

	for (;;) {
		fd = tl_connect("127.0.0.1", port, tl_now_ms() + 1000);
		if (fd < 0 && errno == ECONNREFUSED) {
			return 0;
		}
		if (fd >= 0) {
			close(fd);
		}
		if (tl_now_ms() >= deadline) {
			return fail(t, "%s: port %d still accepts after %d ms", what,
			            port, ms);
		}
		tl_pause(50);
	}
}

/* ==== test: -ports and -port ============================================== */

static void
test_ports_range(struct test *t)
{
	int lo, hi, p[6], loc_main, loc_a, loc_b;
	char range[32], want[160];
	struct tl_proc *server, *c_a, *c_b, *c_busy, *c_out, *c_again;

	if (pick_range(t, RANGE_N, &lo, p, 6) < 0) {
		return;
	}
	hi = lo + RANGE_N - 1;
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	loc_main = p[3];
	loc_a = p[4];
	loc_b = p[5];
	snprintf(range, sizeof(range), "%d-%d", lo, hi);

	/* Three services told apart by how many bytes they send. */
	if (start_svc(t, "svc-main", "source", loc_main, "3000") == NULL
	    || start_svc(t, "svc-a", "source", loc_a, "1111") == NULL
	    || start_svc(t, "svc-b", "source", loc_b, "2222") == NULL) {
		return;
	}
	server = start_server(t, "server", "-ports", range, NULL);
	if (server == NULL) {
		return;
	}
	snprintf(want, sizeof(want), "ports %s", range);
	if (expect_log(t, server, want) < 0) {
		return;
	}
	/* A range port listens only while a client holds it. */
	if (expect_refused(t, lo, "before any client") < 0) {
		return;
	}

	/* The default client gets -public; two others the ends of the range. */
	if (attach_client(t, "client-main", loc_main, 0, NULL, 0, 1, t->pub) == NULL
	    || (c_a = attach_client(t, "client-a", loc_a, lo, NULL, 0, 1, lo)) == NULL
	    || (c_b = attach_client(t, "client-b", loc_b, hi, NULL, 0, 1, hi)) == NULL) {
		return;
	}
	if (download(t, "127.0.0.1", t->pub, 3000, "user on -public") < 0
	    || download(t, "127.0.0.1", lo, 1111, "user on the range's low end") < 0
	    || download(t, "127.0.0.1", hi, 2222, "user on the range's high end") < 0
	    || download(t, "127.0.0.1", lo, 1111, "second user on low end") < 0
	    || download(t, "127.0.0.1", t->pub, 3000, "second user on -public") < 0) {
		return;
	}
	snprintf(want, sizeof(want), "accepted on port %d", lo);
	if (expect_log(t, server, want) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "accepted on port %d", hi);
	if (expect_log(t, server, want) < 0) {
		return;
	}
	if (expect_refused(t, lo + 2, "a range port nobody asked for") < 0) {
		return;
	}

	/* Outside the range: refused for good, naming what is offered. */
	c_out = attach_client(t, "client-outside", loc_a, hi + 1, NULL, 0, 0, 0);
	if (c_out == NULL || expect_exit(t, c_out, 1, START_MS) < 0
	    || expect_log(t, c_out, "not offered") < 0) {
		return;
	}
	snprintf(want, sizeof(want), "%d and %s", t->pub, range);
	if (expect_log(t, c_out, want) < 0) {
		return;
	}

	/* A port already held: refused as busy; the client keeps retrying. */
	c_busy = attach_client(t, "client-busy", loc_b, lo, NULL, 0, 0, 0);
	if (c_busy == NULL
	    || wait_log(t, c_busy, "already served by", START_MS) < 0) {
		return;
	}
	if (tl_wait_log_count(c_busy, "already served by", 2, START_MS) != 1) {
		fail(t, "client-busy did not retry after \"already served by\"");
		return;
	}
	if (expect_alive(t, c_busy) < 0 || stop(t, c_busy) < 0) {
		return;
	}
	/* The refused attempts left the holder alone. */
	if (download(t, "127.0.0.1", lo, 1111, "user on low end after busy") < 0) {
		return;
	}

	/* The holder leaves: its port closes, and another client may take it. */
	if (stop(t, c_a) < 0 || wait_refused(t, lo, GONE_MS, "client-a left") < 0) {
		return;
	}
	snprintf(want, sizeof(want), "public port %d closed", lo);
	if (expect_log(t, server, want) < 0) {
		return;
	}
	c_again = attach_client(t, "client-again", loc_b, lo, NULL, 0, 1, lo);
	if (c_again == NULL
	    || download(t, "127.0.0.1", lo, 2222, "user on low end, new client") < 0
	    || download(t, "127.0.0.1", hi, 2222, "user on high end at the end") < 0
	    || download(t, "127.0.0.1", t->pub, 3000, "user on -public at the end")
	       < 0) {
		return;
	}
	(void)c_b;
}

/* A client refused as busy takes the port over once its holder leaves. */
static void
test_ports_takeover(struct test *t)
{
	int lo, p[5];
	char range[32];
	struct tl_proc *c_first, *c_second;

	if (pick_range(t, 1, &lo, p, 5) < 0) {
		return;
	}
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	snprintf(range, sizeof(range), "%d-%d", lo, lo);
	if (start_svc(t, "svc-a", "source", p[3], "1111") == NULL
	    || start_svc(t, "svc-b", "source", p[4], "2222") == NULL
	    || start_server(t, "server", "-ports", range, NULL) == NULL) {
		return;
	}
	c_first = attach_client(t, "client-first", p[3], lo, NULL, 0, 1, lo);
	if (c_first == NULL) {
		return;
	}
	c_second = attach_client(t, "client-second", p[4], lo, NULL, 0, 0, 0);
	if (c_second == NULL
	    || wait_log(t, c_second, "already served by", START_MS) < 0
	    || download(t, "127.0.0.1", lo, 1111, "user while first holds") < 0
	    || stop(t, c_first) < 0
	    || wait_log(t, c_second, "forwarding 127.0.0.1:", START_MS) < 0) {
		return;
	}
	if (download(t, "127.0.0.1", lo, 2222, "user after the takeover") < 0) {
		return;
	}
}

/* ==== the PROXY protocol service ========================================= */

#define PP_CAP     (1024 * 1024)   /* the most a test user sends */
#define PP_V1_MAX  107             /* the longest v1 line, CRLF included */
#define PP_HEX_MAX 4096            /* rest= shows at most this many bytes */

static const uint8_t pp_sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};

/* What a PROXY header said. */
struct pp_info {
	int version;            /* 0: no header; 1, 2 */
	const char *why;        /* non-NULL: malformed, and why */
	const char *cmd;        /* "PROXY" or "LOCAL" */
	const char *fam;        /* "TCP4", "TCP6", "UNKNOWN" (v1), "UNSPEC" (v2) */
	char src[64], dst[64];  /* "IP:PORT", "[IP]:PORT"; "-" without */
	size_t len;             /* the header's size */
};

static void
pp_addr(char *out, int af, const void *addr, unsigned port)
{
	char ip[INET6_ADDRSTRLEN];

	inet_ntop(af, addr, ip, sizeof(ip));
	snprintf(out, 64, af == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
}

/* pp_port: a v1 port: 1 to 5 digits, no leading zero, 0..65535. */
static int
pp_port(const char *s, unsigned *port)
{
	size_t n = strlen(s), i;
	unsigned long v = 0;

	if (n == 0 || n > 5 || (s[0] == '0' && n > 1)) {
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9') {
			return -1;
		}
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535) {
		return -1;
	}
	*port = (unsigned)v;
	return 0;
}

/* pp_parse_v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or
 * "PROXY UNKNOWN[ ...]\r\n", at most 107 bytes, single spaces. */
static void
pp_parse_v1(const uint8_t *buf, size_t n, struct pp_info *pp)
{
	char line[PP_V1_MAX + 1], *tok[8], *p;
	uint8_t a[16], b[16];
	unsigned sport, dport;
	size_t end, i;
	int ntok = 0, af;

	pp->version = 1;
	pp->cmd = "PROXY";
	for (end = 0; end + 1 < n && end + 2 <= PP_V1_MAX; end++) {
		if (buf[end] == '\r' && buf[end + 1] == '\n') {
			break;
		}
	}
	if (end + 1 >= n || end + 2 > PP_V1_MAX || buf[end] != '\r') {
		pp->why = "v1: no CRLF within 107 bytes";
		return;
	}
	for (i = 0; i < end; i++) {
		if (buf[i] < 0x20 || buf[i] > 0x7e) {
			pp->why = "v1: a control byte in the line";
			return;
		}
	}
	memcpy(line, buf, end);
	line[end] = '\0';
	pp->len = end + 2;
	for (p = line; ntok < 8; ntok++) {
		tok[ntok] = p;
		p = strchr(p, ' ');
		if (p == NULL) {
			ntok++;
			break;
		}
		*p++ = '\0';
	}
	if (ntok < 2 || strcmp(tok[0], "PROXY") != 0) {
		pp->why = "v1: no protocol";
		return;
	}
	if (strcmp(tok[1], "UNKNOWN") == 0) {
		pp->fam = "UNKNOWN";
		return;
	}
	if (strcmp(tok[1], "TCP4") == 0) {
		pp->fam = "TCP4";
		af = AF_INET;
	} else if (strcmp(tok[1], "TCP6") == 0) {
		pp->fam = "TCP6";
		af = AF_INET6;
	} else {
		pp->why = "v1: protocol is not TCP4, TCP6 or UNKNOWN";
		return;
	}
	if (ntok != 6) {
		pp->why = "v1: want 6 space-separated fields";
		return;
	}
	if (inet_pton(af, tok[2], a) != 1 || inet_pton(af, tok[3], b) != 1) {
		pp->why = "v1: an address is not of the protocol's family";
		return;
	}
	if (pp_port(tok[4], &sport) < 0 || pp_port(tok[5], &dport) < 0) {
		pp->why = "v1: a bad port";
		return;
	}
	pp_addr(pp->src, af, a, sport);
	pp_addr(pp->dst, af, b, dport);
}

/* pp_parse_v2: the 12-byte signature, version/command, family/protocol,
 * a big-endian length, then the addresses (and TLVs, skipped). */
static void
pp_parse_v2(const uint8_t *buf, size_t n, struct pp_info *pp)
{
	size_t alen;

	pp->version = 2;
	if (n < 16) {
		pp->why = "v2: shorter than 16 bytes";
		return;
	}
	if (buf[12] >> 4 != 2) {
		pp->why = "v2: version nibble is not 2";
		return;
	}
	switch (buf[12] & 15) {
	case 0:
		pp->cmd = "LOCAL";
		break;
	case 1:
		pp->cmd = "PROXY";
		break;
	default:
		pp->why = "v2: command is neither LOCAL nor PROXY";
		return;
	}
	alen = (size_t)buf[14] << 8 | buf[15];
	if (16 + alen > n) {
		pp->why = "v2: length runs past the data";
		return;
	}
	pp->len = 16 + alen;
	switch (buf[13]) {
	case 0x00:
		pp->fam = "UNSPEC";
		return;
	case 0x11:
		pp->fam = "TCP4";
		if (alen < 12) {
			pp->why = "v2: TCP4 with fewer than 12 address bytes";
			return;
		}
		pp_addr(pp->src, AF_INET, buf + 16, (unsigned)buf[24] << 8 | buf[25]);
		pp_addr(pp->dst, AF_INET, buf + 20, (unsigned)buf[26] << 8 | buf[27]);
		return;
	case 0x21:
		pp->fam = "TCP6";
		if (alen < 36) {
			pp->why = "v2: TCP6 with fewer than 36 address bytes";
			return;
		}
		pp_addr(pp->src, AF_INET6, buf + 16,
		        (unsigned)buf[48] << 8 | buf[49]);
		pp_addr(pp->dst, AF_INET6, buf + 32,
		        (unsigned)buf[50] << 8 | buf[51]);
		return;
	default:
		pp->why = "v2: family/protocol is not TCP over IPv4/IPv6";
		return;
	}
}

/* pp_parse: the PROXY header at the start of buf[0..n), if any. */
static void
pp_parse(const uint8_t *buf, size_t n, struct pp_info *pp)
{
	memset(pp, 0, sizeof(*pp));
	strcpy(pp->src, "-");
	strcpy(pp->dst, "-");
	if (n >= 12 && memcmp(buf, pp_sig, 12) == 0) {
		pp_parse_v2(buf, n, pp);
	} else if (n >= 6 && memcmp(buf, "PROXY ", 6) == 0) {
		pp_parse_v1(buf, n, pp);
	}
}

/*
 * pp_describe: the service's answer for a connection that sent buf[0..n):
 *   proxy=vN cmd=C fam=F src=A dst=A hdr=HEX len=N fnv=H rest=HEX
 *   proxy=none len=N fnv=H rest=HEX
 *   proxy=bad why=...
 * where len, fnv and rest describe the bytes after the header (rest=
 * shows the first PP_HEX_MAX of them).  out has room for PP_LINE bytes.
 */
#define PP_LINE (2 * PP_HEX_MAX + 2 * 256 + 512)
static void
pp_describe(const uint8_t *buf, size_t n, char *out)
{
	struct pp_info pp;
	char hdr[2 * 256 + 1], rest[2 * PP_HEX_MAX + 1];
	size_t off, shown;
	int k = 0;

	pp_parse(buf, n, &pp);
	if (pp.why != NULL) {
		snprintf(out, PP_LINE, "proxy=bad why=%s\n", pp.why);
		return;
	}
	off = pp.len;
	shown = n - off < PP_HEX_MAX ? n - off : PP_HEX_MAX;
	tl_hex(buf + off, shown, rest);
	if (pp.version != 0) {
		tl_hex(buf, pp.len < 256 ? pp.len : 256, hdr);
		k = snprintf(out, PP_LINE, "proxy=v%d cmd=%s fam=%s src=%s dst=%s "
		             "hdr=%s ", pp.version, pp.cmd, pp.fam, pp.src, pp.dst,
		             hdr);
	} else {
		k = snprintf(out, PP_LINE, "proxy=none ");
	}
	snprintf(out + k, PP_LINE - (size_t)k, "len=%zu fnv=%08x rest=%s\n",
	         n - off, (unsigned)fnv1a(buf + off, n - off), rest);
}

/* pp_service: the --pp-service mode.  Runs until killed. */
static int
pp_service(const char *addr)
{
	char host[64], *colon, *line = malloc(PP_LINE);
	uint8_t *buf = malloc(PP_CAP);
	int lfd, fd, port;
	ssize_t r;

	snprintf(host, sizeof(host), "%s", addr[0] == '[' ? addr + 1 : addr);
	colon = strrchr(host, ':');
	if (buf == NULL || line == NULL || colon == NULL) {
		fprintf(stderr, "pp-service: bad address %s\n", addr);
		return 2;
	}
	*colon = '\0';
	if (colon > host && colon[-1] == ']') {
		colon[-1] = '\0';
	}
	port = atoi(colon + 1);
	lfd = tl_listen(host, port);
	if (lfd < 0) {
		fprintf(stderr, "pp-service: listen %s: %s\n", addr, strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int64_t deadline;

		fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			fprintf(stderr, "pp-service: accept: %s\n", strerror(errno));
			return 1;
		}
		deadline = tl_now_ms() + IO_MS;
		tl_set_nonblock(fd);
		r = tl_read_full(fd, buf, PP_CAP, deadline);
		if (r < 0) {
			snprintf(line, PP_LINE, "proxy=bad why=read: %s\n",
			         strerror(errno));
		} else if (r == PP_CAP) {
			snprintf(line, PP_LINE, "proxy=bad why=more than %d bytes\n",
			         PP_CAP);
		} else {
			pp_describe(buf, (size_t)r, line);
		}
		printf("%.300s%s", line, strlen(line) > 300 ? "...\n" : "");
		fflush(stdout);
		if (tl_write_all(fd, line, strlen(line), deadline) < 0) {
			fprintf(stderr, "pp-service: write: %s\n", strerror(errno));
		}
		close(fd);
	}
}

/* ==== test: PROXY protocol through the tunnel ============================= */

/* pp_expected_header: the header the client should send, built here from
 * the spec, independently of common.c.  Returns its length. */
static size_t
pp_expected_header(int version, const struct sockaddr_storage *src,
                   const struct sockaddr_storage *dst, uint8_t *out)
{
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)src;
	const struct sockaddr_in *d4 = (const struct sockaddr_in *)dst;
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)src;
	const struct sockaddr_in6 *d6 = (const struct sockaddr_in6 *)dst;
	char sip[INET6_ADDRSTRLEN], dip[INET6_ADDRSTRLEN];
	int v4 = src->ss_family == AF_INET;
	unsigned sport = ntohs(v4 ? s4->sin_port : s6->sin6_port);
	unsigned dport = ntohs(v4 ? d4->sin_port : d6->sin6_port);

	if (version == 1) {
		inet_ntop(src->ss_family, v4 ? (const void *)&s4->sin_addr
		                             : (const void *)&s6->sin6_addr,
		          sip, sizeof(sip));
		inet_ntop(dst->ss_family, v4 ? (const void *)&d4->sin_addr
		                             : (const void *)&d6->sin6_addr,
		          dip, sizeof(dip));
		return (size_t)snprintf((char *)out, 128, "PROXY TCP%c %s %s %u %u\r\n",
		                        v4 ? '4' : '6', sip, dip, sport, dport);
	}
	memcpy(out, pp_sig, 12);
	out[12] = 0x21;
	out[13] = v4 ? 0x11 : 0x21;
	out[14] = 0;
	out[15] = v4 ? 12 : 36;
	if (v4) {
		memcpy(out + 16, &s4->sin_addr, 4);
		memcpy(out + 20, &d4->sin_addr, 4);
	} else {
		memcpy(out + 16, &s6->sin6_addr, 16);
		memcpy(out + 32, &d6->sin6_addr, 16);
	}
	out += v4 ? 24 : 48;
	out[0] = (uint8_t)(sport >> 8);
	out[1] = (uint8_t)sport;
	out[2] = (uint8_t)(dport >> 8);
	out[3] = (uint8_t)dport;
	return v4 ? 28 : 52;
}

/*
 * pp_user: one user connects to host:t->pub, sends data, and the service
 * must answer exactly the line for version (0 = no header) with this
 * user's own address as source and host:t->pub as destination.
 */
static int
pp_user(struct test *t, const char *host, int version, const uint8_t *data,
        size_t n, const char *what)
{
	struct sockaddr_storage src, dst;
	socklen_t slen = sizeof(src);
	uint8_t hdr[128];
	char *want = malloc(PP_LINE), *got = malloc(PP_LINE + 1);
	char sa[64], da[64], hex[2 * 128 + 1];
	size_t hlen, shown = n < PP_HEX_MAX ? n : PP_HEX_MAX;
	int fd = -1, rc = -1, k;

	if (want == NULL || got == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	fd = user_open(t, host, t->pub);
	if (fd < 0) {
		goto out;
	}
	if (getsockname(fd, (struct sockaddr *)&src, &slen) < 0) {
		fail(t, "getsockname: %s", strerror(errno));
		goto out;
	}
	tl_sockaddr(host, t->pub, &dst);
	if (version == 0) {
		k = snprintf(want, PP_LINE, "proxy=none ");
	} else {
		hlen = pp_expected_header(version, &src, &dst, hdr);
		tl_hex(hdr, hlen, hex);
		k = snprintf(want, PP_LINE, "proxy=v%d cmd=PROXY fam=TCP%c src=%s "
		             "dst=%s hdr=%s ", version,
		             src.ss_family == AF_INET ? '4' : '6', sa_str(&src, sa),
		             sa_str(&dst, da), hex);
	}
	k += snprintf(want + k, PP_LINE - (size_t)k, "len=%zu fnv=%08x rest=", n,
	              (unsigned)fnv1a(data, n));
	tl_hex(data, shown, want + k);
	strcat(want, "\n");
	if (exchange(t, fd, data, n, got, PP_LINE + 1, what) < 0) {
		goto out;
	}
	if (strcmp(got, want) != 0) {
		fail(t, "%s: the service saw\n#   %.400s\n# want\n#   %.400s", what,
		     got, want);
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0) {
		user_close(t, fd);
	}
	free(want);
	free(got);
	return rc;
}

/* proxy_run: server (-public on pub_host), the PROXY service, a client
 * with -proxy-protocol vN (none for 0) and -pool pool (if > 0), then three
 * users: an empty one, one whose own bytes look like a PROXY header, and
 * 256 KiB + 1.  With a pool, each user must have used a pooled tunnel. */
static void
proxy_run(struct test *t, int version, const char *pub_host, int pool)
{
	static const char spoof[] = "PROXY TCP4 6.6.6.6 7.7.7.7 666 777\r\n";
	char vn[4];
	uint8_t small[sizeof(spoof) - 1 + 256];
	size_t big_n = 256 * 1024 + 1, i;
	uint8_t *big = malloc(big_n);
	struct tl_stream s;
	struct tl_proc *server;
	int p[3], loc;

	if (big == NULL) {
		fail(t, "out of memory");
		return;
	}
	if (strchr(pub_host, ':') && !tl_ipv6_ok()) {
		t->skip = "no IPv6 loopback (::1)";
		goto out;
	}
	if (pick_ports(t, p, 3) < 0) {
		goto out;
	}
	t->ctl = p[0];
	t->tun = p[1];
	loc = p[2];
	if (strchr(pub_host, ':')) {
		if (tl_free_ports("::1", &t->pub, 1) < 0) {
			fail(t, "picking a free port on ::1: %s", strerror(errno));
			goto out;
		}
	} else if (pick_ports(t, &t->pub, 1) < 0) {
		goto out;
	}
	/* Without the header the service would take a leading PROXY line for
	 * one; the spoof goes first only when the client sends the real one. */
	memcpy(small, spoof, sizeof(spoof) - 1);
	for (i = 0; i < 256; i++) {
		small[sizeof(spoof) - 1 + i] = (uint8_t)i;
	}
	tl_stream_init(&s, 9);
	tl_stream_fill(&s, big, big_n);
	snprintf(vn, sizeof(vn), "v%d", version);
	t->pub_host = pub_host;
	if (start_pp_service(t, loc) == NULL
	    || (server = start_server(t, "server", NULL)) == NULL
	    || attach_client(t, "client", loc, 0, version ? vn : NULL, pool, 1,
	                    t->pub) == NULL) {
		goto out;
	}
	if (pp_user(t, pub_host, version, (const uint8_t *)"", 0, "empty user") < 0
	    || pp_user(t, pub_host, version,
	               version ? small : small + sizeof(spoof) - 1,
	               version ? sizeof(small) : 256, "small user") < 0
	    || pp_user(t, pub_host, version, big, big_n, "256 KiB + 1 user") < 0) {
		goto out;
	}
	/* The first user may come before the pool is dialed; the others find
	 * it ready, since a whole exchange went before them. */
	if (pool > 0 && tl_count_in_file(server->log, "pooled tunnel") < 2) {
		fail(t, "fewer than 2 of 3 users took a pooled tunnel (server log)");
	}
out:
	free(big);
}

static void
test_proxy_v1(struct test *t)
{
	proxy_run(t, 1, "127.0.0.1", 0);
}

static void
test_proxy_v2(struct test *t)
{
	proxy_run(t, 2, "127.0.0.1", 0);
}

static void
test_proxy_v1_ipv6(struct test *t)
{
	proxy_run(t, 1, "::1", 0);
}

static void
test_proxy_v2_ipv6(struct test *t)
{
	proxy_run(t, 2, "::1", 0);
}

static void
test_proxy_off(struct test *t)
{
	proxy_run(t, 0, "127.0.0.1", 0);
}

static void
test_proxy_v1_pool(struct test *t)
{
	proxy_run(t, 1, "127.0.0.1", 4);
}

static void
test_proxy_v2_pool(struct test *t)
{
	proxy_run(t, 2, "127.0.0.1", 4);
}

/* ==== test: nginx reads the header ======================================== */

/* nginx_user: GET path through the tunnel; nginx must answer with this
 * user's address and log it. */
static int
nginx_user(struct test *t, struct tl_proc *nginx, const char *path,
           const char *access_log)
{
	struct sockaddr_storage src;
	socklen_t slen = sizeof(src);
	char req[256], got[4096], want[256], *body;
	int fd, sport, rc = -1;
	int64_t deadline;

	fd = user_open(t, "127.0.0.1", t->pub);
	if (fd < 0) {
		return -1;
	}
	if (getsockname(fd, (struct sockaddr *)&src, &slen) < 0) {
		fail(t, "getsockname: %s", strerror(errno));
		goto out;
	}
	sport = ntohs(((struct sockaddr_in *)&src)->sin_port);
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: dialback.test\r\n\r\n",
	         path);
	if (exchange(t, fd, req, strlen(req), got, sizeof(got), path) < 0) {
		goto out;
	}
	body = strstr(got, "\r\n\r\n");
	snprintf(want, sizeof(want), "ok 127.0.0.1 %d 127.0.0.1 %d\n", sport,
	         t->pub);
	if (strncmp(got, "HTTP/1.1 200 ", 13) != 0 || body == NULL
	    || strcmp(body + 4, want) != 0) {
		fail(t, "GET %s: nginx answered\n%s\nwant a 200 with body \"%s\"",
		     path, got, want);
		goto out;
	}
	/* The access log is written as the request ends. */
	snprintf(want, sizeof(want), "127.0.0.1 %d 127.0.0.1 %d 127.0.0.1 "
	         "\"GET %s HTTP/1.0\" 200\n", sport, t->pub, path);
	deadline = tl_now_ms() + 5000;
	while (!tl_file_contains(access_log, want)) {
		if (tl_now_ms() >= deadline) {
			fail(t, "nginx access log lacks \"%.*s\"", (int)strlen(want) - 1,
			     want);
			goto out;
		}
		tl_pause(20);
	}
	rc = expect_alive(t, nginx);
out:
	user_close(t, fd);
	return rc;
}

static void
test_nginx(struct test *t)
{
	char nginx[256], conf[256], pid[256], alog[256], text[2048], prefix[160];
	const char *argv[8];
	struct tl_proc *ng, *c1;
	int p[4], loc;
	int64_t deadline;

	if (tl_find_prog("nginx", nginx, sizeof(nginx)) < 0) {
		missing_tool(t, "nginx not installed");
		return;
	}
	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	loc = p[3];
	snprintf(conf, sizeof(conf), "%s/nginx.conf", t->dir);
	snprintf(pid, sizeof(pid), "%s/nginx.pid", t->dir);
	snprintf(alog, sizeof(alog), "%s/access.log", t->dir);
	snprintf(prefix, sizeof(prefix), "%s/", t->dir);
	/* Everything nginx writes stays in the test's directory. */
	snprintf(text, sizeof(text),
	         "daemon off;\n"
	         "master_process off;\n"
	         "worker_processes 1;\n"
	         "pid %s;\n"
	         "error_log %s/nginx-error.log info;\n"
	         "events { worker_connections 64; }\n"
	         "http {\n"
	         "    client_body_temp_path %s/tmp-body;\n"
	         "    proxy_temp_path %s/tmp-proxy;\n"
	         "    fastcgi_temp_path %s/tmp-fastcgi;\n"
	         "    uwsgi_temp_path %s/tmp-uwsgi;\n"
	         "    scgi_temp_path %s/tmp-scgi;\n"
	         "    log_format pp '$proxy_protocol_addr $proxy_protocol_port "
	         "$proxy_protocol_server_addr $proxy_protocol_server_port "
	         "$remote_addr \"$request\" $status';\n"
	         "    access_log %s pp;\n"
	         "    server {\n"
	         "        listen 127.0.0.1:%d proxy_protocol;\n"
	         "        location / {\n"
	         "            return 200 \"ok $proxy_protocol_addr "
	         "$proxy_protocol_port $proxy_protocol_server_addr "
	         "$proxy_protocol_server_port\\n\";\n"
	         "        }\n"
	         "    }\n"
	         "}\n", pid, t->dir, t->dir, t->dir, t->dir, t->dir, t->dir, alog,
	         loc);
	if (tl_write_file(conf, text, strlen(text)) < 0) {
		fail(t, "writing %s: %s", conf, strerror(errno));
		return;
	}
	argv[0] = nginx;
	argv[1] = "-p";
	argv[2] = prefix;
	argv[3] = "-c";
	argv[4] = conf;
	argv[5] = NULL;
	ng = start(t, "nginx", argv, NULL, 0);
	if (ng == NULL) {
		return;
	}
	/* nginx writes its pid file once it listens. */
	deadline = tl_now_ms() + START_MS;
	while (access(pid, F_OK) != 0) {
		if (tl_proc_poll(ng)) {
			fail(t, "nginx exited at start (see nginx.log, "
			     "nginx-error.log)");
			return;
		}
		if (tl_now_ms() >= deadline) {
			fail(t, "nginx wrote no pid file within %d ms", START_MS);
			return;
		}
		tl_pause(20);
	}
	if (start_server(t, "server", NULL) == NULL) {
		return;
	}
	c1 = attach_client(t, "client-v1", loc, 0, "v1", 0, 1, t->pub);
	if (c1 == NULL || nginx_user(t, ng, "/v1", alog) < 0
	    || nginx_user(t, ng, "/v1-again", alog) < 0 || stop(t, c1) < 0) {
		return;
	}
	/* The server may still hold the port for the old session a moment;
	 * the new client then retries. */
	if (attach_client(t, "client-v2", loc, 0, "v2", 0, 1, t->pub) == NULL
	    || nginx_user(t, ng, "/v2", alog) < 0
	    || nginx_user(t, ng, "/v2-again", alog) < 0) {
		return;
	}
	if (tl_file_contains(alog, "broken header")
	    || tl_count_in_file(ng->log, "broken header") > 0) {
		fail(t, "nginx logged a broken PROXY header");
	}
}

/* ==== test: SIGUSR1 ======================================================= */

static void
test_status(struct test *t)
{
	char want[160], buf[1000], back[1000];
	struct tl_proc *server, *client;
	int p[4], fd, i;
	int64_t deadline;

	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	if (start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", NULL)) == NULL
	    || (client = attach_client(t, "client", p[3], 0, NULL, 0, 1, t->pub))
	       == NULL) {
		return;
	}
	/* One user relaying: a round trip proves the pair is joined. */
	for (i = 0; i < (int)sizeof(buf); i++) {
		buf[i] = (char)('a' + i % 26);
	}
	fd = user_open(t, "127.0.0.1", t->pub);
	if (fd < 0) {
		return;
	}
	deadline = tl_now_ms() + IO_MS;
	if (tl_write_all(fd, buf, sizeof(buf), deadline) < 0
	    || tl_read_full(fd, back, sizeof(back), deadline) != sizeof(back)
	    || memcmp(buf, back, sizeof(buf)) != 0) {
		fail(t, "echo through the tunnel failed: %s", strerror(errno));
		return;
	}

	if (signal_and_wait(t, server, SIGUSR1, "status: up", 1) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "serves port %d", t->pub);
	if (expect_log(t, server, "status: session") < 0
	    || expect_log(t, server, want) < 0
	    || expect_log(t, server, "1 relaying") < 0
	    || expect_log(t, server, "bytes: 1000 in, 1000 out") < 0) {
		return;
	}
	if (signal_and_wait(t, client, SIGUSR1, "status:", 1) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "attached to 127.0.0.1:%d, public port %d",
	         t->ctl, t->pub);
	if (expect_log(t, client, want) < 0
	    || expect_log(t, client, "users: 1 relaying") < 0
	    || expect_log(t, client, "1000 in, 1000 out") < 0) {
		return;
	}
	if (expect_alive(t, server) < 0 || expect_alive(t, client) < 0) {
		return;
	}
	/* Both go on relaying, and answer a second signal. */
	if (tl_write_all(fd, buf, sizeof(buf), deadline) < 0
	    || tl_read_full(fd, back, sizeof(back), deadline) != sizeof(back)
	    || memcmp(buf, back, sizeof(buf)) != 0) {
		fail(t, "echo after SIGUSR1 failed: %s", strerror(errno));
		return;
	}
	if (signal_and_wait(t, server, SIGUSR1, "status: up", 2) < 0
	    || expect_log(t, server, "bytes: 2000 in, 2000 out") < 0
	    || signal_and_wait(t, client, SIGUSR1, "status:", 2) < 0) {
		return;
	}
	user_close(t, fd);
}

/* ==== test: a browser through the tunnel ================================== */

#define ASSET_LEN (4 * 1024 * 1024)
#define IMG_W     320
#define IMG_H     200

static uint32_t
crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
	size_t i;
	int k;

	crc = ~crc;
	for (i = 0; i < n; i++) {
		crc ^= p[i];
		for (k = 0; k < 8; k++) {
			crc = crc >> 1 ^ (0xedb88320u & (0u - (crc & 1)));
		}
	}
	return ~crc;
}

static uint8_t *
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
	return p + 4;
}

/* png_chunk: length, type, data, CRC over type and data. */
static uint8_t *
png_chunk(uint8_t *p, const char *type, const uint8_t *data, size_t n)
{
	uint8_t *crc_from;

	p = put_be32(p, (uint32_t)n);
	crc_from = p;
	memcpy(p, type, 4);
	if (n > 0) {
		memcpy(p + 4, data, n);
	}
	p += 4 + n;
	return put_be32(p, crc32_update(0, crc_from, 4 + n));
}

/*
 * make_png: a w x h RGB PNG (a gradient) into a malloc'd buffer, with the
 * image data in stored (uncompressed) deflate blocks, so no zlib is needed.
 */
static uint8_t *
make_png(int w, int h, size_t *len)
{
	static const uint8_t sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a,
	                                '\n' };
	size_t raw_n = (size_t)h * (1 + 3 * (size_t)w), nblocks, i, off;
	size_t z_n, cap;
	uint8_t *raw = malloc(raw_n), *z, *png, *p, ihdr[13];
	uint32_t a = 1, b = 0;
	int x, y;

	nblocks = (raw_n + 65534) / 65535;
	z_n = 2 + raw_n + 5 * nblocks + 4;
	cap = sizeof(sig) + 25 + 12 + z_n + 12;
	z = malloc(z_n);
	png = malloc(cap);
	if (raw == NULL || z == NULL || png == NULL) {
		free(raw);
		free(z);
		free(png);
		return NULL;
	}
	for (y = 0, i = 0; y < h; y++) {
		raw[i++] = 0;                            /* filter: none */
		for (x = 0; x < w; x++) {
			raw[i++] = (uint8_t)(x * 255 / w);
			raw[i++] = (uint8_t)(y * 255 / h);
			raw[i++] = (uint8_t)((x ^ y) & 0xff);
		}
	}
	p = z;
	*p++ = 0x78;                                     /* zlib, 32K window */
	*p++ = 0x01;
	for (off = 0; off < raw_n; off += 65535) {
		size_t n = raw_n - off < 65535 ? raw_n - off : 65535;

		*p++ = off + n == raw_n;                 /* BFINAL, type stored */
		*p++ = (uint8_t)n;
		*p++ = (uint8_t)(n >> 8);
		*p++ = (uint8_t)~n;
		*p++ = (uint8_t)(~n >> 8);
		memcpy(p, raw + off, n);
		p += n;
	}
	for (i = 0; i < raw_n; i++) {                    /* Adler-32 */
		a = (a + raw[i]) % 65521;
		b = (b + a) % 65521;
	}
	p = put_be32(p, b << 16 | a);
	put_be32(ihdr, (uint32_t)w);
	put_be32(ihdr + 4, (uint32_t)h);
	ihdr[8] = 8;                                     /* bits per sample */
	ihdr[9] = 2;                                     /* RGB */
	ihdr[10] = ihdr[11] = ihdr[12] = 0;
	memcpy(png, sig, sizeof(sig));
	p = png_chunk(png + sizeof(sig), "IHDR", ihdr, sizeof(ihdr));
	p = png_chunk(p, "IDAT", z, z_n);
	p = png_chunk(p, "IEND", NULL, 0);
	*len = (size_t)(p - png);
	free(raw);
	free(z);
	return png;
}

static const char page_html[] =
"<!doctype html>\n"
"<html><head><meta charset=\"utf-8\"><title>dialback test</title></head>\n"
"<body>\n"
"<div id=\"result\">pending</div>\n"
"<div id=\"img\">pending</div>\n"
"<img id=\"pic\" src=\"pic.png\" alt=\"\">\n"
"<script src=\"app.js\"></script>\n"
"</body></html>\n";

/* The asset's length, FNV-1a and SHA-256, and the image's size. */
static const char page_js[] =
"'use strict';\n"
"(async function () {\n"
"  const out = document.getElementById('result');\n"
"  try {\n"
"    const r = await fetch('asset.bin', { cache: 'no-store' });\n"
"    const b = new Uint8Array(await r.arrayBuffer());\n"
"    let h = 0x811c9dc5;\n"
"    for (let i = 0; i < b.length; i++) {\n"
"      h = Math.imul(h ^ b[i], 0x01000193) >>> 0;\n"
"    }\n"
"    let sha = 'no-crypto-subtle';\n"
"    if (window.crypto && crypto.subtle) {\n"
"      const d = new Uint8Array(await crypto.subtle.digest('SHA-256', b));\n"
"      sha = Array.from(d, x => x.toString(16).padStart(2, '0')).join('');\n"
"    }\n"
"    out.textContent = 'len=' + b.length + ' fnv=' +\n"
"      h.toString(16).padStart(8, '0') + ' sha256=' + sha;\n"
"  } catch (e) {\n"
"    out.textContent = 'error ' + e;\n"
"  }\n"
"})();\n"
"(function () {\n"
"  const img = document.getElementById('pic');\n"
"  const out = document.getElementById('img');\n"
"  const done = () => {\n"
"    out.textContent = img.naturalWidth ? 'loaded ' + img.naturalWidth +\n"
"      'x' + img.naturalHeight : 'broken';\n"
"  };\n"
"  if (img.complete) { done(); } else {\n"
"    img.addEventListener('load', done);\n"
"    img.addEventListener('error', done);\n"
"  }\n"
"})();\n";

/* dom_text: the text of the element with id="id" in html, into out. */
static void
dom_text(const char *html, const char *id, char *out, size_t len)
{
	char key[64];
	const char *p, *end;

	snprintf(key, sizeof(key), "id=\"%s\">", id);
	p = html ? strstr(html, key) : NULL;
	if (p == NULL) {
		snprintf(out, len, "(no element)");
		return;
	}
	p += strlen(key);
	end = strchr(p, '<');
	snprintf(out, len, "%.*s", end ? (int)(end - p) : 0, p);
}

/*
 * browse: run chromium headless on url in its own process group; wait up
 * to ms for it to exit, then kill what is left of the group.  Its DOM dump
 * goes to DIR/name.out.  0, or -1 and fail() if it could not be started.
 */
static int
browse(struct test *t, const char *chromium, const char *url, int n, int ms)
{
	char name[32], profile[200], home[200], cfg[200], cache[200];
	const char *env[4];
	const char *argv[24];
	struct tl_proc *b;
	siginfo_t si;
	int64_t deadline = tl_now_ms() + ms;
	int i = 0;

	snprintf(name, sizeof(name), "chromium-%d", n);
	snprintf(profile, sizeof(profile), "--user-data-dir=%s/profile-%d",
	         t->dir, n);
	snprintf(home, sizeof(home), "HOME=%s", t->dir);
	snprintf(cfg, sizeof(cfg), "XDG_CONFIG_HOME=%s/xdg-config", t->dir);
	snprintf(cache, sizeof(cache), "XDG_CACHE_HOME=%s/xdg-cache", t->dir);
	env[0] = home;
	env[1] = cfg;
	env[2] = cache;
	env[3] = NULL;
	if (mkdir(strchr(profile, '=') + 1, 0700) < 0) {
		return fail(t, "mkdir %s: %s", profile, strerror(errno));
	}
	argv[i++] = chromium;
	argv[i++] = "--headless";
	argv[i++] = "--no-sandbox";
	argv[i++] = "--disable-gpu";
	argv[i++] = "--disable-dev-shm-usage";
	argv[i++] = "--disable-quic";
	argv[i++] = "--no-first-run";
	argv[i++] = "--no-default-browser-check";
	argv[i++] = "--disable-background-networking";
	argv[i++] = "--disable-component-update";
	argv[i++] = "--disable-sync";
	argv[i++] = "--disable-extensions";
	argv[i++] = profile;
	argv[i++] = "--virtual-time-budget=10000";
	argv[i++] = "--dump-dom";
	argv[i++] = url;
	argv[i] = NULL;
	b = start(t, name, argv, env, TL_SPLIT_OUT | TL_GROUP);
	if (b == NULL) {
		return -1;
	}
	/* Wait without reaping, so the group's id stays ours to signal. */
	for (;;) {
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, b->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0
		    && si.si_pid == b->pid) {
			break;
		}
		if (tl_now_ms() >= deadline) {
			printf("# %s still running after %d ms; killed\n", name, ms);
			break;
		}
		tl_pause(50);
	}
	kill(-b->pid, SIGKILL);
	kill(b->pid, SIGKILL);
	tl_proc_wait(b, STOP_MS);
	return 0;
}

static void
test_browser(struct test *t)
{
	char chromium[256], www[200], path[300], url[128], arg[256];
	char want_res[200], want_img[64], got_res[200], got_img[200];
	char sha_hex[2 * SHA256_LEN + 1];
	uint8_t *asset = NULL, *png = NULL, sha[SHA256_LEN];
	struct tl_stream s;
	size_t png_n = 0;
	int p[4], n;
	int64_t deadline;

	if (tl_find_prog("chromium", chromium, sizeof(chromium)) < 0
	    && tl_find_prog("chromium-browser", chromium, sizeof(chromium)) < 0) {
		missing_tool(t, "chromium not installed");
		return;
	}
	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}

	/* The page, a 4 MiB asset and an image, and what the page must find. */
	snprintf(www, sizeof(www), "%s/www", t->dir);
	asset = malloc(ASSET_LEN);
	png = make_png(IMG_W, IMG_H, &png_n);
	if (mkdir(www, 0755) < 0 || asset == NULL || png == NULL) {
		fail(t, "preparing %s: %s", www, strerror(errno));
		goto out;
	}
	tl_stream_init(&s, 7);
	tl_stream_fill(&s, asset, ASSET_LEN);
	sha256(asset, ASSET_LEN, sha);
	tl_hex(sha, SHA256_LEN, sha_hex);
	snprintf(want_res, sizeof(want_res), "len=%d fnv=%08x sha256=%s",
	         ASSET_LEN, (unsigned)fnv1a(asset, ASSET_LEN), sha_hex);
	snprintf(want_img, sizeof(want_img), "loaded %dx%d", IMG_W, IMG_H);
	{
		static const struct { const char *name; int which; } files[] = {
			{ "index.html", 0 }, { "app.js", 1 }, { "asset.bin", 2 },
			{ "pic.png", 3 },
		};
		size_t i;

		for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			const void *data[] = { page_html, page_js, asset, png };
			size_t len[] = { strlen(page_html), strlen(page_js), ASSET_LEN,
			                 png_n };

			snprintf(path, sizeof(path), "%s/%s", www, files[i].name);
			if (tl_write_file(path, data[files[i].which],
			               len[files[i].which]) < 0) {
				fail(t, "writing %s: %s", path, strerror(errno));
				goto out;
			}
		}
	}
	snprintf(arg, sizeof(arg), "%s", www);
	if (start_svc(t, "svc", "http", p[3], arg) == NULL
	    || start_server(t, "server", NULL) == NULL
	    || attach_client(t, "client", p[3], 0, NULL, 0, 1, t->pub) == NULL) {
		goto out;
	}
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/index.html", t->pub);

	/* A dump can come before the scripts finish; try again, bounded. */
	deadline = tl_now_ms() + 45000;
	for (n = 1; n <= 3 && tl_now_ms() < deadline; n++) {
		char out[300];
		char *dom;

		if (browse(t, chromium, url, n, tl_left(deadline)) < 0) {
			goto out;
		}
		snprintf(out, sizeof(out), "%s/chromium-%d.out", t->dir, n);
		dom = tl_read_file(out, NULL);
		dom_text(dom, "result", got_res, sizeof(got_res));
		dom_text(dom, "img", got_img, sizeof(got_img));
		free(dom);
		if (strcmp(got_res, "pending") != 0 && strcmp(got_img, "pending") != 0
		    && strcmp(got_res, "(no element)") != 0) {
			break;
		}
	}
	if (strcmp(got_res, want_res) != 0) {
		fail(t, "the page computed \"%s\", want \"%s\"", got_res, want_res);
	} else if (strcmp(got_img, want_img) != 0) {
		fail(t, "the image: \"%s\", want \"%s\"", got_img, want_img);
	} else if (n > 1) {
		printf("# the page needed %d chromium runs\n", n);
	}
out:
	free(asset);
	free(png);
}

/* ==== the pool: helpers =================================================== */

/* A pool fills up, or refills, within this: less than JOIN_WAIT_MS, so a
 * TICKET that was lost and only reissued when it expired is caught. */
#define POOL_MS      5000

/*
 * count_fds: pid's descriptors, leaving out /dev/urandom, which common.c
 * opens at its first use (the first handshake) and keeps; with *c (may be
 * NULL) sorted by kind, likewise.  -1 if /proc can't tell.
 */
static int
count_fds(pid_t pid, struct tl_fds *c)
{
	struct tl_fds own;

	if (c == NULL) {
		c = &own;
	}
	if (tl_fd_census(pid, c) < 0) {
		return -1;
	}
	c->total -= c->urandom;
	c->other -= c->urandom;
	return c->total;
}

/*
 * pool_status: SIGUSR1 the server, wait for its status block, and read
 * "P of W pooled tunnels parked" from that block's (last) session line
 * into *parked and *want; -1 for both if the block names no session.
 * 0, or -1 and fail().
 */
static int
pool_status(struct test *t, struct tl_proc *server, int *parked, int *want)
{
	static const char up[] = "status: up", key[] = "announced, ";
	int n = tl_count_in_file(server->log, up);
	char *log, *p, *last = NULL, *prev = NULL, *from;

	if (signal_and_wait(t, server, SIGUSR1, up, n + 1) < 0) {
		return -1;
	}
	log = tl_read_file(server->log, NULL);
	if (log == NULL) {
		return fail(t, "reading %s: %s", server->log, strerror(errno));
	}
	for (p = log; (p = strstr(p, up)) != NULL; p++) {
		prev = last;
		last = p;
	}
	*parked = *want = -1;
	/* The block's session lines come between the last two "status: up". */
	for (from = prev ? prev : log; (p = strstr(from, key)) != NULL
	     && p < last; from = p + 1) {
		if (sscanf(p + strlen(key), "%d of %d pooled tunnels parked", parked,
		           want) != 2) {
			*parked = *want = -1;
		}
	}
	free(log);
	return 0;
}

/* wait_pool: the server reports want_parked of want_pool pooled tunnels
 * parked within ms.  0, or -1 and fail(). */
static int
wait_pool(struct test *t, struct tl_proc *server, int want_parked,
          int want_pool, int ms, const char *what)
{
	int64_t deadline = tl_now_ms() + ms;
	int parked, want;

	for (;;) {
		if (pool_status(t, server, &parked, &want) < 0) {
			return -1;
		}
		if (parked == want_parked && want == want_pool) {
			return 0;
		}
		if (tl_now_ms() >= deadline) {
			return fail(t, "%s: the server's status says %d of %d pooled "
			            "tunnels parked after %d ms, want %d of %d", what,
			            parked, want, ms, want_parked, want_pool);
		}
		tl_pause(50);
	}
}

/* echo_user: one user on 127.0.0.1:port sends n bytes of stream seed and
 * must get exactly them back, then EOF.  0, or -1 and fail(). */
static int
echo_user(struct test *t, int port, size_t n, uint32_t seed, const char *what)
{
	uint8_t *data = malloc(n + 1), *got = malloc(n + 2);
	struct tl_stream s;
	ssize_t r;
	int fd = -1, rc = -1;

	if (data == NULL || got == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	tl_stream_init(&s, seed);
	tl_stream_fill(&s, data, n);
	fd = user_open(t, "127.0.0.1", port);
	if (fd < 0) {
		goto out;
	}
	r = exchange(t, fd, data, n, (char *)got, n + 2, what);
	if (r < 0) {
		goto out;
	}
	if ((size_t)r != n) {
		fail(t, "%s: %zd bytes came back, want %zu", what, r, n);
	} else if (memcmp(got, data, n) != 0) {
		fail(t, "%s: the %zu bytes came back changed", what, n);
	} else {
		rc = 0;
	}
out:
	if (fd >= 0) {
		user_close(t, fd);
	}
	free(data);
	free(got);
	return rc;
}

/* One of echo_concurrent's users. */
struct conc {
	int fd;
	uint8_t *want;
	size_t len, sent, got;
	int shut, eof;
};

/*
 * echo_concurrent: n users connect to 127.0.0.1:port at once; user i
 * sends size + i bytes of stream seed base + i, shuts down writing, and
 * must read exactly those bytes back, then EOF.  All at once in one poll
 * loop.  0, or -1 and fail().
 */
static int
echo_concurrent(struct test *t, int port, int n, size_t size, uint32_t base)
{
	struct conc *c = calloc((size_t)n, sizeof(*c));
	struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
	uint8_t buf[16384];
	struct tl_stream s;
	int64_t deadline = tl_now_ms() + IO_MS;
	int i, left = n, rc = -1;
	ssize_t r;

	if (c == NULL || pfd == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		c[i].fd = -1;
	}
	for (i = 0; i < n; i++) {
		c[i].len = size + (size_t)i;
		c[i].want = malloc(c[i].len);
		if (c[i].want == NULL) {
			fail(t, "out of memory");
			goto out;
		}
		tl_stream_init(&s, base + (uint32_t)i);
		tl_stream_fill(&s, c[i].want, c[i].len);
		c[i].fd = tl_connect("127.0.0.1", port, deadline);
		if (c[i].fd < 0) {
			fail(t, "concurrent user %d: connect: %s", i, strerror(errno));
			goto out;
		}
	}
	while (left > 0) {
		for (i = 0; i < n; i++) {
			pfd[i].fd = c[i].eof ? -1 : c[i].fd;
			pfd[i].events = (short)(POLLIN
			                | (c[i].sent < c[i].len ? POLLOUT : 0));
			pfd[i].revents = 0;
		}
		r = poll(pfd, (nfds_t)n, tl_left(deadline));
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r <= 0) {
			int done = 0;

			for (i = 0; i < n; i++) {
				done += c[i].eof;
			}
			fail(t, "concurrent users: %s after %d ms; %d of %d done",
			     r < 0 ? strerror(errno) : "timeout", IO_MS, done, n);
			goto out;
		}
		for (i = 0; i < n; i++) {
			struct conc *u = &c[i];

			if (pfd[i].revents & POLLOUT) {
				r = send(u->fd, u->want + u->sent, u->len - u->sent,
				         MSG_NOSIGNAL);
				if (r < 0 && errno != EAGAIN && errno != EINTR) {
					fail(t, "concurrent user %d: send after %zu bytes: "
					     "%s", i, u->sent, strerror(errno));
					goto out;
				}
				u->sent += r > 0 ? (size_t)r : 0;
			}
			if (u->sent == u->len && !u->shut) {
				if (shutdown(u->fd, SHUT_WR) < 0) {
					fail(t, "concurrent user %d: shutdown: %s", i,
					     strerror(errno));
					goto out;
				}
				u->shut = 1;
			}
			if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
				continue;
			}
			r = read(u->fd, buf, sizeof(buf));
			if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
				continue;
			}
			if (r < 0) {
				fail(t, "concurrent user %d: read after %zu of %zu bytes: "
				     "%s", i, u->got, u->len, strerror(errno));
				goto out;
			}
			if (r == 0) {
				if (u->got != u->len) {
					fail(t, "concurrent user %d: EOF after %zu of %zu "
					     "bytes", i, u->got, u->len);
					goto out;
				}
				u->eof = 1;
				left--;
				continue;
			}
			if (u->got + (size_t)r > u->len
			    || memcmp(u->want + u->got, buf, (size_t)r) != 0) {
				fail(t, "concurrent user %d: bytes %zu..%zu differ from "
				     "what it sent", i, u->got, u->got + (size_t)r);
				goto out;
			}
			u->got += (size_t)r;
		}
	}
	rc = 0;
out:
	for (i = 0; c != NULL && i < n; i++) {
		if (c[i].fd >= 0) {
			close(c[i].fd);
		}
		free(c[i].want);
	}
	free(c);
	free(pfd);
	return rc;
}

/* ==== test: the pool ====================================================== */

/* A full pool serves users, sequential and concurrent, and refills. */
static void
test_pool_serves(struct test *t)
{
	struct tl_proc *server, *client;
	int p[4], i, pooled;
	char what[64];

	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	if (start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", "-v", NULL)) == NULL
	    || (client = start_client(t, "client", t->ctl, p[3], NULL, 0,
	                              "-pool", "4", "-v", NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 4, 4, POOL_MS, "at start") < 0) {
		return;
	}
	if (tl_count_in_file(server->log, "parked for") < 4) {
		fail(t, "server log (-v) has fewer than 4 \"parked for\" lines");
		return;
	}
	for (i = 0; i < 20; i++) {
		snprintf(what, sizeof(what), "sequential user %d", i);
		if (echo_user(t, t->pub, 1000 + 997 * (size_t)i, (uint32_t)(10 + i),
		              what) < 0) {
			return;
		}
	}
	/* The first four found the pool full, whatever the refill's pace. */
	pooled = tl_count_in_file(server->log, "joined to a pooled tunnel");
	if (pooled < 4) {
		fail(t, "only %d of 20 sequential users joined a pooled tunnel "
		     "(server log), want at least 4", pooled);
		return;
	}
	if (wait_pool(t, server, 4, 4, POOL_MS, "after 20 users") < 0
	    || echo_concurrent(t, t->pub, 50, 8000, 100) < 0) {
		return;
	}
	i = tl_count_in_file(server->log, "joined to a pooled tunnel");
	if (i < pooled + 4) {
		fail(t, "only %d of 50 concurrent users joined a pooled tunnel, "
		     "want at least 4", i - pooled);
		return;
	}
	if (tl_count_in_file(client->log, "arrived on a pooled tunnel") < i) {
		fail(t, "client log has fewer \"arrived on a pooled tunnel\" lines "
		     "than the server's %d pooled joins", i);
		return;
	}
	if (wait_pool(t, server, 4, 4, POOL_MS, "after 50 concurrent users") < 0
	    || expect_alive(t, client) < 0) {
		return;
	}
	printf("# %d of 70 users took a pooled tunnel\n", i);
}

/*
 * pool_auto: with no -pool the server sizes the pool to the busiest second
 * of recent arrivals (DIALBACK_POOL_WINDOW shortens the window to 8 s for
 * the test): 2 parked at start, grown past 15 after a burst of 40, every
 * user of the next burst of 10 put on a parked tunnel, back to 2 once the
 * window has passed, and never more than POOL_MAX after 300 at once.
 */
static void
test_pool_auto(struct test *t)
{
	struct tl_proc *server, *client;
	int p[4], parked = -1, want = -1, before, after;
	int64_t deadline;

	if (pick_server_ports(t, p, 4) < 0
	    || start_svc(t, "svc", "echo", p[3], NULL) == NULL) {
		return;
	}
	setenv("DIALBACK_POOL_WINDOW", "8", 1);
	server = start_server(t, "server", "-heartbeat", "1", NULL);
	unsetenv("DIALBACK_POOL_WINDOW");
	if (server == NULL
	    || (client = start_client(t, "client", t->ctl, p[3], NULL, 0,
	                              NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 2, 2, POOL_MS, "at start") < 0
	    || echo_concurrent(t, t->pub, 40, 4000, 300) < 0) {
		return;
	}
	/* The burst's busiest second had at least 20 of the 40. */
	deadline = tl_now_ms() + POOL_MS;
	do {
		if (pool_status(t, server, &parked, &want) < 0) {
			return;
		}
		if (want >= 20 && parked == want) {
			break;
		}
		tl_pause(50);
	} while (tl_now_ms() < deadline);
	if (want < 20 || want > POOL_MAX || parked != want) {
		fail(t, "after a burst of 40 users: %d of %d pooled tunnels parked, "
		     "want a full pool of 20 to %d", parked, want, POOL_MAX);
		return;
	}
	before = tl_count_in_file(server->log, "joined to a pooled tunnel");
	if (echo_concurrent(t, t->pub, 10, 4000, 400) < 0) {
		return;
	}
	after = tl_count_in_file(server->log, "joined to a pooled tunnel");
	if (after - before != 10) {
		fail(t, "%d of a burst of 10 users found a parked tunnel, with %d "
		     "parked; want all 10", after - before, parked);
		return;
	}
	/* 8 s of window, then the next heartbeat trims the pool. */
	if (wait_pool(t, server, 2, 2, T(15000), "after the window") < 0
	    || echo_concurrent(t, t->pub, 2 * POOL_MAX + 44, 1000, 500) < 0) {
		return;
	}
	deadline = tl_now_ms() + POOL_MS;
	do {
		if (pool_status(t, server, &parked, &want) < 0) {
			return;
		}
		if (want == POOL_MAX && parked == want) {
			break;
		}
		tl_pause(50);
	} while (tl_now_ms() < deadline);
	if (want != POOL_MAX || parked != POOL_MAX) {
		fail(t, "after 300 users at once: %d of %d pooled tunnels parked, "
		     "want the cap, %d of %d", parked, want, POOL_MAX, POOL_MAX);
		return;
	}
	expect_alive(t, client);
}

/*
 * pool_frozen_client: a client that stops (SIGSTOP) with tunnels parked.
 * A user put on one at once is reset within JOIN_WAIT_MS, as one waiting
 * for a JOIN would be, with the reason logged; a user arriving more than
 * 1.5 heartbeats after the client was last heard from gets no parked
 * tunnel at all.
 */
static int expect_closed(struct test *t, int fd, int ms, const char *what);

static void
test_pool_frozen_client(struct test *t)
{
	struct tl_proc *server, *client;
	int p[4], a = -1, b = -1, n0;
	int64_t t0;

	if (pick_server_ports(t, p, 4) < 0
	    || start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", "-heartbeat", "2", NULL))
	       == NULL
	    || (client = start_client(t, "client", t->ctl, p[3], NULL, 0,
	                              NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 2, 2, POOL_MS, "at start") < 0) {
		return;
	}
	kill(client->pid, SIGSTOP);
	t0 = tl_now_ms();
	if ((a = user_open(t, "127.0.0.1", t->pub)) < 0
	    || tl_write_all(a, "hello", 5, tl_now_ms() + T(2000)) < 0
	    || wait_log(t, server, "joined to a pooled tunnel", T(2000)) < 0) {
		goto out;
	}
	/* Last heard from at most one heartbeat (2 s) before the stop. */
	tl_pause((int)(t0 + 3500 - tl_now_ms()));
	n0 = tl_count_in_file(server->log, "joined to a pooled tunnel");
	if ((b = user_open(t, "127.0.0.1", t->pub)) < 0) {
		goto out;
	}
	if (wait_log(t, server, "its client went silent with its pooled tunnel",
	             T(JOIN_WAIT_MS + 2000)) < 0) {
		goto out;
	}
	if (tl_now_ms() - t0 > T(JOIN_WAIT_MS + 2000)) {
		fail(t, "the user on a frozen client's pooled tunnel was closed "
		     "after %lld ms, want at most %d",
		     (long long)(tl_now_ms() - t0), JOIN_WAIT_MS);
		goto out;
	}
	if (expect_closed(t, a, T(2000), "the user on the frozen pool") < 0) {
		goto out;
	}
	if (tl_count_in_file(server->log, "joined to a pooled tunnel") != n0) {
		fail(t, "a user arriving 3.5 s after the client froze (heartbeat "
		     "2 s) was put on a parked tunnel");
	}
out:
	kill(client->pid, SIGCONT);
	if (a >= 0) {
		close(a);
	}
	if (b >= 0) {
		close(b);
	}
}

/*
 * pool_frozen_deadline: as pool_frozen_client with the default heartbeat
 * (10 s, which the tests' servers don't have: the session outlives the wait): the user handed a parked
 * tunnel by a client that froze is reset by its own deadline, JOIN_WAIT_MS,
 * while the session is still attached.
 */
static void
test_pool_frozen_deadline(struct test *t)
{
	struct tl_proc *server, *client;
	int p[4], a = -1;
	int64_t t0;

	if (pick_server_ports(t, p, 4) < 0
	    || start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", "-heartbeat", "10",
	                               NULL)) == NULL
	    || (client = start_client(t, "client", t->ctl, p[3], NULL, 0,
	                              NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 2, 2, POOL_MS, "at start") < 0) {
		return;
	}
	kill(client->pid, SIGSTOP);
	t0 = tl_now_ms();
	if ((a = user_open(t, "127.0.0.1", t->pub)) < 0
	    || wait_log(t, server, "joined to a pooled tunnel", T(2000)) < 0
	    || wait_log(t, server, "its client went silent with its pooled tunnel",
	                T(JOIN_WAIT_MS + 2000)) < 0
	    || expect_closed(t, a, T(2000), "the user on the frozen pool") < 0) {
		goto out;
	}
	if (tl_now_ms() - t0 < JOIN_WAIT_MS - 500) {
		fail(t, "closed after %lld ms, before its %d ms deadline",
		     (long long)(tl_now_ms() - t0), JOIN_WAIT_MS);
	} else if (tl_count_in_file(server->log, "detached") != 0) {
		fail(t, "the session ended before the user's own deadline");
	}
out:
	kill(client->pid, SIGCONT);
	if (a >= 0) {
		close(a);
	}
}

/*
 * pool_alive_long: with a heartbeat of 30 s (no PONG comes in time), a
 * user on a pooled tunnel of a client that is alive is confirmed
 * by the JOIN that refills the pool, and is still served past the
 * JOIN_WAIT_MS that would close it unconfirmed.
 */
static void
test_pool_alive_long(struct test *t)
{
	struct tl_proc *server, *client;
	char back[8];
	int p[4], u, round;

	if (pick_server_ports(t, p, 4) < 0
	    || start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", "-heartbeat", "30",
	                              NULL)) == NULL
	    || (client = start_client(t, "client", t->ctl, p[3], NULL, 0,
	                              NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 2, 2, POOL_MS, "at start") < 0
	    || (u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	for (round = 0; round < 2; round++) {
		if (round == 1) {
			tl_pause(JOIN_WAIT_MS + 1000);
		}
		if (tl_write_all(u, "ping", 4, tl_now_ms() + T(IO_MS)) < 0
		    || tl_read_full(u, back, 4, tl_now_ms() + T(IO_MS)) != 4
		    || memcmp(back, "ping", 4) != 0) {
			fail(t, "echo %s: %s", round ? "past JOIN_WAIT_MS" : "at once",
			     strerror(errno));
			break;
		}
	}
	if (tl_count_in_file(server->log, "went silent") != 0) {
		fail(t, "a live client's pooled user was closed as silent");
	}
	close(u);
}

/*
 * pooled_refused_user: a user on a pooled tunnel whose service is down is
 * closed within 3 s, and the server names the reason.  data: what the
 * user sends first (n may be 0).
 */
static int
pooled_refused_user(struct test *t, struct tl_proc *server, int nth,
                    const char *data, size_t n, const char *what)
{
	const char *how = "?";
	int64_t t0 = tl_now_ms();
	int fd, r;

	/* The client ends a pooled tunnel it could not use without an end
	 * record, so the server resets the user, at times before connect()
	 * has said it is connected: that is the close looked for too. */
	fd = tl_connect("127.0.0.1", t->pub, t0 + 5000);
	if (fd < 0 && errno != ECONNRESET) {
		return fail(t, "%s: connect port %d: %s", what, t->pub,
		            strerror(errno));
	}
	if (fd < 0) {
		how = strerror(ECONNRESET);
	} else {
		user_track(t, fd);
		/* Being closed while still sending is what we expect here. */
		if (n > 0 && tl_write_all(fd, data, n, t0 + IO_MS) < 0
		    && errno != ECONNRESET && errno != EPIPE) {
			return fail(t, "%s: send: %s", what, strerror(errno));
		}
		if (tl_wait_closed(fd, t0 + 3000, NULL, &how) < 0) {
			return fail(t, "%s: still open 3 s after it connected", what);
		}
	}
	/* The reason comes over control, perhaps just after the close. */
	r = tl_wait_log_count(server, "could not reach its local service", nth,
	                      3000);
	user_close(t, fd);
	if (r != 1) {
		return fail(t, "%s: closed (%s) after %lld ms, but the server log "
		            "has only %d \"could not reach its local service\" "
		            "lines, want %d", what, how,
		            (long long)(tl_now_ms() - t0),
		            tl_count_in_file(server->log,
		                             "could not reach its local service"),
		            nth);
	}
	if (tl_count_in_file(server->log, "joined to a pooled tunnel") < nth) {
		return fail(t, "%s: did not take a pooled tunnel (server log)", what);
	}
	return 0;
}

/* A pooled user whose local service is down is closed, with the reason. */
static void
test_pool_local_down(struct test *t)
{
	static char upload[64 * 1024];
	struct tl_proc *server, *client;
	int p[4];

	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	/* p[3]: nothing listens there. */
	if ((server = start_server(t, "server", "-v", NULL)) == NULL
	    || (client = start_client(t, "client", t->ctl, p[3], NULL, 0,
	                              "-pool", "2", "-v", NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 2, 2, POOL_MS, "at start") < 0) {
		return;
	}
	if (pooled_refused_user(t, server, 1, NULL, 0, "silent user") < 0
	    || expect_alive(t, client) < 0
	    || wait_pool(t, server, 2, 2, POOL_MS, "after the silent user") < 0
	    || expect_log(t, client, "local service refused") < 0) {
		return;
	}
	/* A user who sends at once, more than the client reads with the
	 * NEW_USER: bytes are still waiting in the pooled tunnel when the
	 * client gives up on the service and closes it. */
	memset(upload, 'u', sizeof(upload));
	if (pooled_refused_user(t, server, 2, upload, sizeof(upload),
	                        "uploading user") < 0
	    || expect_alive(t, client) < 0
	    || wait_pool(t, server, 2, 2, POOL_MS, "after the uploading user")
	       < 0) {
		return;
	}
}

/* The client dies: the server closes its parked tunnels; a new client
 * gets a pool. */
static void
test_pool_session_end(struct test *t)
{
	struct tl_proc *server, *c1, *c2;
	struct tl_fds was;
	int p[4], base, n;
	int64_t deadline;

	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	if (start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", "-v", NULL)) == NULL) {
		return;
	}
	base = count_fds(server->pid, &was);
	if (base < 0) {
		t->skip = "no /proc/PID/fd";
		return;
	}
	if ((c1 = start_client(t, "client-1", t->ctl, p[3], NULL, 0,
	                       "-pool", "3", "-v", NULL)) == NULL
	    || wait_log(t, c1, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 3, 3, POOL_MS, "first client") < 0
	    || echo_user(t, t->pub, 5000, 1, "user of the first client") < 0
	    || wait_pool(t, server, 3, 3, POOL_MS, "first client, refilled") < 0) {
		return;
	}
	n = count_fds(server->pid, NULL);
	if (n < base + 4) {
		fail(t, "server holds %d descriptors with a session and 3 parked "
		     "tunnels, want at least %d + 4", n, base);
		return;
	}
	if (kill_hard(t, c1) < 0) {
		return;
	}
	deadline = tl_now_ms() + GONE_MS;
	while ((n = count_fds(server->pid, NULL)) != base) {
		if (tl_now_ms() >= deadline) {
			struct tl_fds now;

			count_fds(server->pid, &now);
			fail(t, "server holds %d descriptors (%d sockets, %d pipe ends, "
			     "%d other) %d ms after its client was killed, want its "
			     "baseline %d (%d sockets, %d pipe ends, %d other)", n,
			     now.sockets, now.pipes, now.other, GONE_MS, base,
			     was.sockets, was.pipes, was.other);
			return;
		}
		tl_pause(20);
	}
	/* Each parked tunnel goes when the server sees either it or the
	 * control connection close, whichever comes first. */
	if (expect_log(t, server, "detached") < 0) {
		return;
	}
	if ((c2 = start_client(t, "client-2", t->ctl, p[3], NULL, 0,
	                       "-pool", "3", "-v", NULL)) == NULL
	    || wait_log(t, c2, "forwarding", START_MS) < 0
	    || wait_pool(t, server, 3, 3, POOL_MS, "second client") < 0
	    || echo_user(t, t->pub, 5000, 2, "user of the second client") < 0) {
		return;
	}
}

/* The server dies: the client drops its pooled tunnels, and a new server
 * gets a fresh pool. */
static void
test_pool_control_drop(struct test *t)
{
	struct tl_proc *s1, *s2, *client;
	struct tl_fds fds;
	int p[4], base;
	int64_t deadline;

	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	if (start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (s1 = start_server(t, "server-1", "-v", NULL)) == NULL
	    || (client = start_client(t, "client", t->ctl, p[3], NULL, 0,
	                              "-pool", "3", "-v", NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || wait_pool(t, s1, 3, 3, POOL_MS, "first server") < 0) {
		return;
	}
	/* Control and three pooled tunnels; the rest is the baseline: stdio
	 * from the harness and the client's own (its signal pipe). */
	deadline = tl_now_ms() + POOL_MS;
	for (;;) {
		if (tl_fd_census(client->pid, &fds) < 0) {
			t->skip = "no /proc/PID/fd";
			return;
		}
		if (fds.sockets == 4) {
			break;
		}
		if (tl_now_ms() >= deadline) {
			fail(t, "client holds %d sockets with 3 pooled tunnels, want 4",
			     fds.sockets);
			return;
		}
		tl_pause(20);
	}
	base = fds.total - fds.sockets;
	if (kill_hard(t, s1) < 0) {
		return;
	}
	deadline = tl_now_ms() + GONE_MS;
	for (;;) {
		if (tl_fd_census(client->pid, &fds) < 0) {
			fail(t, "client gone: no /proc entry");
			return;
		}
		if (fds.sockets == 0 && fds.total == base) {
			break;
		}
		if (tl_now_ms() >= deadline) {
			fail(t, "client holds %d descriptors (%d sockets) %d ms after "
			     "the server was killed, want its baseline %d", fds.total,
			     fds.sockets, GONE_MS, base);
			return;
		}
		tl_pause(20);
	}
	if (expect_alive(t, client) < 0
	    || (s2 = start_server(t, "server-2", "-v", NULL)) == NULL
	    || tl_wait_log_count(client, "forwarding", 2, START_MS) != 1) {
		fail(t, "client did not attach to the restarted server");
		return;
	}
	if (wait_pool(t, s2, 3, 3, POOL_MS, "restarted server") < 0
	    || echo_user(t, t->pub, 3000, 3, "user of the restarted server") < 0) {
		return;
	}
	printf("# client baseline: %d descriptors\n", base);
}

/* ==== the protocol, spoken by scripted peers ============================== */

#define TOKEN  "feature-token"

/*
 * One connection a scripted peer speaks on: frames in the clear until it
 * is sealed, then each frame, and on a tunnel each piece of the user's
 * stream, inside a record (tx toward the peer, rx from it).  Reads take
 * exactly one frame or record and nothing after it, so the frame and the
 * bytes behind it can be read by different helpers.
 */
struct chan {
	int fd;
	int sealed;
	struct seal tx, rx;
};

/* A client of our own, speaking the wire protocol with blocking helpers. */
struct fake {
	struct chan ctl;
	struct handshake hs;               /* HELLO until REPLY */
	struct session_keys keys;          /* after WELCOME */
	uint8_t run_id[RUN_ID_LEN];
	uint8_t e_s[KEY_LEN];              /* the server's ephemeral key */
	uint8_t hello[FRAME_HDR + FRAME_MAX], auth[FRAME_HDR + FRAME_MAX];
	size_t hello_n, auth_n;
	int tun_port, pub_port;
};

enum { RF_OK = 1, RF_CLOSED = 0, RF_TIMEOUT = -1, RF_BAD = -2 };

/* read_exact: n bytes from fd by deadline.  RF_OK, RF_TIMEOUT, or
 * RF_CLOSED on EOF or an error (*how says which). */
static int
read_exact(int fd, uint8_t *buf, size_t n, int64_t deadline, const char **how)
{
	ssize_t r = tl_read_full(fd, buf, n, deadline);

	*how = "EOF";
	if (r < 0 && errno == ETIMEDOUT) {
		return RF_TIMEOUT;
	}
	if (r < 0) {
		*how = strerror(errno);
	}
	return r == (ssize_t)n ? RF_OK : RF_CLOSED;
}

/*
 * read_record: read exactly one record from ch by deadline and open it
 * with ch's rx into out (RECORD_MAX bytes), its size into *n (0: the end
 * record).  RF_OK; RF_CLOSED on EOF or a reset (*how); RF_TIMEOUT; RF_BAD
 * if it is too long or does not open.
 */
static int
read_record(struct chan *ch, uint8_t *out, size_t *n, int64_t deadline,
            const char **how)
{
	uint8_t buf[RECORD_HDR + RECORD_MAX + TAG_LEN];
	size_t len, used;
	int r;

	if ((r = read_exact(ch->fd, buf, RECORD_HDR, deadline, how)) != RF_OK) {
		return r;
	}
	len = wire_get16(buf);
	if (len > RECORD_MAX) {
		return RF_BAD;
	}
	r = read_exact(ch->fd, buf + RECORD_HDR, len + TAG_LEN, deadline, how);
	if (r != RF_OK) {
		return r;
	}
	if (record_open(&ch->rx, buf, RECORD_HDR + len + TAG_LEN, &used, n)
	    != FRAME_OK) {
		return RF_BAD;
	}
	memcpy(out, buf + RECORD_HDR, *n);
	return RF_OK;
}

/*
 * read_frame: read exactly one frame from ch (in its record, once sealed)
 * by deadline, into *m.  RF_OK; RF_CLOSED on EOF or a reset (*how says
 * which); RF_TIMEOUT; RF_BAD if it does not open or decode.
 */
static int
read_frame(struct chan *ch, struct msg *m, int64_t deadline, const char **how)
{
	uint8_t buf[RECORD_MAX];
	size_t len, used;
	int r;

	if (ch->sealed) {
		if ((r = read_record(ch, buf, &len, deadline, how)) != RF_OK) {
			return r;
		}
	} else {
		if ((r = read_exact(ch->fd, buf, FRAME_HDR, deadline, how))
		    != RF_OK) {
			return r;
		}
		len = wire_get16(buf + 1);
		if (len > FRAME_MAX) {
			return RF_BAD;
		}
		r = read_exact(ch->fd, buf + FRAME_HDR, len, deadline, how);
		if (r != RF_OK) {
			return r;
		}
		len += FRAME_HDR;
	}
	if (frame_decode(buf, len, m, &used) != FRAME_OK || used != len) {
		return RF_BAD;
	}
	return RF_OK;
}

/* send_wire: the n bytes of data go out on fd within IO_MS. */
static int
send_wire(struct test *t, int fd, const void *data, size_t n,
          const char *what)
{
	if (tl_write_all(fd, data, n, tl_now_ms() + IO_MS) < 0) {
		return fail(t, "%s: send: %s", what, strerror(errno));
	}
	return 0;
}

/* send_msg: encode *m and send it on ch (in a record once sealed).  Its
 * bytes on the wire go to raw (may be NULL), their size to *raw_n.  0, or
 * -1 and fail(). */
static int
send_msg(struct test *t, struct chan *ch, const struct msg *m, uint8_t *raw,
         size_t *raw_n, const char *what)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	uint8_t rec[RECORD_HDR + FRAME_HDR + FRAME_MAX + TAG_LEN];
	size_t n = frame_encode(frame, m);
	const uint8_t *out = frame;

	if (ch->sealed) {
		n = record_seal(&ch->tx, frame, n, rec);
		out = rec;
	}
	if (raw != NULL) {
		memcpy(raw, out, n);
		*raw_n = n;
	}
	if (tl_write_all(ch->fd, out, n, tl_now_ms() + IO_MS) < 0) {
		return fail(t, "%s: sending %s: %s", what, msg_name(m->type),
		            strerror(errno));
	}
	return 0;
}

/*
 * expect_msg: the next frame on ch, PINGs answered and PONGs skipped,
 * must be of type within ms; into *m.  0, or -1 and fail().
 */
static int
expect_msg(struct test *t, struct chan *ch, int type, struct msg *m, int ms,
           const char *what)
{
	int64_t deadline = tl_now_ms() + ms;
	const char *how;
	struct msg pong;
	int r;

	for (;;) {
		r = read_frame(ch, m, deadline, &how);
		if (r == RF_OK && m->type == MSG_PING) {
			memset(&pong, 0, sizeof(pong));
			pong.type = MSG_PONG;
			if (send_msg(t, ch, &pong, NULL, NULL, what) < 0) {
				return -1;
			}
			continue;
		}
		if (r == RF_OK && m->type == MSG_PONG && type != MSG_PONG) {
			continue;
		}
		if (r == RF_OK && m->type == type) {
			return 0;
		}
		if (r == RF_OK && m->type == MSG_ERROR) {
			return fail(t, "%s: got ERROR %d \"%s\", want %s", what, m->code,
			            m->text, msg_name((unsigned)type));
		}
		if (r == RF_OK) {
			return fail(t, "%s: got %s, want %s", what, msg_name(m->type),
			            msg_name((unsigned)type));
		}
		return fail(t, "%s: %s before a %s", what,
		            r == RF_CLOSED ? how : r == RF_TIMEOUT ? "timeout"
		            : ch->sealed ? "a record that does not open or decode"
		            : "a frame that does not decode",
		            msg_name((unsigned)type));
	}
}

/* expect_closed: the peer closes fd (EOF or reset) within ms. */
static int
expect_closed(struct test *t, int fd, int ms, const char *what)
{
	size_t extra = 0;

	if (tl_wait_closed(fd, tl_now_ms() + ms, &extra, NULL) < 0) {
		return fail(t, "%s: still open after %d ms", what, ms);
	}
	if (extra > 0) {
		return fail(t, "%s: %zu unexpected bytes before the close", what,
		            extra);
	}
	return 0;
}

/* expect_quiet: nothing arrives on fd, not even EOF, for ms. */
static int
expect_quiet(struct test *t, int fd, int ms, const char *what)
{
	int r = tl_wait_fd(fd, POLLIN, tl_now_ms() + ms);

	if (r != 0) {
		uint8_t b;
		ssize_t n = recv(fd, &b, 1, MSG_PEEK);

		return fail(t, "%s: %s within %d ms", what,
		            n > 0 ? "bytes arrived" : n == 0 ? "EOF"
		            : strerror(errno), ms);
	}
	return 0;
}

/* expect_eof: fd reads a clean EOF (not a reset, no bytes) within ms. */
static int
expect_eof(struct test *t, int fd, int ms, const char *what)
{
	const char *how = "?";
	size_t extra = 0;

	if (tl_wait_closed(fd, tl_now_ms() + ms, &extra, &how) < 0) {
		return fail(t, "%s: no EOF within %d ms", what, ms);
	}
	if (extra > 0 || strcmp(how, "EOF") != 0) {
		return fail(t, "%s: %zu bytes, then %s; want EOF alone", what, extra,
		            how);
	}
	return 0;
}

/* expect_reset: fd reads a reset (ECONNRESET: not EOF, no bytes) within
 * ms. */
static int
expect_reset(struct test *t, int fd, int ms, const char *what)
{
	const char *how = "?";
	size_t extra = 0;

	if (tl_wait_closed(fd, tl_now_ms() + ms, &extra, &how) < 0) {
		return fail(t, "%s: neither reset nor closed within %d ms", what, ms);
	}
	if (extra > 0 || strcmp(how, strerror(ECONNRESET)) != 0) {
		return fail(t, "%s: %zu bytes, then %s; want a reset (%s)", what,
		            extra, how, strerror(ECONNRESET));
	}
	return 0;
}

/* ---- the user's stream on a tunnel ---- */

/* chan_send_bytes: the n bytes of data go out on ch: raw, or sealed in
 * records of up to RECORD_MAX bytes.  0, or -1 and fail(). */
static int
chan_send_bytes(struct test *t, struct chan *ch, const void *data, size_t n,
                const char *who)
{
	uint8_t rec[RECORD_HDR + RECORD_MAX + TAG_LEN];
	const uint8_t *p = data;
	size_t k;

	if (!ch->sealed) {
		return send_wire(t, ch->fd, data, n, who);
	}
	while (n > 0) {
		k = n < RECORD_MAX ? n : RECORD_MAX;
		if (send_wire(t, ch->fd, rec, record_seal(&ch->tx, p, k, rec), who)
		    < 0) {
			return -1;
		}
		p += k;
		n -= k;
	}
	return 0;
}

/* chan_end: the end of ch's stream toward the peer: the empty end record
 * (when sealed), then a FIN.  0, or -1 and fail(). */
static int
chan_end(struct test *t, struct chan *ch, const char *who)
{
	static const uint8_t none[1];
	uint8_t rec[RECORD_HDR + TAG_LEN];

	if (ch->sealed && send_wire(t, ch->fd, rec,
	                            record_seal(&ch->tx, none, 0, rec), who) < 0) {
		return -1;
	}
	if (shutdown(ch->fd, SHUT_WR) < 0) {
		return fail(t, "%s: shutdown: %s", who, strerror(errno));
	}
	return 0;
}

/* expect_bytes: exactly the n bytes of data arrive on fd. */
static int
expect_bytes(struct test *t, int fd, const void *data, size_t n,
             const char *what)
{
	char buf[512];
	ssize_t r;

	if (n > sizeof(buf)) {
		return fail(t, "%s: expect_bytes: %zu is too many", what, n);
	}
	r = tl_read_full(fd, buf, n, tl_now_ms() + IO_MS);
	if (r < 0) {
		return fail(t, "%s: %s", what, strerror(errno));
	}
	if ((size_t)r != n || memcmp(buf, data, n) != 0) {
		return fail(t, "%s: got %zd bytes \"%.*s\", want \"%.*s\"", what, r,
		            (int)r, buf, (int)n, (const char *)data);
	}
	return 0;
}

/* chan_expect_bytes: exactly the n bytes of data arrive on ch: raw, or
 * in records that open (and no more than them). */
static int
chan_expect_bytes(struct test *t, struct chan *ch, const void *data, size_t n,
                  const char *what)
{
	int64_t deadline = tl_now_ms() + IO_MS;
	uint8_t got[512], rec[RECORD_MAX];
	const char *how;
	size_t have = 0, k;
	int r;

	if (!ch->sealed) {
		return expect_bytes(t, ch->fd, data, n, what);
	}
	if (n > sizeof(got)) {
		return fail(t, "%s: chan_expect_bytes: %zu is too many", what, n);
	}
	while (have < n) {
		r = read_record(ch, rec, &k, deadline, &how);
		if (r != RF_OK) {
			return fail(t, "%s: %s after %zu of %zu bytes", what,
			            r == RF_CLOSED ? how : r == RF_TIMEOUT ? "timeout"
			            : "a record that does not open", have, n);
		}
		if (k == 0 || k > n - have) {
			return fail(t, "%s: a record of %zu bytes after %zu of %zu",
			            what, k, have, n);
		}
		memcpy(got + have, rec, k);
		have += k;
	}
	if (memcmp(got, data, n) != 0) {
		return fail(t, "%s: got \"%.*s\", want \"%.*s\"", what, (int)n, got,
		            (int)n, (const char *)data);
	}
	return 0;
}

/* chan_expect_eof: the end of the peer's stream on ch: the empty end
 * record (when sealed), then a clean EOF, within ms. */
static int
chan_expect_eof(struct test *t, struct chan *ch, int ms, const char *what)
{
	uint8_t rec[RECORD_MAX];
	const char *how;
	size_t k;
	int r;

	if (ch->sealed) {
		r = read_record(ch, rec, &k, tl_now_ms() + ms, &how);
		if (r != RF_OK || k != 0) {
			return fail(t, "%s: %s, want the end record", what,
			            r == RF_OK ? "a record with bytes"
			            : r == RF_CLOSED ? how : r == RF_TIMEOUT ? "timeout"
			            : "a record that does not open");
		}
	}
	return expect_eof(t, ch->fd, ms, what);
}

/* ---- a scripted client ---- */

/* fake_hello: dial the control port, send a HELLO with a fresh ephemeral
 * key (public port 0) and a fresh run id, read the CHALLENGE and mix
 * both in with the key exchange.  0, or -1 and fail(). */
static int
fake_hello(struct test *t, struct fake *f)
{
	struct msg m;

	memset(f, 0, sizeof(*f));
	f->ctl.fd = user_open(t, "127.0.0.1", t->ctl);
	if (f->ctl.fd < 0) {
		return -1;
	}
	random_bytes(f->run_id, RUN_ID_LEN);
	hs_init(&f->hs);
	memset(&m, 0, sizeof(m));
	m.type = MSG_HELLO;
	memcpy(m.pub, f->hs.e_pub, KEY_LEN);
	hs_mix_msg(&f->hs, &m);
	if (send_msg(t, &f->ctl, &m, f->hello, &f->hello_n, "HELLO") < 0
	    || expect_msg(t, &f->ctl, MSG_CHALLENGE, &m, IO_MS, "after HELLO")
	       < 0) {
		return -1;
	}
	if (m.version != PROTO_VERSION) {
		return fail(t, "CHALLENGE of version %d, want %d", m.version,
		            PROTO_VERSION);
	}
	memcpy(f->e_s, m.pub, KEY_LEN);
	hs_mix_msg(&f->hs, &m);
	if (hs_mix_dh(&f->hs, m.pub) != 0) {
		return fail(t, "the server's ephemeral key is of low order");
	}
	return 0;
}

/* fake_send_auth: mix in token's psk and send AUTH, the ATTACH in it
 * asking for pool tunnels under f's run id. */
static int
fake_send_auth(struct test *t, struct fake *f, const char *token, int pool)
{
	uint8_t psk[KEY_LEN], frame[FRAME_HDR + FRAME_MAX];
	struct msg a, m;
	size_t n;

	psk_derive(token, strlen(token), psk);
	hs_mix_psk(&f->hs, psk);
	memset(&a, 0, sizeof(a));
	a.type = MSG_ATTACH;
	memcpy(a.run_id, f->run_id, RUN_ID_LEN);
	a.pool = (uint16_t)pool;
	n = frame_encode(frame, &a);
	memset(&m, 0, sizeof(m));
	m.type = MSG_AUTH;
	hs_seal(&f->hs, frame, n, m.sealed);
	m.sealed_len = (uint16_t)(n + TAG_LEN);
	return send_msg(t, &f->ctl, &m, f->auth, &f->auth_n, "AUTH");
}

/*
 * expect_reply: the server's answer to AUTH must be a message of type:
 * a REPLY that opens (into *m), or for an ERROR a clear one too; *sealed
 * (may be NULL) says which it was.  A WELCOME seals the control
 * connection from here on.  0, or -1 and fail().
 */
static int
expect_reply(struct test *t, struct fake *f, int type, struct msg *m, int ms,
             const char *what, int *sealed)
{
	uint8_t plain[SEALED_MAX];
	struct msg r;
	size_t n, used;

	if (type == MSG_ERROR) {
		/* An ERROR may come in the clear, or sealed in a REPLY. */
		const char *how;
		int rc = read_frame(&f->ctl, &r, tl_now_ms() + ms, &how);

		if (rc == RF_OK && r.type == MSG_ERROR) {
			*m = r;
			if (sealed != NULL) {
				*sealed = 0;
			}
			return 0;
		}
		if (rc != RF_OK || r.type != MSG_REPLY) {
			return fail(t, "%s: %s, want ERROR or REPLY", what,
			            rc == RF_OK ? msg_name(r.type) : rc == RF_CLOSED
			            ? how : rc == RF_TIMEOUT ? "timeout"
			            : "a frame that does not decode");
		}
	} else if (expect_msg(t, &f->ctl, MSG_REPLY, &r, ms, what) < 0) {
		return -1;
	}
	n = r.sealed_len - TAG_LEN;
	if (hs_open(&f->hs, r.sealed, r.sealed_len, plain) != 0) {
		return fail(t, "%s: the server's REPLY does not open", what);
	}
	if (frame_decode(plain, n, m, &used) != FRAME_OK || used != n) {
		return fail(t, "%s: the REPLY holds no frame", what);
	}
	if (m->type != type) {
		return fail(t, "%s: the REPLY holds %s (code %d \"%s\"), want %s",
		            what, msg_name(m->type), m->code, m->text,
		            msg_name((unsigned)type));
	}
	if (sealed != NULL) {
		*sealed = 1;
	}
	if (type == MSG_WELCOME) {
		hs_split(&f->hs, 1, &f->keys);
		f->ctl.sealed = 1;
		f->ctl.tx = f->keys.tx;
		f->ctl.rx = f->keys.rx;
	}
	return 0;
}

/* fake_attach_as: HELLO, CHALLENGE, AUTH (run id run_id, NULL: fresh, as
 * a new client process would), WELCOME with the right token. */
static int
fake_attach_as(struct test *t, struct fake *f, int pool,
               const uint8_t *run_id)
{
	struct msg m;

	if (fake_hello(t, f) < 0) {
		return -1;
	}
	if (run_id != NULL) {
		memcpy(f->run_id, run_id, RUN_ID_LEN);
	}
	if (fake_send_auth(t, f, TOKEN, pool) < 0
	    || expect_reply(t, f, MSG_WELCOME, &m, IO_MS, "after AUTH", NULL)
	       < 0) {
		return -1;
	}
	if (m.tunnel_port != t->tun || m.public_port != t->pub || m.flags != 0) {
		return fail(t, "WELCOME names tunnel port %d, public port %d, flags "
		            "%d; want %d, %d, 0", m.tunnel_port, m.public_port,
		            m.flags, t->tun, t->pub);
	}
	f->tun_port = m.tunnel_port;
	f->pub_port = m.public_port;
	return 0;
}

/* fake_attach: fake_attach_as with a fresh run id. */
static int
fake_attach(struct test *t, struct fake *f, int pool)
{
	return fake_attach_as(t, f, pool, NULL);
}

/*
 * join_make: the JOIN for user id under f's session into out (FRAME_HDR +
 * FRAME_MAX bytes), its proof spoiled when wrong, and in *tun the
 * tunnel's keys, the client's side, tx past the proof (fd -1 until
 * tunnel_join).  Returns the JOIN's size.
 */
static size_t
join_make(struct fake *f, const uint8_t id[USER_ID_LEN], int wrong,
          uint8_t *out, struct chan *tun)
{
	struct msg m;

	memset(tun, 0, sizeof(*tun));
	tun->fd = -1;
	tun->sealed = 1;
	tunnel_keys(f->keys.tunnel, id, 1, &tun->tx, &tun->rx);
	memset(&m, 0, sizeof(m));
	m.type = MSG_JOIN;
	memcpy(m.user_id, id, USER_ID_LEN);
	join_proof(&tun->tx, id, m.proof);
	if (wrong) {
		m.proof[0] ^= 1;
	}
	return frame_encode(out, &m);
}

/* tunnel_join: dial the tunnel port and send the join bytes. */
static int
tunnel_join(struct test *t, const uint8_t *join, size_t n, const char *what)
{
	int fd = user_open(t, "127.0.0.1", t->tun);

	if (fd < 0) {
		return -1;
	}
	if (tl_write_all(fd, join, n, tl_now_ms() + IO_MS) < 0) {
		return fail(t, "%s: sending JOIN: %s", what, strerror(errno));
	}
	return fd;
}

/* send_bytes: the n bytes of data go out on fd within IO_MS; who names
 * the sender in the failure. */
static int
send_bytes(struct test *t, int fd, const void *data, size_t n,
           const char *who)
{
	return send_wire(t, fd, data, n, who);
}

/* user_addr: "127.0.0.1:PORT" of fd's own end, into buf (64). */
static const char *
user_addr(int fd, char *buf)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
		snprintf(buf, 64, "?");
		return buf;
	}
	return sa_str(&ss, buf);
}

/* The protocol tests' server: token TOKEN, -v, a heartbeat long enough
 * that a scripted client need not ping. */
static struct tl_proc *
proto_server(struct test *t)
{
	int p[3];

	if (pick_server_ports(t, p, 3) < 0) {
		return NULL;
	}
	return start_server(t, "server", "-heartbeat", "10", "-token", TOKEN,
	                    "-v", NULL);
}

/* ==== test: replays and forgeries ========================================= */

/* A pool JOIN replayed on a second connection finds nothing; the first
 * tunnel stays parked and carries the next user. */
static void
test_replay_join(struct test *t)
{
	static const char hello[] = "user bytes through a pooled tunnel\n";
	static const char reply[] = "service reply\n";
	uint8_t join[FRAME_HDR + FRAME_MAX], ticket[USER_ID_LEN];
	char ua[64], src[64], dst[64], want_dst[64];
	struct tl_proc *server;
	struct chan tun;
	struct fake f;
	struct msg m;
	size_t join_n;
	int t2, u;

	if ((server = proto_server(t)) == NULL || fake_attach(t, &f, 1) < 0
	    || expect_msg(t, &f.ctl, MSG_TICKET, &m, IO_MS, "pool 1") < 0) {
		return;
	}
	memcpy(ticket, m.user_id, USER_ID_LEN);
	join_n = join_make(&f, ticket, 0, join, &tun);
	if ((tun.fd = tunnel_join(t, join, join_n, "first JOIN")) < 0
	    || wait_log(t, server, "parked for", IO_MS) < 0) {
		return;
	}
	if ((t2 = tunnel_join(t, join, join_n, "replayed JOIN")) < 0
	    || expect_closed(t, t2, 6000, "the replayed JOIN's connection") < 0
	    || expect_quiet(t, tun.fd, 1000, "the first, parked tunnel") < 0
	    || wait_log(t, server, "JOIN names no waiting user", 3000) < 0) {
		return;
	}
	user_close(t, t2);

	/* A user arrives: the parked tunnel gets NEW_USER in its first
	 * record, then the user's bytes in the next. */
	if ((u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	if (send_bytes(t, u, hello, sizeof(hello) - 1, "user") < 0
	    || expect_msg(t, &tun, MSG_NEW_USER, &m, IO_MS, "pooled tunnel")
	       < 0) {
		return;
	}
	wire_addr_str(&m.src, src, sizeof(src));
	wire_addr_str(&m.dst, dst, sizeof(dst));
	tl_fmt_addr(want_dst, "127.0.0.1", t->pub);
	if (strcmp(src, user_addr(u, ua)) != 0 || strcmp(dst, want_dst) != 0) {
		fail(t, "NEW_USER says %s -> %s, want %s -> %s", src, dst, ua,
		     want_dst);
		return;
	}
	if (chan_expect_bytes(t, &tun, hello, sizeof(hello) - 1,
	                      "user bytes on the pooled tunnel") < 0) {
		return;
	}
	if (chan_send_bytes(t, &tun, reply, sizeof(reply) - 1, "pooled tunnel")
	    < 0 || expect_bytes(t, u, reply, sizeof(reply) - 1,
	                        "the reply at the user") < 0
	    || expect_log(t, server, "joined to a pooled tunnel") < 0) {
		return;
	}
	/* The used ticket is replaced. */
	if (expect_msg(t, &f.ctl, MSG_TICKET, &m, IO_MS, "refill") < 0) {
		return;
	}
	if (memcmp(m.user_id, ticket, USER_ID_LEN) == 0) {
		fail(t, "the refill TICKET repeats the used id");
	}
}

/* A recorded HELLO and AUTH, replayed, meet a fresh challenge (another
 * ephemeral key) and fail. */
static void
test_replay_auth(struct test *t)
{
	struct tl_proc *server;
	struct chan c2;
	struct fake f;
	struct msg m;

	if ((server = proto_server(t)) == NULL || fake_attach(t, &f, 0) < 0) {
		return;
	}
	memset(&c2, 0, sizeof(c2));
	if ((c2.fd = user_open(t, "127.0.0.1", t->ctl)) < 0) {
		return;
	}
	if (tl_write_all(c2.fd, f.hello, f.hello_n, tl_now_ms() + IO_MS) < 0) {
		fail(t, "replaying HELLO: %s", strerror(errno));
		return;
	}
	if (expect_msg(t, &c2, MSG_CHALLENGE, &m, IO_MS, "replayed HELLO") < 0) {
		return;
	}
	if (memcmp(m.pub, f.e_s, KEY_LEN) == 0) {
		fail(t, "the server repeated its ephemeral key");
		return;
	}
	if (tl_write_all(c2.fd, f.auth, f.auth_n, tl_now_ms() + IO_MS) < 0) {
		fail(t, "replaying AUTH: %s", strerror(errno));
		return;
	}
	if (expect_msg(t, &c2, MSG_ERROR, &m, IO_MS, "replayed AUTH") < 0) {
		return;
	}
	if (m.code != ERR_AUTH) {
		fail(t, "replayed AUTH: ERROR code %d \"%s\", want %d", m.code, m.text,
		     ERR_AUTH);
		return;
	}
	if (expect_closed(t, c2.fd, 3000, "the replaying connection") < 0) {
		return;
	}
	/* The session that was recorded is untouched. */
	memset(&m, 0, sizeof(m));
	m.type = MSG_PING;
	if (send_msg(t, &f.ctl, &m, NULL, NULL, "first session") < 0
	    || expect_msg(t, &f.ctl, MSG_PONG, &m, IO_MS, "first session") < 0
	    || expect_log(t, server, "wrong token") < 0) {
		return;
	}
}

/* A JOIN for a real user with a wrong proof is closed; the user waits
 * for the right one. */
static void
test_forged_join_real_user(struct test *t)
{
	static const char hello[] = "a real user's first bytes\n";
	static const char reply[] = "the service answers\n";
	uint8_t join[FRAME_HDR + FRAME_MAX];
	char ua[64], src[64];
	struct tl_proc *server;
	struct chan good;
	struct fake f;
	struct msg m;
	size_t join_n;
	int u, bad;

	if ((server = proto_server(t)) == NULL || fake_attach(t, &f, 0) < 0
	    || (u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	if (send_bytes(t, u, hello, sizeof(hello) - 1, "user") < 0
	    || expect_msg(t, &f.ctl, MSG_NEW_USER, &m, IO_MS, "control") < 0) {
		return;
	}
	wire_addr_str(&m.src, src, sizeof(src));
	if (strcmp(src, user_addr(u, ua)) != 0) {
		fail(t, "NEW_USER names %s, want the user's %s", src, ua);
		return;
	}
	join_n = join_make(&f, m.user_id, 1, join, &good);
	if ((bad = tunnel_join(t, join, join_n, "forged JOIN")) < 0
	    || expect_closed(t, bad, 6000, "the forged JOIN's connection") < 0
	    || wait_log(t, server, "JOIN with a wrong proof", 3000) < 0
	    || expect_quiet(t, u, 200, "the user after the forged JOIN") < 0) {
		return;
	}
	user_close(t, bad);
	join_n = join_make(&f, m.user_id, 0, join, &good);
	if ((good.fd = tunnel_join(t, join, join_n, "true JOIN")) < 0
	    || chan_expect_bytes(t, &good, hello, sizeof(hello) - 1,
	                         "the user's bytes on the joined tunnel") < 0) {
		return;
	}
	if (chan_send_bytes(t, &good, reply, sizeof(reply) - 1, "tunnel") < 0
	    || expect_bytes(t, u, reply, sizeof(reply) - 1,
	                    "the reply at the user") < 0
	    || expect_log(t, server, "joined after") < 0) {
		return;
	}
}

/* ==== test: refusals ====================================================== */

/* An AUTH sealed under another token's psk: ERROR 1 "wrong token", in
 * the clear (the server has no key the client could open it with); the
 * server goes on serving. */
static void
test_wrong_token_proof(struct test *t)
{
	struct tl_proc *server, *client;
	struct fake f;
	struct msg m;
	int sealed;

	if ((server = proto_server(t)) == NULL || fake_hello(t, &f) < 0
	    || fake_send_auth(t, &f, "not-" TOKEN, 0) < 0
	    || expect_reply(t, &f, MSG_ERROR, &m, IO_MS, "AUTH, wrong token",
	                    &sealed) < 0) {
		return;
	}
	if (m.code != ERR_AUTH || strstr(m.text, "wrong token") == NULL
	    || sealed) {
		fail(t, "ERROR code %d \"%s\"%s, want %d \"wrong token\" in the "
		     "clear", m.code, m.text, sealed ? " sealed" : "", ERR_AUTH);
		return;
	}
	if (expect_closed(t, f.ctl.fd, 3000, "the refused control connection")
	    < 0) {
		return;
	}
	user_close(t, f.ctl.fd);
	/* A real client with the wrong token gives up, and says why. */
	client = start_client(t, "client", t->ctl, t->pub, NULL, 0, "-token",
	                      "wrong", NULL);
	if (client == NULL || expect_exit(t, client, 1, START_MS) < 0
	    || expect_log(t, client, "wrong token") < 0
	    || expect_log(t, client, "-token") < 0) {
		return;
	}
	if (expect_alive(t, server) < 0 || fake_attach(t, &f, 0) < 0) {
		return;
	}
}

/* hello_of_version: a HELLO laid out as protocol 2's but saying version,
 * into out; its size. */
static size_t
hello_of_version(int version, uint8_t *out)
{
	struct msg m;
	size_t n;

	memset(&m, 0, sizeof(m));
	m.type = MSG_HELLO;
	random_bytes(m.pub, KEY_LEN);
	n = frame_encode(out, &m);
	out[FRAME_HDR + PROTO_MAGIC_LEN] = (uint8_t)version;
	return n;
}

/* Another protocol version (a newer client's): ERROR 2 naming both.  A
 * client pointed at the tunnel port: exit 1, told to use the control
 * port. */
static void
test_version_mismatch(struct test *t)
{
	uint8_t hello[FRAME_HDR + FRAME_MAX];
	struct tl_proc *server, *client;
	struct chan ch;
	struct msg m;
	char want[64], want2[64];

	memset(&ch, 0, sizeof(ch));
	if ((server = proto_server(t)) == NULL
	    || (ch.fd = user_open(t, "127.0.0.1", t->ctl)) < 0
	    || send_wire(t, ch.fd, hello, hello_of_version(PROTO_VERSION + 1,
	                                                   hello), "HELLO") < 0
	    || expect_msg(t, &ch, MSG_ERROR, &m, IO_MS, "HELLO of a newer "
	                  "version") < 0) {
		return;
	}
	snprintf(want, sizeof(want), "server speaks %d", PROTO_VERSION);
	snprintf(want2, sizeof(want2), "client %d", PROTO_VERSION + 1);
	if (m.code != ERR_VERSION || strstr(m.text, want) == NULL
	    || strstr(m.text, want2) == NULL) {
		fail(t, "ERROR code %d \"%s\", want %d naming versions %d and %d",
		     m.code, m.text, ERR_VERSION, PROTO_VERSION, PROTO_VERSION + 1);
		return;
	}
	if (expect_closed(t, ch.fd, 3000, "the refused control connection") < 0) {
		return;
	}
	client = start_client(t, "client", t->tun, t->pub, NULL, 0, "-token",
	                      TOKEN, NULL);
	snprintf(want, sizeof(want), "the control port (%d)", t->ctl);
	if (client == NULL || expect_exit(t, client, 1, START_MS) < 0
	    || expect_log(t, client, "point -remote at the control port") < 0
	    || expect_log(t, client, want) < 0
	    || expect_log(t, server, "a HELLO on the tunnel port") < 0
	    || expect_alive(t, server) < 0) {
		return;
	}
}

/* A client pointed at something else (an HTTP server) exits 1. */
static void
test_not_dialback(struct test *t)
{
	static const char answer[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
	struct tl_proc *client;
	uint8_t buf[4096];
	int lfd, fd, port, served = 0, p[1];
	int64_t deadline;

	if (pick_ports(t, p, 1) < 0) {
		return;
	}
	lfd = tl_listen("127.0.0.1", 0);
	if (lfd < 0 || tl_set_nonblock(lfd) < 0) {
		fail(t, "listen: %s", strerror(errno));
		if (lfd >= 0) {
			close(lfd);
		}
		return;
	}
	port = tl_local_port(lfd);
	client = start_client(t, "client", port, p[0], NULL, 0, NULL);
	deadline = tl_now_ms() + START_MS;
	while (client != NULL && !tl_proc_poll(client) && tl_now_ms() < deadline) {
		if (tl_wait_fd(lfd, POLLIN, tl_now_ms() + 50) <= 0
		    || (fd = accept(lfd, NULL, NULL)) < 0) {
			continue;
		}
		/* Read what it says, answer, and let it close first. */
		tl_set_nonblock(fd);
		if (tl_wait_fd(fd, POLLIN, tl_now_ms() + 2000) > 0
		    && read(fd, buf, sizeof(buf)) > 0) {
			tl_write_all(fd, answer, sizeof(answer) - 1,
			             tl_now_ms() + 2000);
			shutdown(fd, SHUT_WR);
			tl_wait_closed(fd, tl_now_ms() + 2000, NULL, NULL);
			served++;
		}
		close(fd);
	}
	close(lfd);
	if (client == NULL || expect_exit(t, client, 1, STOP_MS) < 0
	    || expect_log(t, client, "is not a dialback control port") < 0) {
		return;
	}
	if (served == 0) {
		fail(t, "the client never sent anything to the HTTP server");
	}
}

/* ==== the protocol, spoken by a scripted server =========================== */

/* A server of our own, for the real client: control and tunnel
 * listeners, and the one control connection it holds at a time. */
struct fake_srv {
	int lctl, ltun;
	int ctl_port, tun_port;
	struct chan ctl;
	struct handshake hs;               /* HELLO until REPLY */
	struct session_keys keys;          /* after a sealed WELCOME */
	struct msg hello, attach;          /* the client's; attach once opened */
	uint8_t reply[FRAME_HDR + FRAME_MAX];
	size_t reply_n;                    /* the last REPLY as sent */
};

/* fsrv_open: both listeners on 127.0.0.1, any free ports, closed at
 * teardown.  0, or -1 and fail(). */
static int
fsrv_open(struct test *t, struct fake_srv *fs)
{
	memset(fs, 0, sizeof(*fs));
	fs->ctl.fd = -1;
	if ((fs->lctl = tl_listen("127.0.0.1", 0)) >= 0) {
		user_track(t, fs->lctl);
	}
	if ((fs->ltun = tl_listen("127.0.0.1", 0)) >= 0) {
		user_track(t, fs->ltun);
	}
	if (fs->lctl < 0 || fs->ltun < 0 || tl_set_nonblock(fs->lctl) < 0
	    || tl_set_nonblock(fs->ltun) < 0) {
		return fail(t, "fake server: listen: %s", strerror(errno));
	}
	fs->ctl_port = tl_local_port(fs->lctl);
	fs->tun_port = tl_local_port(fs->ltun);
	return 0;
}

/* accept_one: a connection on listener lfd (non-blocking) within ms; it
 * is non-blocking and closed at teardown.  The fd, or -1 and fail(). */
static int
accept_one(struct test *t, int lfd, int ms, const char *what)
{
	int64_t deadline = tl_now_ms() + ms;
	int fd;

	for (;;) {
		if (tl_wait_fd(lfd, POLLIN, deadline) <= 0) {
			return fail(t, "%s: no connection within %d ms", what, ms);
		}
		if ((fd = accept(lfd, NULL, NULL)) >= 0) {
			break;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR
		    && errno != ECONNABORTED) {
			return fail(t, "%s: accept: %s", what, strerror(errno));
		}
	}
	user_track(t, fd);
	if (tl_set_nonblock(fd) < 0) {
		return fail(t, "%s: %s", what, strerror(errno));
	}
	return fd;
}

/* fsrv_hello: take the client's control connection, read its HELLO
 * (version 2), answer a CHALLENGE and mix both in with the key
 * exchange.  0, or -1 and fail(). */
static int
fsrv_hello(struct test *t, struct fake_srv *fs)
{
	struct msg r;

	memset(&fs->ctl, 0, sizeof(fs->ctl));
	fs->ctl.fd = accept_one(t, fs->lctl, START_MS, "the client's control "
	                        "connection");
	if (fs->ctl.fd < 0 || expect_msg(t, &fs->ctl, MSG_HELLO, &fs->hello,
	                                 IO_MS, "the client's HELLO") < 0) {
		return -1;
	}
	if (fs->hello.version != PROTO_VERSION) {
		return fail(t, "the client's HELLO says version %d, want %d",
		            fs->hello.version, PROTO_VERSION);
	}
	hs_init(&fs->hs);
	memset(&r, 0, sizeof(r));
	r.type = MSG_CHALLENGE;
	memcpy(r.pub, fs->hs.e_pub, KEY_LEN);
	hs_mix_msg(&fs->hs, &fs->hello);
	hs_mix_msg(&fs->hs, &r);
	if (hs_mix_dh(&fs->hs, fs->hello.pub) != 0) {
		return fail(t, "the client's ephemeral key is of low order");
	}
	return send_msg(t, &fs->ctl, &r, NULL, NULL, "CHALLENGE");
}

/* fsrv_auth: mix in secret's psk (none with no_psk), read the client's
 * AUTH and try to open it; *opened says whether it did, and then
 * fs->attach holds the ATTACH.  0, or -1 and fail(). */
static int
fsrv_auth(struct test *t, struct fake_srv *fs, const char *secret,
          int no_psk, int *opened)
{
	uint8_t psk[KEY_LEN], plain[SEALED_MAX];
	struct msg m;
	size_t n, used;

	if (!no_psk) {
		psk_derive(secret, strlen(secret), psk);
		hs_mix_psk(&fs->hs, psk);
	}
	if (expect_msg(t, &fs->ctl, MSG_AUTH, &m, IO_MS, "the client's AUTH")
	    < 0) {
		return -1;
	}
	n = m.sealed_len - TAG_LEN;
	*opened = hs_open(&fs->hs, m.sealed, m.sealed_len, plain) == 0;
	if (*opened && (frame_decode(plain, n, &fs->attach, &used) != FRAME_OK
	                || used != n || fs->attach.type != MSG_ATTACH)) {
		return fail(t, "the client's AUTH holds no ATTACH");
	}
	return 0;
}

/* How a scripted server answers an AUTH. */
enum reply_kind {
	REPLY_SEALED,          /* a REPLY sealed under its handshake */
	REPLY_GARBAGE,         /* a REPLY of random bytes */
	REPLY_CLEAR,           /* the inner frame in the clear, no REPLY */
	REPLY_SHORT            /* a REPLY too short to hold a tag */
};

/* fsrv_reply: answer with *inner (WELCOME or ERROR) as kind says; its
 * bytes are kept in fs->reply.  A sealed WELCOME seals the control
 * connection from here on.  0, or -1 and fail(). */
static int
fsrv_reply(struct test *t, struct fake_srv *fs, const struct msg *inner,
           enum reply_kind kind)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = frame_encode(frame, inner);
	struct msg r;

	if (kind == REPLY_CLEAR) {
		return send_msg(t, &fs->ctl, inner, fs->reply, &fs->reply_n,
		                "a clear answer to AUTH");
	}
	if (kind == REPLY_SHORT) {
		uint8_t wire[FRAME_HDR + 4] = { MSG_REPLY };

		wire_put16(wire + 1, 4);
		return send_wire(t, fs->ctl.fd, wire, sizeof(wire),
		                 "a 4-byte REPLY");
	}
	memset(&r, 0, sizeof(r));
	r.type = MSG_REPLY;
	r.sealed_len = (uint16_t)(n + TAG_LEN);
	if (kind == REPLY_SEALED) {
		hs_seal(&fs->hs, frame, n, r.sealed);
	} else {
		random_bytes(r.sealed, r.sealed_len);
	}
	if (send_msg(t, &fs->ctl, &r, fs->reply, &fs->reply_n, "REPLY") < 0) {
		return -1;
	}
	if (kind == REPLY_SEALED && inner->type == MSG_WELCOME) {
		hs_split(&fs->hs, 0, &fs->keys);
		fs->ctl.sealed = 1;
		fs->ctl.tx = fs->keys.tx;
		fs->ctl.rx = fs->keys.rx;
	}
	return 0;
}

/* welcome_msg: the WELCOME a scripted server grants: its tunnel port,
 * public port pub, a heartbeat no test waits out, the flags asked. */
static void
welcome_msg(const struct fake_srv *fs, int pub, struct msg *m)
{
	memset(m, 0, sizeof(*m));
	m->type = MSG_WELCOME;
	m->tunnel_port = (uint16_t)fs->tun_port;
	m->public_port = (uint16_t)pub;
	m->heartbeat_s = 60;
	m->flags = fs->attach.flags;
}

/* ==== test: a server that cannot prove the token ========================== */

/* The ways a server without the token may answer an AUTH. */
static const struct {
	const char *name;
	const char *secret;        /* its psk's; NULL: it mixes in none */
	enum reply_kind kind;
	int replayed;              /* sends the REPLY of an earlier session */
} any_proof[] = {
	{ "right", TOKEN, REPLY_SEALED, 0 },    /* the control: it attaches */
	{ "other-token", "not-" TOKEN, REPLY_SEALED, 0 },
	{ "no-psk", NULL, REPLY_SEALED, 0 },
	{ "garbage", TOKEN, REPLY_GARBAGE, 0 },
	{ "clear-welcome", TOKEN, REPLY_CLEAR, 0 },
	{ "short-reply", TOKEN, REPLY_SHORT, 0 },
	{ "replayed", TOKEN, REPLY_SEALED, 1 },
};

/* A fake server that does not know the client's token answers its HELLO
 * and AUTH with a WELCOME sealed under another psk, under none, as
 * garbage, in the clear, too short, or replayed from a real session: the
 * real
 * client exits 1 at once, says so, and dials no tunnel.  The first round,
 * with the token, shows the fake server is otherwise right. */
static void
test_fake_server_any_proof(struct test *t)
{
	static const char want[] = "server could not prove it knows the token: "
	                           "wrong server or wrong token";
	uint8_t recorded[FRAME_HDR + FRAME_MAX];
	size_t recorded_n = 0, i;
	struct tl_proc *client;
	struct fake_srv fs;
	struct msg w;
	char name[32];
	int p[2], opened;

	if (pick_ports(t, p, 2) < 0 || fsrv_open(t, &fs) < 0) {
		return;
	}
	for (i = 0; i < sizeof(any_proof) / sizeof(any_proof[0]); i++) {
		snprintf(name, sizeof(name), "client-%s", any_proof[i].name);
		client = start_client(t, name, fs.ctl_port, p[0], NULL, 0,
		                      "-token", TOKEN, NULL);
		if (client == NULL || fsrv_hello(t, &fs) < 0
		    || fsrv_auth(t, &fs, any_proof[i].secret
		                 ? any_proof[i].secret : "", !any_proof[i].secret,
		                 &opened) < 0) {
			return;
		}
		welcome_msg(&fs, p[1], &w);
		if (i == 0) {
			if (!opened) {
				fail(t, "the real client's AUTH does not open with its "
				     "token");
				return;
			}
			if (fsrv_reply(t, &fs, &w, REPLY_SEALED) < 0
			    || wait_log(t, client, "forwarding", START_MS) < 0
			    || stop(t, client) < 0) {
				return;
			}
			memcpy(recorded, fs.reply, fs.reply_n);
			recorded_n = fs.reply_n;
			user_close(t, fs.ctl.fd);
			continue;
		}
		if (any_proof[i].replayed) {
			if (send_wire(t, fs.ctl.fd, recorded, recorded_n,
			              "the recorded REPLY") < 0) {
				return;
			}
		} else if (fsrv_reply(t, &fs, &w, any_proof[i].kind) < 0) {
			return;
		}
		if (expect_exit(t, client, 1, START_MS) < 0
		    || expect_log(t, client, want) < 0
		    || expect_closed(t, fs.ctl.fd, 3000, name) < 0) {
			return;
		}
		if (tl_file_contains(client->log, "forwarding")) {
			fail(t, "%s: the client says it is forwarding", name);
			return;
		}
		if (tl_wait_fd(fs.ltun, POLLIN, tl_now_ms()) != 0) {
			fail(t, "%s: the client dialed the tunnel port", name);
			return;
		}
		user_close(t, fs.ctl.fd);
	}
}

/* A fake server that takes AUTH and closes, four times in a row, never
 * proving the token: the client retries (a server may restart mid-
 * handshake) and then exits 1 with the same verdict, dialing no tunnel. */
static void
test_fake_server_closes_after_auth(struct test *t)
{
	static const char want[] = "server could not prove it knows the token: "
	                           "wrong server or wrong token";
	struct tl_proc *client;
	struct fake_srv fs;
	int p[2], opened, i;

	if (pick_ports(t, p, 2) < 0 || fsrv_open(t, &fs) < 0 ||
	    (client = start_client(t, "client", fs.ctl_port, p[0], NULL, 0,
	                           "-token", TOKEN, NULL)) == NULL) {
		return;
	}
	for (i = 0; i < 4; i++) {
		if (fsrv_hello(t, &fs) < 0 ||
		    fsrv_auth(t, &fs, TOKEN, 0, &opened) < 0) {
			return;
		}
		user_close(t, fs.ctl.fd);
		if (i < 3 && tl_proc_poll(client)) {
			fail(t, "the client gave up after %d closes, want 4", i + 1);
			return;
		}
	}
	if (expect_exit(t, client, 1, START_MS) < 0 ||
	    expect_log(t, client, want) < 0 ||
	    expect_log(t, client, "after AUTH, 4 times in a row") < 0) {
		return;
	}
	if (tl_wait_fd(fs.ltun, POLLIN, tl_now_ms()) != 0) {
		fail(t, "the client dialed the tunnel port");
	}
}

/* ==== test: a peer of protocol version 1 ================================== */

#define V1_NONCE_LEN 16            /* protocol 1's nonces */

/* A version 1 client (its HELLO: magic, version 1, nonce[16], run
 * id[8]) gets a clear ERROR from the real server naming both versions.
 * A version 1 server, answering a HELLO as it did (an ERROR naming both
 * versions) or with its own CHALLENGE (magic, version 1, nonce[16]),
 * makes the real client exit 1 with a line naming both. */
static void
test_version_1_peer(struct test *t)
{
	uint8_t v1[FRAME_HDR + PROTO_MAGIC_LEN + 1 + V1_NONCE_LEN + RUN_ID_LEN];
	uint8_t *p = v1 + FRAME_HDR;
	char want[160], name[32];
	struct tl_proc *server, *client;
	struct fake_srv fs;
	struct chan ch;
	struct msg m;
	int round;

	v1[0] = MSG_HELLO;
	wire_put16(v1 + 1, sizeof(v1) - FRAME_HDR);
	memcpy(p, PROTO_MAGIC, PROTO_MAGIC_LEN);
	p[PROTO_MAGIC_LEN] = 1;
	random_bytes(p + PROTO_MAGIC_LEN + 1, V1_NONCE_LEN + RUN_ID_LEN);
	memset(&ch, 0, sizeof(ch));
	if ((server = proto_server(t)) == NULL
	    || (ch.fd = user_open(t, "127.0.0.1", t->ctl)) < 0
	    || send_wire(t, ch.fd, v1, sizeof(v1), "version 1 HELLO") < 0
	    || expect_msg(t, &ch, MSG_ERROR, &m, IO_MS, "version 1 HELLO") < 0) {
		return;
	}
	snprintf(want, sizeof(want), "server speaks %d, client 1", PROTO_VERSION);
	if (m.code != ERR_VERSION || strstr(m.text, want) == NULL) {
		fail(t, "ERROR code %d \"%s\", want %d \"%s\"", m.code, m.text,
		     ERR_VERSION, want);
		return;
	}
	if (expect_closed(t, ch.fd, 3000, "the version 1 client") < 0
	    || wait_log(t, server, want, 3000) < 0
	    || expect_alive(t, server) < 0) {
		return;
	}

	if (fsrv_open(t, &fs) < 0) {
		return;
	}
	for (round = 0; round < 2; round++) {
		snprintf(name, sizeof(name), "client-%s", round ? "challenge"
		         : "error");
		client = start_client(t, name, fs.ctl_port, t->pub, NULL, 0,
		                      "-token", TOKEN, NULL);
		memset(&ch, 0, sizeof(ch));
		if (client == NULL || (ch.fd = accept_one(t, fs.lctl, START_MS,
		                                           name)) < 0
		    || expect_msg(t, &ch, MSG_HELLO, &m, IO_MS, name) < 0) {
			return;
		}
		if (round == 0) {
			/* What a version 1 server said to a newer client. */
			memset(&m, 0, sizeof(m));
			m.type = MSG_ERROR;
			m.code = ERR_VERSION;
			snprintf(m.text, sizeof(m.text), "protocol version mismatch: "
			         "server speaks 1, client %d; run the same dialback "
			         "release on both sides", m.version ? m.version
			         : PROTO_VERSION);
			snprintf(want, sizeof(want), "server speaks 1, client %d",
			         PROTO_VERSION);
			if (send_msg(t, &ch, &m, NULL, NULL, name) < 0) {
				return;
			}
		} else {
			uint8_t c[FRAME_HDR + PROTO_MAGIC_LEN + 1 + V1_NONCE_LEN];

			c[0] = MSG_CHALLENGE;
			wire_put16(c + 1, sizeof(c) - FRAME_HDR);
			memcpy(c + FRAME_HDR, PROTO_MAGIC, PROTO_MAGIC_LEN);
			c[FRAME_HDR + PROTO_MAGIC_LEN] = 1;
			random_bytes(c + FRAME_HDR + PROTO_MAGIC_LEN + 1, V1_NONCE_LEN);
			snprintf(want, sizeof(want), "speaks protocol version 1, this "
			         "client %d", PROTO_VERSION);
			if (send_wire(t, ch.fd, c, sizeof(c), name) < 0) {
				return;
			}
		}
		if (expect_exit(t, client, 1, START_MS) < 0
		    || expect_log(t, client, want) < 0
		    || expect_closed(t, ch.fd, 3000, name) < 0) {
			return;
		}
		user_close(t, ch.fd);
	}
}

/* ==== test: tampered, cut and replayed tunnel records ===================== */

/* fsrv_attach: the whole handshake with the right token; a sealed
 * WELCOME, and the client says "forwarding".  0, or -1 and fail(). */
static int
fsrv_attach(struct test *t, struct fake_srv *fs, struct tl_proc *client,
            int pub)
{
	struct msg w;
	int opened;

	if (fsrv_hello(t, fs) < 0
	    || fsrv_auth(t, fs, TOKEN, 0, &opened) < 0) {
		return -1;
	}
	if (!opened) {
		return fail(t, "the real client's AUTH does not open with its "
		            "token");
	}
	welcome_msg(fs, pub, &w);
	if (fsrv_reply(t, fs, &w, REPLY_SEALED) < 0
	    || wait_log(t, client, "forwarding", START_MS) < 0) {
		return -1;
	}
	return 0;
}

/* fsrv_new_user: the fake server announces a user from 127.0.0.1 port
 * src on its control connection, the NEW_USER kept in *m.  0, or -1 and
 * fail(). */
static int
fsrv_new_user(struct test *t, struct fake_srv *fs, int src, struct msg *m)
{
	static const uint8_t lo[4] = { 127, 0, 0, 1 };

	memset(m, 0, sizeof(*m));
	m->type = MSG_NEW_USER;
	random_bytes(m->user_id, USER_ID_LEN);
	m->src.family = m->dst.family = 4;
	memcpy(m->src.addr, lo, 4);
	memcpy(m->dst.addr, lo, 4);
	m->src.port = (uint16_t)src;
	m->dst.port = 8007;
	return send_msg(t, &fs->ctl, m, NULL, NULL, "NEW_USER");
}

#define TT_PORT0 40000             /* user i's source port: TT_PORT0 + i */

/*
 * tt_user: the fake server announces user i on control; the client's
 * local connection comes to lsvc (into *local), then its tunnel dial,
 * whose JOIN must name the user with a proof that holds (*tun: the
 * server's side, sealed).  One round trip shows the tunnel works.  0, or
 * -1 and fail().
 */
static int
tt_user(struct test *t, struct fake_srv *fs, int lsvc, int i,
        struct chan *tun, int *local)
{
	char down[64], up[64];
	struct msg m, j;

	memset(tun, 0, sizeof(*tun));
	if (fsrv_new_user(t, fs, TT_PORT0 + i, &m) < 0
	    || (*local = accept_one(t, lsvc, IO_MS, "the client's local "
	                            "connection")) < 0
	    || (tun->fd = accept_one(t, fs->ltun, IO_MS, "the client's tunnel"))
	       < 0
	    || expect_msg(t, tun, MSG_JOIN, &j, IO_MS, "the client's tunnel")
	       < 0) {
		return -1;
	}
	if (memcmp(j.user_id, m.user_id, USER_ID_LEN) != 0) {
		return fail(t, "user %d: the JOIN names another user", i);
	}
	tunnel_keys(fs->keys.tunnel, m.user_id, 0, &tun->tx, &tun->rx);
	if (join_check(&tun->rx, m.user_id, j.proof) != 0) {
		return fail(t, "user %d: the client's JOIN proof does not hold", i);
	}
	tun->sealed = 1;
	snprintf(down, sizeof(down), "to the service, user %d", i);
	snprintf(up, sizeof(up), "from the service, user %d", i);
	if (chan_send_bytes(t, tun, down, strlen(down), "tunnel") < 0
	    || expect_bytes(t, *local, down, strlen(down), "at the service") < 0
	    || send_bytes(t, *local, up, strlen(up), "service") < 0
	    || chan_expect_bytes(t, tun, up, strlen(up), "on the tunnel") < 0) {
		return -1;
	}
	return 0;
}

/* What the fake server does to the stream of the user of each round. */
static const struct {
	const char *name;
	int at;                    /* the byte of a 64-byte record flipped */
} tamper[] = {
	{ "length, high byte", 0 },
	{ "length, low byte", 1 },
	{ "first byte of ciphertext", RECORD_HDR },
	{ "last byte of ciphertext", RECORD_HDR + 63 },
	{ "first byte of the tag", RECORD_HDR + 64 },
	{ "last byte of the tag", RECORD_HDR + 64 + TAG_LEN - 1 },
	{ "cut: a FIN without the end record", -1 },
	{ "a record replayed", -2 },
};


/*
 * client_busy: a server that announces users without end, to a client
 * whose service never answers (a listener that never accepts, its queue
 * full, so further connects hang).  The client holds at most 1024 users in
 * flight; once that cap has been full for its grace second, each further
 * NEW_USER is answered USER_FAILED "client busy", its descriptors stay
 * bounded, and it logs the refusals once, with a count.
 */
static void
test_client_busy(struct test *t)
{
	enum { CAP = 1024, EXTRA = 100, SLACK = 8 };
	struct tl_proc *client;
	struct fake_srv fs;
	struct msg m;
	int lsvc, p[1], i, fds;
	char what[64];

	if (pick_ports(t, p, 1) < 0 || fsrv_open(t, &fs) < 0) {
		return;
	}
	/* A queue of one that nobody accepts from: connects past it hang. */
	if ((lsvc = tl_listen("127.0.0.1", 0)) < 0 || listen(lsvc, 0) < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	user_track(t, lsvc);
	client = start_client(t, "client", fs.ctl_port, tl_local_port(lsvc),
	                      NULL, 0, "-token", TOKEN, NULL);
	if (client == NULL || fsrv_attach(t, &fs, client, p[0]) < 0) {
		return;
	}
	for (i = 0; i < CAP + EXTRA; i++) {
		if (fsrv_new_user(t, &fs, 1 + i, &m) < 0) {
			return;
		}
	}
	/* The first users' connects fill the service's queue and go on
	 * to relay, so a few more than the cap fit; every one past that is
	 * refused. */
	for (i = 0; i < EXTRA - SLACK; i++) {
		snprintf(what, sizeof(what), "refusal %d", i + 1);
		if (expect_msg(t, &fs.ctl, MSG_USER_FAILED, &m, T(5000), what) < 0) {
			return;
		}
		if (strcmp(m.text, "client busy") != 0) {
			fail(t, "%s says \"%s\", not \"client busy\"", what, m.text);
			return;
		}
	}
	fds = tl_count_fds(client->pid);
	if (fds >= 0 && fds > CAP + 64) {
		fail(t, "the client holds %d descriptors with %d users in flight",
		     fds, CAP);
		return;
	}
	if (tl_count_in_file(client->log, "client busy") != 1) {
		fail(t, "the client logged %d \"client busy\" lines, want 1 (its "
		     "refusals are rate-limited)",
		     tl_count_in_file(client->log, "client busy"));
		return;
	}
	expect_alive(t, client);
}

/*
 * The cap on users in flight is the client's, not each service's: a
 * fake server floods one of a client's two services until it answers
 * "client busy", and then a single user announced to the other service
 * is refused the same way, instead of a second 1024 connections.
 */
static void
test_client_busy_services(struct test *t)
{
	enum { CAP = 1024, EXTRA = 100, SLACK = 8 };
	struct tl_proc *client;
	struct fake_srv fs[2];
	struct msg m;
	char second[64], pa[16];
	int lsvc, p[2], i, k;

	if (pick_ports(t, p, 2) < 0 || fsrv_open(t, &fs[0]) < 0) {
		return;
	}
	fs[1] = fs[0];                  /* the same listeners */
	if ((lsvc = tl_listen("127.0.0.1", 0)) < 0 || listen(lsvc, 0) < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	user_track(t, lsvc);
	snprintf(pa, sizeof(pa), "%d", p[0]);
	snprintf(second, sizeof(second), "%d=127.0.0.1:%d", p[1],
	         tl_local_port(lsvc));
	client = start_client(t, "client", fs[0].ctl_port, tl_local_port(lsvc),
	                      NULL, 0, "-token", TOKEN, "-port", pa, "-local",
	                      second, NULL);
	/* The services connect in either order; each gets the port its
	 * HELLO asked for. */
	for (k = 0; k < 2; k++) {
		if (client == NULL || fsrv_hello(t, &fs[k]) < 0 ||
		    fsrv_auth(t, &fs[k], TOKEN, 0, &i) < 0) {
			return;
		}
		welcome_msg(&fs[k], fs[k].hello.public_port, &m);
		if (fsrv_reply(t, &fs[k], &m, REPLY_SEALED) < 0) {
			return;
		}
	}
	if (wait_log(t, client, "forwarding", START_MS) < 0) {
		return;
	}
	for (i = 0; i < CAP + EXTRA; i++) {
		if (fsrv_new_user(t, &fs[0], 1 + i, &m) < 0) {
			return;
		}
	}
	/* As in client_busy, a few users get past the cap while the first
	 * connects complete; once most of the extra ones are refused, the
	 * rest hang, and the client is full. */
	for (i = 0; i < EXTRA - SLACK; i++) {
		if (expect_msg(t, &fs[0].ctl, MSG_USER_FAILED, &m, T(5000),
		               "a refusal") < 0) {
			return;
		}
	}
	if (fsrv_new_user(t, &fs[1], 1 + CAP + EXTRA, &m) < 0 ||
	    expect_msg(t, &fs[1].ctl, MSG_USER_FAILED, &m, T(5000),
	               "the other service's user") < 0) {
		return;
	}
	if (strcmp(m.text, "client busy") != 0) {
		fail(t, "the other service's user was refused with \"%s\", not "
		     "\"client busy\"", m.text);
		return;
	}
	expect_alive(t, client);
}

/* A fake server gives the real client users, and breaks each one's
 * tunnel stream in turn: a record with one byte flipped (length,
 * ciphertext, tag), a FIN without the end record, a record sent twice.
 * Each time the client resets that user's connection to the service (a
 * reset, not a FIN) with one log line, and serves the next user; the
 * last one ends cleanly both ways. */
static void
test_tampered_tunnel(struct test *t)
{
	static const char *const why[] = {
		"tunnel sent a record that does not open",
		"tunnel closed without its end record"
	};
	uint8_t data[1024], wire[2 * (RECORD_HDR + TAG_LEN) + 64 + 1024];
	char what[160], want[160];
	struct tl_proc *client;
	struct fake_srv fs;
	struct chan tun;
	struct msg m;
	size_t n, i, nt = sizeof(tamper) / sizeof(tamper[0]);
	int lsvc, local, p[1];

	if (pick_ports(t, p, 1) < 0 || fsrv_open(t, &fs) < 0) {
		return;
	}
	if ((lsvc = tl_listen("127.0.0.1", 0)) < 0 || tl_set_nonblock(lsvc) < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	user_track(t, lsvc);
	client = start_client(t, "client", fs.ctl_port, tl_local_port(lsvc),
	                      NULL, 0, "-token", TOKEN, NULL);
	if (client == NULL || fsrv_attach(t, &fs, client, p[0]) < 0) {
		return;
	}
	memset(data, 'x', sizeof(data));
	for (i = 0; i < nt; i++) {
		if (tt_user(t, &fs, lsvc, (int)i, &tun, &local) < 0) {
			return;
		}
		snprintf(what, sizeof(what), "user %zu, %s: the service's "
		         "connection", i, tamper[i].name);
		if (tamper[i].at >= 0) {
			/* The flipped record, and a good one behind it, so that a
			 * length made longer has the bytes it claims. */
			n = record_seal(&tun.tx, data, 64, wire);
			wire[tamper[i].at] ^= 1;
			n += record_seal(&tun.tx, data, sizeof(data), wire + n);
			if (send_wire(t, tun.fd, wire, n, what) < 0) {
				return;
			}
		} else if (tamper[i].at == -1) {
			if (shutdown(tun.fd, SHUT_WR) < 0) {
				fail(t, "%s: shutdown: %s", what, strerror(errno));
				return;
			}
		} else {
			n = record_seal(&tun.tx, data, 64, wire);
			if (send_wire(t, tun.fd, wire, n, what) < 0
			    || expect_bytes(t, local, data, 64, what) < 0
			    || send_wire(t, tun.fd, wire, n, what) < 0) {
				return;
			}
		}
		snprintf(want, sizeof(want), "user 127.0.0.1:%zu closed: %s",
		         TT_PORT0 + i, why[tamper[i].at == -1]);
		if (expect_reset(t, local, IO_MS, what) < 0
		    || wait_log(t, client, want, IO_MS) < 0) {
			return;
		}
		snprintf(want, sizeof(want), "user 127.0.0.1:%zu closed", TT_PORT0 + i);
		if (tl_count_in_file(client->log, want) != 1) {
			fail(t, "%s: %d lines say \"%s\", want 1", what,
			     tl_count_in_file(client->log, want), want);
			return;
		}
		user_close(t, local);
		user_close(t, tun.fd);
	}

	/* The next user is served, and ends cleanly each way. */
	if (tt_user(t, &fs, lsvc, (int)nt, &tun, &local) < 0
	    || chan_end(t, &tun, "tunnel") < 0
	    || expect_eof(t, local, IO_MS, "the service after the tunnel's end")
	       < 0) {
		return;
	}
	if (shutdown(local, SHUT_WR) < 0) {
		fail(t, "service: shutdown: %s", strerror(errno));
		return;
	}
	snprintf(what, sizeof(what), "to the service, user %zu", nt);
	snprintf(want, sizeof(want), "from the service, user %zu", nt);
	n = strlen(want);
	snprintf(want, sizeof(want), "user 127.0.0.1:%zu closed: %zu bytes in, "
	         "%zu out", TT_PORT0 + nt, strlen(what), n);
	if (chan_expect_eof(t, &tun, IO_MS, "the tunnel after the service's "
	                    "end") < 0
	    || wait_log(t, client, want, IO_MS) < 0) {
		return;
	}
	/* Its session never noticed: the control connection answers. */
	memset(&m, 0, sizeof(m));
	m.type = MSG_PING;
	if (send_msg(t, &fs.ctl, &m, NULL, NULL, "control") < 0
	    || expect_msg(t, &fs.ctl, MSG_PONG, &m, IO_MS, "control") < 0
	    || expect_alive(t, client) < 0) {
		return;
	}
	if (tl_file_contains(client->log, "lost connection")) {
		fail(t, "the client lost its control connection");
	}
}

/* ==== test: plaintext tunnels ============================================= */

/* -plaintext takes both ends.  A client asking a server that does not
 * allow it exits 1 with the server's reason; a server that allows it
 * still seals the tunnels of a client that did not ask; both asking,
 * plaintext is granted.  Either way users are served.  (That the bytes
 * on the wire are then raw, and otherwise not, is capture's to show.) */
static void
test_plaintext_refused(struct test *t)
{
	static const char why[] = "this server does not allow plaintext tunnels";
	static const char granted[] = "(plaintext tunnels)";
	struct tl_proc *server, *client;
	int p[4];

	if (pick_server_ports(t, p, 4) < 0
	    || start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", NULL)) == NULL) {
		return;
	}
	client = start_client(t, "client-asks", t->ctl, p[3], NULL, 0,
	                      "-plaintext", NULL);
	if (client == NULL || expect_exit(t, client, 1, START_MS) < 0
	    || expect_log(t, client, why) < 0
	    || wait_log(t, server, why, 3000) < 0
	    || expect_alive(t, server) < 0 || stop(t, server) < 0) {
		return;
	}
	if (tl_file_contains(client->log, "forwarding")) {
		fail(t, "the refused client says it is forwarding");
		return;
	}

	if ((server = start_server(t, "server-plaintext", "-plaintext", NULL))
	    == NULL
	    || (client = start_client(t, "client-sealed", t->ctl, p[3], NULL, 1,
	                              NULL)) == NULL
	    || wait_log(t, server, "attached: serving public port", IO_MS) < 0
	    || echo_user(t, t->pub, 100000, 41, "a user, sealed tunnel") < 0) {
		return;
	}
	if (tl_file_contains(server->log, granted)) {
		fail(t, "the server granted plaintext tunnels to a client that did "
		     "not ask");
		return;
	}
	if (stop(t, client) < 0
	    || wait_log(t, server, "detached", IO_MS) < 0
	    || (client = start_client(t, "client-plaintext", t->ctl, p[3], NULL,
	                              1, "-plaintext", NULL)) == NULL
	    || wait_log(t, server, granted, IO_MS) < 0
	    || echo_user(t, t->pub, 100000, 42, "a user, plaintext tunnel") < 0) {
		return;
	}
}

/* ==== test: what the wire shows =========================================== */

/*
 * tests/features --capture FILE PORT...: with a packet socket on the
 * loopback interface (root only: CAP_NET_RAW), append the payload of
 * every TCP segment from or to one of the ports to FILE, in the order
 * seen; print "ready".  On SIGTERM read what is still queued, print
 * "captured N segments, B bytes, D dropped, T truncated" and exit 0.
 * Each segment is taken once, as it arrives (not as it leaves).
 */
#define CAP_MAX_PORTS 8
#define CAP_BUF       (256 * 1024)   /* more than a loopback GSO segment */

#ifdef CAPTURE_PACKET
static volatile sig_atomic_t capture_stop;

static void
on_capture_signal(int sig)
{
	(void)sig;
	capture_stop = 1;
}

/* capture_open: a packet socket on lo, or -1 with errno set. */
static int
capture_open(void)
{
	struct sockaddr_ll sll;
	int fd = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL)), e;

	if (fd < 0) {
		return -1;
	}
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(ETH_P_ALL);
	sll.sll_ifindex = (int)if_nametoindex("lo");
	if (sll.sll_ifindex == 0
	    || bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		e = sll.sll_ifindex == 0 ? ENODEV : errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* tcp_payload: the payload of the TCP segment in IP packet p (n bytes,
 * IPv4 or IPv6 without extension headers) when its source or destination
 * port is one of ports[0..np); else NULL.  *len gets its size. */
static const uint8_t *
tcp_payload(const uint8_t *p, size_t n, const int *ports, int np, size_t *len)
{
	size_t ip, total, off;
	int sport, dport, i;

	if (n >= 20 && p[0] >> 4 == 4 && p[9] == 6) {
		ip = (size_t)(p[0] & 15) * 4;
		total = wire_get16(p + 2);
	} else if (n >= 40 && p[0] >> 4 == 6 && p[6] == 6) {
		ip = 40;
		total = 40 + (size_t)wire_get16(p + 4);
	} else {
		return NULL;
	}
	/* A GSO packet's length field may say 0; the socket knows better. */
	if (total <= ip || total > n) {
		total = n;
	}
	if (ip + 20 > total) {
		return NULL;
	}
	sport = wire_get16(p + ip);
	dport = wire_get16(p + ip + 2);
	off = ip + (size_t)(p[ip + 12] >> 4) * 4;
	if (off > total) {
		return NULL;
	}
	for (i = 0; i < np; i++) {
		if (ports[i] == sport || ports[i] == dport) {
			*len = total - off;
			return p + off;
		}
	}
	return NULL;
}

static int
capture_run(const char *path, char **arg, int nports)
{
	unsigned long segs = 0, bytes = 0, truncated = 0;
	int ports[CAP_MAX_PORTS], fd = -1, i, size = 64 << 20, stopping, rc = 1;
	struct tpacket_stats st;
	struct sockaddr_ll from;
	struct sigaction sa;
	socklen_t sl;
	uint8_t *buf = NULL;
	FILE *out = NULL;

	if (nports < 1 || nports > CAP_MAX_PORTS) {
		fprintf(stderr, "capture: 1 to %d ports\n", CAP_MAX_PORTS);
		return 2;
	}
	for (i = 0; i < nports; i++) {
		ports[i] = atoi(arg[i]);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_capture_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	if ((fd = capture_open()) < 0 || tl_set_nonblock(fd) < 0) {
		fprintf(stderr, "capture: packet socket on lo: %s\n",
		        strerror(errno));
		goto out;
	}
	/* Room for all a test sends, so the kernel drops nothing even when
	 * this process is slow to be scheduled. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0) {
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	}
	if ((out = fopen(path, "wb")) == NULL || (buf = malloc(CAP_BUF)) == NULL) {
		fprintf(stderr, "capture: %s: %s\n", path, strerror(errno));
		goto out;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		/* Seen before the last reads: what was sent before SIGTERM
		 * is queued by then, and gets read. */
		stopping = capture_stop;
		for (;;) {
			const uint8_t *p;
			size_t len = 0;
			ssize_t n;

			sl = sizeof(from);
			n = recvfrom(fd, buf, CAP_BUF, MSG_TRUNC,
			             (struct sockaddr *)&from, &sl);
			if (n < 0 && errno == EINTR) {
				continue;
			}
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				break;
			}
			if (n < 0) {
				fprintf(stderr, "capture: recvfrom: %s\n", strerror(errno));
				goto out;
			}
			if (from.sll_pkttype == PACKET_OUTGOING) {
				continue;    /* loopback shows each packet twice */
			}
			if ((size_t)n > CAP_BUF) {
				truncated++;
				continue;
			}
			p = tcp_payload(buf, (size_t)n, ports, nports, &len);
			if (p != NULL && len > 0) {
				if (fwrite(p, 1, len, out) != len) {
					fprintf(stderr, "capture: %s: %s\n", path,
					        strerror(errno));
					goto out;
				}
				segs++;
				bytes += len;
			}
		}
		if (stopping) {
			break;
		}
		poll(&(struct pollfd){ .fd = fd, .events = POLLIN }, 1, 50);
	}
	memset(&st, 0, sizeof(st));
	sl = sizeof(st);
	getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
	rc = fclose(out) == 0 ? 0 : 1;
	out = NULL;
	if (rc != 0) {
		fprintf(stderr, "capture: %s: %s\n", path, strerror(errno));
		goto out;
	}
	printf("captured %lu segments, %lu bytes, %u dropped, %lu truncated\n",
	       segs, bytes, st.tp_drops, truncated);
out:
	if (out != NULL) {
		fclose(out);
	}
	if (fd >= 0) {
		close(fd);
	}
	free(buf);
	return rc;
}
#else
static int
capture_open(void)
{
	errno = ENOSYS;
	return -1;
}

static int
capture_run(const char *path, char **arg, int nports)
{
	(void)path;
	(void)arg;
	(void)nports;
	fprintf(stderr, "capture: no packet sockets here\n");
	return 1;
}
#endif

/* The pattern's 16-byte windows, found by their first 8 bytes in an
 * open-addressing table, and which of them a search saw. */
#define WIN_LEN  16
#define WIN_BITS 18

struct windows {
	const uint8_t *pat;
	size_t n;                       /* windows: pattern size - 15 */
	uint32_t *slot;                 /* offset + 1; 0 = empty */
	uint8_t *seen;
};

static size_t
win_hash(const uint8_t *p)
{
	uint64_t k = 0;
	int i;

	for (i = 0; i < 8; i++) {
		k = k << 8 | p[i];
	}
	return (size_t)((k * 0x9e3779b97f4a7c15ull) >> (64 - WIN_BITS));
}

/* windows_init: index every window of pat (len bytes, len - 15 below
 * 2^WIN_BITS / 2).  0, or -1 if out of memory. */
static int
windows_init(struct windows *w, const uint8_t *pat, size_t len)
{
	size_t i, h, mask = ((size_t)1 << WIN_BITS) - 1;

	w->pat = pat;
	w->n = len - WIN_LEN + 1;
	w->slot = calloc(mask + 1, sizeof(*w->slot));
	w->seen = calloc(w->n, 1);
	if (w->slot == NULL || w->seen == NULL) {
		return -1;
	}
	for (i = 0; i < w->n; i++) {
		for (h = win_hash(pat + i); w->slot[h] != 0; h = (h + 1) & mask) {
			continue;
		}
		w->slot[h] = (uint32_t)i + 1;
	}
	return 0;
}

static void
windows_free(struct windows *w)
{
	free(w->slot);
	free(w->seen);
}

/* windows_scan: how many of the pattern's windows occur in data (len
 * bytes), marked in w->seen. */
static size_t
windows_scan(struct windows *w, const uint8_t *data, size_t len)
{
	size_t i, h, off, found = 0, mask = ((size_t)1 << WIN_BITS) - 1;

	memset(w->seen, 0, w->n);
	for (i = 0; i + WIN_LEN <= len; i++) {
		for (h = win_hash(data + i); w->slot[h] != 0; h = (h + 1) & mask) {
			off = w->slot[h] - 1;
			if (memcmp(w->pat + off, data + i, WIN_LEN) == 0) {
				found += !w->seen[off];
				w->seen[off] = 1;
				break;
			}
		}
	}
	return found;
}

/* read_binary: the whole file, as it is (tl_read_file changes NULs),
 * malloc'd, its size in *len; NULL if it can't be read. */
static uint8_t *
read_binary(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL, *nb;
	size_t cap = 0, n = 0, k;

	if (f == NULL) {
		return NULL;
	}
	for (;;) {
		if (n == cap) {
			cap = cap ? 2 * cap : 1 << 20;
			if ((nb = realloc(buf, cap)) == NULL) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
		}
		if ((k = fread(buf + n, 1, cap - n, f)) == 0) {
			break;
		}
		n += k;
	}
	if (ferror(f)) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	*len = n;
	return buf;
}

/* mem_has: needle (n bytes) occurs in data (len bytes). */
static int
mem_has(const uint8_t *data, size_t len, const uint8_t *needle, size_t n)
{
	const uint8_t *p = data, *end = data + len;

	while (n > 0 && (size_t)(end - p) >= n
	       && (p = memchr(p, needle[0], (size_t)(end - p - (ptrdiff_t)n + 1)))
	          != NULL) {
		if (memcmp(p, needle, n) == 0) {
			return 1;
		}
		p++;
	}
	return 0;
}

#define CAP_TOKEN   "capture-token-0a4f7e19c2d8"
#define CAP_PATTERN (64 * 1024)
#define CAP_SEED    51

/*
 * capture_round: capture the control and tunnel ports while a server and
 * client with -token CAP_TOKEN (and -plaintext on both, with plaintext)
 * carry one user who sends the pattern (64 KiB of stream CAP_SEED) to an
 * echo service and gets it back; the payloads seen go to *data (malloc'd,
 * *len bytes).  0, or -1 and fail().
 */
static int
capture_round(struct test *t, int plaintext, uint8_t **data, size_t *len)
{
	const char *kind = plaintext ? "plaintext" : "sealed";
	char file[300], cp[16], tp[16], name[32];
	const char *argv[6] = { tl_h.self, "--capture", file, cp, tp, NULL };
	unsigned long segs, bytes, dropped, truncated;
	struct tl_proc *cap, *server, *client;
	char *log, *line;
	int p[4], ok;

	if (pick_server_ports(t, p, 4) < 0) {
		return -1;
	}
	snprintf(file, sizeof(file), "%s/capture-%s.bin", t->dir, kind);
	snprintf(cp, sizeof(cp), "%d", t->ctl);
	snprintf(tp, sizeof(tp), "%d", t->tun);
	snprintf(name, sizeof(name), "capture-%s", kind);
	if ((cap = start(t, name, argv, NULL, 0)) == NULL
	    || wait_log(t, cap, "ready", START_MS) < 0) {
		return -1;
	}
	snprintf(name, sizeof(name), "svc-%s", kind);
	if (start_svc(t, name, "echo", p[3], NULL) == NULL) {
		return -1;
	}
	snprintf(name, sizeof(name), "server-%s", kind);
	server = start_server(t, name, "-token", CAP_TOKEN,
	                      plaintext ? "-plaintext" : NULL, NULL);
	snprintf(name, sizeof(name), "client-%s", kind);
	if (server == NULL
	    || (client = start_client(t, name, t->ctl, p[3], NULL, 1, "-token",
	                              CAP_TOKEN, plaintext ? "-plaintext" : NULL,
	                              NULL)) == NULL
	    || echo_user(t, t->pub, CAP_PATTERN, CAP_SEED, "the pattern, echoed")
	       < 0) {
		return -1;
	}
	if (plaintext && expect_log(t, server, "(plaintext tunnels)") < 0) {
		return -1;
	}
	kill(cap->pid, SIGTERM);
	if (!tl_proc_wait(cap, STOP_MS) || !WIFEXITED(cap->status)
	    || WEXITSTATUS(cap->status) != 0) {
		return fail(t, "%s did not stop with exit 0", cap->name);
	}
	log = tl_read_file(cap->log, NULL);
	line = log ? strstr(log, "captured ") : NULL;
	ok = line != NULL && sscanf(line, "captured %lu segments, %lu bytes, %lu "
	                            "dropped, %lu truncated", &segs, &bytes,
	                            &dropped, &truncated) == 4;
	free(log);
	if (!ok) {
		return fail(t, "%s: no \"captured\" line", cap->name);
	}
	printf("# %s: %lu segments, %lu bytes on ports %d and %d, %lu dropped, "
	       "%lu truncated\n", kind, segs, bytes, t->ctl, t->tun, dropped,
	       truncated);
	if (dropped > 0 || truncated > 0) {
		return fail(t, "%s: the capture missed packets", kind);
	}
	/* Both ways through the tunnel: at least twice the pattern. */
	if (bytes < 2 * CAP_PATTERN) {
		return fail(t, "%s: %lu bytes captured, want at least %d", kind,
		            bytes, 2 * CAP_PATTERN);
	}
	*data = read_binary(file, len);
	if (*data == NULL || *len != bytes) {
		return fail(t, "%s: reading %s: %zu bytes of %lu", file, kind,
		            *data ? *len : 0, bytes);
	}
	if (stop(t, client) < 0 || stop(t, server) < 0) {
		return -1;
	}
	return 0;
}

/*
 * capture: what a recording of the wire shows.  With -token on both ends,
 * the control and tunnel connections never show a 16-byte window of the
 * 64 KiB pattern a user sent both ways, nor the token, nor any 8 bytes of
 * the psk derived from it (the client's run id travels sealed too, but is
 * not observable from outside to look for).  With -plaintext on both, the
 * pattern does show, which proves the capture sees the tunnel.  Needs
 * root for the packet socket: skipped without it, failed with CI=true.
 */
static void
test_capture(struct test *t)
{
	uint8_t *pat = NULL, *data = NULL, psk[KEY_LEN];
	struct windows w = { NULL, 0, NULL, NULL };
	struct tl_stream s;
	size_t len = 0, found, i;
	int fd, round;

#ifndef CAPTURE_PACKET
	t->skip = "built without packet-socket headers (musl); the glibc "
	          "builds run the capture";
	return;
#endif
	if ((fd = capture_open()) < 0) {
		if ((errno == EPERM || errno == EACCES || errno == ENOSYS)
		    && !tl_in_ci()) {
			t->skip = "no packet socket for the capture (needs root on "
			          "Linux)";
		} else if (errno == EPERM || errno == EACCES || errno == ENOSYS) {
			fail(t, "no packet socket for the capture (%s), and CI=true: "
			     "CI runs the tests as root", strerror(errno));
		} else {
			fail(t, "packet socket on lo: %s", strerror(errno));
		}
		return;
	}
	close(fd);
	pat = malloc(CAP_PATTERN);
	if (pat == NULL) {
		fail(t, "out of memory");
		return;
	}
	tl_stream_init(&s, CAP_SEED);
	tl_stream_fill(&s, pat, CAP_PATTERN);
	psk_derive(CAP_TOKEN, strlen(CAP_TOKEN), psk);
	if (windows_init(&w, pat, CAP_PATTERN) < 0) {
		fail(t, "out of memory");
		goto out;
	}
	for (round = 0; round < 2; round++) {
		const char *kind = round ? "plaintext" : "sealed";

		free(data);
		data = NULL;
		if (capture_round(t, round, &data, &len) < 0) {
			goto out;
		}
		found = windows_scan(&w, data, len);
		printf("# %s: %zu of the pattern's %zu windows of %d bytes seen\n",
		       kind, found, w.n, WIN_LEN);
		if (mem_has(data, len, (const uint8_t *)CAP_TOKEN,
		            strlen(CAP_TOKEN))) {
			fail(t, "%s: the token is on the wire", kind);
			goto out;
		}
		for (i = 0; i + 8 <= KEY_LEN; i++) {
			if (mem_has(data, len, psk + i, 8)) {
				fail(t, "%s: bytes %zu-%zu of the psk are on the wire",
				     kind, i, i + 7);
				goto out;
			}
		}
		if (round == 0 && found > 0) {
			fail(t, "sealed: %zu windows of the pattern are on the wire",
			     found);
			goto out;
		}
		/* Raw, each way: all but the windows that span two segments. */
		if (round == 1 && found < w.n / 2) {
			fail(t, "plaintext: only %zu of %zu windows of the pattern on "
			     "the wire: the capture does not see the tunnel", found,
			     w.n);
			goto out;
		}
		/* And the search that looked for the token finds them too. */
		for (i = 0; round == 1 && !w.seen[i]; i++) {
			continue;
		}
		if (round == 1 && !mem_has(data, len, pat + i, WIN_LEN)) {
			fail(t, "plaintext: mem_has misses a window of the pattern");
			goto out;
		}
	}
out:
	windows_free(&w);
	free(data);
	free(pat);
}

/* ==== test: a session resumed by its own client =========================== */

/* The same client process (same run id) back on a second control
 * connection while its first session still stands: it gets WELCOME, the
 * old connection is closed, and users go to the new session.  Another
 * client (another run id) is still refused as busy, told who holds the
 * port. */
static void
test_session_resume(struct test *t)
{
	static const char hello[] = "a user of the resumed session\n";
	static const char reply[] = "answered through the new session\n";
	uint8_t join[FRAME_HDR + FRAME_MAX];
	char a_addr[64], b_addr[64], ua[64], src[64], want[160];
	struct tl_proc *server;
	struct fake a, b, c;
	struct chan tun;
	struct msg m;
	size_t join_n;
	int u, sealed;

	if ((server = proto_server(t)) == NULL || fake_attach(t, &a, 0) < 0
	    || wait_log(t, server, "attached: serving public port", IO_MS) < 0) {
		return;
	}
	user_addr(a.ctl.fd, a_addr);
	/* fake_attach_as fails on anything but WELCOME, ERROR busy included. */
	if (fake_attach_as(t, &b, 0, a.run_id) < 0) {
		return;
	}
	user_addr(b.ctl.fd, b_addr);
	snprintf(want, sizeof(want), "client %s detached: replaced by its own "
	         "reconnect", a_addr);
	if (expect_closed(t, a.ctl.fd, 3000, "session A's control connection")
	    < 0
	    || wait_log(t, server, want, 3000) < 0
	    || tl_wait_log_count(server, "attached: serving public port", 2,
	                         IO_MS) != 1) {
		fail(t, "the server did not log the second session's attach");
		return;
	}

	/* Another client process: refused, and told who serves the port,
	 * sealed in the REPLY since its AUTH opened. */
	if (fake_hello(t, &c) < 0 || fake_send_auth(t, &c, TOKEN, 0) < 0
	    || expect_reply(t, &c, MSG_ERROR, &m, IO_MS, "a third client",
	                    &sealed) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "public port %d is already served by %s",
	         t->pub, b_addr);
	if (m.code != ERR_BUSY || strstr(m.text, want) == NULL || !sealed) {
		fail(t, "third client: ERROR code %d \"%s\"%s, want %d \"%s\" "
		     "sealed", m.code, m.text, sealed ? "" : " in the clear",
		     ERR_BUSY, want);
		return;
	}
	if (expect_closed(t, c.ctl.fd, 3000, "the refused third client") < 0
	    || wait_log(t, server, want, 3000) < 0) {
		return;
	}

	/* Users go to session B, and B's keys join them. */
	if ((u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	if (send_bytes(t, u, hello, sizeof(hello) - 1, "user") < 0
	    || expect_msg(t, &b.ctl, MSG_NEW_USER, &m, IO_MS, "session B") < 0) {
		return;
	}
	wire_addr_str(&m.src, src, sizeof(src));
	if (strcmp(src, user_addr(u, ua)) != 0) {
		fail(t, "NEW_USER on session B names %s, want the user's %s", src, ua);
		return;
	}
	join_n = join_make(&b, m.user_id, 0, join, &tun);
	if ((tun.fd = tunnel_join(t, join, join_n, "JOIN with B's keys")) < 0
	    || chan_expect_bytes(t, &tun, hello, sizeof(hello) - 1,
	                         "the user's bytes on B's tunnel") < 0) {
		return;
	}
	if (chan_send_bytes(t, &tun, reply, sizeof(reply) - 1, "tunnel") < 0
	    || expect_bytes(t, u, reply, sizeof(reply) - 1,
	                    "the reply at the user") < 0
	    || expect_alive(t, server) < 0) {
		return;
	}
}

/* ==== test: joined pairs outlive their control connection ================= */

/* One direction of a transfer that pump() drives: n bytes of a seeded
 * stream written on wfd must come out, byte for byte, on rfd (which may
 * be wfd itself, through an echo service).  A sealed tunnel's end (wch,
 * rch) carries the stream in records. */
struct lane {
	int wfd, rfd;
	struct chan *wch, *rch;        /* NULL: raw bytes on wfd, rfd */
	uint32_t seed;
	struct tl_stream ws, rs;
	uint8_t wbuf[RECORD_HDR + RECORD_MAX + TAG_LEN];
	size_t woff, wlen;             /* wire bytes not yet sent */
	size_t sent, got;              /* stream bytes put in wbuf, checked */
};

static void
lane_init(struct lane *l, int wfd, int rfd, uint32_t seed)
{
	memset(l, 0, sizeof(*l));
	l->wfd = wfd;
	l->rfd = rfd;
	l->seed = seed;
	tl_stream_init(&l->ws, seed);
	tl_stream_init(&l->rs, seed);
}

/* lane_init_ch: lane_init with either end a tunnel (NULL: the user's
 * fd, ufd). */
static void
lane_init_ch(struct lane *l, struct chan *wch, struct chan *rch, int ufd,
             uint32_t seed)
{
	lane_init(l, wch ? wch->fd : ufd, rch ? rch->fd : ufd, seed);
	l->wch = wch;
	l->rch = rch;
}

/*
 * pump: run the lanes at once, n bytes each, until every byte has been
 * read back and checked, within IO_MS.  Writing and reading interleave,
 * so no lane waits on a buffer another fills.  0, or -1 and fail().
 */
static int
pump(struct test *t, struct lane *l, int nl, size_t n, const char *what)
{
	int64_t deadline = tl_now_ms() + IO_MS;
	struct pollfd pfd[8];
	uint8_t buf[RECORD_MAX];
	const char *how;
	int i, r, done;
	ssize_t k;
	size_t j, c;

	for (;;) {
		done = 1;
		for (i = 0; i < nl; i++) {
			pfd[2 * i].fd = l[i].sent < n || l[i].wlen > 0 ? l[i].wfd : -1;
			pfd[2 * i].events = POLLOUT;
			pfd[2 * i + 1].fd = l[i].got < n ? l[i].rfd : -1;
			pfd[2 * i + 1].events = POLLIN;
			pfd[2 * i].revents = pfd[2 * i + 1].revents = 0;
			if (l[i].got < n) {
				done = 0;
			}
		}
		if (done) {
			return 0;
		}
		r = poll(pfd, (nfds_t)(2 * nl), tl_left(deadline));
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0) {
			return fail(t, "%s: poll: %s", what, strerror(errno));
		}
		if (r == 0) {
			for (i = 0; i < nl && l[i].got == n; i++) {
				continue;
			}
			return fail(t, "%s: stream %u: %zu of %zu bytes sent, %zu "
			            "received after %d ms", what, l[i].seed, l[i].sent,
			            n, l[i].got, IO_MS);
		}
		for (i = 0; i < nl; i++) {
			struct lane *x = &l[i];

			if (pfd[2 * i].revents && (x->sent < n || x->wlen > 0)) {
				if (x->wlen == 0) {
					c = n - x->sent < RECORD_MAX ? n - x->sent : RECORD_MAX;
					x->woff = 0;
					if (x->wch != NULL) {
						tl_stream_fill(&x->ws, buf, c);
						x->wlen = record_seal(&x->wch->tx, buf, c, x->wbuf);
					} else {
						tl_stream_fill(&x->ws, x->wbuf, c);
						x->wlen = c;
					}
					x->sent += c;
				}
				k = send(x->wfd, x->wbuf + x->woff, x->wlen, MSG_NOSIGNAL);
				if (k < 0 && errno != EAGAIN && errno != EINTR) {
					return fail(t, "%s: stream %u: send after %zu bytes: %s",
					            what, x->seed, x->sent, strerror(errno));
				}
				if (k > 0) {
					x->woff += (size_t)k;
					x->wlen -= (size_t)k;
				}
			}
			if (pfd[2 * i + 1].revents && x->got < n && x->rch != NULL) {
				/* A whole record, which its sender sends at once. */
				r = read_record(x->rch, buf, &c, deadline, &how);
				if (r != RF_OK || c == 0 || c > n - x->got) {
					return fail(t, "%s: stream %u: %s after %zu of %zu "
					            "bytes", what, x->seed, r == RF_CLOSED ? how
					            : r == RF_TIMEOUT ? "timeout" : r == RF_BAD
					            ? "a record that does not open" : c == 0
					            ? "the end record" : "too long a record",
					            x->got, n);
				}
				k = (ssize_t)c;
			} else if (pfd[2 * i + 1].revents && x->got < n) {
				size_t want = n - x->got < sizeof(buf) ? n - x->got
				                                        : sizeof(buf);

				k = read(x->rfd, buf, want);
				if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
					continue;
				}
				if (k <= 0) {
					return fail(t, "%s: stream %u: %s after %zu of %zu "
					            "bytes", what, x->seed,
					            k == 0 ? "EOF" : strerror(errno), x->got, n);
				}
			} else {
				continue;
			}
			for (j = 0; j < (size_t)k; j++) {
				if (buf[j] != tl_stream_byte(&x->rs)) {
					return fail(t, "%s: stream %u: byte %zu differs",
					            what, x->seed, x->got + j);
				}
			}
			x->got += (size_t)k;
		}
	}
}

#define SURVIVE_BYTES (100 * 1024)
#define ROUNDS        5
#define ROUND_BYTES   1000

/* A joined pair relays on, both ways and through a half-close, after its
 * session's control connection is gone. */
static void
test_pairs_survive_control_drop(struct test *t)
{
	static const char hello[] = "first bytes, before the drop\n";
	static const char reply[] = "first reply\n";
	static const char tail[] = "after the user's EOF\n";
	uint8_t join[FRAME_HDR + FRAME_MAX];
	char fa[64], want[160];
	struct tl_proc *server;
	struct lane l[2];
	struct chan tun;
	struct fake f;
	struct msg m;
	size_t join_n;
	unsigned long long in, out;
	int u, i;

	if ((server = proto_server(t)) == NULL || fake_attach(t, &f, 0) < 0
	    || (u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	if (send_bytes(t, u, hello, sizeof(hello) - 1, "user") < 0
	    || expect_msg(t, &f.ctl, MSG_NEW_USER, &m, IO_MS, "control") < 0) {
		return;
	}
	join_n = join_make(&f, m.user_id, 0, join, &tun);
	if ((tun.fd = tunnel_join(t, join, join_n, "JOIN")) < 0
	    || chan_expect_bytes(t, &tun, hello, sizeof(hello) - 1,
	                         "the user's bytes on the tunnel") < 0) {
		return;
	}
	if (chan_send_bytes(t, &tun, reply, sizeof(reply) - 1, "tunnel") < 0
	    || expect_bytes(t, u, reply, sizeof(reply) - 1,
	                    "the reply at the user") < 0
	    || wait_log(t, server, "joined after", IO_MS) < 0) {
		return;
	}

	/* The client goes away: its session ends, the pair must not. */
	user_addr(f.ctl.fd, fa);
	user_close(t, f.ctl.fd);
	snprintf(want, sizeof(want), "client %s detached: connection closed", fa);
	if (wait_log(t, server, want, IO_MS) < 0) {
		return;
	}
	for (i = 0; i < ROUNDS; i++) {
		lane_init_ch(&l[0], NULL, &tun, u, 100 + (uint32_t)i);
		if (pump(t, l, 1, ROUND_BYTES, "round trip, user to tunnel") < 0) {
			return;
		}
		lane_init_ch(&l[0], &tun, NULL, u, 200 + (uint32_t)i);
		if (pump(t, l, 1, ROUND_BYTES, "round trip, tunnel to user") < 0) {
			return;
		}
	}
	lane_init_ch(&l[0], NULL, &tun, u, 7);
	lane_init_ch(&l[1], &tun, NULL, u, 8);
	if (pump(t, l, 2, SURVIVE_BYTES, "100 KiB each way at once") < 0) {
		return;
	}

	/* Half-close: the user's EOF reaches the tunnel (the end record,
	 * then a FIN), and the other way still carries bytes until the
	 * tunnel ends too. */
	if (shutdown(u, SHUT_WR) < 0) {
		fail(t, "user: shutdown: %s", strerror(errno));
		return;
	}
	if (chan_expect_eof(t, &tun, IO_MS, "the tunnel after the user's "
	                    "shutdown") < 0
	    || chan_send_bytes(t, &tun, tail, sizeof(tail) - 1,
	                       "tunnel, after the half-close") < 0) {
		return;
	}
	if (expect_bytes(t, u, tail, sizeof(tail) - 1,
	                 "bytes to the user after its EOF") < 0) {
		return;
	}
	if (chan_end(t, &tun, "tunnel") < 0) {
		return;
	}
	if (expect_eof(t, u, IO_MS, "the user after the tunnel's shutdown") < 0) {
		return;
	}
	in = sizeof(hello) - 1 + ROUNDS * ROUND_BYTES + SURVIVE_BYTES;
	out = sizeof(reply) - 1 + ROUNDS * ROUND_BYTES + SURVIVE_BYTES
	      + sizeof(tail) - 1;
	snprintf(want, sizeof(want), "closed: %llu bytes in, %llu out", in, out);
	if (wait_log(t, server, want, IO_MS) < 0) {
		return;
	}
}

/* ---- the control-cutting proxy -------------------------------------------- */

/*
 * tests/features --cut-proxy PORT TARGET: relay each connection to
 * 127.0.0.1:PORT to 127.0.0.1:TARGET; on SIGUSR1 close all of them at once
 * (printing "cut N") and go on accepting.  It stands between a real client
 * and the server's control port, so the control connection can be dropped
 * while the tunnels, which go to the server directly, are left alone.
 */
#define CUT_MAX 16

static volatile sig_atomic_t cut_wanted, cut_stop;

static void
on_cut_signal(int sig)
{
	if (sig == SIGUSR1) {
		cut_wanted = 1;
	} else {
		cut_stop = 1;
	}
}

static int
cut_proxy(const char *port, const char *target)
{
	struct pollfd pfd[1 + 2 * CUT_MAX];
	int fd[CUT_MAX][2], dead[CUT_MAX];
	uint8_t buf[16384];
	struct sigaction sa;
	int lfd, n = 0, cuts = 0, i, k, a, b;
	ssize_t r;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_cut_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	lfd = tl_listen("127.0.0.1", atoi(port));
	if (lfd < 0 || tl_set_nonblock(lfd) < 0) {
		fprintf(stderr, "cut-proxy: listen on %s: %s\n", port,
		        strerror(errno));
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	while (!cut_stop) {
		if (cut_wanted) {
			cut_wanted = 0;
			for (i = 0; i < n; i++) {
				close(fd[i][0]);
				close(fd[i][1]);
			}
			printf("cut %d: %d connections\n", ++cuts, n);
			fflush(stdout);
			n = 0;
		}
		pfd[0].fd = lfd;
		pfd[0].events = POLLIN;
		for (i = 0; i < n; i++) {
			for (k = 0; k < 2; k++) {
				pfd[1 + 2 * i + k].fd = fd[i][k];
				pfd[1 + 2 * i + k].events = POLLIN;
			}
		}
		/* A bounded wait, so a SIGUSR1 that lands just before poll is
		 * seen soon all the same. */
		if (poll(pfd, (nfds_t)(1 + 2 * n), 50) <= 0) {
			continue;
		}
		for (i = 0; i < n; i++) {
			dead[i] = 0;
			for (k = 0; k < 2 && !dead[i]; k++) {
				if (pfd[1 + 2 * i + k].revents == 0) {
					continue;
				}
				r = read(fd[i][k], buf, sizeof(buf));
				if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
					continue;
				}
				/* Control connections never half-close: an end is
				 * the end of both. */
				if (r <= 0 || tl_write_all(fd[i][1 - k], buf, (size_t)r,
				                           tl_now_ms() + 2000) < 0) {
					dead[i] = 1;
				}
			}
		}
		for (i = n - 1; i >= 0; i--) {
			if (dead[i]) {
				close(fd[i][0]);
				close(fd[i][1]);
				fd[i][0] = fd[n - 1][0];
				fd[i][1] = fd[n - 1][1];
				n--;
			}
		}
		if ((pfd[0].revents & POLLIN) && (a = accept(lfd, NULL, NULL)) >= 0) {
			b = n < CUT_MAX ? tl_connect("127.0.0.1", atoi(target),
			                             tl_now_ms() + 2000) : -1;
			if (b < 0 || tl_set_nonblock(a) < 0) {
				close(a);
				if (b >= 0) {
					close(b);
				}
				continue;
			}
			fd[n][0] = a;
			fd[n][1] = b;
			n++;
		}
	}
	return 0;
}

/* The same with the real ./client: a user relaying through it keeps going,
 * byte for byte, after its control connection is cut under it, and the
 * client comes back for the next user. */
static void
test_pairs_survive_control_drop_client(struct test *t)
{
	struct tl_proc *server, *proxy, *client;
	char pp[16], cp[16], want[160];
	const char *argv[5] = { tl_h.self, "--cut-proxy", pp, cp, NULL };
	struct lane l[1];
	int p[5], u;

	if (pick_server_ports(t, p, 5) < 0) {
		return;
	}
	snprintf(pp, sizeof(pp), "%d", p[4]);
	snprintf(cp, sizeof(cp), "%d", t->ctl);
	if (start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", NULL)) == NULL
	    || (proxy = start(t, "cut-proxy", argv, NULL, 0)) == NULL
	    || wait_log(t, proxy, "ready", START_MS) < 0
	    /* No pool: the pair is one that waited for its JOIN, and no
	     * TICKET is in flight for the cut to turn into a reset. */
	    || (client = start_client(t, "client", p[4], p[3], NULL, 0,
	                              "-pool", "0", NULL)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0
	    || (u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	lane_init(&l[0], u, u, 21);
	if (pump(t, l, 1, 64 * 1024, "64 KiB echoed before the cut") < 0) {
		return;
	}
	kill(proxy->pid, SIGUSR1);
	if (wait_log(t, proxy, "cut 1: 1 connections", IO_MS) < 0
	    || wait_log(t, server, "detached: connection closed", IO_MS) < 0
	    || wait_log(t, client, "lost connection", IO_MS) < 0) {
		return;
	}
	lane_init(&l[0], u, u, 22);
	if (pump(t, l, 1, SURVIVE_BYTES, "100 KiB echoed after the cut") < 0) {
		return;
	}
	if (shutdown(u, SHUT_WR) < 0) {
		fail(t, "user: shutdown: %s", strerror(errno));
		return;
	}
	if (expect_eof(t, u, IO_MS, "the user after its shutdown") < 0) {
		return;
	}
	/* Both ends count every byte of the pair, before and after. */
	snprintf(want, sizeof(want), "closed: %d bytes in, %d out",
	         64 * 1024 + SURVIVE_BYTES, 64 * 1024 + SURVIVE_BYTES);
	if (wait_log(t, server, want, IO_MS) < 0
	    || wait_log(t, client, want, IO_MS) < 0) {
		return;
	}
	/* Back through the proxy, as the same process: attached again. */
	if (tl_wait_log_count(client, "forwarding", 2, START_MS) != 1) {
		fail(t, "the client did not attach again after the cut");
		return;
	}
	if (echo_user(t, t->pub, 3000, 23, "a user after the reconnect") < 0) {
		return;
	}
}

/* ==== test: the cap on users waiting for their tunnel ===================== */

#define PENDING_CAP    4096    /* server.c's MAX_PENDING, from the README */
#define PENDING_EXTRA  50
#define PENDING_FLIGHT 512     /* connected users not yet announced */

/* The control connection of the pending test, read without blocking. */
struct announcements {
	uint8_t buf[RECORD_HDR + FRAME_HDR + FRAME_MAX + TAG_LEN + 8192];
	size_t len;
	int count;                 /* NEW_USERs so far */
	const int *index_of_port;  /* source port -> our user, or -1 */
	uint8_t *announced;        /* per user */
};

/* read_announcements: read what ctl (sealed) holds, waiting up to ms
 * for it; count NEW_USERs and mark whose they are; answer PINGs.  0, or
 * -1 and fail() on anything else, or a NEW_USER for a stranger or a
 * second time. */
static int
read_announcements(struct test *t, struct chan *ctl, struct announcements *a,
                   int ms)
{
	struct msg m, pong;
	size_t used, plen, fused;
	ssize_t r;
	int i;

	if (tl_wait_fd(ctl->fd, POLLIN, tl_now_ms() + ms) <= 0) {
		return 0;
	}
	for (;;) {
		r = read(ctl->fd, a->buf + a->len, sizeof(a->buf) - a->len);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 0;
		}
		if (r <= 0) {
			return fail(t, "control: %s after %d NEW_USERs",
			            r == 0 ? "EOF" : strerror(errno), a->count);
		}
		a->len += (size_t)r;
		for (;;) {
			enum frame_result fr = record_open(&ctl->rx, a->buf, a->len,
			                                   &used, &plen);

			if (fr == FRAME_MORE) {
				break;
			}
			if (fr == FRAME_BAD) {
				return fail(t, "control: a record that does not open");
			}
			if (frame_decode(a->buf + RECORD_HDR, plen, &m, &fused)
			    != FRAME_OK || fused != plen) {
				return fail(t, "control: a record that holds no frame");
			}
			memmove(a->buf, a->buf + used, a->len - used);
			a->len -= used;
			if (m.type == MSG_PING) {
				memset(&pong, 0, sizeof(pong));
				pong.type = MSG_PONG;
				if (send_msg(t, ctl, &pong, NULL, NULL, "control") < 0) {
					return -1;
				}
				continue;
			}
			if (m.type != MSG_NEW_USER) {
				return fail(t, "control: %s (code %d \"%s\") after %d "
				            "NEW_USERs", msg_name(m.type), m.code, m.text,
				            a->count);
			}
			i = a->index_of_port[m.src.port];
			if (i < 0 || a->announced[i]) {
				return fail(t, "NEW_USER #%d names port %d: %s", a->count + 1,
				            m.src.port, i < 0 ? "not one of our users"
				            : "announced before");
			}
			a->announced[i] = 1;
			a->count++;
		}
	}
}

/* 4096 users wait for their tunnel at most: the 4097th and later are
 * closed at once, with one log line per 10 s; the announced ones are left
 * alone, and the server goes on. */
static void
test_pending_cap(struct test *t)
{
	enum { N = PENDING_CAP + PENDING_EXTRA };
	struct announcements *a = NULL;
	struct pollfd *pfd = NULL;
	int *fds = NULL, *index_of_port = NULL;
	uint8_t *closed = NULL;
	struct tl_proc *server;
	struct rlimit rl, saved;
	struct fake f;
	struct msg m;
	int64_t t0, deadline, last = 0;
	int opened = 0, nclosed = 0, i, lines, raised = 0;
	char ua[64];

	if (getrlimit(RLIMIT_NOFILE, &saved) < 0) {
		fail(t, "getrlimit: %s", strerror(errno));
		return;
	}
	rl = saved;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < N + 300) {
		t->skip = "RLIMIT_NOFILE hard limit below 4396";
		return;
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < N + 300) {
		rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? N + 1000 : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			fail(t, "setrlimit: %s", strerror(errno));
			return;
		}
		raised = 1;
	}
	a = calloc(1, sizeof(*a));
	fds = malloc(N * sizeof(*fds));
	index_of_port = malloc(65536 * sizeof(*index_of_port));
	closed = calloc(N, 1);
	pfd = calloc(N, sizeof(*pfd));
	if (a == NULL || fds == NULL || index_of_port == NULL || closed == NULL
	    || pfd == NULL || (a->announced = calloc(N, 1)) == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	for (i = 0; i < 65536; i++) {
		index_of_port[i] = -1;
	}
	a->index_of_port = index_of_port;
	if ((server = proto_server(t)) == NULL || fake_attach(t, &f, 0) < 0) {
		goto out;
	}

	/* Users arrive as fast as the server announces them: a few hundred
	 * ahead at most, so neither the accept queue nor the 64 KiB control
	 * queue fills and nobody is turned away before the cap. */
	t0 = tl_now_ms();
	deadline = t0 + 20000;
	while (opened < N) {
		while (opened < N && opened - a->count < PENDING_FLIGHT) {
			int fd = tl_connect("127.0.0.1", t->pub, tl_now_ms() + 5000);

			if (fd < 0) {
				fail(t, "user %d: connect: %s", opened + 1, strerror(errno));
				goto out;
			}
			fds[opened] = fd;
			index_of_port[tl_local_port(fd)] = opened;
			opened++;
		}
		if (read_announcements(t, &f.ctl, a, 100) < 0) {
			goto out;
		}
		if (tl_now_ms() >= deadline) {
			fail(t, "%d users connected, %d announced, after 20 s", opened,
			     a->count);
			goto out;
		}
	}
	last = tl_now_ms();
	deadline = last + 10000;
	while (a->count < PENDING_CAP) {
		if (read_announcements(t, &f.ctl, a, 100) < 0) {
			goto out;
		}
		if (tl_now_ms() >= deadline) {
			fail(t, "%d of %d users announced 10 s after the last came",
			     a->count, PENDING_CAP);
			goto out;
		}
	}
	if (tl_now_ms() > last) {
		last = tl_now_ms();
	}

	/* The 50 past the cap are closed at once; none of the others is. */
	for (i = 0; i < N; i++) {
		pfd[i].fd = fds[i];
		pfd[i].events = POLLIN;
	}
	deadline = last + 2000;
	while (nclosed < PENDING_EXTRA || tl_now_ms() < last + 300) {
		int r = poll(pfd, (nfds_t)N, tl_left(nclosed < PENDING_EXTRA
		                                     ? deadline : last + 300));

		if (r < 0 && errno != EINTR) {
			fail(t, "poll: %s", strerror(errno));
			goto out;
		}
		for (i = 0; r > 0 && i < N; i++) {
			uint8_t b;

			if (pfd[i].fd < 0 || pfd[i].revents == 0) {
				continue;
			}
			if (recv(fds[i], &b, 1, 0) > 0) {
				fail(t, "user %d: the server sent it a byte", i + 1);
				goto out;
			}
			pfd[i].fd = -1;
			closed[i] = 1;
			nclosed++;
		}
		if (tl_now_ms() >= deadline) {
			break;
		}
	}
	for (i = 0; i < N; i++) {
		if (closed[i] == a->announced[i]) {
			fail(t, "user %d (%s) was %s, and %s; %d closed in all, %d "
			     "announced", i + 1, user_addr(fds[i], ua),
			     a->announced[i] ? "announced" : "not announced",
			     closed[i] ? "closed" : "left open", nclosed, a->count);
			goto out;
		}
	}
	/* Nothing more on control: the cap holds. */
	if (read_announcements(t, &f.ctl, a, 200) < 0) {
		goto out;
	}
	if (a->count != PENDING_CAP) {
		fail(t, "%d NEW_USERs, want %d", a->count, PENDING_CAP);
		goto out;
	}
	if (wait_log(t, server, "already wait for their tunnel", 3000) < 0) {
		goto out;
	}
	lines = tl_count_in_file(server->log, "already wait for their tunnel");
	if (lines > 2) {
		fail(t, "%d log lines say users already wait, want 1 or 2", lines);
		goto out;
	}
	printf("# %d users announced and %d closed in %.1f s; %d such log "
	       "line(s)\n", a->count, nclosed, (double)(last - t0) / 1000.0,
	       lines);

	/* The waiting users leave (with a reset, so no port lingers in
	 * TIME_WAIT); the server notices each, and takes users again. */
	for (i = 0; i < N; i++) {
		tl_reset_close(fds[i]);
	}
	opened = 0;
	if (wait_log(t, server, "reset before its tunnel was ready", IO_MS) < 0
	    || tl_wait_log_count(server, "reset before its tunnel was ready",
	                         PENDING_CAP, IO_MS) != 1) {
		fail(t, "the server did not see all 4096 waiting users go");
		goto out;
	}
	memset(&m, 0, sizeof(m));
	m.type = MSG_PING;
	if (expect_alive(t, server) < 0
	    || send_msg(t, &f.ctl, &m, NULL, NULL, "control") < 0
	    || expect_msg(t, &f.ctl, MSG_PONG, &m, IO_MS, "control") < 0
	    || user_open(t, "127.0.0.1", t->pub) < 0
	    || expect_msg(t, &f.ctl, MSG_NEW_USER, &m, IO_MS,
	                  "a user after the others left") < 0) {
		goto out;
	}
out:
	for (i = 0; i < opened; i++) {
		close(fds[i]);
	}
	if (raised) {
		setrlimit(RLIMIT_NOFILE, &saved);
	}
	if (a != NULL) {
		free(a->announced);
	}
	free(a);
	free(fds);
	free(index_of_port);
	free(closed);
	free(pfd);
}

/* ==== test: out of file descriptors ======================================= */

#define EMFILE_LIMIT  64       /* the server's RLIMIT_NOFILE */
#define EMFILE_SILENT 100      /* silent tunnel connections to exhaust it */
#define EMFILE_CPU_MS 300      /* most CPU time it may use in the window */
#define EMFILE_WINDOW 2000

/* The server with a hard limit of 64 descriptors, exhausted by silent
 * tunnel connections: new connections are closed at once, the loop does
 * not spin, one warning is logged, and once descriptors are free again a
 * real client attaches and serves a user. */
static void
test_emfile(struct test *t)
{
	static const char *const srcs[] = {
		"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
	};
	char c[64], u[64], pb[64], lim[16], want[64];
	const char *argv[16] = {
		tl_h.self, "--nofile", lim, "./server",
		"-control", c, "-tunnel", u, "-public", pb, NULL
	};
	int silent[EMFILE_SILENT], nsilent = 0, shed = 0, pokes = 0, base, i, k;
	int p[4];
	struct tl_proc *server, *client;
	long cpu0, cpu1;
	int64_t deadline, end;

	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	snprintf(lim, sizeof(lim), "%d", EMFILE_LIMIT);
	tl_fmt_addr(c, "127.0.0.1", t->ctl);
	tl_fmt_addr(u, "127.0.0.1", t->tun);
	tl_fmt_addr(pb, "127.0.0.1", t->pub);
	if ((server = start(t, "server", argv, NULL, 0)) == NULL) {
		return;
	}
	server->product = 1;     /* ./server, through our --nofile */
	snprintf(want, sizeof(want), "fd limit %d,", EMFILE_LIMIT);
	if (wait_log(t, server, "listening", START_MS) < 0
	    || expect_log(t, server, want) < 0
	    || start_svc(t, "svc", "echo", p[3], NULL) == NULL) {
		goto out;
	}

	if ((base = tl_count_fds(server->pid)) < 0) {
		t->skip = "no /proc/PID/fd";
		goto out;
	}
	/* Silent tunnel connections, from several addresses, until the
	 * server has no descriptor left: it holds each for 5 s. */
	for (i = 0; i < EMFILE_SILENT; i++) {
		silent[i] = tl_connect_start(srcs[i % 4], "127.0.0.1", t->tun);
		if (silent[i] < 0) {
			fail(t, "silent connection %d: %s", i + 1, strerror(errno));
			goto out;
		}
		nsilent++;
	}
	deadline = tl_now_ms() + 5000;
	for (i = 0; i < nsilent; i++) {
		if (tl_wait_fd(silent[i], POLLOUT, deadline) <= 0
		    || tl_connect_result(silent[i]) < 0) {
			fail(t, "silent connection %d did not connect", i + 1);
			goto out;
		}
	}
	if (wait_log(t, server, "out of file descriptors", 3000) < 0) {
		goto out;
	}
	deadline = tl_now_ms() + 3000;
	while ((k = tl_count_fds(server->pid)) != EMFILE_LIMIT) {
		if (tl_now_ms() >= deadline) {
			fail(t, "the server holds %d descriptors, want all %d", k,
			     EMFILE_LIMIT);
			goto out;
		}
		tl_pause(20);
	}
	/* All it could hold are held; the others are closed as the server
	 * gets to them in its accept queue. */
	deadline = tl_now_ms() + 3000;
	for (;;) {
		for (i = 0, shed = 0; i < nsilent; i++) {
			uint8_t b;

			if (tl_wait_fd(silent[i], POLLIN, tl_now_ms()) > 0
			    && recv(silent[i], &b, 1, MSG_PEEK) <= 0) {
				shed++;
			}
		}
		if (shed >= EMFILE_SILENT - (EMFILE_LIMIT - base)
		    || tl_now_ms() >= deadline) {
			break;
		}
		tl_pause(20);
	}
	if (shed != EMFILE_SILENT - (EMFILE_LIMIT - base)) {
		fail(t, "%d of %d silent connections closed at once, want %d: the "
		     "server had %d descriptors of %d before them", shed,
		     EMFILE_SILENT, EMFILE_SILENT - (EMFILE_LIMIT - base), base,
		     EMFILE_LIMIT);
		goto out;
	}

	/* Exhausted: every newcomer is closed at once, and the loop stays
	 * idle between them. */
	if ((cpu0 = tl_cpu_ms(server->pid)) < 0) {
		t->skip = "no /proc/PID/stat";
		goto out;
	}
	end = tl_now_ms() + EMFILE_WINDOW;
	while (tl_now_ms() < end) {
		int fd = tl_connect("127.0.0.1", t->tun, tl_now_ms() + 2000);

		if (fd < 0) {
			fail(t, "connect while exhausted: %s", strerror(errno));
			goto out;
		}
		k = tl_wait_closed(fd, tl_now_ms() + 1000, NULL, NULL);
		close(fd);
		if (k < 0) {
			fail(t, "a connection made while out of descriptors was not "
			     "closed within 1 s");
			goto out;
		}
		pokes++;
		tl_pause(40);
	}
	cpu1 = tl_cpu_ms(server->pid);
	if (expect_alive(t, server) < 0) {
		goto out;
	}
	printf("# %d descriptors at rest; %d of %d silent connections shed, %d "
	       "more closed at once; server CPU %ld ms in %d ms\n", base, shed,
	       EMFILE_SILENT, pokes, cpu1 - cpu0, EMFILE_WINDOW);
	if (cpu1 - cpu0 > EMFILE_CPU_MS) {
		fail(t, "the server used %ld ms of CPU in %d ms while out of "
		     "descriptors (spinning?)", cpu1 - cpu0, EMFILE_WINDOW);
		goto out;
	}
	k = tl_count_in_file(server->log, "out of file descriptors");
	if (k > 2) {
		fail(t, "%d \"out of file descriptors\" lines, want at most 2", k);
		goto out;
	}

	/* Descriptors back: the listeners are still there for a client. */
	for (i = 0; i < nsilent; i++) {
		close(silent[i]);
	}
	nsilent = 0;
	deadline = tl_now_ms() + 5000;
	while ((k = tl_count_fds(server->pid)) > EMFILE_LIMIT / 2) {
		if (tl_now_ms() >= deadline) {
			fail(t, "the server still holds %d descriptors 5 s after the "
			     "silent connections closed", k);
			goto out;
		}
		tl_pause(20);
	}
	if ((client = start_client(t, "client", t->ctl, p[3], NULL, 0, NULL))
	    == NULL || wait_log(t, client, "forwarding", START_MS) < 0
	    || echo_user(t, t->pub, 3000, 31, "a user after the shortage") < 0
	    || echo_user(t, t->pub, 100000, 32, "a second user") < 0) {
		goto out;
	}
out:
	for (i = 0; i < nsilent; i++) {
		close(silent[i]);
	}
}

/* ==== test: TCP keepalive on the control connection ======================= */

/*
 * ka_scan: read /proc/net/tcp or tcp6 (path) and, for each ESTABLISHED
 * (st 01) socket whose local port is ctl (the server's end) or whose
 * remote port is ctl (the client's end), count it in *srv or *cli and
 * count it in *srv_ka or *cli_ka when its "tr" field (timer_active) is 2,
 * the keepalive timer.  0, or -1 if the file cannot be opened.
 */
static int
ka_scan(const char *path, int ctl, int *srv, int *srv_ka, int *cli,
        int *cli_ka)
{
	FILE *f = fopen(path, "r");
	char line[512];
	unsigned lport, rport, st, tr;

	if (f == NULL) {
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x "
		           "%*x:%*x %x:", &lport, &rport, &st, &tr) != 4
		    || st != 1) {
			continue;
		}
		if ((int)lport == ctl) {
			(*srv)++;
			*srv_ka += tr == 2;
		}
		if ((int)rport == ctl) {
			(*cli)++;
			*cli_ka += tr == 2;
		}
	}
	fclose(f);
	return 0;
}

/*
 * test_keepalive: both ends of an attached control connection have
 * SO_KEEPALIVE on, seen in /proc/net/tcp as timer 2 (keepalive) on the
 * ESTABLISHED socket.  Looked at for up to 3 s, since a heartbeat in
 * flight shows timer 1 (retransmit) for a moment.
 */
static void
test_keepalive(struct test *t)
{
	struct tl_proc *server, *client;
	int p[4], srv, srv_ka, cli, cli_ka;
	int64_t deadline;

	if (access("/proc/net/tcp", R_OK) != 0) {
		t->skip = "no /proc/net/tcp";
		return;
	}
	if (pick_server_ports(t, p, 4) < 0) {
		return;
	}
	if (start_svc(t, "svc", "echo", p[3], NULL) == NULL
	    || (server = start_server(t, "server", NULL)) == NULL
	    || (client = attach_client(t, "client", p[3], 0, NULL, 0, 1, t->pub))
	       == NULL) {
		return;
	}
	deadline = tl_now_ms() + 3000;
	for (;;) {
		srv = srv_ka = cli = cli_ka = 0;
		ka_scan("/proc/net/tcp", t->ctl, &srv, &srv_ka, &cli, &cli_ka);
		ka_scan("/proc/net/tcp6", t->ctl, &srv, &srv_ka, &cli, &cli_ka);
		if (srv == 1 && cli == 1 && srv_ka == 1 && cli_ka == 1) {
			break;
		}
		if (tl_now_ms() >= deadline) {
			fail(t, "control port %d: server side %d established, %d with "
			     "the keepalive timer; client side %d established, %d "
			     "with it (want 1 of 1 each)", t->ctl, srv, srv_ka, cli,
			     cli_ka);
			return;
		}
		tl_pause(100);
	}
	if (expect_alive(t, server) < 0 || expect_alive(t, client) < 0) {
		return;
	}
}

/* ==== test: several services from one client ============================== */

/* forwarded_port: the public port c's "forwarding HOST:PUB -> HOST:LOC"
 * line names for the service on loc, or -1 if there is none yet. */
static int
forwarded_port(struct tl_proc *c, int loc)
{
	char *text = tl_read_file(c->log, NULL), *p, want[64];
	int port = -1;

	if (text == NULL) {
		return -1;
	}
	snprintf(want, sizeof(want), " -> 127.0.0.1:%d", loc);
	for (p = text; (p = strstr(p, "forwarding 127.0.0.1:")) != NULL; p++) {
		char *eol = strchr(p, '\n'), *arrow = strstr(p, want);
		if (arrow != NULL && (eol == NULL || arrow < eol)) {
			port = atoi(p + strlen("forwarding 127.0.0.1:"));
		}
	}
	free(text);
	return port;
}

/* wait_forwarded: forwarded_port within START_MS; -1 and fail() if not. */
static int
wait_forwarded(struct test *t, struct tl_proc *c, int loc)
{
	int64_t deadline = tl_now_ms() + START_MS;
	int port;

	while ((port = forwarded_port(c, loc)) < 0) {
		if (tl_now_ms() >= deadline || tl_proc_poll(c)) {
			return fail(t, "%s never logged forwarding to 127.0.0.1:%d",
			            c->name, loc);
		}
		tl_pause(20);
	}
	return port;
}

/* Three services of one client, all served at once, each with its bytes:
 * the server's -public (from a bare "-local PORT"), and two ports of the
 * range named PUBLIC=HOST:PORT and PUBLIC=PORT. */
static void
test_services_many(struct test *t)
{
	int lo, hi, p[6], loc_main, loc_a, loc_b;
	char range[32], l_main[16], l_a[64], l_b[64], r[64];
	struct tl_proc *client;

	if (pick_range(t, RANGE_N, &lo, p, 6) < 0) {
		return;
	}
	hi = lo + RANGE_N - 1;
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	loc_main = p[3];
	loc_a = p[4];
	loc_b = p[5];
	snprintf(range, sizeof(range), "%d-%d", lo, hi);
	snprintf(l_main, sizeof(l_main), "%d", loc_main);
	snprintf(l_a, sizeof(l_a), "%d=127.0.0.1:%d", lo, loc_a);
	snprintf(l_b, sizeof(l_b), "%d=%d", hi, loc_b);
	{
		const char *argv[] = { "./client", "-remote",
		                       tl_fmt_addr(r, "127.0.0.1", t->ctl),
		                       "-local", l_main, "-local", l_a, "-local",
		                       l_b, tl_plaintext() ? "-plaintext" : NULL,
		                       NULL };
		if (start_svc(t, "svc-main", "source", loc_main, "3000") == NULL
		    || start_svc(t, "svc-a", "source", loc_a, "1111") == NULL
		    || start_svc(t, "svc-b", "source", loc_b, "2222") == NULL
		    || start_server(t, "server", "-ports", range, NULL) == NULL
		    || (client = start(t, "client", argv, NULL, 0)) == NULL) {
			return;
		}
	}
	if (wait_log_count(t, client, "forwarding", 3, START_MS) < 0
	    || expect_forwarding(t, client, t->pub, loc_main) < 0
	    || expect_forwarding(t, client, lo, loc_a) < 0
	    || expect_forwarding(t, client, hi, loc_b) < 0) {
		return;
	}
	if (download(t, "127.0.0.1", t->pub, 3000, "user on -public") < 0
	    || download(t, "127.0.0.1", lo, 1111, "user on the low port") < 0
	    || download(t, "127.0.0.1", hi, 2222, "user on the high port") < 0
	    || download(t, "127.0.0.1", lo, 1111, "second user, low port") < 0
	    || download(t, "127.0.0.1", t->pub, 3000, "second user, -public") < 0) {
		return;
	}
	/* The status names each service by its public port. */
	kill(client->pid, SIGUSR1);
	snprintf(r, sizeof(r), "[%d] status: up", hi);
	if (wait_log_count(t, client, "status: up", 3, START_MS) < 0
	    || expect_log(t, client, r) < 0) {
		return;
	}
	snprintf(r, sizeof(r), "[%d] user 127.0.0.1:", lo);
	expect_log(t, client, r);
}

/* -local PORT means 127.0.0.1:PORT. */
static void
test_local_shorthand(struct test *t)
{
	char l[16], r[64];
	struct tl_proc *client;

	if (pick_server_ports(t, NULL, 4) < 0) {
		return;
	}
	snprintf(l, sizeof(l), "%d", t->loc);
	{
		const char *argv[] = { "./client", "-remote",
		                       tl_fmt_addr(r, "127.0.0.1", t->ctl), "-local",
		                       l, tl_plaintext() ? "-plaintext" : NULL,
		                       NULL };
		if (start_svc(t, "svc", "source", t->loc, "777") == NULL
		    || start_server(t, "server", NULL) == NULL
		    || (client = start(t, "client", argv, NULL, 0)) == NULL
		    || wait_log(t, client, "forwarding", START_MS) < 0
		    || expect_forwarding(t, client, t->pub, t->loc) < 0) {
			return;
		}
	}
	download(t, "127.0.0.1", t->pub, 777, "user through -local PORT");
}

/* A service whose port another client holds is refused as busy and
 * retries alone; the client's other services serve all the while, and it
 * takes the port once the holder leaves. */
static void
test_services_busy_alone(struct test *t)
{
	int lo, hi, p[6], loc_main, loc_a, loc_b;
	char range[32], l_main[64], l_a[64], l_b[64], r[64], want[64];
	struct tl_proc *holder, *client;

	if (pick_range(t, RANGE_N, &lo, p, 6) < 0) {
		return;
	}
	hi = lo + RANGE_N - 1;
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	loc_main = p[3];
	loc_a = p[4];
	loc_b = p[5];
	snprintf(range, sizeof(range), "%d-%d", lo, hi);
	snprintf(l_main, sizeof(l_main), "127.0.0.1:%d", loc_main);
	snprintf(l_a, sizeof(l_a), "%d=127.0.0.1:%d", lo, loc_a);
	snprintf(l_b, sizeof(l_b), "%d=127.0.0.1:%d", hi, loc_b);
	if (start_svc(t, "svc-main", "source", loc_main, "3000") == NULL
	    || start_svc(t, "svc-a", "source", loc_a, "1111") == NULL
	    || start_svc(t, "svc-b", "source", loc_b, "2222") == NULL
	    || start_server(t, "server", "-ports", range, NULL) == NULL
	    || (holder = attach_client(t, "holder", loc_b, lo, NULL, 0, 1, lo))
	       == NULL) {
		return;
	}
	{
		const char *argv[] = { "./client", "-remote",
		                       tl_fmt_addr(r, "127.0.0.1", t->ctl),
		                       "-local", l_main, "-local", l_a, "-local",
		                       l_b, tl_plaintext() ? "-plaintext" : NULL,
		                       NULL };
		if ((client = start(t, "client", argv, NULL, 0)) == NULL) {
			return;
		}
	}
	snprintf(want, sizeof(want), "[%d] server", lo);
	if (wait_log_count(t, client, "forwarding", 2, START_MS) < 0
	    || expect_forwarding(t, client, t->pub, loc_main) < 0
	    || expect_forwarding(t, client, hi, loc_b) < 0
	    || wait_log_count(t, client, "already served by", 2, START_MS) < 0
	    || expect_log(t, client, want) < 0) {
		return;
	}
	/* Retrying, the busy one leaves the others be. */
	if (download(t, "127.0.0.1", t->pub, 3000, "user on -public") < 0
	    || download(t, "127.0.0.1", hi, 2222, "user on the high port") < 0
	    || download(t, "127.0.0.1", lo, 2222, "user on the holder's port") < 0
	    || wait_log_count(t, client, "already served by", 3, START_MS) < 0
	    || download(t, "127.0.0.1", t->pub, 3000, "-public, still") < 0) {
		return;
	}
	if (tl_count_in_file(client->log, "forwarding") != 2) {
		fail(t, "the client reattached a service that was not refused");
		return;
	}
	/* The holder leaves: the retrying service takes the port. */
	if (stop(t, holder) < 0
	    || wait_log_count(t, client, "forwarding", 3, T(40000)) < 0
	    || expect_forwarding(t, client, lo, loc_a) < 0) {
		return;
	}
	download(t, "127.0.0.1", lo, 1111, "user on the port taken over");
}

/* A -port 0 client holds the first free port; SIGHUP gives that port a
 * secret of its own, which detaches the session: the client, asking for
 * its port back, is refused for the secret and asks for any free port
 * again (it used to exit 1), and serves on the next one. */
static void
test_port_any_secret_added(struct test *t)
{
	int lo, p[4], got, now = -1;
	char range[32], l[64], r[64], path[200], secrets[64];
	struct tl_proc *client;
	int64_t deadline;

	if (pick_range(t, RANGE_N, &lo, p, 4) < 0) {
		return;
	}
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	snprintf(range, sizeof(range), "%d-%d", lo, lo + 2);
	snprintf(path, sizeof(path), "%s/secrets", t->dir);
	if (tl_write_file(path, "# none yet\n", 11) < 0 || chmod(path, 0600) < 0) {
		fail(t, "%s: %s", path, strerror(errno));
		return;
	}
	snprintf(l, sizeof(l), "0=127.0.0.1:%d", p[3]);
	if (start_svc(t, "svc", "source", p[3], "4444") == NULL
	    || (t->server = start_server(t, "server", "-ports", range,
	                                 "-secrets", path, NULL)) == NULL) {
		return;
	}
	{
		const char *argv[] = { "./client", "-remote",
		                       tl_fmt_addr(r, "127.0.0.1", t->ctl),
		                       "-local", l,
		                       tl_plaintext() ? "-plaintext" : NULL, NULL };
		if ((client = start(t, "client", argv, NULL, 0)) == NULL
		    || (got = wait_forwarded(t, client, p[3])) < 0) {
			return;
		}
	}
	if (got != lo) {
		fail(t, "any free port gave %d, want %d", got, lo);
		return;
	}
	snprintf(secrets, sizeof(secrets), "%d its-own-secret-long-enough\n", lo);
	if (tl_write_file(path, secrets, strlen(secrets)) < 0) {
		fail(t, "%s: %s", path, strerror(errno));
		return;
	}
	kill(t->server->pid, SIGHUP);
	deadline = tl_now_ms() + T(8000);
	while ((now = forwarded_port(client, p[3])) == lo &&
	       tl_now_ms() < deadline && !tl_proc_poll(client)) {
		tl_pause(20);
	}
	if (now != lo + 1) {
		fail(t, "after the secret was added the client forwards port %d, "
		     "want %d%s", now, lo + 1,
		     tl_proc_poll(client) ? " (it exited)" : "");
		return;
	}
	if (download(t, "127.0.0.1", lo + 1, 4444, "user on the new port") < 0) {
		return;
	}
	expect_alive(t, client);
}

/* -port 0 and 0=HOST:PORT: any free port of -ports, named in the
 * forwarding line; never one -secrets names (it has its own secret); none
 * left is "busy", retried. */
static void
test_port_any(struct test *t)
{
	int lo, p[6], loc_a, loc_b, loc_c, got_a, got_b;
	char range[32], l_a[64], l_b[64], l_c[64], r[64], path[200], want[64];
	char secrets[64];
	struct tl_proc *client;

	if (pick_range(t, RANGE_N, &lo, p, 6) < 0) {
		return;
	}
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	loc_a = p[3];
	loc_b = p[4];
	loc_c = p[5];
	/* Three ports, the first with a secret of its own: two to give. */
	snprintf(range, sizeof(range), "%d-%d", lo, lo + 2);
	snprintf(path, sizeof(path), "%s/secrets", t->dir);
	snprintf(secrets, sizeof(secrets), "%d its-own-secret-long-enough\n", lo);
	if (tl_write_file(path, secrets, strlen(secrets)) < 0
	    || chmod(path, 0600) < 0) {
		fail(t, "%s: %s", path, strerror(errno));
		return;
	}
	snprintf(l_a, sizeof(l_a), "127.0.0.1:%d", loc_a);
	snprintf(l_b, sizeof(l_b), "0=127.0.0.1:%d", loc_b);
	snprintf(l_c, sizeof(l_c), "0=127.0.0.1:%d", loc_c);
	if (start_svc(t, "svc-a", "source", loc_a, "1111") == NULL
	    || start_svc(t, "svc-b", "source", loc_b, "2222") == NULL
	    || start_svc(t, "svc-c", "source", loc_c, "3333") == NULL
	    || start_server(t, "server", "-ports", range, "-secrets", path,
	                    NULL) == NULL) {
		return;
	}
	{
		const char *argv[] = { "./client", "-remote",
		                       tl_fmt_addr(r, "127.0.0.1", t->ctl),
		                       "-port", "0", "-local", l_a, "-local", l_b,
		                       tl_plaintext() ? "-plaintext" : NULL, NULL };
		if ((client = start(t, "client", argv, NULL, 0)) == NULL
		    || (got_a = wait_forwarded(t, client, loc_a)) < 0
		    || (got_b = wait_forwarded(t, client, loc_b)) < 0) {
			return;
		}
	}
	if (got_a == got_b || got_a <= lo || got_a > lo + 2 || got_b <= lo
	    || got_b > lo + 2) {
		fail(t, "any free port gave %d and %d, want %d and %d", got_a,
		     got_b, lo + 1, lo + 2);
		return;
	}
	if (download(t, "127.0.0.1", got_a, 1111, "user on -port 0's port") < 0
	    || download(t, "127.0.0.1", got_b, 2222, "user on 0='s port") < 0) {
		return;
	}
	/* Nothing left: a third is refused as busy and keeps trying. */
	{
		const char *argv[] = { "./client", "-remote",
		                       tl_fmt_addr(r, "127.0.0.1", t->ctl),
		                       "-local", l_c,
		                       tl_plaintext() ? "-plaintext" : NULL, NULL };
		if ((client = start(t, "client-none-left", argv, NULL, 0)) == NULL
		    || wait_log_count(t, client, "no free port", 2, START_MS) < 0) {
			return;
		}
	}
	snprintf(want, sizeof(want), "retrying in");
	expect_log(t, client, want);
}

/* -remote A,B: A is dead, so the client moves on to B. */
static void
test_remote_list(struct test *t)
{
	int p[5];
	char remote[128], dead[64], want[128], l[64];
	struct tl_proc *client;

	if (pick_server_ports(t, p, 5) < 0) {
		return;
	}
	snprintf(remote, sizeof(remote), "127.0.0.1:%d,127.0.0.1:%d", p[4],
	         t->ctl);
	snprintf(l, sizeof(l), "127.0.0.1:%d", t->loc);
	{
		const char *argv[] = { "./client", "-remote", remote, "-local", l,
		                       tl_plaintext() ? "-plaintext" : NULL, NULL };
		if (start_svc(t, "svc", "source", t->loc, "4444") == NULL
		    || start_server(t, "server", NULL) == NULL
		    || (client = start(t, "client", argv, NULL, 0)) == NULL
		    || wait_log(t, client, "forwarding", START_MS) < 0
		    || expect_forwarding(t, client, t->pub, t->loc) < 0) {
			return;
		}
	}
	snprintf(dead, sizeof(dead), "connect 127.0.0.1:%d:", p[4]);
	snprintf(want, sizeof(want), "%s Connection refused; retrying", dead);
	if (expect_log(t, client, want) < 0) {
		return;
	}
	download(t, "127.0.0.1", t->pub, 4444, "user via the second -remote");
}

/* -tunnel: tunnels go through a relay on another port (as through a
 * remapped port), which holds the user's tunnel while it lasts. */
static void
test_tunnel_override(struct test *t)
{
	struct tl_proc *proxy, *client;
	char pp[16], tp[16], tun[64], l[64], r[64], want[128];
	const char *pargv[5] = { tl_h.self, "--cut-proxy", pp, tp, NULL };
	struct lane ln[1];
	int p[5], u;

	if (pick_server_ports(t, p, 5) < 0) {
		return;
	}
	snprintf(pp, sizeof(pp), "%d", p[4]);
	snprintf(tp, sizeof(tp), "%d", t->tun);
	snprintf(tun, sizeof(tun), "127.0.0.1:%d", p[4]);
	snprintf(l, sizeof(l), "127.0.0.1:%d", t->loc);
	{
		const char *argv[] = { "./client", "-remote",
		                       tl_fmt_addr(r, "127.0.0.1", t->ctl), "-local",
		                       l, "-tunnel", tun, "-pool", "0",
		                       tl_plaintext() ? "-plaintext" : NULL, NULL };
		if (start_svc(t, "svc", "echo", t->loc, NULL) == NULL
		    || start_server(t, "server", NULL) == NULL
		    || (proxy = start(t, "tunnel-relay", pargv, NULL, 0)) == NULL
		    || wait_log(t, proxy, "ready", START_MS) < 0
		    || (client = start(t, "client", argv, NULL, 0)) == NULL
		    || wait_log(t, client, "forwarding", START_MS) < 0) {
			return;
		}
	}
	snprintf(want, sizeof(want), "(tunnels via %s)", tun);
	if (expect_log(t, client, want) < 0
	    || (u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	lane_init(&ln[0], u, u, 31);
	if (pump(t, ln, 1, 64 * 1024, "64 KiB echoed through -tunnel") < 0) {
		return;
	}
	/* The relay holds that user's tunnel and no other (no pool): cutting
	 * it names one. */
	kill(proxy->pid, SIGUSR1);
	wait_log(t, proxy, "cut 1: 1 connections", IO_MS);
}

/*
 * tunnel_blocked: the tunnel port is not reachable where the client dials
 * it (-tunnel stands in for a firewall).  Refused: the user is closed at
 * once, not after the server's 10 s wait, and both logs name the address
 * dialed and ask whether the port is open; the client's parked tunnels
 * say so too.  Dropped (a listener whose queue is full, as a firewall that
 * drops SYNs): the user is closed after the dial's 5 s, with the same line.
 */
static void
tunnel_blocked_case(struct test *t, const char *name, int port, int want_ms)
{
	struct tl_proc *client;
	char tun[64], l[64], r[64], want[128], cname[32];
	const char *argv[] = { "./client", "-remote",
	                       tl_fmt_addr(r, "127.0.0.1", t->ctl), "-local", l,
	                       "-tunnel", tun,
	                       tl_plaintext() ? "-plaintext" : NULL, NULL };
	int64_t t0;
	int u;

	snprintf(tun, sizeof(tun), "127.0.0.1:%d", port);
	snprintf(l, sizeof(l), "127.0.0.1:%d", t->loc);
	snprintf(cname, sizeof(cname), "client-%s", name);
	if ((client = start(t, cname, argv, NULL, 0)) == NULL
	    || wait_log(t, client, "forwarding", START_MS) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "tunnel 127.0.0.1:%d: ", port);
	t0 = tl_now_ms();
	if ((u = user_open(t, "127.0.0.1", t->pub)) < 0) {
		return;
	}
	if (expect_closed(t, u, T(want_ms + 2000), name) == 0) {
		snprintf(want, sizeof(want), "is port %d open on the server's "
		         "firewall?", port);
		if (tl_now_ms() - t0 > want_ms + 2000) {
			fail(t, "%s: the user was closed after %lld ms, want within "
			     "%d", name, (long long)(tl_now_ms() - t0), want_ms);
		} else if (wait_log(t, client, want, T(2000)) == 0 &&
		           wait_log(t, t->server, want, T(2000)) == 0) {
			snprintf(want, sizeof(want), "client could not dial back: "
			         "tunnel 127.0.0.1:%d: ", port);
			if (expect_log(t, t->server, want) == 0 &&
			    tl_file_contains(t->server->log, "?? is port")) {
				fail(t, "%s: the server's line mangled the client's "
				     "text", name);
			}
		}
	}
	close(u);
	kill(client->pid, SIGTERM);
	expect_exit(t, client, 0, T(5000));
}

static void
test_tunnel_blocked(struct test *t)
{
	int p[5], full = -1, q[2] = { -1, -1 }, i;

	if (pick_server_ports(t, p, 5) < 0
	    || start_svc(t, "svc", "echo", t->loc, NULL) == NULL
	    || (t->server = start_server(t, "server", NULL)) == NULL) {
		return;
	}
	tunnel_blocked_case(t, "refused", p[4], 1000);
	if (t->failed) {
		return;
	}
	if (tl_count_in_file(t->server->log, "user #") == 0) {
		fail(t, "no user reached the server");
		return;
	}
	/* A queue of one, filled: more SYNs go unanswered. */
	if ((full = tl_listen("127.0.0.1", 0)) < 0 || listen(full, 0) < 0) {
		fail(t, "listen: %s", strerror(errno));
		goto out;
	}
	for (i = 0; i < 2; i++) {
		q[i] = tl_connect_start(NULL, "127.0.0.1", tl_local_port(full));
	}
	tunnel_blocked_case(t, "dropped", tl_local_port(full), HANDSHAKE_MS);
out:
	for (i = 0; i < 2; i++) {
		if (q[i] >= 0) {
			close(q[i]);
		}
	}
	if (full >= 0) {
		close(full);
	}
}

/*
 * not_control_port: a client pointed at the server's public port, with no
 * client serving it, sees each connection taken and closed before any
 * answer; after a few attempts it stops, exit 1, saying -remote is not a
 * control port.  Without one, it would retry for ever.
 */
static void
test_not_control_port(struct test *t)
{
	struct tl_proc *client;

	if (pick_server_ports(t, NULL, 4) < 0
	    || start_server(t, "server", NULL) == NULL
	    || (client = start_client(t, "client", t->pub, t->loc, NULL, 0,
	                              NULL)) == NULL) {
		return;
	}
	if (expect_exit(t, client, 1, T(20000)) == 0
	    && expect_log(t, client, "not a dialback control port; check -remote "
	                  "(the server's control port, default 8009, not its "
	                  "public port)") == 0
	    && tl_count_in_file(client->log, " before answering") != 4) {
		fail(t, "want 4 attempts (client.h's MUTE_TRIES) before the "
		     "client gave up");
	}
}

/*
 * silent_remote: a client pointed at a port that accepts and never says a
 * word (a listener nobody serves) gives up after 4 attempts of 5 s each,
 * exit 1, naming -remote; it does not retry for ever.
 */
static void
test_silent_remote(struct test *t)
{
	struct tl_proc *client;
	int lfd, port;

	if ((lfd = tl_listen("127.0.0.1", 0)) < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	port = tl_local_port(lfd);
	if ((client = start_client(t, "client", port, port + 1, NULL, 0, NULL))
	    != NULL && expect_exit(t, client, 1, T(4 * HANDSHAKE_MS + 15000)) == 0
	    && expect_log(t, client, "said nothing for 5s before answering, 4 "
	                  "times in a row: not a dialback control port") == 0
	    && tl_count_in_file(client->log, " before answering") != 4) {
		fail(t, "want 4 attempts before the client gave up");
	}
	close(lfd);
}

/*
 * requires_token: a client with no token facing a server that has one is
 * told so in those words, and exits 1 at once.
 */
static void
test_requires_token(struct test *t)
{
	struct tl_proc *client;

	if (pick_server_ports(t, NULL, 4) < 0
	    || start_server(t, "server", "-token", "a-token-of-twenty-bytes",
	                    NULL) == NULL
	    || (client = start_client(t, "client", t->ctl, t->loc, NULL, 0,
	                              NULL)) == NULL) {
		return;
	}
	if (expect_exit(t, client, 1, T(5000)) == 0) {
		expect_log(t, client, "server requires a token: give the client "
		           "-token or DIALBACK_TOKEN");
	}
}

/* Malformed -remote and -local, and two -local without PUBLIC=: exit 2
 * at once with one line saying what is wrong, not a retry for ever. */
static void
test_bad_services(struct test *t)
{
	static const char *const url[] = {
		"./client", "-remote", "http://example.com", NULL };
	static const char *const v6[] = {
		"./client", "-remote", "::1:8009", NULL };
	static const char *const url2[] = {
		"./client", "-remote", "127.0.0.1,http://x", NULL };
	static const char *const garbage[] = {
		"./client", "-remote", "127.0.0.1", "-local", "garbage", NULL };
	static const char *const badpub[] = {
		"./client", "-remote", "127.0.0.1", "-local", "x=127.0.0.1:1",
		NULL };
	static const char *const two[] = {
		"./client", "-remote", "127.0.0.1", "-local", "127.0.0.1:1",
		"-local", "127.0.0.1:2", NULL };
	static const char *const twice[] = {
		"./client", "-remote", "127.0.0.1", "-local", "9001=127.0.0.1:1",
		"-local", "9001=127.0.0.1:2", NULL };
	static const char *const badtun[] = {
		"./client", "-remote", "127.0.0.1", "-tunnel", "host-only", NULL };
	static const struct {
		const char *name, *says;
		const char *const *argv;
	} cases[] = {
		{ "remote-url", "not a URL", url },
		{ "remote-v6-port", "[::1]:8009", v6 },
		{ "remote-list-url", "not a URL", url2 },
		{ "local-garbage", "-local garbage", garbage },
		{ "local-bad-public", "PUBLIC=", badpub },
		{ "local-two-bare", "only one -local", two },
		{ "local-port-twice", "9001 is asked for twice", twice },
		{ "tunnel-no-port", "-tunnel host-only", badtun },
	};
	size_t i, len;
	char *err;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tl_proc *p = start(t, cases[i].name, cases[i].argv, NULL,
		                          TL_SPLIT_OUT);
		if (p == NULL || expect_exit(t, p, 2, T(5000)) < 0) {
			return;
		}
		err = tl_read_file(p->log, &len);
		if (err == NULL || strchr(err, '\n') != err + len - 1
		    || strstr(err, cases[i].says) == NULL) {
			fail(t, "%s: want one line with \"%s\", got \"%s\"",
			     cases[i].name, cases[i].says, err ? err : "");
			free(err);
			return;
		}
		free(err);
	}
}

/* ==== running ============================================================= */

/* ==== test: who may use a public port (-allow, -deny, -per-ip) =========== */

#define REFUSED_MS   T(2000)  /* a refused user is closed within */
#define DENIED       "refused: not allowed by -allow/-deny"

/* user_from: a user's connection from source address src (any 127.x.y.z
 * on Linux, or ::1) to host:port, tracked as user_open's are.  -1 and
 * fail(). */
static int
user_from(struct test *t, const char *src, const char *host, int port)
{
	int fd = tl_connect_start(src, host, port), e;

	if (fd < 0) {
		return fail(t, "connect %s -> %s port %d: %s", src, host, port,
		            strerror(errno));
	}
	if (tl_await(fd, POLLOUT, tl_now_ms() + T(5000)) < 0 ||
	    tl_connect_result(fd) < 0) {
		e = errno;
		close(fd);
		return fail(t, "connect %s -> %s port %d: %s", src, host, port,
		            strerror(e));
	}
	user_track(t, fd);
	return fd;
}

/* echo_ping: four bytes a user sends through the echo service come back,
 * and the user stays open.  0, or -1 and fail(). */
static int
echo_ping(struct test *t, int fd, const char *what)
{
	int64_t deadline = tl_now_ms() + IO_MS;
	char got[4];
	ssize_t r;

	if (tl_write_all(fd, "ping", 4, deadline) < 0) {
		return fail(t, "%s: sending: %s", what, strerror(errno));
	}
	r = tl_read_full(fd, got, 4, deadline);
	if (r != 4 || memcmp(got, "ping", 4) != 0) {
		return fail(t, "%s: no echo (%s)", what,
		            r < 0 ? strerror(errno) : "closed");
	}
	return 0;
}

/* expect_turned_away: a user from src on host:port is closed at once
 * without a byte, and the server logs "user ADDR refused: " + rest for it
 * (ADDR as the server sees it: src, or shown_as when not NULL).  rest
 * NULL: the line is held back by the rate limit; only the close shows. */
static int
expect_turned_away(struct test *t, struct tl_proc *server, const char *src,
                   const char *host, int port, const char *shown_as,
                   const char *rest)
{
	char what[96], addr[64], want[200];
	int fd = user_from(t, src, host, port);

	if (fd < 0) {
		return -1;
	}
	snprintf(what, sizeof(what), "user from %s on port %d", src, port);
	tl_fmt_addr(addr, shown_as != NULL ? shown_as : src, tl_local_port(fd));
	snprintf(want, sizeof(want), "user %s refused: %s", addr, rest);
	if (expect_closed(t, fd, REFUSED_MS, what) < 0 ||
	    (rest != NULL && wait_log(t, server, want, REFUSED_MS) < 0)) {
		return -1;
	}
	user_close(t, fd);
	return 0;
}

/* steer_setup_pool: an echo service, a server with args (NULL-ended)
 * whose -public is on t->pub_host, and a client serving it, with pool > 0
 * keeping that many tunnels dialed ahead (parked before it returns). */
static struct tl_proc *
steer_setup_pool(struct test *t, const char *const args[], int pool)
{
	const char *a[12] = { NULL };
	struct tl_proc *server;
	int p[4], n = 0;

	if (pick_server_ports(t, p, 4) < 0 ||
	    start_svc(t, "svc", "echo", p[3], NULL) == NULL) {
		return NULL;
	}
	while (args[n] != NULL && n < 11) {
		a[n] = args[n];
		n++;
	}
	a[n] = NULL;
	server = start_server(t, "server", a[0], a[1], a[2], a[3], a[4], a[5],
	                      a[6], a[7], a[8], a[9], a[10], NULL);
	if (server == NULL ||
	    attach_client(t, "client", p[3], 0, NULL, pool, 1, t->pub) == NULL ||
	    (pool > 0 && wait_pool(t, server, pool, pool, POOL_MS, "at start") < 0)) {
		return NULL;
	}
	return server;
}

static struct tl_proc *
steer_setup(struct test *t, const char *const args[])
{
	return steer_setup_pool(t, args, 0);
}

/* An -allow list admits only what it names: 127.0.0.1, not ::1 (on the
 * IPv6 socket of a public port on every interface) nor 127.0.0.2.  A
 * refused user is closed at once, never announced to the client. */
static void
test_allow_only(struct test *t)
{
	static const char *const args[] = { "-allow", "127.0.0.1/32", NULL };
	struct tl_proc *server;

	if (!tl_ipv6_ok()) {
		missing_tool(t, "no IPv6 on loopback");
		return;
	}
	t->pub_host = "";
	if ((server = steer_setup(t, args)) == NULL ||
	    echo_user(t, t->pub, 1000, 1, "user from 127.0.0.1") < 0 ||
	    expect_turned_away(t, server, "::1", "::1", t->pub, NULL,
	                       "not allowed by -allow/-deny") < 0 ||
	    expect_turned_away(t, server, "127.0.0.2", "127.0.0.1", t->pub, NULL,
	                       NULL) < 0 ||
	    echo_user(t, t->pub, 1000, 2, "user from 127.0.0.1 after them") < 0) {
		return;
	}
	if (tl_count_in_file(server->log, "accepted on port") != 2) {
		fail(t, "server announced %d users, want the 2 admitted",
		     tl_count_in_file(server->log, "accepted on port"));
	}
}

/* -deny wins over -allow, in both families; what is allowed and not
 * denied gets through. */
static void
test_deny_wins(struct test *t)
{
	static const char *const args[] = {
		"-allow", "127.0.0.0/8", "-allow", "::1", "-deny", "127.0.0.2",
		"-deny", "::/0", NULL
	};
	struct tl_proc *server;
	int fd;

	if (!tl_ipv6_ok()) {
		missing_tool(t, "no IPv6 on loopback");
		return;
	}
	t->pub_host = "";
	if ((server = steer_setup(t, args)) == NULL ||
	    echo_user(t, t->pub, 1000, 1, "user from 127.0.0.1") < 0 ||
	    expect_turned_away(t, server, "127.0.0.2", "127.0.0.1", t->pub, NULL,
	                       "not allowed by -allow/-deny") < 0 ||
	    expect_turned_away(t, server, "::1", "::1", t->pub, NULL, NULL) < 0) {
		return;
	}
	if ((fd = user_from(t, "127.0.0.3", "127.0.0.1", t->pub)) < 0 ||
	    echo_ping(t, fd, "user from 127.0.0.3") < 0) {
		return;
	}
	user_close(t, fd);
}

/* A public port on ::ffff:127.0.0.1 sees IPv4 users as IPv4-mapped IPv6
 * addresses; IPv4 blocks must still match them. */
static void
test_allow_mapped(struct test *t)
{
	static const char *const args[] = {
		"-allow", "127.0.0.0/8", "-deny", "127.0.0.2", NULL
	};
	struct tl_proc *server;
	char want[96];
	int fd;

	if (!tl_ipv6_ok()) {
		missing_tool(t, "no IPv6 on loopback");
		return;
	}
	t->pub_host = "::ffff:127.0.0.1";
	if ((server = steer_setup(t, args)) == NULL ||
	    (fd = user_from(t, "127.0.0.1", "127.0.0.1", t->pub)) < 0 ||
	    echo_ping(t, fd, "user from 127.0.0.1") < 0) {
		return;
	}
	snprintf(want, sizeof(want), "[::ffff:127.0.0.1]:%d accepted",
	         tl_local_port(fd));
	if (expect_log(t, server, want) < 0 ||
	    expect_turned_away(t, server, "127.0.0.2", "127.0.0.1", t->pub,
	                       "::ffff:127.0.0.2",
	                       "not allowed by -allow/-deny") < 0) {
		return;
	}
	user_close(t, fd);
}

/* A burst of refused users gives one log line; the next, 10 s on, counts
 * the ones held back.  With only -deny, everyone else is admitted. */
static void
test_refused_log_limited(struct test *t)
{
	enum { BURST = 30 };
	static const char *const args[] = { "-deny", "127.0.0.2", NULL };
	struct tl_proc *server;
	char what[64], want[96];
	int64_t first = 0;
	int i, fd;

	if ((server = steer_setup(t, args)) == NULL ||
	    echo_user(t, t->pub, 100, 1, "user from 127.0.0.1") < 0) {
		return;
	}
	for (i = 0; i < BURST; i++) {
		snprintf(what, sizeof(what), "refused user %d", i + 1);
		if ((fd = user_from(t, "127.0.0.2", "127.0.0.1", t->pub)) < 0 ||
		    expect_closed(t, fd, REFUSED_MS, what) < 0) {
			return;
		}
		user_close(t, fd);
		if (i == 0) {
			first = tl_now_ms();   /* the line was written before */
		}
	}
	if (tl_count_in_file(server->log, DENIED) != 1) {
		fail(t, "%d users refused in a burst gave %d log lines, want 1",
		     BURST, tl_count_in_file(server->log, DENIED));
		return;
	}
	while (tl_now_ms() < first + LOG_LIMIT_MS + 100) {
		tl_pause(50);   /* the limiter's window, not a wait for an event */
	}
	snprintf(want, sizeof(want), DENIED " (%d more since the last such "
	         "line)", BURST - 1);
	if ((fd = user_from(t, "127.0.0.2", "127.0.0.1", t->pub)) < 0 ||
	    expect_closed(t, fd, REFUSED_MS, "refused user after 10 s") < 0 ||
	    wait_log(t, server, want, REFUSED_MS) < 0) {
		return;
	}
	user_close(t, fd);
}

/* -per-ip 2: a third user from one address is refused while two are
 * there, another address is not, and a place freed is taken again; with
 * pool, the users take tunnels dialed ahead. */
static void
per_ip_run(struct test *t, int pool)
{
	static const char *const args[] = { "-per-ip", "2", NULL };
	struct tl_proc *server;
	char rest[96], want[96];
	int a, b, c, e;

	if ((server = steer_setup_pool(t, args, pool)) == NULL ||
	    (a = user_from(t, "127.0.0.1", "127.0.0.1", t->pub)) < 0 ||
	    echo_ping(t, a, "first user") < 0 ||
	    (b = user_from(t, "127.0.0.1", "127.0.0.1", t->pub)) < 0 ||
	    echo_ping(t, b, "second user") < 0) {
		return;
	}
	snprintf(rest, sizeof(rest), "-per-ip 2 reached for port %d", t->pub);
	if (expect_turned_away(t, server, "127.0.0.1", "127.0.0.1", t->pub, NULL,
	                       rest) < 0 ||
	    (c = user_from(t, "127.0.0.2", "127.0.0.1", t->pub)) < 0 ||
	    echo_ping(t, c, "user from another address") < 0) {
		return;
	}
	/* The first leaves; once the server has closed it, its place is
	 * free, and only its. */
	snprintf(want, sizeof(want), "127.0.0.1:%d closed", tl_local_port(a));
	user_close(t, a);
	if (wait_log(t, server, want, IO_MS) < 0 ||
	    (e = user_from(t, "127.0.0.1", "127.0.0.1", t->pub)) < 0 ||
	    echo_ping(t, e, "user after one left") < 0 ||
	    echo_ping(t, b, "second user, still there") < 0 ||
	    expect_turned_away(t, server, "127.0.0.1", "127.0.0.1", t->pub, NULL,
	                       NULL) < 0) {
		return;
	}
	if (pool > 0 && tl_count_in_file(server->log, "joined to a pooled "
	                                 "tunnel") < 2) {
		fail(t, "the first users did not take pooled tunnels");
	}
}

static void
test_per_ip(struct test *t)
{
	per_ip_run(t, 0);
}

static void
test_per_ip_pool(struct test *t)
{
	per_ip_run(t, 2);
}

/* -per-ip counts per public port: a user held on one port does not
 * count against another. */
static void
test_per_ip_ports(struct test *t)
{
	int lo, p[5], a, b;
	char range[32], rest[96];
	struct tl_proc *server;

	if (pick_range(t, 1, &lo, p, 5) < 0) {
		return;
	}
	t->ctl = p[0];
	t->tun = p[1];
	t->pub = p[2];
	snprintf(range, sizeof(range), "%d-%d", lo, lo);
	if (start_svc(t, "svc-main", "echo", p[3], NULL) == NULL ||
	    start_svc(t, "svc-a", "echo", p[4], NULL) == NULL ||
	    (server = start_server(t, "server", "-ports", range, "-per-ip", "1",
	                           NULL)) == NULL ||
	    attach_client(t, "client-main", p[3], 0, NULL, 0, 1, t->pub) == NULL ||
	    attach_client(t, "client-a", p[4], lo, NULL, 0, 1, lo) == NULL) {
		return;
	}
	if ((a = user_from(t, "127.0.0.1", "127.0.0.1", t->pub)) < 0 ||
	    echo_ping(t, a, "user on -public") < 0 ||
	    (b = user_from(t, "127.0.0.1", "127.0.0.1", lo)) < 0 ||
	    echo_ping(t, b, "same address on the -ports port") < 0) {
		return;
	}
	snprintf(rest, sizeof(rest), "-per-ip 1 reached for port %d", t->pub);
	if (expect_turned_away(t, server, "127.0.0.1", "127.0.0.1", t->pub, NULL,
	                       rest) < 0) {
		return;
	}
	/* Its line is held back by the rate limit: the close is what shows. */
	expect_turned_away(t, server, "127.0.0.1", "127.0.0.1", lo, NULL, NULL);
}

/* Bad -allow, -deny and -per-ip values, and two of the server's own flags
 * on one port, are usage errors (exit 2) naming them, before any bind. */
static void
test_steer_usage(struct test *t)
{
	int p[4];
	char c[16], u[16], pub[16], m[16], r1[32], r2[32], r3[32];
	char w1[96], w2[96], w3[96], w4[96], w5[96];
	struct {
		const char *argv[12];
		const char *want;
	} cases[] = {
		{ { "./server", "-allow", "10.0.0.0/33", NULL },
		  "-allow 10.0.0.0/33: prefix length out of range (0-32)" },
		{ { "./server", "-allow", "127.0.0.1", "-deny", "fe80::/129",
		    NULL },
		  "-deny fe80::/129: prefix length out of range (0-128)" },
		{ { "./server", "-deny", "example.com", NULL },
		  "-deny example.com: not an IPv4 or IPv6 address" },
		{ { "./server", "-per-ip", "lots", NULL }, "-per-ip lots: " },
		{ { "./server", "-control", c, "-tunnel", c, "-public", pub, NULL },
		  w1 },
		{ { "./server", "-control", c, "-tunnel", u, "-public", pub,
		    "-ports", r1, NULL }, w2 },
		{ { "./server", "-control", c, "-tunnel", u, "-public", pub,
		    "-ports", r2, NULL }, w3 },
		{ { "./server", "-control", c, "-tunnel", u, "-public", pub,
		    "-metrics", u, NULL }, w4 },
		{ { "./server", "-control", c, "-tunnel", u, "-public", pub,
		    "-metrics", m, "-ports", r3, NULL }, w5 },
	};
	size_t i;

	if (pick_ports(t, p, 4) < 0) {
		return;
	}
	snprintf(c, sizeof(c), "%d", p[0]);
	snprintf(m, sizeof(m), "%d", p[3]);
	snprintf(u, sizeof(u), "%d", p[1]);
	snprintf(pub, sizeof(pub), "%d", p[2]);
	snprintf(r1, sizeof(r1), "%d-%d", p[0], p[0]);
	snprintf(r2, sizeof(r2), "%d-%d", p[2], p[2]);
	snprintf(w1, sizeof(w1), "-tunnel %d: same port as -control", p[0]);
	snprintf(w2, sizeof(w2), "-ports %s: includes the -control port %d", r1,
	         p[0]);
	snprintf(w3, sizeof(w3), "-ports %s: includes the -public port %d", r2,
	         p[2]);
	/* -metrics too: 127.0.0.1 (its bare port's host) on the tunnel's
	 * port of every interface, or inside the -ports range. */
	snprintf(w4, sizeof(w4), "-metrics %d: same port as -tunnel", p[1]);
	snprintf(r3, sizeof(r3), "%d-%d", p[3], p[3]);
	snprintf(w5, sizeof(w5), "-ports %s: includes the -metrics port %d", r3,
	         p[3]);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char name[32];
		struct tl_proc *s;

		snprintf(name, sizeof(name), "server-%zu", i);
		s = start(t, name, cases[i].argv, NULL, TL_SPLIT_OUT);
		if (s == NULL || expect_exit(t, s, 2, T(5000)) < 0) {
			return;
		}
		if (expect_log(t, s, cases[i].want) < 0) {
			return;
		}
		if (tl_file_contains(s->log, "address in use")) {
			fail(t, "%s: a bind was tried", name);
			return;
		}
	}
}

/* Every port conflict is reported in one run: three ports held by others
 * (the metrics port one of them), three lines, then exit 1. */
static void
test_port_conflicts(struct test *t)
{
	char c[64], u[64], p[64], m[64], want[160];
	const char *argv[10] = { "./server", "-control", c, "-tunnel", u,
	                         "-public", p, "-metrics", m, NULL };
	struct tl_proc *s;
	int busy_c, busy_p, busy_m, free_u;

	if (pick_ports(t, &free_u, 1) < 0) {
		return;
	}
	busy_c = tl_listen("127.0.0.1", 0);
	busy_p = tl_listen("127.0.0.1", 0);
	busy_m = tl_listen("127.0.0.1", 0);
	if (busy_c < 0 || busy_p < 0 || busy_m < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	user_track(t, busy_c);
	user_track(t, busy_p);
	user_track(t, busy_m);
	tl_fmt_addr(m, "127.0.0.1", tl_local_port(busy_m));
	tl_fmt_addr(c, "127.0.0.1", tl_local_port(busy_c));
	tl_fmt_addr(u, "127.0.0.1", free_u);
	tl_fmt_addr(p, "127.0.0.1", tl_local_port(busy_p));
	s = start(t, "server", argv, NULL, TL_SPLIT_OUT);
	if (s == NULL || expect_exit(t, s, 1, T(5000)) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "bind %s (control port): address in use", c);
	if (expect_log(t, s, want) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "bind %s (public port): address in use", p);
	if (expect_log(t, s, want) < 0) {
		return;
	}
	snprintf(want, sizeof(want), "bind %s (metrics port): address in use", m);
	if (expect_log(t, s, want) < 0) {
		return;
	}
	if (tl_count_in_file(s->log, "address in use") != 3 ||
	    tl_file_contains(s->log, "(tunnel port)")) {
		fail(t, "want exactly the three conflicts reported");
	}
}

static const struct tl_case tests[] = {
	{ "ports_range", test_ports_range, 0 },
	{ "ports_takeover", test_ports_takeover, 0 },
	{ "proxy_v1", test_proxy_v1, 0 },
	{ "proxy_v2", test_proxy_v2, 0 },
	{ "proxy_v1_ipv6", test_proxy_v1_ipv6, 0 },
	{ "proxy_v2_ipv6", test_proxy_v2_ipv6, 0 },
	{ "proxy_off", test_proxy_off, 0 },
	{ "proxy_v1_pool", test_proxy_v1_pool, 0 },
	{ "proxy_v2_pool", test_proxy_v2_pool, 0 },
	{ "nginx", test_nginx, 0 },
	{ "status", test_status, 0 },
	{ "browser", test_browser, 0 },
	{ "pool_serves", test_pool_serves, 0 },
	{ "pool_auto", test_pool_auto, 0 },
	{ "pool_frozen_client", test_pool_frozen_client, 0 },
	{ "pool_frozen_deadline", test_pool_frozen_deadline, 0 },
	{ "pool_alive_long", test_pool_alive_long, TL_HEAVY },
	{ "pool_local_down", test_pool_local_down, 0 },
	{ "pool_session_end", test_pool_session_end, 0 },
	{ "pool_control_drop", test_pool_control_drop, 0 },
	{ "replay_join", test_replay_join, 0 },
	{ "replay_auth", test_replay_auth, 0 },
	{ "forged_join_real_user", test_forged_join_real_user, 0 },
	{ "wrong_token_proof", test_wrong_token_proof, 0 },
	{ "version_mismatch", test_version_mismatch, 0 },
	{ "not_dialback", test_not_dialback, 0 },
	{ "fake_server_any_proof", test_fake_server_any_proof, 0 },
	{ "fake_server_closes_after_auth", test_fake_server_closes_after_auth, 0 },
	{ "version_1_peer", test_version_1_peer, 0 },
	{ "tampered_tunnel", test_tampered_tunnel, 0 },
	{ "client_busy", test_client_busy, 0 },
	{ "client_busy_services", test_client_busy_services, 0 },
	{ "plaintext_refused", test_plaintext_refused, 0 },
	{ "capture", test_capture, 0 },
	{ "session_resume", test_session_resume, 0 },
	{ "pairs_survive_control_drop", test_pairs_survive_control_drop, 0 },
	{ "pairs_survive_control_drop_client",
	  test_pairs_survive_control_drop_client, 0 },
	{ "pending_cap", test_pending_cap, 0 },
	{ "emfile", test_emfile, 0 },
	{ "keepalive", test_keepalive, 0 },
	{ "allow_only", test_allow_only, 0 },
	{ "deny_wins", test_deny_wins, 0 },
	{ "allow_mapped", test_allow_mapped, 0 },
	{ "refused_log_limited", test_refused_log_limited, 0 },
	{ "per_ip", test_per_ip, 0 },
	{ "per_ip_ports", test_per_ip_ports, 0 },
	{ "per_ip_pool", test_per_ip_pool, 0 },
	{ "steer_usage", test_steer_usage, 0 },
	{ "port_conflicts", test_port_conflicts, 0 },
	{ "services_many", test_services_many, 0 },
	{ "local_shorthand", test_local_shorthand, 0 },
	{ "services_busy_alone", test_services_busy_alone, 0 },
	{ "port_any", test_port_any, 0 },
	{ "port_any_secret_added", test_port_any_secret_added, 0 },
	{ "remote_list", test_remote_list, 0 },
	{ "tunnel_override", test_tunnel_override, 0 },
	{ "tunnel_blocked", test_tunnel_blocked, 0 },
	{ "not_control_port", test_not_control_port, 0 },
	{ "requires_token", test_requires_token, 0 },
	{ "silent_remote", test_silent_remote, TL_HEAVY },
	{ "bad_services", test_bad_services, 0 },
};

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--pp-service") == 0) {
		return pp_service(argv[2]);
	}
	if (argc == 4 && strcmp(argv[1], "--cut-proxy") == 0) {
		return cut_proxy(argv[2], argv[3]);
	}
	if (argc >= 4 && strcmp(argv[1], "--capture") == 0) {
		return capture_run(argv[2], argv + 3, argc - 3);
	}
	if (argc >= 4 && strcmp(argv[1], "--nofile") == 0) {
		/* tests/features --nofile N PROG ARGS: PROG with soft and hard
		 * RLIMIT_NOFILE N, which it cannot raise. */
		struct rlimit rl;

		rl.rlim_cur = rl.rlim_max = (rlim_t)strtoul(argv[2], NULL, 10);
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
			fprintf(stderr, "setrlimit %s: %s\n", argv[2], strerror(errno));
			return 127;
		}
		execv(argv[3], argv + 3);
		fprintf(stderr, "exec %s: %s\n", argv[3], strerror(errno));
		return 127;
	}
	return tl_main(argc, argv, "features", WATCHDOG_S, tests,
	               sizeof(tests) / sizeof(tests[0]));
}
