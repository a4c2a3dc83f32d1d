/*
 * libFuzzer target for protocol 2's record layer: record_seal and
 * record_open (keys.c), and the frame buffer that takes frames out of
 * records (protocol.c's fbuf_take with .seal set).  Built and run by
 * `make fuzz` and `make fuzz-run` with tests/fuzz.c.
 *
 * Byte 0 picks a mode (byte % 3); the rest is the mode's:
 *
 *   0 open   a script (fuzzlib.h) sealed under a fixed key, opened record
 *            by record, each from a copy of exactly the bytes left (so
 *            ASan sees a read past them): an OK's sizes agree with its
 *            header and move the counter by one; MORE comes only for a
 *            true prefix of a record (a header not all there, or one
 *            within RECORD_MAX whose body and tag are not), and over
 *            growing prefixes of an OK record it is MORE until the last
 *            byte; BAD and MORE leave the counter alone.
 *   1 take   [chunking u8 x2] then a script, sealed (or, with the top bit
 *            of the first chunking byte, clear): fed into an fbuf in
 *            chunks the chunking bytes choose, taken after each as
 *            ctl_readable does.  The frames, the final verdict, what is
 *            left and the counter must be the same as taking from the
 *            whole stream at once; a full buffer is never just a prefix;
 *            MORE at the end leaves only a true prefix of a record.
 *   2 trip   [counter u64][pos u16][xor u8] then data: record_seal then
 *            record_open gives the data back and moves both counters by
 *            one; the record is refused again (a replay), under the next
 *            counter and under another key; and with any one byte XORed
 *            (every byte of a small record, a spread of a large one's),
 *            it never opens.
 */
#include "fuzzlib.h"

/* The key every record here is sealed under. */
static const struct seal fixed_key = {
	.key = "dialback fuzz record key 32 byte",
	.n = 0,
};

/* record_open on a copy of exactly buf[0..len), so a read past it is a
 * heap overflow.  The copy is opened in place, as the code does. */
static enum frame_result
open_exact(struct seal *s, const uint8_t *buf, size_t len, size_t *used,
           size_t *plen, uint8_t *plain)
{
	uint8_t *copy = malloc(len ? len : 1);
	enum frame_result r;

	CHECK(copy != NULL, "out of memory");
	memcpy(copy, buf, len);
	r = record_open(s, copy, len, used, plen);
	if (r == FRAME_OK && plain != NULL) {
		memcpy(plain, copy + RECORD_HDR, *plen);
	}
	free(copy);
	return r;
}

/* Whether buf[0..len) is a true prefix of a record: the header is not all
 * there, or it says a length within max and the rest is not. */
static int
record_prefix(const uint8_t *buf, size_t len, size_t max)
{
	size_t n;

	if (len < RECORD_HDR) {
		return 1;
	}
	n = wire_get16(buf);
	return n <= max && len < RECORD_HDR + n + TAG_LEN;
}

/* ==== mode 0: record_open ================================================ */

static void
fuzz_open(const uint8_t *data, size_t len)
{
	static struct script sc;
	struct seal tx = fixed_key, rx = fixed_key, again;
	size_t off = 0, used, plen, k, rest;
	uint64_t n;
	enum frame_result r;

	script_build(&sc, &tx, data, len);
	while (off < sc.len) {
		rest = sc.len - off;
		n = rx.n;
		used = plen = 0;
		r = open_exact(&rx, sc.buf + off, rest, &used, &plen, NULL);
		if (r == FRAME_MORE) {
			CHECK(record_prefix(sc.buf + off, rest, RECORD_MAX),
			      "MORE with %zu bytes that are no prefix of a record",
			      rest);
		}
		if (r != FRAME_OK) {
			CHECK(rx.n == n, "a record refused moved the counter");
			CHECK(r == FRAME_MORE || r == FRAME_BAD, "verdict %d", (int)r);
			return;
		}
		CHECK(rx.n == n + 1, "an open record moved the counter by %llu",
		      (unsigned long long)(rx.n - n));
		CHECK(plen == wire_get16(sc.buf + off) && plen <= RECORD_MAX &&
		      used == RECORD_HDR + plen + TAG_LEN && used <= rest,
		      "a record of %zu opened as %zu bytes, %zu used", rest, plen,
		      used);
		/* A shorter prefix of it waits for more: every one across the
		 * header, and a spread of the rest (MORE reads the header
		 * alone). */
		for (k = 0; k < used; k += k < 40 ? 1 : (used - k) / 3 + 1) {
			size_t u2 = 0, p2 = 0;

			again = fixed_key;
			again.n = n;
			CHECK(open_exact(&again, sc.buf + off, k, &u2, &p2, NULL) ==
			      FRAME_MORE && again.n == n,
			      "%zu bytes of a whole record were not MORE", k);
		}
		off += used;
	}
}

