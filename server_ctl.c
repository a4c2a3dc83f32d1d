/*
 * The server's control connections: the handshake (HELLO, CHALLENGE,
 * AUTH, WELCOME), admission of new ones, the public port a session
 * claims, and the messages of an attached session.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crypto.h"
#include "sha256.h"
#include "server.h"

static const char *const ctl_state_names[] = {
	[CTL_HELLO] = "hello",
	[CTL_AUTH] = "auth",
	[CTL_ATTACHED] = "attached",
};

/* Close a -ports listener; its memory goes with its session, at sweep,
 * since this turn's events may still name it. */
void
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

void
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
	/* Once AUTH opened the client has proved its secret: what ends it
	 * then is a refusal (counted where it is made), not a failure. */
	if (c->state != CTL_ATTACHED && !c->opened) {
		s->handshake_failures++;
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

void
ctl_free(struct ctl *c)
{
	fbuf_free(&c->in);
	fbuf_free(&c->out);
	free(c->own);
	crypto_wipe(c, sizeof(*c));
	free(c);
}

void
ctl_send(struct server *s, struct ctl *c, const struct msg *m)
{
	if (fbuf_put(&c->out, m) != 0) {
		ctl_close(s, c, "not reading its control messages");
	}
}

/* ctl_reply: the REPLY to an AUTH that opened: m (WELCOME or ERROR)
 * sealed under the handshake. */
static void
ctl_reply(struct server *s, struct ctl *c, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = frame_encode(frame, m);
	struct msg r = { .type = MSG_REPLY };
	hs_seal(&c->hs, frame, n, r.sealed);
	r.sealed_len = (uint16_t)(n + TAG_LEN);
	ctl_send(s, c, &r);
}

/* ctl_refuse: tell the peer why in an ERROR (sealed once it can be),
 * then drop it. */
static void
ctl_refuse(struct server *s, struct ctl *c, enum err_code code,
           const char *why)
{
	struct msg m = { .type = MSG_ERROR };
	m.code = (uint8_t)code;
	snprintf(m.text, sizeof(m.text), "%s", why);
	fbuf_flush(&c->out, c->fd);
	if (c->opened) {
		ctl_reply(s, c, &m);
	} else if (c->dead == 0) {
		ctl_send(s, c, &m);
	}
	if (c->dead == 0) {
		fbuf_flush(&c->out, c->fd);
	}
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
		s->refused[REF_VERSION]++;
		snprintf(why, sizeof(why), "protocol version mismatch: server "
		         "speaks %d, client %d; run the same dialback release on "
		         "both sides", PROTO_VERSION, m->version);
		ctl_refuse(s, c, ERR_VERSION, why);
		return;
	}
	c->hello_port = m->public_port;
	c->asked = m->public_port ? m->public_port : s->lis[ROLE_PUBLIC].port;
	hs_init(&c->hs);
	memset(&r, 0, sizeof(r));
	r.type = MSG_CHALLENGE;
	memcpy(r.pub, c->hs.e_pub, KEY_LEN);
	hs_mix_msg(&c->hs, m);
	hs_mix_msg(&c->hs, &r);
	if (hs_mix_dh(&c->hs, m->pub) != 0) {
		ctl_close(s, c, "a low-order key in HELLO");
		return;
	}
	port_psk(s, c->asked, c->psk);
	hs_mix_psk(&c->hs, c->psk);
	c->state = CTL_AUTH;
	ctl_send(s, c, &r);
}

const char *
port_secret(struct server *s, int port)
{
	size_t len;

	/* Secrets are NUL-terminated words, so they serve as strings. */
	return (const char *)secrets_find(&s->secrets, port, &len);
}

void
secrets_reload(struct server *s)
{
	struct secrets fresh, old;
	struct ctl *c;
	char why[256];
	uint8_t psk[KEY_LEN];
	int added, removed, changed, detached = 0;

	if (s->secrets_path == NULL) {
		log_info("SIGHUP: no -secrets file to read again");
		return;
	}
	if (secrets_load(&fresh, s->secrets_path, why, sizeof(why)) != 0) {
		log_warn("secrets not reloaded, the old ones stay: %s", why);
		return;
	}
	secrets_diff(&s->secrets, &fresh, &added, &removed, &changed);
	old = s->secrets;
	s->secrets = fresh;
	secrets_free(&old);
	for (c = s->ctls; c != NULL; c = c->next) {
		if (c->dead || c->state == CTL_HELLO) {
			continue;
		}
		port_psk(s, c->asked, psk);
		if (!equal_ct(psk, c->psk, KEY_LEN)) {
			ctl_close(s, c, "its secret changed or went on reload");
			detached++;
		}
	}
	crypto_wipe(psk, sizeof(psk));
	log_info("secrets file %s read again: %zu ports or ranges; %d added, "
	         "%d removed, %d changed; %d session%s detached",
	         s->secrets_path, s->secrets.n, added, removed, changed,
	         detached, detached == 1 ? "" : "s");
}

