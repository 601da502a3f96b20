#include "trampoline/fault_redirect.hpp"

#include <signal.h>
#include <ucontext.h>

#include <cstdint>

#include "dispatch/frame.hpp"
#include "platform/fault_recovery.hpp"
#include "platform/memory.hpp"
#include "platform/signals.hpp"
#include "rewriting/site_registry.hpp"
#include "rewriting/vdso_routing.hpp"

extern "C" {
// entry_stub.S: the stub's first access to the thread's TLS, and where a thread without TLS
// continues when that access faults.
extern char zpoline_detail_tls_probe[] __attribute__((visibility("hidden")));
extern char zpoline_detail_no_tls[] __attribute__((visibility("hidden")));
}

namespace zpoline::detail {
namespace {

constexpr std::uint16_t kCallRax = 0xd0ff;  // ff d0, little-endian

bool canonical(std::uint64_t address) {
  const auto top = static_cast<std::int64_t>(address) >> 47;
  return top == 0 || top == -1;
}

// A fault at the address the rewritten call jumped to: rip == rax, and the return address that
// the call pushed follows a rewritten site.
bool is_call_to_invalid_entry(const ucontext_t& context) {
  const greg_t* regs = context.uc_mcontext.gregs;
  if (regs[REG_RIP] != regs[REG_RAX]) return false;
  std::uint64_t return_address = 0;
  if (!safe_read(&return_address, reinterpret_cast<const void*>(regs[REG_RSP]), 8)) return false;
  return return_address >= 2 && site_registry().contains(return_address - 2);
}

// A rewritten site whose `call *%rax` faulted before calling: a number that is not a canonical
// address (bit 47 and up not all equal) makes the call raise #GP at the site itself, with
// nothing pushed. Natively `syscall` takes any rax.
bool is_site_with_noncanonical_number(const ucontext_t& context) {
  const greg_t* regs = context.uc_mcontext.gregs;
  const auto site = static_cast<std::uintptr_t>(regs[REG_RIP]);
  if (canonical(static_cast<std::uint64_t>(regs[REG_RAX]))) return false;
  std::uint16_t bytes = 0;
  return safe_read(&bytes, reinterpret_cast<const void*>(site), sizeof bytes) &&
         bytes == kCallRax && site_registry().contains(site);
}

// A site whose bytes were being changed one at a time (it straddles a cache line: patcher.cpp),
// with an invalid opcode as its first byte for the moment. Neither `syscall` nor `call *%rax`
// raises SIGILL, so the fault came from that byte even if it has been replaced since.
bool is_site_being_written(const ucontext_t& context) {
  return site_registry().contains(static_cast<std::uintptr_t>(context.uc_mcontext.gregs[REG_RIP]));
}

void make_the_call(greg_t* regs) {
  // What the call at the site does: push the return address, enter the stub (rax holds the
  // number, the sled would only lead there).
  const std::uint64_t return_address = static_cast<std::uint64_t>(regs[REG_RIP]) + 2;
  const auto slot = static_cast<std::uintptr_t>(regs[REG_RSP]) - 8;
  if (safe_write(reinterpret_cast<void*>(slot), &return_address, sizeof return_address)) {
    regs[REG_RSP] = static_cast<greg_t>(slot);
    regs[REG_RIP] = reinterpret_cast<greg_t>(&zpoline_detail_entry);
  }
}

void on_fault(int signal, siginfo_t* info, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  greg_t* regs = uc->uc_mcontext.gregs;
  // First, and without touching TLS: a thread without TLS at the stub's first TLS access.
  if (regs[REG_RIP] == reinterpret_cast<greg_t>(zpoline_detail_tls_probe)) {
    regs[REG_RIP] = reinterpret_cast<greg_t>(zpoline_detail_no_tls);
    return;
  }
  // The rewriter reading memory that the application unmapped meanwhile (fault_recovery.hpp).
  if ((signal == SIGSEGV || signal == SIGBUS) && fault_recovery_target != nullptr) {
    sigjmp_buf* target = fault_recovery_target;
    fault_recovery_target = nullptr;
    siglongjmp(*target, 1);
  }
  if (is_call_to_invalid_entry(*uc)) {
    regs[REG_RIP] = reinterpret_cast<greg_t>(&zpoline_detail_entry);
    return;
  }
  if (signal == SIGILL) {
    // A vDSO function whose entry is changing (rewriting/vdso_routing.hpp): its thunk.
    if (const std::uintptr_t thunk =
            vdso_thunk_for_fault(static_cast<std::uintptr_t>(regs[REG_RIP]))) {
      regs[REG_RIP] = static_cast<greg_t>(thunk);
      return;
    }
  }
  if ((signal == SIGSEGV && is_site_with_noncanonical_number(*uc)) ||
      (signal == SIGILL && is_site_being_written(*uc))) {
    make_the_call(regs);
    return;
  }
  pass_to_application(signal, info, context);
}

}  // namespace

void install_fault_redirect() {
  // On the alternate stack if the thread has one, as the application's own handler for a stack
  // overflow would want. The application's handlers installed before and after are kept aside
  // and called for every other fault (platform/signals.hpp).
  take_signal(SIGSEGV, on_fault, SA_ONSTACK, 0);
  take_signal(SIGILL, on_fault, SA_ONSTACK, 0);
  take_signal(SIGBUS, on_fault, SA_ONSTACK, 0);
}

}  // namespace zpoline::detail
