/*
 * SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869) and
 * the constant-time helpers for secrets.  Words are loaded and stored byte
 * by byte, so nothing depends on the host's endianness or on the alignment
 * of the caller's buffers.
 */
#include <string.h>

#include "crypto.h"
#include "sha256.h"

static const uint32_t k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5,
	0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
	0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
	0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5,
	0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t load32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void store32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t ror(uint32_t x, unsigned n)
{
	return x >> n | x << (32 - n);
}

static void compress(uint32_t h[8], const uint8_t block[SHA256_BLOCK])
{
	uint32_t w[64], a, b, c, d, e, f, g, hh, t1, t2;
	int i;

	for (i = 0; i < 16; i++) {
		w[i] = load32(block + 4 * i);
	}
	for (i = 16; i < 64; i++) {
		uint32_t x = w[i - 15], y = w[i - 2];
		uint32_t s0 = ror(x, 7) ^ ror(x, 18) ^ x >> 3;
		uint32_t s1 = ror(y, 17) ^ ror(y, 19) ^ y >> 10;

		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3];
	e = h[4]; f = h[5]; g = h[6]; hh = h[7];
	for (i = 0; i < 64; i++) {
		t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) +
		     ((e & f) ^ (~e & g)) + k[i] + w[i];
		t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) +
		     ((a & b) ^ (a & c) ^ (b & c));
		hh = g; g = f; f = e; e = d + t1;
		d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d;
	h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void sha256_init(struct sha256 *s)
{
	static const uint32_t iv[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};

	memcpy(s->h, iv, sizeof(iv));
	s->total = 0;
	s->fill = 0;
}

void sha256_update(struct sha256 *s, const void *data, size_t len)
{
	const uint8_t *p = data;

	s->total += len;
	while (len > 0) {
		size_t n = SHA256_BLOCK - s->fill;

		if (n > len) {
			n = len;
		}
		memcpy(s->block + s->fill, p, n);
		s->fill += n;
		p += n;
		len -= n;
		if (s->fill == SHA256_BLOCK) {
			compress(s->h, s->block);
			s->fill = 0;
		}
	}
}

void sha256_final(struct sha256 *s, uint8_t out[SHA256_LEN])
{
	uint64_t bits = s->total * 8;
	int i;

	/* Pad with 0x80 then zeros, leaving 8 bytes for the bit count; if
	 * fewer than 8 remain, the padding spills into a new block. */
	s->block[s->fill++] = 0x80;
	if (s->fill > SHA256_BLOCK - 8) {
		memset(s->block + s->fill, 0, SHA256_BLOCK - s->fill);
		compress(s->h, s->block);
		s->fill = 0;
	}
	memset(s->block + s->fill, 0, SHA256_BLOCK - 8 - s->fill);
	store32(s->block + 56, (uint32_t)(bits >> 32));
	store32(s->block + 60, (uint32_t)bits);
	compress(s->h, s->block);
	for (i = 0; i < 8; i++) {
		store32(out + 4 * i, s->h[i]);
	}
	crypto_wipe(s, sizeof(*s));
}

void sha256(const void *data, size_t len, uint8_t out[SHA256_LEN])
{
	struct sha256 s;

	sha256_init(&s);
	sha256_update(&s, data, len);
	sha256_final(&s, out);
}

void hmac_sha256_init(struct hmac_sha256 *h, const void *key, size_t keylen)
{
	uint8_t k0[SHA256_BLOCK] = {0}, pad[SHA256_BLOCK];
	int i;

	if (keylen > SHA256_BLOCK) {
		sha256(key, keylen, k0);
	} else if (keylen > 0) {
		memcpy(k0, key, keylen);
	}
	for (i = 0; i < SHA256_BLOCK; i++) {
		pad[i] = k0[i] ^ 0x36;
	}
	sha256_init(&h->inner);
	sha256_update(&h->inner, pad, sizeof(pad));
	for (i = 0; i < SHA256_BLOCK; i++) {
		pad[i] = k0[i] ^ 0x5c;
	}
	sha256_init(&h->outer);
	sha256_update(&h->outer, pad, sizeof(pad));
	crypto_wipe(k0, sizeof(k0));
	crypto_wipe(pad, sizeof(pad));
}

void hmac_sha256_update(struct hmac_sha256 *h, const void *data, size_t len)
{
	sha256_update(&h->inner, data, len);
}

void hmac_sha256_final(struct hmac_sha256 *h, uint8_t out[SHA256_LEN])
{
	uint8_t ih[SHA256_LEN];

	sha256_final(&h->inner, ih);
	sha256_update(&h->outer, ih, sizeof(ih));
	sha256_final(&h->outer, out);
	crypto_wipe(ih, sizeof(ih));
}

void hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                 uint8_t out[SHA256_LEN])
{
	struct hmac_sha256 h;

	hmac_sha256_init(&h, key, keylen);
	hmac_sha256_update(&h, data, len);
	hmac_sha256_final(&h, out);
}

int equal_ct(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;
	uint8_t diff = 0;
	size_t i;

	/* No early exit: every byte is looked at whatever the first
	 * difference, so timing says nothing about where it is. */
	for (i = 0; i < n; i++) {
		diff |= x[i] ^ y[i];
	}
	return diff == 0;
}

int crypto_is_zero(const uint8_t *p, size_t n)
{
	uint8_t acc = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		acc |= p[i];
	}
	return acc == 0;
}

/* Called through a volatile pointer, memset is a call the compiler can
 * neither see into nor prove dead, as it may a plain memset of a buffer
 * about to die; so the zeroing stays, at memset's speed. */
static void *(*const volatile wipe_memset)(void *, int, size_t) = memset;

void crypto_wipe(void *p, size_t n)
{
	if (n > 0) {
		wipe_memset(p, 0, n);
	}
}

void hkdf_extract(uint8_t prk[SHA256_LEN], const void *salt, size_t saltlen,
                  const void *ikm, size_t ikmlen)
{
	hmac_sha256(salt, saltlen, ikm, ikmlen, prk);
}

int hkdf_expand(uint8_t *out, size_t outlen, const uint8_t prk[SHA256_LEN],
                const void *info, size_t infolen)
{
	struct hmac_sha256 h;
	uint8_t t[SHA256_LEN], i;
	size_t n;

	if (outlen > HKDF_MAX_OUT) {
		return -1;
	}
	/* T(i) = HMAC(prk, T(i-1) | info | i), with T(0) empty; the one-byte
	 * counter is why the output stops at 255 blocks. */
	for (i = 1; outlen > 0; i++) {
		hmac_sha256_init(&h, prk, SHA256_LEN);
		if (i > 1) {
			hmac_sha256_update(&h, t, sizeof(t));
		}
		hmac_sha256_update(&h, info, infolen);
		hmac_sha256_update(&h, &i, 1);
		hmac_sha256_final(&h, t);
		n = outlen < SHA256_LEN ? outlen : SHA256_LEN;
		memcpy(out, t, n);
		out += n;
		outlen -= n;
	}
	crypto_wipe(t, sizeof(t));
	crypto_wipe(&h, sizeof(h));
	return 0;
}
