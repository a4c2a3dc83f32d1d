/*
 * libFuzzer target for the frame codec and the server's handshake state
 * machines.  Build and run with `make fuzz` and `make fuzz-run`.
 *
 * The first input byte picks a mode (byte % 4), and with its top bit the
 * poll() backend of the event loop rather than epoll; the rest is the
 * mode's:
 *
 *   0 codec    decode frames in sequence; check round trips, that *used
 *              stays in bounds, that the verdict over growing prefixes is
 *              MORE... then OK or BAD and never changes after, and that a
 *              NEW_USER's addresses make a sound PROXY header.
 *   1 server   [flags] then what a peer sends: first on a control
 *              connection (ctl_arrive + ctl_readable), then the same bytes
 *              on a tunnel connection (tun_arrive + tun_readable).
 *   2 session  [flags][opts] then bytes: the harness says HELLO, reads the
 *              CHALLENGE, proves the token in an AUTH asking for the port
 *              (and pool) opts choose, and checks the answer (WELCOME, or
 *              the ERROR the port rules call for).  With a pool it takes
 *              the TICKETs, parks a tunnel, and checks that a user binds
 *              to it.  The bytes then arrive on the attached session
 *              (PING, USER_FAILED, strays), and on a tunnel.
 *   3 relay    [flags] then bytes: an attached owner with a waiting user;
 *              the harness sends a valid JOIN (or, with F_BAD_JOIN, a wrong
 *              one) and the bytes, and the user sends the bytes too.  Both
 *              sides must receive exactly the other's bytes.
 *
 * server.c is compiled in (its main renamed), so its statics are
 * reachable.  Every run builds a fresh struct server over socketpairs and
 * frees it with server_free; then the descriptor table must be as it was
 * (LeakSanitizer does the same for memory).  Whatever the server writes to
 * a control or tunnel peer must be well-formed frames of a type it may
 * send.  Public listeners, when a run has them, are on 127.0.0.1 only.
 *
 * DIALBACK_FUZZ_LOG=1 in the environment keeps the server's log lines,
 * which helps when replaying a crash: ./tests/fuzz crash-...
 */
#define main server_main
#include "../server.c"
#undef main
#include "../server_ctl.c"
#include "../server_user.c"

#include "fuzzlib.h"

/* ==== mode 0: the codec ================================================== */

static int
has_text(uint8_t type)
{
	return type == MSG_ERROR || type == MSG_USER_FAILED;
}

/* The verdict over buf[0..k) as k grows must read MORE... then settle: an
 * OK stays OK with the same size and message, a BAD stays BAD. */
static void
check_prefixes(const uint8_t *buf, size_t len, enum frame_result final,
               size_t final_used, const struct msg *final_m)
{
	size_t k, used, lim = len < FRAME_HDR + FRAME_MAX ? len
	                      : FRAME_HDR + FRAME_MAX;
	enum frame_result prev = FRAME_MORE, r;
	struct msg m;

	if (final == FRAME_OK) {
		lim = final_used;
	}
	for (k = 0; k <= lim; k++) {
		used = 0;
		r = frame_decode(buf, k, &m, &used);
		/* No frame is longer than this, so more can't help. */
		CHECK(r != FRAME_MORE || k < FRAME_HDR + FRAME_MAX,
		      "MORE with %zu bytes in hand", k);
		if (prev != FRAME_MORE) {
			CHECK(r == prev, "verdict changed from %d to %d at %zu bytes",
			      (int)prev, (int)r, k);
		}
		if (final == FRAME_OK && k < final_used) {
			CHECK(r == FRAME_MORE, "prefix of %zu of a %zu-byte frame gave %d",
			      k, final_used, (int)r);
		}
		if (r == FRAME_OK) {
			CHECK(used == final_used && used <= k, "used %zu, want %zu",
			      used, final_used);
			CHECK(memcmp(&m, final_m, sizeof(m)) == 0,
			      "a longer buffer decoded differently");
		}
		prev = r;
	}
	if (final != FRAME_OK) {
		CHECK(prev == final || lim < len, "prefix verdict %d, whole %d",
		      (int)prev, (int)final);
	}
}

