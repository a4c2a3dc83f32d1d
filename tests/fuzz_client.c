/*
 * libFuzzer target for the client's side of the control connection: what
 * it does with whatever a server (or something posing as one) sends.
 * Built and run by `make fuzz` and `make fuzz-run` with tests/fuzz.c.
 *
 * Byte 0 is flags (F_* below), byte 1 options (O_* below); the rest
 * arrives from the "server".  The client is set up as its main() would,
 * over a socketpair, and enters the handshake through ctl_connected, so
 * it sends its real HELLO.  With
 * F_ATTACH the harness first plays a good server (CHALLENGE, check the
 * AUTH proof, WELCOME), so the rest lands on an attached session: NEW_USER,
 * TICKET, PING, ERROR and strays.  With F_POOL it also hands out two
 * TICKETs, takes the pooled tunnels the client dials, and sends the rest
 * down the first of them as well (where a NEW_USER starts a user).
 *
 * Nothing reaches beyond this process.  Until the harness's own WELCOME
 * names its loopback listener as the tunnel port, the client has no pool
 * and no local service it can reach (none, or a Unix path that doesn't
 * exist), so it dials nothing.  Once attached, F_LOCAL makes the local
 * service a Unix listener of the harness's, so users connect, dial the
 * tunnel port (the harness again) and relay.
 *
 * Everything the client sends on control must decode as frames a client
 * may send, and every tunnel it dials must open with a JOIN proven with
 * the session key; every descriptor must be closed after client_free, and
 * LeakSanitizer checks the memory.  DIALBACK_FUZZ_LOG=1 keeps the
 * client's log lines.
 */
#define main client_main
#include "../client.c"
#undef main

#include <stddef.h>
#include <sys/un.h>

#include "fuzzlib.h"

enum {
	F_NO_TOKEN = 1 << 0,  /* the client has no token */
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
};

#define ASK_PORT    9000
#define POOL_ASK    2
#define PUMP_TURNS  256
#define MAX_ACCEPT  8         /* tunnels kept open; later ones are checked
                               * and closed */

/* Messages a client may send on its control connection. */
#define CLIENT_SENDS ((1u << MSG_HELLO) | (1u << MSG_AUTH) |            \
                      (1u << MSG_PING) | (1u << MSG_PONG) |             \
                      (1u << MSG_USER_FAILED))

static const uint8_t server_nonce[NONCE_LEN] = "fuzz srv nonce!";

/* Made once: the "tunnel port" (TCP, loopback) and the "local service"
 * (a Unix socket in the abstract namespace), both never left with a
 * connection between runs. */
static int tunnel_lfd = -1, local_lfd = -1, tunnel_port;
static struct sockaddr_un local_sun;
static socklen_t local_sun_len;

struct crun {
	struct client c;
	int peer;
	uint8_t key[PROOF_LEN];        /* the session key, once attached */
	int attached;
	int tun[MAX_ACCEPT];           /* tunnels the client dialed */
	int ntun;
};

