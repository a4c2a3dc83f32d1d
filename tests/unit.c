/*
 * Unit tests for the crypto, the frame codec, address parsing, key
 * derivation, the relay's byte order, the frame buffers, flag parsing,
 * the event loop (epoll and poll) and the secrets file.  The checks are
 * tests/testlib.h's: each CHECK counts a pass or prints one line for a
 * failure, and the last line is "unit: N passed, N failed, N skipped".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/testlib.h"
#include "common.h"
#include "crypto.h"
#include "protocol.h"
#include "secrets.h"
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

/* ---- HKDF-SHA256 (RFC 5869) --------------------------------------------- */

/* fill_range: first, first+1, ... as the RFC writes its inputs. */
static void fill_range(uint8_t *p, size_t n, unsigned first)
{
	size_t i;

	for (i = 0; i < n; i++) {
		p[i] = (uint8_t)(first + i);
	}
}

static void test_hkdf(struct tally *t)
{
	/* A.1 to A.3 are the SHA-256 cases; A.4 to A.7 are the same shapes
	 * with SHA-1, which dialback does not have.  Salt and info count up
	 * from their first byte; the IKM does too where count_ikm is set,
	 * and else repeats it. */
	static const struct {
		size_t ikmlen, saltlen, infolen, len;
		unsigned ikm0, salt0, info0;
		int count_ikm;
		const char *prk, *okm;
	} v[] = {
		{ 22, 13, 10, 42, 0x0b, 0x00, 0xf0, 0,
		  "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
		  "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
		  "34007208d5b887185865" },
		{ 80, 80, 80, 82, 0x00, 0x60, 0xb0, 1,
		  "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
		  "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
		  "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
		  "cc30c58179ec3e87c14c01d5c1f3434f1d87" },
		{ 22, 0, 0, 42, 0x0b, 0, 0, 0,
		  "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
		  "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
		  "9d201395faa4b61a96c8" },
	};
	static uint8_t big[HKDF_MAX_OUT + 1];
	uint8_t ikm[80], salt[80], info[80], prk[SHA256_LEN], zeros[SHA256_LEN];
	uint8_t want[SHA256_LEN * 3], got[SHA256_LEN * 3];
	size_t i, n;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		if (v[i].count_ikm) {
			fill_range(ikm, v[i].ikmlen, v[i].ikm0);
		} else {
			memset(ikm, (int)v[i].ikm0, v[i].ikmlen);
		}
		fill_range(salt, v[i].saltlen, v[i].salt0);
		fill_range(info, v[i].infolen, v[i].info0);
		hkdf_extract(prk, v[i].saltlen > 0 ? salt : NULL, v[i].saltlen,
		             ikm, v[i].ikmlen);
		unhex(v[i].prk, want);
		CHECKF(t, memcmp(prk, want, SHA256_LEN) == 0,
		       "RFC 5869 A.%zu: wrong PRK", i + 1);
		n = unhex(v[i].okm, want);
		CHECK_INT(t, n, v[i].len);
		memset(got, 0xee, sizeof(got));
		CHECK(t, hkdf_expand(got, n, prk, info, v[i].infolen) == 0);
		CHECKF(t, memcmp(got, want, n) == 0,
		       "RFC 5869 A.%zu: wrong OKM", i + 1);
		CHECKF(t, got[n] == 0xee, "RFC 5869 A.%zu: wrote past L", i + 1);
	}

	/* A.7 (SHA-1) leaves the salt out altogether: that must equal a salt
	 * of HashLen zero bytes, as RFC 5869 §2.2 says. */
	memset(ikm, 0x0c, 22);
	memset(zeros, 0, sizeof(zeros));
	hkdf_extract(prk, NULL, 0, ikm, 22);
	hkdf_extract(want, zeros, sizeof(zeros), ikm, 22);
	CHECK_MEM(t, prk, want, SHA256_LEN);

	/* Every length is a prefix of a longer output, up to the limit. */
	CHECK(t, hkdf_expand(big, HKDF_MAX_OUT, prk, "ctx", 3) == 0);
	for (n = 0; n <= 65; n++) {
		memset(got, 0, sizeof(got));
		hkdf_expand(got, n, prk, "ctx", 3);
		CHECKF(t, memcmp(got, big, n) == 0 && got[n] == 0,
		       "hkdf_expand of %zu bytes is not a prefix", n);
	}
	big[HKDF_MAX_OUT] = 0x5a;
	CHECK(t, hkdf_expand(big, HKDF_MAX_OUT + 1, prk, "ctx", 3) == -1);
	CHECK(t, big[HKDF_MAX_OUT] == 0x5a);
	CHECK(t, hkdf_expand(big, 0, prk, NULL, 0) == 0);
}

/* ---- ChaCha20 and Poly1305 (RFC 8439) ----------------------------------- */

/* The RFC's plaintexts that are text, as text. */
static const char sunscreen[] =
	"Ladies and Gentlemen of the class of '99: If I could offer you only "
	"one tip for the future, sunscreen would be it.";
static const char ietf_text[] =
	"Any submission to the IETF intended by the Contributor for "
	"publication as all or part of an IETF Internet-Draft or RFC and any "
	"statement made within the context of an IETF activity is considered "
	"an \"IETF Contribution\". Such statements include oral statements in "
	"IETF sessions, as well as written and electronic communications made "
	"at any time or place, which are addressed to";
static const char jabberwocky[] =
	"'Twas brillig, and the slithy toves\nDid gyre and gimble in the "
	"wabe:\nAll mimsy were the borogoves,\nAnd the mome raths outgrabe.";

