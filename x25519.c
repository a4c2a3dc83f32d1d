/*
 * X25519 (RFC 7748): the Montgomery ladder on Curve25519 over the field
 * of p = 2^255 - 19.  A field element is five 51-bit limbs, so a product
 * of two limbs needs 128 bits: unsigned __int128 where the compiler has
 * it, else a pair of 64-bit words built from 32-bit multiplies.  Both give
 * the same results and run in the same way; make test checks each.
 *
 * Nothing branches on or indexes by the scalar: the ladder swaps with a
 * mask, and reduction is carries and masks.  Limbs may sit above 51 bits
 * between operations; the bounds are noted where they matter.
 */
#include <string.h>

#include "crypto.h"

#if defined(__SIZEOF_INT128__) && !defined(DIALBACK_PORTABLE_CRYPTO)

typedef unsigned __int128 u128;

static u128 wide(uint64_t a)
{
	return a;
}

static u128 mul64(uint64_t a, uint64_t b)
{
	return (u128)a * b;
}

static u128 add128(u128 a, u128 b)
{
	return a + b;
}

static uint64_t low51(u128 a)
{
	return (uint64_t)a & 0x7ffffffffffff;
}

static uint64_t shr51(u128 a)
{
	return (uint64_t)(a >> 51);
}

#else

typedef struct {
	uint64_t lo, hi;
} u128;

static u128 wide(uint64_t a)
{
	u128 r = { a, 0 };

	return r;
}

/* Four 32 x 32 -> 64-bit products; the middle sum stays below 2^34. */
static u128 mul64(uint64_t a, uint64_t b)
{
	uint64_t a0 = a & 0xffffffff, a1 = a >> 32;
	uint64_t b0 = b & 0xffffffff, b1 = b >> 32;
	uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
	uint64_t mid = (p00 >> 32) + (p01 & 0xffffffff) + (p10 & 0xffffffff);
	u128 r;

	r.lo = mid << 32 | (p00 & 0xffffffff);
	r.hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
	return r;
}

/* The carry out of the low word comes from its top bits, not from a
 * comparison, which a compiler could turn into a branch. */
static u128 add128(u128 a, u128 b)
{
	u128 r;

	r.lo = a.lo + b.lo;
	r.hi = a.hi + b.hi +
	       (((a.lo & b.lo) | ((a.lo | b.lo) & ~r.lo)) >> 63);
	return r;
}

static uint64_t low51(u128 a)
{
	return a.lo & 0x7ffffffffffff;
}

static uint64_t shr51(u128 a)
{
	return a.lo >> 51 | a.hi << 13;
}

#endif

/* ---- the field ---------------------------------------------------------- */

typedef uint64_t fe[5];

#define MASK51 0x7ffffffffffff

static uint64_t load64_le(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--) {
		v = v << 8 | p[i];
	}
	return v;
}

static void store64_le(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 0; i < 8; i++) {
		p[i] = (uint8_t)(v >> 8 * i);
	}
}

/* fe_frombytes: bits 0-254 of s; the top bit is ignored, as RFC 7748
 * §5 says.  Values from p to 2^255 - 1 are taken as they are and come
 * out reduced, as the RFC also asks. */
static void fe_frombytes(fe h, const uint8_t s[32])
{
	h[0] = load64_le(s) & MASK51;
	h[1] = load64_le(s + 6) >> 3 & MASK51;
	h[2] = load64_le(s + 12) >> 6 & MASK51;
	h[3] = load64_le(s + 19) >> 1 & MASK51;
	h[4] = load64_le(s + 24) >> 12 & MASK51;
}

/* fe_carry: one pass of carries, the one out of the top limb coming back
 * into the bottom times 19 (2^255 = 19 mod p). */
static void fe_carry(fe h)
{
	uint64_t c;

	c = h[0] >> 51; h[0] &= MASK51; h[1] += c;
	c = h[1] >> 51; h[1] &= MASK51; h[2] += c;
	c = h[2] >> 51; h[2] &= MASK51; h[3] += c;
	c = h[3] >> 51; h[3] &= MASK51; h[4] += c;
	c = h[4] >> 51; h[4] &= MASK51; h[0] += c * 19;
}

/* fe_tobytes: the unique representative below p, little-endian. */
static void fe_tobytes(uint8_t s[32], const fe f)
{
	fe h;
	uint64_t q;

	memcpy(h, f, sizeof(h));
	fe_carry(h);
	fe_carry(h);
	/* Now h < 2^255 with every limb below 2^51.  q is 1 when h >= p,
	 * which is when h + 19 reaches 2^255. */
	q = (h[0] + 19) >> 51;
	q = (h[1] + q) >> 51;
	q = (h[2] + q) >> 51;
	q = (h[3] + q) >> 51;
	q = (h[4] + q) >> 51;
	h[0] += 19 * q;
	h[1] += h[0] >> 51; h[0] &= MASK51;
	h[2] += h[1] >> 51; h[1] &= MASK51;
	h[3] += h[2] >> 51; h[2] &= MASK51;
	h[4] += h[3] >> 51; h[3] &= MASK51;
	h[4] &= MASK51;                  /* drops 2^255: h - p */
	store64_le(s, h[0] | h[1] << 51);
	store64_le(s + 8, h[1] >> 13 | h[2] << 38);
	store64_le(s + 16, h[2] >> 26 | h[3] << 25);
	store64_le(s + 24, h[3] >> 39 | h[4] << 12);
}

