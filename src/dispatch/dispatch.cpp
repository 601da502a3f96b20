#include "dispatch/dispatch.hpp"

#include "dispatch/safety_net.hpp"

#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <unwind.h>

#include <cxxabi.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <type_traits>
#include <vector>

#include "dispatch/thread_records.hpp"
#include "platform/memory.hpp"
#include "platform/owned_lock.hpp"
#include "platform/sanitizers.hpp"
#include "platform/signals.hpp"
#include "platform/thread_local.hpp"
#include "rewriting/patcher.hpp"
#include "rewriting/rewriter.hpp"
#include "rewriting/site_registry.hpp"

namespace zpoline::detail {

// The installed hook as the stub calls it (entry_stub.S reads entry and context).
struct alignas(64) InstalledHook {
  HookEntry entry;
  const void* context;
  Hook* hook;  // owned
};
static_assert(offsetof(InstalledHook, entry) == 0 && offsetof(InstalledHook, context) == 8);

}  // namespace zpoline::detail

// Definitions of the symbols shared with entry_stub.S (declared in frame.hpp); the globals the
// stub reads on every call are defined in entry_stub.S.
__thread zpoline::detail::ThreadState zpoline_detail_thread_state = {};

namespace zpoline::detail {
namespace {

InstalledHook* load_current_hook() {
  return __atomic_load_n(&zpoline_detail_current_hook, __ATOMIC_ACQUIRE);
}

ZPOLINE_THREAD_LOCAL ThreadRecord* thread_record = nullptr;
ZPOLINE_THREAD_LOCAL bool dispatching_for_net = false;
ZPOLINE_THREAD_LOCAL bool creating_library_thread = false;
// The stub's fast path finds the record through ThreadState::in_hook and counts the call itself.
static_assert(offsetof(ThreadRecord, in_hook) == 0);
static_assert(offsetof(ThreadRecord, calls_through_sites) == 8);

long raw(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0);

// The writer side of the in_hook/live handshake uses membarrier, so that the reader side (every
// hooked call) needs only a compiler barrier. Without membarrier both sides use full fences.
constexpr int kMembarrierPrivateExpedited = 1 << 3;
constexpr int kMembarrierRegisterPrivateExpedited = 1 << 4;

void reader_barrier() {
  if (zpoline_detail_membarrier_registered) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

long raw(long number, long a0, long a1, long a2, long a3, long a4, long a5) {
  return zpoline_detail_raw_syscall(number, a0, a1, a2, a3, a4, a5);
}

// vfork, and clones that share the caller's stack with the child (CLONE_VM|CLONE_VFORK without
// a new stack): the child would overwrite the frames this call returns through. The stub makes
// such a call itself once the hook has returned from this frame's call, on the application's
// stack, with its own way back for each side (entry_stub.S, .Lon_application_stack). forward()
// returns 0 meanwhile.
long run_on_application_stack(const SyscallFrame& frame) {
  zpoline_detail_thread_state.vfork_frame = reinterpret_cast<std::uintptr_t>(frame.regs);
  return 0;
}

bool on_alternate_signal_stack() {
  stack_t current{};
  return raw(SYS_sigaltstack, 0, reinterpret_cast<long>(&current)) == 0 &&
         (current.ss_flags & SS_ONSTACK) != 0;
}

// clone/clone3 with a new stack: the child must start at the application's return address, on
// its own stack, with the application's registers. The application's return address goes on top
// of the child's stack, where zpoline_detail_clone_to_site's child `ret`s from.
long clone_to_site(const SyscallFrame& frame, long number, const long (&args)[6],
                   std::uintptr_t child_stack_top, std::uint64_t flags, std::uint64_t tls) {
  // Below the return address: the routine that arms the safety net in the child before it
  // returns (SUD is not inherited), or 0. Not for a child without TLS (CLONE_SETTLS with 0):
  // the SIGSYS handler needs one. The flag in the child's TLS is set only where the TLS is its
  // own (a new one, or a copy in a child that does not share memory).
  const bool has_tls = !(flags & CLONE_SETTLS) || tls != 0;
  const bool own_tls = (flags & CLONE_SETTLS) || !(flags & CLONE_VM);
  void (*arm)() = nullptr;
  if (safety_net_enabled() && has_tls && !creating_library_thread) {
    arm = own_tls ? &zpoline_detail_arm_and_mark_new_thread : &zpoline_detail_arm_new_thread;
  }
  if (creating_library_thread && (flags & CLONE_SETTLS) && tls != 0) {
    // A thread of the library's own (pthread_create has set up its TLS already): bypassed from
    // its first instruction, so that no hook sees its start, and not under SUD.
    std::uintptr_t thread_pointer;  // the x86-64 TLS ABI keeps it at %fs:0
    asm("mov %%fs:0, %0" : "=r"(thread_pointer));
    const auto offset =
        reinterpret_cast<std::uintptr_t>(&zpoline_detail_thread_state) - thread_pointer;
    auto* child_state = reinterpret_cast<ThreadState*>(tls + offset);
    child_state->bypass_depth = 1;
    child_state->library_thread = 1;
  }
  const std::uint64_t top[2] = {reinterpret_cast<std::uint64_t>(arm), frame.regs->return_address};
  if (!safe_write(reinterpret_cast<void*>(child_stack_top - sizeof top), top, sizeof top)) {
    return -EFAULT;
  }
  CloneRequest request{frame.regs, frame.xsave_area, number, {}};
  std::memcpy(request.args, args, sizeof args);
  // A child without CLONE_SETTLS shares this thread's TLS, including the hook state, which says
  // "inside the hook" right now: the child must start with the state of the application code
  // it returns to. With CLONE_VFORK (posix_spawn, system, popen) this thread is suspended until
  // the child execs or exits, and gets its state back after. Without it both run at once on
  // one hook state: from then on the dispatcher tells them apart by thread id, and only this
  // thread's calls reach the hook (ThreadState::tls_shared).
  ThreadState& self = zpoline_detail_thread_state;
  const bool shares_state = (flags & CLONE_VM) && !(flags & CLONE_SETTLS);
  if (shares_state && !(flags & CLONE_VFORK) && !(self.attention & kAttentionTlsShared)) {
    self.tls_owner = static_cast<pid_t>(raw(SYS_gettid));
    __atomic_fetch_or(&self.attention, kAttentionTlsShared, __ATOMIC_RELAXED);
  }
  const ThreadState saved = self;
  if (shares_state) {
    self.hook_frame = 0;
    self.bypass_depth = 0;
  }
  const long result = zpoline_detail_clone_to_site(&request);
  if (shares_state) {
    self.hook_frame = saved.hook_frame;
    self.hook_canary = saved.hook_canary;
    self.hook_canary_address = saved.hook_canary_address;
    self.bypass_depth = saved.bypass_depth;
    self.vfork_depth = saved.vfork_depth;
    if (thread_record)
      __atomic_store_n(&thread_record->in_hook, saved.hook_frame != 0 ? 1u : 0u, __ATOMIC_RELEASE);
  }
  return result;
}

long forward_clone(const SyscallFrame& frame) {
  const RegisterFrame& r = *frame.regs;
  long args[6] = {static_cast<long>(r.rdi), static_cast<long>(r.rsi), static_cast<long>(r.rdx),
                  static_cast<long>(r.r10), static_cast<long>(r.r8),  static_cast<long>(r.r9)};
  const std::uintptr_t stack = r.rsi;
  if (stack != 0) {
    args[1] = static_cast<long>(stack - 8);
    return clone_to_site(frame, SYS_clone, args, stack, static_cast<std::uint64_t>(args[0]),
                         static_cast<std::uint64_t>(args[4]));
  }
  if ((args[0] & CLONE_VM) && (args[0] & CLONE_VFORK)) return run_on_application_stack(frame);
  const long result = forward_raw(SYS_clone, args[0], args[1], args[2], args[3], args[4], args[5]);
  if (result == 0 && !(args[0] & CLONE_VM)) after_fork_in_child();
  return result;
}

long forward_clone3(const SyscallFrame& frame) {
  const RegisterFrame& r = *frame.regs;
  clone_args copy{};
  const std::size_t size = r.rsi;
  if (size < CLONE_ARGS_SIZE_VER0) return -EINVAL;
  if (size > sizeof copy) {
    // A newer struct than this library knows: let the kernel judge it, unless it asks for a new
    // stack, which this library could not hand to the child.
    if (!safe_read(&copy, reinterpret_cast<const void*>(r.rdi), sizeof copy)) return -EFAULT;
    if (copy.stack != 0) return -E2BIG;
    return forward_raw(SYS_clone3, r.rdi, r.rsi);
  }
  if (!safe_read(&copy, reinterpret_cast<const void*>(r.rdi), size)) return -EFAULT;
  if (copy.stack != 0) {
    const std::uintptr_t top = copy.stack + copy.stack_size;
    copy.stack_size -= 8;
    // clone3 takes two arguments; the child finds its start routine in the other registers
    // (glibc passes the function in rdx and its argument in r8), so they keep their values.
    const long args[6] = {reinterpret_cast<long>(&copy), static_cast<long>(size),
                          static_cast<long>(r.rdx),      static_cast<long>(r.r10),
                          static_cast<long>(r.r8),       static_cast<long>(r.r9)};
    return clone_to_site(frame, SYS_clone3, args, top, copy.flags, copy.tls);
  }
  if ((copy.flags & CLONE_VM) && (copy.flags & CLONE_VFORK)) return run_on_application_stack(frame);
  const long result = forward_raw(SYS_clone3, r.rdi, r.rsi);
  if (result == 0 && !(copy.flags & CLONE_VM)) after_fork_in_child();
  return result;
}

// Code can appear after install: the dynamic linker maps every dlopen'ed library with mmap, and
// programs make memory executable with mprotect. Such code is rewritten right after the call
// succeeds, before it can run. Calls that change existing mappings or protections (a JIT toggling
// a page between RW and RX, unmapping code it is done with) run under code_change_lock(), so
// that the rewriter, working on another thread, never writes into a page unmapped meanwhile nor
// puts back a protection the application has changed (patcher.hpp); code that goes away leaves
// the site registry.
long forward_memory_change(const RegisterFrame& r) {
  const long number = static_cast<long>(r.rax);
  const auto address = static_cast<std::uintptr_t>(r.rdi);
  const auto length = static_cast<std::size_t>(r.rsi);
  const bool live = __atomic_load_n(&zpoline_detail_hook_live, __ATOMIC_ACQUIRE) != 0;
  const bool executable = number != SYS_munmap && number != SYS_mremap && (r.rdx & PROT_EXEC);
  const bool replaces = number == SYS_mmap && (r.r10 & MAP_FIXED);
  if (number == SYS_mmap && !replaces) {
    // A new mapping never overlaps code the rewriter may be patching.
    const long result = forward_raw(number, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9);
    if (live && executable && !(result < 0 && result > -4096)) {
      rewrite_new_code(static_cast<std::uintptr_t>(result), length);
    }
    return result;
  }
  long result;
  {
    // No allocation in here: an allocator may make these calls with its own lock held.
    OwnedLockGuard guard(code_change_lock());
    result = forward_raw(number, r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9);
    note_code_change();
    if (!(result < 0 && result > -4096)) {
      if (number == SYS_munmap || replaces) note_unmapped_code(address, length);
      if (number == SYS_mremap && static_cast<std::uintptr_t>(result) != address) {
        // Moved: the rewritten sites it holds are registered at their new addresses too.
        register_moved_sites(address, static_cast<std::uintptr_t>(result),
                             std::min<std::size_t>(length, r.rdx));
        note_unmapped_code(address, length);
      }
    }
  }
  if (live && executable && !(result < 0 && result > -4096)) {
    rewrite_new_code(replaces ? static_cast<std::uintptr_t>(result) : address, length);
  }
  return result;
}

}  // namespace

long forward_raw(long number, long a0, long a1, long a2, long a3, long a4, long a5) {
  ThreadState& self = zpoline_detail_thread_state;
  const std::uint8_t outer = self.forwarding;
  if (outer == kForwardingInLibrary) self.forwarding = kForwardingInKernel;
  const long result = zpoline_detail_raw_syscall(number, a0, a1, a2, a3, a4, a5);
  self.forwarding = outer;
  return result;
}

const char* syscall_name(long number) noexcept {
  // The names of zpoline/syscalls.hpp are string literals: NUL-terminated.
  return zpoline::syscall_name(number).data();
}

static_assert(forwarded_by_library(SYS_clone) && forwarded_by_library(SYS_clone3) &&
              forwarded_by_library(SYS_vfork) && forwarded_by_library(SYS_mmap) &&
              forwarded_by_library(SYS_mprotect) && forwarded_by_library(SYS_pkey_mprotect) &&
              forwarded_by_library(SYS_munmap) && forwarded_by_library(SYS_rt_sigprocmask) &&
              forwarded_by_library(SYS_rt_sigaction) && forwarded_by_library(SYS_rt_sigsuspend) &&
              forwarded_by_library(SYS_ppoll) && forwarded_by_library(SYS_epoll_pwait) &&
              forwarded_by_library(SYS_epoll_pwait2) && forwarded_by_library(SYS_fork) &&
              forwarded_by_library(SYS_prctl) && forwarded_by_library(SYS_mremap));
static_assert(!forwarded_by_library(SYS_read) && !forwarded_by_library(SYS_getpid) &&
              !forwarded_by_library(-1) && !forwarded_by_library(SYS_exit_group));

long forward(const SyscallFrame& frame) {
  const RegisterFrame& r = *frame.regs;
  switch (static_cast<long>(r.rax)) {
    case SYS_clone:
      return forward_clone(frame);
    case SYS_clone3:
      return forward_clone3(frame);
    case SYS_vfork:
      return run_on_application_stack(frame);
    case SYS_fork: {
      const long result = forward_raw(SYS_fork);
      if (result == 0) after_fork_in_child();
      return result;
    }
    case SYS_mmap:
    case SYS_mprotect:
    case SYS_pkey_mprotect:
    case SYS_munmap:
    case SYS_mremap:
      return forward_memory_change(r);
    case SYS_rt_sigprocmask:
    case SYS_rt_sigaction:
    case SYS_rt_sigsuspend:
    case SYS_ppoll:
    case SYS_epoll_pwait:
    case SYS_epoll_pwait2:
    case SYS_prctl:
      if (__atomic_load_n(&zpoline_detail_filter_signal_calls, __ATOMIC_ACQUIRE)) {
        return forward_signal_call(r);
      }
      return zpoline_detail_forward_syscall(&r);
    default:
      return zpoline_detail_forward_syscall(&r);
  }
}

namespace {

// The entry point of a hook that is not a plain function (of every hook, in AddressSanitizer
// builds): the std::function's own call, as a tail call, so that the hook returns straight to the
// stub. The stub calls it on whatever stack the system call was made on, and under ASan that can
// be a stack whose dead part is still poisoned: __asan_handle_no_return makes a sigaltstack call
// before it clears the frames a forced unwind (pthread_cancel) abandoned, so the hook ran where
// a cancelled hook's frames had their redzones (matrix/pthread_cancel, the HookChain cells); the
// stub's own frame, which the hook reads its registers from, can be there too.
ZPOLINE_NO_SANITIZE_ADDRESS long call_hook_object(Syscall& call, const void* hook) {
  // Only the stub calls this, with the Syscall of the HookCall in its frame.
  const auto* hook_call =
      reinterpret_cast<const HookCall*>(reinterpret_cast<char*>(&call) - offsetof(HookCall, call));
  forget_stale_stack_poison_up_to(__builtin_frame_address(0), hook_call->frame.regs->red_zone);
  return (*static_cast<const Hook*>(hook))(call);
}

// The stub builds the Syscall a hook receives itself (entry_stub.S, HOOK_CALL_SYSCALL): a
// pointer to its SyscallFrame, then a null continuation. Members with the same access are laid
// out in declaration order; this checks that the class still has exactly these two.
void check_syscall_layout() {
  static_assert(std::is_trivially_copyable_v<Syscall> && sizeof(Syscall) == 2 * sizeof(void*));
  SyscallFrame frame{};
  const Syscall call(frame);
  const void* words[2];
  std::memcpy(words, &call, sizeof words);
  if (words[0] != &frame || words[1] != nullptr) {
    std::fprintf(stderr,
                 "zpoline: fatal: zpoline::Syscall's layout is not the one entry_stub.S "
                 "builds (a pointer to the frame, then the continuation). Aborting.\n");
    std::abort();
  }
}

}  // namespace

void publish_hook(Hook hook) {
  check_syscall_layout();
  const std::uintptr_t resume_points[] = {
      reinterpret_cast<std::uintptr_t>(zpoline_detail_forward_syscall_resume),
      reinterpret_cast<std::uintptr_t>(zpoline_detail_raw_syscall_resume)};
  set_syscall_resume_points(resume_points);
  if (!zpoline_detail_membarrier_registered) {
    zpoline_detail_membarrier_registered =
        raw(SYS_membarrier, kMembarrierRegisterPrivateExpedited, 0, 0) == 0;
  }
  auto* object = new Hook(std::move(hook));
  auto* installed = new InstalledHook{&call_hook_object, object, object};
  // A plain function is called directly: the stub passes the Syscall in rdi (the context in
  // rsi, which such a function ignores). Only the stub calls it, so no C++ call has the wrong
  // type (the cast goes through void (*)(), the generic function pointer type).
  using Function = long (*)(Syscall&);
  using NoexceptFunction = long (*)(Syscall&) noexcept;
  if (kAddressSanitizer) {
    // Through call_hook_object, which clears the stale poison below the stub first.
  } else if (const Function* function = object->target<Function>()) {
    installed->entry = reinterpret_cast<HookEntry>(reinterpret_cast<void (*)()>(*function));
  } else if (const NoexceptFunction* f = object->target<NoexceptFunction>()) {
    installed->entry = reinterpret_cast<HookEntry>(reinterpret_cast<void (*)()>(*f));
  }
  __atomic_store_n(&zpoline_detail_current_hook, installed, __ATOMIC_RELEASE);
  __atomic_store_n(&zpoline_detail_hook_live, 1, __ATOMIC_RELEASE);
}

void retract_hook() noexcept {
  __atomic_store_n(&zpoline_detail_hook_live, 0, __ATOMIC_SEQ_CST);
  if (zpoline_detail_membarrier_registered) {
    raw(SYS_membarrier, kMembarrierPrivateExpedited, 0, 0);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  bool busy = false;
  for_each_thread_record([&](const ThreadRecord& record) {
    const pid_t owner = record.owner.load(std::memory_order_acquire);
    busy |= owner != 0 && __atomic_load_n(&record.in_hook, __ATOMIC_ACQUIRE) != 0 &&
            thread_exists(owner);
  });
  InstalledHook* hook =
      __atomic_exchange_n(&zpoline_detail_current_hook, nullptr, __ATOMIC_ACQ_REL);
  if (!busy && hook != nullptr) {
    delete hook->hook;
    delete hook;
  }
}

HookedCallCounts hooked_call_counts() noexcept {
  HookedCallCounts counts;
  for_each_thread_record([&](const ThreadRecord& record) {
    counts.through_sites += __atomic_load_n(&record.calls_through_sites, __ATOMIC_RELAXED);
    counts.through_net += __atomic_load_n(&record.calls_through_net, __ATOMIC_RELAXED);
  });
  return counts;
}

void leave_hook_state() noexcept {
  ThreadState& self = zpoline_detail_thread_state;
  self.hook_frame = 0;
  self.vfork_frame = 0;
  self.forwarding = 0;
  if (thread_record) __atomic_store_n(&thread_record->in_hook, 0, __ATOMIC_RELEASE);
}

void after_fork_in_child() noexcept {
  reset_rewriting_after_fork();
  if (thread_record != nullptr) {
    reset_thread_records_after_fork(thread_record, static_cast<pid_t>(raw(SYS_gettid)));
  }
  arm_safety_net_after_fork();
}

ScopedLibraryThreadCreation::ScopedLibraryThreadCreation() noexcept {
  ++zpoline_detail_thread_state.bypass_depth;
  creating_library_thread = true;
}
ScopedLibraryThreadCreation::~ScopedLibraryThreadCreation() {
  creating_library_thread = false;
  --zpoline_detail_thread_state.bypass_depth;
}

NetDispatchScope::NetDispatchScope() noexcept : outer_(dispatching_for_net) {
  dispatching_for_net = true;
}
NetDispatchScope::~NetDispatchScope() {
  dispatching_for_net = outer_;
}

// The state of a hook call that waits in forward() while a signal handler's call runs the hook
// again on the same thread.
struct NestedHookCall {
  bool active = false;
  std::uint64_t hook_frame, hook_canary, hook_canary_address;
  void enter(ThreadState& self) noexcept {
    active = true;
    hook_frame = self.hook_frame;
    hook_canary = self.hook_canary;
    hook_canary_address = self.hook_canary_address;
    self.forwarding = 0;
    self.hook_frame = 0;
  }
  void leave(ThreadState& self) noexcept {
    if (!active) return;
    self.hook_frame = hook_frame;
    self.hook_canary = hook_canary;
    self.hook_canary_address = hook_canary_address;
    self.forwarding = kForwardingInKernel;
    if (thread_record) __atomic_store_n(&thread_record->in_hook, 1, __ATOMIC_RELEASE);
  }
};

[[noreturn]] void report_exception_from_hook(std::string_view call) {
  ++zpoline_detail_thread_state.bypass_depth;
  std::fprintf(stderr,
               "zpoline: fatal: the hook threw an exception while handling %.*s; a hook must "
               "return a result (a negative errno for failure) instead. Aborting.\n",
               static_cast<int>(call.size()), call.data());
  std::abort();
}

}  // namespace zpoline::detail

using namespace zpoline::detail;

namespace {
long dispatch_call(RegisterFrame* regs, void* xsave_area);
}  // namespace

// The stub's entry into C++ (and the safety net's): stale AddressSanitizer poison below this
// frame and in the stub's frame above it goes first (platform/sanitizers.hpp), so that no frame
// of the dispatcher's or the hook's lands on it and the saved registers read clean (a call made
// while a forced unwind runs its landing pads finds abandoned frames' poison there: the
// dispatcher's catch of abi::__forced_unwind allocates, and the allocator's mmap is hooked too).
// Nothing here is instrumented; the rest is.
extern "C" ZPOLINE_NO_SANITIZE_ADDRESS long zpoline_detail_dispatch(RegisterFrame* regs,
                                                                    void* xsave_area) {
  forget_stale_stack_poison_up_to(__builtin_frame_address(0), regs->red_zone);
  return dispatch_call(regs, xsave_area);
}

namespace {

// UndefinedBehaviorSanitizer's null check is off here: `catch (abi::__forced_unwind&)` is how
// libstdc++ documents catching a thread's cancellation, and its __cxa_begin_catch returns a null
// object for that (foreign) exception, which the check reports as a reference bound to null.
__attribute__((noinline, no_sanitize("null"))) long dispatch_call(RegisterFrame* regs,
                                                                  void* xsave_area) {
  ThreadState& self = zpoline_detail_thread_state;
  SyscallFrame frame{regs, xsave_area};
  if (const std::uint32_t attention = __atomic_load_n(&self.attention, __ATOMIC_ACQUIRE)) {
    if ((attention & kAttentionTlsShared) && raw(SYS_gettid) != self.tls_owner) {
      // A thread made by clone(CLONE_VM) without CLONE_SETTLS, running on its creator's TLS:
      // the hook state here is the creator's, so its calls go straight to the kernel.
      const long result = forward(frame);
      return self.vfork_frame == reinterpret_cast<std::uintptr_t>(regs)
                 ? static_cast<long>(regs->rax)
                 : result;
    }
    if (attention & kAttentionArmSafetyNet) {
      __atomic_fetch_and(&self.attention, ~kAttentionArmSafetyNet, __ATOMIC_RELAXED);
    }
  }
  // A thread the safety net could not ask to arm SUD (it blocked the request signal), or that has
  // made no hooked call before: arm it now. Not a bypassed one (the library's own threads).
  if (self.bypass_depth == 0) arm_safety_net_if_needed();
  const auto call_frame = reinterpret_cast<std::uintptr_t>(regs);
  bool run_hook = self.bypass_depth == 0;
  NestedHookCall nested;
  if (run_hook && self.hook_frame != 0) {
    // The hook is running on this thread. A call from below its frame is the hook's own (the
    // stub sends clone, clone3 and vfork here even then), or a signal handler's on this stack;
    // one from above comes from a signal handler on an alternate stack, or the hook was left by
    // a siglongjmp and will not return.
    const bool frame_intact = *reinterpret_cast<const volatile std::uint64_t*>(
                                  self.hook_canary_address) == self.hook_canary;
    if ((call_frame < self.hook_frame && frame_intact) || on_alternate_signal_stack()) {
      if (self.forwarding == kForwardingInKernel) {
        // The hook waits in forward() for the kernel, so a signal handler runs: its calls are
        // the application's and reach the hook, nested in the waiting call, whose state comes
        // back after.
        nested.enter(self);
      } else {
        run_hook = false;  // the hook's own call, or a handler that interrupted the hook's code
      }
    } else {
      self.hook_frame = 0;
      self.forwarding = 0;
      if (thread_record) __atomic_store_n(&thread_record->in_hook, 0, __ATOMIC_RELEASE);
    }
  }
  run_hook = run_hook && __atomic_load_n(&zpoline_detail_hook_live, __ATOMIC_ACQUIRE);
  const auto this_frame = reinterpret_cast<std::uintptr_t>(regs);
  if (!run_hook) {
    const long result = forward(frame);
    nested.leave(self);
    return self.vfork_frame == this_frame ? static_cast<long>(regs->rax) : result;
  }
  if (thread_record == nullptr) {
    // Allocation-free and lock-free: this may be a call from inside malloc.
    thread_record = claim_thread_record(static_cast<pid_t>(raw(SYS_gettid)), &self.attention);
    self.in_hook = &thread_record->in_hook;
  }
  // From here on, syscalls from below this frame are the hook's own, while the canary in this
  // frame is intact.
  volatile std::uint64_t canary = ++self.hook_entries ^ reinterpret_cast<std::uintptr_t>(regs);
  self.hook_canary = canary;
  self.hook_canary_address = reinterpret_cast<std::uintptr_t>(&canary);
  self.hook_frame = reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
  __atomic_store_n(&thread_record->in_hook, 1, __ATOMIC_RELAXED);
  // Only this thread writes its counters; relaxed atomic stores keep the reader's loads defined.
  std::uint64_t& tally =
      dispatching_for_net ? thread_record->calls_through_net : thread_record->calls_through_sites;
  __atomic_store_n(&tally, tally + 1, __ATOMIC_RELAXED);
  reader_barrier();
  long result;
  InstalledHook* hook = load_current_hook();
  if (hook != nullptr && __atomic_load_n(&zpoline_detail_hook_live, __ATOMIC_RELAXED)) {
    zpoline::Syscall call(frame);
    try {
      result = (*hook->hook)(call);
    } catch (abi::__forced_unwind&) {
      // pthread_cancel or pthread_exit while the hook ran (blocked in a forwarded read, say):
      // the thread leaves the hook for good and unwinds into the application.
      leave_hook_state();
      throw;
    } catch (...) {
      report_exception_from_hook(call.name());
    }
  } else {
    result = forward(frame);
  }
  __atomic_store_n(&thread_record->in_hook, 0, __ATOMIC_RELEASE);
  self.hook_frame = 0;
  nested.leave(self);
  // For vfork, the stub makes the call now that the hook is done; it needs the number.
  return self.vfork_frame == this_frame ? static_cast<long>(regs->rax) : result;
}

}  // namespace

extern "C" long zpoline_detail_forward_frame(const SyscallFrame* frame) {
  return forward(*frame);
}

// The personality routine of the entry stub's frame (entry_stub.S, .cfi_personality): an
// exception that leaves the hook the stub called reaches it in the unwinder's search phase and is
// reported. A forced unwind (pthread_cancel or pthread_exit while the hook runs, typically blocked
// in a forwarded call) has no search phase: it passes this frame on its way to the application,
// and the thread's hook state is reset on the way.
extern "C" __attribute__((visibility("hidden"))) _Unwind_Reason_Code
zpoline_detail_stub_personality(int, _Unwind_Action actions, _Unwind_Exception_Class,
                                _Unwind_Exception*, _Unwind_Context* context) {
  if (actions & _UA_FORCE_UNWIND) {
    leave_hook_state();
    return _URC_CONTINUE_UNWIND;
  }
  constexpr int kDwarfRbx = 3;  // the stub keeps its RegisterFrame in rbx
  const auto* regs = reinterpret_cast<const RegisterFrame*>(_Unwind_GetGR(context, kDwarfRbx));
  report_exception_from_hook(zpoline::syscall_name(static_cast<long>(regs->rax)));
}

extern "C" void zpoline_detail_report_stray_call(std::uintptr_t return_address, long number) {
  ++zpoline_detail_thread_state.bypass_depth;
  char message[256];
  const int length = std::snprintf(
      message, sizeof message,
      "zpoline: fatal: a call into the system call trampoline (rax = %#lx) from %#lx (return "
      "address), which is not a rewritten syscall site: a NULL or corrupt function pointer was "
      "called. Aborting.\n",
      static_cast<unsigned long>(number), static_cast<unsigned long>(return_address));
  raw(SYS_write, STDERR_FILENO, reinterpret_cast<long>(message), length);
  std::abort();
}

namespace zpoline {
inline namespace v0 {

namespace {
ZPOLINE_GENERAL_REGISTERS_ONLY long* argument_slot(RegisterFrame& r, int i) {
  switch (i) {
    case 0:
      return reinterpret_cast<long*>(&r.rdi);
    case 1:
      return reinterpret_cast<long*>(&r.rsi);
    case 2:
      return reinterpret_cast<long*>(&r.rdx);
    case 3:
      return reinterpret_cast<long*>(&r.r10);
    case 4:
      return reinterpret_cast<long*>(&r.r8);
    case 5:
      return reinterpret_cast<long*>(&r.r9);
    default:
      return nullptr;
  }
}
}  // namespace

// What a hook calls on its Syscall uses general registers only (Options::general_registers_only).
ZPOLINE_GENERAL_REGISTERS_ONLY long Syscall::number() const noexcept {
  return static_cast<long>(frame_->regs->rax);
}
std::string_view Syscall::name() const noexcept {
  return syscall_name(number());
}
ZPOLINE_GENERAL_REGISTERS_ONLY long Syscall::arg(int i) const noexcept {
  const long* slot = argument_slot(*frame_->regs, i);
  return slot ? *slot : 0;
}
ZPOLINE_GENERAL_REGISTERS_ONLY void Syscall::set_arg(int i, long value) noexcept {
  if (long* slot = argument_slot(*frame_->regs, i)) *slot = value;
}
ZPOLINE_GENERAL_REGISTERS_ONLY std::uintptr_t Syscall::return_address() const noexcept {
  return frame_->regs->return_address;
}
// Most calls go straight to the kernel, by tail calls: the stub's `ret`-less return path
// (entry_stub.S). The numbers detail::forward() handles itself run library C++ code: where the
// stub saved no vector state (Options::general_registers_only), it is saved around it.
ZPOLINE_GENERAL_REGISTERS_ONLY long Syscall::forward() {
  if (next_ != nullptr) return next_->run(*next_, *this);
  const RegisterFrame& r = *frame_->regs;
  ThreadState& self = zpoline_detail_thread_state;
  if (!detail::forwarded_by_library(static_cast<long>(r.rax))) {
    // A signal handler that runs meanwhile interrupted the application's call (dispatch.cpp).
    self.forwarding = detail::kForwardingInKernel;
    return zpoline_detail_forward_syscall(&r);  // clears it
  }
  // The library's own work for these numbers is not the application's call: only the system
  // call that makes it is (forward_raw).
  self.forwarding = detail::kForwardingInLibrary;
  const long result = frame_->xsave_area == nullptr ? zpoline_detail_forward_saving_vectors(frame_)
                                                    : detail::forward(*frame_);
  self.forwarding = 0;
  return result;
}

ScopedBypass::ScopedBypass() noexcept {
  ++zpoline_detail_thread_state.bypass_depth;
}
ScopedBypass::~ScopedBypass() {
  --zpoline_detail_thread_state.bypass_depth;
}

long raw_syscall(long number, long a0, long a1, long a2, long a3, long a4, long a5) noexcept {
  return zpoline_detail_raw_syscall(number, a0, a1, a2, a3, a4, a5);
}

}  // namespace v0
}  // namespace zpoline
