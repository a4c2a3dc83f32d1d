/*
 * dialback server: runs on the public host.  Listens on the control port
 * (clients attach), the public port (users arrive) and the tunnel port
 * (clients dial back, one connection per user, and JOIN it).  One poll()
 * loop; every socket non-blocking; state in struct server.
 *
 * Objects are never freed while the loop walks its events: teardown
 * unwatches and closes descriptors and marks the object dead, and sweep()
 * frees the dead between turns, so a stale event can only see a dead flag.
 * Interest is registered when state changes (loop.c), not rebuilt each
 * turn, and nothing done per turn walks the relaying pairs: idle
 * connections cost nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include "common.h"
#include "sha256.h"

static const char usage_text[] =
"usage: ./server [-control ADDR] [-tunnel ADDR] [-public ADDR] [-ports LO-HI]\n"
"                [-token SECRET] [-heartbeat SECONDS] [-v | -q]\n"
"  -control ADDR        where clients attach (default 8009)\n"
"  -tunnel ADDR         where clients dial back for each user (default 8008)\n"
"  -public ADDR         where users connect (default 8007)\n"
"  -ports LO-HI         more public ports, for clients that ask with -port\n"
"  -token SECRET        shared secret clients must prove (or DIALBACK_TOKEN)\n"
"  -heartbeat SECONDS   ping interval; 3 silent intervals = dead (default 10)\n"
"  -v, -q               more logging / warnings only\n"
"ADDR is PORT, :PORT, HOST:PORT or [IPv6]:PORT; no HOST = all interfaces.\n"
"SIGUSR1 logs a status block: sessions, ports, users, bytes, uptime.\n";

#define MAX_LISTEN      4      /* addresses per role (0.0.0.0 and ::) */
#define ACCEPT_BATCH    64     /* accepts per listener per turn */
#define MAX_PENDING     4096   /* users waiting for their join, per session */
#define SESSION_OUT     (64 * 1024)  /* control output queue once attached */
#define NEW_USER_SIZE   (FRAME_HDR + USER_ID_LEN + 2 * WIRE_ADDR_LEN)
#define MAX_HANDSHAKES  64     /* control connections not yet attached */
#define MAX_PER_SOURCE  8      /* ... of those, from one address */
#define MAX_TUNNELS     4096   /* tunnel connections without their JOIN */
#define RECENT_POOLED   16     /* ended pooled users remembered, see pair_fail */

enum role { ROLE_CONTROL, ROLE_TUNNEL, ROLE_PUBLIC, ROLE_END };

static const char *const role_names[ROLE_END] = {
	[ROLE_CONTROL] = "control",
	[ROLE_TUNNEL] = "tunnel",
	[ROLE_PUBLIC] = "public",
};

/* A control connection.  Once attached it is a session: it owns the
 * public port and the users waiting for their joins. */
enum ctl_state { CTL_HELLO, CTL_AUTH, CTL_ATTACHED };

static const char *const ctl_state_names[] = {
	[CTL_HELLO] = "hello",
	[CTL_AUTH] = "auth",
	[CTL_ATTACHED] = "attached",
};

/* A public port and the session serving it.  The -public port listens
 * from start to stop; a port from -ports only while its session lasts. */
struct pub {
	int port;
	int fd[MAX_LISTEN];
	struct watch w[MAX_LISTEN];
	int nfd;                       /* 0 once closed */
	struct ctl *owner;             /* NULL: no client attached */
};

struct ctl {
	struct ctl *next;
	int fd, dead;
	struct watch w;
	enum ctl_state state;
	char peer[ADDR_STRLEN];
	struct wire_addr from;         /* peer address, to count per source */
	struct fbuf in, out;
	uint8_t cn[NONCE_LEN], sn[NONCE_LEN], run_id[RUN_ID_LEN];
	uint8_t key[PROOF_LEN];        /* session key, once attached */
	int64_t deadline;              /* handshake must finish by then */
	int64_t last_rx, next_ping;
	int pending;                   /* users waiting for a join */
	struct pub *pub;               /* the port it serves, once attached */
	struct pub *own;               /* a -ports listener it opened */
	int pool_want;                 /* tunnels the client keeps ready */
	int tickets;                   /* of those, issued and not yet used */
	int nparked;                   /* ... and dialed, waiting for users */
	struct parked *parked;
	int64_t attached_at;
	uint64_t served;               /* users announced */
};

/* A tunnel connection that has not sent its JOIN yet. */
struct tun {
	struct tun *next;
	int fd, dead;
	struct watch w;
	char peer[ADDR_STRLEN];
	struct fbuf in;
	int64_t deadline;
};

/* A user accepted on the public port, waiting for its tunnel.  Its bytes
 * stay in the kernel until the join: nothing reads fd before then. */
struct user {
	struct user *next;
	int fd, dead;
	struct watch w;
	int ticket;                    /* a pool ticket: no user, fd -1 */
	uint64_t seq;                  /* for logs */
	uint8_t id[USER_ID_LEN];
	struct ctl *sess;
	char peer[ADDR_STRLEN];
	int64_t start, deadline;
};

/* A pooled tunnel, joined with a ticket, waiting for a user. */
struct parked {
	struct parked *next;
	int fd, dead;
	struct watch w;
	struct ctl *sess;
};

/* A joined user: fd[0] is the user, fd[1] the tunnel.  Pairs are the
 * one list that grows with idle connections, so it is doubly linked: a
 * pair leaves it in O(1) when it ends. */
struct pair {
	struct pair *next, *prev;
	int dead;
	struct watch w[2];
	int pooled;                    /* began on a parked tunnel */
	uint8_t sess_run[RUN_ID_LEN];  /* ... of the session with this run id */
	uint8_t id[USER_ID_LEN];
	uint64_t seq;
	char peer[ADDR_STRLEN];
	int64_t start;
	struct relay relay;
};

/* What a watch belongs to (struct watch's kind). */
enum kind { K_SIGNAL, K_LISTEN, K_CTL, K_TUN, K_USER, K_PAIR, K_PARKED };

