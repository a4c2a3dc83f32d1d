/*
 * Unit tests for the crypto, the frame codec, address parsing, key
 * derivation, the relay's byte order, the frame buffers, flag parsing and
 * the event loop (epoll and poll).  The checks are tests/testlib.h's:
 * each CHECK counts a pass or prints one line for a failure, and the last
 * line is "unit: N passed, N failed, N skipped".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/testlib.h"
#include "common.h"
#include "protocol.h"
#include "sha256.h"

/* unhex: decode a hex string of a known vector; returns its byte count. */
static size_t unhex(const char *s, uint8_t *out)
{
	size_t n = 0;
	unsigned v;

	while (s[0] != '\0' && sscanf(s, "%2x", &v) == 1) {
		out[n++] = (uint8_t)v;
		s += 2;
	}
	return n;
}

/* ---- SHA-256 ------------------------------------------------------------ */

static void test_sha256(struct tally *t)
{
	static const struct {
		const char *msg, *digest;
	} v[] = {
		{ "abc",
		  "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
		{ "",
		  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
		{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
		{ "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
		  "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
		  "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1" },
	};
	static const size_t splits[] = { 1, 63, 64, 65 };
	uint8_t want[SHA256_LEN], got[SHA256_LEN], a[1000], big[300];
	struct sha256 s;
	size_t i, j, off;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		unhex(v[i].digest, want);
		sha256(v[i].msg, strlen(v[i].msg), got);
		CHECK_MEM(t, got, want, SHA256_LEN);
	}

	/* One million 'a', in 1000 updates of 1000. */
	memset(a, 'a', sizeof(a));
	sha256_init(&s);
	for (i = 0; i < 1000; i++) {
		sha256_update(&s, a, sizeof(a));
	}
	sha256_final(&s, got);
	unhex("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
	      want);
	CHECK_MEM(t, got, want, SHA256_LEN);

	/* Pieces of 1, 63, 64 and 65 bytes cross block edges in every way. */
	for (i = 0; i < sizeof(big); i++) {
		big[i] = (uint8_t)(i * 7 + 3);
	}
	sha256(big, sizeof(big), want);
	for (i = 0; i < sizeof(splits) / sizeof(splits[0]); i++) {
		sha256_init(&s);
		for (off = 0; off < sizeof(big); off += j) {
			j = splits[i];
			if (j > sizeof(big) - off) {
				j = sizeof(big) - off;
			}
			sha256_update(&s, big + off, j);
		}
		sha256_final(&s, got);
		CHECKF(t, memcmp(got, want, SHA256_LEN) == 0,
		       "sha256 in pieces of %zu differs from one call", splits[i]);
	}

	/* Empty updates change nothing. */
	sha256_init(&s);
	sha256_update(&s, "", 0);
	sha256_update(&s, "abc", 3);
	sha256_update(&s, "", 0);
	sha256_final(&s, got);
	unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	      want);
	CHECK_MEM(t, got, want, SHA256_LEN);
}

/* ---- HMAC-SHA256 (RFC 4231) --------------------------------------------- */

static void test_hmac(struct tally *t)
{
	static const struct {
		int keybyte, keylen;    /* keybyte < 0: key is the text in key */
		const char *key;
		int databyte, datalen;  /* databyte < 0: data is the text */
		const char *data;
		const char *mac;
		size_t maclen;
	} v[] = {
		{ 0x0b, 20, NULL, -1, 0, "Hi There",
		  "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
		  32 },
		{ -1, 0, "Jefe", -1, 0, "what do ya want for nothing?",
		  "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
		  32 },
		{ 0xaa, 20, NULL, 0xdd, 50, NULL,
		  "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
		  32 },
		{ 0, 25, NULL, 0xcd, 50, NULL,  /* key is 0x01..0x19 */
		  "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
		  32 },
		{ 0x0c, 20, NULL, -1, 0, "Test With Truncation",
		  "a3b6167473100ee06e0c796c2955552b", 16 },
		{ 0xaa, 131, NULL, -1, 0,
		  "Test Using Larger Than Block-Size Key - Hash Key First",
		  "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
		  32 },
		{ 0xaa, 131, NULL, -1, 0,
		  "This is a test using a larger than block-size key and a larger "
		  "than block-size data. The key needs to be hashed before being "
		  "used by the HMAC algorithm.",
		  "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
		  32 },
	};
	uint8_t key[131], data[200], want[SHA256_LEN], got[SHA256_LEN];
	struct hmac_sha256 h;
	size_t i, keylen, datalen, off;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		if (v[i].keybyte < 0) {
			keylen = strlen(v[i].key);
			memcpy(key, v[i].key, keylen);
		} else {
			keylen = (size_t)v[i].keylen;
			for (off = 0; off < keylen; off++) {
				key[off] = v[i].keybyte != 0 ? (uint8_t)v[i].keybyte
				                             : (uint8_t)(off + 1);
			}
		}
		if (v[i].databyte < 0) {
			datalen = strlen(v[i].data);
			memcpy(data, v[i].data, datalen);
		} else {
			datalen = (size_t)v[i].datalen;
			memset(data, v[i].databyte, datalen);
		}
		unhex(v[i].mac, want);
		hmac_sha256(key, keylen, data, datalen, got);
		CHECKF(t, memcmp(got, want, v[i].maclen) == 0,
		       "RFC 4231 test case %zu: wrong HMAC", i + 1);

		/* The same MAC fed a byte at a time. */
		hmac_sha256_init(&h, key, keylen);
		for (off = 0; off < datalen; off++) {
			hmac_sha256_update(&h, data + off, 1);
		}
		hmac_sha256_final(&h, got);
		CHECKF(t, memcmp(got, want, v[i].maclen) == 0,
		       "RFC 4231 test case %zu: incremental HMAC differs", i + 1);
	}
}

static void test_equal_ct(struct tally *t)
{
	uint8_t a[32], b[32];

	memset(a, 0x42, sizeof(a));
	memcpy(b, a, sizeof(b));
	CHECK(t, equal_ct(a, b, sizeof(a)) == 1);
	b[0] ^= 1;
	CHECK(t, equal_ct(a, b, sizeof(a)) == 0);
	b[0] ^= 1;
	b[31] ^= 0x80;
	CHECK(t, equal_ct(a, b, sizeof(a)) == 0);
	CHECK(t, equal_ct(a, b, 31) == 1);
	CHECK(t, equal_ct(a, b, 0) == 1);
}

/* ---- frame codec -------------------------------------------------------- */

/* A frame built by hand from protocol.h's layouts, to hold encode to. */
struct wbuf {
	uint8_t b[FRAME_HDR + FRAME_MAX + 16];
	size_t n;
};

static void put8(struct wbuf *w, unsigned v)
{
	w->b[w->n++] = (uint8_t)v;
}

static void put16(struct wbuf *w, unsigned v)
{
	put8(w, v >> 8 & 0xff);
	put8(w, v & 0xff);
}

static void put(struct wbuf *w, const void *p, size_t n)
{
	memcpy(w->b + w->n, p, n);
	w->n += n;
}

static void put_addr(struct wbuf *w, const struct wire_addr *a)
{
	put8(w, a->family);
	put(w, a->addr, sizeof(a->addr));
	put16(w, a->port);
}

/* Set the length field from what follows the header. */
static void seal(struct wbuf *w)
{
	w->b[1] = (uint8_t)((w->n - FRAME_HDR) >> 8);
	w->b[2] = (uint8_t)(w->n - FRAME_HDR);
}

/* Every field set, and distinct, whatever the type, so that a field
 * encoded in the wrong place or left out shows up. */
static void fill_msg(struct msg *m, uint8_t type)
{
	size_t i;

	memset(m, 0, sizeof(*m));
	m->type = type;
	m->version = PROTO_VERSION;
	for (i = 0; i < NONCE_LEN; i++) {
		m->nonce[i] = (uint8_t)(0x10 + i);
	}
	for (i = 0; i < RUN_ID_LEN; i++) {
		m->run_id[i] = (uint8_t)(0xa0 + i);
	}
	for (i = 0; i < PROOF_LEN; i++) {
		m->proof[i] = (uint8_t)(0x40 + i);
	}
	for (i = 0; i < USER_ID_LEN; i++) {
		m->user_id[i] = (uint8_t)(0x90 + i);
	}
	m->tunnel_port = 0x1f48;
	m->public_port = 0xabcd;
	m->pool = 0x0102;
	m->heartbeat_s = 0x0102;
	m->code = ERR_BUSY;
	m->src.family = 4;
	m->src.addr[0] = 10;
	m->src.addr[1] = 1;
	m->src.addr[2] = 2;
	m->src.addr[3] = 3;
	m->src.port = 0xc001;
	m->dst.family = 6;
	for (i = 0; i < 16; i++) {
		m->dst.addr[i] = (uint8_t)(0xf0 ^ i);
	}
	m->dst.port = 0x0050;
	strcpy(m->text, "no route");
}