/* The PROXY header for addresses off the wire: within PROXY_MAX, a v1
 * line ending in CRLF with no NUL, a v2 block whose length field adds up. */
static void
check_proxy(const struct msg *m)
{
	uint8_t out[PROXY_MAX + 1];
	size_t n;

	n = proxy_header(1, &m->src, &m->dst, out);
	CHECK(n >= 8 && n <= PROXY_MAX && memcmp(out, "PROXY ", 6) == 0 &&
	      out[n - 2] == '\r' && out[n - 1] == '\n' &&
	      memchr(out, '\0', n) == NULL, "PROXY v1 header of %zu bytes", n);
	n = proxy_header(2, &m->src, &m->dst, out);
	CHECK(n >= 16 && n <= PROXY_MAX &&
	      n == 16u + (size_t)(out[14] << 8 | out[15]),
	      "PROXY v2 header of %zu bytes", n);
}

static void
fuzz_codec(const uint8_t *data, size_t len)
{
	size_t off = 0;

	for (;;) {
		const uint8_t *p = data + off;
		size_t rest = len - off, used = 0, n, again_used = 0;
		uint8_t out[FRAME_HDR + FRAME_MAX];
		struct msg m, again;
		enum frame_result r = frame_decode(p, rest, &m, &used);

		CHECK(r == FRAME_OK || r == FRAME_MORE || r == FRAME_BAD,
		      "verdict %d", (int)r);
		check_prefixes(p, rest, r, used, &m);
		if (r != FRAME_OK) {
			return;
		}
		CHECK(used >= FRAME_HDR && used <= rest &&
		      used <= FRAME_HDR + FRAME_MAX, "used %zu of %zu", used, rest);
		CHECK(m.type == p[0], "type %u from byte %u", m.type, p[0]);
		/* Another version decodes to .version alone: nothing to
		 * re-encode. */
		if ((m.type == MSG_HELLO || m.type == MSG_CHALLENGE) &&
		    m.version != PROTO_VERSION) {
			off += used;
			continue;
		}
		n = frame_encode(out, &m);
		CHECK(n == used, "re-encoded to %zu bytes, decoded from %zu", n,
		      used);
		if (!has_text(m.type)) {
			CHECK(memcmp(out, p, n) == 0, "%s did not round-trip",
			      msg_name(m.type));
		}
		/* Text comes back with control bytes as '?', so compare the
		 * decoded forms: a second trip must change nothing. */
		CHECK(frame_decode(out, n, &again, &again_used) == FRAME_OK &&
		      again_used == n && memcmp(&again, &m, sizeof(m)) == 0,
		      "%s changed on a second trip", msg_name(m.type));
		if (m.type == MSG_NEW_USER) {
			check_proxy(&m);
		}
		off += used;
	}
}

/* ==== the server under test ============================================== */

/* Byte 1 of modes 1-3. */
enum {
	F_OWNER = 1 << 0,     /* an attached session already serves a port */
	F_USERS = 1 << 1,     /* users wait for a join (ids: user_id()) */
	F_NO_TOKEN = 1 << 2,  /* the server has no token: any proof passes */
	F_EOF = 1 << 3,       /* peers shut down writing after their bytes */
	F_TIMERS = 3 << 4,    /* 0 none, 1 nothing due, 2 ping due and
	                       * handshakes late, 3 everything late */
	F_PUMP = 1 << 6,      /* finish with turns of the real poll loop */
	F_OTHER_RUN = 1 << 7, /* mode 2: another client process than the
	                       * owner's (so busy, not a replacement);
	                       * mode 3: a JOIN with a wrong proof */
};
#define F_BAD_JOIN F_OTHER_RUN

/* Byte 2 of mode 2. */
enum {
	O_ASK = 7,            /* the port AUTH asks for, from asked_port() */
	O_PORTS = 1 << 3,     /* the server has -ports lo_port..lo_port+1 */
	O_OWNER_LO = 1 << 4,  /* the F_OWNER session serves lo_port */
	O_DIAL = 1 << 5,      /* a user connects to the new session's own
	                       * listener before the loop turns */
	O_POOL = 1 << 6,      /* AUTH asks for a pool of POOL_ASK tunnels */
};

