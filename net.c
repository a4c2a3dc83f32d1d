/*
 * Addresses (parsing, printing, the wire form, the PROXY header) and
 * sockets (non-blocking accept and connect, listening with errors that say
 * what to do).
 */
#ifdef __linux__
#define _GNU_SOURCE     /* accept4(2), before any system header */
#endif
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

/* ==== addresses ========================================================== */

static int
port_parse(const char *s, int allow_zero, char *why, size_t len)
{
	long v = 0;

	if (*s == '\0') {
		snprintf(why, len, "%s", "missing port");
		return -1;
	}
	for (; *s; s++) {
		if (*s < '0' || *s > '9') {
			snprintf(why, len, "%s", "port is not a number");
			return -1;
		}
		v = v * 10 + (*s - '0');
		if (v > 65535) {
			snprintf(why, len, "%s", "port out of range (1-65535)");
			return -1;
		}
	}
	if (v == 0 && !allow_zero) {
		snprintf(why, len, "%s", "port out of range (1-65535)");
		return -1;
	}
	return (int)v;
}

int
addr_parse(const char *s, int default_port, int allow_zero,
           struct hostport *hp, char *why, size_t len)
{
	const char *host = s, *port = NULL, *colon;
	size_t hostlen;
	int p;

	if (*s == '[') {
		const char *end = strchr(s, ']');
		if (end == NULL) {
			snprintf(why, len, "%s", "missing ']' after IPv6 address");
			return -1;
		}
		host = s + 1;
		hostlen = (size_t)(end - host);
		if (end[1] == ':') {
			port = end + 2;
		} else if (end[1] != '\0') {
			snprintf(why, len, "%s", "expected ':PORT' after ']'");
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
		snprintf(why, len, "%s", "host name too long");
		return -1;
	}
	if (port == NULL && default_port < 0) {
		snprintf(why, len, "%s", "missing port");
		return -1;
	}
	if (hostlen == 0 && port == NULL) {
		snprintf(why, len, "%s", "empty address");
		return -1;
	}
	if (port != NULL) {
		if ((p = port_parse(port, allow_zero, why, len)) < 0) {
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
		wire_put16(out + 14, 0);
		return 16;
	}
	out[12] = 0x21;                           /* version 2, PROXY */
	if (s.family == 4) {
		out[13] = 0x11;                   /* TCP over IPv4 */
		wire_put16(out + 14, 12);
		memcpy(out + 16, s.addr, 4);
		memcpy(out + 20, d.addr, 4);
		wire_put16(out + 24, s.port);
		wire_put16(out + 26, d.port);
		return 28;
	}
	out[13] = 0x21;                           /* TCP over IPv6 */
	wire_put16(out + 14, 36);
	memcpy(out + 16, s.addr, 16);
	memcpy(out + 32, d.addr, 16);
	wire_put16(out + 48, s.port);
	wire_put16(out + 50, d.port);
	return 52;
}

/* ==== CIDR blocks ======================================================== */

static const uint8_t v4_mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                       0xff, 0xff };

static int
is_mapped(const uint8_t ip[16])
{
	return memcmp(ip, v4_mapped, sizeof(v4_mapped)) == 0;
}

int
cidr_parse(const char *s, struct cidr *c, char *why, size_t len)
{
	char host[INET6_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	size_t hostlen = slash ? (size_t)(slash - s) : strlen(s);
	uint8_t v4[4];
	int max, i;
	long bits;

	memset(c, 0, sizeof(*c));
	if (hostlen == 0 || hostlen >= sizeof(host)) {
		snprintf(why, len, "%s", "want an IPv4 or IPv6 address, "
		         "optionally /BITS");
		return -1;
	}
	memcpy(host, s, hostlen);
	host[hostlen] = '\0';
	if (inet_pton(AF_INET, host, v4) == 1) {
		memcpy(c->addr, v4_mapped, sizeof(v4_mapped));
		memcpy(c->addr + 12, v4, 4);
		max = 32;
	} else if (inet_pton(AF_INET6, host, c->addr) == 1) {
		max = 128;
	} else {
		snprintf(why, len, "%s", "not an IPv4 or IPv6 address");
		return -1;
	}
	bits = max;
	if (slash != NULL) {
		const char *d = slash + 1;

		if (*d == '\0' || strlen(d) > 3 || strspn(d, "0123456789") !=
		    strlen(d)) {
			snprintf(why, len, "%s", "prefix length is not a number");
			return -1;
		}
		bits = strtol(d, NULL, 10);
		if (bits > max) {
			snprintf(why, len, "prefix length out of range (0-%d)", max);
			return -1;
		}
	}
	/* An IPv4 block counts its bits after the 96 of the mapped prefix;
	 * an IPv6 block inside ::ffff:0:0/96 is one too. */
	c->bits = (int)bits + (max == 32 ? 96 : 0);
	c->v4 = c->bits >= 96 && is_mapped(c->addr);
	for (i = 0; i < 16; i++) {
		int keep = c->bits - 8 * i;

		if (keep <= 0) {
			c->addr[i] = 0;
		} else if (keep < 8) {
			c->addr[i] &= (uint8_t)(0xff << (8 - keep));
		}
	}
	return 0;
}

int
addr_ip16(const struct sockaddr *sa, uint8_t ip[16])
{
	if (sa->sa_family == AF_INET) {
		memcpy(ip, v4_mapped, sizeof(v4_mapped));
		memcpy(ip + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
		return 0;
	}
	return -1;
}

int
cidr_match(const struct cidr *c, const uint8_t ip[16])
{
	int full = c->bits / 8, rest = c->bits % 8;

	if (is_mapped(ip) != c->v4) {
		return 0;
	}
	if (memcmp(ip, c->addr, (size_t)full) != 0) {
		return 0;
	}
	return rest == 0 ||
	       ((ip[full] ^ c->addr[full]) & (uint8_t)(0xff << (8 - rest))) == 0;
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

int
addr_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	}
	if (sa->sa_family == AF_INET6) {
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	}
	return 0;
}

void
addr_set_port(struct sockaddr *sa, int port)
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
	/* Separate sockets for 0.0.0.0 and ::, so both can bind.  An
	 * IPv4-mapped address (::ffff:127.0.0.1) can only be bound without
	 * it, and then serves IPv4 users seen as ::ffff:a.b.c.d. */
	if (ai->ai_family == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(
	        &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr)) {
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
				addr_set_port(rest->ai_addr, local_port(fd));
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
	return addr_port((struct sockaddr *)&ss);
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

int
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
