/*
 * What protocol.h declares: the frame codec, the frame buffers of the
 * control and join traffic, and the handshake's key derivation.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "sha256.h"

/* ==== keys =============================================================== */

static void
mac3(const void *key, size_t keylen, const char *label, const void *a,
     size_t alen, const void *b, size_t blen, uint8_t out[PROOF_LEN])
{
	struct hmac_sha256 h;

	hmac_sha256_init(&h, key, keylen);
	hmac_sha256_update(&h, label, strlen(label));
	hmac_sha256_update(&h, a, alen);
	hmac_sha256_update(&h, b, blen);
	hmac_sha256_final(&h, out);
}

void
key_auth_proof(const char *token, const uint8_t cn[NONCE_LEN],
               const uint8_t sn[NONCE_LEN], uint8_t out[PROOF_LEN])
{
	mac3(token, strlen(token), "dialback auth", cn, NONCE_LEN, sn,
	     NONCE_LEN, out);
}

void
key_session(const char *token, const uint8_t cn[NONCE_LEN],
            const uint8_t sn[NONCE_LEN], uint8_t out[PROOF_LEN])
{
	mac3(token, strlen(token), "dialback session", cn, NONCE_LEN, sn,
	     NONCE_LEN, out);
}

void
key_join_proof(const uint8_t key[PROOF_LEN], const uint8_t id[USER_ID_LEN],
               uint8_t out[PROOF_LEN])
{
	mac3(key, PROOF_LEN, "dialback join", id, USER_ID_LEN, "", 0, out);
}

/* ==== frame codec ======================================================== */

static const char *const msg_names[MSG_TYPE_END] = {
	[MSG_HELLO] = "HELLO",
	[MSG_CHALLENGE] = "CHALLENGE",
	[MSG_AUTH] = "AUTH",
	[MSG_WELCOME] = "WELCOME",
	[MSG_ERROR] = "ERROR",
	[MSG_PING] = "PING",
	[MSG_PONG] = "PONG",
	[MSG_NEW_USER] = "NEW_USER",
	[MSG_USER_FAILED] = "USER_FAILED",
	[MSG_JOIN] = "JOIN",
	[MSG_TICKET] = "TICKET",
};

/* Payload sizes: [min, max]; fixed-size types have min == max. */
static const struct { uint16_t min, max; } msg_len[MSG_TYPE_END] = {
	[MSG_HELLO] = { 29, 29 },
	[MSG_CHALLENGE] = { 21, 21 },
	[MSG_AUTH] = { PROOF_LEN + 4, PROOF_LEN + 4 },
	[MSG_WELCOME] = { 6, 6 },
	[MSG_ERROR] = { 2, 1 + TEXT_MAX },
	[MSG_PING] = { 0, 0 },
	[MSG_PONG] = { 0, 0 },
	[MSG_NEW_USER] = { USER_ID_LEN + 2 * WIRE_ADDR_LEN,
	                   USER_ID_LEN + 2 * WIRE_ADDR_LEN },
	[MSG_USER_FAILED] = { USER_ID_LEN, USER_ID_LEN + TEXT_MAX },
	[MSG_JOIN] = { USER_ID_LEN + PROOF_LEN, USER_ID_LEN + PROOF_LEN },
	[MSG_TICKET] = { USER_ID_LEN, USER_ID_LEN },
};

const char *
msg_name(unsigned type)
{
	if (type == 0 || type >= MSG_TYPE_END) {
		return "unknown";
	}
	return msg_names[type];
}

/* Copy peer text, keeping printable ASCII only, so it is safe to log:
 * not even C1 controls (0x9b is CSI to some terminals) get through. */
static void
text_get(char *dst, const uint8_t *src, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		dst[i] = (src[i] < 0x20 || src[i] > 0x7e) ? '?' : (char)src[i];
	}
	dst[n] = '\0';
}

static size_t
text_put(uint8_t *dst, const char *text)
{
	size_t n = strnlen(text, TEXT_MAX);

	memcpy(dst, text, n);
	return n;
}

static int
wire_addr_get(const uint8_t *p, struct wire_addr *w)
{
	w->family = p[0];
	memcpy(w->addr, p + 1, 16);
	w->port = wire_get16(p + 17);
	return (w->family == 0 || w->family == 4 || w->family == 6) ? 0 : -1;
}

