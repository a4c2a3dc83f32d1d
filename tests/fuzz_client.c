/*
 * libFuzzer target for the client's side of the control connection and
 * its tunnels: what it does with whatever a server (or something posing
 * as one) sends.  Built and run by `make fuzz` and `make fuzz-run` with
 * tests/fuzz.c.
 *
 * Byte 0 is flags (F_* below), byte 1 options (O_* below); the rest
 * arrives from the "server".  The client is set up as its main() would,
 * over a socketpair, and enters the handshake through ctl_connected, so
 * it sends its real HELLO.  Then, by what comes first:
 *
 *   - nothing: the bytes arrive raw where the CHALLENGE goes;
 *   - O_AT_REPLY: the harness answers with a CHALLENGE, opens the AUTH
 *     and checks its ATTACH; the bytes arrive raw where the REPLY goes;
 *   - O_RAW_REPLY: the same, but the REPLY seals the input's first [n u8]
 *     bytes (a WELCOME's tunnel port made the harness's), and the client
 *     must attach, retry or stop as that says; the rest is a script;
 *   - F_ATTACH: the harness plays a good server (CHALLENGE, AUTH checked,
 *     a sealed WELCOME); the rest is a script (fuzzlib.h) sealed under the
 *     session's keys: NEW_USER, TICKET, PING, ERROR, strays, and records
 *     that do not open, which must drop the connection.
 *   - F_POOL: F_ATTACH, and two TICKETs; the harness takes the pooled
 *     tunnels the client dials, and the script goes down the first of them
 *     too, under its tunnel keys (where a NEW_USER starts a user).
 *
 * Nothing reaches beyond this process.  Until the harness's own WELCOME
 * names its loopback listener as the tunnel port, the client has no pool
 * and no local service it can reach (none, or a Unix path that doesn't
 * exist), so it dials nothing.  Once attached, F_LOCAL makes the local
 * service a Unix listener of the harness's, so users connect, dial the
 * tunnel port (the harness again) and relay: the harness reads what each
 * local connection got (a PROXY header with O_PROXY, then the pooled
 * tunnel's bytes) and answers LOCAL_SAYS and its end, which must come back
 * sealed on the tunnel.
 *
 * Everything the client sends on control must decode as frames a client
 * may send (in records that open, once attached), every tunnel it dials
 * must open with a JOIN proven with that user's tunnel key; every
 * descriptor must be closed after client_free, and LeakSanitizer checks
 * the memory.  DIALBACK_FUZZ_LOG=1 keeps the client's log lines.
 */
#define main client_main
#include "../client.c"
#undef main
#include "../client_ctl.c"
#include "../client_user.c"

#include <stddef.h>
#include <sys/un.h>

#include "fuzzlib.h"

enum {
	F_NO_TOKEN = 1 << 0,  /* the client has no token (the psk of "") */
	F_ATTACH = 1 << 1,    /* a good handshake comes first */
	F_EOF = 1 << 2,       /* the server shuts down writing after its bytes
	                       * (with F_POOL: on the first pooled tunnel) */
	F_LOCAL = 1 << 3,     /* a local service: the harness's once
	                       * attached, else one that refuses (or none) */
	F_TIMERS = 3 << 4,    /* 0 none, 1 nothing due, 2 ping due and
	                       * handshakes late, 3 everything late */
	F_PORT = 1 << 6,      /* -port: the client asks for ASK_PORT */
	F_POOL = 1 << 7,      /* -pool 2, and a good handshake first */
};

/* Byte 1. */
enum {
	O_POLL = 1 << 0,      /* the event loop's poll() backend, not epoll */
	O_AT_REPLY = 1 << 1,  /* raw bytes where the REPLY goes */
	O_RAW_REPLY = 1 << 2, /* the REPLY seals the input's first bytes */
	O_PLAINTEXT = 1 << 3, /* -plaintext, granted by the WELCOME */
	O_PROXY = 1 << 4,     /* -proxy-protocol: v1, or with O_PROXY2 v2 */
	O_PROXY2 = 1 << 5,
};

#define ASK_PORT    9000
#define POOL_ASK    2
#define PUMP_TURNS  256
#define MAX_ACCEPT  8         /* tunnels kept open; later ones are checked
                               * and closed */
#define MAX_LOCAL   64        /* the local listener's backlog */
#define LOCAL_SAYS  "the local service answers"

/* Messages a client may send on its control connection, before keys and
 * in records after. */
