/*
 * What the two fuzz targets share: a check that aborts (so libFuzzer
 * keeps the input), socketpairs standing in for TCP connections, and
 * checks on what the code under test wrote to its peer.  Include it after
 * server.c or client.c, which bring in common.h.
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
	socklen_t len;
	ssize_t n;
	int fd;

	for (fd = 0; fd < FUZZ_FD_SPAN; fd++) {
		if (fd_is_open(fd) == fd_open_at_start[fd]) {
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

/* Send what the socket takes; a peer already dropped loses the rest. */
static inline void
peer_send(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return;
		}
		p += n;
		len -= (size_t)n;
	}
}

static inline void
peer_send_msg(int fd, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];

	peer_send(fd, frame, frame_encode(frame, m));
}

/* Read all that waits; *eof says the other end is closed or shut. */
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
		}
		if (n <= 0) {
			break;
		}
		got += (size_t)n;
	}
	return got;
}

/* Read one whole frame the other side sent; abort on anything else. */
static inline void
peer_recv_msg(int fd, struct msg *m)
{
	size_t len, used = 0;
	int eof;

	len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
	CHECK(frame_decode(fuzz_out, len, m, &used) == FRAME_OK && used == len,
	      "expected one whole frame, got %zu bytes", len);
}

/* Read all waiting frames, up to max; abort on a partial or bad one.
 * Returns how many. */
static inline int
peer_recv_msgs(int fd, struct msg *m, int max)
{
	size_t len, off = 0, used;
	int n = 0, eof;

	len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
	while (off < len) {
		CHECK(n < max, "more than %d frames", max);
		CHECK(frame_decode(fuzz_out + off, len - off, &m[n], &used) ==
		      FRAME_OK, "a bad frame at byte %zu of %zu", off, len);
		off += used;
		n++;
	}
	return n;
}

/* What was written to a peer must be whole, well-formed frames whose
 * types are in allowed (a bit per enum msg_type). */
static inline void
check_output(int fd, unsigned allowed, const char *who)
{
	size_t len, off = 0, used;
	struct msg m;
	int eof;

	if (fd < 0) {
		return;
	}
	len = peer_recv(fd, fuzz_out, sizeof(fuzz_out), &eof);
	while (off < len) {
		enum frame_result r = frame_decode(fuzz_out + off, len - off, &m,
		                                   &used);
		CHECK(r == FRAME_OK, "a %s frame to the %s peer at byte %zu of "
		      "%zu (first byte 0x%02x)",
		      r == FRAME_MORE ? "truncated" : "malformed", who, off, len,
		      fuzz_out[off]);
		CHECK(m.type < 32 && (allowed & (1u << m.type)),
		      "%s sent to the %s peer", msg_name(m.type), who);
		if (m.type == MSG_HELLO || m.type == MSG_CHALLENGE) {
			CHECK(m.version == PROTO_VERSION, "%s version %u",
			      msg_name(m.type), m.version);
		}
		if (m.type == MSG_ERROR) {
			CHECK(m.code >= 1 && m.code < ERR_CODE_END, "ERROR code %u",
			      m.code);
		}
		off += used;
	}
}

#endif