static void test_chacha20(struct tally *t)
{
	/* §2.3.2 and A.1 are key stream: the cipher over zeros. */
	static const struct {
		const char *name, *key, *nonce;
		uint32_t counter;
		const char *text;       /* the plaintext; NULL for zeros */
		const char *out;
	} v[] = {
		{ "2.3.2",
		  "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
		  "000000090000004a00000000", 1, NULL,
		  "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
		  "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e" },
		{ "2.4.2",
		  "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
		  "000000000000004a00000000", 1, sunscreen,
		  "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
		  "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
		  "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
		  "5af90bbf74a35be6b40b8eedf2785e42874d" },
		{ "A.1 #1",
		  "0000000000000000000000000000000000000000000000000000000000000000",
		  "000000000000000000000000", 0, NULL,
		  "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
		  "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586" },
		{ "A.1 #2",
		  "0000000000000000000000000000000000000000000000000000000000000000",
		  "000000000000000000000000", 1, NULL,
		  "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
		  "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f" },
		{ "A.1 #3",
		  "0000000000000000000000000000000000000000000000000000000000000001",
		  "000000000000000000000000", 1, NULL,
		  "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a"
		  "8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0" },
		{ "A.1 #4",
		  "00ff000000000000000000000000000000000000000000000000000000000000",
		  "000000000000000000000000", 2, NULL,
		  "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca"
		  "13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096" },
		{ "A.1 #5",
		  "0000000000000000000000000000000000000000000000000000000000000000",
		  "000000000000000000000002", 0, NULL,
		  "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7"
		  "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d" },
		{ "A.2 #1",
		  "0000000000000000000000000000000000000000000000000000000000000000",
		  "000000000000000000000000", 0, NULL,
		  "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
		  "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586" },
		{ "A.2 #2",
		  "0000000000000000000000000000000000000000000000000000000000000001",
		  "000000000000000000000002", 1, ietf_text,
		  "a3fbf07df3fa2fde4f376ca23e82737041605d9f4f4f57bd8cff2c1d4b7955ec"
		  "2a97948bd3722915c8f3d337f7d370050e9e96d647b7c39f56e031ca5eb6250d"
		  "4042e02785ececfa4b4bb5e8ead0440e20b6e8db09d881a7c6132f420e527950"
		  "42bdfa7773d8a9051447b3291ce1411c680465552aa6c405b7764d5e87bea85a"
		  "d00f8449ed8f72d0d662ab052691ca66424bc86d2df80ea41f43abf937d3259d"
		  "c4b2d0dfb48a6c9139ddd7f76966e928e635553ba76c5c879d7b35d49eb2e62b"
		  "0871cdac638939e25e8a1e0ef9d5280fa8ca328b351c3c765989cbcf3daa8b6c"
		  "cc3aaf9f3979c92b3720fc88dc95ed84a1be059c6499b9fda236e7e818b04b0b"
		  "c39c1e876b193bfe5569753f88128cc08aaa9b63d1a16f80ef2554d7189c411f"
		  "5869ca52c5b83fa36ff216b9c1d30062bebcfd2dc5bce0911934fda79a86f6e6"
		  "98ced759c3ff9b6477338f3da4f9cd8514ea9982ccafb341b2384dd902f3d1ab"
		  "7ac61dd29c6f21ba5b862f3730e37cfdc4fd806c22f221" },
		{ "A.2 #3",
		  "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
		  "000000000000000000000002", 42, jabberwocky,
		  "62e6347f95ed87a45ffae7426f27a1df5fb69110044c0d73118effa95b01e5cf"
		  "166d3df2d721caf9b21e5fb14c616871fd84c54f9d65b283196c7fe4f60553eb"
		  "f39c6402c42234e32a356b3e764312a61a5532055716ead6962568f87d3f3f77"
		  "04c6a8d1bcd1bf4d50d6154b6da731b187b58dfd728afa36757a797ac188d1" },
	};
	static const uint32_t state[16] = {
		0x879531e0, 0xc5ecf37d, 0x516461b1, 0xc9a62f8a,
		0x44c20ef3, 0x3390af7f, 0xd9fc690b, 0x2a5f714c,
		0x53372767, 0xb00a5631, 0x974c541a, 0x359e9963,
		0x5c971061, 0x3d631689, 0x2098d9d6, 0x91dbd320,
	};
	/* Lengths that end each path's runs early, on time and late, and
	 * that take AVX-512's sixteen blocks, AVX2's eight, SSE2's four and
	 * single ones, each after the longer runs. */
	static const size_t lens[] = {
		0, 1, 63, 64, 65, 255, 256, 257, 319, 320, 511, 512, 513,
		767, 768, 769, 832, 1023, 1024, 1025, 1100, 1535, 1536, 1537,
		1791, 1792, 1793, 1983, 1984, 1985, 2047, 2048, 2049, 2100,
	};
	/* The counter wraps in the first run of sixteen or of eight, in the
	 * run of eight after sixteen, in the run of four after those, or
	 * not at all. */
	static const uint32_t counters[] = {
		0xfffffffeU, 0xfffffff6U, 0xffffffecU, 0xffffffe6U, 7,
	};
	uint8_t key[32], nonce[12], in[2100], want[2100], got[2100];
	uint32_t x[16], c;
	size_t i, j, k, n, m;

	/* §2.1.1, the quarter round alone, and §2.2.1, on a state. */
	memset(x, 0, sizeof(x));
	x[0] = 0x11111111;
	x[1] = 0x01020304;
	x[2] = 0x9b8d6f43;
	x[3] = 0x01234567;
	chacha20_quarter_round(x, 0, 1, 2, 3);
	CHECK(t, x[0] == 0xea2a92f4 && x[1] == 0xcb1cf8ce &&
	         x[2] == 0x4581472e && x[3] == 0x5881c4bb);
	memcpy(x, state, sizeof(x));
	chacha20_quarter_round(x, 2, 7, 8, 13);
	CHECK(t, x[2] == 0xbdb886dc && x[7] == 0xcfacafd2 &&
	         x[8] == 0xe46bea80 && x[13] == 0xccc07c79);
	x[2] = state[2]; x[7] = state[7]; x[8] = state[8]; x[13] = state[13];
	CHECK(t, memcmp(x, state, sizeof(x)) == 0);

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		unhex(v[i].key, key);
		unhex(v[i].nonce, nonce);
		n = unhex(v[i].out, want);
		if (v[i].text != NULL) {
			CHECK_INT(t, strlen(v[i].text), n);
			memcpy(in, v[i].text, n);
		} else {
			memset(in, 0, n);
		}
		chacha20_xor(got, in, n, key, nonce, v[i].counter);
		CHECKF(t, memcmp(got, want, n) == 0,
		       "RFC 8439 %s: wrong ChaCha20 output", v[i].name);

		/* In place, and in 64-byte calls that step the counter. */
		memcpy(got, in, n);
		chacha20_xor(got, got, n, key, nonce, v[i].counter);
		CHECKF(t, memcmp(got, want, n) == 0,
		       "RFC 8439 %s: wrong output in place", v[i].name);
		for (j = 0; j < n; j += 64) {
			m = n - j < 64 ? n - j : 64;
			chacha20_xor(got + j, in + j, m, key, nonce,
			             v[i].counter + (uint32_t)(j / 64));
		}
		CHECKF(t, memcmp(got, want, n) == 0,
		       "RFC 8439 %s: wrong output block by block", v[i].name);
	}

	/* Long messages take the path's runs of blocks; they must agree
	 * with single blocks, which are always the plain C, across a
	 * counter wrap too. */
	for (i = 0; i < sizeof(in); i++) {
		in[i] = (uint8_t)(i * 31 + 7);
		key[i % 32] = (uint8_t)(i * 5);
	}
	for (k = 0; k < sizeof(counters) / sizeof(counters[0]); k++) {
		c = counters[k];
		for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			n = lens[i];
			for (j = 0; j < n; j += 64) {
				m = n - j < 64 ? n - j : 64;
				chacha20_xor(want + j, in + j, m, key, nonce,
				             c + (uint32_t)(j / 64));
			}
			memset(got, 0, sizeof(got));
			chacha20_xor(got, in, n, key, nonce, c);
			CHECKF(t, memcmp(got, want, n) == 0 &&
			          (n == sizeof(got) || got[n] == 0),
			       "chacha20_xor of %zu bytes from block %#x "
			       "differs by block", n, (unsigned)c);
		}
	}
}

static void test_poly1305(struct tally *t)
{
	static const struct {
		const char *name, *key;
		const char *text;       /* the message as text, or NULL */
		const char *msg;        /* else in hex */
		const char *tag;
	} v[] = {
		{ "2.5.2",
		  "85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b",
		  "Cryptographic Forum Research Group",
		  NULL,
		  "a8061dc1305136c6c22b8baf0c0127a9" },
		{ "A.3 #1",
		  "0000000000000000000000000000000000000000000000000000000000000000",
		  NULL,
		  "0000000000000000000000000000000000000000000000000000000000000000"
		  "0000000000000000000000000000000000000000000000000000000000000000",
		  "00000000000000000000000000000000" },
		{ "A.3 #2",
		  "0000000000000000000000000000000036e5f6b5c5e06070f0efca96227a863e",
		  ietf_text,
		  NULL,
		  "36e5f6b5c5e06070f0efca96227a863e" },
		{ "A.3 #3",
		  "36e5f6b5c5e06070f0efca96227a863e00000000000000000000000000000000",
		  ietf_text,
		  NULL,
		  "f3477e7cd95417af89a6b8794c310cf0" },
		{ "A.3 #4",
		  "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
		  jabberwocky,
		  NULL,
		  "4541669a7eaaee61e708dc7cbcc5eb62" },
		{ "A.3 #5",
		  "0200000000000000000000000000000000000000000000000000000000000000",
		  NULL,
		  "ffffffffffffffffffffffffffffffff",
		  "03000000000000000000000000000000" },
		{ "A.3 #6",
		  "02000000000000000000000000000000ffffffffffffffffffffffffffffffff",
		  NULL,
		  "02000000000000000000000000000000",
		  "03000000000000000000000000000000" },
		{ "A.3 #7",
		  "0100000000000000000000000000000000000000000000000000000000000000",
		  NULL,
		  "fffffffffffffffffffffffffffffffff0ffffffffffffffffffffffffffffff"
		  "11000000000000000000000000000000",
		  "05000000000000000000000000000000" },
		{ "A.3 #8",
		  "0100000000000000000000000000000000000000000000000000000000000000",
		  NULL,
		  "fffffffffffffffffffffffffffffffffbfefefefefefefefefefefefefefefe"
		  "01010101010101010101010101010101",
		  "00000000000000000000000000000000" },
		{ "A.3 #9",
		  "0200000000000000000000000000000000000000000000000000000000000000",
		  NULL,
		  "fdffffffffffffffffffffffffffffff",
		  "faffffffffffffffffffffffffffffff" },
		{ "A.3 #10",
		  "0100000000000000040000000000000000000000000000000000000000000000",
		  NULL,
		  "e33594d7505e43b900000000000000003394d7505e4379cd0100000000000000"
		  "0000000000000000000000000000000001000000000000000000000000000000",
		  "14000000000000005500000000000000" },
		{ "A.3 #11",
		  "0100000000000000040000000000000000000000000000000000000000000000",
		  NULL,
		  "e33594d7505e43b900000000000000003394d7505e4379cd0100000000000000"
		  "00000000000000000000000000000000",
		  "13000000000000000000000000000000" },
	};
	uint8_t key[32], msg[400], want[16], got[16];
	size_t i, n;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		unhex(v[i].key, key);
		if (v[i].text != NULL) {
			n = strlen(v[i].text);
			memcpy(msg, v[i].text, n);
		} else {
			n = unhex(v[i].msg, msg);
		}
		unhex(v[i].tag, want);
		poly1305(got, msg, n, key);
		CHECKF(t, memcmp(got, want, 16) == 0,
		       "RFC 8439 %s: wrong Poly1305 tag", v[i].name);
	}
}