#define CLIENT_SENDS_CLEAR ((1u << MSG_HELLO) | (1u << MSG_AUTH))
#define CLIENT_SENDS ((1u << MSG_PING) | (1u << MSG_PONG) |             \
                      (1u << MSG_USER_FAILED))
/* ... and what an attached client takes without dropping the server. */
#define CLIENT_TAKES ((1u << MSG_NEW_USER) | (1u << MSG_TICKET) |       \
                      (1u << MSG_PING) | (1u << MSG_PONG))

/* Made once: the "tunnel port" (TCP, loopback) and the "local service"
 * (a Unix socket in the abstract namespace), both never left with a
 * connection between runs. */
static int tunnel_lfd = -1, local_lfd = -1, tunnel_port;
static struct sockaddr_un local_sun;
static socklen_t local_sun_len;

/* The harness's ephemeral key pair, made once, and the client's last. */
static struct handshake hs_template;
static uint8_t last_client_pub[KEY_LEN];

/* A tunnel the client dialed, as the harness holds it. */
struct ctun {
	int fd;
	int joined;                    /* its JOIN came */
	uint8_t id[USER_ID_LEN];       /* ... for this user or ticket */
	struct seal tx, rx;            /* its keys, server side */
};

struct crun {
	struct client c;
	unsigned flags, opts;
	int peer;
	int plaintext;                 /* tunnels carry raw bytes */
	int local_ok;                  /* the local service is the harness's */
	struct session_keys keys;      /* server side, once attached */
	int attached;
	struct ctun tun[MAX_ACCEPT];   /* tunnels the client dialed */
	int ntun;
	int local[MAX_LOCAL];          /* local connections it made */
	int nlocal;
};

static void
crun_init(struct crun *r, unsigned flags, unsigned opts)
{
	struct sockaddr_in *sin;
	struct sockaddr_un *sun;

	memset(r, 0, sizeof(*r));
	relay_pool_init(&r->c.relays);
	r->flags = flags;
	r->opts = opts;
	/* One service, as main() sets it up from -local. */
	r->c.svc = calloc(1, sizeof(*r->c.svc));
	CHECK(r->c.svc != NULL, "out of memory");
	r->c.nsvc = 1;
	r->c.svc->cl = &r->c;
	r->c.svc->fd = -1;
	r->c.exit_status = -1;
	r->c.svc->exit_status = -1;
	r->c.svc->backoff_ms = BACKOFF_MIN_MS;
	r->c.sig_fd = -1;
	r->c.token = (flags & F_NO_TOKEN) ? "" : "secret";
	r->c.remote_arg = "127.0.0.1";
	snprintf(r->c.svc->local_arg, sizeof(r->c.svc->local_arg),
	         "127.0.0.1:8080");
	snprintf(r->c.remote[0].host, sizeof(r->c.remote[0].host), "127.0.0.1");
	snprintf(r->c.remote[0].port, sizeof(r->c.remote[0].port), "%d",
	         DEFAULT_CONTROL_PORT);
	r->c.nremote = 1;
	memcpy(r->c.svc->run_id, "fuzz run", RUN_ID_LEN);
	r->c.svc->want_port = (flags & F_PORT) ? ASK_PORT : 0;
	r->c.pool_want = (flags & F_POOL) ? POOL_ASK : 0;
	r->c.plaintext = r->plaintext = (opts & O_PLAINTEXT) != 0;
	r->c.proxy_version = (opts & O_PROXY) ? ((opts & O_PROXY2) ? 2 : 1) : 0;
	r->c.started = now_ms();
	CHECK(fbuf_init(&r->c.svc->in, CTL_IN_SIZE) == 0 &&
	      fbuf_init(&r->c.svc->out, CTL_OUT_SIZE) == 0, "out of memory");
	/* As main() sets up, less the signal pipe. */
	r->c.loop = loop_new();
	watch_init(&r->c.sig_w, K_SIGNAL, NULL, 0);
	watch_init(&r->c.svc->ctl_w, K_CTL, r->c.svc, 0);
	sin = (struct sockaddr_in *)&r->c.svc->server_sa;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin->sin_port = htons(DEFAULT_CONTROL_PORT);
	r->c.svc->server_len = sizeof(*sin);
	snprintf(r->c.svc->server, sizeof(r->c.svc->server), "127.0.0.1:%d",
	         DEFAULT_CONTROL_PORT);
	/* The harness's service only where its WELCOME (or one it sealed
	 * from input, its tunnel port made the harness's) can attach. */
	if ((flags & F_LOCAL) &&
	    ((flags & (F_ATTACH | F_POOL)) || (opts & O_RAW_REPLY))) {
		memcpy(&r->c.svc->local[0].sa, &local_sun, sizeof(local_sun));
		r->c.svc->local[0].len = local_sun_len;
		r->c.svc->nlocal = 1;
		r->local_ok = 1;
	} else if (flags & F_LOCAL) {
		/* connect() fails at once with ENOENT: no network, no wait. */
		sun = (struct sockaddr_un *)&r->c.svc->local[0].sa;
		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path, sizeof(sun->sun_path),
		         "/nonexistent/dialback-fuzz");
		r->c.svc->local[0].len = sizeof(*sun);
		r->c.svc->nlocal = 1;
	}
	r->peer = -1;
}

