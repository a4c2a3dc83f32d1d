/*
 * metrics.c: -metrics ADDR, a small HTTP responder on the program's own
 * event loop.  GET /metrics answers the Prometheus text format (0.0.4),
 * GET / a page a person can read; anything else is 404.  The content
 * comes from a callback each program supplies.
 *
 * It can never stall the relay: every socket is non-blocking, at most
 * METRICS_CONNS scrapers are served at once (more are answered 503 and
 * closed), a request larger than METRICS_REQ_MAX is answered 431, one
 * that takes longer than METRICS_READ_MS to arrive, or a response not
 * taken within METRICS_WRITE_MS, is closed, and the response is built
 * whole into a buffer of at most METRICS_BODY_MAX before the first byte
 * goes out.
 *
 * Wiring it into a program (the server does this in server.c):
 *
 *   m = metrics_open(loop, K_METRICS, "9100", my_content, my_ctx, err, len);
 *   ... in the dispatch:   case K_METRICS: metrics_event(m, w, rev); break;
 *   ... in the timers:     due = earliest(due, metrics_timers(m, now));
 *   ... at the end:        metrics_close(m);
 */
#ifndef DIALBACK_METRICS_H
#define DIALBACK_METRICS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define METRICS_CONNS     8            /* scrapers served at once */
#define METRICS_REQ_MAX   4096         /* request line and headers */
#define METRICS_READ_MS   5000         /* the whole request, from accept */
#define METRICS_WRITE_MS  5000         /* the whole response */
#define METRICS_BODY_MAX  (4 << 20)    /* a response larger is a 500 */
#define METRICS_DEFAULT_HOST "127.0.0.1"

/* A response body being built: grows up to METRICS_BODY_MAX; past that,
 * or out of memory, over is set and the rest is dropped. */
struct mbuf {
	char *p;
	size_t len, cap;
	int over;
};

/* mb_printf: append, printf-style.  mb_html: append s with &<>"' escaped,
 * for anything a peer could have chosen (addresses). */
void mb_printf(struct mbuf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void mb_html(struct mbuf *b, const char *s);

/* mb_family: a Prometheus metric family's "# HELP name help" and
 * "# TYPE name type" lines, which come before its samples. */
void mb_family(struct mbuf *b, const char *name, const char *type,
               const char *help);

/* What the callback is asked for. */
enum metrics_page { METRICS_PROM, METRICS_HTML };

/* The program's content: append page's body to b.  Called from the loop,
 * so it must not block; it may walk the program's state. */
typedef void (*metrics_fn)(void *ctx, enum metrics_page page,
                           struct mbuf *b);

struct metrics;

/*
 * metrics_open: listen on addr ("PORT" means 127.0.0.1:PORT; "HOST:PORT",
 * ":PORT" for every interface, "[IPv6]:PORT") and serve it on loop, its
 * watches tagged with kind (the program's own value for its dispatch).
 * NULL with a phrase in why on failure (a bad address, or the port in
 * use).
 */
struct metrics *metrics_open(struct loop *loop, int kind, const char *addr,
                             metrics_fn fn, void *ctx, char *why,
                             size_t len);

/* metrics_parse: check addr as metrics_open would, without listening, so a
 * bad -metrics is a usage error before anything starts.  0 or -1 (why). */
int metrics_parse(const char *addr, struct hostport *hp, char *why,
                  size_t len);

/* metrics_port: the port it listens on (for -metrics 0). */
int metrics_port(const struct metrics *m);

/* metrics_event: the loop's event on a watch tagged with kind. */
void metrics_event(struct metrics *m, struct watch *w, short revents);

/* metrics_timers: close scrapers past their deadline; the next deadline,
 * or -1. */
int64_t metrics_timers(struct metrics *m, int64_t now);

/* metrics_close: close every socket and free m.  NULL is a no-op. */
void metrics_close(struct metrics *m);

/* ---- what both programs write ------------------------------------------- */

/* metrics_process: the process's own metrics in the Prometheus format:
 * dialback_build_info{version}, dialback_uptime_seconds,
 * dialback_open_fds (where /proc/self/fd exists) and dialback_heap_bytes
 * (where the C library tells). */
void metrics_process(struct mbuf *b, int64_t started);

/* metrics_html_head, metrics_html_tail: the page around a program's
 * tables; title is escaped. */
void metrics_html_head(struct mbuf *b, const char *title);
void metrics_html_tail(struct mbuf *b);

/* metrics_since: "2026-11-30T03:00:00Z (5m 3s ago)" for a moment of
 * now_ms()'s clock, into buf. */
const char *metrics_since(int64_t at, char *buf, size_t len);

/* ---- the client's content ---------------------------------------------- */

/*
 * The client fills these in its callback and hands them to
 * metrics_client_write, which writes either page.  Times are now_ms()
 * moments; strings are the client's (addresses are escaped in the page).
 */
struct metrics_service {
	int port;                      /* public port on the server; 0: none yet */
	const char *local;             /* "127.0.0.1:8080" */
	const char *state;             /* "attached", "connecting", ... */
	int64_t since;                 /* attached at; 0: not attached */
	int users_active;              /* relaying now */
	int users_connecting;          /* dialing the service or the tunnel */
	uint64_t users_total;          /* users announced since start */
	uint64_t bytes_in, bytes_out;  /* closed users' plus live ones' */
};

struct metrics_reason {
	const char *reason;            /* snake_case label */
	uint64_t n;
};

struct metrics_client {
	const char *remote;            /* the server it talks to */
	int64_t started;
	const struct metrics_service *svc;
	int nsvc;
	const struct metrics_reason *refused;   /* users it could not serve */
	int nrefused;
	uint64_t handshake_failures;
};

/* metrics_client_write: the client's page: per service the same metric
 * names as the server's (dialback_sessions = services attached), labelled
 * by public port. */
void metrics_client_write(struct mbuf *b, enum metrics_page page,
                          const struct metrics_client *mc);

#endif
