/*
 * -metrics ADDR: a tiny HTTP/1.0 responder on the program's own event
 * loop, for Prometheus (GET /metrics) and for a person (GET /).  See
 * metrics.h for its limits; everything here is sized so that a stalled or
 * hostile scraper costs one of METRICS_CONNS slots until its deadline,
 * and never a turn of the loop.
 *
 * A scraper is a struct scraper in a fixed array: READ the request (up to
 * METRICS_REQ_MAX bytes, until the blank line), then WRITE the response
 * (built whole before the first byte goes out), then LINGER: after our
 * FIN, read and drop what the peer still sends until its EOF, so that
 * closing with unread bytes cannot reset the response away.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

#define MAX_LISTEN      4       /* 0.0.0.0 and :: for ":PORT" */
#define ACCEPTS         16      /* per listener per turn */
#define LINGER_MS       1000    /* after our FIN, for the peer's */
#define PAUSE_MS        100     /* out of descriptors: stop accepting */

enum sc_state { SC_FREE, SC_READ, SC_WRITE, SC_LINGER };

struct scraper {
	enum sc_state state;
	int fd;
	struct watch w;
	int64_t deadline;
	char req[METRICS_REQ_MAX];
	size_t req_len;
	char head[256];              /* status line and headers */
	size_t head_len, head_off;
	struct mbuf body;
	size_t body_off;
	int head_only;               /* HEAD: no body goes out */
};

struct metrics {
	struct loop *loop;
	int kind;
	int lfd[MAX_LISTEN];
	struct watch lw[MAX_LISTEN];
	int nl;
	int64_t paused_until;        /* EMFILE: listeners unwatched till then */
	metrics_fn fn;
	void *ctx;
	struct scraper sc[METRICS_CONNS];
};

/* ==== the body buffer ===================================================== */