#define POOL_ASK    2

/*
 * Once a bug in server.c: a USER_FAILED was matched against joined pairs
 * by id alone, so one session could close a user another session was
 * relaying.  Pairs now remember their session; the check is on (0).
 */
#define KNOWN_BUG_PAIR_FAIL 0

#define MAIN_PORT   DEFAULT_PUBLIC_PORT
#define PUMP_TURNS  256

/* A loopback port that was free at start-up: -ports runs offer it and
 * the next one, so a session can open a real listener. */
static int lo_port;

static const uint8_t owner_run_id[RUN_ID_LEN] = "ownerrun";
static const uint8_t other_run_id[RUN_ID_LEN] = "otherrun";

/* The k-th user of a run gets an id of 16 bytes 0x11 * (k + 1): 0x11,
 * 0x22, ... so seeds and mutations can name it. */
static void
user_id(int k, uint8_t id[USER_ID_LEN])
{
	memset(id, 0x11 * (k + 1), USER_ID_LEN);
}

/* The pre-made owner's session key: fixed, so seeds can carry a valid
 * JOIN (HMAC(key, "dialback join" id)) for the mode-1 tunnel. */
#define OWNER_KEY_BYTE 0x42
static const uint8_t client_nonce[NONCE_LEN] = "fuzz cli nonce!";

/* Messages the server may send on a control connection. */
#define CTL_SENDS ((1u << MSG_CHALLENGE) | (1u << MSG_WELCOME) |        \
                   (1u << MSG_ERROR) | (1u << MSG_PING) |               \
                   (1u << MSG_PONG) | (1u << MSG_NEW_USER) |            \
                   (1u << MSG_TICKET))
#define MAX_USERS   8

/* One run: the server, and the harness's ends of its connections. */
struct run {
	struct server s;
	int ctl_peer, tun_peer, owner_peer, dial;
	int user_peer[MAX_USERS], nusers;  /* users_new's, in order */
	int park_peer[POOL_ASK];           /* pool tunnels, by ticket */
	int join_peer;                     /* the owner's joined user */
	struct sockaddr_in sin;
};

static void
run_init(struct run *r, const char *token, int ports)
{
	int i, j;

	memset(r, 0, sizeof(*r));
	r->s.token = token;
	r->s.heartbeat_s = DEFAULT_HEARTBEAT_S;
	r->s.lis[ROLE_CONTROL].port = DEFAULT_CONTROL_PORT;
	r->s.lis[ROLE_TUNNEL].port = DEFAULT_TUNNEL_PORT;
	r->s.lis[ROLE_PUBLIC].port = MAIN_PORT;
	r->s.lis[ROLE_PUBLIC].port = MAIN_PORT;        /* no listener: nfd 0 */
	snprintf(r->s.addr[ROLE_PUBLIC].host, sizeof(r->s.addr[0].host),
	         "127.0.0.1");
	if (ports) {
		r->s.ports_lo = lo_port;
		r->s.ports_hi = lo_port + 1;
	}
	r->s.sig_fd = -1;
	r->s.spare_fd = -1;
	r->s.started = now_ms();
	/* As main() sets up, less the descriptors: no signal pipe and no
	 * listeners, but every watch initialised (watch_init: fd -1). */
	r->s.loop = loop_new();
	watch_init(&r->s.sig_w, K_SIGNAL, NULL, 0);
	for (i = 0; i < ROLE_END; i++) {
		for (j = 0; j < MAX_LISTEN; j++) {
			watch_init(&r->s.lw[i][j], K_LISTEN, NULL, i);
		}
	}
	for (j = 0; j < MAX_LISTEN; j++) {
		watch_init(&r->s.lis[ROLE_PUBLIC].w[j], K_LISTEN, &r->s.lis[ROLE_PUBLIC],
		           ROLE_PUBLIC);
	}
	r->ctl_peer = r->tun_peer = r->owner_peer = r->dial = -1;
	r->park_peer[0] = r->park_peer[1] = r->join_peer = -1;
	r->sin.sin_family = AF_INET;
	r->sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r->sin.sin_port = htons(40000);
}

