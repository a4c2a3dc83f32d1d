/*
 * libFuzzer target for the frame codec and the server's handshake state
 * machines.  Build and run with `make fuzz` and `make fuzz-run`.
 *
 * The first input byte picks a mode (byte % 4), the rest is the mode's:
 *
 *   0 codec   decode frames in sequence; check round trips, that *used
 *             stays in bounds, and that the verdict over growing prefixes
 *             is MORE... then OK or BAD, and never changes after that.
 *   1 server  byte 1 is flags (F_* below), the rest is what a peer sends:
 *             first on a control connection (ctl_arrive + ctl_readable),
 *             then the same bytes on a tunnel connection (tun_arrive +
 *             tun_readable).
 *   2 session the harness itself says HELLO, reads the CHALLENGE, proves
 *             the token in AUTH and checks the WELCOME; byte 1 is flags,
 *             the rest then arrives on the attached session (PING,
 *             USER_FAILED, strays).  The same bytes then hit a tunnel.
 *   3 relay   an attached owner with one waiting user; the harness sends
 *             a valid JOIN (or, with F_BAD_JOIN, a wrong one) followed by
 *             the rest, and the user's side sends the rest too.  Both
 *             peers must receive exactly the other's bytes.
 *
 * server.c is compiled in (its main renamed), so its statics are
 * reachable.  Every run builds a fresh struct server over socketpairs,
 * frees it with server_free, and then checks that every descriptor it
 * made is closed again: LeakSanitizer covers memory, this covers fds.
 * Whatever the server writes to a control or tunnel peer must decode as
 * well-formed frames of a type the server may send.
 *
 * DIALBACK_FUZZ_LOG=1 in the environment keeps the server's log lines,
 * which helps when replaying a crash: ./tests/fuzz crash-...
 */
#define main server_main
#include "../server.c"
#undef main

#include <signal.h>

/* ==== checking =========================================================== */

#define CHECK(cond, ...)                                                \
	do {                                                            \
		if (!(cond)) {                                          \
			fprintf(stderr, "fuzz: %s:%d: check failed: %s: ", \
			        __FILE__, __LINE__, #cond);             \
			fprintf(stderr, __VA_ARGS__);                   \
			fputc('\n', stderr);                            \
			abort();                                        \
		}                                                       \
	} while (0)

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
		if (r == FRAME_MORE) {
			/* No frame is longer than this, so more can't help. */
			CHECK(rest < FRAME_HDR + FRAME_MAX,
			      "MORE with %zu bytes in hand", rest);
		}
		check_prefixes(p, rest, r, used, &m);
		if (r != FRAME_OK) {
			return;
		}
		CHECK(used >= FRAME_HDR && used <= rest &&
		      used <= FRAME_HDR + FRAME_MAX, "used %zu of %zu", used, rest);
		CHECK(m.type == p[0], "type %u from byte %u", m.type, p[0]);
		if (m.type == MSG_HELLO || m.type == MSG_CHALLENGE) {
			CHECK(m.version != 0 || used >= FRAME_HDR + PROTO_MAGIC_LEN + 1,
			      "versioned frame too short");
			if (m.version != PROTO_VERSION) {
				off += used;
				continue;
			}
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
		off += used;
	}
}

/* ==== the server under test ============================================== */

enum {
	F_OWNER = 1 << 0,     /* an attached session already owns the port */
	F_USERS = 1 << 1,     /* users wait for a join (ids USER_A, USER_B) */
	F_NO_TOKEN = 1 << 2,  /* the server has no token: any proof passes */
	F_EOF = 1 << 3,       /* peers shut down writing after their bytes */
	F_TIMERS = 3 << 4,    /* 0 none, then: ping due, handshake late, all late */
	F_PUMP = 1 << 6,      /* finish with turns of the real poll loop */
	F_OTHER_RUN = 1 << 7, /* mode 2: another client process (busy, no replace);
	                       * mode 3: a JOIN with a wrong proof */
};
#define F_BAD_JOIN F_OTHER_RUN

#define MAX_FDS     32
#define OUT_MAX     (256 * 1024)
#define PUMP_TURNS  256