static int
mb_room(struct mbuf *b, size_t want)
{
	size_t cap = b->cap ? b->cap : 4096;
	char *p;

	if (b->over) {
		return -1;
	}
	if (b->len + want <= b->cap) {
		return 0;
	}
	while (cap < b->len + want) {
		cap *= 2;
	}
	if (cap > METRICS_BODY_MAX) {
		cap = METRICS_BODY_MAX;
	}
	if (b->len + want > cap || (p = realloc(b->p, cap)) == NULL) {
		b->over = 1;
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

void
mb_printf(struct mbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	/* One more for vsnprintf's NUL, which the next append overwrites. */
	if (n < 0 || mb_room(b, (size_t)n + 1) != 0) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void
mb_html(struct mbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		switch (*s) {
		case '&':  mb_printf(b, "&amp;");  break;
		case '<':  mb_printf(b, "&lt;");   break;
		case '>':  mb_printf(b, "&gt;");   break;
		case '"':  mb_printf(b, "&quot;"); break;
		case '\'': mb_printf(b, "&#39;");  break;
		default:   mb_printf(b, "%c", *s); break;
		}
	}
}

void
mb_family(struct mbuf *b, const char *name, const char *type,
          const char *help)
{
	mb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
mb_free(struct mbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* ==== listening =========================================================== */

int
metrics_parse(const char *addr, struct hostport *hp, char *why, size_t len)
{
	if (addr_parse(addr, -1, 1, hp, why, len) != 0) {
		return -1;
	}
	/* A bare port is loopback: metrics are for this host unless asked. */
	if (strspn(addr, "0123456789") == strlen(addr)) {
		snprintf(hp->host, sizeof(hp->host), "%s", METRICS_DEFAULT_HOST);
	}
	return 0;
}

struct metrics *
metrics_open(struct loop *loop, int kind, const char *addr, metrics_fn fn,
             void *ctx, char *why, size_t len)
{
	struct metrics *m;
	struct hostport hp;
	int i;

	if (metrics_parse(addr, &hp, why, len) != 0) {
		return NULL;
	}
	if ((m = calloc(1, sizeof(*m))) == NULL) {
		snprintf(why, len, "out of memory");
		return NULL;
	}
	m->loop = loop;
	m->kind = kind;
	m->fn = fn;
	m->ctx = ctx;
	for (i = 0; i < METRICS_CONNS; i++) {
		m->sc[i].fd = -1;
		watch_init(&m->sc[i].w, kind, &m->sc[i], 1);
	}
	if ((m->nl = listen_on(&hp, "metrics", m->lfd, MAX_LISTEN, why,
	                       len)) < 0) {
		free(m);
		return NULL;
	}
	for (i = 0; i < m->nl; i++) {
		watch_init(&m->lw[i], kind, m, 0);
		if (loop_watch(loop, &m->lw[i], m->lfd[i], POLLIN) != 0) {
			snprintf(why, len, "metrics port: %s", strerror(errno));
			metrics_close(m);
			return NULL;
		}
	}
	return m;
}

int
metrics_port(const struct metrics *m)
{
	return m->nl > 0 ? local_port(m->lfd[0]) : 0;
}

/* ==== one scraper ========================================================= */

static void
sc_close(struct metrics *m, struct scraper *sc)
{
	if (sc->state == SC_FREE) {
		return;
	}
	loop_unwatch(m->loop, &sc->w);
	close(sc->fd);
	sc->fd = -1;
	mb_free(&sc->body);
	sc->state = SC_FREE;
}

static void
sc_watch(struct metrics *m, struct scraper *sc, short events)
{
	if (loop_watch(m->loop, &sc->w, sc->fd, events) != 0) {
		sc_close(m, sc);
	}
}

/* Queue the response: status, headers, and body (already in sc->body). */
static void
sc_respond(struct metrics *m, struct scraper *sc, const char *status,
           const char *type)
{
	int n;

	if (sc->body.over) {
		mb_free(&sc->body);
		status = "500 Internal Server Error";
		type = "text/plain; charset=utf-8";
		mb_printf(&sc->body, "the response would exceed %d bytes\n",
		          METRICS_BODY_MAX);
	}
	n = snprintf(sc->head, sizeof(sc->head),
	             "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	             "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
	             status, type, sc->body.len);
	sc->head_len = (size_t)n < sizeof(sc->head) ? (size_t)n : 0;
	sc->head_off = sc->body_off = 0;
	sc->state = SC_WRITE;
	sc->deadline = now_ms() + METRICS_WRITE_MS;
	/* Stop reading: what a scraper sends after its request is not
	 * wanted, and its EOF must not end the response early. */
	sc_watch(m, sc, POLLOUT);
}

static void
sc_error(struct metrics *m, struct scraper *sc, const char *status)
{
	mb_free(&sc->body);
	mb_printf(&sc->body, "%s\n", status);
	sc_respond(m, sc, status, "text/plain; charset=utf-8");
}

/* Split the request line "METHOD /PATH HTTP/1.x" (in place) into method
 * and path, the query string cut off.  0, or -1 if it is not one. */
static int
request_line(char *req, char **method, char **path)
{
	char *end = req + strcspn(req, "\r\n"), *sp1, *sp2, *q;

	*end = '\0';
	if ((sp1 = strchr(req, ' ')) == NULL ||
	    (sp2 = strchr(sp1 + 1, ' ')) == NULL || sp1 == req ||
	    sp1[1] != '/' || strncmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
	    strchr(sp2 + 1, ' ') != NULL) {
		return -1;
	}
	*sp1 = *sp2 = '\0';
	if ((q = strchr(sp1 + 1, '?')) != NULL) {
		*q = '\0';
	}
	*method = req;
	*path = sp1 + 1;
	return 0;
}

/* The request is whole (req[0..req_len), NUL-terminated): answer it. */
static void
sc_route(struct metrics *m, struct scraper *sc)
{
	char *method, *path;

	if (request_line(sc->req, &method, &path) != 0) {
		sc_error(m, sc, "400 Bad Request");
		return;
	}
	/* GET and HEAD of the two pages; anything else is 404, as the
	 * issue that asked for the listener says. */
	sc->head_only = strcmp(method, "HEAD") == 0;
	if (strcmp(method, "GET") != 0 && !sc->head_only) {
		sc_error(m, sc, "404 Not Found");
		return;
	}
	if (strcmp(path, "/metrics") == 0) {
		m->fn(m->ctx, METRICS_PROM, &sc->body);
		sc_respond(m, sc, "200 OK", "text/plain; version=0.0.4; "
		           "charset=utf-8");
	} else if (strcmp(path, "/") == 0) {
		m->fn(m->ctx, METRICS_HTML, &sc->body);
		sc_respond(m, sc, "200 OK", "text/html; charset=utf-8");
	} else {
		sc_error(m, sc, "404 Not Found");
	}
}

/* The end of the headers: a blank line, "\r\n\r\n" or a bare "\n\n". */
static int
req_complete(const struct scraper *sc)
{
	return strstr(sc->req, "\r\n\r\n") != NULL ||
	       strstr(sc->req, "\n\n") != NULL;
}

static void
sc_read(struct metrics *m, struct scraper *sc)
{
	ssize_t r;

	for (;;) {
		size_t room = sizeof(sc->req) - 1 - sc->req_len;

		if (room == 0) {
			sc_error(m, sc, "431 Request Header Fields Too Large");
			return;
		}
		r = read(sc->fd, sc->req + sc->req_len, room);
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0 && errno == EAGAIN) {
			return;
		}
		if (r <= 0) {
			sc_close(m, sc);     /* gone before its request was whole */
			return;
		}
		sc->req_len += (size_t)r;
		sc->req[sc->req_len] = '\0';
		if (memchr(sc->req, '\0', sc->req_len) != NULL) {
			sc_error(m, sc, "400 Bad Request");
			return;
		}
		if (req_complete(sc)) {
			sc_route(m, sc);
			return;
		}
	}
}

/* Send what the socket takes; once all is out, FIN and linger. */
static void
sc_write(struct metrics *m, struct scraper *sc)
{
	size_t sent;

	while (sc->head_off < sc->head_len) {
		if (send_some(sc->fd, (const uint8_t *)sc->head + sc->head_off,
		              sc->head_len - sc->head_off, &sent) != 0) {
			sc_close(m, sc);
			return;
		}
		if (sent == 0) {
			return;
		}
		sc->head_off += sent;
	}
	while (!sc->head_only && sc->body_off < sc->body.len) {
		if (send_some(sc->fd, (const uint8_t *)sc->body.p + sc->body_off,
		              sc->body.len - sc->body_off, &sent) != 0) {
			sc_close(m, sc);
			return;
		}
		if (sent == 0) {
			return;
		}
		sc->body_off += sent;
	}
	mb_free(&sc->body);
	/* ENOTCONN: the peer is gone already; closing is all that is left. */
	if (shutdown(sc->fd, SHUT_WR) != 0) {
		sc_close(m, sc);
		return;
	}
	sc->state = SC_LINGER;
	sc->deadline = earliest(sc->deadline, now_ms() + LINGER_MS);
	sc_watch(m, sc, POLLIN);
}

/* After our FIN: drop what comes until the peer's EOF (or an error). */
static void
sc_drain(struct metrics *m, struct scraper *sc)
{
	char junk[512];
	ssize_t r;

	for (;;) {
		r = read(sc->fd, junk, sizeof(junk));
		if (r < 0 && errno == EINTR) {
			continue;
		}
		if (r < 0 && errno == EAGAIN) {
			return;
		}
		if (r <= 0) {
			sc_close(m, sc);
			return;
		}
	}
}

/* ==== accepting =========================================================== */

/* Over the cap: say so, if the socket takes it at once, and close. */
static void
turn_away(int fd)
{
	static const char busy[] =
		"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; "
		"charset=utf-8\r\nContent-Length: 20\r\nRetry-After: 1\r\n"
		"Connection: close\r\n\r\ntoo many scrapers.\r\n";
	size_t sent;

	send_some(fd, (const uint8_t *)busy, sizeof(busy) - 1, &sent);
	close(fd);
}

static void
accept_some(struct metrics *m, int lfd)
{
	int i, k, fd;

	for (i = 0; i < ACCEPTS; i++) {
		struct scraper *sc = NULL;

		if ((fd = accept_nb(lfd, NULL, NULL)) < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				/* The listener stays readable: rest a moment rather
				 * than spin.  The program's own ports are not ours. */
				m->paused_until = now_ms() + PAUSE_MS;
				for (k = 0; k < m->nl; k++) {
					loop_unwatch(m->loop, &m->lw[k]);
				}
				return;
			}
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			return;              /* EAGAIN: all taken */
		}
		for (k = 0; k < METRICS_CONNS && sc == NULL; k++) {
			if (m->sc[k].state == SC_FREE) {
				sc = &m->sc[k];
			}
		}
		if (sc == NULL) {
			turn_away(fd);
			continue;
		}
		sc->fd = fd;
		sc->state = SC_READ;
		sc->req_len = 0;
		sc->req[0] = '\0';
		sc->head_only = 0;
		sc->deadline = now_ms() + METRICS_READ_MS;
		sc_watch(m, sc, POLLIN);
	}
}

/* ==== the loop's hooks ==================================================== */

void
metrics_event(struct metrics *m, struct watch *w, short revents)
{
	struct scraper *sc;

	if (w->side == 0) {
		accept_some(m, w->fd);
		return;
	}
	sc = w->obj;
	/* Events are level-triggered and may be stale (a slot reused this
	 * turn): each step below does nothing when there is nothing to do. */
	switch (sc->state) {
	case SC_READ:
		sc_read(m, sc);
		break;
	case SC_WRITE:
		if (revents & (POLLOUT | POLLERR | POLLHUP)) {
			sc_write(m, sc);
		}
		break;
	case SC_LINGER:
		sc_drain(m, sc);
		break;
	case SC_FREE:
		break;
	}
}

int64_t
metrics_timers(struct metrics *m, int64_t now)
{
	int64_t due = -1;
	int i;

	if (m == NULL) {
		return -1;
	}
	if (m->paused_until != 0) {
		if (now >= m->paused_until) {
			m->paused_until = 0;
			for (i = 0; i < m->nl; i++) {
				loop_watch(m->loop, &m->lw[i], m->lfd[i], POLLIN);
			}
		} else {
			due = m->paused_until;
		}
	}
	for (i = 0; i < METRICS_CONNS; i++) {
		struct scraper *sc = &m->sc[i];

		if (sc->state == SC_FREE) {
			continue;
		}
		if (now >= sc->deadline) {
			log_debug("metrics: a scraper closed: too slow");
			sc_close(m, sc);
		} else {
			due = earliest(due, sc->deadline);
		}
	}
	return due;
}

void
metrics_close(struct metrics *m)
{
	int i;

	if (m == NULL) {
		return;
	}
	for (i = 0; i < METRICS_CONNS; i++) {
		sc_close(m, &m->sc[i]);
	}
	for (i = 0; i < m->nl; i++) {
		loop_unwatch(m->loop, &m->lw[i]);
		close(m->lfd[i]);
	}
	free(m);
}

/* ==== content both programs share ========================================= */

/* Descriptors open in this process, from /proc/self/fd (Linux); -1
 * elsewhere, or when the directory cannot be opened (out of fds). */
static long
open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	long n = 0;

	if (d == NULL) {
		return -1;
	}
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.') {
			n++;
		}
	}
	closedir(d);
	return n - 1;                /* the directory's own */
}