/* The frame m should encode to, per protocol.h. */
static void expect_frame(const struct msg *m, struct wbuf *w)
{
	w->n = 0;
	put8(w, m->type);
	put16(w, 0);
	switch (m->type) {
	case MSG_HELLO:
		put(w, PROTO_MAGIC, PROTO_MAGIC_LEN);
		put8(w, m->version);
		put(w, m->nonce, NONCE_LEN);
		put(w, m->run_id, RUN_ID_LEN);
		break;
	case MSG_CHALLENGE:
		put(w, PROTO_MAGIC, PROTO_MAGIC_LEN);
		put8(w, m->version);
		put(w, m->nonce, NONCE_LEN);
		break;
	case MSG_AUTH:
		put(w, m->proof, PROOF_LEN);
		put16(w, m->public_port);
		put16(w, m->pool);
		break;
	case MSG_TICKET:
		put(w, m->user_id, USER_ID_LEN);
		break;
	case MSG_WELCOME:
		put16(w, m->tunnel_port);
		put16(w, m->public_port);
		put16(w, m->heartbeat_s);
		break;
	case MSG_ERROR:
		put8(w, m->code);
		put(w, m->text, strlen(m->text));
		break;
	case MSG_NEW_USER:
		put(w, m->user_id, USER_ID_LEN);
		put_addr(w, &m->src);
		put_addr(w, &m->dst);
		break;
	case MSG_USER_FAILED:
		put(w, m->user_id, USER_ID_LEN);
		put(w, m->text, strlen(m->text));
		break;
	case MSG_JOIN:
		put(w, m->user_id, USER_ID_LEN);
		put(w, m->proof, PROOF_LEN);
		break;
	}
	seal(w);
}

/* Compare the fields that want's type gives meaning to. */
static void check_fields(struct tally *t, const struct msg *got,
                         const struct msg *want)
{
	const char *name = msg_name(want->type);

	CHECKF(t, got->type == want->type, "%s: decoded type %u", name,
	       got->type);
	switch (want->type) {
	case MSG_HELLO:
		CHECKF(t, memcmp(got->run_id, want->run_id, RUN_ID_LEN) == 0,
		       "%s: run_id differs", name);
		/* fall through */
	case MSG_CHALLENGE:
		CHECKF(t, got->version == want->version, "%s: version", name);
		CHECKF(t, memcmp(got->nonce, want->nonce, NONCE_LEN) == 0,
		       "%s: nonce differs", name);
		break;
	case MSG_AUTH:
		CHECKF(t, memcmp(got->proof, want->proof, PROOF_LEN) == 0,
		       "%s: proof differs", name);
		CHECKF(t, got->public_port == want->public_port &&
		          got->pool == want->pool,
		       "%s: public_port %u pool %u", name, got->public_port,
		       got->pool);
		break;
	case MSG_TICKET:
		CHECKF(t, memcmp(got->user_id, want->user_id, USER_ID_LEN) == 0,
		       "%s: user_id differs", name);
		break;
	case MSG_WELCOME:
		CHECKF(t, got->tunnel_port == want->tunnel_port &&
		          got->public_port == want->public_port &&
		          got->heartbeat_s == want->heartbeat_s,
		       "%s: ports %u %u %u", name, got->tunnel_port,
		       got->public_port, got->heartbeat_s);
		break;
	case MSG_ERROR:
		CHECKF(t, got->code == want->code, "%s: code %u", name, got->code);
		CHECKF(t, strcmp(got->text, want->text) == 0,
		       "%s: text \"%s\"", name, got->text);
		break;
	case MSG_NEW_USER:
		CHECKF(t, memcmp(got->user_id, want->user_id, USER_ID_LEN) == 0,
		       "%s: user_id differs", name);
		CHECKF(t, memcmp(&got->src, &want->src, sizeof(got->src)) == 0 &&
		          memcmp(&got->dst, &want->dst, sizeof(got->dst)) == 0,
		       "%s: addresses differ", name);
		break;
	case MSG_USER_FAILED:
		CHECKF(t, memcmp(got->user_id, want->user_id, USER_ID_LEN) == 0,
		       "%s: user_id differs", name);
		CHECKF(t, strcmp(got->text, want->text) == 0,
		       "%s: text \"%s\"", name, got->text);
		break;
	case MSG_JOIN:
		CHECKF(t, memcmp(got->user_id, want->user_id, USER_ID_LEN) == 0,
		       "%s: user_id differs", name);
		CHECKF(t, memcmp(got->proof, want->proof, PROOF_LEN) == 0,
		       "%s: proof differs", name);
		break;
	}
}

static enum frame_result decode(const uint8_t *buf, size_t len,
                                struct msg *m, size_t *used)
{
	memset(m, 0xee, sizeof(*m));
	*used = 0;
	return frame_decode(buf, len, m, used);
}

static void test_frame_types(struct tally *t)
{
	static const size_t payload[MSG_TYPE_END] = {
		[MSG_HELLO] = 29, [MSG_CHALLENGE] = 21, [MSG_AUTH] = 36,
		[MSG_WELCOME] = 6, [MSG_ERROR] = 1 + 8, [MSG_PING] = 0,
		[MSG_PONG] = 0, [MSG_NEW_USER] = 54, [MSG_USER_FAILED] = 16 + 8,
		[MSG_JOIN] = 48, [MSG_TICKET] = 16,
	};
	uint8_t out[FRAME_HDR + FRAME_MAX + 16];
	struct msg m, got;
	struct wbuf want;
	size_t n, used, cut;
	unsigned type;
	enum frame_result r;

	for (type = MSG_HELLO; type < MSG_TYPE_END; type++) {
		const char *name = msg_name(type);

		fill_msg(&m, (uint8_t)type);
		expect_frame(&m, &want);
		memset(out, 0xee, sizeof(out));
		n = frame_encode(out, &m);
		CHECKF(t, n == FRAME_HDR + payload[type],
		       "%s: encoded %zu bytes, want %zu", name, n,
		       FRAME_HDR + payload[type]);
		CHECKF(t, out[0] == type && out[1] == payload[type] >> 8 &&
		          out[2] == (payload[type] & 0xff),
		       "%s: header %02x %02x %02x", name, out[0], out[1], out[2]);
		CHECKF(t, n == want.n && memcmp(out, want.b, n) == 0,
		       "%s: encoded bytes differ from protocol.h's layout", name);

		r = decode(out, n, &got, &used);
		CHECKF(t, r == FRAME_OK && used == n,
		       "%s: decode gave %d, used %zu of %zu", name, r, used, n);
		check_fields(t, &got, &m);

		for (cut = 0; cut < n; cut++) {
			if (decode(out, cut, &got, &used) != FRAME_MORE) {
				break;
			}
		}
		CHECKF(t, cut == n, "%s: %zu-byte prefix is not FRAME_MORE",
		       name, cut);

		/* The start of the next frame must not be swallowed. */
		memcpy(out + n, "\x06\x00\x00\x01", 4);
		r = decode(out, n + 4, &got, &used);
		CHECKF(t, r == FRAME_OK && used == n,
		       "%s + extra bytes: decode gave %d, used %zu of %zu", name,
		       r, used, n);
	}
}

/* Decode a frame given as type, payload length and payload bytes. */
static enum frame_result decode_raw(unsigned type, size_t len,
                                    const uint8_t *payload, struct msg *m)
{
	uint8_t buf[FRAME_HDR + 1024];
	size_t used;

	buf[0] = (uint8_t)type;
	buf[1] = (uint8_t)(len >> 8);
	buf[2] = (uint8_t)len;
	memcpy(buf + FRAME_HDR, payload, len);
	return decode(buf, FRAME_HDR + len, m, &used);
}

