// The program every consumer project under test/consumers/ builds against libzpoline: it
// installs a hook, calls getpid, and exits 0 only if the hook saw that call and the call still
// returned the real pid. Exits 77 (skipped) if the kernel refuses page 0.
//
// The build system passes ZPOLINE_EXPECTED_VERSION, the version it found the package under
// (CMake's zpoline_VERSION, pkg-config --modversion, Meson's dependency version); it must equal
// the version the headers declare.
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string_view>

#include <zpoline/zpoline.hpp>

#ifndef ZPOLINE_EXPECTED_VERSION
#error "the consumer's build must define ZPOLINE_EXPECTED_VERSION"
#endif

static_assert(ZPOLINE_VERSION ==
              ZPOLINE_VERSION_MAJOR * 10000 + ZPOLINE_VERSION_MINOR * 100 + ZPOLINE_VERSION_PATCH);

int main() {
  if (std::string_view(ZPOLINE_VERSION_STRING) != ZPOLINE_EXPECTED_VERSION) {
    std::fprintf(stderr, "headers say version %s, the build system found %s\n",
                 ZPOLINE_VERSION_STRING, ZPOLINE_EXPECTED_VERSION);
    return 1;
  }

  std::atomic<bool> expecting{false};
  std::atomic<int> seen{0};
  try {
    auto session = zpoline::install([&](zpoline::Syscall& call) -> long {
      if (call.as<zpoline::sys::getpid>() && expecting.load()) seen.fetch_add(1);
      return call.forward();
    });
    expecting = true;
    const pid_t pid = getpid();
    expecting = false;
    session.detach();

    const long real_pid = zpoline::raw_syscall(SYS_getpid);
    if (seen.load() != 1 || pid != real_pid) {
      std::fprintf(stderr,
                   "the hook saw %d getpid calls (expected 1); getpid returned %d, not %ld\n",
                   seen.load(), static_cast<int>(pid), real_pid);
      return 1;
    }
    std::printf("libzpoline %s: the hook saw getpid() = %d\n", ZPOLINE_VERSION_STRING,
                static_cast<int>(pid));
    return 0;
  } catch (const zpoline::Error& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return error.code() == zpoline::ErrorCode::page_zero_refused ? 77 : 1;
  }
}
