/*
 * libFuzzer target for the frame codec and the server's handshake,
 * session and tunnel state machines.  Build and run with `make fuzz` and
 * `make fuzz-run`.
 *
 * The first input byte picks a mode (byte % 4); its top bit picks the
 * poll() backend of the event loop rather than epoll, and bits 2-4 are
 * the X_* extras below.  The rest is the mode's:
 *
 *   0 codec    decode frames in sequence; check round trips, that *used
 *              stays in bounds, that the verdict over growing prefixes is
 *              MORE... then OK or BAD and never changes after, and that a
 *              NEW_USER's addresses make a sound PROXY header.
 *   1 server   [flags] then what a peer sends, raw: on a control
 *              connection from its first byte (ctl_arrive + ctl_readable),
 *              or with F_AT_AUTH where AUTH goes, the harness having said
 *              HELLO and taken the CHALLENGE; then the same bytes on a
 *              tunnel connection (tun_arrive + tun_readable).  Nothing may
 *              attach: the keys need the server's ephemeral secret.
 *   2 session  [flags][opts] then a script (fuzzlib.h).  The harness does
 *              the handshake as an honest client: HELLO asking for the
 *              port opts choose, CHALLENGE, an AUTH sealing its ATTACH
 *              (run id, pool, plaintext; or with O_RAW_ATTACH the bytes
 *              that start the input), and opens the REPLY: a WELCOME whose
 *              keys agree with its own, or the ERROR the rules call for.
 *              With a pool it takes the TICKETs, parks a tunnel, and checks
 *              that a user binds to it.  The script then arrives on the
 *              session sealed under its keys (PING, USER_FAILED, strays,
 *              and records that must not open), and its bytes raw on a
 *              tunnel.
 *   3 relay    [flags] then a script: an attached owner with a waiting
 *              user, or with X_POOL a pooled tunnel that a user then
 *              takes.  The harness sends a valid JOIN (or with F_BAD_JOIN
 *              a wrong one), then the script on that tunnel under the
 *              user's tunnel keys, and the user sends the script's bytes
 *              raw.  Each side must receive exactly what the other's
 *              stream carried (up to a record that does not open, which
 *              must end the user), the pooled tunnel a NEW_USER first.
 *
 * server.c is compiled in (its main renamed), so its statics are
 * reachable.  Every run builds a fresh struct server over socketpairs and
 * frees it with server_free; then the descriptor table must be as it was
 * (LeakSanitizer does the same for memory).  Whatever the server writes to
 * a control or tunnel peer must be well-formed frames, in records that
 * open once keys exist, of a type it may send.  Public listeners, when a
 * run has them, are on 127.0.0.1 only.
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

/* Byte 0's extras, for modes 2 and 3. */
enum {
	X_SRV_PLAIN = 1 << 2, /* the server allows plaintext tunnels */
	X_CLI_PLAIN = 1 << 3, /* the client asks for them (mode 3: both) */
	X_POOL = 1 << 4,      /* mode 3: the tunnel is a pooled one */
};

/* Byte 1 of modes 1-3. */
enum {
	F_OWNER = 1 << 0,     /* an attached session already serves a port */
	F_USERS = 1 << 1,     /* users wait for a join (ids: user_id()) */
	F_NO_TOKEN = 1 << 2,  /* the server has no token (the psk of "") */
	F_EOF = 1 << 3,       /* peers shut down writing after their bytes */
	F_TIMERS = 3 << 4,    /* 0 none, 1 nothing due, 2 ping due and
	                       * handshakes late, 3 everything late */
	F_PUMP = 1 << 6,      /* finish with turns of the real poll loop */
	F_OTHER_RUN = 1 << 7, /* mode 2: another client process than the
	                       * owner's (so busy, not a replacement);
	                       * mode 1: the bytes go where AUTH goes;
	                       * mode 3: a JOIN with a wrong proof */
};
#define F_AT_AUTH  F_OTHER_RUN
#define F_BAD_JOIN F_OTHER_RUN

/* Byte 2 of mode 2. */
enum {
	O_ASK = 7,            /* the port HELLO asks for, from asked_port() */
	O_PORTS = 1 << 3,     /* the server has -ports lo_port..lo_port+1 */
	O_OWNER_LO = 1 << 4,  /* the F_OWNER session serves lo_port */
	O_DIAL = 1 << 5,      /* a user connects to the new session's own
	                       * listener before the loop turns */
	O_POOL = 1 << 6,      /* ATTACH asks for a pool of POOL_ASK tunnels */
	O_RAW_ATTACH = 1 << 7, /* AUTH seals the input's first [n u8] bytes
	                        * instead of the harness's ATTACH */
};

