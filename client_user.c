/*
 * The client's users: for each NEW_USER, connect to the local service,
 * dial the server's tunnel port, JOIN and relay; with a pool, tunnels
 * dialed and joined ahead of time, each waiting for its NEW_USER.  Every
 * socket non-blocking, every connect asynchronous.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"
#include "crypto.h"

/* What a user's relay.fd[0] and fd[1] are, for its error lines. */
static const char *const relay_sides[2] = { "tunnel", "local" };

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

void
user_close(struct cuser *u, const char *why)
{
	struct service *s = u->svc;
	struct client *cl = s->cl;
	unsigned long held;

	if (u->dead) {
		return;
	}
	/* A user that never relayed failed; a hostile server can make that
	 * happen as fast as it likes, so those lines are rate-limited. */
	if (why != NULL && (u->state == U_RELAY ||
	                    log_limited(&s->log_fail, now_ms(), &held))) {
		svc_log(s, LOG_NORMAL, "user %s closed: %s%s", u->peer, why,
		        u->state == U_RELAY ? "" : held_note(held));
	}
	if (pooled(u)) {
		s->npooled--;
	}
	if (in_flight(u)) {
		s->cl->inflight--;
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
	loop_forget(cl->loop, &u->w[0]);    /* their descriptors close below */
	loop_forget(cl->loop, &u->w[1]);
	if (u->state == U_RELAY) {
		s->bytes_in += u->relay.dir[0].bytes;
		s->bytes_out += u->relay.dir[1].bytes;
		relay_close(&u->relay);
	}
	close_fd(&u->fd);
	close_fd(&u->held);
	fbuf_free(&u->in);
	u->dead = 1;
	DLIST_DEL(*(u->state == U_RELAY ? &s->relaying : &s->users), u);
	DLIST_ADD(cl->dead, u);
}

/* user_fail: close u with "what: detail" as the reason. */
static void
user_fail(struct cuser *u, const char *what, const char *detail)
{
	char why[TEXT_MAX + 128];

	snprintf(why, sizeof(why), "%s: %s", what, detail);
	user_close(u, why);
}

void
user_sweep(struct client *cl)
{
	while (cl->dead != NULL) {
		struct cuser *u = cl->dead;
		DLIST_DEL(cl->dead, u);
		crypto_wipe(u, sizeof(*u));
		free(u);
	}
}

void
users_close_pooled(struct service *s)
{
	struct cuser *u, *next;

	for (u = s->users; u != NULL; u = next) {
		next = u->next;
		if (pooled(u)) {
			user_close(u, NULL);
		}
	}
}

/* Watch what the user's stage waits for; after every step. */
static void
user_sync(struct cuser *u)
{
	struct loop *loop = u->svc->cl->loop;
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
			loop_unwatch(loop, &u->w[i]);
		} else if (loop_watch(loop, &u->w[i], fd[i], ev[i]) != 0) {
			user_fail(u, "watch", strerror(errno));
			return;
		}
	}
}

static void
report_text(struct cuser *u, const char *text)
{
	struct service *s = u->svc;
	struct msg m;

	/* Only the session that announced the user can speak for it. */
	if (s->state == C_ATTACHED && s->session == u->session) {
		memset(&m, 0, sizeof(m));
		m.type = MSG_USER_FAILED;
		memcpy(m.user_id, u->id, USER_ID_LEN);
		snprintf(m.text, sizeof(m.text), "%s", text);
		ctl_send(s, &m);
	}
}

/* The service could not be reached: USER_FAILED "SERVICE WHY". */
static void
report_failure(struct cuser *u, const char *why)
{
	char text[TEXT_MAX + 1];

	/* cut to fit TEXT_MAX; the text is for a log line */
	snprintf(text, sizeof(text), "%.120s %.78s", u->svc->local_arg, why);
	u->svc->failed[FAIL_LOCAL]++;
	report_text(u, text);
}

/*
 * The tunnel could not be dialed.  Usually the server's firewall lets the
 * control port through and not the tunnel port, so both sides say where
 * the dial went and what to check, at once: USER_FAILED "tunnel ADDR: WHY
 * - is port N open...", which the server logs as such, and the user closed
 * here.  A parked tunnel's dial has no user to close, only the line.
 */
static void
tunnel_failed(struct cuser *u, int err)
{
	const struct sockaddr *sa = (const struct sockaddr *)&u->svc->tunnel_sa;
	char text[TEXT_MAX + 1], addr[ADDR_STRLEN];
	unsigned long held;
	/* Refused, unreachable or unanswered (err 0) is the network's doing;
	 * anything else (out of descriptors, say) is this host's. */
	int net = err == 0 || err == ECONNREFUSED || err == ETIMEDOUT ||
	          err == EHOSTUNREACH || err == ENETUNREACH || err == ECONNRESET;

	addr_str(sa, addr, sizeof(addr));
	u->svc->failed[FAIL_TUNNEL] += u->state != U_POOL_DIAL;
	snprintf(text, sizeof(text), "tunnel %.70s: %.60s", addr,
	         err == 0 ? "no answer in time" : strerror(err));
	if (net) {
		/* ASCII, as the server logs only that of a peer's text. */
		snprintf(text + strlen(text), sizeof(text) - strlen(text),
		         " - is port %d open on the server's firewall?",
		         addr_port(sa));
	}
	if (u->state == U_POOL_DIAL) {
		if (log_limited(&u->svc->log_pool, now_ms(), &held)) {
			log_info("pooled tunnel not dialed: %s%s", text,
			         held_note(held));
		}
		user_close(u, NULL);
		return;
	}
	report_text(u, text);
	user_close(u, text);
}

