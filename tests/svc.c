/*
 * svc: the local service the end-to-end tests forward to.
 *
 *     tests/svc echo ADDR [rst]      echo every connection's bytes back
 *     tests/svc source ADDR NBYTES   send NBYTES of the seed-1 stream, close
 *     tests/svc http ADDR DIR        serve DIR's files (make demo's page)
 *
 * ADDR is 127.0.0.1:PORT or [::1]:PORT.  One poll() loop, non-blocking,
 * any number of connections.  Prints "ready" on stdout once listening and
 * exits 0 on SIGTERM or SIGINT.
 *
 * echo: on EOF from the peer, finish echoing what is buffered, then
 * shutdown(SHUT_WR); close once both directions are done.  Nothing is read
 * while a connection's buffer is full, so a slow reader slows its writer.
 * source: after the last byte, shutdown(SHUT_WR), then read and discard
 * until the peer closes.
 * http: GET and HEAD of DIR's files over HTTP/1.1 with keep-alive; 404
 * for a missing file, 403 for a path with "..".
 *
 * echo ... rst: a connection whose stream contains the 4 bytes "RST!"
 * is closed at once with a reset (SO_LINGER {1, 0}), unechoed bytes
 * dropped: a service that dies under one user.  Off unless asked for, so
 * that a random stream can never trip it by chance.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/testlib.h"

#define BUF_SIZE (128 * 1024)

enum mode { MODE_ECHO, MODE_SOURCE, MODE_HTTP };

struct conn {
	int fd;
	uint8_t *buf;
	size_t off, len;         /* pending bytes are buf[off..off+len) */
	int eof;                 /* the peer shut its side */
	int shut;                /* we shut ours */
	int abort;               /* saw "RST!": close with a reset */
	uint32_t last4;          /* echo rst: the last 4 bytes read */
	uint64_t sent;           /* source: stream bytes sent so far */
	struct tl_stream stream; /* source: where the stream stands */
};

struct svc {
	enum mode mode;
	int rst;                 /* echo: "RST!" resets the connection */
	uint64_t nbytes;
	int lfd;
	struct conn *conns;
	size_t nconns, cap;
};

static volatile sig_atomic_t stop_flag;
static int wake_pipe[2] = { -1, -1 };

static void
on_signal(int sig)
{
	int saved = errno;
	char c = 1;

	(void)sig;
	stop_flag = 1;
	if (write(wake_pipe[1], &c, 1) < 0) {
		/* The pipe is full, so a wake-up is already pending. */
	}
	errno = saved;
}

static void
usage(FILE *f)
{
	fprintf(f, "usage: svc echo ADDR [rst]\n"
	           "       svc source ADDR NBYTES\n"
	           "       svc http ADDR DIR\n");
}