static const uint8_t owner_run_id[RUN_ID_LEN] = "ownerrun";
static const uint8_t other_run_id[RUN_ID_LEN] = "otherrun";
static const uint8_t user_ids[2][USER_ID_LEN] = {
	{ 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
	  0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11 },
	{ 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
	  0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22 },
};
/* The pre-made owner's session key: fixed, so seeds can carry a valid
 * JOIN (HMAC(key, "dialback join" id)) for the mode-1 tunnel. */
#define OWNER_KEY_BYTE 0x42
static const uint8_t client_nonce[NONCE_LEN] = "fuzz cli nonce!";

/* Messages the server may send on a control connection. */
#define CTL_SENDS ((1u << MSG_CHALLENGE) | (1u << MSG_WELCOME) |        \
                   (1u << MSG_ERROR) | (1u << MSG_PING) |               \
                   (1u << MSG_PONG) | (1u << MSG_NEW_USER))

/* One run: the server, and the harness's ends of its connections. */
struct run {
	struct server s;
	int made[MAX_FDS];            /* every descriptor made this run */
	int nmade;
	int ctl_peer, tun_peer, owner_peer, user_peer[2];
	struct sockaddr_in sin;
};

static uint8_t outbuf[OUT_MAX];

/* A connected pair, both ends non-blocking: *mine is the server's. */
static void
conn_new(struct run *r, int *mine, int *peer)
{
	int sv[2];

	CHECK(r->nmade + 2 <= MAX_FDS, "too many descriptors");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair: %s",
	      strerror(errno));
	CHECK(set_nonblock(sv[0]) == 0 && set_nonblock(sv[1]) == 0,
	      "set_nonblock: %s", strerror(errno));
	r->made[r->nmade++] = sv[0];
	r->made[r->nmade++] = sv[1];
	*mine = sv[0];
	*peer = sv[1];
}

static void
run_init(struct run *r, const char *token)
{
	memset(r, 0, sizeof(*r));
	r->s.token = token;
	r->s.heartbeat_s = DEFAULT_HEARTBEAT_S;
	r->s.port[ROLE_CONTROL] = DEFAULT_CONTROL_PORT;
	r->s.port[ROLE_TUNNEL] = DEFAULT_TUNNEL_PORT;
	r->s.port[ROLE_PUBLIC] = DEFAULT_PUBLIC_PORT;
	r->s.sig_fd = -1;
	r->s.spare_fd = -1;
	r->ctl_peer = r->tun_peer = r->owner_peer = -1;
	r->user_peer[0] = r->user_peer[1] = -1;
	r->sin.sin_family = AF_INET;
	r->sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r->sin.sin_port = htons(40000);
}

static const struct sockaddr *
run_sa(struct run *r)
{
	return (const struct sockaddr *)&r->sin;
}

/* Send what the socket takes; a peer the server already dropped just
 * loses the rest. */
static void
peer_send(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return;
		}
		p += n;
		len -= (size_t)n;
	}
}

static void
peer_send_msg(int fd, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];

	peer_send(fd, frame, frame_encode(frame, m));
}

/* Read all that is waiting; *eof says the server's end is closed or shut. */
static size_t
peer_recv(int fd, uint8_t *buf, size_t cap, int *eof)
{
	size_t got = 0;

	*eof = 0;
	while (got < cap) {
		ssize_t n = read(fd, buf + got, cap - got);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n == 0) {
			*eof = 1;
		}
		if (n <= 0) {
			break;
		}
		got += (size_t)n;
	}
	return got;
}

/* What the server wrote to a control or tunnel peer must be whole,
 * well-formed frames of the kinds in allowed. */
static void
check_output(int fd, unsigned allowed, const char *who)
{
	size_t len, off = 0, used;
	struct msg m;
	int eof;

	if (fd < 0) {
		return;
	}
	len = peer_recv(fd, outbuf, sizeof(outbuf), &eof);
	while (off < len) {
		enum frame_result r = frame_decode(outbuf + off, len - off, &m,
		                                   &used);
		CHECK(r == FRAME_OK, "server sent a %s frame to the %s peer at "
		      "byte %zu of %zu (first byte 0x%02x)",
		      r == FRAME_MORE ? "truncated" : "malformed", who, off, len,
		      outbuf[off]);
		CHECK(m.type < 32 && (allowed & (1u << m.type)),
		      "server sent %s to the %s peer", msg_name(m.type), who);
		if (m.type == MSG_CHALLENGE) {
			CHECK(m.version == PROTO_VERSION, "CHALLENGE version %u",
			      m.version);
		}
		if (m.type == MSG_ERROR) {
			CHECK(m.code >= 1 && m.code < ERR_CODE_END, "ERROR code %u",
			      m.code);
		}
		off += used;
	}
}

