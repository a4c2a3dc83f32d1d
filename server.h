/*
 * The server's objects, shared by its three files:
 *
 *   server.c       main, flags, the event loop, accepting, timers, status
 *   server_ctl.c   control connections: handshake, sessions, public ports
 *   server_user.c  users and tunnels, from accept (or pool ticket) to close
 *
 * A user is one struct user from accept (or pool ticket) to close, moving
 * through the states of enum user_state; a control connection is a struct
 * ctl, and once attached a session; a tunnel connection is a struct tun
 * until its JOIN hands it to the user it names.
 */
#ifndef DIALBACK_SERVER_H
#define DIALBACK_SERVER_H

#include <stdint.h>
#include <sys/socket.h>

#include "common.h"
#include "metrics.h"
#include "secrets.h"

#define TOKEN_MIN       16     /* shorter tokens get a warning */
#define MAX_LISTEN      4      /* addresses per role (0.0.0.0 and ::) */
#define ACCEPT_BATCH    64     /* accepts per listener per turn */
#define MAX_PENDING     4096   /* users waiting for their join, per session */
#define SESSION_OUT     (64 * 1024)  /* control output queue once attached */
#define SEALED(n)       (RECORD_HDR + (n) + TAG_LEN)  /* a frame of n, sealed */
#define NEW_USER_SIZE   SEALED(FRAME_HDR + USER_ID_LEN + 2 * WIRE_ADDR_LEN)
#define MAX_HANDSHAKES  64     /* control connections not yet attached */
#define MAX_PER_SOURCE  8      /* ... of those, from one address */
#define MAX_TUNNELS     4096   /* tunnel connections without their JOIN */
#define RECENT_POOLED   16     /* ended pooled users kept: pooled_failed */

enum role { ROLE_CONTROL, ROLE_TUNNEL, ROLE_PUBLIC, ROLE_END };

/* Why a user or a client was turned away, for dialback_refused_total
 * (server.c names them).  A new reason is one line here and one there. */
enum refusal {
	REF_NO_CLIENT,       /* a user on a port no client serves */
	REF_USERS_WAITING,   /* MAX_PENDING users wait for their tunnel */
	REF_OUT_OF_FDS,      /* shed at EMFILE, user or client */
	REF_HANDSHAKE_FLOOD, /* MAX_PER_SOURCE handshakes from one address */
	REF_HANDSHAKES_FULL, /* MAX_HANDSHAKES at once: the oldest dropped */
	REF_TUNNELS_FULL,    /* MAX_TUNNELS without a JOIN: the oldest dropped */
	REF_WRONG_TOKEN,     /* AUTH did not open: token or port secret */
	REF_VERSION,         /* another protocol version */
	REF_PORT_NOT_OFFERED,
	REF_PORT_BUSY,       /* served by another client (or would not bind) */
	REF_PLAINTEXT,       /* -plaintext asked, not allowed */
	REF_DENIED,          /* -allow/-deny */
	REF_PER_IP,          /* -per-ip */
	REF_END
};

/* Bytes of the users of one public port that have closed; the metrics
 * add the live ones.  Kept sorted by port in struct server. */
struct port_stat {
	int port;
	uint64_t in, out;
};

/* A control connection.  Once attached it is a session: it owns the
 * public port and the users waiting for their joins. */
enum ctl_state { CTL_HELLO, CTL_AUTH, CTL_ATTACHED };

/* A listening port.  A public one may be served by a session (owner):
 * the -public port listens from start to stop, a port from -ports only
 * while its session lasts. */
struct pub {
	int port;
	int fd[MAX_LISTEN];
	struct watch w[MAX_LISTEN];
	int nfd;                       /* 0 once closed */
	struct ctl *owner;             /* NULL: no client attached */
};

/* A user's life.  Without a pool: accepted on the public port, it waits
 * for the JOIN that names it, then relays.  With one: a ticket (an id
 * issued, nothing dialed) becomes a pooled tunnel when the client JOINs
 * with it, and relays once a user takes it: handed out, it relays while
 * unconfirmed until its client is next heard from on control.  Every
 * ending leads to
 * U_DEAD, where sweep() frees it. */
enum user_state { U_TICKET, U_POOLED, U_WAITING, U_HANDED, U_RELAYING,
                  U_DEAD, U_STATE_END };

struct ctl {
	struct ctl *next;
	int fd, dead;
	struct watch w;
	enum ctl_state state;
	char peer[ADDR_STRLEN];
	struct wire_addr from;         /* peer address, to count per source */
	struct fbuf in, out;
	int asked;                     /* the public port HELLO asked for */
	int hello_port;                /* ... as it said it (0: -public) */
	struct handshake hs;           /* until attached */
	int opened;                    /* AUTH opened: REPLY is sealed */
	uint8_t psk[KEY_LEN];          /* the secret it proved, for -secrets */
	struct session_keys keys;      /* once attached */
	int plaintext;                 /* its tunnels carry raw bytes */
	uint8_t run_id[RUN_ID_LEN];
	int64_t deadline;              /* handshake must finish by then */
	int64_t last_rx, next_ping;
	struct pub *pub;               /* the port it serves, once attached */
	struct pub *own;               /* a -ports listener it opened */
	int pool_want;                 /* tunnels the client keeps ready */
	int pool_auto, pool_cap;       /* FLAG_POOL_AUTO: pool_want follows */
	uint16_t arrivals[POOL_WINDOW_S]; /* ... users a second, a ring */
	int64_t arrivals_s;            /* the second of the newest count */
	int count[U_STATE_END];        /* its users in each state */
	struct user *pooled;           /* its U_POOLED users */
	int64_t attached_at;
	uint64_t served;               /* users announced */
};