/* ---- AEAD_CHACHA20_POLY1305 (RFC 8439 §2.8) ----------------------------- */

/* flip_rejected: flip one bit of each byte of p in turn and check that
 * aead_open refuses the message and leaves out zeroed; returns the first
 * byte whose flip was accepted, or n if none. */
static size_t flip_rejected(uint8_t *p, size_t n, const uint8_t *key,
                            const uint8_t *nonce, const uint8_t *ad,
                            size_t adlen, const uint8_t *ct, size_t len,
                            const uint8_t *tag)
{
	uint8_t out[128];
	size_t i, j;

	for (i = 0; i < n; i++) {
		p[i] ^= (uint8_t)(1u << (i % 8));
		memset(out, 0xaa, sizeof(out));
		if (aead_open(out, key, nonce, ad, adlen, ct, len, tag) != -1) {
			p[i] ^= (uint8_t)(1u << (i % 8));
			return i;
		}
		p[i] ^= (uint8_t)(1u << (i % 8));
		for (j = 0; j < len; j++) {
			if (out[j] != 0) {
				return i;
			}
		}
	}
	return n;
}

static void test_aead(struct tally *t)
{
	/* The one-time Poly1305 key is the start of block 0 (§2.6). */
	static const struct {
		const char *name, *key, *nonce, *otk;
	} kg[] = {
		{ "2.6.2",
		  "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
		  "000000000001020304050607",
		  "8ad5a08b905f81cc815040274ab29471a833b637e3fd0da508dbb8e2fdd1a646" },
		{ "A.4 #1",
		  "0000000000000000000000000000000000000000000000000000000000000000",
		  "000000000000000000000000",
		  "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7" },
		{ "A.4 #2",
		  "0000000000000000000000000000000000000000000000000000000000000001",
		  "000000000000000000000002",
		  "ecfa254f845f647473d3cb140da9e87606cb33066c447b87bc2666dde3fbb739" },
		{ "A.4 #3",
		  "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
		  "000000000000000000000002",
		  "965e3bc6f9ec7ed9560808f4d229f94b137ff275ca9b3fcbdd59deaad23310ae" },
	};
	static const char a5_text[] =
		"Internet-Drafts are draft documents valid for a maximum of "
		"six months and may be updated, replaced, or obsoleted by other "
		"documents at any time. It is inappropriate to use "
		"Internet-Drafts as reference material or to cite them other "
		"than as "
		"/\xe2\x80\x9cwork in progress./\xe2\x80\x9d";
	static const size_t lens[] = {
		0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 16384, 16385,
	};
	static const size_t adlens[] = { 0, 1, 13, 16, 17 };
	static uint8_t pt[16385], ct[16385], buf[16385], mac[16385 + 64];
	uint8_t key[32], nonce[12], ad[32], want[300], got[300];
	uint8_t in[300], tag[16], tag2[16], otk[64];
	size_t i, j, n, adlen, m, bad;
	int r;

	for (i = 0; i < sizeof(kg) / sizeof(kg[0]); i++) {
		unhex(kg[i].key, key);
		unhex(kg[i].nonce, nonce);
		unhex(kg[i].otk, want);
		memset(got, 0, 32);
		chacha20_xor(got, got, 32, key, nonce, 0);
		CHECKF(t, memcmp(got, want, 32) == 0,
		       "RFC 8439 %s: wrong one-time key", kg[i].name);
	}

	/* §2.8.2: seal, then open again, out of place and in place. */
	unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f", key);
	unhex("070000004041424344454647", nonce);
	adlen = unhex("50515253c0c1c2c3c4c5c6c7", ad);
	n = unhex("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
		"3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
		"92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
		"3ff4def08e4b7a9de576d26586cec64b6116", want);
	CHECK_INT(t, n, strlen(sunscreen));
	memcpy(in, sunscreen, n);
	aead_seal(got, tag, key, nonce, ad, adlen, in, n);
	CHECK_MEM(t, got, want, n);
	unhex("1ae10b594f09e26a7e902ecbd0600691", tag2);
	CHECK_MEM(t, tag, tag2, 16);
	CHECK(t, aead_open(got, key, nonce, ad, adlen, got, n, tag) == 0);
	CHECK_MEM(t, got, sunscreen, n);

	/* A single flipped bit anywhere, or a wrong key, nonce or length,
	 * and the message is refused. */
	bad = flip_rejected(want, n, key, nonce, ad, adlen, want, n, tag);
	CHECKF(t, bad == n, "aead_open took a flipped text byte %zu", bad);
	bad = flip_rejected(tag, 16, key, nonce, ad, adlen, want, n, tag);
	CHECKF(t, bad == 16, "aead_open took a flipped tag byte %zu", bad);
	bad = flip_rejected(ad, adlen, key, nonce, ad, adlen, want, n, tag);
	CHECKF(t, bad == adlen, "aead_open took a flipped AD byte %zu", bad);
	bad = flip_rejected(nonce, 12, key, nonce, ad, adlen, want, n, tag);
	CHECKF(t, bad == 12, "aead_open took a flipped nonce byte %zu", bad);
	bad = flip_rejected(key, 32, key, nonce, ad, adlen, want, n, tag);
	CHECKF(t, bad == 32, "aead_open took a flipped key byte %zu", bad);
	CHECK(t, aead_open(got, key, nonce, ad, adlen, want, n - 1, tag) == -1);
	CHECK(t, aead_open(got, key, nonce, ad, adlen - 1, want, n, tag) == -1);
	CHECK(t, aead_open(got, key, nonce, ad, adlen, want, n, tag) == 0);

	/* A.5: open a message sealed elsewhere. */
	unhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0", key);
	unhex("000000000102030405060708", nonce);
	adlen = unhex("f33388860000000000004e91", ad);
	n = unhex("64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
		"4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
		"332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
		"9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
		"b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
		"af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
		"0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
		"49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
		"a6ad5cb4022b02709b", want);
	unhex("eead9d67890cbb22392336fea1851f38", tag);
	CHECK_INT(t, n, strlen(a5_text));
	memset(got, 0, sizeof(got));
	CHECK(t, aead_open(got, key, nonce, ad, adlen, want, n, tag) == 0);
	CHECK_MEM(t, got, a5_text, n);

	/* Round trips at block edges and past the four-block path, checked
	 * against ChaCha20 and Poly1305 used as §2.8 says. */
	for (i = 0; i < sizeof(pt); i++) {
		pt[i] = (uint8_t)(i * 13 + 1);
	}
	for (i = 0; i < sizeof(ad); i++) {
		ad[i] = (uint8_t)(0xa0 + i);
	}
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		n = lens[i];
		adlen = adlens[i % (sizeof(adlens) / sizeof(adlens[0]))];
		nonce[0] = (uint8_t)i;
		aead_seal(ct, tag, key, nonce, ad, adlen, pt, n);

		chacha20_xor(buf, pt, n, key, nonce, 1);
		CHECKF(t, memcmp(buf, ct, n) == 0,
		       "aead_seal of %zu bytes: not ChaCha20 from block 1", n);
		memset(otk, 0, sizeof(otk));
		chacha20_xor(otk, otk, sizeof(otk), key, nonce, 0);
		memset(mac, 0, sizeof(mac));
		memcpy(mac, ad, adlen);
		m = (adlen + 15) / 16 * 16;
		memcpy(mac + m, ct, n);
		m += (n + 15) / 16 * 16;
		mac[m] = (uint8_t)adlen;
		mac[m + 8] = (uint8_t)n;
		mac[m + 9] = (uint8_t)(n >> 8);
		poly1305(tag2, mac, m + 16, otk);
		CHECKF(t, memcmp(tag, tag2, 16) == 0,
		       "aead_seal of %zu bytes: wrong tag", n);

		memcpy(buf, pt, n);
		aead_seal(buf, tag2, key, nonce, ad, adlen, buf, n);
		CHECKF(t, memcmp(buf, ct, n) == 0 && memcmp(tag, tag2, 16) == 0,
		       "aead_seal of %zu bytes in place differs", n);
		r = aead_open(buf, key, nonce, ad, adlen, buf, n, tag);
		CHECKF(t, r == 0 && memcmp(buf, pt, n) == 0,
		       "aead_open of %zu bytes in place failed", n);
		memset(buf, 0, n);
		r = aead_open(buf, key, nonce, ad, adlen, ct, n, tag);
		CHECKF(t, r == 0 && memcmp(buf, pt, n) == 0,
		       "aead_open of %zu bytes failed", n);
		if (n > 0) {
			ct[n - 1] ^= 0x80;
			memset(buf, 0xaa, n);
			r = aead_open(buf, key, nonce, ad, adlen, ct, n, tag);
			for (j = 0; j < n && buf[j] == 0; j++) {
			}
			CHECKF(t, r == -1 && j == n,
			       "aead_open of %zu bytes took a flipped last byte", n);
		}
	}
}

