/*
 * loadgen: the load generator of cserver's benchmark harness.
 *
 * One thread, epoll, loopback or Unix sockets only.  Kinds of load:
 *
 *   stream  N connections, each keeping D requests in flight (pipelined).
 *   churn   N slots, each: connect, send one request, read the reply, close.
 *   udp     N connected UDP sockets, each keeping D datagrams in flight.
 *   idle    open K connections, one request each, then hold them open until
 *           stdin reaches EOF or --hold seconds pass (the harness reads the
 *           server's memory meanwhile).
 *
 * --tls (stream, churn, idle): every connection is TLS 1.3 (OpenSSL, non-
 * blocking), cipher suite TLS_AES_128_GCM_SHA256 and key exchange X25519
 * only, SNI --sni NAME (default localhost), the server's certificate not
 * verified, and no session ever resumed (no session cache, none offered): a
 * churn connection is a full handshake, timed from its connect.  The
 * handshake comes first, then the requests, exactly as in plain TCP.  Built
 * with -DLOADGEN_TLS and -lssl -lcrypto (bench/run.py does when OpenSSL's
 * headers are there); without, --tls is refused.  --features prints
 * whether TLS is built in.
 *
 * A request is a payload of S bytes, framed (4-byte big-endian length, then
 * the payload) or raw (the payload alone, for byte-echo servers).  Every
 * reply is compared byte for byte with what was sent, as it streams in, so
 * 64 KiB frames need no reassembly buffer; a reply that differs counts as a
 * mismatch.  Payloads come from a fixed pseudo-random pattern at an offset
 * that depends on the connection and the request number, so a reply that is
 * shifted, stale or from another connection does not compare equal.
 *
 * Time: the connect phase (bounded by --connect-timeout), then --warmup
 * seconds whose replies are checked but not counted, then --duration seconds
 * measured.  Latency percentiles come from a log-linear histogram (1/64
 * relative precision).  The result is one JSON object on stdout, including
 * this process's CPU time (getrusage), so the harness can show that the load
 * generator is not the bottleneck.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "TLS 1.3 needs OpenSSL 1.1.1 or later"
#endif
#endif

enum { MODE_FRAMED, MODE_RAW };
enum { KIND_STREAM, KIND_CHURN, KIND_UDP, KIND_IDLE };
enum { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DONE };

#define RBUF_SIZE (256 * 1024)
#define PAT_EXTRA 512
/* Setup pacing: connections opened but not yet answered, at once.  A
 * connection is answered only once the server accepted it, so this many never
 * overflow even the stdlib's listen backlog of 5 (request_queue_size). */
#define MAX_SETUP 4

struct conn {
    int fd;
    int idx;
    int state;
    int want_out;      /* EPOLLOUT is registered */
    int broken;        /* framing lost: no further replies are parsed */
    unsigned gen;      /* bumped by every connect (churn reuses the slot) */
#ifdef LOADGEN_TLS
    SSL *ssl;          /* --tls: this connection's TLS state */
    int tls_ok;        /* handshake done, no fatal error: close_notify on close */
#endif
    uint64_t sent;     /* requests queued so far */
    uint64_t done;     /* replies completed so far */
    uint64_t counted;  /* replies completed inside the measured window */
    uint64_t *ts;      /* send time of each request in flight (ring of depth) */
    uint64_t *useq;    /* UDP: request number held by each slot */
    uint64_t t_connect;
    unsigned char *out;
    size_t out_len, out_off, out_cap;
    unsigned char hdr[4];
    uint32_t hdr_got;
    uint64_t body_got;
    int bad;
};

/* ---- configuration ---- */
static int mode = MODE_FRAMED, kind = KIND_STREAM;
static int nconns = 1, depth = 1;
static uint32_t size = 64;
static double warmup = 1.0, duration = 3.0, connect_timeout = 20.0, hold = 10.0;
static int family = AF_INET;
static struct sockaddr_storage target;
static socklen_t target_len;
static char target_desc[160];

/* ---- state ---- */
static int ep = -1;
static struct conn *conns;
static unsigned char *pat;
static unsigned char *rbuf;
static uint64_t t_begin, t_start, t_measure, t_end; /* ns, CLOCK_MONOTONIC */
static int running = 1, in_setup = 0;
/* --requests N (stream only): send exactly N requests after the setup phase,
 * then stop once all N are answered (for instruction counts per request). */
static uint64_t budget, n_budget_sent, setup_done;
/* --sync: after the setup phase and again after the measured phase, say so
 * on stderr ("SETUP n" / "DONE") and wait for a line on stdin, so that an
 * instrument can count only what lies between (bench/instructions.py). */
static int sync_mode;
/* --proxy v1|v2: a PROXY protocol header opens every connection (as a
   balancer's send-proxy / send-proxy-v2 would): TCP4, from 198.51.100.x
   (x and the port vary with the connection) to 192.0.2.1:443. */