/* listen_addr: listen on "IP:PORT" or "[IPv6]:PORT"; -1 with a message. */
static int
listen_addr(const char *s)
{
	char host[256], *port;
	struct addrinfo hints, *ai;
	int fd, one = 1, rc;

	if (strlen(s) >= sizeof(host)) {
		fprintf(stderr, "svc: address too long\n");
		return -1;
	}
	strcpy(host, s);
	if (host[0] == '[') {
		char *end = strchr(host, ']');

		if (end == NULL || end[1] != ':') {
			fprintf(stderr, "svc: bad address %s\n", s);
			return -1;
		}
		*end = '\0';
		port = end + 2;
		memmove(host, host + 1, strlen(host + 1) + 1);
	} else {
		port = strrchr(host, ':');
		if (port == NULL) {
			fprintf(stderr, "svc: bad address %s\n", s);
			return -1;
		}
		*port++ = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	rc = getaddrinfo(host, port, &hints, &ai);
	if (rc != 0) {
		fprintf(stderr, "svc: %s: %s\n", s, gai_strerror(rc));
		return -1;
	}
	fd = socket(ai->ai_family, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("svc: socket");
		freeaddrinfo(ai);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
		fprintf(stderr, "svc: bind %s: %s\n", s, strerror(errno));
		freeaddrinfo(ai);
		close(fd);
		return -1;
	}
	freeaddrinfo(ai);
	if (tl_set_nonblock(fd) < 0) {
		perror("svc: fcntl");
		close(fd);
		return -1;
	}
	return fd;
}

/* ---- connections ---------------------------------------------------------- */

static void
conn_free(struct conn *c)
{
	if (c->fd >= 0 && c->abort) {
		tl_reset_close(c->fd);
	} else if (c->fd >= 0) {
		close(c->fd);
	}
	free(c->buf);
	c->fd = -1;
	c->buf = NULL;
}

static void
accept_all(struct svc *s)
{
	for (;;) {
		int fd = accept(s->lfd, NULL, NULL);
		struct conn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				fprintf(stderr, "svc: accept: %s\n", strerror(errno));
			}
			return;
		}
		if (tl_set_nonblock(fd) < 0) {
			close(fd);
			continue;
		}
		if (s->nconns == s->cap) {
			size_t ncap = s->cap ? s->cap * 2 : 64;
			struct conn *nc = realloc(s->conns, ncap * sizeof(*nc));

			if (nc == NULL) {
				close(fd);
				continue;
			}
			s->conns = nc;
			s->cap = ncap;
		}
		c = &s->conns[s->nconns];
		memset(c, 0, sizeof(*c));
		c->fd = fd;
		c->buf = malloc(BUF_SIZE);
		if (c->buf == NULL) {
			close(fd);
			continue;
		}
		tl_stream_init(&c->stream, 1);
		s->nconns++;
	}
}

/* conn_events: poll interest derived from the connection's state. */
static short
conn_events(const struct svc *s, const struct conn *c)
{
	short ev = 0;

	/* conn_read compacts the buffer, so any free byte is room. */
	if (!c->eof && (s->mode == MODE_SOURCE || c->len < BUF_SIZE)) {
		ev |= POLLIN;
	}
	if (!c->shut) {
		if (s->mode == MODE_SOURCE || c->len > 0) {
			ev |= POLLOUT;
		}
	}
	return ev;
}

/* saw_rst: feed n new bytes to c's "RST!" detector; 1 once it fires. */
static int
saw_rst(struct conn *c, const uint8_t *p, size_t n)
{
	static const uint32_t want = (uint32_t)'R' << 24 | (uint32_t)'S' << 16
	                             | (uint32_t)'T' << 8 | (uint32_t)'!';
	size_t i;

	for (i = 0; i < n; i++) {
		c->last4 = c->last4 << 8 | p[i];
		if (c->last4 == want) {
			return 1;
		}
	}
	return 0;
}

/* conn_read: take what the socket has.  -1 if the connection failed or
 * must be reset (c->abort). */
static int
conn_read(struct svc *s, struct conn *c)
{
	uint8_t junk[16384];

	while (!c->eof) {
		uint8_t *dst;
		size_t room;
		ssize_t r;

		if (s->mode == MODE_SOURCE) {
			dst = junk;
			room = sizeof(junk);
		} else {
			if (c->len == 0) {
				c->off = 0;
			}
			if (c->off > 0 && c->off + c->len == BUF_SIZE) {
				memmove(c->buf, c->buf + c->off, c->len);
				c->off = 0;
			}
			dst = c->buf + c->off + c->len;
			room = BUF_SIZE - c->off - c->len;
			if (room == 0) {
				return 0;
			}
		}
		r = read(c->fd, dst, room);
		if (r > 0) {
			if (s->mode == MODE_ECHO && s->rst
			    && saw_rst(c, dst, (size_t)r)) {
				c->abort = 1;
				return -1;
			}
			if (s->mode == MODE_ECHO) {
				c->len += (size_t)r;
			}
			continue;
		}
		if (r == 0) {
			c->eof = 1;
			return 0;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			return 0;
		}
		return -1;
	}
	return 0;
}

