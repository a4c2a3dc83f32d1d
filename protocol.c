/*
 * The frame codec and the frame buffers of the control and join traffic,
 * clear or inside records (keys.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "sha256.h"

/* ==== frame codec ======================================================== */

static const char *const msg_names[MSG_TYPE_END] = {
	[MSG_HELLO] = "HELLO",
	[MSG_CHALLENGE] = "CHALLENGE",
	[MSG_AUTH] = "AUTH",
	[MSG_REPLY] = "REPLY",
	[MSG_ERROR] = "ERROR",
	[MSG_PING] = "PING",
	[MSG_PONG] = "PONG",
	[MSG_NEW_USER] = "NEW_USER",
	[MSG_USER_FAILED] = "USER_FAILED",
	[MSG_JOIN] = "JOIN",
	[MSG_TICKET] = "TICKET",
	[MSG_ATTACH] = "ATTACH",
	[MSG_WELCOME] = "WELCOME",
};

/* Payload sizes: [min, max]; fixed-size types have min == max. */
static const struct { uint16_t min, max; } msg_len[MSG_TYPE_END] = {
	[MSG_HELLO] = { PROTO_MAGIC_LEN + 1 + 2 + KEY_LEN,
	                PROTO_MAGIC_LEN + 1 + 2 + KEY_LEN },
	[MSG_CHALLENGE] = { PROTO_MAGIC_LEN + 1 + KEY_LEN,
	                    PROTO_MAGIC_LEN + 1 + KEY_LEN },
	[MSG_AUTH] = { TAG_LEN, SEALED_MAX },
	[MSG_REPLY] = { TAG_LEN, SEALED_MAX },
	[MSG_ATTACH] = { RUN_ID_LEN + 3, RUN_ID_LEN + 3 },
	[MSG_WELCOME] = { 7, 7 },
	[MSG_ERROR] = { 2, 1 + TEXT_MAX },
	[MSG_PING] = { 0, 0 },
	[MSG_PONG] = { 0, 0 },
	[MSG_NEW_USER] = { USER_ID_LEN + 2 * WIRE_ADDR_LEN,
	                   USER_ID_LEN + 2 * WIRE_ADDR_LEN },
	[MSG_USER_FAILED] = { USER_ID_LEN, USER_ID_LEN + TEXT_MAX },
	[MSG_JOIN] = { USER_ID_LEN + TAG_LEN, USER_ID_LEN + TAG_LEN },
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
		m->public_port = wire_get16(p);
		memcpy(m->pub, p + 2, KEY_LEN);
		break;
	case MSG_CHALLENGE:
		memcpy(m->pub, p, KEY_LEN);
		break;
	case MSG_AUTH:
	case MSG_REPLY:
		memcpy(m->sealed, p, plen);
		m->sealed_len = plen;
		break;
	case MSG_ATTACH:
		memcpy(m->run_id, p, RUN_ID_LEN);
		m->pool = wire_get16(p + RUN_ID_LEN);
		m->flags = p[RUN_ID_LEN + 2];
		break;
	case MSG_WELCOME:
		m->tunnel_port = wire_get16(p);
		m->public_port = wire_get16(p + 2);
		m->heartbeat_s = wire_get16(p + 4);
		m->flags = p[6];
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
		memcpy(m->proof, p + USER_ID_LEN, TAG_LEN);
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
		wire_put16(p, m->public_port);
		memcpy(p + 2, m->pub, KEY_LEN);
		p += 2 + KEY_LEN;
		break;
	case MSG_CHALLENGE:
		memcpy(p, m->pub, KEY_LEN);
		p += KEY_LEN;
		break;
	case MSG_AUTH:
	case MSG_REPLY:
		memcpy(p, m->sealed, m->sealed_len);
		p += m->sealed_len;
		break;
	case MSG_ATTACH:
		memcpy(p, m->run_id, RUN_ID_LEN);
		wire_put16(p + RUN_ID_LEN, m->pool);
		p[RUN_ID_LEN + 2] = m->flags;
		p += RUN_ID_LEN + 3;
		break;
	case MSG_WELCOME:
		wire_put16(p, m->tunnel_port);
		wire_put16(p + 2, m->public_port);
		wire_put16(p + 4, m->heartbeat_s);
		p[6] = m->flags;
		p += 7;
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
		memcpy(p + USER_ID_LEN, m->proof, TAG_LEN);
		p += USER_ID_LEN + TAG_LEN;
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

	if (cap < FBUF_UNIT) {
		cap = FBUF_UNIT;
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

	if (b->len + n + (b->seal ? RECORD_HDR + TAG_LEN : 0) > b->cap) {
		return -1;
	}
	if (b->seal != NULL) {
		b->len += record_seal(b->seal, frame, n, b->data + b->len);
	} else {
		memcpy(b->data + b->len, frame, n);
		b->len += n;
	}
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
	size_t used = 0, plen, fused = 0;
	enum frame_result r;

	if (b->seal == NULL) {
		r = frame_decode(b->data, b->len, m, &used);
	} else if (b->len >= RECORD_HDR &&
	           wire_get16(b->data) > FRAME_HDR + FRAME_MAX) {
		r = FRAME_BAD;  /* no frame is that long: don't wait for it */
	} else if ((r = record_open(b->seal, b->data, b->len, &used,
	                            &plen)) == FRAME_OK) {
		r = frame_decode(b->data + RECORD_HDR, plen, m, &fused);
		if (r != FRAME_OK || fused != plen) {
			r = FRAME_BAD;
		}
	}
	if (r == FRAME_OK) {
		memmove(b->data, b->data + used, b->len - used);
		b->len -= used;
	}
	return r;
}
