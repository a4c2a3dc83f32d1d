/*
 * dialback client: runs next to the services.  For each -local it holds
 * a control connection (a session) to the server; for each NEW_USER on
 * one, that service's user connects to the local service, dials the
 * server's tunnel port, sends a JOIN and relays.  One event loop
 * (loop.c) for all of it; every socket non-blocking, every connect
 * asynchronous.  This file: flags, the loop, timers, status; the rest in
 * client_ctl.c and client_user.c (see client.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"
#include "crypto.h"
#include "metrics.h"


static const char usage_text[] =
"usage: %s -remote HOST[:PORT][,HOST[:PORT]...]\n"
"                [-local [PUBLIC=]HOST:PORT]... [-port N] [-tunnel HOST:PORT]\n"
"                [-pool N] [-token SECRET] [-secrets FILE] [-plaintext]\n"
"                [-proxy-protocol v1|v2]\n"
"                [-metrics ADDR] [-config FILE] [-version] [-v | -q]\n"
"  -remote HOST[:PORT],...\n"
"                       the server's control address (port default 8009);\n"
"                       with several, each attempt takes the next\n"
"  -local [PUBLIC=]HOST:PORT\n"
"                       a service to expose (default 127.0.0.1:8080; a port\n"
"                       alone is on 127.0.0.1); repeat it for more services,\n"
"                       all but one naming their public port (0: any free)\n"
"  -port N              the public port of the -local without PUBLIC= (in the\n"
"                       server's -ports range; 0: any free one there)\n"
"  -tunnel HOST:PORT    dial tunnels here, not the tunnel port the server\n"
"                       names on the -remote host (for remapped ports)\n"
"  -pool N              keep N tunnels dialed ahead for new users (0-128; 0 = none;\n"
"                       default: as many as users lately arrived in 2 s)\n"
"  -token SECRET        the server's token (or DIALBACK_TOKEN)\n"
"  -secrets FILE        each service's secret by its public port: lines PORT\n"
"                       SECRET or LO-HI SECRET, as the server's file (or\n"
"                       DIALBACK_SECRETS); ports it does not name use -token\n"
"  -plaintext           tunnels carry raw bytes, unencrypted (server must allow)\n"
"  -proxy-protocol v1|v2\n"
"                       tell the service each user's address (PROXY protocol)\n"
"  -metrics ADDR        serve GET /metrics (Prometheus) and GET / (a status\n"
"                       page) on ADDR; a bare port means 127.0.0.1 (default off)\n"
"  -config FILE         read these flags from FILE, one \"word value\" a line;\n"
"                       the command line wins (# starts a comment)\n"
"  -version             print the version and exit\n"
"  -v, -q               more logging / warnings only\n";

void
close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* "[9001] ": how lines name a service, when there are several. */
static const char *
svc_name(const struct service *s, char *buf, size_t len)
{
	if (s->cl->nsvc < 2) {
		buf[0] = '\0';
	} else if (s->public_port != 0 || s->want_port != 0) {
		snprintf(buf, len, "[%d] ", s->public_port ? s->public_port
		                                           : s->want_port);
	} else {
		snprintf(buf, len, "[%s] ", s->any ? "any port" : "default port");
	}
	return buf;
}

void
svc_log(const struct service *s, enum log_level level, const char *fmt, ...)
{
	char msg[1024], name[32];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_at(level, "%s%s", svc_name(s, name, sizeof(name)), msg);
}

static int
relaying_count(const struct client *cl)
{
	const struct cuser *u;
	int i, n = 0;

	for (i = 0; i < cl->nsvc; i++) {
		for (u = cl->svc[i].relaying; u != NULL; u = u->next) {
			n++;
		}
	}
	return n;
}

/* The worst status of the stopped services, or -1 while one runs. */
static int
all_stopped(const struct client *cl)
{
	int i, worst = 0;

	for (i = 0; i < cl->nsvc; i++) {
		if (cl->svc[i].state != C_STOPPED) {
			return -1;
		}
		if (cl->svc[i].exit_status > worst) {
			worst = cl->svc[i].exit_status;
		}
	}
	return worst;
}

void
svc_stopped(struct client *cl, struct service *s)
{
	int n;

	(void)s;
	if (all_stopped(cl) < 0 || (n = relaying_count(cl)) == 0) {
		return;
	}
	log_info("exiting once %d relaying connection%s finish%s", n,
	         n == 1 ? "" : "s", n == 1 ? "es" : "");
}

/* ==== the loop =========================================================== */