/* ==== mode 1: fbuf_take, whole and in chunks ============================= */

#define TAKE_MAX 4096

struct taking {
	struct msg m[TAKE_MAX];
	int n;
	enum frame_result last;
	uint8_t left[SCRIPT_MAX];
	size_t nleft;
	uint64_t counter;
};

/* Chunk sizes from two bytes: a small generator over a limit the first
 * byte picks, so runs cover byte-at-a-time as well as large reads. */
static size_t
chunk_next(uint32_t *state, unsigned limit_pick)
{
	static const size_t limits[8] = { 1, 2, 3, 7, 19, 64, 600, 5000 };

	*state = *state * 1103515245u + 12345u;
	return 1 + (*state >> 16) % limits[limit_pick & 7];
}

static void
take_all(struct fbuf *b, struct taking *t)
{
	while (t->n < TAKE_MAX &&
	       (t->last = fbuf_take(b, &t->m[t->n])) == FRAME_OK) {
		t->n++;
	}
}

static void
fuzz_take(const uint8_t *data, size_t len)
{
	static struct script sc;
	static struct taking whole, part;
	struct seal tx = fixed_key, rx1 = fixed_key, rx2 = fixed_key;
	struct fbuf b = { 0 };
	unsigned c0, c1;
	uint32_t state;
	size_t off = 0, cap, k;
	int sealed, i;

	if (len < 2) {
		return;
	}
	c0 = data[0];
	c1 = data[1];
	sealed = !(c0 & 0x80);
	script_build(&sc, sealed ? &tx : NULL, data + 2, len - 2);

	/* The whole stream at once. */
	memset(&whole, 0, sizeof(whole));
	b.seal = sealed ? &rx1 : NULL;
	CHECK(fbuf_init(&b, sc.len + FBUF_UNIT) == 0, "out of memory");
	memcpy(b.data, sc.buf, sc.len);
	b.len = sc.len;
	take_all(&b, &whole);
	whole.nleft = b.len;
	memcpy(whole.left, b.data, b.len);
	whole.counter = rx1.n;
	fbuf_free(&b);

	/* In chunks, into a buffer of the size the server's are. */
	memset(&part, 0, sizeof(part));
	memset(&b, 0, sizeof(b));
	b.seal = sealed ? &rx2 : NULL;
	cap = (c0 & 0x40) ? FBUF_SMALL : FBUF_UNIT;
	CHECK(fbuf_init(&b, cap) == 0, "out of memory");
	state = c0 << 8 | c1;
	part.last = FRAME_MORE;
	while (part.last == FRAME_MORE && part.n < TAKE_MAX) {
		k = chunk_next(&state, c0 >> 3);
		k = k < b.cap - b.len ? k : b.cap - b.len;
		k = k < sc.len - off ? k : sc.len - off;
		memcpy(b.data + b.len, sc.buf + off, k);
		b.len += k;
		off += k;
		take_all(&b, &part);
		/* fbuf_fill relies on it: a full buffer holds a frame to take
		 * (or a bad one), else the peer could never send the rest. */
		CHECK(part.last != FRAME_MORE || b.len < b.cap,
		      "a full buffer of %zu bytes is only a prefix", b.len);
		if (off == sc.len) {
			break;
		}
	}
	part.nleft = b.len;
	memcpy(part.left, b.data, b.len);
	part.counter = rx2.n;
	fbuf_free(&b);

	CHECK(part.n == whole.n, "%d frames in chunks, %d at once", part.n,
	      whole.n);
	for (i = 0; i < part.n; i++) {
		CHECK(memcmp(&part.m[i], &whole.m[i], sizeof(part.m[i])) == 0,
		      "frame %d differs in chunks", i);
	}
	CHECK(part.last == whole.last && part.counter == whole.counter,
	      "in chunks: verdict %d, counter %llu; at once: %d, %llu",
	      (int)part.last, (unsigned long long)part.counter, (int)whole.last,
	      (unsigned long long)whole.counter);
	if (whole.last == FRAME_MORE && whole.n < TAKE_MAX) {
		CHECK(part.nleft == whole.nleft &&
		      memcmp(part.left, whole.left, part.nleft) == 0,
		      "%zu bytes left in chunks, %zu at once", part.nleft,
		      whole.nleft);
		/* What waits is the start of a record that fits a frame (or of
		 * a frame, in clear). */
		if (sealed) {
			CHECK(record_prefix(whole.left, whole.nleft,
			                    FRAME_HDR + FRAME_MAX),
			      "MORE with %zu bytes that are no prefix of a record",
			      whole.nleft);
		} else {
			CHECK(whole.nleft < FRAME_HDR + FRAME_MAX, "MORE with %zu "
			      "bytes, more than a frame", whole.nleft);
		}
	}
}

