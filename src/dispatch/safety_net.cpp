#include "dispatch/safety_net.hpp"

#include "dispatch/dispatch.hpp"

#include <asm/prctl.h>
#include <dlfcn.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <linux/futex.h>

#include "dispatch/thread_records.hpp"
#include "platform/cpu.hpp"
#include "platform/memory.hpp"
#include "platform/sanitizers.hpp"
#include "platform/signals.hpp"
#include "rewriting/patcher.hpp"
#include "rewriting/rewriter.hpp"
#include "rewriting/site_registry.hpp"
#include "zpoline/zpoline.hpp"

unsigned char zpoline_detail_sud_enabled = 0;
// The selector of every thread's Syscall User Dispatch: one byte for the whole process, so that
// turning the net off (ALLOW) or on again (BLOCK) needs nothing from the other threads. A thread
// that has armed SUD keeps it armed; while the net is off it only pays the kernel's slower
// system call entry.
char zpoline_detail_sud_selector = 0;

namespace zpoline::detail {
namespace {

constexpr int kSetSyscallUserDispatch = 59;  // PR_SET_SYSCALL_USER_DISPATCH
constexpr int kDispatchOff = 0;
constexpr int kDispatchOn = 1;
constexpr char kSelectorAllow = 0;   // SYSCALL_DISPATCH_FILTER_ALLOW
constexpr char kSelectorBlock = 1;   // SYSCALL_DISPATCH_FILTER_BLOCK
constexpr int kSysUserDispatch = 2;  // si_code of a SUD SIGSYS
constexpr std::uint64_t kSigsysBit = 1ull << (SIGSYS - 1);

std::atomic<std::size_t> traps{0}, sites_rewritten_on_trap{0}, emulated{0};

long raw(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0) {
  return zpoline_detail_raw_syscall(number, a0, a1, a2, a3, a4, 0);
}

bool net_on() {
  return __atomic_load_n(&zpoline_detail_sud_enabled, __ATOMIC_ACQUIRE) != 0;
}

// Arms SUD for the calling thread. SIGSYS first leaves its signal mask: a trap while SIGSYS is
// blocked kills the process (the thread may have blocked every signal before install).
void arm_this_thread() {
  raw(SYS_rt_sigprocmask, SIG_UNBLOCK, reinterpret_cast<long>(&kSigsysBit), 0, sizeof kSigsysBit);
  const auto begin = reinterpret_cast<long>(zpoline_detail_code_begin);
  const auto length = reinterpret_cast<long>(zpoline_detail_code_end) - begin;
  raw(SYS_prctl, kSetSyscallUserDispatch, kDispatchOn, begin, length,
      reinterpret_cast<long>(&zpoline_detail_sud_selector));
  zpoline_detail_thread_state.sud_armed = 1;
}

bool this_thread_has_tls() {
  unsigned long base = 0;
  return raw(SYS_arch_prctl, ARCH_GET_FS, reinterpret_cast<long>(&base)) == 0 && base != 0;
}

// What another thread runs when asked (platform/signals.hpp): arm SUD, with SIGSYS out of the
// mask the handler's return restores too.
void arm_on_request(ucontext_t& interrupted) {
  if (!net_on() || !this_thread_has_tls() || zpoline_detail_thread_state.library_thread) return;
  std::uint64_t mask = 0;
  std::memcpy(&mask, &interrupted.uc_sigmask, sizeof mask);
  mask &= ~kSigsysBit;
  std::memcpy(&interrupted.uc_sigmask, &mask, sizeof mask);
  if (!zpoline_detail_thread_state.sud_armed) arm_this_thread();
}

// Handlers the application installed before the net went on keep their masks: SIGSYS leaves
// them (later ones lose it in forward_signal_call).
void unblock_sigsys_in_existing_handlers() {
  for (int signal = 1; signal <= 64; ++signal) {
    if (signal == SIGKILL || signal == SIGSTOP || signal == SIGSYS || signal_taken(signal)) {
      continue;
    }
    KernelSigaction action{};
    if (raw_sigaction(signal, nullptr, &action) != 0 || !(action.mask & kSigsysBit)) continue;
    action.mask &= ~kSigsysBit;
    raw_sigaction(signal, &action, nullptr);
  }
}

// Trapped sites are rewritten by a thread of the library's own, never in the signal handler:
// a trap can interrupt any code, including the allocator with its lock held, and rewriting
// allocates. The handler queues the site and emulates the call; later calls from that site take
// the rewritten path once the thread is done.
constexpr std::size_t kQueueSize = 256;
std::atomic<std::uintptr_t> queued_sites[kQueueSize];
std::atomic<std::uint32_t> queue_signal{0};  // futex word: bumped when a site is queued
std::atomic<bool> rewriter_stop{false};
std::atomic<bool> rewriter_started{false};
std::thread* rewriter_thread = nullptr;

// Sites queued and not rewritten when the net goes off, or inherited by a fork child, are
// forgotten: by the next install the code there may be another (a JIT's), and a site is only
// known to be a syscall at the moment it trapped.
void forget_queued_sites() {
  for (auto& slot : queued_sites) slot.store(0, std::memory_order_relaxed);
}

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
  // Never under SUD (clone_to_site marked it before it ran; this holds even if its creation did
  // not pass there): off, which is harmless if it was never on.
  zpoline_detail_thread_state.library_thread = 1;
  raw(SYS_prctl, kSetSyscallUserDispatch, kDispatchOff);
  zpoline_detail_thread_state.sud_armed = 0;
  // A file table of its own: the files it opens (/proc/self/maps, the libraries it decodes) must
  // not take descriptor numbers the application's next open() expects (the lowest free one).
  raw(SYS_unshare, CLONE_FILES);
  // No signal of the application's runs here: a process-directed signal its threads block would
  // otherwise be delivered to this thread and run the application's handler (unhooked, on the
  // library's thread; a handler that forked did so while this thread held whatever it held).
  // Faults stay deliverable: the kernel kills a thread whose fault signal is blocked, and the
  // rewriter recovers from faults on code unmapped under it.
  std::uint64_t asynchronous = ~std::uint64_t{0};  // the kernel's sigset: bit n-1 for signal n
  for (const int fault : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS}) {
    asynchronous &= ~(std::uint64_t{1} << (fault - 1));
  }
  raw(SYS_rt_sigprocmask, SIG_BLOCK, reinterpret_cast<long>(&asynchronous), 0, sizeof asynchronous);
  rewriter_started.store(true, std::memory_order_release);
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

// The application's vector state in the layout the stub uses (needed if the call is a clone
// whose child starts on its own stack: the child gets these registers). The signal frame holds
// it in the kernel's XSAVE layout; in the "registers" modes it is converted.
// `area` is the caller's (on its stack: a trap nested in the hook gets its own).
struct alignas(64) RegisterModeArea {
  unsigned char bytes[kZmmControlBase + 576 + 128];  // the largest: the zmm mode's
};
// The x87 part of an FXSAVE image (the signal frame's) as FNSAVE writes it: the full tag word
// from the abridged one (a tag per physical register: valid, zero, special or empty), the
// pointers, and the registers in stack order, 10 bytes each.
void write_fnsave_image(const unsigned char* fxsave, unsigned top, unsigned char* out) {
  std::memset(out, 0, 108);
  std::memcpy(out, fxsave, 2);          // control word
  std::memcpy(out + 4, fxsave + 2, 2);  // status word
  const unsigned char abridged = fxsave[4];
  std::uint16_t tags = 0;
  for (unsigned physical = 0; physical < 8; ++physical) {
    unsigned tag = 3;  // empty
    if (abridged & (1u << physical)) {
      const unsigned char* value = fxsave + 32 + 16 * ((physical - top) & 7);
      std::uint64_t significand = 0;
      std::uint16_t sign_exponent = 0;
      std::memcpy(&significand, value, sizeof significand);
      std::memcpy(&sign_exponent, value + 8, sizeof sign_exponent);
      const unsigned exponent = sign_exponent & 0x7fff;
      if (exponent == 0 && significand == 0) {
        tag = 1;  // zero
      } else if (exponent == 0x7fff || exponent == 0 || !(significand >> 63)) {
        tag = 2;  // special: NaN, infinity, denormal, unnormal
      } else {
        tag = 0;  // valid
      }
    }
    tags = static_cast<std::uint16_t>(tags | tag << (2 * physical));
  }
  std::memcpy(out + 8, &tags, sizeof tags);
  std::memcpy(out + 12, fxsave + 8, 4);  // instruction pointer (its low half)
  std::uint16_t opcode = 0;
  std::memcpy(&opcode, fxsave + 6, sizeof opcode);
  const std::uint32_t selector_and_opcode = static_cast<std::uint32_t>(opcode & 0x7ff) << 16;
  std::memcpy(out + 16, &selector_and_opcode, sizeof selector_and_opcode);
  std::memcpy(out + 20, fxsave + 16, 4);  // operand pointer (its low half)
  for (unsigned i = 0; i < 8; ++i) std::memcpy(out + 28 + 10 * i, fxsave + 32 + 16 * i, 10);
}

void* vector_area(ucontext_t& context, RegisterModeArea& converted) {
  auto* fpstate = reinterpret_cast<unsigned char*>(context.uc_mcontext.fpregs);
  const auto mode = static_cast<VectorSaveMode>(zpoline_detail_xsave_mode);
  if (mode != VectorSaveMode::ymm_registers && mode != VectorSaveMode::xmm_registers &&
      mode != VectorSaveMode::zmm_registers) {
    return fpstate;
  }
  const VectorSaveLayout& layout = active_vector_save_layout;
  unsigned char* area = converted.bytes;
  std::memset(area, 0, sizeof converted.bytes);
  // XSTATE_BV of the XSAVE header: a component whose bit is clear is in its initial state (all
  // zero), and its bytes in the frame are not to be read. Without XSAVE there is no header.
  std::uint64_t present = 0;
  if (layout.mask != 0) std::memcpy(&present, fpstate + 512, sizeof present);
  const bool zmm = mode == VectorSaveMode::zmm_registers;
  const std::size_t stride = zmm ? 64 : 32;
  const auto copy_component = [&](unsigned component, std::uint32_t offset, std::size_t size,
                                  unsigned char* to) {
    if ((present & (1ull << component)) != 0 && offset != 0)
      std::memcpy(to, fpstate + offset, size);
  };
  for (std::size_t i = 0; i < 16; ++i) {
    std::memcpy(area + stride * i, fpstate + 160 + 16 * i, 16);  // xmm in the legacy area
    if (mode == VectorSaveMode::xmm_registers) continue;
    copy_component(2, layout.offsets.avx + 16 * i, 16, area + stride * i + 16);
    if (zmm) copy_component(6, layout.offsets.zmm_hi256 + 32 * i, 32, area + stride * i + 32);
  }
  if (zmm) {
    // Every register converted whole (zero where the frame had the component in its initial
    // state), so the clone path loads them whole.
    std::memcpy(area + kZmmControlBase + kControlZmmWidths, &kZmmWidthsWhole,
                sizeof kZmmWidthsWhole);
    copy_component(7, layout.offsets.hi16_zmm, 16 * 64, area + 16 * 64);
    copy_component(5, layout.offsets.opmask, 8 * 8, area + 2048);
  }
  unsigned char* control = zmm ? area + kZmmControlBase : area;
  std::memcpy(control + kControlMxcsr, fpstate + 24, 4);
  // The x87 status and control words, as the stub's SAVE_X87 keeps them, and, where TOP says the
  // stack holds values, the x87 state as an FNSAVE image (a clone child gets it from there).
  std::memcpy(control + kControlX87Status, fpstate + 2, 2);
  std::memcpy(control + kControlX87Control, fpstate, 2);
  std::uint16_t status = 0;
  std::memcpy(&status, fpstate + 2, sizeof status);
  const unsigned top = (status >> 11) & 7;
  if (top != 0) write_fnsave_image(fpstate, top, control + kControlFnsave);
  if (layout.save_pkru) copy_component(9, layout.offsets.pkru, 4, control + kControlPkru);
  return area;
}

// zpoline_detail_dispatch with the application's vector state in the stub's layout, in a frame
// of its own: only the clone path needs it.
__attribute__((noinline)) long dispatch_with_converted_vectors(RegisterFrame& frame,
                                                               ucontext_t& context) {
  RegisterModeArea converted;
  return zpoline_detail_dispatch(&frame, vector_area(context, converted));
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
    // Not for a thread running on its creator's TLS (clone(CLONE_VM) without CLONE_SETTLS): the
    // scope's flag is the creator's, and such a thread may end inside this call (exit).
    const ThreadState& self = zpoline_detail_thread_state;
    const bool foreign_tls =
        (__atomic_load_n(&self.attention, __ATOMIC_ACQUIRE) & kAttentionTlsShared) != 0 &&
        raw(SYS_gettid) != self.tls_owner;
    std::optional<NetDispatchScope> net;
    if (!foreign_tls) net.emplace();
    // Only a clone reads the area (its child starts with those registers): every other call
    // gets the signal frame's own, unread, and keeps the converted copy (2.3 KiB in the zmm
    // mode) off the signal stack, which may be a small alternate one.
    result = number == SYS_clone || number == SYS_clone3
                 ? dispatch_with_converted_vectors(frame, context)
                 : zpoline_detail_dispatch(&frame, context.uc_mcontext.fpregs);
  }
  g[REG_RDI] = frame.rdi;
  g[REG_RSI] = frame.rsi;
  g[REG_RDX] = frame.rdx;
  g[REG_R10] = frame.r10;
  g[REG_R8] = frame.r8;
  g[REG_R9] = frame.r9;
  if (number == SYS_rt_sigprocmask && result == 0) {
    // The call changed this thread's mask inside the handler, which started with the trapped
    // code's mask; the handler's return restores the mask saved in the signal frame: it must be
    // the new one. (pthread_create's child unblocks its signals this way in lazy mode.)
    std::uint64_t mask = 0;
    raw(SYS_rt_sigprocmask, SIG_BLOCK, 0, reinterpret_cast<long>(&mask), sizeof mask);
    std::memcpy(&context.uc_sigmask, &mask, sizeof mask);
  }
  ThreadState& self = zpoline_detail_thread_state;
  if (self.vfork_frame != reinterpret_cast<std::uintptr_t>(&frame)) {
    g[REG_RAX] = result;
    return;
  }
  // vfork: the call is made on the application's stack once the signal frame is gone, with the
  // way back in this thread's vfork_returns stack, as entry_stub.S does.
  self.vfork_frame = 0;
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

void handle_sigsys(int signal, siginfo_t* info, void* raw_context);

// The signal frame is the kernel's, and the handler may run on a stack whose AddressSanitizer
// shadow is stale (platform/sanitizers.hpp): both are cleared before instrumented code runs.
// Only inline code before that: no call of an instrumented function (std::max, in a debug build,
// read this frame's locals where a vfork child had left its frames' poison; matrix/vfork).
ZPOLINE_NO_SANITIZE_ADDRESS void on_sigsys(int signal, siginfo_t* info, void* raw_context) {
  forget_stale_stack_poison_below(__builtin_frame_address(0));
  auto* context = static_cast<ucontext_t*>(raw_context);
  forget_stale_poison(info, sizeof *info);
  forget_stale_poison(context, sizeof *context);
  if (context->uc_mcontext.fpregs != nullptr) {
    const std::size_t xsave_size = zpoline_detail_xsave_size;
    forget_stale_poison(context->uc_mcontext.fpregs, xsave_size > 1024 ? xsave_size : 1024);
  }
  handle_sigsys(signal, info, raw_context);
}

__attribute__((noinline)) void handle_sigsys(int signal, siginfo_t* info, void* raw_context) {
  auto& context = *static_cast<ucontext_t*>(raw_context);
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
                         is_rewritten_instruction(bytes) && site_registry().contains(site);
  if (rewritten) {
    // Rewritten meanwhile (by the rewriter thread): run the site again, it is a `call *%rax`
    // (or the near mechanism's jump) now and rax holds the number.
    g[REG_RAX] = number;
    g[REG_RIP] = static_cast<greg_t>(site);
  } else {
    queue_for_rewriting(site);
    ++emulated;
    emulate(context, return_address, number);
  }
  errno = saved_errno;
}

}  // namespace

