# dialback: make, make test, make bench, make clean, make install, make demo.
# SAN=1 builds everything with AddressSanitizer and UBSan; WERROR=1 adds
# -Werror (CI does both).  STATIC=1 links statically against musl
# (apt-get install musl-tools): an idle process then holds about 190 KiB
# instead of glibc's 1.9 MiB, most of which is glibc's own shared pages.
# make clean between kinds of build.  make fuzz builds the libFuzzer targets with
# clang; make fuzz-run runs each for FUZZ_SECONDS over its seed corpus.

CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L
LDFLAGS ?=

ifeq ($(STATIC),1)
ifeq ($(shell command -v musl-gcc),)
$(error STATIC=1 needs musl-gcc: apt-get install musl-tools)
endif
CC       = musl-gcc
LDFLAGS += -static
endif
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(WERROR),1)
CFLAGS  += -Werror
endif

BINS  = server client
TESTS = tests/unit tests/unit-portable tests/e2e tests/svc tests/features \
        tests/metrics
LIB   = common.o net.o protocol.o keys.o relay.o loop.o sha256.o \
        chacha20poly1305.o x25519.o secrets.o metrics.o

all: $(BINS)

SERVER = server.o server_ctl.o server_user.o

server: $(SERVER) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $(SERVER) $(LIB)
CLIENT = client.o client_ctl.o client_user.o

client: $(CLIENT) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $(CLIENT) $(LIB)

server.o: server.c server.h common.h protocol.h metrics.h
server_ctl.o: server_ctl.c server.h common.h protocol.h sha256.h metrics.h
server_user.o: server_user.c server.h common.h protocol.h sha256.h metrics.h
client.o: client.c client.h common.h protocol.h crypto.h metrics.h
client_ctl.o: client_ctl.c client.h common.h protocol.h crypto.h
client_user.o: client_user.c client.h common.h protocol.h crypto.h
common.o: common.c common.h protocol.h
net.o: net.c common.h protocol.h
protocol.o: protocol.c common.h protocol.h
keys.o: keys.c common.h protocol.h crypto.h sha256.h
relay.o: relay.c common.h protocol.h
loop.o: loop.c common.h protocol.h
sha256.o: sha256.c sha256.h crypto.h
chacha20poly1305.o: chacha20poly1305.c crypto.h sha256.h
x25519.o: x25519.c crypto.h
secrets.o: secrets.c secrets.h sha256.h
metrics.o: metrics.c metrics.h common.h protocol.h

tests/unit: tests/unit.c tests/testlib.h $(LIB) common.h protocol.h sha256.h \
            crypto.h secrets.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/unit.c $(LIB)
# The unit test again with only the plain C of the crypto: no SSE2 or AVX2
# ChaCha and no unsigned __int128, so the code other machines run is tested
# here.  tests/unit itself runs ChaCha20 and Poly1305 under each path this
# CPU has.
tests/unit-portable: tests/unit.c tests/testlib.h $(LIB:.o=.c) common.h \
                     protocol.h sha256.h crypto.h
	$(CC) $(CFLAGS) -DDIALBACK_PORTABLE_CRYPTO -I. $(LDFLAGS) -o $@ \
		tests/unit.c $(LIB:.o=.c)
tests/e2e: tests/e2e.c tests/testlib.h protocol.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/e2e.c
tests/svc: tests/svc.c tests/testlib.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/svc.c
tests/features: tests/features.c tests/testlib.h $(LIB) common.h protocol.h sha256.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/features.c $(LIB)
tests/metrics: tests/metrics.c tests/testlib.h $(LIB) common.h protocol.h \
               metrics.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/metrics.c $(LIB)
tests/bench: tests/bench.c tests/testlib.h $(LIB) common.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/bench.c $(LIB)

test: $(BINS) $(TESTS)
	sh tests/run.sh

# The end-to-end tests with ./server and ./client under valgrind's memcheck:
# any error or definite/indirect leak fails.  Use the normal build, not SAN.
test-valgrind: all tests/e2e tests/svc tests/unit
	VALGRIND=1 ./tests/e2e

# Direct path and tunnel side by side on loopback; BENCH_ARGS=-quick for a
# smoke run.  The numbers also go to bench.csv.
bench: all tests/bench
	./tests/bench $(BENCH_ARGS)

# The fuzzers compile the server's files (tests/fuzz.c) and the client's
# (tests/fuzz_client.c) into themselves, and the library from source, so
# all of it is instrumented but x25519.c (FUZZ_PLAIN): constant-time
# arithmetic on fixed 32-byte arrays with no branch on data for coverage
# to learn from, checked against RFC 7748 by tests/unit, and 1.3 ms a call
# under the sanitizers against 0.2 ms plain, three calls a handshake.
# tests/fuzz_record feeds the record layer alone, tests/fuzz_secrets the
# secrets file parser, tests/fuzz_parsers the metrics responder's HTTP
# over loopback, CIDR blocks, addresses and -config text.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS    = -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -O1 -g \
                -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer \
                -fno-sanitize-recover=all
