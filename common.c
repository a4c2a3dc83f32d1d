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

long long
heap_bytes(void)
{
#if defined(__GLIBC__) && !defined(HEAP_UNKNOWN) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
	struct mallinfo2 mi = mallinfo2();

	return (long long)(mi.uordblks + mi.hblkhd);
#else
	return -1;
#endif
}

void
heap_note(char *buf, size_t len)
{
	long long heap = heap_bytes();

	if (heap < 0) {
		snprintf(buf, len, "%s", "");
		return;
	}
	snprintf(buf, len, "; heap: %lld KiB in use", (heap + 1023) / 1024);
}

/* ==== command line and signals =========================================== */

/* The name the program was run as: argv[0] for "see ... -h" and usage,
 * its last path component to begin error lines.  Set by flags_apply. */
static const char *run_as = "dialback", *run_name = "dialback";

/* Give flag f the value val (NULL: none was given).  A list takes every
 * value; a switch takes none, or yes/no in a config file. */
static int
flag_set(const struct flag *f, const char *val, int from_file, char *err,
         size_t errlen)
{
	if (f->is_set != NULL) {
		if (val == NULL || (from_file && (strcmp(val, "yes") == 0 ||
		                                  strcmp(val, "true") == 0))) {
			*f->is_set = 1;
		} else if (from_file && (strcmp(val, "no") == 0 ||
		                         strcmp(val, "false") == 0)) {
			*f->is_set = 0;
		} else {
			snprintf(err, errlen, "flag -%s takes no value", f->name);
			return -1;
		}
		return 0;
	}
	if (val == NULL) {
		snprintf(err, errlen, "flag -%s needs a value", f->name);
		return -1;
	}
	if (f->list == NULL) {
		*f->value = val;
		return 0;
	}
	/* The command line's values replace a config file's, not add to them. */
	if (!from_file && f->list->from_file) {
		f->list->n = 0;
		f->list->from_file = 0;
	}
	if (f->list->n == FLAG_LIST_MAX) {
		snprintf(err, errlen, "flag -%s: at most %d", f->name,
		         FLAG_LIST_MAX);
		return -1;
	}
	f->list->v[f->list->n++] = val;
	f->list->from_file |= from_file;
	return 0;
}

static const struct flag *
flag_find(const struct flag *flags, const char *name, size_t n)
{
	for (; flags->name != NULL; flags++) {
		if (strlen(flags->name) == n && strncmp(flags->name, name, n) == 0) {
			return flags;
		}
	}
	return NULL;
}

int
flags_parse(int argc, char **argv, const struct flag *flags, char *err,
            size_t errlen)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *arg = argv[i], *name, *eq, *val;
		const struct flag *f;
		size_t n;

		if (arg[0] != '-' || arg[1] == '\0') {
			snprintf(err, errlen, "unexpected argument '%s'", arg);
			return -1;
		}
		name = arg + (arg[1] == '-' ? 2 : 1);
		eq = strchr(name, '=');
		n = eq ? (size_t)(eq - name) : strlen(name);
		if ((f = flag_find(flags, name, n)) == NULL) {
			snprintf(err, errlen, "unknown flag '%s'", arg);
			return -1;
		}
		val = eq ? eq + 1 : NULL;
		if (eq == NULL && f->is_set == NULL && i + 1 < argc) {
			val = argv[++i];
		}
		if (flag_set(f, val, 0, err, errlen) != 0) {
			return -1;
		}
	}
	return 0;
}

/* One line of a config file: "word value", "word" for a switch, '#' to the
 * end of the line a comment.  The words are the flags' names. */
static int
config_line(const struct flag *flags, char *line, char *err, size_t errlen)
{
	char *word, *val, *end;
	const struct flag *f;

	if ((end = strchr(line, '#')) != NULL) {
		*end = '\0';
	}
	word = line + strspn(line, " \t\r");
	while (*word == '-') {
		word++;
	}
	end = word + strlen(word);
	while (end > word && strchr(" \t\r", end[-1]) != NULL) {
		*--end = '\0';
	}
	if (*word == '\0') {
		return 0;
	}
	val = word + strcspn(word, " \t=");
	if (val == word) {
		/* "= x", or "- x": the value is not echoed, as it may be the
		 * token. */
		snprintf(err, errlen, "%s", "a value with no word before it");
		return -1;
	}
	if (*val != '\0') {
		*val++ = '\0';
		val += strspn(val, " \t=");
	}
	if ((f = flag_find(flags, word, strlen(word))) == NULL ||
	    strcmp(word, "config") == 0) {
		snprintf(err, errlen, "unknown word '%s'", word);
		return -1;
	}
	return flag_set(f, *val != '\0' ? val : NULL, 1, err, errlen);
}

