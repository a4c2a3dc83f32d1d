/*
 * The client's objects, shared by its three files:
 *
 *   client.c       main, flags, the event loop, timers, status
 *   client_ctl.c   a service's control connection: connect, handshake,
 *                  messages, retry
 *   client_user.c  users: local connect, tunnel dial, pool, relay
 *
 * A client serves one or more services (one per -local).  Each service is
 * its own session with the server: its own control connection, handshake,
 * run id, backoff, public port and pool; a user belongs to the service
 * that announced it.  All of them share the one event loop and the relay
 * pool.  As in the server, teardown marks objects dead and sweep() frees
 * them between turns; interest is registered as state changes (loop.c),
 * and relaying users sit on a list of their own that nothing per turn
 * walks.
 */
#ifndef DIALBACK_CLIENT_H
#define DIALBACK_CLIENT_H

#include <stdint.h>
#include <sys/socket.h>

#include "common.h"
#include "secrets.h"

#define BACKOFF_MIN_MS  500
#define BACKOFF_MAX_MS  30000
#define MUTE_TRIES      4     /* peers that take HELLO and never answer */
#define MAX_LOCAL_ADDRS 8
#define MAX_SERVICES    FLAG_LIST_MAX  /* one per -local */
#define MAX_REMOTES     8              /* -remote A,B,... */
#define CTL_IN_SIZE     (64 * 1024)  /* a burst of NEW_USERs in one read */
#define CTL_OUT_SIZE    (16 * 1024)
#define MAX_INFLIGHT    1024         /* users connecting, from NEW_USER,
                                      * in the whole client */
#define BUSY_GRACE_MS   1000         /* ... all stuck that long: refuse */

/* C_STOPPED: retrying cannot help (wrong token, port not offered ...);
 * the service is over, and the process once all are. */
enum ctl_state { C_IDLE, C_CONNECTING, C_HELLO_SENT, C_AUTH_SENT, C_ATTACHED,
                 C_STOPPED };

/*
 * A user being served.  Without a pool: connect to the local service, then
 * dial the tunnel and JOIN.  With one: dial and JOIN with a ticket ahead of
 * time, wait on that tunnel for its NEW_USER, then connect to the local
 * service.  Either way relay.fd[0] ends up the tunnel, fd[1] the service.
 */
enum user_state {
	U_LOCAL,        /* fd: local connect in progress */
	U_TUNNEL,       /* held: the local connection; fd: tunnel dial */
	U_POOL_DIAL,    /* fd: tunnel dial for a ticket */
	U_POOL_IDLE,    /* held: joined tunnel, waiting for its NEW_USER */
	U_POOL_LOCAL,   /* held: tunnel with its user; fd: local connect */
	U_RELAY
};

struct service;

struct cuser {
	struct cuser *next, *prev;     /* on its service's users or relaying,
	                                * or the client's dead */
	struct service *svc;           /* the service that announced it */
	int dead;
	struct watch w[2];             /* relay.fd[i]; before that w[0]: the
	                                * connect in progress, or a pooled
	                                * tunnel's wait */
	enum user_state state;
	int fd;                        /* the connect in progress */
	int held;                      /* the connection made before it */
	int local_idx;                 /* which local address is being tried */
	uint8_t id[USER_ID_LEN];
	unsigned session;              /* the session that announced it */
	int sealed;                    /* its tunnel carries records */
	struct seal tun_tx, tun_rx;    /* ... under these keys (from its id) */
	struct wire_addr src, dst;     /* user, and the public address it reached */
	char peer[ADDR_STRLEN];
	int64_t start, deadline;
	struct fbuf in;                /* pooled: NEW_USER and bytes behind it */
	struct relay relay;
};

struct local_addr {
	struct sockaddr_storage sa;
	socklen_t len;
};

/* One -local: a local service and its session with the server. */
/* Why a user could not be served, for -metrics (reason labels in
 * client.c). */
enum failure { FAIL_LOCAL, FAIL_TUNNEL, FAIL_BUSY, FAIL_END };

struct service {
	struct client *cl;
	char local_arg[300];                 /* HOST:PORT, as logged */
	struct local_addr local[MAX_LOCAL_ADDRS];
	int nlocal;
	int want_port;                       /* -port or PUBLIC=; 0 = the
	                                      * server's -public (or any) */
	int any;                             /* -port 0: any free port */
	uint8_t run_id[RUN_ID_LEN];