/*
 * ChaCha20 and the AEAD once for each path of chacha20_xor in this build
 * (crypto.h): the vectors, and long messages against the plain C that
 * short calls take.  A path this CPU lacks is a skip; tests/unit-portable
 * has only the plain C.
 */
static void test_chacha_paths(struct tally *t)
{
	static const struct {
		int path;
		const char *name;
	} p[] = {
#ifdef CHACHA20_HAVE_AVX512
		{ CHACHA20_AVX512, "AVX-512" },
#endif
#ifdef CHACHA20_HAVE_AVX2
		{ CHACHA20_AVX2, "AVX2" },
#endif
#ifdef CHACHA20_HAVE_SSE2
		{ CHACHA20_SSE2, "SSE2" },
#endif
		{ CHACHA20_PLAIN, "plain C" },
	};
	size_t i;
	int fail, best = -1;

	for (i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
		if (chacha20_force(p[i].path) != p[i].path) {
			tally_skip(t, p[i].name, "this CPU lacks it");
			continue;
		}
		if (best < 0) {
			best = p[i].path;
		}
		fail = t->fail;
		test_chacha20(t);
		test_aead(t);
		if (t->fail > fail) {
			printf("(the %d failures above: ChaCha20 in %s)\n",
			       t->fail - fail, p[i].name);
		}
	}
	/* Left to itself, chacha20_xor takes the fastest path there is. */
	CHECK_INT(t, chacha20_force(-1), best);
	CHECK_INT(t, chacha20_force(CHACHA20_AVX512 + 1), -1);
	CHECK_INT(t, chacha20_force(-2), -1);
	CHECK_INT(t, chacha20_force(-1), best);
}

/*
 * poly_cross: tags under path against the plain C's, for random keys and
 * messages of every length to 1100 bytes and some past 16 KiB, with all-
 * ones messages, and all-ones keys or r = 1, among them for the longest
 * carries; and AEAD tags, which take Poly1305 in three calls (AD, text,
 * lengths) on one state, for AD of 0 to 40 bytes.
 */
static void poly_cross(struct tally *t, int path, const char *name)
{
	static const size_t big[] = { 16383, 16384, 16385, 16399 };
	static uint8_t rnd[16400 + 128], ones[16400], ct[2][16400];
	uint8_t key[32], nonce[12], ad[40], tag[2][16];
	const size_t nbig = sizeof(big) / sizeof(big[0]);
	const uint8_t *msg;
	size_t i, len, adlen, bad = 0, first = 0;
	struct tl_stream s;
	int k;

	tl_stream_init(&s, 1305);
	tl_stream_fill(&s, rnd, sizeof(rnd));
	memset(ones, 0xff, sizeof(ones));
	for (i = 0; i <= 1100 + nbig; i++) {
		len = i <= 1100 ? i : big[i - 1101];
		tl_stream_fill(&s, key, sizeof(key));
		msg = rnd + i % 128;
		if (i % 8 == 0) {
			memset(key, 0xff, sizeof(key));
		}
		if (i % 8 == 4) {
			/* r = 1: three all-ones blocks carry out of h2:h1:h0's
			 * last word as it folds 2^130 back in. */
			memset(key, 0, 16);
			key[0] = 1;
		}
		if (i % 4 == 0) {
			msg = ones;
		}
		for (k = 0; k < 2; k++) {
			poly1305_force(k == 0 ? POLY1305_PLAIN : path);
			poly1305(tag[k], msg, len, key);
		}
		if (memcmp(tag[0], tag[1], 16) != 0 && bad++ == 0) {
			first = len;
		}
	}
	CHECKF(t, bad == 0, "Poly1305 in %s: %zu tags differ from the plain "
	       "C's, the first of %zu bytes", name, bad, first);

	bad = 0;
	for (i = 0; i <= 1100 + nbig; i++) {
		len = i <= 1100 ? i : big[i - 1101];
		adlen = i % (sizeof(ad) + 1);
		tl_stream_fill(&s, key, sizeof(key));
		tl_stream_fill(&s, nonce, sizeof(nonce));
		tl_stream_fill(&s, ad, sizeof(ad));
		for (k = 0; k < 2; k++) {
			poly1305_force(k == 0 ? POLY1305_PLAIN : path);
			aead_seal(ct[k], tag[k], key, nonce, ad, adlen,
			          rnd + i % 128, len);
		}
		if ((memcmp(tag[0], tag[1], 16) != 0 ||
		     memcmp(ct[0], ct[1], len) != 0 ||
		     aead_open(ct[1], key, nonce, ad, adlen, ct[0], len,
		               tag[0]) != 0) && bad++ == 0) {
			first = len;
		}
	}
	CHECKF(t, bad == 0, "AEAD with Poly1305 in %s: %zu tags differ from "
	       "the plain C's, the first of %zu bytes", name, bad, first);
}

/*
 * Poly1305 and the AEAD once for each path of Poly1305 in this build
 * (crypto.h): the vectors, and then poly_cross against the plain C.
 * tests/unit-portable has only the plain C.
 */
static void test_poly_paths(struct tally *t)
{
	static const struct {
		int path;
		const char *name;
	} p[] = {
#ifdef POLY1305_HAVE_AVX512
		{ POLY1305_AVX512, "AVX-512" },
#endif
#ifdef POLY1305_HAVE_AVX2
		{ POLY1305_AVX2, "AVX2" },
#endif
#ifdef POLY1305_HAVE_INT128
		{ POLY1305_INT128, "__int128" },
#endif
		{ POLY1305_PLAIN, "plain C" },
	};
	size_t i;
	int fail, best = -1;

	for (i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
		if (poly1305_force(p[i].path) != p[i].path) {
			tally_skip(t, p[i].name, "this CPU lacks it");
			continue;
		}
		if (best < 0) {
			best = p[i].path;
		}
		fail = t->fail;
		test_poly1305(t);
		test_aead(t);
		if (p[i].path != POLY1305_PLAIN) {
			poly_cross(t, p[i].path, p[i].name);
		}
		if (t->fail > fail) {
			printf("(the %d failures above: Poly1305 in %s)\n",
			       t->fail - fail, p[i].name);
		}
	}
	/* Left to itself, Poly1305 takes the fastest path there is. */
	CHECK_INT(t, poly1305_force(-1), best);
	CHECK_INT(t, poly1305_force(POLY1305_AVX512 + 1), -1);
	CHECK_INT(t, poly1305_force(-2), -1);
	CHECK_INT(t, poly1305_force(-1), best);
}

/* ---- X25519 (RFC 7748) -------------------------------------------------- */

