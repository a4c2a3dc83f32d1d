/*
 * -metrics tests, end to end through ./server (and metrics.c's client
 * content in process): the counters move as users pass, are refused and
 * fail their handshakes; Debian's promtool accepts /metrics; a real
 * prometheus scraping the server sees dialback_users_total climb; a
 * headless Chromium renders / with the session on it; other paths are
 * 404, and so are other methods; oversized requests 431; scrapers that stall
 * hold up no relaying and are closed by the read deadline, one that asks
 * and never reads by the write deadline; more than the cap are turned
 * away without harm; out of descriptors, the listener
 * does not spin the loop; a bare port binds 127.0.0.1 only.
 * Run from the repository root:
 *
 *     ./tests/metrics [NAME-SUBSTRING]
 *
 * promtool, prometheus and chromium are used when installed and skipped
 * otherwise, except that with CI=true a missing one is a failure (.ci/run
 * installs them).  Harness: tests/testlib.h ("ok - NAME", ..., then
 * "metrics: N passed, N failed, N skipped").  tests/metrics --nofile N
 * PROG ARGS runs PROG with RLIMIT_NOFILE N, soft and hard;
 * tests/metrics --responder PORT BYTES serves metrics.c's responder on
 * 127.0.0.1:PORT with a /metrics of BYTES, until SIGTERM.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testlib.h"
#include "common.h"
#include "metrics.h"

#define IO_MS       15000    /* one user's exchange, one scrape */
#define WATCHDOG_S  150      /* a test that takes longer is killed */
#define ANSWER_MAX  (256 * 1024)

/* ---- HTTP by hand ------------------------------------------------------- */

/*
 * ask_why: send req to host:port, read the answer until EOF into out (cap
 * bytes, NUL-terminated).  Returns the HTTP status, or -1 with what went
 * wrong in why (256 bytes).
 */
static int
ask_why(const char *host, int port, const char *req, char *out, size_t cap,
        char *why)
{
	int64_t deadline = tl_now_ms() + T(IO_MS);
	int fd = tl_connect(host, port, deadline), status = -1;
	ssize_t n;

	out[0] = '\0';
	if (fd < 0) {
		snprintf(why, 256, "connect to port %d: %s", port, strerror(errno));
		return -1;
	}
	if (tl_write_all(fd, req, strlen(req), deadline) < 0) {
		snprintf(why, 256, "sending \"%.20s...\" to port %d: %s", req, port,
		         strerror(errno));
	} else if ((n = tl_read_full(fd, out, cap - 1, deadline)) < 0) {
		snprintf(why, 256, "reading the answer from port %d: %s", port,
		         strerror(errno));
	} else {
		out[n] = '\0';
		if (sscanf(out, "HTTP/%*d.%*d %d", &status) != 1) {
			snprintf(why, 256, "port %d answered \"%.60s\", not HTTP", port,
			         out);
			status = -1;
		}
	}
	close(fd);
	return status;
}

/* ask: ask_why, and fail() if there is no HTTP status. */
static int
ask(struct test *t, const char *host, int port, const char *req, char *out,
    size_t cap)
{
	char why[256];
	int status = ask_why(host, port, req, out, cap, why);

	return status < 0 ? fail(t, "%s", why) : status;
}

/* get: "GET path" to 127.0.0.1:port; the status, or -1 and fail(). */
static int
get(struct test *t, int port, const char *path, char *out, size_t cap)
{
	char req[512];

	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n"
	         "User-Agent: dialback-tests\r\n\r\n", path);
	return ask(t, "127.0.0.1", port, req, out, cap);
}

/* body: the answer's body, after its headers. */
static const char *
body(const char *answer)
{
	const char *p = strstr(answer, "\r\n\r\n");

	return p != NULL ? p + 4 : "";
}

/* value: the sample of series ("name" or "name{labels}") in an exposition;
 * 0, or -1 if there is none. */
static int
value(const char *text, const char *series, double *v)
{
	size_t n = strlen(series);
	const char *p = text;

	while ((p = strstr(p, series)) != NULL) {
		if ((p == text || p[-1] == '\n') && p[n] == ' ') {
			*v = strtod(p + n + 1, NULL);
			return 0;
		}
		p += n;
	}
	return -1;
}

/* scrape_expect: GET /metrics until series has the value want, for up to
 * ms (counters settle when the server has seen the close).  0, or -1 and
 * fail(). */
static int
scrape_expect(struct test *t, int port, const char *series, double want,
              int ms)
{
	char *out = malloc(ANSWER_MAX);
	int64_t deadline = tl_now_ms() + T(ms);
	double v = -1;
	int status = -1;

	if (out == NULL) {
		return fail(t, "out of memory");
	}
	for (;;) {
		status = get(t, port, "/metrics", out, ANSWER_MAX);
		if (status != 200) {
			free(out);
			return status < 0 ? -1 : fail(t, "GET /metrics: %d", status);
		}
		if (value(body(out), series, &v) == 0 && v == want) {
			free(out);
			return 0;
		}
		if (tl_now_ms() >= deadline) {
			break;
		}
		tl_pause(50);
	}
	free(out);
	return fail(t, "%s is %g, want %g (within %d ms)", series, v, want, ms);
}

/* ---- processes ---------------------------------------------------------- */