	enum ctl_state state;
	int fd;
	struct watch ctl_w;
	int remote_idx, attempt;             /* which -remote, which of its
	                                      * addresses, next */
	int remote_now;                      /* the -remote connected to */
	struct sockaddr_storage server_sa;   /* where control went */
	socklen_t server_len;
	struct sockaddr_storage tunnel_sa;   /* where tunnels are dialed */
	socklen_t tunnel_len;
	char server[ADDR_STRLEN];
	struct fbuf in, out;
	struct handshake hs;                 /* HELLO until REPLY */
	struct session_keys keys;            /* once attached */
	unsigned session;                    /* attachments so far */
	int tunnel_port, public_port, heartbeat_s;
	int64_t deadline;                    /* handshake, or next attempt */
	int64_t last_rx, next_ping;
	int backoff_ms;
	int unproven;                        /* attempts in a row whose server
	                                      * took AUTH and never proved
	                                      * the token */
	int mute;                            /* attempts in a row whose peer
	                                      * took the HELLO and never
	                                      * answered as a server would */
	int exit_status;                     /* C_STOPPED: with this status */
	int held;                            /* control frames wait: ctl_take */
	int64_t full_since;                  /* MAX_INFLIGHT in flight since */
	int npooled;                         /* users in U_POOL_DIAL/IDLE */
	struct log_limit log_busy, log_fail, log_pool;
	uint64_t users_total;
	uint64_t bytes_in, bytes_out;        /* of its users already closed */
	uint64_t failed[FAIL_END];           /* users it could not serve */
	int64_t attached_at;
	struct cuser *users;                 /* connecting or pooled: timed */
	struct cuser *relaying;
};

struct client {
	struct hostport remote[MAX_REMOTES]; /* -remote, a list */
	int nremote;
	const char *remote_arg;
	struct hostport tunnel;              /* -tunnel; host "" = -remote's */
	int tunnel_set;
	const char *token;
	const char *secrets_path;            /* -secrets, or NULL */
	struct secrets secrets;              /* its secrets by public port */
	int pool_want;                       /* -pool, or the cap of ... */
	int pool_auto;                       /* ... one the server sizes */
	int plaintext;                       /* -plaintext: raw tunnels */
	int proxy_version;                   /* -proxy-protocol; 0 = off */
	struct service *svc;                 /* nsvc of them */
	int nsvc;
	int inflight;                        /* users in U_LOCAL/U_TUNNEL, all
	                                      * services: MAX_INFLIGHT counts */
	int exit_status;                     /* >= 0: stop with this status */

	int sig_fd;
	struct loop *loop;
	struct watch sig_w;
	int64_t started;
	struct cuser *dead;                  /* users ended this turn */
	const char *metrics_addr;            /* -metrics, or NULL */
	struct metrics *metrics;
	uint64_t handshake_failures;         /* connections lost before attached */
	struct relay_pool relays;            /* what the users' relays share */
};

/* What a watch belongs to (struct watch's kind). */
enum kind { K_SIGNAL, K_CTL, K_USER, K_METRICS };

/* ---- client.c ----------------------------------------------------------- */

/* svc_log: a log line about s, named by its public port where the client
 * has several services ("[9001] ..."). */
void svc_log(const struct service *s, enum log_level level,
             const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* svc_stopped: s has stopped for good; the client exits with the worst
 * status once every service has and nothing relays. */
void svc_stopped(struct client *cl, struct service *s);
/* close_fd: close *fd if open, then -1. */
void close_fd(int *fd);

/* ---- client_ctl.c ------------------------------------------------------- */

/* ctl_connect: the next attempt, to the next -remote address.
 * ctl_connected: the connect finished (POLLOUT): send HELLO.
 * ctl_event: the loop's event on s's control connection. */
void ctl_connect(struct service *s);
void ctl_connected(struct service *s);
void ctl_event(struct service *s, short rev);
/* ctl_readable: the control connection is readable (fill), or frames
 * held back may go on (not fill). */
void ctl_readable(struct service *s, int fill);
/* ctl_send: queue m; a full queue drops and retries the connection. */
void ctl_send(struct service *s, const struct msg *m);
/* ctl_retry: lost or refused: log what, and try again after a backoff. */
void ctl_retry(struct service *s, const char *what);
/* ctl_timers: s's handshake deadline, heartbeat and next attempt; the
 * next deadline, or -1. */
int64_t ctl_timers(struct service *s, int64_t now);
/* ctl_sync: watch what the control connection waits for, once a turn.
 * ctl_flush: send what is queued. */
void ctl_sync(struct service *s);
void ctl_flush(struct service *s);
/* ctl_free: close the control connection and free its buffers. */
void ctl_free(struct service *s);

/* ---- client_user.c ------------------------------------------------------ */

/* user_new, ticket_new: a NEW_USER or TICKET on s's control connection. */
void user_new(struct service *s, const struct msg *m);
void ticket_new(struct service *s, const struct msg *m);
/* user_event: the loop's event on one of u's descriptors. */
void user_event(struct cuser *u, int side, short rev);
/* user_close: the one teardown of a user; why for the log (NULL quiet). */
void user_close(struct cuser *u, const char *why);
/* user_timers: expire s's users that took too long; next deadline or -1. */
int64_t user_timers(struct service *s, int64_t now);
/* users_close_pooled: close s's pooled tunnels (its session ended). */
void users_close_pooled(struct service *s);
/* user_sweep: free the users teardown marked dead. */
void user_sweep(struct client *cl);

#endif