/* A tunnel connection that has not sent its JOIN yet.  The JOIN hands
 * its descriptor (and any bytes behind the JOIN) to the user it names. */
struct tun {
	struct tun *next;
	int fd, dead;
	struct watch w;
	char peer[ADDR_STRLEN];
	struct fbuf in;
	int64_t deadline;
};

/*
 * One user, from accept (or, with a pool, from its ticket) to close.  The
 * user's socket is relay.fd[0] and the tunnel relay.fd[1], each -1 until it
 * exists; w[i] watches relay.fd[i].  Every change of state goes through
 * user_set, which keeps the lists and counts; every ending through
 * user_close.
 */
struct user {
	struct user *next, *prev;      /* on the list of its state */
	enum user_state state;
	struct ctl *sess;              /* until relaying; NULL after */
	int pooled;                    /* began on a pooled tunnel, */
	uint8_t sess_run[RUN_ID_LEN];  /* ... of the session with this run id */
	uint8_t id[USER_ID_LEN];
	uint64_t seq;                  /* for logs; 0 for a tunnel alone */
	int port;                      /* the public port it came in on */
	char peer[ADDR_STRLEN];
	int64_t start, deadline;
	struct watch w[2];
	int sealed;                    /* the tunnel carries records */
	struct seal tun_tx, tun_rx;    /* ... under these keys, from its JOIN */
	struct relay relay;            /* live once relaying */
	struct ip_count *ipc;          /* its count for -per-ip, or NULL */
};

/* Users now from one address on one public port, for -per-ip.  One entry
 * per pair that has users; it goes when the last of them closes, so
 * entries never outnumber users. */
struct ip_count {
	struct ip_count *next;         /* in its hash bucket */
	uint8_t ip[16];                /* as addr_ip16 */
	int port;
	int n;
};

/* What a watch belongs to (struct watch's kind). */
enum kind { K_SIGNAL, K_LISTEN, K_CTL, K_TUN, K_USER, K_METRICS };

struct server {
	struct hostport addr[ROLE_END];
	const char *token;             /* "" = no token */
	int plaintext;                 /* -plaintext: raw tunnels allowed */
	const char *secrets_path;      /* -secrets, or NULL */
	struct secrets secrets;        /* ... as last read */
	int heartbeat_s;
	int ports_lo, ports_hi;        /* -ports; 0 = none */
	struct pub lis[ROLE_END];      /* -control, -tunnel, -public */
	int sig_fd;
	struct watch sig_w;
	struct loop *loop;
	int spare_fd;                  /* given up to accept-and-close at EMFILE */
	int64_t accept_paused_until;
	struct log_limit log_fds, log_no_client, log_pending, log_handshakes,
	                 log_tunnels, log_timeouts;
	struct ctl *ctls;
	struct tun *tuns;
	int ntuns;                     /* live ones in tuns */
	/* Users by state (U_POOLED ones hang off their session).  Only the
	 * ticket and waiting lists, which are bounded, are ever walked per
	 * turn; relaying users are not, so idle ones cost nothing. */
	struct user *users[U_STATE_END];
	int count[U_STATE_END];
	struct {
		uint8_t id[USER_ID_LEN];
		uint64_t seq;
		char peer[ADDR_STRLEN];
	} recent[RECENT_POOLED];       /* a ring of ended pooled users */
	unsigned recent_next;
	uint64_t user_seq;
	int64_t started;
	uint64_t bytes_in, bytes_out;  /* of users already closed */
	int pool_window_s;             /* POOL_WINDOW_S, or fewer for tests */
	struct relay_pool relays;      /* what the users' relays share */
	/* Who may use a public port: -allow, -deny, -per-ip. */
	struct cidr allow[FLAG_LIST_MAX], deny[FLAG_LIST_MAX];
	int nallow, ndeny;
	int per_ip;                    /* 0 = no limit */
	struct ip_count **ip_tab;      /* buckets, while per_ip > 0 */
	unsigned ip_mask;              /* buckets - 1 */
	uint64_t ip_seed;              /* keys the bucket hash */
	struct log_limit log_denied, log_per_ip;
	const char *metrics_addr;      /* -metrics, or NULL */
	struct metrics *metrics;
	uint64_t refused[REF_END];
	uint64_t handshake_failures;   /* control and tunnel handshakes */
	struct port_stat *ports;       /* by port, ascending */
	size_t nports, capports;
};

/* Free what teardown marked dead.  Lists are singly linked; a pointer to
 * the link being examined makes unlinking one line. */
