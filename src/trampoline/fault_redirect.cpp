#include "trampoline/fault_redirect.hpp"

#include <signal.h>
#include <ucontext.h>

#include <cstdint>

#include "dispatch/frame.hpp"
#include "platform/memory.hpp"
#include "rewriting/site_registry.hpp"

namespace zpoline::detail {
namespace {

struct sigaction previous_segv;
struct sigaction previous_ill;

// A fault at the address the rewritten call jumped to: rip == rax, and the return address that
// the call pushed follows a rewritten site.
bool is_call_to_invalid_entry(const ucontext_t& context) {
  const greg_t* regs = context.uc_mcontext.gregs;
  if (regs[REG_RIP] != regs[REG_RAX]) return false;
  std::uint64_t return_address = 0;
  if (!safe_read(&return_address, reinterpret_cast<const void*>(regs[REG_RSP]), 8)) return false;
  return return_address >= 2 && site_registry().contains(return_address - 2);
}

void pass_on(int signal, siginfo_t* info, void* context, const struct sigaction& previous) {
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(signal, info, context);
  } else if (previous.sa_handler == SIG_DFL || previous.sa_handler == SIG_IGN) {
    // Let the fault happen again with the default action (a synchronous fault cannot be ignored).
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigaction(signal, &default_action, nullptr);
  } else {
    previous.sa_handler(signal);
  }
}

void on_fault(int signal, siginfo_t* info, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  if (is_call_to_invalid_entry(*uc)) {
    uc->uc_mcontext.gregs[REG_RIP] = reinterpret_cast<greg_t>(&zpoline_detail_entry);
    return;
  }
  pass_on(signal, info, context, signal == SIGSEGV ? previous_segv : previous_ill);
}

}  // namespace

void install_fault_redirect() {
  struct sigaction action {};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&action.sa_mask);
  sigaction(SIGSEGV, &action, &previous_segv);
  sigaction(SIGILL, &action, &previous_ill);
}

}  // namespace zpoline::detail