static void test_frame_bad(struct tally *t)
{
	static const uint8_t fixed[] = {
		MSG_HELLO, MSG_CHALLENGE, MSG_AUTH, MSG_WELCOME, MSG_PING,
		MSG_PONG, MSG_NEW_USER, MSG_JOIN, MSG_TICKET,
	};
	static const uint8_t unknown[] = { 0, MSG_TYPE_END, 255 };
	static const uint8_t families[] = { 1, 2, 5, 10, 255 };
	uint8_t frame[FRAME_HDR + FRAME_MAX + 16], payload[1024];
	struct msg m, got;
	struct wbuf w;
	size_t i, n, len, used;
	enum frame_result r;

	for (i = 0; i < sizeof(unknown); i++) {
		uint8_t hdr[FRAME_HDR] = { unknown[i], 0, 0 };

		r = decode(hdr, sizeof(hdr), &got, &used);
		CHECKF(t, r == FRAME_BAD, "type %u header: got %d, want BAD",
		       unknown[i], r);
	}

	/* Oversize is known from the header; waiting for 64 KB would let a
	 * peer stall us. */
	{
		uint8_t hdr[FRAME_HDR] = { MSG_HELLO, 0xff, 0xff };
		uint8_t hdr2[FRAME_HDR] = { MSG_ERROR, (FRAME_MAX + 1) >> 8,
		                            (FRAME_MAX + 1) & 0xff };

		CHECK(t, decode(hdr, sizeof(hdr), &got, &used) == FRAME_BAD);
		CHECK(t, decode(hdr2, sizeof(hdr2), &got, &used) == FRAME_BAD);
	}

	/* One byte short or long, with the payload all there. */
	for (i = 0; i < sizeof(fixed); i++) {
		fill_msg(&m, fixed[i]);
		n = frame_encode(frame, &m);
		len = n - FRAME_HDR;
		memcpy(payload, frame + FRAME_HDR, len);
		payload[len] = 0;
		r = decode_raw(fixed[i], len + 1, payload, &got);
		CHECKF(t, r == FRAME_BAD, "%s with length %zu: got %d, want BAD",
		       msg_name(fixed[i]), len + 1, r);
		if (len > 0) {
			r = decode_raw(fixed[i], len - 1, payload, &got);
			CHECKF(t, r == FRAME_BAD,
			       "%s with length %zu: got %d, want BAD",
			       msg_name(fixed[i]), len - 1, r);
		}
	}

	/* Bad magic, in HELLO and CHALLENGE. */
	fill_msg(&m, MSG_HELLO);
	n = frame_encode(frame, &m);
	frame[FRAME_HDR + 3] = 'X';
	CHECK(t, decode(frame, n, &got, &used) == FRAME_BAD);
	fill_msg(&m, MSG_CHALLENGE);
	n = frame_encode(frame, &m);
	frame[FRAME_HDR] = 'd';
	CHECK(t, decode(frame, n, &got, &used) == FRAME_BAD);

	/* Another version: OK, with only the version to go on, whatever the
	 * length.  Version 1 with that length is simply wrong. */
	memcpy(payload, "DLBK\x02", 5);
	r = decode_raw(MSG_HELLO, 5, payload, &got);
	CHECKF(t, r == FRAME_OK && got.type == MSG_HELLO && got.version == 2,
	       "HELLO version 2, 5 bytes: got %d, type %u version %u", r,
	       got.type, got.version);
	r = decode_raw(MSG_CHALLENGE, 5, payload, &got);
	CHECKF(t, r == FRAME_OK && got.type == MSG_CHALLENGE && got.version == 2,
	       "CHALLENGE version 2, 5 bytes: got %d, type %u version %u", r,
	       got.type, got.version);
	/* Built by hand: frame_encode always writes PROTO_VERSION. */
	fill_msg(&m, MSG_HELLO);
	m.version = 7;
	expect_frame(&m, &w);
	r = decode(w.b, w.n, &got, &used);
	CHECKF(t, r == FRAME_OK && got.version == 7 && used == w.n,
	       "HELLO version 7, full length: got %d, version %u", r,
	       got.version);
	payload[4] = PROTO_VERSION;
	CHECK(t, decode_raw(MSG_HELLO, 5, payload, &got) == FRAME_BAD);

	/* ERROR needs 1..TEXT_MAX bytes of text; USER_FAILED 0..TEXT_MAX. */
	memset(payload, 'x', sizeof(payload));
	payload[0] = ERR_AUTH;
	CHECK(t, decode_raw(MSG_ERROR, 0, payload, &got) == FRAME_BAD);
	CHECK(t, decode_raw(MSG_ERROR, 1, payload, &got) == FRAME_BAD);
	r = decode_raw(MSG_ERROR, 1 + TEXT_MAX, payload, &got);
	CHECKF(t, r == FRAME_OK && strlen(got.text) == TEXT_MAX,
	       "ERROR with %d bytes of text: got %d", TEXT_MAX, r);
	CHECK(t, decode_raw(MSG_ERROR, 2 + TEXT_MAX, payload, &got) ==
	         FRAME_BAD);
	r = decode_raw(MSG_USER_FAILED, USER_ID_LEN, payload, &got);
	CHECKF(t, r == FRAME_OK && got.text[0] == '\0',
	       "USER_FAILED with no text: got %d", r);
	r = decode_raw(MSG_USER_FAILED, USER_ID_LEN + TEXT_MAX, payload, &got);
	CHECKF(t, r == FRAME_OK && strlen(got.text) == TEXT_MAX,
	       "USER_FAILED with %d bytes of text: got %d", TEXT_MAX, r);
	CHECK(t, decode_raw(MSG_USER_FAILED, USER_ID_LEN + TEXT_MAX + 1,
	                    payload, &got) == FRAME_BAD);
	CHECK(t, decode_raw(MSG_USER_FAILED, USER_ID_LEN - 1, payload, &got) ==
	         FRAME_BAD);

	/* Address families: 0 (unknown), 4 and 6 only, in src and dst. */
	fill_msg(&m, MSG_NEW_USER);
	m.src.family = 0;
	memset(m.src.addr, 0, sizeof(m.src.addr));
	n = frame_encode(frame, &m);
	r = decode(frame, n, &got, &used);
	CHECKF(t, r == FRAME_OK && got.src.family == 0,
	       "NEW_USER with family 0: got %d", r);
	for (i = 0; i < sizeof(families); i++) {
		fill_msg(&m, MSG_NEW_USER);
		n = frame_encode(frame, &m);
		frame[FRAME_HDR + USER_ID_LEN] = families[i];
		r = decode(frame, n, &got, &used);
		CHECKF(t, r == FRAME_BAD, "NEW_USER src family %u: got %d",
		       families[i], r);
		fill_msg(&m, MSG_NEW_USER);
		n = frame_encode(frame, &m);
		frame[FRAME_HDR + USER_ID_LEN + WIRE_ADDR_LEN] = families[i];
		r = decode(frame, n, &got, &used);
		CHECKF(t, r == FRAME_BAD, "NEW_USER dst family %u: got %d",
		       families[i], r);
	}
}

static void test_frame_text(struct tally *t)
{
	static const uint8_t raw[] = {
		ERR_PROTO, 'a', '\n', 'b', 0x1b, '[', '2', 'J', '\r', 'c', '\t',
		0x01, 'd',
	};
	uint8_t frame[FRAME_HDR + FRAME_MAX], payload[64];
	struct msg m, got;
	size_t n, used;
	enum frame_result r;

	r = decode_raw(MSG_ERROR, sizeof(raw), raw, &got);
	CHECKF(t, r == FRAME_OK, "ERROR with control bytes: got %d", r);
	if (r == FRAME_OK) {
		CHECK_INT(t, got.code, ERR_PROTO);
		CHECK_STR(t, got.text, "a?b?[2J?c??d");
	}

	/* NUL and DEL are control bytes too; a NUL kept would cut the text. */
	memcpy(payload, "\x02" "a" "\x00" "b" "\x7f" "c", 6);
	r = decode_raw(MSG_ERROR, 6, payload, &got);
	CHECKF(t, r == FRAME_OK, "ERROR with NUL and DEL: got %d", r);
	if (r == FRAME_OK) {
		CHECK_STR(t, got.text, "a?b?c");
	}

	/* Bytes above ASCII too: 0x9b is CSI to some terminals. */
	memcpy(payload, "\x02" "a" "\x9b" "b" "\xc3\xa9" "c", 7);
	r = decode_raw(MSG_ERROR, 7, payload, &got);
	CHECKF(t, r == FRAME_OK, "ERROR with high bytes: got %d", r);
	if (r == FRAME_OK) {
		CHECK_STR(t, got.text, "a?b??c");
	}

	memset(payload, 0x77, USER_ID_LEN);
	memcpy(payload + USER_ID_LEN, "ok\n", 3);
	r = decode_raw(MSG_USER_FAILED, USER_ID_LEN + 3, payload, &got);
	CHECKF(t, r == FRAME_OK, "USER_FAILED with newline: got %d", r);
	if (r == FRAME_OK) {
		CHECK_STR(t, got.text, "ok?");
	}

	/* Text that fills the field with no NUL is cut at TEXT_MAX. */
	fill_msg(&m, MSG_ERROR);
	memset(m.text, 'y', sizeof(m.text));
	n = frame_encode(frame, &m);
	CHECK_INT(t, n, FRAME_HDR + 1 + TEXT_MAX);
	r = decode(frame, n, &got, &used);
	CHECKF(t, r == FRAME_OK && strlen(got.text) == TEXT_MAX,
	       "ERROR cut to TEXT_MAX: decode gave %d", r);
	fill_msg(&m, MSG_USER_FAILED);
	memset(m.text, 'y', sizeof(m.text));
	n = frame_encode(frame, &m);
	CHECK_INT(t, n, FRAME_HDR + USER_ID_LEN + TEXT_MAX);
}

static void test_msg_name(struct tally *t)
{
	static const char *const names[MSG_TYPE_END] = {
		[MSG_HELLO] = "HELLO", [MSG_CHALLENGE] = "CHALLENGE",
		[MSG_AUTH] = "AUTH", [MSG_WELCOME] = "WELCOME",
		[MSG_ERROR] = "ERROR", [MSG_PING] = "PING", [MSG_PONG] = "PONG",
		[MSG_NEW_USER] = "NEW_USER", [MSG_USER_FAILED] = "USER_FAILED",
		[MSG_JOIN] = "JOIN", [MSG_TICKET] = "TICKET",
	};
	unsigned type;

	for (type = MSG_HELLO; type < MSG_TYPE_END; type++) {
		CHECK_STR(t, msg_name(type), names[type]);
	}
	CHECK_STR(t, msg_name(MSG_JOIN), "JOIN");
	CHECK_STR(t, msg_name(0), "unknown");
	CHECK_STR(t, msg_name(MSG_TYPE_END), "unknown");
	CHECK_STR(t, msg_name(99), "unknown");
}

/* ---- addresses ---------------------------------------------------------- */

