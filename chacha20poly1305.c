/*
 * ChaCha20, Poly1305 and AEAD_CHACHA20_POLY1305 (RFC 8439).  Neither has
 * a branch or a table index that depends on a key or on the data: ChaCha
 * is additions, rotations and XORs, and Poly1305 reduces with masks.
 * Bytes are loaded and stored one at a time in little-endian order, which
 * compilers turn into plain word moves, so neither the host's byte order
 * nor the alignment of the caller's buffers matters.
 *
 * On x86 the cipher runs four blocks at once in SSE2 registers, on
 * x86-64 CPUs that have AVX2 eight at once, and on those with AVX-512F
 * sixteen, picked at run time so that a plain -O2 build has them; the
 * plain C below does everything else, the tail of every message
 * included, and on its own when built with -DDIALBACK_PORTABLE_CRYPTO.
 * Poly1305 likewise has plain C; where the compiler has unsigned
 * __int128, a faster path in 64-bit words; and on x86-64 for long
 * messages, four blocks at once with AVX2 or eight with AVX-512F.
 * tests/unit runs the vectors under every path this CPU has
 * (chacha20_force, poly1305_force), tests/unit-portable the plain C.
 */
#include <string.h>

#include "crypto.h"
#include "sha256.h"

#ifdef CHACHA20_HAVE_AVX2
#include <immintrin.h>
#elif defined(CHACHA20_HAVE_SSE2)
#include <emmintrin.h>
#endif

static uint32_t load32_le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 |
	       (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store32_le(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* ---- ChaCha20 ----------------------------------------------------------- */

#define CHACHA_BLOCK 64

static void chacha20_init(uint32_t s[16], const uint8_t key[32],
                          const uint8_t nonce[12], uint32_t counter)
{
	int i;

	s[0] = 0x61707865;               /* "expand 32-byte k" */
	s[1] = 0x3320646e;
	s[2] = 0x79622d32;
	s[3] = 0x6b206574;
	for (i = 0; i < 8; i++) {
		s[4 + i] = load32_le(key + 4 * i);
	}
	s[12] = counter;
	for (i = 0; i < 3; i++) {
		s[13 + i] = load32_le(nonce + 4 * i);
	}
}

/* chacha20_block: the 20 rounds and the final addition of RFC 8439 §2.3,
 * as sixteen words; the caller serialises them. */
static void chacha20_block(uint32_t x[16], const uint32_t s[16])
{
	int i;

	memcpy(x, s, 16 * sizeof(x[0]));
	for (i = 0; i < 10; i++) {
		chacha20_quarter_round(x, 0, 4, 8, 12);
		chacha20_quarter_round(x, 1, 5, 9, 13);
		chacha20_quarter_round(x, 2, 6, 10, 14);
		chacha20_quarter_round(x, 3, 7, 11, 15);
		chacha20_quarter_round(x, 0, 5, 10, 15);
		chacha20_quarter_round(x, 1, 6, 11, 12);
		chacha20_quarter_round(x, 2, 7, 8, 13);
		chacha20_quarter_round(x, 3, 4, 9, 14);
	}
	for (i = 0; i < 16; i++) {
		x[i] += s[i];
	}
}

#ifdef CHACHA20_HAVE_SSE2
#define ROTL4(v, n) \
	_mm_or_si128(_mm_slli_epi32((v), (n)), _mm_srli_epi32((v), 32 - (n)))
#define QR4(a, b, c, d) do { \
	a = _mm_add_epi32(a, b); d = ROTL4(_mm_xor_si128(d, a), 16); \
	c = _mm_add_epi32(c, d); b = ROTL4(_mm_xor_si128(b, c), 12); \
	a = _mm_add_epi32(a, b); d = ROTL4(_mm_xor_si128(d, a), 8); \
	c = _mm_add_epi32(c, d); b = ROTL4(_mm_xor_si128(b, c), 7); \
} while (0)

/* chacha20_xor4: as many whole runs of four blocks as len holds, with
 * lane k of vector i holding word i of block k; a 4x4 transpose per row
 * of the state puts the words back in block order for the XOR.  Returns
 * the bytes done, and steps the counter s[12] past them. */
static size_t chacha20_xor4(uint8_t *out, const uint8_t *in, size_t len,
                            uint32_t s[16])
{
	__m128i x[16], o[16];
	size_t done = 0;
	int i, k;

	for (i = 0; i < 16; i++) {
		o[i] = _mm_set1_epi32((int)s[i]);
	}
	o[12] = _mm_add_epi32(o[12], _mm_set_epi32(3, 2, 1, 0));
	for (; len >= 4 * CHACHA_BLOCK; len -= 4 * CHACHA_BLOCK) {
		memcpy(x, o, sizeof(x));
		for (i = 0; i < 10; i++) {
			QR4(x[0], x[4], x[8], x[12]);
			QR4(x[1], x[5], x[9], x[13]);
			QR4(x[2], x[6], x[10], x[14]);
			QR4(x[3], x[7], x[11], x[15]);
			QR4(x[0], x[5], x[10], x[15]);
			QR4(x[1], x[6], x[11], x[12]);
			QR4(x[2], x[7], x[8], x[13]);
			QR4(x[3], x[4], x[9], x[14]);
		}
		for (i = 0; i < 16; i += 4) {
			__m128i a = _mm_add_epi32(x[i], o[i]);
			__m128i b = _mm_add_epi32(x[i + 1], o[i + 1]);
			__m128i c = _mm_add_epi32(x[i + 2], o[i + 2]);
			__m128i d = _mm_add_epi32(x[i + 3], o[i + 3]);
			__m128i ab0 = _mm_unpacklo_epi32(a, b);
			__m128i cd0 = _mm_unpacklo_epi32(c, d);
			__m128i ab1 = _mm_unpackhi_epi32(a, b);
			__m128i cd1 = _mm_unpackhi_epi32(c, d);
			__m128i w[4];

			w[0] = _mm_unpacklo_epi64(ab0, cd0);
			w[1] = _mm_unpackhi_epi64(ab0, cd0);
			w[2] = _mm_unpacklo_epi64(ab1, cd1);
			w[3] = _mm_unpackhi_epi64(ab1, cd1);
			for (k = 0; k < 4; k++) {
				int at = k * CHACHA_BLOCK + 4 * i;
				__m128i m = _mm_loadu_si128((const __m128i *)(in + at));

				_mm_storeu_si128((__m128i *)(out + at),
				                 _mm_xor_si128(w[k], m));
			}
		}
		o[12] = _mm_add_epi32(o[12], _mm_set1_epi32(4));
		in += 4 * CHACHA_BLOCK;
		out += 4 * CHACHA_BLOCK;
		done += 4 * CHACHA_BLOCK;
	}
	s[12] += (uint32_t)(done / CHACHA_BLOCK);
	/* o holds the key, x the last key stream, if they were spilled. */
	crypto_wipe(x, sizeof(x));
	crypto_wipe(o, sizeof(o));
	return done;
}
#endif

#ifdef CHACHA20_HAVE_AVX2
/* Rotations by 16 and 8 move whole bytes, so one byte shuffle does each;
 * by 12 and 7 they are two shifts and an OR. */
#define ROTL8X(v, n) \
	_mm256_or_si256(_mm256_slli_epi32((v), (n)), \
	                _mm256_srli_epi32((v), 32 - (n)))
#define QR8(a, b, c, d) do { \
	a = _mm256_add_epi32(a, b); \
	d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot16); \
	c = _mm256_add_epi32(c, d); b = ROTL8X(_mm256_xor_si256(b, c), 12); \
	a = _mm256_add_epi32(a, b); \
	d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), rot8); \
	c = _mm256_add_epi32(c, d); b = ROTL8X(_mm256_xor_si256(b, c), 7); \
} while (0)

