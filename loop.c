/*
 * The event loop's backend: epoll on Linux, poll() elsewhere (and on Linux
 * with DIALBACK_POLL set, which is how the tests cover it).
 *
 * Callers register interest when it changes instead of rebuilding it each
 * turn, so a turn costs what is active, not what is open: with poll() and
 * 10,000 idle connections every wake-up scanned them all.  Both backends
 * are level-triggered and report hang-ups and errors on every watched
 * descriptor, as poll() does.
 */
#ifdef __linux__
#define _GNU_SOURCE
#include <sys/epoll.h>
#endif
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

struct loop {
	int epfd;                      /* -1: the poll() backend */
	struct pollfd *pfd;            /* poll: one per watch, in slot order */
	struct watch **watches;        /* poll: who owns each slot */
	size_t n, cap;
	struct loop_event *ev;         /* results of the last wait: resized
	                                * only by loop_wait, never while the
	                                * caller walks them */
	size_t evcap;
#ifdef __linux__
	struct epoll_event *eev;
#endif
};

/* Room for want watches (the poll backend's arrays). */
static int
grow(struct loop *l, size_t want)
{
	size_t cap = l->cap ? l->cap : 64;
	void *p;

	while (cap < want) {
		cap *= 2;
	}
	if (cap == l->cap) {
		return 0;
	}
	if ((p = realloc(l->pfd, cap * sizeof(*l->pfd))) == NULL) {
		return -1;
	}
	l->pfd = p;
	if ((p = realloc(l->watches, cap * sizeof(*l->watches))) == NULL) {
		return -1;
	}
	l->watches = p;
	l->cap = cap;
	return 0;
}

/* Room for want results; called by loop_wait only. */
static int
grow_results(struct loop *l, size_t want)
{
	void *p;

	if (want <= l->evcap) {
		return 0;
	}
	if ((p = realloc(l->ev, want * sizeof(*l->ev))) == NULL) {
		return -1;
	}
	l->ev = p;
	l->evcap = want;
	return 0;
}

struct loop *
loop_new(void)
{
	struct loop *l = calloc(1, sizeof(*l));

	if (l == NULL || grow(l, 64) != 0 || grow_results(l, 64) != 0) {
		die(1, "out of memory");
	}
#ifdef __linux__
	if ((l->eev = calloc(l->evcap, sizeof(*l->eev))) == NULL) {
		die(1, "out of memory");
	}
#endif
	l->epfd = -1;
#ifdef __linux__
	if (getenv("DIALBACK_POLL") == NULL) {
		l->epfd = epoll_create1(EPOLL_CLOEXEC);
	}
#endif
	return l;
}

const char *
loop_backend(const struct loop *l)
{
	return l->epfd >= 0 ? "epoll" : "poll";
}

void
loop_free(struct loop *l)
{
	if (l == NULL) {
		return;
	}
	if (l->epfd >= 0) {
		close(l->epfd);
	}
	free(l->pfd);
	free(l->watches);
	free(l->ev);
#ifdef __linux__
	free(l->eev);
#endif
	free(l);
}

void
watch_init(struct watch *w, int kind, void *obj, int side)
{
	w->fd = -1;
	w->events = 0;
	w->slot = -1;
	w->kind = kind;
	w->side = side;
	w->obj = obj;
}

#ifdef __linux__
static uint32_t
to_epoll(short events)
{
	return (events & POLLIN ? EPOLLIN : 0) | (events & POLLOUT ? EPOLLOUT : 0);
}

/* One epoll_ctl naming w as the owner of fd's events. */
static int
ep_ctl(struct loop *l, int op, int fd, short events, struct watch *w)
{
	struct epoll_event e;

	memset(&e, 0, sizeof(e));
	e.events = to_epoll(events);
	e.data.ptr = w;
	return epoll_ctl(l->epfd, op, fd, &e);
}

static short
from_epoll(uint32_t e)
{
	return (short)((e & EPOLLIN ? POLLIN : 0) | (e & EPOLLOUT ? POLLOUT : 0) |
	               (e & EPOLLERR ? POLLERR : 0) | (e & EPOLLHUP ? POLLHUP : 0));
}
#endif