struct server {
	struct hostport addr[ROLE_END];
	const char *token;             /* "" = no token */
	int heartbeat_s;
	int ports_lo, ports_hi;        /* -ports; 0 = none */
	int lfd[ROLE_END][MAX_LISTEN]; /* control and tunnel */
	struct watch lw[ROLE_END][MAX_LISTEN];
	int nlfd[ROLE_END];
	int port[ROLE_END];
	struct pub main_pub;           /* -public */
	int sig_fd;
	struct watch sig_w;
	struct loop *loop;
	int spare_fd;                  /* given up to accept-and-close at EMFILE */
	int64_t accept_paused_until;
	struct log_limit log_fds, log_no_client, log_pending, log_handshakes,
	                 log_tunnels, log_timeouts;
	struct ctl *ctls;
	struct tun *tuns;
	int ntuns;                     /* live ones in tuns */
	struct user *users;
	struct pair *pairs;
	struct pair *dead_pairs;       /* ended this turn, freed by sweep */
	struct {
		uint8_t id[USER_ID_LEN];
		uint64_t seq;
		char peer[ADDR_STRLEN];
	} recent[RECENT_POOLED];       /* a ring of ended pooled users */
	unsigned recent_next;
	uint64_t user_seq;
	int64_t started;
	uint64_t bytes_in, bytes_out;  /* of pairs already closed */
};

static void
usage_exit(const char *why)
{
	fprintf(stderr, "server: %s (see ./server -h)\n", why);
	exit(2);
}

/* ==== teardown =========================================================== */

/* Stop watching fd and close it.  Every descriptor the loop watches is
 * closed through here (or relay_close after pair_unwatch). */
