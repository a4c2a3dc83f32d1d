/*
 * What server.c and client.c share: logging, time, randomness, addresses,
 * sockets, the frame codec, key derivation and the relay.
 */
#ifdef __linux__
#define _GNU_SOURCE     /* splice(2), before any system header */
#endif
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "common.h"
#include "sha256.h"

/* Big-endian, byte by byte: the wire's only integer helpers. */
static void
put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint16_t
get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* ==== logging ============================================================ */

static enum log_level log_level = LOG_NORMAL;

void
log_set_level(enum log_level level)
{
	log_level = level;
}

static void
log_line(const char *fmt, va_list ap)
{
	int saved = errno;
	char stamp[32], msg[1024];
	time_t t = time(NULL);
	struct tm tm;
	size_t n;

	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(fmt);
	/* One write per line, so lines from two processes sharing a terminal
	 * or file don't interleave mid-line. */
	if (n > 0 && fmt[n - 1] == ':') {
		fprintf(stderr, "%s %s %s\n", stamp, msg, strerror(saved));
	} else {
		fprintf(stderr, "%s %s\n", stamp, msg);
	}
	fflush(stderr);
	errno = saved;
}

void
log_info(const char *fmt, ...)
{
	va_list ap;

	if (log_level < LOG_NORMAL) {
		return;
	}
	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}

void
log_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list ap;

	if (log_level < LOG_VERBOSE) {
		return;
	}
	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}

void
die(int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
	exit(status);
}

int
log_limited(struct log_limit *l, int64_t now, unsigned long *held)
{
	if (l->last != 0 && now - l->last < LOG_LIMIT_MS) {
		l->held++;
		return 0;
	}
	*held = l->held;
	l->held = 0;
	l->last = now;
	return 1;
}

/* ==== time and randomness ================================================ */

int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int random_fd = -1;

void
random_open(void)
{
	if (random_fd < 0 &&
	    (random_fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) < 0) {
		die(1, "open /dev/urandom:");
	}
}

void
random_bytes(void *buf, size_t len)
{
	uint8_t *p = buf;

	random_open();
	while (len > 0) {
		ssize_t n = read(random_fd, p, len);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			die(1, "read /dev/urandom:");
		}
		p += n;
		len -= (size_t)n;
	}
}

long
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		return -1;
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
}

/* ==== addresses ========================================================== */

static int
port_parse(const char *s, int allow_zero, const char **why)
{
	long v = 0;

	if (*s == '\0') {
		*why = "missing port";
		return -1;
	}
	for (; *s; s++) {
		if (*s < '0' || *s > '9') {
			*why = "port is not a number";
			return -1;
		}
		v = v * 10 + (*s - '0');
		if (v > 65535) {
			*why = "port out of range (1-65535)";
			return -1;
		}
	}
	if (v == 0 && !allow_zero) {
		*why = "port out of range (1-65535)";
		return -1;
	}
	return (int)v;
}

int
addr_parse(const char *s, int default_port, int allow_zero,
           struct hostport *hp, const char **why)
{
	const char *host = s, *port = NULL, *colon;
	size_t hostlen;
	int p;

	*why = NULL;
	if (*s == '[') {
		const char *end = strchr(s, ']');
		if (end == NULL) {
			*why = "missing ']' after IPv6 address";
			return -1;
		}
		host = s + 1;
		hostlen = (size_t)(end - host);
		if (end[1] == ':') {
			port = end + 2;
		} else if (end[1] != '\0') {
			*why = "expected ':PORT' after ']'";
			return -1;
		}
	} else if ((colon = strchr(s, ':')) != NULL && strchr(colon + 1, ':') == NULL) {
		hostlen = (size_t)(colon - s);
		port = colon + 1;
	} else if (colon != NULL) {
		hostlen = strlen(s);    /* a bare IPv6 address, no port */
	} else if (default_port < 0 || strspn(s, "0123456789") == strlen(s)) {
		hostlen = 0;            /* "8009": a port alone */
		port = s;
	} else {
		hostlen = strlen(s);    /* a host alone */
	}
	if (hostlen >= sizeof(hp->host)) {
		*why = "host name too long";
		return -1;
	}
	if (port == NULL && default_port < 0) {
		*why = "missing port";
		return -1;
	}
	if (hostlen == 0 && port == NULL) {
		*why = "empty address";
		return -1;
	}
	if (port != NULL) {
		if ((p = port_parse(port, allow_zero, why)) < 0) {
			return -1;
		}
	} else {
		p = default_port;
	}
	memcpy(hp->host, host, hostlen);
	hp->host[hostlen] = '\0';
	snprintf(hp->port, sizeof(hp->port), "%d", p);
	return 0;
}