/* conn_write: send what is due; shut down once everything went out.
 * -1 if the connection failed. */
static int
conn_write(struct svc *s, struct conn *c)
{
	while (!c->shut) {
		ssize_t w;

		if (s->mode == MODE_SOURCE && c->len == 0 && c->sent < s->nbytes) {
			uint64_t want = s->nbytes - c->sent;

			c->len = want < BUF_SIZE ? (size_t)want : BUF_SIZE;
			c->off = 0;
			tl_stream_fill(&c->stream, c->buf, c->len);
			c->sent += c->len;
		}
		if (c->len == 0) {
			int done = s->mode == MODE_SOURCE ? c->sent == s->nbytes
			                                  : c->eof;

			if (!done) {
				return 0;
			}
			/* ENOTCONN: the peer closed at the same moment. */
			if (shutdown(c->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
				return -1;
			}
			c->shut = 1;
			return 0;
		}
		w = send(c->fd, c->buf + c->off, c->len, MSG_NOSIGNAL);
		if (w > 0) {
			c->off += (size_t)w;
			c->len -= (size_t)w;
			if (c->len == 0) {
				c->off = 0;
			}
			continue;
		}
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 0;
		}
		return -1;
	}
	return 0;
}

/* ---- http mode ------------------------------------------------------------ */

/*
 * A static file server for `make demo`: GET and HEAD, HTTP/1.1 keep-alive,
 * one request at a time per connection (pipelined requests wait in req, and
 * nothing more is read while a response is in flight).  The body is read
 * from the file only while the connection's output buffer has room, so a
 * slow reader holds one buffer, not the file.
 */

#define HTTP_REQ_MAX  8192          /* request line and headers */
#define HTTP_OUT_SIZE (64 * 1024)   /* response bytes in flight */
#define HTTP_PATH_MAX 4096

struct hconn {
	int fd;
	char req[HTTP_REQ_MAX];
	size_t rlen;             /* bytes in req */
	uint8_t *out;            /* pending bytes are out[ooff..ooff+olen) */
	size_t ooff, olen;
	int file;                /* the body's file, or -1 */
	uint64_t file_left;      /* body bytes not yet read from it */
	int busy;                /* a response is in flight */
	int close_after;         /* close once this response is out */
	int eof;                 /* the peer shut its side */
	int shut;                /* we shut ours: discard until EOF */
};

struct http {
	const char *dir;
	int lfd;
	int accept_paused;       /* out of descriptors: wait for a close */
	struct hconn **conns;
	size_t nconns, cap;
};

static const struct {
	const char *ext, *type;
} http_types[] = {
	{ ".html", "text/html; charset=utf-8" },
	{ ".js", "text/javascript; charset=utf-8" },
	{ ".css", "text/css; charset=utf-8" },
	{ ".png", "image/png" },
	{ ".svg", "image/svg+xml" },
	{ ".txt", "text/plain; charset=utf-8" },
};

static const char *
http_type(const char *path)
{
	size_t n = strlen(path), i;

	for (i = 0; i < sizeof(http_types) / sizeof(http_types[0]); i++) {
		size_t e = strlen(http_types[i].ext);

		if (n >= e && strcmp(path + n - e, http_types[i].ext) == 0) {
			return http_types[i].type;
		}
	}
	return "application/octet-stream";
}

/* http_ieq: a equals the NUL-terminated b, ignoring ASCII case. */
static int
http_ieq(const char *a, size_t alen, const char *b)
{
	size_t i;

	for (i = 0; i < alen; i++) {
		char x = a[i], y = b[i];

		if (y == '\0') {
			return 0;
		}
		if (x >= 'A' && x <= 'Z') {
			x = (char)(x - 'A' + 'a');
		}
		if (y >= 'A' && y <= 'Z') {
			y = (char)(y - 'A' + 'a');
		}
		if (x != y) {
			return 0;
		}
	}
	return b[alen] == '\0';
}