bool safety_net_supported() noexcept {
  // Switching it off is harmless and tells whether the kernel knows the prctl.
  return raw(SYS_prctl, kSetSyscallUserDispatch, kDispatchOff, 0, 0, 0) == 0;
}

void enable_safety_net() {
  forget_queued_sites();  // left by an earlier install, or by the parent of a fork child
  // Not SA_ONSTACK: the handler runs the hook for the trapped call, and a small alternate stack
  // (glibc's SIGSTKSZ is 8 KiB) would overflow. It runs where the trapped code ran. SA_NODEFER:
  // a syscall that traps while the handler runs (the hook's own, say) must be deliverable.
  take_signal(SIGSYS, on_sigsys, SA_NODEFER, 0);
  set_request_action(ThreadRequest::arm_safety_net, arm_on_request);
  __atomic_store_n(&zpoline_detail_sud_enabled, 1, __ATOMIC_RELEASE);
  __atomic_store_n(&zpoline_detail_sud_selector, kSelectorBlock, __ATOMIC_RELEASE);
  unblock_sigsys_in_existing_handlers();
  arm_this_thread();
  rewriter_stop.store(false);
  if (rewriter_thread == nullptr) {
    ScopedLibraryThreadCreation library_thread;
    rewriter_started.store(false);
    rewriter_thread = new std::thread(rewrite_queued_sites);
    // Until it has started, a fork() could catch it allocating on its way up (thread start-up,
    // the runtime's and libstdc++'s): an allocator that does not reset its locks in a fork child
    // (AddressSanitizer's in GCC 12) then leaves the child waiting forever at its first
    // allocation (lazy matrix/fork cells under ASan, 5 of 150). glibc's malloc resets them.
    while (!rewriter_started.load(std::memory_order_acquire)) raw(SYS_sched_yield);  // unhooked
  }
  // The other threads arm SUD themselves; those that block the request signal do it at their
  // next call through the stub (ThreadState::attention).
  for (const pid_t tid : ask_other_threads(ThreadRequest::arm_safety_net).not_reached) {
    request_attention(tid, kAttentionArmSafetyNet);
  }
}