static const struct sockaddr *
run_sa(struct run *r)
{
	return (const struct sockaddr *)&r->sin;
}

/* A new control connection, still in its handshake. */
static struct ctl *
ctl_new(struct run *r, int *peer)
{
	int fd;
	struct ctl *c;

	fd_pair(&fd, peer);
	ctl_arrive(&r->s, fd, run_sa(r));
	c = r->s.ctls;
	CHECK(c != NULL && c->fd == fd, "ctl_arrive made no ctl");
	return c;
}

/* An attached session serving port, as on_auth would leave it; NULL if
 * the port could not be had (a -ports port already in use). */
static struct ctl *
owner_new(struct run *r, int port)
{
	struct ctl *c = ctl_new(r, &r->owner_peer);
	enum err_code code;
	char why[TEXT_MAX];

	CHECK(fbuf_init(&c->out, SESSION_OUT) == 0, "out of memory");
	memcpy(c->run_id, owner_run_id, RUN_ID_LEN);
	if (port_claim(&r->s, c, port, &code, why, sizeof(why)) != 0) {
		CHECK(port != MAIN_PORT, "the free main port was refused: %s",
		      why);
		ctl_close(&r->s, c, why);
		return NULL;
	}
	memset(c->key, OWNER_KEY_BYTE, PROOF_LEN);
	c->state = CTL_ATTACHED;
	c->attached_at = c->last_rx = now_ms();
	c->next_ping = c->last_rx + r->s.heartbeat_s * 1000;
	return c;
}

/* Users arrive on pub for whichever session serves it; their ids, as
 * waiting users or as pairs on a pooled tunnel, are then fixed so fuzz
 * input can name them. */
static void
users_new(struct run *r, int n, struct pub *pub)
{
	int i, fd;

	for (i = 0; i < n; i++) {
		CHECK(r->nusers < MAX_USERS, "too many users");
		fd_pair(&fd, &r->user_peer[r->nusers]);
		user_arrive(&r->s, fd, run_sa(r), pub);
		struct user *w = r->s.users[U_WAITING];
		struct user *p = r->s.users[U_RELAYING];

		if (w != NULL && w->relay.fd[0] == fd) {
			user_id(r->nusers, w->id);
		} else if (p != NULL && p->relay.fd[0] == fd) {
			user_id(r->nusers, p->id);
		}
		r->nusers++;
	}
	flush_controls(&r->s);
}

/* Call ctl_readable as poll would, until the ctl dies or has nothing
 * more to read; flush what it queued, as the loop does each turn. */
static void
drive_ctl(struct run *r, struct ctl *c)
{
	int i;

	for (i = 0; i < 64 && !c->dead && fd_readable(c->fd); i++) {
		ctl_readable(&r->s, c);
		flush_controls(&r->s);
	}
}

static void
drive_tun(struct run *r, struct tun *t)
{
	int i;

	for (i = 0; i < 64 && !t->dead && fd_readable(t->fd); i++) {
		tun_readable(&r->s, t);
	}
}

/* A tunnel that sends a JOIN for id with the proof of key, then extra
 * bytes; returns it after tun_readable has had its say. */
static struct tun *
join_new(struct run *r, int *peer, const uint8_t id[USER_ID_LEN],
         const uint8_t key[PROOF_LEN], const char *extra)
{
	struct msg m;
	struct tun *t;
	int fd;

	fd_pair(&fd, peer);
	tun_arrive(&r->s, fd, run_sa(r));
	t = r->s.tuns;
	CHECK(t != NULL && t->fd == fd, "tun_arrive made no tun");
	memset(&m, 0, sizeof(m));
	m.type = MSG_JOIN;
	memcpy(m.user_id, id, USER_ID_LEN);
	key_join_proof(key, id, m.proof);
	peer_send_msg(*peer, &m);
	peer_send(*peer, extra, strlen(extra));
	drive_tun(r, t);
	return t;
}

