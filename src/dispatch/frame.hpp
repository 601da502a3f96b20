// The state the entry stub (entry_stub.S) saves for one hooked system call, and the contract
// between the stub and the C++ side. Offsets here are hard-coded in entry_stub.S.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "platform/raw_syscall.hpp"
#include "zpoline/syscall.hpp"

namespace zpoline::detail {

// Registers as the stub pushes them (lowest address first). rcx and r11 are not saved: `syscall`
// clobbers them, and the stub sets them the way `syscall` does.
struct RegisterFrame {
  std::uint64_t r9, r8, r10, rdx, rsi, rdi;
  std::uint64_t r15, r14, r13, r12, rbp, rbx;
  std::uint64_t rax;  // the syscall number on entry; the result on exit
  std::uint64_t rflags;
  std::uint8_t red_zone[128];    // the stub steps over the caller's red zone
  std::uint64_t return_address;  // pushed by the rewritten `call *%rax`
};
static_assert(offsetof(RegisterFrame, rax) == 96);
static_assert(offsetof(RegisterFrame, rbx) == 88 && offsetof(RegisterFrame, r15) == 48);
static_assert(offsetof(RegisterFrame, return_address) == 240);

// What a Syscall refers to: the saved registers and the saved vector state of the caller.
struct SyscallFrame {
  RegisterFrame* regs;
  void* xsave_area;  // null where the stub saved none (Options::general_registers_only)
};

// The hook's entry point, as the stub calls it: rdi = the call, rsi = the context the hook was
// published with. A plain `long (*)(Syscall&)` hook is called directly (it ignores rsi).
using HookEntry = long (*)(zpoline::Syscall& call, const void* context);

// What the stub's fast path keeps in its frame while the hook runs (entry_stub.S), filled in by
// zpoline_detail_enter_hook: the Syscall the hook receives, and the word hook_canary_address
// points to. 64 bytes, 64-byte aligned, above the vector save area and below RegisterFrame.
struct HookCall {
  SyscallFrame frame;
  zpoline::Syscall call{frame};
  const void* context = nullptr;  // for the hook's entry point
  std::uint64_t canary = 0;
};
static_assert(sizeof(zpoline::Syscall) == 16);
static_assert(offsetof(HookCall, call) == 16 && offsetof(HookCall, context) == 32);
static_assert(sizeof(HookCall) <= 64);

// Input of zpoline_detail_clone_to_site.
struct CloneRequest {
  RegisterFrame* regs;
  void* xsave_area;
  long number;
  long args[6];
};
static_assert(offsetof(CloneRequest, args) == 24);

// Per-thread state, in static TLS so the stub reads it with %fs-relative loads. The offsets of
// the first fields are hard-coded in entry_stub.S.
inline constexpr unsigned kMaxVforkDepth = 16;
// What every hooked call reads and writes comes first, in one cache line.
struct alignas(64) ThreadState {
  std::uint32_t bypass_depth;  // ScopedBypass nesting: > 0 skips the hook (read by the stub)
  // Bits (kAttention*, dispatch.hpp) asking the dispatcher to look at this thread: the stub's
  // fast path reads them with bypass_depth (one 8-byte word) and leaves the call to the
  // dispatcher when any is set. Other threads set bits here (through the ThreadRecord).
  std::uint32_t attention;
  // While the hook runs: an address in the frame of the stub or dispatcher that called it. A
  // syscall from below it is the hook's own. One from above it comes from a signal handler on an
  // alternate stack, or the hook was left without returning (siglongjmp out of a handler that
  // interrupted it). 0 otherwise.
  std::uint64_t hook_frame;
  // Whether this thread has armed Syscall User Dispatch for itself (safety_net.cpp). Not shared
  // with a vfork child, which arms itself without looking at it.
  std::uint8_t sud_armed;
  // Set while the hook waits in Syscall::forward() for the kernel (cleared by the forwarding
  // code): a signal handler that runs then interrupted the application's call, not the hook's
  // code, and its system calls reach the hook again, nested (the dispatcher keeps the outer
  // call's state).
  std::uint8_t forwarding;
  // A thread of the library's own (the safety net's rewriter): never armed for Syscall User
  // Dispatch, whoever asks. Its system calls are the library's; armed, every libc call it made
  // would trap and be emulated, counted in the coverage and rewritten as the application's.
  std::uint8_t library_thread;
  std::uint8_t unused;
  std::uint32_t vfork_depth;
  // While the hook runs: a word in that frame and the value it holds. A syscall from below
  // hook_frame is the hook's own only while that word is intact; after a siglongjmp out of the
  // hook, deeper calls overwrite it, and the dispatcher resets the state.
  std::uint64_t hook_canary_address;
  std::uint64_t hook_canary;
  std::uint64_t hook_entries;  // hooked calls on this thread: varies the canary
  // This thread's "inside the hook" flag (ThreadRecord::in_hook, read by retract_hook), null
  // until the thread's first hooked call claims a record: the stub's fast path writes it.
  std::uint32_t* in_hook;
  // Set by forward() for vfork and vfork-like clones to the RegisterFrame of that call: when the
  // hook has returned from that call, its stub makes the syscall itself on the application's
  // stack (see entry_stub.S, .Lon_application_stack). Tied to the frame, so that the hook's own
  // calls made after forward() are not taken for it.
  std::uint64_t vfork_frame;
  // One per vfork in progress on this thread: the way back, which must not live on the stack the
  // child shares, and the hook state to give back to the parent (the child shares this TLS too).
  struct VforkReturn {
    std::uint64_t return_address;
    std::uint64_t bypass_depth;  // the first 8 bytes of ThreadState
    std::uint64_t hook_frame;
    std::uint64_t result;  // parked while the parent restores the above
  };
  alignas(64) VforkReturn vfork_returns[kMaxVforkDepth];
  pid_t tls_owner;  // with kAttentionTlsShared: the thread this TLS belongs to
};
static_assert(offsetof(ThreadState, hook_frame) == 8);
static_assert(offsetof(ThreadState, sud_armed) == 16 && offsetof(ThreadState, forwarding) == 17);
static_assert(offsetof(ThreadState, library_thread) == 18);
static_assert(offsetof(ThreadState, vfork_depth) == 20);
static_assert(offsetof(ThreadState, hook_canary_address) == 24);
static_assert(offsetof(ThreadState, hook_canary) == 32);
static_assert(offsetof(ThreadState, hook_entries) == 40 && offsetof(ThreadState, in_hook) == 48);
static_assert(offsetof(ThreadState, vfork_frame) == 56);
static_assert(offsetof(ThreadState, vfork_returns) == 64 && sizeof(ThreadState::VforkReturn) == 32);

}  // namespace zpoline::detail

