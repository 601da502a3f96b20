/* A library loaded by dlopen after install, with syscall instructions of its own. */
long late_getpid(void) {
  long result;
  __asm__ volatile("syscall" : "=a"(result) : "a"(39L) : "rcx", "r11", "memory");
  return result;
}

long late_getppid(void) {
  long result;
  __asm__ volatile("syscall" : "=a"(result) : "a"(110L) : "rcx", "r11", "memory");
  return result;
}
