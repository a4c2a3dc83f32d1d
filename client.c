/*
 * dialback client: runs next to the service.  Holds one control connection
 * to the server; for each NEW_USER it connects to the local service, dials
 * the server's tunnel port, sends a JOIN and relays.  One event loop
 * (loop.c); every socket non-blocking, every connect asynchronous.
 *
 * As in server.c, teardown marks objects dead and sweep() frees them
 * between turns; interest is registered as state changes (loop.c), and
 * relaying users sit on a list of their own that nothing per turn walks.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "crypto.h"


static const char usage_text[] =
"usage: %s -remote HOST[:PORT] [-local HOST:PORT] [-port N] [-pool N]\n"
"                [-token SECRET] [-plaintext] [-proxy-protocol v1|v2]\n"
"                [-config FILE] [-version] [-v | -q]\n"
"  -remote HOST[:PORT]  the server's control address (port default 8009)\n"
"  -local HOST:PORT     the service to expose (default 127.0.0.1:8080)\n"
"  -port N              ask for public port N (in the server's -ports range)\n"
"  -pool N              keep N tunnels dialed ahead for new users (0-64; 0 = none;\n"
"                       default: as many as users recently arrived in a second)\n"
"  -token SECRET        the server's token (or DIALBACK_TOKEN)\n"
"  -plaintext           tunnels carry raw bytes, unencrypted (server must allow)\n"
"  -proxy-protocol v1|v2\n"
"                       tell the service each user's address (PROXY protocol)\n"
"  -config FILE         read these flags from FILE, one \"word value\" a line;\n"
"                       the command line wins (# starts a comment)\n"
"  -version             print the version and exit\n"
"  -v, -q               more logging / warnings only\n";

#define BACKOFF_MIN_MS  500
#define BACKOFF_MAX_MS  30000
#define MAX_LOCAL_ADDRS 8
#define CTL_IN_SIZE     (64 * 1024)  /* a burst of NEW_USERs in one read */
#define CTL_OUT_SIZE    (16 * 1024)
#define MAX_INFLIGHT    1024         /* users connecting, from NEW_USER */
#define BUSY_GRACE_MS   1000         /* ... all stuck that long: refuse */

enum ctl_state { C_IDLE, C_CONNECTING, C_HELLO_SENT, C_AUTH_SENT, C_ATTACHED };

/*
 * A user being served.  Without a pool: connect to the local service, then
 * dial the tunnel and JOIN.  With one: dial and JOIN with a ticket ahead of
 * time, wait on that tunnel for its NEW_USER, then connect to the local
 * service.  Either way relay.fd[0] ends up the tunnel, fd[1] the service.
 */
enum user_state {
	U_LOCAL,        /* fd: local connect in progress */
	U_TUNNEL,       /* held: the local connection; fd: tunnel dial */
	U_POOL_DIAL,    /* fd: tunnel dial for a ticket */
	U_POOL_IDLE,    /* held: joined tunnel, waiting for its NEW_USER */
	U_POOL_LOCAL,   /* held: tunnel with its user; fd: local connect */
	U_RELAY
};

struct cuser {
	struct cuser *next, *prev;     /* on starting, relaying or dead */
	int dead;
	struct watch w[2];             /* relay.fd[i]; before that w[0]: the
	                                * connect in progress, or a pooled
	                                * tunnel's wait */
	enum user_state state;
	int fd;                        /* the connect in progress */
	int held;                      /* the connection made before it */
	int local_idx;                 /* which local address is being tried */
	uint8_t id[USER_ID_LEN];
	unsigned session;              /* the session that announced it */
	int sealed;                    /* its tunnel carries records */
	struct seal tun_tx, tun_rx;    /* ... under these keys (from its id) */
	struct wire_addr src, dst;     /* user, and the public address it reached */
	char peer[ADDR_STRLEN];
	int64_t start, deadline;
	struct fbuf in;                /* pooled: NEW_USER and bytes behind it */
	struct relay relay;
};

struct local_addr {
	struct sockaddr_storage sa;
	socklen_t len;
};

struct client {
	struct hostport remote;
	const char *remote_arg, *local_arg;
	const char *token;
	int want_port;                       /* -port; 0 = the server's choice */
	int pool_want;                       /* -pool, or the cap of ... */
	int pool_auto;                       /* ... one the server sizes */
	int npooled;                         /* users in U_POOL_DIAL/IDLE */
	int inflight;                        /* users in U_LOCAL/U_TUNNEL */
	int held;                            /* control frames wait: see ctl_take */
	int64_t full_since;                  /* MAX_INFLIGHT in flight since */
	struct log_limit log_busy, log_fail;
	int proxy_version;                   /* -proxy-protocol; 0 = off */
	uint8_t run_id[RUN_ID_LEN];
	struct local_addr local[MAX_LOCAL_ADDRS];
	int nlocal;

	enum ctl_state state;
	int fd;
	struct sockaddr_storage server_sa;   /* for dialing the tunnel port */
	socklen_t server_len;
	char server[ADDR_STRLEN];
	struct fbuf in, out;
	struct handshake hs;                 /* HELLO until REPLY */
	struct session_keys keys;            /* once attached */
	unsigned session;                    /* attachments so far */
	int plaintext;                       /* -plaintext: raw tunnels */
	int tunnel_port, public_port, heartbeat_s;
	int64_t deadline;                    /* handshake, or next attempt */
	int64_t last_rx, next_ping;
	int backoff_ms;
	int attempt;                         /* which remote address next */
	int exit_status;                     /* >= 0: stop with this status */
	int drain_status;                    /* >= 0: that, once none relay */

