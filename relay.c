/*
 * The relay: bytes between two sockets, both ways, with backpressure,
 * half-close and, on Linux, splice(2) for bulk.
 */
#ifdef __linux__
#define _GNU_SOURCE     /* splice(2), before any system header */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common.h"

/* ==== relay ==============================================================
 *
 * Small messages are copied with read and send.  On Linux, once a read
 * fills the scratch buffer, the direction turns "bulk" and its bytes go
 * socket -> pipe -> socket with splice(2), never entering this process,
 * until a splice brings less than a buffer's worth.  Short connections
 * thus never pay for a pipe's system calls, and bulk costs less CPU than
 * copying it would (README, "How it works").
 * Elsewhere, or with DIALBACK_NO_SPLICE set (how the tests cover the
 * copy-only path), everything is copied.
 */

/*
 * Bytes move through one scratch buffer: read, then written straight to the
 * sink.  A direction takes a buffer of its own only when the sink pushes
 * back, and gives it back once drained, so an idle pair holds no buffer and
 * steady traffic mallocs nothing (drained buffers wait in a small pool).
 */
#define RELAY_BURST  8          /* reads per direction per turn, at most */

#define SPLICE_CHUNK (1 << 20)  /* ask for this much; the pipe limits it */

/* Sealing reads up to SEAL_BATCH records' worth at once, each into a slot
 * of the scratch buffer with room for its header and tag; what the sink
 * refuses of them must fit a direction's buffer. */
#define SEAL_BATCH   7
#define SEAL_SLOT    (RECORD_HDR + RECORD_MAX + TAG_LEN)
_Static_assert(SEAL_BATCH * SEAL_SLOT <= RELAY_BUF, "sealed batch too big");

/* Opened records are sent where they lie, up to OPEN_IOV in one sendmsg. */
#define OPEN_IOV     16

/* Pipes hold up to 1 MiB (the kernel's default pipe-max-size): fewer,
 * larger splices cost less CPU per byte than 64 KiB ones.  Pages are only
 * taken while bytes wait, i.e. while a sink pushes back.  Where the kernel
 * refuses, pipes keep its default; pool->pipe_size is what they hold. */
#define PIPE_WANT (1 << 20)

void
relay_pool_init(struct relay_pool *pool)
{
	memset(pool, 0, sizeof(*pool));
	pool->pipe_size = RELAY_BUF;
	pool->splice = -1;
}

/* With no relay left, the spares go back to the system: an idle process
 * holds exactly the descriptors and memory it started with. */
static void
spares_release(struct relay_pool *pool)
{
	while (pool->nbuf > 0) {
		free(pool->buf[--pool->nbuf]);
	}
	while (pool->npipe > 0) {
		pool->npipe--;
		close(pool->pipe[pool->npipe][0]);
		close(pool->pipe[pool->npipe][1]);
	}
}

