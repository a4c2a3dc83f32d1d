/*
 * libFuzzer target for the parsers the other targets do not reach: the
 * metrics responder's HTTP handling (metrics.c), CIDR blocks, addresses
 * and ports (net.c), and -config text (common.c).  Built and run by
 * `make fuzz` and `make fuzz-run` with the others.
 *
 * The first input byte picks a mode (byte % 4); the rest is the mode's:
 *
 *   0 http    [flags][c1][c2][c3] then a request, sent by a scraper over
 *             loopback TCP to a real responder: metrics_open on
 *             127.0.0.1:0 on an epoll loop (or, with the first byte's top
 *             bit, a poll() one), its content a callback of ours.  The
 *             request goes in four pieces, the first three c1, c2 and c3
 *             bytes long, the loop run between them.  A model of the
 *             rules in metrics.h says what must come back: nothing yet
 *             (the request is not whole), a close without an answer (the
 *             scraper's EOF came first), or one HTTP/1.0 answer, its
 *             status 200, 400, 404, 431, 500 or 503, its
 *             Content-Length the body that follows (none for HEAD), that
 *             body exactly what was asked for or the error's own line,
 *             and then EOF.  The status page carries the request through
 *             mb_html, and what arrives must decode back to it with
 *             nothing unescaped.  Flags choose how the scraper ends
 *             (F_END), a small receive buffer so the answer goes out in
 *             many turns, a body of up to METRICS_BODY_MAX and past it,
 *             'x's after the request line to METRICS_REQ_MAX - 4 + c3 % 8
 *             bytes (the end of the headers about the cap), and all
 *             METRICS_CONNS slots held by silent scrapers first (503).
 *   1 cidr    the text, to cidr_parse.  A block that parses has its
 *             prefix length in range and its host bits clear; it matches
 *             the address it was written with (unless an IPv6 block of
 *             fewer than 96 bits was written as an IPv4-mapped address,
 *             which README says never matches IPv4), agrees with a
 *             bit-by-bit matcher on that address with each bit flipped,
 *             and parses back the same when printed; an IPv4 block is the
 *             same block written ::ffff:a.b.c.d/(n+96).
 *   2 addr    [flags] then the text, to addr_parse (a default port or
 *             none, port 0 allowed or not) or metrics_parse.  A result
 *             has a host the text holds, a port in range, 0 only when
 *             allowed, and parses back the same when printed.
 *   3 config  the text of a -config file, to config_parse with a table
 *             of each kind of flag.  A failure names a line and a phrase
 *             config_line has: the lines before it parse, and the lines
 *             up to it fail the same way.  A success leaves values that
 *             are trimmed words of the text, and written back out as a
 *             file they parse to the same table.
 *
 * A failed parse must say why in one of the phrases the code has, never
 * with bytes of the input other than the word it names.  After each run
 * every scraper is closed and the descriptor table is as it was.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzlib.h"
#include "metrics.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A phrase from a fixed list. */
static int
known(const char *const *list, const char *why)
{
	for (; *list != NULL; list++) {
		if (strcmp(*list, why) == 0) {
			return 1;
		}
	}
	return 0;
}

/* ==== mode 0: the metrics responder ====================================== */

#define F_END        0x03   /* how the scraper ends, below */
#define F_SMALL_RCV  0x04   /* a 4 KiB window: the answer in many turns */
#define F_PAD        0x18   /* body padding: none, 70 KB, 600 KB, over */
#define F_CAP        0x20   /* every slot held first: a 503 */
#define F_LONG       0x40   /* 'x's in the request to about the cap */

enum { END_OPEN, END_SHUT, END_CLOSE, END_RESET };

#define HTTP_MS      3000   /* the longest a step may take */
#define GOT_MAX      (1 << 20)

/* What our content callback writes: the request, escaped, on the page;
 * a family and padding on /metrics. */
struct content {
	const char *text;
	size_t pad;
	unsigned long long run;
};

static struct content content;
static struct loop *loops[2];
static struct metrics *responders[2];
static uint8_t got[GOT_MAX + 1];     /* and a NUL */

static void
content_fn(void *ctx, enum metrics_page page, struct mbuf *b)
{
	static char filler[4096];
	const struct content *c = ctx;
	size_t left, n;

	if (filler[0] == '\0') {
		memset(filler, '#', sizeof(filler));
		for (n = 63; n < sizeof(filler); n += 64) {
			filler[n] = '\n';
		}
	}
	if (page == METRICS_HTML) {
		metrics_html_head(b, "fuzz <&>");
		mb_printf(b, "<p>");
		mb_html(b, c->text);
		mb_printf(b, "</p>\n");
		metrics_html_tail(b);
		return;
	}
	mb_family(b, "fuzz_runs", "counter", "Inputs the harness ran.");
	mb_printf(b, "fuzz_runs %llu\n", c->run);
	for (left = c->pad; left > 0 && !b->over; left -= n) {
		n = left < sizeof(filler) ? left : sizeof(filler);
		mb_printf(b, "%.*s", (int)n, filler);
	}
}

