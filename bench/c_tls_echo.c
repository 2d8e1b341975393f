/*
 * c_tls_echo: a minimal C OpenSSL epoll echo server, the TLS reference
 * (the limit) of cserver's benchmark harness, as bench/c_echo.c is the
 * plain one.  A framed echo is a byte echo, so it answers any framed load.
 *
 *   c_tls_echo --tls-cert CERT.pem --tls-key KEY.pem [--host 127.0.0.1] [--port 0]
 *
 * Prints "READY <port>" on stdout once listening.  One thread, level-
 * triggered epoll, non-blocking OpenSSL: the handshake with SSL_do_handshake,
 * then per readiness event SSL_read until it would block (up to 256 KiB),
 * and what was read goes back with one SSL_write (one call for the whole
 * batch of replies, however many records it makes).  A write the socket does
 * not take is kept and retried on EPOLLOUT while the connection stops
 * reading, so a slow reader cannot make it grow.  The SSL_CTX is OpenSSL's
 * default server one with the certificate and key loaded: TLS 1.2 and 1.3,
 * the client's choice of suite and group, session tickets as OpenSSL sends
 * them.  Stops on SIGTERM or SIGINT.
 *
 * Build: cc -O2 -o c_tls_echo c_tls_echo.c -lssl -lcrypto (bench/run.py does).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define BATCH (256 * 1024)

struct conn {
    int fd;
    SSL *ssl;
    int handshaken;
    unsigned events;  /* registered with epoll */
    char *pend;       /* a batch SSL_write has not finished sending */
    int pend_len;
};

static int ep, listener;
static SSL_CTX *ctx;
static volatile sig_atomic_t stop;
static unsigned long n_handshakes, n_failed;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what) {
    fprintf(stderr, "c_tls_echo: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void conn_free(struct conn *c, int clean) {
    if (clean) {  /* answer the peer's close_notify with ours */
        ERR_clear_error();
        SSL_shutdown(c->ssl);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    close(c->fd);
    free(c->pend);
    free(c);
}

static void set_events(struct conn *c, unsigned events) {
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

/* SSL_write of p[0:n] (a new batch, or the retry of the pending one):
 * 1 sent, 0 waiting for the socket (kept in c->pend), -1 the peer is gone. */
static int write_batch(struct conn *c, const char *p, int n) {
    ERR_clear_error();
    int r = SSL_write(c->ssl, p, n);
    if (r > 0) {
        c->pend_len = 0;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) return -1;
    if (p != c->pend) {  /* keep it: the retry passes the same bytes (moving buffer) */
        char *q = realloc(c->pend, (size_t)n);
        if (!q) die("realloc");
        memcpy(q, p, (size_t)n);
        c->pend = q;
    }
    c->pend_len = n;
    set_events(c, e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN);
    return 0;
}

static void on_conn(struct conn *c, char *buf) {
    if (!c->handshaken) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) set_events(c, EPOLLIN);
            else if (e == SSL_ERROR_WANT_WRITE) set_events(c, EPOLLOUT);
            else { n_failed++; conn_free(c, 0); }
            return;
        }
        c->handshaken = 1;
        n_handshakes++;
        set_events(c, EPOLLIN);
        /* the first request may be in already: read on */
    }
    if (c->pend_len) {
        int w = write_batch(c, c->pend, c->pend_len);
        if (w < 0) { conn_free(c, 0); return; }
        if (w == 0) return;
        set_events(c, EPOLLIN);
    }
    for (;;) {
        int n = 0, closed = 0, fatal = 0;
        while (n < BATCH) {
            ERR_clear_error();
            int r = SSL_read(c->ssl, buf + n, BATCH - n);
            if (r > 0) { n += r; continue; }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
            closed = 1;
            fatal = e != SSL_ERROR_ZERO_RETURN;
            break;
        }
        if (n) {
            int w = write_batch(c, buf, n);
            if (w < 0) { conn_free(c, 0); return; }
            if (w == 0) return; /* the rest waits until the peer takes this */
        }
        if (closed) { conn_free(c, !fatal); return; }
        /* a full batch: what is left may sit decrypted inside OpenSSL,
           where epoll cannot see it */
        if (n < BATCH || SSL_pending(c->ssl) == 0) return;
    }
}

static void on_accept(void) {
    for (int i = 0; i < 64; i++) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) usleep(1000); /* back off, no busy loop */
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        c->ssl = SSL_new(ctx);
        if (!c->ssl || !SSL_set_fd(c->ssl, fd)) {
            SSL_free(c->ssl);
            close(fd);
            free(c);
            continue;
        }
        SSL_set_accept_state(c->ssl);
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { SSL_free(c->ssl); close(fd); free(c); }
    }
}

int main(int argc, char **argv) {
    static struct option opts[] = {{"host", required_argument, 0, 'h'},
                                   {"port", required_argument, 0, 'p'},
                                   {"tls-cert", required_argument, 0, 'c'},
                                   {"tls-key", required_argument, 0, 'k'},
                                   {0, 0, 0, 0}};
    const char *host = "127.0.0.1", *cert = NULL, *key = NULL;
    int port = 0, opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'h') host = optarg;
        else if (opt == 'p') port = atoi(optarg);
        else if (opt == 'c') cert = optarg;
        else if (opt == 'k') key = optarg;
        else goto usage;
    }
    if (!cert || !key) {
    usage:
        fprintf(stderr, "usage: c_tls_echo --tls-cert CERT --tls-key KEY [--host H] [--port P]\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1
        || SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "c_tls_echo: cannot load %s / %s:\n", cert, key);
        ERR_print_errors_fp(stderr);
        return 2;
    }
    /* write_batch keeps an unsent batch in c->pend, which may move */
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    if (strchr(host, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) { fprintf(stderr, "c_tls_echo: bad host\n"); return 2; }
        sl = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) { fprintf(stderr, "c_tls_echo: bad host\n"); return 2; }
        sl = sizeof *a;
    }
    listener = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listener < 0) die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&ss, sl) < 0) die("bind");
    if (listen(listener, 4096) < 0) die("listen");
    sl = sizeof ss;
    getsockname(listener, (struct sockaddr *)&ss, &sl);
    printf("READY %d\n", ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                                  : ntohs(((struct sockaddr_in *)&ss)->sin_port));
    fflush(stdout);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev) < 0) die("epoll_ctl");
    static char buf[BATCH];
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) on_accept();
            else on_conn(evs[i].data.ptr, buf);
        }
    }
    fprintf(stderr, "c_tls_echo: %lu handshakes, %lu failed\n", n_handshakes, n_failed);
    return 0;
}