/* Turns of serve()'s loop with a zero timeout, until nothing is ready.
 * It must go quiet: a descriptor that stays ready while nothing moves is
 * the busy loop STYLE.md warns about.  (loop_wait says 0 for EINTR too,
 * which ends the turns early: rare, and harmless.) */
static void
pump(struct run *r)
{
	int i;

	for (i = 0; i < PUMP_TURNS; i++) {
		struct loop_event *ev;
		int n;

		flush_controls(&r->s);
		sync_few(&r->s, now_ms());
		sweep(&r->s);
		n = loop_wait(r->s.loop, 0, &ev);
		CHECK(n >= 0, "%s: %s", loop_backend(r->s.loop), strerror(errno));
		if (n == 0) {
			return;
		}
		CHECK(dispatch(&r->s, ev, n) == 0, "dispatch saw the signal pipe");
		flush_controls(&r->s);
	}
	CHECK(0, "the event loop was still busy after %d turns", PUMP_TURNS);
}

/* Run the timers as if time had moved on. */
static void
expire(struct run *r, unsigned which)
{
	int64_t hb = (int64_t)r->s.heartbeat_s * 1000, later[4] = {
		0, HANDSHAKE_MS / 2, hb, hb * DEAD_AFTER_BEATS + JOIN_WAIT_MS,
	};

	if (which == 0) {
		return;
	}
	run_timers(&r->s, now_ms() + later[which]);
	flush_controls(&r->s);
}

/* The same bytes as the first thing on a tunnel connection. */
static void
tunnel_feed(struct run *r, const uint8_t *data, size_t len, unsigned flags)
{
	int fd;
	struct tun *t;

	fd_pair(&fd, &r->tun_peer);
	tun_arrive(&r->s, fd, run_sa(r));
	t = r->s.tuns;
	CHECK(t != NULL && t->fd == fd, "tun_arrive made no tun");
	peer_send(r->tun_peer, data, len);
	if (flags & F_EOF) {
		shutdown(r->tun_peer, SHUT_WR);
	}
	drive_tun(r, t);
}

/* Timers, loop turns, then check the peers' output, free the server,
 * close the harness's ends, and check the descriptor table. */
static void
run_finish(struct run *r, unsigned flags, int tun_frames)
{
	int i;

	expire(r, (flags & F_TIMERS) >> 4);
	if (flags & F_PUMP) {
		pump(r);
	}
	check_output(r->ctl_peer, CTL_SENDS, "control");
	check_output(r->owner_peer, CTL_SENDS, "owner");
	if (tun_frames) {
		check_output(r->tun_peer, 1u << MSG_ERROR, "tunnel");
	}
	/* A pooled tunnel hears NEW_USER first; its user sent nothing. */
	check_output(r->park_peer[0], 1u << MSG_NEW_USER, "pooled tunnel");
	check_output(r->park_peer[1], 0, "refused pool tunnel");
	server_free(&r->s);                /* frees the loop too */
	peer_close(&r->ctl_peer);
	peer_close(&r->tun_peer);
	peer_close(&r->owner_peer);
	for (i = 0; i < r->nusers; i++) {
		peer_close(&r->user_peer[i]);
	}
	peer_close(&r->park_peer[0]);
	peer_close(&r->park_peer[1]);
	peer_close(&r->join_peer);
	peer_close(&r->dial);
	fd_check_unchanged();
}

/* ==== mode 1: raw bytes on the control and tunnel ports ================== */

static void
fuzz_server(unsigned flags, const uint8_t *data, size_t len)
{
	struct run r;
	struct ctl *c, *owner = NULL;

	run_init(&r, (flags & F_NO_TOKEN) ? "" : "secret", 0);
	if (flags & F_OWNER) {
		owner = owner_new(&r, MAIN_PORT);
	}
	if (flags & F_USERS) {
		users_new(&r, 2, &r.s.lis[ROLE_PUBLIC]);  /* no owner: turned away */
	}
	c = ctl_new(&r, &r.ctl_peer);
	peer_send(r.ctl_peer, data, len);
	if (flags & F_EOF) {
		shutdown(r.ctl_peer, SHUT_WR);
	}
	drive_ctl(&r, c);
	/* Without the nonce the server picked, no input can hold the proof. */
	if (!(flags & F_NO_TOKEN)) {
		CHECK(c->dead || c->state != CTL_ATTACHED,
		      "attached without proving the token");
		CHECK(r.s.lis[ROLE_PUBLIC].owner == owner,
		      "the main port changed hands without a proof");
	}
	tunnel_feed(&r, data, len, flags);
	run_finish(&r, flags, 1);
}

