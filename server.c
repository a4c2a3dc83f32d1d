/*
 * dialback server: runs on the public host.  Listens on the control port
 * (clients attach), the public port (users arrive) and the tunnel port
 * (clients dial back, one connection per user, and JOIN it).  One event
 * loop (loop.c); every socket non-blocking; state in struct server.
 *
 * Objects are never freed while the loop walks its events: teardown
 * unwatches and closes descriptors and marks the object dead, and sweep()
 * frees the dead between turns, so a stale event can only see a dead flag.
 * Interest is registered when state changes (loop.c), not rebuilt each
 * turn, and nothing done per turn walks the relaying users: idle
 * connections cost nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include "server.h"


static const char usage_text[] =
"usage: %s [-control ADDR] [-tunnel ADDR] [-public ADDR] [-ports LO-HI]\n"
"                [-token SECRET] [-secrets FILE] [-plaintext]\n"
"                [-allow CIDR] [-deny CIDR] [-per-ip N]\n"
"                [-heartbeat SECONDS] [-metrics ADDR] [-v | -q]\n"
"  -control ADDR        where clients attach (default 8009)\n"
"  -tunnel ADDR         where clients dial back for each user (default 8008)\n"
"  -public ADDR         where users connect (default 8007)\n"
"  -ports LO-HI         more public ports, for clients that ask with -port\n"
"  -token SECRET        shared secret clients must prove (or DIALBACK_TOKEN)\n"
"  -secrets FILE        a secret per public port: lines PORT SECRET or\n"
"                       LO-HI SECRET (or DIALBACK_SECRETS); SIGHUP re-reads it\n"
"  -plaintext           allow clients' -plaintext tunnels (raw bytes, splice)\n"
"  -allow CIDR          admit users only from these addresses (repeatable)\n"
"  -deny CIDR           refuse users from these addresses (repeatable; wins\n"
"                       over -allow)\n"
"  -per-ip N            at most N users at once from one address on each\n"
"                       public port (default 0: no limit)\n"
"  -heartbeat SECONDS   ping interval; 3 silent intervals = dead (default 10)\n"
"  -metrics ADDR        serve GET /metrics (Prometheus) and GET / (a status\n"
"                       page) on ADDR; a bare port means 127.0.0.1 (default off)\n"
"  -config FILE         read these flags from FILE, one \"word value\" a line;\n"
"                       the command line wins (# starts a comment)\n"
"  -version             print the version and exit\n"
"  -v, -q               more logging / warnings only\n"
"ADDR is PORT, :PORT, HOST:PORT or [IPv6]:PORT; no HOST = all interfaces.\n"
"SIGUSR1 logs a status block: sessions, ports, users, bytes, uptime.\n";

static const char *const role_names[ROLE_END] = {
	[ROLE_CONTROL] = "control",
	[ROLE_TUNNEL] = "tunnel",
	[ROLE_PUBLIC] = "public",
};

/* dialback_refused_total's reason labels. */
static const char *const refusal_names[REF_END] = {
	[REF_NO_CLIENT] = "no_client",
	[REF_USERS_WAITING] = "users_waiting",
	[REF_OUT_OF_FDS] = "out_of_fds",
	[REF_HANDSHAKE_FLOOD] = "handshake_flood",
	[REF_HANDSHAKES_FULL] = "handshakes_full",
	[REF_TUNNELS_FULL] = "tunnels_full",
	[REF_WRONG_TOKEN] = "wrong_token",
	[REF_VERSION] = "version",
	[REF_PORT_NOT_OFFERED] = "port_not_offered",
	[REF_PORT_BUSY] = "port_busy",
	[REF_PLAINTEXT] = "plaintext",
	[REF_DENIED] = "denied",
	[REF_PER_IP] = "per_ip",
};

/* Stop watching fd and close it.  Every descriptor the loop watches is
 * closed through here (or relay_close after the watches are forgotten). */