/* An attached session owning the public port, as if it had shaken hands. */
static struct ctl *
owner_new(struct run *r)
{
	int fd;
	struct ctl *c;

	conn_new(r, &fd, &r->owner_peer);
	ctl_arrive(&r->s, fd, run_sa(r));
	c = r->s.ctls;
	CHECK(c != NULL && c->fd == fd, "ctl_arrive made no ctl");
	c->state = CTL_ATTACHED;
	memcpy(c->run_id, owner_run_id, RUN_ID_LEN);
	memset(c->key, OWNER_KEY_BYTE, PROOF_LEN);
	c->last_rx = now_ms();
	c->next_ping = c->last_rx + r->s.heartbeat_s * 1000;
	r->s.owner = c;
	return c;
}

/* Users arrive on the public port for whichever session owns it; their
 * ids are then fixed so fuzz input can name them. */
static void
users_new(struct run *r, int n)
{
	int i, fd;

	for (i = 0; i < n; i++) {
		conn_new(r, &fd, &r->user_peer[i]);
		user_arrive(&r->s, fd, run_sa(r));
		if (r->s.users != NULL && r->s.users->fd == fd) {
			memcpy(r->s.users->id, user_ids[i], USER_ID_LEN);
		}
	}
	flush_controls(&r->s);
}

/* Call ctl_readable as poll would, until the ctl dies or has nothing
 * more to read; flush what it queued, as the loop does each turn. */
static void
drive_ctl(struct run *r, struct ctl *c)
{
	int i;

	for (i = 0; i < 64 && !c->dead; i++) {
		struct pollfd p = { .fd = c->fd, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0) {
			break;
		}
		ctl_readable(&r->s, c);
		flush_controls(&r->s);
	}
}

static void
drive_tun(struct run *r, struct tun *t)
{
	int i;

	for (i = 0; i < 64 && !t->dead; i++) {
		struct pollfd p = { .fd = t->fd, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0) {
			break;
		}
		tun_readable(&r->s, t);
	}
}

/* Turns of serve()'s loop with a zero timeout, until nothing is ready.
 * It must go quiet: a descriptor that stays ready while nothing moves is
 * the busy loop STYLE.md warns about. */
static void
pump(struct run *r)
{
	int i;

	for (i = 0; i < PUMP_TURNS; i++) {
		size_t n;
		int rc;

		flush_controls(&r->s);
		sweep(&r->s);
		n = build_pollset(&r->s, now_ms());
		rc = poll(r->s.pfd, (nfds_t)n, 0);
		CHECK(rc >= 0, "poll: %s", strerror(errno));
		if (rc == 0) {
			return;
		}
		CHECK(dispatch(&r->s, n) == 0, "dispatch saw the signal pipe");
		flush_controls(&r->s);
	}
	CHECK(0, "the poll loop was still busy after %d turns", PUMP_TURNS);
}

/* Run the timers as if time had moved on: to the first ping, past the
 * handshake deadline, or past every deadline. */
