// The Syscall User Dispatch safety net (Options::mode exhaustive and lazy).
//
// With SUD on, the kernel turns every `syscall` executed outside the library's own code
// ([zpoline_detail_code_begin, _end), where the entry stub makes its calls) into a SIGSYS. The
// handler here then either rewrites the site (when the rewriter can prove it safe) and resumes at
// it, so it takes the fast path from then on, or runs the call through the dispatcher from the
// signal context, as the entry stub would have. SUD is per thread and not inherited: new threads
// arm it as they start (entry_stub.S, clone child path), fork children after the fork, and the
// threads that exist at install are asked to arm it with a signal.
//
// While the net is on, SIGSYS must never be blocked: blocked SIGSYS from SUD kills the process.
// forward() therefore takes SIGSYS out of the sets passed to rt_sigprocmask and out of the masks
// of rt_sigaction, and keeps the application's own SIGSYS handler (seccomp SECCOMP_RET_TRAP, say)
// to itself, calling it for the SIGSYS signals that are not from SUD.
//
// Contract: enable/disable are called with the install lock held. The rest runs on any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dispatch/frame.hpp"

namespace zpoline::detail {

// Whether this kernel offers SUD (Linux 5.11 and later, built with it).
bool safety_net_supported() noexcept;

// Arms SUD on every thread of the process, and on every thread started later.
void enable_safety_net();
void disable_safety_net() noexcept;
bool safety_net_enabled() noexcept;

// After fork, in the child (SUD is not inherited).
void arm_safety_net_after_fork() noexcept;

// Arms SUD for the calling thread if the net is on and the thread has not armed it yet.
void arm_safety_net_if_needed() noexcept;

// rt_sigprocmask, rt_sigaction, and the calls that take a temporary signal mask (rt_sigsuspend,
// ppoll, epoll_pwait, epoll_pwait2) while the net is on: SIGSYS stays deliverable, and the
// application's SIGSYS disposition is kept apart. Returns the syscall's result. (pselect6 and
// io_pgetevents pass their mask inside a struct and are not filtered.)
long forward_signal_call(const RegisterFrame& regs);

struct SafetyNetCounters {
  std::size_t traps = 0;            // SIGSYS from SUD
  std::size_t sites_rewritten = 0;  // sites rewritten at their first trap
  std::size_t emulated = 0;         // calls run from the signal handler
};
SafetyNetCounters safety_net_counters() noexcept;

// The sites rewritten after their first trap, in the order they were rewritten, with the path of
// the loaded object each was in (dladdr's; empty for anonymous memory such as JIT code).
struct LazilyRewrittenSite {
  std::uintptr_t address = 0;
  std::string image;
};
std::vector<LazilyRewrittenSite> lazily_rewritten_sites();

}  // namespace zpoline::detail

extern "C" {
extern unsigned char zpoline_detail_sud_enabled __attribute__((visibility("hidden")));
extern char zpoline_detail_sud_selector __attribute__((visibility("hidden")));
void zpoline_detail_vfork_syscall() __attribute__((visibility("hidden")));
void zpoline_detail_sigreturn_gadget() __attribute__((visibility("hidden")));
}
