/* A program with a getenv of its own that finds nothing, as bash's finds nothing before main once
   a preloaded library's constructor has called setenv (libtcmalloc's does): the library must
   read its ZPOLINE_* variables all the same (test_preload.py). */
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

char* getenv(const char* name) {
  (void)name;
  return NULL;
}

int main(void) {
  /* A system call of its own for the hooks to see. */
  if (chdir("/") != 0) return 1;
  puts("ran");
  return 0;
}
