/* A disk whose syncs are slow against the cores, for measuring on a small machine what a
 * many-core one with a virtual disk waits on (benches/analysis.md, twenty-third session).
 * Preloaded, it delays every fsync and fdatasync of the process by SLOW_SYNC_US microseconds
 * (each call on its own: concurrent syncs are not shared as a real disk's may be), except those
 * of files whose path contains SLOW_SYNC_SKIP, if set.
 *
 *   gcc -O2 -shared -fPIC -o /tmp/slowsync.so benches/tools/slowsync.c -ldl
 *   LD_PRELOAD=/tmp/slowsync.so SLOW_SYNC_US=1000 target/release/assetflow run ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void delay(int fd) {
  const char *us_text = getenv("SLOW_SYNC_US");
  long us = us_text ? atol(us_text) : 0;
  const char *skip = getenv("SLOW_SYNC_SKIP");
  if (skip && *skip) {
    char link[64], path[512];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n > 0) {
      path[n] = 0;
      if (strstr(path, skip)) return;
    }
  }
  if (us > 0) {
    struct timespec t = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&t, 0);
  }
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  delay(fd);
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  delay(fd);
  return real(fd);
}