#ifdef __linux__
static ssize_t
move_kernel(int from, int to, size_t n)
{
	ssize_t k;

	do {
		k = splice(from, NULL, to, NULL, n, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	} while (k < 0 && errno == EINTR);
	return k;
}

static int
splice_wanted(void)
{
	return getenv("DIALBACK_NO_SPLICE") == NULL;
}
#else
static ssize_t
move_kernel(int from, int to, size_t n)
{
	(void)from;
	(void)to;
	(void)n;
	errno = ENOSYS;
	return -1;
}

static int
splice_wanted(void)
{
	return 0;
}
#endif

/* Pipes, like buffers, are held only while bytes are in them, so idle
 * pairs cost no descriptors beyond their two sockets. */
static int
pipe_take(struct relay_pool *pool, int p[2])
{
	if (pool->npipe > 0) {
		pool->npipe--;
		p[0] = pool->pipe[pool->npipe][0];
		p[1] = pool->pipe[pool->npipe][1];
		return 0;
	}
#ifdef __linux__
	if (pipe2(p, O_NONBLOCK) != 0) {
		return -1;
	}
#else
	if (pipe(p) != 0) {
		return -1;
	}
	if (set_nonblock(p[0]) != 0 || set_nonblock(p[1]) != 0) {
		close(p[0]);
		close(p[1]);
		p[0] = p[1] = -1;
		return -1;
	}
#endif
#ifdef F_SETPIPE_SZ
	{
		int got = fcntl(p[1], F_SETPIPE_SZ, PIPE_WANT);
		if (got > 0) {
			pool->pipe_size = (size_t)got;
		}
	}
#endif
	return 0;
}

/* Give back a pipe; an empty one is kept, one with bytes left is closed. */
static void
pipe_give(struct relay_pool *pool, struct relay_dir *rd)
{
	if (rd->pipe[0] < 0) {
		return;
	}
	if (rd->piped == 0 && pool->npipe < RELAY_SPARE) {
		pool->pipe[pool->npipe][0] = rd->pipe[0];
		pool->pipe[pool->npipe][1] = rd->pipe[1];
		pool->npipe++;
	} else {
		close(rd->pipe[0]);
		close(rd->pipe[1]);
	}
	rd->pipe[0] = rd->pipe[1] = -1;
	rd->piped = 0;
	rd->pipe_full = 0;
}

static uint8_t *
buf_take(struct relay_pool *pool)
{
	if (pool->nbuf > 0) {
		return pool->buf[--pool->nbuf];
	}
	return malloc(RELAY_BUF);
}

static void
buf_give(struct relay_pool *pool, uint8_t *b)
{
	if (b == NULL) {
		return;
	}
	if (pool->nbuf < RELAY_SPARE) {
		pool->buf[pool->nbuf++] = b;
	} else {
		free(b);
	}
}

void
relay_init(struct relay *r, struct relay_pool *pool, int fd0, int fd1)
{
	int d;

	if (pool->splice < 0) {
		pool->splice = splice_wanted();
	}
	memset(r, 0, sizeof(*r));
	r->pool = pool;
	r->fd[0] = fd0;
	r->fd[1] = fd1;
	r->splice = pool->splice;
	r->sealed = -1;
	r->live = 1;
	pool->live++;
	for (d = 0; d < 2; d++) {
		r->dir[d].pipe[0] = r->dir[d].pipe[1] = -1;
	}
}

/* Keep n bytes that the sink didn't take; -1 if out of memory. */
static int
relay_keep(struct relay *r, struct relay_dir *rd, const uint8_t *data,
           size_t n)
{
	if (rd->buf == NULL && (rd->buf = buf_take(r->pool)) == NULL) {
		errno = ENOMEM;
		return -1;
	}
	memcpy(rd->buf + rd->off + rd->len, data, n);
	rd->len += n;
	return 0;
}

int
relay_prefill(struct relay *r, int d, const void *data, size_t n)
{
	if (n == 0) {
		return 0;
	}
	return relay_keep(r, &r->dir[d], data, n);
}

void
relay_seal(struct relay *r, int side, struct seal *tx, struct seal *rx)
{
	r->sealed = side;
	r->splice = 0;
	r->tx = tx;
	r->rx = rx;
}

int
relay_put_record(struct relay *r, int d, const void *data, size_t n)
{
	uint8_t rec[RECORD_HDR + FRAME_HDR + FRAME_MAX + TAG_LEN];

	if (n > FRAME_HDR + FRAME_MAX) {
		errno = EMSGSIZE;
		return -1;
	}
	return relay_keep(r, &r->dir[d], rec, record_seal(r->tx, data, n, rec));
}

int
relay_feed(struct relay *r, int d, const void *data, size_t n)
{
	struct relay_dir *rd = &r->dir[d];

	if (r->sealed != d) {
		rd->bytes += n;
		return relay_prefill(r, d, data, n);
	}
	if (n == 0) {
		return 0;
	}
	if (n > RELAY_BUF || (rd->rbuf == NULL && (rd->rbuf = buf_take(r->pool)) == NULL)) {
		errno = ENOMEM;
		return -1;
	}
	memcpy(rd->rbuf, data, n);
	rd->rlen = n;
	return 0;
}

/* A whole record (or a length no record may have) waits in direction d's
 * records from its sealed source. */
static int
record_ready(const struct relay_dir *rd)
{
	size_t n;

	if (rd->rlen < RECORD_HDR) {
		return 0;
	}
	/* An oversized length is ready too: to be refused at once, not
	 * waited on. */
	n = wire_get16(rd->rbuf + rd->roff);
	return n > RECORD_MAX || rd->rlen >= RECORD_HDR + n + TAG_LEN;
}

static int
relay_can_read(const struct relay *r, const struct relay_dir *rd)
{
	if (r->sealed >= 0) {
		/* Sealed: one record (or its plaintext) in hand at a time. */
		return !rd->eof && rd->len == 0 && !record_ready(rd);
	}
	return !rd->eof && !rd->pipe_full &&
	       (rd->buf == NULL || rd->off + rd->len < RELAY_BUF);
}

void
relay_events(const struct relay *r, short ev[2])
{
	int d;

	ev[0] = ev[1] = 0;
	for (d = 0; d < 2; d++) {
		const struct relay_dir *rd = &r->dir[d];

		if (relay_can_read(r, rd)) {
			ev[d] |= POLLIN;
		}
		if (rd->len > 0 || rd->piped > 0 || record_ready(rd)) {
			ev[1 - d] |= POLLOUT;
		}
	}
}

enum relay_state
relay_fail(struct relay *r, int side, const char *op)
{
	r->err_side = side;
	r->err_op = op;
	r->err_no = errno;
	return RELAY_FAIL;
}

/* A sealed stream broke: op says how (err_no 0: no errno to add). */
static int
seal_broke(struct relay *r, const char *op)
{
	r->broke = op;
	errno = EPROTO;
	return -1;
}

const char *
relay_why(const struct relay *r, const char *const side[2], char *buf,
          size_t len)
{
	if (r->broke != NULL) {
		snprintf(buf, len, "%s %s", side[r->sealed != 0], r->broke);
	} else {
		snprintf(buf, len, "%s %s: %s", side[r->err_side != 0], r->err_op,
		         strerror(r->err_no));
	}
	return buf;
}

/* Move what the pipe of direction d holds to its sink.  -1 on an error. */
static int
pipe_drain(struct relay *r, int d)
{
	struct relay_dir *rd = &r->dir[d];

	while (rd->piped > 0) {
		ssize_t k = move_kernel(rd->pipe[0], r->fd[1 - d], rd->piped);
		if (k < 0) {
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
		}
		rd->piped -= (size_t)k;
		rd->pipe_full = 0;
	}
	pipe_give(r->pool, rd);
	return 0;
}

/* Write direction d's kept bytes to its sink: the buffer (which only ever
 * holds bytes older than any in the pipe) first.  The buffer goes back to
 * the pool once empty.  -1 on an error. */
static int
relay_drain(struct relay *r, int d)
{
	struct relay_dir *rd = &r->dir[d];
	size_t sent;

	if (rd->len > 0) {
		if (send_some(r->fd[1 - d], rd->buf + rd->off, rd->len, &sent) != 0) {
			return -1;
		}
		rd->off += sent;
		rd->len -= sent;
		if (rd->len > 0) {
			return 0;
		}
		buf_give(r->pool, rd->buf);
		rd->buf = NULL;
		rd->off = 0;
	}
	return rd->piped > 0 ? pipe_drain(r, d) : 0;
}

/*
 * The splice path of relay_move: source -> pipe -> sink, repeating while
 * the sink keeps up, up to RELAY_BURST times.  A pipe the sink left bytes
 * in is "full" for reading until it drains, so a readable source can't
 * spin the loop.  Returns 0, or -1 with *op naming what failed.
 */
static int
relay_splice(struct relay *r, int d, const char **op)
{
	struct relay_dir *rd = &r->dir[d];
	int i;

	for (i = 0; i < RELAY_BURST && relay_can_read(r, rd); i++) {
		ssize_t n;

		if (rd->pipe[0] < 0 && pipe_take(r->pool, rd->pipe) != 0) {
			rd->bulk = 0;     /* no descriptor for a pipe: copy */
			break;
		}
		n = move_kernel(r->fd[d], rd->pipe[1], SPLICE_CHUNK);
		if (n == 0) {
			rd->eof = 1;
			break;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				rd->pipe_full = rd->piped > 0;
				/* Into an empty pipe: the source had nothing, or
				 * it stops at TCP urgent data, which splice never
				 * moves past while poll keeps saying readable (a
				 * user's one MSG_OOB byte spun the loop).  read()
				 * steps over it: copy until reads fill up again. */
				if (rd->piped == 0) {
					rd->bulk = 0;
				}
				break;
			}
			*op = "read";
			return -1;
		}
		rd->piped += (size_t)n;
		rd->bytes += (uint64_t)n;
		if ((size_t)n < RELAY_BUF) {
			rd->bulk = 0;     /* small messages again: copy them */
		}
		if (pipe_drain(r, d) != 0) {
			*op = "write";
			return -1;
		}
		if (rd->piped > 0) {
			break;        /* the sink is full */
		}
		/* Into an empty pipe a splice stops short of its capacity only
		 * when the source had no more: don't ask again just to hear
		 * EAGAIN (a third of all calls for small messages). */
		if ((size_t)n < r->pool->pipe_size) {
			break;
		}
	}
	if (rd->piped == 0) {
		pipe_give(r->pool, rd);
	}
	return 0;
}