/* Try local addresses in turn until one connect starts. */
static void
local_connect(struct cuser *u)
{
	struct service *s = u->svc;

	while (u->local_idx < s->nlocal) {
		struct local_addr *la = &s->local[u->local_idx];
		u->fd = connect_start((struct sockaddr *)&la->sa, la->len);
		if (u->fd >= 0) {
			return;
		}
		u->local_idx++;
	}
	report_failure(u, strerror(errno));
	user_fail(u, "cannot connect to local service", s->local_arg);
}

/* Dial where the service's session said (or -tunnel). */
static void
tunnel_dial(struct cuser *u)
{
	struct service *s = u->svc;

	u->fd = connect_start((struct sockaddr *)&s->tunnel_sa, s->tunnel_len);
	if (u->fd < 0) {
		tunnel_failed(u, errno);
		return;
	}
	/* A dial into a firewall that drops hangs for minutes: give it as
	 * long as a handshake, so the user hears why before its JOIN is due. */
	u->deadline = earliest(u->deadline, now_ms() + HANDSHAKE_MS);
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
relay_begin(struct cuser *u, int tunnel, int local, int join)
{
	struct service *s = u->svc;
	struct client *cl = s->cl;
	uint8_t frame[FRAME_HDR + FRAME_MAX], proxy[PROXY_MAX];
	static const short now[2] = { POLLOUT, POLLOUT };
	char why[160];
	int fail;

	relay_init(&u->relay, &cl->relays, tunnel, local);
	if (u->sealed) {
		relay_seal(&u->relay, 0, &u->tun_tx, &u->tun_rx);
	}
	u->fd = u->held = -1;
	DLIST_DEL(s->users, u);
	DLIST_ADD(s->relaying, u);
	if (in_flight(u)) {
		s->cl->inflight--;
	}
	u->state = U_RELAY;
	fail = join && relay_prefill(&u->relay, 1, frame, join_frame(u, frame));
	if (!fail && cl->proxy_version != 0) {
		fail = relay_prefill(&u->relay, 0, proxy, proxy_header(
		                     cl->proxy_version, &u->src, &u->dst, proxy));
	}
	if (!fail && u->in.len > 0) {
		fail = relay_feed(&u->relay, 0, u->in.data, u->in.len);
	}
	fbuf_free(&u->in);
	if (fail) {
		user_close(u, "out of memory");
	} else if (relay_step(&u->relay, now) == RELAY_FAIL) {
		user_close(u, relay_why(&u->relay, relay_sides, why, sizeof(why)));
	}
}

/* A pooled tunnel is up: JOIN with the ticket and wait for a user. */
static void
pool_joined(struct cuser *u)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = join_frame(u, frame);

	/* A fresh socket always has room for one small frame.  The buffer
	 * for what comes back waits until something does: a parked tunnel
	 * costs its descriptor and nothing more. */
	if (send(u->fd, frame, n, MSG_NOSIGNAL) != (ssize_t)n) {
		user_close(u, NULL);
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
local_failed(struct cuser *u, const char *why)
{
	/* The next address's socket likely gets the same number: w[0] must
	 * not still claim it, or watching it again looks like no change and
	 * epoll never hears of the new socket. */
	loop_forget(u->svc->cl->loop, &u->w[0]);
	close_fd(&u->fd);
	if (++u->local_idx < u->svc->nlocal) {
		local_connect(u);
		return;
	}
	report_failure(u, why);
	user_fail(u, "local service refused", why);
}

/* A connect finished (POLLOUT): move the user to its next stage. */
static void
user_connected(struct cuser *u)
{
	if (connect_done(u->fd) != 0) {
		if (u->state == U_LOCAL || u->state == U_POOL_LOCAL) {
			local_failed(u, strerror(errno));
		} else {
			tunnel_failed(u, errno);
		}
		return;
	}
	switch (u->state) {
	case U_LOCAL:
		u->held = u->fd;
		u->state = U_TUNNEL;
		tunnel_dial(u);
		break;
	case U_TUNNEL:
		relay_begin(u, u->fd, u->held, 1);
		break;
	case U_POOL_DIAL:
		pool_joined(u);
		break;
	case U_POOL_LOCAL:
		relay_begin(u, u->held, u->fd, 0);
		break;
	default:
		break;
	}
}

static struct cuser *
user_add(struct service *s, enum user_state state,
         const uint8_t id[USER_ID_LEN])
{
	struct cuser *u = calloc(1, sizeof(*u));

	if (u == NULL) {
		log_warn("new user: out of memory");
		return NULL;
	}
	u->svc = s;
	u->fd = u->held = -1;
	u->relay.fd[0] = u->relay.fd[1] = -1;
	watch_init(&u->w[0], K_USER, u, 0);
	watch_init(&u->w[1], K_USER, u, 1);
	u->state = state;
	memcpy(u->id, id, USER_ID_LEN);
	u->session = s->session;
	u->sealed = !s->cl->plaintext;
	tunnel_keys(s->keys.tunnel, id, 1, &u->tun_tx, &u->tun_rx);
	snprintf(u->peer, sizeof(u->peer), "?");
	u->start = now_ms();
	u->deadline = u->start + JOIN_WAIT_MS;
	DLIST_ADD(s->users, u);
	return u;
}

/* Who the user is, from a NEW_USER on control or on a pooled tunnel. */
static void
user_named(struct cuser *u, const struct msg *m)
{
	memcpy(u->id, m->user_id, USER_ID_LEN);
	u->src = m->src;
	u->dst = m->dst;
	wire_addr_str(&m->src, u->peer, sizeof(u->peer));
	u->svc->users_total++;
	svc_log(u->svc, LOG_NORMAL, "user %s arrived%s", u->peer,
	        u->held >= 0 ? " on a pooled tunnel" : "");
}

void
user_new(struct service *s, const struct msg *m)
{
	struct cuser *u;
	struct msg r;
	unsigned long held;

	/* A hostile or broken server could announce users without end: past
	 * MAX_INFLIGHT in the whole client each is refused, so descriptors
	 * stay bounded however many services it floods. */
	if (s->cl->inflight >= MAX_INFLIGHT) {
		memset(&r, 0, sizeof(r));
		r.type = MSG_USER_FAILED;
		memcpy(r.user_id, m->user_id, USER_ID_LEN);
		snprintf(r.text, sizeof(r.text), "client busy");
		s->failed[FAIL_BUSY]++;
		if (log_limited(&s->log_busy, now_ms(), &held)) {
			svc_log(s, LOG_QUIET, "user refused: client busy, %d local "
			        "connections in flight%s", MAX_INFLIGHT,
			        held_note(held));
		}
		ctl_send(s, &r);
		return;
	}
	u = user_add(s, U_LOCAL, m->user_id);
	if (u != NULL) {
		s->cl->inflight++;
		user_named(u, m);
		local_connect(u);
		user_sync(u);
	}
}

void
ticket_new(struct service *s, const struct msg *m)
{
	struct cuser *u;

	/* The server keeps the count; a replacement TICKET can come before
	 * the NEW_USER on the tunnel it replaces has been read, so allow
	 * twice the pool, and no more: more would only cost descriptors. */
	if (s->npooled >= 2 * s->cl->pool_want) {
		return;
	}
	if ((u = user_add(s, U_POOL_DIAL, m->user_id)) != NULL) {
		s->npooled++;
		tunnel_dial(u);
		user_sync(u);
	}
}

/* A pooled tunnel spoke: its NEW_USER (perhaps with user bytes behind),
 * or the server closed it. */
static void
pool_readable(struct cuser *u)
{
	struct msg m;
	int rc;
	enum frame_result fr;

	if (u->in.data == NULL && fbuf_init(&u->in, FBUF_SMALL) != 0) {
		user_close(u, "out of memory");
		return;
	}
	rc = fbuf_fill(&u->in, u->held);
	fr = fbuf_take(&u->in, &m);

	if (fr == FRAME_OK && m.type == MSG_NEW_USER) {
		u->svc->npooled--;
		u->state = U_POOL_LOCAL;
		u->start = now_ms();
		u->deadline = u->start + JOIN_WAIT_MS;
		user_named(u, &m);
		local_connect(u);
	} else if (fr != FRAME_MORE || rc <= 0) {
		log_debug("pooled tunnel closed by the server");
		user_close(u, NULL);
	}
}

static void
user_relay(struct cuser *u, const short rev[2])
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
	user_close(u, why);
}

void
user_event(struct cuser *u, int side, short rev)
{
	short both[2] = { 0, 0 };

	if (u->state == U_POOL_IDLE) {
		pool_readable(u);
	} else if (u->state != U_RELAY) {
		user_connected(u);
	} else {
		both[side] = rev;
		user_relay(u, both);
	}
	user_sync(u);
}

int64_t
user_timers(struct service *s, int64_t now)
{
	struct cuser *u, *next_u;
	int64_t next = -1;

	for (u = s->users; u != NULL; u = next_u) {
		next_u = u->next;      /* user_close moves u to the dead list */
		/* A parked tunnel waits as long as it takes for a user. */
		if (u->state == U_POOL_IDLE) {
			continue;
		}
		if (now >= u->deadline) {
			int local = u->state == U_LOCAL || u->state == U_POOL_LOCAL;
			if (local) {
				report_failure(u, "timed out");
				user_close(u, "local service did not answer in time");
			} else {
				tunnel_failed(u, 0);
			}
		} else {
			next = earliest(next, u->deadline);
		}
	}
	return next;
}
