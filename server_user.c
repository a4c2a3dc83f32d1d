/*
 * The server's users and tunnels.  A user is accepted on a public port
 * and announced to its session's client (NEW_USER), or takes a tunnel the
 * client dialed ahead (a pool); a tunnel connection's JOIN names a user
 * and hands it the tunnel; then the user relays until both directions
 * end.  user_set is the one change of state, user_close the one ending.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crypto.h"
#include "server.h"

/* The states a JOIN can name, each on a bounded list with a deadline. */
static const enum user_state joinable[] = { U_TICKET, U_WAITING };
#define NJOINABLE (sizeof(joinable) / sizeof(joinable[0]))

static struct user **
user_list(struct server *s, const struct user *u)
{
	return u->state == U_POOLED ? &u->sess->pooled : &s->users[u->state];
}

static void
user_link(struct server *s, struct user *u)
{
	struct user **head = user_list(s, u);

	DLIST_ADD(*head, u);
	s->count[u->state]++;
	if (u->sess != NULL) {
		u->sess->count[u->state]++;
	}
}

static void
user_unlink(struct server *s, struct user *u)
{
	struct user **head = user_list(s, u);

	DLIST_DEL(*head, u);
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

/* ---- who may use a public port: -allow, -deny, -per-ip ----------------- */

/* Any -deny match refuses; then, if there is any -allow, one must match. */
static int
ip_admitted(const struct server *s, const uint8_t ip[16])
{
	int i;

	for (i = 0; i < s->ndeny; i++) {
		if (cidr_match(&s->deny[i], ip)) {
			return 0;
		}
	}
	for (i = 0; i < s->nallow; i++) {
		if (cidr_match(&s->allow[i], ip)) {
			return 1;
		}
	}
	return s->nallow == 0;
}

void
ip_table_init(struct server *s, long nofile)
{
	unsigned n = 256;

	if (s->per_ip == 0) {
		return;
	}
	/* About a bucket per two descriptors, up to 16384 (128 KiB): chains
	 * stay short, and the seed keeps a peer choosing its addresses from
	 * piling them into one. */
	while (n < 16384 && (long)n * 2 < nofile) {
		n *= 2;
	}
	if ((s->ip_tab = calloc(n, sizeof(*s->ip_tab))) == NULL) {
		die(1, "out of memory for the -per-ip table");
	}
	s->ip_mask = n - 1;
	random_bytes(&s->ip_seed, sizeof(s->ip_seed));
}

void
ip_table_free(struct server *s)
{
	free(s->ip_tab);
	s->ip_tab = NULL;
}

static struct ip_count **
ip_bucket(struct server *s, const uint8_t ip[16], int port)
{
	uint64_t h = s->ip_seed ^ (uint64_t)port;
	int i;

	for (i = 0; i < 16; i++) {
		h = (h ^ ip[i]) * 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return &s->ip_tab[h & s->ip_mask];
}

/* ip_take: count one more user from ip on port.  Its entry, NULL with
 * *full set if -per-ip users are there already, or NULL alone when out of
 * memory. */
static struct ip_count *
ip_take(struct server *s, const uint8_t ip[16], int port, int *full)
{
	struct ip_count **head = ip_bucket(s, ip, port), *e;

	*full = 0;
	for (e = *head; e != NULL; e = e->next) {
		if (e->port == port && memcmp(e->ip, ip, 16) == 0) {
			break;
		}
	}
	if (e == NULL) {
		if ((e = calloc(1, sizeof(*e))) == NULL) {
			return NULL;
		}
		memcpy(e->ip, ip, 16);
		e->port = port;
		e->next = *head;
		*head = e;
	}
	if (e->n >= s->per_ip) {
		*full = 1;
		return NULL;
	}
	e->n++;
	return e;
}

/* ip_put: one user fewer; the entry goes with its last user. */
static void
ip_put(struct server *s, struct ip_count *e)
{
	struct ip_count **pp;

	if (e == NULL || --e->n > 0) {
		return;
	}
	for (pp = ip_bucket(s, e->ip, e->port); *pp != NULL; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			free(e);
			return;
		}
	}
}

/*
 * user_close: the end of every user, whatever its state.  why goes into
 * the log line ("user #N ADDR closed: why"); NULL closes quietly.  The
 * descriptors are closed, the bytes counted, and the user waits on the
 * dead list for sweep(), since this turn's events may still name it.
 */
void
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
	ip_put(s, u->ipc);
	u->ipc = NULL;
	if (u->state == U_RELAYING || u->state == U_HANDED) {
		struct port_stat *ps = port_stat(s, u->port);

		s->bytes_in += u->relay.dir[0].bytes;
		s->bytes_out += u->relay.dir[1].bytes;
		if (ps != NULL) {
			ps->in += u->relay.dir[0].bytes;
			ps->out += u->relay.dir[1].bytes;
		}
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
	static const char *const side[2] = { "user", "tunnel" };
	char why[192], err[128];

	if (st == RELAY_DONE) {
		snprintf(why, sizeof(why), "%llu bytes in, %llu out, %.1fs", in,
		         out, secs);
	} else {
		snprintf(why, sizeof(why), "%s; %llu bytes in, %llu out, %.1fs",
		         relay_why(&u->relay, side, err, sizeof(err)), in, out,
		         secs);
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
			user_finish(s, u, relay_fail(&u->relay, i, "watch"));
			return;
		}
	}
}