/* The model's verdict on a request: status 0 is none (not whole yet). */
struct expect {
	int status;
	int alt;                    /* another the timing may give, or 0 */
	enum metrics_page page;
	int head;
};

static const char *
reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 503: return "Service Unavailable";
	}
	return NULL;
}

/* Route a whole request's first line, as metrics.h describes: "METHOD
 * /PATH HTTP/1.x", two spaces exactly, the query cut off; GET or HEAD;
 * /metrics or /. */
static void
model_route(const uint8_t *req, size_t end, struct expect *e)
{
	size_t k = 0, sp[3], nsp = 0, i, plen;
	const uint8_t *path;

	while (k < end && req[k] != '\r' && req[k] != '\n') {
		k++;
	}
	for (i = 0; i < k; i++) {
		if (req[i] == ' ') {
			if (nsp == 3) {
				break;
			}
			sp[nsp++] = i;
		}
	}
	if (nsp != 2 || sp[0] == 0 || req[sp[0] + 1] != '/' ||
	    k - sp[1] - 1 < 7 || memcmp(req + sp[1] + 1, "HTTP/1.", 7) != 0) {
		e->status = 400;
		return;
	}
	e->head = sp[0] == 4 && memcmp(req, "HEAD", 4) == 0;
	if (!e->head && !(sp[0] == 3 && memcmp(req, "GET", 3) == 0)) {
		e->status = 404;
		return;
	}
	path = req + sp[0] + 1;
	for (plen = 0; path + plen < req + sp[1] && path[plen] != '?'; plen++) {
	}
	if (plen == 8 && memcmp(path, "/metrics", 8) == 0) {
		e->status = 200;
		e->page = METRICS_PROM;
	} else if (plen == 1) {
		e->status = 200;
		e->page = METRICS_HTML;
	} else {
		e->status = 404;
	}
}

/*
 * What the responder must say to req[0..n), read in any pieces: it reads
 * at most METRICS_REQ_MAX - 1 bytes; a NUL among them before the end of
 * the headers is 400, and headers that do not end within them 431.  A
 * NUL after the end is 400 if it came in the same read, else the route.
 */
static void
model(const uint8_t *req, size_t n, struct expect *e)
{
	size_t lim = n < METRICS_REQ_MAX - 1 ? n : METRICS_REQ_MAX - 1;
	size_t nul = lim, end = 0, i;

	memset(e, 0, sizeof(*e));
	for (i = 0; i < lim && nul == lim; i++) {
		if (req[i] == '\0') {
			nul = i;
		}
	}
	for (i = 1; i < lim && end == 0; i++) {
		if (req[i] == '\n' && (req[i - 1] == '\n' ||
		    (i >= 3 && memcmp(req + i - 3, "\r\n\r", 3) == 0))) {
			end = i + 1;
		}
	}
	if (nul < lim && (end == 0 || nul < end)) {
		e->status = 400;
	} else if (end == 0) {
		e->status = lim == METRICS_REQ_MAX - 1 ? 431 : 0;
	} else {
		model_route(req, end, e);
		e->alt = nul < lim ? 400 : 0;
	}
}

/* One turn of the loop, as a program's dispatch does it.  How many
 * events there were. */
static int
turn(struct loop *l, struct metrics *m, int timeout)
{
	struct loop_event *ev;
	int n = loop_wait(l, timeout, &ev), i;

	CHECK(n >= 0, "loop_wait: %s", strerror(errno));
	for (i = 0; i < n; i++) {
		if (ev[i].fd == ev[i].w->fd) {
			metrics_event(m, ev[i].w, ev[i].revents);
		}
	}
	metrics_timers(m, now_ms());
	return n;
}

static int
idle(struct metrics *m)
{
	return metrics_timers(m, now_ms()) < 0;
}

/* Run the loop until it has nothing to do and fd nothing to read. */
static void
settle(struct loop *l, struct metrics *m, int fd, size_t *len, int *eof)
{
	int64_t deadline = now_ms() + HTTP_MS;
	size_t before;

	for (;;) {
		before = *len;
		if (turn(l, m, 0) == 0 && (fd < 0 || *eof != 0 ||
		    (*len += peer_recv(fd, got + *len, GOT_MAX - *len, eof)) ==
		    before)) {
			return;
		}
		CHECK(now_ms() < deadline, "the loop still busy after %d ms",
		      HTTP_MS);
	}
}