/* Turns of the client's loop with a zero timeout, until nothing is ready
 * (never run_timers: from C_IDLE it would dial the real server). */
static void
pump(struct crun *r)
{
	int i;

	for (i = 0; i < PUMP_TURNS; i++) {
		struct loop_event *ev;
		int n;

		flush_control(&r->c);
		ctl_sync(r->c.svc);
		user_sweep(&r->c);
		n = loop_wait(r->c.loop, 0, &ev);
		CHECK(n >= 0, "%s: %s", loop_backend(r->c.loop), strerror(errno));
		if (n == 0) {
			return;
		}
		CHECK(dispatch(&r->c, ev, n) == 0, "dispatch saw the signal pipe");
		flush_control(&r->c);
	}
	CHECK(0, "the event loop was still busy after %d turns", PUMP_TURNS);
}

/* accept, retrying EINTR: a connection left behind would leak into the
 * next run.  -1 once none waits. */
static int
accept_one(int lfd)
{
	int fd;

	while ((fd = accept(lfd, NULL, NULL)) < 0 && errno == EINTR) {
		;
	}
	return fd;
}

/* Take the tunnels the client dialed; each must open with a JOIN for an
 * id, proven with that id's tunnel key, and nothing else yet. */
static void
take_tunnels(struct crun *r)
{
	struct ctun *t;
	struct msg m;
	size_t len, used;
	int fd, eof;

	while ((fd = accept_one(tunnel_lfd)) >= 0) {
		struct ctun scratch = { .fd = -1 };

		CHECK(r->attached, "a tunnel dial before the harness's WELCOME");
		CHECK(set_nonblock(fd) == 0, "set_nonblock: %s", strerror(errno));
		t = r->ntun < MAX_ACCEPT ? &r->tun[r->ntun++] : &scratch;
		t->fd = fd;
		len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
		if (len > 0) {
			CHECK(frame_decode(fuzz_out, len, &m, &used) == FRAME_OK &&
			      m.type == MSG_JOIN && used == len,
			      "a tunnel opened with %zu bytes, not a JOIN", len);
			tunnel_keys(r->keys.tunnel, m.user_id, 0, &t->tx, &t->rx);
			CHECK(join_check(&t->rx, m.user_id, m.proof) == 0,
			      "a JOIN not proven with its tunnel key");
			memcpy(t->id, m.user_id, USER_ID_LEN);
			t->joined = 1;
		}
		/* (len 0: closed before its JOIN.) */
		if (t == &scratch) {
			close(fd);
		}
	}
}

/* Accept and close whatever waits on a listener. */
static void
drain(int lfd)
{
	int fd;

	while ((fd = accept_one(lfd)) >= 0) {
		close(fd);
	}
}

/* ctl_readable as poll would call it, with the flush the loop does after
 * each turn, until the connection is gone or has nothing more to read. */
static void
drive(struct crun *r)
{
	int i;

	for (i = 0; i < 64 && r->c.svc->fd >= 0 && fd_readable(r->c.svc->fd); i++) {
		ctl_readable(r->c.svc, 1);
		flush_control(&r->c);
		user_sweep(&r->c);
	}
}

static void
drive_cb(void *arg)
{
	drive(arg);
}

static void
pump_cb(void *arg)
{
	pump(arg);
}

/* Play the server up to the REPLY: take the HELLO, answer with a
 * CHALLENGE, and open the AUTH, which must hold this client's ATTACH. */