/* Sums are left uncarried: limbs of products stay below 2^51 + 2^13, so
 * a sum stays below 2^53, which fe_mul and fe_sq take. */
static void fe_add(fe h, const fe f, const fe g)
{
	int i;

	for (i = 0; i < 5; i++) {
		h[i] = f[i] + g[i];
	}
}

/* fe_sub: f + 2p - g, so no limb goes negative while g is a product,
 * whose limbs are below 2p's (2^52 - 38 and 2^52 - 2). */
static void fe_sub(fe h, const fe f, const fe g)
{
	h[0] = f[0] + 0xfffffffffffda - g[0];
	h[1] = f[1] + 0xffffffffffffe - g[1];
	h[2] = f[2] + 0xffffffffffffe - g[2];
	h[3] = f[3] + 0xffffffffffffe - g[3];
	h[4] = f[4] + 0xffffffffffffe - g[4];
}

/* fe_reduce: 128-bit column sums to limbs.  With inputs below 2^53 a
 * column is below 2^113, so every carry fits 64 bits. */
static void fe_reduce(fe h, u128 t[5])
{
	uint64_t c;

	c = shr51(t[0]); h[0] = low51(t[0]); t[1] = add128(t[1], wide(c));
	c = shr51(t[1]); h[1] = low51(t[1]); t[2] = add128(t[2], wide(c));
	c = shr51(t[2]); h[2] = low51(t[2]); t[3] = add128(t[3], wide(c));
	c = shr51(t[3]); h[3] = low51(t[3]); t[4] = add128(t[4], wide(c));
	c = shr51(t[4]); h[4] = low51(t[4]);
	h[0] += c * 19;
	c = h[0] >> 51; h[0] &= MASK51; h[1] += c;
}

#define MAC(acc, a, b) ((acc) = add128((acc), mul64((a), (b))))

/* fe_mul: h = f * g; h may be f or g.  Columns past the top wrap round
 * times 19. */
static void fe_mul(fe h, const fe f, const fe g)
{
	uint64_t g1 = g[1] * 19, g2 = g[2] * 19, g3 = g[3] * 19, g4 = g[4] * 19;
	u128 t[5];

	t[0] = mul64(f[0], g[0]);
	MAC(t[0], f[1], g4); MAC(t[0], f[2], g3);
	MAC(t[0], f[3], g2); MAC(t[0], f[4], g1);
	t[1] = mul64(f[0], g[1]);
	MAC(t[1], f[1], g[0]); MAC(t[1], f[2], g4);
	MAC(t[1], f[3], g3); MAC(t[1], f[4], g2);
	t[2] = mul64(f[0], g[2]);
	MAC(t[2], f[1], g[1]); MAC(t[2], f[2], g[0]);
	MAC(t[2], f[3], g4); MAC(t[2], f[4], g3);
	t[3] = mul64(f[0], g[3]);
	MAC(t[3], f[1], g[2]); MAC(t[3], f[2], g[1]);
	MAC(t[3], f[3], g[0]); MAC(t[3], f[4], g4);
	t[4] = mul64(f[0], g[4]);
	MAC(t[4], f[1], g[3]); MAC(t[4], f[2], g[2]);
	MAC(t[4], f[3], g[1]); MAC(t[4], f[4], g[0]);
	fe_reduce(h, t);
}

/* fe_sq: h = f * f, the cross products counted once and doubled. */
static void fe_sq(fe h, const fe f)
{
	uint64_t d0 = f[0] * 2, d1 = f[1] * 2, d2 = f[2] * 2, d3 = f[3] * 2;
	uint64_t f3_19 = f[3] * 19, f4_19 = f[4] * 19;
	u128 t[5];

	t[0] = mul64(f[0], f[0]); MAC(t[0], d1, f4_19); MAC(t[0], d2, f3_19);
	t[1] = mul64(d0, f[1]);   MAC(t[1], d2, f4_19); MAC(t[1], f[3], f3_19);
	t[2] = mul64(d0, f[2]);   MAC(t[2], f[1], f[1]); MAC(t[2], d3, f4_19);
	t[3] = mul64(d0, f[3]);   MAC(t[3], d1, f[2]); MAC(t[3], f[4], f4_19);
	t[4] = mul64(d0, f[4]);   MAC(t[4], d1, f[3]); MAC(t[4], f[2], f[2]);
	fe_reduce(h, t);
}

static void fe_sqn(fe h, const fe f, int n)
{
	fe_sq(h, f);
	while (--n > 0) {
		fe_sq(h, h);
	}
}

/* fe_mul_small: h = f * n for n below 2^32, such as a24. */
static void fe_mul_small(fe h, const fe f, uint32_t n)
{
	u128 t[5];
	int i;

	for (i = 0; i < 5; i++) {
		t[i] = mul64(f[i], n);
	}
	fe_reduce(h, t);
}

