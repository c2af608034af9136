/* LD_PRELOAD shim for bench/garage_ceiling.sh: sets TCP_NODELAY on every
 * socket Garage accepts, which Garage itself never does. Measuring Garage
 * with and without it shows what Nagle's algorithm (waiting for the ACK of a
 * response's first segment, which the client delays) costs small requests.
 * Build: cc -shared -fPIC -O2 -o garage_nodelay.so garage_nodelay.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
    int one = 1;
    /* Fails harmlessly on a socket that is not TCP. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int c = real(fd, addr, len, flags);
    if (c >= 0) nodelay(c);
    return c;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int c = real(fd, addr, len);
    if (c >= 0) nodelay(c);
    return c;
}
