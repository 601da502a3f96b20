// The hook library every consumer project under test/consumers/ builds against libzpoline-hook
// (CMake's zpoline::hook, pkg-config's zpoline-hook, Meson's zpoline-hook dependency). It answers
// chdir itself, with the length of the call as zpoline::format prints it (so the path must be read
// from the caller's memory), and passes every other call on. hook_host.cpp loads it.
#include <sys/syscall.h>

#include <zpoline/format.hpp>
#include <zpoline/hook_library.hpp>

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  if (call.number() != SYS_chdir) return call.forward();
  return static_cast<long>(zpoline::format(call, 0).size());
}
