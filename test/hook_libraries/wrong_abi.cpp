// A hook library built for another ABI version: defines the ABI symbols itself, with version 999.
#include "zpoline/hook_library.hpp"

extern "C" {
const std::uint32_t zpoline_hook_abi_version = 999;
void zpoline_hook_connect(const zpoline_hook_host*) noexcept {}
long zpoline_hook(zpoline::Syscall&) {
  return -38;
}
}
