/*
 * dialback wire protocol, version 2: message types, sizes, limits, and
 * what protocol.c (the frame codec, frame buffers) and keys.c (the key
 * schedule, records) implement.  README.md "Protocol" says the same in
 * prose.
 *
 * A frame is   type u8 | length u16 | payload[length]   (length <= FRAME_MAX)
 * A record is  length u16 | ciphertext[length] | tag[16]
 *              sealed with ChaCha20-Poly1305 (RFC 8439), the length bytes as
 *              associated data, nonce = 0x00000000 | counter u64, the
 *              counter starting at 0 for each key and rising by one per
 *              record, so a replayed, reordered, dropped or altered record
 *              fails to open.  length <= RECORD_MAX.
 * All integers are big-endian.  Nothing is ever cast onto a buffer.
 *
 * Handshake (control connection), modelled on Noise NNpsk2 with
 * X25519, ChaCha20-Poly1305 and SHA-256 (HKDF of RFC 5869):
 *
 *   h = SHA256(PROTO_NAME), ck = h                 the transcript, chain key
 *   C->S HELLO      magic "DLBK"[4] version u8 public_port u16 e_c[32]
 *                   (clear; public_port 0 = the server's -public port)
 *   S->C CHALLENGE  magic "DLBK"[4] version u8 e_s[32]          (clear)
 *        both sides: h = SHA256(h | HELLO frame), h = SHA256(h | CHALLENGE
 *        frame); ck, k = HKDF(ck, X25519(e, e_peer)) (all-zero: drop);
 *        ck, t, k = HKDF(ck, psk), h = SHA256(h | t)
 *        psk = HMAC-SHA256("dialback psk", secret), secret being the
 *        public port's from -secrets, else -token, else "" (no token)
 *   C->S AUTH       AEAD(k, n=0, ad=h, ATTACH frame), h = SHA256(h | AUTH
 *                   payload).  ATTACH: run_id[8] pool u16 flags u8
 *                   (FLAG_PLAINTEXT, FLAG_ANY_PORT: a free port of the
 *                   server's -ports that -secrets does not name, HELLO's
 *                   public_port first if this run may have it; WELCOME
 *                   says which)
 *   S->C REPLY      AEAD(k, n=1, ad=h, WELCOME or ERROR frame).
 *                   WELCOME: tunnel_port u16 public_port u16 heartbeat_s u16
 *                   flags u8
 *        or a clear ERROR (version, garbage, a wrong proof)
 *   both: tx, rx, tunnel = HKDF(ck, "") split three ways (client->server
 *        key, server->client key, tunnel key)
 *
 * A server that can't open AUTH knows the client has the wrong secret
 * (ERR_AUTH); a client that can't open REPLY knows the server lacks it.
 * Keys depend on both ephemeral keys, so a recorded session stays sealed
 * even for someone who later learns the token (forward secrecy), and a
 * recording alone gives nothing to test guesses of the token against.
 *
 * After REPLY, every control message is a frame inside a record:
 *   S->C NEW_USER   user_id[16] src addr dst addr   (addr: family u8 (4|6),
 *                   address[16] (IPv4 in the first 4 bytes), port u16)
 *   S->C TICKET     user_id[16]: an id for a pooled tunnel (see below)
 *   C->S USER_FAILED user_id[16] reason[0..TEXT_MAX]: "SERVICE WHY", or
 *                   "tunnel ADDR: WHY ..." when the dial back failed
 *   both PING / PONG (empty); a peer silent for 3 heartbeats is dead;
 *        ERROR before a close.
 *
 * Tunnel connection (client dials the tunnel port, one per user):
 *   keys: c2s, s2c = HKDF-Expand(tunnel key, "tunnel2 " | user_id), one
 *        pair per user id, and ids are single use: no key ever sees a
 *        counter twice.
 *   C->S JOIN       user_id[16] proof[16] = the tag of an empty record
 *                   sealed with c2s, n=0, ad=user_id
 * and then records both ways (c2s from n=1, s2c from n=0): each carries
 * 1..RECORD_MAX bytes of the user's stream; an empty record is the end of
 * that direction (half-close).  A FIN before it is a cut stream: the user
 * is reset, not closed.  With FLAG_PLAINTEXT granted in WELCOME, the bytes
 * after JOIN are the raw stream instead (the control connection stays
 * sealed).  The server never answers a JOIN: a bad one is closed.
 *
 * Pool: a client that asked for a pool in ATTACH gets that many TICKETs,
 * each an id no user holds yet.  It dials the tunnel port and JOINs with
 * one; the server parks the tunnel.  When a user arrives and a parked
 * tunnel is there, the server sends the NEW_USER down that tunnel, as its
 * first record (or frame, plaintext), then the user's bytes.  With
 * FLAG_POOL_AUTO the pool asked for is a cap, and the server sizes the
 * pool itself: the most users that arrived in two seconds running within
 * the last POOL_WINDOW_S seconds, at least POOL_FLOOR, at most the cap.  It hands
 * a parked tunnel out only while the session has been heard from within
 * 1.5 heartbeats; a user handed out stays unconfirmed until that client's
 * next control frame or the JOIN of a tunnel refilling its pool (with no
 * refill to come, the server sends a PING), and is reset if neither comes
 * within JOIN_WAIT_MS (the client froze with it).
 *
 * The server drops a control connection if: the first frame is not a HELLO
 * with the right magic; the version differs (after an ERROR naming both);
 * AUTH does not open (after ERR_AUTH); the port asked for is outside the
 * server's ports (ERR_PORT) or served by another client (ERR_BUSY); any
 * free port is asked for without -ports or after proving a port's own
 * secret (ERR_PORT), or none is free (ERR_BUSY); the
 * client asks for plaintext tunnels the server does not allow
 * (ERR_PLAINTEXT); a frame or record arrives that the state does not allow
 * or does not open; nothing arrives within HANDSHAKE_MS before REPLY or
 * within 3 heartbeats after.  It drops a tunnel connection if the JOIN is
 * malformed, names no pending user or ticket, carries a wrong proof, or is
 * late (HANDSHAKE_MS); a parked (pooled) tunnel that sends anything before
 * it is used; and a relaying tunnel whose record does not open (its user
 * is reset).
 */
