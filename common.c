/*
 * What both programs use that is not the wire, the network or the relay:
 * logging, time, randomness, descriptor limits, the heap figure, the
 * command line and signals.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "common.h"

/* ==== logging ============================================================ */

static enum log_level log_level = LOG_NORMAL;

void
log_set_level(enum log_level level)
{
	log_level = level;
}

static void
log_line(const char *fmt, va_list ap)
{
	int saved = errno;
	char stamp[32], msg[1024];
	time_t t = time(NULL);
	struct tm tm;
	size_t n;

	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(fmt);
	/* One write per line, so lines from two processes sharing a terminal
	 * or file don't interleave mid-line. */
	if (n > 0 && fmt[n - 1] == ':') {
		fprintf(stderr, "%s %s %s\n", stamp, msg, strerror(saved));
	} else {
		fprintf(stderr, "%s %s\n", stamp, msg);
	}
	fflush(stderr);
	errno = saved;
}

void
log_at(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	if (log_level < level) {
		return;
	}
	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}

void
die(int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
	exit(status);
}

int
log_limited(struct log_limit *l, int64_t now, unsigned long *held)
{
	if (l->last != 0 && now - l->last < LOG_LIMIT_MS) {
		l->held++;
		return 0;
	}
	*held = l->held;
	l->held = 0;
	l->last = now;
	return 1;
}

/* ==== time and randomness ================================================ */

int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int random_fd = -1;

void
random_open(void)
{
	if (random_fd < 0 &&
	    (random_fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) < 0) {
		die(1, "open /dev/urandom:");
	}
}

void
random_bytes(void *buf, size_t len)
{
	uint8_t *p = buf;

	random_open();
	while (len > 0) {
		ssize_t n = read(random_fd, p, len);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			die(1, "read /dev/urandom:");
		}
		p += n;
		len -= (size_t)n;
	}
}

long
raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		return -1;
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
}

/* ==== memory ============================================================= */

/* What malloc has handed out and not had back, where the C library can
 * say (glibc 2.33 and later); the status line shows it, and a test holds
 * it steady across thousands of users, which RSS is too coarse for.
 * AddressSanitizer replaces malloc but not mallinfo2, which would then
 * report glibc's unused heap: say nothing rather than "0 KiB". */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HEAP_UNKNOWN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define HEAP_UNKNOWN 1
#endif

void
heap_note(char *buf, size_t len)
{
#if defined(__GLIBC__) && !defined(HEAP_UNKNOWN) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
	struct mallinfo2 mi = mallinfo2();

	snprintf(buf, len, "; heap: %zu KiB in use",
	         (mi.uordblks + mi.hblkhd + 1023) / 1024);
#else
	snprintf(buf, len, "%s", "");
#endif
}

/* ==== command line and signals =========================================== */

int
flags_parse(int argc, char **argv, const struct flag *flags, char *err,
            size_t errlen)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *arg = argv[i], *name, *eq;
		const struct flag *f;
		size_t n;

		if (arg[0] != '-' || arg[1] == '\0') {
			snprintf(err, errlen, "unexpected argument '%s'", arg);
			return -1;
		}
		name = arg + (arg[1] == '-' ? 2 : 1);
		eq = strchr(name, '=');
		n = eq ? (size_t)(eq - name) : strlen(name);
		for (f = flags; f->name != NULL; f++) {
			if (strlen(f->name) == n && strncmp(f->name, name, n) == 0) {
				break;
			}
		}
		if (f->name == NULL) {
			snprintf(err, errlen, "unknown flag '%s'", arg);
			return -1;
		}
		if (f->is_set != NULL) {
			if (eq != NULL) {
				snprintf(err, errlen, "flag -%s takes no value", f->name);
				return -1;
			}
			*f->is_set = 1;
		} else if (eq != NULL) {
			*f->value = eq + 1;
		} else if (i + 1 < argc) {
			*f->value = argv[++i];
		} else {
			snprintf(err, errlen, "flag -%s needs a value", f->name);
			return -1;
		}
	}
	return 0;
}

void
usage_exit(const char *prog, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see ./%s -h)\n", prog);
	exit(2);
}

int64_t
earliest(int64_t a, int64_t b)
{
	return (a < 0 || (b >= 0 && b < a)) ? b : a;
}

void
flags_apply(int argc, char **argv, const struct flag *own, const char *prog,
            const char *usage)
{
	int help = 0, verbose = 0, quiet = 0;
	const struct flag common[] = {
		{ "v", NULL, &verbose }, { "q", NULL, &quiet },
		{ "h", NULL, &help }, { "help", NULL, &help }, { NULL, NULL, NULL },
	};
	struct flag all[FLAGS_MAX + sizeof(common) / sizeof(common[0])];
	size_t n = 0, i;
	char err[128];

	for (; own[n].name != NULL && n < FLAGS_MAX; n++) {
		all[n] = own[n];
	}
	for (i = 0; i < sizeof(common) / sizeof(common[0]); i++) {
		all[n + i] = common[i];
	}
	if (flags_parse(argc, argv, all, err, sizeof(err)) != 0) {
		usage_exit(prog, "%s", err);
	}
	if (help) {
		fputs(usage, stdout);
		exit(0);
	}
	if (verbose && quiet) {
		usage_exit(prog, "-v and -q exclude each other");
	}
	log_set_level(verbose ? LOG_VERBOSE : quiet ? LOG_QUIET : LOG_NORMAL);
}

static int sig_pipe_wr = -1;

static void
on_signal(int sig)
{
	int saved = errno;
	uint8_t b = (uint8_t)sig;

	/* Nothing else is async-signal-safe enough to do here; the loop sees
	 * the byte on its next poll. */
	if (write(sig_pipe_wr, &b, 1) < 0) {
		/* the pipe is full: plenty of signals are pending already */
	}
	errno = saved;
}

int
signal_take(int fd)
{
	uint8_t b;

	return read(fd, &b, 1) == 1 ? b : 0;
}

int
signals_setup(void)
{
	struct sigaction sa;
	int p[2];

	if (pipe(p) != 0 || set_nonblock(p[0]) != 0 || set_nonblock(p[1]) != 0) {
		die(1, "pipe:");
	}
	sig_pipe_wr = p[1];
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	return p[0];
}
