/*
 * What the fuzz targets share: a check that aborts (so libFuzzer keeps
 * the input), socketpairs standing in for TCP connections, checks on
 * what the code under test wrote to its peer (frames in clear, or in
 * records once a handshake made keys), and scripts: fuzz bytes that say
 * what a peer holding the keys sends, so they get past the record layer.
 * Include it after server.c or client.c, which bring in common.h.
 */
#ifndef DIALBACK_FUZZLIB_H
#define DIALBACK_FUZZLIB_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define CHECK(cond, ...)                                                \
	do {                                                            \
		if (!(cond)) {                                          \
			fprintf(stderr, "fuzz: %s:%d: check failed: %s: ", \
			        __FILE__, __LINE__, #cond);             \
			fprintf(stderr, __VA_ARGS__);                   \
			fputc('\n', stderr);                            \
			abort();                                        \
		}                                                       \
	} while (0)

#define FUZZ_FD_SPAN 64
#define FUZZ_OUT_MAX (256 * 1024)

/* Which descriptors were open before the first run: after each run the
 * table must look the same again.  LeakSanitizer covers memory; this
 * covers descriptors, including listeners and accepted sockets that the
 * code under test made itself. */
static uint8_t fd_open_at_start[FUZZ_FD_SPAN];

/* Room for what the code under test writes to a peer in one run. */
static uint8_t fuzz_out[FUZZ_OUT_MAX];

static inline int
fd_is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0 || errno != EBADF;
}

static inline void
fd_snapshot(void)
{
	int fd;

	for (fd = 0; fd < FUZZ_FD_SPAN; fd++) {
		fd_open_at_start[fd] = (uint8_t)fd_is_open(fd);
	}
}

static inline void
fd_check_unchanged(void)
{
	char path[64], what[128];
	struct sockaddr_storage ss;
	struct stat st;
	socklen_t len;
	ssize_t n;
	int fd;

	for (fd = 0; fd < FUZZ_FD_SPAN; fd++) {
		if (fd_is_open(fd) == fd_open_at_start[fd]) {
			continue;
		}
		/* A regular file is libFuzzer's own (-merge keeps its control
		 * file open across runs); the code under test opens none. */
		if (!fd_open_at_start[fd] && fstat(fd, &st) == 0 &&
		    S_ISREG(st.st_mode)) {
			continue;
		}
		/* Name it, to tell a socketpair from a listener (Linux). */
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, what, sizeof(what) - 1);
		what[n > 0 ? n : 0] = '\0';
		len = sizeof(ss);
		ss.ss_family = AF_UNSPEC;
		getsockname(fd, (struct sockaddr *)&ss, &len);
		CHECK(0, "descriptor %d (%s, family %d, port %d) is %s after the "
		      "run", fd, what, ss.ss_family, local_port(fd),
		      fd_open_at_start[fd] ? "closed" : "still open");
	}
}

/* The set-up both targets' LLVMFuzzerInitialize end with, once their own
 * lasting descriptors are open: SIGPIPE ignored, the log quiet unless
 * DIALBACK_FUZZ_LOG is set, and the descriptor table recorded. */
static inline void
fuzz_init(void)
{
	uint8_t b;

	signal(SIGPIPE, SIG_IGN);
	log_set_level(getenv("DIALBACK_FUZZ_LOG") ? LOG_VERBOSE : LOG_QUIET);
	/* random_bytes keeps /dev/urandom open from its first call; make
	 * that call before the descriptor table is recorded. */
	random_bytes(&b, 1);
	fd_snapshot();
}

/* Whether fd has bytes or an EOF to read right now.  poll() is retried
 * on EINTR, which libFuzzer's SIGALRM brings. */
static inline int
fd_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int rc;

	do {
		rc = poll(&p, 1, 0);
	} while (rc < 0 && errno == EINTR);
	return rc > 0;
}

/* A connected pair, both ends non-blocking; *mine goes to the code under
 * test, *peer stays with the harness. */
static inline void
fd_pair(int *mine, int *peer)
{
	int sv[2];

	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair: %s",
	      strerror(errno));
	CHECK(set_nonblock(sv[0]) == 0 && set_nonblock(sv[1]) == 0,
	      "set_nonblock: %s", strerror(errno));
	*mine = sv[0];
	*peer = sv[1];
}

