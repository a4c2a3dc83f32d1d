/*
 * dialback wire protocol: message types, sizes, limits, and what protocol.c
 * implements: the frame codec, frame buffers and key derivation.
 * README.md "Protocol" says the same in prose.
 *
 * Every message is a frame:
 *
 *     type    u8
 *     length  u16, big-endian, bytes of payload that follow (0..FRAME_MAX)
 *     payload length bytes, laid out per type below
 *
 * All integers are big-endian.  A receiver drops the connection (one log
 * line) on an unknown type, a length above FRAME_MAX, or a length that is
 * wrong for the type.  Nothing is ever cast onto a buffer.
 *
 * Control connection (client dials the server's control port):
 *
 *   C->S HELLO      magic "DLBK"[4] version u8 client_nonce[16] run_id[8]
 *   S->C CHALLENGE  magic "DLBK"[4] version u8 server_nonce[16]
 *   C->S AUTH       proof[32] = HMAC(token, "dialback auth" cn sn)
 *                   public_port u16 (0 = the server's -public port)
 *                   pool u16 (tunnels to keep ready, 0..POOL_MAX)
 *   S->C WELCOME    tunnel_port u16 public_port u16 heartbeat_s u16
 *        or ERROR   code u8 reason[1..TEXT_MAX] (ASCII, no NUL)
 *   then, any time:
 *   S->C NEW_USER   user_id[16] src addr dst addr   (addr: family u8 (4|6),
 *                   address[16] (IPv4 in the first 4 bytes), port u16)
 *   S->C TICKET     user_id[16]: an id for a pooled tunnel (see below)
 *   C->S USER_FAILED user_id[16] reason[0..TEXT_MAX]
 *   both PING / PONG (empty); a peer silent for 3 heartbeats is dead.
 *
 * Tunnel connection (client dials the tunnel port, one per user):
 *
 *   C->S JOIN       user_id[16] proof[32] = HMAC(K, "dialback join" user_id)
 *
 * and from the next byte on, the connection is the user's raw byte stream.
 * The server never answers a JOIN: a bad one is closed, a good one relays.
 *
 * Pool: a client that asked for a pool in AUTH gets that many TICKETs, each
 * an id no user holds yet.  It dials the tunnel port and JOINs with one
 * (the same proof); the server parks the tunnel.  When a user arrives and a
 * parked tunnel is there, the server writes NEW_USER on that tunnel (not
 * on control), then the user's bytes; the client connects to its service
 * and relays.  Every used or expired ticket is replaced.  Ids are single
 * use, so a replayed JOIN finds nothing.
 *
 * K, the session key, is HMAC(token, "dialback session" cn sn); both sides
 * compute it and it never crosses the wire.  A server with no token accepts
 * any proof (and warns at start).
 *
 * The server drops a control connection if: the first frame is not a HELLO
 * with the right magic; the version differs (after an ERROR naming both);
 * the proof is wrong (after ERR_AUTH); the port asked for is outside the
 * server's ports (ERR_PORT) or served by another client (ERR_BUSY); a
 * frame arrives that the state does not allow; nothing arrives within
 * HANDSHAKE_MS before WELCOME or within 3 heartbeats after.  It drops a
 * tunnel connection if the JOIN is malformed, names no pending user or
 * ticket, carries a wrong proof, or is late (HANDSHAKE_MS); and a parked
 * (pooled) tunnel that sends anything before it is used.
 */
#ifndef DIALBACK_PROTOCOL_H
#define DIALBACK_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_MAGIC        "DLBK"
#define PROTO_MAGIC_LEN    4
#define PROTO_VERSION      1

#define FRAME_HDR          3       /* type u8 + length u16 */
#define FRAME_MAX          512     /* largest payload any frame may carry */
#define TEXT_MAX           200     /* longest reason text */

#define NONCE_LEN          16
#define RUN_ID_LEN         8
#define USER_ID_LEN        16
#define PROOF_LEN          32      /* HMAC-SHA256 output */
#define WIRE_ADDR_LEN      19      /* family u8 + address[16] + port u16 */

#define DEFAULT_CONTROL_PORT 8009
#define DEFAULT_TUNNEL_PORT  8008
#define DEFAULT_PUBLIC_PORT  8007
#define DEFAULT_HEARTBEAT_S  10
#define DEAD_AFTER_BEATS     3     /* silence of this many heartbeats = dead */
#define HANDSHAKE_MS         5000  /* hello..welcome, and dial..join */
#define JOIN_WAIT_MS         10000 /* a user (or ticket) waits this long for its join */
#define POOL_MAX             64    /* pooled tunnels per session, at most */

enum msg_type {
	MSG_HELLO = 1,
	MSG_CHALLENGE = 2,
	MSG_AUTH = 3,
	MSG_WELCOME = 4,
	MSG_ERROR = 5,
	MSG_PING = 6,
	MSG_PONG = 7,
	MSG_NEW_USER = 8,
	MSG_USER_FAILED = 9,
	MSG_JOIN = 10,
	MSG_TICKET = 11,
	MSG_TYPE_END
};