/* echo_user: one user through the public port: n bytes, echoed back. */
static int
echo_user(struct test *t, size_t n)
{
	int64_t deadline = tl_now_ms() + T(IO_MS);
	uint8_t *buf = malloc(n + 1), *back = malloc(n + 1);
	struct tl_stream s;
	int fd = -1, rc = -1;

	if (buf == NULL || back == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	tl_stream_init(&s, (uint32_t)n);
	tl_stream_fill(&s, buf, n);
	if ((fd = user_connect(t, t->pub)) < 0) {
		goto out;
	}
	if (tl_write_all(fd, buf, n, deadline) < 0 || shutdown(fd, SHUT_WR) < 0
	    || tl_read_full(fd, back, n + 1, deadline) != (ssize_t)n
	    || memcmp(buf, back, n) != 0) {
		fail(t, "%zu bytes through the tunnel did not come back whole: %s",
		     n, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	user_close(t, fd);
	free(buf);
	free(back);
	return rc;
}

/* served: an echo service, ./server with -metrics on p[4] (and extra
 * arguments up to a NULL), and ./client attached.  p holds 5 ports. */
static int
served(struct test *t, int *p, const char *token)
{
	char m[16];

	if (pick_server_ports(t, p, 5) < 0) {
		return -1;
	}
	snprintf(m, sizeof(m), "%d", p[4]);
	if (start_svc(t, "svc", "echo", t->loc, NULL) == NULL) {
		return -1;
	}
	if (token != NULL) {
		if (start_server(t, "server", "-metrics", m, "-token", token, NULL)
		    == NULL) {
			return -1;
		}
		return start_client(t, "client", t->ctl, t->loc, NULL, 1, "-token",
		                    token, NULL) == NULL ? -1 : 0;
	}
	if (start_server(t, "server", "-metrics", m, NULL) == NULL) {
		return -1;
	}
	return start_client(t, "client", t->ctl, t->loc, NULL, 1, NULL) == NULL
	       ? -1 : 0;
}

/* tool: name's path into buf, or a skip (a failure with CI=true). */
static int
tool(struct test *t, const char *name, char *buf, size_t len)
{
	char why[96];
	static char whys[4][96];
	static int k;

	if (tl_find_prog(name, buf, len) == 0) {
		return 0;
	}
	snprintf(why, sizeof(why), "%s not installed", name);
	/* t->skip must outlive the test's return. */
	snprintf(whys[k % 4], sizeof(whys[0]), "%s", why);
	missing_tool(t, whys[k++ % 4]);
	return -1;
}

/* promtool_check: promtool check metrics on the exposition in file.  0,
 * or -1 and fail() with promtool's complaint. */
static int
promtool_check(struct test *t, const char *promtool, const char *file)
{
	const char *argv[] = { "/bin/sh", "-c", "exec \"$0\" check metrics < \"$1\"",
	                       promtool, file, NULL };
	char log[300];
	struct tl_proc *p = start(t, "promtool", argv, NULL, 0);
	char *said;

	if (p == NULL) {
		return -1;
	}
	p->tool = 1;
	if (!tl_proc_wait(p, T(IO_MS))) {
		return fail(t, "promtool still running after %d ms", T(IO_MS));
	}
	if (WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0) {
		return 0;
	}
	snprintf(log, sizeof(log), "%s", p->log);
	said = tl_read_file(log, NULL);
	fail(t, "promtool check metrics rejects %s: %.300s", file,
	     said != NULL ? said : "(no output)");
	free(said);
	return -1;
}

/* ==== the tests ============================================================ */

/* The exposition: its content type, every metric the README lists, and
 * the numbers after one user, a refused one, a wrong token and garbage on
 * the control port; promtool accepts it. */
static void
test_exposition(struct test *t)
{
	static const char *const names[] = {
		"dialback_sessions", "dialback_users_active",
		"dialback_users_waiting", "dialback_users_total",
		"dialback_tunnels_pooled", "dialback_bytes_total",
		"dialback_refused_total", "dialback_handshake_failures_total",
		"dialback_open_fds", "dialback_build_info",
		"dialback_uptime_seconds",
	};
	char promtool[256], path[300], series[128], *out = NULL;
	const char *args[] = { "-token", "not-the-token-at-all", NULL };
	int p[5], fd, have_promtool;
	size_t i;
	double v;

	have_promtool = tl_find_prog("promtool", promtool, sizeof(promtool)) == 0;
	if (served(t, p, "the-token-for-metrics-tests") < 0) {
		return;
	}
	/* One user passes; it is counted once closed, and its bytes. */
	if (echo_user(t, 1000) < 0
	    || scrape_expect(t, p[4], "dialback_users_total", 1, 5000) < 0) {
		return;
	}
	snprintf(series, sizeof(series),
	         "dialback_bytes_total{direction=\"in\",port=\"%d\"}", t->pub);
	if (scrape_expect(t, p[4], series, 1000, 5000) < 0) {
		return;
	}
	snprintf(series, sizeof(series),
	         "dialback_bytes_total{direction=\"out\",port=\"%d\"}", t->pub);
	if (scrape_expect(t, p[4], series, 1000, 5000) < 0
	    || scrape_expect(t, p[4], "dialback_sessions", 1, 5000) < 0) {
		return;
	}
	/* Garbage on the control port is a failed handshake; a client with
	 * the wrong token is one, and a refusal. */
	if ((fd = user_connect(t, t->ctl)) < 0) {
		return;
	}
	if (tl_write_all(fd, "GET / HTTP/1.0\r\n\r\n", 18, tl_now_ms() + 5000) < 0) {
		fail(t, "writing to the control port: %s", strerror(errno));
		return;
	}
	if (scrape_expect(t, p[4], "dialback_handshake_failures_total", 1,
	                  5000) < 0) {
		return;
	}
	user_close(t, fd);
	if (start_client_v(t, "wrong", t->ctl, t->loc, NULL, 0, args) == NULL
	    || scrape_expect(t, p[4],
	                     "dialback_refused_total{reason=\"wrong_token\"}", 1,
	                     10000) < 0
	    || scrape_expect(t, p[4], "dialback_handshake_failures_total", 2,
	                     5000) < 0) {
		return;
	}
	/* The wrong client exits 1 by itself (a wrong token is final). */
	if (expect_exit(t, &t->procs[t->nprocs - 1], 1, T(10000)) < 0) {
		return;
	}

	if ((out = malloc(ANSWER_MAX)) == NULL) {
		fail(t, "out of memory");
		return;
	}
	if (get(t, p[4], "/metrics", out, ANSWER_MAX) != 200) {
		fail(t, "GET /metrics did not answer 200");
		goto out;
	}
	if (strstr(out, "\r\nContent-Type: text/plain; version=0.0.4; "
	           "charset=utf-8\r\n") == NULL) {
		fail(t, "GET /metrics: no 0.0.4 Content-Type in \"%.200s\"", out);
		goto out;
	}
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char type[128];

		snprintf(type, sizeof(type), "# TYPE %s ", names[i]);
		if (strstr(body(out), type) == NULL) {
			fail(t, "/metrics lacks %s", names[i]);
			goto out;
		}
	}
	snprintf(series, sizeof(series), "dialback_build_info{version=\"%s\"}",
	         DIALBACK_VERSION);
	if (value(body(out), series, &v) != 0 || v != 1) {
		fail(t, "/metrics lacks %s 1", series);
		goto out;
	}
	if (value(body(out), "dialback_refused_total{reason=\"denied\"}", &v) != 0
	    || value(body(out), "dialback_refused_total{reason=\"no_client\"}",
	             &v) != 0) {
		fail(t, "/metrics lacks the refusal reasons denied and no_client");
		goto out;
	}
	if (value(body(out), "dialback_open_fds", &v) != 0 || v < 5) {
		fail(t, "dialback_open_fds is missing or %g", v);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/metrics.txt", t->dir);
	if (tl_write_file(path, body(out), strlen(body(out))) < 0) {
		fail(t, "writing %s: %s", path, strerror(errno));
		goto out;
	}
	if (!have_promtool) {
		missing_tool(t, "promtool not installed");
		goto out;
	}
	promtool_check(t, promtool, path);
out:
	free(out);
}

/* A user with no client attached is refused, and counted so. */
static void
test_refused_no_client(struct test *t)
{
	char m[16];
	int p[5], fd;

	if (pick_server_ports(t, p, 5) < 0) {
		return;
	}
	snprintf(m, sizeof(m), "%d", p[4]);
	if (start_server(t, "server", "-metrics", m, NULL) == NULL
	    || scrape_expect(t, p[4], "dialback_refused_total{reason="
	                     "\"no_client\"}", 0, 1000) < 0) {
		return;
	}
	if ((fd = user_connect(t, t->pub)) < 0) {
		return;
	}
	if (tl_wait_closed(fd, tl_now_ms() + T(5000), NULL, NULL) != 0) {
		fail(t, "a user with no client attached was not closed");
		return;
	}
	user_close(t, fd);
	scrape_expect(t, p[4], "dialback_refused_total{reason=\"no_client\"}", 1,
	              5000);
	scrape_expect(t, p[4], "dialback_users_total", 0, 1000);
}

/* While a user relays, it is active and its bytes count already. */
static void
test_live_user(struct test *t)
{
	char series[128], back[100];
	int p[5], fd;

	if (served(t, p, NULL) < 0 || (fd = user_connect(t, t->pub)) < 0) {
		return;
	}
	if (tl_write_all(fd, "0123456789", 10, tl_now_ms() + T(IO_MS)) < 0
	    || tl_read_full(fd, back, 10, tl_now_ms() + T(IO_MS)) != 10) {
		fail(t, "echo through the tunnel: %s", strerror(errno));
		return;
	}
	snprintf(series, sizeof(series),
	         "dialback_bytes_total{direction=\"out\",port=\"%d\"}", t->pub);
	if (scrape_expect(t, p[4], "dialback_users_active", 1, 5000) < 0
	    || scrape_expect(t, p[4], series, 10, 5000) < 0) {
		return;
	}
	user_close(t, fd);
	scrape_expect(t, p[4], "dialback_users_active", 0, 5000);
	scrape_expect(t, p[4], series, 10, 5000);
}

/* prometheus itself scrapes the server every second; its query API sees
 * dialback_users_total go from 0 to 3 as users pass. */
static void
test_prometheus(struct test *t)
{
	char prom[256], cfg[300], data[300], arg[4][400], req[256];
	char *out = NULL, *yml = NULL;
	const char *argv[8];
	int p[5], pp[1], n, i, status;
	int64_t deadline;
	struct tl_proc *pr;

	if (tool(t, "prometheus", prom, sizeof(prom)) < 0
	    || served(t, p, NULL) < 0 || tl_free_ports("127.0.0.1", pp, 1) < 0) {
		return;
	}
	snprintf(cfg, sizeof(cfg), "%s/prometheus.yml", t->dir);
	snprintf(data, sizeof(data), "%s/prometheus-data", t->dir);
	if ((yml = malloc(1024)) == NULL || (out = malloc(ANSWER_MAX)) == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	n = snprintf(yml, 1024, "global:\n  scrape_interval: 1s\n"
	             "  scrape_timeout: 1s\nscrape_configs:\n"
	             "  - job_name: dialback\n    static_configs:\n"
	             "      - targets: ['127.0.0.1:%d']\n", p[4]);
	if (tl_write_file(cfg, yml, (size_t)n) < 0) {
		fail(t, "writing %s: %s", cfg, strerror(errno));
		goto out;
	}
	snprintf(arg[0], sizeof(arg[0]), "--config.file=%s", cfg);
	snprintf(arg[1], sizeof(arg[1]), "--storage.tsdb.path=%s", data);
	snprintf(arg[2], sizeof(arg[2]), "--web.listen-address=127.0.0.1:%d",
	         pp[0]);
	snprintf(arg[3], sizeof(arg[3]), "--log.level=warn");
	argv[0] = prom;
	for (i = 0; i < 4; i++) {
		argv[i + 1] = arg[i];
	}
	argv[5] = NULL;
	if ((pr = start(t, "prometheus", argv, NULL, TL_GROUP)) == NULL) {
		goto out;
	}
	snprintf(req, sizeof(req), "GET /api/v1/query?query=dialback_users_total"
	         " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
	/* First the value before any user: 0.  Then three users, and 3. */
	for (i = 0; i < 2; i++) {
		const char *want = i == 0 ? "\"0\"]" : "\"3\"]";

		deadline = tl_now_ms() + T(60000);
		for (;;) {
			int fd = tl_connect("127.0.0.1", pp[0], tl_now_ms() + 1000);

			status = -1;
			if (fd >= 0) {
				close(fd);
				status = ask(t, "127.0.0.1", pp[0], req, out, ANSWER_MAX);
				if (status < 0) {
					goto out;
				}
			}
			if (status == 200 && strstr(out, "\"value\":[") != NULL
			    && strstr(strstr(out, "\"value\":["), want) != NULL) {
				break;
			}
			if (expect_alive(t, pr) < 0) {
				goto out;
			}
			if (tl_now_ms() >= deadline) {
				fail(t, "prometheus never showed dialback_users_total %c "
				     "within 60 s; last answer: %.300s", want[1],
				     status < 0 ? "(not listening)" : body(out));
				goto out;
			}
			tl_pause(250);
		}
		if (i == 0 && (echo_user(t, 100) < 0 || echo_user(t, 100) < 0
		               || echo_user(t, 100) < 0)) {
			goto out;
		}
	}
out:
	free(yml);
	free(out);
}

/* A bare dump of the page: headless chromium on url, its DOM into
 * DIR/chromium.out.  0, or -1 and fail(). */
static int
browse(struct test *t, const char *chromium, const char *url)
{
	char profile[300], home[300];
	const char *env[] = { home, NULL };
	const char *argv[] = {
		chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-dev-shm-usage", "--no-first-run",
		"--no-default-browser-check", "--disable-background-networking",
		"--disable-component-update", "--disable-sync",
		"--disable-extensions", profile, "--dump-dom", url, NULL
	};
	struct tl_proc *b;
	siginfo_t si;
	int64_t deadline = tl_now_ms() + T(45000);

	snprintf(profile, sizeof(profile), "--user-data-dir=%s/profile", t->dir);
	snprintf(home, sizeof(home), "HOME=%s", t->dir);
	if ((b = start(t, "chromium", argv, env, TL_SPLIT_OUT | TL_GROUP))
	    == NULL) {
		return -1;
	}
	/* Wait without reaping, so the group's id stays ours to signal. */
	for (;;) {
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, b->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0
		    && si.si_pid == b->pid) {
			break;
		}
		if (tl_now_ms() >= deadline) {
			break;
		}
		tl_pause(50);
	}
	tl_kill_group(b);
	tl_proc_wait(b, STOP_MS);
	return 0;
}

/* Chromium renders / and the DOM it dumps shows the session: its public
 * port and its client's address, and the totals. */
static void
test_browser(struct test *t)
{
	char chromium[256], url[128], path[300], want[128];
	char *dom;
	int p[5];

	if ((tl_find_prog("chromium", chromium, sizeof(chromium)) < 0
	     && tool(t, "chromium-browser", chromium, sizeof(chromium)) < 0)
	    || served(t, p, NULL) < 0 || echo_user(t, 5) < 0) {
		return;
	}
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", p[4]);
	if (browse(t, chromium, url) < 0) {
		return;
	}
	snprintf(path, sizeof(path), "%s/chromium.out", t->dir);
	dom = tl_read_file(path, NULL);
	snprintf(want, sizeof(want), "<td class=\"n\">%d</td><td>127.0.0.1:",
	         t->pub);
	if (dom == NULL || strstr(dom, "<table id=\"sessions\">") == NULL) {
		fail(t, "chromium's DOM has no sessions table: %.300s",
		     dom ? dom : "(no output)");
	} else if (strstr(dom, want) == NULL) {
		fail(t, "chromium's DOM lacks the session row \"%s\"", want);
	} else if (strstr(dom, "<th>users in all</th><td class=\"n\">1</td>")
	           == NULL) {
		fail(t, "chromium's DOM lacks the total of 1 user");
	}
	free(dom);
}

/* The page itself, by hand: HTML, the session, and what is not served. */
static void
test_paths(struct test *t)
{
	char *out = malloc(ANSWER_MAX), *big = malloc(METRICS_REQ_MAX * 2);
	char want[64];
	int p[5], st;

	if (out == NULL || big == NULL) {
		fail(t, "out of memory");
		goto out;
	}
	if (served(t, p, NULL) < 0) {
		goto out;
	}
	if ((st = get(t, p[4], "/", out, ANSWER_MAX)) != 200) {
		fail(t, "GET /: %d, want 200", st);
		goto out;
	}
	snprintf(want, sizeof(want), "<td class=\"n\">%d</td>", t->pub);
	if (strstr(out, "\r\nContent-Type: text/html; charset=utf-8\r\n") == NULL
	    || strstr(out, "<!doctype html>") == NULL
	    || strstr(out, want) == NULL) {
		fail(t, "GET /: not the page with port %d: %.300s", t->pub, out);
		goto out;
	}
	if ((st = get(t, p[4], "/metrics?x=1", out, ANSWER_MAX)) != 200) {
		fail(t, "GET /metrics?x=1: %d, want 200", st);
		goto out;
	}
	if ((st = get(t, p[4], "/nope", out, ANSWER_MAX)) != 404
	    || (st = get(t, p[4], "/metricsx", out, ANSWER_MAX)) != 404
	    || (st = get(t, p[4], "/index.html", out, ANSWER_MAX)) != 404) {
		fail(t, "another path: %d, want 404", st);
		goto out;
	}
	st = ask(t, "127.0.0.1", p[4], "POST /metrics HTTP/1.0\r\n"
	         "Content-Length: 0\r\n\r\n", out, ANSWER_MAX);
	if (st != 404) {
		fail(t, "POST /metrics: %d, want 404", st);
		goto out;
	}
	st = ask(t, "127.0.0.1", p[4], "HEAD /metrics HTTP/1.0\r\n\r\n", out,
	         ANSWER_MAX);
	if (st != 200 || strcmp(body(out), "") != 0) {
		fail(t, "HEAD /metrics: %d with a body of %zu bytes", st,
		     strlen(body(out)));
		goto out;
	}
	st = ask(t, "127.0.0.1", p[4], "nonsense\r\n\r\n", out, ANSWER_MAX);
	if (st != 400) {
		fail(t, "a malformed request: %d, want 400", st);
		goto out;
	}
	/* Headers that never end within the cap. */
	memcpy(big, "GET /metrics HTTP/1.0\r\n", 23);
	memset(big + 23, 'x', METRICS_REQ_MAX * 2 - 24);
	big[METRICS_REQ_MAX * 2 - 1] = '\0';
	st = ask(t, "127.0.0.1", p[4], big, out, ANSWER_MAX);
	if (st != 431) {
		fail(t, "a request over %d bytes: %d, want 431", METRICS_REQ_MAX,
		     st);
		goto out;
	}
	echo_user(t, 100);
out:
	free(out);
	free(big);
}

/*
 * Scrapers that connect and send nothing, or half a request, or ask and
 * never read, hold up nothing: 4 MiB go through the tunnel meanwhile, the server answers a
 * scrape once slots free, and the silent ones are closed by the read
 * deadline (not before 4 s, not after 5 s and a margin).
 */
static void
test_stalled(struct test *t)
{
	static const char half[] = "GET /metrics HTTP/1.0\r\nHost: x\r\n";
	int p[5], fd[METRICS_CONNS], i;
	int64_t t0, deadline;
	char *out = malloc(ANSWER_MAX);

	if (out == NULL) {
		fail(t, "out of memory");
		return;
	}
	if (served(t, p, NULL) < 0) {
		goto out;
	}
	for (i = 0; i < METRICS_CONNS; i++) {
		fd[i] = -1;
	}
	t0 = tl_now_ms();
	for (i = 0; i < METRICS_CONNS; i++) {
		if ((fd[i] = user_open(t, "127.0.0.1", p[4])) < 0) {
			goto out;
		}
	}
	/* The first sends half a request and stops (a read would block);
	 * the last asks and never reads: its answer waits in the kernel. */
	if (tl_write_all(fd[0], half, strlen(half), tl_now_ms() + 5000) < 0) {
		fail(t, "asking: %s", strerror(errno));
		goto out;
	}
	if (tl_write_all(fd[METRICS_CONNS - 1], "GET / HTTP/1.0\r\n\r\n", 18,
	                 tl_now_ms() + 5000) < 0) {
		fail(t, "asking: %s", strerror(errno));
		goto out;
	}
	if (echo_user(t, 4 << 20) < 0) {
		goto out;
	}
	deadline = t0 + T(METRICS_READ_MS + 3000);
	for (i = 0; i < METRICS_CONNS - 1; i++) {
		if (tl_wait_closed(fd[i], deadline, NULL, NULL) != 0) {
			fail(t, "a silent scraper still open %lld ms after it "
			     "connected", (long long)(tl_now_ms() - t0));
			goto out;
		}
		if (tl_now_ms() - t0 < METRICS_READ_MS - 1000) {
			fail(t, "a silent scraper closed after %lld ms, before the "
			     "read deadline", (long long)(tl_now_ms() - t0));
			goto out;
		}
	}
	if (scrape_expect(t, p[4], "dialback_users_total", 1, 5000) < 0) {
		goto out;
	}
	/* The one that asked got its page, then the server's FIN. */
	if (tl_read_full(fd[METRICS_CONNS - 1], out, ANSWER_MAX - 1,
	                 tl_now_ms() + T(5000)) <= 0
	    || strncmp(out, "HTTP/1.0 200 OK\r\n", 17) != 0) {
		fail(t, "the scraper that did not read found no answer waiting");
	}
out:
	free(out);
}

/*
 * More scrapers than the cap: the ones over it are answered 503 or closed
 * at once (well before any deadline), relaying goes on, and once the
 * silent ones go, scrapes are answered again.
 */
static void
test_cap(struct test *t)
{
	int p[5], fd[METRICS_CONNS], extra, i, status;
	int64_t t0;
	char buf[512];
	ssize_t n;

	if (served(t, p, NULL) < 0) {
		return;
	}
	for (i = 0; i < METRICS_CONNS; i++) {
		if ((fd[i] = user_open(t, "127.0.0.1", p[4])) < 0) {
			return;
		}
	}
	for (i = 0; i < 4; i++) {
		t0 = tl_now_ms();
		if ((extra = user_open(t, "127.0.0.1", p[4])) < 0) {
			return;
		}
		tl_write_all(extra, "GET /metrics HTTP/1.0\r\n\r\n", 25,
		             tl_now_ms() + 1000);
		n = tl_read_full(extra, buf, sizeof(buf) - 1, t0 + T(2000));
		if (n < 0 && errno == ETIMEDOUT) {
			fail(t, "scraper %d over the cap of %d was kept waiting",
			     i + 1, METRICS_CONNS);
			return;
		}
		buf[n > 0 ? n : 0] = '\0';
		if (n > 0 && strncmp(buf, "HTTP/1.0 503", 12) != 0) {
			fail(t, "scraper %d over the cap was served: %.60s", i + 1,
			     buf);
			return;
		}
		user_close(t, extra);
	}
	if (echo_user(t, 1 << 20) < 0) {
		return;
	}
	for (i = 0; i < METRICS_CONNS; i++) {
		user_close(t, fd[i]);
	}
	/* The server notices the closes on its next turns; until then a
	 * scrape may still be turned away. */
	t0 = tl_now_ms();
	for (;;) {
		char why[256] = "";

		status = ask_why("127.0.0.1", p[4], "GET /metrics HTTP/1.0\r\n\r\n",
		                 buf, sizeof(buf), why);
		if (status == 200) {
			break;
		}
		if (tl_now_ms() - t0 > T(3000)) {
			fail(t, "no scrape answered once the silent ones left: %d %s",
			     status, why);
			return;
		}
		tl_pause(50);
	}
}

/* -metrics PORT listens on 127.0.0.1 only: 127.0.0.2 (loopback too) is
 * refused; ":PORT" listens on every interface. */
static void
test_bare_port(struct test *t)
{
	char m[16], *out = malloc(ANSWER_MAX);
	struct tl_proc *server;
	int p[5], fd;

	if (out == NULL) {
		fail(t, "out of memory");
		return;
	}
	if (pick_server_ports(t, p, 5) < 0) {
		goto out;
	}
	snprintf(m, sizeof(m), "%d", p[4]);
	if ((server = start_server(t, "server", "-metrics", m, NULL)) == NULL) {
		goto out;
	}
	if (get(t, p[4], "/metrics", out, ANSWER_MAX) != 200) {
		fail(t, "no answer on 127.0.0.1:%d", p[4]);
		goto out;
	}
	fd = tl_connect("127.0.0.2", p[4], tl_now_ms() + T(3000));
	if (fd >= 0) {
		close(fd);
		fail(t, "-metrics %d answers on 127.0.0.2: not bound to "
		     "127.0.0.1 alone", p[4]);
		goto out;
	}
	if (tl_ipv6_ok()) {
		fd = tl_connect("::1", p[4], tl_now_ms() + T(3000));
		if (fd >= 0) {
			close(fd);
			fail(t, "-metrics %d answers on ::1", p[4]);
			goto out;
		}
	}
	if (stop(t, server) < 0) {
		goto out;
	}
	/* ":PORT": every interface. */
	snprintf(m, sizeof(m), ":%d", p[4]);
	if (start_server(t, "server-all", "-metrics", m, NULL) == NULL) {
		goto out;
	}
	fd = tl_connect("127.0.0.2", p[4], tl_now_ms() + T(3000));
	if (fd < 0) {
		fail(t, "-metrics :%d: no answer on 127.0.0.2: %s", p[4],
		     strerror(errno));
		goto out;
	}
	close(fd);
out:
	free(out);
}

/* A bad -metrics is a usage error (exit 2); a port in use, exit 1. */
static void
test_bad_flag(struct test *t)
{
	char c[64], u[64], pu[64], m[16];
	const char *argv[] = { "./server", "-control", c, "-tunnel", u,
	                       "-public", pu, "-metrics", "http://x:1", NULL };
	struct tl_proc *s;
	int p[5], busy;

	if (pick_server_ports(t, p, 5) < 0) {
		return;
	}
	tl_fmt_addr(c, "127.0.0.1", p[0]);
	tl_fmt_addr(u, "127.0.0.1", p[1]);
	tl_fmt_addr(pu, "127.0.0.1", p[2]);
	if ((s = start(t, "bad", argv, NULL, 0)) == NULL
	    || expect_exit(t, s, 2, T(5000)) < 0 || expect_log(t, s, "-metrics")
	    < 0) {
		return;
	}
	if ((busy = tl_listen("127.0.0.1", p[4])) < 0) {
		fail(t, "listen: %s", strerror(errno));
		return;
	}
	snprintf(m, sizeof(m), "%d", p[4]);
	argv[8] = m;
	if ((s = start(t, "busy", argv, NULL, 0)) != NULL) {
		if (expect_exit(t, s, 1, T(5000)) == 0) {
			expect_log(t, s, "metrics port");
		}
	}
	close(busy);
}

#define EMFILE_LIMIT  48       /* the server's RLIMIT_NOFILE */
#define EMFILE_SILENT 60       /* silent tunnel connections to exhaust it */
#define EMFILE_CPU_MS 300      /* most CPU time it may use in the window */
#define EMFILE_WINDOW 1500

/*
 * The server out of descriptors (a hard limit of 48, taken by silent
 * tunnel connections) with a scraper waiting in the metrics listener's
 * queue: the loop does not spin on the listener it cannot accept from,
 * and once the tunnel connections time out the scraper is served, with
 * the connections shed counted as out_of_fds.
 */
static void
test_emfile(struct test *t)
{
	char c[64], u[64], pb[64], m[16], lim[16], why[256];
	const char *argv[] = { tl_h.self, "--nofile", lim, "./server",
	                       "-control", c, "-tunnel", u, "-public", pb,
	                       "-metrics", m, NULL };
	static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
	int silent[EMFILE_SILENT], nsilent = 0, p[5], i, k, fd = -1, status;
	struct tl_proc *server;
	char *out = malloc(ANSWER_MAX);
	int64_t deadline;
	long cpu0, cpu1;
	ssize_t n;
	double v;

	if (out == NULL || pick_server_ports(t, p, 5) < 0) {
		goto out;
	}
	snprintf(lim, sizeof(lim), "%d", EMFILE_LIMIT);
	snprintf(m, sizeof(m), "%d", p[4]);
	tl_fmt_addr(c, "127.0.0.1", t->ctl);
	tl_fmt_addr(u, "127.0.0.1", t->tun);
	tl_fmt_addr(pb, "127.0.0.1", t->pub);
	if ((server = start(t, "server", argv, NULL, 0)) == NULL) {
		goto out;
	}
	server->product = 1;     /* ./server, through our --nofile */
	if (wait_log(t, server, "listening", START_MS) < 0) {
		goto out;
	}
	if (tl_count_fds(server->pid) < 0) {
		t->skip = "no /proc/PID/fd";
		goto out;
	}
	for (i = 0; i < EMFILE_SILENT; i++) {
		if ((silent[i] = tl_connect_start(NULL, "127.0.0.1", t->tun)) < 0) {
			fail(t, "silent connection %d: %s", i + 1, strerror(errno));
			goto out;
		}
		nsilent++;
	}
	deadline = tl_now_ms() + T(5000);
	while ((k = tl_count_fds(server->pid)) != EMFILE_LIMIT) {
		if (tl_now_ms() >= deadline) {
			fail(t, "the server holds %d descriptors, want all %d", k,
			     EMFILE_LIMIT);
			goto out;
		}
		tl_pause(20);
	}
	if ((fd = tl_connect("127.0.0.1", p[4], tl_now_ms() + T(3000))) < 0
	    || tl_write_all(fd, req, strlen(req), tl_now_ms() + T(3000)) < 0) {
		fail(t, "a scraper could not queue its request: %s",
		     strerror(errno));
		goto out;
	}
	/* A window to measure, not a wait for anything. */
	cpu0 = tl_cpu_ms(server->pid);
	tl_pause(EMFILE_WINDOW);
	cpu1 = tl_cpu_ms(server->pid);
	if (cpu0 >= 0 && cpu1 >= 0 && cpu1 - cpu0 > T(EMFILE_CPU_MS)) {
		fail(t, "out of descriptors, the server used %ld ms of CPU in "
		     "%d ms: it spins", cpu1 - cpu0, EMFILE_WINDOW);
		goto out;
	}
	/* The tunnel connections time out (HANDSHAKE_MS); then it answers. */
	n = tl_read_full(fd, out, ANSWER_MAX - 1, tl_now_ms() + T(15000));
	if (n <= 0) {
		fail(t, "the waiting scraper was not answered once descriptors "
		     "were free: %s", n < 0 ? strerror(errno) : "closed");
		goto out;
	}
	out[n] = '\0';
	if (sscanf(out, "HTTP/1.0 %d", &status) != 1 || status != 200) {
		fail(t, "the waiting scraper got \"%.60s\"", out);
		goto out;
	}
	if (value(body(out), "dialback_refused_total{reason=\"out_of_fds\"}",
	          &v) != 0 || v < 1) {
		fail(t, "the connections shed are not counted as out_of_fds");
		goto out;
	}
	status = ask_why("127.0.0.1", p[4], req, out, ANSWER_MAX, why);
	if (status != 200) {
		fail(t, "a scrape after it all: %d %s", status, why);
	}
out:
	for (i = 0; i < nsilent; i++) {
		close(silent[i]);
	}
	if (fd >= 0) {
		close(fd);
	}
	free(out);
}

/* The client's content (metrics_client_write, for when client.c wires
 * it): the same names, by port; the page escapes what a peer chose; and
 * promtool accepts the exposition. */
static void
test_client_content(struct test *t)
{
	struct metrics_service svc[2] = {
		{ 8007, "127.0.0.1:8080", "attached", 0, 2, 1, 10, 300, 400 },
		{ 9001, "<b>\"db\"&'x'</b>", "connecting", 0, 0, 0, 0, 0, 0 },
	};
	struct metrics_reason why[2] = { { "local_unreachable", 3 },
	                                  { "tunnel_failed", 0 } };
	struct metrics_client mc = { "203.0.113.7:8009", 0, svc, 2, why, 2, 1 };
	struct mbuf b = { NULL, 0, 0, 0 };
	char promtool[256], path[300];
	double v;

	mc.started = now_ms();
	svc[0].since = now_ms();
	metrics_client_write(&b, METRICS_PROM, &mc);
	if (b.p == NULL || b.over) {
		fail(t, "no exposition");
		goto out;
	}
	if (value(b.p, "dialback_users_total", &v) != 0 || v != 10
	    || value(b.p, "dialback_sessions", &v) != 0 || v != 1
	    || value(b.p, "dialback_users_active", &v) != 0 || v != 2
	    || value(b.p, "dialback_bytes_total{direction=\"out\",port=\"8007\"}",
	             &v) != 0 || v != 400
	    || value(b.p, "dialback_refused_total{reason=\"local_unreachable\"}",
	             &v) != 0 || v != 3
	    || strstr(b.p, "\ndialback_build_info{version=\"") == NULL) {
		fail(t, "the client's exposition is not as given: %.400s", b.p);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/client.txt", t->dir);
	if (tl_write_file(path, b.p, b.len) < 0) {
		fail(t, "writing %s: %s", path, strerror(errno));
		goto out;
	}
	free(b.p);
	memset(&b, 0, sizeof(b));
	metrics_client_write(&b, METRICS_HTML, &mc);
	if (b.p == NULL || strstr(b.p, "<b>") != NULL
	    || strstr(b.p, "&lt;b&gt;&quot;db&quot;&amp;&#39;x&#39;&lt;/b&gt;")
	       == NULL) {
		fail(t, "the client's page does not escape a service's name: "
		     "%.600s", b.p ? b.p : "");
		goto out;
	}
	if (tool(t, "promtool", promtool, sizeof(promtool)) == 0) {
		promtool_check(t, promtool, path);
	}
out:
	free(b.p);
}

/* The client's own -metrics, live: a user through it is counted once
 * closed, with its bytes by public port; a user whose service is down is
 * refused as local_unreachable; promtool accepts what it serves. */
static void
test_client_live(struct test *t)
{
	char m[16], series[128], promtool[256], path[300], *out = NULL;
	struct tl_proc *svc;
	int p[5], fd;

	if (pick_server_ports(t, p, 5) < 0) {
		return;
	}
	snprintf(m, sizeof(m), "%d", p[4]);
	if ((svc = start_svc(t, "svc", "echo", t->loc, NULL)) == NULL
	    || start_server(t, "server", NULL) == NULL
	    || start_client(t, "client", t->ctl, t->loc, NULL, 1, "-metrics", m,
	                    NULL) == NULL
	    || echo_user(t, 1000) < 0
	    || scrape_expect(t, p[4], "dialback_users_total", 1, 5000) < 0
	    || scrape_expect(t, p[4], "dialback_sessions", 1, 5000) < 0) {
		return;
	}
	snprintf(series, sizeof(series),
	         "dialback_bytes_total{direction=\"in\",port=\"%d\"}", t->pub);
	if (scrape_expect(t, p[4], series, 1000, 5000) < 0) {
		return;
	}
	kill(svc->pid, SIGTERM);
	if (expect_exit(t, svc, 0, T(5000)) < 0
	    || (fd = user_connect(t, t->pub)) < 0) {
		return;
	}
	if (scrape_expect(t, p[4],
	                  "dialback_refused_total{reason=\"local_unreachable\"}",
	                  1, 5000) < 0) {
		return;
	}
	user_close(t, fd);
	if ((out = malloc(ANSWER_MAX)) == NULL) {
		fail(t, "out of memory");
		return;
	}
	if (get(t, p[4], "/metrics", out, ANSWER_MAX) != 200) {
		fail(t, "GET /metrics on the client did not answer 200");
		goto out;
	}
	snprintf(path, sizeof(path), "%s/client-live.txt", t->dir);
	if (tl_write_file(path, body(out), strlen(body(out))) < 0) {
		fail(t, "writing %s: %s", path, strerror(errno));
		goto out;
	}
	if (tool(t, "promtool", promtool, sizeof(promtool)) == 0) {
		promtool_check(t, promtool, path);
	}
out:
	free(out);
}

/* ==== a responder with a large page ======================================= */

/*
 * Neither program's page outgrows what the kernel holds for one scraper
 * on loopback, even one with a 4 KiB window and a 536-byte MSS (some 50
 * to 90 KB): the server's /metrics is about 2.5 KB and 115 bytes per
 * public port it has served, the client's bounded by its 64 services.
 * So the write deadline is tested on metrics.c's responder itself, given
 * a page that cannot fit.
 */
static void
big_page(void *ctx, enum metrics_page page, struct mbuf *b)
{
	static const char line[] =
		"# padding, so that a scraper that never reads stalls us.\n";
	size_t left = *(const size_t *)ctx, n;

	(void)page;
	for (; left > 0 && !b->over; left -= n) {
		n = left < sizeof(line) - 1 ? left : sizeof(line) - 1;
		mb_printf(b, "%.*s", (int)n, line);
	}
}

/* tests/metrics --responder PORT BYTES: the responder on its own loop, as
 * a program wires it (metrics.h), with -v's lines; SIGTERM ends it. */
static int
responder_main(const char *port, const char *bytes)
{
	char addr[64], why[256];
	size_t size = strtoul(bytes, NULL, 10);
	struct loop *l = loop_new();
	struct loop_event *ev;
	struct metrics *m;
	struct watch sw;
	int sig = signals_setup(), n, i;
	int64_t now, due;

	log_set_level(LOG_VERBOSE);
	snprintf(addr, sizeof(addr), "127.0.0.1:%s", port);
	m = metrics_open(l, 1, addr, big_page, &size, why, sizeof(why));
	watch_init(&sw, 0, NULL, 0);
	if (m == NULL || loop_watch(l, &sw, sig, POLLIN) != 0) {
		die(1, "responder: %s", m == NULL ? why : "watching signals");
	}
	log_info("responder on port %d: a page of %zu bytes", metrics_port(m),
	         size);
	for (;;) {
		now = now_ms();
		due = metrics_timers(m, now);
		if ((n = loop_wait(l, due < 0 ? -1 : (int)(due - now + 1),
		                   &ev)) < 0) {
			die(1, "responder: %s:", loop_backend(l));
		}
		for (i = 0; i < n; i++) {
			if (ev[i].w == &sw) {
				metrics_close(m);
				loop_free(l);
				return 0;
			}
			if (ev[i].fd == ev[i].w->fd) {
				metrics_event(m, ev[i].w, ev[i].revents);
			}
		}
	}
}

#define WRITE_BODY  (1 << 20)  /* the page: far past the kernel's buffers */
#define WRITE_AFTER 2000       /* from the accept to the request, in ms */

/*
 * A scraper that asks for /metrics and never reads, its window small:
 * the answer stalls after its first bytes, and the responder lets the
 * scraper go METRICS_WRITE_MS after the request (not before, and not at
 * the read deadline, which counts from the accept), as "too slow".
 */
static void
test_write_deadline(struct test *t)
{
	static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
	char port[16], size[16], head[20];
	const char *argv[] = { tl_h.self, "--responder", port, size, NULL };
	struct sockaddr_storage ss;
	int p[1], fd, base, n, rcv = 4096, mss = 536;
	int64_t deadline, asked;
	struct tl_proc *r;
	socklen_t len;

	if (pick_ports(t, p, 1) < 0) {
		return;
	}
	snprintf(port, sizeof(port), "%d", p[0]);
	snprintf(size, sizeof(size), "%d", WRITE_BODY);
	if ((r = start(t, "responder", argv, NULL, 0)) == NULL
	    || wait_log(t, r, "responder on port", START_MS) < 0) {
		return;
	}
	if ((base = tl_count_fds(r->pid)) < 0) {
		t->skip = "no /proc/PID/fd";
		return;
	}
	/* The window and the MSS are the scraper's to set before connect;
	 * with loopback's defaults the kernel would take megabytes. */
	len = tl_sockaddr("127.0.0.1", p[0], &ss);
	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0) {
		fail(t, "socket: %s", strerror(errno));
		return;
	}
	user_track(t, fd);
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss));
	if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
		fail(t, "connect to the responder: %s", strerror(errno));
		return;
	}
	deadline = tl_now_ms() + T(5000);
	while ((n = tl_count_fds(r->pid)) != base + 1) {
		if (tl_now_ms() >= deadline) {
			fail(t, "the responder holds %d descriptors, want %d", n,
			     base + 1);
			return;
		}
		tl_pause(20);
	}
	/* A gap to tell the deadlines apart, not a wait for anything. */
	tl_pause(WRITE_AFTER);
	if (tl_write_all(fd, req, strlen(req), tl_now_ms() + T(3000)) < 0) {
		fail(t, "asking: %s", strerror(errno));
		return;
	}
	asked = tl_now_ms();
	deadline = asked + T(METRICS_WRITE_MS + 3000);
	while ((n = tl_count_fds(r->pid)) != base) {
		if (tl_now_ms() >= deadline) {
			fail(t, "a scraper that never reads still held %lld ms after "
			     "its request", (long long)(tl_now_ms() - asked));
			return;
		}
		tl_pause(20);
	}
	if (tl_now_ms() - asked < METRICS_WRITE_MS - 1000) {
		fail(t, "a scraper that never reads let go %lld ms after its "
		     "request, before the write deadline",
		     (long long)(tl_now_ms() - asked));
		return;
	}
	if (expect_log(t, r, "metrics: a scraper closed: too slow") < 0) {
		return;
	}
	/* It was answered: the start waits in the scraper's buffer. */
	if (recv(fd, head, sizeof(head), MSG_PEEK | MSG_DONTWAIT) !=
	    (ssize_t)sizeof(head) || strncmp(head, "HTTP/1.0 200 OK\r\n", 17)
	    != 0) {
		fail(t, "the stalled scraper has no answer begun");
	}
}

/* ==== running ============================================================= */

static const struct tl_case tests[] = {
	{ "exposition", test_exposition, 0 },
	{ "refused_no_client", test_refused_no_client, 0 },
	{ "live_user", test_live_user, 0 },
	{ "prometheus", test_prometheus, TL_HEAVY },
	{ "browser", test_browser, TL_HEAVY },
	{ "paths", test_paths, 0 },
	{ "stalled", test_stalled, 0 },
	{ "write_deadline", test_write_deadline, 0 },
	{ "cap", test_cap, 0 },
	{ "bare_port", test_bare_port, 0 },
	{ "bad_flag", test_bad_flag, 0 },
	{ "emfile", test_emfile, 0 },
	{ "client_content", test_client_content, 0 },
	{ "client_live", test_client_live, 0 },
};

int
main(int argc, char **argv)
{
	if (argc >= 4 && strcmp(argv[1], "--nofile") == 0) {
		/* tests/metrics --nofile N PROG ARGS: PROG with soft and hard
		 * RLIMIT_NOFILE N, which it cannot raise. */
		struct rlimit rl;

		rl.rlim_cur = rl.rlim_max = (rlim_t)strtoul(argv[2], NULL, 10);
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
			fprintf(stderr, "setrlimit %s: %s\n", argv[2], strerror(errno));
			return 127;
		}
		execv(argv[3], argv + 3);
		fprintf(stderr, "exec %s: %s\n", argv[3], strerror(errno));
		return 127;
	}
	if (argc == 4 && strcmp(argv[1], "--responder") == 0) {
		return responder_main(argv[2], argv[3]);
	}
	if (tl_use_valgrind() < 0) {
		return 1;
	}
	return tl_main(argc, argv, "metrics", WATCHDOG_S, tests,
	               sizeof(tests) / sizeof(tests[0]));
}