/* ==== mode 2: a handshake, then an attached session ====================== */

static int
asked_port(unsigned opts)
{
	switch (opts & O_ASK) {
	case 1: return MAIN_PORT;
	case 2: return lo_port;
	case 3: return lo_port + 1;
	case 4: return 1;
	case 5: return 65535;
	case 6: return lo_port + 2;
	default: return 0;
	}
}

/* Connect a user over TCP to the session's own public listener. */
static void
dial_user(struct run *r, const struct ctl *c)
{
	struct sockaddr_in sin;

	if (c->dead || c->pub == NULL || c->pub->nfd == 0) {
		return;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)c->pub->port);
	r->dial = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(r->dial >= 0, "socket: %s", strerror(errno));
	/* Loopback completes against the backlog, before any accept; after
	 * EINTR it completes in the background. */
	CHECK(connect(r->dial, (struct sockaddr *)&sin, sizeof(sin)) == 0 ||
	      errno == EINTR, "connect to public port %d: %s", c->pub->port,
	      strerror(errno));
}

/* Take the TICKETs a loop turn issues, park a tunnel with the first, be
 * refused with the second (bytes behind its JOIN), and bind a user to the
 * parked tunnel. */
static void
pool_setup(struct run *r, struct ctl *c, const uint8_t key[PROOF_LEN])
{
	struct msg m[POOL_ASK];
	struct tun *t;

	run_timers(&r->s, now_ms());
	flush_controls(&r->s);
	CHECK(peer_recv_msgs(r->ctl_peer, m, POOL_ASK) == POOL_ASK &&
	      m[0].type == MSG_TICKET && m[1].type == MSG_TICKET &&
	      c->count[U_TICKET] == POOL_ASK, "a pool of %d got %d tickets", POOL_ASK,
	      c->count[U_TICKET]);
	t = join_new(r, &r->park_peer[0], m[0].user_id, key, "");
	CHECK(t->dead && c->count[U_POOLED] == 1 && c->count[U_TICKET] == POOL_ASK - 1,
	      "a ticket's JOIN did not park: %d parked", c->count[U_POOLED]);
	t = join_new(r, &r->park_peer[1], m[1].user_id, key, "early");
	CHECK(t->dead && c->count[U_POOLED] == 1 && c->count[U_TICKET] == POOL_ASK - 1,
	      "a pool JOIN with bytes behind it parked");
	users_new(r, 1, c->pub);
	CHECK(c->count[U_POOLED] == 0 && r->s.users[U_RELAYING] != NULL,
	      "a user did not take the parked tunnel");
}