/* Run the loop, reading fd, until the responder closes it. */
static void
read_to_eof(struct loop *l, struct metrics *m, int fd, size_t *len,
            int *eof)
{
	int64_t deadline = now_ms() + HTTP_MS;

	while (*eof == 0) {
		CHECK(now_ms() < deadline, "no EOF within %d ms (%zu bytes)",
		      HTTP_MS, *len);
		turn(l, m, 1);
		*len += peer_recv(fd, got + *len, GOT_MAX - *len, eof);
		CHECK(*len < GOT_MAX, "an answer over %d bytes", GOT_MAX);
	}
}

static int
scraper_connect(int port, int small)
{
	struct sockaddr_in sin;
	int fd, rcv = 4096, mss = 536;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(fd >= 0, "socket: %s", strerror(errno));
	/* A small window and a short MSS: on loopback the kernel would
	 * otherwise take megabytes from the responder in one send. */
	if (small) {
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
		setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss));
	}
	/* Non-blocking: libFuzzer's SIGALRM would interrupt a blocking
	 * connect, which cannot be restarted. */
	CHECK(set_nonblock(fd) == 0, "set_nonblock: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		int rc;

		CHECK(errno == EINPROGRESS, "connect to port %d: %s", port,
		      strerror(errno));
		do {
			rc = poll(&pf, 1, HTTP_MS);
		} while (rc < 0 && errno == EINTR);
		CHECK(rc == 1 && connect_done(fd) == 0, "connect to port %d: %s",
		      port, rc == 1 ? strerror(errno) : "timed out");
	}
	return fd;
}

/* The page must hold the request, escaped: between its <p> and </p>,
 * no < > " ' and every & an entity, decoding to text. */
static void
check_escaped(const char *body, size_t len, const char *text)
{
	static const char *const ent[] = { "&amp;", "&lt;", "&gt;", "&quot;",
	                                   "&#39;" };
	static const char dec[] = "&<>\"'";
	const char *p = strstr(body, "</h1>\n<p>"), *end = body + len;
	size_t i, k;

	CHECK(p != NULL, "the page lacks its heading");
	for (p += 9; p < end && *p != '<'; p++, text++) {
		CHECK(*p != '>' && *p != '"' && *p != '\'',
		      "a bare %c on the page", *p);
		if (*p == '&') {
			for (k = 0; k < 5; k++) {
				i = strlen(ent[k]);
				if ((size_t)(end - p) >= i &&
				    memcmp(p, ent[k], i) == 0) {
					break;
				}
			}
			CHECK(k < 5, "a bare & on the page");
			CHECK(*text == dec[k], "&%s for 0x%02x", ent[k] + 1,
			      (uint8_t)*text);
			p += i - 1;
		} else {
			CHECK(*p == *text, "0x%02x on the page for 0x%02x",
			      (uint8_t)*p, (uint8_t)*text);
		}
	}
	CHECK(*text == '\0', "the page has the request only up to \"%.20s\"",
	      text);
	CHECK((size_t)(end - p) >= 5 && memcmp(p, "</p>\n", 5) == 0,
	      "the request's paragraph does not end");
}

/* The body that goes with status: ours for a 200, else its own line. */
static void
body_for(int status, const struct expect *e, struct mbuf *b)
{
	if (status == 200) {
		content_fn(&content, e->page, b);
	} else if (status == 500) {
		mb_printf(b, "the response would exceed %d bytes\n",
		          METRICS_BODY_MAX);
	} else if (status == 503) {
		mb_printf(b, "too many scrapers.\r\n");
	} else {
		mb_printf(b, "%d %s\n", status, reason(status));
	}
}

/* The answer in got[0..len): one status line, headers that end, a
 * Content-Length that the body (none for HEAD) matches byte for byte. */