/* Close a harness end, once. */
static inline void
peer_close(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* Send what the socket takes; a peer already dropped loses the rest.
 * Returns how many bytes went. */
static inline size_t
peer_send(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t sent = 0;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			break;
		}
		p += n;
		len -= (size_t)n;
		sent += (size_t)n;
	}
	return sent;
}

/* Send *m as a frame: in clear, or (tx set) sealed in a record. */
static inline void
peer_send_msg(int fd, struct seal *tx, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	uint8_t rec[RECORD_HDR + FRAME_HDR + FRAME_MAX + TAG_LEN];
	size_t n = frame_encode(frame, m);

	if (tx == NULL) {
		peer_send(fd, frame, n);
	} else {
		peer_send(fd, rec, record_seal(tx, frame, n, rec));
	}
}

/* Read all that waits.  *eof: 0 the other end is still open, 1 it closed
 * or shut down writing, -1 it reset (a Unix socket closed with bytes
 * unread says ECONNRESET). */
static inline size_t
peer_recv(int fd, uint8_t *buf, size_t cap, int *eof)
{
	size_t got = 0;

	*eof = 0;
	while (got < cap) {
		ssize_t n = read(fd, buf + got, cap - got);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n == 0) {
			*eof = 1;
		} else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			*eof = -1;
		}
		if (n <= 0) {
			break;
		}
		got += (size_t)n;
	}
	return got;
}

/* The next message in buf[0..len): a frame, or (rx set) a record opened
 * in place with rx that holds exactly one frame, as fbuf_take wants. */
static inline enum frame_result
peer_take(uint8_t *buf, size_t len, struct seal *rx, struct msg *m,
          size_t *used)
{
	size_t rused = 0, plen = 0, fused = 0;
	enum frame_result r;

	if (rx == NULL) {
		return frame_decode(buf, len, m, used);
	}
	if ((r = record_open(rx, buf, len, &rused, &plen)) != FRAME_OK) {
		return r;
	}
	if (frame_decode(buf + RECORD_HDR, plen, m, &fused) != FRAME_OK ||
	    fused != plen) {
		return FRAME_BAD;
	}
	*used = rused;
	return FRAME_OK;
}

/* Read one whole message the other side sent (clear, or sealed with
 * rx); abort on anything else. */
static inline void
peer_recv_msg(int fd, struct seal *rx, struct msg *m)
{
	size_t len, used = 0;
	int eof;

	len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
	CHECK(peer_take(fuzz_out, len, rx, m, &used) == FRAME_OK && used == len,
	      "expected one whole %s, got %zu bytes", rx ? "record" : "frame",
	      len);
}

/* Read all waiting messages, up to max; abort on a partial or bad one.
 * Returns how many. */
static inline int
peer_recv_msgs(int fd, struct seal *rx, struct msg *m, int max)
{
	size_t len, off = 0, used;
	int n = 0, eof;

	len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
	while (off < len) {
		CHECK(n < max, "more than %d messages", max);
		CHECK(peer_take(fuzz_out + off, len - off, rx, &m[n], &used) ==
		      FRAME_OK, "a bad %s at byte %zu of %zu",
		      rx ? "record" : "frame", off, len);
		off += used;
		n++;
	}
	return n;
}

/* Check one message the code under test sent: its type is in allowed (a
 * bit per enum msg_type), and its fields are ones it may send. */
static inline void
check_msg(const struct msg *m, unsigned allowed, const char *who)
{
	CHECK(m->type < 32 && (allowed & (1u << m->type)),
	      "%s sent to the %s peer", msg_name(m->type), who);
	if (m->type == MSG_HELLO || m->type == MSG_CHALLENGE) {
		CHECK(m->version == PROTO_VERSION, "%s version %u",
		      msg_name(m->type), m->version);
	}
	if (m->type == MSG_ERROR) {
		CHECK(m->code >= 1 && m->code < ERR_CODE_END, "ERROR code %u",
		      m->code);
	}
}

/* What was written to a peer must be whole, well-formed frames (in
 * clear, or with rx, each in a record that opens in turn) whose types are
 * in allowed. */
