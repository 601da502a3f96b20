#include "dispatch/safety_net.hpp"

#include "dispatch/dispatch.hpp"

#include <dirent.h>
#include <dlfcn.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <linux/futex.h>

#include "platform/memory.hpp"
#include "rewriting/rewriter.hpp"
#include "rewriting/site_registry.hpp"
#include "zpoline/zpoline.hpp"

unsigned char zpoline_detail_sud_enabled = 0;
char zpoline_detail_sud_selector = 1;  // SYSCALL_DISPATCH_FILTER_BLOCK, never changed

namespace zpoline::detail {
namespace {

constexpr int kSetSyscallUserDispatch = 59;  // PR_SET_SYSCALL_USER_DISPATCH
constexpr int kDispatchOff = 0;
constexpr int kDispatchOn = 1;
constexpr int kSysUserDispatch = 2;  // si_code of a SUD SIGSYS
// si_value of the signal that asks a thread to apply the current SUD setting to itself.
constexpr std::uintptr_t kApplyRequest = 0x7a706f6c696e65;  // "zpoline"

std::atomic<std::size_t> traps{0}, sites_rewritten_on_trap{0}, emulated{0};
std::atomic<int> pending_acks{0};

// The application's own SIGSYS disposition, as rt_sigaction sees it (kernel layout).
struct KernelSigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  std::uint64_t mask;
};
KernelSigaction application_sigsys{};  // SIG_DFL
constexpr unsigned long kSaSiginfo = SA_SIGINFO;
constexpr std::uint64_t kSigsysBit = 1ull << (SIGSYS - 1);

long raw(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0) {
  return zpoline_detail_raw_syscall(number, a0, a1, a2, a3, a4, 0);
}

long apply_to_this_thread(bool on) {
  const auto begin = reinterpret_cast<long>(zpoline_detail_code_begin);
  const auto length = reinterpret_cast<long>(zpoline_detail_code_end) - begin;
  return on ? raw(SYS_prctl, kSetSyscallUserDispatch, kDispatchOn, begin, length,
                  reinterpret_cast<long>(&zpoline_detail_sud_selector))
            : raw(SYS_prctl, kSetSyscallUserDispatch, kDispatchOff, 0, 0, 0);
}

// Each other thread of the process applies the current setting to itself when it takes this
// signal (SUD can only be changed by the thread it applies to).
void ask_other_threads() {
  const long pid = raw(SYS_getpid);
  const long self = raw(SYS_gettid);
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return;
  int asked = 0;
  while (dirent* entry = readdir(tasks)) {
    const long tid = std::strtol(entry->d_name, nullptr, 10);
    if (tid <= 0 || tid == self) continue;
    siginfo_t info{};
    info.si_signo = SIGSYS;
    info.si_code = SI_QUEUE;
    info.si_pid = static_cast<pid_t>(pid);
    info.si_value.sival_ptr = reinterpret_cast<void*>(kApplyRequest);
    pending_acks.fetch_add(1);
    if (raw(SYS_rt_tgsigqueueinfo, pid, tid, SIGSYS, reinterpret_cast<long>(&info)) == 0) {
      ++asked;
    } else {
      pending_acks.fetch_sub(1);  // the thread has exited meanwhile
    }
  }
  closedir(tasks);
  // Wait for the threads to take the signal (a thread blocked in a syscall takes it at once;
  // SA_RESTART restarts the call). A thread that exits meanwhile never answers: give up after
  // a bounded number of yields.
  for (int spins = 0; pending_acks.load() > 0 && spins < 200000; ++spins) raw(SYS_sched_yield);
  pending_acks.store(0);
}

// Trapped sites are rewritten by a thread of the library's own, never in the signal handler:
// a trap can interrupt any code, including the allocator with its lock held, and rewriting
// allocates. The handler queues the site and emulates the call; later calls from that site take
// the rewritten path once the thread is done.
constexpr std::size_t kQueueSize = 256;
std::atomic<std::uintptr_t> queued_sites[kQueueSize];
std::atomic<std::uint32_t> queue_signal{0};  // futex word: bumped when a site is queued
std::atomic<bool> rewriter_stop{false};
std::thread* rewriter_thread = nullptr;

void queue_for_rewriting(std::uintptr_t site) {
  for (auto& slot : queued_sites) {
    std::uintptr_t expected = slot.load(std::memory_order_relaxed);
    if (expected == site) return;
    if (expected == 0 && slot.compare_exchange_strong(expected, site)) {
      queue_signal.fetch_add(1, std::memory_order_release);
      raw(SYS_futex, reinterpret_cast<long>(&queue_signal), FUTEX_WAKE_PRIVATE, 1);
      return;
    }
  }
  // Full: the site traps again later and is queued then.
}

// Sites rewritten after trapping, in order, for the coverage report. Never destroyed: the
// rewriter thread may still append while exit handlers run.
std::mutex& lazy_sites_lock() {
  static auto* lock = new std::mutex;
  return *lock;
}
std::vector<LazilyRewrittenSite>& lazy_sites() {
  static auto* sites = new std::vector<LazilyRewrittenSite>;
  return *sites;
}

// The object the site belongs to, named now: by the time the report is read it may be unloaded.
std::string image_of(std::uintptr_t site) {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(site), &info) == 0 || info.dli_fname == nullptr) return {};
  return info.dli_fname;
}