	int sig_fd;
	struct loop *loop;
	struct watch sig_w, ctl_w;
	int64_t started;
	uint64_t users_total;
	struct cuser *users;                 /* connecting or pooled: timed */
	struct cuser *relaying;
	struct cuser *dead;                  /* ended this turn */
	struct relay_pool relays;            /* what the users' relays share */
};

enum kind { K_SIGNAL, K_CTL, K_USER };

static void ctl_send(struct client *c, const struct msg *m);

/* What a user's relay.fd[0] and fd[1] are, for its error lines. */
static const char *const relay_sides[2] = { "tunnel", "local" };

static void
close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* ==== users ============================================================== */

static int
pooled(const struct cuser *u)
{
	return u->state == U_POOL_DIAL || u->state == U_POOL_IDLE;
}

/* Announced on control and not relaying yet: what MAX_INFLIGHT counts. */
static int
in_flight(const struct cuser *u)
{
	return u->state == U_LOCAL || u->state == U_TUNNEL;
}

/* " (N more since the last such line)" for a rate-limited line. */
static const char *
held_note(unsigned long held)
{
	static char note[64];

	note[0] = '\0';
	if (held > 0) {
		snprintf(note, sizeof(note), " (%lu more since the last such line)",
		         held);
	}
	return note;
}

/* One teardown for every stage.  why goes into the log line; NULL is a
 * quiet close (a pooled tunnel no user ever used). */
static void
user_close(struct client *c, struct cuser *u, const char *why)
{
	unsigned long held;

	if (u->dead) {
		return;
	}
	/* A user that never relayed failed; a hostile server can make that
	 * happen as fast as it likes, so those lines are rate-limited. */
	if (why != NULL && (u->state == U_RELAY ||
	                    log_limited(&c->log_fail, now_ms(), &held))) {
		log_info("user %s closed: %s%s", u->peer, why,
		         u->state == U_RELAY ? "" : held_note(held));
	}
	if (pooled(u)) {
		c->npooled--;
	}
	if (in_flight(u)) {
		c->inflight--;
	}
	/* A pooled tunnel whose user never reached the service ends with its
	 * end record: the server then closes that user, as in plaintext,
	 * instead of resetting it for a cut stream. */
	if (u->state == U_POOL_LOCAL && u->sealed && u->held >= 0) {
		uint8_t rec[RECORD_HDR + TAG_LEN], none[1] = { 0 };

		if (send(u->held, rec, record_seal(&u->tun_tx, none, 0, rec),
		         MSG_NOSIGNAL) < 0) {
			/* going anyway; the server times the user out */
		}
	}
	loop_forget(c->loop, &u->w[0]);    /* their descriptors close below */
	loop_forget(c->loop, &u->w[1]);
	if (u->state == U_RELAY) {
		relay_close(&u->relay);
	}
	close_fd(&u->fd);
	close_fd(&u->held);
	fbuf_free(&u->in);
	u->dead = 1;
	DLIST_DEL(*(u->state == U_RELAY ? &c->relaying : &c->users), u);
	DLIST_ADD(c->dead, u);
}

/* user_fail: close u with "what: detail" as the reason. */
static void
user_fail(struct client *c, struct cuser *u, const char *what,
          const char *detail)
{
	char why[TEXT_MAX + 128];

	snprintf(why, sizeof(why), "%s: %s", what, detail);
	user_close(c, u, why);
}

static void
sweep(struct client *c)
{
	while (c->dead != NULL) {
		struct cuser *u = c->dead;
		DLIST_DEL(c->dead, u);
		crypto_wipe(u, sizeof(*u));
		free(u);
	}
}

/* Watch what the user's stage waits for; after every step. */
static void
user_sync(struct client *c, struct cuser *u)
{
	short ev[2] = { 0, 0 };
	int fd[2] = { -1, -1 }, i;

	if (u->dead) {
		return;
	}
	if (u->state == U_RELAY) {
		relay_events(&u->relay, ev);
		fd[0] = u->relay.fd[0];
		fd[1] = u->relay.fd[1];
	} else if (u->state == U_POOL_IDLE) {
		ev[0] = POLLIN;
		fd[0] = u->held;
	} else {
		ev[0] = POLLOUT;
		fd[0] = u->fd;
	}
	for (i = 0; i < 2; i++) {
		/* No interest: out of the set, so a hang-up can't spin us. */
		if (ev[i] == 0) {
			loop_unwatch(c->loop, &u->w[i]);
		} else if (loop_watch(c->loop, &u->w[i], fd[i], ev[i]) != 0) {
			user_fail(c, u, "watch", strerror(errno));
			return;
		}
	}
}

static void
report_failure(struct client *c, struct cuser *u, const char *why)
{
	struct msg m;

	/* Only the session that announced the user can speak for it. */
	if (c->state == C_ATTACHED && c->session == u->session) {
		memset(&m, 0, sizeof(m));
		m.type = MSG_USER_FAILED;
		memcpy(m.user_id, u->id, USER_ID_LEN);
		snprintf(m.text, sizeof(m.text), "%s %s", c->local_arg, why);
		ctl_send(c, &m);
	}
}