void
close_watched(struct server *s, struct watch *w, int *fd)
{
	loop_unwatch(s->loop, w);
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static void
sweep(struct server *s)
{
	SWEEP(s->ctls, struct ctl, ctl_free);
	user_sweep(s);
}

/* Out of descriptors: shed the connection with the spare fd, so the
 * listener doesn't stay readable and spin the loop.  1 if one was shed. */
static int
shed_one(struct server *s, int lfd)
{
	int fd = -1;
	int64_t now = now_ms();
	unsigned long held;

	if (s->spare_fd >= 0) {
		close(s->spare_fd);
		s->spare_fd = -1;
		fd = accept(lfd, NULL, NULL);
		if (fd >= 0) {
			close(fd);
		}
		s->spare_fd = open("/dev/null", O_RDONLY);
	}
	if (s->spare_fd < 0) {
		s->accept_paused_until = now + 100;
	}
	/* accept() says EMFILE even with nothing queued: count only the
	 * connections really shed. */
	if (fd >= 0) {
		s->refused[REF_OUT_OF_FDS]++;
	}
	if (fd >= 0 && log_limited(&s->log_fds, now, &held)) {
		log_warn("out of file descriptors: closing new connections (%lu "
		         "more since the last such line); raise 'ulimit -n'", held);
	}
	return fd >= 0;
}

/* Users are accepted only while the session can queue their NEW_USER:
 * when the client reads slowly, later users wait in the kernel's accept
 * queue instead of being dropped. */
int
pub_accepting(const struct pub *p)
{
	const struct ctl *c = p->owner;

	return p->nfd > 0 && (c == NULL ||
	       c->out.cap - c->out.len >= NEW_USER_SIZE * ACCEPT_BATCH);
}

static void
accept_all(struct server *s, enum role role, int lfd, struct pub *pub)
{
	int i;

	for (i = 0; i < ACCEPT_BATCH; i++) {
		if (role == ROLE_PUBLIC && !pub_accepting(pub)) {
			return;
		}
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept_nb(lfd, (struct sockaddr *)&ss, &len);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				if (!shed_one(s, lfd)) {
					return;     /* the queue is empty */
				}
				continue;
			}
			/* EAGAIN: all taken; ECONNABORTED and friends: that one
			 * is gone, try the next turn. */
			if (errno != EINTR && errno != ECONNABORTED) {
				return;
			}
			continue;
		}
		/* Every socket carries small messages that must not wait for
		 * an ACK: NEW_USERs on control (Nagle held a second one up to a
		 * delayed-ACK timeout, 40 ms), JOINs, and users' requests. */
		set_nodelay(fd);
		switch (role) {
		case ROLE_CONTROL:
			ctl_arrive(s, fd, (struct sockaddr *)&ss);
			break;
		case ROLE_TUNNEL:
			tun_arrive(s, fd, (struct sockaddr *)&ss);
			break;
		case ROLE_PUBLIC:
			user_arrive(s, fd, (struct sockaddr *)&ss, pub);
			break;
		default:
			close(fd);
			break;
		}
	}
}

/* Silent connections time out in floods when strangers hold them open:
 * one line per 10 s for them, with a count, or NULL for a quiet close. */
static const char *
timeout_why(struct server *s, int64_t now, const char *what, char *buf,
            size_t len)
{
	unsigned long held;

	if (!log_limited(&s->log_timeouts, now, &held)) {
		return NULL;
	}
	snprintf(buf, len, "%s (%lu more timed out since the last such line)",
	         what, held);
	return buf;
}

/* Expire what is late, send pings that are due; return the next moment
 * something will be due, or -1 for none. */
static int64_t
run_timers(struct server *s, int64_t now)
{
	int64_t due = -1, dead_ms = (int64_t)s->heartbeat_s * 1000 *
	                             DEAD_AFTER_BEATS;
	struct ctl *c;
	struct tun *t;
	char why[128];

	for (c = s->ctls; c != NULL; c = c->next) {
		if (c->dead) {
			continue;
		}
		if (c->state != CTL_ATTACHED) {
			if (now >= c->deadline) {
				ctl_close(s, c, timeout_why(s, now, "handshake timed out",
				                            why, sizeof(why)));
			} else {
				due = earliest(due, c->deadline);
			}
			continue;
		}
		if (now - c->last_rx >= dead_ms) {
			snprintf(why, sizeof(why), "silent for %llds",
			         (long long)(now - c->last_rx) / 1000);
			pool_handed(s, c, "its client went silent with its "
			            "pooled tunnel");
			ctl_close(s, c, why);
			continue;
		}
		if (now >= c->next_ping) {
			struct msg m = { .type = MSG_PING };
			ctl_send(s, c, &m);
			c->next_ping = now + s->heartbeat_s * 1000;
			pool_resize(s, c, now, 0);
		}
		due = earliest(due, c->next_ping);
		due = earliest(due, c->last_rx + dead_ms);
	}
	for (t = s->tuns; t != NULL; t = t->next) {
		if (!t->dead && now >= t->deadline) {
			tun_fail(s, t, timeout_why(s, now, "no JOIN in time", why,
			                           sizeof(why)));
		} else if (!t->dead) {
			due = earliest(due, t->deadline);
		}
	}
	due = earliest(due, user_timers(s, now));
	due = earliest(due, metrics_timers(s->metrics, now));
	for (c = s->ctls; c != NULL; c = c->next) {
		if (!c->dead && c->state == CTL_ATTACHED) {
			pool_refill(s, c);
		}
	}
	if (s->accept_paused_until > now) {
		due = earliest(due, s->accept_paused_until);
	}
	return due;
}