void rewrite_queued_sites() {
  zpoline::ScopedBypass bypass;  // this thread's syscalls are the library's own
  while (!rewriter_stop.load()) {
    const std::uint32_t seen = queue_signal.load(std::memory_order_acquire);
    for (auto& slot : queued_sites) {
      const std::uintptr_t site = slot.load(std::memory_order_acquire);
      if (site == 0) continue;
      try {
        if (rewrite_trapped_site(site)) {
          ++sites_rewritten_on_trap;
          std::string image = image_of(site);
          std::lock_guard lock(lazy_sites_lock());
          lazy_sites().push_back({site, std::move(image)});
        }
      } catch (...) {
        // A page that cannot be made writable: the site stays emulated.
      }
      slot.store(0, std::memory_order_release);
    }
    if (queue_signal.load(std::memory_order_acquire) == seen) {
      raw(SYS_futex, reinterpret_cast<long>(&queue_signal), FUTEX_WAIT_PRIVATE, seen, 0);
    }
  }
}

void pass_to_application(int signal, siginfo_t* info, void* context) {
  const KernelSigaction action = application_sigsys;
  if (action.handler == reinterpret_cast<void*>(SIG_IGN)) return;
  if (action.handler == reinterpret_cast<void*>(SIG_DFL)) {
    // Default action of SIGSYS: terminate with a core dump. Re-raise with the default.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigaction(SIGSYS, &default_action, nullptr);
    raw(SYS_tgkill, raw(SYS_getpid), raw(SYS_gettid), SIGSYS);
    return;
  }
  if (action.flags & kSaSiginfo) {
    reinterpret_cast<void (*)(int, siginfo_t*, void*)>(action.handler)(signal, info, context);
  } else {
    reinterpret_cast<void (*)(int)>(action.handler)(signal);
  }
}

// The application's vector state in the layout the stub uses (needed if the call is a clone
// whose child starts on its own stack: the child gets these registers). The signal frame holds
// it in the kernel's XSAVE layout; in the "registers" modes it is converted.
void* vector_area(ucontext_t& context) {
  auto* fpstate = reinterpret_cast<unsigned char*>(context.uc_mcontext.fpregs);
  const unsigned char mode = zpoline_detail_xsave_mode;
  if (mode != 3 && mode != 4) return fpstate;
  static thread_local unsigned char area[576] __attribute__((aligned(64)));
  std::memset(area, 0, sizeof area);
  std::uint64_t present = 0;
  std::memcpy(&present, fpstate + 512, sizeof present);  // XSTATE_BV of the XSAVE header
  for (int i = 0; i < 16; ++i) {
    std::memcpy(area + 32 * i, fpstate + 160 + 16 * i, 16);  // xmm in the legacy area
    if (mode == 3 && (present & 4)) std::memcpy(area + 32 * i + 16, fpstate + 576 + 16 * i, 16);
  }
  std::memcpy(area + 512, fpstate + 24, 4);  // MXCSR
  return area;
}