static void test_addr_parse(struct tally *t)
{
	static const struct {
		const char *in;
		int def, zero;
		const char *host, *port;   /* host NULL: must be refused */
	} v[] = {
		{ "8009", -1, 0, "", "8009" },
		{ ":8009", -1, 0, "", "8009" },
		{ "127.0.0.1:80", -1, 0, "127.0.0.1", "80" },
		{ "example.com:443", -1, 0, "example.com", "443" },
		{ "[::1]:8009", -1, 0, "::1", "8009" },
		{ "host:65535", -1, 0, "host", "65535" },
		{ "example.com:443", 8009, 0, "example.com", "443" },
		{ "example.com", 8009, 0, "example.com", "8009" },
		{ "[::1]", 8009, 0, "::1", "8009" },
		{ "::1", 8009, 0, "::1", "8009" },
		{ "1.2.3.4", 8009, 0, "1.2.3.4", "8009" },
		{ "host:0", -1, 1, "host", "0" },
		{ "0", -1, 1, "", "0" },
		{ "", -1, 0, NULL, NULL },
		{ "", 8009, 0, NULL, NULL },
		{ ":", -1, 0, NULL, NULL },
		{ "host:", -1, 0, NULL, NULL },
		{ "host:", 8009, 0, NULL, NULL },
		{ "host:0", -1, 0, NULL, NULL },
		{ "0", -1, 0, NULL, NULL },
		{ "host:65536", -1, 0, NULL, NULL },
		{ "host:-1", -1, 0, NULL, NULL },
		{ "host:8a", -1, 0, NULL, NULL },
		{ "host:99999999999999999999", -1, 0, NULL, NULL },
		{ "[::1", 8009, 0, NULL, NULL },
		{ "[::1]x", 8009, 0, NULL, NULL },
		{ "[::1]:", 8009, 0, NULL, NULL },
		{ "[::1]", -1, 0, NULL, NULL },
		{ "example.com", -1, 0, NULL, NULL },
	};
	char longhost[300];
	struct hostport hp;
	const char *why;
	size_t i;
	int r;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		memset(&hp, 0x55, sizeof(hp));
		why = NULL;
		r = addr_parse(v[i].in, v[i].def, v[i].zero, &hp, &why);
		if (v[i].host == NULL) {
			CHECKF(t, r == -1 && why != NULL,
			       "addr_parse(\"%s\", %d, %d): got %d, want -1 with why",
			       v[i].in, v[i].def, v[i].zero, r);
			continue;
		}
		CHECKF(t, r == 0, "addr_parse(\"%s\", %d, %d): got %d (%s)",
		       v[i].in, v[i].def, v[i].zero, r, why ? why : "no why");
		if (r == 0) {
			CHECKF(t, memchr(hp.host, '\0', sizeof(hp.host)) != NULL &&
			          memchr(hp.port, '\0', sizeof(hp.port)) != NULL &&
			          strcmp(hp.host, v[i].host) == 0 &&
			          strcmp(hp.port, v[i].port) == 0,
			       "addr_parse(\"%s\"): host \"%.*s\" port \"%.*s\", "
			       "want \"%s\" \"%s\"", v[i].in,
			       (int)sizeof(hp.host), hp.host,
			       (int)sizeof(hp.port), hp.port,
			       v[i].host, v[i].port);
		}
	}

	/* 255 characters fit hp.host; 256 do not. */
	memset(longhost, 'h', 255);
	strcpy(longhost + 255, ":80");
	r = addr_parse(longhost, -1, 0, &hp, &why);
	CHECKF(t, r == 0 && strlen(hp.host) == 255,
	       "255-character host: got %d", r);
	memset(longhost, 'h', 256);
	strcpy(longhost + 256, ":80");
	why = NULL;
	r = addr_parse(longhost, -1, 0, &hp, &why);
	CHECKF(t, r == -1 && why != NULL, "256-character host: got %d", r);
	longhost[256] = '\0';
	why = NULL;
	r = addr_parse(longhost, 8009, 0, &hp, &why);
	CHECKF(t, r == -1 && why != NULL,
	       "256-character host, default port: got %d", r);
}

static void test_addr_str(struct tally *t)
{
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;
	struct wire_addr w;
	char buf[ADDR_STRLEN], wbuf[ADDR_STRLEN];
	const char *s;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(8080);
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	s = addr_str((struct sockaddr *)&sin, buf, sizeof(buf));
	CHECK_STR(t, s, "127.0.0.1:8080");
	memset(&w, 0xee, sizeof(w));
	addr_to_wire((struct sockaddr *)&sin, &w);
	CHECK_INT(t, w.family, 4);
	CHECK_INT(t, w.port, 8080);
	CHECK_MEM(t, w.addr, "\x7f\x00\x00\x01", 4);
	s = wire_addr_str(&w, wbuf, sizeof(wbuf));
	CHECK_STR(t, s, "127.0.0.1:8080");

	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons(443);
	sin6.sin6_addr = in6addr_loopback;
	s = addr_str((struct sockaddr *)&sin6, buf, sizeof(buf));
	CHECK_STR(t, s, "[::1]:443");
	memset(&w, 0xee, sizeof(w));
	addr_to_wire((struct sockaddr *)&sin6, &w);
	CHECK_INT(t, w.family, 6);
	CHECK_INT(t, w.port, 443);
	CHECK_MEM(t, w.addr, &in6addr_loopback, 16);
	s = wire_addr_str(&w, wbuf, sizeof(wbuf));
	CHECK_STR(t, s, "[::1]:443");
}

/* ---- keys --------------------------------------------------------------- */

static void test_keys(struct tally *t)
{
	static const char *const tokens[] = { "s3cret", "" };
	uint8_t cn[NONCE_LEN], sn[NONCE_LEN], id[USER_ID_LEN];
	uint8_t a[PROOF_LEN], b[PROOF_LEN], want[PROOF_LEN], k[PROOF_LEN];
	struct hmac_sha256 h;
	size_t i;

	for (i = 0; i < NONCE_LEN; i++) {
		cn[i] = (uint8_t)(i + 1);
		sn[i] = (uint8_t)(0x80 + i);
		id[i] = (uint8_t)(0x30 + i);
	}
	for (i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++) {
		const char *tok = tokens[i];

		key_auth_proof(tok, cn, sn, a);
		key_auth_proof(tok, cn, sn, b);
		CHECKF(t, memcmp(a, b, PROOF_LEN) == 0,
		       "token \"%s\": key_auth_proof not deterministic", tok);
		hmac_sha256_init(&h, tok, strlen(tok));
		hmac_sha256_update(&h, "dialback auth", 13);
		hmac_sha256_update(&h, cn, NONCE_LEN);
		hmac_sha256_update(&h, sn, NONCE_LEN);
		hmac_sha256_final(&h, want);
		CHECKF(t, memcmp(a, want, PROOF_LEN) == 0,
		       "token \"%s\": key_auth_proof is not "
		       "HMAC(token, \"dialback auth\" cn sn)", tok);

		key_session(tok, cn, sn, k);
		key_session(tok, cn, sn, b);
		CHECKF(t, memcmp(k, b, PROOF_LEN) == 0,
		       "token \"%s\": key_session not deterministic", tok);
		CHECKF(t, memcmp(k, a, PROOF_LEN) != 0,
		       "token \"%s\": key_session equals key_auth_proof", tok);
		hmac_sha256_init(&h, tok, strlen(tok));
		hmac_sha256_update(&h, "dialback session", 16);
		hmac_sha256_update(&h, cn, NONCE_LEN);
		hmac_sha256_update(&h, sn, NONCE_LEN);
		hmac_sha256_final(&h, want);
		CHECKF(t, memcmp(k, want, PROOF_LEN) == 0,
		       "token \"%s\": key_session is not "
		       "HMAC(token, \"dialback session\" cn sn)", tok);

		/* Swapping or changing a nonce changes both. */
		key_auth_proof(tok, sn, cn, b);
		CHECKF(t, memcmp(a, b, PROOF_LEN) != 0,
		       "token \"%s\": auth proof ignores nonce order", tok);
		sn[0] ^= 1;
		key_auth_proof(tok, cn, sn, b);
		CHECKF(t, memcmp(a, b, PROOF_LEN) != 0,
		       "token \"%s\": auth proof ignores server nonce", tok);
		key_session(tok, cn, sn, b);
		CHECKF(t, memcmp(k, b, PROOF_LEN) != 0,
		       "token \"%s\": session key ignores server nonce", tok);
		sn[0] ^= 1;
		cn[15] ^= 1;
		key_auth_proof(tok, cn, sn, b);
		CHECKF(t, memcmp(a, b, PROOF_LEN) != 0,
		       "token \"%s\": auth proof ignores client nonce", tok);
		cn[15] ^= 1;

		key_join_proof(k, id, a);
		key_join_proof(k, id, b);
		CHECKF(t, memcmp(a, b, PROOF_LEN) == 0,
		       "token \"%s\": key_join_proof not deterministic", tok);
		hmac_sha256_init(&h, k, PROOF_LEN);
		hmac_sha256_update(&h, "dialback join", 13);
		hmac_sha256_update(&h, id, USER_ID_LEN);
		hmac_sha256_final(&h, want);
		CHECKF(t, memcmp(a, want, PROOF_LEN) == 0,
		       "token \"%s\": key_join_proof is not "
		       "HMAC(K, \"dialback join\" user_id)", tok);
		id[3] ^= 0x10;
		key_join_proof(k, id, b);
		CHECKF(t, memcmp(a, b, PROOF_LEN) != 0,
		       "token \"%s\": join proof ignores user_id", tok);
		id[3] ^= 0x10;
	}

	key_auth_proof("s3cret", cn, sn, a);
	key_auth_proof("s3creT", cn, sn, b);
	CHECK(t, memcmp(a, b, PROOF_LEN) != 0);
}

/* ---- PROXY protocol header ---------------------------------------------- */

static struct wire_addr wa(int family, const char *ip, uint16_t port)
{
	struct wire_addr w;

	memset(&w, 0, sizeof(w));
	w.family = (uint8_t)family;
	w.port = port;
	if (family == 4) {
		inet_pton(AF_INET, ip, w.addr);
	} else if (family == 6) {
		inet_pton(AF_INET6, ip, w.addr);
	}
	return w;
}