/* Try local addresses in turn until one connect starts. */
static void
local_connect(struct client *c, struct cuser *u)
{
	while (u->local_idx < c->nlocal) {
		struct local_addr *la = &c->local[u->local_idx];
		u->fd = connect_start((struct sockaddr *)&la->sa, la->len);
		if (u->fd >= 0) {
			return;
		}
		u->local_idx++;
	}
	report_failure(c, u, strerror(errno));
	user_fail(c, u, "cannot connect to local service", c->local_arg);
}

static void
tunnel_dial(struct client *c, struct cuser *u)
{
	struct sockaddr_storage sa = c->server_sa;

	if (sa.ss_family == AF_INET) {
		((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)c->tunnel_port);
	} else {
		((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)c->tunnel_port);
	}
	u->fd = connect_start((struct sockaddr *)&sa, c->server_len);
	if (u->fd < 0) {
		user_fail(c, u, "tunnel dial", strerror(errno));
	}
}

static size_t
join_frame(struct cuser *u, uint8_t *frame)
{
	struct msg m = { .type = MSG_JOIN };
	memcpy(m.user_id, u->id, USER_ID_LEN);
	join_proof(&u->tun_tx, u->id, m.proof);
	return frame_encode(frame, &m);
}

/*
 * Both connections are up: relay between tunnel and service.  Ahead of the
 * service's bytes goes the JOIN (unless a pooled tunnel joined already);
 * ahead of the user's, the PROXY header and any user bytes that came in
 * with a pooled NEW_USER.  Queued bytes go out now, not a turn later.
 */
static void
relay_begin(struct client *c, struct cuser *u, int tunnel, int local,
            int join)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX], proxy[PROXY_MAX];
	static const short now[2] = { POLLOUT, POLLOUT };
	char why[160];
	int fail;

	relay_init(&u->relay, &c->relays, tunnel, local);
	if (u->sealed) {
		relay_seal(&u->relay, 0, &u->tun_tx, &u->tun_rx);
	}
	u->fd = u->held = -1;
	DLIST_DEL(c->users, u);
	DLIST_ADD(c->relaying, u);
	if (in_flight(u)) {
		c->inflight--;
	}
	u->state = U_RELAY;
	fail = join && relay_prefill(&u->relay, 1, frame, join_frame(u, frame));
	if (!fail && c->proxy_version != 0) {
		fail = relay_prefill(&u->relay, 0, proxy, proxy_header(
		                     c->proxy_version, &u->src, &u->dst, proxy));
	}
	if (!fail && u->in.len > 0) {
		fail = relay_feed(&u->relay, 0, u->in.data, u->in.len);
	}
	fbuf_free(&u->in);
	if (fail) {
		user_close(c, u, "out of memory");
	} else if (relay_step(&u->relay, now) == RELAY_FAIL) {
		user_close(c, u, relay_why(&u->relay, relay_sides, why, sizeof(why)));
	}
}

/* A pooled tunnel is up: JOIN with the ticket and wait for a user. */
static void
pool_joined(struct client *c, struct cuser *u)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = join_frame(u, frame);

	/* A fresh socket always has room for one small frame. */
	if (send(u->fd, frame, n, MSG_NOSIGNAL) != (ssize_t)n ||
	    fbuf_init(&u->in, FBUF_SMALL) != 0) {
		user_close(c, u, NULL);
		return;
	}
	u->held = u->fd;
	u->fd = -1;
	u->in.seal = u->sealed ? &u->tun_rx : NULL;
	u->state = U_POOL_IDLE;
}

/* The local connect failed: try the next address, or give up and tell
 * the server why. */
static void
local_failed(struct client *c, struct cuser *u, const char *why)
{
	/* The next address's socket likely gets the same number: w[0] must
	 * not still claim it, or watching it again looks like no change and
	 * epoll never hears of the new socket. */
	loop_forget(c->loop, &u->w[0]);
	close_fd(&u->fd);
	if (++u->local_idx < c->nlocal) {
		local_connect(c, u);
		return;
	}
	report_failure(c, u, why);
	user_fail(c, u, "local service refused", why);
}

/* A connect finished (POLLOUT): move the user to its next stage. */
static void
user_connected(struct client *c, struct cuser *u)
{
	if (connect_done(u->fd) != 0) {
		const char *why = strerror(errno);
		if (u->state == U_LOCAL || u->state == U_POOL_LOCAL) {
			local_failed(c, u, why);
		} else if (u->state == U_POOL_DIAL) {
			log_debug("pooled tunnel dial: %s", why);
			user_close(c, u, NULL);
		} else {
			user_fail(c, u, "tunnel dial", why);
		}
		return;
	}
	switch (u->state) {
	case U_LOCAL:
		u->held = u->fd;
		u->state = U_TUNNEL;
		tunnel_dial(c, u);
		break;
	case U_TUNNEL:
		relay_begin(c, u, u->fd, u->held, 1);
		break;
	case U_POOL_DIAL:
		pool_joined(c, u);
		break;
	case U_POOL_LOCAL:
		relay_begin(c, u, u->held, u->fd, 0);
		break;
	default:
		break;
	}
}

static struct cuser *
user_add(struct client *c, enum user_state state, const uint8_t id[USER_ID_LEN])
{
	struct cuser *u = calloc(1, sizeof(*u));

	if (u == NULL) {
		log_warn("new user: out of memory");
		return NULL;
	}
	u->fd = u->held = -1;
	u->relay.fd[0] = u->relay.fd[1] = -1;
	watch_init(&u->w[0], K_USER, u, 0);
	watch_init(&u->w[1], K_USER, u, 1);
	u->state = state;
	memcpy(u->id, id, USER_ID_LEN);
	u->session = c->session;
	u->sealed = !c->plaintext;
	tunnel_keys(c->keys.tunnel, id, 1, &u->tun_tx, &u->tun_rx);
	snprintf(u->peer, sizeof(u->peer), "?");
	u->start = now_ms();
	u->deadline = u->start + JOIN_WAIT_MS;
	DLIST_ADD(c->users, u);
	return u;
}

