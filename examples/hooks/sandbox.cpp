// hook-sandbox: a hook library that denies access to a set of paths: any system call naming a
// denied path, or a file beneath a denied directory, fails with EACCES without reaching the
// kernel. Relative paths are resolved against the working directory or the dirfd argument, and
// `.` and `..` are resolved lexically; symbolic links are not followed (an example, not a
// security boundary).
//
//   ZPOLINE_HOOK_SANDBOX_DENY=PATH:PATH...  absolute paths to deny (required)
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <string>
#include <vector>

#include "zpoline/hook_library.hpp"
#include "zpoline/memory.hpp"

namespace {

std::vector<std::filesystem::path> denied;

std::filesystem::path absolute(int dirfd, const std::string& path) {
  if (path.starts_with('/')) return std::filesystem::path(path).lexically_normal();
  std::error_code error;
  const std::filesystem::path base =
      dirfd == AT_FDCWD
          ? std::filesystem::current_path(error)
          : std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(dirfd), error);
  return (base / path).lexically_normal();
}

bool is_denied(const std::filesystem::path& path) {
  for (const std::filesystem::path& entry : denied) {
    const auto [end, rest] = std::mismatch(entry.begin(), entry.end(), path.begin(), path.end());
    if (end == entry.end() || (std::next(end) == entry.end() && end->empty())) return true;
  }
  return false;
}

}  // namespace

extern "C" const char* zpoline_hook_init() noexcept {
  const char* list = std::getenv("ZPOLINE_HOOK_SANDBOX_DENY");
  if (list == nullptr || *list == '\0') {
    return "set ZPOLINE_HOOK_SANDBOX_DENY to the ':'-separated absolute paths to deny";
  }
  std::string entries(list);
  for (std::size_t start = 0, colon = 0; colon != std::string::npos; start = colon + 1) {
    colon = entries.find(':', start);
    const std::string entry = entries.substr(start, colon - start);
    if (!entry.starts_with('/'))
      return "ZPOLINE_HOOK_SANDBOX_DENY has an entry that is not an absolute path";
    denied.push_back(std::filesystem::path(entry).lexically_normal());
  }
  return nullptr;
}

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  if (const zpoline::SyscallInfo* info = zpoline::syscall_info(call.number())) {
    int dirfd = AT_FDCWD;
    for (int i = 0; i < info->argument_count; ++i) {
      const zpoline::ArgKind kind = info->arguments[i].kind;
      if (kind == zpoline::ArgKind::dirfd) dirfd = static_cast<int>(call.arg(i));
      if (kind != zpoline::ArgKind::path) continue;
      const auto path = zpoline::read_string(reinterpret_cast<const void*>(call.arg(i)));
      if (path && !path->empty() && is_denied(absolute(dirfd, *path))) return -EACCES;
    }
  }
  return call.forward();
}