/* A service's state, for the status line and the metrics. */
static const char *const state_names[] = {
	[C_IDLE] = "waiting to reconnect",
	[C_CONNECTING] = "connecting",
	[C_HELLO_SENT] = "handshaking",
	[C_AUTH_SENT] = "handshaking",
	[C_ATTACHED] = "attached",
	[C_STOPPED] = "stopped",
};

/* SIGUSR1: a status line for each service in the log. */
static void
log_status(struct client *cl)
{
	char heap[64];
	int i;

	heap_note(heap, sizeof(heap));
	for (i = 0; i < cl->nsvc; i++) {
		const struct service *s = &cl->svc[i];
		int relaying = 0, starting = 0;
		uint64_t in = 0, out = 0;
		struct cuser *u;

		for (u = s->relaying; u != NULL; u = u->next) {
			relaying++;
			in += u->relay.dir[0].bytes;
			out += u->relay.dir[1].bytes;
		}
		for (u = s->users; u != NULL; u = u->next) {
			starting++;
		}
		svc_log(s, LOG_NORMAL, "status: up %llds; %s to %s, public port "
		        "%d; users: %d relaying, %d connecting, %llu in all; open "
		        "users' bytes: %llu in, %llu out%s",
		        (long long)(now_ms() - cl->started) / 1000, state_names[s->state],
		        s->server[0] ? s->server : cl->remote_arg, s->public_port,
		        relaying, starting, (unsigned long long)s->users_total,
		        (unsigned long long)in, (unsigned long long)out, heap);
	}
}

static int
dispatch(struct client *cl, const struct loop_event *ev, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		struct watch *w = ev[i].w;

		/* Closed, or watching another descriptor, since it fired. */
		if (ev[i].fd != w->fd) {
			continue;
		}
		switch ((enum kind)w->kind) {
		case K_SIGNAL:
			if (signal_take(cl->sig_fd) == SIGUSR1) {
				log_status(cl);
				break;
			}
			return -1;         /* SIGINT, SIGTERM or SIGHUP */
		case K_CTL:
			ctl_event(w->obj, ev[i].revents);
			break;
		case K_USER:
			user_event(w->obj, w->side, ev[i].revents);
			break;
		case K_METRICS:
			metrics_event(cl->metrics, w, ev[i].revents);
			break;
		}
	}
	return 0;
}

static void
flush_control(struct client *cl)
{
	int i;

	for (i = 0; i < cl->nsvc; i++) {
		ctl_flush(&cl->svc[i]);
	}
}

/* Everything timed, for every service; the next deadline, or -1. */
static int64_t
run_timers(struct client *cl, int64_t now)
{
	int64_t next = -1;
	int i, worst;

	for (i = 0; i < cl->nsvc; i++) {
		next = earliest(next, ctl_timers(&cl->svc[i], now));
		next = earliest(next, user_timers(&cl->svc[i], now));
	}
	next = earliest(next, metrics_timers(cl->metrics, now));
	if ((worst = all_stopped(cl)) >= 0 && relaying_count(cl) == 0) {
		cl->exit_status = worst;
	}
	return next;
}

static void
run(struct client *cl)
{
	while (cl->exit_status < 0) {
		struct loop_event *ev;
		int64_t now, next;
		int i, n, timeout;

		for (i = 0; i < cl->nsvc; i++) {
			if (cl->svc[i].held) {
				ctl_readable(&cl->svc[i], 0);
			}
		}
		now = now_ms();
		next = run_timers(cl, now);
		timeout = next < 0 ? -1 : (int)(next - now + 1);
		flush_control(cl);
		for (i = 0; i < cl->nsvc; i++) {
			ctl_sync(&cl->svc[i]);
		}
		user_sweep(cl);
		if (cl->exit_status >= 0) {
			break;
		}
		if ((n = loop_wait(cl->loop, timeout, &ev)) < 0) {
			die(1, "%s:", loop_backend(cl->loop));
		}
		if (dispatch(cl, ev, n) != 0) {
			cl->exit_status = 0;
		}
		flush_control(cl);
	}
}

/* ==== start-up =========================================================== */

static void
resolve_local(struct service *s, const struct hostport *hp)
{
	struct addrinfo hints, *res, *ai;
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(hp->host, hp->port, &hints, &res);
	if (rc != 0) {
		die(1, "-local %s: %s", s->local_arg, gai_strerror(rc));
	}
	for (ai = res; ai != NULL && s->nlocal < MAX_LOCAL_ADDRS; ai = ai->ai_next) {
		memcpy(&s->local[s->nlocal].sa, ai->ai_addr, ai->ai_addrlen);
		s->local[s->nlocal].len = ai->ai_addrlen;
		s->nlocal++;
	}
	freeaddrinfo(res);
}