/* Who the user is, from a NEW_USER on control or on a pooled tunnel. */
static void
user_named(struct client *c, struct cuser *u, const struct msg *m)
{
	memcpy(u->id, m->user_id, USER_ID_LEN);
	u->src = m->src;
	u->dst = m->dst;
	wire_addr_str(&m->src, u->peer, sizeof(u->peer));
	c->users_total++;
	log_info("user %s arrived%s", u->peer, u->held >= 0
	         ? " on a pooled tunnel" : "");
}

static void
user_new(struct client *c, const struct msg *m)
{
	struct cuser *u;
	struct msg r;
	unsigned long held;

	/* A hostile or broken server could announce users without end: past
	 * MAX_INFLIGHT each is refused, so descriptors stay bounded. */
	if (c->inflight >= MAX_INFLIGHT) {
		memset(&r, 0, sizeof(r));
		r.type = MSG_USER_FAILED;
		memcpy(r.user_id, m->user_id, USER_ID_LEN);
		snprintf(r.text, sizeof(r.text), "client busy");
		if (log_limited(&c->log_busy, now_ms(), &held)) {
			log_warn("user refused: client busy, %d local connections "
			         "in flight%s", MAX_INFLIGHT, held_note(held));
		}
		ctl_send(c, &r);
		return;
	}
	u = user_add(c, U_LOCAL, m->user_id);
	if (u != NULL) {
		c->inflight++;
		user_named(c, u, m);
		local_connect(c, u);
		user_sync(c, u);
	}
}

static void
ticket_new(struct client *c, const struct msg *m)
{
	struct cuser *u;

	/* The server keeps the count; a replacement TICKET can come before
	 * the NEW_USER on the tunnel it replaces has been read, so allow
	 * twice the pool, and no more: more would only cost descriptors. */
	if (c->npooled >= 2 * c->pool_want) {
		return;
	}
	if ((u = user_add(c, U_POOL_DIAL, m->user_id)) != NULL) {
		c->npooled++;
		tunnel_dial(c, u);
		user_sync(c, u);
	}
}

/* A pooled tunnel spoke: its NEW_USER (perhaps with user bytes behind),
 * or the server closed it. */
static void
pool_readable(struct client *c, struct cuser *u)
{
	struct msg m;
	int rc = fbuf_fill(&u->in, u->held);
	enum frame_result fr = fbuf_take(&u->in, &m);

	if (fr == FRAME_OK && m.type == MSG_NEW_USER) {
		c->npooled--;
		u->state = U_POOL_LOCAL;
		u->start = now_ms();
		u->deadline = u->start + JOIN_WAIT_MS;
		user_named(c, u, &m);
		local_connect(c, u);
	} else if (fr != FRAME_MORE || rc <= 0) {
		log_debug("pooled tunnel closed by the server");
		user_close(c, u, NULL);
	}
}

static void
user_relay(struct client *c, struct cuser *u, const short rev[2])
{
	enum relay_state st = relay_step(&u->relay, rev);
	char why[160];

	if (st == RELAY_OPEN) {
		return;
	}
	if (st == RELAY_DONE) {
		snprintf(why, sizeof(why), "%llu bytes in, %llu out, %.1fs",
		         (unsigned long long)u->relay.dir[0].bytes,
		         (unsigned long long)u->relay.dir[1].bytes,
		         (double)(now_ms() - u->start) / 1000.0);
	} else {
		relay_why(&u->relay, relay_sides, why, sizeof(why));
	}
	user_close(c, u, why);
}

/* ==== control ============================================================ */

/* Lose the control connection, and with it the pooled tunnels parked for
 * this session (the server drops them too); relaying users go on. */
static void
ctl_reset(struct client *c)
{
	struct cuser *u, *next;

	for (u = c->users; u != NULL; u = next) {
		next = u->next;
		if (pooled(u)) {
			user_close(c, u, NULL);
		}
	}
	loop_unwatch(c->loop, &c->ctl_w);
	close_fd(&c->fd);
	c->in.len = c->out.len = 0;
	c->in.seal = c->out.seal = NULL;
	c->held = 0;
	c->full_since = 0;
	crypto_wipe(&c->hs, sizeof(c->hs));
	crypto_wipe(&c->keys, sizeof(c->keys));
	c->state = C_IDLE;
}

/* Lost or refused: wait, doubling the wait each time, with jitter so many
 * clients of one server don't return in step. */
static void
ctl_retry(struct client *c, const char *what)
{
	uint8_t r;
	int wait;

	ctl_reset(c);
	random_bytes(&r, 1);
	wait = c->backoff_ms / 2 + (int)((long)c->backoff_ms * r / 512);
	log_info("%s; retrying in %.1fs", what, wait / 1000.0);
	c->deadline = now_ms() + wait;
	c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
	                                                   : c->backoff_ms * 2;
}

/* ctl_send: queue m for the server.  A full queue means the server is not
 * reading: the connection is dropped and retried, as the server drops a
 * client that does not read. */
