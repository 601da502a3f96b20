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

// Runs the system call described by `frame` in the kernel and returns the raw result. Not
// noexcept, nor is anything on the way from the hook to the kernel: a thread cancelled while
// blocked in the call unwinds through it (a forced unwind, not an exception).
long forward(const SyscallFrame& frame);

// ThreadState::attention bits.
inline constexpr std::uint32_t kAttentionTlsShared = 1;     // see clone_to_site()
inline constexpr std::uint32_t kAttentionArmSafetyNet = 2;  // arm SUD at the next call

// ThreadState::forwarding.
inline constexpr std::uint8_t kForwardingInKernel = 1;   // the application's call is in the kernel
inline constexpr std::uint8_t kForwardingInLibrary = 2;  // forward() runs the library's code for it

// The system call that carries out the application's call inside forward() (for the numbers the
// library handles itself): marks the thread as waiting in the kernel for it meanwhile.
long forward_raw(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
                 long a5 = 0);

// The thread leaves the hook for good (a forced unwind passes the frame that called it).
void leave_hook_state() noexcept;

// In a child made by fork (or clone without CLONE_VM), right after the call: the records of the
// parent's other threads are freed, and SUD is armed again when the safety net is on.
void after_fork_in_child() noexcept;

// Code on the stub's fast path uses general registers only: with
// Options::general_registers_only the stub saves no vector state around it (entry_stub.S).
#define ZPOLINE_GENERAL_REGISTERS_ONLY __attribute__((target("general-regs-only")))

// The numbers forward() does more for than the system call (clone, clone3, fork, vfork; mmap,
// mremap, mprotect, pkey_mprotect, munmap; the signal calls the safety net filters).
ZPOLINE_GENERAL_REGISTERS_ONLY constexpr bool forwarded_by_library(long number) {
  constexpr std::uint64_t kLow = (1ull << 9) | (1ull << 10) | (1ull << 11) | (1ull << 13) |
                                 (1ull << 14) | (1ull << 25) | (1ull << 56) | (1ull << 57) |
                                 (1ull << 58);
  if (static_cast<unsigned long>(number) < 64) return (kLow >> number) & 1;
  return number == 130 || number == 157 || number == 271 || number == 281 || number == 329 ||
         number == 435 || number == 441;
}

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

// While alive, a thread this thread creates (pthread_create, std::thread) is the library's own: it
// starts bypassed (ScopedBypass) and without SUD, and its creation bypasses the hook too.
class ScopedLibraryThreadCreation {
 public:
  ScopedLibraryThreadCreation() noexcept;
  ~ScopedLibraryThreadCreation();
  ScopedLibraryThreadCreation(const ScopedLibraryThreadCreation&) = delete;
  ScopedLibraryThreadCreation& operator=(const ScopedLibraryThreadCreation&) = delete;
};

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
// The complete dispatcher: every case (bypass, a hook left by siglongjmp, signal handlers on an
// alternate stack, a thread's first call, the hook not live), the hook called inside it. The
// SUD safety net calls it, and the stub where the fast path below declines.
long zpoline_detail_dispatch(zpoline::detail::RegisterFrame* regs, void* xsave_area)
    __attribute__((visibility("hidden")));
// The stub's fast path, in three steps so that the stub calls the hook itself and nothing
// returns through a `ret` made stale by the system call (entry_stub.S):
//   enter_hook marks this thread inside the hook and fills `call`; it returns the hook's entry
//     point, or null (having changed nothing) where the complete dispatcher must decide;
//   the stub calls entry(&call->call, call->context);
//   leave_hook marks the thread outside again and returns what the stub puts in rax.
// Both use only general registers, for Options::general_registers_only.
zpoline::detail::HookEntry zpoline_detail_enter_hook(zpoline::detail::RegisterFrame* regs,
                                                     void* xsave_area,
                                                     zpoline::detail::HookCall* call) noexcept
    __attribute__((visibility("hidden")));
long zpoline_detail_leave_hook(const zpoline::detail::RegisterFrame* regs, long result) noexcept
    __attribute__((visibility("hidden")));
[[noreturn]] void zpoline_detail_report_stray_call(std::uintptr_t return_address, long number)
    __attribute__((visibility("hidden")));
}
