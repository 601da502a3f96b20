// Reads of application memory that another thread may unmap at any moment: the rewriter decodes
// code that a JIT unmaps, or a dlclose() removes, while it works. Within a recovery scope a
// SIGSEGV or SIGBUS of this thread returns to the scope's sigsetjmp() with 1 (the fault handler,
// trampoline/fault_redirect.cpp, jumps there) instead of ending the process.
//
//   sigjmp_buf recovery;
//   if (sigsetjmp(recovery, 1) != 0) return nothing;   // the memory went away
//   FaultRecovery scope(recovery);
//   ... read it ...
//
// What is constructed after sigsetjmp() and before a fault is not destroyed: keep locks outside
// the scope (they stay held otherwise), and accept that the rest leaks on a fault.
#pragma once

#include <setjmp.h>

#include "platform/thread_local.hpp"

namespace zpoline::detail {

extern ZPOLINE_THREAD_LOCAL sigjmp_buf* fault_recovery_target;

class FaultRecovery {
 public:
  explicit FaultRecovery(sigjmp_buf& target) noexcept : outer_(fault_recovery_target) {
    fault_recovery_target = &target;
  }
  // Inside a scope: code that must not be jumped out of (it holds a lock), where a fault is a bug.
  struct Suspended {};
  explicit FaultRecovery(Suspended) noexcept : outer_(fault_recovery_target) {
    fault_recovery_target = nullptr;
  }
  ~FaultRecovery() { fault_recovery_target = outer_; }
  FaultRecovery(const FaultRecovery&) = delete;
  FaultRecovery& operator=(const FaultRecovery&) = delete;

 private:
  sigjmp_buf* outer_;
};

}  // namespace zpoline::detail