/* A number 0..65535 and nothing else, or -1. */
static int
port_number(const char *p, size_t n)
{
	long v = 0;
	size_t i;

	if (n == 0 || n > 5) {
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9') {
			return -1;
		}
		v = v * 10 + (p[i] - '0');
	}
	return v > 65535 ? -1 : (int)v;
}

/* One address of -remote: HOST[:PORT], checked for what would only fail
 * later, at every retry, if let through. */
static void
parse_remote(const char *arg, const char *item, struct hostport *hp)
{
	const char *last = strrchr(item, ':');
	char why[64], pre[64];
	struct in6_addr a6;
	size_t n;

	if (*item == '\0') {
		usage_exit("-remote %s: an empty address in the list", arg);
	}
	if (strstr(item, "://") != NULL) {
		usage_exit("-remote %s: want HOST[:PORT], not a URL", item);
	}
	/* "::1:8009" is an IPv6 address; if a port was meant, it is hidden
	 * in the address, and the client would dial the wrong thing for ever. */
	if (*item != '[' && last != NULL && strchr(item, ':') != last &&
	    port_number(last + 1, strlen(last + 1)) >= 0 &&
	    (n = (size_t)(last - item)) < sizeof(pre)) {
		memcpy(pre, item, n);
		pre[n] = '\0';
		if (inet_pton(AF_INET6, pre, &a6) == 1) {
			usage_exit("-remote %s: ambiguous; write [%s]:%s for a port, "
			           "or [%s] for the address", item, pre, last + 1,
			           item);
		}
	}
	if (addr_parse(item, DEFAULT_CONTROL_PORT, 0, hp, why,
	               sizeof(why)) != 0 || hp->host[0] == '\0') {
		usage_exit("-remote %s: %s", item, hp->host[0] || why[0] == '\0'
		           ? "missing host" : why);
	}
}

static void
parse_remotes(struct client *cl, const char *remote)
{
	static char copy[1024];
	char *item, *comma;

	if (strlen(remote) >= sizeof(copy)) {
		usage_exit("-remote: too long");
	}
	snprintf(copy, sizeof(copy), "%s", remote);
	for (item = copy; item != NULL; item = comma) {
		if ((comma = strchr(item, ',')) != NULL) {
			*comma++ = '\0';
		}
		if (cl->nremote == MAX_REMOTES) {
			usage_exit("-remote %s: at most %d addresses", remote,
			           MAX_REMOTES);
		}
		parse_remote(remote, item, &cl->remote[cl->nremote++]);
	}
}

/* One -local: [PUBLIC=]HOST:PORT, or [PUBLIC=]PORT on 127.0.0.1.  Returns
 * whether it named its public port. */
static int
parse_local(struct service *s, const char *arg)
{
	const char *eq = strchr(arg, '='), *rest = eq ? eq + 1 : arg;
	struct hostport hp;
	char why[64];

	if (eq != NULL && (s->want_port = port_number(arg,
	                                              (size_t)(eq - arg))) < 0) {
		usage_exit("-local %s: PUBLIC= wants a port number (0: any free "
		           "one)", arg);
	}
	s->any = eq != NULL && s->want_port == 0;
	if (port_number(rest, strlen(rest)) > 0) {
		snprintf(hp.host, sizeof(hp.host), "127.0.0.1");
		snprintf(hp.port, sizeof(hp.port), "%s", rest);
	} else if (addr_parse(rest, -1, 0, &hp, why, sizeof(why)) != 0 ||
	           hp.host[0] == '\0') {
		usage_exit("-local %s: %s; want [PUBLIC=]HOST:PORT", arg,
		           hp.host[0] || why[0] == '\0' ? "missing host" : why);
	}
	snprintf(s->local_arg, sizeof(s->local_arg), strchr(hp.host, ':')
	         ? "[%s]:%s" : "%s:%s", hp.host, hp.port);
	resolve_local(s, &hp);
	return eq != NULL;
}