static void
serve_auth(struct crun *r, struct handshake *hs)
{
	uint8_t psk[KEY_LEN], plain[SEALED_MAX];
	struct msg m, ch, a;
	size_t n, used = 0;

	peer_recv_msg(r->peer, NULL, &m);
	CHECK(m.type == MSG_HELLO && m.version == PROTO_VERSION &&
	      m.public_port == r->c.svc->want_port,
	      "the client opened with %s", msg_name(m.type));
	CHECK(memcmp(m.pub, last_client_pub, KEY_LEN) != 0,
	      "the client's ephemeral key is the last connection's");
	memcpy(last_client_pub, m.pub, KEY_LEN);
	*hs = hs_template;
	memset(&ch, 0, sizeof(ch));
	ch.type = MSG_CHALLENGE;
	memcpy(ch.pub, hs->e_pub, KEY_LEN);
	hs_mix_msg(hs, &m);
	hs_mix_msg(hs, &ch);
	CHECK(hs_mix_dh(hs, m.pub) == 0, "the client's key is of low order");
	psk_derive(r->c.token, strlen(r->c.token), psk);
	hs_mix_psk(hs, psk);
	peer_send_msg(r->peer, NULL, &ch);
	drive(r);
	peer_recv_msg(r->peer, NULL, &m);
	CHECK(m.type == MSG_AUTH && r->c.svc->state == C_AUTH_SENT,
	      "a CHALLENGE got %s", msg_name(m.type));
	CHECK(hs_open(hs, m.sealed, m.sealed_len, plain) == 0,
	      "the client's AUTH does not open");
	n = m.sealed_len - TAG_LEN;
	CHECK(frame_decode(plain, n, &a, &used) == FRAME_OK && used == n &&
	      a.type == MSG_ATTACH &&
	      memcmp(a.run_id, r->c.svc->run_id, RUN_ID_LEN) == 0 &&
	      a.pool == r->c.pool_want &&
	      a.flags == (r->plaintext ? FLAG_PLAINTEXT : 0),
	      "AUTH holds %s, or a wrong run id, pool or flags",
	      msg_name(a.type));
}

/* Seal plain[0..n) into the REPLY and let the client read it. */
static void
serve_reply(struct crun *r, struct handshake *hs, const uint8_t *plain,
            size_t n)
{
	struct msg m;

	memset(&m, 0, sizeof(m));
	m.type = MSG_REPLY;
	hs_seal(hs, plain, n, m.sealed);
	m.sealed_len = (uint16_t)(n + TAG_LEN);
	peer_send_msg(r->peer, NULL, &m);
	drive(r);
}

/* The client read a WELCOME: split the keys as the server does, and
 * check that they and what it took from the WELCOME agree. */
static void
attached(struct crun *r, struct handshake *hs, const struct msg *w)
{
	hs_split(hs, 0, &r->keys);
	r->attached = 1;
	CHECK(r->c.svc->state == C_ATTACHED && r->c.svc->fd >= 0 &&
	      memcmp(r->c.svc->keys.tx.key, r->keys.rx.key, KEY_LEN) == 0 &&
	      memcmp(r->c.svc->keys.rx.key, r->keys.tx.key, KEY_LEN) == 0 &&
	      memcmp(r->c.svc->keys.tunnel, r->keys.tunnel, KEY_LEN) == 0 &&
	      r->c.svc->tunnel_port == w->tunnel_port &&
	      r->c.svc->public_port == w->public_port &&
	      r->c.svc->heartbeat_s == w->heartbeat_s,
	      "a WELCOME left the client in state %d", (int)r->c.svc->state);
}

/* Play a good server: the handshake, and a WELCOME. */
static void
attach(struct crun *r)
{
	uint8_t plain[FRAME_HDR + FRAME_MAX];
	struct handshake hs;
	struct msg m;

	serve_auth(r, &hs);
	memset(&m, 0, sizeof(m));
	m.type = MSG_WELCOME;
	m.tunnel_port = (uint16_t)tunnel_port;
	m.public_port = r->c.svc->want_port ? ASK_PORT : DEFAULT_PUBLIC_PORT;
	m.heartbeat_s = DEFAULT_HEARTBEAT_S;
	m.flags = r->plaintext ? FLAG_PLAINTEXT : 0;
	serve_reply(r, &hs, plain, frame_encode(plain, &m));
	attached(r, &hs, &m);
}

/* A REPLY sealing the input's first [n u8] bytes; the client must do as
 * they say.  Returns how many input bytes it took. */
