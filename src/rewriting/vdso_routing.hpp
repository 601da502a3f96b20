// Routing the vDSO's calls through the kernel (Options::route_vdso), so that the hook sees them.
//
// The entry of each vDSO function (clock_gettime, gettimeofday, time, getcpu, clock_getres)
// becomes a `jmp` to a thunk of the library's, `mov $number, %eax; call *%rax; ret`: its system
// call, made through the trampoline like any rewritten site. This reaches every caller, libc's
// IFUNC-bound time() and gettimeofday() included. The thunks live in a page near the vDSO (the
// jump is rel32) that is never unmapped, so a thread inside a hook called from one returns
// there whatever happens to the vDSO meanwhile.
//
// The vDSO runs on other threads while it changes. Its first byte becomes an invalid opcode
// first (a thread that arrives there faults, and fault_redirect.cpp sends it to the thunk: see
// vdso_thunk_for_fault()); then every other thread is asked where it is (a request,
// platform/signals.hpp), until none is inside the bytes about to change, which no thread can
// enter any more; then the rest of the jump is written, its first byte last. Undoing it writes
// the same way back: the jump is one instruction, which no thread can be in the middle of.
//
// Contract: route/restore are called with the install lock held.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zpoline::detail {

// Returns how many functions were routed. Throws zpoline::Error (unsupported) if none could be.
std::size_t route_vdso_calls_to_kernel();
void restore_vdso_calls() noexcept;

// For the SIGILL handler: where a thread that faulted at `address` continues, if `address` is the
// entry of a vDSO function (whose first byte was the invalid opcode of a change, perhaps replaced
// since): its thunk; 0 otherwise. Allocates nothing, takes no lock.
std::uintptr_t vdso_thunk_for_fault(std::uintptr_t address) noexcept;

}  // namespace zpoline::detail
