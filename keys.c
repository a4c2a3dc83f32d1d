/*
 * Protocol 2's key schedule and record layer: the handshake's symmetric
 * state (a chaining key and a transcript hash, as in Noise), the session
 * keys it splits into, the per-tunnel keys derived from them, and sealing
 * and opening records.  protocol.h writes the construction down.
 */
#include <string.h>

#include "common.h"
#include "crypto.h"
#include "sha256.h"

/* The protocol name starts the transcript, so that a transcript of
 * another protocol can never be taken for one of ours. */
static const char proto_name[] = PROTO_NAME;

static void
nonce_of(uint64_t n, uint8_t nonce[CHACHA20_NONCE_LEN])
{
	int i;

	memset(nonce, 0, 4);
	for (i = 0; i < 8; i++) {
		nonce[4 + i] = (uint8_t)(n >> (56 - 8 * i));
	}
}

/* HKDF with the chaining key as salt, into n outputs of 32 bytes. */
static void
hkdf_ck(const uint8_t ck[KEY_LEN], const void *ikm, size_t ikmlen,
        uint8_t *out, size_t n)
{
	uint8_t prk[SHA256_LEN];

	hkdf_extract(prk, ck, KEY_LEN, ikm, ikmlen);
	hkdf_expand(out, n * KEY_LEN, prk, "", 0);
	crypto_wipe(prk, sizeof(prk));
}

void
psk_derive(const void *secret, size_t len, uint8_t psk[KEY_LEN])
{
	struct hmac_sha256 m;

	hmac_sha256_init(&m, "dialback psk", 12);
	hmac_sha256_update(&m, secret, len);
	hmac_sha256_final(&m, psk);
	crypto_wipe(&m, sizeof(m));
}

void
hs_init(struct handshake *hs)
{
	memset(hs, 0, sizeof(*hs));
	sha256(proto_name, sizeof(proto_name) - 1, hs->h);
	memcpy(hs->ck, hs->h, KEY_LEN);
	random_bytes(hs->e_secret, KEY_LEN);
	x25519_public(hs->e_pub, hs->e_secret);
}

void
hs_mix_hash(struct handshake *hs, const void *data, size_t len)
{
	struct sha256 s;

	sha256_init(&s);
	sha256_update(&s, hs->h, SHA256_LEN);
	sha256_update(&s, data, len);
	sha256_final(&s, hs->h);
}

void
hs_mix_msg(struct handshake *hs, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];

	hs_mix_hash(hs, frame, frame_encode(frame, m));
}

int
hs_mix_dh(struct handshake *hs, const uint8_t peer[KEY_LEN])
{
	uint8_t dh[X25519_LEN], out[2 * KEY_LEN];
	int zero;

	x25519(dh, hs->e_secret, peer);
	crypto_wipe(hs->e_secret, sizeof(hs->e_secret));
	zero = crypto_is_zero(dh, sizeof(dh));
	hkdf_ck(hs->ck, dh, sizeof(dh), out, 2);
	memcpy(hs->ck, out, KEY_LEN);
	memcpy(hs->k, out + KEY_LEN, KEY_LEN);
	hs->n = 0;
	crypto_wipe(dh, sizeof(dh));
	crypto_wipe(out, sizeof(out));
	return zero ? -1 : 0;
}

void
hs_mix_psk(struct handshake *hs, const uint8_t psk[KEY_LEN])
{
	uint8_t out[3 * KEY_LEN];

	hkdf_ck(hs->ck, psk, KEY_LEN, out, 3);
	memcpy(hs->ck, out, KEY_LEN);
	hs_mix_hash(hs, out + KEY_LEN, KEY_LEN);
	memcpy(hs->k, out + 2 * KEY_LEN, KEY_LEN);
	hs->n = 0;
	crypto_wipe(out, sizeof(out));
}

void
hs_seal(struct handshake *hs, const uint8_t *in, size_t len, uint8_t *out)
{
	uint8_t nonce[CHACHA20_NONCE_LEN];

	nonce_of(hs->n++, nonce);
	aead_seal(out, out + len, hs->k, nonce, hs->h, SHA256_LEN, in, len);
	hs_mix_hash(hs, out, len + TAG_LEN);
}