static int
http_hex(char c)
{
	if (c >= '0' && c <= '9') {
		return c - '0';
	}
	if (c >= 'a' && c <= 'f') {
		return c - 'a' + 10;
	}
	if (c >= 'A' && c <= 'F') {
		return c - 'A' + 10;
	}
	return -1;
}

/* http_decode: the path of target (before any '?' or '#'), %-decoded into
 * out.  -1 if it is malformed, holds a NUL or does not fit. */
static int
http_decode(const char *target, char *out, size_t size)
{
	const char *p;
	size_t o = 0;

	/* No raw controls: the target may be echoed in a Location. */
	for (p = target; *p != '\0'; p++) {
		if ((unsigned char)*p < ' ' || *p == 0x7f) {
			return -1;
		}
	}
	for (; *target != '\0' && *target != '?' && *target != '#'; target++) {
		char c = *target;

		if (c == '%') {
			int hi = http_hex(target[1]), lo;

			lo = hi < 0 ? -1 : http_hex(target[2]);
			if (lo < 0 || (hi == 0 && lo == 0)) {
				return -1;
			}
			c = (char)(hi * 16 + lo);
			target += 2;
		}
		if (o + 1 >= size) {
			return -1;
		}
		out[o++] = c;
	}
	out[o] = '\0';
	return 0;
}

/* http_head: queue a response header.  len is the Content-Length. */
static void
http_head(struct hconn *c, const char *status, const char *type,
          uint64_t len, const char *extra)
{
	int n = snprintf((char *)c->out + c->ooff + c->olen,
	                 HTTP_OUT_SIZE - c->ooff - c->olen,
	                 "HTTP/1.1 %s\r\n"
	                 "Content-Type: %s\r\n"
	                 "Content-Length: %llu\r\n"
	                 "%s"
	                 "Connection: %s\r\n"
	                 "\r\n",
	                 status, type, (unsigned long long)len, extra,
	                 c->close_after ? "close" : "keep-alive");

	/* The header always fits: the buffer is empty between responses and
	 * extra is bounded by the request size. */
	if (n > 0) {
		c->olen += (size_t)n;
	}
}

/* http_error: queue a short text response with no file behind it. */
static void
http_error(struct hconn *c, const char *status, int head_only,
           const char *extra)
{
	char body[64];
	int n = snprintf(body, sizeof(body), "%s\n", status);

	http_head(c, status, "text/plain; charset=utf-8", (uint64_t)n, extra);
	if (!head_only) {
		memcpy(c->out + c->ooff + c->olen, body, (size_t)n);
		c->olen += (size_t)n;
	}
	c->busy = 1;
}

/*
 * http_parse: if req holds a whole request, consume it and start its
 * response.  1 if a response started, 0 if more bytes are needed.
 */