#define POOL_ASK    2

/*
 * Once a bug in server.c: a USER_FAILED was matched against joined pairs
 * by id alone, so one session could close a user another session was
 * relaying.  Pairs now remember their session; the check is on (0).
 */
#define KNOWN_BUG_PAIR_FAIL 0

/*
 * A bug in relay.c, found by this target: the bytes that came in behind
 * a JOIN are handed to the relay but not judged until the tunnel sends
 * more, so a stream that starts with a record header longer than
 * RECORD_MAX (which can never open) leaves its user waiting instead of
 * reset.  While it stands (1), such a stream may still look open.
 */
#define KNOWN_BUG_LAZY_FEED 0

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

/* The pre-made owner's session keys: fixed, so that seeds could carry
 * records and JOINs for it. */
#define OWNER_TX_BYTE     0x42     /* server -> client */
#define OWNER_RX_BYTE     0x43     /* client -> server */
#define OWNER_TUNNEL_BYTE 0x44

/* The harness's ephemeral key pair, made once: a fresh one per run would
 * cost an X25519 each time and test nothing more of the server. */
static struct handshake hs_template;
/* The server's last ephemeral key: the next must differ. */
static uint8_t last_server_pub[KEY_LEN];

/* Messages the server may send on a control connection, before keys and
 * in records after. */
#define CTL_SENDS_CLEAR ((1u << MSG_CHALLENGE) | (1u << MSG_ERROR))
#define CTL_SENDS ((1u << MSG_ERROR) | (1u << MSG_PING) |               \
                   (1u << MSG_PONG) | (1u << MSG_NEW_USER) |            \
                   (1u << MSG_TICKET))
/* ... and the ones an attached session takes without ending. */
#define SESSION_TAKES ((1u << MSG_PING) | (1u << MSG_PONG) |            \
                       (1u << MSG_USER_FAILED))
#define MAX_USERS   8

/* One run: the server, and the harness's ends of its connections with
 * the keys it reads them with. */
struct run {
	struct server s;
	int ctl_peer, tun_peer, owner_peer, dial;
	int user_peer[MAX_USERS], nusers;  /* users_new's, in order */
	int park_peer[POOL_ASK];           /* pool tunnels, by ticket */
	int join_peer;                     /* the owner's joined user */
	struct sockaddr_in sin;
	struct seal *ctl_rx;               /* &ctl_keys.rx once attached */
	struct session_keys ctl_keys;      /* the session's, client side */
	struct seal owner_rx;              /* the owner's server->client */
	struct seal *park_rx;              /* &park_seal: sealed pool tunnel */
	struct seal park_seal;
};

static void
run_init(struct run *r, const char *token, int ports)
{
	int i, j;

	memset(r, 0, sizeof(*r));
	relay_pool_init(&r->s.relays);
	r->s.token = token;
	r->s.heartbeat_s = DEFAULT_HEARTBEAT_S;
	r->s.lis[ROLE_CONTROL].port = DEFAULT_CONTROL_PORT;
	r->s.lis[ROLE_TUNNEL].port = DEFAULT_TUNNEL_PORT;
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
			watch_init(&r->s.lis[i].w[j], K_LISTEN, &r->s.lis[i], i);
		}
	}
	r->ctl_peer = r->tun_peer = r->owner_peer = r->dial = -1;
	r->park_peer[0] = r->park_peer[1] = r->join_peer = -1;
	r->sin.sin_family = AF_INET;
	r->sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r->sin.sin_port = htons(40000);
	memset(r->owner_rx.key, OWNER_TX_BYTE, KEY_LEN);
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

/* An attached session serving port, as on_auth would leave it, with the
 * fixed OWNER_* keys; NULL if the port could not be had (a -ports port
 * already in use). */
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
	memset(&c->keys, 0, sizeof(c->keys));
	memset(c->keys.tx.key, OWNER_TX_BYTE, KEY_LEN);
	memset(c->keys.rx.key, OWNER_RX_BYTE, KEY_LEN);
	memset(c->keys.tunnel, OWNER_TUNNEL_BYTE, KEY_LEN);
	c->in.seal = &c->keys.rx;
	c->out.seal = &c->keys.tx;
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
		/* On a pooled tunnel: handed out, until its client speaks. */
		struct user *p = r->s.users[U_HANDED];

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

