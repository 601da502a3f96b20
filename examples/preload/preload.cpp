// libzpoline-preload.so: hooks every system call of an unmodified, dynamically linked program.
//
//   LD_PRELOAD=/path/libzpoline-preload.so ZPOLINE_HOOK=./libhook-trace.so ls -l
//
// Its constructor installs the hook libraries named by ZPOLINE_HOOK (':'-separated, composed in
// that order: the first sees each call first), or, when ZPOLINE_HOOK is unset, the built-in
// counting hook, which prints how many system calls the process made, by name, to standard error
// when it exits (through a copy of the descriptor made at start, numbered 100 or above, so that
// programs which close standard error at exit, like coreutils, still get the report).
// ZPOLINE_MODE and ZPOLINE_EXCLUDE apply as to any install(). Threads are hooked as they start,
// fork children stay hooked, and programs started by exec load the library again through the
// inherited LD_PRELOAD. If the hook cannot be installed, the program does not run: the error is
// printed and the process exits with status 127 (a sandbox must not fail open).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "zpoline/hook_library.hpp"

namespace {

constexpr std::size_t kNumbers = 1024;
std::array<std::atomic<unsigned long>, kNumbers> counts{};
int report_fd = -1;

long count(zpoline::Syscall& call) {
  const long number = call.number();
  if (number >= 0 && static_cast<std::size_t>(number) < kNumbers) {
    counts[static_cast<std::size_t>(number)].fetch_add(1, std::memory_order_relaxed);
  }
  return call.forward();
}

void print_counts() {
  zpoline::ScopedBypass bypass;  // the report's own write is not counted
  std::vector<std::pair<unsigned long, long>> made;
  unsigned long total = 0;
  for (std::size_t number = 0; number < kNumbers; ++number) {
    const unsigned long n = counts[number].load(std::memory_order_relaxed);
    if (n != 0) made.emplace_back(n, static_cast<long>(number));
    total += n;
  }
  std::sort(made.rbegin(), made.rend());
  std::string report =
      "zpoline: pid " + std::to_string(getpid()) + ": " + std::to_string(total) + " system calls:";
  for (const auto& [n, number] : made) {
    report += " " + std::string(zpoline::syscall_name(number)) + "=" + std::to_string(n);
  }
  report += "\n";
  static_cast<void>(write(report_fd, report.data(), report.size()));
}

__attribute__((constructor)) void start() {
  try {
    const bool counting = zpoline::configured_hook_libraries({}).empty();
    // Alive until the process ends: the hook must outlive every static destructor.
    static auto* session = new zpoline::Session(zpoline::install_configured_hooks({}, count));
    static_cast<void>(session);
    if (counting) {
      report_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 100);
      std::atexit(print_counts);
    }
  } catch (const zpoline::Error& error) {
    std::fprintf(stderr, "libzpoline-preload: %s\n", error.what());
    std::_Exit(127);
  }
}

}  // namespace
