/*
 * Unit tests for the crypto, the frame codec, address parsing, key
 * derivation, the relay's byte order and the secrets file.  No framework:
 * each CHECK counts a pass or prints one line for a failure, and the last
 * line is "unit: N passed, N failed".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "protocol.h"
#include "secrets.h"
#include "sha256.h"

/* ---- checking ----------------------------------------------------------- */

struct tally {
	int pass, fail;
};

static void check(struct tally *t, int ok, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void check(struct tally *t, int ok, const char *file, int line,
                  const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		t->pass++;
		return;
	}
	t->fail++;
	printf("%s:%d: ", file, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static void hex(const uint8_t *p, size_t n, char *out)
{
	size_t i;

	for (i = 0; i < n; i++) {
		snprintf(out + 2 * i, 3, "%02x", p[i]);
	}
	out[2 * n] = '\0';
}

static void check_mem(struct tally *t, const void *got, const void *want,
                      size_t n, const char *file, int line, const char *what)
{
	char g[2 * 64 + 1], w[2 * 64 + 1];
	size_t shown = n < 64 ? n : 64;

	if (memcmp(got, want, n) == 0) {
		check(t, 1, file, line, "%s", what);
		return;
	}
	hex(got, shown, g);
	hex(want, shown, w);
	check(t, 0, file, line, "%s: got %s%s, want %s%s", what,
	      g, shown < n ? "..." : "", w, shown < n ? "..." : "");
}

#define CHECK(t, cond) \
	check((t), !!(cond), __FILE__, __LINE__, "%s", #cond)
#define CHECKF(t, cond, ...) \
	check((t), !!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_INT(t, got, want) \
	check((t), (long long)(got) == (long long)(want), __FILE__, __LINE__, \
	      "%s: got %lld, want %lld", #got, (long long)(got), \
	      (long long)(want))
#define CHECK_STR(t, got, want) \
	check((t), strcmp((got), (want)) == 0, __FILE__, __LINE__, \
	      "%s: got \"%s\", want \"%s\"", #got, (got), (want))
#define CHECK_MEM(t, got, want, n) \
	check_mem((t), (got), (want), (n), __FILE__, __LINE__, #got)

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
	char why[128];
	size_t i;
	int r;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		memset(&hp, 0x55, sizeof(hp));
		why[0] = '\0';
		r = addr_parse(v[i].in, v[i].def, v[i].zero, &hp, why, sizeof(why));
		if (v[i].host == NULL) {
			CHECKF(t, r == -1 && why[0] != '\0',
			       "addr_parse(\"%s\", %d, %d): got %d, want -1 with why",
			       v[i].in, v[i].def, v[i].zero, r);
			continue;
		}
		CHECKF(t, r == 0, "addr_parse(\"%s\", %d, %d): got %d (%s)",
		       v[i].in, v[i].def, v[i].zero, r, why[0] ? why : "no why");
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
	r = addr_parse(longhost, -1, 0, &hp, why, sizeof(why));
	CHECKF(t, r == 0 && strlen(hp.host) == 255,
	       "255-character host: got %d", r);
	memset(longhost, 'h', 256);
	strcpy(longhost + 256, ":80");
	why[0] = '\0';
	r = addr_parse(longhost, -1, 0, &hp, why, sizeof(why));
	CHECKF(t, r == -1 && why[0] != '\0', "256-character host: got %d", r);
	longhost[256] = '\0';
	why[0] = '\0';
	r = addr_parse(longhost, 8009, 0, &hp, why, sizeof(why));
	CHECKF(t, r == -1 && why[0] != '\0',
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
	check(t, len == n, __FILE__, line, "%s: length %zu, want %zu", what,
	      len, n);
	check_mem(t, out, want, n, __FILE__, line, what);
	for (i = PROXY_MAX; i < sizeof(out); i++) {
		clean &= out[i] == 0xee;
	}
	check(t, clean && len <= PROXY_MAX, __FILE__, line,
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

/* ---- secrets file ------------------------------------------------------- */

/* What a failed parse or load must leave alone: a table with one entry. */
static void secrets_sentinel(struct secrets *s, struct secret_range *r)
{
	memset(r, 0, sizeof(*r));
	r->lo = 4242;
	r->hi = 4243;
	r->line = 9;
	r->len = 3;
	memcpy(r->secret, "old", 4);
	s->r = r;
	s->n = 1;
}

static int secrets_text(struct secrets *s, const char *text, char *why,
                        size_t len)
{
	return secrets_parse(s, "f", text, strlen(text), why, len);
}

/* The secret for port, as a string ("" when none), for CHECK_STR. */
static const char *secret_of(const struct secrets *s, int port)
{
	const uint8_t *p;
	size_t n = 12345;

	p = secrets_find(s, port, &n);
	if (p == NULL) {
		return "";
	}
	if (n != strlen((const char *)p)) {
		return "(length differs from the string)";
	}
	return (const char *)p;
}

static void test_secrets_good(struct tally *t)
{
	static const char text[] =
		"# per-service secrets\n"
		"\n"
		"8080 web-s3cret\n"
		"  \t \n"
		"   # indented comment, with 8081 other words\n"
		"9000-9099 range#secret\r\n"
		"\t22\tssh \t \r\n"
		"1 first\n"
		"65535 last";                   /* no final newline */
	struct secrets s = { NULL, 0 };
	char why[256] = "untouched";
	size_t n;
	int rc;

	rc = secrets_text(&s, text, why, sizeof(why));
	CHECKF(t, rc == 0, "good file: %s", why);
	CHECK_STR(t, why, "untouched");
	CHECK_INT(t, s.n, 5);
	if (rc != 0 || s.n != 5) {
		secrets_free(&s);
		return;
	}
	/* Sorted by port, whatever the order of the lines. */
	CHECK_INT(t, s.r[0].lo, 1);
	CHECK_INT(t, s.r[1].lo, 22);
	CHECK_INT(t, s.r[2].lo, 8080);
	CHECK_INT(t, s.r[2].hi, 8080);
	CHECK_INT(t, s.r[3].lo, 9000);
	CHECK_INT(t, s.r[3].hi, 9099);
	CHECK_INT(t, s.r[4].hi, 65535);
	CHECK_INT(t, s.r[1].line, 7);
	CHECK_INT(t, s.r[3].line, 6);
	CHECK_INT(t, s.r[4].line, 9);

	CHECK_STR(t, secret_of(&s, 8080), "web-s3cret");
	CHECK_STR(t, secret_of(&s, 8079), "");
	CHECK_STR(t, secret_of(&s, 8081), "");
	CHECK_STR(t, secret_of(&s, 8999), "");
	CHECK_STR(t, secret_of(&s, 9000), "range#secret");   /* CR dropped */
	CHECK_STR(t, secret_of(&s, 9050), "range#secret");
	CHECK_STR(t, secret_of(&s, 9099), "range#secret");
	CHECK_STR(t, secret_of(&s, 9100), "");
	CHECK_STR(t, secret_of(&s, 22), "ssh");  /* tabs, spaces, CR */
	CHECK_STR(t, secret_of(&s, 1), "first");
	CHECK_STR(t, secret_of(&s, 2), "");
	CHECK_STR(t, secret_of(&s, 65535), "last");
	CHECK_STR(t, secret_of(&s, 65534), "");
	CHECK_STR(t, secret_of(&s, 0), "");
	CHECK_STR(t, secret_of(&s, -1), "");
	CHECK_STR(t, secret_of(&s, 65536), "");
	CHECK(t, secrets_find(&s, 8080, &n) != NULL && n == 10);
	CHECK(t, secrets_find(NULL, 8080, &n) == NULL);
	secrets_free(&s);
	CHECK(t, s.r == NULL && s.n == 0);
	secrets_free(&s);               /* again: still harmless */
	secrets_free(NULL);
	CHECK(t, secrets_find(&s, 8080, &n) == NULL);

	/* Nothing but comments and blanks, or nothing at all: an empty
	 * table, so every port uses -token. */
	rc = secrets_text(&s, "# none\n\n\r\n", why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_INT(t, s.n, 0);
	CHECK(t, secrets_find(&s, 1, &n) == NULL);
	secrets_free(&s);
	rc = secrets_parse(&s, "f", NULL, 0, why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_INT(t, s.n, 0);
	secrets_free(&s);

	/* Leading zeros, 1-65535 as one range, a range of one port, bytes
	 * past ASCII in a secret. */
	rc = secrets_text(&s, "00080-00080 a\n", why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_STR(t, secret_of(&s, 80), "a");
	secrets_free(&s);
	rc = secrets_text(&s, "1-65535 \xc3\xa9t\xc3\xa9", why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_STR(t, secret_of(&s, 1), "\xc3\xa9t\xc3\xa9");
	CHECK_STR(t, secret_of(&s, 40000), "\xc3\xa9t\xc3\xa9");
	CHECK_STR(t, secret_of(&s, 65535), "\xc3\xa9t\xc3\xa9");
	secrets_free(&s);

	/* Adjacent ranges don't overlap. */
	rc = secrets_text(&s, "10-19 a\n20-29 b\n9 c\n30 d\n",
	                  why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_STR(t, secret_of(&s, 9), "c");
	CHECK_STR(t, secret_of(&s, 19), "a");
	CHECK_STR(t, secret_of(&s, 20), "b");
	CHECK_STR(t, secret_of(&s, 29), "b");
	CHECK_STR(t, secret_of(&s, 30), "d");
	secrets_free(&s);
}

static void test_secrets_errors(struct tally *t)
{
	static const struct {
		const char *text, *why;
	} v[] = {
		{ "8080 ok\n\nsecret 8081\n",
		  "f line 3: want PORT SECRET or LO-HI SECRET" },
		{ "80x a\n", "f line 1: want PORT SECRET or LO-HI SECRET" },
		{ "+80 a\n", "f line 1: want PORT SECRET or LO-HI SECRET" },
		{ "80- a\n", "f line 1: want PORT SECRET or LO-HI SECRET" },
		{ "-80 a\n", "f line 1: want PORT SECRET or LO-HI SECRET" },
		{ "1-2-3 a\n", "f line 1: want PORT SECRET or LO-HI SECRET" },
		{ "# c\n80 - 90 a\n",
		  "f line 2: more than one word after the port (a secret has "
		  "no spaces)" },
		{ "0 a\n", "f line 1: port out of range (1-65535)" },
		{ "\n65536 a\n", "f line 2: port out of range (1-65535)" },
		{ "0-10 a\n", "f line 1: port out of range (1-65535)" },
		{ "10-65536 a\n", "f line 1: port out of range (1-65535)" },
		{ "99999999999999999999999 a\n",
		  "f line 1: port out of range (1-65535)" },
		{ "1 a\n2 b\n3 c\n20-10 d\n",
		  "f line 4: range 20-10 is backwards (want LO <= HI)" },
		{ "8080\n", "f line 1: no secret after the port" },
		{ "8080 \t \r\n", "f line 1: no secret after the port" },
		{ "1 a\n9000-9010", "f line 2: no secret after the port" },
		{ "8080 two words\n",
		  "f line 1: more than one word after the port (a secret has "
		  "no spaces)" },
		{ "8080 s3cret # a comment\n",
		  "f line 1: more than one word after the port (a secret has "
		  "no spaces)" },
		{ "8080 a\x01" "b\n",
		  "f line 1: control character (want printable bytes, spaces "
		  "and tabs)" },
		{ "\n\n8080 a\rb\n",
		  "f line 3: control character (want printable bytes, spaces "
		  "and tabs)" },
		{ "8080 a\x7f\n",
		  "f line 1: control character (want printable bytes, spaces "
		  "and tabs)" },
		{ "8080 a\r\r\n",
		  "f line 1: control character (want printable bytes, spaces "
		  "and tabs)" },
		{ "8080\v a\n",
		  "f line 1: control character (want printable bytes, spaces "
		  "and tabs)" },
		{ "80 a\n80 b\n", "f line 2: 80 overlaps 80 on line 1" },
		{ "100-200 a\n# x\n150 b\n",
		  "f line 3: 150 overlaps 100-200 on line 1" },
		{ "150 a\n100-200 b\n",
		  "f line 2: 100-200 overlaps 150 on line 1" },
		{ "100-200 a\n50-100 b\n",
		  "f line 2: 50-100 overlaps 100-200 on line 1" },
		{ "100-200 a\n200-300 b\n",
		  "f line 2: 200-300 overlaps 100-200 on line 1" },
		{ "1-10 a\n30-40 b\n5-35 c\n",
		  "f line 3: 5-35 overlaps 1-10 on line 1" },
		{ "30-40 b\n20 c\n11-35 d\n",
		  "f line 3: 11-35 overlaps 20 on line 2" },
		/* The first bad line wins, whatever kind the later ones are. */
		{ "1 a\n1 b\nx\n", "f line 2: 1 overlaps 1 on line 1" },
	};
	struct secrets s, before;
	struct secret_range r;
	char why[256];
	size_t i;
	int rc;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		secrets_sentinel(&s, &r);
		before = s;
		why[0] = '\0';
		CHECKF(t, secrets_text(&s, v[i].text, why, sizeof(why)) == -1,
		       "error case %zu was accepted", i);
		CHECKF(t, strcmp(why, v[i].why) == 0,
		       "error case %zu: got \"%s\", want \"%s\"", i, why,
		       v[i].why);
		CHECKF(t, s.r == before.r && s.n == before.n && r.lo == 4242 &&
		          strcmp((char *)r.secret, "old") == 0,
		       "error case %zu: the table was touched", i);
	}

	/* A NUL in a line is a control character; the text is bytes. */
	secrets_sentinel(&s, &r);
	rc = secrets_parse(&s, "f", "80 a\0b\n", 7, why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, "f line 1: control character (want printable bytes, "
	          "spaces and tabs)");

	/* A short buffer gets as much of the phrase as fits, terminated. */
	memset(why, 'x', sizeof(why));
	rc = secrets_text(&s, "x\n", why, 8);
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, "f line ");
	memset(why, 'x', sizeof(why));
	rc = secrets_text(&s, "x\n", why, 12);
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, "f line 1: w");
	CHECK(t, s.r == &r && s.n == 1);
}

/* A text of n lines made by line(i, buf), for the bounds. */
static char *secrets_lines(int n, void (*line)(int, char *), size_t *len)
{
	char *text = malloc((size_t)n * 64 + 1), *p = text;
	int i;

	if (text == NULL) {
		return NULL;
	}
	for (i = 0; i < n; i++) {
		line(i, p);
		p += strlen(p);
	}
	*len = (size_t)(p - text);
	return text;
}

static void line_up(int i, char *buf)
{
	sprintf(buf, "%d s%d\n", i + 1, i + 1);
}

/* Ranges 65535-65535, 65533-65534, ...: every line lands first. */
static void line_down(int i, char *buf)
{
	int hi = 65535 - 2 * i;

	if (i % 2 == 0) {
		sprintf(buf, "%d s%d\n", hi, i);
	} else {
		sprintf(buf, "%d-%d s%d\n", hi - 1, hi, i);
	}
}

static void test_secrets_bounds(struct tally *t)
{
	struct secrets s = { NULL, 0 };
	char why[256], *text, *big;
	size_t len, i, n;
	int sorted = 1, rc;

	/* Entries: SECRETS_MAX is fine, one more names its line. */
	text = secrets_lines(SECRETS_MAX, line_up, &len);
	CHECK(t, text != NULL);
	if (text != NULL) {
		rc = secrets_parse(&s, "f", text, len, why, sizeof(why));
		CHECKF(t, rc == 0, "%d entries: %s", SECRETS_MAX, why);
		CHECK_INT(t, s.n, SECRETS_MAX);
		CHECK_STR(t, secret_of(&s, SECRETS_MAX), "s4096");
		CHECK_STR(t, secret_of(&s, SECRETS_MAX + 1), "");
		secrets_free(&s);
		free(text);
	}
	text = secrets_lines(SECRETS_MAX + 1, line_up, &len);
	if (text != NULL) {
		rc = secrets_parse(&s, "f", text, len, why, sizeof(why));
		CHECK_INT(t, rc, -1);
		CHECK_STR(t, why, "f line 4097: more than 4096 entries");
		free(text);
	}

	/* Each line goes in at the front of the table: still sorted. */
	text = secrets_lines(SECRETS_MAX, line_down, &len);
	if (text != NULL) {
		rc = secrets_parse(&s, "f", text, len, why, sizeof(why));
		CHECKF(t, rc == 0, "%d entries, backwards: %s", SECRETS_MAX,
		       why);
		for (i = 1; i < s.n; i++) {
			sorted &= s.r[i - 1].hi < s.r[i].lo;
		}
		CHECK(t, s.n == SECRETS_MAX && sorted);
		CHECK_STR(t, secret_of(&s, 65535), "s0");
		CHECK_STR(t, secret_of(&s, 65532), "s1");
		CHECK_STR(t, secret_of(&s, 65533), "s1");
		CHECK_STR(t, secret_of(&s, 65535 - 2 * 4095 - 1), "s4095");
		CHECK_STR(t, secret_of(&s, 65535 - 2 * 4095 - 2), "");
		secrets_free(&s);
		free(text);
	}

	/* Sizes: the secret, the line and the file, at their limits and one
	 * past.  big holds the file; lines are written into it. */
	big = malloc(SECRETS_FILE_MAX + 2);
	CHECK(t, big != NULL);
	if (big == NULL) {
		return;
	}
	memcpy(big, "1 ", 2);
	memset(big + 2, 'k', SECRETS_SECRET_MAX);
	rc = secrets_parse(&s, "f", big, 2 + SECRETS_SECRET_MAX,
	                   why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK(t, secrets_find(&s, 1, &n) != NULL && n == SECRETS_SECRET_MAX);
	secrets_free(&s);
	big[2 + SECRETS_SECRET_MAX] = 'k';
	rc = secrets_parse(&s, "f", big, 3 + SECRETS_SECRET_MAX,
	                   why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, "f line 1: secret longer than 256 bytes");

	/* A line of SECRETS_LINE_MAX bytes: a comment, and an entry padded
	 * with blanks (after its CR, too); one byte more is too long. */
	memcpy(big, "\n#", 2);
	memset(big + 2, 'c', SECRETS_LINE_MAX);
	rc = secrets_parse(&s, "f", big, 1 + SECRETS_LINE_MAX,
	                   why, sizeof(why));
	CHECK_INT(t, rc, 0);
	rc = secrets_parse(&s, "f", big, 2 + SECRETS_LINE_MAX,
	                   why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, "f line 2: longer than 1024 bytes");
	memcpy(big, "7 seven", 7);
	memset(big + 7, ' ', SECRETS_LINE_MAX - 7);
	memcpy(big + SECRETS_LINE_MAX, "\r\n", 2);
	rc = secrets_parse(&s, "f", big, SECRETS_LINE_MAX + 2,
	                   why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_STR(t, secret_of(&s, 7), "seven");
	secrets_free(&s);
	big[SECRETS_LINE_MAX] = ' ';
	rc = secrets_parse(&s, "f", big, SECRETS_LINE_MAX + 2,
	                   why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, "f line 1: longer than 1024 bytes");

	/* The file: 1 MiB of short comment lines after one entry is fine. */
	memset(big, '\n', SECRETS_FILE_MAX + 1);
	for (i = 0; i + 64 <= SECRETS_FILE_MAX; i += 64) {
		big[i] = '#';
	}
	memcpy(big, "5 five\n", 7);
	rc = secrets_parse(&s, "big", big, SECRETS_FILE_MAX, why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_STR(t, secret_of(&s, 5), "five");
	secrets_free(&s);
	rc = secrets_parse(&s, "big", big, SECRETS_FILE_MAX + 1,
	                   why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, "secrets file big is larger than 1048576 bytes");
	free(big);
}

/* Write a new file and give it mode; 0, or -1 with errno.  The old one
 * goes first: without root, a file of mode 0400 can't be written again. */
static int write_file(const char *path, const void *data, size_t n,
                      mode_t mode)
{
	ssize_t k;
	int fd;

	unlink(path);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600)) < 0) {
		return -1;
	}
	k = write(fd, data, n);
	if (close(fd) != 0 || k != (ssize_t)n) {
		return -1;
	}
	return chmod(path, mode);
}

static void test_secrets_file(struct tally *t)
{
	static const struct {
		mode_t mode;
		const char *why;    /* NULL: accepted */
	} modes[] = {
		{ 0600, NULL },
		{ 0400, NULL },
		{ 0200, NULL },     /* unreadable for others; root reads it */
		{ 0644, "has mode 0644: it must not be readable by group or "
		        "others (chmod 600 it)" },
		{ 0640, "has mode 0640: it must not be readable by group or "
		        "others (chmod 600 it)" },
		{ 0604, "has mode 0604: it must not be readable by group or "
		        "others (chmod 600 it)" },
		{ 0660, "has mode 0660: it must not be readable by group or "
		        "others (chmod 600 it)" },
		{ 0620, "has mode 0620: it must not be writable by group or "
		        "others (chmod 600 it)" },
		{ 0602, "has mode 0602: it must not be writable by group or "
		        "others (chmod 600 it)" },
		{ 0610, "has mode 0610: it must not be executable by group or "
		        "others (chmod 600 it)" },
		{ 04600, NULL },
		{ 01644, "has mode 1644: it must not be readable by group or "
		         "others (chmod 600 it)" },
	};
	static const char good[] = "8080 web\n9000-9009 nine\n";
	char dir[256], path[300], other[300], want[512], why[512], *big;
	struct secrets s = { NULL, 0 }, before;
	struct secret_range r;
	const char *tmp = getenv("TMPDIR");
	size_t i;
	int rc;

	snprintf(dir, sizeof(dir), "%s/dialback-unit.XXXXXX",
	         tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
	if (mkdtemp(dir) == NULL) {
		CHECKF(t, 0, "secrets file: mkdtemp %s: %s", dir,
		       strerror(errno));
		return;
	}
	snprintf(path, sizeof(path), "%s/secrets", dir);
	snprintf(other, sizeof(other), "%s/other", dir);

	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		unsigned m = (unsigned)modes[i].mode;

		if (write_file(path, good, strlen(good), modes[i].mode) != 0) {
			CHECKF(t, 0, "write %s: %s", path, strerror(errno));
			continue;
		}
		if (m == 0200 && geteuid() != 0) {
			continue;
		}
		secrets_sentinel(&s, &r);
		why[0] = '\0';
		rc = secrets_load(&s, path, why, sizeof(why));
		if (modes[i].why == NULL) {
			CHECKF(t, rc == 0 && s.n == 2, "mode %04o refused: %s",
			       m, why);
			if (rc == 0) {
				CHECK_STR(t, secret_of(&s, 9009), "nine");
				secrets_free(&s);
			}
			continue;
		}
		snprintf(want, sizeof(want), "secrets file %s %s", path,
		         modes[i].why);
		CHECKF(t, rc == -1, "mode %04o accepted", m);
		CHECK_STR(t, why, want);
		CHECKF(t, s.r == &r && s.n == 1,
		       "mode %04o: the table was touched", m);
	}

	/* Missing, a directory, unreadable for lack of a 'r' bit. */
	snprintf(want, sizeof(want), "secrets file %s: %s", other,
	         strerror(ENOENT));
	rc = secrets_load(&s, other, why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, want);
	snprintf(want, sizeof(want), "secrets file %s is not a regular file",
	         dir);
	rc = secrets_load(&s, dir, why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK_STR(t, why, want);
	if (geteuid() != 0) {
		write_file(path, good, strlen(good), 0200);
		snprintf(want, sizeof(want), "secrets file %s: %s", path,
		         strerror(EACCES));
		rc = secrets_load(&s, path, why, sizeof(why));
		CHECK_INT(t, rc, -1);
		CHECK_STR(t, why, want);
	}

	/* A load that fails leaves the table the server holds as it was,
	 * whatever the reason. */
	write_file(path, good, strlen(good), 0600);
	rc = secrets_load(&s, path, why, sizeof(why));
	CHECK_INT(t, rc, 0);
	before = s;
	write_file(other, "8080 web\n9000-9009 nine\n9005 x\n", 31, 0600);
	rc = secrets_load(&s, other, why, sizeof(why));
	CHECK_INT(t, rc, -1);
	snprintf(want, sizeof(want), "%s line 3: 9005 overlaps 9000-9009 on "
	         "line 2", other);
	CHECK_STR(t, why, want);
	write_file(other, good, strlen(good), 0644);
	rc = secrets_load(&s, other, why, sizeof(why));
	CHECK_INT(t, rc, -1);
	CHECK(t, s.r == before.r && s.n == before.n);
	CHECK_STR(t, secret_of(&s, 8080), "web");
	CHECK_STR(t, secret_of(&s, 9000), "nine");
	secrets_free(&s);

	/* The size limit holds for a file as for text: one byte over 1 MiB
	 * of blank lines. */
	big = malloc(SECRETS_FILE_MAX + 1);
	if (big != NULL) {
		memset(big, '\n', SECRETS_FILE_MAX + 1);
		write_file(other, big, SECRETS_FILE_MAX, 0600);
		rc = secrets_load(&s, other, why, sizeof(why));
		CHECK_INT(t, rc, 0);
		CHECK_INT(t, s.n, 0);
		write_file(other, big, SECRETS_FILE_MAX + 1, 0600);
		secrets_sentinel(&s, &r);
		rc = secrets_load(&s, other, why, sizeof(why));
		CHECK_INT(t, rc, -1);
		snprintf(want, sizeof(want), "secrets file %s is larger than "
		         "1048576 bytes", other);
		CHECK_STR(t, why, want);
		CHECK(t, s.r == &r && s.n == 1);
		free(big);
	}

	CHECKF(t, unlink(path) == 0 && unlink(other) == 0 && rmdir(dir) == 0,
	       "secrets file: cleaning %s: %s", dir, strerror(errno));
}

static void test_secrets_diff(struct tally *t)
{
	static const struct {
		const char *old, *new;
		int added, removed, changed;
	} v[] = {
		{ "", "", 0, 0, 0 },
		{ "80 a\n", "80 a\n", 0, 0, 0 },
		{ "", "80 a\n90-99 b\n", 2, 0, 0 },
		{ "80 a\n90-99 b\n", "", 0, 2, 0 },
		{ "80 a\n", "80 b\n", 0, 0, 1 },
		{ "80 a\n", "80 aa\n", 0, 0, 1 },        /* longer */
		{ "80 secret\n", "80 secreT\n", 0, 0, 1 },  /* last byte */
		{ "80 a\n81 b\n", "81 b\n80 a\n", 0, 0, 0 },  /* line order */
		{ "100-199 a\n", "100-149 a\n150-199 a\n", 2, 1, 0 },
		{ "100-149 a\n150-199 a\n", "100-199 a\n", 1, 2, 0 },
		{ "100-199 a\n", "100-200 a\n", 1, 1, 0 },
		{ "1 a\n2 b\n3 c\n4 d\n", "2 b\n3 x\n5 e\n6 f\n", 2, 2, 1 },
	};
	struct secrets a, b;
	char why[256];
	int added, removed, changed;
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		if (secrets_text(&a, v[i].old, why, sizeof(why)) != 0) {
			CHECKF(t, 0, "diff case %zu, old: %s", i, why);
			continue;
		}
		if (secrets_text(&b, v[i].new, why, sizeof(why)) != 0) {
			CHECKF(t, 0, "diff case %zu, new: %s", i, why);
			secrets_free(&a);
			continue;
		}
		secrets_diff(&a, &b, &added, &removed, &changed);
		CHECKF(t, added == v[i].added && removed == v[i].removed &&
		          changed == v[i].changed,
		       "diff case %zu: +%d -%d ~%d, want +%d -%d ~%d", i,
		       added, removed, changed, v[i].added, v[i].removed,
		       v[i].changed);
		/* The other way round, adding and removing swap. */
		secrets_diff(&b, &a, &added, &removed, &changed);
		CHECKF(t, added == v[i].removed && removed == v[i].added &&
		          changed == v[i].changed,
		       "diff case %zu reversed: +%d -%d ~%d", i, added, removed,
		       changed);
		/* NULL is an empty table. */
		secrets_diff(NULL, &b, &added, &removed, &changed);
		CHECKF(t, added == (int)b.n && removed == 0 && changed == 0,
		       "diff case %zu from NULL: +%d -%d ~%d", i, added,
		       removed, changed);
		secrets_diff(&a, NULL, &added, &removed, &changed);
		CHECKF(t, added == 0 && removed == (int)a.n && changed == 0,
		       "diff case %zu to NULL: +%d -%d ~%d", i, added, removed,
		       changed);
		secrets_free(&a);
		secrets_free(&b);
	}
}

int main(void)
{
	struct tally t = { 0, 0 };

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
	test_secrets_good(&t);
	test_secrets_errors(&t);
	test_secrets_bounds(&t);
	test_secrets_file(&t);
	test_secrets_diff(&t);
	printf("unit: %d passed, %d failed\n", t.pass, t.fail);
	return t.fail > 0 ? 1 : 0;
}
