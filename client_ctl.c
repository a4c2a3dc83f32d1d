/*
 * A service's control connection: connect (to the next -remote address
 * each attempt), the handshake (HELLO, CHALLENGE, AUTH, REPLY), the
 * messages of an attached session, and retry with backoff.  Each service
 * has its own; a refusal or loss of one never touches the others.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"
#include "crypto.h"

/* Lose the control connection, and with it the pooled tunnels parked for
 * this session (the server drops them too); relaying users go on. */
static void
ctl_reset(struct service *s)
{
	s->cl->handshake_failures += s->state == C_HELLO_SENT ||
	                             s->state == C_AUTH_SENT;
	users_close_pooled(s);
	loop_unwatch(s->cl->loop, &s->ctl_w);
	close_fd(&s->fd);
	s->in.len = s->out.len = 0;
	s->in.seal = s->out.seal = NULL;
	s->held = 0;
	s->full_since = 0;
	crypto_wipe(&s->hs, sizeof(s->hs));
	crypto_wipe(&s->keys, sizeof(s->keys));
	s->state = C_IDLE;
}

/* Lost or refused: wait, doubling the wait each time, with jitter so many
 * clients of one server don't return in step. */
void
ctl_retry(struct service *s, const char *what)
{
	uint8_t r;
	int wait;

	ctl_reset(s);
	random_bytes(&r, 1);
	wait = s->backoff_ms / 2 + (int)((long)s->backoff_ms * r / 512);
	svc_log(s, LOG_NORMAL, "%s; retrying in %.1fs", what, wait / 1000.0);
	s->deadline = now_ms() + wait;
	s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
	                                                   : s->backoff_ms * 2;
}

/* A full queue means the server is not reading: the connection is
 * dropped and retried, as the server drops a client that does not read. */
void
ctl_send(struct service *s, const struct msg *m)
{
	if (fbuf_put(&s->out, m) != 0) {
		ctl_retry(s, "the server is not reading its control messages");
	}
}

/* ctl_fail: retrying cannot help; this service stops.  Its relaying
 * connections finish first (its secret may have changed under it). */
static void
ctl_fail(struct service *s, int status, const char *why)
{
	svc_log(s, LOG_QUIET, "%s", why);
	ctl_reset(s);
	s->state = C_STOPPED;
	s->exit_status = status;
	svc_stopped(s->cl, s);
}

/*
 * ctl_mute: the peer took the connection and the HELLO, then closed or
 * said nothing (how).  A dialback server answers at once, so a few such
 * attempts in a row mean -remote names something else, most often the
 * server's public port: stop, saying so, rather than retry for ever.
 */
static void
ctl_mute(struct service *s, const char *how)
{
	char what[ADDR_STRLEN + 256];

	if (++s->mute < MUTE_TRIES) {
		snprintf(what, sizeof(what), "%s: %s before answering (is -remote "
		         "the control port?)", s->server, how);
		ctl_retry(s, what);
		return;
	}
	snprintf(what, sizeof(what), "%s: %s before answering, %d times in a "
	         "row: not a dialback control port; check -remote (the server's "
	         "control port, default %d, not its public port)", s->server, how,
	         s->mute, DEFAULT_CONTROL_PORT);
	ctl_fail(s, 1, what);
}

/* The client's verdict on a server that has not proved the token. */
static const char no_proof[] = "server could not prove it knows the token: "
                               "wrong server or wrong token";

/*
 * ctl_unproven: the server took AUTH, then closed or said nothing (how)
 * instead of proving the token in REPLY.  A server that restarts in the
 * middle of a handshake does that once; MUTE_TRIES attempts in a row are a
 * server that can't prove it, and the client stops, as for a REPLY that
 * does not open.
 */
static void
ctl_unproven(struct service *s, const char *how)
{
	char what[ADDR_STRLEN + 256];

	if (++s->unproven < MUTE_TRIES) {
		snprintf(what, sizeof(what), "%s: %s after AUTH", s->server, how);
		ctl_retry(s, what);
		return;
	}
	snprintf(what, sizeof(what), "%s (%s %s after AUTH, %d times in a row)",
	         no_proof, s->server, how, s->unproven);
	ctl_fail(s, 1, what);
}

/* resolve: hp's nth address (its last, if it has fewer) into sa, and
 * whether more follow.  0, or -1 with a phrase in why. */