static int proxy_version;
/* --tls: TLS 1.3 on every stream connection, SNI tls_sni. */
static int use_tls;
static const char *tls_sni = "localhost";
#ifdef LOADGEN_TLS
static uint64_t n_handshakes, n_resumed, n_tls_failed;
static char tls_error[160];    /* the first failure, for the report */
static SSL_CTX *tls_ctx;
static char tls_version[32], tls_cipher[64], tls_group[32];
#endif

static void sync_point(const char *what, long n) {
    char line[16];
    if (!sync_mode) return;
    fprintf(stderr, "%s %ld\n", what, n);
    fflush(stderr);
    if (!fgets(line, sizeof line, stdin)) exit(2);
}
static uint64_t n_counted, n_done_total, n_mismatch, n_errors, n_lost, n_late;
static uint64_t n_connects, n_connecting;
static uint64_t hist[128 + 57 * 64];
static uint64_t lat_max, lat_sum, lat_n;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage_die(const char *msg) {
    fprintf(stderr, "loadgen: %s\n"
            "usage: loadgen (--tcp HOST:PORT | --unix PATH | --udp HOST:PORT)\n"
            "  [--kind stream|churn|idle] [--mode framed|raw] [--conns N] [--depth D]\n"
            "  [--size S] [--warmup SEC] [--duration SEC] [--connect-timeout SEC]\n"
            "  [--hold SEC] [--requests N] [--sync] [--proxy v1|v2] [--tls [--sni NAME]]\n"
            "  | --features\n"
            "  (HOST must be a loopback address)\n", msg);
    exit(2);
}

/* ---- latency histogram: exact below 128 ns, then 64 sub-buckets per power of 2 ---- */
static void hist_add(uint64_t v) {
    unsigned idx;
    if (v < 128) {
        idx = (unsigned)v;
    } else {
        int e = 63 - __builtin_clzll(v);
        idx = 128 + (unsigned)(e - 7) * 64 + (unsigned)((v >> (e - 6)) & 63);
    }
    hist[idx]++;
    lat_n++;
    lat_sum += v;
    if (v > lat_max) lat_max = v;
}

static double hist_value(unsigned idx) {
    if (idx < 128) return (double)idx;
    unsigned e = (idx - 128) / 64 + 7, sub = (idx - 128) % 64;
    double lo = (double)(1ull << e) + (double)sub * (double)(1ull << (e - 6));
    return lo + (double)(1ull << (e - 6)) / 2.0;
}

static double hist_pct(double p) {
    if (lat_n == 0) return 0.0;
    uint64_t want = (uint64_t)(p * (double)lat_n + 0.999999);
    if (want < 1) want = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < sizeof hist / sizeof hist[0]; i++) {
        acc += hist[i];
        if (acc >= want) return hist_value(i);
    }
    return (double)lat_max;
}

/* ---- payloads ---- */
static void make_pattern(void) {
    size_t n = (size_t)size + PAT_EXTRA;
    pat = malloc(n);
    if (!pat) die("malloc");
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        pat[i] = (unsigned char)(x >> 24);
    }
}

static const unsigned char *payload_of(int ci, uint64_t seq) {
    return pat + ((uint64_t)ci * 17u + seq * 31u) % 499u;
}

/* ---- sockets ---- */
static void ep_ctl(int op, struct conn *c, uint32_t events) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = c;
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) die("epoll_ctl");
}

/* EPOLLIN, and EPOLLOUT too while ``on`` (bytes or a TLS record wait to go). */
static void set_want_out(struct conn *c, int on) {
    if (c->want_out == on) return;
    c->want_out = on;
    ep_ctl(EPOLL_CTL_MOD, c, on ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

#ifdef LOADGEN_TLS
/* Keep the first TLS failure's reason for the report (JSON-safe). */
static void tls_note_error(const char *what, int err) {
    char buf[120];
    unsigned long e = ERR_peek_error();
    if (tls_error[0]) return;
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    else if (err == SSL_ERROR_SYSCALL) snprintf(buf, sizeof buf, "%s", errno ? strerror(errno) : "EOF from the server");
    else snprintf(buf, sizeof buf, "SSL_get_error %d", err);
    snprintf(tls_error, sizeof tls_error, "%s: %s", what, buf);
    for (char *q = tls_error; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 32) *q = '\'';
}

static int tls_accept_any_chain(X509_STORE_CTX *store, void *arg) {
    (void)store;
    (void)arg;
    return 1;
}

static void tls_init(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx || !SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION)
        || !SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION)
        || !SSL_CTX_set_ciphersuites(tls_ctx, "TLS_AES_128_GCM_SHA256")
        || !SSL_CTX_set1_groups_list(tls_ctx, "X25519")) {
        fprintf(stderr, "loadgen: cannot set up TLS 1.3 with TLS_AES_128_GCM_SHA256 and X25519\n");
        ERR_print_errors_fp(stderr);
        exit(2);
    }
    /* A benchmark: the certificate is not verified, and its chain not even
       built (OpenSSL would run X509_verify_cert, another signature check,
       and only then ignore the result). */
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_cert_verify_callback(tls_ctx, tls_accept_any_chain, NULL);
    /* No resumption: no session cache, and no session is ever set on an SSL,
       so every handshake is a full one (the tickets servers send are read
       and dropped). */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    /* SSL_write returns per record, and may be retried from a buffer that
       moved (out_reserve) as long as it starts with the same bytes. */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