static void
close_watched(struct server *s, struct watch *w, int *fd)
{
	loop_unwatch(s->loop, w);
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static void
user_close(struct server *s, struct user *u, const char *why)
{
	if (u->dead) {
		return;
	}
	u->dead = 1;
	if (u->ticket) {
		u->sess->tickets--;
		return;
	}
	log_info("user #%llu %s closed: %s", (unsigned long long)u->seq,
	         u->peer, why);
	close_watched(s, &u->w, &u->fd);
	if (u->sess != NULL) {
		u->sess->pending--;
	}
}

static void
parked_close(struct server *s, struct parked *p, const char *why)
{
	if (p->dead) {
		return;
	}
	log_debug("pooled tunnel of %s closed: %s", p->sess->peer, why);
	close_watched(s, &p->w, &p->fd);
	p->dead = 1;
	p->sess->nparked--;
}

/* Close a -ports listener; its memory goes with its session, at sweep,
 * since this turn's events may still name it. */
static void
pub_close(struct server *s, struct pub *p)
{
	int i;

	if (p == NULL || p->nfd == 0) {
		return;
	}
	for (i = 0; i < p->nfd; i++) {
		close_watched(s, &p->w[i], &p->fd[i]);
	}
	p->nfd = 0;
	log_info("public port %d closed", p->port);
}

static void
ctl_close(struct server *s, struct ctl *c, const char *why)
{
	struct user *u;
	struct parked *p;

	if (c->dead) {
		return;
	}
	if (c->state == CTL_ATTACHED) {
		log_info("client %s detached: %s", c->peer, why);
	} else if (why != NULL) {
		log_info("control %s dropped: %s", c->peer, why);
	}
	for (u = s->users; u != NULL; u = u->next) {
		if (u->sess == c && !u->dead) {
			user_close(s, u, "its client went away before the join");
		}
	}
	for (p = c->parked; p != NULL; p = p->next) {
		parked_close(s, p, "its session ended");
	}
	if (c->pub != NULL) {
		c->pub->owner = NULL;
		c->pub = NULL;
	}
	pub_close(s, c->own);
	close_watched(s, &c->w, &c->fd);
	c->dead = 1;
}

static void
tun_close(struct server *s, struct tun *t, const char *why)
{
	if (t->dead) {
		return;
	}
	if (why != NULL) {
		log_info("tunnel %s dropped: %s", t->peer, why);
	}
	close_watched(s, &t->w, &t->fd);
	t->dead = 1;
	s->ntuns--;
}

static void
pair_link(struct server *s, struct pair *p)
{
	p->prev = NULL;
	p->next = s->pairs;
	if (s->pairs != NULL) {
		s->pairs->prev = p;
	}
	s->pairs = p;
}

static struct pair *
pair_new(void)
{
	struct pair *p = calloc(1, sizeof(*p));

	if (p != NULL) {
		watch_init(&p->w[0], K_PAIR, p, 0);
		watch_init(&p->w[1], K_PAIR, p, 1);
	}
	return p;
}

/* The end of every pair: counted, unwatched, closed, and moved from the
 * live list to the dead one, which sweep frees. */
static void
pair_end(struct server *s, struct pair *p)
{
	s->bytes_in += p->relay.dir[0].bytes;
	s->bytes_out += p->relay.dir[1].bytes;
	if (p->pooled) {
		unsigned i = s->recent_next++ % RECENT_POOLED;
		memcpy(s->recent[i].id, p->id, USER_ID_LEN);
		s->recent[i].seq = p->seq;
		memcpy(s->recent[i].peer, p->peer, ADDR_STRLEN);
	}
	loop_forget(s->loop, &p->w[0]);
	loop_forget(s->loop, &p->w[1]);
	relay_close(&p->relay);
	p->dead = 1;
	if (p->prev != NULL) {
		p->prev->next = p->next;
	} else {
		s->pairs = p->next;
	}
	if (p->next != NULL) {
		p->next->prev = p->prev;
	}
	p->next = s->dead_pairs;
	s->dead_pairs = p;
}

static void
pair_close(struct server *s, struct pair *p, enum relay_state st)
{
	double secs = (double)(now_ms() - p->start) / 1000.0;
	unsigned long long in = p->relay.dir[0].bytes;
	unsigned long long out = p->relay.dir[1].bytes;

	if (p->dead) {
		return;
	}
	if (st == RELAY_DONE) {
		log_info("user #%llu %s closed: %llu bytes in, %llu out, %.1fs",
		         (unsigned long long)p->seq, p->peer, in, out, secs);
	} else {
		log_info("user #%llu %s closed: %s %s: %s; %llu bytes in, %llu out, "
		         "%.1fs", (unsigned long long)p->seq, p->peer,
		         p->relay.err_side == 0 ? "user" : "tunnel",
		         p->relay.err_op, strerror(p->relay.err_no), in, out, secs);
	}
	pair_end(s, p);
}

/* A user on a pooled tunnel whose client could not reach the service.
 * Only the session that took the user can say so (matched by run id, which
 * also covers a session that replaced its own).  The client closes the
 * tunnel too, and its reset may arrive first: then the user is among the
 * recently ended, and the reason still gets said. */
static void
pair_fail(struct server *s, const struct ctl *c, const uint8_t id[USER_ID_LEN],
          const char *why)
{
	struct pair *p;
	unsigned i;

	for (p = s->pairs; p != NULL; p = p->next) {
		if (p->pooled && memcmp(p->id, id, USER_ID_LEN) == 0 &&
		    memcmp(p->sess_run, c->run_id, RUN_ID_LEN) == 0) {
			log_info("user #%llu %s closed: %s", (unsigned long long)p->seq,
			         p->peer, why);
			pair_end(s, p);
			return;
		}
	}
	for (i = 0; i < RECENT_POOLED; i++) {
		if (memcmp(s->recent[i].id, id, USER_ID_LEN) == 0) {
			log_info("user #%llu %s had been closed: %s",
			         (unsigned long long)s->recent[i].seq,
			         s->recent[i].peer, why);
			return;
		}
	}
}

/* Watch a pair's two sockets for what its buffers allow; a side with no
 * interest is left out entirely, so its hang-up can't wake us in a loop. */
static void
pair_sync(struct server *s, struct pair *p)
{
	short ev[2];
	int i;

	relay_events(&p->relay, ev);
	for (i = 0; i < 2; i++) {
		if (ev[i] == 0) {
			loop_unwatch(s->loop, &p->w[i]);
		} else if (loop_watch(s->loop, &p->w[i], p->relay.fd[i], ev[i]) != 0) {
			p->relay.err_side = i;
			p->relay.err_op = "watch";
			p->relay.err_no = errno;
			pair_close(s, p, RELAY_FAIL);
			return;
		}
	}
}

/* Free what teardown marked dead.  Lists are singly linked; a pointer to
 * the link being examined makes unlinking one line. */
#define SWEEP(head, type, free_one)                                     \
	do {                                                            \
		type **pp = &(head);                                    \
		while (*pp != NULL) {                                   \
			type *o = *pp;                                  \
			if (o->dead) {                                  \
				*pp = o->next;                          \
				free_one(o);                            \
			} else {                                        \
				pp = &o->next;                          \
			}                                               \
		}                                                       \
	} while (0)

static void
ctl_free(struct ctl *c)
{
	while (c->parked != NULL) {
		struct parked *p = c->parked;
		c->parked = p->next;
		free(p);
	}
	fbuf_free(&c->in);
	fbuf_free(&c->out);
	free(c->own);
	free(c);
}

static void
tun_free(struct tun *t)
{
	fbuf_free(&t->in);
	free(t);
}

/* The lists swept here are bounded (handshakes, users waiting for their
 * tunnel, parked tunnels); pairs, which are not, wait on their own list. */
static void
sweep(struct server *s)
{
	struct ctl *c;

	for (c = s->ctls; c != NULL; c = c->next) {
		SWEEP(c->parked, struct parked, free);
	}
	SWEEP(s->ctls, struct ctl, ctl_free);
	SWEEP(s->tuns, struct tun, tun_free);
	SWEEP(s->users, struct user, free);
	while (s->dead_pairs != NULL) {
		struct pair *p = s->dead_pairs;
		s->dead_pairs = p->next;
		free(p);
	}
}

/* ==== control connections ================================================ */

static void
ctl_send(struct server *s, struct ctl *c, const struct msg *m)
{
	if (fbuf_put(&c->out, m) != 0) {
		ctl_close(s, c, "not reading its control messages");
	}
}

/* ctl_refuse: tell the peer why in an ERROR, then drop it. */
static void
ctl_refuse(struct server *s, struct ctl *c, enum err_code code,
           const char *why)
{
	struct msg m;

	memset(&m, 0, sizeof(m));
	m.type = MSG_ERROR;
	m.code = (uint8_t)code;
	snprintf(m.text, sizeof(m.text), "%s", why);
	fbuf_flush(&c->out, c->fd);
	send_now(c->fd, &m);
	ctl_close(s, c, why);
}

static void
on_hello(struct server *s, struct ctl *c, const struct msg *m)
{
	struct msg r;
	char why[TEXT_MAX];

	if (m->type != MSG_HELLO) {
		ctl_close(s, c, "not a dialback client (first message is not HELLO)");
		return;
	}
	if (m->version != PROTO_VERSION) {
		snprintf(why, sizeof(why), "protocol version mismatch: server "
		         "speaks %d, client %d; run the same dialback release on "
		         "both sides", PROTO_VERSION, m->version);
		ctl_refuse(s, c, ERR_VERSION, why);
		return;
	}
	memcpy(c->cn, m->nonce, NONCE_LEN);
	memcpy(c->run_id, m->run_id, RUN_ID_LEN);
	random_bytes(c->sn, NONCE_LEN);
	memset(&r, 0, sizeof(r));
	r.type = MSG_CHALLENGE;
	memcpy(r.nonce, c->sn, NONCE_LEN);
	c->state = CTL_AUTH;
	ctl_send(s, c, &r);
}

/* The session serving port, if any. */
static struct ctl *
port_owner(struct server *s, int port)
{
	struct ctl *c;

	if (port == s->main_pub.port) {
		return s->main_pub.owner;
	}
	for (c = s->ctls; c != NULL; c = c->next) {
		if (!c->dead && c->pub != NULL && c->pub->port == port) {
			return c;
		}
	}
	return NULL;
}

/* Give c the port it asked for: -public, or one from -ports that it
 * opens now.  0, or -1 with the ERROR to send in *code and why. */
static int
port_claim(struct server *s, struct ctl *c, int port, enum err_code *code,
           char *why, size_t len)
{
	struct ctl *old = port_owner(s, port);
	struct hostport hp;
	int i;

	if (port != s->main_pub.port &&
	    (s->ports_lo == 0 || port < s->ports_lo || port > s->ports_hi)) {
		*code = ERR_PORT;
		if (s->ports_lo == 0) {
			snprintf(why, len, "public port %d is not offered here: this "
			         "server serves port %d only (see its -ports)", port,
			         s->main_pub.port);
		} else {
			snprintf(why, len, "public port %d is not offered here: this "
			         "server serves port %d and %d-%d", port,
			         s->main_pub.port, s->ports_lo, s->ports_hi);
		}
		return -1;
	}
	*code = ERR_BUSY;
	if (old != NULL) {
		/* The same client process coming back after a blip: its old
		 * session is dead and only waits for the heartbeat to say so. */
		if (memcmp(old->run_id, c->run_id, RUN_ID_LEN) != 0) {
			snprintf(why, len, "public port %d is already served by %s",
			         port, old->peer);
			return -1;
		}
		c->pub = old->pub;
		c->own = old->own;
		old->pub = NULL;
		old->own = NULL;
		ctl_close(s, old, "replaced by its own reconnect");
	} else if (port == s->main_pub.port) {
		c->pub = &s->main_pub;
	} else {
		if ((c->own = calloc(1, sizeof(*c->own))) == NULL) {
			snprintf(why, len, "out of memory");
			return -1;
		}
		hp = s->addr[ROLE_PUBLIC];
		snprintf(hp.port, sizeof(hp.port), "%d", port);
		c->own->nfd = listen_on(&hp, "public", c->own->fd, MAX_LISTEN,
		                        why, len);
		if (c->own->nfd < 0) {
			c->own->nfd = 0;
			return -1;
		}
		c->own->port = port;
		for (i = 0; i < c->own->nfd; i++) {
			watch_init(&c->own->w[i], K_LISTEN, c->own, ROLE_PUBLIC);
		}
		c->pub = c->own;
	}
	c->pub->owner = c;
	return 0;
}

static void
on_auth(struct server *s, struct ctl *c, const struct msg *m)
{
	struct msg r;
	uint8_t want[PROOF_LEN];
	char why[TEXT_MAX];
	enum err_code code;
	int port = m->public_port ? m->public_port : s->main_pub.port;

	if (m->type != MSG_AUTH) {
		ctl_refuse(s, c, ERR_PROTO, "expected AUTH");
		return;
	}
	if (s->token[0] != '\0') {
		key_auth_proof(s->token, c->cn, c->sn, want);
		if (!equal_ct(want, m->proof, PROOF_LEN)) {
			ctl_refuse(s, c, ERR_AUTH, "wrong token");
			return;
		}
	}
	/* Room for a burst of NEW_USERs; see pub_accepting(). */
	if (fbuf_init(&c->out, SESSION_OUT) != 0) {
		ctl_close(s, c, "out of memory");
		return;
	}
	if (port_claim(s, c, port, &code, why, sizeof(why)) != 0) {
		ctl_refuse(s, c, code, why);
		return;
	}
	key_session(s->token, c->cn, c->sn, c->key);
	c->pool_want = m->pool < POOL_MAX ? m->pool : POOL_MAX;
	c->state = CTL_ATTACHED;
	c->attached_at = now_ms();
	c->next_ping = c->attached_at + s->heartbeat_s * 1000;
	set_keepalive(c->fd);
	memset(&r, 0, sizeof(r));
	r.type = MSG_WELCOME;
	r.tunnel_port = (uint16_t)s->port[ROLE_TUNNEL];
	r.public_port = (uint16_t)c->pub->port;
	r.heartbeat_s = (uint16_t)s->heartbeat_s;
	ctl_send(s, c, &r);
	log_info("client %s attached: serving public port %d", c->peer,
	         c->pub->port);
}

static struct user *
user_find(struct server *s, const uint8_t id[USER_ID_LEN])
{
	struct user *u;

	for (u = s->users; u != NULL; u = u->next) {
		if (!u->dead && memcmp(u->id, id, USER_ID_LEN) == 0) {
			return u;
		}
	}
	return NULL;
}

static void
on_session_msg(struct server *s, struct ctl *c, const struct msg *m)
{
	struct msg r;
	struct user *u;
	char why[TEXT_MAX + 64];

	switch (m->type) {
	case MSG_PING:
		memset(&r, 0, sizeof(r));
		r.type = MSG_PONG;
		ctl_send(s, c, &r);
		break;
	case MSG_PONG:
		break;
	case MSG_USER_FAILED:
		snprintf(why, sizeof(why), "client could not reach its local "
		         "service: %s", m->text);
		u = user_find(s, m->user_id);
		if (u != NULL && u->sess == c && !u->ticket) {
			user_close(s, u, why);
		} else {
			pair_fail(s, c, m->user_id, why);
		}
		break;
	default:
		snprintf(why, sizeof(why), "unexpected %s from client",
		         msg_name(m->type));
		ctl_refuse(s, c, ERR_PROTO, why);
		break;
	}
}

static void
ctl_readable(struct server *s, struct ctl *c)
{
	struct msg m;
	enum frame_result fr;
	int rc = fbuf_fill(&c->in, c->fd);

	while (!c->dead && (fr = fbuf_take(&c->in, &m)) == FRAME_OK) {
		c->last_rx = now_ms();
		log_debug("control %s: %s in state %s", c->peer,
		          msg_name(m.type), ctl_state_names[c->state]);
		switch (c->state) {
		case CTL_HELLO:
			on_hello(s, c, &m);
			break;
		case CTL_AUTH:
			on_auth(s, c, &m);
			break;
		case CTL_ATTACHED:
			on_session_msg(s, c, &m);
			break;
		}
	}
	if (c->dead) {
		return;
	}
	if (fr == FRAME_BAD) {
		ctl_close(s, c, c->state == CTL_HELLO
		          ? "not a dialback client (bad first bytes)"
		          : "malformed message");
	} else if (rc == 0) {
		ctl_close(s, c, "connection closed");
	} else if (rc < 0) {
		ctl_close(s, c, strerror(errno));
	}
}

static void
ctl_writable(struct server *s, struct ctl *c)
{
	if (fbuf_flush(&c->out, c->fd) != 0) {
		ctl_close(s, c, strerror(errno));
	}
}

/* ==== users and tunnels ================================================== */

/* Hand a new user straight to a parked tunnel: NEW_USER goes down that
 * tunnel ahead of the user's bytes.  0, or -1 if none is parked. */
/* A pair is born: listed, its queued bytes sent as far as they go (when
 * kick says which sides to try), and watched. */
static void
pair_start(struct server *s, struct pair *p, const short kick[2])
{
	pair_link(s, p);
	if (kick != NULL && relay_step(&p->relay, kick) == RELAY_FAIL) {
		pair_close(s, p, RELAY_FAIL);
		return;
	}
	pair_sync(s, p);
}

static int
user_bind(struct server *s, struct ctl *c, int fd, const struct msg *m,
          const char *peer)
{
	static const short now[2] = { 0, POLLOUT };
	struct parked *k;
	struct pair *p;
	uint8_t frame[FRAME_HDR + FRAME_MAX];

	for (k = c->parked; k != NULL && k->dead; k = k->next) {
		;
	}
	if (k == NULL || (p = pair_new()) == NULL) {
		return -1;
	}
	relay_init(&p->relay, fd, k->fd);
	if (relay_prefill(&p->relay, 0, frame, frame_encode(frame, m)) != 0) {
		relay_abandon(&p->relay);
		free(p);
		return -1;
	}
	k->fd = -1;
	parked_close(s, k, "taken by a user");
	p->pooled = 1;
	memcpy(p->sess_run, c->run_id, RUN_ID_LEN);
	memcpy(p->id, m->user_id, USER_ID_LEN);
	p->seq = ++s->user_seq;
	p->start = now_ms();
	memcpy(p->peer, peer, sizeof(p->peer));
	log_info("user #%llu %s accepted on port %d, joined to a pooled tunnel",
	         (unsigned long long)p->seq, peer, c->pub->port);
	/* Send the NEW_USER now rather than a poll turn later. */
	pair_start(s, p, now);
	return 0;
}

static void
user_arrive(struct server *s, int fd, const struct sockaddr *sa,
            struct pub *pub)
{
	struct user *u;
	struct ctl *c = pub->owner;
	struct msg m;
	struct sockaddr_storage here;
	socklen_t len = sizeof(here);
	char peer[ADDR_STRLEN];
	unsigned long held;
	int64_t now = now_ms();

	addr_str(sa, peer, sizeof(peer));
	if (c == NULL || c->pending >= MAX_PENDING) {
		if (c == NULL && log_limited(&s->log_no_client, now, &held)) {
			log_info("user %s closed: no client attached (%lu more since "
			         "the last such line)", peer, held);
		} else if (c != NULL && log_limited(&s->log_pending, now, &held)) {
			log_info("user %s closed: %d users already wait for their "
			         "tunnel (%lu more since the last such line)", peer,
			         MAX_PENDING, held);
		}
		close(fd);
		return;
	}
	memset(&m, 0, sizeof(m));
	m.type = MSG_NEW_USER;
	random_bytes(m.user_id, USER_ID_LEN);
	addr_to_wire(sa, &m.src);
	if (getsockname(fd, (struct sockaddr *)&here, &len) == 0) {
		addr_to_wire((struct sockaddr *)&here, &m.dst);
	}
	c->served++;
	if (user_bind(s, c, fd, &m, peer) == 0) {
		return;
	}
	u = calloc(1, sizeof(*u));
	if (u == NULL) {
		log_warn("user %s closed: out of memory", peer);
		close(fd);
		return;
	}
	u->fd = fd;
	u->seq = ++s->user_seq;
	u->sess = c;
	u->start = now;
	u->deadline = now + JOIN_WAIT_MS;
	memcpy(u->peer, peer, sizeof(peer));
	memcpy(u->id, m.user_id, USER_ID_LEN);
	u->next = s->users;
	s->users = u;
	c->pending++;
	log_info("user #%llu %s accepted on port %d", (unsigned long long)u->seq,
	         peer, pub->port);
	/* Watched for nothing: a reset still shows as a hang-up, while the
	 * user's bytes wait in the kernel for the tunnel. */
	watch_init(&u->w, K_USER, u, 0);
	if (loop_watch(s->loop, &u->w, fd, 0) != 0) {
		user_close(s, u, strerror(errno));
		return;
	}
	if (fbuf_put(&c->out, &m) != 0) {
		user_close(s, u, "client is not reading its control messages");
	}
}

/* Keep the client's pool full: a TICKET for each tunnel it asked for that
 * is neither issued nor parked.  Runs every turn; a full control queue
 * just defers it. */
static void
pool_refill(struct server *s, struct ctl *c)
{
	int64_t now = now_ms();
	struct user *u;
	struct msg m;

	while (c->tickets + c->nparked < c->pool_want &&
	       c->out.cap - c->out.len >= FRAME_HDR + USER_ID_LEN) {
		if ((u = calloc(1, sizeof(*u))) == NULL) {
			return;
		}
		u->fd = -1;
		watch_init(&u->w, K_USER, u, 0);
		u->ticket = 1;
		u->sess = c;
		u->start = now;
		u->deadline = now + JOIN_WAIT_MS;
		random_bytes(u->id, USER_ID_LEN);
		u->next = s->users;
		s->users = u;
		c->tickets++;
		memset(&m, 0, sizeof(m));
		m.type = MSG_TICKET;
		memcpy(m.user_id, u->id, USER_ID_LEN);
		fbuf_put(&c->out, &m);
	}
}

/* A tunnel joined with a pool ticket waits, parked, for a user. */
static void
tun_park(struct server *s, struct tun *t, struct user *ticket)
{
	struct ctl *c = ticket->sess;
	struct parked *k;

	if (t->in.len > 0) {
		tun_close(s, t, "bytes behind a pool JOIN");
		return;
	}
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		tun_close(s, t, "out of memory");
		return;
	}
	k->fd = t->fd;
	k->sess = c;
	t->fd = -1;
	tun_close(s, t, NULL);
	user_close(s, ticket, NULL);
	k->next = c->parked;
	c->parked = k;
	c->nparked++;
	/* A parked tunnel says nothing until it is used: anything it sends,
	 * even EOF, ends it. */
	watch_init(&k->w, K_PARKED, k, 0);
	if (loop_watch(s->loop, &k->w, k->fd, POLLIN) != 0) {
		parked_close(s, k, strerror(errno));
		return;
	}
	log_debug("tunnel %s parked for %s (%d of %d)", t->peer, c->peer,
	          c->nparked, c->pool_want);
}

