/*
 * SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869),
 * checked against the published vectors in tests/unit.c.
 */
#ifndef DIALBACK_SHA256_H
#define DIALBACK_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN   32
#define SHA256_BLOCK 64

struct sha256 {
	uint32_t h[8];
	uint64_t total;                /* bytes hashed so far */
	uint8_t block[SHA256_BLOCK];
	size_t fill;                   /* bytes waiting in block */
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
void sha256_final(struct sha256 *s, uint8_t out[SHA256_LEN]);
void sha256(const void *data, size_t len, uint8_t out[SHA256_LEN]);

struct hmac_sha256 {
	struct sha256 inner, outer;
};

/* Keyed hashing in steps, so a MAC over several fields needs no copying.
 * Keys longer than the block are hashed first, as RFC 2104 says. */
void hmac_sha256_init(struct hmac_sha256 *h, const void *key, size_t keylen);
void hmac_sha256_update(struct hmac_sha256 *h, const void *data, size_t len);
void hmac_sha256_final(struct hmac_sha256 *h, uint8_t out[SHA256_LEN]);
void hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                 uint8_t out[SHA256_LEN]);

#define HKDF_MAX_OUT (255 * SHA256_LEN)

/* hkdf_extract: the pseudorandom key PRK = HMAC(salt, ikm) of RFC 5869
 * §2.2.  An empty salt (saltlen 0, salt may be NULL) means 32 zero bytes,
 * which HMAC's zero padding of short keys gives for free. */
void hkdf_extract(uint8_t prk[SHA256_LEN], const void *salt, size_t saltlen,
                  const void *ikm, size_t ikmlen);

/* hkdf_expand: outlen bytes of output keying material from prk and the
 * context info (RFC 5869 §2.3).  outlen must be at most HKDF_MAX_OUT;
 * a larger request writes nothing and returns -1, else 0. */
int hkdf_expand(uint8_t *out, size_t outlen, const uint8_t prk[SHA256_LEN],
                const void *info, size_t infolen);

/* equal_ct: 1 if a and b hold the same n bytes; takes the same time
 * whatever the contents, for comparing secrets. */
int equal_ct(const void *a, const void *b, size_t n);

#endif