/* Listen while accepting may go on: not while paused for lack of
 * descriptors, nor on a public port whose session has no room to queue
 * another batch of NEW_USERs. */
static void
pub_sync(struct server *s, struct pub *p, int open)
{
	int i;

	for (i = 0; i < p->nfd; i++) {
		if (open && pub_accepting(p)) {
			loop_watch(s->loop, &p->w[i], p->fd[i], POLLIN);
		} else {
			loop_unwatch(s->loop, &p->w[i]);
		}
	}
}

/* Interest that follows state changed outside any one event: the
 * listeners, and each control connection's POLLOUT while its queue holds
 * bytes.  They are few and bounded; relaying users keep their own interest
 * as they step, so idle connections are never visited. */
static void
sync_few(struct server *s, int64_t now)
{
	int open = s->accept_paused_until <= now;
	int r;
	struct ctl *c;

	for (r = 0; r < ROLE_END; r++) {
		pub_sync(s, &s->lis[r], open);
	}
	for (c = s->ctls; c != NULL; c = c->next) {
		if (c->dead) {
			continue;
		}
		if (c->own != NULL) {
			pub_sync(s, c->own, open);
		}
		if (loop_watch(s->loop, &c->w, c->fd,
		               POLLIN | (c->out.len ? POLLOUT : 0)) != 0) {
			ctl_close(s, c, strerror(errno));
		}
	}
}

/* SIGUSR1: a status block in the log. */
static void
log_status(struct server *s)
{
	int64_t now = now_ms();
	unsigned long long in = s->bytes_in, out = s->bytes_out;
	int sessions = 0;
	char heap[64];
	struct ctl *c;
	struct user *u;
	int st;

	for (st = U_HANDED; st <= U_RELAYING; st++) {
		for (u = s->users[st]; u != NULL; u = u->next) {
			in += u->relay.dir[0].bytes;
			out += u->relay.dir[1].bytes;
		}
	}
	for (c = s->ctls; c != NULL; c = c->next) {
		if (c->dead || c->state != CTL_ATTACHED) {
			continue;
		}
		sessions++;
		log_info("status: session %s serves port %d for %llds: %d users "
		         "waiting, %llu announced, %d of %d pooled tunnels parked",
		         c->peer, c->pub->port,
		         (long long)(now - c->attached_at) / 1000,
		         c->count[U_WAITING], (unsigned long long)c->served,
		         c->count[U_POOLED], c->pool_want);
	}
	heap_note(heap, sizeof(heap));
	log_info("status: up %llds; sessions: %d; users: %d relaying, %d waiting, "
	         "%llu in all; bytes: %llu in, %llu out%s",
	         (long long)(now - s->started) / 1000, sessions,
	         s->count[U_RELAYING] + s->count[U_HANDED], s->count[U_WAITING],
	         (unsigned long long)s->user_seq, in, out, heap);
}

/* The seconds of arrivals a self-sized pool follows: POOL_WINDOW_S, or
 * fewer from DIALBACK_POOL_WINDOW, so that the tests can watch a pool
 * shrink without waiting a minute. */
static int
pool_window(void)
{
	const char *e = getenv("DIALBACK_POOL_WINDOW");
	long w = e != NULL ? strtol(e, NULL, 10) : 0;

	return w >= 1 && w <= POOL_WINDOW_S ? (int)w : POOL_WINDOW_S;
}

/* ==== -metrics: what the server shows ==================================== */

/* Per public port: closed users' bytes, plus the relaying ones', and how
 * many relay now.  A copy, sorted like s->ports; NULL if out of memory. */
struct port_view {
	int port;
	uint64_t in, out;
	int live;
};

