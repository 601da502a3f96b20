// A hook library that defines zpoline_hook but was not linked with libzpoline-hook.
#include "zpoline/hook_library.hpp"

extern "C" long zpoline_hook(zpoline::Syscall&) {
  return -38;
}
