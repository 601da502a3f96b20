// Syscall numbers that do not land on a sled entry: numbers of 4096 and above (including -1 and
// numbers with the x32 bit) make the rewritten `call *%rax` jump to unmapped memory, and the few
// numbers inside an exit's displacement land on an invalid opcode. Either way the CPU faults at
// address == rax with the return address on the stack, before anything has changed. The handler
// installed here recognises that situation (the return address follows a registered rewritten
// site) and resumes execution at the entry stub, so the call is handled like any other: the hook
// sees the number, and forwarding it returns what the kernel returns (-ENOSYS, or what the kernel
// does with the x32 bit). A number that is not a canonical address makes the call itself fault
// (#GP at the site): that is resumed in the stub too. And a thread without TLS faults at the
// stub's first TLS access: it continues without the hook. Every other SIGSEGV and SIGILL goes to
// the application's disposition, set before install or after (the library takes both signals:
// platform/signals.hpp).
//
// Contract: install_fault_redirect() is called once, with the install lock held.
#pragma once

namespace zpoline::detail {

void install_fault_redirect();

}  // namespace zpoline::detail
