// Routing the vDSO's calls through the kernel (Options::route_vdso), so that the hook sees them.
//
// The entry of each vDSO function (clock_gettime, gettimeofday, time, getcpu, clock_getres)
// becomes `mov $number, %eax; call *%rax; ret`: its system call, made through the trampoline like
// any rewritten site. This reaches every caller, libc's IFUNC-bound time() and gettimeofday()
// included. Restoring puts the original bytes back.
//
// Contract: called with the install lock held.
#pragma once

#include <cstddef>

namespace zpoline::detail {

// Returns how many functions were routed. Throws zpoline::Error (unsupported) if none could be.
std::size_t route_vdso_calls_to_kernel();
void restore_vdso_calls() noexcept;

}  // namespace zpoline::detail
