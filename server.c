/*
 * dialback server: runs on the public host.  Listens on the control port
 * (clients attach), the public port (users arrive) and the tunnel port
 * (clients dial back, one connection per user, and JOIN it).  One event
 * loop (loop.c); every socket non-blocking; state in struct server.
 *
 * A user is one struct user from accept (or pool ticket) to close, moving
 * through the states of enum user_state; a control connection is a struct
 * ctl, and once attached a session; a tunnel connection is a struct tun
 * until its JOIN hands it to the user it names.
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
#define RECENT_POOLED   16     /* ended pooled users remembered, see pooled_failed */

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

/* A user's life.  Without a pool: accepted on the public port, it waits
 * for the JOIN that names it, then relays.  With one: a ticket (an id
 * issued, nothing dialed) becomes a pooled tunnel when the client JOINs
 * with it, and relays once a user takes it.  Every ending leads to
 * U_DEAD, where sweep() frees it. */
enum user_state { U_TICKET, U_POOLED, U_WAITING, U_RELAYING, U_DEAD,
                  U_STATE_END };

/* The states a JOIN can name, each on a bounded list with a deadline. */
static const enum user_state joinable[] = { U_TICKET, U_WAITING };
#define NJOINABLE (sizeof(joinable) / sizeof(joinable[0]))

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
	struct pub *pub;               /* the port it serves, once attached */
	struct pub *own;               /* a -ports listener it opened */
	int pool_want;                 /* tunnels the client keeps ready */
	int count[U_STATE_END];        /* its users in each state */
	struct user *pooled;           /* its U_POOLED users */
	int64_t attached_at;
	uint64_t served;               /* users announced */
};

/* A tunnel connection that has not sent its JOIN yet.  The JOIN hands
 * its descriptor (and any bytes behind the JOIN) to the user it names. */
struct tun {
	struct tun *next;
	int fd, dead;
	struct watch w;
	char peer[ADDR_STRLEN];
	struct fbuf in;
	int64_t deadline;
};

/*
 * One user, from accept (or, with a pool, from its ticket) to close.  The
 * user's socket is relay.fd[0] and the tunnel relay.fd[1], each -1 until it
 * exists; w[i] watches relay.fd[i].  Every change of state goes through
 * user_set, which keeps the lists and counts; every ending through
 * user_close.
 */
struct user {
	struct user *next, *prev;      /* on the list of its state */
	enum user_state state;
	struct ctl *sess;              /* until relaying; NULL after */
	int pooled;                    /* began on a pooled tunnel, */
	uint8_t sess_run[RUN_ID_LEN];  /* ... of the session with this run id */
	uint8_t id[USER_ID_LEN];
	uint64_t seq;                  /* for logs; 0 for a tunnel alone */
	char peer[ADDR_STRLEN];
	int64_t start, deadline;
	struct watch w[2];
	struct relay relay;            /* live once relaying */
};

/* What a watch belongs to (struct watch's kind). */
enum kind { K_SIGNAL, K_LISTEN, K_CTL, K_TUN, K_USER };

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
	/* Users by state (U_POOLED ones hang off their session).  Only the
	 * ticket and waiting lists, which are bounded, are ever walked per
	 * turn; relaying users are not, so idle ones cost nothing. */
	struct user *users[U_STATE_END];
	int count[U_STATE_END];
	struct {
		uint8_t id[USER_ID_LEN];
		uint64_t seq;
		char peer[ADDR_STRLEN];
	} recent[RECENT_POOLED];       /* a ring of ended pooled users */
	unsigned recent_next;
	uint64_t user_seq;
	int64_t started;
	uint64_t bytes_in, bytes_out;  /* of users already closed */
};

static void
usage_exit(const char *why)
{
	fprintf(stderr, "server: %s (see ./server -h)\n", why);
	exit(2);
}

/* ==== users: lists, counts, the one teardown ============================== */

/* Stop watching fd and close it.  Every descriptor the loop watches is
 * closed through here (or relay_close after the watches are forgotten). */