/* chacha20_xor8: chacha20_xor4 in AVX2, eight blocks a run.  Lane k of
 * vector i is word i of block k; the XOR takes the state eight words at
 * a time, a 4x4 transpose within each 128-bit half of words i..i+3 and
 * i+4..i+7, then a swap of halves, giving words i..i+7 of each block.
 * Called only once the CPU is known to have AVX2. */
__attribute__((target("avx2")))
static size_t chacha20_xor8(uint8_t *out, const uint8_t *in, size_t len,
                            uint32_t s[16])
{
	const __m256i rot16 = _mm256_set_epi8(
		13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2,
		13, 12, 15, 14, 9, 8, 11, 10, 5, 4, 7, 6, 1, 0, 3, 2);
	const __m256i rot8 = _mm256_set_epi8(
		14, 13, 12, 15, 10, 9, 8, 11, 6, 5, 4, 7, 2, 1, 0, 3,
		14, 13, 12, 15, 10, 9, 8, 11, 6, 5, 4, 7, 2, 1, 0, 3);
	__m256i x[16], o[16];
	size_t done = 0;
	int i, k;

	for (i = 0; i < 16; i++) {
		o[i] = _mm256_set1_epi32((int)s[i]);
	}
	o[12] = _mm256_add_epi32(o[12], _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
	for (; len >= 8 * CHACHA_BLOCK; len -= 8 * CHACHA_BLOCK) {
		memcpy(x, o, sizeof(x));
		for (i = 0; i < 10; i++) {
			QR8(x[0], x[4], x[8], x[12]);
			QR8(x[1], x[5], x[9], x[13]);
			QR8(x[2], x[6], x[10], x[14]);
			QR8(x[3], x[7], x[11], x[15]);
			QR8(x[0], x[5], x[10], x[15]);
			QR8(x[1], x[6], x[11], x[12]);
			QR8(x[2], x[7], x[8], x[13]);
			QR8(x[3], x[4], x[9], x[14]);
		}
		for (i = 0; i < 16; i++) {
			x[i] = _mm256_add_epi32(x[i], o[i]);
		}
		for (i = 0; i < 16; i += 8) {
			__m256i u[4], v[4], t0, t1, t2, t3;

			/* u[k] holds words i..i+3 of blocks k and k + 4. */
			t0 = _mm256_unpacklo_epi32(x[i], x[i + 1]);
			t1 = _mm256_unpacklo_epi32(x[i + 2], x[i + 3]);
			t2 = _mm256_unpackhi_epi32(x[i], x[i + 1]);
			t3 = _mm256_unpackhi_epi32(x[i + 2], x[i + 3]);
			u[0] = _mm256_unpacklo_epi64(t0, t1);
			u[1] = _mm256_unpackhi_epi64(t0, t1);
			u[2] = _mm256_unpacklo_epi64(t2, t3);
			u[3] = _mm256_unpackhi_epi64(t2, t3);
			t0 = _mm256_unpacklo_epi32(x[i + 4], x[i + 5]);
			t1 = _mm256_unpacklo_epi32(x[i + 6], x[i + 7]);
			t2 = _mm256_unpackhi_epi32(x[i + 4], x[i + 5]);
			t3 = _mm256_unpackhi_epi32(x[i + 6], x[i + 7]);
			v[0] = _mm256_unpacklo_epi64(t0, t1);
			v[1] = _mm256_unpackhi_epi64(t0, t1);
			v[2] = _mm256_unpacklo_epi64(t2, t3);
			v[3] = _mm256_unpackhi_epi64(t2, t3);
			for (k = 0; k < 4; k++) {
				int lo = k * CHACHA_BLOCK + 4 * i;
				int hi = lo + 4 * CHACHA_BLOCK;
				__m256i m;

				m = _mm256_loadu_si256((const __m256i *)(in + lo));
				_mm256_storeu_si256((__m256i *)(out + lo),
					_mm256_xor_si256(m,
					_mm256_permute2x128_si256(u[k], v[k], 0x20)));
				m = _mm256_loadu_si256((const __m256i *)(in + hi));
				_mm256_storeu_si256((__m256i *)(out + hi),
					_mm256_xor_si256(m,
					_mm256_permute2x128_si256(u[k], v[k], 0x31)));
			}
		}
		o[12] = _mm256_add_epi32(o[12], _mm256_set1_epi32(8));
		in += 8 * CHACHA_BLOCK;
		out += 8 * CHACHA_BLOCK;
		done += 8 * CHACHA_BLOCK;
	}
	s[12] += (uint32_t)(done / CHACHA_BLOCK);
	/* o holds the key, x the last key stream, if they were spilled. */
	crypto_wipe(x, sizeof(x));
	crypto_wipe(o, sizeof(o));
	return done;
}
#endif

#ifdef CHACHA20_HAVE_AVX512
/* AVX-512 rotates a 32-bit lane by any count in one instruction. */
#define QR16(a, b, c, d) do { \
	a = _mm512_add_epi32(a, b); \
	d = _mm512_rol_epi32(_mm512_xor_si512(d, a), 16); \
	c = _mm512_add_epi32(c, d); \
	b = _mm512_rol_epi32(_mm512_xor_si512(b, c), 12); \
	a = _mm512_add_epi32(a, b); \
	d = _mm512_rol_epi32(_mm512_xor_si512(d, a), 8); \
	c = _mm512_add_epi32(c, d); \
	b = _mm512_rol_epi32(_mm512_xor_si512(b, c), 7); \
} while (0)

/* chacha20_xor16: chacha20_xor8 in AVX-512, sixteen blocks a run.  Lane
 * k of vector i is word i of block k.  For the XOR, a 4x4 transpose
 * within each 128-bit quarter of words g..g+3 (g = 0, 4, 8, 12) gives
 * u[g / 4][k], whose quarter j holds those words of block 4j + k; a 4x4
 * transpose of quarters across u[0..3][k] then gives blocks k, 4 + k,
 * 8 + k and 12 + k whole.  Called only once the CPU is known to have
 * AVX-512F. */