static size_t
raw_reply(struct crun *r, const uint8_t *data, size_t len)
{
	uint8_t plain[SEALED_MAX];
	struct handshake hs;
	struct msg m;
	size_t n = len > 0 ? data[0] : 0, used = 0;
	int ok;

	serve_auth(r, &hs);
	n = n < len - (len > 0) ? n : len - (len > 0);
	n = n < SEALED_MAX - TAG_LEN ? n : SEALED_MAX - TAG_LEN;
	memcpy(plain, data + 1, n);
	/* Never a tunnel port but the harness's. */
	if (n == FRAME_HDR + 7 && plain[0] == MSG_WELCOME) {
		wire_put16(plain + FRAME_HDR, (uint16_t)tunnel_port);
	}
	serve_reply(r, &hs, plain, n);
	ok = frame_decode(plain, n, &m, &used) == FRAME_OK && used == n;
	if (ok && m.type == MSG_WELCOME && m.heartbeat_s != 0 &&
	    (m.flags & FLAG_PLAINTEXT) == (r->plaintext ? FLAG_PLAINTEXT : 0)) {
		attached(r, &hs, &m);
	} else if (ok && m.type == MSG_ERROR && m.code == ERR_BUSY) {
		CHECK(r->c.svc->state == C_IDLE && r->c.svc->fd < 0 &&
		      r->c.svc->exit_status < 0, "ERR_BUSY: no retry");
	} else {
		CHECK(r->c.svc->state == C_STOPPED && r->c.svc->fd < 0 &&
		      r->c.svc->exit_status == 1, "a REPLY of %zu bytes (%s) did not "
		      "stop the client", n, ok ? msg_name(m.type) : "malformed");
	}
	return len > 0 ? 1 + n : 0;
}

/* Run the timers as if time had moved on.  Never from C_IDLE: that would
 * dial the real network. */
static void
expire(struct crun *r, unsigned which)
{
	int64_t hb = (int64_t)(r->c.svc->heartbeat_s ? r->c.svc->heartbeat_s
	                                        : DEFAULT_HEARTBEAT_S) * 1000;
	int64_t later[4] = {
		0, HANDSHAKE_MS / 2, hb, hb * DEAD_AFTER_BEATS + JOIN_WAIT_MS,
	};

	if (which == 0 || r->c.svc->state == C_IDLE) {
		return;
	}
	run_timers(&r->c, now_ms() + later[which]);
	flush_control(&r->c);
}

/* Hand out two TICKETs, let the client dial and JOIN with them, and
 * take the tunnels. */
static void
pool_setup(struct crun *r)
{
	struct msg m;
	int i;

	for (i = 0; i < POOL_ASK; i++) {
		memset(&m, 0, sizeof(m));
		m.type = MSG_TICKET;
		memset(m.user_id, 0xa1 + i, USER_ID_LEN);
		peer_send_msg(r->peer, &r->keys.tx, &m);
	}
	drive(r);
	pump(r);
	take_tunnels(r);
	CHECK(r->ntun == POOL_ASK && r->c.svc->npooled == POOL_ASK &&
	      r->tun[0].joined && r->tun[1].joined,
	      "%d tickets made %d pooled tunnels", POOL_ASK, r->ntun);
}

/* What an attached client makes of the bytes the server sent, read with
 * a copy of its key: the users and tickets it takes, and whether they
 * must drop the connection (a record that does not open or holds no one
 * frame, or a message it does not take). */
#define MAX_TAKEN 4096

struct taken {
	uint8_t user[MAX_TAKEN][USER_ID_LEN];  /* NEW_USER ids */
	uint8_t ticket[MAX_TAKEN][USER_ID_LEN];
	int nuser, nticket;
	int drop;
};

static void
client_model(const uint8_t *sent, size_t len, struct seal rx,
             struct taken *tk)
{
	struct fbuf b = { .len = len, .cap = len, .seal = &rx };
	enum frame_result fr = FRAME_MORE;
	struct msg m;

	tk->nuser = tk->nticket = tk->drop = 0;
	if (len == 0) {
		return;
	}
	CHECK((b.data = malloc(len)) != NULL, "out of memory");
	memcpy(b.data, sent, len);
	while ((fr = fbuf_take(&b, &m)) == FRAME_OK) {
		if (!(CLIENT_TAKES & (1u << m.type))) {
			tk->drop = 1;
			break;
		}
		if (m.type == MSG_NEW_USER && tk->nuser < MAX_TAKEN) {
			memcpy(tk->user[tk->nuser++], m.user_id, USER_ID_LEN);
		} else if (m.type == MSG_TICKET && tk->nticket < MAX_TAKEN) {
			memcpy(tk->ticket[tk->nticket++], m.user_id, USER_ID_LEN);
		}
	}
	free(b.data);
	tk->drop |= fr == FRAME_BAD;
}

