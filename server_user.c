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
	if (u->state == U_RELAYING) {
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
void
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

/* Close the session's users that have not begun relaying. */
void
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
 * down that tunnel ahead of the user's bytes.  0, or -1 if none is
 * pooled (fd is still the caller's then). */
static int
pool_take(struct server *s, struct ctl *c, int fd, const struct msg *m,
          const char *peer)
{
	static const short now[2] = { 0, POLLOUT };
	struct user *u = c->pooled;
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n;
	int tfd;

	if (u == NULL) {
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
	memcpy(u->sess_run, c->run_id, RUN_ID_LEN);
	memcpy(u->id, m->user_id, USER_ID_LEN);
	u->seq = ++s->user_seq;
	u->port = c->pub->port;
	u->start = now_ms();
	memcpy(u->peer, peer, sizeof(u->peer));
	log_info("user #%llu %s accepted on port %d, joined to a pooled tunnel",
	         (unsigned long long)u->seq, peer, c->pub->port);
	/* Send the NEW_USER now rather than a poll turn later. */
	user_start_relay(s, u, now);
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

	addr_str(sa, peer, sizeof(peer));
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
	user_start_relay(s, u, NULL);
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

/* user_timers: close tickets and waiting users whose JOIN is late; the
 * next deadline among the rest, or -1. */
int64_t
user_timers(struct server *s, int64_t now)
{
	struct user *u, *next;
	int64_t due = -1;
	size_t i;

	for (i = 0; i < NJOINABLE; i++) {
		for (u = s->users[joinable[i]]; u != NULL; u = next) {
			next = u->next;
			if (now >= u->deadline) {
				user_close(s, u, "the client did not dial back in time");
			} else if (due < 0 || u->deadline < due) {
				due = u->deadline;
			}
		}
	}
	return due;
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