const char *
addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, len, "?");
	}
	return buf;
}

void
addr_to_wire(const struct sockaddr *sa, struct wire_addr *w)
{
	memset(w, 0, sizeof(*w));
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		w->family = 4;
		memcpy(w->addr, &in->sin_addr, 4);
		w->port = ntohs(in->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		w->family = 6;
		memcpy(w->addr, &in6->sin6_addr, 16);
		w->port = ntohs(in6->sin6_port);
	}
}

const char *
wire_addr_str(const struct wire_addr *w, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (w->family == 4) {
		inet_ntop(AF_INET, w->addr, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, w->port);
	} else if (w->family == 6) {
		inet_ntop(AF_INET6, w->addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, w->port);
	} else {
		snprintf(buf, len, "?");
	}
	return buf;
}

/* As IPv6, mapping IPv4 to ::ffff:a.b.c.d. */
static void
wire_addr_v6(const struct wire_addr *w, struct wire_addr *v6)
{
	*v6 = *w;
	if (w->family == 4) {
		memset(v6->addr, 0, 16);
		v6->addr[10] = v6->addr[11] = 0xff;
		memcpy(v6->addr + 12, w->addr, 4);
		v6->family = 6;
	}
}

size_t
proxy_header(int version, const struct wire_addr *src,
             const struct wire_addr *dst, uint8_t *out)
{
	static const uint8_t sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
	                                 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
	struct wire_addr s = *src, d = *dst;
	char sip[INET6_ADDRSTRLEN], dip[INET6_ADDRSTRLEN];
	int known = src->family != 0 && dst->family != 0;
	int af;

	if (known && src->family != dst->family) {
		wire_addr_v6(src, &s);
		wire_addr_v6(dst, &d);
	}
	af = s.family == 4 ? AF_INET : AF_INET6;
	if (version == 1) {
		if (!known) {
			return (size_t)snprintf((char *)out, PROXY_MAX,
			                        "PROXY UNKNOWN\r\n");
		}
		inet_ntop(af, s.addr, sip, sizeof(sip));
		inet_ntop(af, d.addr, dip, sizeof(dip));
		return (size_t)snprintf((char *)out, PROXY_MAX,
		                        "PROXY TCP%c %s %s %u %u\r\n",
		                        s.family == 4 ? '4' : '6', sip, dip,
		                        s.port, d.port);
	}
	memcpy(out, sig, sizeof(sig));
	if (!known) {
		out[12] = 0x20;                   /* version 2, LOCAL */
		out[13] = 0x00;                   /* unspecified */
		put16(out + 14, 0);
		return 16;
	}
	out[12] = 0x21;                           /* version 2, PROXY */
	if (s.family == 4) {
		out[13] = 0x11;                   /* TCP over IPv4 */
		put16(out + 14, 12);
		memcpy(out + 16, s.addr, 4);
		memcpy(out + 20, d.addr, 4);
		put16(out + 24, s.port);
		put16(out + 26, d.port);
		return 28;
	}
	out[13] = 0x21;                           /* TCP over IPv6 */
	put16(out + 14, 36);
	memcpy(out + 16, s.addr, 16);
	memcpy(out + 32, d.addr, 16);
	put16(out + 48, s.port);
	put16(out + 50, d.port);
	return 52;
}

/* ==== memory ============================================================= */

/* What malloc has handed out and not had back, where the C library can
 * say (glibc 2.33 and later); the status line shows it, and a test holds
 * it steady across thousands of users, which RSS is too coarse for.
 * AddressSanitizer replaces malloc but not mallinfo2, which would then
 * report glibc's unused heap: say nothing rather than "0 KiB". */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HEAP_UNKNOWN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define HEAP_UNKNOWN 1
#endif

void
heap_note(char *buf, size_t len)
{
#if defined(__GLIBC__) && !defined(HEAP_UNKNOWN) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
	struct mallinfo2 mi = mallinfo2();

	snprintf(buf, len, "; heap: %zu KiB in use",
	         (mi.uordblks + mi.hblkhd + 1023) / 1024);
#else
	snprintf(buf, len, "%s", "");
#endif
}

/* ==== sockets ============================================================ */

int
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		return -1;
	}
	return 0;
}