static void
ctl_send(struct client *c, const struct msg *m)
{
	if (fbuf_put(&c->out, m) != 0) {
		ctl_retry(c, "the server is not reading its control messages");
	}
}

/* ctl_fail: retrying cannot help.  A client that has served lets its
 * relaying connections finish first (its secret may have changed under
 * it), then exits with status. */
static void
ctl_fail(struct client *c, int status, const char *why)
{
	struct cuser *u;
	int n = 0;

	log_warn("%s", why);
	ctl_reset(c);
	for (u = c->relaying; u != NULL; u = u->next) {
		n++;
	}
	if (n == 0) {
		c->exit_status = status;
		return;
	}
	c->drain_status = status;
	log_info("exiting once %d relaying connection%s finish%s", n,
	         n == 1 ? "" : "s", n == 1 ? "es" : "");
}

static void
ctl_connect(struct client *c)
{
	struct addrinfo hints, *res, *ai;
	char what[512];
	int rc, i;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(c->remote.host, c->remote.port, &hints, &res);
	if (rc != 0) {
		snprintf(what, sizeof(what), "resolve %s: %s", c->remote.host,
		         gai_strerror(rc));
		ctl_retry(c, what);
		return;
	}
	/* Each attempt takes the next address, so one dead address of a
	 * name can't hold the client back forever. */
	for (ai = res, i = 0; ai->ai_next != NULL && i < c->attempt; i++) {
		ai = ai->ai_next;
	}
	c->attempt = ai->ai_next != NULL ? c->attempt + 1 : 0;
	memcpy(&c->server_sa, ai->ai_addr, ai->ai_addrlen);
	c->server_len = ai->ai_addrlen;
	freeaddrinfo(res);
	addr_str((struct sockaddr *)&c->server_sa, c->server, sizeof(c->server));
	c->fd = connect_start((struct sockaddr *)&c->server_sa, c->server_len);
	if (c->fd < 0) {
		snprintf(what, sizeof(what), "connect %s: %s", c->server,
		         strerror(errno));
		ctl_retry(c, what);
		return;
	}
	c->state = C_CONNECTING;
	c->deadline = now_ms() + HANDSHAKE_MS;
	log_debug("connecting to %s", c->server);
}

static void
ctl_connected(struct client *c)
{
	struct msg m;
	char what[512];

	if (connect_done(c->fd) != 0) {
		snprintf(what, sizeof(what), "connect %s: %s", c->server,
		         strerror(errno));
		ctl_retry(c, what);
		return;
	}
	set_keepalive(c->fd);
	hs_init(&c->hs);
	memset(&m, 0, sizeof(m));
	m.type = MSG_HELLO;
	m.public_port = (uint16_t)c->want_port;
	memcpy(m.pub, c->hs.e_pub, KEY_LEN);
	hs_mix_msg(&c->hs, &m);
	ctl_send(c, &m);
	c->state = C_HELLO_SENT;
}

/* An ERROR from the server: a busy port is worth a retry; nothing else
 * is, and some errors have an obvious next step. */
static void
on_error_msg(struct client *c, const struct msg *m)
{
	static const char *const hint[ERR_CODE_END] = {
		[ERR_AUTH] = " — check -token or DIALBACK_TOKEN against the "
		             "server's",
		[ERR_PORT] = " — pick another -port",
	};
	char what[TEXT_MAX + 128];

	snprintf(what, sizeof(what), "server %s refused: %s%s", c->server,
	         m->text, m->code < ERR_CODE_END && hint[m->code] ? hint[m->code]
	                                                           : "");
	if (m->code == ERR_BUSY) {
		ctl_retry(c, what);
	} else {
		ctl_fail(c, 1, what);
	}
}

/* CHALLENGE: finish the key exchange and prove the secret in AUTH. */
static void
on_challenge(struct client *c, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX], psk[KEY_LEN];
	struct msg a, r;
	size_t n;

	hs_mix_msg(&c->hs, m);
	if (hs_mix_dh(&c->hs, m->pub) != 0) {
		ctl_retry(c, "the server sent a low-order key");
		return;
	}
	psk_derive(c->token, strlen(c->token), psk);
	hs_mix_psk(&c->hs, psk);
	crypto_wipe(psk, sizeof(psk));
	memset(&a, 0, sizeof(a));
	a.type = MSG_ATTACH;
	memcpy(a.run_id, c->run_id, RUN_ID_LEN);
	a.pool = (uint16_t)c->pool_want;
	a.flags = (c->plaintext ? FLAG_PLAINTEXT : 0) |
	          (c->pool_auto ? FLAG_POOL_AUTO : 0);
	n = frame_encode(frame, &a);
	memset(&r, 0, sizeof(r));
	r.type = MSG_AUTH;
	hs_seal(&c->hs, frame, n, r.sealed);
	r.sealed_len = (uint16_t)(n + TAG_LEN);
	ctl_send(c, &r);
	c->state = C_AUTH_SENT;
}

/* REPLY: open it into the WELCOME or ERROR inside; -1 if it does not
 * open (the server does not hold the secret) or holds anything else. */
static int
reply_open(struct client *c, const struct msg *m, struct msg *inner)
{
	uint8_t plain[SEALED_MAX];
	size_t n = m->sealed_len - TAG_LEN, used = 0;

	if (hs_open(&c->hs, m->sealed, m->sealed_len, plain) != 0 ||
	    frame_decode(plain, n, inner, &used) != FRAME_OK || used != n) {
		return -1;
	}
	return 0;
}