static int
http_parse(struct http *h, struct hconn *c)
{
	char *end = NULL, *line, *next, *method, *target, *version, *sp;
	char path[HTTP_PATH_MAX], full[HTTP_PATH_MAX + 512], extra[HTTP_REQ_MAX + 32];
	size_t i, used;
	int head_only, fd, keep;
	struct stat st;

	for (i = 0; i + 1 < c->rlen; i++) {
		if (c->req[i] == '\n' && (c->req[i + 1] == '\n'
		    || (c->req[i + 1] == '\r' && i + 2 < c->rlen
		        && c->req[i + 2] == '\n'))) {
			end = c->req + i + (c->req[i + 1] == '\n' ? 2 : 3);
			break;
		}
	}
	if (end == NULL) {
		if (c->rlen == sizeof(c->req)) {
			c->close_after = 1;
			http_error(c, "431 Request Header Fields Too Large", 0, "");
			c->rlen = 0;
			return 1;
		}
		return 0;
	}
	used = (size_t)(end - c->req);
	end[-1] = '\0';
	c->ooff = c->olen = 0;

	/* The request line: METHOD SP TARGET SP VERSION. */
	line = c->req;
	next = strchr(line, '\n');
	*next++ = '\0';
	if (*line != '\0' && line[strlen(line) - 1] == '\r') {
		line[strlen(line) - 1] = '\0';
	}
	method = line;
	target = strchr(method, ' ');
	version = target ? strchr(target + 1, ' ') : NULL;
	if (version == NULL || strchr(version + 1, ' ') != NULL) {
		c->close_after = 1;
		http_error(c, "400 Bad Request", 0, "");
		goto consumed;
	}
	*target++ = '\0';
	*version++ = '\0';
	head_only = strcmp(method, "HEAD") == 0;
	if (!head_only && strcmp(method, "GET") != 0) {
		/* Closed after, so a body it may carry is never parsed. */
		c->close_after = 1;
		http_error(c, "405 Method Not Allowed", 0, "Allow: GET, HEAD\r\n");
		goto consumed;
	}
	if (strcmp(version, "HTTP/1.1") == 0) {
		keep = 1;
	} else if (strcmp(version, "HTTP/1.0") == 0) {
		keep = 0;
	} else {
		c->close_after = 1;
		http_error(c, "400 Bad Request", head_only, "");
		goto consumed;
	}

	/* Headers: only Connection and a body matter here. */
	for (line = next; *line != '\0'; line = next) {
		size_t nlen;
		char *val;

		next = strchr(line, '\n');
		if (next == NULL) {
			next = line + strlen(line);
		} else {
			*next++ = '\0';
		}
		if (*line != '\0' && line[strlen(line) - 1] == '\r') {
			line[strlen(line) - 1] = '\0';
		}
		val = strchr(line, ':');
		if (val == NULL) {
			continue;
		}
		nlen = (size_t)(val - line);
		for (val++; *val == ' ' || *val == '\t'; val++) {
		}
		if (http_ieq(line, nlen, "connection")) {
			if (http_ieq(val, strlen(val), "close")) {
				keep = 0;
			} else if (http_ieq(val, strlen(val), "keep-alive")) {
				keep = 1;
			}
		} else if ((http_ieq(line, nlen, "content-length")
		            && strcmp(val, "0") != 0)
		           || http_ieq(line, nlen, "transfer-encoding")) {
			/* GET and HEAD have no body; one we will not read
			 * would be taken for the next request. */
			c->close_after = 1;
			http_error(c, "400 Bad Request", head_only, "");
			goto consumed;
		}
	}
	c->close_after = !keep;
	if (target[0] != '/' || http_decode(target, path, sizeof(path)) < 0) {
		http_error(c, "400 Bad Request", head_only, "");
		goto consumed;
	}
	if (strstr(path, "..") != NULL) {
		http_error(c, "403 Forbidden", head_only, "");
		goto consumed;
	}
	snprintf(full, sizeof(full), "%s%s%s", h->dir, path,
	         path[strlen(path) - 1] == '/' ? "index.html" : "");
	/* O_NONBLOCK: opening a FIFO must not stop the loop. */
	fd = open(full, O_RDONLY | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &st) < 0) {
		if (fd >= 0) {
			close(fd);
		}
		http_error(c, errno == EACCES ? "403 Forbidden" : "404 Not Found",
		           head_only, "");
		goto consumed;
	}
	if (S_ISDIR(st.st_mode) && path[strlen(path) - 1] != '/') {
		close(fd);
		sp = strpbrk(target, "?#");
		if (sp != NULL) {
			*sp = '\0';
		}
		snprintf(extra, sizeof(extra), "Location: %s/\r\n", target);
		http_error(c, "301 Moved Permanently", head_only, extra);
		goto consumed;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		http_error(c, "404 Not Found", head_only, "");
		goto consumed;
	}
	http_head(c, "200 OK", http_type(full), (uint64_t)st.st_size, "");
	c->busy = 1;
	if (head_only || st.st_size == 0) {
		close(fd);
	} else {
		c->file = fd;
		c->file_left = (uint64_t)st.st_size;
	}