static void
close_watched(struct server *s, struct watch *w, int *fd)
{
	loop_unwatch(s->loop, w);
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static struct user **
user_list(struct server *s, const struct user *u)
{
	return u->state == U_POOLED ? &u->sess->pooled : &s->users[u->state];
}

static void
user_link(struct server *s, struct user *u)
{
	struct user **head = user_list(s, u);

	u->prev = NULL;
	u->next = *head;
	if (*head != NULL) {
		(*head)->prev = u;
	}
	*head = u;
	s->count[u->state]++;
	if (u->sess != NULL) {
		u->sess->count[u->state]++;
	}
}

static void
user_unlink(struct server *s, struct user *u)
{
	if (u->prev != NULL) {
		u->prev->next = u->next;
	} else {
		*user_list(s, u) = u->next;
	}
	if (u->next != NULL) {
		u->next->prev = u->prev;
	}
	s->count[u->state]--;
	if (u->sess != NULL) {
		u->sess->count[u->state]--;
	}
}

/* user_set: the one way a user changes state.  From relaying on, a user
 * no longer belongs to its session (which may end first). */
static void
user_set(struct server *s, struct user *u, enum user_state to)
{
	user_unlink(s, u);
	u->state = to;
	if (to >= U_RELAYING) {
		u->sess = NULL;
	}
	user_link(s, u);
}

/* user_new: a user in state st for session c, id and deadline set. */
static struct user *
user_new(struct server *s, struct ctl *c, enum user_state st,
         const uint8_t id[USER_ID_LEN], int64_t now)
{
	struct user *u = calloc(1, sizeof(*u));

	if (u == NULL) {
		return NULL;
	}
	u->relay.fd[0] = u->relay.fd[1] = -1;
	watch_init(&u->w[0], K_USER, u, 0);
	watch_init(&u->w[1], K_USER, u, 1);
	u->state = st;
	u->sess = c;
	memcpy(u->id, id, USER_ID_LEN);
	u->start = now;
	u->deadline = now + JOIN_WAIT_MS;
	user_link(s, u);
	return u;
}

/*
 * user_close: the end of every user, whatever its state.  why goes into
 * the log line ("user #N ADDR closed: why"); NULL closes quietly.  The
 * descriptors are closed, the bytes counted, and the user waits on the
 * dead list for sweep(), since this turn's events may still name it.
 */
static void
user_close(struct server *s, struct user *u, const char *why)
{
	int i;

	if (u->state == U_DEAD) {
		return;
	}
	if (why != NULL && u->state == U_POOLED) {
		log_debug("pooled tunnel of %s closed: %s", u->sess->peer, why);
	} else if (why != NULL && u->state != U_TICKET) {
		log_info("user #%llu %s closed: %s", (unsigned long long)u->seq,
		         u->peer, why);
	}
	if (u->state == U_RELAYING) {
		s->bytes_in += u->relay.dir[0].bytes;
		s->bytes_out += u->relay.dir[1].bytes;
		if (u->pooled) {
			unsigned k = s->recent_next++ % RECENT_POOLED;
			memcpy(s->recent[k].id, u->id, USER_ID_LEN);
			s->recent[k].seq = u->seq;
			memcpy(s->recent[k].peer, u->peer, ADDR_STRLEN);
		}
		loop_forget(s->loop, &u->w[0]);
		loop_forget(s->loop, &u->w[1]);
		relay_close(&u->relay);
	} else {
		for (i = 0; i < 2; i++) {
			close_watched(s, &u->w[i], &u->relay.fd[i]);
		}
	}
	user_set(s, u, U_DEAD);
}

/* user_finish: close a relaying user, saying how its relay ended. */
static void
user_finish(struct server *s, struct user *u, enum relay_state st)
{
	double secs = (double)(now_ms() - u->start) / 1000.0;
	unsigned long long in = u->relay.dir[0].bytes;
	unsigned long long out = u->relay.dir[1].bytes;
	char why[192];

	if (st == RELAY_DONE) {
		snprintf(why, sizeof(why), "%llu bytes in, %llu out, %.1fs", in,
		         out, secs);
	} else {
		snprintf(why, sizeof(why), "%s %s: %s; %llu bytes in, %llu out, "
		         "%.1fs", u->relay.err_side == 0 ? "user" : "tunnel",
		         u->relay.err_op, strerror(u->relay.err_no), in, out, secs);
	}
	user_close(s, u, why);
}

/* Watch a relaying user's two sockets for what its buffers allow; a side
 * with no interest is left out entirely, so its hang-up can't wake us in a
 * loop. */
static void
user_sync(struct server *s, struct user *u)
{
	short ev[2];
	int i;

	relay_events(&u->relay, ev);
	for (i = 0; i < 2; i++) {
		if (ev[i] == 0) {
			loop_unwatch(s->loop, &u->w[i]);
		} else if (loop_watch(s->loop, &u->w[i], u->relay.fd[i], ev[i]) != 0) {
			u->relay.err_side = i;
			u->relay.err_op = "watch";
			u->relay.err_no = errno;
			user_finish(s, u, RELAY_FAIL);
			return;
		}
	}
}

/* user_start_relay: user u has both sockets; from now on bytes flow.  Bytes
 * already queued go out as far as they will (when kick says which sides
 * to try); interest follows. */
static void
user_start_relay(struct server *s, struct user *u, const short kick[2])
{
	user_set(s, u, U_RELAYING);
	if (kick != NULL && relay_step(&u->relay, kick) == RELAY_FAIL) {
		user_finish(s, u, RELAY_FAIL);
		return;
	}
	user_sync(s, u);
}

/* A user on a pooled tunnel whose client could not reach the service.
 * Only the session that took the user can say so (matched by run id, which
 * also covers a session that replaced its own).  The client closes the
 * tunnel too, and its reset may arrive first: then the user is among the
 * recently ended, and the reason still gets said. */
static void
pooled_failed(struct server *s, const struct ctl *c,
              const uint8_t id[USER_ID_LEN], const char *why)
{
	struct user *u;
	unsigned i;

	for (u = s->users[U_RELAYING]; u != NULL; u = u->next) {
		if (u->pooled && memcmp(u->id, id, USER_ID_LEN) == 0 &&
		    memcmp(u->sess_run, c->run_id, RUN_ID_LEN) == 0) {
			user_close(s, u, why);
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

/* ==== sessions, tunnels and ports: teardown ============================== */

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

/* Close the session's users that have not begun relaying. */
static void
ctl_close_users(struct server *s, struct ctl *c)
{
	struct user *u, *next;
	int st;

	for (st = U_TICKET; st <= U_WAITING; st++) {
		struct user *head = st == U_POOLED ? c->pooled : s->users[st];

		for (u = head; u != NULL; u = next) {
			next = u->next;
			if (u->sess == c) {
				user_close(s, u, st == U_POOLED ? "its session ended"
				               : "its client went away before the join");
			}
		}
	}
}

static void
ctl_close(struct server *s, struct ctl *c, const char *why)
{
	if (c->dead) {
		return;
	}
	if (c->state == CTL_ATTACHED) {
		log_info("client %s detached: %s", c->peer, why);
	} else if (why != NULL) {
		log_info("control %s dropped: %s", c->peer, why);
	}
	ctl_close_users(s, c);
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

static void
sweep(struct server *s)
{
	SWEEP(s->ctls, struct ctl, ctl_free);
	SWEEP(s->tuns, struct tun, tun_free);
	while (s->users[U_DEAD] != NULL) {
		struct user *u = s->users[U_DEAD];
		user_unlink(s, u);
		free(u);
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

/* The ticket or waiting user a JOIN names, or NULL. */
static struct user *
user_find(struct server *s, const uint8_t id[USER_ID_LEN])
{
	struct user *u;
	size_t i;

	for (i = 0; i < NJOINABLE; i++) {
		for (u = s->users[joinable[i]]; u != NULL; u = u->next) {
			if (memcmp(u->id, id, USER_ID_LEN) == 0) {
				return u;
			}
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
		if (u != NULL && u->sess == c && u->state == U_WAITING) {
			user_close(s, u, why);
		} else {
			pooled_failed(s, c, m->user_id, why);
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

/* Hand a new user straight to one of c's pooled tunnels: NEW_USER goes
 * down that tunnel ahead of the user's bytes.  0, or -1 if none is
 * pooled (fd is still the caller's then). */
static int
pool_take(struct server *s, struct ctl *c, int fd, const struct msg *m,
          const char *peer)
{
	static const short now[2] = { 0, POLLOUT };
	struct user *u = c->pooled;
	uint8_t frame[FRAME_HDR + FRAME_MAX];

	int tfd;

	if (u == NULL) {
		return -1;
	}
	tfd = u->relay.fd[1];
	relay_init(&u->relay, fd, tfd);
	if (relay_prefill(&u->relay, 0, frame, frame_encode(frame, m)) != 0) {
		relay_abandon(&u->relay);
		u->relay.fd[1] = tfd;
		return -1;
	}
	u->pooled = 1;
	memcpy(u->sess_run, c->run_id, RUN_ID_LEN);
	memcpy(u->id, m->user_id, USER_ID_LEN);
	u->seq = ++s->user_seq;
	u->start = now_ms();
	memcpy(u->peer, peer, sizeof(u->peer));
	log_info("user #%llu %s accepted on port %d, joined to a pooled tunnel",
	         (unsigned long long)u->seq, peer, c->pub->port);
	/* Send the NEW_USER now rather than a poll turn later. */
	user_start_relay(s, u, now);
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
	if (c == NULL || c->count[U_WAITING] >= MAX_PENDING) {
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
	if (pool_take(s, c, fd, &m, peer) == 0) {
		return;
	}
	if ((u = user_new(s, c, U_WAITING, m.user_id, now)) == NULL) {
		log_warn("user %s closed: out of memory", peer);
		close(fd);
		return;
	}
	u->relay.fd[0] = fd;
	u->seq = ++s->user_seq;
	memcpy(u->peer, peer, sizeof(peer));
	log_info("user #%llu %s accepted on port %d", (unsigned long long)u->seq,
	         peer, pub->port);
	/* Watched for nothing: a reset still shows as a hang-up, while the
	 * user's bytes wait in the kernel for the tunnel. */
	if (loop_watch(s->loop, &u->w[0], fd, 0) != 0) {
		user_close(s, u, strerror(errno));
		return;
	}
	if (fbuf_put(&c->out, &m) != 0) {
		user_close(s, u, "client is not reading its control messages");
	}
}

/* Keep the client's pool full: a TICKET for each tunnel it asked for that
 * is neither issued nor pooled.  Runs every turn; a full control queue
 * just defers it. */
static void
pool_refill(struct server *s, struct ctl *c)
{
	int64_t now = now_ms();
	struct msg m;

	while (c->count[U_TICKET] + c->count[U_POOLED] < c->pool_want &&
	       c->out.cap - c->out.len >= FRAME_HDR + USER_ID_LEN) {
		memset(&m, 0, sizeof(m));
		m.type = MSG_TICKET;
		random_bytes(m.user_id, USER_ID_LEN);
		if (user_new(s, c, U_TICKET, m.user_id, now) == NULL) {
			return;
		}
		fbuf_put(&c->out, &m);
	}
}

/* tun_give: the JOIN named u; u takes the tunnel's descriptor and watch,
 * and the tunnel's record ends. */
static void
tun_give(struct server *s, struct tun *t, struct user *u, short events)
{
	u->relay.fd[1] = t->fd;
	loop_move(s->loop, &t->w, &u->w[1], events);
	t->fd = -1;
	tun_close(s, t, NULL);
}

/* A tunnel joined with a pool ticket waits, pooled, for a user. */
static void
tun_pool(struct server *s, struct tun *t, struct user *u)
{
	struct ctl *c = u->sess;

	if (t->in.len > 0) {
		tun_close(s, t, "bytes behind a pool JOIN");
		return;
	}
	/* A pooled tunnel says nothing until it is used: anything it sends,
	 * even EOF, ends it. */
	tun_give(s, t, u, POLLIN);
	user_set(s, u, U_POOLED);
	if (u->w[1].fd < 0 &&
	    loop_watch(s->loop, &u->w[1], u->relay.fd[1], POLLIN) != 0) {
		user_close(s, u, strerror(errno));
		return;
	}
	log_debug("tunnel %s parked for %s (%d of %d)", t->peer, c->peer,
	          c->count[U_POOLED], c->pool_want);
}

static void
tun_join(struct server *s, struct tun *t, const struct msg *m)
{
	struct user *u = user_find(s, m->user_id);
	uint8_t want[PROOF_LEN];
	short ev[2];
	int ufd;

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
	if (u->state == U_TICKET) {
		tun_pool(s, t, u);
		return;
	}
	ufd = u->relay.fd[0];
	relay_init(&u->relay, ufd, t->fd);
	/* Bytes the client sent right behind its JOIN are the service's. */
	if (relay_prefill(&u->relay, 1, t->in.data, t->in.len) != 0) {
		relay_abandon(&u->relay);
		u->relay.fd[0] = ufd;
		tun_close(s, t, "out of memory");
		user_close(s, u, "out of memory");
		return;
	}
	u->relay.dir[1].bytes += t->in.len;
	log_info("user #%llu %s joined after %lldms", (unsigned long long)u->seq,
	         u->peer, (long long)(now_ms() - u->start));
	/* The tunnel's watch is handed over; the sync in user_start_relay
	 * sets the user's side and makes up for a failed hand-over. */
	relay_events(&u->relay, ev);
	tun_give(s, t, u, ev[1]);
	user_start_relay(s, u, NULL);
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
	int64_t due = -1, dead_ms = (int64_t)s->heartbeat_s * 1000 *
	                             DEAD_AFTER_BEATS;
	struct ctl *c;
	struct tun *t;
	struct user *u, *next;
	char why[128];
	size_t i;

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
		due = earliest(due, c->next_ping);
		due = earliest(due, c->last_rx + dead_ms);
	}
	for (t = s->tuns; t != NULL; t = t->next) {
		if (!t->dead && now >= t->deadline) {
			tun_close(s, t, timeout_why(s, now, "no JOIN in time", why,
			                            sizeof(why)));
		} else if (!t->dead) {
			due = earliest(due, t->deadline);
		}
	}
	for (i = 0; i < NJOINABLE; i++) {
		for (u = s->users[joinable[i]]; u != NULL; u = next) {
			next = u->next;
			if (now >= u->deadline) {
				user_close(s, u, "the client did not dial back in time");
			} else {
				due = earliest(due, u->deadline);
			}
		}
	}
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
 * bytes.  They are few and bounded; relaying users keep their own interest
 * as they step, so idle connections are never visited. */
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

/* An event on one of a user's sockets.  Before it relays, a user's
 * socket is watched only for hang-ups (waiting) or for anything at all
 * (pooled), and either ends it. */
static void
user_event(struct server *s, struct user *u, int side, short rev)
{
	short both[2] = { 0, 0 };
	enum relay_state st;

	switch (u->state) {
	case U_WAITING:
		user_close(s, u, "reset before its tunnel was ready");
		break;
	case U_POOLED:
		user_close(s, u, "the client closed it or sent bytes");
		break;
	case U_RELAYING:
		both[side] = rev;
		st = relay_step(&u->relay, both);
		if (st != RELAY_OPEN) {
			user_finish(s, u, st);
		} else {
			user_sync(s, u);
		}
		break;
	default:
		break;
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

	for (u = s->users[U_RELAYING]; u != NULL; u = u->next) {
		in += u->relay.dir[0].bytes;
		out += u->relay.dir[1].bytes;
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
	         s->count[U_RELAYING], s->count[U_WAITING],
	         (unsigned long long)s->user_seq, in, out, heap);
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
			user_event(s, w->obj, w->side, rev);
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
