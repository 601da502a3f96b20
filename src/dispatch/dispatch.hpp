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

// How many calls have reached the hook, summed over every thread the process has had (fork
// children start from their parent's counts): through a rewritten site, or run by the safety net
// from its SIGSYS handler. Takes a lock, makes no system call and does not allocate.
struct HookedCallCounts {
  std::uint64_t through_sites = 0;
  std::uint64_t through_net = 0;
};
HookedCallCounts hooked_call_counts() noexcept;

// While alive, calls dispatched on this thread are counted as the safety net's (the SIGSYS
// handler runs them). Nests: a trap inside a hook inside a trapped call restores the outer value.
class NetDispatchScope {
 public:
  NetDispatchScope() noexcept;
  ~NetDispatchScope();
  NetDispatchScope(const NetDispatchScope&) = delete;
  NetDispatchScope& operator=(const NetDispatchScope&) = delete;

 private:
  bool outer_;
};

}  // namespace zpoline::detail

extern "C" {
long zpoline_detail_dispatch(zpoline::detail::RegisterFrame* regs, void* xsave_area)
    __attribute__((visibility("hidden")));
[[noreturn]] void zpoline_detail_report_stray_call(std::uintptr_t return_address, long number)
    __attribute__((visibility("hidden")));
}
