// The C++ side of a hooked system call: which hook runs, on which threads, and how a call is
// forwarded to the kernel.
//
// Contract: publish_hook() and retract_hook() are called with the install lock held, never
// concurrently with each other. Everything else runs on any thread at any time, including inside
// signal handlers, and takes no locks on the hot path.
#pragma once

#include <cstdint>

#include "dispatch/frame.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline::detail {

// Makes `hook` the hook for every thread, then marks the hook live.
void publish_hook(Hook hook);

// Marks the hook not live and waits until no thread can enter it any more. The hook object is
// destroyed if no thread is inside it; otherwise it is kept (and leaked) so that a thread still
// running it, perhaps blocked in a forwarded read(), finishes safely.
void retract_hook() noexcept;

// Runs the system call described by `frame` in the kernel and returns the raw result.
long forward(const SyscallFrame& frame) noexcept;

// The kernel's name of a syscall number, or "unknown".
const char* syscall_name(long number) noexcept;

}  // namespace zpoline::detail

extern "C" {
long zpoline_detail_dispatch(zpoline::detail::RegisterFrame* regs, void* xsave_area)
    __attribute__((visibility("hidden")));
[[noreturn]] void zpoline_detail_report_stray_call(std::uintptr_t return_address, long number)
    __attribute__((visibility("hidden")));
}
