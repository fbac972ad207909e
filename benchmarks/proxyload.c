/*
 * proxyload.c - connections per second against a line-uppercasing server,
 * each one opened as a load balancer opens it: with a PROXY header first.
 *
 *   cc -O2 -o proxyload benchmarks/proxyload.c
 *   proxyload PORT SLOTS SECONDS WARMUP PROXY
 *
 * PROXY is 0 (no header: a direct client), 1 (a v1 line) or 2 (a v2
 * header).  Each of SLOTS slots loops: connect, [header], read the one
 * greeting line, send one line, check its uppercase reply, close.  Prints
 * one JSON object: connections/s in the window after WARMUP, connections
 * completed in all (warm-up included), and errors.
 *
 * Why not the Python generator: it spends as much CPU per connection as
 * the server does, so the server would wait on it, and a server that waits
 * spends CPU on waiting too; the figure would then be the generator's.
 * Why not the shared C generator: it cannot send a header.  This one stays
 * as small as the job: single-threaded epoll, loopback only, bounded by
 * alarm().
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, GREETING, REPLY };

typedef struct {
    int fd, state, got;
    char buf[256];
} slot_t;

static int port, proxy, epfd;
static long errors;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void start(slot_t *s, int index) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(2);
    }
    s->state = CONNECTING;
    s->got = 0;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = index};
    epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev);
}

static void send_header(slot_t *s) {
    struct sockaddr_in from;
    socklen_t length = sizeof from;
    getsockname(s->fd, (struct sockaddr *)&from, &length);
    char header[128];
    int size;
    if (proxy == 1) {
        size = snprintf(header, sizeof header, "PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n",
                        ntohs(from.sin_port), port);
    } else {  /* v2: signature, PROXY over TCP4, 12 bytes of addresses */
        static const char head[] = "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c";
        memcpy(header, head, 16);
        memcpy(header + 16, &from.sin_addr, 4);
        memcpy(header + 20, &from.sin_addr, 4);
        memcpy(header + 24, &from.sin_port, 2);
        uint16_t to = htons(port);
        memcpy(header + 26, &to, 2);
        size = 28;
    }
    if (send(s->fd, header, size, 0) != size) errors++;
}

/* Read until a whole line is in the buffer: 1 if so, 0 if not yet, -1 on error. */
static int read_line(slot_t *s) {
    for (;;) {
        ssize_t n = recv(s->fd, s->buf + s->got, sizeof s->buf - 1 - s->got, 0);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        if (n == 0) return -1;
        s->got += n;
        if (memchr(s->buf, '\n', s->got)) return 1;
        if (s->got >= (int)sizeof s->buf - 1) return -1;
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT SLOTS SECONDS WARMUP PROXY(0|1|2)\n", argv[0]);
        return 64;
    }
    port = atoi(argv[1]);
    int slots = atoi(argv[2]);
    double seconds = atof(argv[3]), warmup = atof(argv[4]);
    proxy = atoi(argv[5]);
    alarm((unsigned)(seconds + warmup) + 10); /* a safety net: never runs on */
    static const char line[] = "una linea de prueba para medir conexiones por segundo\n";
    static const char upper[] = "UNA LINEA DE PRUEBA PARA MEDIR CONEXIONES POR SEGUNDO\n";
    epfd = epoll_create1(0);
    slot_t *all = calloc(slots, sizeof *all);
    for (int i = 0; i < slots; i++) start(&all[i], i);
    double begin = now(), window = begin + warmup, end = window + seconds;
    long done = 0, all_done = 0; /* in the window; in all (for CPU per connection) */
    struct epoll_event events[256];
    for (double t = begin; t < end; t = now()) {
        int n = epoll_wait(epfd, events, 256, 100);
        for (int e = 0; e < n; e++) {
            slot_t *s = &all[events[e].data.u32];
            int ready;
            if (s->state == CONNECTING) {
                if (!(events[e].events & EPOLLOUT)) continue;
                if (proxy) send_header(s);
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = events[e].data.u32};
                epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
                s->state = GREETING;
            }
            if ((ready = read_line(s)) == 0) continue;
            if (ready > 0 && s->state == GREETING) {
                s->got = 0;
                s->state = REPLY;
                if (send(s->fd, line, sizeof line - 1, 0) != sizeof line - 1) ready = -1;
                else continue;
            }
            if (ready < 0 || s->got != sizeof upper - 1 || memcmp(s->buf, upper, s->got) != 0) errors++;
            else {
                all_done++;
                done += t >= window;
            }
            close(s->fd);
            start(s, events[e].data.u32);
        }
    }
    printf("{\"connections_per_s\": %.1f, \"connections\": %ld, \"errors\": %ld}\n", done / seconds,
           all_done, errors);
    return errors ? 1 : 0;
}
