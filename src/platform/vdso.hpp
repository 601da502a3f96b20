// Routing the vDSO's calls through the kernel (Options::route_vdso), so that the hook sees them.
//
// glibc (2.31 and later) keeps one pointer per vDSO function in ld.so's data that is read-only
// after relocation, and makes the real syscall (a rewritten site, so hooked) when the pointer is
// null. Routing clears those pointers, found by their exact values (the addresses of the
// __vdso_* symbols), and restoring puts them back. time() and gettimeofday() are bound to the vDSO
// by IFUNC when libc is loaded and keep using it.
//
// Contract: called with the install lock held.
#pragma once

#include <cstddef>

namespace zpoline::detail {

// Returns how many pointers were cleared. Throws zpoline::Error (unsupported) if none was found
// (not glibc, or a glibc that keeps them mangled).
std::size_t route_vdso_calls_to_kernel();
void restore_vdso_calls() noexcept;

}  // namespace zpoline::detail
