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

#endif