consumed:
	memmove(c->req, c->req + used, c->rlen - used);
	c->rlen -= used;
	return 1;
}

static void
hconn_free(struct hconn *c)
{
	if (c->fd >= 0) {
		close(c->fd);
	}
	if (c->file >= 0) {
		close(c->file);
	}
	free(c->out);
	free(c);
}

/* hconn_read: take what the socket has, up to a full req.  -1 on error. */
static int
hconn_read(struct hconn *c)
{
	while (!c->eof) {
		char junk[4096];
		char *dst = c->shut ? junk : c->req + c->rlen;
		size_t room = c->shut ? sizeof(junk) : sizeof(c->req) - c->rlen;
		ssize_t r;

		if (room == 0) {
			return 0;
		}
		r = read(c->fd, dst, room);
		if (r > 0) {
			if (!c->shut) {
				c->rlen += (size_t)r;
			}
			continue;
		}
		if (r == 0) {
			c->eof = 1;
			return 0;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			return 0;
		}
		return -1;
	}
	return 0;
}

/*
 * hconn_pump: start responses, read the body into the output buffer while
 * it has room, send.  -1 once the connection is finished or failed.
 */
static int
hconn_pump(struct http *h, struct hconn *c)
{
	for (;;) {
		ssize_t w;

		if (c->shut) {
			return c->eof ? -1 : 0;
		}
		if (!c->busy && !http_parse(h, c)) {
			/* No whole request: a peer that is done writing
			 * has nothing more to ask. */
			return c->eof ? -1 : 0;
		}
		if (c->olen == 0) {
			c->ooff = 0;
		}
		if (c->file >= 0 && c->ooff + c->olen < HTTP_OUT_SIZE) {
			size_t room = HTTP_OUT_SIZE - c->ooff - c->olen;
			ssize_t r;

			if (room > c->file_left) {
				room = (size_t)c->file_left;
			}
			r = read(c->file, c->out + c->ooff + c->olen, room);
			if (r <= 0) {
				if (r < 0 && errno == EINTR) {
					continue;
				}
				/* The file shrank or failed: the promised
				 * length cannot be kept. */
				return -1;
			}
			c->olen += (size_t)r;
			c->file_left -= (uint64_t)r;
			if (c->file_left == 0) {
				close(c->file);
				c->file = -1;
			}
		}
		if (c->olen > 0) {
			w = send(c->fd, c->out + c->ooff, c->olen, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR) {
					continue;
				}
				if (errno == EAGAIN || errno == EWOULDBLOCK) {
					return 0;
				}
				return -1;
			}
			c->ooff += (size_t)w;
			c->olen -= (size_t)w;
			continue;
		}
		if (c->file >= 0) {
			continue;
		}
		/* The response is out. */
		c->busy = 0;
		if (c->close_after) {
			/* Shut our side and wait for the peer's EOF, so that
			 * its unread bytes cannot reset the response away. */
			if (shutdown(c->fd, SHUT_WR) < 0 && errno != ENOTCONN) {
				return -1;
			}
			c->shut = 1;
		}
	}
}

static short
hconn_events(const struct hconn *c)
{
	short ev = 0;

	if (!c->eof && (c->shut || (!c->busy && c->rlen < sizeof(c->req)))) {
		ev |= POLLIN;
	}
	if (c->olen > 0) {
		ev |= POLLOUT;
	}
	return ev;
}