__attribute__((target("avx512f")))
static size_t chacha20_xor16(uint8_t *out, const uint8_t *in, size_t len,
                             uint32_t s[16])
{
	__m512i x[16], o[16], u[4][4];
	size_t done = 0;
	int i, j, k;

	for (i = 0; i < 16; i++) {
		o[i] = _mm512_set1_epi32((int)s[i]);
	}
	o[12] = _mm512_add_epi32(o[12], _mm512_set_epi32(15, 14, 13, 12, 11,
		10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
	for (; len >= 16 * CHACHA_BLOCK; len -= 16 * CHACHA_BLOCK) {
		memcpy(x, o, sizeof(x));
		for (i = 0; i < 10; i++) {
			QR16(x[0], x[4], x[8], x[12]);
			QR16(x[1], x[5], x[9], x[13]);
			QR16(x[2], x[6], x[10], x[14]);
			QR16(x[3], x[7], x[11], x[15]);
			QR16(x[0], x[5], x[10], x[15]);
			QR16(x[1], x[6], x[11], x[12]);
			QR16(x[2], x[7], x[8], x[13]);
			QR16(x[3], x[4], x[9], x[14]);
		}
		for (i = 0; i < 16; i++) {
			x[i] = _mm512_add_epi32(x[i], o[i]);
		}
		for (j = 0; j < 4; j++) {
			__m512i t0, t1, t2, t3;

			i = 4 * j;
			t0 = _mm512_unpacklo_epi32(x[i], x[i + 1]);
			t1 = _mm512_unpacklo_epi32(x[i + 2], x[i + 3]);
			t2 = _mm512_unpackhi_epi32(x[i], x[i + 1]);
			t3 = _mm512_unpackhi_epi32(x[i + 2], x[i + 3]);
			u[j][0] = _mm512_unpacklo_epi64(t0, t1);
			u[j][1] = _mm512_unpackhi_epi64(t0, t1);
			u[j][2] = _mm512_unpacklo_epi64(t2, t3);
			u[j][3] = _mm512_unpackhi_epi64(t2, t3);
		}
		for (k = 0; k < 4; k++) {
			__m512i t0, t1, t2, t3, w[4];

			/* 0x44 takes quarters 0, 1 of each source, 0xee 2, 3;
			 * 0x88 then takes 0, 2 of each, 0xdd 1, 3. */
			t0 = _mm512_shuffle_i32x4(u[0][k], u[1][k], 0x44);
			t1 = _mm512_shuffle_i32x4(u[0][k], u[1][k], 0xee);
			t2 = _mm512_shuffle_i32x4(u[2][k], u[3][k], 0x44);
			t3 = _mm512_shuffle_i32x4(u[2][k], u[3][k], 0xee);
			w[0] = _mm512_shuffle_i32x4(t0, t2, 0x88);
			w[1] = _mm512_shuffle_i32x4(t0, t2, 0xdd);
			w[2] = _mm512_shuffle_i32x4(t1, t3, 0x88);
			w[3] = _mm512_shuffle_i32x4(t1, t3, 0xdd);
			for (j = 0; j < 4; j++) {
				int at = (4 * j + k) * CHACHA_BLOCK;
				__m512i m = _mm512_loadu_si512(in + at);

				_mm512_storeu_si512(out + at,
				                    _mm512_xor_si512(m, w[j]));
			}
		}
		o[12] = _mm512_add_epi32(o[12], _mm512_set1_epi32(16));
		in += 16 * CHACHA_BLOCK;
		out += 16 * CHACHA_BLOCK;
		done += 16 * CHACHA_BLOCK;
	}
	s[12] += (uint32_t)(done / CHACHA_BLOCK);
	/* o holds the key, x and u the last key stream, if they were
	 * spilled. */
	crypto_wipe(x, sizeof(x));
	crypto_wipe(o, sizeof(o));
	crypto_wipe(u, sizeof(u));
	return done;
}
#endif

/* The path chacha20_xor runs, -1 until its first call picks one.  It
 * depends on the build and the CPU only, never on a key or the data. */
static int chacha_path = -1;

#ifdef CHACHA20_HAVE_AVX2
/* cpu_has_avx2: 1 if this CPU and OS run AVX2, for ChaCha20 and Poly1305
 * alike.  __builtin_cpu_supports also asks the OS (XGETBV) whether it
 * saves the AVX registers; __builtin_cpu_init makes it safe to call
 * before the constructors have run. */
static int cpu_has_avx2(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") != 0;
}
#endif

#ifdef CHACHA20_HAVE_AVX512
/* cpu_has_avx512: 1 if this CPU and OS run AVX-512F (the OS saving the
 * zmm registers too), and AVX2, which every such CPU has but which
 * chacha20_force must be able to take below it. */
static int cpu_has_avx512(void)
{
	return cpu_has_avx2() && __builtin_cpu_supports("avx512f") != 0;
}
#endif

static int chacha_best(void)
{
#ifdef CHACHA20_HAVE_AVX512
	if (cpu_has_avx512()) {
		return CHACHA20_AVX512;
	}
#endif
#ifdef CHACHA20_HAVE_AVX2
	if (cpu_has_avx2()) {
		return CHACHA20_AVX2;
	}
#endif
#ifdef CHACHA20_HAVE_SSE2
	return CHACHA20_SSE2;
#else
	return CHACHA20_PLAIN;
#endif
}

int chacha20_force(int path)
{
	if (path == -1) {
		path = chacha_best();
	} else if (path < CHACHA20_PLAIN || path > chacha_best()) {
		return -1;
	}
	chacha_path = path;
	return path;
}

void chacha20_xor(uint8_t *out, const uint8_t *in, size_t len,
                  const uint8_t key[CHACHA20_KEY_LEN],
                  const uint8_t nonce[CHACHA20_NONCE_LEN], uint32_t counter)
{
	uint32_t s[16], x[16];
	uint8_t ks[CHACHA_BLOCK];
	size_t i;

	if (chacha_path < 0) {
		chacha_path = chacha_best();
	}
	chacha20_init(s, key, nonce, counter);
#ifdef CHACHA20_HAVE_AVX512
	if (chacha_path == CHACHA20_AVX512 && len >= 16 * CHACHA_BLOCK) {
		i = chacha20_xor16(out, in, len, s);
		out += i;
		in += i;
		len -= i;
	}
#endif
#ifdef CHACHA20_HAVE_AVX2
	/* After AVX-512's runs of sixteen, at most one run of eight is
	 * left. */
	if (chacha_path >= CHACHA20_AVX2 && len >= 8 * CHACHA_BLOCK) {
		i = chacha20_xor8(out, in, len, s);
		out += i;
		in += i;
		len -= i;
	}
#endif
#ifdef CHACHA20_HAVE_SSE2
	/* After AVX2's runs of eight, at most one run of four is left. */
	if (chacha_path >= CHACHA20_SSE2 && len >= 4 * CHACHA_BLOCK) {
		i = chacha20_xor4(out, in, len, s);
		out += i;
		in += i;
		len -= i;
	}
#endif
	for (; len >= CHACHA_BLOCK; len -= CHACHA_BLOCK) {
		chacha20_block(x, s);
		s[12]++;
		for (i = 0; i < 16; i++) {
			store32_le(out + 4 * i, load32_le(in + 4 * i) ^ x[i]);
		}
		out += CHACHA_BLOCK;
		in += CHACHA_BLOCK;
	}
	if (len > 0) {
		chacha20_block(x, s);
		for (i = 0; i < 16; i++) {
			store32_le(ks + 4 * i, x[i]);
		}
		for (i = 0; i < len; i++) {
			out[i] = in[i] ^ ks[i];
		}
		crypto_wipe(ks, sizeof(ks));
	}
	crypto_wipe(s, sizeof(s));
	crypto_wipe(x, sizeof(x));
}

/* ---- Poly1305 ----------------------------------------------------------- */

/*
 * The plain C holds the accumulator h and the key half r as five 26-bit
 * limbs, so that each product is one 32 x 32 -> 64-bit multiply on any
 * C11 compiler and a sum of five of them cannot overflow.  As 2^130 = 5
 * (mod p), the top limb's carry comes back into the bottom one times five.
 *
 * Where the compiler has unsigned __int128, h is two 64-bit words and a
 * third of a few bits, and r two words: four 64 x 64 -> 128-bit multiplies
 * a block, and a short chain of carries (as OpenSSL's C does it).  That
 * measured a third faster on x86-64 than three 44-bit limbs with nine
 * multiplies (poly1305-donna-64), which in turn barely beat 26-bit limbs.
 * Both paths end in the same final reduction, in 26-bit limbs.
 */
#define POLY_BLOCK 16
#define MASK26     0x3ffffff
#define MUL(a, b)  ((uint64_t)(a) * (b))   /* 32 x 32 -> 64 bits */
/* The AVX2 path takes runs of four blocks from messages this long on:
 * it measured slower than poly_blocks64 at 256 bytes, as fast at 512,
 * and faster from 1 KiB, the cost of r^2..r^4 being won back. */
#define POLY_AVX2_MIN 512
/* The AVX-512 path takes runs of eight blocks from messages this long
 * on: it measured as fast as poly_blocks64 at 512 bytes, and from 1 KiB
 * faster than both it and AVX2. */
#define POLY_AVX512_MIN 1024
/* The most lanes a path runs, and so the powers of r it needs. */
#define POLY_LANES 8

#ifdef POLY1305_HAVE_INT128
typedef unsigned __int128 u128;

#define MUL64(a, b) ((u128)(a) * (b))     /* 64 x 64 -> 128 bits */

/* Written out byte by byte, as load32_le, so that compilers see one
 * 64-bit load rather than a call. */
static uint64_t load64_le(const uint8_t *p)
{
	return (uint64_t)p[0] | (uint64_t)p[1] << 8 |
	       (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
	       (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
	       (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}
#endif

/* The path poly_init gives a new message, -1 until the first picks one;
 * like chacha_path it depends on the build and the CPU only.  A path
 * forced by the unit test takes AVX2 from one run of four blocks on, so
 * that the short RFC vectors reach it too. */
static int poly_path = -1;
static size_t poly_avx2_min = POLY_AVX2_MIN;
#ifdef POLY1305_HAVE_AVX512
static size_t poly_avx512_min = POLY_AVX512_MIN;
#endif

struct poly {
	int path;                        /* enum poly1305_path */
	uint32_t r[5], h[5];             /* POLY1305_PLAIN */
#ifdef POLY1305_HAVE_INT128
	uint64_t r64[2], h64[3];         /* POLY1305_INT128 */
#endif
#ifdef POLY1305_HAVE_AVX2
	uint32_t rpow[POLY_LANES][5];    /* r to r^rpow_n */
	int rpow_n;
#endif
	uint32_t pad[4];
};

static int poly_best(void)
{
#ifdef POLY1305_HAVE_AVX512
	if (cpu_has_avx512()) {
		return POLY1305_AVX512;
	}
#endif
#ifdef POLY1305_HAVE_AVX2
	if (cpu_has_avx2()) {
		return POLY1305_AVX2;
	}
#endif
#ifdef POLY1305_HAVE_INT128
	return POLY1305_INT128;
#else
	return POLY1305_PLAIN;
#endif
}

int poly1305_force(int path)
{
	if (path == -1) {
		path = poly_best();
		poly_avx2_min = POLY_AVX2_MIN;
#ifdef POLY1305_HAVE_AVX512
		poly_avx512_min = POLY_AVX512_MIN;
#endif
	} else if (path < POLY1305_PLAIN || path > poly_best()) {
		return -1;
	} else {
		poly_avx2_min = 4 * POLY_BLOCK;
#ifdef POLY1305_HAVE_AVX512
		poly_avx512_min = 8 * POLY_BLOCK;
#endif
	}
	poly_path = path;
	return path;
}

static void poly_init(struct poly *p, const uint8_t key[32])
{
	int i;

	memset(p, 0, sizeof(*p));
	if (poly_path < 0) {
		poly_path = poly_best();
	}
	p->path = poly_path;
	/* r is clamped as RFC 8439 §2.5 says: the top four bits of bytes 3,
	 * 7, 11 and 15 and the bottom two of bytes 4, 8 and 12 cleared. */
	p->r[0] = load32_le(key) & 0x3ffffff;
	p->r[1] = load32_le(key + 3) >> 2 & 0x3ffff03;
	p->r[2] = load32_le(key + 6) >> 4 & 0x3ffc0ff;
	p->r[3] = load32_le(key + 9) >> 6 & 0x3f03fff;
	p->r[4] = load32_le(key + 12) >> 8 & 0x00fffff;
#ifdef POLY1305_HAVE_INT128
	/* The same clamp on r as two 64-bit words.  It leaves r1 a multiple
	 * of 4 below 2^60, which poly_blocks64 relies on. */
	p->r64[0] = load64_le(key) & 0x0ffffffc0fffffffULL;
	p->r64[1] = load64_le(key + 8) & 0x0ffffffc0ffffffcULL;
#endif
	for (i = 0; i < 4; i++) {
		p->pad[i] = load32_le(key + 16 + 4 * i);
	}
}

/* poly_mul26: h = a * b in 26-bit limbs, each of a and b below 2^27,
 * with a partial carry: limbs end below 2^26 but for h1, which may be a
 * little over, and the next product has room for it.  h may be a.
 * Inlined where it can be, so that poly_blocks26 keeps h in registers. */
#ifdef __GNUC__
__attribute__((always_inline))
#endif
static inline void poly_mul26(uint32_t h[5], const uint32_t a[5],
                              const uint32_t b[5])
{
	const uint32_t s1 = b[1] * 5, s2 = b[2] * 5, s3 = b[3] * 5;
	const uint32_t s4 = b[4] * 5;
	uint64_t d0, d1, d2, d3, d4;
	uint32_t c;

	d0 = MUL(a[0], b[0]) + MUL(a[1], s4) + MUL(a[2], s3) +
	     MUL(a[3], s2) + MUL(a[4], s1);
	d1 = MUL(a[0], b[1]) + MUL(a[1], b[0]) + MUL(a[2], s4) +
	     MUL(a[3], s3) + MUL(a[4], s2);
	d2 = MUL(a[0], b[2]) + MUL(a[1], b[1]) + MUL(a[2], b[0]) +
	     MUL(a[3], s4) + MUL(a[4], s3);
	d3 = MUL(a[0], b[3]) + MUL(a[1], b[2]) + MUL(a[2], b[1]) +
	     MUL(a[3], b[0]) + MUL(a[4], s4);
	d4 = MUL(a[0], b[4]) + MUL(a[1], b[3]) + MUL(a[2], b[2]) +
	     MUL(a[3], b[1]) + MUL(a[4], b[0]);

	c = (uint32_t)(d0 >> 26); h[0] = (uint32_t)d0 & MASK26; d1 += c;
	c = (uint32_t)(d1 >> 26); h[1] = (uint32_t)d1 & MASK26; d2 += c;
	c = (uint32_t)(d2 >> 26); h[2] = (uint32_t)d2 & MASK26; d3 += c;
	c = (uint32_t)(d3 >> 26); h[3] = (uint32_t)d3 & MASK26; d4 += c;
	c = (uint32_t)(d4 >> 26); h[4] = (uint32_t)d4 & MASK26;
	h[0] += c * 5;
	c = h[0] >> 26; h[0] &= MASK26; h[1] += c;
}

/* poly_blocks26: h = (h + block) * r for each whole 16-byte block in
 * 26-bit limbs; hibit is 1 for a full block, 0 for a short last block
 * that the caller has already padded with its 1 byte. */
static void poly_blocks26(struct poly *p, const uint8_t *m, size_t len,
                          uint32_t hibit)
{
	uint32_t h[5], r[5];

	memcpy(h, p->h, sizeof(h));
	memcpy(r, p->r, sizeof(r));
	hibit <<= 24;                    /* the 2^128 bit, in limb 4 */
	for (; len >= POLY_BLOCK; len -= POLY_BLOCK, m += POLY_BLOCK) {
		h[0] += load32_le(m) & MASK26;
		h[1] += load32_le(m + 3) >> 2 & MASK26;
		h[2] += load32_le(m + 6) >> 4 & MASK26;
		h[3] += load32_le(m + 9) >> 6 & MASK26;
		h[4] += load32_le(m + 12) >> 8 | hibit;
		poly_mul26(h, h, r);
	}
	memcpy(p->h, h, sizeof(h));
}

#ifdef POLY1305_HAVE_INT128
/* poly_blocks64: poly_blocks26 with h = h2:h1:h0 and r = r1:r0 in 64-bit
 * words.  h1 r1 and h2 r1 land at 2^128 and past, where 2^128 = 5/4 (mod
 * p): so they are taken times s1 = r1 + r1 / 4, exact because the clamp
 * leaves r1 a multiple of 4.  h is only partly reduced: the carry
 * keeps h2 at most 4 between blocks and 6 within one, so h2 s1 and h2 r0
 * fit in 64 bits, as r0 and s1 are below 2^61. */
static void poly_blocks64(struct poly *p, const uint8_t *m, size_t len,
                          uint32_t hibit)
{
	const uint64_t r0 = p->r64[0], r1 = p->r64[1];
	const uint64_t s1 = r1 + (r1 >> 2);
	uint64_t h0 = p->h64[0], h1 = p->h64[1], h2 = p->h64[2], c;
	u128 d0, d1;

	for (; len >= POLY_BLOCK; len -= POLY_BLOCK, m += POLY_BLOCK) {
		d0 = (u128)h0 + load64_le(m);
		d1 = (u128)h1 + load64_le(m + 8) + (uint64_t)(d0 >> 64);
		h0 = (uint64_t)d0;
		h1 = (uint64_t)d1;
		h2 += (uint64_t)(d1 >> 64) + hibit;

		d0 = MUL64(h0, r0) + MUL64(h1, s1);
		d1 = MUL64(h0, r1) + MUL64(h1, r0) + h2 * s1;
		h2 *= r0;

		/* h2:h1:h0 = d1:d0 + h2 * 2^128, and then what passes
		 * 2^130 comes back times 5: as (h2 / 4) * 4 + h2 / 4. */
		d1 += (uint64_t)(d0 >> 64);
		h0 = (uint64_t)d0;
		h1 = (uint64_t)d1;
		h2 += (uint64_t)(d1 >> 64);
		c = (h2 & ~(uint64_t)3) + (h2 >> 2);
		h2 &= 3;
		d0 = (u128)h0 + c;
		d1 = (u128)h1 + (uint64_t)(d0 >> 64);
		h0 = (uint64_t)d0;
		h1 = (uint64_t)d1;
		h2 += (uint64_t)(d1 >> 64);
	}
	p->h64[0] = h0;
	p->h64[1] = h1;
	p->h64[2] = h2;
}
#endif

#ifdef POLY1305_HAVE_INT128
/* poly_h64_to_26: h in 26-bit limbs for poly_finish, each below 2^26
 * but limb 4, which is below 2^27 as h2 < 8. */
static void poly_h64_to_26(struct poly *p)
{
	uint64_t h0 = p->h64[0], h1 = p->h64[1], h2 = p->h64[2];

	p->h[0] = (uint32_t)h0 & MASK26;
	p->h[1] = (uint32_t)(h0 >> 26) & MASK26;
	p->h[2] = (uint32_t)(h0 >> 52 | h1 << 12) & MASK26;
	p->h[3] = (uint32_t)(h1 >> 14) & MASK26;
	p->h[4] = (uint32_t)(h1 >> 40 | h2 << 24);
}
#endif

#ifdef POLY1305_HAVE_AVX2
/* poly_powers: r to r^n in 26-bit limbs, n at most POLY_LANES, each
 * r^k as r^(k/2) r^(k - k/2), so that the chain of multiplies is three
 * long rather than seven. */
static void poly_powers(struct poly *p, int n)
{
	int k;

	memcpy(p->rpow[0], p->r, sizeof(p->rpow[0]));
	for (k = 2; k <= n; k++) {
		poly_mul26(p->rpow[k - 1], p->rpow[k / 2 - 1],
		           p->rpow[k - k / 2 - 1]);
	}
	p->rpow_n = n;
}

/* poly_lanes_done: h from the sums l[] of the vector paths' lanes, each
 * below 2^30 a limb: carried so that h < 2^130 + 2^38, and then as
 * 64-bit words, which leaves h2 at most 4 as poly_blocks64 wants it. */
static void poly_lanes_done(struct poly *p, uint64_t l[5])
{
	uint64_t c;
	u128 t;
	int i;

	for (i = 0; i < 4; i++) {
		l[i + 1] += l[i] >> 26;
		l[i] &= MASK26;
	}
	c = l[4] >> 26;
	l[4] &= MASK26;
	l[0] += c * 5;
	l[1] += l[0] >> 26;
	l[0] &= MASK26;
	t = (u128)l[0] + ((u128)l[1] << 26) + ((u128)l[2] << 52);
	p->h64[0] = (uint64_t)t;
	t = (t >> 64) + ((u128)l[3] << 14) + ((u128)l[4] << 40);
	p->h64[1] = (uint64_t)t;
	p->h64[2] = (uint64_t)(t >> 64);
	crypto_wipe(l, 5 * sizeof(l[0]));
}

/*
 * The AVX2 and AVX-512 paths are one algorithm in four or eight 64-bit
 * lanes.  Lane k sums every fourth (eighth) block times r^4 (r^8) per
 * run, so with four lanes
 *   h' = ((h + m0) r^4 + m4) r^4 ... and so on,
 * and the last run is taken times r^4 down to r, one per lane, to give
 * each block its power of r before the lanes are added.  A run's chain
 * of multiplies and carries is long; more lanes do more in its time.
 * Each is called only once the CPU is known to have its instructions,
 * takes as many whole runs as len holds, at least one, and returns the
 * bytes done.
 */

/* VEC_MUL: h = h * a in each 64-bit lane of vectors of type V, with
 * mul, add, srli and and the instructions of their width; 26-bit limbs as
 * poly_blocks26 has them, s = 5 a for the products that pass 2^130, and a
 * partial carry. */
#define VEC_MUL(V, mul, add, srli, andv, h, a, s, mask) do { \
	V d0_, d1_, d2_, d3_, d4_, c_; \
	/* Limb by limb of h, so that only the five sums stay live. */ \
	d0_ = mul(h[0], a[0]); d1_ = mul(h[0], a[1]); \
	d2_ = mul(h[0], a[2]); d3_ = mul(h[0], a[3]); \
	d4_ = mul(h[0], a[4]); \
	d0_ = add(d0_, mul(h[1], s[4])); d1_ = add(d1_, mul(h[1], a[0])); \
	d2_ = add(d2_, mul(h[1], a[1])); d3_ = add(d3_, mul(h[1], a[2])); \
	d4_ = add(d4_, mul(h[1], a[3])); \
	d0_ = add(d0_, mul(h[2], s[3])); d1_ = add(d1_, mul(h[2], s[4])); \
	d2_ = add(d2_, mul(h[2], a[0])); d3_ = add(d3_, mul(h[2], a[1])); \
	d4_ = add(d4_, mul(h[2], a[2])); \
	d0_ = add(d0_, mul(h[3], s[2])); d1_ = add(d1_, mul(h[3], s[3])); \
	d2_ = add(d2_, mul(h[3], s[4])); d3_ = add(d3_, mul(h[3], a[0])); \
	d4_ = add(d4_, mul(h[3], a[1])); \
	d0_ = add(d0_, mul(h[4], s[1])); d1_ = add(d1_, mul(h[4], s[2])); \
	d2_ = add(d2_, mul(h[4], s[3])); d3_ = add(d3_, mul(h[4], s[4])); \
	d4_ = add(d4_, mul(h[4], a[0])); \
	/* Two carry chains at once, for half the latency of one: limbs \
	 * end below 2^26 but for h1 and h4, a little over. */ \
	VEC_CARRY(srli, andv, add, d0_, d1_, c_, mask); \
	VEC_CARRY(srli, andv, add, d3_, d4_, c_, mask); \
	VEC_CARRY(srli, andv, add, d1_, d2_, c_, mask); \
	c_ = srli(d4_, 26); d4_ = andv(d4_, mask); \
	d0_ = add(d0_, add(c_, VEC_TIMES4(c_))); \
	VEC_CARRY(srli, andv, add, d2_, d3_, c_, mask); \
	VEC_CARRY(srli, andv, add, d0_, d1_, c_, mask); \
	VEC_CARRY(srli, andv, add, d3_, d4_, c_, mask); \
	h[0] = d0_; h[1] = d1_; h[2] = d2_; h[3] = d3_; h[4] = d4_; \
} while (0)
#define VEC_CARRY(srli, andv, add, x, y, c, mask) do { \
	(c) = srli((x), 26); (x) = andv((x), (mask)); (y) = add((y), (c)); \
} while (0)

/* VEC_LOAD: the blocks in lo and hi, their low and high 64-bit halves a
 * lane each, into 26-bit limbs added to h, with the 2^128 bit hibit. */
#define VEC_LOAD(add, srli, slli, andv, orv, h, lo, hi, hibit, mask) do { \
	h[0] = add(h[0], andv(lo, mask)); \
	h[1] = add(h[1], andv(srli(lo, 26), mask)); \
	h[2] = add(h[2], andv(orv(srli(lo, 52), slli(hi, 12)), mask)); \
	h[3] = add(h[3], andv(srli(hi, 14), mask)); \
	h[4] = add(h[4], orv(srli(hi, 40), hibit)); \
} while (0)

__attribute__((target("avx2"), always_inline))
static inline void poly_mul4(__m256i h[5], const __m256i a[5],
                             const __m256i s[5])
{
	const __m256i mask = _mm256_set1_epi64x(MASK26);

#define VEC_TIMES4(c) _mm256_slli_epi64((c), 2)
	VEC_MUL(__m256i, _mm256_mul_epu32, _mm256_add_epi64, _mm256_srli_epi64,
	        _mm256_and_si256, h, a, s, mask);
#undef VEC_TIMES4
}

/* poly_load4: four blocks from m added to h.  The 64-bit unpacks leave
 * blocks 0, 2, 1, 3 in lanes 0 to 3, an order the caller undoes with the
 * powers of r it ends with. */
__attribute__((target("avx2"), always_inline))
static inline void poly_load4(__m256i h[5], const uint8_t *m, __m256i hibit)
{
	const __m256i mask = _mm256_set1_epi64x(MASK26);
	__m256i a = _mm256_loadu_si256((const __m256i *)m);
	__m256i b = _mm256_loadu_si256((const __m256i *)(m + 32));
	__m256i lo = _mm256_unpacklo_epi64(a, b);
	__m256i hi = _mm256_unpackhi_epi64(a, b);

	VEC_LOAD(_mm256_add_epi64, _mm256_srli_epi64, _mm256_slli_epi64,
	         _mm256_and_si256, _mm256_or_si256, h, lo, hi, hibit, mask);
}

__attribute__((target("avx2")))
static size_t poly_blocks_avx2(struct poly *p, const uint8_t *m, size_t len,
                               uint32_t hibit)
{
	const __m256i hb = _mm256_set1_epi64x((int64_t)hibit << 24);
	__m256i h[5], r4[5], s4[5], w[5], sw[5];
	uint64_t lane[4], l[5];
	size_t done;
	int i;

	if (p->rpow_n < 4) {
		poly_powers(p, 4);
	}
	poly_h64_to_26(p);
	for (i = 0; i < 5; i++) {
		r4[i] = _mm256_set1_epi64x(p->rpow[3][i]);
		s4[i] = _mm256_set1_epi64x((uint64_t)p->rpow[3][i] * 5);
		/* Lanes 0 to 3 hold blocks 0, 2, 1 and 3 of the run, so
		 * they take r^4, r^2, r^3 and r. */
		w[i] = _mm256_set_epi64x(p->rpow[0][i], p->rpow[2][i],
		                         p->rpow[1][i], p->rpow[3][i]);
		sw[i] = _mm256_set_epi64x((uint64_t)p->rpow[0][i] * 5,
		                          (uint64_t)p->rpow[2][i] * 5,
		                          (uint64_t)p->rpow[1][i] * 5,
		                          (uint64_t)p->rpow[3][i] * 5);
		h[i] = _mm256_set_epi64x(0, 0, 0, p->h[i]);
	}
	poly_load4(h, m, hb);
	for (done = 64; len - done >= 64; done += 64) {
		poly_mul4(h, r4, s4);
		poly_load4(h, m + done, hb);
	}
	poly_mul4(h, w, sw);

	for (i = 0; i < 5; i++) {
		_mm256_storeu_si256((__m256i *)lane, h[i]);
		l[i] = lane[0] + lane[1] + lane[2] + lane[3];
	}
	poly_lanes_done(p, l);
	/* The powers of r, if they were spilled, and the lanes' sums. */
	crypto_wipe(r4, sizeof(r4));
	crypto_wipe(s4, sizeof(s4));
	crypto_wipe(w, sizeof(w));
	crypto_wipe(sw, sizeof(sw));
	crypto_wipe(lane, sizeof(lane));
	return done;
}

#ifdef POLY1305_HAVE_AVX512
__attribute__((target("avx512f"), always_inline))
static inline void poly_mul8(__m512i h[5], const __m512i a[5],
                             const __m512i s[5])
{
	const __m512i mask = _mm512_set1_epi64(MASK26);

#define VEC_TIMES4(c) _mm512_slli_epi64((c), 2)
	VEC_MUL(__m512i, _mm512_mul_epu32, _mm512_add_epi64, _mm512_srli_epi64,
	        _mm512_and_si512, h, a, s, mask);
#undef VEC_TIMES4
}

/* poly_load8: eight blocks from m added to h.  The 64-bit unpacks work
 * within 128-bit lanes, leaving blocks 0, 4, 1, 5, 2, 6, 3, 7 in lanes 0
 * to 7. */
__attribute__((target("avx512f"), always_inline))
static inline void poly_load8(__m512i h[5], const uint8_t *m, __m512i hibit)
{
	const __m512i mask = _mm512_set1_epi64(MASK26);
	__m512i a = _mm512_loadu_si512((const void *)m);
	__m512i b = _mm512_loadu_si512((const void *)(m + 64));
	__m512i lo = _mm512_unpacklo_epi64(a, b);
	__m512i hi = _mm512_unpackhi_epi64(a, b);

	VEC_LOAD(_mm512_add_epi64, _mm512_srli_epi64, _mm512_slli_epi64,
	         _mm512_and_si512, _mm512_or_si512, h, lo, hi, hibit, mask);
}

/* poly_lanes8: the powers of r that the lanes of poly_load8 end with:
 * block j of the last run takes r^(8 - j).  times is 1, or 5 for s. */
__attribute__((target("avx512f"), always_inline))
static inline __m512i poly_lanes8(const struct poly *p, int i, uint64_t times)
{
	return _mm512_set_epi64(
		p->rpow[0][i] * times, p->rpow[4][i] * times,
		p->rpow[1][i] * times, p->rpow[5][i] * times,
		p->rpow[2][i] * times, p->rpow[6][i] * times,
		p->rpow[3][i] * times, p->rpow[7][i] * times);
}

__attribute__((target("avx512f")))
static size_t poly_blocks_avx512(struct poly *p, const uint8_t *m,
                                 size_t len, uint32_t hibit)
{
	const __m512i hb = _mm512_set1_epi64((int64_t)hibit << 24);
	__m512i h[5], r8[5], s8[5], w[5], sw[5];
	uint64_t lane[8], l[5];
	size_t done;
	int i, k;

	if (p->rpow_n < 8) {
		poly_powers(p, 8);
	}
	poly_h64_to_26(p);
	for (i = 0; i < 5; i++) {
		r8[i] = _mm512_set1_epi64(p->rpow[7][i]);
		s8[i] = _mm512_set1_epi64((uint64_t)p->rpow[7][i] * 5);
		w[i] = poly_lanes8(p, i, 1);
		sw[i] = poly_lanes8(p, i, 5);
		h[i] = _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, p->h[i]);
	}
	poly_load8(h, m, hb);
	for (done = 128; len - done >= 128; done += 128) {
		poly_mul8(h, r8, s8);
		poly_load8(h, m + done, hb);
	}
	poly_mul8(h, w, sw);

	for (i = 0; i < 5; i++) {
		_mm512_storeu_si512((void *)lane, h[i]);
		for (l[i] = 0, k = 0; k < 8; k++) {
			l[i] += lane[k];
		}
	}
	poly_lanes_done(p, l);
	crypto_wipe(r8, sizeof(r8));
	crypto_wipe(s8, sizeof(s8));
	crypto_wipe(w, sizeof(w));
	crypto_wipe(sw, sizeof(sw));
	crypto_wipe(lane, sizeof(lane));
	return done;
}
#endif
#endif

/* poly_blocks: h = (h + block) * r for each whole 16-byte block, in the
 * limbs of the message's path; hibit as for poly_blocks26. */
static void poly_blocks(struct poly *p, const uint8_t *m, size_t len,
                        uint32_t hibit)
{
#ifdef POLY1305_HAVE_AVX2
	size_t done;

#ifdef POLY1305_HAVE_AVX512
	/* What runs of eight leave, below 128 bytes, goes on to AVX2 only
	 * when the unit test forces it there. */
	if (p->path == POLY1305_AVX512 && len >= poly_avx512_min) {
		done = poly_blocks_avx512(p, m, len, hibit);
		m += done;
		len -= done;
	}
#endif
	if (p->path >= POLY1305_AVX2 && len >= poly_avx2_min) {
		done = poly_blocks_avx2(p, m, len, hibit);
		m += done;
		len -= done;
	}
#endif
#ifdef POLY1305_HAVE_INT128
	if (p->path >= POLY1305_INT128) {
		poly_blocks64(p, m, len, hibit);
		return;
	}
#endif
	poly_blocks26(p, m, len, hibit);
}

/* poly_padded: the message zero-padded to whole blocks, as the AEAD
 * feeds its associated data and ciphertext. */
static void poly_padded(struct poly *p, const uint8_t *m, size_t len)
{
	uint8_t last[POLY_BLOCK] = {0};
	size_t whole = len & ~(size_t)(POLY_BLOCK - 1);

	poly_blocks(p, m, whole, 1);
	if (len > whole) {
		memcpy(last, m + whole, len - whole);
		poly_blocks(p, last, POLY_BLOCK, 1);
		crypto_wipe(last, sizeof(last));
	}
}

static void poly_finish(struct poly *p, uint8_t tag[16])
{
	uint32_t h0, h1, h2, h3, h4;
	uint32_t g0, g1, g2, g3, g4, c, keep;
	uint64_t f;

#ifdef POLY1305_HAVE_INT128
	/* One final reduction for both paths, in 26-bit limbs. */
	if (p->path >= POLY1305_INT128) {
		poly_h64_to_26(p);
	}
#endif
	h0 = p->h[0]; h1 = p->h[1]; h2 = p->h[2]; h3 = p->h[3]; h4 = p->h[4];

	/* Carry fully, so h < 2^130; then h mod p is h, or h - p when that
	 * does not go negative, picked with a mask rather than a branch. */
	c = h1 >> 26; h1 &= MASK26; h2 += c;
	c = h2 >> 26; h2 &= MASK26; h3 += c;
	c = h3 >> 26; h3 &= MASK26; h4 += c;
	c = h4 >> 26; h4 &= MASK26; h0 += c * 5;
	c = h0 >> 26; h0 &= MASK26; h1 += c;

	g0 = h0 + 5; c = g0 >> 26; g0 &= MASK26;
	g1 = h1 + c; c = g1 >> 26; g1 &= MASK26;
	g2 = h2 + c; c = g2 >> 26; g2 &= MASK26;
	g3 = h3 + c; c = g3 >> 26; g3 &= MASK26;
	g4 = h4 + c - ((uint32_t)1 << 26);

	keep = (g4 >> 31) - 1;           /* all ones if h >= p */
	h0 = (h0 & ~keep) | (g0 & keep);
	h1 = (h1 & ~keep) | (g1 & keep);
	h2 = (h2 & ~keep) | (g2 & keep);
	h3 = (h3 & ~keep) | (g3 & keep);
	h4 = (h4 & ~keep) | (g4 & keep);

	/* tag = (h + s) mod 2^128, from 26-bit limbs to 32-bit words. */
	h0 = h0 | h1 << 26;
	h1 = h1 >> 6 | h2 << 20;
	h2 = h2 >> 12 | h3 << 14;
	h3 = h3 >> 18 | h4 << 8;
	f = (uint64_t)h0 + p->pad[0];
	store32_le(tag, (uint32_t)f);
	f = (uint64_t)h1 + p->pad[1] + (f >> 32);
	store32_le(tag + 4, (uint32_t)f);
	f = (uint64_t)h2 + p->pad[2] + (f >> 32);
	store32_le(tag + 8, (uint32_t)f);
	f = (uint64_t)h3 + p->pad[3] + (f >> 32);
	store32_le(tag + 12, (uint32_t)f);
	crypto_wipe(p, sizeof(*p));
}

void poly1305(uint8_t tag[AEAD_TAG_LEN], const uint8_t *msg, size_t len,
              const uint8_t key[POLY1305_KEY_LEN])
{
	struct poly p;
	uint8_t last[POLY_BLOCK] = {0};
	size_t whole = len & ~(size_t)(POLY_BLOCK - 1);

	poly_init(&p, key);
	poly_blocks(&p, msg, whole, 1);
	if (len > whole) {
		/* A short block ends in a 1 byte, in place of the 2^128 bit. */
		memcpy(last, msg + whole, len - whole);
		last[len - whole] = 1;
		poly_blocks(&p, last, POLY_BLOCK, 0);
		crypto_wipe(last, sizeof(last));
	}
	poly_finish(&p, tag);
}

/* ---- AEAD_CHACHA20_POLY1305 --------------------------------------------- */

static void store64_le(uint8_t *p, uint64_t v)
{
	store32_le(p, (uint32_t)v);
	store32_le(p + 4, (uint32_t)(v >> 32));
}

/* aead_tag: the tag of RFC 8439 §2.8 over ad and the ciphertext ct, keyed
 * by the first half of block 0 (§2.6); the text is encrypted from block 1. */
static void aead_tag(uint8_t tag[AEAD_TAG_LEN], const uint8_t key[32],
                     const uint8_t nonce[12], const uint8_t *ad, size_t adlen,
                     const uint8_t *ct, size_t len)
{
	uint8_t block[CHACHA_BLOCK] = {0}, lens[POLY_BLOCK];
	struct poly p;

	chacha20_xor(block, block, sizeof(block), key, nonce, 0);
	poly_init(&p, block);
	crypto_wipe(block, sizeof(block));
	poly_padded(&p, ad, adlen);
	poly_padded(&p, ct, len);
	store64_le(lens, adlen);
	store64_le(lens + 8, len);
	poly_blocks(&p, lens, POLY_BLOCK, 1);
	poly_finish(&p, tag);
}

void aead_seal(uint8_t *out, uint8_t tag[AEAD_TAG_LEN],
               const uint8_t key[CHACHA20_KEY_LEN],
               const uint8_t nonce[CHACHA20_NONCE_LEN],
               const uint8_t *ad, size_t adlen, const uint8_t *in, size_t len)
{
	chacha20_xor(out, in, len, key, nonce, 1);
	aead_tag(tag, key, nonce, ad, adlen, out, len);
}

int aead_open(uint8_t *out, const uint8_t key[CHACHA20_KEY_LEN],
              const uint8_t nonce[CHACHA20_NONCE_LEN],
              const uint8_t *ad, size_t adlen, const uint8_t *in, size_t len,
              const uint8_t tag[AEAD_TAG_LEN])
{
	uint8_t want[AEAD_TAG_LEN];
	int ok;

	aead_tag(want, key, nonce, ad, adlen, in, len);
	ok = equal_ct(want, tag, sizeof(want));
	crypto_wipe(want, sizeof(want));
	if (!ok) {
		/* Forged or damaged: nothing of it is decrypted.  The branch
		 * is on the verdict, which the peer learns anyway. */
		if (len > 0) {
			memset(out, 0, len);
		}
		return -1;
	}
	chacha20_xor(out, in, len, key, nonce, 1);
	return 0;
}
