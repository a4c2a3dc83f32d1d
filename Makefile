# dialback: make, make test, make bench, make clean.
# SAN=1 builds everything with AddressSanitizer and UBSan; WERROR=1 adds
# -Werror (CI does both).

CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -Wall -Wextra -D_POSIX_C_SOURCE=200809L
LDFLAGS ?=

ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(WERROR),1)
CFLAGS  += -Werror
endif

BINS  = server client
TESTS = tests/unit tests/e2e tests/svc
LIB   = common.o sha256.o

all: $(BINS)

server: server.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ server.o $(LIB)
client: client.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ client.o $(LIB)

server.o: server.c common.h protocol.h sha256.h
client.o: client.c common.h protocol.h sha256.h
common.o: common.c common.h protocol.h sha256.h
sha256.o: sha256.c sha256.h

tests/unit: tests/unit.c $(LIB) common.h protocol.h sha256.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/unit.c $(LIB)
tests/e2e: tests/e2e.c tests/testlib.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/e2e.c
tests/svc: tests/svc.c tests/testlib.h
	$(CC) $(CFLAGS) -I. $(LDFLAGS) -o $@ tests/svc.c

test: $(BINS) $(TESTS)
	sh tests/run.sh

clean:
	rm -f $(BINS) $(TESTS) *.o

.PHONY: all test clean