/* The services, one per -local; the one without PUBLIC= takes -port. */
static void
parse_locals(struct client *cl, const struct flag_list *locals,
             const char *port)
{
	static const char *const fallback = "127.0.0.1:8080";
	struct hostport php;
	int i, j, bare = -1;
	char why[64];

	cl->nsvc = locals->n > 0 ? locals->n : 1;
	if ((cl->svc = calloc((size_t)cl->nsvc, sizeof(*cl->svc))) == NULL) {
		die(1, "out of memory");
	}
	for (i = 0; i < cl->nsvc; i++) {
		struct service *s = &cl->svc[i];
		s->cl = cl;
		if (parse_local(s, locals->n > 0 ? locals->v[i] : fallback)) {
			continue;
		}
		if (bare >= 0) {
			usage_exit("-local %s: only one -local may go without "
			           "PUBLIC= (it takes -port); write PUBLIC=%s",
			           locals->v[i], locals->v[i]);
		}
		bare = i;
	}
	if (port != NULL) {
		if (addr_parse(port, -1, 1, &php, why, sizeof(why)) != 0 ||
		    php.host[0] != '\0') {
			usage_exit("-port %s: %s", port,
			           why[0] ? why : "want a port number");
		}
		if (bare < 0) {
			usage_exit("-port %s: every -local names its PUBLIC= port; "
			           "-port is for one without", port);
		}
		cl->svc[bare].want_port = atoi(php.port);
		cl->svc[bare].any = cl->svc[bare].want_port == 0;
	}
	for (i = 0; i < cl->nsvc; i++) {
		for (j = 0; j < i; j++) {
			if (cl->svc[i].want_port != 0 &&
			    cl->svc[i].want_port == cl->svc[j].want_port) {
				usage_exit("public port %d is asked for twice",
				           cl->svc[i].want_port);
			}
		}
	}
}