static void
on_ctl_msg(struct client *c, const struct msg *m)
{
	struct msg r;
	char host[300], why[ADDR_STRLEN + 128];

	memset(&r, 0, sizeof(r));
	if (m->type == MSG_ERROR) {
		on_error_msg(c, m);
		return;
	}
	switch (c->state) {
	case C_HELLO_SENT:
		if (m->type != MSG_CHALLENGE) {
			snprintf(why, sizeof(why), "%s is not a dialback control "
			         "port (check -remote)", c->server);
			ctl_fail(c, 1, why);
			return;
		}
		if (m->version != PROTO_VERSION) {
			snprintf(why, sizeof(why), "%s speaks protocol version %d, "
			         "this client %d; run the same dialback release on "
			         "both sides", c->server, m->version, PROTO_VERSION);
			ctl_fail(c, 1, why);
			return;
		}
		on_challenge(c, m);
		break;
	case C_AUTH_SENT:
		if (m->type != MSG_REPLY || reply_open(c, m, &r) != 0) {
			ctl_fail(c, 1, "server could not prove it knows the token: "
			         "wrong server or wrong token");
			return;
		}
		if (r.type == MSG_ERROR) {
			on_error_msg(c, &r);
			return;
		}
		if (r.type != MSG_WELCOME || r.heartbeat_s == 0 ||
		    (r.flags & FLAG_PLAINTEXT) != (c->plaintext ? FLAG_PLAINTEXT : 0)) {
			snprintf(why, sizeof(why), "%s sent an unexpected reply to "
			         "AUTH", c->server);
			ctl_fail(c, 1, why);
			return;
		}
		m = &r;
		hs_split(&c->hs, 1, &c->keys);
		c->in.seal = &c->keys.rx;
		c->out.seal = &c->keys.tx;
		c->session++;
		c->tunnel_port = m->tunnel_port;
		c->public_port = m->public_port;
		c->heartbeat_s = m->heartbeat_s;
		c->state = C_ATTACHED;
		c->backoff_ms = BACKOFF_MIN_MS;
		c->next_ping = now_ms() + c->heartbeat_s * 1000;
		snprintf(host, sizeof(host), strchr(c->remote.host, ':') ? "[%s]"
		         : "%s", c->remote.host);
		log_info("forwarding %s:%d -> %s", host, c->public_port,
		         c->local_arg);
		break;
	case C_ATTACHED:
		if (m->type == MSG_NEW_USER) {
			user_new(c, m);
		} else if (m->type == MSG_TICKET) {
			ticket_new(c, m);
		} else if (m->type == MSG_PING) {
			r.type = MSG_PONG;
			ctl_send(c, &r);
		} else if (m->type != MSG_PONG) {
			ctl_retry(c, "unexpected message from server");
		}
		break;
	default:
		break;
	}
}

/*
 * Handle the frames the control buffer holds.  While MAX_INFLIGHT users
 * are in flight, the rest wait there and nothing more is read, so a burst
 * of users only slows down; if none of them gets through for BUSY_GRACE_MS,
 * the server is not letting them finish, and its NEW_USERs are refused as
 * "client busy" until some do.
 */
static enum frame_result
ctl_take(struct client *c)
{
	enum frame_result fr = FRAME_MORE;
	int64_t now = now_ms();
	struct msg m;

	while (c->fd >= 0) {
		if (c->inflight < MAX_INFLIGHT) {
			c->full_since = 0;
		} else if (c->full_since == 0) {
			c->full_since = now;
		}
		c->held = c->full_since != 0 && now - c->full_since < BUSY_GRACE_MS;
		if (c->held || (fr = fbuf_take(&c->in, &m)) != FRAME_OK) {
			break;
		}
		c->last_rx = now;
		on_ctl_msg(c, &m);
	}
	return fr;
}

/* The control connection is readable (fill), or frames held back may go
 * on (not fill). */
static void
ctl_readable(struct client *c, int fill)
{
	int rc = fill ? fbuf_fill(&c->in, c->fd) : 1;
	enum frame_result fr = ctl_take(c);
	char what[512];

	if (c->fd < 0) {
		return;
	}
	if (fr == FRAME_BAD) {
		if (c->state == C_HELLO_SENT) {
			snprintf(what, sizeof(what), "%s is not a dialback control "
			         "port (check -remote)", c->server);
			ctl_fail(c, 1, what);
		} else {
			ctl_retry(c, "malformed message from server");
		}
	} else if (rc <= 0) {
		snprintf(what, sizeof(what), "lost connection to %s: %s",
		         c->server, rc == 0 ? "closed by server" : strerror(errno));
		ctl_retry(c, what);
	}
}

/* ==== the loop =========================================================== */

