// The program that loads the consumer projects' hook library (hook.cpp), built against libzpoline
// like app.cpp: `hook_host PATH` loads PATH with zpoline::load_hook_library and exits 0 only if
// the hook answered chdir as hook.cpp does, and chdir reaches the kernel again once the hook is
// gone. Exits 77 (skipped) if the kernel refuses page 0.
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

#include <zpoline/hook_library.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s HOOK_LIBRARY\n", argv[0]);
    return 2;
  }
  const std::string path = "/nonexistent/consumer-hook-path";
  const long expected = static_cast<long>(("chdir(\"" + path + "\") = 0").size());
  try {
    long answered = 0;
    {
      auto session = zpoline::load_hook_library(argv[1]);
      answered = syscall(SYS_chdir, path.c_str());
    }
    errno = 0;
    const long after = syscall(SYS_chdir, path.c_str());
    if (answered != expected || after != -1 || errno != ENOENT) {
      std::fprintf(stderr, "chdir answered %ld by the hook (expected %ld), then %ld, errno %d\n",
                   answered, expected, after, errno);
      return 1;
    }
    std::printf("hook library %s answered chdir with %ld\n", argv[1], answered);
    return 0;
  } catch (const zpoline::Error& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return error.code() == zpoline::ErrorCode::page_zero_refused ? 77 : 1;
  }
}