static void
fuzz_session(unsigned flags, unsigned opts, const uint8_t *data, size_t len)
{
	struct run r;
	struct ctl *c, *owner = NULL;
	struct user *theirs = NULL;
	struct pub *owner_own = NULL;
	struct msg m;
	uint8_t key[PROOF_LEN];
	int ports = (opts & O_PORTS) != 0;
	int want = asked_port(opts), got, offered, held, owner_port = 0;

	run_init(&r, (flags & F_NO_TOKEN) ? "" : "secret", ports);
	if (flags & F_OWNER) {
		owner = owner_new(&r, ports && (opts & O_OWNER_LO) ? lo_port
		                                                  : MAIN_PORT);
		if (owner != NULL && (flags & F_USERS)) {
			uint8_t id[USER_ID_LEN];
			struct tun *t;

			users_new(&r, 2, owner->pub);  /* gone if it's replaced */
			user_id(0, id);
			t = join_new(&r, &r.join_peer, id, owner->key, "");
			CHECK(t->dead && r.s.users[U_RELAYING] != NULL, "the owner's JOIN failed");
			theirs = r.s.users[U_RELAYING];
		}
		if (owner != NULL) {
			owner_own = owner->own;
			owner_port = owner->pub->port;
		}
	}
	c = ctl_new(&r, &r.ctl_peer);

	memset(&m, 0, sizeof(m));
	m.type = MSG_HELLO;
	memcpy(m.nonce, client_nonce, NONCE_LEN);
	memcpy(m.run_id, (flags & F_OTHER_RUN) ? other_run_id : owner_run_id,
	       RUN_ID_LEN);
	peer_send_msg(r.ctl_peer, &m);
	drive_ctl(&r, c);
	peer_recv_msg(r.ctl_peer, &m);
	CHECK(m.type == MSG_CHALLENGE && m.version == PROTO_VERSION &&
	      !c->dead && c->state == CTL_AUTH, "HELLO got %s",
	      msg_name(m.type));

	key_auth_proof(r.s.token, client_nonce, m.nonce, m.proof);
	key_session(r.s.token, client_nonce, m.nonce, key);
	m.type = MSG_AUTH;
	m.public_port = (uint16_t)want;
	m.pool = (opts & O_POOL) ? POOL_ASK : 0;
	peer_send_msg(r.ctl_peer, &m);
	drive_ctl(&r, c);
	peer_recv_msg(r.ctl_peer, &m);

	/* What the port rules say the answer must be. */
	got = want != 0 ? want : MAIN_PORT;
	offered = got == MAIN_PORT ||
	          (ports && got >= lo_port && got <= lo_port + 1);
	held = owner != NULL && owner_port == got;
	if (!offered) {
		CHECK(m.type == MSG_ERROR && m.code == ERR_PORT && c->dead,
		      "port %d, not offered, got %s", got, msg_name(m.type));
	} else if (held && (flags & F_OTHER_RUN)) {
		CHECK(m.type == MSG_ERROR && m.code == ERR_BUSY && c->dead &&
		      !owner->dead && owner->pub->owner == owner,
		      "port %d, busy, got %s", got, msg_name(m.type));
	} else if (m.type == MSG_ERROR && got != MAIN_PORT && !held) {
		/* A -ports port someone else on this host is using. */
		CHECK(m.code == ERR_BUSY && c->dead, "opening port %d: code %u",
		      got, m.code);
	} else {
		CHECK(m.type == MSG_WELCOME && !c->dead &&
		      c->state == CTL_ATTACHED && c->pub != NULL &&
		      c->pub->port == got && c->pub->owner == c &&
		      port_owner(&r.s, got) == c,
		      "port %d: a valid AUTH got %s", got, msg_name(m.type));
		CHECK(m.tunnel_port == DEFAULT_TUNNEL_PORT &&
		      m.public_port == got && m.heartbeat_s == DEFAULT_HEARTBEAT_S,
		      "WELCOME %u %u %u", m.tunnel_port, m.public_port,
		      m.heartbeat_s);
		CHECK(memcmp(c->key, key, PROOF_LEN) == 0,
		      "the session key differs from the client's");
		if (held) {
			CHECK(owner->dead && c->own == owner_own,
			      "a reconnect did not take over its old session");
		}
		if (got != MAIN_PORT) {
			CHECK(c->own != NULL && c->own->nfd > 0,
			      "port %d has no listener", got);
		}
		if (opts & O_POOL) {
			pool_setup(&r, c, key);
		}
		if ((flags & F_USERS) && !held) {
			users_new(&r, 2, c->pub);
		}
		if (opts & O_DIAL) {
			dial_user(&r, c);
		}
	}

	peer_send(r.ctl_peer, data, len);
	if (flags & F_EOF) {
		shutdown(r.ctl_peer, SHUT_WR);
	}
	drive_ctl(&r, c);
	/* Another client may name the owner's user, but not end it. */
	if (!KNOWN_BUG_PAIR_FAIL && theirs != NULL && (flags & F_OTHER_RUN)) {
		CHECK(theirs->state == U_RELAYING, "a USER_FAILED from another session closed "
		      "the owner's user");
	}
	tunnel_feed(&r, data, len, flags);
	run_finish(&r, flags | ((opts & O_DIAL) ? F_PUMP : 0), 1);
}

