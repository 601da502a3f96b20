// libside-by-side-preload.so (bench/side_by_side.py): LD_PRELOAD it to hook an unmodified program
// with a pass-through hook that lives in the program itself (no hook library, no dlmopen), the
// way the other tools' pass-through hooks do. SIDE_BY_SIDE_GENERAL_REGISTERS_ONLY=1 installs it
// with Options::general_registers_only, which the shipped preload shim cannot (hook libraries
// always get the full contract). ZPOLINE_MODE and ZPOLINE_MECHANISM apply as to any install().
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "zpoline/zpoline.hpp"

namespace {

// Built for general registers only, so that the same hook serves both contracts.
__attribute__((target("general-regs-only"))) long pass_through(zpoline::Syscall& call) {
  return call.forward();
}

__attribute__((constructor)) void start() {
  try {
    zpoline::Options options;
    const char* general = std::getenv("SIDE_BY_SIDE_GENERAL_REGISTERS_ONLY");
    options.general_registers_only = general != nullptr && std::strcmp(general, "1") == 0;
    // Alive until the process ends: the hook must outlive every static destructor.
    static auto* session = new zpoline::Session(zpoline::install(pass_through, options));
    static_cast<void>(session);
  } catch (const zpoline::Error& error) {
    std::fprintf(stderr, "libside-by-side-preload: %s\n", error.what());
    std::_Exit(127);
  }
}

}  // namespace