static int
resolve(const struct hostport *hp, int nth, struct sockaddr_storage *sa,
        socklen_t *len, int *more, char *why, size_t wlen)
{
	struct addrinfo hints, *res, *ai;
	int rc, i;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(hp->host, hp->port, &hints, &res);
	if (rc != 0) {
		snprintf(why, wlen, "resolve %s: %s", hp->host, gai_strerror(rc));
		return -1;
	}
	for (ai = res, i = 0; ai->ai_next != NULL && i < nth; i++) {
		ai = ai->ai_next;
	}
	memcpy(sa, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	*more = ai->ai_next != NULL;
	freeaddrinfo(res);
	return 0;
}

/* The next attempt.  Each takes the next address of the -remote name, then
 * the next name of the -remote list, so one dead address can't hold the
 * client back forever. */
void
ctl_connect(struct service *s)
{
	struct client *cl = s->cl;
	char what[512];
	int more = 0, rc;

	s->remote_now = s->remote_idx;
	rc = resolve(&cl->remote[s->remote_idx], s->attempt, &s->server_sa,
	             &s->server_len, &more, what, sizeof(what));
	if (rc == 0 && more) {
		s->attempt++;
	} else {
		s->attempt = 0;
		s->remote_idx = (s->remote_idx + 1) % cl->nremote;
	}
	if (rc != 0) {
		ctl_retry(s, what);
		return;
	}
	addr_str((struct sockaddr *)&s->server_sa, s->server, sizeof(s->server));
	/* -tunnel: dial back there, its host alone or the remote's address. */
	if (cl->tunnel_set) {
		if (cl->tunnel.host[0] == '\0') {
			s->tunnel_sa = s->server_sa;
			s->tunnel_len = s->server_len;
		} else if (resolve(&cl->tunnel, 0, &s->tunnel_sa, &s->tunnel_len,
		                   &more, what, sizeof(what)) != 0) {
			ctl_retry(s, what);
			return;
		}
		addr_set_port((struct sockaddr *)&s->tunnel_sa,
		              atoi(cl->tunnel.port));
	}
	s->fd = connect_start((struct sockaddr *)&s->server_sa, s->server_len);
	if (s->fd < 0) {
		snprintf(what, sizeof(what), "connect %s: %s", s->server,
		         strerror(errno));
		ctl_retry(s, what);
		return;
	}
	s->state = C_CONNECTING;
	s->deadline = now_ms() + HANDSHAKE_MS;
	svc_log(s, LOG_VERBOSE, "connecting to %s", s->server);
}

void
ctl_connected(struct service *s)
{
	struct msg m;
	char what[512];

	if (connect_done(s->fd) != 0) {
		snprintf(what, sizeof(what), "connect %s: %s", s->server,
		         strerror(errno));
		ctl_retry(s, what);
		return;
	}
	set_keepalive(s->fd);
	hs_init(&s->hs);
	memset(&m, 0, sizeof(m));
	m.type = MSG_HELLO;
	/* Any port: ask for the one this service had, so a reconnect after a
	 * blip keeps it if it is still free (the server may give another). */
	m.public_port = (uint16_t)(s->any ? s->public_port : s->want_port);
	memcpy(m.pub, s->hs.e_pub, KEY_LEN);
	hs_mix_msg(&s->hs, &m);
	ctl_send(s, &m);
	s->state = C_HELLO_SENT;
}

/* svc_secret: what s proves: its public port's secret from -secrets,
 * if it names its port and the file names that port, else -token.
 * *in_file says which, for the hint when the server refuses it. */
static const char *
svc_secret(const struct service *s, int *in_file)
{
	const uint8_t *secret = NULL;
	size_t len;

	if (s->want_port != 0) {
		secret = secrets_find(&s->cl->secrets, s->want_port, &len);
	}
	*in_file = secret != NULL;
	/* Secrets are NUL-terminated words, so they serve as strings. */
	return secret != NULL ? (const char *)secret : s->cl->token;
}

/* An ERROR from the server: a busy port is worth a retry; nothing else
 * is, and some errors have an obvious next step. */
static void
on_error_msg(struct service *s, const struct msg *m)
{
	static const char *const hint[ERR_CODE_END] = {
		[ERR_PORT] = " — pick another -port",
	};
	char what[ADDR_STRLEN + TEXT_MAX + 512], own[448];
	int in_file;
	const char *secret = svc_secret(s, &in_file), *h = "";

	if (m->code == ERR_AUTH && s->any && s->public_port != 0) {
		/* Any free port will do, and the one it had first now has a
		 * secret of its own (the server's -secrets changed): ask for
		 * any again.  A wrong token is refused on that try too. */
		snprintf(what, sizeof(what), "server %s refused port %d: %s; "
		         "asking for any free port", s->server, s->public_port,
		         m->text);
		s->public_port = 0;
		ctl_retry(s, what);
		return;
	}
	if (m->code == ERR_AUTH && secret[0] == '\0') {
		snprintf(what, sizeof(what), "server requires a token: give the "
		         "client -token or DIALBACK_TOKEN (server %s)", s->server);
		ctl_fail(s, 1, what);
		return;
	}
	if (m->code == ERR_AUTH) {
		/* The server took our proof for a wrong one, so it proved
		 * nothing either: the same verdict as a REPLY that fails. */
		if (in_file) {
			snprintf(own, sizeof(own), " — %s; check port %d's secret in "
			         "%s against the server's", no_proof, s->want_port,
			         s->cl->secrets_path);
		} else {
			snprintf(own, sizeof(own), " — %s; check -token or "
			         "DIALBACK_TOKEN against the server's", no_proof);
		}
		h = own;
	} else if (m->code < ERR_CODE_END && hint[m->code]) {
		h = hint[m->code];
	}
	snprintf(what, sizeof(what), "server %s refused: %s%s", s->server,
	         m->text, h);
	if (m->code == ERR_BUSY) {
		ctl_retry(s, what);
	} else {
		ctl_fail(s, 1, what);
	}
}

/* CHALLENGE: finish the key exchange and prove the secret in AUTH. */
static void
on_challenge(struct service *s, const struct msg *m)
{
	struct client *cl = s->cl;
	uint8_t frame[FRAME_HDR + FRAME_MAX], psk[KEY_LEN];
	int in_file;
	const char *secret = svc_secret(s, &in_file);
	struct msg a, r;
	size_t n;

	s->mute = 0;        /* it answers as a server */
	hs_mix_msg(&s->hs, m);
	if (hs_mix_dh(&s->hs, m->pub) != 0) {
		ctl_retry(s, "the server sent a low-order key");
		return;
	}
	psk_derive(secret, strlen(secret), psk);
	hs_mix_psk(&s->hs, psk);
	crypto_wipe(psk, sizeof(psk));
	memset(&a, 0, sizeof(a));
	a.type = MSG_ATTACH;
	memcpy(a.run_id, s->run_id, RUN_ID_LEN);
	a.pool = (uint16_t)cl->pool_want;
	a.flags = (uint8_t)((cl->plaintext ? FLAG_PLAINTEXT : 0) |
	                    (s->any ? FLAG_ANY_PORT : 0) |
	                    (cl->pool_auto ? FLAG_POOL_AUTO : 0));
	n = frame_encode(frame, &a);
	memset(&r, 0, sizeof(r));
	r.type = MSG_AUTH;
	hs_seal(&s->hs, frame, n, r.sealed);
	r.sealed_len = (uint16_t)(n + TAG_LEN);
	ctl_send(s, &r);
	s->state = C_AUTH_SENT;
}

/* REPLY: open it into the WELCOME or ERROR inside; -1 if it does not
 * open (the server does not hold the secret) or holds anything else. */
static int
reply_open(struct service *s, const struct msg *m, struct msg *inner)
{
	uint8_t plain[SEALED_MAX];
	size_t n = m->sealed_len - TAG_LEN, used = 0;

	if (hs_open(&s->hs, m->sealed, m->sealed_len, plain) != 0 ||
	    frame_decode(plain, n, inner, &used) != FRAME_OK || used != n) {
		return -1;
	}
	return 0;
}

/* WELCOME: the session is up; tunnels go to -tunnel, or to the tunnel
 * port it names on the address control reached. */
static void
on_welcome(struct service *s, const struct msg *m)
{
	struct client *cl = s->cl;
	const char *rhost = cl->remote[s->remote_now].host;
	char host[300], via[ADDR_STRLEN + 32] = "";

	hs_split(&s->hs, 1, &s->keys);
	s->in.seal = &s->keys.rx;
	s->out.seal = &s->keys.tx;
	s->session++;
	s->tunnel_port = m->tunnel_port;
	s->public_port = m->public_port;
	s->heartbeat_s = m->heartbeat_s;
	s->state = C_ATTACHED;
	s->attached_at = now_ms();
	s->backoff_ms = BACKOFF_MIN_MS;
	s->next_ping = now_ms() + s->heartbeat_s * 1000;
	if (!cl->tunnel_set) {
		s->tunnel_sa = s->server_sa;
		s->tunnel_len = s->server_len;
		addr_set_port((struct sockaddr *)&s->tunnel_sa, s->tunnel_port);
	} else {
		snprintf(via, sizeof(via), " (tunnels via ");
		addr_str((struct sockaddr *)&s->tunnel_sa, via + strlen(via),
		         sizeof(via) - strlen(via) - 1);
		strcat(via, ")");
	}
	snprintf(host, sizeof(host), strchr(rhost, ':') ? "[%s]" : "%s", rhost);
	log_info("forwarding %s:%d -> %s%s", host, s->public_port,
	         s->local_arg, via);
}

static void
on_ctl_msg(struct service *s, const struct msg *m)
{
	struct msg r;
	char why[ADDR_STRLEN + 128];

	memset(&r, 0, sizeof(r));
	if (m->type == MSG_ERROR) {
		on_error_msg(s, m);
		return;
	}
	switch (s->state) {
	case C_HELLO_SENT:
		if (m->type != MSG_CHALLENGE) {
			snprintf(why, sizeof(why), "%s is not a dialback control "
			         "port (check -remote)", s->server);
			ctl_fail(s, 1, why);
			return;
		}
		if (m->version != PROTO_VERSION) {
			snprintf(why, sizeof(why), "%s speaks protocol version %d, "
			         "this client %d; run the same dialback release on "
			         "both sides", s->server, m->version, PROTO_VERSION);
			ctl_fail(s, 1, why);
			return;
		}
		on_challenge(s, m);
		break;
	case C_AUTH_SENT:
		if (m->type != MSG_REPLY || reply_open(s, m, &r) != 0) {
			ctl_fail(s, 1, no_proof);
			return;
		}
		s->unproven = 0;    /* it proved the token */
		if (r.type == MSG_ERROR) {
			on_error_msg(s, &r);
			return;
		}
		if (r.type != MSG_WELCOME || r.heartbeat_s == 0 ||
		    (r.flags & FLAG_PLAINTEXT) != (s->cl->plaintext ? FLAG_PLAINTEXT
		                                                    : 0)) {
			snprintf(why, sizeof(why), "%s sent an unexpected reply to "
			         "AUTH", s->server);
			ctl_fail(s, 1, why);
			return;
		}
		on_welcome(s, &r);
		break;
	case C_ATTACHED:
		if (m->type == MSG_NEW_USER) {
			user_new(s, m);
		} else if (m->type == MSG_TICKET) {
			ticket_new(s, m);
		} else if (m->type == MSG_PING) {
			r.type = MSG_PONG;
			ctl_send(s, &r);
		} else if (m->type != MSG_PONG) {
			ctl_retry(s, "unexpected message from server");
		}
		break;
	default:
		break;
	}
}

/*
 * Handle the frames the control buffer holds.  While MAX_INFLIGHT users
 * are in flight, the rest wait there and nothing more is read, so a burst
 * of users only slows down; if none of them gets through for BUSY_GRACE_MS,
 * the server is not letting them finish, and its NEW_USERs are refused as
 * "client busy" until some do.
 */
static enum frame_result
ctl_take(struct service *s)
{
	enum frame_result fr = FRAME_MORE;
	int64_t now = now_ms();
	struct msg m;

	while (s->fd >= 0) {
		if (s->cl->inflight < MAX_INFLIGHT) {
			s->full_since = 0;
		} else if (s->full_since == 0) {
			s->full_since = now;
		}
		s->held = s->full_since != 0 && now - s->full_since < BUSY_GRACE_MS;
		if (s->held || (fr = fbuf_take(&s->in, &m)) != FRAME_OK) {
			break;
		}
		s->last_rx = now;
		on_ctl_msg(s, &m);
	}
	return fr;
}

void
ctl_readable(struct service *s, int fill)
{
	int rc = fill ? fbuf_fill(&s->in, s->fd) : 1;
	enum frame_result fr = ctl_take(s);
	char what[512];

	if (s->fd < 0) {
		return;
	}
	if (fr == FRAME_BAD) {
		if (s->state == C_HELLO_SENT) {
			snprintf(what, sizeof(what), "%s is not a dialback control "
			         "port (check -remote)", s->server);
			ctl_fail(s, 1, what);
		} else if (s->state == C_AUTH_SENT) {
			/* No server sends a malformed REPLY. */
			ctl_fail(s, 1, no_proof);
		} else {
			ctl_retry(s, "malformed message from server");
		}
	} else if (rc <= 0 && s->state == C_HELLO_SENT) {
		ctl_mute(s, rc == 0 ? "closed the connection" : strerror(errno));
	} else if (rc <= 0 && s->state == C_AUTH_SENT) {
		ctl_unproven(s, rc == 0 ? "closed the connection" : strerror(errno));
	} else if (rc <= 0) {
		snprintf(what, sizeof(what), "lost connection to %s: %s",
		         s->server, rc == 0 ? "closed by server" : strerror(errno));
		ctl_retry(s, what);
	}
}

int64_t
ctl_timers(struct service *s, int64_t now)
{
	int64_t next = -1, dead_ms;
	char what[512];

	switch (s->state) {
	case C_STOPPED:
		return -1;
	case C_IDLE:
		if (now >= s->deadline) {
			ctl_connect(s);
		}
		break;
	case C_HELLO_SENT:
		if (now >= s->deadline) {
			snprintf(what, sizeof(what), "said nothing for %ds",
			         HANDSHAKE_MS / 1000);
			ctl_mute(s, what);
		}
		break;
	case C_AUTH_SENT:
		if (now >= s->deadline) {
			snprintf(what, sizeof(what), "said nothing for %ds",
			         HANDSHAKE_MS / 1000);
			ctl_unproven(s, what);
		}
		break;
	case C_CONNECTING:
		if (now >= s->deadline) {
			snprintf(what, sizeof(what), "no answer from %s within %ds "
			         "(is -remote the control port?)", s->server,
			         HANDSHAKE_MS / 1000);
			ctl_retry(s, what);
		}
		break;
	case C_ATTACHED:
		dead_ms = (int64_t)s->heartbeat_s * 1000 * DEAD_AFTER_BEATS;
		if (now - s->last_rx >= dead_ms) {
			snprintf(what, sizeof(what), "server %s silent for %llds",
			         s->server, (long long)(now - s->last_rx) / 1000);
			ctl_retry(s, what);
			break;
		}
		if (now >= s->next_ping) {
			struct msg m = { .type = MSG_PING };
			ctl_send(s, &m);
			s->next_ping = now + s->heartbeat_s * 1000;
		}
		next = earliest(s->next_ping, s->last_rx + dead_ms);
		break;
	}
	if (s->state != C_ATTACHED && s->state != C_STOPPED) {
		next = earliest(next, s->deadline);
	}
	if (s->held) {
		next = earliest(next, s->full_since + BUSY_GRACE_MS);
	}
	return next;
}

void
ctl_sync(struct service *s)
{
	short e;

	if (s->fd < 0) {
		loop_unwatch(s->cl->loop, &s->ctl_w);
		return;
	}
	e = s->state == C_CONNECTING ? POLLOUT
	    : (short)((s->held ? 0 : POLLIN) | (s->out.len ? POLLOUT : 0));
	if (loop_watch(s->cl->loop, &s->ctl_w, s->fd, e) != 0) {
		ctl_retry(s, "watch control connection");
	}
}

void
ctl_event(struct service *s, short rev)
{
	if (s->state == C_CONNECTING) {
		ctl_connected(s);
		return;
	}
	if (s->held && (rev & (POLLHUP | POLLERR))) {
		ctl_retry(s, "lost the control connection");  /* can't read on */
	} else if (rev & (POLLIN | POLLHUP | POLLERR)) {
		ctl_readable(s, 1);
	}
}

void
ctl_flush(struct service *s)
{
	char what[512];

	if (s->fd >= 0 && s->state != C_CONNECTING && s->out.len > 0 &&
	    fbuf_flush(&s->out, s->fd) != 0) {
		snprintf(what, sizeof(what), "lost connection to %s: %s",
		         s->server, strerror(errno));
		ctl_retry(s, what);
	}
}

void
ctl_free(struct service *s)
{
	loop_unwatch(s->cl->loop, &s->ctl_w);
	close_fd(&s->fd);
	fbuf_free(&s->in);
	fbuf_free(&s->out);
}