/* read_source: read from direction d's source, retrying EINTR. */
static ssize_t
read_source(struct relay *r, int d, uint8_t *buf, size_t room)
{
	ssize_t n;

	do {
		n = read(r->fd[d], buf, room);
	} while (n < 0 && errno == EINTR);
	return n;
}

/* pass_on: send n bytes to direction d's sink now and keep what it
 * refuses.  0, or -1 with *op naming what failed. */
static int
pass_on(struct relay *r, int d, const uint8_t *p, size_t n, const char **op)
{
	size_t sent = 0;

	*op = "write";
	if (send_some(r->fd[1 - d], p, n, &sent) != 0) {
		return -1;
	}
	if (sent < n && relay_keep(r, &r->dir[d], p + sent, n - sent) != 0) {
		*op = "buffer";
		return -1;
	}
	return 0;
}

/*
 * Read from direction d's source and pass the bytes on at once.  With no
 * backlog, bytes go through the scratch buffer and only what the sink
 * refuses is kept; with a backlog, new bytes queue behind it.  Repeats while
 * reads fill the buffer and the sink keeps up, up to RELAY_BURST times.
 * Returns 0, or -1 with *op naming the failed call.
 */
static int
relay_move(struct relay *r, int d, const char **op)
{
	struct relay_dir *rd = &r->dir[d];
	int i;

	for (i = 0; i < RELAY_BURST && relay_can_read(r, rd); i++) {
		uint8_t *into = rd->buf ? rd->buf + rd->off + rd->len : r->pool->scratch;
		size_t room = rd->buf ? RELAY_BUF - rd->off - rd->len : RELAY_BUF;
		ssize_t n = read_source(r, d, into, room);

		if (n == 0) {
			rd->eof = 1;
			return 0;
		}
		if (n < 0) {
			*op = "read";
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
		}
		rd->bytes += (uint64_t)n;
		if (rd->buf != NULL) {
			rd->len += (size_t)n;
			*op = "write";
			if (relay_drain(r, d) != 0) {
				return -1;
			}
		} else if (pass_on(r, d, r->pool->scratch, (size_t)n, op) != 0) {
			return -1;
		}
		if ((size_t)n < room || rd->len > 0) {
			return 0;     /* drained the source, or the sink is full */
		}
		if (r->splice) {
			rd->bulk = 1;     /* a full read: more is coming in bulk */
			return relay_splice(r, d, op);
		}
	}
	return 0;
}

