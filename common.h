/*
 * What server.c and client.c share, beside the wire (protocol.h): each
 * section names the file that implements it.
 *
 *   common.c  logging, time, randomness, limits, the command line, signals
 *   net.c     addresses, the PROXY header, sockets
 *   loop.c    the event loop (epoll, or poll elsewhere)
 *   relay.c   bytes between two sockets, both ways
 *
 * Errors, in both programs, are phrases for a person: a function that can
 * fail returns -1 and writes its phrase into the caller's buffer (why,
 * len); a teardown takes the phrase (why; NULL closes quietly) and logs
 * "... closed: why" once; a relay keeps errno and the side and says them
 * through relay_why.  die() is for start-up only.
 */
#ifndef DIALBACK_COMMON_H
#define DIALBACK_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "protocol.h"

/* ---- logging (common.c) ------------------------------------------------- */

enum log_level { LOG_QUIET = 0, LOG_NORMAL = 1, LOG_VERBOSE = 2 };

/* Lines go to stderr as "2026-11-22T04:22:23Z message".  A format that
 * ends in ':' gets ": strerror(errno)" appended. */
void log_set_level(enum log_level level);
/* log_at: the line, if the level set is at least level; log_warn always,
 * log_info unless -q, log_debug with -v. */
void log_at(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define log_warn(...)  log_at(LOG_QUIET, __VA_ARGS__)
#define log_info(...)  log_at(LOG_NORMAL, __VA_ARGS__)
#define log_debug(...) log_at(LOG_VERBOSE, __VA_ARGS__)
/* die: log_warn, then exit(status).  For start-up only. */
void die(int status, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), noreturn));

/* A log line that a flood could repeat is printed at most once per
 * LOG_LIMIT_MS; the ones held back are counted into the next. */
#define LOG_LIMIT_MS 10000
struct log_limit {
	int64_t last;
	unsigned long held;
};

/* log_limited: 1 if a line may be printed now (then *held says how many
 * were held back since the last one); 0 if it is held back. */
int log_limited(struct log_limit *l, int64_t now, unsigned long *held);

/* ---- time, randomness, memory (common.c) -------------------------------- */

/* now_ms: a monotonic clock in milliseconds.  earliest: the sooner of two
 * moments, -1 meaning none. */
int64_t now_ms(void);
int64_t earliest(int64_t a, int64_t b);

/* random_open: open the kernel's generator, at start-up, so that a later
 * shortage of descriptors can't take away the source of ids and nonces.
 * random_bytes: fill buf from it; dies if it can't (it never fails once
 * open). */
void random_open(void);
void random_bytes(void *buf, size_t len);

/* raise_fd_limit: lift RLIMIT_NOFILE to its hard limit; returns the limit. */
long raise_fd_limit(void);

/* ---- lists ------------------------------------------------------------- */

/* Doubly linked lists threaded through an object's own next and prev, so
 * an object leaves its list in O(1) however long the list is.  head is an
 * lvalue, evaluated more than once. */
#define DLIST_ADD(head, o)                                              \
	do {                                                            \
		(o)->prev = NULL;                                       \
		(o)->next = (head);                                     \
		if ((head) != NULL) {                                   \
			(head)->prev = (o);                             \
		}                                                       \
		(head) = (o);                                           \
	} while (0)
#define DLIST_DEL(head, o)                                              \
	do {                                                            \
		if ((o)->prev != NULL) {                                \
			(o)->prev->next = (o)->next;                    \
		} else {                                                \
			(head) = (o)->next;                             \
		}                                                       \
		if ((o)->next != NULL) {                                \
			(o)->next->prev = (o)->prev;                    \
		}                                                       \
		(o)->next = (o)->prev = NULL;                           \
	} while (0)

/* heap_note: "; heap: N KiB in use" (malloc's live bytes) for a status
 * line, or "" where the C library can't tell. */
void heap_note(char *buf, size_t len);
/* heap_bytes: malloc's live bytes, or -1 where the C library can't tell. */
long long heap_bytes(void);

/* ---- addresses (net.c) -------------------------------------------------- */

struct hostport {
	char host[256];   /* "" = every interface (for listening) */
	char port[8];
};

/*
 * addr_parse: split "PORT", ":PORT", "HOST:PORT", "[IPv6]:PORT" into *hp.
 * With default_port >= 0 the port may be left out ("HOST", "[IPv6]", or a
 * bare IPv6 address such as "::1"); with -1 it is required.  Ports run
 * 1..65535, and 0 too when allow_zero (listen on any free port).  Returns 0,
 * or -1 with a phrase for the user in why (len bytes).
 */
