// hook-fault: a hook library that makes the Nth call of one system call fail with a given errno,
// without reaching the kernel; every other call runs normally. The count is per process (a fork
// child continues its parent's count; a program started by exec begins at zero).
//
//   ZPOLINE_HOOK_FAULT=SYSCALL:N:ERRNO  e.g. openat:3:ENOENT, or chdir:1:13 (required)
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "zpoline/hook_library.hpp"

namespace {

long target = -1;
long nth = 0;
long error = 0;
std::atomic<long> seen{0};

long parse_errno(const std::string& text) {
  for (int value = 1; value < 134; ++value) {
    if (const char* name = strerrorname_np(value); name && text == name) return value;
  }
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  return *end == '\0' && value > 0 && value < 4096 ? value : 0;
}

}  // namespace

extern "C" const char* zpoline_hook_init() noexcept {
  const char* config = std::getenv("ZPOLINE_HOOK_FAULT");
  const char* usage = "set ZPOLINE_HOOK_FAULT to SYSCALL:N:ERRNO, e.g. openat:3:ENOENT";
  if (config == nullptr) return usage;
  const std::string text(config);
  const std::size_t first = text.find(':');
  const std::size_t second = text.find(':', first == std::string::npos ? first : first + 1);
  if (second == std::string::npos) return usage;
  const zpoline::SyscallInfo* info = zpoline::syscall_info(std::string_view(text).substr(0, first));
  nth = std::strtol(text.substr(first + 1, second - first - 1).c_str(), nullptr, 10);
  error = parse_errno(text.substr(second + 1));
  if (info == nullptr) return "ZPOLINE_HOOK_FAULT names an unknown system call";
  if (nth <= 0 || error == 0) return usage;
  target = info->number;
  return nullptr;
}

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  if (call.number() == target && seen.fetch_add(1, std::memory_order_relaxed) + 1 == nth) {
    return -error;
  }
  return call.forward();
}