// Runs the trapped call as the entry stub would, from the signal context: the registers come
// from (and go back to) the signal frame, whose saved vector state serves as the XSAVE area.
void emulate(ucontext_t& context, std::uintptr_t return_address, long number) {
  greg_t* g = context.uc_mcontext.gregs;
  RegisterFrame frame{};
  frame.rdi = g[REG_RDI];
  frame.rsi = g[REG_RSI];
  frame.rdx = g[REG_RDX];
  frame.r10 = g[REG_R10];
  frame.r8 = g[REG_R8];
  frame.r9 = g[REG_R9];
  frame.rbx = g[REG_RBX];
  frame.rbp = g[REG_RBP];
  frame.r12 = g[REG_R12];
  frame.r13 = g[REG_R13];
  frame.r14 = g[REG_R14];
  frame.r15 = g[REG_R15];
  frame.rax = static_cast<std::uint64_t>(number);
  frame.rflags = g[REG_EFL];
  frame.return_address = return_address;
  long result;
  {
    NetDispatchScope net;
    result = zpoline_detail_dispatch(&frame, vector_area(context));
  }
  g[REG_RDI] = frame.rdi;
  g[REG_RSI] = frame.rsi;
  g[REG_RDX] = frame.rdx;
  g[REG_R10] = frame.r10;
  g[REG_R8] = frame.r8;
  g[REG_R9] = frame.r9;
  ThreadState& self = zpoline_detail_thread_state;
  if (!self.run_on_application_stack) {
    g[REG_RAX] = result;
    return;
  }
  // vfork: the call is made on the application's stack once the signal frame is gone, with the
  // way back in this thread's vfork_returns stack, as entry_stub.S does.
  self.run_on_application_stack = 0;
  if (self.vfork_depth >= kMaxVforkDepth) {
    g[REG_RAX] = -EAGAIN;
    return;
  }
  ThreadState::VforkReturn& entry = self.vfork_returns[self.vfork_depth];
  entry.return_address = return_address;
  std::memcpy(&entry.bypass_depth, &self, sizeof entry.bypass_depth);
  entry.hook_frame = self.hook_frame;
  ++self.vfork_depth;
  g[REG_RAX] = number;
  g[REG_RIP] = reinterpret_cast<greg_t>(&zpoline_detail_vfork_syscall);
}

void on_sigsys(int signal, siginfo_t* info, void* raw_context) {
  auto& context = *static_cast<ucontext_t*>(raw_context);
  if (info->si_code == SI_QUEUE && info->si_pid == raw(SYS_getpid) &&
      reinterpret_cast<std::uintptr_t>(info->si_value.sival_ptr) == kApplyRequest) {
    apply_to_this_thread(__atomic_load_n(&zpoline_detail_sud_enabled, __ATOMIC_ACQUIRE) != 0);
    pending_acks.fetch_sub(1);
    return;
  }
  if (info->si_code != kSysUserDispatch) {
    pass_to_application(signal, info, raw_context);
    return;
  }
  ++traps;
  const int saved_errno = errno;
  const auto return_address = reinterpret_cast<std::uintptr_t>(info->si_call_addr);
  const long number = info->si_syscall;
  greg_t* g = context.uc_mcontext.gregs;
  if (number == SYS_rt_sigreturn) {
    // A signal restorer that was not rewritten: return on exactly its stack.
    g[REG_RIP] = reinterpret_cast<greg_t>(&zpoline_detail_sigreturn_gadget);
    errno = saved_errno;
    return;
  }
  const std::uintptr_t site = return_address - 2;
  std::uint16_t bytes = 0;
  const bool rewritten = safe_read(&bytes, reinterpret_cast<const void*>(site), sizeof bytes) &&
                         bytes == 0xd0ff && site_registry().contains(site);
  if (rewritten) {
    // Rewritten meanwhile (by the rewriter thread): run the site again, it is a `call *%rax`
    // now and rax holds the number.
    g[REG_RAX] = number;
    g[REG_RIP] = static_cast<greg_t>(site);
  } else {
    queue_for_rewriting(site);
    ++emulated;
    emulate(context, return_address, number);
  }
  errno = saved_errno;
}

bool handler_installed = false;

void install_handler() {
  if (handler_installed) return;
  // Installed with the library's own signal restorer: returning from this handler must not
  // itself trap (in lazy mode libc's restorer is not rewritten until it traps). SA_NODEFER: a
  // syscall that traps while the handler runs (the hook's own, say) must be deliverable, since
  // a blocked SIGSYS from SUD kills the process.
  constexpr unsigned long kSaRestorer = 0x04000000;
  KernelSigaction action{};
  action.handler = reinterpret_cast<void*>(&on_sigsys);
  action.flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER | kSaRestorer;
  action.restorer = reinterpret_cast<void*>(&zpoline_detail_sigreturn_gadget);
  KernelSigaction previous{};
  if (raw(SYS_rt_sigaction, SIGSYS, reinterpret_cast<long>(&action),
          reinterpret_cast<long>(&previous), sizeof action.mask) == 0) {
    application_sigsys = previous;
  }
  handler_installed = true;
}

}  // namespace

bool safety_net_supported() noexcept {
  // Switching it off is harmless and tells whether the kernel knows the prctl.
  return raw(SYS_prctl, kSetSyscallUserDispatch, kDispatchOff, 0, 0, 0) == 0;
}

