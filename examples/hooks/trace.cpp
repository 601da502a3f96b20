// hook-trace: a hook library that prints every system call strace-style (zpoline::format),
// one line per call, prefixed with the process id.
//
//   ZPOLINE_HOOK_TRACE_OUTPUT=FILE  append the trace to FILE (default: standard error)
//   ZPOLINE_HOOK_TRACE_FDS=1        descriptors with what they name, as strace -y prints them
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "zpoline/format.hpp"
#include "zpoline/hook_library.hpp"

namespace {

int output = STDERR_FILENO;
zpoline::FormatOptions options;

void print(const zpoline::Syscall& call, std::optional<long> result,
           const zpoline::CallEntry& entry) {
  const std::string line = "[pid " + std::to_string(getpid()) + "] " +
                           zpoline::format(call, result, options, entry) + "\n";
  static_cast<void>(write(output, line.data(), line.size()));
}

}  // namespace

extern "C" const char* zpoline_hook_init() noexcept {
  if (const char* fds = std::getenv("ZPOLINE_HOOK_TRACE_FDS")) options.decode_fds = *fds == '1';
  if (const char* path = std::getenv("ZPOLINE_HOOK_TRACE_OUTPUT")) {
    output = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (output < 0) return "cannot open the file named by ZPOLINE_HOOK_TRACE_OUTPUT";
    // Out of the way of the application's descriptors (open() takes the lowest free number):
    // with the file at 3 every descriptor the program opens would be one higher than untraced.
    const int high = fcntl(output, F_DUPFD_CLOEXEC, 900);
    if (high >= 0) {
      close(output);
      output = high;
    }
  }
  return nullptr;
}

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  const long number = call.number();
  // These do not return when they succeed: print them first, as strace does (`= ?`).
  const bool may_not_return = number == SYS_exit || number == SYS_exit_group ||
                              number == SYS_execve || number == SYS_execveat;
  // What the call may change (a descriptor it closes, a length it rewrites), read before it.
  const zpoline::CallEntry entry = zpoline::capture_entry(call, options);
  if (may_not_return) print(call, std::nullopt, entry);
  const long result = call.forward();
  if (!may_not_return || result < 0) print(call, result, entry);
  return result;
}
