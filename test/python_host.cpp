// python_host: runs a Python script in an embedded CPython, optionally with every system call of
// the process hooked by libzpoline.
//
//   python_host [--hook] script.py [args...]
//
// Without --hook it behaves like `python3 script.py args...` (same sys.argv, same exit status:
// sys.exit(n) gives n, an uncaught exception gives 1). With --hook it first installs a
// pass-through hook that counts calls per syscall number, on every thread and in fork children;
// when the process exits (also through sys.exit, which ends the process from inside Py_RunMain)
// it prints to stderr, never to stdout (which must equal the unhooked run's):
//
//   zpoline: hooked N syscalls (K distinct numbers); top: futex(202)=7728, read(0)=136, ...
//
// Only the process that ran main prints it; fork children count in their own copy and stay quiet.
// Other install failures print the reason and exit 3.
//
// If this machine will not map page 0 it prints why and exits 77 (meson's "skipped").
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/syscall.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "zpoline/zpoline.hpp"

namespace {

constexpr long kNumbers = 1024;

// Calls per syscall number, and the kernel's name for each number seen. Static storage: the
// counters outlive main's locals and are shared by all threads (fork children get a copy).
struct Tally {
  std::array<std::atomic<long>, kNumbers> calls{};
  std::atomic<long> out_of_range{0};
  std::array<std::atomic<const char*>, kNumbers> name_data{};
  std::array<std::atomic<std::size_t>, kNumbers> name_size{};
};
Tally tally;

long counting_hook(zpoline::Syscall& call) {
  const long number = call.number();
  if (number >= 0 && number < kNumbers) {
    if (tally.calls[number].fetch_add(1, std::memory_order_relaxed) == 0) {
      const std::string_view name = call.name();
      tally.name_size[number].store(name.size(), std::memory_order_relaxed);
      tally.name_data[number].store(name.data(), std::memory_order_release);
    }
  } else {
    tally.out_of_range.fetch_add(1, std::memory_order_relaxed);
  }
  return call.forward();
}

long main_pid = 0;

void print_summary() {
  // Only the process that ran main: a fork child that exits through exit() runs atexit handlers.
  if (zpoline::raw_syscall(SYS_getpid) != main_pid) return;
  long total = tally.out_of_range.load();
  std::vector<std::pair<long, long>> seen;  // (calls, number)
  for (long number = 0; number < kNumbers; ++number) {
    const long calls = tally.calls[number].load();
    if (calls == 0) continue;
    total += calls;
    seen.emplace_back(calls, number);
  }
  std::sort(seen.begin(), seen.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::fprintf(stderr, "zpoline: hooked %ld syscalls (%zu distinct numbers); top:", total,
               seen.size());
  for (std::size_t i = 0; i < seen.size() && i < 8; ++i) {
    const long number = seen[i].second;
    const char* data = tally.name_data[number].load(std::memory_order_acquire);
    const int size = data ? static_cast<int>(tally.name_size[number].load()) : 0;
    std::fprintf(stderr, "%s %.*s(%ld)=%ld", i ? "," : "", size, data ? data : "", number,
                 seen[i].first);
  }
  if (tally.out_of_range.load() != 0) {
    std::fprintf(stderr, ", out of range=%ld", tally.out_of_range.load());
  }
  std::fprintf(stderr, "\n");
}

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: python_host [--hook] script.py [args...]\n");
  std::exit(2);
}

// Runs `script` with sys.argv == [script, args...] exactly as `python3 script args...` would.
// Returns the exit status python3 would have: the script's, 1 after an uncaught exception. A
// SystemExit (sys.exit) does not return: CPython ends the process with exit() itself.
int run_script(const char* program, int argc, char** argv) {
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.parse_argv = 0;  // argv below is sys.argv as is; our own options are not Python's
  PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, program);
  if (!PyStatus_Exception(status)) {
    status = PyConfig_SetBytesString(&config, &config.run_filename, argv[0]);
  }
  if (!PyStatus_Exception(status)) status = PyConfig_SetBytesArgv(&config, argc, argv);
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    if (PyStatus_IsExit(status)) return status.exitcode;
    Py_ExitStatusException(status);  // prints the error, exits 1
  }
  return Py_RunMain();  // runs the file, finalizes the interpreter
}

}  // namespace

int main(int argc, char** argv) {
  int first = 1;
  bool hook = false;
  if (first < argc && std::strcmp(argv[first], "--hook") == 0) {
    hook = true;
    ++first;
  }
  if (first >= argc) usage();

  std::optional<zpoline::Session> session;
  if (hook) {
    try {
      session.emplace(zpoline::install(counting_hook));
    } catch (const zpoline::Error& error) {
      std::fprintf(stderr, "python_host: zpoline::install failed: %s\n", error.what());
      std::fflush(stderr);
      std::_Exit(error.code() == zpoline::ErrorCode::page_zero_refused ? 77 : 3);
    }
    // sys.exit() in the script ends the process inside Py_RunMain (Py_Exit calls exit()), so the
    // summary is printed by an atexit handler, which also runs after a normal return from main.
    main_pid = zpoline::raw_syscall(SYS_getpid);
    std::atexit(print_summary);
  }

  return run_script(argv[0], argc - first, argv + first);
}