static void
http_accept(struct http *h)
{
	for (;;) {
		int fd = accept(h->lfd, NULL, NULL);
		struct hconn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			if (errno == EMFILE || errno == ENFILE) {
				/* Wait for a close rather than spin on a
				 * listener that stays readable. */
				h->accept_paused = 1;
			} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
				fprintf(stderr, "svc: accept: %s\n", strerror(errno));
			}
			return;
		}
		if (h->nconns == h->cap) {
			size_t ncap = h->cap ? h->cap * 2 : 64;
			struct hconn **nc = realloc(h->conns, ncap * sizeof(*nc));

			if (nc == NULL) {
				close(fd);
				return;
			}
			h->conns = nc;
			h->cap = ncap;
		}
		c = calloc(1, sizeof(*c));
		if (c != NULL) {
			c->out = malloc(HTTP_OUT_SIZE);
		}
		if (c == NULL || c->out == NULL || tl_set_nonblock(fd) < 0) {
			if (c != NULL) {
				free(c->out);
			}
			free(c);
			close(fd);
			return;
		}
		c->fd = fd;
		c->file = -1;
		h->conns[h->nconns++] = c;
	}
}

/* http_main: serve dir's files on addr until SIGINT or SIGTERM. */
static int
http_main(const char *addr, const char *dir)
{
	struct http h;
	struct pollfd *pfds = NULL;
	size_t pcap = 0, i, j;
	struct stat st;
	char root[HTTP_PATH_MAX];
	size_t n;

	memset(&h, 0, sizeof(h));
	n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/') {
		n--;
	}
	if (n >= sizeof(root) || stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "svc: %s: not a directory\n", dir);
		return 1;
	}
	memcpy(root, dir, n);
	root[n] = '\0';
	h.dir = strcmp(root, "/") == 0 ? "" : root;
	h.lfd = listen_addr(addr);
	if (h.lfd < 0) {
		return 1;
	}
	printf("ready\n");
	fflush(stdout);

	while (!stop_flag) {
		size_t nfds = h.nconns + 2;

		if (nfds > pcap) {
			struct pollfd *np = realloc(pfds, nfds * 2 * sizeof(*np));

			if (np == NULL) {
				fprintf(stderr, "svc: out of memory\n");
				return 1;
			}
			pfds = np;
			pcap = nfds * 2;
		}
		pfds[0].fd = wake_pipe[0];
		pfds[0].events = POLLIN;
		pfds[1].fd = h.accept_paused ? -1 : h.lfd;
		pfds[1].events = POLLIN;
		for (i = 0; i < h.nconns; i++) {
			pfds[i + 2].fd = h.conns[i]->fd;
			pfds[i + 2].events = hconn_events(h.conns[i]);
		}
		for (i = 0; i < nfds; i++) {
			pfds[i].revents = 0;
		}
		if (poll(pfds, nfds, h.accept_paused ? 1000 : -1) < 0) {
			if (errno == EINTR) {
				continue;
			}
			perror("svc: poll");
			return 1;
		}
		/* As in main: connections are added only after the walk. */
		for (i = 0; i < h.nconns; i++) {
			struct hconn *c = h.conns[i];
			short re = pfds[i + 2].revents;
			int bad = 0;

			if (re == 0) {
				continue;
			}
			/* Reading is still possible after POLLHUP/POLLERR. */
			if (re & (POLLIN | POLLHUP | POLLERR)) {
				bad = hconn_read(c) < 0;
			}
			if (!bad) {
				bad = hconn_pump(&h, c) < 0;
			}
			if (bad) {
				hconn_free(c);
				h.conns[i] = NULL;
				h.accept_paused = 0;
			}
		}
		for (i = j = 0; i < h.nconns; i++) {
			if (h.conns[i] != NULL) {
				h.conns[j++] = h.conns[i];
			}
		}
		h.nconns = j;
		if (pfds[1].revents & POLLIN) {
			http_accept(&h);
		} else if (h.accept_paused && pfds[1].fd < 0) {
			h.accept_paused = 0;  /* try again next turn */
		}
	}
	for (i = 0; i < h.nconns; i++) {
		hconn_free(h.conns[i]);
	}
	free(h.conns);
	free(pfds);
	close(h.lfd);
	return 0;
}