int addr_parse(const char *s, int default_port, int allow_zero,
               struct hostport *hp, char *why, size_t len);

/* addr_str: "1.2.3.4:80" or "[::1]:80" into buf (ADDR_STRLEN bytes). */
#define ADDR_STRLEN 64
const char *addr_str(const struct sockaddr *sa, char *buf, size_t len);

/* addr_port: an IPv4 or IPv6 address's port (0 for another family);
 * addr_set_port: set it. */
int addr_port(const struct sockaddr *sa);
void addr_set_port(struct sockaddr *sa, int port);

/* addr_to_wire: a sockaddr in the wire form (family 0 if neither IPv4
 * nor IPv6).  wire_addr_str: the wire form printed as addr_str does. */
void addr_to_wire(const struct sockaddr *sa, struct wire_addr *w);
const char *wire_addr_str(const struct wire_addr *w, char *buf, size_t len);

/* proxy_header: the PROXY protocol header (HAProxy's spec, version 1 text
 * or 2 binary) saying a TCP connection came from src to dst.  Mixed
 * families are sent as IPv6 (IPv4-mapped); unknown ones as UNKNOWN (v1) or
 * LOCAL (v2).  Writes into out (PROXY_MAX bytes) and returns the length. */
#define PROXY_MAX 108
size_t proxy_header(int version, const struct wire_addr *src,
                    const struct wire_addr *dst, uint8_t *out);

/*
 * A CIDR block, for the server's -allow and -deny.  Addresses are compared
 * as 16 bytes, IPv4 in its IPv4-mapped form (::ffff:a.b.c.d), so that an
 * IPv4 user a dual-stack listener sees as ::ffff:a.b.c.d meets the IPv4
 * blocks.  v4 says which family a block is for; an IPv6 block never
 * matches an IPv4 address (::/0 is "every IPv6 user"), unless it is
 * written in the mapped form itself (::ffff:10.0.0.0/104).
 */
struct cidr {
	uint8_t addr[16];    /* the prefix, host bits cleared */
	int bits;            /* leading bits that must match, 0..128 */
	int v4;              /* an IPv4 block (bits counted from ::ffff:0:0/96) */
};

/* cidr_parse: "ADDR/BITS" or a bare "ADDR" (one host), IPv4 or IPv6, into
 * *c; bits set beyond the prefix are ignored.  0, or -1 with a phrase in
 * why (len bytes), e.g. "prefix length out of range (0-32)". */
int cidr_parse(const char *s, struct cidr *c, char *why, size_t len);

/* addr_ip16: sa's address as 16 bytes, IPv4 mapped; 0, or -1 if sa is
 * neither IPv4 nor IPv6.  cidr_match: 1 if ip (from addr_ip16) is in c. */
int addr_ip16(const struct sockaddr *sa, uint8_t ip[16]);
int cidr_match(const struct cidr *c, const uint8_t ip[16]);

/* ---- sockets (net.c) ---------------------------------------------------- */

/* set_nonblock: 0 or -1 (errno set). */
int set_nonblock(int fd);
/* accept_nb: accept a connection as a non-blocking socket; -1 as accept. */
int accept_nb(int lfd, struct sockaddr *sa, socklen_t *len);
/* set_nodelay, set_keepalive: best effort; a socket that refuses works
 * the same, only slower to send small messages or to notice a dead peer. */
void set_nodelay(int fd);
void set_keepalive(int fd);

/*
 * listen_on: bind and listen on every address hp resolves to (for "" both
 * 0.0.0.0 and ::, where the host has IPv6).  Stores up to max descriptors
 * in fds and returns how many; or -1 with a line in msg naming what and
 * where and what to do, e.g. "bind 0.0.0.0:8009 (control port): address
 * in use — ...".  what names the port's role (and its flag).
 */
int listen_on(const struct hostport *hp, const char *what, int *fds, int max,
              char *msg, size_t len);

/* local_port: the port fd is bound to, or 0. */
int local_port(int fd);

/* connect_start: a non-blocking connect to sa.  Returns the descriptor,
 * which is connected or connecting (wait for POLLOUT, then connect_done);
 * or -1 with errno set. */
int connect_start(const struct sockaddr *sa, socklen_t len);

/* connect_done: after POLLOUT, 0 if the connect succeeded, else -1 with
 * errno set to why it failed. */
int connect_done(int fd);

/* send_some: send what the socket takes of p[0..n), without blocking;
 * *sent says how much.  0 (EAGAIN included), or -1 with errno set. */
int send_some(int fd, const uint8_t *p, size_t n, size_t *sent);

/* ---- command line and signals (common.c) -------------------------------- */