int
loop_watch(struct loop *l, struct watch *w, int fd, short events)
{
	if (w->fd == fd && w->events == events) {
		return 0;
	}
	if (w->fd >= 0 && w->fd != fd) {
		loop_unwatch(l, w);
	}
#ifdef __linux__
	if (l->epfd >= 0) {
		if (ep_ctl(l, w->fd < 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, events,
		           w) != 0) {
			return -1;
		}
		w->fd = fd;
		w->events = events;
		return 0;
	}
#endif
	if (w->fd < 0) {
		if (grow(l, l->n + 1) != 0) {
			errno = ENOMEM;
			return -1;
		}
		w->slot = (int)l->n++;
		l->watches[w->slot] = w;
		l->pfd[w->slot].fd = fd;
	}
	l->pfd[w->slot].events = events;
	w->fd = fd;
	w->events = events;
	return 0;
}

void
loop_unwatch(struct loop *l, struct watch *w)
{
	if (w->fd < 0) {
		return;
	}
#ifdef __linux__
	if (l->epfd >= 0) {
		epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
		w->fd = -1;
		w->events = 0;
		return;
	}
#endif
	/* The last slot fills the hole, so the array stays dense. */
	l->n--;
	if ((size_t)w->slot != l->n) {
		l->pfd[w->slot] = l->pfd[l->n];
		l->watches[w->slot] = l->watches[l->n];
		l->watches[w->slot]->slot = w->slot;
	}
	w->fd = -1;
	w->events = 0;
	w->slot = -1;
}

/* Closing a descriptor takes it out of every epoll set holding it, once no
 * other descriptor refers to the same file; these processes never dup or
 * fork their sockets, so the close is enough. */
void
loop_forget(struct loop *l, struct watch *w)
{
#ifdef __linux__
	if (l->epfd >= 0) {
		w->fd = -1;
		w->events = 0;
		return;
	}
#endif
	loop_unwatch(l, w);
}

int
loop_move(struct loop *l, struct watch *from, struct watch *to, short events)
{
	int fd = from->fd;

	loop_unwatch(l, to);
	if (fd < 0) {
		return -1;
	}
#ifdef __linux__
	if (l->epfd >= 0) {
		if (ep_ctl(l, EPOLL_CTL_MOD, fd, events, to) != 0) {
			loop_unwatch(l, from);
			return -1;
		}
		from->fd = -1;
		from->events = 0;
		to->fd = fd;
		to->events = events;
		return 0;
	}
#endif
	/* poll: the slot changes hands. */
	to->slot = from->slot;
	l->watches[to->slot] = to;
	l->pfd[to->slot].events = events;
	to->fd = fd;
	to->events = events;
	from->fd = -1;
	from->events = 0;
	from->slot = -1;
	return 0;
}

int
loop_wait(struct loop *l, int timeout, struct loop_event **out)
{
	size_t i, k = 0;
	int n;

#ifdef __linux__
	if (l->epfd >= 0) {
		n = epoll_wait(l->epfd, l->eev, (int)l->evcap, timeout);
		if (n < 0) {
			return errno == EINTR ? 0 : -1;
		}
		for (i = 0; i < (size_t)n; i++) {
			struct watch *w = l->eev[i].data.ptr;
			l->ev[k].w = w;
			l->ev[k].fd = w->fd;
			l->ev[k].revents = from_epoll(l->eev[i].events);
			k++;
		}
		*out = l->ev;
		return (int)k;
	}
#endif
	if (grow_results(l, l->n) != 0) {
		errno = ENOMEM;
		return -1;
	}
	n = poll(l->pfd, (nfds_t)l->n, timeout);
	if (n < 0) {
		return errno == EINTR ? 0 : -1;
	}
	for (i = 0; i < l->n && k < (size_t)n; i++) {
		if (l->pfd[i].revents != 0) {
			l->ev[k].w = l->watches[i];
			l->ev[k].fd = l->pfd[i].fd;
			l->ev[k].revents = l->pfd[i].revents;
			k++;
		}
	}
	*out = l->ev;
	return (int)k;
}