static void test_x25519(struct tally *t)
{
	/* §5.2: scalar, u-coordinate, result. */
	static const struct {
		const char *k, *u, *out;
	} v[] = {
		{ "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
		  "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
		  "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552" },
		{ "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
		  "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
		  "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957" },
	};
	/* Points of order 1, 2, 4 and 8, some of them written as u + p:
	 * each takes any scalar to zero. */
	static const char *const low[] = {
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"0000000000000000000000000000000000000000000000000000000000000080",
	};
	uint8_t k[32], u[32], want[32], got[32], a_pub[32], b_pub[32], a[32];
	uint8_t b[32];
	const char *slow = getenv("DIALBACK_SLOW_TESTS");
	long i, n;

	for (i = 0; i < (long)(sizeof(v) / sizeof(v[0])); i++) {
		unhex(v[i].k, k);
		unhex(v[i].u, u);
		unhex(v[i].out, want);
		x25519(got, k, u);
		CHECKF(t, memcmp(got, want, 32) == 0,
		       "RFC 7748 5.2 vector %ld: wrong result", i + 1);
		/* The top bit of u is ignored, so flipping it changes nothing;
		 * the scalar's clamped bits likewise. */
		u[31] ^= 0x80;
		k[0] ^= 7;
		k[31] ^= 0xc0;
		x25519(got, k, u);
		CHECKF(t, memcmp(got, want, 32) == 0,
		       "RFC 7748 5.2 vector %ld: top bit or clamping", i + 1);
	}

	/* §5.2 iterated: k = X25519(k, u), u = the old k, from k = u = 9.
	 * The 1,000,000th takes a minute or more, so it is only checked when
	 * DIALBACK_SLOW_TESTS=1. */
	memset(k, 0, sizeof(k));
	k[0] = 9;
	memcpy(u, k, sizeof(u));
	n = slow != NULL && strcmp(slow, "1") == 0 ? 1000000 : 1000;
	for (i = 1; i <= n; i++) {
		x25519(got, k, u);
		memcpy(u, k, sizeof(u));
		memcpy(k, got, sizeof(k));
		if (i == 1) {
			unhex("422c8e7a6227d7bca1350b3e2bb7279f"
			      "7897b87bb6854b783c60e80311ae3079", want);
			CHECK_MEM(t, k, want, 32);
		} else if (i == 1000) {
			unhex("684cf59ba83309552800ef566f2f4d3c"
			      "1c3887c49360e3875f2eb94d99532c51", want);
			CHECK_MEM(t, k, want, 32);
		} else if (i == 1000000) {
			unhex("7c3911e0ab2586fd864497297e575e6f"
			      "3bc601c0883c30df5f4dd2d24f665424", want);
			CHECK_MEM(t, k, want, 32);
		}
	}

	/* §6.1: both public keys, and the secret each side computes. */
	unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
	      a);
	unhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
	      b);
	x25519_public(a_pub, a);
	unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
	      want);
	CHECK_MEM(t, a_pub, want, 32);
	x25519_public(b_pub, b);
	unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
	      want);
	CHECK_MEM(t, b_pub, want, 32);
	unhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
	      want);
	x25519(got, a, b_pub);
	CHECK_MEM(t, got, want, 32);
	CHECK(t, !crypto_is_zero(got, 32));
	x25519(got, b, a_pub);
	CHECK_MEM(t, got, want, 32);

	/* u at or above p is reduced first: 9 + p gives what 9 gives. */
	memset(u, 0xff, sizeof(u));
	u[0] = 0xf6;
	u[31] = 0x7f;
	x25519(got, a, u);
	CHECK_MEM(t, got, a_pub, 32);

	/* A low-order point gives zero, which is how callers spot it. */
	for (i = 0; i < (long)(sizeof(low) / sizeof(low[0])); i++) {
		unhex(low[i], u);
		memset(got, 0xaa, sizeof(got));
		x25519(got, a, u);
		CHECKF(t, crypto_is_zero(got, 32),
		       "low-order point %ld: secret not zero", i);
	}
	memset(got, 0, sizeof(got));
	CHECK(t, crypto_is_zero(got, 32));
	CHECK(t, crypto_is_zero(got, 0));
	for (i = 0; i < 32; i++) {
		got[i] = 0x80;
		CHECKF(t, !crypto_is_zero(got, 32), "crypto_is_zero: %ld", i);
		got[i] = 0;
	}
	memset(got, 0xaa, sizeof(got));
	crypto_wipe(got, 31);
	CHECK(t, crypto_is_zero(got, 31) && got[31] == 0xaa);
	crypto_wipe(NULL, 0);
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
	for (i = 0; i < KEY_LEN; i++) {
		m->pub[i] = (uint8_t)(0x10 + i);
	}
	for (i = 0; i < 40; i++) {
		m->sealed[i] = (uint8_t)(0x60 + i);
	}
	m->sealed_len = 40;
	for (i = 0; i < RUN_ID_LEN; i++) {
		m->run_id[i] = (uint8_t)(0xa0 + i);
	}
	for (i = 0; i < TAG_LEN; i++) {
		m->proof[i] = (uint8_t)(0x40 + i);
	}
	for (i = 0; i < USER_ID_LEN; i++) {
		m->user_id[i] = (uint8_t)(0x90 + i);
	}
	m->tunnel_port = 0x1f48;
	m->public_port = 0xabcd;
	m->pool = 0x0102;
	m->heartbeat_s = 0x0102;
	m->flags = FLAG_PLAINTEXT;
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
		put16(w, m->public_port);
		put(w, m->pub, KEY_LEN);
		break;
	case MSG_CHALLENGE:
		put(w, PROTO_MAGIC, PROTO_MAGIC_LEN);
		put8(w, m->version);
		put(w, m->pub, KEY_LEN);
		break;
	case MSG_AUTH:
	case MSG_REPLY:
		put(w, m->sealed, m->sealed_len);
		break;
	case MSG_ATTACH:
		put(w, m->run_id, RUN_ID_LEN);
		put16(w, m->pool);
		put8(w, m->flags);
		break;
	case MSG_TICKET:
		put(w, m->user_id, USER_ID_LEN);
		break;
	case MSG_WELCOME:
		put16(w, m->tunnel_port);
		put16(w, m->public_port);
		put16(w, m->heartbeat_s);
		put8(w, m->flags);
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
		put(w, m->proof, TAG_LEN);
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
		CHECKF(t, got->public_port == want->public_port,
		       "%s: public_port %u", name, got->public_port);
		/* fall through */
	case MSG_CHALLENGE:
		CHECKF(t, got->version == want->version, "%s: version", name);
		CHECKF(t, memcmp(got->pub, want->pub, KEY_LEN) == 0,
		       "%s: key differs", name);
		break;
	case MSG_AUTH:
	case MSG_REPLY:
		CHECKF(t, got->sealed_len == want->sealed_len &&
		          memcmp(got->sealed, want->sealed, want->sealed_len) == 0,
		       "%s: sealed bytes differ", name);
		break;
	case MSG_ATTACH:
		CHECKF(t, memcmp(got->run_id, want->run_id, RUN_ID_LEN) == 0 &&
		          got->pool == want->pool && got->flags == want->flags,
		       "%s: run_id, pool %u or flags %u differ", name, got->pool,
		       got->flags);
		break;
	case MSG_TICKET:
		CHECKF(t, memcmp(got->user_id, want->user_id, USER_ID_LEN) == 0,
		       "%s: user_id differs", name);
		break;
	case MSG_WELCOME:
		CHECKF(t, got->tunnel_port == want->tunnel_port &&
		          got->public_port == want->public_port &&
		          got->heartbeat_s == want->heartbeat_s &&
		          got->flags == want->flags,
		       "%s: ports %u %u %u flags %u", name, got->tunnel_port,
		       got->public_port, got->heartbeat_s, got->flags);
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
		CHECKF(t, memcmp(got->proof, want->proof, TAG_LEN) == 0,
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
		[MSG_HELLO] = 39, [MSG_CHALLENGE] = 37, [MSG_AUTH] = 40,
		[MSG_REPLY] = 40, [MSG_ERROR] = 1 + 8, [MSG_PING] = 0,
		[MSG_PONG] = 0, [MSG_NEW_USER] = 54, [MSG_USER_FAILED] = 16 + 8,
		[MSG_JOIN] = 32, [MSG_TICKET] = 16, [MSG_ATTACH] = 11,
		[MSG_WELCOME] = 7,
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
		MSG_HELLO, MSG_CHALLENGE, MSG_WELCOME, MSG_PING, MSG_PONG,
		MSG_NEW_USER, MSG_JOIN, MSG_TICKET, MSG_ATTACH,
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
	 * length (version 1's HELLO had 29 bytes).  Version 2 with that
	 * length is simply wrong. */
	memcpy(payload, "DLBK\x01", 5);
	r = decode_raw(MSG_HELLO, 29, payload, &got);
	CHECKF(t, r == FRAME_OK && got.type == MSG_HELLO && got.version == 1,
	       "HELLO version 1, 29 bytes: got %d, type %u version %u", r,
	       got.type, got.version);
	r = decode_raw(MSG_CHALLENGE, 5, payload, &got);
	CHECKF(t, r == FRAME_OK && got.type == MSG_CHALLENGE && got.version == 1,
	       "CHALLENGE version 1, 5 bytes: got %d, type %u version %u", r,
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

	/* AUTH and REPLY carry TAG_LEN..SEALED_MAX sealed bytes. */
	CHECK(t, decode_raw(MSG_AUTH, TAG_LEN - 1, payload, &got) == FRAME_BAD);
	CHECK(t, decode_raw(MSG_REPLY, SEALED_MAX + 1, payload, &got) ==
	         FRAME_BAD);
	r = decode_raw(MSG_REPLY, SEALED_MAX, payload, &got);
	CHECKF(t, r == FRAME_OK && got.sealed_len == SEALED_MAX,
	       "REPLY of %d sealed bytes: got %d", SEALED_MAX, r);

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
		[MSG_REPLY] = "REPLY", [MSG_ATTACH] = "ATTACH",
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

/* cidr_parse and cidr_match: both families, edges of each prefix length,
 * IPv4-mapped addresses meeting IPv4 blocks, and IPv6 blocks not meeting
 * IPv4 users. */
static void test_cidr(struct tally *t)
{
	static const struct {
		const char *block, *ip;
		int match;
	} v[] = {
		{ "127.0.0.1", "127.0.0.1", 1 },
		{ "127.0.0.1", "127.0.0.2", 0 },
		{ "127.0.0.1/32", "127.0.0.1", 1 },
		{ "10.0.0.0/8", "10.255.1.2", 1 },
		{ "10.0.0.0/8", "11.0.0.0", 0 },
		{ "10.1.2.3/8", "10.9.9.9", 1 },          /* host bits ignored */
		{ "192.168.4.0/23", "192.168.5.255", 1 },
		{ "192.168.4.0/23", "192.168.6.0", 0 },
		{ "192.168.4.0/23", "192.168.3.255", 0 },
		{ "0.0.0.0/0", "203.0.113.7", 1 },
		{ "0.0.0.0/0", "::1", 0 },                /* IPv4 blocks: IPv4 only */
		{ "0.0.0.0/0", "2001:db8::1", 0 },
		{ "127.0.0.0/8", "::ffff:127.0.0.1", 1 }, /* as a dual-stack sees it */
		{ "127.0.0.1", "::ffff:127.0.0.1", 1 },
		{ "127.0.0.1", "::ffff:127.0.0.2", 0 },
		{ "::1", "::1", 1 },
		{ "::1/128", "::2", 0 },
		{ "::/0", "2001:db8::1", 1 },
		{ "::/0", "::1", 1 },
		{ "::/0", "127.0.0.1", 0 },               /* IPv6 blocks: IPv6 only */
		{ "::/0", "::ffff:127.0.0.1", 0 },
		{ "2001:db8::/32", "2001:db8:ffff::1", 1 },
		{ "2001:db8::/33", "2001:db8:8000::1", 0 },
		{ "2001:db8::/33", "2001:db8:7fff::1", 1 },
		{ "fe80::/10", "febf::1", 1 },
		{ "fe80::/10", "fec0::1", 0 },
		{ "::ffff:10.0.0.0/104", "10.1.2.3", 1 },  /* mapped form: IPv4 */
		{ "::ffff:10.0.0.0/104", "11.1.2.3", 0 },
		{ "::ffff:0:0/96", "198.51.100.1", 1 },
	};
	static const char *const bad[] = {
		"", "/8", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x",
		"10.0.0.0/-1", "10.0.0.0/8/8", "10.0.0.256", "example.com",
		"10.0.0.0/0008", "[::1]", "::1/12a", "1.2.3.4 ",
	};
	struct cidr c;
	struct sockaddr_storage ss;
	uint8_t ip[16];
	char why[128];
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		int r = cidr_parse(v[i].block, &c, why, sizeof(why));

		CHECKF(t, r == 0, "cidr_parse(\"%s\"): %s", v[i].block, why);
		if (r != 0 || tl_sockaddr(v[i].ip, 1, &ss) == 0 ||
		    addr_ip16((struct sockaddr *)&ss, ip) != 0) {
			CHECKF(t, 0, "cidr case %zu: setup failed", i);
			continue;
		}
		CHECKF(t, cidr_match(&c, ip) == v[i].match,
		       "cidr_match(%s, %s): want %d", v[i].block, v[i].ip,
		       v[i].match);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		CHECKF(t, cidr_parse(bad[i], &c, why, sizeof(why)) == -1 &&
		          why[0] != '\0',
		       "cidr_parse(\"%s\"): want -1 with a reason", bad[i]);
	}
	cidr_parse("10.0.0.0/33", &c, why, sizeof(why));
	CHECK_STR(t, why, "prefix length out of range (0-32)");
}

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

/* Run a whole handshake in memory: client and server, psk_c and psk_s.
 * Returns what went wrong (0: all opened), with the split keys. */
static int handshake_pair(const char *psk_c, const char *psk_s,
                          struct session_keys *ck, struct session_keys *sk,
                          int flip)
{
	struct handshake c, s;
	struct msg hello, chal;
	uint8_t psk[KEY_LEN], frame[FRAME_HDR + FRAME_MAX];
	uint8_t sealed[SEALED_MAX], plain[SEALED_MAX];
	size_t n;

	hs_init(&c);
	hs_init(&s);
	memset(&hello, 0, sizeof(hello));
	hello.type = MSG_HELLO;
	hello.public_port = 9001;
	memcpy(hello.pub, c.e_pub, KEY_LEN);
	memset(&chal, 0, sizeof(chal));
	chal.type = MSG_CHALLENGE;
	memcpy(chal.pub, s.e_pub, KEY_LEN);
	hs_mix_msg(&c, &hello);
	hs_mix_msg(&s, &hello);
	hs_mix_msg(&c, &chal);
	hs_mix_msg(&s, &chal);
	if (hs_mix_dh(&c, s.e_pub) != 0 || hs_mix_dh(&s, c.e_pub) != 0) {
		return 1;
	}
	psk_derive(psk_c, strlen(psk_c), psk);
	hs_mix_psk(&c, psk);
	psk_derive(psk_s, strlen(psk_s), psk);
	hs_mix_psk(&s, psk);
	n = 14;
	memcpy(frame, "\x0c\x00\x0b" "runid123\x00\x02\x01", n);
	hs_seal(&c, frame, n, sealed);
	if (flip > 0) {
		sealed[(size_t)(flip - 1) % (n + TAG_LEN)] ^= 0x20;
	}
	if (hs_open(&s, sealed, n + TAG_LEN, plain) != 0) {
		return 2;
	}
	if (memcmp(plain, frame, n) != 0) {
		return 3;
	}
	hs_seal(&s, frame, n, sealed);
	if (hs_open(&c, sealed, n + TAG_LEN, plain) != 0) {
		return 4;
	}
	hs_split(&c, 1, ck);
	hs_split(&s, 0, sk);
	return 0;
}

static void test_handshake(struct tally *t)
{
	struct session_keys ck, sk, ck2, sk2;
	struct handshake hs;
	uint8_t zero[KEY_LEN];
	size_t i;
	int r;

	r = handshake_pair("s3cret", "s3cret", &ck, &sk, 0);
	CHECKF(t, r == 0, "handshake with one token: step %d failed", r);
	CHECK(t, memcmp(ck.tx.key, sk.rx.key, KEY_LEN) == 0);
	CHECK(t, memcmp(ck.rx.key, sk.tx.key, KEY_LEN) == 0);
	CHECK(t, memcmp(ck.tunnel, sk.tunnel, KEY_LEN) == 0);
	CHECK(t, memcmp(ck.tx.key, ck.rx.key, KEY_LEN) != 0);
	CHECK(t, memcmp(ck.tx.key, ck.tunnel, KEY_LEN) != 0);
	CHECK(t, ck.tx.n == 0 && sk.tx.n == 0);
	/* Fresh ephemeral keys: another run, other keys. */
	r = handshake_pair("s3cret", "s3cret", &ck2, &sk2, 0);
	CHECK(t, r == 0 && memcmp(ck.tx.key, ck2.tx.key, KEY_LEN) != 0);
	r = handshake_pair("", "", &ck, &sk, 0);
	CHECKF(t, r == 0, "handshake with no token: step %d failed", r);
	/* The server can't open a client's AUTH made with another secret. */
	r = handshake_pair("s3cret", "s3creT", &ck, &sk, 0);
	CHECKF(t, r == 2, "handshake with two tokens: got %d, want 2", r);
	r = handshake_pair("", "s3cret", &ck, &sk, 0);
	CHECKF(t, r == 2, "no token against a token: got %d, want 2", r);
	/* Any byte of AUTH flipped: it does not open. */
	for (i = 1; i <= 14 + TAG_LEN; i++) {
		r = handshake_pair("k", "k", &ck, &sk, (int)i);
		CHECKF(t, r == 2, "AUTH byte %zu flipped: got %d, want 2", i - 1,
		       r);
	}
	/* A low-order point gives an all-zero secret: refused. */
	memset(zero, 0, sizeof(zero));
	hs_init(&hs);
	CHECK(t, hs_mix_dh(&hs, zero) == -1);
	zero[0] = 1;
	hs_init(&hs);
	CHECK(t, hs_mix_dh(&hs, zero) == -1);
}

static void test_records(struct tally *t)
{
	static uint8_t rec[RECORD_HDR + RECORD_MAX + TAG_LEN + 8];
	static uint8_t copy[sizeof(rec)], data[RECORD_MAX];
	struct seal tx, rx, rx2;
	size_t n, used, plen, i, sizes[] = { 0, 1, 100, RECORD_MAX };
	enum frame_result r;
	int bad;

	memset(&tx, 0, sizeof(tx));
	for (i = 0; i < KEY_LEN; i++) {
		tx.key[i] = (uint8_t)(i * 7);
	}
	rx = tx;
	for (i = 0; i < sizeof(data); i++) {
		data[i] = (uint8_t)(i * 13 + 5);
	}
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		n = record_seal(&tx, data, sizes[i], rec);
		CHECKF(t, n == RECORD_HDR + sizes[i] + TAG_LEN,
		       "record of %zu: %zu bytes", sizes[i], n);
		CHECKF(t, record_open(&rx, rec, n - 1, &used, &plen) == FRAME_MORE,
		       "record of %zu, one byte short: not MORE", sizes[i]);
		r = record_open(&rx, rec, n, &used, &plen);
		CHECKF(t, r == FRAME_OK && used == n && plen == sizes[i] &&
		          memcmp(rec + RECORD_HDR, data, plen) == 0,
		       "record of %zu does not open back", sizes[i]);
	}
	CHECK(t, tx.n == 4 && rx.n == 4);
	/* Every byte of a record flipped: it does not open. */
	n = record_seal(&tx, data, 100, rec);
	memcpy(copy, rec, n);
	bad = 0;
	for (i = 0; i < n; i++) {
		rx2 = rx;
		memcpy(rec, copy, n);
		rec[i] ^= 0x01;
		r = record_open(&rx2, rec, n, &used, &plen);
		bad += r != FRAME_OK && r != FRAME_MORE && rx2.n == rx.n;
		if (i < RECORD_HDR && r == FRAME_MORE) {
			bad++;     /* a longer length waits: the read then fails */
		}
	}
	CHECKF(t, bad == (int)n, "%d of %zu flipped bytes were refused", bad,
	       n);
	memcpy(rec, copy, n);
	CHECK(t, record_open(&rx, rec, n, &used, &plen) == FRAME_OK);
	/* Replayed, or out of order: refused. */
	memcpy(rec, copy, n);
	CHECK(t, record_open(&rx, rec, n, &used, &plen) == FRAME_BAD);
	n = record_seal(&tx, data, 10, rec);
	n = record_seal(&tx, data, 10, rec);
	CHECK(t, record_open(&rx, rec, n, &used, &plen) == FRAME_BAD);
	/* Longer than RECORD_MAX: refused from the header alone. */
	rec[0] = (RECORD_MAX + 1) >> 8;
	rec[1] = (RECORD_MAX + 1) & 0xff;
	CHECK(t, record_open(&rx, rec, 2, &used, &plen) == FRAME_BAD);
}

static void test_tunnel_keys(struct tally *t)
{
	uint8_t master[KEY_LEN], id[USER_ID_LEN], id2[USER_ID_LEN];
	uint8_t proof[TAG_LEN];
	struct seal ctx, crx, stx, srx, x, y;
	size_t i;

	for (i = 0; i < KEY_LEN; i++) {
		master[i] = (uint8_t)(0x55 ^ i);
	}
	memset(id, 0x11, sizeof(id));
	memcpy(id2, id, sizeof(id));
	id2[15] ^= 1;
	tunnel_keys(master, id, 1, &ctx, &crx);
	tunnel_keys(master, id, 0, &stx, &srx);
	CHECK(t, memcmp(ctx.key, srx.key, KEY_LEN) == 0);
	CHECK(t, memcmp(crx.key, stx.key, KEY_LEN) == 0);
	CHECK(t, memcmp(ctx.key, crx.key, KEY_LEN) != 0);
	tunnel_keys(master, id2, 1, &x, &y);
	CHECK(t, memcmp(ctx.key, x.key, KEY_LEN) != 0);
	CHECK(t, memcmp(crx.key, y.key, KEY_LEN) != 0);
	join_proof(&ctx, id, proof);
	CHECK(t, ctx.n == 1);
	x = srx;
	CHECK(t, join_check(&x, id2, proof) == -1 && x.n == 0);
	proof[3] ^= 4;
	CHECK(t, join_check(&x, id, proof) == -1 && x.n == 0);
	proof[3] ^= 4;
	CHECK(t, join_check(&srx, id, proof) == 0 && srx.n == 1);
}

/* Frames inside records, through a frame buffer. */
static void test_fbuf_sealed(struct tally *t)
{
	struct fbuf out, in;
	struct seal tx, rx;
	struct msg m, got;
	size_t i;

	memset(&out, 0, sizeof(out));
	memset(&in, 0, sizeof(in));
	memset(&tx, 0, sizeof(tx));
	tx.key[0] = 9;
	rx = tx;
	CHECK(t, fbuf_init(&out, FBUF_SMALL) == 0 &&
	         fbuf_init(&in, FBUF_SMALL) == 0);
	out.seal = &tx;
	in.seal = &rx;
	fill_msg(&m, MSG_NEW_USER);
	CHECK(t, fbuf_put(&out, &m) == 0);
	fill_msg(&m, MSG_PING);
	CHECK(t, fbuf_put(&out, &m) == 0);
	CHECK(t, out.len == 2 * (RECORD_HDR + TAG_LEN + FRAME_HDR) + 54);
	/* No frame is in clear on the wire. */
	for (i = 0; i + 3 <= out.len; i++) {
		if (memcmp(out.data + i, "\x08\x00\x36", 3) == 0) {
			break;
		}
	}
	CHECKF(t, i + 3 > out.len, "a NEW_USER header in clear at %zu", i);
	for (i = 0; i + 1 < out.len; i++) {
		memcpy(in.data, out.data, i);
		in.len = i;
		if (fbuf_take(&in, &got) != FRAME_MORE) {
			break;
		}
	}
	CHECKF(t, i == RECORD_HDR + TAG_LEN + FRAME_HDR + 54,
	       "sealed NEW_USER: a %zu-byte prefix is not MORE", i);
	rx = tx;               /* that last take opened the first record */
	rx.n = 0;
	memcpy(in.data, out.data, out.len);
	in.len = out.len;
	CHECK(t, fbuf_take(&in, &got) == FRAME_OK && got.type == MSG_NEW_USER);
	CHECK(t, fbuf_take(&in, &got) == FRAME_OK && got.type == MSG_PING);
	CHECK(t, in.len == 0 && fbuf_take(&in, &got) == FRAME_MORE);
	/* A record longer than any frame is refused at once. */
	in.data[0] = 0x10;
	in.data[1] = 0x00;
	in.len = 2;
	CHECK(t, fbuf_take(&in, &got) == FRAME_BAD);
	fbuf_free(&out);
	fbuf_free(&in);
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
	static struct relay_pool pool;
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
	relay_pool_init(&pool);
	relay_init(&r, &pool, b, c);
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

/* Step relay r as the loop would, until it ends or nothing moves for a
 * while.  Returns its last state. */
static enum relay_state sealed_pump(struct relay *r)
{
	enum relay_state st = RELAY_OPEN;
	int idle = 0;

	while (st == RELAY_OPEN && idle < 20) {
		struct pollfd p[2];
		short ev[2], rev[2];
		int i, n;

		relay_events(r, ev);
		for (i = 0; i < 2; i++) {
			p[i].fd = ev[i] ? r->fd[i] : -1;
			p[i].events = ev[i];
			p[i].revents = 0;
		}
		n = poll(p, 2, 20);
		if (n <= 0) {
			idle++;
			continue;
		}
		rev[0] = p[0].revents;
		rev[1] = p[1].revents;
		st = relay_step(r, rev);
	}
	return st;
}

/* The sealed relay against a peer that speaks records by hand: bytes
 * both ways, half-close by the empty record, and every way a stream can
 * be tampered with, each ending in a reset of the raw side. */
static void test_relay_sealed(struct tally *t)
{
	static const char *const cases[] = {
		"flip length", "flip body", "flip tag", "replay", "cut", "after end",
	};
	static struct relay_pool pool;
	struct seal tx, rx, ptx, prx;
	struct relay r;
	uint8_t rec[256], got[256];
	size_t n, used, plen, c;
	ssize_t k;
	int ua, ub, ta, tb;

	memset(&tx, 0, sizeof(tx));
	memset(&rx, 0, sizeof(rx));
	tx.key[0] = 1;
	rx.key[0] = 2;
	ptx = rx;                 /* the peer seals what the relay opens */
	prx = tx;
	if (tcp_pair(&ua, &ub) != 0 || tcp_pair(&ta, &tb) != 0) {
		CHECKF(t, 0, "sealed relay: no sockets");
		return;
	}
	relay_pool_init(&pool);
	relay_init(&r, &pool, ub, ta);
	relay_seal(&r, 1, &tx, &rx);
	CHECK(t, write(ua, "hello", 5) == 5);
	CHECK_INT(t, sealed_pump(&r), RELAY_OPEN);
	k = read(tb, rec, sizeof(rec));
	CHECK(t, k == RECORD_HDR + 5 + TAG_LEN &&
	         record_open(&prx, rec, (size_t)k, &used, &plen) == FRAME_OK &&
	         plen == 5 && memcmp(rec + RECORD_HDR, "hello", 5) == 0);
	n = record_seal(&ptx, (const uint8_t *)"world!", 6, rec);
	CHECK(t, write(tb, rec, n) == (ssize_t)n);
	CHECK_INT(t, sealed_pump(&r), RELAY_OPEN);
	CHECK(t, read(ua, got, sizeof(got)) == 6 && memcmp(got, "world!", 6) == 0);
	/* Half-close each way: an empty record, then the FIN. */
	shutdown(ua, SHUT_WR);
	CHECK_INT(t, sealed_pump(&r), RELAY_OPEN);
	k = read(tb, rec, sizeof(rec));
	CHECK(t, k == RECORD_HDR + TAG_LEN &&
	         record_open(&prx, rec, (size_t)k, &used, &plen) == FRAME_OK &&
	         plen == 0);
	CHECK(t, read(tb, rec, sizeof(rec)) == 0);
	n = record_seal(&ptx, rec, 0, rec);
	CHECK(t, write(tb, rec, n) == (ssize_t)n);
	shutdown(tb, SHUT_WR);
	CHECK_INT(t, sealed_pump(&r), RELAY_DONE);
	CHECK(t, read(ua, got, sizeof(got)) == 0);
	relay_close(&r);
	close(ua);
	close(tb);

	for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		enum relay_state st;

		memset(&tx, 0, sizeof(tx));
		memset(&rx, 0, sizeof(rx));
		tx.key[0] = 1;
		rx.key[0] = 2;
		ptx = rx;
		if (tcp_pair(&ua, &ub) != 0 || tcp_pair(&ta, &tb) != 0) {
			CHECKF(t, 0, "sealed relay, %s: no sockets", cases[c]);
			return;
		}
		relay_init(&r, &pool, ub, ta);
		relay_seal(&r, 1, &tx, &rx);
		n = record_seal(&ptx, (const uint8_t *)"data", 4, rec);
		switch (c) {
		case 0: rec[1] ^= 1; break;
		case 1: rec[RECORD_HDR + 1] ^= 0x80; break;
		case 2: rec[n - 1] ^= 1; break;
		default: break;
		}
		CHECK(t, write(tb, rec, n) == (ssize_t)n);
		if (c == 3) {
			CHECK(t, write(tb, rec, n) == (ssize_t)n);
		} else if (c == 5) {
			n = record_seal(&ptx, rec, 0, rec);
			CHECK(t, write(tb, rec, n) == (ssize_t)n);
			n = record_seal(&ptx, (const uint8_t *)"more", 4, rec);
			CHECK(t, write(tb, rec, n) == (ssize_t)n);
		}
		if (c != 5) {
			/* The cut, or a FIN behind the bad record (a longer
			 * length only waits for bytes until then). */
			shutdown(tb, SHUT_WR);
		}
		st = sealed_pump(&r);
		CHECKF(t, st == RELAY_FAIL && r.broke != NULL && r.err_side == 1,
		       "sealed relay, %s: state %d, broke %s", cases[c], st,
		       r.broke ? r.broke : "-");
		relay_close(&r);
		/* The raw side sees a reset, not an end: what came through
		 * before the break, then ECONNRESET. */
		do {
			k = read(ua, got, sizeof(got));
		} while (k > 0 || (k < 0 && errno == EAGAIN &&
		                   tl_wait_fd(ua, POLLIN, tl_now_ms() + 2000) > 0));
		CHECKF(t, k < 0 && errno == ECONNRESET,
		       "sealed relay, %s: the raw side read %zd (%s), not a reset",
		       cases[c], k, k < 0 ? strerror(errno) : "-");
		close(ua);
		close(tb);
	}
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
	struct fbuf b = { NULL, 0, 0, NULL };
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	struct msg m, got;
	size_t len, fs;
	unsigned i, n = 0;

	CHECK_INT(t, fbuf_init(&b, 10), 0);
	CHECK_INT(t, b.cap, FBUF_UNIT);    /* one sealed frame at least */
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
	CHECK_INT(t, n, FBUF_UNIT / fs);
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
	struct fbuf b = { NULL, 0, 0, NULL };
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
	struct fbuf b = { NULL, 0, 0, NULL };
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
	struct flag_list allow;
	char err[64];
};

/* parse: flags_parse over the words of args (NULL-ended), argv[0] being
 * "prog", into *p (cleared first). */
static int parse(struct parsed *p, const char *const args[])
{
	const struct flag flags[] = {
		{ "remote", &p->remote, NULL, NULL },
		{ "token", &p->token, NULL, NULL },
		{ "v", NULL, &p->verbose, NULL },
		{ "q", NULL, &p->quiet, NULL },
		{ "allow", NULL, NULL, &p->allow },
		{ NULL, NULL, NULL, NULL },
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
	const struct flag one[] = { { "remote", &p.remote, NULL, NULL },
	                            { NULL, NULL, NULL, NULL } };
	const struct flag listed[] = { { "allow", NULL, NULL, &p.allow },
	                               { NULL, NULL, NULL, NULL } };
	const char *many[FLAG_LIST_MAX + 2];
	int i;
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

	/* A list flag keeps every value, in order, up to its bound; a
	 * single-value flag keeps the last. */
	CHECK_INT(t, parse(&p, ARGS("-allow", "10.0.0.0/8", "-remote", "a:1",
	                            "--allow=::1/128", "-remote", "b:2")), 0);
	CHECK_INT(t, p.allow.n, 2);
	CHECK_STR(t, p.allow.v[0], "10.0.0.0/8");
	CHECK_STR(t, p.allow.v[1], "::1/128");
	CHECK_STR(t, p.remote, "b:2");
	many[0] = "prog";
	for (i = 1; i < FLAG_LIST_MAX + 2; i++) {
		many[i] = "-allow=x";
	}
	memset(&p.allow, 0, sizeof(p.allow));
	CHECK_INT(t, flags_parse(FLAG_LIST_MAX + 1, (char **)many, listed, p.err,
	                         sizeof(p.err)), 0);
	CHECK_INT(t, p.allow.n, FLAG_LIST_MAX);
	CHECK_INT(t, flags_parse(FLAG_LIST_MAX + 2, (char **)many, listed, p.err,
	                         sizeof(p.err)), -1);
	CHECK_STR(t, p.err, "flag -allow: at most 64");
	CHECK_INT(t, parse(&p, ARGS("-allow")), -1);
	CHECK_STR(t, p.err, "flag -allow needs a value");

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

	/* A '#' word after the secret is a comment; a '#' in or at the
	 * start of the secret is the secret's. */
	rc = secrets_text(&s, "8080 s3cret   # the web\n9000 #x\n9001 a#b #c d\n",
	                  why, sizeof(why));
	CHECK_INT(t, rc, 0);
	CHECK_STR(t, secret_of(&s, 8080), "s3cret");
	CHECK_STR(t, secret_of(&s, 9000), "#x");
	CHECK_STR(t, secret_of(&s, 9001), "a#b");
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
		{ "8080 s3cret word # a comment\n",
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
		{ 0610, NULL },     /* execute alone shows nothing */
		{ 0711, NULL },
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
	struct tally t = { 0, 0, 0 };

	test_sha256(&t);
	test_hmac(&t);
	test_hkdf(&t);
	test_poly_paths(&t);
	test_chacha_paths(&t);
	test_x25519(&t);
	test_equal_ct(&t);
	test_frame_types(&t);
	test_frame_bad(&t);
	test_frame_text(&t);
	test_msg_name(&t);
	test_addr_parse(&t);
	test_cidr(&t);
	test_addr_str(&t);
	test_handshake(&t);
	test_records(&t);
	test_tunnel_keys(&t);
	test_fbuf_sealed(&t);
	test_proxy_header(&t);
	test_relay_order(&t);
	test_relay_sealed(&t);
	test_secrets_good(&t);
	test_secrets_errors(&t);
	test_secrets_bounds(&t);
	test_secrets_file(&t);
	test_secrets_diff(&t);
	test_fbuf_put_take(&t);
	test_fbuf_fill(&t);
	test_fbuf_flush(&t);
	test_flags_parse(&t);
	test_loop(&t);
	return tally_report(&t, "unit");
}