/* A flag takes a value (value set), several (list set: -allow A -allow B),
 * or is a switch (is_set set).  Names are given without dashes; "-name",
 * "--name", "-name=v" and "-name v" all work. */
#define FLAG_LIST_MAX 64
struct flag_list {
	const char *v[FLAG_LIST_MAX];
	int n;
	int from_file;           /* some came from -config: argv replaces them */
};

struct flag {
	const char *name;
	const char **value;
	int *is_set;
	struct flag_list *list;
};

/* flags_parse: apply argv to a table ending in {NULL}.  0, or -1 with a
 * phrase in err naming the bad argument. */
int flags_parse(int argc, char **argv, const struct flag *flags, char *err,
                size_t errlen);

/* config_parse: apply the text of a -config file (NUL-terminated) to the
 * table, a line at a time: "word value", "word" for a switch, '#' to the
 * end of the line a comment.  The text is cut up in place and the flags
 * point into it, so it must outlive them.  0, or -1 with the bad line's
 * number (from 1) in *lineno and a phrase in err.  It never exits, so
 * tests/fuzz_parsers can feed it; flags_apply makes -1 a usage error. */
int config_parse(char *text, const struct flag *flags, int *lineno,
                 char *err, size_t errlen);

/* flags_apply: flags_parse with the flags every program has added to the
 * table (at most FLAGS_MAX entries of its own): -h and -help print usage
 * (a printf format given the name run as) and exit 0, -version prints the
 * version and exits 0, -v and -q set the log level, -config FILE applies
 * a file of "word value" lines first so that the command line wins.  A bad
 * argument is a usage error.
 * usage_exit: "NAME: <fmt...> (see RUN-AS -h)" on stderr, exit 2, NAME
 * being the name the program was run as (dialback-client, not ./client).
 * prog_name: that name. */
#define FLAGS_MAX 32
#define CONFIG_MAX (64 * 1024)
#define DIALBACK_VERSION "2.0.0"
void flags_apply(int argc, char **argv, const struct flag *own,
                 const char *usage);
void usage_exit(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));
const char *prog_name(void);

/* signals_setup: ignore SIGPIPE; make SIGINT, SIGTERM, SIGUSR1 and SIGHUP write
 * their number to a pipe whose (non-blocking) read end is returned, for the
 * poll loop.  signal_take: the next signal number from it, or 0. */
int signals_setup(void);
int signal_take(int fd);

/* ---- event loop (loop.c) ------------------------------------------------ */

/* Interest in one descriptor, embedded in whatever owns it.  kind, side
 * and obj are the owner's, handed back with each event. */
struct watch {
	int fd;              /* -1: not watched */
	short events;        /* what the backend holds */
	int slot;            /* poll backend: index in its array */
	int kind, side;
	void *obj;
};

/* An event: fd is what w watched when it fired; if w->fd differs now, the
 * owner moved on (closed, or watches another descriptor) and the event is
 * stale. */
struct loop_event {
	struct watch *w;
	int fd;
	short revents;       /* POLLIN, POLLOUT, POLLERR, POLLHUP */
};

struct loop;

/* loop_new: epoll on Linux unless DIALBACK_POLL is set; poll() elsewhere. */
struct loop *loop_new(void);
void loop_free(struct loop *l);
const char *loop_backend(const struct loop *l);   /* "epoll" or "poll" */

void watch_init(struct watch *w, int kind, void *obj, int side);

/* loop_watch: want events (POLLIN|POLLOUT, or 0 for hang-ups and errors
 * only) on fd; nothing happens if that is already so.  -1 on failure.
 * loop_unwatch: stop; call it before closing the descriptor.
 * loop_forget: the same, when the caller closes the descriptor right after
 * (epoll drops a closed descriptor by itself: no call then).
 * loop_move: hand from's descriptor to another owner's watch, wanting
 * events: one call instead of two.  from ends unwatched either way; on -1,
 * so does to, and a loop_watch on it starts afresh. */
int loop_watch(struct loop *l, struct watch *w, int fd, short events);
void loop_unwatch(struct loop *l, struct watch *w);
void loop_forget(struct loop *l, struct watch *w);
int loop_move(struct loop *l, struct watch *from, struct watch *to,
              short events);

/* loop_wait: up to timeout ms (-1: no limit); the events stay valid until
 * the next call.  Returns how many (0 on EINTR), or -1. */
int loop_wait(struct loop *l, int timeout, struct loop_event **ev);

/* ---- relay (relay.c) ---------------------------------------------------- */

#define RELAY_BUF (128 * 1024)

/* One direction: bytes read from its source that the sink has not taken
 * yet wait in buf (NULL while there are none).  eof: the source ended;
 * shut: the sink was shut down for writing after the last byte went out. */
