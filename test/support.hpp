// Helpers shared by the test suites.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "zpoline/zpoline.hpp"

namespace zpoline_test {

// Installs the hook, or ends the test process with 77 (meson's "skipped") if this machine will
// not map page 0, saying why. Every scenario that installs runs in its own process (one meson
// test() per doctest test case), so exiting here skips exactly one scenario.
inline zpoline::Session install_or_skip(zpoline::Hook hook, zpoline::Options options = {}) {
  try {
    return zpoline::install(std::move(hook), std::move(options));
  } catch (const zpoline::Error& error) {
    if (error.code() == zpoline::ErrorCode::page_zero_refused) {
      std::fprintf(stderr, "SKIP: this machine does not allow page 0: %s\n", error.what());
      std::_Exit(77);
    }
    throw;
  }
}

// Waits until thread `tid` of this process waits in the kernel in system call `number` (as
// /proc/self/task/TID/syscall shows it), polling without sleeping for a fixed time; false after
// 10 s.
inline bool wait_until_blocked_in(long tid, long number) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%ld/syscall", tid);
  while (std::chrono::steady_clock::now() < deadline) {
    char text[32] = {};
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    const ssize_t n = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
    if (fd >= 0) close(fd);
    if (n > 0 && text[0] >= '0' && text[0] <= '9' && std::atol(text) == number) return true;
    sched_yield();
  }
  return false;
}

}  // namespace zpoline_test