static inline void
check_output(int fd, struct seal *rx, unsigned allowed, const char *who)
{
	size_t len, off = 0, used;
	struct msg m;
	int eof;

	if (fd < 0) {
		return;
	}
	len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
	while (off < len) {
		uint8_t first = fuzz_out[off];
		enum frame_result r = peer_take(fuzz_out + off, len - off, rx, &m,
		                                &used);
		CHECK(r == FRAME_OK, "a %s %s to the %s peer at byte %zu of %zu "
		      "(first byte 0x%02x)",
		      r == FRAME_MORE ? "truncated" : "malformed",
		      rx ? "record" : "frame", who, off, len, first);
		check_msg(&m, allowed, who);
		off += used;
	}
}

/* A sealed byte stream as the peer read it, in buf[0..len): every
 * record must open with rx in turn, and nothing may follow the empty
 * record that ends it.  With first set, the first record holds one frame,
 * decoded into it.  The plaintext is left in buf[0..o->len); o->eof is
 * the caller's. */
struct opened {
	size_t len;          /* plaintext bytes */
	int ended;           /* an empty record came */
	int eof;             /* then, as peer_recv says */
};

static inline void
records_open(uint8_t *buf, size_t len, struct seal *rx, struct msg *first,
             struct opened *o, const char *who)
{
	size_t off = 0, used = 0, plen;
	enum frame_result r;

	o->len = 0;
	o->ended = 0;
	if (first != NULL) {
		CHECK(peer_take(buf, len, rx, first, &used) == FRAME_OK,
		      "the first of %zu bytes to the %s peer is no sealed frame",
		      len, who);
		off = used;
	}
	while (off < len) {
		CHECK(!o->ended, "%zu bytes after the end record to the %s peer",
		      len - off, who);
		r = record_open(rx, buf + off, len - off, &used, &plen);
		CHECK(r == FRAME_OK, "a %s record to the %s peer at byte %zu of "
		      "%zu", r == FRAME_MORE ? "truncated" : "bad", who, off, len);
		memmove(buf + o->len, buf + off + RECORD_HDR, plen);
		o->len += plen;
		o->ended = plen == 0;
		off += used;
	}
}

/* The same, read from fd into fuzz_out. */
static inline void
peer_recv_records(int fd, struct seal *rx, struct msg *first,
                  struct opened *o, const char *who)
{
	size_t len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &o->eof);

	records_open(fuzz_out, len, rx, first, o, who);
}

/* ==== scripts: what a peer sends, once it holds keys ====================
 *
 * Past a handshake, fuzz bytes are a script for the harness, so that they
 * reach the code behind the record layer and not just its tag check.
 * Each op is a byte k and its arguments (u16 big-endian; missing bytes
 * read as 0, payloads are cut to what is left):
 *
 *   k % 8  0 FRAME   type u8, len u16, payload: a frame of that type with
 *                    its true length, sealed as one record
 *          1 RECORD  len u16, bytes: any plaintext, sealed as one record
 *          2 RAW     len u16, bytes: on the wire as they are
 *          3 FLIP    pos u16, type u8, len u16, payload: as FRAME, then
 *                    byte pos (mod its size) of the record XOR 1 << (k >> 5)
 *          4 REPLAY  the last record again
 *          5 SKIP    a record that is never sent: the next is one ahead
 *          6 END     an empty record (a tunnel's end of stream)
 *          7 PAUSE   the code under test reads what has come so far
 *
 * Without a key (a clear stream) FRAME and FLIP send the frame, RECORD
 * its bytes, and END and SKIP nothing.  A script stops where its bytes
 * would pass SCRIPT_MAX.
 */
#define SCRIPT_MAX  (16 * 1024)
#define SCRIPT_CUTS 32

enum { OP_FRAME, OP_RECORD, OP_RAW, OP_FLIP, OP_REPLAY, OP_SKIP, OP_END,
       OP_PAUSE };

struct script {
	uint8_t buf[SCRIPT_MAX];
	size_t len;
	size_t cut[SCRIPT_CUTS];       /* pause once these many bytes went */
	int ncut;
	size_t last, last_len;         /* the last record, for REPLAY */
};

