/*
 * The primitives of protocol 2: X25519 for the key exchange, ChaCha20-
 * Poly1305 for the records, and the helpers for handling secrets.  Each
 * section names the file that implements it; HKDF is in sha256.h.  All of
 * it runs in time independent of secret data, and is checked against every
 * published RFC vector in tests/unit.c.
 */
#ifndef DIALBACK_CRYPTO_H
#define DIALBACK_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

/* ---- secrets (sha256.c, beside equal_ct) ------------------------------- */

/* crypto_wipe: zero n bytes at p in a way the compiler may not drop, for
 * keys and key streams on the stack just before they go out of scope. */
void crypto_wipe(void *p, size_t n);

/* crypto_is_zero: 1 if all n bytes at p are zero, else 0, in time that
 * depends only on n.  X25519 callers reject an all-zero shared secret,
 * the sign of a peer's low-order point. */
int crypto_is_zero(const uint8_t *p, size_t n);

/* ---- X25519 (x25519.c) ------------------------------------------------- */

#define X25519_LEN 32

/* x25519: out = the u-coordinate of scalar times the point u (RFC 7748
 * §5), the scalar clamped and the top bit of point ignored as the RFC
 * says.  An all-zero out means the peer sent a low-order point; callers
 * check with crypto_is_zero and drop the connection. */
void x25519(uint8_t out[X25519_LEN], const uint8_t scalar[X25519_LEN],
            const uint8_t point[X25519_LEN]);

/* x25519_public: the public key for 32 random secret bytes, which is
 * x25519 of the base point u = 9. */
void x25519_public(uint8_t pub[X25519_LEN], const uint8_t secret[X25519_LEN]);

/* ---- ChaCha20, Poly1305 and their AEAD (chacha20poly1305.c) ----------- */

#define CHACHA20_KEY_LEN   32
#define CHACHA20_NONCE_LEN 12
#define POLY1305_KEY_LEN   32
#define AEAD_TAG_LEN       16

/* chacha20_quarter_round: the quarter round of RFC 8439 §2.1 on words
 * a, b, c and d of the state x.  It is here, and not static in the .c
 * file, so that the unit test checks the very one the cipher runs. */
static inline void chacha20_quarter_round(uint32_t x[16], int a, int b,
                                          int c, int d)
{
	x[a] += x[b]; x[d] ^= x[a]; x[d] = x[d] << 16 | x[d] >> 16;
	x[c] += x[d]; x[b] ^= x[c]; x[b] = x[b] << 12 | x[b] >> 20;
	x[a] += x[b]; x[d] ^= x[a]; x[d] = x[d] << 8 | x[d] >> 24;
	x[c] += x[d]; x[b] ^= x[c]; x[b] = x[b] << 7 | x[b] >> 25;
}

/* chacha20_xor: out = in XOR the ChaCha20 key stream for key and nonce,
 * starting at block counter (RFC 8439 §2.4).  out == in is fine; other
 * overlaps are not.  The 32-bit counter wraps after 256 GiB, so callers
 * keep one (key, nonce) well below that. */
void chacha20_xor(uint8_t *out, const uint8_t *in, size_t len,
                  const uint8_t key[CHACHA20_KEY_LEN],
                  const uint8_t nonce[CHACHA20_NONCE_LEN], uint32_t counter);

/*
 * The code that runs chacha20_xor's long messages: plain C everywhere,
 * four blocks at once in SSE2 where the compiler targets it, and eight at
 * once in AVX2 or sixteen in AVX-512F on x86-64 with GCC or clang, each
 * compiled in by a function attribute and used only if the CPU (and the
 * OS, for the wider registers) has it.  -DDIALBACK_PORTABLE_CRYPTO
 * leaves only the plain C.  Every path gives the same bytes; chacha20_xor
 * takes the fastest this build and CPU have, chosen on its first call.
 */
#if defined(__SSE2__) && !defined(DIALBACK_PORTABLE_CRYPTO)
#define CHACHA20_HAVE_SSE2 1
#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 5)
#define CHACHA20_HAVE_AVX2 1
#define CHACHA20_HAVE_AVX512 1
#endif
#endif

enum chacha20_path {
	CHACHA20_PLAIN, CHACHA20_SSE2, CHACHA20_AVX2, CHACHA20_AVX512
};

/* chacha20_force: a hook for the unit test, so that it checks each path:
 * chacha20_xor runs path from now on, or with -1 the one it would choose.
 * Returns the path now in use, or -1 with nothing changed if this build
 * or this CPU lacks path.
 * Not for concurrent use with chacha20_xor (dialback has one thread). */
int chacha20_force(int path);

/* poly1305: the one-time authenticator of RFC 8439 §2.5 over len bytes.
 * A key must never authenticate two different messages. */
void poly1305(uint8_t tag[AEAD_TAG_LEN], const uint8_t *msg, size_t len,
              const uint8_t key[POLY1305_KEY_LEN]);

/*
 * The code that runs Poly1305, for poly1305 and the AEAD alike: 26-bit
 * limbs in plain C everywhere; 64-bit words with 64 x 64 -> 128-bit
 * multiplies where the compiler has unsigned __int128; and with it, on
 * x86-64 as for ChaCha20, four blocks at once in AVX2 or eight in
 * AVX-512F for long messages, if the CPU has them.
 * -DDIALBACK_PORTABLE_CRYPTO leaves only the plain C.  Every path gives
 * the same tags; the fastest this build and CPU have is taken on the
 * first call.
 */
#if defined(__SIZEOF_INT128__) && !defined(DIALBACK_PORTABLE_CRYPTO)
#define POLY1305_HAVE_INT128 1
#ifdef CHACHA20_HAVE_AVX2
#define POLY1305_HAVE_AVX2 1
#define POLY1305_HAVE_AVX512 1
#endif
#endif

enum poly1305_path {
	POLY1305_PLAIN, POLY1305_INT128, POLY1305_AVX2, POLY1305_AVX512
};

/* poly1305_force: chacha20_force for Poly1305: each message from now on
 * runs path, or with -1 the one that would be chosen.  A forced AVX2 takes
 * runs of four blocks from 64 bytes on rather than 512, and a forced
 * AVX-512 runs of eight from 128 bytes on rather than 1024 (and then
 * AVX2's), so that the RFC vectors reach them.  Returns the path now in use, or -1 with nothing changed if
 * this build or CPU lacks path.  Not for concurrent use with poly1305 or
 * the AEAD. */
int poly1305_force(int path);

/* aead_seal: AEAD_CHACHA20_POLY1305 (RFC 8439 §2.8): encrypt len bytes
 * of in to out (out == in is fine) and write the tag over ad and the
 * ciphertext.  A nonce must never be used twice with one key. */
void aead_seal(uint8_t *out, uint8_t tag[AEAD_TAG_LEN],
               const uint8_t key[CHACHA20_KEY_LEN],
               const uint8_t nonce[CHACHA20_NONCE_LEN],
               const uint8_t *ad, size_t adlen, const uint8_t *in, size_t len);

/* aead_open: check tag over ad and the ciphertext in, in constant time,
 * and only then decrypt it to out (out == in is fine).  Returns 0, or -1
 * for a bad tag, when out is zeroed rather than left with plaintext. */
int aead_open(uint8_t *out, const uint8_t key[CHACHA20_KEY_LEN],
              const uint8_t nonce[CHACHA20_NONCE_LEN],
              const uint8_t *ad, size_t adlen, const uint8_t *in, size_t len,
              const uint8_t tag[AEAD_TAG_LEN]);

#endif