static void
parse_args(struct client *cl, int argc, char **argv)
{
	const char *remote = NULL, *token = NULL, *tunnel = NULL;
	const char *port = NULL, *proxy = NULL, *pool = NULL;
	static struct flag_list locals;
	char why[64];
	struct flag flags[] = {
		{ "remote", &remote, NULL, NULL },
		{ "local", NULL, NULL, &locals },
		{ "tunnel", &tunnel, NULL, NULL },
		{ "token", &token, NULL, NULL },
		{ "secrets", &cl->secrets_path, NULL, NULL },
		{ "plaintext", NULL, &cl->plaintext, NULL },
		{ "port", &port, NULL, NULL },
		{ "pool", &pool, NULL, NULL },
		{ "proxy-protocol", &proxy, NULL, NULL },
		{ "metrics", &cl->metrics_addr, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};

	flags_apply(argc, argv, flags, usage_text);
	if (cl->metrics_addr != NULL) {
		struct hostport mhp;
		char mwhy[128];

		if (metrics_parse(cl->metrics_addr, &mhp, mwhy, sizeof(mwhy)) != 0) {
			usage_exit("-metrics %s: %s", cl->metrics_addr, mwhy);
		}
	}
	if (remote == NULL) {
		usage_exit("-remote HOST is required");
	}
	parse_remotes(cl, remote);
	if (tunnel != NULL) {
		if (addr_parse(tunnel, -1, 0, &cl->tunnel, why, sizeof(why)) != 0) {
			usage_exit("-tunnel %s: %s; want HOST:PORT", tunnel, why);
		}
		cl->tunnel_set = 1;
	}
	cl->pool_auto = pool == NULL;
	cl->pool_want = POOL_MAX;
	if (pool != NULL) {
		char *end;
		long n = strtol(pool, &end, 10);
		if (*pool == '\0' || *end != '\0' || n < 0 || n > POOL_MAX) {
			usage_exit("-pool %s: want a number from 0 to "
			         "%d", pool, POOL_MAX);
		}
		cl->pool_want = (int)n;
	}
	if (proxy != NULL) {
		if (strcmp(proxy, "v1") == 0 || strcmp(proxy, "1") == 0) {
			cl->proxy_version = 1;
		} else if (strcmp(proxy, "v2") == 0 || strcmp(proxy, "2") == 0) {
			cl->proxy_version = 2;
		} else {
			usage_exit("-proxy-protocol %s: want v1 or v2",
			         proxy);
		}
	}
	cl->remote_arg = remote;
	if (token == NULL) {
		token = getenv("DIALBACK_TOKEN");
	}
	cl->token = token ? token : "";
	if (cl->secrets_path == NULL) {
		cl->secrets_path = getenv("DIALBACK_SECRETS");
	}
	parse_locals(cl, &locals, port);
}

/* The metrics callback (metrics.h): every service's numbers, as the
 * status line has them, and the users it could not serve by reason. */
static void
client_metrics(void *ctx, enum metrics_page page, struct mbuf *b)
{
	static const char *const reasons[FAIL_END] = {
		[FAIL_LOCAL] = "local_unreachable",
		[FAIL_TUNNEL] = "tunnel_unreachable",
		[FAIL_BUSY] = "client_busy",
	};
	struct client *cl = ctx;
	struct metrics_service *ms = calloc((size_t)cl->nsvc, sizeof(*ms));
	struct metrics_reason refused[FAIL_END];
	struct metrics_client mc;
	int i, r;

	if (ms == NULL) {
		return;
	}
	for (r = 0; r < FAIL_END; r++) {
		refused[r].reason = reasons[r];
		refused[r].n = 0;
	}
	for (i = 0; i < cl->nsvc; i++) {
		const struct service *s = &cl->svc[i];
		const struct cuser *u;

		ms[i].port = s->public_port;
		ms[i].local = s->local_arg;
		ms[i].state = state_names[s->state];
		ms[i].since = s->state == C_ATTACHED ? s->attached_at : 0;
		ms[i].users_total = s->users_total;
		ms[i].bytes_in = s->bytes_in;
		ms[i].bytes_out = s->bytes_out;
		for (u = s->relaying; u != NULL; u = u->next) {
			ms[i].users_active++;
			ms[i].bytes_in += u->relay.dir[0].bytes;
			ms[i].bytes_out += u->relay.dir[1].bytes;
		}
		for (u = s->users; u != NULL; u = u->next) {
			ms[i].users_connecting += u->state != U_POOL_DIAL &&
			                          u->state != U_POOL_IDLE;
		}
		for (r = 0; r < FAIL_END; r++) {
			refused[r].n += s->failed[r];
		}
	}
	memset(&mc, 0, sizeof(mc));
	mc.remote = cl->remote_arg;
	mc.started = cl->started;
	mc.svc = ms;
	mc.nsvc = cl->nsvc;
	mc.refused = refused;
	mc.nrefused = FAIL_END;
	mc.handshake_failures = cl->handshake_failures;
	metrics_client_write(b, page, &mc);
	free(ms);
}

/* A service before its first attempt: due at once, with its own run id. */
static void
svc_init(struct service *s)
{
	s->fd = -1;
	s->exit_status = -1;
	s->backoff_ms = BACKOFF_MIN_MS;
	s->state = C_IDLE;
	watch_init(&s->ctl_w, K_CTL, s, 0);
	if (fbuf_init(&s->in, CTL_IN_SIZE) != 0 ||
	    fbuf_init(&s->out, CTL_OUT_SIZE) != 0) {
		die(1, "out of memory");
	}
	random_bytes(s->run_id, RUN_ID_LEN);
	s->deadline = now_ms();
}

static void
client_free(struct client *cl)
{
	int i;

	for (i = 0; i < cl->nsvc; i++) {
		struct service *s = &cl->svc[i];
		while (s->users != NULL) {
			user_close(s->users, NULL);
		}
		while (s->relaying != NULL) {
			user_close(s->relaying, NULL);
		}
		ctl_free(s);
	}
	user_sweep(cl);
	metrics_close(cl->metrics);
	loop_unwatch(cl->loop, &cl->sig_w);
	close_fd(&cl->sig_fd);
	loop_free(cl->loop);
	free(cl->svc);
	cl->svc = NULL;
	secrets_free(&cl->secrets);
}

int
main(int argc, char **argv)
{
	struct client cl;
	int i;

	memset(&cl, 0, sizeof(cl));
	relay_pool_init(&cl.relays);
	cl.exit_status = -1;
	cl.sig_fd = -1;
	parse_args(&cl, argc, argv);
	if (cl.secrets_path != NULL) {
		char err[256];

		if (secrets_load(&cl.secrets, cl.secrets_path, err,
		                 sizeof(err)) != 0) {
			die(1, "%s", err);
		}
	}
	cl.sig_fd = signals_setup();
	random_open();
	cl.loop = loop_new();
	watch_init(&cl.sig_w, K_SIGNAL, NULL, 0);
	if (loop_watch(cl.loop, &cl.sig_w, cl.sig_fd, POLLIN) != 0) {
		die(1, "%s:", loop_backend(cl.loop));
	}
	raise_fd_limit();
	for (i = 0; i < cl.nsvc; i++) {
		svc_init(&cl.svc[i]);
	}
	if (cl.metrics_addr != NULL) {
		char err[256];

		cl.metrics = metrics_open(cl.loop, K_METRICS, cl.metrics_addr,
		                          client_metrics, &cl, err, sizeof(err));
		if (cl.metrics == NULL) {
			die(1, "%s", err);
		}
		log_info("metrics on port %d: GET /metrics, GET /",
		         metrics_port(cl.metrics));
	}
	cl.started = now_ms();
	run(&cl);
	client_free(&cl);
	return cl.exit_status;
}
