/* Reference: the practical limit, a single-threaded C epoll server.
 *
 *     cc -O2 -o c_epoll benchmarks/reference/c_epoll.c && ./c_epoll PORT
 *
 * Same protocol as every reference: a greeting line, then each line back
 * uppercased (ASCII; other bytes unchanged).  Edge-triggered epoll, one
 * recv until EAGAIN and one send per read, replies to partial lines kept
 * for the next read.  No limits, no commands, no counters: it measures what
 * the kernel and the loopback cost, so the gap between it and a Python
 * server is the interpreter's share.  benchmarks/compare builds it with the
 * system C compiler when there is one.  Linux only (epoll).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define GREETING "BIENVENIDO (C epoll reference)\n"
#define BUF 65536

struct conn {
    int fd;
    size_t held, cap; /* an unfinished line: its bytes so far, and room */
    char *line;       /* grown on demand, so an idle connection costs little */
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n > 0) { data += n; len -= (size_t)n; continue; }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) { usleep(50); continue; } /* rare here */
        return;
    }
}

/* Reads until EAGAIN; returns 0 when the connection is over. */
static int serve(struct conn *c) {
    static char in[BUF], out[BUF * 2];
    for (;;) {
        ssize_t n = recv(c->fd, in, sizeof in, 0);
        if (n == 0) return 0;
        if (n < 0) return errno == EAGAIN || errno == EINTR;
        size_t o = 0;
        for (ssize_t i = 0; i < n; i++) {
            char ch = (char)toupper((unsigned char)in[i]);
            if (c->held == c->cap && c->cap < BUF) {
                c->cap = c->cap ? c->cap * 2 : 256;
                c->line = realloc(c->line, c->cap);
            }
            if (c->held < c->cap) c->line[c->held++] = ch;
            if (in[i] == '\n') {
                if (o + c->held > sizeof out) { send_all(c->fd, out, o); o = 0; }
                memcpy(out + o, c->line, c->held);
                o += c->held;
                c->held = 0;
            }
        }
        if (o) send_all(c->fd, out, o);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s PORT\n", argv[0]); return 2; }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 1024)) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, events[1024];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "listening on 127.0.0.1:%s\n", argv[1]);
    while (!stop) {
        int ready = epoll_wait(ep, events, 1024, 200);
        for (int i = 0; i < ready; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) { /* the listening socket */
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    send_all(fd, GREETING, sizeof GREETING - 1);
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                    if (!serve(c)) { close(fd); free(c->line); free(c); }
                }
            } else if (!serve(c)) {
                close(c->fd);
                free(c->line);
                free(c);
            }
        }
    }
    return 0;
}
