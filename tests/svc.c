/*
 * svc: the local service the end-to-end tests forward to.
 *
 *     tests/svc echo ADDR            echo every connection's bytes back
 *     tests/svc source ADDR NBYTES   send NBYTES of the seed-1 stream, close
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

enum mode { MODE_ECHO, MODE_SOURCE };

struct conn {
	int fd;
	uint8_t *buf;
	size_t off, len;         /* pending bytes are buf[off..off+len) */
	int eof;                 /* the peer shut its side */
	int shut;                /* we shut ours */
	uint64_t sent;           /* source: stream bytes sent so far */
	struct tl_stream stream; /* source: where the stream stands */
};

struct svc {
	enum mode mode;
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
	fprintf(f, "usage: svc echo ADDR\n"
	           "       svc source ADDR NBYTES\n");
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
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
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
	if (c->fd >= 0) {
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

/* conn_read: take what the socket has.  -1 if the connection failed. */
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
	if (argc == 3 && strcmp(argv[1], "echo") == 0) {
		s.mode = MODE_ECHO;
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