void
metrics_process(struct mbuf *b, int64_t started)
{
	long fds = open_fds();
	long long heap = heap_bytes();

	mb_family(b, "dialback_build_info", "gauge",
	          "The dialback release running (always 1).");
	mb_printf(b, "dialback_build_info{version=\"%s\"} 1\n",
	          DIALBACK_VERSION);
	mb_family(b, "dialback_uptime_seconds", "gauge",
	          "Seconds since the process started.");
	mb_printf(b, "dialback_uptime_seconds %lld\n",
	          (long long)(now_ms() - started) / 1000);
	if (fds >= 0) {
		mb_family(b, "dialback_open_fds", "gauge",
		          "File descriptors open.");
		mb_printf(b, "dialback_open_fds %ld\n", fds);
	}
	if (heap >= 0) {
		mb_family(b, "dialback_heap_bytes", "gauge",
		          "Bytes malloc has handed out and not had back.");
		mb_printf(b, "dialback_heap_bytes %lld\n", heap);
	}
}

void
metrics_html_head(struct mbuf *b, const char *title)
{
	mb_printf(b, "<!doctype html>\n<html lang=\"en\"><head>"
	          "<meta charset=\"utf-8\">\n<title>");
	mb_html(b, title);
	mb_printf(b, "</title>\n<style>body{font-family:sans-serif;margin:2em}"
	          "table{border-collapse:collapse;margin-bottom:1.5em}"
	          "th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}"
	          "td.n{text-align:right}</style>\n</head><body>\n<h1>");
	mb_html(b, title);
	mb_printf(b, "</h1>\n");
}