static void
check_answer(size_t len, const struct expect *e)
{
	char head[512], line[64], *cl;
	struct mbuf want = { NULL, 0, 0, 0 };
	const uint8_t *end, *body;
	size_t hlen, blen;
	unsigned long long clen;
	int status, head_only;

	CHECK(len > 0, "no answer, want %d", e->status);
	CHECK(memchr(got, '\0', len) == NULL, "a NUL in the answer");
	got[len] = '\0';
	end = (const uint8_t *)strstr((const char *)got, "\r\n\r\n");
	CHECK(end != NULL && end + 4 - got < (ptrdiff_t)sizeof(head),
	      "the headers do not end: \"%.60s\"", got);
	hlen = (size_t)(end + 4 - got);
	memcpy(head, got, hlen);
	head[hlen] = '\0';
	CHECK(sscanf(head, "HTTP/1.0 %3d ", &status) == 1,
	      "no HTTP/1.0 status line: \"%.40s\"", head);
	CHECK(status == e->status || (e->alt != 0 && status == e->alt),
	      "status %d, want %d", status, e->status);
	snprintf(line, sizeof(line), "HTTP/1.0 %d %s\r\n", status,
	         reason(status));
	CHECK(strncmp(head, line, strlen(line)) == 0, "status line \"%.40s\"",
	      head);
	CHECK((cl = strstr(head, "\r\nContent-Length: ")) != NULL,
	      "no Content-Length");
	clen = strtoull(cl + 18, NULL, 10);
	CHECK(strstr(head, "\r\nConnection: close\r\n") != NULL &&
	      strstr(head, "\r\nContent-Type: text/") != NULL,
	      "headers \"%s\"", head);
	body = got + hlen;
	blen = len - hlen;

	/* A 400 for a NUL read with the headers' end comes before routing,
	 * HEAD or not. */
	head_only = status == e->status && e->head;
	body_for(status, e, &want);
	CHECK(!want.over && clen == want.len, "Content-Length %llu, want %zu",
	      clen, want.len);
	if (head_only) {
		CHECK(blen == 0, "a body of %zu bytes after HEAD", blen);
	} else {
		CHECK(blen == want.len && memcmp(body, want.p, blen) == 0,
		      "a body of %zu bytes, not the %zu asked for", blen,
		      want.len);
	}
	if (status == 200 && e->page == METRICS_HTML && !head_only) {
		check_escaped((const char *)body, blen, content.text);
	}
	free(want.p);
}

/* Send req[0..n) in pieces: c[0], c[1], c[2] bytes, then the rest.
 * Unless reading, the answer stays unread, so that a close then resets
 * it in the middle. */
static void
send_pieces(struct loop *l, struct metrics *m, int fd, int reading,
            const uint8_t *req, size_t n, const uint8_t c[3], size_t *len,
            int *eof)
{
	size_t off = 0, k, i;

	for (i = 0; i < 4 && off < n; i++) {
		k = i < 3 ? c[i] : n - off;
		k = k < n - off ? k : n - off;
		peer_send(fd, req + off, k);
		off += k;
		settle(l, m, reading ? fd : -1, len, eof);
	}
}