static void
tun_join(struct server *s, struct tun *t, const struct msg *m)
{
	struct user *u = user_find(s, m->user_id);
	uint8_t want[PROOF_LEN];
	struct pair *p;
	short ev[2];

	if (u == NULL) {
		tun_close(s, t, "JOIN names no waiting user");
		return;
	}
	key_join_proof(u->sess->key, u->id, want);
	if (!equal_ct(want, m->proof, PROOF_LEN)) {
		/* The user stays: whoever forged this may have seen its id. */
		tun_close(s, t, "JOIN with a wrong proof");
		return;
	}
	if (u->ticket) {
		tun_park(s, t, u);
		return;
	}
	p = pair_new();
	if (p != NULL) {
		relay_init(&p->relay, u->fd, t->fd);
	}
	/* Bytes the client sent right behind its JOIN are the service's. */
	if (p == NULL || relay_prefill(&p->relay, 1, t->in.data, t->in.len) != 0) {
		if (p != NULL) {
			relay_abandon(&p->relay);
		}
		free(p);
		tun_close(s, t, "out of memory");
		user_close(s, u, "out of memory");
		return;
	}
	p->relay.dir[1].bytes += t->in.len;
	memcpy(p->id, u->id, USER_ID_LEN);
	p->seq = u->seq;
	p->start = u->start;
	memcpy(p->peer, u->peer, sizeof(p->peer));
	log_info("user #%llu %s joined after %lldms", (unsigned long long)u->seq,
	         u->peer, (long long)(now_ms() - u->start));
	/* The pair owns both descriptors now: the old owners let go of
	 * them, watches first (handed over; pair_start's sync makes up for
	 * a failed hand-over). */
	relay_events(&p->relay, ev);
	loop_move(s->loop, &u->w, &p->w[0], ev[0]);
	loop_move(s->loop, &t->w, &p->w[1], ev[1]);
	u->fd = -1;
	t->fd = -1;
	tun_close(s, t, NULL);
	u->sess->pending--;
	u->sess = NULL;
	u->dead = 1;
	pair_start(s, p, NULL);
}