void enable_safety_net() {
  install_handler();
  rewriter_stop.store(false);
  if (rewriter_thread == nullptr) rewriter_thread = new std::thread(rewrite_queued_sites);
  __atomic_store_n(&zpoline_detail_sud_enabled, 1, __ATOMIC_RELEASE);
  apply_to_this_thread(true);
  ask_other_threads();
}

void disable_safety_net() noexcept {
  if (!__atomic_load_n(&zpoline_detail_sud_enabled, __ATOMIC_ACQUIRE)) return;
  __atomic_store_n(&zpoline_detail_sud_enabled, 0, __ATOMIC_RELEASE);
  apply_to_this_thread(false);
  ask_other_threads();
  if (rewriter_thread != nullptr) {
    rewriter_stop.store(true);
    queue_signal.fetch_add(1);
    raw(SYS_futex, reinterpret_cast<long>(&queue_signal), FUTEX_WAKE_PRIVATE, 1);
    rewriter_thread->join();
    delete rewriter_thread;
    rewriter_thread = nullptr;
  }
}

bool safety_net_enabled() noexcept {
  return __atomic_load_n(&zpoline_detail_sud_enabled, __ATOMIC_ACQUIRE) != 0;
}

void arm_safety_net_after_fork() noexcept {
  if (safety_net_enabled()) apply_to_this_thread(true);
}

long forward_signal_call(const RegisterFrame& r) noexcept {
  const long number = static_cast<long>(r.rax);
  // Calls that block signals for their duration: the mask argument loses SIGSYS.
  const int mask_argument = number == SYS_rt_sigsuspend                                 ? 0
                            : number == SYS_ppoll                                       ? 3
                            : (number == SYS_epoll_pwait || number == SYS_epoll_pwait2) ? 4
                                                                                        : -1;
  if (mask_argument >= 0) {
    long args[6] = {static_cast<long>(r.rdi), static_cast<long>(r.rsi), static_cast<long>(r.rdx),
                    static_cast<long>(r.r10), static_cast<long>(r.r8),  static_cast<long>(r.r9)};
    std::uint64_t set = 0;
    const auto* requested = reinterpret_cast<const void*>(args[mask_argument]);
    if (requested != nullptr && safe_read(&set, requested, sizeof set)) {
      set &= ~kSigsysBit;
      args[mask_argument] = reinterpret_cast<long>(&set);
    }
    return zpoline_detail_raw_syscall(number, args[0], args[1], args[2], args[3], args[4], args[5]);
  }
  if (number == SYS_rt_sigprocmask) {
    // SIGSYS stays deliverable: blocking it would turn the next trap into a kill.
    std::uint64_t set = 0;
    const auto* requested = reinterpret_cast<const void*>(r.rsi);
    if (requested == nullptr || r.rdi == SIG_UNBLOCK || r.r10 != sizeof set ||
        !safe_read(&set, requested, sizeof set)) {
      return raw(number, r.rdi, r.rsi, r.rdx, r.r10);
    }
    set &= ~kSigsysBit;
    return raw(number, r.rdi, reinterpret_cast<long>(&set), r.rdx, r.r10);
  }
  // rt_sigaction
  const long signal = static_cast<long>(r.rdi);
  KernelSigaction action{};
  const auto* requested = reinterpret_cast<const void*>(r.rsi);
  auto* old = reinterpret_cast<void*>(r.rdx);
  if (r.r10 != sizeof action.mask) return raw(number, r.rdi, r.rsi, r.rdx, r.r10);
  if (requested != nullptr && !safe_read(&action, requested, sizeof action)) return -EFAULT;
  if (signal == SIGSYS) {
    // The library keeps the kernel's SIGSYS handler; the application's is called from it for
    // the SIGSYS signals that are not from SUD.
    if (old != nullptr && !safe_write(old, &application_sigsys, sizeof application_sigsys)) {
      return -EFAULT;
    }
    if (requested != nullptr) application_sigsys = action;
    return 0;
  }
  if (requested == nullptr) return raw(number, r.rdi, r.rsi, r.rdx, r.r10);
  action.mask &= ~kSigsysBit;  // no handler may block SIGSYS while it runs
  return raw(number, r.rdi, reinterpret_cast<long>(&action), r.rdx, r.r10);
}

std::vector<LazilyRewrittenSite> lazily_rewritten_sites() {
  std::lock_guard lock(lazy_sites_lock());
  return lazy_sites();
}

SafetyNetCounters safety_net_counters() noexcept {
  return {traps.load(), sites_rewritten_on_trap.load(), emulated.load()};
}

}  // namespace zpoline::detail