/* ==== mode 2: seal, open, and every way it must not open ================= */

static void
fuzz_trip(const uint8_t *data, size_t len)
{
	static uint8_t rec[RECORD_HDR + RECORD_MAX + TAG_LEN];
	static uint8_t plain[RECORD_MAX];
	struct seal tx = fixed_key, rx, other;
	size_t size, used, plen, pos, i, step;
	uint64_t n0 = 0;
	uint8_t x;
	enum frame_result r;

	if (len < 11) {
		return;
	}
	for (i = 0; i < 8; i++) {
		n0 = n0 << 8 | data[i];
	}
	pos = (size_t)data[8] << 8 | data[9];
	x = data[10] ? data[10] : 0x80;
	data += 11;
	len -= 11;
	len = len < RECORD_MAX ? len : RECORD_MAX;

	tx.n = n0;
	rx = tx;
	size = record_seal(&tx, data, len, rec);
	CHECK(size == RECORD_HDR + len + TAG_LEN && wire_get16(rec) == len &&
	      tx.n == n0 + 1, "a record of %zu bytes sealed as %zu", len, size);
	r = open_exact(&rx, rec, size, &used, &plen, plain);
	CHECK(r == FRAME_OK && used == size && plen == len &&
	      memcmp(plain, data, len) == 0 && rx.n == n0 + 1,
	      "a record of %zu bytes did not open back", len);

	/* Replayed, one ahead of its counter, under another key: refused. */
	CHECK(open_exact(&rx, rec, size, &used, &plen, NULL) == FRAME_BAD &&
	      rx.n == n0 + 1, "a replayed record opened");
	other = fixed_key;
	other.n = n0;
	other.key[pos % KEY_LEN] ^= x;
	CHECK(open_exact(&other, rec, size, &used, &plen, NULL) == FRAME_BAD,
	      "a record opened under another key");

	/* One byte changed anywhere: never opens, and the counter stays. */
	step = size <= 256 ? 1 : size / 61;
	for (i = 0; i <= size; i += step) {
		size_t at = i < size ? i : pos % size;

		rec[at] ^= x;
		other = fixed_key;
		other.n = n0;
		r = open_exact(&other, rec, size, &used, &plen, NULL);
		rec[at] ^= x;
		CHECK(r != FRAME_OK && other.n == n0,
		      "a record with byte %zu of %zu changed opened", at, size);
		/* A length made longer waits for more (up to RECORD_MAX); one
		 * made shorter puts the tag elsewhere: BAD. */
		if (at < RECORD_HDR) {
			size_t n = len ^ (at == 0 ? (size_t)x << 8 : x);
			enum frame_result want = n > RECORD_MAX ? FRAME_BAD
			                         : n > len ? FRAME_MORE : FRAME_BAD;
			CHECK(r == want, "length byte %zu changed (%zu for %zu): "
			      "verdict %d", at, n, len, (int)r);
		}
	}
}

/* ==== entry points ======================================================= */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1) {
		return 0;
	}
	switch (data[0] % 3) {
	case 0:
		fuzz_open(data + 1, size - 1);
		break;
	case 1:
		fuzz_take(data + 1, size - 1);
		break;
	default:
		fuzz_trip(data + 1, size - 1);
		break;
	}
	return 0;
}
