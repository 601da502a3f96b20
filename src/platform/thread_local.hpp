// The library's thread-local variables, all in the initial-exec model: the dispatcher reads them
// on a thread's calls, and the general-dynamic model's __tls_get_addr may allocate the thread's
// block (and is intercepted by sanitizer runtimes), making system calls that come back to the
// dispatcher on that very thread. The library is linked into the program or preloaded, so its
// TLS is in the static block.
#pragma once

#define ZPOLINE_THREAD_LOCAL __thread __attribute__((tls_model("initial-exec")))