static void tls_drop(struct conn *c) {
    if (!c->ssl) return;
    if (c->tls_ok && c->fd >= 0) {  /* close_notify, without waiting for the peer's */
        ERR_clear_error();
        SSL_shutdown(c->ssl);
    }
    SSL_free(c->ssl);
    c->ssl = NULL;
    c->tls_ok = 0;
}
#endif

static void conn_close(struct conn *c) {
#ifdef LOADGEN_TLS
    tls_drop(c);
#endif
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    if (c->state == ST_CONNECTING) n_connecting--;
    c->fd = -1;
    c->state = ST_FREE;
    c->want_out = 0;
    c->out_len = c->out_off = 0;
    c->hdr_got = 0;
    c->body_got = 0;
    c->bad = 0;
}

static void out_reserve(struct conn *c, size_t more);

static void queue_proxy_header(struct conn *c) {
    unsigned char h[64];
    size_t n;
    unsigned port = 1024u + (unsigned)((c->idx * 7919u + n_connects) % 60000u);
    unsigned host = 1u + (unsigned)(c->idx % 250u);
    if (proxy_version == 1) {
        n = (size_t)snprintf((char *)h, sizeof h, "PROXY TCP4 198.51.100.%u 192.0.2.1 %u 443\r\n",
                             host, port);
    } else {
        static const unsigned char sig[12] = {13, 10, 13, 10, 0, 13, 10, 'Q', 'U', 'I', 'T', 10};
        memcpy(h, sig, 12);
        h[12] = 0x21; h[13] = 0x11; h[14] = 0; h[15] = 12;
        h[16] = 198; h[17] = 51; h[18] = 100; h[19] = (unsigned char)host;
        h[20] = 192; h[21] = 0; h[22] = 2; h[23] = 1;
        h[24] = (unsigned char)(port >> 8); h[25] = (unsigned char)port;
        h[26] = 443 >> 8; h[27] = 443 & 0xff;
        n = 28;
    }
    out_reserve(c, n);
    memcpy(c->out + c->out_len, h, n);
    c->out_len += n;
}

static int conn_open(struct conn *c) {
    int type = (kind == KIND_UDP ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC;
    int fd = socket(family, type, 0);
    if (fd < 0) {
        n_errors++;
        return -1;
    }
    if (family != AF_UNIX && kind != KIND_UDP) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->fd = fd;
    c->t_connect = now_ns();
    c->gen++;
    n_connects++;
#ifdef LOADGEN_TLS
    if (use_tls) {
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || !SSL_set_fd(c->ssl, fd) || !SSL_set_tlsext_host_name(c->ssl, tls_sni)) {
            tls_note_error("SSL_new", 0);
            tls_drop(c);
            close(fd);
            c->fd = -1;
            n_errors++;
            return -1;
        }
        SSL_set_connect_state(c->ssl);
    }
#endif
    if (proxy_version) queue_proxy_header(c); /* sent with the first request */
    if (connect(fd, (struct sockaddr *)&target, target_len) == 0) {
        c->state = ST_OPEN;
        return 1;
    }
    if (errno == EINPROGRESS) {
        c->state = ST_CONNECTING;
        n_connecting++;
        ep_ctl(EPOLL_CTL_ADD, c, EPOLLOUT);
        return 0;
    }
    int busy = family == AF_UNIX && errno == EAGAIN; /* Unix backlog full: try again later */
#ifdef LOADGEN_TLS
    tls_drop(c);
#endif
    close(fd);
    c->fd = -1;
    if (busy) return -2;
    n_errors++;
    return -1;
}

static void out_reserve(struct conn *c, size_t more) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + more <= c->out_cap) return;
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + more <= c->out_cap) return;
    }
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + more) cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out) die("realloc");
    c->out_cap = cap;
}

static void queue_request(struct conn *c, uint64_t t) {
    size_t need = size + (mode == MODE_FRAMED ? 4 : 0);
    out_reserve(c, need);
    unsigned char *p = c->out + c->out_len;
    if (mode == MODE_FRAMED) {
        uint32_t be = htonl(size);
        memcpy(p, &be, 4);
        p += 4;
    }
    memcpy(p, payload_of(c->idx, c->sent), size);
    c->out_len += need;
    c->ts[c->sent % (uint64_t)depth] = t;
    c->sent++;
    if (!in_setup && kind != KIND_CHURN) n_budget_sent++;
}

/* Whether the measured phase may put one more request in flight. */
static int may_send(void) {
    return budget == 0 || n_budget_sent < budget;
}