struct relay_dir {
	uint8_t *buf;
	size_t off, len;
	int pipe[2];         /* Linux splice: bytes in flight in the kernel */
	size_t piped;        /* bytes in pipe; the pipe is held only while > 0 */
	int pipe_full;       /* stop reading until the pipe drains */
	int bulk;            /* reads fill buffers: splice, not copy */
	int eof, shut;
	uint64_t bytes;
	uint8_t *rbuf;       /* sealed source: records not yet opened, */
	size_t roff, rlen;   /* ... at rbuf + roff */
};

/* What a process's relays share: the scratch buffer bytes pass through,
 * and drained buffers and empty pipes kept for reuse while any relay
 * lives.  One per process, owned by its main struct. */
#define RELAY_SPARE 16
struct relay_pool {
	uint8_t scratch[RELAY_BUF];
	uint8_t *buf[RELAY_SPARE];
	int nbuf;
	int pipe[RELAY_SPARE][2];
	int npipe;
	size_t pipe_size;    /* what the kernel let pipes hold */
	int live;            /* relays between relay_init and relay_close */
	int splice;          /* move bulk with splice(2); -1: not asked yet */
};

/* relay_pool_init: an empty pool, before the first relay_init. */
void relay_pool_init(struct relay_pool *pool);

/* A relayed pair.  dir[0] carries fd[0] -> fd[1], dir[1] fd[1] -> fd[0]. */
struct relay {
	struct relay_pool *pool;
	int fd[2];
	int splice;          /* move bytes with splice(2), not read/write */
	int live;            /* between relay_init and relay_close */
	struct relay_dir dir[2];
	int err_side;        /* on RELAY_FAIL: which fd, */
	const char *err_op;  /* doing what ("read", "write", "shutdown") */
	int err_no;          /* and errno */
	int sealed;          /* fd[sealed] carries records; -1: none does */
	struct seal *tx, *rx;  /* ... sealed toward it, opened from it */
	const char *broke;   /* how the sealed stream broke, or NULL */
};

enum relay_state { RELAY_OPEN, RELAY_DONE, RELAY_FAIL };

/* relay_init: take ownership of both descriptors, drawing buffers and
 * pipes from pool.  Allocates nothing. */
void relay_init(struct relay *r, struct relay_pool *pool, int fd0, int fd1);

/* relay_prefill: queue n bytes (n <= RELAY_BUF) in direction d, as if read
 * from its source; used for a JOIN and for bytes read past it.  -1 if out
 * of memory. */
int relay_prefill(struct relay *r, int d, const void *data, size_t n);

/* relay_seal: fd[side] carries records (protocol.h): what goes to it is
 * sealed with tx, what comes from it opened with rx; splice is off.  An
 * end of stream travels as an empty record; a FIN without it, or a record
 * that does not open, fails the relay and resets the other side.
 * relay_put_record: queue data as one record toward the sealed side.
 * relay_feed: bytes already read from direction d's source (records, when
 * it is the sealed side); with relay_prefill, what is queued for d's sink
 * as it is.  -1 if out of memory (or too large). */
void relay_seal(struct relay *r, int side, struct seal *tx, struct seal *rx);
int relay_put_record(struct relay *r, int d, const void *data, size_t n);
int relay_feed(struct relay *r, int d, const void *data, size_t n);

/* relay_events: the poll interest for fd[0] and fd[1], derived from the
 * buffers: room to fill means POLLIN, bytes to send mean POLLOUT.  0 means
 * leave the descriptor out of poll (so a hang-up can't wake us in a loop). */
void relay_events(const struct relay *r, short ev[2]);

/* relay_step: do the I/O that revents allow.  RELAY_DONE once both
 * directions ended and were shut down; RELAY_FAIL on an error (r->err_*). */
enum relay_state relay_step(struct relay *r, const short revents[2]);

/* relay_fail: record that the caller's own work for side failed (doing
 * op, with errno), as relay_step records its errors; returns RELAY_FAIL.
 * relay_why: "SIDE OP: strerror" for a failed relay, side naming fd[0]
 * and fd[1], into buf. */
enum relay_state relay_fail(struct relay *r, int side, const char *op);
const char *relay_why(const struct relay *r, const char *const side[2],
                      char *buf, size_t len);

/* relay_abandon: undo relay_init after a failed start; the descriptors
 * stay open and the caller's. */
void relay_abandon(struct relay *r);

/* relay_close: close both descriptors and free the buffers.  Idempotent.
 * When the last relay closes, spare buffers and pipes are released too. */
void relay_close(struct relay *r);

#endif