static void
fuzz_http(int backend, uint8_t flags, const uint8_t c[3],
          const uint8_t *data, size_t size)
{
	static const size_t pads[4] = { 0, 70000, 600000, METRICS_BODY_MAX };
	static uint8_t req[METRICS_REQ_MAX + 8];
	static char text[sizeof(req) + 1];
	struct loop *l = loops[backend];
	struct metrics *m = responders[backend];
	int port = metrics_port(m), end = flags & F_END, fd, eof = 0, i;
	int held[METRICS_CONNS];
	int64_t deadline;
	struct expect e;
	size_t n = size < sizeof(req) ? size : sizeof(req), len = 0;

	memcpy(req, data, n);
	if ((flags & F_LONG) && n < METRICS_REQ_MAX - 4 + (size_t)c[2] % 8) {
		/* 'x's at the start of the second line, so the end of the
		 * headers falls about the last byte the responder reads. */
		const uint8_t *nl = memchr(data, '\n', n);
		size_t at = nl != NULL ? (size_t)(nl - data) + 1 : n;
		size_t fill = METRICS_REQ_MAX - 4 + c[2] % 8 - n;

		memset(req + at, 'x', fill);
		memcpy(req + at + fill, data + at, n - at);
		n += fill;
	}
	memcpy(text, req, n);
	text[n] = '\0';
	content.text = text;
	content.pad = pads[(flags & F_PAD) >> 3];
	content.run++;
	model(req, n, &e);
	if (e.status == 200) {
		struct mbuf b = { NULL, 0, 0, 0 };

		content_fn(&content, e.page, &b);
		e.status = b.over ? 500 : 200;
		free(b.p);
	}

	for (i = 0; i < METRICS_CONNS && (flags & F_CAP); i++) {
		held[i] = scraper_connect(port, 0);
	}
	deadline = now_ms() + HTTP_MS;
	fd = scraper_connect(port, flags & F_SMALL_RCV);
	if (flags & F_CAP) {
		/* Nothing sent: a request unread when it closes would reset
		 * the answer away. */
		struct expect busy = { .status = 503 };

		read_to_eof(l, m, fd, &len, &eof);
		check_answer(len, &busy);
		for (i = 0; i < METRICS_CONNS; i++) {
			close(held[i]);
		}
	} else {
		while (idle(m)) {
			CHECK(now_ms() < deadline, "not accepted in %d ms",
			      HTTP_MS);
			turn(l, m, 1);
		}
		send_pieces(l, m, fd, end != END_CLOSE, req, n, c, &len, &eof);
		if (end == END_SHUT) {
			shutdown(fd, SHUT_WR);
		}
		if (end != END_CLOSE && (e.status != 0 || end == END_SHUT)) {
			read_to_eof(l, m, fd, &len, &eof);
		} else if (end != END_CLOSE) {
			settle(l, m, fd, &len, &eof);
			CHECK(len == 0 && eof == 0, "%zu bytes%s for a request "
			      "not yet whole", len, eof ? " and EOF" : "");
		}
		if (end != END_CLOSE && e.status != 0) {
			check_answer(len, &e);
		} else if (end == END_SHUT) {
			CHECK(len == 0 && eof == 1, "%zu bytes for a request "
			      "cut short by EOF", len);
		}
	}
	if (end == END_RESET) {
		struct linger lg = { 1, 0 };

		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(fd);
	deadline = now_ms() + HTTP_MS;
	while (!idle(m)) {
		CHECK(now_ms() < deadline, "a scraper still held %d ms after "
		      "its peer closed", HTTP_MS);
		turn(l, m, 1);
	}
}

/* ==== mode 1: CIDR blocks ================================================ */

static const char *const cidr_phrases[] = {
	"want an IPv4 or IPv6 address, optionally /BITS",
	"not an IPv4 or IPv6 address",
	"prefix length is not a number",
	"prefix length out of range (0-32)",
	"prefix length out of range (0-128)",
	NULL,
};

static int
bit(const uint8_t *a, int i)
{
	return a[i / 8] >> (7 - i % 8) & 1;
}

static int
mapped(const uint8_t ip[16])
{
	static const uint8_t pre[12] = { [10] = 0xff, [11] = 0xff };

	return memcmp(ip, pre, sizeof(pre)) == 0;
}

/* cidr_match written the slow way: the family, then bit by bit. */
static int
ref_match(const struct cidr *c, const uint8_t ip[16])
{
	int i;

	if (mapped(ip) != c->v4) {
		return 0;
	}
	for (i = 0; i < c->bits; i++) {
		if (bit(ip, i) != bit(c->addr, i)) {
			return 0;
		}
	}
	return 1;
}

static void
same_block(const struct cidr *a, const char *text)
{
	char why[128];
	struct cidr b;

	CHECK(cidr_parse(text, &b, why, sizeof(why)) == 0,
	      "\"%s\" fails: %s", text, why);
	CHECK(memcmp(a->addr, b.addr, 16) == 0 && a->bits == b.bits &&
	      a->v4 == b.v4, "\"%s\" is another block (bits %d/%d, v4 %d/%d)",
	      text, a->bits, b.bits, a->v4, b.v4);
}

/* addr_ip16 maps a socket's address as we did: IPv4 to ::ffff:a.b.c.d. */
static void
check_ip16(const uint8_t a[16], int v4)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	uint8_t ip[16];

	memset(&ss, 0, sizeof(ss));
	if (v4) {
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, a + 12, 4);
	} else {
		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, a, 16);
	}
	CHECK(addr_ip16((struct sockaddr *)&ss, ip) == 0 &&
	      memcmp(ip, a, 16) == 0, "addr_ip16 maps another address");
}

static void
fuzz_cidr(const uint8_t *data, size_t size)
{
	char text[256], why[128], host[256], back[128], ip[INET6_ADDRSTRLEN];
	const char *slash;
	uint8_t a[16], flip[16];
	struct cidr c;
	int i, as_v4;

	size = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
	memcpy(text, data, size);
	text[size] = '\0';
	why[0] = '\0';
	if (cidr_parse(text, &c, why, sizeof(why)) != 0) {
		CHECK(known(cidr_phrases, why), "phrase \"%s\"", why);
		return;
	}
	CHECK(why[0] == '\0', "a phrase on success: %s", why);
	CHECK(c.bits >= (c.v4 ? 96 : 0) && c.bits <= 128, "bits %d", c.bits);
	CHECK(c.v4 == (c.bits >= 96 && mapped(c.addr)), "v4 %d for bits %d",
	      c.v4, c.bits);
	for (i = c.bits; i < 128; i++) {
		CHECK(bit(c.addr, i) == 0, "host bit %d set in /%d", i, c.bits);
	}
	slash = strchr(text, '/');
	CHECK(slash == NULL || (strchr(slash + 1, '/') == NULL &&
	      strlen(slash + 1) >= 1 && strlen(slash + 1) <= 3 &&
	      strspn(slash + 1, "0123456789") == strlen(slash + 1)),
	      "\"%s\" parsed", text);

	/* The address as written. */
	snprintf(host, sizeof(host), "%.*s",
	         (int)(slash ? (size_t)(slash - text) : strlen(text)), text);
	memset(a, 0, sizeof(a));
	as_v4 = inet_pton(AF_INET, host, a + 12) == 1;
	if (as_v4) {
		a[10] = a[11] = 0xff;
	} else {
		CHECK(inet_pton(AF_INET6, host, a) == 1, "\"%s\" parsed", host);
	}
	CHECK(slash != NULL || c.bits == 128, "no /BITS, but /%d", c.bits);
	check_ip16(a, as_v4);
	CHECK(cidr_match(&c, a) == (mapped(a) == c.v4),
	      "\"%s\" and the address it names", text);
	for (i = 0; i < 128; i++) {
		memcpy(flip, a, 16);
		flip[i / 8] ^= (uint8_t)(0x80 >> (i % 8));
		CHECK(cidr_match(&c, flip) == ref_match(&c, flip),
		      "\"%s\" and its address with bit %d flipped", text, i);
	}

	/* Printed, it parses back the same; IPv4 also in the mapped form. */
	if (as_v4) {
		inet_ntop(AF_INET, c.addr + 12, ip, sizeof(ip));
		snprintf(back, sizeof(back), "%s/%d", ip, c.bits - 96);
		same_block(&c, back);
		snprintf(back, sizeof(back), "::ffff:%s/%d", ip, c.bits);
		same_block(&c, back);
	} else {
		inet_ntop(AF_INET6, c.addr, ip, sizeof(ip));
		snprintf(back, sizeof(back), "%s/%d", ip, c.bits);
		same_block(&c, back);
	}
}