/* Whether id is among n ids. */
static int
id_among(const uint8_t ids[][USER_ID_LEN], int n, const uint8_t *id)
{
	int i;

	for (i = 0; i < n; i++) {
		if (memcmp(ids[i], id, USER_ID_LEN) == 0) {
			return 1;
		}
	}
	return 0;
}

/* What the client must make of the stream sent down a pooled tunnel (rx
 * a copy of its key, NULL for plaintext): a first record holding the
 * NEW_USER starts a user, and the plaintext after it (left in plain) is
 * the user's, up to a record that does not open or a FIN before the end,
 * which break it. */
struct stream {
	int started;
	size_t len;
	int ended, broken;
	int after_end;       /* bytes came after the end record: they may
	                      * break the relay, or go unread */
};

static void
pool_model(const uint8_t *sent, size_t len, struct seal *rx, int fin,
           uint8_t *plain, struct stream *st)
{
	struct fbuf b = { .len = len, .cap = len, .seal = rx };
	size_t off = 0, used, plen;
	enum frame_result fr;
	struct msg m;

	memset(st, 0, sizeof(*st));
	if (len == 0) {
		return;
	}
	CHECK((b.data = malloc(len)) != NULL, "out of memory");
	memcpy(b.data, sent, len);
	st->started = fbuf_take(&b, &m) == FRAME_OK && m.type == MSG_NEW_USER;
	if (st->started && rx == NULL) {
		memcpy(plain, b.data, b.len);
		st->len = b.len;
		st->ended = fin;
	}
	while (st->started && rx != NULL && off < b.len && !st->ended) {
		fr = record_open(rx, b.data + off, b.len - off, &used, &plen);
		if (fr == FRAME_MORE) {
			break;
		}
		if (fr == FRAME_BAD) {
			st->broken = 1;
			break;
		}
		memcpy(plain + st->len, b.data + off + RECORD_HDR, plen);
		st->len += plen;
		st->ended = plen == 0;
		off += used;
	}
	st->after_end = st->ended && rx != NULL && off < b.len;
	if (st->started && fin && !st->ended) {
		st->broken = 1;
	}
	free(b.data);
}

/* The PROXY header a local connection starts with: its size, checked. */
static size_t
proxy_skip(const uint8_t *p, size_t len, int version)
{
	static const uint8_t sig2[12] = "\r\n\r\n\0\r\nQUIT\n";
	size_t n;

	if (version == 1) {
		for (n = 1; n < len && n < PROXY_MAX; n++) {
			if (p[n - 1] == '\r' && p[n] == '\n') {
				break;
			}
		}
		CHECK(n < len && n < PROXY_MAX && len >= 8 &&
		      memcmp(p, "PROXY ", 6) == 0,
		      "a local connection without its PROXY v1 line");
		return n + 1;
	}
	CHECK(len >= 16 && memcmp(p, sig2, sizeof(sig2)) == 0,
	      "a local connection without its PROXY v2 header");
	n = 16 + (size_t)(p[14] << 8 | p[15]);
	CHECK(n <= len && n <= PROXY_MAX, "a PROXY v2 header of %zu bytes", n);
	return n;
}

/* Accept the local connections the client made and read all they get,
 * turning the client's loop between reads: each record's bytes go to the
 * service in a send of its own, which a Unix socket counts whole, so a
 * few hundred small ones fill it and the client holds the rest until the
 * service makes room.  Each carries its PROXY header (when asked for),
 * then a prefix of the pooled user's bytes, and the pooled user's all of
 * them.  Each then answers LOCAL_SAYS and ends. */