/* user_start_relay: user u has both sockets; from now on bytes flow, in
 * state to (relaying, or handed out from the pool).  Bytes already queued
 * go out as far as they will (when kick says which sides to try);
 * interest follows. */
static void
user_start_relay(struct server *s, struct user *u, enum user_state to,
                 const short kick[2])
{
	user_set(s, u, to);
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
void
pooled_failed(struct server *s, const struct ctl *c,
              const uint8_t id[USER_ID_LEN], const char *why)
{
	struct user *u;
	unsigned i;

	for (u = s->users[U_HANDED]; u != NULL; u = u->next) {
		if (memcmp(u->id, id, USER_ID_LEN) == 0 && u->sess == c) {
			user_close(s, u, why);
			return;
		}
	}
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

/* Close the session's users that have not begun relaying; those handed
 * a pooled tunnel relay on without it. */
void
ctl_close_users(struct server *s, struct ctl *c)
{
	struct user *u, *next;
	int st;

	pool_handed(s, c, NULL);
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

/* The ticket or waiting user a JOIN names, or NULL. */
struct user *
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

/* Hand a new user straight to one of c's pooled tunnels: NEW_USER goes
 * down that tunnel ahead of the user's bytes, and the user keeps its
 * -per-ip count ipc.  0, or -1 if none is pooled (fd and ipc are still
 * the caller's then). */
static int
pool_take(struct server *s, struct ctl *c, int fd, const struct msg *m,
          const char *peer, struct ip_count *ipc)
{
	static const short now[2] = { 0, POLLOUT };
	struct user *u = c->pooled;
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n;
	int tfd;
	int64_t now_t = now_ms();

	/* A client not heard from lately may be frozen: the user waits for a
	 * JOIN instead, which has a deadline, rather than on a tunnel that
	 * has none. */
	if (u == NULL || now_t - c->last_rx > s->heartbeat_s * 1500LL) {
		return -1;
	}
	tfd = u->relay.fd[1];
	relay_init(&u->relay, &s->relays, fd, tfd);
	if (u->sealed) {
		relay_seal(&u->relay, 1, &u->tun_tx, &u->tun_rx);
	}
	n = frame_encode(frame, m);
	if ((u->sealed ? relay_put_record(&u->relay, 0, frame, n)
	               : relay_prefill(&u->relay, 0, frame, n)) != 0) {
		relay_abandon(&u->relay);
		u->relay.fd[1] = tfd;
		return -1;
	}
	u->pooled = 1;
	u->ipc = ipc;
	memcpy(u->sess_run, c->run_id, RUN_ID_LEN);
	memcpy(u->id, m->user_id, USER_ID_LEN);
	u->seq = ++s->user_seq;
	u->port = c->pub->port;
	u->start = now_t;
	u->deadline = now_t + JOIN_WAIT_MS;
	/* The client's next control frame, or the JOIN of the tunnel that
	 * refills the pool, confirms it is alive; with no refill to come, ask
	 * for a frame. */
	if (c->count[U_HANDED] == 0 &&
	    c->count[U_TICKET] + c->count[U_POOLED] - 1 >= c->pool_want) {
		struct msg ping = { .type = MSG_PING };
		ctl_send(s, c, &ping);
	}
	memcpy(u->peer, peer, sizeof(u->peer));
	log_info("user #%llu %s accepted on port %d, joined to a pooled tunnel",
	         (unsigned long long)u->seq, peer, c->pub->port);
	/* Send the NEW_USER now rather than a poll turn later. */
	user_start_relay(s, u, U_HANDED, now);
	return 0;
}

void
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
	uint8_t ip[16];
	struct ip_count *ipc = NULL;
	int full;

	addr_str(sa, peer, sizeof(peer));
	/* Before anything else: a refused user costs no NEW_USER, and
	 * learns nothing but the close. */
	if ((s->nallow > 0 || s->ndeny > 0) &&
	    (addr_ip16(sa, ip) != 0 || !ip_admitted(s, ip))) {
		s->refused[REF_DENIED]++;
		if (log_limited(&s->log_denied, now, &held)) {
			log_info("user %s refused: not allowed by -allow/-deny (%lu "
			         "more since the last such line)", peer, held);
		}
		close(fd);
		return;
	}
	if (c == NULL || c->count[U_WAITING] >= MAX_PENDING) {
		s->refused[c == NULL ? REF_NO_CLIENT : REF_USERS_WAITING]++;
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
	if (s->per_ip > 0 && addr_ip16(sa, ip) == 0 &&
	    (ipc = ip_take(s, ip, pub->port, &full)) == NULL) {
		if (full) {
			s->refused[REF_PER_IP]++;
			if (log_limited(&s->log_per_ip, now, &held)) {
				log_info("user %s refused: -per-ip %d reached for port %d "
				         "(%lu more since the last such line)", peer,
				         s->per_ip, pub->port, held);
			}
		} else {
			log_warn("user %s closed: out of memory", peer);
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
	pool_resize(s, c, now, 1);
	if (pool_take(s, c, fd, &m, peer, ipc) == 0) {
		return;
	}
	if ((u = user_new(s, c, U_WAITING, m.user_id, now)) == NULL) {
		log_warn("user %s closed: out of memory", peer);
		ip_put(s, ipc);
		close(fd);
		return;
	}
	u->ipc = ipc;
	u->relay.fd[0] = fd;
	u->seq = ++s->user_seq;
	u->port = pub->port;
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
void
pool_refill(struct server *s, struct ctl *c)
{
	int64_t now = now_ms();
	struct msg m;

	while (c->count[U_TICKET] + c->count[U_POOLED] < c->pool_want &&
	       c->out.cap - c->out.len >= SEALED(FRAME_HDR + USER_ID_LEN)) {
		memset(&m, 0, sizeof(m));
		m.type = MSG_TICKET;
		random_bytes(m.user_id, USER_ID_LEN);
		if (user_new(s, c, U_TICKET, m.user_id, now) == NULL) {
			return;
		}
		fbuf_put(&c->out, &m);
	}
}

/* An event on one of a user's sockets.  Before it relays, a user's
 * socket is watched only for hang-ups (waiting) or for anything at all
 * (pooled), and either ends it. */
void
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
	case U_HANDED:
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

void
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

void
tun_fail(struct server *s, struct tun *t, const char *why)
{
	if (!t->dead) {
		s->handshake_failures++;
	}
	tun_close(s, t, why);
}

static void
tun_free(struct tun *t)
{
	fbuf_free(&t->in);
	free(t);
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
		tun_fail(s, t, "bytes behind a pool JOIN");
		return;
	}
	/* A pooled tunnel says nothing until it is used: anything it sends,
	 * even EOF, ends it. */
	tun_give(s, t, u, POLLIN);
	user_set(s, u, U_POOLED);
	pool_handed(s, c, NULL);    /* a client that JOINs is alive */
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
	struct seal tx, rx;
	short ev[2];
	int ufd;

	if (u == NULL) {
		tun_fail(s, t, "JOIN names no waiting user");
		return;
	}
	tunnel_keys(u->sess->keys.tunnel, u->id, 0, &tx, &rx);
	if (join_check(&rx, u->id, m->proof) != 0) {
		/* The user stays: whoever forged this may have seen its id. */
		tun_fail(s, t, "JOIN with a wrong proof");
		return;
	}
	u->sealed = !u->sess->plaintext;
	u->tun_tx = tx;
	u->tun_rx = rx;
	crypto_wipe(&tx, sizeof(tx));
	crypto_wipe(&rx, sizeof(rx));
	if (u->state == U_TICKET) {
		tun_pool(s, t, u);
		return;
	}
	ufd = u->relay.fd[0];
	relay_init(&u->relay, &s->relays, ufd, t->fd);
	if (u->sealed) {
		relay_seal(&u->relay, 1, &u->tun_tx, &u->tun_rx);
	}
	/* Bytes the client sent right behind its JOIN are the service's. */
	if (relay_feed(&u->relay, 1, t->in.data, t->in.len) != 0) {
		relay_abandon(&u->relay);
		u->relay.fd[0] = ufd;
		tun_close(s, t, "out of memory");
		user_close(s, u, "out of memory");
		return;
	}
	log_info("user #%llu %s joined after %lldms", (unsigned long long)u->seq,
	         u->peer, (long long)(now_ms() - u->start));
	/* The tunnel's watch is handed over; the sync in user_start_relay
	 * sets the user's side and makes up for a failed hand-over. */
	relay_events(&u->relay, ev);
	tun_give(s, t, u, ev[1]);
	user_start_relay(s, u, U_RELAYING, NULL);
}

void
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
		         "-remote at the control port (%d)", s->lis[ROLE_CONTROL].port);
		send_now(t->fd, &m);
		tun_fail(s, t, "a HELLO on the tunnel port");
	} else if (fr == FRAME_OK || fr == FRAME_BAD) {
		snprintf(why, sizeof(why), "expected JOIN, got %s",
		         fr == FRAME_OK ? msg_name(m.type) : "garbage");
		tun_fail(s, t, why);
	} else if (rc == 0) {
		tun_fail(s, t, "closed before its JOIN");
	} else if (rc < 0) {
		tun_fail(s, t, strerror(errno));
	}
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
		s->refused[REF_TUNNELS_FULL]++;
		if (log_limited(&s->log_tunnels, now_ms(), &held)) {
			log_warn("%d tunnel connections wait for a JOIN: dropping the "
			         "oldest (%lu more since the last such line)",
			         MAX_TUNNELS, held);
		}
		tun_close(s, oldest, NULL);
	}
}

void
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

/* user_timers: close tickets and waiting users whose JOIN is late, and
 * users handed a pooled tunnel whose client has not been heard from since;
 * the next deadline among the rest, or -1. */
int64_t
user_timers(struct server *s, int64_t now)
{
	static const enum user_state timed[] = { U_TICKET, U_WAITING, U_HANDED };
	struct user *u, *next;
	int64_t due = -1;
	size_t i;

	for (i = 0; i < sizeof(timed) / sizeof(timed[0]); i++) {
		for (u = s->users[timed[i]]; u != NULL; u = next) {
			next = u->next;
			if (now >= u->deadline) {
				user_close(s, u, timed[i] == U_HANDED
				    ? "its client went silent with its pooled tunnel"
				    : "the client did not dial back in time");
			} else if (due < 0 || u->deadline < due) {
				due = u->deadline;
			}
		}
	}
	return due;
}

/* pool_handed: c's client was heard from (alive), or is leaving: the users
 * it was handed relay on as any others.  Otherwise it went silent, and
 * they are closed with why. */
void
pool_handed(struct server *s, struct ctl *c, const char *why)
{
	struct user *u, *next;

	if (c->count[U_HANDED] == 0) {
		return;
	}
	for (u = s->users[U_HANDED]; u != NULL; u = next) {
		next = u->next;
		if (u->sess != c) {
			continue;
		}
		if (why != NULL) {
			user_close(s, u, why);
		} else {
			user_set(s, u, U_RELAYING);
		}
	}
}

/* Age c's ring of arrivals to now: the seconds passed since its newest
 * count start at 0. */
static void
pool_age(struct ctl *c, int64_t now, int window)
{
	int64_t sec = now / 1000, k;

	for (k = c->arrivals_s + 1; k <= sec && k <= c->arrivals_s + window; k++) {
		c->arrivals[k % window] = 0;
	}
	if (sec > c->arrivals_s) {
		c->arrivals_s = sec;
	}
}

/* The most users that arrived on c's port in two seconds running within
 * the window: a burst that straddles a second's edge counts whole. */
static int
pool_peak(const struct ctl *c, int window)
{
	int i, peak = 0;

	for (i = 0; i < window; i++) {
		int two = c->arrivals[i] + (window > 1
		          ? c->arrivals[(i + window - 1) % window] : 0);
		peak = two > peak ? two : peak;
	}
	return peak;
}

/* pool_resize: with FLAG_POOL_AUTO, size c's pool to the peak of recent
 * arrivals (one more user now, if arrived); parked tunnels beyond it are
 * closed.  Runs on arrivals and on each heartbeat. */
void
pool_resize(struct server *s, struct ctl *c, int64_t now, int arrived)
{
	int want, peak;
	int window = s->pool_window_s > 0 ? s->pool_window_s : POOL_WINDOW_S;

	if (!c->pool_auto) {
		return;
	}
	pool_age(c, now, window);
	if (arrived) {
		uint16_t *n = &c->arrivals[c->arrivals_s % window];
		*n = *n < UINT16_MAX ? *n + 1 : *n;
	}
	peak = pool_peak(c, window);
	want = peak < POOL_FLOOR ? POOL_FLOOR : peak;
	want = want > c->pool_cap ? c->pool_cap : want;
	if (want != c->pool_want) {
		log_debug("session %s: pool of %d (peak %d users in two seconds)",
		          c->peer, want, peak);
		c->pool_want = want;
	}
	while (c->count[U_POOLED] > 0 &&
	       c->count[U_POOLED] + c->count[U_TICKET] > c->pool_want) {
		user_close(s, c->pooled, NULL);
	}
}

struct port_stat *
port_stat(struct server *s, int port)
{
	size_t lo = 0, hi = s->nports;
	struct port_stat *p;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (s->ports[mid].port == port) {
			return &s->ports[mid];
		}
		if (s->ports[mid].port < port) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	if (s->nports == s->capports) {
		size_t cap = s->capports ? s->capports * 2 : 8;

		if ((p = realloc(s->ports, cap * sizeof(*p))) == NULL) {
			return NULL;
		}
		s->ports = p;
		s->capports = cap;
	}
	memmove(&s->ports[lo + 1], &s->ports[lo],
	        (s->nports - lo) * sizeof(*s->ports));
	s->nports++;
	memset(&s->ports[lo], 0, sizeof(s->ports[lo]));
	s->ports[lo].port = port;
	return &s->ports[lo];
}

/* user_sweep: free the users and tunnels that teardown marked dead. */
void
user_sweep(struct server *s)
{
	SWEEP(s->tuns, struct tun, tun_free);
	while (s->users[U_DEAD] != NULL) {
		struct user *u = s->users[U_DEAD];
		user_unlink(s, u);
		crypto_wipe(u, sizeof(*u));
		free(u);
	}
}