#ifdef LOADGEN_TLS
/* flush_out over TLS: SSL_write per record until all is sent or it would block. */
static int tls_flush(struct conn *c) {
    while (c->out_off < c->out_len) {
        size_t left = c->out_len - c->out_off;
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->out + c->out_off, left > (1u << 30) ? (1 << 30) : (int)left);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) { set_want_out(c, 1); return 0; }
        if (e == SSL_ERROR_WANT_READ) return 0; /* EPOLLIN is always registered */
        c->tls_ok = 0;
        if (running) tls_note_error("SSL_write", e);
        return -1;
    }
    c->out_off = c->out_len = 0;
    set_want_out(c, 0);
    return 0;
}
#endif

/* Send what is queued; 0 on success (maybe partial), -1 if the peer is gone. */
static int flush_out(struct conn *c) {
#ifdef LOADGEN_TLS
    if (c->ssl) return tls_flush(c);
#endif
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_want_out(c, 1);
            return 0;
        }
        return -1;
    }
    c->out_off = c->out_len = 0;
    set_want_out(c, 0);
    return 0;
}

static void record(struct conn *c, uint64_t t_sent, uint64_t t) {
    n_done_total++;
    if (t >= t_measure && t < t_end && t_sent >= t_start) {
        n_counted++;
        c->counted++;
        hist_add(t - t_sent);
    }
}

static int start_connection(struct conn *c);

/* A stream reply is complete (its last byte arrived and was compared). */
static void reply_done(struct conn *c, uint64_t t) {
    if (c->bad) n_mismatch++;
    uint64_t t_sent = kind == KIND_CHURN ? c->t_connect : c->ts[c->done % (uint64_t)depth];
    record(c, t_sent, t);
    c->done++;
    c->hdr_got = 0;
    c->body_got = 0;
    c->bad = 0;
    if (kind == KIND_CHURN) {
        conn_close(c);
        if (running && t < t_end && may_send()) start_connection(c);
        return;
    }
    if (in_setup || kind == KIND_IDLE) { /* the setup request of this connection */
        c->state = ST_DONE;
        return;
    }
    if (running && t < t_end && may_send()) queue_request(c, t);
}

/* Compare received stream bytes with the expected replies, as they come. */
static void consume(struct conn *c, const unsigned char *p, size_t n, uint64_t t) {
    while (n && c->fd >= 0 && !c->broken) {
        if (c->done >= c->sent) { /* bytes nobody asked for */
            n_mismatch++;
            c->broken = 1;
            return;
        }
        if (mode == MODE_FRAMED && c->hdr_got < 4) {
            size_t k = 4 - c->hdr_got;
            if (k > n) k = n;
            memcpy(c->hdr + c->hdr_got, p, k);
            c->hdr_got += (uint32_t)k;
            p += k;
            n -= k;
            if (c->hdr_got == 4) {
                uint32_t be;
                memcpy(&be, c->hdr, 4);
                if (ntohl(be) != size) { /* the stream cannot be followed any more */
                    n_mismatch++;
                    c->broken = 1;
                    return;
                }
            }
            continue;
        }
        size_t k = (size_t)(size - c->body_got);
        if (k > n) k = n;
        if (memcmp(p, payload_of(c->idx, c->done) + c->body_got, k) != 0) c->bad = 1;
        c->body_got += k;
        p += k;
        n -= k;
        if (c->body_got == size) reply_done(c, t);
    }
}

#ifdef LOADGEN_TLS
/* Drive the handshake; once done, the connection sends its first request
 * as a plain one does at its connect. */
static void tls_handshake(struct conn *c, uint64_t t) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        n_handshakes++;
        if (SSL_session_reused(c->ssl)) n_resumed++;
        if (!tls_version[0]) {
            snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(c->ssl));
            snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
            const char *g = OBJ_nid2sn(SSL_get_negotiated_group(c->ssl) & ~TLSEXT_nid_unknown);
            snprintf(tls_group, sizeof tls_group, "%s", g ? g : "?");
#endif
        }
        c->tls_ok = 1;
        c->state = ST_OPEN;
        set_want_out(c, 0);
        queue_request(c, t);
        if (flush_out(c) < 0) { n_errors++; conn_close(c); }
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) { set_want_out(c, 0); return; }
    if (e == SSL_ERROR_WANT_WRITE) { set_want_out(c, 1); return; }
    n_tls_failed++;
    tls_note_error("handshake", e);
    n_errors++;
    conn_close(c);
}

/* stream_readable over TLS: SSL_read until it would block (records are
 * never left decrypted inside OpenSSL, where epoll could not see them). */
static void tls_readable(struct conn *c, uint64_t t) {
    unsigned gen = c->gen;
    for (int i = 0; c->fd >= 0 && c->gen == gen; i++) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, rbuf, RBUF_SIZE);
        if (n > 0) {
            if (i) t = now_ns();
            consume(c, rbuf, (size_t)n, t);
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_WANT_WRITE) { set_want_out(c, 1); break; }
        /* close_notify, EOF or an error: the server closed on us */
        if (e != SSL_ERROR_ZERO_RETURN) c->tls_ok = 0;
        if (running) {
            n_errors++;
            if (e != SSL_ERROR_ZERO_RETURN) tls_note_error("SSL_read", e);
        }
        conn_close(c);
        return;
    }
    if (c->fd >= 0 && c->gen == gen && c->out_len > c->out_off) {
        if (flush_out(c) < 0) { if (running) n_errors++; conn_close(c); }
    }
}
#endif

