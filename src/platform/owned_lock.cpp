#include "platform/owned_lock.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>

#include "platform/raw_syscall.hpp"

namespace zpoline::detail {
namespace {

pid_t this_thread() {
  return static_cast<pid_t>(raw_syscall(SYS_gettid));
}

}  // namespace

bool OwnedLock::try_lock() noexcept {
  pid_t expected = 0;
  return owner_.compare_exchange_strong(expected, this_thread(), std::memory_order_acquire);
}

void OwnedLock::lock() noexcept {
  const pid_t self = this_thread();
  for (;;) {
    pid_t expected = 0;
    if (owner_.compare_exchange_strong(expected, self, std::memory_order_acquire)) return;
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    raw_syscall(SYS_futex, reinterpret_cast<long>(&owner_), FUTEX_WAIT_PRIVATE, expected);
    waiters_.fetch_sub(1, std::memory_order_relaxed);
  }
}

void OwnedLock::unlock() noexcept {
  owner_.store(0, std::memory_order_seq_cst);
  if (waiters_.load(std::memory_order_seq_cst) != 0) {
    raw_syscall(SYS_futex, reinterpret_cast<long>(&owner_), FUTEX_WAKE_PRIVATE, 1);
  }
}

bool OwnedLock::held_by_this_thread() const noexcept {
  return owner_.load(std::memory_order_relaxed) == this_thread();
}

bool OwnedLock::release_after_fork() noexcept {
  waiters_.store(0, std::memory_order_relaxed);
  const pid_t owner = owner_.load(std::memory_order_relaxed);
  if (owner == 0 || owner == this_thread()) return false;
  owner_.store(0, std::memory_order_relaxed);
  return true;
}

}  // namespace zpoline::detail
