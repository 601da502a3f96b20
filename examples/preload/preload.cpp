// libzpoline-preload.so: hooks every system call of an unmodified, dynamically linked program.
//
//   LD_PRELOAD=/path/libzpoline-preload.so ZPOLINE_HOOK=./libhook-trace.so ls -l
//
// Its constructor installs the hook libraries named by ZPOLINE_HOOK (':'-separated, composed in
// that order: the first sees each call first), or, when ZPOLINE_HOOK is unset, the built-in
// counting hook, which prints how many system calls the process made, by name, to standard error
// when it exits (through a copy of the descriptor made at start, numbered 100 or above, so that
// programs which close standard error at exit, like coreutils, still get the report).
// A second line gives what hooking cost besides the calls: the constructor's install and the
// rewriting of code mapped later (each dlopen). ZPOLINE_MODE and ZPOLINE_EXCLUDE apply as to any
// install(). Threads are hooked as they start,
// fork children stay hooked, and programs started by exec load the library again through the
// inherited LD_PRELOAD. If the hook cannot be installed, the program does not run: the error is
// printed and the process exits with status 127 (a sandbox must not fail open).
#include <fcntl.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "zpoline/hook_library.hpp"

namespace {

constexpr std::size_t kNumbers = 1024;
std::array<std::atomic<unsigned long>, kNumbers> counts{};
int report_fd = -1;
zpoline::Session* session = nullptr;
// The constructor's whole install_configured_hooks() call, in ms: wall time, and the thread's CPU
// time (which leaves out time the machine gave to other processes meanwhile).
double install_ms = 0;
double install_cpu_ms = 0;

double thread_cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1e3 + static_cast<double>(now.tv_nsec) / 1e6;
}

// CPU time of the calls that made memory executable (mmap, mprotect, pkey_mprotect with
// PROT_EXEC), in ns: forwarding such a call rewrites the code it maps (each dlopen), so this is
// mostly that rewriting. Thread CPU time leaves out time the machine gave to other processes,
// which the wall time in ImageStats::time includes.
std::atomic<long> executable_mapping_cpu_ns{0};

long count(zpoline::Syscall& call) {
  const long number = call.number();
  if (number >= 0 && static_cast<std::size_t>(number) < kNumbers) {
    counts[static_cast<std::size_t>(number)].fetch_add(1, std::memory_order_relaxed);
  }
  const bool maps_code =
      (number == SYS_mmap || number == SYS_mprotect || number == SYS_pkey_mprotect) &&
      (call.arg(2) & PROT_EXEC) != 0;
  if (!maps_code) return call.forward();
  const double start = thread_cpu_ms();
  const long result = call.forward();
  executable_mapping_cpu_ns.fetch_add(static_cast<long>((thread_cpu_ms() - start) * 1e6),
                                      std::memory_order_relaxed);
  return result;
}

void print_counts() {
  zpoline::ScopedBypass bypass;  // the report's own write is not counted
  std::vector<std::pair<unsigned long, long>> made;
  unsigned long total = 0;
  for (std::size_t number = 0; number < kNumbers; ++number) {
    const unsigned long n = counts[number].load(std::memory_order_relaxed);
    if (n != 0) made.emplace_back(n, static_cast<long>(number));
    total += n;
  }
  std::sort(made.rbegin(), made.rend());
  std::string report =
      "zpoline: pid " + std::to_string(getpid()) + ": " + std::to_string(total) + " system calls:";
  for (const auto& [n, number] : made) {
    report += " " + std::string(zpoline::syscall_name(number)) + "=" + std::to_string(n);
  }
  report += "\n";
  // Read by bench/bench_python_startup.cpp, which splits the shim's cost into these parts.
  const zpoline::Session::LateCoverage late = session->late_coverage();
  double late_ms = 0;
  for (const zpoline::ImageStats& image : late.images) {
    late_ms += std::chrono::duration<double, std::milli>(image.time).count();
  }
  char costs[256];
  std::snprintf(
      costs, sizeof costs,
      "zpoline: pid %d: install %.3f ms (cpu %.3f ms; rewriting %.3f ms); code rewritten after "
      "install: %.3f ms in %zu images (cpu of the calls that mapped code: %.3f ms)\n",
      static_cast<int>(getpid()), install_ms, install_cpu_ms,
      std::chrono::duration<double, std::milli>(session->stats().total_time).count(), late_ms,
      late.images.size(),
      static_cast<double>(executable_mapping_cpu_ns.load(std::memory_order_relaxed)) / 1e6);
  report += costs;
  static_cast<void>(write(report_fd, report.data(), report.size()));
}

// The scan cache (Options::scan_cache_directory): what the rewriter decided about libc, ld.so and
// the program is what it will decide next time, and deciding it is most of a short program's
// added start-up. $XDG_CACHE_HOME/libzpoline, else ~/.cache/libzpoline; none for a set-user-ID
// or set-group-ID program, whose environment names another user's directories.
// ZPOLINE_SCAN_CACHE (a directory, or off) overrides it.
// From `environ` itself: bash's own getenv() finds nothing before its main (docs/GUIDE.md).
const char* environment(const char* name) {
  const std::size_t length = std::strlen(name);
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    if (std::strncmp(*entry, name, length) == 0 && (*entry)[length] == '=') {
      return *entry + length + 1;
    }
  }
  return nullptr;
}

// Only in a directory of this user's own: root with another user's HOME (su without -, sudo -E)
// must not create root-owned directories in that user's home.
bool owned_directory(const char* path) {
  struct stat status {};
  return path != nullptr && path[0] == '/' && stat(path, &status) == 0 && S_ISDIR(status.st_mode) &&
         status.st_uid == geteuid();
}

std::string default_scan_cache_directory() {
  if (getauxval(AT_SECURE) != 0) return "";
  const char* cache_home = environment("XDG_CACHE_HOME");
  if (cache_home != nullptr && cache_home[0] == '/') {
    return owned_directory(cache_home) ? std::string(cache_home) + "/libzpoline" : "";
  }
  const char* home = environment("HOME");
  if (!owned_directory(home)) return "";
  const std::string cache = std::string(home) + "/.cache";
  struct stat status {};
  if (stat(cache.c_str(), &status) == 0 && !owned_directory(cache.c_str())) return "";
  return cache + "/libzpoline";
}

// Under zptrace (tools/zptrace), which traces the program with ptrace until here: this call, the
// first of the library's constructors, tells it that what follows is the shim's own work, and that
// from the hook library's install on, the hook prints the program's calls. The number does not
// exist (ENOSYS).
__attribute__((constructor(101))) void hand_over_to_the_hook() {
  if (environment("ZPTRACE_HANDOFF") != nullptr) {
    syscall(0x5a50, 0x7a70747261636521L);  // tools/zptrace/protocol.hpp: kHandoffSyscall, magic
  }
}

__attribute__((constructor)) void start() {
  try {
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = thread_cpu_ms();
    const bool counting = zpoline::configured_hook_libraries({}).empty();
    zpoline::Options options;
    options.scan_cache_directory = default_scan_cache_directory();
    // Alive until the process ends: the hook must outlive every static destructor.
    session = new zpoline::Session(zpoline::install_configured_hooks(options, count));
    install_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    install_cpu_ms = thread_cpu_ms() - cpu_start;
    if (counting) {
      report_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 100);
      std::atexit(print_counts);
    }
  } catch (const zpoline::Error& error) {
    std::fprintf(stderr, "libzpoline-preload: %s\n", error.what());
    std::_Exit(127);
  }
}

}  // namespace
