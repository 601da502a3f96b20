// The signals the library takes for itself, and requests to the other threads of the process.
//
// The library takes SIGSYS (the Syscall User Dispatch trap, dispatch/safety_net.cpp) and one
// real-time signal, the *request signal*, by which it asks other threads to run something
// (arming Syscall User Dispatch, which a thread can only do for itself; showing where they are
// before live code changes). A taken signal keeps a second disposition, the application's: what
// the application's rt_sigaction sets and reads (dispatch/forward routes those calls here), and
// what a signal that is not the library's own is delivered to, with the application's mask,
// SA_RESETHAND and default action. A signal, once taken, stays taken for the life of the
// process: a request may still be pending on a thread that blocks it.
//
// Requests use a real-time signal, not SIGSYS: real-time signals queue, so a request never
// swallows a trap or another request (two SIGSYS pending on one thread are one). A request that
// interrupts a blocking system call which the kernel does not restart after a handler (poll,
// epoll_wait, nanosleep, rt_sigsuspend, ...: EINTR even with SA_RESTART) makes the call again,
// unless another signal that would have interrupted it is pending: the application never sees
// an EINTR it would not have seen without the library. A call with a relative timeout (poll,
// epoll_wait) then waits its full timeout again.
//
// Contract: take_signal() and ask_other_threads() are called with the install lock held; the
// rest on any thread at any time, in signal handlers too.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace zpoline::detail {

// struct sigaction as the kernel's rt_sigaction takes it.
struct KernelSigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  std::uint64_t mask;
};
inline constexpr std::uint64_t signal_bit(int signal) {
  return 1ull << (signal - 1);
}
long raw_sigaction(int signal, const KernelSigaction* action, KernelSigaction* old) noexcept;

using SignalHandler = void (*)(int, siginfo_t*, void*);

// Installs `handler` for `signal` (SA_SIGINFO, SA_RESTART, the library's restorer, plus `flags`;
// `blocked` blocked while it runs) and keeps the application's disposition, unless the signal
// is taken already.
void take_signal(int signal, SignalHandler handler, unsigned long flags, std::uint64_t blocked);
bool signal_taken(int signal) noexcept;

// rt_sigaction of the application for a taken signal: reads and sets its own disposition.
// Returns 0, -EFAULT or -EINVAL as the kernel would.
long application_sigaction(int signal, const void* action, void* old) noexcept;

// Delivers a signal that is not the library's own to the application's disposition, from the
// library's handler: its handler with its mask (SA_RESETHAND, SA_NODEFER honoured), nothing
// for SIG_IGN and default-ignored signals, and for SIG_DFL the default action for real (the
// disposition is reset and the signal sent again, so that the process ends by this signal).
void pass_to_application(int signal, siginfo_t* info, void* context) noexcept;

// What a request asks a thread to do: runs in that thread's handler for the request signal,
// with the context of the code it interrupted. Registered once per kind by the module that
// uses it; a request that arrives late (the thread had it blocked) runs it too, so it must
// check the state it acts on.
enum class ThreadRequest : std::uint8_t { arm_safety_net = 0, checkpoint = 1 };
using RequestAction = void (*)(ucontext_t& interrupted);
void set_request_action(ThreadRequest request, RequestAction action) noexcept;

struct RequestOutcome {
  std::size_t answered = 0;
  // Threads not asked because they block the request signal (a request would stay pending, or be
  // taken by the thread's sigwaitinfo), and threads that did not answer in time (stopped).
  std::vector<pid_t> not_reached;
};
// Sends `request` to every other thread of the process and waits until each has run it (or has
// exited). Takes the request signal on first use.
RequestOutcome ask_other_threads(ThreadRequest request);

// Where thread `tid` is blocked in the kernel (its user pc), or 0 if it is running or runnable,
// or gone. Read from /proc without allocating.
std::uintptr_t blocked_pc(pid_t tid) noexcept;

// Waits (up to about a second) until no thread of the process has `signal` pending any more: each
// has started to handle it. For a stopped thread it gives up.
void wait_until_no_thread_has_pending(int signal);

// Where the library's own `syscall` instructions keep the number while they wait in the kernel:
// instructions after which (%rsp) holds it (entry_stub.S), so that a call a request interrupted
// there can be made again.
void set_syscall_resume_points(std::span<const std::uintptr_t> points) noexcept;

}  // namespace zpoline::detail