/* port_view_add: relaying user u's bytes into its port's view. */
static void
port_view_add(struct port_view *v, size_t n, const struct user *u)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (v[mid].port < u->port) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	if (lo < n && v[lo].port == u->port) {
		v[lo].in += u->relay.dir[0].bytes;
		v[lo].out += u->relay.dir[1].bytes;
		v[lo].live++;
	}
}

static struct port_view *
port_views(struct server *s)
{
	struct port_view *v = calloc(s->nports + 1, sizeof(*v));
	struct user *u;
	size_t i;
	int st;

	if (v == NULL) {
		return NULL;
	}
	for (i = 0; i < s->nports; i++) {
		v[i].port = s->ports[i].port;
		v[i].in = s->ports[i].in;
		v[i].out = s->ports[i].out;
	}
	/* A scrape walks the relaying users (those handed a pooled tunnel
	 * too); a turn of the loop never does. */
	for (st = U_HANDED; st <= U_RELAYING; st++) {
		for (u = s->users[st]; u != NULL; u = u->next) {
			port_view_add(v, s->nports, u);
		}
	}
	return v;
}

static const struct port_view *
view_of(const struct port_view *v, size_t n, int port)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (v[i].port == port) {
			return &v[i];
		}
	}
	return NULL;
}

static int
count_sessions(const struct server *s)
{
	const struct ctl *c;
	int n = 0;

	for (c = s->ctls; c != NULL; c = c->next) {
		n += !c->dead && c->state == CTL_ATTACHED;
	}
	return n;
}

static void
server_prom(struct server *s, struct mbuf *b, const struct port_view *v)
{
	size_t i;

	mb_family(b, "dialback_sessions", "gauge",
	          "Clients attached, each serving a public port.");
	mb_printf(b, "dialback_sessions %d\n", count_sessions(s));
	mb_family(b, "dialback_users_active", "gauge", "Users relaying now.");
	mb_printf(b, "dialback_users_active %d\n",
	          s->count[U_RELAYING] + s->count[U_HANDED]);
	mb_family(b, "dialback_users_waiting", "gauge",
	          "Users waiting for their tunnel.");
	mb_printf(b, "dialback_users_waiting %d\n", s->count[U_WAITING]);
	mb_family(b, "dialback_users_total", "counter",
	          "Users accepted since start.");
	mb_printf(b, "dialback_users_total %llu\n",
	          (unsigned long long)s->user_seq);
	mb_family(b, "dialback_tunnels_pooled", "gauge",
	          "Tunnels dialed ahead, waiting for a user.");
	mb_printf(b, "dialback_tunnels_pooled %d\n", s->count[U_POOLED]);
	mb_family(b, "dialback_bytes_total", "counter",
	          "Users' bytes relayed, in (from users) and out (to users), "
	          "by public port.");
	for (i = 0; v != NULL && i < s->nports; i++) {
		mb_printf(b, "dialback_bytes_total{direction=\"in\",port=\"%d\"} "
		          "%llu\n", v[i].port, (unsigned long long)v[i].in);
		mb_printf(b, "dialback_bytes_total{direction=\"out\",port=\"%d\"} "
		          "%llu\n", v[i].port, (unsigned long long)v[i].out);
	}
	mb_family(b, "dialback_refused_total", "counter",
	          "Users and clients turned away, by reason.");
	for (i = 0; i < REF_END; i++) {
		mb_printf(b, "dialback_refused_total{reason=\"%s\"} %llu\n",
		          refusal_names[i], (unsigned long long)s->refused[i]);
	}
	mb_family(b, "dialback_handshake_failures_total", "counter",
	          "Control and tunnel handshakes that failed.");
	mb_printf(b, "dialback_handshake_failures_total %llu\n",
	          (unsigned long long)s->handshake_failures);
	metrics_process(b, s->started);
}

/* One row of the page's tables: a name and a number. */
static void
html_row(struct mbuf *b, const char *name, unsigned long long n)
{
	mb_printf(b, "<tr><th>%s</th><td class=\"n\">%llu</td></tr>\n", name, n);
}