#ifndef DIALBACK_PROTOCOL_H
#define DIALBACK_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_MAGIC        "DLBK"
#define PROTO_MAGIC_LEN    4
#define PROTO_VERSION      2
#define PROTO_NAME         "dialback 2: NNpsk2 X25519 ChaChaPoly SHA256"

#define FRAME_HDR          3       /* type u8 + length u16 */
#define FRAME_MAX          512     /* largest payload any frame may carry */
#define TEXT_MAX           200     /* longest reason text */

#define KEY_LEN            32      /* X25519 keys, AEAD keys, HKDF outputs */
#define TAG_LEN            16      /* Poly1305 tag */
#define RECORD_HDR         2       /* length u16 */
#define RECORD_MAX         16384   /* bytes a record may carry */
#define SEALED_MAX         (FRAME_HDR + 1 + TEXT_MAX + TAG_LEN) /* REPLY */
#define RUN_ID_LEN         8
#define USER_ID_LEN        16
#define WIRE_ADDR_LEN      19      /* family u8 + address[16] + port u16 */

#define DEFAULT_CONTROL_PORT 8009
#define DEFAULT_TUNNEL_PORT  8008
#define DEFAULT_PUBLIC_PORT  8007
#define DEFAULT_HEARTBEAT_S  10
#define DEAD_AFTER_BEATS     3     /* silence of this many heartbeats = dead */
#define HANDSHAKE_MS         5000  /* hello..welcome, and dial..join */
#define JOIN_WAIT_MS         10000 /* a user (or ticket) awaits its JOIN */
#define POOL_MAX             128   /* pooled tunnels per session, at most */
#define POOL_FLOOR           2     /* ... and with FLAG_POOL_AUTO, at least */
#define POOL_WINDOW_S        60    /* ... sized to the peak of these seconds */

enum msg_type {
	MSG_HELLO = 1,
	MSG_CHALLENGE = 2,
	MSG_AUTH = 3,
	MSG_REPLY = 4,
	MSG_ERROR = 5,
	MSG_PING = 6,
	MSG_PONG = 7,
	MSG_NEW_USER = 8,
	MSG_USER_FAILED = 9,
	MSG_JOIN = 10,
	MSG_TICKET = 11,
	MSG_ATTACH = 12,       /* inside AUTH */
	MSG_WELCOME = 13,      /* inside REPLY */
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
	ERR_PLAINTEXT = 7,  /* plaintext tunnels asked for, not allowed: permanent */
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
	uint8_t pub[KEY_LEN];              /* HELLO, CHALLENGE: ephemeral key */
	uint8_t sealed[SEALED_MAX];        /* AUTH, REPLY */
	uint16_t sealed_len;
	uint8_t run_id[RUN_ID_LEN];        /* ATTACH */
	uint8_t proof[TAG_LEN];            /* JOIN */
	uint8_t user_id[USER_ID_LEN];      /* NEW_USER, USER_FAILED, JOIN, TICKET */
	uint16_t tunnel_port;              /* WELCOME */
	uint16_t public_port;              /* HELLO (asked), WELCOME (granted) */
	uint16_t pool;                     /* ATTACH */
	uint16_t heartbeat_s;              /* WELCOME */
	uint8_t flags;                     /* ATTACH (asked), WELCOME (granted) */
	uint8_t code;                      /* ERROR */
	struct wire_addr src, dst;         /* NEW_USER */
	char text[TEXT_MAX + 1];           /* ERROR, USER_FAILED; NUL-ended */
};