/* ==== mode 2: addresses and ports ======================================== */

#define A_DEFAULT  0x01     /* a default port (8009), else one is needed */
#define A_ZERO     0x02     /* port 0 allowed */
#define A_METRICS  0x04     /* metrics_parse instead */

static const char *const addr_phrases[] = {
	"missing ']' after IPv6 address",
	"expected ':PORT' after ']'",
	"host name too long",
	"missing port",
	"empty address",
	"port is not a number",
	"port out of range (1-65535)",
	NULL,
};

static int
parse_as(uint8_t flags, const char *text, struct hostport *hp, char *why,
         size_t len)
{
	if (flags & A_METRICS) {
		return metrics_parse(text, hp, why, len);
	}
	return addr_parse(text, flags & A_DEFAULT ? 8009 : -1,
	                  (flags & A_ZERO) != 0, hp, why, len);
}

static void
fuzz_addr(uint8_t flags, const uint8_t *data, size_t size)
{
	char text[300], why[128], back[300];
	struct hostport hp, again;
	size_t hlen;
	long port;
	char *end;

	size = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
	memcpy(text, data, size);
	text[size] = '\0';
	why[0] = '\0';
	if (parse_as(flags, text, &hp, why, sizeof(why)) != 0) {
		CHECK(known(addr_phrases, why), "phrase \"%s\"", why);
		return;
	}
	CHECK(why[0] == '\0', "a phrase on success: %s", why);
	hlen = strlen(hp.host);
	CHECK(hlen < sizeof(hp.host), "host of %zu bytes", hlen);
	port = strtol(hp.port, &end, 10);
	CHECK(*end == '\0' && end != hp.port && port >= 0 && port <= 65535,
	      "port \"%s\"", hp.port);
	CHECK(port != 0 || (flags & (A_ZERO | A_METRICS)), "port 0 allowed");
	if ((flags & A_METRICS) && strspn(text, "0123456789") == strlen(text)) {
		CHECK(strcmp(hp.host, METRICS_DEFAULT_HOST) == 0,
		      "a bare port on \"%s\"", hp.host);
	} else {
		CHECK(strncmp(text, hp.host, hlen) == 0 ||
		      (text[0] == '[' && text[hlen + 1] == ']' &&
		       strncmp(text + 1, hp.host, hlen) == 0),
		      "host \"%s\" is not the text's \"%s\"", hp.host, text);
	}
	/* A host of brackets is nonsense that getaddrinfo turns away; it
	 * cannot be written back unambiguously. */
	if (strpbrk(hp.host, "[]") != NULL) {
		return;
	}
	snprintf(back, sizeof(back), strchr(hp.host, ':') ? "[%s]:%s" : "%s:%s",
	         hp.host, hp.port);
	CHECK(parse_as(flags, back, &again, why, sizeof(why)) == 0,
	      "\"%s\" fails: %s", back, why);
	CHECK(strcmp(hp.host, again.host) == 0 && strcmp(hp.port, again.port)
	      == 0, "\"%s\": %s %s, then %s %s", back, hp.host, hp.port,
	      again.host, again.port);
}

/* ==== mode 3: -config text =============================================== */

#define CFG_MAX 16384              /* of a file */
#define CFG_OUT (CFG_MAX + 4096)   /* the table written back: its values
                                    * are the file's, and 16 bytes a line */

struct table {
	const char *token, *pool, *config;
	struct flag_list local;
	int plaintext, v;
	struct flag flags[7];
};

