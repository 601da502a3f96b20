/* A library whose loadable segments reach far past the end of its file, laid out the way
 * libLLVM-15 and libXdmcp are: linked with -z noseparate-code, so that its first loadable segment
 * holds the code, and with a large .bss. dlopen maps the whole span of such a library from the
 * file in one mapping with the code's protection (read and execute) before it maps the .bss
 * anonymously over the part past the file; the pages of that first mapping past the end of the
 * file raise SIGBUS when they are read. */

/* Far larger than the file: most of the span lies past the file's end. */
char past_file_end_zeros[16 << 20];

/* `mov $39,%eax; syscall; ret` (getpid), with its site exported so that a test can see whether
 * it was rewritten. Written in assembly so that the site is a plain 2-byte syscall whatever the
 * compiler does, with unwind information so that the rewriter knows the function's bounds. */
__asm__(
    "  .text\n"
    "  .globl past_file_end_getpid\n"
    "  .type past_file_end_getpid, @function\n"
    "past_file_end_getpid:\n"
    "  .cfi_startproc\n"
    "  mov $39, %eax\n"
    "  .globl past_file_end_site\n"
    "past_file_end_site:\n"
    "  syscall\n"
    "  ret\n"
    "  .cfi_endproc\n"
    "  .size past_file_end_getpid, .-past_file_end_getpid\n");

/* The .bss must read as zeros once loaded, also at its far end. */
int past_file_end_bss_is_zero(void) {
  return past_file_end_zeros[0] == 0 && past_file_end_zeros[sizeof past_file_end_zeros - 1] == 0;
}