static void
server_html(struct server *s, struct mbuf *b, const struct port_view *v)
{
	const struct port_view *pv;
	unsigned long long in = 0, out = 0;
	long long heap = heap_bytes();
	char since[64];
	struct ctl *c;
	size_t i;

	metrics_html_head(b, "dialback server");
	mb_printf(b, "<p>Version %s, up since %s.</p>\n<h2>Sessions</h2>\n",
	          DIALBACK_VERSION, metrics_since(s->started, since,
	                                          sizeof(since)));
	mb_printf(b, "<table id=\"sessions\">\n<tr><th>port</th><th>client</th>"
	          "<th>since</th><th>users now</th><th>users in all</th>"
	          "<th>bytes in</th><th>bytes out</th></tr>\n");
	for (c = s->ctls; c != NULL; c = c->next) {
		if (c->dead || c->state != CTL_ATTACHED) {
			continue;
		}
		pv = v != NULL ? view_of(v, s->nports, c->pub->port) : NULL;
		mb_printf(b, "<tr><td class=\"n\">%d</td><td>", c->pub->port);
		mb_html(b, c->peer);
		mb_printf(b, "</td><td>%s</td><td class=\"n\">%d</td>"
		          "<td class=\"n\">%llu</td><td class=\"n\">%llu</td>"
		          "<td class=\"n\">%llu</td></tr>\n",
		          metrics_since(c->attached_at, since, sizeof(since)),
		          (pv != NULL ? pv->live : 0) + c->count[U_WAITING],
		          (unsigned long long)c->served,
		          pv != NULL ? (unsigned long long)pv->in : 0ULL,
		          pv != NULL ? (unsigned long long)pv->out : 0ULL);
	}
	mb_printf(b, "</table>\n");
	if (s->lis[ROLE_PUBLIC].owner == NULL) {
		mb_printf(b, "<p>Public port %d: no client attached.</p>\n",
		          s->lis[ROLE_PUBLIC].port);
	}
	for (i = 0; v != NULL && i < s->nports; i++) {
		in += v[i].in;
		out += v[i].out;
	}
	mb_printf(b, "<h2>Totals</h2>\n<table id=\"totals\">\n");
	html_row(b, "sessions", (unsigned long long)count_sessions(s));
	html_row(b, "users relaying",
	        (unsigned long long)(s->count[U_RELAYING] + s->count[U_HANDED]));
	html_row(b, "users waiting", (unsigned long long)s->count[U_WAITING]);
	html_row(b, "users in all", (unsigned long long)s->user_seq);
	html_row(b, "bytes in", in);
	html_row(b, "bytes out", out);
	html_row(b, "handshake failures",
	         (unsigned long long)s->handshake_failures);
	if (heap >= 0) {
		html_row(b, "heap bytes", (unsigned long long)heap);
	}
	mb_printf(b, "</table>\n<h2>Refused</h2>\n<table id=\"refused\">\n");
	for (i = 0; i < REF_END; i++) {
		html_row(b, refusal_names[i], (unsigned long long)s->refused[i]);
	}
	mb_printf(b, "</table>\n");
	metrics_html_tail(b);
}

/* The metrics callback (metrics.h): either page, from the server's state. */
static void
server_metrics(void *ctx, enum metrics_page page, struct mbuf *b)
{
	struct server *s = ctx;
	struct port_view *v = port_views(s);

	if (page == METRICS_PROM) {
		server_prom(s, b, v);
	} else {
		server_html(s, b, v);
	}
	free(v);
}

static int
dispatch(struct server *s, const struct loop_event *ev, int n)
{
	int i, sig;

	for (i = 0; i < n; i++) {
		struct watch *w = ev[i].w;
		short rev = ev[i].revents;

		/* Closed, or watching another descriptor, since it fired. */
		if (ev[i].fd != w->fd) {
			continue;
		}
		switch ((enum kind)w->kind) {
		case K_SIGNAL:
			sig = signal_take(s->sig_fd);
			if (sig == SIGUSR1) {
				log_status(s);
				break;
			}
			if (sig == SIGHUP) {
				secrets_reload(s);
				break;
			}
			return -1;
		case K_LISTEN:
			accept_all(s, (enum role)w->side, w->fd, w->obj);
			break;
		case K_CTL: {
			struct ctl *c = w->obj;
			if (!c->dead && (rev & POLLOUT)) {
				ctl_writable(s, c);
			}
			if (!c->dead && (rev & (POLLIN | POLLHUP | POLLERR))) {
				ctl_readable(s, c);
			}
			break;
		}
		case K_TUN:
			tun_readable(s, w->obj);
			break;
		case K_USER:
			user_event(s, w->obj, w->side, rev);
			break;
		case K_METRICS:
			metrics_event(s->metrics, w, rev);
			break;
		}
	}
	return 0;
}

/* Flush control output queued this turn (WELCOME, NEW_USER, PING) now,
 * instead of waiting a turn for POLLOUT: the socket almost always has
 * room, and a new user should not wait. */
