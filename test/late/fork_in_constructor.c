/* A library whose constructor forks, as a plugin that starts a helper process may: dlopen holds
 * the dynamic linker's load lock while it runs. Before forking it makes a system call from a new
 * site (anonymous code, written after mapping), which traps in lazy mode and gives the safety
 * net's rewriter thread work. It then gives the rewriter the CPU until the site is rewritten,
 * which cannot happen while the rewriter waits in dladdr for the load lock this constructor's
 * dlopen holds: so the fork() runs either after the rewrite or while the rewriter waits there.
 * fork_in_constructor_status says what happened: 0 if the fork and the child's exit went
 * through. */
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int fork_in_constructor_status = -1;

__attribute__((constructor)) static void fork_from_constructor(void) {
  unsigned char* code =
      mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (code == MAP_FAILED) return;
  const unsigned char getpid_code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
  memcpy(code, getpid_code, sizeof getpid_code);
  long (*function)(void);
  memcpy(&function, &code, sizeof function); /* ISO C has no cast from object to function */
  function();
  for (int turn = 0; turn < 100000 && code[5] == 0x0f; ++turn) sched_yield();
  const pid_t child = fork();
  if (child == 0) _exit(0);
  int status = 0;
  if (child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status)) {
    fork_in_constructor_status = WEXITSTATUS(status);
  }
}