static void
table_init(struct table *t)
{
	memset(t, 0, sizeof(*t));
	t->flags[0] = (struct flag){ "token", &t->token, NULL, NULL };
	t->flags[1] = (struct flag){ "pool", &t->pool, NULL, NULL };
	t->flags[2] = (struct flag){ "local", NULL, NULL, &t->local };
	t->flags[3] = (struct flag){ "plaintext", NULL, &t->plaintext, NULL };
	t->flags[4] = (struct flag){ "v", NULL, &t->v, NULL };
	/* In flags_apply's table, but a file may not name another. */
	t->flags[5] = (struct flag){ "config", &t->config, NULL, NULL };
	t->flags[6] = (struct flag){ NULL, NULL, NULL, NULL };
}

/* Parse text[0..n) as a file into a fresh t; the copy is kept in *keep
 * (the table points into it).  config_parse's result. */
static int
parse_cfg(const char *text, size_t n, struct table *t, char **keep,
          int *lineno, char *err, size_t errlen)
{
	*keep = malloc(n + 1);
	CHECK(*keep != NULL, "out of memory");
	memcpy(*keep, text, n);
	(*keep)[n] = '\0';
	table_init(t);
	err[0] = '\0';
	return config_parse(*keep, t->flags, lineno, err, errlen);
}

/* Append to out[0..CFG_OUT), from off; the new end. */
static size_t
cfg_put(char *out, size_t off, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static size_t
cfg_put(char *out, size_t off, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out + off, CFG_OUT - off, fmt, ap);
	va_end(ap);
	CHECK(n >= 0 && (size_t)n < CFG_OUT - off, "%zu bytes written back",
	      off + (size_t)n);
	return off + (size_t)n;
}

/* A value as config_line leaves it: a trimmed part of one line. */
static void
check_value(const char *v, const char *text, size_t n, const char *name)
{
	size_t len;

	CHECK(v >= text && v < text + n, "-%s points outside the text", name);
	len = strlen(v);
	CHECK(len >= 1 && strchr(" \t=", v[0]) == NULL &&
	      strchr(" \t\r", v[len - 1]) == NULL && strpbrk(v, "#\n") == NULL,
	      "-%s is \"%s\"", name, v);
}

/* The byte length of lines 1..k of text, newlines included. */
static size_t
cfg_lines_len(const char *text, size_t n, int k)
{
	size_t i;

	for (i = 0; i < n && k > 0; i++) {
		if (text[i] == '\n') {
			k--;
		}
	}
	return i;
}

static void
check_cfg_failure(const char *text, size_t n, int lineno, const char *err)
{
	static const char *const names[] = { "token", "pool", "local",
	                                     "plaintext", "v", NULL };
	char want[160], again[128];
	struct table t;
	char *keep;
	int lines = 1, line2, i, ok = 0;
	size_t k;

	for (k = 0; k < n; k++) {
		lines += text[k] == '\n';
	}
	CHECK(lineno >= 1 && lineno <= lines, "line %d of %d", lineno, lines);
	if (strcmp(err, "a value with no word before it") == 0) {
		ok = 1;
	} else if (strncmp(err, "unknown word '", 14) == 0) {
		k = strlen(err);
		/* The word, as long as the buffer let it be: no separator. */
		ok = k > 15 && (err[k - 1] == '\'' || k == 127) &&
		     strcspn(err + 14, " \t=#\n") >= k - 15;
		for (i = 0; names[i] != NULL && ok && err[k - 1] == '\''; i++) {
			snprintf(want, sizeof(want), "unknown word '%s'",
			         names[i]);
			ok = strcmp(err, want) != 0;
		}
	}
	for (i = 0; names[i] != NULL && !ok; i++) {
		static const char *const tails[] = { "%s takes no value",
		                                     "%s needs a value",
		                                     "%s: at most %d" };
		size_t j;

		for (j = 0; j < 3 && !ok; j++) {
			snprintf(want, sizeof(want), "flag -");
			snprintf(want + 6, sizeof(want) - 6, tails[j], names[i],
			         FLAG_LIST_MAX);
			ok = strcmp(err, want) == 0;
		}
	}
	CHECK(ok, "phrase \"%s\"", err);

	CHECK(parse_cfg(text, cfg_lines_len(text, n, lineno - 1), &t, &keep,
	                &line2, again, sizeof(again)) == 0,
	      "lines before %d fail: line %d: %s", lineno, line2, again);
	free(keep);
	CHECK(parse_cfg(text, cfg_lines_len(text, n, lineno), &t, &keep,
	                &line2, again, sizeof(again)) == -1,
	      "lines up to %d parse", lineno);
	free(keep);
	CHECK(line2 == lineno && strcmp(err, again) == 0,
	      "line %d: \"%s\", then line %d: \"%s\"", lineno, err, line2,
	      again);
}