/* ==== mode 3: a join, and the relay behind it ============================ */

/* Everything the user sent must reach the tunnel and the other way round,
 * in order and unchanged. */
static void
check_relayed(int fd, const uint8_t *want, size_t len, int ended,
              const char *who)
{
	size_t got;
	int eof;

	got = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
	CHECK(got == len && memcmp(fuzz_out, want, len) == 0,
	      "the %s peer got %zu bytes, want %zu%s", who, got, len,
	      got == len ? " (contents differ)" : "");
	if (ended) {
		CHECK(eof, "the %s peer saw no EOF after the other side ended",
		      who);
	}
}

static void
fuzz_relay(unsigned flags, const uint8_t *data, size_t len)
{
	struct run r;
	struct ctl *owner;
	struct tun *t;
	struct user *u;
	struct msg m;
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	int fd, good = !(flags & F_BAD_JOIN);

	run_init(&r, "secret", 0);
	owner = owner_new(&r, MAIN_PORT);
	users_new(&r, 1, owner->pub);
	u = r.s.users[U_WAITING];
	CHECK(u != NULL && u->sess == owner, "no waiting user");

	fd_pair(&fd, &r.tun_peer);
	tun_arrive(&r.s, fd, run_sa(&r));
	t = r.s.tuns;
	memset(&m, 0, sizeof(m));
	m.type = MSG_JOIN;
	user_id(0, m.user_id);
	key_join_proof(owner->key, m.user_id, m.proof);
	if (!good) {
		m.proof[len % PROOF_LEN] ^= 1;
	}
	peer_send(r.tun_peer, frame, frame_encode(frame, &m));
	peer_send(r.tun_peer, data, len);
	peer_send(r.user_peer[0], data, len);
	if (flags & F_EOF) {
		shutdown(r.tun_peer, SHUT_WR);
		shutdown(r.user_peer[0], SHUT_WR);
	}
	drive_tun(&r, t);
	CHECK(t->dead, "the tunnel is still waiting after its JOIN");
	CHECK(good ? u->state == U_RELAYING
	           : u->state == U_WAITING && owner->count[U_WAITING] == 1,
	      "a %s JOIN: user %s", good ? "valid" : "wrong",
	      u->state == U_RELAYING ? "relaying" : "not relaying");
	pump(&r);
	if (good) {
		check_relayed(r.user_peer[0], data, len, flags & F_EOF, "user");
		check_relayed(r.tun_peer, data, len, flags & F_EOF, "tunnel");
	}
	run_finish(&r, 0, 0);
}

/* ==== entry points ======================================================= */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A loopback port free right now (bind to 0, read it back, let it go). */
static int
free_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
	      getsockname(fd, (struct sockaddr *)&sin, &len) == 0,
	      "a free port: %s", strerror(errno));
	port = ntohs(sin.sin_port);
	close(fd);
	return port < 65534 ? port : 40000;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	lo_port = free_port();
	fuzz_init();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Everything fits the socket buffers with room to spare, so the
	 * harness never blocks on a peer that isn't read. */
	if (size > 8192) {
		size = 8192;
	}
	if (size >= 1 && (data[0] & 0x80)) {
		setenv("DIALBACK_POLL", "1", 1);
	} else {
		unsetenv("DIALBACK_POLL");
	}
	if (size >= 1 && data[0] % 4 == 0) {
		fuzz_codec(data + 1, size - 1);
	} else if (size >= 2 && data[0] % 4 == 1) {
		fuzz_server(data[1], data + 2, size - 2);
	} else if (size >= 3 && data[0] % 4 == 2) {
		fuzz_session(data[1], data[2], data + 3, size - 3);
	} else if (size >= 2 && data[0] % 4 == 3) {
		fuzz_relay(data[1], data + 2, size - 2);
	}
	return 0;
}
