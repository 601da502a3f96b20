// The library's own environment variables (ZPOLINE_*), read from `environ` itself.
//
// Not through getenv(): a program may define its own, and the library's lookups then go to it.
// bash does, and its getenv answers from the shell's variable table once that exists, which a
// setenv() before main creates empty: with libtcmalloc preloaded (its start-up calls setenv), the
// preload shim's constructor found no ZPOLINE_HOOK in bash and installed its counting hook
// instead of the hook libraries named there. check_environment_names() reads `environ` too.
#pragma once

#include <string_view>

extern char** environ;

namespace zpoline::detail {

// The value of the first `name=value` entry of environ, or nullptr.
inline const char* environment_variable(std::string_view name) noexcept {
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view variable(*entry);
    if (variable.size() > name.size() && variable.starts_with(name) &&
        variable[name.size()] == '=') {
      return *entry + name.size() + 1;
    }
  }
  return nullptr;
}

}  // namespace zpoline::detail