int
hs_open(struct handshake *hs, const uint8_t *in, size_t len, uint8_t *out)
{
	uint8_t nonce[CHACHA20_NONCE_LEN], h[SHA256_LEN];

	if (len < TAG_LEN) {
		return -1;
	}
	memcpy(h, hs->h, SHA256_LEN);
	hs_mix_hash(hs, in, len);
	nonce_of(hs->n++, nonce);
	return aead_open(out, hs->k, nonce, h, SHA256_LEN, in, len - TAG_LEN,
	                 in + len - TAG_LEN);
}

void
hs_split(struct handshake *hs, int client, struct session_keys *sk)
{
	uint8_t out[3 * KEY_LEN];

	hkdf_ck(hs->ck, "", 0, out, 3);
	memset(sk, 0, sizeof(*sk));
	memcpy(sk->tx.key, out + (client ? 0 : KEY_LEN), KEY_LEN);
	memcpy(sk->rx.key, out + (client ? KEY_LEN : 0), KEY_LEN);
	memcpy(sk->tunnel, out + 2 * KEY_LEN, KEY_LEN);
	crypto_wipe(out, sizeof(out));
	crypto_wipe(hs, sizeof(*hs));
}

void
tunnel_keys(const uint8_t tunnel[KEY_LEN], const uint8_t id[USER_ID_LEN],
            int client, struct seal *tx, struct seal *rx)
{
	uint8_t out[2 * KEY_LEN], info[8 + USER_ID_LEN];

	memcpy(info, "tunnel2 ", 8);
	memcpy(info + 8, id, USER_ID_LEN);
	hkdf_expand(out, sizeof(out), tunnel, info, sizeof(info));
	memset(tx, 0, sizeof(*tx));
	memset(rx, 0, sizeof(*rx));
	memcpy(tx->key, out + (client ? 0 : KEY_LEN), KEY_LEN);
	memcpy(rx->key, out + (client ? KEY_LEN : 0), KEY_LEN);
	crypto_wipe(out, sizeof(out));
}

void
join_proof(struct seal *tx, const uint8_t id[USER_ID_LEN],
           uint8_t proof[TAG_LEN])
{
	uint8_t nonce[CHACHA20_NONCE_LEN], none[1] = { 0 };

	nonce_of(tx->n++, nonce);
	aead_seal(none, proof, tx->key, nonce, id, USER_ID_LEN, none, 0);
}

int
join_check(struct seal *rx, const uint8_t id[USER_ID_LEN],
           const uint8_t proof[TAG_LEN])
{
	uint8_t nonce[CHACHA20_NONCE_LEN], none[1] = { 0 };

	nonce_of(rx->n, nonce);
	if (aead_open(none, rx->key, nonce, id, USER_ID_LEN, none, 0,
	              proof) != 0) {
		return -1;
	}
	rx->n++;
	return 0;
}

size_t
record_seal(struct seal *s, const uint8_t *in, size_t len, uint8_t *out)
{
	uint8_t nonce[CHACHA20_NONCE_LEN];

	wire_put16(out, (uint16_t)len);
	nonce_of(s->n++, nonce);
	aead_seal(out + RECORD_HDR, out + RECORD_HDR + len, s->key, nonce,
	          out, RECORD_HDR, in, len);
	return RECORD_HDR + len + TAG_LEN;
}

enum frame_result
record_open(struct seal *s, uint8_t *buf, size_t len, size_t *used,
            size_t *plen)
{
	uint8_t nonce[CHACHA20_NONCE_LEN];
	size_t n;

	if (len < RECORD_HDR) {
		return FRAME_MORE;
	}
	n = wire_get16(buf);
	if (n > RECORD_MAX) {
		return FRAME_BAD;
	}
	if (len < RECORD_HDR + n + TAG_LEN) {
		return FRAME_MORE;
	}
	nonce_of(s->n, nonce);
	if (aead_open(buf + RECORD_HDR, s->key, nonce, buf, RECORD_HDR,
	              buf + RECORD_HDR, n, buf + RECORD_HDR + n) != 0) {
		return FRAME_BAD;
	}
	s->n++;
	*used = RECORD_HDR + n + TAG_LEN;
	*plen = n;
	return FRAME_OK;
}