static void
tun_readable(struct server *s, struct tun *t)
{
	struct msg m;
	char why[TEXT_MAX];
	int rc = fbuf_fill(&t->in, t->fd);
	enum frame_result fr = fbuf_take(&t->in, &m);

	if (fr == FRAME_OK && m.type == MSG_JOIN) {
		tun_join(s, t, &m);
	} else if (fr == FRAME_OK && m.type == MSG_HELLO) {
		/* A client pointed at the wrong port: tell it which is right. */
		memset(&m, 0, sizeof(m));
		m.type = MSG_ERROR;
		m.code = ERR_WRONG_PORT;
		snprintf(m.text, sizeof(m.text), "this is the tunnel port; point "
		         "-remote at the control port (%d)", s->port[ROLE_CONTROL]);
		send_now(t->fd, &m);
		tun_close(s, t, "a HELLO on the tunnel port");
	} else if (fr == FRAME_OK || fr == FRAME_BAD) {
		snprintf(why, sizeof(why), "expected JOIN, got %s",
		         fr == FRAME_OK ? msg_name(m.type) : "garbage");
		tun_close(s, t, why);
	} else if (rc == 0) {
		tun_close(s, t, "closed before its JOIN");
	} else if (rc < 0) {
		tun_close(s, t, strerror(errno));
	}
}