static int start_connection(struct conn *c) {
    c->broken = 0;
    c->sent = c->done;
    int r = conn_open(c);
    if (r < 0) return r;
    /* churn: a connection is a request of the budget from its connect on
       (counted here, not when its request is queued after the connect) */
    if (kind == KIND_CHURN) n_budget_sent++;
    if (r > 0) {
        ep_ctl(EPOLL_CTL_ADD, c, EPOLLIN);
#ifdef LOADGEN_TLS
        if (c->ssl) {
            c->state = ST_HANDSHAKE;
            tls_handshake(c, now_ns());
            return r;
        }
#endif
        if (kind != KIND_UDP) {
            queue_request(c, now_ns());
            if (flush_out(c) < 0) { n_errors++; conn_close(c); }
        }
    }
    return r;
}

/* A non-blocking connect finished (EPOLLOUT while connecting). */
static void connected(struct conn *c, uint64_t t) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        n_errors++;
        conn_close(c);
        return;
    }
    n_connecting--;
    c->state = ST_OPEN;
    ep_ctl(EPOLL_CTL_MOD, c, EPOLLIN);
#ifdef LOADGEN_TLS
    if (c->ssl) {
        c->state = ST_HANDSHAKE;
        tls_handshake(c, t);
        return;
    }
#endif
    if (kind != KIND_UDP) {
        queue_request(c, t);
        if (flush_out(c) < 0) { n_errors++; conn_close(c); }
    }
}

static void stream_readable(struct conn *c, uint64_t t) {
#ifdef LOADGEN_TLS
    if (c->ssl) {
        tls_readable(c, t);
        return;
    }
#endif
    for (int i = 0; i < 4 && c->fd >= 0; i++) {
        ssize_t n = recv(c->fd, rbuf, RBUF_SIZE, 0);
        if (n > 0) {
            if (i) t = now_ns();
            consume(c, rbuf, (size_t)n, t);
            if (n < RBUF_SIZE) break;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        /* EOF or error: the server closed on us */
        if (running) n_errors++;
        conn_close(c);
        return;
    }
    if (c->fd >= 0 && c->out_len > c->out_off) {
        if (flush_out(c) < 0) { if (running) n_errors++; conn_close(c); }
    }
}

/* ---- UDP: every datagram carries its request number in its first 8 bytes ---- */
static void udp_send(struct conn *c, int slot, uint64_t t) {
    uint64_t seq = c->sent++;
    memcpy(rbuf, payload_of(c->idx, seq), size);
    memcpy(rbuf, &seq, sizeof seq);
    c->useq[slot] = seq;
    c->ts[slot] = t;
    if (send(c->fd, rbuf, size, MSG_NOSIGNAL) < 0 && errno != EAGAIN && errno != EWOULDBLOCK
        && errno != ECONNREFUSED)
        n_errors++;
}

static void udp_readable(struct conn *c, uint64_t t) {
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(c->fd, rbuf, RBUF_SIZE, 0);
        t = now_ns(); /* a reply can answer a request sent earlier in this loop */
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) n_errors++;
            return;
        }
        uint64_t seq;
        if ((size_t)n != size) { n_mismatch++; continue; }
        memcpy(&seq, rbuf, sizeof seq);
        int slot = -1;
        for (int s = 0; s < depth; s++)
            if (c->useq[s] == seq && c->ts[s]) { slot = s; break; }
        if (slot < 0) { n_late++; continue; } /* already declared lost */
        if (memcmp(rbuf + 8, payload_of(c->idx, seq) + 8, size - 8) != 0) n_mismatch++;
        record(c, c->ts[slot], t);
        c->done++;
        c->ts[slot] = 0;
        if (running && t < t_end) udp_send(c, slot, t);
    }
}

static void udp_expire(uint64_t t) {
    const uint64_t limit = 200000000ull; /* 200 ms without a reply: lost */
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        for (int s = 0; s < depth; s++) {
            if (c->ts[s] && t - c->ts[s] > limit) {
                n_lost++;
                if (running && t < t_end) udp_send(c, s, t); else c->ts[s] = 0;
            }
        }
    }
}

/* ---- target parsing: loopback and Unix sockets only ---- */
static void parse_inet(const char *spec) {
    char host[128];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof host) usage_die("bad HOST:PORT");
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    char *h = host;
    size_t hl = strlen(h);
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') { h[hl - 1] = 0; h++; }
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535) usage_die("bad port");
    memset(&target, 0, sizeof target);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&target;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&target;
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127) usage_die("refusing a non-loopback address");
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        family = AF_INET;
        target_len = sizeof *a4;
    } else if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) usage_die("refusing a non-loopback address");
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        family = AF_INET6;
        target_len = sizeof *a6;
    } else {
        usage_die("HOST must be a numeric loopback address (127.0.0.1 or ::1)");
    }
    snprintf(target_desc, sizeof target_desc, "%s", spec);
}