static inline unsigned
script_u8(const uint8_t **p, size_t *n)
{
	unsigned v = 0;

	if (*n > 0) {
		v = **p;
		(*p)++;
		(*n)--;
	}
	return v;
}

static inline size_t
script_u16(const uint8_t **p, size_t *n)
{
	size_t hi = script_u8(p, n);

	return hi << 8 | script_u8(p, n);
}

/* Append len bytes as one record under tx (or, clear, as they are);
 * -1 if they don't fit. */
static inline int
script_put(struct script *s, struct seal *tx, const uint8_t *data,
           size_t len)
{
	size_t need = len + (tx ? RECORD_HDR + TAG_LEN : 0);

	if (len > RECORD_MAX || s->len + need > SCRIPT_MAX) {
		return -1;
	}
	s->last = s->len;
	s->last_len = need;
	if (tx != NULL) {
		s->len += record_seal(tx, data, len, s->buf + s->len);
	} else {
		memcpy(s->buf + s->len, data, len);
		s->len += len;
	}
	return 0;
}

/* Build the script in ops[0..n) into s, sealing with tx (NULL: clear),
 * whose counter moves on with each record. */
static inline void
script_build(struct script *s, struct seal *tx, const uint8_t *ops, size_t n)
{
	static uint8_t frame[FRAME_HDR + SCRIPT_MAX];
	static const uint8_t none[1];
	size_t len, pos = 0;
	unsigned k, type;

	s->len = s->last = s->last_len = 0;
	s->ncut = 0;
	while (n > 0) {
		k = script_u8(&ops, &n);
		switch (k % 8) {
		case OP_FLIP:
			pos = script_u16(&ops, &n);
			/* fall through */
		case OP_FRAME:
			type = script_u8(&ops, &n);
			len = script_u16(&ops, &n);
			len = len < n ? len : n;
			len = len < SCRIPT_MAX ? len : SCRIPT_MAX;
			frame[0] = (uint8_t)type;
			wire_put16(frame + 1, (uint16_t)len);
			memcpy(frame + FRAME_HDR, ops, len);
			ops += len;
			n -= len;
			if (script_put(s, tx, frame, FRAME_HDR + len) != 0) {
				return;
			}
			if (k % 8 == OP_FLIP) {
				s->buf[s->last + pos % s->last_len] ^=
				        (uint8_t)(1u << (k >> 5));
			}
			break;
		case OP_RECORD:
		case OP_RAW:
			len = script_u16(&ops, &n);
			len = len < n ? len : n;
			if (k % 8 == OP_RAW) {
				if (s->len + len > SCRIPT_MAX) {
					return;
				}
				memcpy(s->buf + s->len, ops, len);
				s->len += len;
			} else if (script_put(s, tx, ops, len) != 0) {
				return;
			}
			ops += len;
			n -= len;
			break;
		case OP_REPLAY:
			if (s->len + s->last_len > SCRIPT_MAX) {
				return;
			}
			memmove(s->buf + s->len, s->buf + s->last, s->last_len);
			s->last = s->len;
			s->len += s->last_len;
			break;
		case OP_SKIP:
			if (tx != NULL) {
				tx->n++;
			}
			break;
		case OP_END:
			if (tx != NULL && script_put(s, tx, none, 0) != 0) {
				return;
			}
			break;
		case OP_PAUSE:
			if (s->ncut < SCRIPT_CUTS) {
				s->cut[s->ncut++] = s->len;
			}
			break;
		}
	}
}

/* Send the script to fd, calling pause(arg) where it says.  A send the
 * socket refuses (the code under test closed it) ends it.  Returns how
 * many bytes went: always a prefix of the script. */
static inline size_t
script_send(int fd, const struct script *s, void (*pause)(void *),
            void *arg)
{
	size_t off = 0, end, went;
	int i;

	for (i = 0; i <= s->ncut; i++) {
		end = i < s->ncut ? s->cut[i] : s->len;
		went = peer_send(fd, s->buf + off, end - off);
		off += went;
		if (off < end) {
			break;
		}
		if (i < s->ncut && pause != NULL) {
			pause(arg);
		}
	}
	return off;
}

#endif
