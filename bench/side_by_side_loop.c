// The system call loops of bench/side_by_side.py: makes N calls through libc and prints the cost
// of one call in ns, as thread CPU time and as wall time ("CPU WALL"). The program knows nothing
// of the tool it runs under (LD_PRELOAD), so every tool hooks exactly the same code.
//
//   side_by_side_loop getpid N   getpid() N times (glibc does not cache the pid)
//   side_by_side_loop read N     read() of 1 byte from /dev/zero, N times
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int run_getpid(long n) {
  const pid_t pid = getpid();
  for (long i = 0; i < n; ++i) {
    if (getpid() != pid) return 1;
  }
  return 0;
}

static int fd = -1;
static int run_read(long n) {
  char byte = 1;
  for (long i = 0; i < n; ++i) {
    if (read(fd, &byte, 1) != 1 || byte != 0) return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s getpid|read N\n", argv[0]);
    return 2;
  }
  const long n = strtol(argv[2], NULL, 10);
  int (*loop)(long);
  if (strcmp(argv[1], "getpid") == 0) {
    loop = run_getpid;
  } else if (strcmp(argv[1], "read") == 0) {
    fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      perror("/dev/zero");
      return 1;
    }
    loop = run_read;
  } else {
    fprintf(stderr, "unknown loop %s\n", argv[1]);
    return 2;
  }
  if (n <= 0 || loop(n / 10 + 1) != 0) return 1;  // warm up: caches, lazily rewritten sites
  const double cpu = now_ns(CLOCK_THREAD_CPUTIME_ID);
  const double wall = now_ns(CLOCK_MONOTONIC);
  if (loop(n) != 0) {
    fprintf(stderr, "a call returned the wrong result\n");
    return 1;
  }
  const double wall_end = now_ns(CLOCK_MONOTONIC);
  const double cpu_end = now_ns(CLOCK_THREAD_CPUTIME_ID);
  printf("%.2f %.2f\n", (cpu_end - cpu) / (double)n, (wall_end - wall) / (double)n);
  return 0;
}