/* fe_invert: h = f^(p-2) = 1/f (and 0 for 0), by the usual chain of
 * 254 squarings and 11 multiplications, the same for every f. */
static void fe_invert(fe h, const fe f)
{
	fe t0, t1, t2, t3;

	fe_sq(t0, f);                    /* 2 */
	fe_sqn(t1, t0, 2);               /* 8 */
	fe_mul(t1, f, t1);               /* 9 */
	fe_mul(t0, t0, t1);              /* 11 */
	fe_sq(t2, t0);                   /* 22 */
	fe_mul(t1, t1, t2);              /* 2^5 - 1 */
	fe_sqn(t2, t1, 5);
	fe_mul(t1, t2, t1);              /* 2^10 - 1 */
	fe_sqn(t2, t1, 10);
	fe_mul(t2, t2, t1);              /* 2^20 - 1 */
	fe_sqn(t3, t2, 20);
	fe_mul(t2, t3, t2);              /* 2^40 - 1 */
	fe_sqn(t2, t2, 10);
	fe_mul(t1, t2, t1);              /* 2^50 - 1 */
	fe_sqn(t2, t1, 50);
	fe_mul(t2, t2, t1);              /* 2^100 - 1 */
	fe_sqn(t3, t2, 100);
	fe_mul(t2, t3, t2);              /* 2^200 - 1 */
	fe_sqn(t2, t2, 50);
	fe_mul(t1, t2, t1);              /* 2^250 - 1 */
	fe_sqn(t1, t1, 5);               /* 2^255 - 32 */
	fe_mul(h, t1, t0);               /* 2^255 - 21 = p - 2 */
	crypto_wipe(t0, sizeof(t0));
	crypto_wipe(t1, sizeof(t1));
	crypto_wipe(t2, sizeof(t2));
	crypto_wipe(t3, sizeof(t3));
}

/* fe_cswap: swap f and g if b is 1, leave them if 0, the same way. */
static void fe_cswap(fe f, fe g, uint64_t b)
{
	uint64_t mask = 0 - b, x;
	int i;

	for (i = 0; i < 5; i++) {
		x = mask & (f[i] ^ g[i]);
		f[i] ^= x;
		g[i] ^= x;
	}
}

/* ---- X25519 ------------------------------------------------------------- */

struct ladder {
	uint8_t k[32];
	fe x1, x2, z2, x3, z3, a, b, c, d, aa, bb, e, da, cb;
};

void x25519(uint8_t out[32], const uint8_t scalar[32], const uint8_t point[32])
{
	struct ladder l;
	uint64_t swap = 0, bit;
	int i;

	/* Clamp: a multiple of the cofactor 8, with bit 254 set. */
	memcpy(l.k, scalar, sizeof(l.k));
	l.k[0] &= 248;
	l.k[31] &= 127;
	l.k[31] |= 64;

	fe_frombytes(l.x1, point);
	memset(l.x2, 0, sizeof(l.x2));
	l.x2[0] = 1;
	memset(l.z2, 0, sizeof(l.z2));
	memcpy(l.x3, l.x1, sizeof(l.x3));
	memset(l.z3, 0, sizeof(l.z3));
	l.z3[0] = 1;

	/* RFC 7748 §5's ladder, a step per bit from 254 down; a swap is
	 * only undone at the next step if the next bit differs. */
	for (i = 254; i >= 0; i--) {
		bit = l.k[i >> 3] >> (i & 7) & 1;
		swap ^= bit;
		fe_cswap(l.x2, l.x3, swap);
		fe_cswap(l.z2, l.z3, swap);
		swap = bit;

		fe_add(l.a, l.x2, l.z2);
		fe_sub(l.b, l.x2, l.z2);
		fe_add(l.c, l.x3, l.z3);
		fe_sub(l.d, l.x3, l.z3);
		fe_sq(l.aa, l.a);
		fe_sq(l.bb, l.b);
		fe_mul(l.da, l.d, l.a);
		fe_mul(l.cb, l.c, l.b);
		fe_sub(l.e, l.aa, l.bb);
		fe_add(l.x3, l.da, l.cb);
		fe_sq(l.x3, l.x3);
		fe_sub(l.z3, l.da, l.cb);
		fe_sq(l.z3, l.z3);
		fe_mul(l.z3, l.z3, l.x1);
		fe_mul(l.x2, l.aa, l.bb);
		fe_mul_small(l.a, l.e, 121665);  /* a24 = (486662 - 2) / 4 */
		fe_add(l.a, l.a, l.aa);
		fe_mul(l.z2, l.e, l.a);
	}
	fe_cswap(l.x2, l.x3, swap);
	fe_cswap(l.z2, l.z3, swap);

	fe_invert(l.z2, l.z2);
	fe_mul(l.x2, l.x2, l.z2);
	fe_tobytes(out, l.x2);
	crypto_wipe(&l, sizeof(l));
}

void x25519_public(uint8_t pub[32], const uint8_t secret[32])
{
	static const uint8_t base[32] = { 9 };

	x25519(pub, secret, base);
}