static void parse_unix(const char *path) {
    struct sockaddr_un *u = (struct sockaddr_un *)&target;
    memset(&target, 0, sizeof target);
    if (strlen(path) >= sizeof u->sun_path) usage_die("Unix socket path too long");
    u->sun_family = AF_UNIX;
    strcpy(u->sun_path, path);
    family = AF_UNIX;
    target_len = sizeof *u;
    snprintf(target_desc, sizeof target_desc, "unix:%s", path);
}

static void raise_nofile(int want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want) {
        rl.rlim_cur = (rlim_t)want < rl.rlim_max ? (rlim_t)want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static const char *kind_name(void) {
    return kind == KIND_STREAM ? "stream" : kind == KIND_CHURN ? "churn" : kind == KIND_UDP ? "udp" : "idle";
}

static void report(uint64_t t_finish, long held) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    double cpu_sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double wall = (double)(t_finish - t_start) / 1e9;
    double life = (double)(t_finish - t_begin) / 1e9; /* setup included, as CPU time is */
    double measured = (double)(t_end - t_measure) / 1e9;
    long starved = 0, open_now = 0;
    for (int i = 0; i < nconns; i++) {
        if (conns[i].counted == 0) starved++;
        if (conns[i].fd >= 0) open_now++;
    }
    double rps = measured > 0 ? (double)n_counted / measured : 0.0;
    char tls[512] = "null";
#ifdef LOADGEN_TLS
    if (use_tls)
        snprintf(tls, sizeof tls, "{\"handshakes\":%llu,\"resumed\":%llu,\"failed\":%llu,"
                 "\"version\":\"%s\",\"cipher\":\"%s\",\"group\":\"%s\",\"sni\":\"%s\","
                 "\"error\":\"%s\",\"openssl\":\"%s\"}",
                 (unsigned long long)n_handshakes, (unsigned long long)n_resumed,
                 (unsigned long long)n_tls_failed, tls_version, tls_cipher, tls_group, tls_sni,
                 tls_error, OpenSSL_version(OPENSSL_VERSION));
#endif
    printf("{\"kind\":\"%s\",\"mode\":\"%s\",\"target\":\"%s\",\"conns\":%d,\"depth\":%d,"
           "\"size\":%u,\"warmup\":%.3f,\"duration\":%.3f,\"requests\":%llu,\"rps\":%.1f,"
           "\"mbps\":%.3f,\"replies_total\":%llu,\"mismatches\":%llu,\"errors\":%llu,"
           "\"lost\":%llu,\"late\":%llu,\"connects\":%llu,\"open\":%ld,\"starved\":%ld,"
           "\"ready\":%ld,\"lat_us\":{\"p50\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"max\":%.2f,"
           "\"mean\":%.2f},\"cpu_user\":%.4f,\"cpu_sys\":%.4f,\"wall\":%.4f,\"life\":%.4f,"
           "\"cpu_pct\":%.1f,\"tls\":%s}\n",
           kind_name(), kind == KIND_UDP ? "datagram" : mode == MODE_FRAMED ? "framed" : "raw", target_desc, nconns, depth,
           size, warmup, duration, (unsigned long long)n_counted, rps,
           rps * (double)size / 1e6, (unsigned long long)n_done_total,
           (unsigned long long)n_mismatch, (unsigned long long)n_errors,
           (unsigned long long)n_lost, (unsigned long long)n_late,
           (unsigned long long)n_connects, open_now, starved, held,
           hist_pct(0.50) / 1e3, hist_pct(0.99) / 1e3, hist_pct(0.999) / 1e3,
           (double)lat_max / 1e3, lat_n ? (double)lat_sum / (double)lat_n / 1e3 : 0.0,
           cpu_user, cpu_sys, wall, life, life > 0 ? 100.0 * (cpu_user + cpu_sys) / life : 0.0, tls);
    fflush(stdout);
}

/* Open the connections, each answering one request before it counts as
 * ready (so the server has accepted it), at most MAX_SETUP in progress. */

/* One readiness event of a stream connection: finish its connect, send what
 * is pending, read what arrived. */
static void stream_event(struct conn *c, uint32_t events, uint64_t t)
{
    if (c->state == ST_CONNECTING) {
        connected(c, t);
        return;
    }
#ifdef LOADGEN_TLS
    if (c->state == ST_HANDSHAKE) {
        tls_handshake(c, t);
        return;
    }
#endif
    if (events & EPOLLOUT) {
        if (flush_out(c) < 0) { n_errors++; conn_close(c); return; }
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) stream_readable(c, t);
}