void
metrics_html_tail(struct mbuf *b)
{
	mb_printf(b, "<p>Prometheus metrics: <a href=\"/metrics\">/metrics</a>"
	          "</p>\n</body></html>\n");
}

const char *
metrics_since(int64_t at, char *buf, size_t len)
{
	int64_t ago = (now_ms() - at) / 1000;
	time_t then = time(NULL) - (time_t)ago;
	struct tm tm;
	char when[32] = "?";

	if (gmtime_r(&then, &tm) != NULL) {
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
	if (ago >= 3600) {
		snprintf(buf, len, "%s (%lldh %lldm ago)", when,
		         (long long)ago / 3600, (long long)ago % 3600 / 60);
	} else {
		snprintf(buf, len, "%s (%lldm %llds ago)", when,
		         (long long)ago / 60, (long long)ago % 60);
	}
	return buf;
}

/* ==== the client's content ================================================ */

static void
client_prom(struct mbuf *b, const struct metrics_client *mc)
{
	int i, attached = 0, active = 0, waiting = 0;
	uint64_t total = 0;

	for (i = 0; i < mc->nsvc; i++) {
		attached += mc->svc[i].since != 0;
		active += mc->svc[i].users_active;
		waiting += mc->svc[i].users_connecting;
		total += mc->svc[i].users_total;
	}
	mb_family(b, "dialback_sessions", "gauge",
	          "Services attached to the server.");
	mb_printf(b, "dialback_sessions %d\n", attached);
	mb_family(b, "dialback_users_active", "gauge", "Users relaying now.");
	mb_printf(b, "dialback_users_active %d\n", active);
	mb_family(b, "dialback_users_waiting", "gauge",
	          "Users being connected to their service.");
	mb_printf(b, "dialback_users_waiting %d\n", waiting);
	mb_family(b, "dialback_users_total", "counter",
	          "Users announced since start.");
	mb_printf(b, "dialback_users_total %llu\n", (unsigned long long)total);
	mb_family(b, "dialback_bytes_total", "counter",
	          "Users' bytes relayed, in (from users) and out (to users), "
	          "by public port.");
	for (i = 0; i < mc->nsvc; i++) {
		mb_printf(b, "dialback_bytes_total{direction=\"in\",port=\"%d\"} "
		          "%llu\n", mc->svc[i].port,
		          (unsigned long long)mc->svc[i].bytes_in);
		mb_printf(b, "dialback_bytes_total{direction=\"out\",port=\"%d\"} "
		          "%llu\n", mc->svc[i].port,
		          (unsigned long long)mc->svc[i].bytes_out);
	}
	mb_family(b, "dialback_refused_total", "counter",
	          "Users the client could not serve, by reason.");
	for (i = 0; i < mc->nrefused; i++) {
		mb_printf(b, "dialback_refused_total{reason=\"%s\"} %llu\n",
		          mc->refused[i].reason,
		          (unsigned long long)mc->refused[i].n);
	}
	mb_family(b, "dialback_handshake_failures_total", "counter",
	          "Handshakes with the server that failed.");
	mb_printf(b, "dialback_handshake_failures_total %llu\n",
	          (unsigned long long)mc->handshake_failures);
	metrics_process(b, mc->started);
}

static void
client_html(struct mbuf *b, const struct metrics_client *mc)
{
	char since[64];
	int i;

	metrics_html_head(b, "dialback client");
	mb_printf(b, "<p>Server: ");
	mb_html(b, mc->remote != NULL ? mc->remote : "");
	mb_printf(b, "; up since %s.</p>\n<h2>Services</h2>\n<table>\n"
	          "<tr><th>port</th><th>service</th><th>state</th><th>since</th>"
	          "<th>users now</th><th>users in all</th><th>bytes in</th>"
	          "<th>bytes out</th></tr>\n",
	          metrics_since(mc->started, since, sizeof(since)));
	for (i = 0; i < mc->nsvc; i++) {
		const struct metrics_service *v = &mc->svc[i];

		mb_printf(b, "<tr><td class=\"n\">%d</td><td>", v->port);
		mb_html(b, v->local != NULL ? v->local : "");
		mb_printf(b, "</td><td>");
		mb_html(b, v->state != NULL ? v->state : "");
		mb_printf(b, "</td><td>%s</td><td class=\"n\">%d</td>"
		          "<td class=\"n\">%llu</td><td class=\"n\">%llu</td>"
		          "<td class=\"n\">%llu</td></tr>\n",
		          v->since != 0 ? metrics_since(v->since, since,
		                                        sizeof(since)) : "-",
		          v->users_active + v->users_connecting,
		          (unsigned long long)v->users_total,
		          (unsigned long long)v->bytes_in,
		          (unsigned long long)v->bytes_out);
	}
	mb_printf(b, "</table>\n<h2>Refused</h2>\n<table>\n");
	for (i = 0; i < mc->nrefused; i++) {
		mb_printf(b, "<tr><td>%s</td><td class=\"n\">%llu</td></tr>\n",
		          mc->refused[i].reason,
		          (unsigned long long)mc->refused[i].n);
	}
	mb_printf(b, "<tr><td>handshake failures</td><td class=\"n\">%llu</td>"
	          "</tr>\n</table>\n",
	          (unsigned long long)mc->handshake_failures);
	metrics_html_tail(b);
}

void
metrics_client_write(struct mbuf *b, enum metrics_page page,
                     const struct metrics_client *mc)
{
	if (page == METRICS_PROM) {
		client_prom(b, mc);
	} else {
		client_html(b, mc);
	}
}