static void
flush_controls(struct server *s)
{
	struct ctl *c;

	for (c = s->ctls; c != NULL; c = c->next) {
		if (!c->dead && c->out.len > 0) {
			ctl_writable(s, c);
		}
	}
}

static void
serve(struct server *s)
{
	for (;;) {
		int64_t now = now_ms(), next = run_timers(s, now);
		int timeout = next < 0 ? -1 : (int)(next - now + 1);
		struct loop_event *ev;
		int n;

		flush_controls(s);
		sync_few(s, now);
		sweep(s);
		if ((n = loop_wait(s->loop, timeout, &ev)) < 0) {
			die(1, "%s:", loop_backend(s->loop));
		}
		if (dispatch(s, ev, n) != 0) {
			return;
		}
		flush_controls(s);
	}
}

/* Close and free everything, so a clean stop leaves no leak behind. */
static void
server_free(struct server *s)
{
	struct ctl *c;
	struct tun *t;
	int r, i;

	for (c = s->ctls; c != NULL; c = c->next) {
		while (c->pooled != NULL) {
			user_close(s, c->pooled, NULL);
		}
		pub_close(s, c->own);
		close_watched(s, &c->w, &c->fd);
		c->dead = 1;
	}
	for (t = s->tuns; t != NULL; t = t->next) {
		close_watched(s, &t->w, &t->fd);
		t->dead = 1;
	}
	for (r = U_TICKET; r < U_DEAD; r++) {
		while (s->users[r] != NULL) {
			user_close(s, s->users[r], NULL);
		}
	}
	sweep(s);
	for (r = 0; r < ROLE_END; r++) {
		for (i = 0; i < s->lis[r].nfd; i++) {
			close_watched(s, &s->lis[r].w[i], &s->lis[r].fd[i]);
		}
	}
	close_watched(s, &s->sig_w, &s->sig_fd);
	metrics_close(s->metrics);
	free(s->ports);
	secrets_free(&s->secrets);
	ip_table_free(s);
	if (s->spare_fd >= 0) {
		close(s->spare_fd);
	}
	loop_free(s->loop);
}

/* "LO-HI" into two ports 1..65535, lo <= hi.  0 or -1. */
static int
parse_range(const char *arg, int *lo, int *hi)
{
	char *end;
	long a, b;

	a = strtol(arg, &end, 10);
	if (end == arg || *end != '-') {
		return -1;
	}
	arg = end + 1;
	b = strtol(arg, &end, 10);
	if (end == arg || *end != '\0' || a < 1 || b > 65535 || a > b) {
		return -1;
	}
	*lo = (int)a;
	*hi = (int)b;
	return 0;
}

/* Two listen hosts that may hold the same port at once: "" (every
 * interface) overlaps everything, and a family's wildcard (0.0.0.0, ::)
 * every address of its family.  Different names are let through; bind
 * says whether they clash. */
static int
hosts_overlap(const char *a, const char *b)
{
	int i;

	if (a[0] == '\0' || b[0] == '\0' || strcasecmp(a, b) == 0) {
		return 1;
	}
	for (i = 0; i < 2; i++) {
		const char *w = i ? b : a, *o = i ? a : b;

		if ((strcmp(w, "0.0.0.0") == 0 || strcmp(w, "::") == 0) &&
		    (strchr(w, ':') != NULL) == (strchr(o, ':') != NULL)) {
			return 1;
		}
	}
	return 0;
}

/* Two of the server's own flags asking for one port is a usage error
 * naming both, not an "address in use" from bind that sends the operator
 * looking for another server.  Port 0 (any free one) never clashes; a
 * -ports listener opens on the -public host. */
static void
check_own_ports(const struct server *s, const char *const given[ROLE_END],
                const char *ports)
{
	const char *pub_host = s->addr[ROLE_PUBLIC].host;
	int r, q, port[ROLE_END];

	for (r = 0; r < ROLE_END; r++) {
		port[r] = atoi(s->addr[r].port);
	}
	for (q = 1; q < ROLE_END; q++) {
		for (r = 0; r < q; r++) {
			if (port[q] != 0 && port[q] == port[r] &&
			    hosts_overlap(s->addr[q].host, s->addr[r].host)) {
				usage_exit("-%s %s: same port as -%s", role_names[q],
				           given[q], role_names[r]);
			}
		}
	}
	for (r = 0; r < ROLE_END && s->ports_lo != 0; r++) {
		if (port[r] >= s->ports_lo && port[r] <= s->ports_hi &&
		    hosts_overlap(s->addr[r].host, pub_host)) {
			usage_exit("-ports %s: includes the -%s port %d; pick a "
			           "range beside it", ports, role_names[r], port[r]);
		}
	}
}

