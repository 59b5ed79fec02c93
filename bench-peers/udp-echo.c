/* The reference UDP echo of issue #12: one blocking socket, one datagram per
 * recvfrom/sendto pair, reply to the exact source. What "a plain UDP echo loop" costs.
 *   build: gcc -O2 -o udp-echo bench-peers/udp-echo.c
 *   usage: udp-echo PORT [HOST]     (HOST: an IPv4 or IPv6 literal, default 127.0.0.1;
 *                                     PORT 0: the kernel picks one, printed on stderr)
 * Stops on SIGINT/SIGTERM (default action). No port filter, no rate limit. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [HOST]\n", argv[0]);
    return 2;
  }
  const char *host = argc > 2 ? argv[2] : "127.0.0.1";
  struct sockaddr_storage ss = {0};
  socklen_t sslen;
  struct sockaddr_in *s4 = (void *)&ss;
  struct sockaddr_in6 *s6 = (void *)&ss;
  if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET, s4->sin_port = htons(atoi(argv[1])), sslen = sizeof *s4;
  } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6, s6->sin6_port = htons(atoi(argv[1])), sslen = sizeof *s6;
  } else {
    fprintf(stderr, "udp-echo: '%s' is not an IP literal\n", host);
    return 2;
  }
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (void *)&ss, sslen) || getsockname(fd, (void *)&ss, &sslen)) {
    perror("udp-echo");
    return 1;
  }
  fprintf(stderr, "udp-echo on port %d\n",
          ntohs(ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port));
  static char buf[65536];
  for (;;) {
    struct sockaddr_storage from;
    socklen_t fromlen = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (void *)&from, &fromlen);
    if (n >= 0) sendto(fd, buf, n, 0, (void *)&from, fromlen); /* a failed reply is dropped */
  }
}