/*
 * Sealed relaying, toward the sealed side: one readv fills up to
 * SEAL_BATCH record-sized slots of the scratch buffer, each behind room for
 * its header; each slot is sealed in place, which leaves the records back
 * to back, and one send takes them all.  What the sink refuses waits in
 * the buffer, and nothing more is read until it has gone.  The source's
 * EOF becomes the empty end record.
 */
static int
seal_move(struct relay *r, int d, const char **op)
{
	struct relay_dir *rd = &r->dir[d];
	struct iovec iov[SEAL_BATCH];
	size_t left, len, chunk;
	ssize_t n;
	int i, k;

	for (k = 0; k < SEAL_BATCH; k++) {
		iov[k].iov_base = r->pool->scratch + k * SEAL_SLOT + RECORD_HDR;
		iov[k].iov_len = RECORD_MAX;
	}
	for (i = 0; i < RELAY_BURST && relay_can_read(r, rd); i++) {
		do {
			n = readv(r->fd[d], iov, SEAL_BATCH);
		} while (n < 0 && errno == EINTR);
		if (n < 0) {
			*op = "read";
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
		}
		rd->bytes += (uint64_t)n;
		rd->eof = n == 0;
		len = 0;
		left = (size_t)n;
		do {
			chunk = left < RECORD_MAX ? left : RECORD_MAX;
			len += record_seal(r->tx, r->pool->scratch + len + RECORD_HDR,
			                   chunk, r->pool->scratch + len);
			left -= chunk;
		} while (left > 0);
		if (pass_on(r, d, r->pool->scratch, len, op) != 0) {
			return -1;
		}
		if ((size_t)n < SEAL_BATCH * RECORD_MAX) {
			return 0;
		}
	}
	return 0;
}