/* Codes carried by MSG_ERROR.  The client exits on the permanent ones and
 * retries the others. */
enum err_code {
	ERR_AUTH = 1,       /* wrong token: permanent */
	ERR_VERSION = 2,    /* protocol version mismatch: permanent */
	ERR_BUSY = 3,       /* the public port is served by another client */
	ERR_PROTO = 4,      /* malformed or unexpected message: permanent */
	ERR_WRONG_PORT = 5, /* a HELLO reached the tunnel port: permanent */
	ERR_PORT = 6,       /* the public port asked for is not offered: permanent */
	ERR_CODE_END
};

/* An endpoint as carried on the wire. */
struct wire_addr {
	uint8_t family;            /* 4 or 6; 0 = unknown */
	uint8_t addr[16];          /* IPv4 uses the first 4 bytes */
	uint16_t port;
};

/* One decoded message.  Only the fields of msg.type are meaningful. */
struct msg {
	uint8_t type;
	uint8_t version;                   /* HELLO, CHALLENGE */
	uint8_t nonce[NONCE_LEN];          /* HELLO (client), CHALLENGE (server) */
	uint8_t run_id[RUN_ID_LEN];        /* HELLO */
	uint8_t proof[PROOF_LEN];          /* AUTH, JOIN */
	uint8_t user_id[USER_ID_LEN];      /* NEW_USER, USER_FAILED, JOIN, TICKET */
	uint16_t tunnel_port;              /* WELCOME */
	uint16_t public_port;              /* WELCOME (granted), AUTH (asked) */
	uint16_t pool;                     /* AUTH */
	uint16_t heartbeat_s;              /* WELCOME */
	uint8_t code;                      /* ERROR */
	struct wire_addr src, dst;         /* NEW_USER */
	char text[TEXT_MAX + 1];           /* ERROR, USER_FAILED; NUL-ended */
};

enum frame_result { FRAME_OK, FRAME_MORE, FRAME_BAD };

/*
 * frame_decode: decode the frame at the start of buf[0..len) into *m.
 * FRAME_OK sets *used to the frame's size; FRAME_MORE means the bytes so far
 * are a valid prefix; FRAME_BAD means they can never become a valid frame
 * (unknown type, oversize, wrong length, bad magic).  A HELLO or CHALLENGE
 * with the right magic but another version decodes as FRAME_OK with only
 * .version set, so the caller can name both versions.  Text is copied with
 * every byte but printable ASCII replaced by '?', so it is safe to log.
 * Pure.
 */
enum frame_result frame_decode(const uint8_t *buf, size_t len,
                               struct msg *m, size_t *used);

/*
 * frame_encode: write *m as one frame into out, which has room for
 * FRAME_HDR + FRAME_MAX bytes.  Returns the frame's size.  Text longer than
 * TEXT_MAX is cut.
 */
size_t frame_encode(uint8_t *out, const struct msg *m);

/* msg_name: "HELLO", "JOIN", ... or "unknown" for logs. */
const char *msg_name(unsigned type);

/* Big-endian, byte by byte: the wire's only integer helpers. */
static inline void
wire_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline uint16_t
wire_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* ---- keys (protocol.c) -------------------------------------------------- */

/* The HMAC derivations of protocol.h; token may be "" (no token). */
void key_auth_proof(const char *token, const uint8_t cn[NONCE_LEN],
                    const uint8_t sn[NONCE_LEN], uint8_t out[PROOF_LEN]);
void key_session(const char *token, const uint8_t cn[NONCE_LEN],
                 const uint8_t sn[NONCE_LEN], uint8_t out[PROOF_LEN]);
void key_join_proof(const uint8_t key[PROOF_LEN],
                    const uint8_t id[USER_ID_LEN], uint8_t out[PROOF_LEN]);

/* ---- frame buffers (protocol.c) ----------------------------------------- */

/* A buffer of frames to or from a peer (control and join traffic). */
#define FBUF_SMALL 4096
struct fbuf {
	uint8_t *data;
	size_t len, cap;
};

/* fbuf_init: give b room for cap bytes (at least one whole frame),
 * keeping what it holds; -1 if out of memory.  fbuf_free: release it. */
int fbuf_init(struct fbuf *b, size_t cap);
void fbuf_free(struct fbuf *b);

/* send_now: one best-effort send of *m, for a last word before a close. */
void send_now(int fd, const struct msg *m);

/* fbuf_put: append the frame for *m; -1 if it doesn't fit (peer stalled). */
int fbuf_put(struct fbuf *b, const struct msg *m);
/* fbuf_flush: write as much as the socket takes.  0 or -1 (errno set). */
int fbuf_flush(struct fbuf *b, int fd);
/* fbuf_fill: read what the socket has.  1 read something, 0 EOF, -1 error;
 * EAGAIN counts as 1 with nothing added. */
int fbuf_fill(struct fbuf *b, int fd);
/* fbuf_take: decode the next frame, consuming it on FRAME_OK. */
enum frame_result fbuf_take(struct fbuf *b, struct msg *m);

#endif