static void
crun_init(struct crun *r, unsigned flags)
{
	struct sockaddr_in *sin;
	struct sockaddr_un *sun;

	memset(r, 0, sizeof(*r));
	r->c.fd = -1;
	r->c.exit_status = -1;
	r->c.backoff_ms = BACKOFF_MIN_MS;
	r->c.sig_fd = -1;
	r->c.token = (flags & F_NO_TOKEN) ? "" : "secret";
	r->c.remote_arg = "127.0.0.1";
	r->c.local_arg = "127.0.0.1:8080";
	snprintf(r->c.remote.host, sizeof(r->c.remote.host), "127.0.0.1");
	snprintf(r->c.remote.port, sizeof(r->c.remote.port), "%d",
	         DEFAULT_CONTROL_PORT);
	memcpy(r->c.run_id, "fuzz run", RUN_ID_LEN);
	r->c.want_port = (flags & F_PORT) ? ASK_PORT : 0;
	r->c.pool_want = (flags & F_POOL) ? POOL_ASK : 0;
	r->c.started = now_ms();
	CHECK(fbuf_init(&r->c.in, CTL_IN_SIZE) == 0 &&
	      fbuf_init(&r->c.out, CTL_OUT_SIZE) == 0, "out of memory");
	/* As main() sets up, less the signal pipe. */
	r->c.loop = loop_new();
	watch_init(&r->c.sig_w, K_SIGNAL, NULL, 0);
	watch_init(&r->c.ctl_w, K_CTL, NULL, 0);
	sin = (struct sockaddr_in *)&r->c.server_sa;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin->sin_port = htons(DEFAULT_CONTROL_PORT);
	r->c.server_len = sizeof(*sin);
	snprintf(r->c.server, sizeof(r->c.server), "127.0.0.1:%d",
	         DEFAULT_CONTROL_PORT);
	if ((flags & F_LOCAL) && (flags & (F_ATTACH | F_POOL))) {
		memcpy(&r->c.local[0].sa, &local_sun, sizeof(local_sun));
		r->c.local[0].len = local_sun_len;
		r->c.nlocal = 1;
	} else if (flags & F_LOCAL) {
		/* connect() fails at once with ENOENT: no network, no wait. */
		sun = (struct sockaddr_un *)&r->c.local[0].sa;
		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path, sizeof(sun->sun_path),
		         "/nonexistent/dialback-fuzz");
		r->c.local[0].len = sizeof(*sun);
		r->c.nlocal = 1;
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
		ctl_sync(&r->c);
		sweep(&r->c);
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
 * id, proven with the session key, and nothing else yet. */
static void
take_tunnels(struct crun *r)
{
	struct msg m;
	size_t len, used;
	int fd, eof;

	while ((fd = accept_one(tunnel_lfd)) >= 0) {
		uint8_t want[PROOF_LEN];

		CHECK(r->attached, "a tunnel dial before the harness's WELCOME");
		CHECK(set_nonblock(fd) == 0, "set_nonblock: %s", strerror(errno));
		len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
		if (r->ntun < MAX_ACCEPT) {
			r->tun[r->ntun++] = fd;
		} else {
			close(fd);
		}
		if (len == 0) {
			continue;            /* closed before its JOIN */
		}
		CHECK(frame_decode(fuzz_out, len, &m, &used) == FRAME_OK &&
		      m.type == MSG_JOIN && used == len,
		      "a tunnel opened with %zu bytes, not a JOIN", len);
		key_join_proof(r->key, m.user_id, want);
		CHECK(memcmp(want, m.proof, PROOF_LEN) == 0,
		      "a JOIN not proven with the session key");
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

	for (i = 0; i < 64 && r->c.fd >= 0 && fd_readable(r->c.fd); i++) {
		ctl_readable(&r->c);
		flush_control(&r->c);
		sweep(&r->c);
	}
}

/* Play a good server: answer the HELLO, check the AUTH, welcome it. */
static void
attach(struct crun *r)
{
	struct msg m;
	uint8_t cn[NONCE_LEN], want[PROOF_LEN];

	peer_recv_msg(r->peer, &m);
	CHECK(m.type == MSG_HELLO && m.version == PROTO_VERSION &&
	      memcmp(m.run_id, r->c.run_id, RUN_ID_LEN) == 0,
	      "the client opened with %s", msg_name(m.type));
	memcpy(cn, m.nonce, NONCE_LEN);
	memset(&m, 0, sizeof(m));
	m.type = MSG_CHALLENGE;
	memcpy(m.nonce, server_nonce, NONCE_LEN);
	peer_send_msg(r->peer, &m);
	drive(r);
	peer_recv_msg(r->peer, &m);
	key_auth_proof(r->c.token, cn, server_nonce, want);
	CHECK(m.type == MSG_AUTH && memcmp(m.proof, want, PROOF_LEN) == 0 &&
	      m.public_port == r->c.want_port && m.pool == r->c.pool_want &&
	      r->c.state == C_AUTH_SENT,
	      "a CHALLENGE got %s, or a wrong proof or port", msg_name(m.type));
	memset(&m, 0, sizeof(m));
	m.type = MSG_WELCOME;
	m.tunnel_port = (uint16_t)tunnel_port;
	m.public_port = r->c.want_port ? ASK_PORT : DEFAULT_PUBLIC_PORT;
	m.heartbeat_s = DEFAULT_HEARTBEAT_S;
	peer_send_msg(r->peer, &m);
	drive(r);
	key_session(r->c.token, cn, server_nonce, r->key);
	r->attached = 1;
	CHECK(r->c.state == C_ATTACHED && r->c.fd >= 0 &&
	      memcmp(r->c.key, r->key, PROOF_LEN) == 0 &&
	      r->c.tunnel_port == tunnel_port &&
	      r->c.public_port == (r->c.want_port ? ASK_PORT
	                                          : DEFAULT_PUBLIC_PORT) &&
	      r->c.heartbeat_s == DEFAULT_HEARTBEAT_S,
	      "a WELCOME left the client in state %d", (int)r->c.state);
}

/* Run the timers as if time had moved on.  Never from C_IDLE: that would
 * dial the real network. */
static void
expire(struct crun *r, unsigned which)
{
	int64_t hb = (int64_t)(r->c.heartbeat_s ? r->c.heartbeat_s
	                                        : DEFAULT_HEARTBEAT_S) * 1000;
	int64_t later[4] = {
		0, HANDSHAKE_MS / 2, hb, hb * DEAD_AFTER_BEATS + JOIN_WAIT_MS,
	};

	if (which == 0 || r->c.state == C_IDLE) {
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
		peer_send_msg(r->peer, &m);
	}
	drive(r);
	pump(r);
	take_tunnels(r);
	CHECK(r->ntun == POOL_ASK && r->c.npooled == POOL_ASK,
	      "%d tickets made %d pooled tunnels", POOL_ASK, r->ntun);
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
	      listen(local_lfd, 64) == 0 && set_nonblock(local_lfd) == 0,
	      "local listener: %s", strerror(errno));
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	listeners_open();
	fuzz_init();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct crun r;
	unsigned flags, opts;
	int fd, i;

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

	crun_init(&r, flags);
	fd_pair(&fd, &r.peer);
	r.c.fd = fd;
	r.c.state = C_CONNECTING;
	r.c.deadline = now_ms() + HANDSHAKE_MS;
	ctl_connected(&r.c);
	CHECK(r.c.state == C_HELLO_SENT, "connected, but state %d",
	      (int)r.c.state);
	flush_control(&r.c);
	if (flags & (F_ATTACH | F_POOL)) {
		attach(&r);
	}
	if (flags & F_POOL) {
		pool_setup(&r);
		/* The first pooled tunnel hears the bytes too; the second is
		 * closed by the "server". */
		peer_send(r.tun[0], data, size);
		peer_close(&r.tun[1]);
	}
	peer_send(r.peer, data, size);
	/* With a pool, EOF comes on the pooled tunnel only: on control it
	 * would end the pool before the tunnel's bytes are read. */
	if ((flags & F_EOF) && r.ntun > 0) {
		shutdown(r.tun[0], SHUT_WR);
	} else if (flags & F_EOF) {
		shutdown(r.peer, SHUT_WR);
	}
	drive(&r);
	if (r.attached) {
		pump(&r);
		take_tunnels(&r);
	}
	expire(&r, (flags & F_TIMERS) >> 4);
	check_output(r.peer, CLIENT_SENDS, "server");
	client_free(&r.c);                 /* frees the loop too */
	peer_close(&r.peer);
	for (i = 0; i < r.ntun; i++) {
		peer_close(&r.tun[i]);
	}
	drain(tunnel_lfd);
	drain(local_lfd);
	fd_check_unchanged();
	return 0;
}