void disable_safety_net() noexcept {
  if (!net_on()) return;
  // Every armed thread stops trapping at once; none needs to be asked. Traps raised just before
  // are handled before this returns (their threads run the handler), so that none is counted,
  // or reaches a hook, after detach.
  __atomic_store_n(&zpoline_detail_sud_selector, kSelectorAllow, __ATOMIC_RELEASE);
  __atomic_store_n(&zpoline_detail_sud_enabled, 0, __ATOMIC_RELEASE);
  wait_until_no_thread_has_pending(SIGSYS);
  if (rewriter_thread != nullptr) {
    rewriter_stop.store(true);
    queue_signal.fetch_add(1);
    raw(SYS_futex, reinterpret_cast<long>(&queue_signal), FUTEX_WAKE_PRIVATE, 1);
    rewriter_thread->join();
    delete rewriter_thread;
    rewriter_thread = nullptr;
  }
  forget_queued_sites();
}

bool safety_net_enabled() noexcept {
  return net_on();
}

void arm_safety_net_after_fork() noexcept {
  // SUD is not inherited, whatever the copied TLS says.
  zpoline_detail_thread_state.sud_armed = 0;
  if (net_on()) arm_this_thread();
}

void arm_safety_net_if_needed() noexcept {
  const ThreadState& self = zpoline_detail_thread_state;
  if (net_on() && !self.sud_armed && !self.library_thread) arm_this_thread();
}