int
accept_nb(int lfd, struct sockaddr *sa, socklen_t *len)
{
	int fd;

#if defined(__linux__) && defined(SOCK_NONBLOCK)
	/* One call instead of three per connection; a kernel or sandbox
	 * without accept4 gets the portable way. */
	fd = accept4(lfd, sa, len, SOCK_NONBLOCK);
	if (fd >= 0 || errno != ENOSYS) {
		return fd;
	}
#endif
	fd = accept(lfd, sa, len);
	if (fd >= 0 && set_nonblock(fd) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

void
set_nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void
set_keepalive(int fd)
{
	int one = 1;

	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
}

static void
set_port(struct sockaddr *sa, int port)
{
	if (sa->sa_family == AF_INET) {
		((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
	} else if (sa->sa_family == AF_INET6) {
		((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
	}
}

/* bind_error: the line for a failed bind, with what to do. */
static void
bind_error(const char *what, const char *where, int err, char *msg,
           size_t len)
{
	switch (err) {
	case EADDRINUSE:
		snprintf(msg, len, "bind %s (%s port): address in use — is "
		         "another server running? pick a free port with -%s",
		         where, what, what);
		break;
	case EACCES:
		snprintf(msg, len, "bind %s (%s port): permission denied — ports "
		         "below 1024 need privileges; pick a higher port with -%s",
		         where, what, what);
		break;
	case EADDRNOTAVAIL:
		snprintf(msg, len, "bind %s (%s port): address not available — "
		         "that address is not on this host", where, what);
		break;
	default:
		snprintf(msg, len, "bind %s (%s port): %s", where, what,
		         strerror(err));
		break;
	}
}

/* One listening socket for ai; -1 with msg set on failure. */
static int
listen_one(const struct addrinfo *ai, const char *what, char *msg, size_t len)
{
	char where[ADDR_STRLEN];
	int fd, one = 1;

	addr_str(ai->ai_addr, where, sizeof(where));
	if ((fd = socket(ai->ai_family, ai->ai_socktype, 0)) < 0) {
		snprintf(msg, len, "socket for %s (%s port): %s", where, what,
		         strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* Separate sockets for 0.0.0.0 and ::, so both can bind. */
	if (ai->ai_family == AF_INET6) {
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	}
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		bind_error(what, where, errno, msg, len);
		close(fd);
		return -1;
	}
	/* The kernel trims the backlog to net.core.somaxconn. */
	if (listen(fd, 4096) != 0 || set_nonblock(fd) != 0) {
		snprintf(msg, len, "listen %s (%s port): %s", where, what,
		         strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int
listen_on(const struct hostport *hp, const char *what, int *fds, int max,
          char *msg, size_t len)
{
	struct addrinfo hints, *res, *ai;
	int n = 0, rc, i;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_ADDRCONFIG;
	rc = getaddrinfo(hp->host[0] ? hp->host : NULL, hp->port, &hints, &res);
	if (rc != 0) {
		snprintf(msg, len, "%s address %s: %s — check the host name in -%s",
		         what, hp->host, gai_strerror(rc), what);
		return -1;
	}
	for (ai = res; ai != NULL && n < max; ai = ai->ai_next) {
		int fd = listen_one(ai, what, msg, len);
		if (fd < 0 && errno == EAFNOSUPPORT) {
			continue;   /* no IPv6 here: the IPv4 one will do */
		}
		if (fd < 0) {
			goto fail;
		}
		fds[n++] = fd;
		/* With port 0, the other addresses take the port the first one
		 * got, so each role has one port number. */
		if (n == 1 && strcmp(hp->port, "0") == 0) {
			struct addrinfo *rest;
			for (rest = ai->ai_next; rest != NULL; rest = rest->ai_next) {
				set_port(rest->ai_addr, local_port(fd));
			}
		}
	}
	freeaddrinfo(res);
	if (n == 0) {
		snprintf(msg, len, "%s port %s: no address to listen on", what,
		         hp->port);
		return -1;
	}
	return n;
fail:
	freeaddrinfo(res);
	for (i = 0; i < n; i++) {
		close(fds[i]);
	}
	return -1;
}

int
local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
		return 0;
	}
	if (ss.ss_family == AF_INET) {
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	}
	if (ss.ss_family == AF_INET6) {
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	return 0;
}

int
connect_start(const struct sockaddr *sa, socklen_t len)
{
#if defined(__linux__) && defined(SOCK_NONBLOCK)
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK, 0);

	if (fd < 0) {
		return -1;
	}
#else
	int fd = socket(sa->sa_family, SOCK_STREAM, 0);

	if (fd < 0) {
		return -1;
	}
	if (set_nonblock(fd) != 0) {
		goto fail;
	}
#endif
	set_nodelay(fd);
	while (connect(fd, sa, len) != 0) {
		if (errno == EINPROGRESS) {
			return fd;
		}
		if (errno != EINTR) {
			goto fail;
		}
	}
	return fd;
fail:
	{
		int saved = errno;
		close(fd);
		errno = saved;
	}
	return -1;
}

int
connect_done(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
		return -1;
	}
	if (err != 0) {
		errno = err;
		return -1;
	}
	return 0;
}

/* ==== keys =============================================================== */

static void
mac3(const void *key, size_t keylen, const char *label, const void *a,
     size_t alen, const void *b, size_t blen, uint8_t out[PROOF_LEN])
{
	struct hmac_sha256 h;

	hmac_sha256_init(&h, key, keylen);
	hmac_sha256_update(&h, label, strlen(label));
	hmac_sha256_update(&h, a, alen);
	hmac_sha256_update(&h, b, blen);
	hmac_sha256_final(&h, out);
}

void
key_auth_proof(const char *token, const uint8_t cn[NONCE_LEN],
               const uint8_t sn[NONCE_LEN], uint8_t out[PROOF_LEN])
{
	mac3(token, strlen(token), "dialback auth", cn, NONCE_LEN, sn,
	     NONCE_LEN, out);
}

void
key_session(const char *token, const uint8_t cn[NONCE_LEN],
            const uint8_t sn[NONCE_LEN], uint8_t out[PROOF_LEN])
{
	mac3(token, strlen(token), "dialback session", cn, NONCE_LEN, sn,
	     NONCE_LEN, out);
}

void
key_join_proof(const uint8_t key[PROOF_LEN], const uint8_t id[USER_ID_LEN],
               uint8_t out[PROOF_LEN])
{
	mac3(key, PROOF_LEN, "dialback join", id, USER_ID_LEN, "", 0, out);
}

/* ==== frame codec ======================================================== */

static const char *const msg_names[MSG_TYPE_END] = {
	[MSG_HELLO] = "HELLO",
	[MSG_CHALLENGE] = "CHALLENGE",
	[MSG_AUTH] = "AUTH",
	[MSG_WELCOME] = "WELCOME",
	[MSG_ERROR] = "ERROR",
	[MSG_PING] = "PING",
	[MSG_PONG] = "PONG",
	[MSG_NEW_USER] = "NEW_USER",
	[MSG_USER_FAILED] = "USER_FAILED",
	[MSG_JOIN] = "JOIN",
	[MSG_TICKET] = "TICKET",
};

/* Payload sizes: [min, max]; fixed-size types have min == max. */
static const struct { uint16_t min, max; } msg_len[MSG_TYPE_END] = {
	[MSG_HELLO] = { 29, 29 },
	[MSG_CHALLENGE] = { 21, 21 },
	[MSG_AUTH] = { PROOF_LEN + 4, PROOF_LEN + 4 },
	[MSG_WELCOME] = { 6, 6 },
	[MSG_ERROR] = { 2, 1 + TEXT_MAX },
	[MSG_PING] = { 0, 0 },
	[MSG_PONG] = { 0, 0 },
	[MSG_NEW_USER] = { USER_ID_LEN + 2 * WIRE_ADDR_LEN,
	                   USER_ID_LEN + 2 * WIRE_ADDR_LEN },
	[MSG_USER_FAILED] = { USER_ID_LEN, USER_ID_LEN + TEXT_MAX },
	[MSG_JOIN] = { USER_ID_LEN + PROOF_LEN, USER_ID_LEN + PROOF_LEN },
	[MSG_TICKET] = { USER_ID_LEN, USER_ID_LEN },
};

const char *
msg_name(unsigned type)
{
	if (type == 0 || type >= MSG_TYPE_END) {
		return "unknown";
	}
	return msg_names[type];
}

/* Copy peer text, keeping printable ASCII only, so it is safe to log:
 * not even C1 controls (0x9b is CSI to some terminals) get through. */
static void
text_get(char *dst, const uint8_t *src, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		dst[i] = (src[i] < 0x20 || src[i] > 0x7e) ? '?' : (char)src[i];
	}
	dst[n] = '\0';
}

static size_t
text_put(uint8_t *dst, const char *text)
{
	size_t n = strnlen(text, TEXT_MAX);

	memcpy(dst, text, n);
	return n;
}

static int
wire_addr_get(const uint8_t *p, struct wire_addr *w)
{
	w->family = p[0];
	memcpy(w->addr, p + 1, 16);
	w->port = get16(p + 17);
	return (w->family == 0 || w->family == 4 || w->family == 6) ? 0 : -1;
}

static void
wire_addr_put(uint8_t *p, const struct wire_addr *w)
{
	p[0] = w->family;
	memcpy(p + 1, w->addr, 16);
	put16(p + 17, w->port);
}

/* A HELLO or CHALLENGE starts with magic and version whatever the version,
 * so a mismatch can be named instead of looking like garbage. */
static int
versioned(uint8_t type)
{
	return type == MSG_HELLO || type == MSG_CHALLENGE;
}

enum frame_result
frame_decode(const uint8_t *buf, size_t len, struct msg *m, size_t *used)
{
	const uint8_t *p = buf + FRAME_HDR;
	uint16_t plen;
	uint8_t type;

	if (len < 1) {
		return FRAME_MORE;
	}
	type = buf[0];
	if (type == 0 || type >= MSG_TYPE_END) {
		return FRAME_BAD;
	}
	if (len < FRAME_HDR) {
		return FRAME_MORE;
	}
	plen = get16(buf + 1);
	if (plen > FRAME_MAX) {
		return FRAME_BAD;
	}
	/* Judge the length from the header alone, before waiting for a
	 * payload that may never come. */
	if (versioned(type) ? plen < PROTO_MAGIC_LEN + 1
	    : plen < msg_len[type].min || plen > msg_len[type].max) {
		return FRAME_BAD;
	}
	if (len < (size_t)FRAME_HDR + plen) {
		return FRAME_MORE;
	}
	memset(m, 0, sizeof(*m));
	m->type = type;
	*used = FRAME_HDR + plen;
	if (versioned(type)) {
		if (memcmp(p, PROTO_MAGIC, PROTO_MAGIC_LEN) != 0) {
			return FRAME_BAD;
		}
		m->version = p[PROTO_MAGIC_LEN];
		if (m->version != PROTO_VERSION) {
			return FRAME_OK;
		}
		if (plen != msg_len[type].min) {
			return FRAME_BAD;
		}
		p += PROTO_MAGIC_LEN + 1;
	}
	switch (type) {
	case MSG_HELLO:
		memcpy(m->nonce, p, NONCE_LEN);
		memcpy(m->run_id, p + NONCE_LEN, RUN_ID_LEN);
		break;
	case MSG_CHALLENGE:
		memcpy(m->nonce, p, NONCE_LEN);
		break;
	case MSG_AUTH:
		memcpy(m->proof, p, PROOF_LEN);
		m->public_port = get16(p + PROOF_LEN);
		m->pool = get16(p + PROOF_LEN + 2);
		break;
	case MSG_WELCOME:
		m->tunnel_port = get16(p);
		m->public_port = get16(p + 2);
		m->heartbeat_s = get16(p + 4);
		break;
	case MSG_ERROR:
		m->code = p[0];
		text_get(m->text, p + 1, plen - 1u);
		break;
	case MSG_NEW_USER:
		memcpy(m->user_id, p, USER_ID_LEN);
		if (wire_addr_get(p + USER_ID_LEN, &m->src) != 0 ||
		    wire_addr_get(p + USER_ID_LEN + WIRE_ADDR_LEN, &m->dst) != 0) {
			return FRAME_BAD;
		}
		break;
	case MSG_USER_FAILED:
		memcpy(m->user_id, p, USER_ID_LEN);
		text_get(m->text, p + USER_ID_LEN, plen - (size_t)USER_ID_LEN);
		break;
	case MSG_JOIN:
		memcpy(m->user_id, p, USER_ID_LEN);
		memcpy(m->proof, p + USER_ID_LEN, PROOF_LEN);
		break;
	case MSG_TICKET:
		memcpy(m->user_id, p, USER_ID_LEN);
		break;
	default:
		break;   /* PING, PONG: no payload */
	}
	return FRAME_OK;
}

size_t
frame_encode(uint8_t *out, const struct msg *m)
{
	uint8_t *p = out + FRAME_HDR;
	size_t plen;

	if (versioned(m->type)) {
		memcpy(p, PROTO_MAGIC, PROTO_MAGIC_LEN);
		p[PROTO_MAGIC_LEN] = PROTO_VERSION;
		p += PROTO_MAGIC_LEN + 1;
	}
	switch (m->type) {
	case MSG_HELLO:
		memcpy(p, m->nonce, NONCE_LEN);
		memcpy(p + NONCE_LEN, m->run_id, RUN_ID_LEN);
		p += NONCE_LEN + RUN_ID_LEN;
		break;
	case MSG_CHALLENGE:
		memcpy(p, m->nonce, NONCE_LEN);
		p += NONCE_LEN;
		break;
	case MSG_AUTH:
		memcpy(p, m->proof, PROOF_LEN);
		put16(p + PROOF_LEN, m->public_port);
		put16(p + PROOF_LEN + 2, m->pool);
		p += PROOF_LEN + 4;
		break;
	case MSG_WELCOME:
		put16(p, m->tunnel_port);
		put16(p + 2, m->public_port);
		put16(p + 4, m->heartbeat_s);
		p += 6;
		break;
	case MSG_ERROR:
		p[0] = m->code;
		p += 1 + text_put(p + 1, m->text[0] ? m->text : "error");
		break;
	case MSG_NEW_USER:
		memcpy(p, m->user_id, USER_ID_LEN);
		wire_addr_put(p + USER_ID_LEN, &m->src);
		wire_addr_put(p + USER_ID_LEN + WIRE_ADDR_LEN, &m->dst);
		p += USER_ID_LEN + 2 * WIRE_ADDR_LEN;
		break;
	case MSG_USER_FAILED:
		memcpy(p, m->user_id, USER_ID_LEN);
		p += USER_ID_LEN + text_put(p + USER_ID_LEN, m->text);
		break;
	case MSG_JOIN:
		memcpy(p, m->user_id, USER_ID_LEN);
		memcpy(p + USER_ID_LEN, m->proof, PROOF_LEN);
		p += USER_ID_LEN + PROOF_LEN;
		break;
	case MSG_TICKET:
		memcpy(p, m->user_id, USER_ID_LEN);
		p += USER_ID_LEN;
		break;
	default:
		break;
	}
	plen = (size_t)(p - out) - FRAME_HDR;
	out[0] = m->type;
	put16(out + 1, (uint16_t)plen);
	return FRAME_HDR + plen;
}

/* Send what the socket takes; *sent says how much.  -1 on an error. */
static int
send_some(int fd, const uint8_t *p, size_t n, size_t *sent)
{
	*sent = 0;
	while (*sent < n) {
		ssize_t k = send(fd, p + *sent, n - *sent, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				return 0;
			}
			return -1;
		}
		*sent += (size_t)k;
	}
	return 0;
}

/* ==== frame buffers ====================================================== */

int
fbuf_init(struct fbuf *b, size_t cap)
{
	uint8_t *data;

	if (cap < FRAME_HDR + FRAME_MAX) {
		cap = FRAME_HDR + FRAME_MAX;
	}
	if ((data = realloc(b->data, cap)) == NULL) {
		return -1;
	}
	b->data = data;
	b->cap = cap;
	return 0;
}

void
fbuf_free(struct fbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void
send_now(int fd, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = frame_encode(frame, m);

	if (send(fd, frame, n, MSG_NOSIGNAL) < 0) {
		/* the peer is going anyway; the caller logs why */
	}
}

int
fbuf_put(struct fbuf *b, const struct msg *m)
{
	uint8_t frame[FRAME_HDR + FRAME_MAX];
	size_t n = frame_encode(frame, m);

	if (b->len + n > b->cap) {
		return -1;
	}
	memcpy(b->data + b->len, frame, n);
	b->len += n;
	return 0;
}

int
fbuf_flush(struct fbuf *b, int fd)
{
	size_t sent;
	int rc = send_some(fd, b->data, b->len, &sent);

	memmove(b->data, b->data + sent, b->len - sent);
	b->len -= sent;
	return rc;
}

int
fbuf_fill(struct fbuf *b, int fd)
{
	for (;;) {
		ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
		if (n > 0) {
			b->len += (size_t)n;
			return 1;
		}
		if (n == 0) {
			/* A full buffer reads 0 too; it always holds a whole frame
			 * (or a bad one), which the caller takes first. */
			return b->len == b->cap ? 1 : 0;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			return 1;
		}
		return -1;
	}
}

enum frame_result
fbuf_take(struct fbuf *b, struct msg *m)
{
	size_t used = 0;
	enum frame_result r = frame_decode(b->data, b->len, m, &used);

	if (r == FRAME_OK) {
		memmove(b->data, b->data + used, b->len - used);
		b->len -= used;
	}
	return r;
}

/* ==== relay ==============================================================
 *
 * Small messages are copied with read and send.  On Linux, once a read
 * fills the scratch buffer, the direction turns "bulk" and its bytes go
 * socket -> pipe -> socket with splice(2), never entering this process,
 * until a splice brings less than a buffer's worth.  Short connections
 * thus never take a pipe (measured: a new connection cost each process a
 * pipe2, five fcntl and two close), and bulk costs a third less CPU than
 * copying it would (0.30-0.36 s per GiB against 0.47-0.54, download).
 * Elsewhere, or with DIALBACK_NO_SPLICE set (how the tests cover the
 * copy-only path), everything is copied.
 */

/*
 * Bytes move through one scratch buffer: read, then written straight to the
 * sink.  A direction takes a buffer of its own only when the sink pushes
 * back, and gives it back once drained, so an idle pair holds no buffer and
 * steady traffic mallocs nothing (drained buffers wait in a small pool).
 */
#define RELAY_SPARE  16         /* drained buffers (and pipes) kept for reuse */
#define RELAY_BURST  8          /* reads per direction per turn, at most */

#define SPLICE_CHUNK (1 << 20)  /* ask for this much; the pipe limits it */

static uint8_t relay_scratch[RELAY_BUF];
static uint8_t *relay_spare[RELAY_SPARE];
static int relay_nspare;
static int pipe_spare[RELAY_SPARE][2];  /* empty pipes, kept for reuse */
static int pipe_nspare;
/* Pipes hold up to 1 MiB (the kernel's default pipe-max-size): measured
 * on the benchmark's download, the server's CPU per GiB fell from
 * 0.50-0.63 s with 64 KiB pipes to 0.26-0.35 s.  Pages are only taken
 * while bytes wait, i.e. while a sink pushes back.  Where the kernel
 * refuses, pipes keep its default; pipe_size is what they really hold. */
#define PIPE_WANT (1 << 20)
static size_t pipe_size = RELAY_BUF;
static int relay_live;                  /* relays between init and close */

/* With no relay left, the spares go back to the system: an idle process
 * holds exactly the descriptors and memory it started with. */
static void
spares_release(void)
{
	while (relay_nspare > 0) {
		free(relay_spare[--relay_nspare]);
	}
	while (pipe_nspare > 0) {
		pipe_nspare--;
		close(pipe_spare[pipe_nspare][0]);
		close(pipe_spare[pipe_nspare][1]);
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
pipe_take(int p[2])
{
	if (pipe_nspare > 0) {
		pipe_nspare--;
		p[0] = pipe_spare[pipe_nspare][0];
		p[1] = pipe_spare[pipe_nspare][1];
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
			pipe_size = (size_t)got;
		}
	}
#endif
	return 0;
}

/* Give back a pipe; an empty one is kept, one with bytes left is closed. */
static void
pipe_give(struct relay_dir *rd)
{
	if (rd->pipe[0] < 0) {
		return;
	}
	if (rd->piped == 0 && pipe_nspare < RELAY_SPARE) {
		pipe_spare[pipe_nspare][0] = rd->pipe[0];
		pipe_spare[pipe_nspare][1] = rd->pipe[1];
		pipe_nspare++;
	} else {
		close(rd->pipe[0]);
		close(rd->pipe[1]);
	}
	rd->pipe[0] = rd->pipe[1] = -1;
	rd->piped = 0;
	rd->pipe_full = 0;
}

static uint8_t *
buf_take(void)
{
	if (relay_nspare > 0) {
		return relay_spare[--relay_nspare];
	}
	return malloc(RELAY_BUF);
}

static void
buf_give(uint8_t *b)
{
	if (b == NULL) {
		return;
	}
	if (relay_nspare < RELAY_SPARE) {
		relay_spare[relay_nspare++] = b;
	} else {
		free(b);
	}
}

void
relay_init(struct relay *r, int fd0, int fd1)
{
	static int use_splice = -1;
	int d;

	if (use_splice < 0) {
		use_splice = splice_wanted();
	}
	memset(r, 0, sizeof(*r));
	r->fd[0] = fd0;
	r->fd[1] = fd1;
	r->splice = use_splice;
	r->live = 1;
	relay_live++;
	for (d = 0; d < 2; d++) {
		r->dir[d].pipe[0] = r->dir[d].pipe[1] = -1;
	}
}

/* Keep n bytes that the sink didn't take; -1 if out of memory. */
static int
relay_keep(struct relay_dir *rd, const uint8_t *data, size_t n)
{
	if (rd->buf == NULL && (rd->buf = buf_take()) == NULL) {
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
	return relay_keep(&r->dir[d], data, n);
}

static int
relay_can_read(const struct relay_dir *rd)
{
	return !rd->eof && !rd->pipe_full &&
	       (rd->buf == NULL || rd->off + rd->len < RELAY_BUF);
}

void
relay_events(const struct relay *r, short ev[2])
{
	int d;

	ev[0] = ev[1] = 0;
	for (d = 0; d < 2; d++) {
		if (relay_can_read(&r->dir[d])) {
			ev[d] |= POLLIN;
		}
		if (r->dir[d].len > 0 || r->dir[d].piped > 0) {
			ev[1 - d] |= POLLOUT;
		}
	}
}

static enum relay_state
relay_fail(struct relay *r, int side, const char *op)
{
	r->err_side = side;
	r->err_op = op;
	r->err_no = errno;
	return RELAY_FAIL;
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
	pipe_give(rd);
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
		buf_give(rd->buf);
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

	for (i = 0; i < RELAY_BURST && relay_can_read(rd); i++) {
		ssize_t n;

		if (rd->pipe[0] < 0 && pipe_take(rd->pipe) != 0) {
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
		if ((size_t)n < pipe_size) {
			break;
		}
	}
	if (rd->piped == 0) {
		pipe_give(rd);
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

	for (i = 0; i < RELAY_BURST && relay_can_read(rd); i++) {
		uint8_t *into = rd->buf ? rd->buf + rd->off + rd->len : relay_scratch;
		size_t room = rd->buf ? RELAY_BUF - rd->off - rd->len : RELAY_BUF;
		ssize_t n;
		size_t sent = 0;

		do {
			n = read(r->fd[d], into, room);
		} while (n < 0 && errno == EINTR);
		if (n == 0) {
			rd->eof = 1;
			return 0;
		}
		if (n < 0) {
			*op = "read";
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
		}
		rd->bytes += (uint64_t)n;
		*op = "write";
		if (rd->buf != NULL) {
			rd->len += (size_t)n;
			if (relay_drain(r, d) != 0) {
				return -1;
			}
		} else {
			if (send_some(r->fd[1 - d], relay_scratch, (size_t)n, &sent) != 0) {
				return -1;
			}
			if (sent < (size_t)n &&
			    relay_keep(rd, relay_scratch + sent, (size_t)n - sent) != 0) {
				*op = "buffer";
				return -1;
			}
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

enum relay_state
relay_step(struct relay *r, const short revents[2])
{
	int d;
	const char *op = "read";

	for (d = 0; d < 2; d++) {
		struct relay_dir *rd = &r->dir[d];
		int src = d, dst = 1 - d, rc = 0;

		if ((rd->len > 0 || rd->piped > 0) &&
		    (revents[dst] & (POLLOUT | POLLHUP | POLLERR))) {
			if (relay_drain(r, d) != 0) {
				return relay_fail(r, dst, "write");
			}
		}
		/* Order: bytes kept in the buffer (a prefill, a backlog) are
		 * older than any in the pipe, so nothing is spliced while the
		 * buffer holds some, and nothing copied while the pipe does. */
		if (revents[src] & (POLLIN | POLLHUP | POLLERR)) {
			rc = (rd->bulk || rd->piped > 0) && rd->len == 0
			     ? relay_splice(r, d, &op) : relay_move(r, d, &op);
		}
		if (rc != 0) {
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

	for (i = 0; i < 2; i++) {
		if (r->fd[i] >= 0) {
			close(r->fd[i]);
			r->fd[i] = -1;
		}
		buf_give(r->dir[i].buf);
		r->dir[i].buf = NULL;
		r->dir[i].len = 0;
		pipe_give(&r->dir[i]);
	}
	if (r->live) {
		r->live = 0;
		if (--relay_live == 0) {
			spares_release();
		}
	}
}

/* ==== command line and signals =========================================== */

int
flags_parse(int argc, char **argv, const struct flag *flags, char *err,
            size_t errlen)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *arg = argv[i], *name, *eq;
		const struct flag *f;
		size_t n;

		if (arg[0] != '-' || arg[1] == '\0') {
			snprintf(err, errlen, "unexpected argument '%s'", arg);
			return -1;
		}
		name = arg + (arg[1] == '-' ? 2 : 1);
		eq = strchr(name, '=');
		n = eq ? (size_t)(eq - name) : strlen(name);
		for (f = flags; f->name != NULL; f++) {
			if (strlen(f->name) == n && strncmp(f->name, name, n) == 0) {
				break;
			}
		}
		if (f->name == NULL) {
			snprintf(err, errlen, "unknown flag '%s'", arg);
			return -1;
		}
		if (f->is_set != NULL) {
			if (eq != NULL) {
				snprintf(err, errlen, "flag -%s takes no value", f->name);
				return -1;
			}
			*f->is_set = 1;
		} else if (eq != NULL) {
			*f->value = eq + 1;
		} else if (i + 1 < argc) {
			*f->value = argv[++i];
		} else {
			snprintf(err, errlen, "flag -%s needs a value", f->name);
			return -1;
		}
	}
	return 0;
}

static int sig_pipe_wr = -1;

static void
on_signal(int sig)
{
	int saved = errno;
	uint8_t b = (uint8_t)sig;

	/* Nothing else is async-signal-safe enough to do here; the loop sees
	 * the byte on its next poll. */
	if (write(sig_pipe_wr, &b, 1) < 0) {
		/* the pipe is full: plenty of signals are pending already */
	}
	errno = saved;
}

int
signal_take(int fd)
{
	uint8_t b;

	return read(fd, &b, 1) == 1 ? b : 0;
}

int
signals_setup(void)
{
	struct sigaction sa;
	int p[2];

	if (pipe(p) != 0 || set_nonblock(p[0]) != 0 || set_nonblock(p[1]) != 0) {
		die(1, "pipe:");
	}
	sig_pipe_wr = p[1];
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	return p[0];
}