static void
locals_answer(struct crun *r, const uint8_t *want, const struct stream *st)
{
	static uint8_t got[MAX_LOCAL][PROXY_MAX + SCRIPT_MAX];
	size_t len[MAX_LOCAL], n, skip;
	int eof[MAX_LOCAL], fd, i, more, found = 0;

	while ((fd = accept_one(local_lfd)) >= 0) {
		CHECK(set_nonblock(fd) == 0, "set_nonblock: %s", strerror(errno));
		if (r->nlocal < MAX_LOCAL) {
			r->local[r->nlocal++] = fd;
		} else {
			peer_send(fd, LOCAL_SAYS, strlen(LOCAL_SAYS));
			close(fd);
		}
	}
	memset(len, 0, sizeof(len));
	do {
		more = 0;
		for (i = 0; i < r->nlocal; i++) {
			n = peer_recv(r->local[i], got[i] + len[i],
			              sizeof(got[i]) - len[i], &eof[i]);
			len[i] += n;
			more |= n > 0;
		}
		if (more) {
			pump(r);
		}
	} while (more);

	for (i = 0; i < r->nlocal; i++) {
		/* (Nothing at all: its relay has not begun.) */
		skip = r->c.proxy_version && len[i] > 0
		       ? proxy_skip(got[i], len[i], r->c.proxy_version) : 0;
		n = len[i] - skip;
		CHECK(n <= st->len && memcmp(got[i] + skip, want, n) == 0,
		      "a local connection got %zu bytes the pooled tunnel did not "
		      "carry (%zu)", n, st->len);
		if (n > 0 && n == st->len) {
			found++;
			CHECK((eof[i] != 0) == (st->ended || st->broken),
			      "the pooled user's service %s, though its stream %s",
			      eof[i] ? "ended" : "is open", st->broken ? "broke"
			      : st->ended ? "ended" : "goes on");
		}
		peer_send(r->local[i], LOCAL_SAYS, strlen(LOCAL_SAYS));
		shutdown(r->local[i], SHUT_WR);
	}
	CHECK(found <= 1, "%d users got the pooled tunnel's bytes", found);
	/* With room in the backlog, the pooled user reached the service. */
	if (r->local_ok && st->started && st->len > 0 &&
	    r->nlocal < MAX_LOCAL / 2) {
		CHECK(found == 1, "the pooled user's %zu bytes reached no local "
		      "connection", st->len);
	}
}

/* What came back on the tunnels once the services answered: records
 * (or raw bytes) that carry LOCAL_SAYS and its end; only a prefix where
 * the relay may have broken (the pooled tunnel's stream), none on a
 * pooled tunnel no user took. */