long forward_signal_call(const RegisterFrame& r) {
  const long number = static_cast<long>(r.rax);
  const bool net = net_on();
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
    if (net && requested != nullptr && safe_read(&set, requested, sizeof set)) {
      set &= ~kSigsysBit;
      args[mask_argument] = reinterpret_cast<long>(&set);
    }
    return forward_raw(number, args[0], args[1], args[2], args[3], args[4], args[5]);
  }
  if (number == SYS_rt_sigprocmask) {
    // SIGSYS stays deliverable: blocking it would turn the next trap into a kill.
    std::uint64_t set = 0;
    const auto* requested = reinterpret_cast<const void*>(r.rsi);
    if (!net || requested == nullptr || r.rdi == SIG_UNBLOCK || r.r10 != sizeof set ||
        !safe_read(&set, requested, sizeof set)) {
      return forward_raw(number, r.rdi, r.rsi, r.rdx, r.r10);
    }
    set &= ~kSigsysBit;
    return forward_raw(number, r.rdi, reinterpret_cast<long>(&set), r.rdx, r.r10);
  }
  if (number == SYS_prctl) {
    // The application must not turn off the net under the library (nor arm SUD of its own).
    if (net && static_cast<int>(r.rdi) == kSetSyscallUserDispatch) return -EBUSY;
    return forward_raw(number, r.rdi, r.rsi, r.rdx, r.r10, r.r8);
  }
  // rt_sigaction. The library keeps its handlers for the signals it has taken (SIGSYS, the
  // request signal); the application reads and sets a disposition of its own for them, used for
  // the signals that are not the library's (platform/signals.hpp).
  const int signal = static_cast<int>(r.rdi);
  if (r.r10 != sizeof(std::uint64_t)) return forward_raw(number, r.rdi, r.rsi, r.rdx, r.r10);
  if (signal_taken(signal)) {
    return application_sigaction(signal, reinterpret_cast<const void*>(r.rsi),
                                 reinterpret_cast<void*>(r.rdx));
  }
  KernelSigaction action{};
  const auto* requested = reinterpret_cast<const void*>(r.rsi);
  if (!net || requested == nullptr) return forward_raw(number, r.rdi, r.rsi, r.rdx, r.r10);
  if (!safe_read(&action, requested, sizeof action)) return -EFAULT;
  action.mask &= ~kSigsysBit;  // no handler may block SIGSYS while it runs
  return forward_raw(number, r.rdi, reinterpret_cast<long>(&action), r.rdx, r.r10);
}

std::vector<LazilyRewrittenSite> lazily_rewritten_sites() {
  std::lock_guard lock(lazy_sites_lock());
  return lazy_sites();
}

SafetyNetCounters safety_net_counters() noexcept {
  return {traps.load(), sites_rewritten_on_trap.load(), emulated.load()};
}

}  // namespace zpoline::detail