/* check_own_ports for -metrics (hp, as parsed) against the other roles
 * and the -ports range. */
static void
check_metrics_port(const struct server *s, const struct hostport *hp,
                   const char *ports)
{
	int r, port = atoi(hp->port);

	for (r = 0; r < ROLE_END && port != 0; r++) {
		if (port == atoi(s->addr[r].port) &&
		    hosts_overlap(hp->host, s->addr[r].host)) {
			usage_exit("-metrics %s: same port as -%s", s->metrics_addr,
			           role_names[r]);
		}
	}
	if (port != 0 && s->ports_lo != 0 && port >= s->ports_lo &&
	    port <= s->ports_hi &&
	    hosts_overlap(hp->host, s->addr[ROLE_PUBLIC].host)) {
		usage_exit("-ports %s: includes the -metrics port %d; pick a "
		           "range beside it", ports, port);
	}
}

/* -allow and -deny: every CIDR parsed now, the bad one named. */
static void
parse_cidrs(const char *name, const struct flag_list *l, struct cidr *out,
            int *n)
{
	char why[64];
	int i;

	for (i = 0; i < l->n; i++) {
		if (cidr_parse(l->v[i], &out[i], why, sizeof(why)) != 0) {
			usage_exit("-%s %s: %s", name, l->v[i], why);
		}
	}
	*n = l->n;
}