/* A tunnel connection to the server, still without its JOIN. */
static struct tun *
tun_new(struct run *r, int *peer)
{
	struct tun *t;
	int fd;

	fd_pair(&fd, peer);
	tun_arrive(&r->s, fd, run_sa(r));
	t = r->s.tuns;
	CHECK(t != NULL && t->fd == fd, "tun_arrive made no tun");
	return t;
}

/* The JOIN for id under the session's tunnel key, as a client makes it;
 * *tx and *rx are the tunnel's keys from there on (client side). */
static void
join_make(struct msg *m, const uint8_t id[USER_ID_LEN],
          const uint8_t tunnel[KEY_LEN], struct seal *tx, struct seal *rx)
{
	tunnel_keys(tunnel, id, 1, tx, rx);
	memset(m, 0, sizeof(*m));
	m->type = MSG_JOIN;
	memcpy(m->user_id, id, USER_ID_LEN);
	join_proof(tx, id, m->proof);
}

/* A tunnel that sends a valid JOIN for id, then extra bytes; returns it
 * after tun_readable has had its say.  *rx (if not NULL) gets the keys
 * the server's records on it open with. */
static struct tun *
join_new(struct run *r, int *peer, const uint8_t id[USER_ID_LEN],
         const uint8_t tunnel[KEY_LEN], const char *extra, struct seal *rx)
{
	struct seal tx, srx;
	struct msg m;
	struct tun *t = tun_new(r, peer);

	join_make(&m, id, tunnel, &tx, &srx);
	peer_send_msg(*peer, NULL, &m);
	peer_send(*peer, extra, strlen(extra));
	drive_tun(r, t);
	if (rx != NULL) {
		*rx = srx;
	}
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
	struct tun *t = tun_new(r, &r->tun_peer);

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
	check_output(r->ctl_peer, r->ctl_rx,
	             r->ctl_rx ? CTL_SENDS : CTL_SENDS_CLEAR, "control");
	check_output(r->owner_peer, &r->owner_rx, CTL_SENDS, "owner");
	if (tun_frames) {
		check_output(r->tun_peer, NULL, 1u << MSG_ERROR, "tunnel");
	}
	/* A pooled tunnel hears NEW_USER first; its user sent nothing. */
	check_output(r->park_peer[0], r->park_rx, 1u << MSG_NEW_USER,
	             "pooled tunnel");
	check_output(r->park_peer[1], NULL, 0, "refused pool tunnel");
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

/* ==== the handshake, as an honest client ================================= */

/* Say HELLO asking for port, take the CHALLENGE, and mix both, the DH
 * and the psk of token into *hs, as client.c does. */
static void
client_hello(struct run *r, struct ctl *c, struct handshake *hs, int port,
             const char *token)
{
	uint8_t psk[KEY_LEN];
	struct msg m;

	*hs = hs_template;
	memset(&m, 0, sizeof(m));
	m.type = MSG_HELLO;
	m.public_port = (uint16_t)port;
	memcpy(m.pub, hs->e_pub, KEY_LEN);
	hs_mix_msg(hs, &m);
	peer_send_msg(r->ctl_peer, NULL, &m);
	drive_ctl(r, c);
	peer_recv_msg(r->ctl_peer, NULL, &m);
	CHECK(m.type == MSG_CHALLENGE && m.version == PROTO_VERSION &&
	      !c->dead && c->state == CTL_AUTH, "HELLO got %s",
	      msg_name(m.type));
	CHECK(memcmp(m.pub, last_server_pub, KEY_LEN) != 0,
	      "the server's ephemeral key is the last connection's");
	memcpy(last_server_pub, m.pub, KEY_LEN);
	hs_mix_msg(hs, &m);
	CHECK(hs_mix_dh(hs, m.pub) == 0, "the server's key is of low order");
	psk_derive(token, strlen(token), psk);
	hs_mix_psk(hs, psk);
}

/* Seal plain[0..n) into an AUTH, send it, and open the REPLY into *m:
 * the server holds the same secret, so it must open. */
static void
client_auth(struct run *r, struct ctl *c, struct handshake *hs,
            const uint8_t *plain, size_t n, struct msg *m)
{
	uint8_t inner[SEALED_MAX];
	size_t used = 0;

	memset(m, 0, sizeof(*m));
	m->type = MSG_AUTH;
	hs_seal(hs, plain, n, m->sealed);
	m->sealed_len = (uint16_t)(n + TAG_LEN);
	peer_send_msg(r->ctl_peer, NULL, m);
	drive_ctl(r, c);
	peer_recv_msg(r->ctl_peer, NULL, m);
	CHECK(m->type == MSG_REPLY, "a sealed AUTH got %s", msg_name(m->type));
	CHECK(hs_open(hs, m->sealed, m->sealed_len, inner) == 0,
	      "the server's REPLY does not open");
	n = m->sealed_len - TAG_LEN;
	CHECK(frame_decode(inner, n, m, &used) == FRAME_OK && used == n &&
	      (m->type == MSG_WELCOME || m->type == MSG_ERROR),
	      "a REPLY that holds no WELCOME or ERROR (%zu bytes)", n);
}

/* ==== mode 1: raw bytes on the control and tunnel ports ================== */

static void
fuzz_server(unsigned flags, const uint8_t *data, size_t len)
{
	struct run r;
	struct ctl *c, *owner = NULL;
	struct handshake hs;

	run_init(&r, (flags & F_NO_TOKEN) ? "" : "secret", 0);
	if (flags & F_OWNER) {
		owner = owner_new(&r, MAIN_PORT);
	}
	if (flags & F_USERS) {
		users_new(&r, 2, &r.s.lis[ROLE_PUBLIC]);  /* with no owner: turned away */
	}
	c = ctl_new(&r, &r.ctl_peer);
	if (flags & F_AT_AUTH) {
		client_hello(&r, c, &hs, 0, r.s.token);
	}
	peer_send(r.ctl_peer, data, len);
	if (flags & F_EOF) {
		shutdown(r.ctl_peer, SHUT_WR);
	}
	drive_ctl(&r, c);
	/* Token or none, the keys need X25519 with the server's ephemeral
	 * secret, which no input holds. */
	CHECK(c->dead || c->state != CTL_ATTACHED,
	      "attached without the handshake's keys");
	CHECK(r.s.lis[ROLE_PUBLIC].owner == owner,
	      "the main port changed hands without a handshake");
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

/* Take the TICKETs a loop turn issues (want of them), park a tunnel with
 * the first, be refused with the second (bytes behind its JOIN), and bind
 * a user to the parked tunnel. */
static void
pool_setup(struct run *r, struct ctl *c, int want, int sealed)
{
	static struct msg m[POOL_MAX];
	struct tun *t;
	int i, n;

	run_timers(&r->s, now_ms());
	flush_controls(&r->s);
	n = peer_recv_msgs(r->ctl_peer, r->ctl_rx, m, POOL_MAX);
	CHECK(n == want && c->count[U_TICKET] == want,
	      "a pool of %d got %d tickets (%d issued)", want, n,
	      c->count[U_TICKET]);
	for (i = 0; i < n; i++) {
		CHECK(m[i].type == MSG_TICKET, "%s among the TICKETs",
		      msg_name(m[i].type));
	}
	t = join_new(r, &r->park_peer[0], m[0].user_id, r->ctl_keys.tunnel, "",
	             &r->park_seal);
	r->park_rx = sealed ? &r->park_seal : NULL;
	CHECK(t->dead && c->count[U_POOLED] == 1 &&
	      c->count[U_TICKET] == want - 1,
	      "a ticket's JOIN did not park: %d parked", c->count[U_POOLED]);
	if (want >= 2) {
		t = join_new(r, &r->park_peer[1], m[1].user_id, r->ctl_keys.tunnel,
		             "early", NULL);
		CHECK(t->dead && c->count[U_POOLED] == 1 &&
		      c->count[U_TICKET] == want - 1,
		      "a pool JOIN with bytes behind it parked");
	}
	users_new(r, 1, c->pub);
	CHECK(c->count[U_POOLED] == 0 && r->s.users[U_HANDED] != NULL,
	      "a user did not take the parked tunnel");
}

/* What an attached session makes of the bytes it was sent, read with
 * a copy of its key: 1 if they must end it (a record that does not open
 * or holds no one frame, or a message it does not take), else 0. */
static int
session_must_end(const uint8_t *sent, size_t len, struct seal rx)
{
	struct fbuf b = { .len = len, .cap = len, .seal = &rx };
	enum frame_result fr;
	struct msg m;
	int end = 0;

	if (len == 0) {
		return 0;
	}
	CHECK((b.data = malloc(len)) != NULL, "out of memory");
	memcpy(b.data, sent, len);
	while ((fr = fbuf_take(&b, &m)) == FRAME_OK) {
		if (!(SESSION_TAKES & (1u << m.type))) {
			end = 1;
			break;
		}
	}
	free(b.data);
	return end || fr == FRAME_BAD;
}

static void
drive_ctl_cb(void *arg)
{
	struct run *r = arg;

	drive_ctl(r, r->s.ctls);
}

static void
fuzz_session(unsigned x, unsigned flags, unsigned opts, const uint8_t *data,
             size_t len)
{
	static struct script sc;
	struct run r;
	struct ctl *c, *owner = NULL;
	struct user *theirs = NULL;
	struct pub *owner_own = NULL;
	struct handshake hs;
	struct seal tx, model;
	struct msg m, a;
	uint8_t plain[SEALED_MAX];
	size_t n, used = 0, sent;
	int ports = (opts & O_PORTS) != 0, attached = 0, valid;
	int want = asked_port(opts), got, offered, held, owner_port = 0, other, any;

	run_init(&r, (flags & F_NO_TOKEN) ? "" : "secret", ports);
	r.s.plaintext = (x & X_SRV_PLAIN) != 0;
	if (flags & F_OWNER) {
		owner = owner_new(&r, ports && (opts & O_OWNER_LO) ? lo_port
		                                                  : MAIN_PORT);
		if (owner != NULL && (flags & F_USERS)) {
			uint8_t id[USER_ID_LEN];
			struct tun *t;

			users_new(&r, 2, owner->pub);  /* gone if it's replaced */
			user_id(0, id);
			t = join_new(&r, &r.join_peer, id, owner->keys.tunnel, "",
			             NULL);
			CHECK(t->dead && r.s.users[U_RELAYING] != NULL,
			      "the owner's JOIN failed");
			theirs = r.s.users[U_RELAYING];
		}
		if (owner != NULL) {
			owner_own = owner->own;
			owner_port = owner->pub->port;
		}
	}
	c = ctl_new(&r, &r.ctl_peer);
	client_hello(&r, c, &hs, want, r.s.token);

	/* The ATTACH: the harness's, or the input's first bytes. */
	memset(&a, 0, sizeof(a));
	a.type = MSG_ATTACH;
	memcpy(a.run_id, (flags & F_OTHER_RUN) ? other_run_id : owner_run_id,
	       RUN_ID_LEN);
	a.pool = (opts & O_POOL) ? POOL_ASK : 0;
	a.flags = (x & X_CLI_PLAIN) ? FLAG_PLAINTEXT : 0;
	if (opts & O_RAW_ATTACH) {
		n = len > 0 ? data[0] : 0;
		n = n < len - (len > 0) ? n : len - (len > 0);
		n = n < SEALED_MAX - TAG_LEN ? n : SEALED_MAX - TAG_LEN;
		memcpy(plain, data + 1, n);
		data += len > 0 ? 1 + n : 0;
		len -= len > 0 ? 1 + n : 0;
		valid = frame_decode(plain, n, &a, &used) == FRAME_OK &&
		        a.type == MSG_ATTACH && used == n;
	} else {
		n = frame_encode(plain, &a);
		valid = 1;
	}
	client_auth(&r, c, &hs, plain, n, &m);

	/* What the rules say the answer must be. */
	got = want != 0 ? want : MAIN_PORT;
	offered = got == MAIN_PORT ||
	          (ports && got >= lo_port && got <= lo_port + 1);
	held = owner != NULL && owner_port == got;
	other = memcmp(a.run_id, owner_run_id, RUN_ID_LEN) != 0;
	/* Any free port: judged by the port it got, which must be one of
	 * -ports that is not another run's. */
	any = valid && (a.flags & FLAG_ANY_PORT) != 0;
	if (any && m.type == MSG_WELCOME) {
		got = m.public_port;
		offered = ports && got >= lo_port && got <= lo_port + 1;
		held = owner != NULL && owner_port == got;
	}
	if (!valid) {
		CHECK(m.type == MSG_ERROR && m.code == ERR_PROTO && c->dead,
		      "a malformed ATTACH got %s", msg_name(m.type));
	} else if ((a.flags & FLAG_PLAINTEXT) && !r.s.plaintext) {
		CHECK(m.type == MSG_ERROR && m.code == ERR_PLAINTEXT && c->dead,
		      "plaintext asked, not allowed, got %s", msg_name(m.type));
	} else if (any && !ports) {
		CHECK(m.type == MSG_ERROR && m.code == ERR_PORT && c->dead,
		      "any port asked, no -ports, got %s", msg_name(m.type));
	} else if (any && m.type == MSG_ERROR) {
		CHECK(m.code == ERR_BUSY && c->dead, "any port asked: code %u",
		      m.code);
	} else if (!offered) {
		CHECK(m.type == MSG_ERROR && m.code == ERR_PORT && c->dead,
		      "port %d, not offered, got %s", got, msg_name(m.type));
	} else if (held && other) {
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
		      m.public_port == got && m.heartbeat_s == DEFAULT_HEARTBEAT_S &&
		      m.flags == (a.flags & FLAG_PLAINTEXT),
		      "WELCOME %u %u %u flags %u", m.tunnel_port, m.public_port,
		      m.heartbeat_s, m.flags);
		hs_split(&hs, 1, &r.ctl_keys);
		r.ctl_rx = &r.ctl_keys.rx;
		attached = 1;
		CHECK(memcmp(c->keys.rx.key, r.ctl_keys.tx.key, KEY_LEN) == 0 &&
		      memcmp(c->keys.tx.key, r.ctl_keys.rx.key, KEY_LEN) == 0 &&
		      memcmp(c->keys.tunnel, r.ctl_keys.tunnel, KEY_LEN) == 0,
		      "the session keys differ from the client's");
		{
			int cap = a.pool < POOL_MAX ? a.pool : POOL_MAX;
			int want = (a.flags & FLAG_POOL_AUTO) && cap > POOL_FLOOR
			           ? POOL_FLOOR : cap;
			CHECK(c->pool_want == want && c->pool_cap == cap,
			      "a pool of %u asked (flags %u), %d of %d kept", a.pool,
			      a.flags, c->pool_want, c->pool_cap);
		}
		if (held) {
			CHECK(owner->dead && c->own == owner_own,
			      "a reconnect did not take over its old session");
		}
		if (got != MAIN_PORT) {
			CHECK(c->own != NULL && c->own->nfd > 0,
			      "port %d has no listener", got);
		}
		if (c->pool_want > 0) {
			pool_setup(&r, c, c->pool_want, !c->plaintext);
		}
		if ((flags & F_USERS) && !held) {
			users_new(&r, 2, c->pub);
		}
		if (opts & O_DIAL) {
			dial_user(&r, c);
		}
	}

	/* The script, sealed as the session's next records (or as raw
	 * bytes on a connection already refused). */
	tx = r.ctl_keys.tx;
	model = tx;
	script_build(&sc, attached ? &tx : NULL, data, len);
	sent = script_send(r.ctl_peer, &sc, drive_ctl_cb, &r);
	if (flags & F_EOF) {
		shutdown(r.ctl_peer, SHUT_WR);
	}
	drive_ctl(&r, c);
	if (attached && session_must_end(sc.buf, sent, model)) {
		CHECK(c->dead, "a session took a bad record or a message it "
		      "does not take");
	} else if (attached && !(flags & F_EOF)) {
		CHECK(!c->dead, "a session ended on records it takes");
	}
	/* Another client may name the owner's user, but not end it. */
	if (!KNOWN_BUG_PAIR_FAIL && theirs != NULL && other) {
		CHECK(theirs->state == U_RELAYING, "a USER_FAILED from another "
		      "session closed the owner's user");
	}
	tunnel_feed(&r, data, len, flags);
	run_finish(&r, flags | ((opts & O_DIAL) ? F_PUMP : 0), 1);
}

/* ==== mode 3: a join, and the relay behind it ============================ */

/* What the server must make of the stream sent on a sealed tunnel, read
 * with a copy of its key: the plaintext it passes on (into plain), and
 * whether that stream ended (an empty record) or broke (a record that
 * does not open, or a FIN before the end). */
struct stream {
	size_t len;
	int ended, broken;
	int after_end;       /* bytes came after the end record */
	int lazy;            /* broken at its first header: see
	                      * KNOWN_BUG_LAZY_FEED */
};

static void
tunnel_model(const uint8_t *sent, size_t len, struct seal rx, int fin,
             uint8_t *plain, struct stream *st)
{
	uint8_t *buf;
	size_t off = 0, used, plen;
	enum frame_result fr;

	memset(st, 0, sizeof(*st));
	CHECK((buf = malloc(len + 1)) != NULL, "out of memory");
	memcpy(buf, sent, len);
	/* Bytes after the end record are not the user's, whatever the
	 * server makes of them. */
	while (off < len && !st->ended) {
		fr = record_open(&rx, buf + off, len - off, &used, &plen);
		if (fr == FRAME_MORE) {
			break;
		}
		if (fr == FRAME_BAD) {
			st->broken = 1;
			st->lazy = KNOWN_BUG_LAZY_FEED && off == 0 && !fin &&
			           wire_get16(buf) > RECORD_MAX;
			break;
		}
		memcpy(plain + st->len, buf + off + RECORD_HDR, plen);
		st->len += plen;
		st->ended = plen == 0;
		off += used;
	}
	st->after_end = st->ended && off < len;
	if (fin && !st->ended) {
		st->broken = 1;
	}
	free(buf);
}

/* What the relay mode knows about its run, for the pauses in a
 * script. */
struct relay_run {
	struct run *r;
	struct tun *t;
	struct user *u;
	int good, joined;
};

/* The JOIN (and what came with it) is read: the user must relay after a
 * good one and still wait after a wrong one.  Nothing has been swept
 * yet, so u is still the user the JOIN named. */
static void
relay_join(struct relay_run *rr)
{
	struct user *u = rr->u;

	if (rr->joined) {
		return;
	}
	rr->joined = 1;
	drive_tun(rr->r, rr->t);
	CHECK(rr->t->dead, "the tunnel is still waiting after its JOIN");
	CHECK(rr->good ? u->state == U_RELAYING
	               : u->state == U_WAITING && u->sess->count[U_WAITING] == 1,
	      "a %s JOIN: user %s", rr->good ? "valid" : "wrong",
	      u->state == U_RELAYING ? "relaying" : "not relaying");
}

static void
relay_pause(void *arg)
{
	struct relay_run *rr = arg;

	if (!rr->joined) {
		relay_join(rr);
	} else {
		pump(rr->r);
	}
}

/* What the user's and the tunnel's peers read. */
static uint8_t user_got[FUZZ_OUT_MAX], tun_got[FUZZ_OUT_MAX];

/* Read all the server sends the user and the tunnel, turning its loop
 * between reads: a sealed tunnel's every record goes to the user in a
 * send of its own, which a Unix socket counts whole, so a few hundred
 * small ones fill it and the server holds the rest until the reader makes
 * room.  *eof as peer_recv says, once nothing more comes. */
static void
settle(struct run *r, size_t *ulen, int *ueof, size_t *tlen, int *teof)
{
	size_t n, m;

	*ulen = *tlen = 0;
	do {
		n = peer_recv(r->user_peer[0], user_got + *ulen,
		              sizeof(user_got) - *ulen, ueof);
		m = peer_recv(r->tun_peer, tun_got + *tlen,
		              sizeof(tun_got) - *tlen, teof);
		*ulen += n;
		*tlen += m;
		if (n > 0 || m > 0) {
			pump(r);
		}
	} while (n > 0 || m > 0);
}

/* Everything the user sent must reach the tunnel, in order and
 * unchanged, and the tunnel's stream the user; a sealed tunnel's records
 * must all open, a pooled one's first holding the NEW_USER. */
static void
check_relayed(struct run *r, const uint8_t *data, size_t len, int fin,
              const uint8_t *want, const struct stream *st, struct seal *rx,
              int pooled)
{
	struct opened o;
	struct msg m;
	size_t got, tgot, used = 0;
	int eof;

	settle(r, &got, &eof, &tgot, &o.eof);

	/* The tunnel's stream, at the user. */
	CHECK(got == st->len && memcmp(user_got, want, got) == 0,
	      "the user got %zu bytes, want %zu%s", got, st->len,
	      got == st->len ? " (contents differ)" : "");
	CHECK((eof != 0) == (st->ended || st->broken) || st->lazy,
	      "the user's side %s, though the tunnel's stream %s",
	      eof ? "ended" : "is open",
	      st->broken ? "broke" : st->ended ? "ended" : "goes on");

	/* The user's bytes, at the tunnel. */
	if (rx == NULL) {
		if (pooled) {
			CHECK(frame_decode(tun_got, tgot, &m, &used) == FRAME_OK &&
			      m.type == MSG_NEW_USER, "a pooled tunnel's first frame "
			      "is not a NEW_USER");
		}
		CHECK(tgot - used == len && memcmp(tun_got + used, data, len) == 0,
		      "the tunnel got %zu bytes, want %zu", tgot - used, len);
		CHECK((o.eof != 0) == (fin != 0), "the tunnel's side %s",
		      o.eof ? "ended" : "is open");
		return;
	}
	records_open(tun_got, tgot, rx, pooled ? &m : NULL, &o, "tunnel");
	if (pooled) {
		CHECK(m.type == MSG_NEW_USER, "a pooled tunnel's first record "
		      "holds %s", msg_name(m.type));
	}
	CHECK(o.len <= len && memcmp(tun_got, data, o.len) == 0 &&
	      (!o.ended || o.len == len),
	      "the tunnel got %zu bytes%s, not the user's %zu", o.len,
	      o.ended ? " and the end" : "", len);
	if (st->broken) {
		CHECK(o.eof != 0 || st->lazy, "the relay broke, but the tunnel "
		      "is open");
	} else if (!st->after_end || o.eof == 0) {
		/* (Bytes after the end may break the relay, or go unread.) */
		CHECK(o.len == len && o.ended == (fin != 0) &&
		      (o.eof != 0) == (fin != 0),
		      "the tunnel got %zu of %zu bytes, %s end, %s", o.len, len,
		      o.ended ? "an" : "no", o.eof ? "closed" : "open");
	}
}

static void
fuzz_relay(unsigned x, unsigned flags, const uint8_t *data, size_t len)
{
	static struct script sc;
	static uint8_t want[SCRIPT_MAX];
	struct relay_run rr = { 0 };
	struct run r;
	struct ctl *owner;
	struct stream st;
	struct seal tx, rx, model;
	struct msg m;
	uint8_t id[USER_ID_LEN];
	int plain = (x & X_CLI_PLAIN) != 0, pooled = (x & X_POOL) != 0;
	int fin = (flags & F_EOF) != 0;
	size_t sent;

	rr.r = &r;
	rr.good = !(flags & F_BAD_JOIN);
	run_init(&r, "secret", 0);
	r.s.plaintext = plain;
	owner = owner_new(&r, MAIN_PORT);
	owner->plaintext = plain;
	if (pooled) {
		/* A ticket, as a session asking for a pool of one gets. */
		owner->pool_want = 1;
		run_timers(&r.s, now_ms());
		flush_controls(&r.s);
		CHECK(peer_recv_msgs(r.owner_peer, &r.owner_rx, &m, 1) == 1 &&
		      m.type == MSG_TICKET, "a pool of one got no TICKET");
		memcpy(id, m.user_id, USER_ID_LEN);
	} else {
		users_new(&r, 1, owner->pub);
		rr.u = r.s.users[U_WAITING];
		CHECK(rr.u != NULL && rr.u->sess == owner, "no waiting user");
		user_id(0, id);
	}

	rr.t = tun_new(&r, &r.tun_peer);
	join_make(&m, id, owner->keys.tunnel, &tx, &rx);
	if (!rr.good) {
		m.proof[len % TAG_LEN] ^= 1;
	}
	peer_send_msg(r.tun_peer, NULL, &m);
	model = tx;
	script_build(&sc, plain ? NULL : &tx, data, len);
	if (pooled) {
		/* A pool JOIN parks only with nothing behind it; then a user
		 * takes the tunnel, and its NEW_USER goes down it. */
		drive_tun(&r, rr.t);
		CHECK(rr.t->dead && (rr.good ? owner->count[U_POOLED] == 1
		                             : owner->count[U_TICKET] == 1),
		      "a %s pool JOIN: %d parked", rr.good ? "valid" : "wrong",
		      owner->count[U_POOLED]);
		users_new(&r, 1, owner->pub);
		rr.u = r.s.users[rr.good ? U_HANDED : U_WAITING];
		CHECK(rr.u != NULL, "no user for the pooled tunnel");
		rr.joined = 1;
	}
	peer_send(r.user_peer[0], data, len);
	sent = script_send(r.tun_peer, &sc, relay_pause, &rr);
	if (fin) {
		shutdown(r.tun_peer, SHUT_WR);
		shutdown(r.user_peer[0], SHUT_WR);
	}
	relay_join(&rr);
	pump(&r);
	if (rr.good) {
		if (plain) {
			memcpy(want, sc.buf, sent);
			st.len = sent;
			st.ended = fin;
			st.broken = st.after_end = 0;
		} else {
			tunnel_model(sc.buf, sent, model, fin, want, &st);
		}
		check_relayed(&r, data, len, fin, want, &st, plain ? NULL : &rx,
		              pooled);
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
	hs_init(&hs_template);
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
		fuzz_session(data[0], data[1], data[2], data + 3, size - 3);
	} else if (size >= 2 && data[0] % 4 == 3) {
		fuzz_relay(data[0], data[1], data + 2, size - 2);
	}
	return 0;
}