/* pass_on_iov: pass_on for n pieces, total bytes in all, in one sendmsg. */
static int
pass_on_iov(struct relay *r, int d, const struct iovec *iov, int n,
            size_t total, const char **op)
{
	struct msghdr mh;
	ssize_t k;
	size_t sent;
	int i;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = (struct iovec *)iov;
	mh.msg_iovlen = (size_t)n;
	do {
		k = sendmsg(r->fd[1 - d], &mh, MSG_NOSIGNAL);
	} while (k < 0 && errno == EINTR);
	if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
		*op = "write";
		return -1;
	}
	sent = k < 0 ? 0 : (size_t)k;
	if (sent == total) {
		return 0;
	}
	/* Keep what the sink refused, in order: it all came from one read
	 * buffer, so it fits a direction's buffer. */
	for (i = 0; i < n; i++) {
		size_t skip = sent < iov[i].iov_len ? sent : iov[i].iov_len;
		sent -= skip;
		if (skip < iov[i].iov_len &&
		    relay_keep(r, &r->dir[d], (const uint8_t *)iov[i].iov_base + skip,
		               iov[i].iov_len - skip) != 0) {
			*op = "buffer";
			return -1;
		}
	}
	return 0;
}

/* Open the records waiting in direction d and pass their bytes on, while
 * the sink takes them.  An empty record ends the direction; one that does
 * not open, or anything after the end, breaks the stream. */
static int
open_pending(struct relay *r, int d, const char **op)
{
	struct relay_dir *rd = &r->dir[d];
	struct iovec iov[OPEN_IOV];
	size_t used, plen, total;
	enum frame_result fr = FRAME_OK;
	int n, err = 0;

	/* Open the whole records in hand where they lie, OPEN_IOV at a time,
	 * and send each batch's bytes in one call; stop when the sink has
	 * not taken the last ones. */
	while (rd->len == 0 && rd->rlen > 0 && fr == FRAME_OK) {
		for (n = 0, total = 0; n < OPEN_IOV && rd->rlen > 0; ) {
			uint8_t *rec = rd->rbuf + rd->roff;
			fr = rd->eof ? FRAME_BAD
			     : record_open(r->rx, rec, rd->rlen, &used, &plen);
			if (fr == FRAME_MORE) {
				break;
			}
			if (fr == FRAME_BAD) {
				err = seal_broke(r, rd->eof ? "sent bytes after its end"
				                 : "sent a record that does not open "
				                   "(tampered, replayed or cut)");
				break;
			}
			rd->eof = plen == 0;
			rd->bytes += plen;
			if (plen > 0) {
				iov[n].iov_base = rec + RECORD_HDR;
				iov[n].iov_len = plen;
				total += plen;
				n++;
			}
			rd->roff += used;
			rd->rlen -= used;
		}
		if (n > 0 && pass_on_iov(r, d, iov, n, total, op) != 0) {
			return -1;
		}
	}
	if (rd->rlen == 0) {
		buf_give(r->pool, rd->rbuf);
		rd->rbuf = NULL;
		rd->roff = 0;
	}
	return err;
}