#define SWEEP(head, type, free_one)                                     \
	do {                                                            \
		type **pp = &(head);                                    \
		while (*pp != NULL) {                                   \
			type *o = *pp;                                  \
			if (o->dead) {                                  \
				*pp = o->next;                          \
				free_one(o);                            \
			} else {                                        \
				pp = &o->next;                          \
			}                                               \
		}                                                       \
	} while (0)

/* ---- server.c: the loop, accepting, timers, start-up --------------------- */

/* close_watched: stop watching *fd and close it (then -1).  Every
 * descriptor the loop watches is closed through here, or by relay_close
 * once its watches are forgotten. */
void close_watched(struct server *s, struct watch *w, int *fd);
/* pub_accepting: 1 while users may be accepted on p (see server.c). */
int pub_accepting(const struct pub *p);

/* ---- server_ctl.c: control connections and sessions ---------------------- */

/* ctl_arrive: a new control connection, admitted or refused. */
void ctl_arrive(struct server *s, int fd, const struct sockaddr *sa);
/* ctl_readable, ctl_writable: the loop's events on it. */
void ctl_readable(struct server *s, struct ctl *c);
void ctl_writable(struct server *s, struct ctl *c);
/* ctl_send: queue m; a full queue (a client not reading) ends c. */
void ctl_send(struct server *s, struct ctl *c, const struct msg *m);
/* ctl_close: end c, its users not yet relaying and its -ports listener;
 * why goes into the log line (NULL: quietly, before attaching). */
void ctl_close(struct server *s, struct ctl *c, const char *why);
void ctl_free(struct ctl *c);
/* port_secret: the -secrets entry for port, or NULL (then -token holds).
 * port_psk: the pre-shared key a client asking for port must prove. */
const char *port_secret(struct server *s, int port);
void port_psk(struct server *s, int port, uint8_t psk[KEY_LEN]);
/* secrets_reload: SIGHUP: read the -secrets file again; a bad file is
 * refused whole and the old one stays.  Sessions whose secret changed or
 * went are detached; their relaying users go on. */
void secrets_reload(struct server *s);
/* pub_close: close a -ports listener (its memory goes with its session). */
void pub_close(struct server *s, struct pub *p);

/* ---- server_user.c: users and tunnels ----------------------------------- */

/* user_arrive: a user accepted on pub; fd is the user's from here on. */
void user_arrive(struct server *s, int fd, const struct sockaddr *sa,
                 struct pub *pub);
/* user_event: the loop's event on one of u's sockets (side 0 user, 1
 * tunnel). */
void user_event(struct server *s, struct user *u, int side, short rev);
/* user_find: the ticket or waiting user a JOIN or USER_FAILED names. */
struct user *user_find(struct server *s, const uint8_t id[USER_ID_LEN]);
/* user_close: the one ending of every user; why for the log, NULL for
 * none. */
void user_close(struct server *s, struct user *u, const char *why);
/* port_stat: port's entry, made if new; NULL if out of memory.  Ports
 * are a bounded set (-public and -ports), so the table is too. */
struct port_stat *port_stat(struct server *s, int port);
/* pooled_failed: c's client could not serve the pooled user named id. */
void pooled_failed(struct server *s, const struct ctl *c,
                   const uint8_t id[USER_ID_LEN], const char *why);
/* ctl_close_users: close session c's users that do not relay yet. */
void ctl_close_users(struct server *s, struct ctl *c);
/* pool_refill: issue TICKETs until c's pool is full or its queue is. */
void pool_refill(struct server *s, struct ctl *c);

/* pool_resize: with FLAG_POOL_AUTO, size c's pool to its recent arrivals
 * (arrived: one user more now); closes parked tunnels beyond the size. */
void pool_resize(struct server *s, struct ctl *c, int64_t now, int arrived);

/* pool_handed: the users c's client was handed from its pool relay on as
 * any others (why NULL: it was heard from, or its session ends), or are
 * closed with why (it went silent). */
void pool_handed(struct server *s, struct ctl *c, const char *why);

/* ip_table_init: the -per-ip table, its buckets sized by the descriptor
 * limit (users can't outnumber descriptors); nothing without -per-ip.
 * ip_table_free: free it, once every user is closed. */
void ip_table_init(struct server *s, long nofile);
void ip_table_free(struct server *s);
/* user_timers: expire late JOINs; the next deadline, or -1. */
int64_t user_timers(struct server *s, int64_t now);
/* user_sweep: free the users and tunnels teardown marked dead. */
void user_sweep(struct server *s);
/* tun_arrive, tun_readable, tun_close: a tunnel connection before its
 * JOIN. */
void tun_arrive(struct server *s, int fd, const struct sockaddr *sa);
void tun_readable(struct server *s, struct tun *t);
void tun_close(struct server *s, struct tun *t, const char *why);
/* tun_fail: tun_close for a tunnel whose handshake (its JOIN) failed,
 * counted in dialback_handshake_failures_total. */
void tun_fail(struct server *s, struct tun *t, const char *why);

#endif