static int setup_phase(uint64_t deadline) {
    struct epoll_event evs[256];
    int next = 0;
    in_setup = 1;
    for (;;) {
        uint64_t t = now_ns();
        int ready = 0, pending = 0;
        for (int i = 0; i < next; i++) {
            if (conns[i].state == ST_DONE) ready++;
            else if (conns[i].fd >= 0) pending++;
        }
        while (next < nconns && pending < MAX_SETUP && t < deadline) {
            if (start_connection(&conns[next]) == -2) break; /* Unix backlog full: wait */
            if (conns[next].state == ST_DONE) ready++;
            else if (conns[next].fd >= 0) pending++;
            next++;
        }
        if (ready == nconns || t >= deadline || (next == nconns && pending == 0)) {
            in_setup = 0;
            for (int i = 0; i < nconns; i++) /* not ready in time: not used */
                if (conns[i].state != ST_DONE && conns[i].fd >= 0) conn_close(&conns[i]);
            return ready;
        }
        int ms = (int)((deadline - t) / 1000000ull) + 1;
        if (ms > 50) ms = 50;
        if (next < nconns && pending == 0) ms = 1; /* Unix backlog was full */
        int n = epoll_wait(ep, evs, 256, ms);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        t = now_ns();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            stream_event(c, evs[i].events, t);
        }
    }
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"tcp", required_argument, 0, 't'}, {"unix", required_argument, 0, 'U'},
        {"udp", required_argument, 0, 'u'}, {"kind", required_argument, 0, 'k'},
        {"mode", required_argument, 0, 'm'}, {"conns", required_argument, 0, 'c'},
        {"depth", required_argument, 0, 'd'}, {"size", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'}, {"duration", required_argument, 0, 'D'},
        {"connect-timeout", required_argument, 0, 'C'}, {"hold", required_argument, 0, 'H'},
        {"requests", required_argument, 0, 'R'}, {"sync", no_argument, 0, 'S'},
        {"proxy", required_argument, 0, 'P'},
        {"tls", no_argument, 0, 'T'}, {"sni", required_argument, 0, 'N'},
        {"features", no_argument, 0, 'F'},
        {0, 0, 0, 0}};
    int have_target = 0, opt;
    int want_kind = -1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 't': parse_inet(optarg); have_target = 1; break;
        case 'u': parse_inet(optarg); have_target = 1; kind = KIND_UDP; break;
        case 'U': parse_unix(optarg); have_target = 1; break;
        case 'k':
            if (!strcmp(optarg, "stream")) want_kind = KIND_STREAM;
            else if (!strcmp(optarg, "churn")) want_kind = KIND_CHURN;
            else if (!strcmp(optarg, "idle")) want_kind = KIND_IDLE;
            else usage_die("--kind must be stream, churn or idle");
            break;
        case 'm':
            if (!strcmp(optarg, "framed")) mode = MODE_FRAMED;
            else if (!strcmp(optarg, "raw")) mode = MODE_RAW;
            else usage_die("--mode must be framed or raw");
            break;
        case 'c': nconns = atoi(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 's': size = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'w': warmup = atof(optarg); break;
        case 'D': duration = atof(optarg); break;
        case 'C': connect_timeout = atof(optarg); break;
        case 'H': hold = atof(optarg); break;
        case 'S': sync_mode = 1; break;
        case 'R': budget = strtoull(optarg, NULL, 10); if (!budget) usage_die("--requests must be >= 1"); break;
        case 'P':
            if (!strcmp(optarg, "v1")) proxy_version = 1;
            else if (!strcmp(optarg, "v2")) proxy_version = 2;
            else usage_die("--proxy must be v1 or v2");
            break;
        case 'T': use_tls = 1; break;
        case 'N':
            if (!*optarg || strlen(optarg) > 253) usage_die("--sni must be a host name");
            tls_sni = optarg;
            break;
        case 'F':
#ifdef LOADGEN_TLS
            printf("tls %s\n", OpenSSL_version(OPENSSL_VERSION));
#else
            printf("no-tls\n");
#endif
            return 0;
        default: usage_die("unknown option");
        }
    }
    if (!have_target) usage_die("no target");
    if (proxy_version && kind == KIND_UDP) usage_die("--proxy does not apply to --udp");
    if (use_tls && kind == KIND_UDP) usage_die("--tls does not apply to --udp");
    if (use_tls && proxy_version) usage_die("--tls with --proxy is not supported");
#ifndef LOADGEN_TLS
    if (use_tls)
        usage_die("--tls: this loadgen was built without OpenSSL (bench/run.py builds it with "
                  "-DLOADGEN_TLS -lssl -lcrypto when OpenSSL's headers are installed: "
                  "apt-get install libssl-dev)");