namespace zpoline::detail {
struct InstalledHook;
}

// Symbols shared with entry_stub.S. The globals the stub reads on every call are defined there,
// in one cache line: the hook, the vector save mode and the flags below.
extern "C" {
extern __thread zpoline::detail::ThreadState zpoline_detail_thread_state
    __attribute__((tls_model("initial-exec"), visibility("hidden")));
// The installed hook (dispatch.cpp), and whether it is live: the stub runs it only if both.
extern zpoline::detail::InstalledHook* zpoline_detail_current_hook
    __attribute__((visibility("hidden")));
extern unsigned char zpoline_detail_hook_live __attribute__((visibility("hidden")));
// Whether retract_hook() uses membarrier (then the stub needs no fence after setting in_hook).
extern unsigned char zpoline_detail_membarrier_registered __attribute__((visibility("hidden")));
extern std::uint64_t zpoline_detail_xsave_size __attribute__((visibility("hidden")));
extern std::uint64_t zpoline_detail_xsave_mask __attribute__((visibility("hidden")));
extern unsigned char zpoline_detail_xsave_mode __attribute__((visibility("hidden")));
// Whether the register save modes keep PKRU (platform/cpu.hpp, VectorSaveLayout::save_pkru).
extern unsigned char zpoline_detail_save_pkru __attribute__((visibility("hidden")));
// Options::general_registers_only: the stub's fast path saves no vector state.
extern unsigned char zpoline_detail_general_registers_only __attribute__((visibility("hidden")));
// Set once the library has taken a signal (platform/signals.cpp): signal mask and disposition
// calls then go through forward() even where no hook runs.
extern unsigned char zpoline_detail_filter_signal_calls __attribute__((visibility("hidden")));
// RFLAGS bits that make the stub restore the flags with popfq (slow) instead of sahf and an add
// (the arithmetic flags only): TF, DF and AC; every bit where the CPU lacks LAHF/SAHF in 64-bit
// mode.
extern std::uint32_t zpoline_detail_popf_flags __attribute__((visibility("hidden")));

extern char zpoline_detail_code_begin[] __attribute__((visibility("hidden")));
// The instructions right after the `syscall` of zpoline_detail_forward_syscall and
// zpoline_detail_raw_syscall, which keep the number at (%rsp) while it runs.
extern char zpoline_detail_forward_syscall_resume[] __attribute__((visibility("hidden")));
extern char zpoline_detail_raw_syscall_resume[] __attribute__((visibility("hidden")));
extern char zpoline_detail_code_end[] __attribute__((visibility("hidden")));
void zpoline_detail_entry() __attribute__((visibility("hidden")));
long zpoline_detail_clone_to_site(const zpoline::detail::CloneRequest* request)
    __attribute__((visibility("hidden")));
// Run by a new thread or child before it returns to the application (entry_stub.S): unblock
// SIGSYS and arm Syscall User Dispatch for the calling thread; the second also sets sud_armed in
// its TLS (only for a thread with TLS of its own). Preserve every register but rcx and r11, and
// the flags. Not C functions: only called from the stub's assembly.
void zpoline_detail_arm_new_thread() __attribute__((visibility("hidden")));
void zpoline_detail_arm_and_mark_new_thread() __attribute__((visibility("hidden")));
// The system call `regs` describes (number and six arguments), made from the library's code
// range. Returns with an indirect jump instead of `ret` (entry_stub.S says why).
long zpoline_detail_forward_syscall(const zpoline::detail::RegisterFrame* regs)
    __attribute__((visibility("hidden")));
// forward() with the vector state saved around it, for a SyscallFrame without a save area
// (Options::general_registers_only): calls zpoline_detail_forward_frame.
long zpoline_detail_forward_saving_vectors(const zpoline::detail::SyscallFrame* frame)
    __attribute__((visibility("hidden")));
long zpoline_detail_forward_frame(const zpoline::detail::SyscallFrame* frame)
    __attribute__((visibility("hidden")));
}