static void
expire(struct run *r, unsigned which)
{
	int64_t hb = (int64_t)r->s.heartbeat_s * 1000, later[4] = {
		0, hb, HANDSHAKE_MS, hb * DEAD_AFTER_BEATS + JOIN_WAIT_MS,
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

	conn_new(r, &fd, &r->tun_peer);
	tun_arrive(&r->s, fd, run_sa(r));
	t = r->s.tuns;
	CHECK(t != NULL && t->fd == fd, "tun_arrive made no tun");
	peer_send(r->tun_peer, data, len);
	if (flags & F_EOF) {
		shutdown(r->tun_peer, SHUT_WR);
	}
	drive_tun(r, t);
}

/* Check the peers' output, free the server, close the harness's ends, and
 * make sure every descriptor of the run is closed. */
static void
run_finish(struct run *r, int tun_frames)
{
	int i;

	check_output(r->ctl_peer, CTL_SENDS, "control");
	check_output(r->owner_peer, CTL_SENDS, "owner");
	if (tun_frames) {
		check_output(r->tun_peer, 1u << MSG_ERROR, "tunnel");
	}
	server_free(&r->s);
	close_fd(&r->ctl_peer);
	close_fd(&r->tun_peer);
	close_fd(&r->owner_peer);
	close_fd(&r->user_peer[0]);
	close_fd(&r->user_peer[1]);
	for (i = 0; i < r->nmade; i++) {
		errno = 0;
		CHECK(fcntl(r->made[i], F_GETFD) < 0 && errno == EBADF,
		      "descriptor %d is still open after server_free", r->made[i]);
	}
}

/* ==== mode 1: raw bytes on the control and tunnel ports ================== */

static void
fuzz_server(unsigned flags, const uint8_t *data, size_t len)
{
	struct run r;
	struct ctl *c, *owner = NULL;
	int fd;

	run_init(&r, (flags & F_NO_TOKEN) ? "" : "secret");
	if (flags & F_OWNER) {
		owner = owner_new(&r);
	}
	if (flags & F_USERS) {
		users_new(&r, 2);      /* with no owner they are turned away */
	}
	conn_new(&r, &fd, &r.ctl_peer);
	ctl_arrive(&r.s, fd, run_sa(&r));
	c = r.s.ctls;
	CHECK(c != NULL && c->fd == fd, "ctl_arrive made no ctl");
	peer_send(r.ctl_peer, data, len);
	if (flags & F_EOF) {
		shutdown(r.ctl_peer, SHUT_WR);
	}
	drive_ctl(&r, c);
	/* Without the nonce the server picked, no input can hold the proof. */
	if (!(flags & F_NO_TOKEN)) {
		CHECK(c->dead || c->state != CTL_ATTACHED,
		      "attached without proving the token");
		CHECK(owner == NULL || r.s.owner == owner,
		      "the owner was replaced without a proof");
	}
	tunnel_feed(&r, data, len, flags);
	expire(&r, (flags & F_TIMERS) >> 4);
	if (flags & F_PUMP) {
		pump(&r);
	}
	run_finish(&r, 1);
}

/* ==== mode 2: an attached session ======================================== */

/* Read the server's answer on the control peer: one frame, whole. */
static void
read_reply(struct run *r, struct msg *m)
{
	size_t len, used = 0;
	int eof;

	len = peer_recv(r->ctl_peer, outbuf, sizeof(outbuf), &eof);
	CHECK(frame_decode(outbuf, len, m, &used) == FRAME_OK && used == len,
	      "expected one whole frame, got %zu bytes", len);
}

static void
fuzz_session(unsigned flags, const uint8_t *data, size_t len)
{
	struct run r;
	struct ctl *c, *owner = NULL;
	struct msg m;
	uint8_t key[PROOF_LEN];
	int fd, busy;

	run_init(&r, (flags & F_NO_TOKEN) ? "" : "secret");
	if (flags & F_OWNER) {
		owner = owner_new(&r);
		if (flags & F_USERS) {
			users_new(&r, 2);  /* the owner's: closed if it's replaced */
		}
	}
	busy = owner != NULL && (flags & F_OTHER_RUN);
	conn_new(&r, &fd, &r.ctl_peer);
	ctl_arrive(&r.s, fd, run_sa(&r));
	c = r.s.ctls;
	CHECK(c != NULL && c->fd == fd, "ctl_arrive made no ctl");

	memset(&m, 0, sizeof(m));
	m.type = MSG_HELLO;
	memcpy(m.nonce, client_nonce, NONCE_LEN);
	memcpy(m.run_id, (flags & F_OTHER_RUN) ? other_run_id : owner_run_id,
	       RUN_ID_LEN);
	peer_send_msg(r.ctl_peer, &m);
	drive_ctl(&r, c);
	read_reply(&r, &m);
	CHECK(m.type == MSG_CHALLENGE && m.version == PROTO_VERSION &&
	      !c->dead && c->state == CTL_AUTH, "HELLO got %s",
	      msg_name(m.type));

	memcpy(c->sn, c->sn, 0);
	key_auth_proof(r.s.token, client_nonce, m.nonce, m.proof);
	key_session(r.s.token, client_nonce, m.nonce, key);
	m.type = MSG_AUTH;
	peer_send_msg(r.ctl_peer, &m);
	drive_ctl(&r, c);
	read_reply(&r, &m);
	if (busy) {
		CHECK(m.type == MSG_ERROR && m.code == ERR_BUSY && c->dead &&
		      r.s.owner == owner, "a second client got %s",
		      msg_name(m.type));
	} else {
		CHECK(m.type == MSG_WELCOME && !c->dead &&
		      c->state == CTL_ATTACHED && r.s.owner == c,
		      "a valid AUTH got %s", msg_name(m.type));
		CHECK(m.tunnel_port == DEFAULT_TUNNEL_PORT &&
		      m.public_port == DEFAULT_PUBLIC_PORT &&
		      m.heartbeat_s == DEFAULT_HEARTBEAT_S,
		      "WELCOME %u %u %u", m.tunnel_port, m.public_port,
		      m.heartbeat_s);
		CHECK(memcmp(c->key, key, PROOF_LEN) == 0,
		      "the session key differs from the client's");
		CHECK(owner == NULL || owner->dead,
		      "the old session outlived its reconnect");
		if ((flags & F_USERS) && owner == NULL) {
			users_new(&r, 2);
		}
	}

	peer_send(r.ctl_peer, data, len);
	if (flags & F_EOF) {
		shutdown(r.ctl_peer, SHUT_WR);
	}
	drive_ctl(&r, c);
	tunnel_feed(&r, data, len, flags);
	expire(&r, (flags & F_TIMERS) >> 4);
	if (flags & F_PUMP) {
		pump(&r);
	}
	run_finish(&r, 1);
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

	got = peer_recv(fd, outbuf, sizeof(outbuf), &eof);
	CHECK(got == len && memcmp(outbuf, want, len) == 0,
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

	run_init(&r, "secret");
	owner = owner_new(&r);
	users_new(&r, 1);
	u = r.s.users;
	CHECK(u != NULL && !u->dead && u->sess == owner, "no waiting user");

	conn_new(&r, &fd, &r.tun_peer);
	tun_arrive(&r.s, fd, run_sa(&r));
	t = r.s.tuns;
	memset(&m, 0, sizeof(m));
	m.type = MSG_JOIN;
	memcpy(m.user_id, user_ids[0], USER_ID_LEN);
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
	CHECK(good ? u->dead && r.s.pairs != NULL
	           : !u->dead && r.s.pairs == NULL && owner->pending == 1,
	      "a %s JOIN: user %s, %s pair", good ? "valid" : "wrong",
	      u->dead ? "gone" : "waiting", r.s.pairs ? "a" : "no");
	pump(&r);
	if (good) {
		check_relayed(r.user_peer[0], data, len, flags & F_EOF, "user");
		check_relayed(r.tun_peer, data, len, flags & F_EOF, "tunnel");
	}
	run_finish(&r, 0);
}

/* ==== entry points ======================================================= */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	uint8_t b;

	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	log_set_level(getenv("DIALBACK_FUZZ_LOG") ? LOG_VERBOSE : LOG_QUIET);
	/* random_bytes keeps /dev/urandom open from its first call; make
	 * that call now, so the descriptor check sees no newcomer. */
	random_bytes(&b, 1);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned flags;

	if (size < 1) {
		return 0;
	}
	/* Everything fits the socket buffers with room to spare, so the
	 * harness never blocks on a peer that isn't read. */
	if (size > 8192) {
		size = 8192;
	}
	if (data[0] % 4 == 0) {
		fuzz_codec(data + 1, size - 1);
		return 0;
	}
	if (size < 2) {
		return 0;
	}
	flags = data[1];
	switch (data[0] % 4) {
	case 1:
		fuzz_server(flags, data + 2, size - 2);
		break;
	case 2:
		fuzz_session(flags, data + 2, size - 2);
		break;
	default:
		fuzz_relay(flags, data + 2, size - 2);
		break;
	}
	return 0;
}