#endif
    if (want_kind >= 0) {
        if (kind == KIND_UDP) usage_die("--kind does not apply to --udp");
        kind = want_kind;
    }
    if (nconns < 1 || nconns > 200000) usage_die("--conns out of range (1..200000)");
    if (depth < 1 || depth > 4096) usage_die("--depth out of range (1..4096)");
    if (kind == KIND_CHURN || kind == KIND_IDLE) depth = 1;
    if (size < 1 || size > 64u * 1024 * 1024) usage_die("--size out of range (1..64 MiB)");
    if (kind == KIND_UDP && (size < 8 || size > 65000)) usage_die("UDP --size must be 8..65000");
    /* Everything is bounded in time. */
    if (warmup < 0 || warmup > 600 || duration <= 0 || duration > 3600) usage_die("bad --warmup/--duration");
    if (connect_timeout <= 0 || connect_timeout > 600) usage_die("bad --connect-timeout");
    if (hold < 0 || hold > 3600) usage_die("bad --hold");
    if ((budget || sync_mode) && kind != KIND_STREAM && kind != KIND_CHURN)
        usage_die("--requests and --sync apply to --kind stream or churn only");

    signal(SIGPIPE, SIG_IGN);
#ifdef LOADGEN_TLS
    if (use_tls) tls_init();
#endif
    raise_nofile(nconns + 64);
    make_pattern();
    rbuf = malloc(RBUF_SIZE > size ? RBUF_SIZE : size);
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!rbuf || !conns) die("malloc");
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].idx = i;
        conns[i].ts = calloc((size_t)depth, sizeof(uint64_t));
        if (kind == KIND_UDP) conns[i].useq = calloc((size_t)depth, sizeof(uint64_t));
        if (!conns[i].ts || (kind == KIND_UDP && !conns[i].useq)) die("calloc");
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");

    uint64_t t0 = now_ns();
    t_begin = t_start = t0;
    t_measure = t_end = UINT64_MAX; /* nothing counts during setup */
    uint64_t connect_deadline = t0 + (uint64_t)(connect_timeout * 1e9);

    if (kind == KIND_IDLE) {
        int held = setup_phase(connect_deadline);
        fprintf(stderr, "HELD %d\n", held);
        fflush(stderr);
        /* Hold until stdin closes (the harness is done) or --hold passes. */
        uint64_t until = now_ns() + (uint64_t)(hold * 1e9);
        for (;;) {
            uint64_t t = now_ns();
            if (t >= until) break;
            struct pollfd pfd = {0, POLLIN, 0};
            int ms = (int)((until - t) / 1000000ull) + 1;
            int r = poll(&pfd, 1, ms > 1000 ? 1000 : ms);
            if (r > 0) {
                char junk[64];
                if (read(0, junk, sizeof junk) <= 0) break;
            }
        }
        uint64_t tf = now_ns();
        t_end = t_measure = tf;
        n_counted = 0;
        report(tf, held);
        for (int i = 0; i < nconns; i++) conn_close(&conns[i]);
        return 0;
    }

    int ready = 0;
    if (kind == KIND_UDP) {
        for (int i = 0; i < nconns; i++) {
            if (conn_open(&conns[i]) > 0) {
                ep_ctl(EPOLL_CTL_ADD, &conns[i], EPOLLIN);
                ready++;
            }
        }
    } else if (kind == KIND_STREAM) {
        ready = setup_phase(connect_deadline);
        setup_done = n_done_total;
        sync_point("SETUP", ready);
    } else if (kind == KIND_CHURN) {
        sync_point("SETUP", 0);   /* no setup: --requests N counts N connections */
    }

    t_start = now_ns();
    t_measure = t_start + (uint64_t)(warmup * 1e9);
    t_end = t_measure + (uint64_t)(duration * 1e9);

    /* Put the first requests in flight. */
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (kind == KIND_CHURN) {
            if (may_send()) start_connection(c);
        } else if (kind == KIND_UDP) {
            if (c->fd >= 0)
                for (int s = 0; s < depth; s++) udp_send(c, s, t_start);
        } else if (c->fd >= 0 && c->state == ST_DONE) {
            c->state = ST_OPEN;
            for (int d = 0; d < depth && may_send(); d++) queue_request(c, t_start);
            if (flush_out(c) < 0) { n_errors++; conn_close(c); }
        }
    }

    struct epoll_event evs[512];
    uint64_t next_expire = t_start + 50000000ull;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= t_end) break;
        if (budget && n_done_total - setup_done >= budget) { t_end = t; break; }
        int ms = (int)((t_end - t) / 1000000ull) + 1;
        if (ms > 50) ms = 50;
        int n = epoll_wait(ep, evs, 512, ms);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            t = now_ns();
            if (kind == KIND_UDP) {
                udp_readable(c, t);
                continue;
            }
            stream_event(c, evs[i].events, t);
        }
        if (kind == KIND_UDP) {
            t = now_ns();
            if (t >= next_expire) {
                udp_expire(t);
                next_expire = t + 50000000ull;
            }
        }
        if (kind == KIND_CHURN) { /* slots whose connect failed start over */
            for (int i = 0; i < nconns; i++)
                if (conns[i].fd < 0 && now_ns() < t_end && may_send())
                    start_connection(&conns[i]);
        }
    }
    running = 0;
    uint64_t tf = now_ns();
    sync_point("DONE", (long)(n_done_total - setup_done));
    report(tf, kind == KIND_CHURN ? nconns : ready);
    for (int i = 0; i < nconns; i++) conn_close(&conns[i]);
    close(ep);
    return n_mismatch ? 1 : 0;
}