/* The command line's values replace a file's list, then add to it;
 * its value replaces the file's. */
static void
check_cli_wins(struct table *t)
{
	char *argv[] = { "fuzz", "-local", "cli1", "--local=cli2",
	                 "-token", "cli", NULL };
	char err[128];

	CHECK(flags_parse(6, argv, t->flags, err, sizeof(err)) == 0,
	      "the command line after the file: %s", err);
	CHECK(t->local.n == 2 && strcmp(t->local.v[0], "cli1") == 0 &&
	      strcmp(t->local.v[1], "cli2") == 0 && !t->local.from_file,
	      "-local on the command line: %d values, from_file %d",
	      t->local.n, t->local.from_file);
	CHECK(strcmp(t->token, "cli") == 0, "-token is \"%s\"", t->token);
}

static void
fuzz_config(const uint8_t *data, size_t size)
{
	static char out[CFG_OUT];
	const char *text = (const char *)data;
	struct table t, back;
	char err[128], *keep, *keep2;
	size_t n = strnlen(text, size < CFG_MAX ? size : CFG_MAX), off = 0;
	int lineno, i;

	/* config_apply reads the file into a NUL-terminated buffer, so a
	 * NUL ends it there. */
	if (parse_cfg(text, n, &t, &keep, &lineno, err, sizeof(err)) != 0) {
		free(keep);
		check_cfg_failure(text, n, lineno, err);
		return;
	}
	CHECK(err[0] == '\0', "a phrase on success: %s", err);
	CHECK(t.config == NULL, "a file set -config");
	CHECK(t.plaintext <= 1 && t.v <= 1 && t.local.n <= FLAG_LIST_MAX,
	      "switches %d %d, %d locals", t.plaintext, t.v, t.local.n);
	CHECK(t.local.n == 0 || t.local.from_file, "locals not from the file");
	if (t.token != NULL) {
		check_value(t.token, keep, n, "token");
		off = cfg_put(out, off, "token %s\n", t.token);
	}
	if (t.pool != NULL) {
		check_value(t.pool, keep, n, "pool");
		off = cfg_put(out, off, "-pool=%s\n", t.pool);
	}
	for (i = 0; i < t.local.n; i++) {
		check_value(t.local.v[i], keep, n, "local");
		off = cfg_put(out, off, "  --local\t%s # %d\n", t.local.v[i],
		              i);
	}
	off = cfg_put(out, off, "plaintext %s\nv%s\n",
	              t.plaintext ? "yes" : "no", t.v ? "" : " false");

	/* Written back out, the table reads back the same. */
	CHECK(parse_cfg(out, off, &back, &keep2, &lineno, err, sizeof(err)) ==
	      0, "written back, line %d fails: %s", lineno, err);
	CHECK((t.token == NULL) == (back.token == NULL) &&
	      (t.token == NULL || strcmp(t.token, back.token) == 0) &&
	      (t.pool == NULL) == (back.pool == NULL) &&
	      (t.pool == NULL || strcmp(t.pool, back.pool) == 0) &&
	      t.plaintext == back.plaintext && t.v == back.v &&
	      t.local.n == back.local.n, "written back, another table");
	for (i = 0; i < t.local.n; i++) {
		CHECK(strcmp(t.local.v[i], back.local.v[i]) == 0,
		      "written back, -local %d is \"%s\", not \"%s\"", i,
		      back.local.v[i], t.local.v[i]);
	}
	check_cli_wins(&t);
	free(keep);
	free(keep2);
}

/* ==== the entry points =================================================== */

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char why[256];
	int i;

	(void)argc;
	(void)argv;
	/* One responder per backend, for the life of the process: each run
	 * must leave it as it found it, with no scraper held. */
	for (i = 0; i < 2; i++) {
		if (i == 1) {
			setenv("DIALBACK_POLL", "1", 1);
		}
		loops[i] = loop_new();
		unsetenv("DIALBACK_POLL");
		responders[i] = metrics_open(loops[i], 1, "127.0.0.1:0",
		                             content_fn, &content, why,
		                             sizeof(why));
		CHECK(responders[i] != NULL, "metrics_open: %s", why);
	}
	fuzz_init();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1) {
		return 0;
	}
	switch (data[0] % 4) {
	case 0:
		if (size >= 5) {
			fuzz_http(data[0] >> 7, data[1], data + 2, data + 5,
			          size - 5);
		}
		break;
	case 1:
		fuzz_cidr(data + 1, size - 1);
		break;
	case 2:
		if (size >= 2) {
			fuzz_addr(data[1], data + 2, size - 2);
		}
		break;
	case 3:
		fuzz_config(data + 1, size - 1);
		break;
	}
	fd_check_unchanged();
	return 0;
}