int
config_parse(char *text, const struct flag *flags, int *lineno, char *err,
             size_t errlen)
{
	char *line, *next;

	*lineno = 1;
	for (line = text; line != NULL; line = next, ++*lineno) {
		if ((next = strchr(line, '\n')) != NULL) {
			*next++ = '\0';
		}
		if (config_line(flags, line, err, errlen) != 0) {
			return -1;
		}
	}
	return 0;
}

/* Apply a config file to the table.  Its text is kept for the life of the
 * process: the flags point into it. */
static void
config_apply(const char *path, const struct flag *flags)
{
	char *text, err[128];
	FILE *fp = fopen(path, "r");
	long size;
	int lineno;

	if (fp == NULL) {
		die(1, "-config %s:", path);
	}
	if (fseek(fp, 0, SEEK_END) != 0 || (size = ftell(fp)) < 0 ||
	    size > CONFIG_MAX || fseek(fp, 0, SEEK_SET) != 0) {
		die(1, "-config %s: not a regular file of at most %d bytes",
		    path, CONFIG_MAX);
	}
	if ((text = calloc(1, (size_t)size + 1)) == NULL) {
		die(1, "out of memory");
	}
	if (fread(text, 1, (size_t)size, fp) != (size_t)size) {
		die(1, "-config %s: short read", path);
	}
	fclose(fp);
	if (config_parse(text, flags, &lineno, err, sizeof(err)) != 0) {
		usage_exit("-config %s line %d: %s", path, lineno, err);
	}
}

/* Where -config is on the command line, before the rest is applied over
 * the file's words. */
static const char *
config_path(int argc, char **argv)
{
	const char *path = NULL;
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i] + (argv[i][0] == '-' && argv[i][1] == '-');
		if (strcmp(a, "-config") == 0 && i + 1 < argc) {
			path = argv[++i];
		} else if (strncmp(a, "-config=", 8) == 0) {
			path = a + 8;
		}
	}
	return path;
}

void
usage_exit(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", run_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see %s -h)\n", run_as);
	exit(2);
}

const char *
prog_name(void)
{
	return run_name;
}

int64_t
earliest(int64_t a, int64_t b)
{
	return (a < 0 || (b >= 0 && b < a)) ? b : a;
}

void
flags_apply(int argc, char **argv, const struct flag *own, const char *usage)
{
	int help = 0, verbose = 0, quiet = 0, version = 0;
	const char *config = NULL, *slash;
	const struct flag common[] = {
		{ "v", NULL, &verbose, NULL }, { "q", NULL, &quiet, NULL },
		{ "h", NULL, &help, NULL }, { "help", NULL, &help, NULL },
		{ "version", NULL, &version, NULL },
		{ "config", &config, NULL, NULL }, { NULL, NULL, NULL, NULL },
	};
	struct flag all[FLAGS_MAX + sizeof(common) / sizeof(common[0])];
	size_t n = 0, i;
	char err[128];

	if (argc > 0 && argv[0] != NULL && argv[0][0] != '\0') {
		run_as = argv[0];
		slash = strrchr(run_as, '/');
		run_name = slash ? slash + 1 : run_as;
	}
	for (; own[n].name != NULL && n < FLAGS_MAX; n++) {
		all[n] = own[n];
	}
	for (i = 0; i < sizeof(common) / sizeof(common[0]); i++) {
		all[n + i] = common[i];
	}
	if ((config = config_path(argc, argv)) != NULL) {
		config_apply(config, all);
	}
	if (flags_parse(argc, argv, all, err, sizeof(err)) != 0) {
		usage_exit("%s", err);
	}
	if (help) {
		printf(usage, run_as);
		exit(0);
	}
	if (version) {
		printf("%s %s (protocol %d)\n", run_name, DIALBACK_VERSION,
		       PROTO_VERSION);
		exit(0);
	}
	if (verbose && quiet) {
		usage_exit("-v and -q exclude each other");
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