/* proxy_check: proxy_header(version, src, dst) is exactly want[0..n), and
 * nothing past PROXY_MAX was written. */
static void proxy_check(struct tally *t, int version, struct wire_addr src,
                        struct wire_addr dst, const void *want, size_t n,
                        int line, const char *what)
{
	uint8_t out[PROXY_MAX + 16];
	size_t len, i;
	int clean = 1;

	memset(out, 0xee, sizeof(out));
	len = proxy_header(version, &src, &dst, out);
	tally_check(t, len == n, __FILE__, line, "%s: length %zu, want %zu",
	            what, len, n);
	tally_check_mem(t, out, want, n, __FILE__, line, what);
	for (i = PROXY_MAX; i < sizeof(out); i++) {
		clean &= out[i] == 0xee;
	}
	tally_check(t, clean && len <= PROXY_MAX, __FILE__, line,
	            "%s: wrote past PROXY_MAX", what);
}

#define PROXY_TEXT(t, v, s, d, text) \
	proxy_check((t), (v), (s), (d), (text), strlen(text), __LINE__, \
	            "v1 " #s " -> " #d)
#define PROXY_BYTES(t, v, s, d, bytes, what) \
	proxy_check((t), (v), (s), (d), (bytes), sizeof(bytes), __LINE__, (what))

static void test_proxy_header(struct tally *t)
{
	static const char longest[] =
		"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
#define SIG 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, \
            0x54, 0x0a
	static const uint8_t v2_tcp4[] = {
		SIG, 0x21, 0x11, 0x00, 12,
		192, 0, 2, 1, 203, 0, 113, 7, 0xdc, 0x04, 0x1f, 0x47,
	};
	static const uint8_t v2_tcp6[] = {
		SIG, 0x21, 0x21, 0x00, 36,
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
		0x01, 0xbb, 0x1f, 0x47,
	};
	static const uint8_t v2_mixed[] = {   /* IPv4 user, IPv6 public */
		SIG, 0x21, 0x21, 0x00, 36,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1,
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
		0xdc, 0x04, 0x1f, 0x47,
	};
	static const uint8_t v2_mixed_rev[] = {   /* IPv6 user, IPv4 public */
		SIG, 0x21, 0x21, 0x00, 36,
		0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 7,
		0x01, 0xbb, 0x1f, 0x47,
	};
	static const uint8_t v2_ports[] = {   /* port 0 and 65535 */
		SIG, 0x21, 0x11, 0x00, 12,
		127, 0, 0, 1, 127, 0, 0, 1, 0x00, 0x00, 0xff, 0xff,
	};
	static const uint8_t v2_local[] = { SIG, 0x20, 0x00, 0x00, 0x00 };
#undef SIG
	struct wire_addr s4 = wa(4, "192.0.2.1", 56324);
	struct wire_addr d4 = wa(4, "203.0.113.7", 8007);
	struct wire_addr s6 = wa(6, "2001:db8::1", 443);
	struct wire_addr d6 = wa(6, "2001:db8::2", 8007);
	struct wire_addr none = wa(0, "", 0);
	struct wire_addr ff = wa(6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	                         65535);

	PROXY_TEXT(t, 1, s4, d4, "PROXY TCP4 192.0.2.1 203.0.113.7 56324 8007\r\n");
	PROXY_TEXT(t, 1, s6, d6, "PROXY TCP6 2001:db8::1 2001:db8::2 443 8007\r\n");
	PROXY_TEXT(t, 1, s4, d6,
	           "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 56324 8007\r\n");
	PROXY_TEXT(t, 1, s6, d4,
	           "PROXY TCP6 2001:db8::1 ::ffff:203.0.113.7 443 8007\r\n");
	PROXY_TEXT(t, 1, wa(4, "127.0.0.1", 0), wa(4, "127.0.0.1", 65535),
	           "PROXY TCP4 127.0.0.1 127.0.0.1 0 65535\r\n");
	PROXY_TEXT(t, 1, none, d4, "PROXY UNKNOWN\r\n");
	PROXY_TEXT(t, 1, s4, none, "PROXY UNKNOWN\r\n");
	PROXY_TEXT(t, 1, none, none, "PROXY UNKNOWN\r\n");
	/* The spec's longest v1 line is 107 bytes with CRLF; ours fits. */
	PROXY_TEXT(t, 1, ff, ff, longest);
	CHECK(t, strlen(longest) <= 107);

	PROXY_BYTES(t, 2, s4, d4, v2_tcp4, "v2 TCP4");
	PROXY_BYTES(t, 2, s6, d6, v2_tcp6, "v2 TCP6");
	PROXY_BYTES(t, 2, s4, d6, v2_mixed, "v2 IPv4 user, IPv6 public");
	PROXY_BYTES(t, 2, s6, d4, v2_mixed_rev, "v2 IPv6 user, IPv4 public");
	PROXY_BYTES(t, 2, wa(4, "127.0.0.1", 0), wa(4, "127.0.0.1", 65535),
	            v2_ports, "v2 ports 0 and 65535");
	PROXY_BYTES(t, 2, none, d4, v2_local, "v2 unknown source: LOCAL");
	PROXY_BYTES(t, 2, s6, none, v2_local, "v2 unknown destination: LOCAL");
	CHECK_INT(t, sizeof(v2_tcp4), 28);
	CHECK_INT(t, sizeof(v2_tcp6), 52);
}

/* ---- relay -------------------------------------------------------------- */

/* A connected loopback TCP pair: *out the connecting end, *in the
 * accepted one.  -1 on failure. */
static int tcp_pair(int *out, int *in)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	*out = *in = -1;
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(l, 1) != 0 || getsockname(l, (struct sockaddr *)&sa, &len) != 0 ||
	    (*out = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
	    connect(*out, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    (*in = accept(l, NULL, NULL)) < 0) {
		if (l >= 0) {
			close(l);
		}
		return -1;
	}
	close(l);
	return set_nonblock(*out) == 0 && set_nonblock(*in) == 0 ? 0 : -1;
}

static uint8_t stream_byte(uint64_t i)
{
	return (uint8_t)((i * 2654435761u) >> 13);
}

/*
 * Bytes must come out in the order they went in while the relay switches
 * between copying (small writes) and splicing (full reads), and while the
 * sink pushes back so that bytes wait in its buffer or pipe.  A writer
 * sends a mix of 1-byte and multi-64-KiB chunks; the reader stops for
 * stretches.  (A copy that overtook bytes waiting in a pipe once corrupted
 * a download here.)
 */
static void test_relay_order(struct tally *t)
{
	static const size_t sizes[] = { 1, 70000, 3, 200000, 10, 65536, 65535,
	                                1, 1, 300000, 7, 131072, 2, 65537 };
	static uint8_t buf[256 * 1024];
	const uint64_t total = 16u << 20;
	uint64_t sent = 0, got = 0, bad = UINT64_MAX;
	size_t chunk = 0, left = sizes[0];
	int a, b, c, d, turn = 0, eof = 0;
	int seen_backlog = 0, seen_bulk = 0, seen_copy_again = 0;
	int seen_piped_copy = 0;
	time_t deadline = time(NULL) + 20;
	struct relay r;

	if (tcp_pair(&a, &b) != 0 || tcp_pair(&c, &d) != 0) {
		CHECKF(t, 0, "relay order: loopback sockets: %s", strerror(errno));
		return;
	}
	relay_init(&r, b, c);
	while (!eof && time(NULL) < deadline) {
		struct pollfd pfd[4];
		short ev[2], rev[2];
		int reading = (turn++ / 50) % 3 != 0;   /* stalls a third */

		relay_events(&r, ev);
		pfd[0].fd = a;
		pfd[0].events = sent < total ? POLLOUT : 0;
		pfd[1].fd = b;
		pfd[1].events = ev[0];
		pfd[2].fd = c;
		pfd[2].events = ev[1];
		pfd[3].fd = d;
		pfd[3].events = reading ? POLLIN : 0;
		if (poll(pfd, 4, reading ? 100 : 1) < 0) {
			break;
		}
		if (pfd[0].revents & POLLOUT) {
			size_t n = left < sizeof(buf) ? left : sizeof(buf), i;
			ssize_t k;

			if (n > total - sent) {
				n = (size_t)(total - sent);
			}
			for (i = 0; i < n; i++) {
				buf[i] = stream_byte(sent + i);
			}
			if ((k = send(a, buf, n, MSG_NOSIGNAL)) > 0) {
				sent += (uint64_t)k;
				left -= (size_t)k;
				if (left == 0) {
					chunk = (chunk + 1) % (sizeof(sizes) / sizeof(sizes[0]));
					left = sizes[chunk];
				}
			}
		}
		rev[0] = pfd[1].revents;
		rev[1] = pfd[2].revents;
		if (relay_step(&r, rev) == RELAY_FAIL) {
			CHECKF(t, 0, "relay order: relay failed: %s", r.err_op);
			break;
		}
		/* The states the order depends on: bulk mode, copy again
		 * after bulk, and pipe bytes waiting while the direction
		 * copies again (without splice: a copied backlog). */
		seen_backlog |= r.dir[0].len > 0;
		seen_bulk |= r.dir[0].bulk;
		seen_copy_again |= seen_bulk && !r.dir[0].bulk;
		seen_piped_copy |= r.dir[0].piped > 0 && !r.dir[0].bulk;
		if (sent == total && pfd[0].events != 0) {
			shutdown(a, SHUT_WR);       /* EOF behind the last byte */
		}
		if (pfd[3].revents & POLLIN) {
			ssize_t k = read(d, buf, 4096 + (size_t)(turn % 7) * 9000);
			ssize_t i;

			for (i = 0; i < k && bad == UINT64_MAX; i++) {
				if (buf[i] != stream_byte(got + (uint64_t)i)) {
					bad = got + (uint64_t)i;
				}
			}
			if (k > 0) {
				got += (uint64_t)k;
			}
			eof = k == 0;
		}
		if (bad != UINT64_MAX) {
			break;
		}
	}
	CHECKF(t, bad == UINT64_MAX, "relay order: byte %llu out of order",
	       (unsigned long long)bad);
	CHECKF(t, got == total, "relay order: %llu of %llu bytes arrived",
	       (unsigned long long)got, (unsigned long long)total);
	CHECKF(t, eof && r.dir[0].shut, "relay order: the end was not passed on");
	if (r.splice) {
		CHECKF(t, seen_bulk && seen_copy_again && seen_piped_copy,
		       "relay order: states not reached: bulk %d, copy again %d, "
		       "pipe bytes while copying %d", seen_bulk, seen_copy_again,
		       seen_piped_copy);
	} else {
		CHECKF(t, seen_backlog, "relay order: the sink never pushed back");
	}
	relay_close(&r);
	close(a);
	close(d);
}

/* ---- frame buffers ------------------------------------------------------ */

/* A non-blocking AF_UNIX stream pair.  -1 on failure. */
static int unix_pair(int sv[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
		return -1;
	}
	if (set_nonblock(sv[0]) != 0 || set_nonblock(sv[1]) != 0) {
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	return 0;
}

/* Frame number seq: a USER_FAILED with seq in its user id and a text of
 * seq % 50 letters, so that frames differ in size. */
static size_t numbered(struct msg *m, unsigned seq, uint8_t *frame)
{
	size_t i, n = seq % 50;

	memset(m, 0, sizeof(*m));
	m->type = MSG_USER_FAILED;
	m->user_id[0] = (uint8_t)(seq >> 8);
	m->user_id[1] = (uint8_t)seq;
	for (i = 0; i < n; i++) {
		m->text[i] = (char)('a' + (seq + i) % 26);
	}
	return frame != NULL ? frame_encode(frame, m) : 0;
}

/* same_msg: got is frame number seq. */
static int same_msg(const struct msg *got, unsigned seq)
{
	struct msg want;

	numbered(&want, seq, NULL);
	return got->type == want.type
	       && memcmp(got->user_id, want.user_id, USER_ID_LEN) == 0
	       && strcmp(got->text, want.text) == 0;
}

/* Everything the peer can read now, appended to buf[*n..cap). */
static void drain(int fd, uint8_t *buf, size_t *n, size_t cap)
{
	ssize_t k;

	while (*n < cap && (k = read(fd, buf + *n, cap - *n)) > 0) {
		*n += (size_t)k;
	}
}

/* fbuf_put fills up to the capacity and refuses a frame that doesn't fit
 * whole; fbuf_take gives the frames back in order, consuming only whole
 * ones. */
static void test_fbuf_put_take(struct tally *t)
{
	struct fbuf b = { NULL, 0, 0 };
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	struct msg m, got;
	size_t len, fs;
	unsigned i, n = 0;

	CHECK_INT(t, fbuf_init(&b, 10), 0);
	CHECK_INT(t, b.cap, FRAME_HDR + FRAME_MAX);    /* one frame at least */
	CHECK_INT(t, b.len, 0);
	CHECK(t, b.data != NULL);
	CHECK_INT(t, fbuf_take(&b, &got), FRAME_MORE);

	fs = numbered(&m, 40, frame);
	while (fbuf_put(&b, &m) == 0) {
		n++;
		CHECK_INT(t, b.len, n * fs);
		if (n > b.cap) {
			break;
		}
	}
	CHECK_INT(t, n, (FRAME_HDR + FRAME_MAX) / fs);
	len = b.len;
	CHECK_INT(t, fbuf_put(&b, &m), -1);        /* refused, nothing added */
	CHECK_INT(t, b.len, len);

	/* Room again: grow keeps what is held. */
	CHECK_INT(t, fbuf_init(&b, 4 * FBUF_SMALL), 0);
	CHECK_INT(t, b.cap, 4 * FBUF_SMALL);
	CHECK_INT(t, b.len, len);
	for (i = 0; i < 10; i++) {
		numbered(&m, 100 + i, NULL);
		CHECK_INT(t, fbuf_put(&b, &m), 0);
	}
	for (i = 0; i < n; i++) {
		CHECK_INT(t, fbuf_take(&b, &got), FRAME_OK);
		CHECKF(t, same_msg(&got, 40), "fbuf: frame %u of %u", i, n);
	}
	for (i = 0; i < 10; i++) {
		CHECK_INT(t, fbuf_take(&b, &got), FRAME_OK);
		CHECKF(t, same_msg(&got, 100 + i), "fbuf: grown frame %u", i);
	}
	CHECK_INT(t, b.len, 0);
	CHECK_INT(t, fbuf_take(&b, &got), FRAME_MORE);

	/* A part of a frame stays until the rest comes. */
	fs = numbered(&m, 7, frame);
	memcpy(b.data, frame, fs - 1);
	b.len = fs - 1;
	CHECK_INT(t, fbuf_take(&b, &got), FRAME_MORE);
	CHECK_INT(t, b.len, fs - 1);
	/* A bad one is left for the caller to see, and to drop the peer. */
	b.data[0] = 0xee;
	CHECK_INT(t, fbuf_take(&b, &got), FRAME_BAD);
	CHECK_INT(t, b.len, fs - 1);

	fbuf_free(&b);
	CHECK(t, b.data == NULL && b.len == 0 && b.cap == 0);
	fbuf_free(&b);                              /* twice is harmless */
}

/* fbuf_fill: a frame split anywhere across two reads, EAGAIN, a full
 * buffer, EOF and an error. */
static void test_fbuf_fill(struct tally *t)
{
	struct fbuf b = { NULL, 0, 0 };
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	struct msg m, got;
	size_t fs, k;
	int sv[2], a, c;

	if (unix_pair(sv) != 0 || fbuf_init(&b, FBUF_SMALL) != 0) {
		CHECKF(t, 0, "fbuf fill: set-up: %s", strerror(errno));
		return;
	}
	CHECK_INT(t, fbuf_fill(&b, sv[0]), 1);      /* EAGAIN: nothing yet */
	CHECK_INT(t, b.len, 0);

	fs = numbered(&m, 49, frame);
	for (k = 1; k < fs; k++) {
		int ok = write(sv[1], frame, k) == (ssize_t)k
		         && fbuf_fill(&b, sv[0]) == 1 && b.len == k
		         && fbuf_take(&b, &got) == FRAME_MORE && b.len == k
		         && write(sv[1], frame + k, fs - k) == (ssize_t)(fs - k)
		         && fbuf_fill(&b, sv[0]) == 1 && b.len == fs
		         && fbuf_take(&b, &got) == FRAME_OK
		         && same_msg(&got, 49)
		         && b.len == 0;

		CHECKF(t, ok, "fbuf fill: frame split after byte %zu of %zu", k,
		       fs);
		if (!ok) {
			break;
		}
	}

	/* Two frames and a half in one read: two come out, the half stays. */
	fs = numbered(&m, 3, frame);
	CHECK(t, write(sv[1], frame, fs) == (ssize_t)fs);
	CHECK(t, write(sv[1], frame, fs) == (ssize_t)fs);
	CHECK(t, write(sv[1], frame, 2) == 2);
	CHECK_INT(t, fbuf_fill(&b, sv[0]), 1);
	CHECK_INT(t, b.len, 2 * fs + 2);
	CHECK_INT(t, fbuf_take(&b, &got), FRAME_OK);
	CHECK_INT(t, fbuf_take(&b, &got), FRAME_OK);
	CHECK(t, same_msg(&got, 3));
	CHECK_INT(t, fbuf_take(&b, &got), FRAME_MORE);
	CHECK_INT(t, b.len, 2);

	/* A full buffer reads nothing, and that is not an EOF. */
	k = b.len;
	b.len = b.cap;
	CHECK(t, write(sv[1], frame, fs) == (ssize_t)fs);
	CHECK_INT(t, fbuf_fill(&b, sv[0]), 1);
	CHECK_INT(t, b.len, b.cap);
	b.len = k;
	CHECK_INT(t, fbuf_fill(&b, sv[0]), 1);      /* the frame waiting */
	CHECK_INT(t, b.len, k + fs);

	/* EOF, with bytes of a frame still held. */
	close(sv[1]);
	CHECK_INT(t, fbuf_fill(&b, sv[0]), 0);
	CHECK_INT(t, b.len, k + fs);
	close(sv[0]);

	/* An error: the peer resets the connection. */
	b.len = 0;
	if (tcp_pair(&a, &c) != 0) {
		CHECKF(t, 0, "fbuf fill: loopback sockets: %s",
		       strerror(errno));
	} else {
		struct linger lg = { 1, 0 };

		setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(c);
		poll(&(struct pollfd){ a, POLLIN, 0 }, 1, 1000);
		errno = 0;
		CHECK_INT(t, fbuf_fill(&b, a), -1);
		CHECK_INT(t, errno, ECONNRESET);
		close(a);
	}
	fbuf_free(&b);
}

/* fbuf_flush: what the socket takes leaves from the front, the rest stays
 * in order; all of it arrives once the peer reads; a peer gone is -1. */
static void test_fbuf_flush(struct tally *t)
{
	enum { CAP = 1 << 20 };
	struct fbuf b = { NULL, 0, 0 };
	uint8_t *orig = malloc(CAP), *seen = malloc(CAP);
	size_t total, n = 0, off = 0, used;
	int sv[2], small = 4096, turns = 0;
	unsigned seq = 0, bad = 0;
	struct msg m;

	if (orig == NULL || seen == NULL || unix_pair(sv) != 0
	    || fbuf_init(&b, CAP) != 0) {
		CHECKF(t, 0, "fbuf flush: set-up: %s", strerror(errno));
		free(orig);
		free(seen);
		return;
	}
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	for (numbered(&m, seq, NULL); fbuf_put(&b, &m) == 0;
	     numbered(&m, ++seq, NULL)) {
		continue;
	}
	total = b.len;
	memcpy(orig, b.data, total);

	/* The peer reads nothing: a partial write, the rest kept. */
	CHECK_INT(t, fbuf_flush(&b, sv[0]), 0);
	CHECKF(t, b.len > 0 && b.len < total, "fbuf flush: %zu of %zu bytes "
	       "left after a flush into a full socket", b.len, total);
	CHECK(t, memcmp(b.data, orig + (total - b.len), b.len) == 0);
	CHECK_INT(t, fbuf_flush(&b, sv[0]), 0);     /* still full: no change */

	while (b.len > 0 && turns++ < 100000) {
		drain(sv[1], seen, &n, CAP);
		CHECK_INT(t, fbuf_flush(&b, sv[0]), 0);
	}
	drain(sv[1], seen, &n, CAP);
	CHECK_INT(t, b.len, 0);
	CHECK_INT(t, n, total);
	CHECK(t, n == total && memcmp(seen, orig, total) == 0);
	for (seq = 0; off < n; seq++) {
		if (frame_decode(seen + off, n - off, &m, &used) != FRAME_OK
		    || !same_msg(&m, seq)) {
			bad++;
			break;
		}
		off += used;
	}
	CHECKF(t, bad == 0, "fbuf flush: frame %u arrived wrong", seq);

	/* The peer is gone: an error, and no SIGPIPE. */
	close(sv[1]);
	numbered(&m, 1, NULL);
	CHECK_INT(t, fbuf_put(&b, &m), 0);
	errno = 0;
	CHECK_INT(t, fbuf_flush(&b, sv[0]), -1);
	CHECK_INT(t, errno, EPIPE);
	close(sv[0]);
	fbuf_free(&b);
	free(orig);
	free(seen);
}

/* ---- flags -------------------------------------------------------------- */

struct parsed {
	const char *remote, *token;
	int verbose, quiet;
	char err[64];
};

/* parse: flags_parse over the words of args (NULL-ended), argv[0] being
 * "prog", into *p (cleared first). */
static int parse(struct parsed *p, const char *const args[])
{
	const struct flag flags[] = {
		{ "remote", &p->remote, NULL },
		{ "token", &p->token, NULL },
		{ "v", NULL, &p->verbose },
		{ "q", NULL, &p->quiet },
		{ NULL, NULL, NULL },
	};
	char *argv[16];
	int argc = 0;

	memset(p, 0, sizeof(*p));
	argv[argc++] = "prog";
	while (*args != NULL && argc < 15) {
		argv[argc++] = (char *)*args++;
	}
	argv[argc] = NULL;
	return flags_parse(argc, argv, flags, p->err, sizeof(p->err));
}

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

static void test_flags_parse(struct tally *t)
{
	static const char *const none[] = { NULL };
	struct parsed p;
	char tiny[8];
	const struct flag one[] = { { "remote", &p.remote, NULL },
	                            { NULL, NULL, NULL } };
	char *long_argv[] = { "prog", "-no-such-flag-at-all", NULL };

	CHECK_INT(t, parse(&p, none), 0);
	CHECK(t, p.remote == NULL && p.token == NULL && !p.verbose);

	/* Every spelling of a value and of a switch. */
	CHECK_INT(t, parse(&p, ARGS("-remote", "a:1")), 0);
	CHECK_STR(t, p.remote, "a:1");
	CHECK_INT(t, parse(&p, ARGS("-remote=b:2")), 0);
	CHECK_STR(t, p.remote, "b:2");
	CHECK_INT(t, parse(&p, ARGS("--remote", "c:3")), 0);
	CHECK_STR(t, p.remote, "c:3");
	CHECK_INT(t, parse(&p, ARGS("--remote=d:4")), 0);
	CHECK_STR(t, p.remote, "d:4");
	CHECK_INT(t, parse(&p, ARGS("-remote=")), 0);
	CHECK_STR(t, p.remote, "");
	CHECK_INT(t, parse(&p, ARGS("-token=x=y")), 0);      /* first '=' */
	CHECK_STR(t, p.token, "x=y");
	CHECK_INT(t, parse(&p, ARGS("-v", "--q", "-token", "s", "-remote",
	                            "e:5")), 0);
	CHECK(t, p.verbose == 1 && p.quiet == 1);
	CHECK_STR(t, p.token, "s");
	CHECK_STR(t, p.remote, "e:5");

	/* What is refused, and how it is named. */
	CHECK_INT(t, parse(&p, ARGS("-nope")), -1);
	CHECK_STR(t, p.err, "unknown flag '-nope'");
	CHECK_INT(t, parse(&p, ARGS("--rem", "x")), -1);     /* no prefixes */
	CHECK_STR(t, p.err, "unknown flag '--rem'");
	CHECK_INT(t, parse(&p, ARGS("-remotex", "x")), -1);
	CHECK_STR(t, p.err, "unknown flag '-remotex'");
	CHECK_INT(t, parse(&p, ARGS("--")), -1);
	CHECK_STR(t, p.err, "unknown flag '--'");
	CHECK_INT(t, parse(&p, ARGS("-v", "-remote")), -1);
	CHECK_STR(t, p.err, "flag -remote needs a value");
	CHECK(t, p.verbose == 1);                   /* what came before holds */
	CHECK_INT(t, parse(&p, ARGS("-v=1")), -1);
	CHECK_STR(t, p.err, "flag -v takes no value");
	CHECK_INT(t, parse(&p, ARGS("a:1")), -1);
	CHECK_STR(t, p.err, "unexpected argument 'a:1'");
	CHECK_INT(t, parse(&p, ARGS("-")), -1);
	CHECK_STR(t, p.err, "unexpected argument '-'");
	CHECK_INT(t, parse(&p, ARGS("-remote", "a:1", "stray")), -1);
	CHECK_STR(t, p.err, "unexpected argument 'stray'");

	/* A short error buffer gets a cut, terminated message. */
	memset(tiny, 'x', sizeof(tiny));
	CHECK_INT(t, flags_parse(2, long_argv, one, tiny, sizeof(tiny)), -1);
	CHECK_INT(t, strnlen(tiny, sizeof(tiny)), sizeof(tiny) - 1);
	CHECK_STR(t, tiny, "unknown");
}

/* ---- event loop --------------------------------------------------------- */

/* What one loop_wait said about one watch. */
struct seen {
	int count;           /* events naming w */
	int fd;              /* the fd of the last of them */
	short revents;       /* all their revents */
};

static struct seen seen_for(const struct loop_event *ev, int n,
                            const struct watch *w)
{
	struct seen s = { 0, -1, 0 };
	int i;

	for (i = 0; i < n; i++) {
		if (ev[i].w == w) {
			s.count++;
			s.fd = ev[i].fd;
			s.revents |= ev[i].revents;
		}
	}
	return s;
}

/* One backend, through common.h's contract; DIALBACK_POLL picks it. */
static void loop_suite(struct tally *t, const char *backend)
{
	enum { MANY = 100 };
	struct loop *l;
	struct watch a, b, c, many[MANY];
	struct loop_event *ev;
	struct seen s;
	int p[2], q[2], r[2], h[2], fds[MANY][2];
	int n, i, k, tag_a, tag_b, old, got[MANY], total;
	int64_t t0;

	if (strcmp(backend, "poll") == 0) {
		setenv("DIALBACK_POLL", "1", 1);
	} else {
		unsetenv("DIALBACK_POLL");
	}
	l = loop_new();
	if (strcmp(loop_backend(l), backend) != 0) {
		tally_skip(t, backend, "this system's loop_new has no such "
		           "backend");
		loop_free(l);
		return;
	}
	if (unix_pair(p) != 0 || unix_pair(q) != 0 || unix_pair(r) != 0) {
		CHECKF(t, 0, "%s: socketpair: %s", backend, strerror(errno));
		loop_free(l);
		return;
	}
	watch_init(&a, 3, &tag_a, 0);
	watch_init(&b, 4, &tag_b, 1);
	watch_init(&c, 5, NULL, 0);
	CHECK_INT(t, a.fd, -1);

	/* POLLIN, when there is something to read, and again while it is
	 * there (level-triggered); the owner's fields come back as given. */
	CHECK_INT(t, loop_watch(l, &a, p[0], POLLIN), 0);
	CHECK_INT(t, loop_wait(l, 0, &ev), 0);
	CHECK(t, write(p[1], "x", 1) == 1);
	for (k = 0; k < 2; k++) {
		n = loop_wait(l, 1000, &ev);
		CHECKF(t, n == 1 && ev[0].w == &a && ev[0].fd == p[0]
		       && ev[0].revents == POLLIN, "%s: POLLIN, wait %d: %d "
		       "events", backend, k, n);
	}
	CHECK(t, a.kind == 3 && a.side == 0 && a.obj == &tag_a);

	/* POLLOUT too; the same interest again changes nothing. */
	CHECK_INT(t, loop_watch(l, &a, p[0], POLLIN | POLLOUT), 0);
	CHECK_INT(t, loop_watch(l, &a, p[0], POLLIN | POLLOUT), 0);
	CHECK_INT(t, a.events, POLLIN | POLLOUT);
	n = loop_wait(l, 1000, &ev);
	s = seen_for(ev, n, &a);
	CHECKF(t, n == 1 && s.revents == (POLLIN | POLLOUT),
	       "%s: POLLIN|POLLOUT: %d events, revents 0x%x", backend, n,
	       (unsigned)s.revents);
	CHECK_INT(t, loop_watch(l, &a, p[0], POLLOUT), 0);
	n = loop_wait(l, 1000, &ev);
	CHECKF(t, n == 1 && ev[0].revents == POLLOUT, "%s: POLLOUT alone",
	       backend);

	/* Unwatched: silent though readable; twice is harmless; and it can
	 * be watched again. */
	loop_unwatch(l, &a);
	loop_unwatch(l, &a);
	CHECK_INT(t, a.fd, -1);
	CHECK_INT(t, loop_wait(l, 0, &ev), 0);
	CHECK_INT(t, loop_watch(l, &a, p[0], POLLIN), 0);
	CHECK_INT(t, loop_wait(l, 1000, &ev), 1);

	/* Three at once; then the first goes (the poll backend moves the
	 * last into its slot) and the one moved must still be itself. */
	CHECK(t, write(q[1], "y", 1) == 1 && write(r[1], "z", 1) == 1);
	CHECK_INT(t, loop_watch(l, &b, q[0], POLLIN), 0);
	CHECK_INT(t, loop_watch(l, &c, r[0], POLLIN), 0);
	n = loop_wait(l, 1000, &ev);
	CHECKF(t, n == 3 && seen_for(ev, n, &a).fd == p[0]
	       && seen_for(ev, n, &b).fd == q[0]
	       && seen_for(ev, n, &c).fd == r[0], "%s: three watches", backend);
	loop_unwatch(l, &a);
	CHECK_INT(t, loop_watch(l, &c, r[0], POLLOUT), 0);
	n = loop_wait(l, 1000, &ev);
	s = seen_for(ev, n, &c);
	CHECKF(t, n == 2 && seen_for(ev, n, &a).count == 0
	       && seen_for(ev, n, &b).revents == POLLIN && s.fd == r[0]
	       && s.revents == POLLOUT, "%s: after an unwatch, %d events, c "
	       "0x%x", backend, n, (unsigned)s.revents);

	/* A stale event: in the middle of a turn's events, c's owner closes
	 * its descriptor and b's moves to another; their events are still
	 * there to walk, and say so by their fd. */
	CHECK_INT(t, loop_watch(l, &c, r[0], POLLIN), 0);
	n = loop_wait(l, 1000, &ev);
	CHECK_INT(t, n, 2);
	old = r[0];
	loop_forget(l, &c);
	close(r[0]);
	CHECK_INT(t, loop_watch(l, &b, p[0], POLLIN), 0);
	for (i = 0, k = 0; i < n; i++) {
		int stale = ev[i].w->fd != ev[i].fd;

		k += ev[i].w == &c && ev[i].fd == old && stale;
		k += ev[i].w == &b && ev[i].fd == q[0] && stale;
	}
	CHECKF(t, k == 2, "%s: %d of 2 stale events tell by their fd",
	       backend, k);
	n = loop_wait(l, 1000, &ev);
	CHECKF(t, n == 1 && ev[0].w == &b && ev[0].fd == p[0],
	       "%s: after the stale turn, %d events", backend, n);

	/* The closed descriptor's number, reused at once, watched by
	 * another owner: events come (epoll dropped the old one by itself
	 * when it closed; poll forgot it in loop_forget). */
	if (unix_pair(r) != 0) {
		CHECKF(t, 0, "%s: socketpair: %s", backend, strerror(errno));
	}
	CHECK(t, r[0] == old || r[1] == old);
	k = r[0] == old ? 0 : 1;
	CHECK_INT(t, loop_watch(l, &a, r[k], POLLIN), 0);
	CHECK(t, write(r[1 - k], "w", 1) == 1);
	n = loop_wait(l, 1000, &ev);
	s = seen_for(ev, n, &a);
	CHECKF(t, s.count == 1 && s.fd == old && seen_for(ev, n, &c).count == 0,
	       "%s: the reused number: %d events for its new owner", backend,
	       s.count);
	loop_unwatch(l, &a);
	loop_unwatch(l, &b);

	/* loop_move: b hands p[0] to c, which drops its own (q[0]). */
	CHECK_INT(t, loop_watch(l, &b, p[0], POLLIN), 0);
	CHECK_INT(t, loop_watch(l, &c, q[0], POLLIN), 0);
	CHECK_INT(t, loop_move(l, &b, &c, POLLIN | POLLOUT), 0);
	CHECK(t, b.fd == -1 && c.fd == p[0] && c.events == (POLLIN | POLLOUT));
	n = loop_wait(l, 1000, &ev);
	CHECKF(t, n == 1 && ev[0].w == &c && ev[0].fd == p[0]
	       && ev[0].revents == (POLLIN | POLLOUT), "%s: moved: %d events",
	       backend, n);
	/* Nothing to hand over: -1, and both end unwatched. */
	CHECK_INT(t, loop_move(l, &b, &c, POLLIN), -1);
	CHECK(t, b.fd == -1 && c.fd == -1);
	CHECK_INT(t, loop_wait(l, 0, &ev), 0);

	/* Interest 0: nothing until the peer hangs up, then POLLHUP alone. */
	if (unix_pair(h) != 0) {
		CHECKF(t, 0, "%s: socketpair: %s", backend, strerror(errno));
	}
	CHECK(t, write(h[1], "v", 1) == 1);
	CHECK_INT(t, loop_watch(l, &a, h[0], 0), 0);
	CHECK_INT(t, loop_wait(l, 0, &ev), 0);
	close(h[1]);
	n = loop_wait(l, 1000, &ev);
	CHECKF(t, n == 1 && ev[0].w == &a && (ev[0].revents & POLLHUP)
	       && !(ev[0].revents & (POLLIN | POLLOUT)), "%s: hang-up: %d "
	       "events, revents 0x%x", backend, n,
	       n > 0 ? (unsigned)ev[0].revents : 0u);
	loop_unwatch(l, &a);
	close(h[0]);

	/* Many at once: each is reported (epoll hands out at most its
	 * batch per wait; the rest come next). */
	for (i = 0; i < MANY; i++) {
		if (unix_pair(fds[i]) != 0) {
			CHECKF(t, 0, "%s: socketpair %d: %s", backend, i,
			       strerror(errno));
			break;
		}
		watch_init(&many[i], 9, NULL, i);
		got[i] = 0;
		if (loop_watch(l, &many[i], fds[i][0], POLLIN) != 0
		    || write(fds[i][1], "u", 1) != 1) {
			CHECKF(t, 0, "%s: watch %d", backend, i);
		}
	}
	for (k = 0, total = 0; k < 10 && total < i; k++) {
		int j;

		n = loop_wait(l, 1000, &ev);
		for (j = 0; j < n; j++) {
			int side = ev[j].w->side;

			if (ev[j].w == &many[side] && ev[j].fd == fds[side][0]
			    && !got[side]++) {
				total++;
			}
		}
	}
	CHECKF(t, total == MANY, "%s: %d of %d watches reported", backend,
	       total, MANY);
	while (i-- > 0) {
		loop_unwatch(l, &many[i]);
		close(fds[i][0]);
		close(fds[i][1]);
	}

	/* A wait with nothing to report lasts its timeout. */
	t0 = tl_now_ms();
	CHECK_INT(t, loop_wait(l, 50, &ev), 0);
	CHECKF(t, tl_now_ms() - t0 >= 40, "%s: loop_wait(50) returned after "
	       "%lld ms", backend, (long long)(tl_now_ms() - t0));

	close(p[0]);
	close(p[1]);
	close(q[0]);
	close(q[1]);
	close(r[0]);
	close(r[1]);
	loop_free(l);
}

static void test_loop(struct tally *t)
{
	const char *was = getenv("DIALBACK_POLL");
	char saved[64];

	snprintf(saved, sizeof(saved), "%s", was != NULL ? was : "");
	loop_suite(t, "epoll");
	loop_suite(t, "poll");
	if (was != NULL) {
		setenv("DIALBACK_POLL", saved, 1);
	} else {
		unsetenv("DIALBACK_POLL");
	}
}

int main(void)
{
	struct tally t = { 0, 0, 0 };

	test_sha256(&t);
	test_hmac(&t);
	test_equal_ct(&t);
	test_frame_types(&t);
	test_frame_bad(&t);
	test_frame_text(&t);
	test_msg_name(&t);
	test_addr_parse(&t);
	test_addr_str(&t);
	test_keys(&t);
	test_proxy_header(&t);
	test_relay_order(&t);
	test_fbuf_put_take(&t);
	test_fbuf_fill(&t);
	test_fbuf_flush(&t);
	test_flags_parse(&t);
	test_loop(&t);
	return tally_report(&t, "unit");
}