/* Flags of ATTACH and WELCOME. */
#define FLAG_PLAINTEXT 0x01        /* tunnels carry raw bytes after JOIN */
#define FLAG_POOL_AUTO 0x80        /* ATTACH: pool is a cap; the server sizes it */
#define FLAG_ANY_PORT  0x02        /* ATTACH only: any free port of the
                                    * server's -ports (HELLO's port, if
                                    * not 0, is a preference) */

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

/* ---- keys and records (keys.c) ----------------------------------------- */

/* One direction's sealing key and its record counter. */
struct seal {
	uint8_t key[KEY_LEN];
	uint64_t n;
};

/* A handshake in progress: transcript hash, chain key, the key of the
 * moment and its counter, and our ephemeral key pair. */
struct handshake {
	uint8_t h[KEY_LEN], ck[KEY_LEN], k[KEY_LEN];
	uint64_t n;
	uint8_t e_secret[KEY_LEN], e_pub[KEY_LEN];
};

/* What a handshake leaves: the control connection's two directions and
 * the key every tunnel's keys derive from. */
struct session_keys {
	struct seal tx, rx;
	uint8_t tunnel[KEY_LEN];
};

/* psk_derive: the 32-byte pre-shared key for a secret (a token, or a
 * port's secret from -secrets; "" for none). */
void psk_derive(const void *secret, size_t len, uint8_t psk[KEY_LEN]);

/* hs_init: start a handshake with a fresh ephemeral key pair.
 * hs_mix_hash: add bytes to the transcript; hs_mix_msg: a message, as
 * its frame.  hs_mix_dh: mix in the
 * X25519 secret with the peer's ephemeral key, wiping ours; -1 if that
 * secret is all zero (a low-order point: drop the peer).  hs_mix_psk: mix
 * in the pre-shared key. */
void hs_init(struct handshake *hs);
void hs_mix_hash(struct handshake *hs, const void *data, size_t len);
void hs_mix_msg(struct handshake *hs, const struct msg *m);
int hs_mix_dh(struct handshake *hs, const uint8_t peer[KEY_LEN]);
void hs_mix_psk(struct handshake *hs, const uint8_t psk[KEY_LEN]);

/* hs_seal: encrypt len bytes to out (len + TAG_LEN bytes) under the
 * transcript.  hs_open: the reverse (len counts the tag); -1 if it does
 * not open.  Both add the sealed bytes to the transcript. */
void hs_seal(struct handshake *hs, const uint8_t *in, size_t len,
             uint8_t *out);
int hs_open(struct handshake *hs, const uint8_t *in, size_t len,
            uint8_t *out);

/* hs_split: the session keys, for the client's side or the server's;
 * wipes the handshake. */
void hs_split(struct handshake *hs, int client, struct session_keys *sk);

/* tunnel_keys: the two directions of the tunnel for user id, for the
 * client's side or the server's.  join_proof: the JOIN's proof, sealed
 * with the client's tx (counter 0).  join_check: the server's check with
 * its rx; 0 if it holds. */
void tunnel_keys(const uint8_t tunnel[KEY_LEN], const uint8_t id[USER_ID_LEN],
                 int client, struct seal *tx, struct seal *rx);
void join_proof(struct seal *tx, const uint8_t id[USER_ID_LEN],
                uint8_t proof[TAG_LEN]);
int join_check(struct seal *rx, const uint8_t id[USER_ID_LEN],
               const uint8_t proof[TAG_LEN]);

/* record_seal: len (<= RECORD_MAX) bytes of in as one record into out
 * (RECORD_HDR + len + TAG_LEN bytes); returns that size.
 * record_open: open the record at the start of buf[0..len) in place: the
 * plaintext is at buf + RECORD_HDR, *plen bytes, and the record took
 * *used.  FRAME_MORE: not all there yet; FRAME_BAD: too long, or it does
 * not open (tampered, replayed, reordered, or another key's). */
size_t record_seal(struct seal *s, const uint8_t *in, size_t len,
                   uint8_t *out);
enum frame_result record_open(struct seal *s, uint8_t *buf, size_t len,
                              size_t *used, size_t *plen);

/* ---- frame buffers (protocol.c) ----------------------------------------- */

/* A buffer of frames to or from a peer (control and join traffic).  With
 * seal set, each frame travels inside a record under that key. */
#define FBUF_SMALL 4096
#define FBUF_UNIT  (RECORD_HDR + FRAME_HDR + FRAME_MAX + TAG_LEN)
struct fbuf {
	uint8_t *data;
	size_t len, cap;
	struct seal *seal;
};

/* fbuf_init: give b room for cap bytes (at least one whole record),
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
/* fbuf_take: decode the next frame (opening its record first, with
 * seal), consuming it on FRAME_OK.  A record must hold exactly one frame. */
enum frame_result fbuf_take(struct fbuf *b, struct msg *m);

#endif