void
port_psk(struct server *s, int port, uint8_t psk[KEY_LEN])
{
	const char *secret = port_secret(s, port);

	if (secret == NULL) {
		secret = s->token;
	}
	psk_derive(secret, strlen(secret), psk);
}

/* The session serving port, if any. */
static struct ctl *
port_owner(struct server *s, int port)
{
	struct ctl *c;

	if (port == s->lis[ROLE_PUBLIC].port) {
		return s->lis[ROLE_PUBLIC].owner;
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

	if (port != s->lis[ROLE_PUBLIC].port &&
	    (s->ports_lo == 0 || port < s->ports_lo || port > s->ports_hi)) {
		*code = ERR_PORT;
		if (s->ports_lo == 0) {
			snprintf(why, len, "public port %d is not offered here: this "
			         "server serves port %d only (see its -ports)", port,
			         s->lis[ROLE_PUBLIC].port);
		} else {
			snprintf(why, len, "public port %d is not offered here: this "
			         "server serves port %d and %d-%d", port,
			         s->lis[ROLE_PUBLIC].port, s->ports_lo, s->ports_hi);
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
	} else if (port == s->lis[ROLE_PUBLIC].port) {
		c->pub = &s->lis[ROLE_PUBLIC];
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
			free(c->own);      /* port_any tries the next port */
			c->own = NULL;
			return -1;
		}
		c->own->port = port;
		for (i = 0; i < c->own->nfd; i++) {
			watch_init(&c->own->w[i], K_LISTEN, c->own, ROLE_PUBLIC);
		}
		c->pub = c->own;
	}
	c->pub->owner = c;
	port_stat(s, port);          /* its bytes show from 0 on */
	return 0;
}

/* Whether port_any may hand out port to c: a -ports port no session of
 * another client holds and -secrets does not name (it has its own secret;
 * c proved -token). */
static int
port_free_for(struct server *s, struct ctl *c, int port)
{
	struct ctl *old = port_owner(s, port);

	return port >= s->ports_lo && port <= s->ports_hi &&
	       port != s->lis[ROLE_PUBLIC].port && port_secret(s, port) == NULL &&
	       (old == NULL || memcmp(old->run_id, c->run_id, RUN_ID_LEN) == 0);
}

/* ATTACH with FLAG_ANY_PORT: the port HELLO named, if c may have it (its
 * own, after a reconnect), else the first free one of -ports.  0, or -1
 * with the ERROR to send. */
static int
port_any(struct server *s, struct ctl *c, int hello_port, enum err_code *code,
         char *why, size_t len)
{
	int port;

	*code = ERR_PORT;
	if (s->ports_lo == 0) {
		snprintf(why, len, "any free port asked for, but this server "
		         "has no -ports range: it serves port %d only",
		         s->lis[ROLE_PUBLIC].port);
		return -1;
	}
	/* The client proved the secret of the port HELLO named; a port of the
	 * range without its own secret takes -token, so that must be it. */
	if (port_secret(s, c->asked) != NULL) {
		snprintf(why, len, "any free port needs -token, not the secret "
		         "of port %d", c->asked);
		return -1;
	}
	if (hello_port != 0 && port_free_for(s, c, hello_port) &&
	    port_claim(s, c, hello_port, code, why, len) == 0) {
		return 0;
	}
	for (port = s->ports_lo; port <= s->ports_hi; port++) {
		if (port_owner(s, port) == NULL && port_free_for(s, c, port) &&
		    port_claim(s, c, port, code, why, len) == 0) {
			return 0;
		}
	}
	*code = ERR_BUSY;
	snprintf(why, len, "no free port in %d-%d for any free port",
	         s->ports_lo, s->ports_hi);
	return -1;
}

/* Open AUTH into its ATTACH; -1 (with the client refused) if it does not
 * open, which means the client does not hold the port's secret. */
static int
auth_open(struct server *s, struct ctl *c, const struct msg *m,
          struct msg *a)
{
	uint8_t plain[SEALED_MAX];
	size_t n = m->sealed_len - TAG_LEN, used = 0;
	char why[TEXT_MAX];

	if (hs_open(&c->hs, m->sealed, m->sealed_len, plain) != 0) {
		s->refused[REF_WRONG_TOKEN]++;
		if (port_secret(s, c->asked) != NULL) {
			snprintf(why, sizeof(why), "wrong secret for public port %d",
			         c->asked);
		} else {
			snprintf(why, sizeof(why), "wrong token");
		}
		ctl_refuse(s, c, ERR_AUTH, why);
		return -1;
	}
	c->opened = 1;
	if (frame_decode(plain, n, a, &used) != FRAME_OK ||
	    a->type != MSG_ATTACH || used != n) {
		s->handshake_failures++;
		ctl_refuse(s, c, ERR_PROTO, "malformed AUTH");
		return -1;
	}
	return 0;
}

static void
on_auth(struct server *s, struct ctl *c, const struct msg *m)
{
	struct msg a, r;
	char why[TEXT_MAX];
	enum err_code code;

	if (m->type != MSG_AUTH) {
		ctl_refuse(s, c, ERR_PROTO, "expected AUTH");
		return;
	}
	if (auth_open(s, c, m, &a) != 0) {
		return;
	}
	memcpy(c->run_id, a.run_id, RUN_ID_LEN);
	if ((a.flags & FLAG_PLAINTEXT) && !s->plaintext) {
		s->refused[REF_PLAINTEXT]++;
		ctl_refuse(s, c, ERR_PLAINTEXT, "this server does not allow "
		           "plaintext tunnels: drop -plaintext on the client, or "
		           "give the server -plaintext");
		return;
	}
	/* Room for a burst of NEW_USERs; see pub_accepting(). */
	if (fbuf_init(&c->out, SESSION_OUT) != 0) {
		ctl_close(s, c, "out of memory");
		return;
	}
	if ((a.flags & FLAG_ANY_PORT)
	    ? port_any(s, c, c->hello_port, &code, why, sizeof(why))
	    : port_claim(s, c, c->asked, &code, why, sizeof(why))) {
		s->refused[code == ERR_PORT ? REF_PORT_NOT_OFFERED
		                            : REF_PORT_BUSY]++;
		ctl_refuse(s, c, code, why);
		return;
	}
	/* What a reload checks the session's secret against. */
	c->asked = c->pub->port;
	c->plaintext = (a.flags & FLAG_PLAINTEXT) != 0;
	c->pool_cap = a.pool < POOL_MAX ? a.pool : POOL_MAX;
	c->pool_auto = (a.flags & FLAG_POOL_AUTO) != 0;
	c->pool_want = c->pool_auto && c->pool_cap > POOL_FLOOR ? POOL_FLOOR
	                                                       : c->pool_cap;
	c->state = CTL_ATTACHED;
	c->attached_at = now_ms();
	c->next_ping = c->attached_at + s->heartbeat_s * 1000;
	set_keepalive(c->fd);
	memset(&r, 0, sizeof(r));
	r.type = MSG_WELCOME;
	r.tunnel_port = (uint16_t)s->lis[ROLE_TUNNEL].port;
	r.public_port = (uint16_t)c->pub->port;
	r.heartbeat_s = (uint16_t)s->heartbeat_s;
	r.flags = c->plaintext ? FLAG_PLAINTEXT : 0;
	ctl_reply(s, c, &r);
	/* From here on both directions travel in records. */
	hs_split(&c->hs, 0, &c->keys);
	c->opened = 0;
	c->in.seal = &c->keys.rx;
	c->out.seal = &c->keys.tx;
	log_info("client %s attached: serving public port %d%s", c->peer,
	         c->pub->port, c->plaintext ? " (plaintext tunnels)" : "");
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
		/* "tunnel ADDR: ..." is a dial back that failed; anything else
		 * names the service that could not be reached. */
		snprintf(why, sizeof(why), "%s: %s",
		         strncmp(m->text, "tunnel ", 7) == 0
		         ? "client could not dial back"
		         : "client could not reach its local service", m->text);
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

void
ctl_readable(struct server *s, struct ctl *c)
{
	struct msg m;
	enum frame_result fr;
	int rc = fbuf_fill(&c->in, c->fd);

	while (!c->dead && (fr = fbuf_take(&c->in, &m)) == FRAME_OK) {
		c->last_rx = now_ms();
		pool_handed(s, c, NULL);
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

void
ctl_writable(struct server *s, struct ctl *c)
{
	if (fbuf_flush(&c->out, c->fd) != 0) {
		ctl_close(s, c, strerror(errno));
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
		s->refused[REF_HANDSHAKE_FLOOD]++;
		if (log_limited(&s->log_handshakes, now_ms(), &held)) {
			log_warn("control %s refused: %d handshakes from that address "
			         "already (%lu more since the last such line)", peer,
			         MAX_PER_SOURCE, held);
		}
		return -1;
	}
	if (all >= MAX_HANDSHAKES && oldest != NULL) {
		s->refused[REF_HANDSHAKES_FULL]++;
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

void
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