static void
tunnels_check(struct crun *r, const struct stream *st,
              const struct taken *tk)
{
	const size_t n = strlen(LOCAL_SAYS);
	struct opened o;
	int i;

	for (i = 0; i < r->ntun; i++) {
		struct ctun *t = &r->tun[i];
		int whole;

		if (t->fd < 0 || !t->joined) {
			continue;
		}
		if (r->plaintext) {
			o.len = peer_recv(t->fd, fuzz_out, sizeof(fuzz_out), &o.eof);
			o.ended = o.eof != 0;
		} else {
			peer_recv_records(t->fd, &t->rx, NULL, &o, "tunnel");
		}
		CHECK(o.len <= n && memcmp(fuzz_out, LOCAL_SAYS, o.len) == 0,
		      "a tunnel carried %zu bytes the service did not say", o.len);
		/* A user that reached the service (the harness's, with room
		 * in its backlog) hears all it said, and its end. */
		if ((r->flags & F_POOL) && i == 0) {
			whole = st->started && !st->broken && !st->after_end;
		} else {
			whole = id_among(tk->user, tk->nuser, t->id) &&
			        !id_among(tk->ticket, tk->nticket, t->id);
		}
		if (whole && r->local_ok && r->nlocal < MAX_LOCAL / 2) {
			CHECK(o.len == n && o.ended, "a tunnel carried %zu of the "
			      "service's %zu bytes, %s end", o.len, n,
			      o.ended ? "and its" : "without its");
		}
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The harness's stand-ins for the server's tunnel port and the local
 * service, made once. */
static void
listeners_open(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int n;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	tunnel_lfd = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(tunnel_lfd >= 0 &&
	      bind(tunnel_lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
	      listen(tunnel_lfd, 64) == 0 && set_nonblock(tunnel_lfd) == 0 &&
	      getsockname(tunnel_lfd, (struct sockaddr *)&sin, &len) == 0,
	      "tunnel listener: %s", strerror(errno));
	tunnel_port = ntohs(sin.sin_port);

	/* Abstract namespace: nothing to clean up in the file system. */
	memset(&local_sun, 0, sizeof(local_sun));
	local_sun.sun_family = AF_UNIX;
	n = snprintf(local_sun.sun_path + 1, sizeof(local_sun.sun_path) - 1,
	             "dialback-fuzz-%ld", (long)getpid());
	local_sun_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
	                            1 + (size_t)n);
	local_lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(local_lfd >= 0 &&
	      bind(local_lfd, (struct sockaddr *)&local_sun, local_sun_len) == 0 &&
	      listen(local_lfd, MAX_LOCAL) == 0 && set_nonblock(local_lfd) == 0,
	      "local listener: %s", strerror(errno));
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	listeners_open();
	fuzz_init();
	hs_init(&hs_template);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct script sc, tsc;
	static uint8_t want[SCRIPT_MAX];
	static struct taken tk;
	struct crun r;
	struct stream st;
	struct seal tx, model, ttx, tmodel;
	struct handshake hs;
	unsigned flags, opts;
	size_t sent, tsent = 0;
	int fd, i, ctl_fin;

	if (size < 2) {
		return 0;
	}
	if (size > 8192) {
		size = 8192;
	}
	flags = data[0];
	opts = data[1];
	data += 2;
	size -= 2;
	if (opts & O_POLL) {
		setenv("DIALBACK_POLL", "1", 1);
	} else {
		unsetenv("DIALBACK_POLL");
	}

	crun_init(&r, flags, opts);
	fd_pair(&fd, &r.peer);
	r.c.svc->fd = fd;
	r.c.svc->state = C_CONNECTING;
	r.c.svc->deadline = now_ms() + HANDSHAKE_MS;
	ctl_connected(r.c.svc);
	CHECK(r.c.svc->state == C_HELLO_SENT, "connected, but state %d",
	      (int)r.c.svc->state);
	flush_control(&r.c);
	if (flags & (F_ATTACH | F_POOL)) {
		attach(&r);
	} else if (opts & O_RAW_REPLY) {
		i = (int)raw_reply(&r, data, size);
		data += i;
		size -= (size_t)i;
	} else if (opts & O_AT_REPLY) {
		serve_auth(&r, &hs);
	}
	memset(&st, 0, sizeof(st));
	if (flags & F_POOL) {
		pool_setup(&r);
		/* The first pooled tunnel hears the script too, under its own
		 * keys; the second is closed by the "server". */
		ttx = tmodel = r.tun[0].tx;
		script_build(&tsc, r.plaintext ? NULL : &ttx, data, size);
		tsent = script_send(r.tun[0].fd, &tsc, pump_cb, &r);
		peer_close(&r.tun[1].fd);
		/* The NEW_USER read, before control can end the pool. */
		pump(&r);
		pool_model(tsc.buf, tsent, r.plaintext ? NULL : &tmodel,
		           (flags & F_EOF) != 0, want, &st);
	}
	/* The script on control: sealed once attached, else raw bytes. */
	tx = model = r.keys.tx;
	script_build(&sc, r.attached ? &tx : NULL, data, size);
	sent = script_send(r.peer, &sc, drive_cb, &r);
	/* With a pool, EOF comes on the pooled tunnel only: on control it
	 * would end the pool before the tunnel's bytes are read. */
	ctl_fin = (flags & F_EOF) && !(flags & F_POOL);
	if (flags & F_POOL) {
		if (flags & F_EOF) {
			shutdown(r.tun[0].fd, SHUT_WR);
		}
	} else if (ctl_fin) {
		shutdown(r.peer, SHUT_WR);
	}
	drive(&r);
	client_model(sc.buf, r.attached ? sent : 0, model, &tk);
	if (r.attached && tk.drop) {
		CHECK((r.c.svc->state == C_IDLE || r.c.svc->state == C_STOPPED) &&
		      r.c.svc->fd < 0, "a client took a bad "
		      "record or a message it does not take");
	} else if (r.attached && !ctl_fin) {
		CHECK(r.c.svc->state == C_ATTACHED, "a client dropped records it "
		      "takes");
	}
	if (r.attached) {
		pump(&r);
		take_tunnels(&r);
		locals_answer(&r, want, &st);
		pump(&r);
		tunnels_check(&r, &st, &tk);
	}
	expire(&r, (flags & F_TIMERS) >> 4);
	check_output(r.peer, r.attached ? &r.keys.rx : NULL,
	             r.attached ? CLIENT_SENDS : CLIENT_SENDS_CLEAR, "server");
	client_free(&r.c);                 /* frees the loop too */
	peer_close(&r.peer);
	for (i = 0; i < r.ntun; i++) {
		peer_close(&r.tun[i].fd);
	}
	for (i = 0; i < r.nlocal; i++) {
		peer_close(&r.local[i]);
	}
	drain(tunnel_lfd);
	drain(local_lfd);
	fd_check_unchanged();
	return 0;
}