static void
wire_addr_put(uint8_t *p, const struct wire_addr *w)
{
	p[0] = w->family;
	memcpy(p + 1, w->addr, 16);
	wire_put16(p + 17, w->port);
}

/* A HELLO or CHALLENGE starts with magic and version whatever the version,
 * so a mismatch can be named instead of looking like garbage. */
static int
versioned(uint8_t type)
{
	return type == MSG_HELLO || type == MSG_CHALLENGE;
}

enum frame_result
frame_decode(const uint8_t *buf, size_t len, struct msg *m, size_t *used)
{
	const uint8_t *p = buf + FRAME_HDR;
	uint16_t plen;
	uint8_t type;

	if (len < 1) {
		return FRAME_MORE;
	}
	type = buf[0];
	if (type == 0 || type >= MSG_TYPE_END) {
		return FRAME_BAD;
	}
	if (len < FRAME_HDR) {
		return FRAME_MORE;
	}
	plen = wire_get16(buf + 1);
	if (plen > FRAME_MAX) {
		return FRAME_BAD;
	}
	/* Judge the length from the header alone, before waiting for a
	 * payload that may never come. */
	if (versioned(type) ? plen < PROTO_MAGIC_LEN + 1
	    : plen < msg_len[type].min || plen > msg_len[type].max) {
		return FRAME_BAD;
	}
	if (len < (size_t)FRAME_HDR + plen) {
		return FRAME_MORE;
	}
	memset(m, 0, sizeof(*m));
	m->type = type;
	*used = FRAME_HDR + plen;
	if (versioned(type)) {
		if (memcmp(p, PROTO_MAGIC, PROTO_MAGIC_LEN) != 0) {
			return FRAME_BAD;
		}
		m->version = p[PROTO_MAGIC_LEN];
		if (m->version != PROTO_VERSION) {
			return FRAME_OK;
		}
		if (plen != msg_len[type].min) {
			return FRAME_BAD;
		}
		p += PROTO_MAGIC_LEN + 1;
	}
	switch (type) {
	case MSG_HELLO:
		memcpy(m->nonce, p, NONCE_LEN);
		memcpy(m->run_id, p + NONCE_LEN, RUN_ID_LEN);
		break;
	case MSG_CHALLENGE:
		memcpy(m->nonce, p, NONCE_LEN);
		break;
	case MSG_AUTH:
		memcpy(m->proof, p, PROOF_LEN);
		m->public_port = wire_get16(p + PROOF_LEN);
		m->pool = wire_get16(p + PROOF_LEN + 2);
		break;
	case MSG_WELCOME:
		m->tunnel_port = wire_get16(p);
		m->public_port = wire_get16(p + 2);
		m->heartbeat_s = wire_get16(p + 4);
		break;
	case MSG_ERROR:
		m->code = p[0];
		text_get(m->text, p + 1, plen - 1u);
		break;
	case MSG_NEW_USER:
		memcpy(m->user_id, p, USER_ID_LEN);
		if (wire_addr_get(p + USER_ID_LEN, &m->src) != 0 ||
		    wire_addr_get(p + USER_ID_LEN + WIRE_ADDR_LEN, &m->dst) != 0) {
			return FRAME_BAD;
		}
		break;
	case MSG_USER_FAILED:
		memcpy(m->user_id, p, USER_ID_LEN);
		text_get(m->text, p + USER_ID_LEN, plen - (size_t)USER_ID_LEN);
		break;
	case MSG_JOIN:
		memcpy(m->user_id, p, USER_ID_LEN);
		memcpy(m->proof, p + USER_ID_LEN, PROOF_LEN);
		break;
	case MSG_TICKET:
		memcpy(m->user_id, p, USER_ID_LEN);
		break;
	default:
		break;   /* PING, PONG: no payload */
	}
	return FRAME_OK;
}

