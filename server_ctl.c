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

#include "server.h"
#include "sha256.h"

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
	free(c);
}

void
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

void
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