FUZZ_SRCS     = common.c net.c protocol.c keys.c relay.c loop.c sha256.c \
                chacha20poly1305.c secrets.c metrics.c
FUZZ_PLAIN    = tests/fuzz-x25519.o
FUZZ_DEPS     = tests/fuzzlib.h $(FUZZ_SRCS) $(FUZZ_PLAIN) common.h \
                protocol.h sha256.h crypto.h secrets.h metrics.h
# -print_funcs=0: naming a newly covered function starts llvm-symbolizer
# on pipes, which the targets' descriptor check would take for a leak.
FUZZ_OPTS     = -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=10 \
                -print_funcs=0 \
                -rss_limit_mb=2048 -print_final_stats=1
FUZZ_BINS     = tests/fuzz tests/fuzz_client tests/fuzz_record \
                tests/fuzz_secrets tests/fuzz_parsers

tests/fuzz-x25519.o: x25519.c crypto.h
	$(FUZZ_CC) -std=c11 -Wall -Wextra -O2 -g -c -o $@ x25519.c
tests/fuzz: tests/fuzz.c server.c server_ctl.c server_user.c server.h $(FUZZ_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. -o $@ tests/fuzz.c $(FUZZ_SRCS) $(FUZZ_PLAIN)
tests/fuzz_client: tests/fuzz_client.c client.c client_ctl.c client_user.c client.h \
                   $(FUZZ_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. -o $@ tests/fuzz_client.c $(FUZZ_SRCS) \
		$(FUZZ_PLAIN)
tests/fuzz_record: tests/fuzz_record.c $(FUZZ_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. -o $@ tests/fuzz_record.c $(FUZZ_SRCS) \
		$(FUZZ_PLAIN)
tests/fuzz_secrets: tests/fuzz_secrets.c $(FUZZ_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. -o $@ tests/fuzz_secrets.c $(FUZZ_SRCS) \
		$(FUZZ_PLAIN)
tests/fuzz_parsers: tests/fuzz_parsers.c $(FUZZ_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. -o $@ tests/fuzz_parsers.c $(FUZZ_SRCS) \
		$(FUZZ_PLAIN)

fuzz: $(FUZZ_BINS)

# New inputs go to a temporary directory, so the seed corpora stay as
# committed; a crash leaves its input in ./crash-* and fails the target.
fuzz-run: $(FUZZ_BINS)
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/dialback-fuzz.XXXXXX") && \
	trap 'rm -rf "$$tmp"' EXIT && \
	mkdir "$$tmp/server" "$$tmp/client" "$$tmp/record" "$$tmp/secrets" \
	      "$$tmp/parsers" && \
	./tests/fuzz $(FUZZ_OPTS) "$$tmp/server" tests/fuzz-corpus && \
	./tests/fuzz_client $(FUZZ_OPTS) "$$tmp/client" tests/fuzz-corpus-client && \
	./tests/fuzz_record $(FUZZ_OPTS) "$$tmp/record" tests/fuzz-corpus-record && \
	./tests/fuzz_secrets $(FUZZ_OPTS) "$$tmp/secrets" tests/fuzz-corpus-secrets && \
	./tests/fuzz_parsers $(FUZZ_OPTS) "$$tmp/parsers" tests/fuzz-corpus-parsers

# make install [PREFIX=/usr/local] [DESTDIR=]: the binaries as
# dialback-server and dialback-client, and their man pages.  The systemd
# units in contrib/ are installed by hand (see README).
PREFIX  ?= /usr/local
BINDIR   = $(PREFIX)/bin
MAN1DIR  = $(PREFIX)/share/man/man1
MANS     = dialback-server.1 dialback-client.1
INSTALL ?= install

install: $(BINS) $(MANS)
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MAN1DIR)
	$(INSTALL) -m 0755 server $(DESTDIR)$(BINDIR)/dialback-server
	$(INSTALL) -m 0755 client $(DESTDIR)$(BINDIR)/dialback-client
	$(INSTALL) -m 0644 $(MANS) $(DESTDIR)$(MAN1DIR)/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/dialback-server $(DESTDIR)$(BINDIR)/dialback-client
	rm -f $(DESTDIR)$(MAN1DIR)/dialback-server.1 $(DESTDIR)$(MAN1DIR)/dialback-client.1

# make demo: server, client and a small web page on this machine, on
# loopback ports from DEMO_BASE (18009 control, 18008 tunnel, 18007 public,
# 18080 the page); Ctrl-C stops it all.
DEMO_BASE ?= 18000

demo: $(BINS) tests/svc
	MAKE="$(MAKE)" DEMO_BASE="$(DEMO_BASE)" sh contrib/demo.sh

.PHONY: install uninstall demo

clean:
	rm -f $(BINS) $(TESTS) tests/bench $(FUZZ_BINS) $(FUZZ_PLAIN) *.o

.PHONY: all test test-valgrind bench clean fuzz fuzz-run
