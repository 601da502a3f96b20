// The state the entry stub (entry_stub.S) saves for one hooked system call, and the contract
// between the stub and the C++ side. Offsets here are hard-coded in entry_stub.S.
#pragma once

#include <cstddef>
#include <cstdint>

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
  void* xsave_area;
};

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
struct ThreadState {
  std::uint32_t bypass_depth;  // ScopedBypass nesting: > 0 skips the hook (read by the stub)
  std::uint32_t reserved;
  // While the hook runs: the dispatcher's frame address. A syscall from below it is the hook's
  // own. One from above it comes from a signal handler on an alternate stack, or the hook was
  // left without returning (siglongjmp out of a handler that interrupted it). 0 otherwise.
  std::uint64_t hook_frame;
  // Set by forward() for vfork and vfork-like clones: when the hook returns, the stub makes the
  // syscall itself on the application's stack (see entry_stub.S, .Lon_application_stack).
  std::uint32_t run_on_application_stack;
  std::uint32_t vfork_depth;
  // One per vfork in progress on this thread: the way back, which must not live on the stack the
  // child shares, and the hook state to give back to the parent (the child shares this TLS too).
  struct VforkReturn {
    std::uint64_t return_address;
    std::uint64_t bypass_depth;  // the first 8 bytes of ThreadState
    std::uint64_t hook_frame;
    std::uint64_t result;  // parked while the parent restores the above
  } vfork_returns[kMaxVforkDepth];
  // While the hook runs: a word in the dispatcher's frame and the value it holds. A syscall from
  // below hook_frame is the hook's own only while that word is intact; after a siglongjmp out of
  // the hook, deeper calls overwrite it, and the dispatcher resets the state.
  std::uint64_t hook_canary_address;
  std::uint64_t hook_canary;
};
static_assert(offsetof(ThreadState, hook_canary_address) == 536);
static_assert(offsetof(ThreadState, hook_canary) == 544);
static_assert(offsetof(ThreadState, hook_frame) == 8);
static_assert(offsetof(ThreadState, run_on_application_stack) == 16);
static_assert(offsetof(ThreadState, vfork_depth) == 20);
static_assert(offsetof(ThreadState, vfork_returns) == 24 && sizeof(ThreadState::VforkReturn) == 32);

}  // namespace zpoline::detail

// Symbols shared with entry_stub.S.
extern "C" {
extern __thread zpoline::detail::ThreadState zpoline_detail_thread_state
    __attribute__((tls_model("initial-exec"), visibility("hidden")));
extern unsigned char zpoline_detail_hook_live __attribute__((visibility("hidden")));
extern std::uint64_t zpoline_detail_xsave_size __attribute__((visibility("hidden")));
extern std::uint64_t zpoline_detail_xsave_mask __attribute__((visibility("hidden")));
extern unsigned char zpoline_detail_xsave_mode __attribute__((visibility("hidden")));

extern char zpoline_detail_code_begin[] __attribute__((visibility("hidden")));
extern char zpoline_detail_code_end[] __attribute__((visibility("hidden")));
void zpoline_detail_entry() __attribute__((visibility("hidden")));
long zpoline_detail_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
    __attribute__((visibility("hidden")));
long zpoline_detail_clone_to_site(const zpoline::detail::CloneRequest* request)
    __attribute__((visibility("hidden")));
}
