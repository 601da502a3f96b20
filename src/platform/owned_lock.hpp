// A lock that knows its owner's thread id. It allocates nothing and takes no lock of libc's, so it
// can be held around system calls that an allocator makes with its own lock held, and a fork
// child can tell that another thread held it at the fork (that thread does not exist in the
// child) and free it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>

namespace zpoline::detail {

class OwnedLock {
 public:
  void lock() noexcept;
  bool try_lock() noexcept;
  void unlock() noexcept;
  bool held_by_this_thread() const noexcept;
  // In a fork child, where only the forking thread runs: frees the lock if another thread held
  // it, and then returns true (what it guarded may be half-changed).
  bool release_after_fork() noexcept;

 private:
  std::atomic<pid_t> owner_{0};
  std::atomic<std::uint32_t> waiters_{0};
};

class OwnedLockGuard {
 public:
  explicit OwnedLockGuard(OwnedLock& lock) noexcept : lock_(lock) { lock_.lock(); }
  ~OwnedLockGuard() { lock_.unlock(); }
  OwnedLockGuard(const OwnedLockGuard&) = delete;
  OwnedLockGuard& operator=(const OwnedLockGuard&) = delete;

 private:
  OwnedLock& lock_;
};

}  // namespace zpoline::detail