size_t
frame_encode(uint8_t *out, const struct msg *m)
{
	uint8_t *p = out + FRAME_HDR;
	size_t plen;

	if (versioned(m->type)) {
		memcpy(p, PROTO_MAGIC, PROTO_MAGIC_LEN);
		p[PROTO_MAGIC_LEN] = PROTO_VERSION;
		p += PROTO_MAGIC_LEN + 1;
	}
	switch (m->type) {
	case MSG_HELLO:
		memcpy(p, m->nonce, NONCE_LEN);
		memcpy(p + NONCE_LEN, m->run_id, RUN_ID_LEN);
		p += NONCE_LEN + RUN_ID_LEN;
		break;
	case MSG_CHALLENGE:
		memcpy(p, m->nonce, NONCE_LEN);
		p += NONCE_LEN;
		break;
	case MSG_AUTH:
		memcpy(p, m->proof, PROOF_LEN);
		wire_put16(p + PROOF_LEN, m->public_port);
		wire_put16(p + PROOF_LEN + 2, m->pool);
		p += PROOF_LEN + 4;
		break;
	case MSG_WELCOME:
		wire_put16(p, m->tunnel_port);
		wire_put16(p + 2, m->public_port);
		wire_put16(p + 4, m->heartbeat_s);
		p += 6;
		break;
	case MSG_ERROR:
		p[0] = m->code;
		p += 1 + text_put(p + 1, m->text[0] ? m->text : "error");
		break;
	case MSG_NEW_USER:
		memcpy(p, m->user_id, USER_ID_LEN);
		wire_addr_put(p + USER_ID_LEN, &m->src);
		wire_addr_put(p + USER_ID_LEN + WIRE_ADDR_LEN, &m->dst);
		p += USER_ID_LEN + 2 * WIRE_ADDR_LEN;
		break;
	case MSG_USER_FAILED:
		memcpy(p, m->user_id, USER_ID_LEN);
		p += USER_ID_LEN + text_put(p + USER_ID_LEN, m->text);
		break;
	case MSG_JOIN:
		memcpy(p, m->user_id, USER_ID_LEN);
		memcpy(p + USER_ID_LEN, m->proof, PROOF_LEN);
		p += USER_ID_LEN + PROOF_LEN;
		break;
	case MSG_TICKET:
		memcpy(p, m->user_id, USER_ID_LEN);
		p += USER_ID_LEN;
		break;
	default:
		break;
	}
	plen = (size_t)(p - out) - FRAME_HDR;
	out[0] = m->type;
	wire_put16(out + 1, (uint16_t)plen);
	return FRAME_HDR + plen;
}

/* ==== frame buffers ====================================================== */

int
fbuf_init(struct fbuf *b, size_t cap)
{
	uint8_t *data;

	if (cap < FRAME_HDR + FRAME_MAX) {
		cap = FRAME_HDR + FRAME_MAX;
	}
	if ((data = realloc(b->data, cap)) == NULL) {
		return -1;
	}
	b->data = data;
	b->cap = cap;
	return 0;
}

void
fbuf_free(struct fbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void
send_now(int fd, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = frame_encode(frame, m);

	if (send(fd, frame, n, MSG_NOSIGNAL) < 0) {
		/* the peer is going anyway; the caller logs why */
	}
}

int
fbuf_put(struct fbuf *b, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = frame_encode(frame, m);

	if (b->len + n > b->cap) {
		return -1;
	}
	memcpy(b->data + b->len, frame, n);
	b->len += n;
	return 0;
}

int
fbuf_flush(struct fbuf *b, int fd)
{
	size_t sent;
	int rc = send_some(fd, b->data, b->len, &sent);

	memmove(b->data, b->data + sent, b->len - sent);
	b->len -= sent;
	return rc;
}

int
fbuf_fill(struct fbuf *b, int fd)
{
	for (;;) {
		ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
		if (n > 0) {
			b->len += (size_t)n;
			return 1;
		}
		if (n == 0) {
			/* A full buffer reads 0 too; it always holds a whole frame
			 * (or a bad one), which the caller takes first. */
			return b->len == b->cap ? 1 : 0;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			return 1;
		}
		return -1;
	}
}

enum frame_result
fbuf_take(struct fbuf *b, struct msg *m)
{
	size_t used = 0;
	enum frame_result r = frame_decode(b->data, b->len, m, &used);

	if (r == FRAME_OK) {
		memmove(b->data, b->data + used, b->len - used);
		b->len -= used;
	}
	return r;
}
