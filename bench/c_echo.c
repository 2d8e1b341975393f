/*
 * c_echo: a minimal C epoll echo server, the physical-limit reference of
 * cserver's benchmark harness.  A framed echo (4-byte length + payload) is
 * just a byte echo, so this server answers framed and raw load alike.
 *
 *   c_echo [--host 127.0.0.1] [--port 0] [--unix PATH] [--udp]
 *
 * Prints "READY <port>" (or "READY <path>") on stdout once listening.  One
 * thread, level-triggered epoll: read up to 64 KiB, send it back; what the
 * socket does not take is kept and the connection stops reading until it is
 * flushed (so a slow reader cannot make the server grow without bound).  UDP
 * echoes in batches with recvmmsg/sendmmsg.  Stops on SIGTERM or SIGINT.
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
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define UDP_BATCH 64

struct conn {
    int fd;
    char *pend;     /* bytes read but not yet sent back */
    size_t pend_len, pend_off, pend_cap;
};

static int ep;
static int listener;
static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what) {
    fprintf(stderr, "c_echo: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void conn_free(struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

static void set_events(struct conn *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send p[0:n]; keep the rest.  Returns -1 when the peer is gone. */
static int send_or_keep(struct conn *c, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k > 0) { p += k; n -= (size_t)k; continue; }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return -1;
    }
    if (n) {
        if (c->pend_cap < n) {
            c->pend = realloc(c->pend, n);
            if (!c->pend) die("realloc");
            c->pend_cap = n;
        }
        memcpy(c->pend, p, n);
        c->pend_len = n;
        c->pend_off = 0;
        set_events(c, EPOLLOUT); /* stop reading until the peer takes it */
    }
    return 0;
}

static void on_conn(struct conn *c, unsigned events, char *buf) {
    if (c->pend_len) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        const char *p = c->pend + c->pend_off;
        size_t n = c->pend_len - c->pend_off;
        c->pend_len = 0;
        if (send_or_keep(c, p == c->pend ? p : memmove(c->pend, p, n), n) < 0) { conn_free(c); return; }
        if (!c->pend_len) set_events(c, EPOLLIN);
        return;
    }
    ssize_t n = recv(c->fd, buf, BUF_SIZE, 0);
    if (n > 0) {
        if (send_or_keep(c, buf, (size_t)n) < 0) conn_free(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    conn_free(c);
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
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { close(fd); free(c); }
    }
}

static void serve_udp(int fd) {
    static char bufs[UDP_BATCH][BUF_SIZE];
    struct mmsghdr msgs[UDP_BATCH];
    struct iovec iovs[UDP_BATCH];
    struct sockaddr_storage addrs[UDP_BATCH];
    while (!stop) {
        for (int i = 0; i < UDP_BATCH; i++) {
            iovs[i].iov_base = bufs[i];
            iovs[i].iov_len = BUF_SIZE;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &addrs[i];
            msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
        }
        int n = recvmmsg(fd, msgs, UDP_BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EINTR) die("recvmmsg");
            continue;
        }
        for (int i = 0; i < n; i++) iovs[i].iov_len = msgs[i].msg_len;
        int off = 0;
        while (off < n) {
            int k = sendmmsg(fd, msgs + off, (unsigned)(n - off), 0);
            if (k <= 0) break; /* a datagram that cannot go is dropped, as UDP may */
            off += k;
        }
    }
}

int main(int argc, char **argv) {
    static struct option opts[] = {{"host", required_argument, 0, 'h'},
                                   {"port", required_argument, 0, 'p'},
                                   {"unix", required_argument, 0, 'U'},
                                   {"udp", no_argument, 0, 'u'},
                                   {0, 0, 0, 0}};
    const char *host = "127.0.0.1", *upath = NULL;
    int port = 0, udp = 0, opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'h') host = optarg;
        else if (opt == 'p') port = atoi(optarg);
        else if (opt == 'U') upath = optarg;
        else if (opt == 'u') udp = 1;
        else { fprintf(stderr, "usage: c_echo [--host H] [--port P] [--unix PATH] [--udp]\n"); return 2; }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int type = (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC;
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    if (upath) {
        struct sockaddr_un *u = (struct sockaddr_un *)&ss;
        if (strlen(upath) >= sizeof u->sun_path) { fprintf(stderr, "c_echo: path too long\n"); return 2; }
        u->sun_family = AF_UNIX;
        strcpy(u->sun_path, upath);
        unlink(upath);
        sl = sizeof *u;
    } else if (strchr(host, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) { fprintf(stderr, "c_echo: bad host\n"); return 2; }
        sl = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) { fprintf(stderr, "c_echo: bad host\n"); return 2; }
        sl = sizeof *a;
    }
    listener = socket(ss.ss_family, type, 0);
    if (listener < 0) die("socket");
    int one = 1;
    if (!upath) setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&ss, sl) < 0) die("bind");
    if (!udp && listen(listener, 4096) < 0) die("listen");
    if (upath) {
        printf("READY %s\n", upath);
    } else {
        sl = sizeof ss;
        getsockname(listener, (struct sockaddr *)&ss, &sl);
        int p = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        printf("READY %d\n", p);
    }
    fflush(stdout);

    if (udp) {
        serve_udp(listener);
    } else {
        fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK);
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0) die("epoll_create1");
        struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev) < 0) die("epoll_ctl");
        static char buf[BUF_SIZE];
        struct epoll_event evs[256];
        while (!stop) {
            int n = epoll_wait(ep, evs, 256, -1);
            if (n < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            for (int i = 0; i < n; i++) {
                if (evs[i].data.ptr == NULL) on_accept();
                else on_conn(evs[i].data.ptr, evs[i].events, buf);
            }
        }
    }
    if (upath) unlink(upath);
    return 0;
}