static int64_t
run_timers(struct client *c, int64_t now)
{
	int64_t next = -1, dead_ms;
	struct cuser *u, *next_u;
	char what[512];

	switch (c->state) {
	case C_IDLE:
		if (c->drain_status >= 0) {
			if (c->relaying == NULL) {
				c->exit_status = c->drain_status;
			}
			break;
		}
		if (now >= c->deadline) {
			ctl_connect(c);
		}
		break;
	case C_CONNECTING:
	case C_HELLO_SENT:
	case C_AUTH_SENT:
		if (now >= c->deadline) {
			snprintf(what, sizeof(what), "no answer from %s within %ds "
			         "(is -remote the control port?)", c->server,
			         HANDSHAKE_MS / 1000);
			ctl_retry(c, what);
		}
		break;
	case C_ATTACHED:
		dead_ms = (int64_t)c->heartbeat_s * 1000 * DEAD_AFTER_BEATS;
		if (now - c->last_rx >= dead_ms) {
			snprintf(what, sizeof(what), "server %s silent for %llds",
			         c->server, (long long)(now - c->last_rx) / 1000);
			ctl_retry(c, what);
			break;
		}
		if (now >= c->next_ping) {
			struct msg m = { .type = MSG_PING };
			ctl_send(c, &m);
			c->next_ping = now + c->heartbeat_s * 1000;
		}
		next = earliest(c->next_ping, c->last_rx + dead_ms);
		break;
	}
	if (c->state != C_ATTACHED && c->exit_status < 0 && c->drain_status < 0) {
		next = earliest(next, c->deadline);
	}
	if (c->held) {
		next = earliest(next, c->full_since + BUSY_GRACE_MS);
	}
	for (u = c->users; u != NULL; u = next_u) {
		next_u = u->next;      /* user_close moves u to the dead list */
		/* A parked tunnel waits as long as it takes for a user. */
		if (u->state == U_POOL_IDLE) {
			continue;
		}
		if (now >= u->deadline) {
			int local = u->state == U_LOCAL || u->state == U_POOL_LOCAL;
			if (local) {
				report_failure(c, u, "timed out");
			}
			user_close(c, u, local ? "local service did not answer in time"
			                       : "tunnel dial timed out");
		} else {
			next = earliest(next, u->deadline);
		}
	}
	return next;
}

/* The control connection's interest, and the only per-turn sync. */
static void
ctl_sync(struct client *c)
{
	short e;

	if (c->fd < 0) {
		loop_unwatch(c->loop, &c->ctl_w);
		return;
	}
	e = c->state == C_CONNECTING ? POLLOUT
	    : (short)((c->held ? 0 : POLLIN) | (c->out.len ? POLLOUT : 0));
	if (loop_watch(c->loop, &c->ctl_w, c->fd, e) != 0) {
		ctl_retry(c, "watch control connection");
	}
}

static void
ctl_event(struct client *c, short rev)
{
	if (c->state == C_CONNECTING) {
		ctl_connected(c);
		return;
	}
	if (c->held && (rev & (POLLHUP | POLLERR))) {
		ctl_retry(c, "lost the control connection");  /* can't read on */
	} else if (rev & (POLLIN | POLLHUP | POLLERR)) {
		ctl_readable(c, 1);
	}
}

/* SIGUSR1: a status line in the log. */
static void
log_status(struct client *c)
{
	static const char *const names[] = {
		[C_IDLE] = "waiting to reconnect",
		[C_CONNECTING] = "connecting",
		[C_HELLO_SENT] = "handshaking",
		[C_AUTH_SENT] = "handshaking",
		[C_ATTACHED] = "attached",
	};
	int relaying = 0, starting = 0;
	uint64_t in = 0, out = 0;
	char heap[64];
	struct cuser *u;

	for (u = c->relaying; u != NULL; u = u->next) {
		relaying++;
		in += u->relay.dir[0].bytes;
		out += u->relay.dir[1].bytes;
	}
	for (u = c->users; u != NULL; u = u->next) {
		starting++;
	}
	heap_note(heap, sizeof(heap));
	log_info("status: up %llds; %s to %s, public port %d; users: %d "
	         "relaying, %d connecting, %llu in all; open users' bytes: %llu "
	         "in, %llu out%s", (long long)(now_ms() - c->started) / 1000,
	         names[c->state], c->server[0] ? c->server : c->remote_arg,
	         c->public_port, relaying, starting,
	         (unsigned long long)c->users_total, (unsigned long long)in,
	         (unsigned long long)out, heap);
}

static int
dispatch(struct client *c, const struct loop_event *ev, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		struct watch *w = ev[i].w;
		struct cuser *u = w->obj;
		short rev = ev[i].revents, both[2] = { 0, 0 };

		/* Closed, or watching another descriptor, since it fired. */
		if (ev[i].fd != w->fd) {
			continue;
		}
		switch ((enum kind)w->kind) {
		case K_SIGNAL:
			if (signal_take(c->sig_fd) == SIGUSR1) {
				log_status(c);
				break;
			}
			return -1;         /* SIGINT, SIGTERM or SIGHUP */
		case K_CTL:
			ctl_event(c, rev);
			break;
		case K_USER:
			if (u->state == U_POOL_IDLE) {
				pool_readable(c, u);
			} else if (u->state != U_RELAY) {
				user_connected(c, u);
			} else {
				both[w->side] = rev;
				user_relay(c, u, both);
			}
			user_sync(c, u);
			break;
		}
	}
	return 0;
}

static void
flush_control(struct client *c)
{
	char what[512];

	if (c->fd >= 0 && c->state != C_CONNECTING && c->out.len > 0 &&
	    fbuf_flush(&c->out, c->fd) != 0) {
		snprintf(what, sizeof(what), "lost connection to %s: %s",
		         c->server, strerror(errno));
		ctl_retry(c, what);
	}
}