/* ==== accepting ========================================================== */

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
	if (fd >= 0 && log_limited(&s->log_fds, now, &held)) {
		log_warn("out of file descriptors: closing new connections (%lu "
		         "more since the last such line); raise 'ulimit -n'", held);
	}
	return fd >= 0;
}

/* Too many connections without a JOIN: drop the oldest, which is the
 * likeliest to be silent, rather than refusing the newest, which is the
 * likeliest to be the client's.  Lists keep the newest first. */
static void
tun_evict_oldest(struct server *s)
{
	struct tun *t, *oldest = NULL;
	unsigned long held;

	for (t = s->tuns; t != NULL; t = t->next) {
		if (!t->dead) {
			oldest = t;
		}
	}
	if (oldest != NULL) {
		if (log_limited(&s->log_tunnels, now_ms(), &held)) {
			log_warn("%d tunnel connections wait for a JOIN: dropping the "
			         "oldest (%lu more since the last such line)",
			         MAX_TUNNELS, held);
		}
		tun_close(s, oldest, NULL);
	}
}

static void
tun_arrive(struct server *s, int fd, const struct sockaddr *sa)
{
	struct tun *t;

	if (s->ntuns >= MAX_TUNNELS) {
		tun_evict_oldest(s);
	}
	t = calloc(1, sizeof(*t));
	if (t == NULL || fbuf_init(&t->in, FBUF_SMALL) != 0) {
		free(t);
		close(fd);
		return;
	}
	s->ntuns++;
	t->fd = fd;
	t->deadline = now_ms() + HANDSHAKE_MS;
	addr_str(sa, t->peer, sizeof(t->peer));
	t->next = s->tuns;
	s->tuns = t;
	watch_init(&t->w, K_TUN, t, 0);
	if (loop_watch(s->loop, &t->w, fd, POLLIN) != 0) {
		tun_close(s, t, strerror(errno));
	}
}

/* Admission for a new control connection: at most MAX_PER_SOURCE
 * handshakes from one address, and MAX_HANDSHAKES in all, the oldest
 * giving way, so silent connections can't lock the real client out.
 * Returns 0 to admit. */