static void
parse_args(struct server *s, int argc, char **argv)
{
	const char *addr[ROLE_END] = { "8009", "8008", "8007" };
	const char *token = NULL, *heartbeat = "10", *ports = NULL;
	const char *secrets = NULL, *per_ip = "0";
	struct flag_list allow = { .n = 0 }, deny = { .n = 0 };
	struct hostport hp;
	int r;
	char why[64];
	char *end;
	long hb, pi;
	struct flag flags[] = {
		{ "control", &addr[ROLE_CONTROL], NULL, NULL },
		{ "tunnel", &addr[ROLE_TUNNEL], NULL, NULL },
		{ "public", &addr[ROLE_PUBLIC], NULL, NULL },
		{ "token", &token, NULL, NULL },
		{ "secrets", &secrets, NULL, NULL },
		{ "plaintext", NULL, &s->plaintext, NULL },
		{ "heartbeat", &heartbeat, NULL, NULL },
		{ "ports", &ports, NULL, NULL },
		{ "allow", NULL, NULL, &allow },
		{ "deny", NULL, NULL, &deny },
		{ "per-ip", &per_ip, NULL, NULL },
		{ "metrics", &s->metrics_addr, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};

	flags_apply(argc, argv, flags, usage_text);
	for (r = 0; r < ROLE_END; r++) {
		if (addr_parse(addr[r], -1, 1, &s->addr[r], why, sizeof(why)) != 0) {
			usage_exit("-%s %s: %s", role_names[r],
			         addr[r], why);
		}
	}
	hb = strtol(heartbeat, &end, 10);
	if (*heartbeat == '\0' || *end != '\0' || hb < 1 || hb > 3600) {
		usage_exit("-heartbeat %s: want whole seconds "
		         "from 1 to 3600", heartbeat);
	}
	s->heartbeat_s = (int)hb;
	if (ports != NULL && parse_range(ports, &s->ports_lo, &s->ports_hi) != 0) {
		usage_exit("-ports %s: want LO-HI, two ports from "
		         "1 to 65535 with LO <= HI", ports);
	}
	check_own_ports(s, addr, ports);
	parse_cidrs("allow", &allow, s->allow, &s->nallow);
	parse_cidrs("deny", &deny, s->deny, &s->ndeny);
	pi = strtol(per_ip, &end, 10);
	if (*per_ip == '\0' || *end != '\0' || pi < 0 || pi > 1000000) {
		usage_exit("-per-ip %s: want a whole number from 0 (no limit) "
		           "to 1000000", per_ip);
	}
	s->per_ip = (int)pi;
	if (s->metrics_addr != NULL) {
		if (metrics_parse(s->metrics_addr, &hp, why, sizeof(why)) != 0) {
			usage_exit("-metrics %s: %s", s->metrics_addr, why);
		}
		check_metrics_port(s, &hp, ports);
	}
	if (token == NULL) {
		token = getenv("DIALBACK_TOKEN");
	}
	s->token = token ? token : "";
	if (secrets == NULL) {
		secrets = getenv("DIALBACK_SECRETS");
	}
	s->secrets_path = secrets != NULL && secrets[0] != '\0' ? secrets : NULL;
}

/* Bind every role's listener, and -metrics's; report each one that
 * fails, not just the first, so that one run shows every port to free
 * (exit 1). */
static void
listen_all(struct server *s)
{
	char err[ROLE_END + 1][256];
	int r, i, nerr = 0;

	for (r = 0; r < ROLE_END; r++) {
		struct pub *p = &s->lis[r];

		if ((p->nfd = listen_on(&s->addr[r], role_names[r], p->fd,
		                        MAX_LISTEN, err[nerr],
		                        sizeof(err[nerr]))) < 0) {
			p->nfd = 0;
			nerr++;
			continue;
		}
		for (i = 0; i < p->nfd; i++) {
			watch_init(&p->w[i], K_LISTEN, p, r);
		}
		p->port = local_port(p->fd[0]);
	}
	if (s->metrics_addr != NULL) {
		s->metrics = metrics_open(s->loop, K_METRICS, s->metrics_addr,
		                          server_metrics, s, err[nerr],
		                          sizeof(err[nerr]));
		nerr += s->metrics == NULL;
	}
	for (i = 0; i + 1 < nerr; i++) {
		log_warn("%s", err[i]);
	}
	if (nerr > 0) {
		die(1, "%s", err[nerr - 1]);
	}
}

int
main(int argc, char **argv)
{
	struct server s;
	long nofile;
	char err[256];

	memset(&s, 0, sizeof(s));
	relay_pool_init(&s.relays);
	s.pool_window_s = pool_window();
	parse_args(&s, argc, argv);
	s.sig_fd = signals_setup();
	random_open();
	s.loop = loop_new();
	watch_init(&s.sig_w, K_SIGNAL, NULL, 0);
	if (loop_watch(s.loop, &s.sig_w, s.sig_fd, POLLIN) != 0) {
		die(1, "%s:", loop_backend(s.loop));
	}
	nofile = raise_fd_limit();
	s.spare_fd = open("/dev/null", O_RDONLY);
	s.started = now_ms();
	ip_table_init(&s, nofile);
	listen_all(&s);
	/* -public 0 took a port only now. */
	if (s.ports_lo != 0 && s.lis[ROLE_PUBLIC].port >= s.ports_lo &&
	    s.lis[ROLE_PUBLIC].port <= s.ports_hi) {
		die(2, "-ports %d-%d: includes the -public port %d; pick a range "
		    "beside it", s.ports_lo, s.ports_hi, s.lis[ROLE_PUBLIC].port);
	}
	if (port_stat(&s, s.lis[ROLE_PUBLIC].port) == NULL) {
		die(1, "out of memory");
	}
	if (s.metrics != NULL) {
		log_info("metrics on port %d: GET /metrics, GET /",
		         metrics_port(s.metrics));
	}
	if (s.secrets_path != NULL &&
	    secrets_load(&s.secrets, s.secrets_path, err, sizeof(err)) != 0) {
		die(1, "%s", err);
	}
	if (s.token[0] != '\0' && strlen(s.token) < TOKEN_MIN) {
		log_warn("warning: the token is %zu bytes; one under %d can be "
		         "guessed: make one with 'head -c 32 /dev/urandom | base64'",
		         strlen(s.token), TOKEN_MIN);
	}
	if (s.token[0] == '\0') {
		log_warn("warning: no -token set: any client may attach and serve "
		         "the public port");
	}
	err[0] = '\0';
	if (s.ports_lo != 0) {
		snprintf(err, sizeof(err), ", ports %d-%d on demand", s.ports_lo,
		         s.ports_hi);
	}
	log_info("listening: control %d, tunnel %d, public %d%s (fd limit %ld, "
	         "heartbeat %ds, %s)", s.lis[ROLE_CONTROL].port,
	         s.lis[ROLE_TUNNEL].port,
	         s.lis[ROLE_PUBLIC].port, err, nofile, s.heartbeat_s,
	         loop_backend(s.loop));
	serve(&s);
	log_info("stopping");
	server_free(&s);
	return 0;
}