static void
run(struct client *c)
{
	while (c->exit_status < 0) {
		int64_t now, next;
		if (c->held) {
			ctl_readable(c, 0);
		}
		now = now_ms();
		next = run_timers(c, now);
		int timeout = next < 0 ? -1 : (int)(next - now + 1);
		struct loop_event *ev;
		int n;

		flush_control(c);
		ctl_sync(c);
		sweep(c);
		if (c->exit_status >= 0) {
			break;
		}
		if ((n = loop_wait(c->loop, timeout, &ev)) < 0) {
			die(1, "%s:", loop_backend(c->loop));
		}
		if (dispatch(c, ev, n) != 0) {
			c->exit_status = 0;
		}
		flush_control(c);
	}
}

/* ==== start-up =========================================================== */

static void
resolve_local(struct client *c, const struct hostport *hp)
{
	struct addrinfo hints, *res, *ai;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(hp->host, hp->port, &hints, &res);
	if (rc != 0) {
		die(1, "-local %s: %s", c->local_arg, gai_strerror(rc));
	}
	for (ai = res; ai != NULL && c->nlocal < MAX_LOCAL_ADDRS; ai = ai->ai_next) {
		memcpy(&c->local[c->nlocal].sa, ai->ai_addr, ai->ai_addrlen);
		c->local[c->nlocal].len = ai->ai_addrlen;
		c->nlocal++;
	}
	freeaddrinfo(res);
}

static void
parse_args(struct client *c, int argc, char **argv)
{
	const char *remote = NULL, *local = "127.0.0.1:8080", *token = NULL;
	const char *port = NULL, *proxy = NULL, *pool = NULL;
	struct hostport lhp;
	char why[64];
	struct flag flags[] = {
		{ "remote", &remote, NULL, NULL },
		{ "local", &local, NULL, NULL },
		{ "token", &token, NULL, NULL },
		{ "plaintext", NULL, &c->plaintext, NULL },
		{ "port", &port, NULL, NULL },
		{ "pool", &pool, NULL, NULL },
		{ "proxy-protocol", &proxy, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};

	flags_apply(argc, argv, flags, usage_text);
	if (remote == NULL) {
		usage_exit("-remote HOST is required");
	}
	if (addr_parse(remote, DEFAULT_CONTROL_PORT, 0, &c->remote, why,
	               sizeof(why)) != 0 ||
	    c->remote.host[0] == '\0') {
		usage_exit("-remote %s: %s", remote,
		         why[0] ? why : "missing host");
	}
	if (addr_parse(local, -1, 0, &lhp, why, sizeof(why)) != 0 ||
	    lhp.host[0] == '\0') {
		usage_exit("-local %s: %s", local,
		         why[0] ? why : "missing host");
	}
	if (port != NULL) {
		struct hostport php;
		if (addr_parse(port, -1, 0, &php, why, sizeof(why)) != 0 ||
		    php.host[0] != '\0') {
			usage_exit("-port %s: %s", port,
			         why[0] ? why : "want a port number");
		}
		c->want_port = atoi(php.port);
	}
	c->pool_auto = pool == NULL;
	c->pool_want = POOL_MAX;
	if (pool != NULL) {
		char *end;
		long n = strtol(pool, &end, 10);
		if (*pool == '\0' || *end != '\0' || n < 0 || n > POOL_MAX) {
			usage_exit("-pool %s: want a number from 0 to "
			         "%d", pool, POOL_MAX);
		}
		c->pool_want = (int)n;
	}
	if (proxy != NULL) {
		if (strcmp(proxy, "v1") == 0 || strcmp(proxy, "1") == 0) {
			c->proxy_version = 1;
		} else if (strcmp(proxy, "v2") == 0 || strcmp(proxy, "2") == 0) {
			c->proxy_version = 2;
		} else {
			usage_exit("-proxy-protocol %s: want v1 or v2",
			         proxy);
		}
	}
	c->remote_arg = remote;
	c->local_arg = local;
	if (token == NULL) {
		token = getenv("DIALBACK_TOKEN");
	}
	c->token = token ? token : "";
	resolve_local(c, &lhp);
}

static void
client_free(struct client *c)
{
	while (c->users != NULL) {
		user_close(c, c->users, NULL);
	}
	while (c->relaying != NULL) {
		user_close(c, c->relaying, NULL);
	}
	sweep(c);
	loop_unwatch(c->loop, &c->ctl_w);
	close_fd(&c->fd);
	loop_unwatch(c->loop, &c->sig_w);
	close_fd(&c->sig_fd);
	loop_free(c->loop);
	fbuf_free(&c->in);
	fbuf_free(&c->out);
}

int
main(int argc, char **argv)
{
	struct client c;

	memset(&c, 0, sizeof(c));
	relay_pool_init(&c.relays);
	c.fd = -1;
	c.exit_status = -1;
	c.drain_status = -1;
	c.backoff_ms = BACKOFF_MIN_MS;
	parse_args(&c, argc, argv);
	if (fbuf_init(&c.in, CTL_IN_SIZE) != 0 ||
	    fbuf_init(&c.out, CTL_OUT_SIZE) != 0) {
		die(1, "out of memory");
	}
	c.sig_fd = signals_setup();
	random_open();
	c.loop = loop_new();
	watch_init(&c.sig_w, K_SIGNAL, NULL, 0);
	watch_init(&c.ctl_w, K_CTL, NULL, 0);
	if (loop_watch(c.loop, &c.sig_w, c.sig_fd, POLLIN) != 0) {
		die(1, "%s:", loop_backend(c.loop));
	}
	raise_fd_limit();
	random_bytes(c.run_id, RUN_ID_LEN);
	c.started = c.deadline = now_ms();
	run(&c);
	client_free(&c);
	return c.exit_status;
}