static int
ctl_admit(struct server *s, const struct wire_addr *from, const char *peer)
{
	struct ctl *c, *oldest = NULL;
	int all = 0, same = 0;
	unsigned long held;

	for (c = s->ctls; c != NULL; c = c->next) {
		if (c->dead || c->state == CTL_ATTACHED) {
			continue;
		}
		all++;
		oldest = c;
		if (c->from.family == from->family &&
		    memcmp(c->from.addr, from->addr, sizeof(from->addr)) == 0) {
			same++;
		}
	}
	if (same >= MAX_PER_SOURCE) {
		if (log_limited(&s->log_handshakes, now_ms(), &held)) {
			log_warn("control %s refused: %d handshakes from that address "
			         "already (%lu more since the last such line)", peer,
			         MAX_PER_SOURCE, held);
		}
		return -1;
	}
	if (all >= MAX_HANDSHAKES && oldest != NULL) {
		if (log_limited(&s->log_handshakes, now_ms(), &held)) {
			log_warn("%d control handshakes at once: dropping the oldest "
			         "(%lu more since the last such line)", MAX_HANDSHAKES,
			         held);
		}
		close_watched(s, &oldest->w, &oldest->fd);
		oldest->dead = 1;
	}
	return 0;
}

static void
ctl_arrive(struct server *s, int fd, const struct sockaddr *sa)
{
	struct ctl *c;
	struct wire_addr from;
	char peer[ADDR_STRLEN];

	addr_to_wire(sa, &from);
	addr_str(sa, peer, sizeof(peer));
	if (ctl_admit(s, &from, peer) != 0 || (c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return;
	}
	if (fbuf_init(&c->in, FBUF_SMALL) != 0 ||
	    fbuf_init(&c->out, FBUF_SMALL) != 0) {
		ctl_free(c);
		close(fd);
		return;
	}
	c->fd = fd;
	c->from = from;
	c->state = CTL_HELLO;
	c->deadline = now_ms() + HANDSHAKE_MS;
	memcpy(c->peer, peer, sizeof(peer));
	c->next = s->ctls;
	s->ctls = c;
	log_debug("control %s connected", c->peer);
	watch_init(&c->w, K_CTL, c, 0);
	if (loop_watch(s->loop, &c->w, fd, POLLIN) != 0) {
		ctl_close(s, c, strerror(errno));
	}
}

/* Users are accepted only while the session can queue their NEW_USER:
 * when the client reads slowly, later users wait in the kernel's accept
 * queue instead of being dropped. */
static int
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

/* ==== timers ============================================================= */

static int64_t
earliest(int64_t a, int64_t b)
{
	return (a < 0 || (b >= 0 && b < a)) ? b : a;
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
	int64_t next = -1, dead_ms = (int64_t)s->heartbeat_s * 1000 *
	                             DEAD_AFTER_BEATS;
	struct ctl *c;
	struct tun *t;
	struct user *u;
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
				next = earliest(next, c->deadline);
			}
			continue;
		}
		if (now - c->last_rx >= dead_ms) {
			snprintf(why, sizeof(why), "silent for %llds",
			         (long long)(now - c->last_rx) / 1000);
			ctl_close(s, c, why);
			continue;
		}
		if (now >= c->next_ping) {
			struct msg m;
			memset(&m, 0, sizeof(m));
			m.type = MSG_PING;
			ctl_send(s, c, &m);
			c->next_ping = now + s->heartbeat_s * 1000;
		}
		next = earliest(next, c->next_ping);
		next = earliest(next, c->last_rx + dead_ms);
	}
	for (t = s->tuns; t != NULL; t = t->next) {
		if (!t->dead && now >= t->deadline) {
			tun_close(s, t, timeout_why(s, now, "no JOIN in time", why,
			                            sizeof(why)));
		} else if (!t->dead) {
			next = earliest(next, t->deadline);
		}
	}
	for (u = s->users; u != NULL; u = u->next) {
		if (!u->dead && now >= u->deadline) {
			user_close(s, u, "the client did not dial back in time");
		} else if (!u->dead) {
			next = earliest(next, u->deadline);
		}
	}
	for (c = s->ctls; c != NULL; c = c->next) {
		if (!c->dead && c->state == CTL_ATTACHED) {
			pool_refill(s, c);
		}
	}
	if (s->accept_paused_until > now) {
		next = earliest(next, s->accept_paused_until);
	}
	return next;
}

/* ==== the loop =========================================================== */

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
 * bytes.  They are few and bounded; pairs keep their own interest as they
 * step, so idle connections are never visited. */
