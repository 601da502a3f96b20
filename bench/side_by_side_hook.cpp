// libside-by-side-hook.so (bench/side_by_side.py): a pass-through hook library, for the shipped
// libzpoline-preload.so (ZPOLINE_HOOK=.../libside-by-side-hook.so): every call goes to the kernel.
#include "zpoline/hook_library.hpp"

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  return call.forward();
}