/* ---- main ----------------------------------------------------------------- */

int
main(int argc, char **argv)
{
	struct svc s;
	struct pollfd *pfds = NULL;
	size_t pcap = 0, i, j;
	struct sigaction sa;
	struct rlimit rl;

	memset(&s, 0, sizeof(s));
	if ((argc == 3 || (argc == 4 && strcmp(argv[3], "rst") == 0))
	    && strcmp(argv[1], "echo") == 0) {
		s.mode = MODE_ECHO;
		s.rst = argc == 4;
	} else if (argc == 4 && strcmp(argv[1], "http") == 0) {
		s.mode = MODE_HTTP;
	} else if (argc == 4 && strcmp(argv[1], "source") == 0) {
		char *end;

		s.mode = MODE_SOURCE;
		errno = 0;
		s.nbytes = strtoull(argv[3], &end, 10);
		if (errno != 0 || *end != '\0' || end == argv[3]) {
			usage(stderr);
			return 2;
		}
	} else {
		usage(stderr);
		return 2;
	}

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (pipe(wake_pipe) < 0 || tl_set_nonblock(wake_pipe[0]) < 0
	    || tl_set_nonblock(wake_pipe[1]) < 0) {
		perror("svc: pipe");
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	if (s.mode == MODE_HTTP) {
		return http_main(argv[2], argv[3]);
	}
	s.lfd = listen_addr(argv[2]);
	if (s.lfd < 0) {
		return 1;
	}
	printf("ready\n");
	fflush(stdout);

	while (!stop_flag) {
		size_t n = s.nconns + 2;

		if (n > pcap) {
			struct pollfd *np = realloc(pfds, n * 2 * sizeof(*np));

			if (np == NULL) {
				fprintf(stderr, "svc: out of memory\n");
				return 1;
			}
			pfds = np;
			pcap = n * 2;
		}
		pfds[0].fd = wake_pipe[0];
		pfds[0].events = POLLIN;
		pfds[1].fd = s.lfd;
		pfds[1].events = POLLIN;
		for (i = 0; i < s.nconns; i++) {
			pfds[i + 2].fd = s.conns[i].fd;
			pfds[i + 2].events = conn_events(&s, &s.conns[i]);
		}
		for (i = 0; i < n; i++) {
			pfds[i].revents = 0;
		}
		if (poll(pfds, n, -1) < 0) {
			if (errno == EINTR) {
				continue;
			}
			perror("svc: poll");
			return 1;
		}
		/* Connections are only added below, after the walk, so each
		 * pfds slot still names the connection it was built for. */
		for (i = 0; i < s.nconns; i++) {
			struct conn *c = &s.conns[i];
			short re = pfds[i + 2].revents;
			int bad = 0;

			if (re == 0) {
				continue;
			}
			/* Reading is still possible after POLLHUP/POLLERR; the
			 * read reports what went wrong. */
			if (re & (POLLIN | POLLHUP | POLLERR)) {
				bad = conn_read(&s, c) < 0;
			}
			if (!bad && (re & (POLLOUT | POLLHUP | POLLERR))) {
				bad = conn_write(&s, c) < 0;
			}
			if (!bad && !c->shut && (re & POLLIN)) {
				/* Echo what was just read without another turn. */
				bad = conn_write(&s, c) < 0;
			}
			if (bad || (c->eof && c->shut)) {
				conn_free(c);
			}
		}
		for (i = j = 0; i < s.nconns; i++) {
			if (s.conns[i].fd >= 0) {
				s.conns[j++] = s.conns[i];
			}
		}
		s.nconns = j;
		if (pfds[1].revents & POLLIN) {
			accept_all(&s);
		}
	}
	for (i = 0; i < s.nconns; i++) {
		conn_free(&s.conns[i]);
	}
	free(s.conns);
	free(pfds);
	close(s.lfd);
	return 0;
}