static void
sync_few(struct server *s, int64_t now)
{
	int open = s->accept_paused_until <= now;
	int r, i;
	struct ctl *c;

	for (r = ROLE_CONTROL; r < ROLE_PUBLIC; r++) {
		for (i = 0; i < s->nlfd[r]; i++) {
			if (open) {
				loop_watch(s->loop, &s->lw[r][i], s->lfd[r][i], POLLIN);
			} else {
				loop_unwatch(s->loop, &s->lw[r][i]);
			}
		}
	}
	pub_sync(s, &s->main_pub, open);
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

static void
pair_event(struct server *s, struct pair *p, int side, short rev)
{
	short both[2] = { 0, 0 };
	enum relay_state st;

	both[side] = rev;
	st = relay_step(&p->relay, both);
	if (st != RELAY_OPEN) {
		pair_close(s, p, st);
	} else {
		pair_sync(s, p);
	}
}

/* SIGUSR1: a status block in the log. */
static void
log_status(struct server *s)
{
	int64_t now = now_ms();
	unsigned long long in = s->bytes_in, out = s->bytes_out;
	int sessions = 0, relaying = 0, waiting = 0;
	char heap[64];
	struct ctl *c;
	struct user *u;
	struct pair *p;

	for (p = s->pairs; p != NULL; p = p->next) {
		relaying++;
		in += p->relay.dir[0].bytes;
		out += p->relay.dir[1].bytes;
	}
	for (u = s->users; u != NULL; u = u->next) {
		waiting += !u->dead;
	}
	for (c = s->ctls; c != NULL; c = c->next) {
		if (c->dead || c->state != CTL_ATTACHED) {
			continue;
		}
		sessions++;
		log_info("status: session %s serves port %d for %llds: %d users "
		         "waiting, %llu announced, %d of %d pooled tunnels parked",
		         c->peer, c->pub->port,
		         (long long)(now - c->attached_at) / 1000, c->pending,
		         (unsigned long long)c->served, c->nparked, c->pool_want);
	}
	heap_note(heap, sizeof(heap));
	log_info("status: up %llds; sessions: %d; users: %d relaying, %d waiting, "
	         "%llu in all; bytes: %llu in, %llu out%s",
	         (long long)(now - s->started) / 1000, sessions, relaying,
	         waiting, (unsigned long long)s->user_seq, in, out, heap);
}

static int
dispatch(struct server *s, const struct loop_event *ev, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		struct watch *w = ev[i].w;
		short rev = ev[i].revents;

		/* Closed, or watching another descriptor, since it fired. */
		if (ev[i].fd != w->fd) {
			continue;
		}
		switch ((enum kind)w->kind) {
		case K_SIGNAL:
			if (signal_take(s->sig_fd) == SIGUSR1) {
				log_status(s);
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
			user_close(s, w->obj, "reset before its tunnel was ready");
			break;
		case K_PAIR:
			pair_event(s, w->obj, w->side, rev);
			break;
		case K_PARKED:
			parked_close(s, w->obj, "the client closed it or sent bytes");
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
	struct user *u;
	int r, i;

	for (c = s->ctls; c != NULL; c = c->next) {
		struct parked *k;
		for (k = c->parked; k != NULL; k = k->next) {
			close_watched(s, &k->w, &k->fd);
		}
		pub_close(s, c->own);
		close_watched(s, &c->w, &c->fd);
		c->dead = 1;
	}
	for (t = s->tuns; t != NULL; t = t->next) {
		close_watched(s, &t->w, &t->fd);
		t->dead = 1;
	}
	for (u = s->users; u != NULL; u = u->next) {
		close_watched(s, &u->w, &u->fd);
		u->dead = 1;
	}
	while (s->pairs != NULL) {
		pair_end(s, s->pairs);
	}
	sweep(s);
	for (r = 0; r < ROLE_END; r++) {
		for (i = 0; i < s->nlfd[r]; i++) {
			close_watched(s, &s->lw[r][i], &s->lfd[r][i]);
		}
	}
	for (i = 0; i < s->main_pub.nfd; i++) {
		close_watched(s, &s->main_pub.w[i], &s->main_pub.fd[i]);
	}
	close_watched(s, &s->sig_w, &s->sig_fd);
	if (s->spare_fd >= 0) {
		close(s->spare_fd);
	}
	loop_free(s->loop);
}

/* ==== start-up =========================================================== */

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

static void
parse_args(struct server *s, int argc, char **argv)
{
	const char *addr[ROLE_END] = { "8009", "8008", "8007" };
	const char *token = NULL, *heartbeat = "10", *ports = NULL, *why;
	int help = 0, verbose = 0, quiet = 0, r;
	char err[128];
	char *end;
	long hb;
	struct flag flags[] = {
		{ "control", &addr[ROLE_CONTROL], NULL },
		{ "tunnel", &addr[ROLE_TUNNEL], NULL },
		{ "public", &addr[ROLE_PUBLIC], NULL },
		{ "token", &token, NULL },
		{ "heartbeat", &heartbeat, NULL },
		{ "ports", &ports, NULL },
		{ "v", NULL, &verbose },
		{ "q", NULL, &quiet },
		{ "h", NULL, &help },
		{ "help", NULL, &help },
		{ NULL, NULL, NULL },
	};

	if (flags_parse(argc, argv, flags, err, sizeof(err)) != 0) {
		usage_exit(err);
	}
	if (help) {
		fputs(usage_text, stdout);
		exit(0);
	}
	if (verbose && quiet) {
		usage_exit("-v and -q exclude each other");
	}
	log_set_level(verbose ? LOG_VERBOSE : quiet ? LOG_QUIET : LOG_NORMAL);
	for (r = 0; r < ROLE_END; r++) {
		if (addr_parse(addr[r], -1, 1, &s->addr[r], &why) != 0) {
			snprintf(err, sizeof(err), "-%s %s: %s", role_names[r],
			         addr[r], why);
			usage_exit(err);
		}
	}
	hb = strtol(heartbeat, &end, 10);
	if (*heartbeat == '\0' || *end != '\0' || hb < 1 || hb > 3600) {
		snprintf(err, sizeof(err), "-heartbeat %s: want whole seconds "
		         "from 1 to 3600", heartbeat);
		usage_exit(err);
	}
	s->heartbeat_s = (int)hb;
	if (ports != NULL && parse_range(ports, &s->ports_lo, &s->ports_hi) != 0) {
		snprintf(err, sizeof(err), "-ports %s: want LO-HI, two ports from "
		         "1 to 65535 with LO <= HI", ports);
		usage_exit(err);
	}
	if (token == NULL) {
		token = getenv("DIALBACK_TOKEN");
	}
	s->token = token ? token : "";
}

int
main(int argc, char **argv)
{
	struct server s;
	long nofile;
	char err[256];
	int r, i;

	memset(&s, 0, sizeof(s));
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
	for (r = 0; r < ROLE_END; r++) {
		int *fds = r == ROLE_PUBLIC ? s.main_pub.fd : s.lfd[r];
		int n = listen_on(&s.addr[r], role_names[r], fds, MAX_LISTEN, err,
		                  sizeof(err));
		if (n < 0) {
			die(1, "%s", err);
		}
		if (r == ROLE_PUBLIC) {
			s.main_pub.nfd = n;
		} else {
			s.nlfd[r] = n;
		}
		for (i = 0; i < n; i++) {
			watch_init(r == ROLE_PUBLIC ? &s.main_pub.w[i] : &s.lw[r][i],
			           K_LISTEN, r == ROLE_PUBLIC ? &s.main_pub : NULL, r);
		}
		s.port[r] = local_port(fds[0]);
	}
	s.main_pub.port = s.port[ROLE_PUBLIC];
	if (s.ports_lo != 0 && s.main_pub.port >= s.ports_lo &&
	    s.main_pub.port <= s.ports_hi) {
		die(2, "-ports %d-%d includes the -public port %d; pick a range "
		    "beside it", s.ports_lo, s.ports_hi, s.main_pub.port);
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
	         "heartbeat %ds, %s)", s.port[ROLE_CONTROL], s.port[ROLE_TUNNEL],
	         s.port[ROLE_PUBLIC], err, nofile, s.heartbeat_s,
	         loop_backend(s.loop));
	serve(&s);
	log_info("stopping");
	server_free(&s);
	return 0;
}