/* Sealed relaying, from the sealed side: read records, then open them. */
static int
open_move(struct relay *r, int d, const char **op)
{
	struct relay_dir *rd = &r->dir[d];
	ssize_t n;

	if (!relay_can_read(r, rd)) {
		return 0;
	}
	if (rd->rbuf == NULL && (rd->rbuf = buf_take(r->pool)) == NULL) {
		*op = "buffer";
		errno = ENOMEM;
		return -1;
	}
	/* At most part of one record is left over: move it to the front. */
	if (rd->roff > 0) {
		memmove(rd->rbuf, rd->rbuf + rd->roff, rd->rlen);
		rd->roff = 0;
	}
	n = read_source(r, d, rd->rbuf + rd->rlen, RELAY_BUF - rd->rlen);
	if (n == 0) {
		/* A FIN before the end record: someone cut the stream. */
		return seal_broke(r, "closed without its end record (cut?)");
	}
	if (n < 0) {
		*op = "read";
		return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
	}
	rd->rlen += (size_t)n;
	return open_pending(r, d, op);
}

/* One direction's reading, by the kind of relay. */
static int
relay_read(struct relay *r, int d, const char **op)
{
	struct relay_dir *rd = &r->dir[d];

	if (r->sealed == d) {
		return open_move(r, d, op);
	}
	if (r->sealed >= 0) {
		return seal_move(r, d, op);
	}
	/* Order: bytes kept in the buffer (a prefill, a backlog) are older
	 * than any in the pipe, so nothing is spliced while the buffer holds
	 * some, and nothing copied while the pipe does. */
	return (rd->bulk || rd->piped > 0) && rd->len == 0
	       ? relay_splice(r, d, op) : relay_move(r, d, op);
}

enum relay_state
relay_step(struct relay *r, const short revents[2])
{
	int d;
	const char *op = "read";

	for (d = 0; d < 2; d++) {
		struct relay_dir *rd = &r->dir[d];
		int src = d, dst = 1 - d, rc = 0;

		if ((rd->len > 0 || rd->piped > 0 || rd->rlen > 0) &&
		    (revents[dst] & (POLLOUT | POLLHUP | POLLERR))) {
			if (relay_drain(r, d) != 0) {
				return relay_fail(r, dst, "write");
			}
			if (r->sealed == d && open_pending(r, d, &op) != 0) {
				rc = -1;
			}
		}
		if (rc == 0 && (revents[src] & (POLLIN | POLLHUP | POLLERR))) {
			rc = relay_read(r, d, &op);
		}
		if (rc != 0) {
			if (r->broke != NULL) {
				return relay_fail(r, src, "records");
			}
			return relay_fail(r, strcmp(op, "read") == 0 ? src : dst, op);
		}
		if (rd->eof && rd->len == 0 && rd->piped == 0 && !rd->shut) {
			/* ENOTCONN: the sink already went away, which its own
			 * direction will report; nothing is lost here. */
			if (shutdown(r->fd[dst], SHUT_WR) != 0 && errno != ENOTCONN) {
				return relay_fail(r, dst, "shutdown");
			}
			rd->shut = 1;
		}
	}
	return (r->dir[0].shut && r->dir[1].shut) ? RELAY_DONE : RELAY_OPEN;
}

void
relay_abandon(struct relay *r)
{
	r->fd[0] = r->fd[1] = -1;
	relay_close(r);
}

void
relay_close(struct relay *r)
{
	int i;

	/* A sealed stream that broke resets the other side rather than
	 * ending it cleanly: its peer must not take a cut for an end. */
	if (r->sealed >= 0 && r->err_side == r->sealed && r->fd[1 - r->sealed] >= 0 &&
	    (r->broke != NULL || r->err_op != NULL)) {
		struct linger lg = { 1, 0 };
		setsockopt(r->fd[1 - r->sealed], SOL_SOCKET, SO_LINGER, &lg,
		           sizeof(lg));
	}
	for (i = 0; i < 2; i++) {
		if (r->fd[i] >= 0) {
			close(r->fd[i]);
			r->fd[i] = -1;
		}
		buf_give(r->pool, r->dir[i].buf);
		r->dir[i].buf = NULL;
		r->dir[i].len = 0;
		buf_give(r->pool, r->dir[i].rbuf);
		r->dir[i].rbuf = NULL;
		r->dir[i].rlen = r->dir[i].roff = 0;
		pipe_give(r->pool, &r->dir[i]);
	}
	if (r->live) {
		r->live = 0;
		if (--r->pool->live == 0) {
			spares_release(r->pool);
		}
	}
}
