// Hooks in a program whose malloc is tcmalloc, tcmalloc_minimal or jemalloc, in each mode, under
// a workload that allocates heavily on several threads (large blocks among them, which those
// allocators map, with their locks held, while growing their heaps):
//   - a hook library that allocates on every call (its namespace's private libc allocates for
//     it, never the application's allocator);
//   - an in-process hook that follows the README's advice: it allocates nothing from the
//     application's allocator (its strings live in a buffer on its stack).
// An in-process hook that allocates from the application's allocator is not tested here: it
// hangs or crashes (README, "Limits").
//
// Each case re-runs this executable with the allocator preloaded (LD_PRELOAD), and fails if that
// run fails or has not finished after 60 s; it is skipped (77) where the allocator is not
// installed.
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory_resource>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support.hpp"
#include "zpoline/hook_library.hpp"
#include "zpoline/zpoline.hpp"

#ifndef ZPOLINE_ALLOCATING_HOOK
#error "ZPOLINE_ALLOCATING_HOOK must name test/hook_libraries/allocating.cpp's library"
#endif

extern char** environ;

namespace {

constexpr const char* kChildVariable = "ALLOCATOR_TEST_CHILD";
constexpr long kQueryCalls = 0x7a706f6c;  // test/hook_libraries/allocating.cpp
constexpr long kQueryMalloc = kQueryCalls + 1;

struct Allocator {
  const char* file;     // the shared object preloaded
  const char* package;  // the Debian package that has it
  const char* marker;   // in the path of the object that defines malloc once it is preloaded
};
constexpr Allocator kTcmalloc{"libtcmalloc.so.4", "libgoogle-perftools4", "libtcmalloc.so"};
constexpr Allocator kTcmallocMinimal{"libtcmalloc_minimal.so.4", "libtcmalloc-minimal4",
                                     "libtcmalloc_minimal.so"};
constexpr Allocator kJemalloc{"libjemalloc.so.2", "libjemalloc2", "libjemalloc.so"};

enum class HookKind { library_that_allocates, allocation_free };

std::string find_library(const char* file) {
  for (const char* directory : {"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64",
                                "/usr/lib", "/usr/local/lib"}) {
    std::string path = std::string(directory) + "/" + file;
    if (access(path.c_str(), R_OK) == 0) return path;
  }
  return {};
}

// Threads that allocate and free blocks of many sizes; every 97th is 1 to 8 MiB, which the
// allocators map (and unmap or keep), often while growing their heaps with a lock held.
void allocate_heavily() {
  auto work = [](unsigned seed) {
    std::vector<void*> live;
    unsigned x = seed * 7919 + 1;
    for (int i = 0; i < 20000; ++i) {
      x = x * 1103515245 + 12345;
      std::size_t size = (x >> 8) % 4096 + 1;
      if (i % 97 == 0) size = (std::size_t{1} << 20) * (1 + (x >> 4) % 8);
      void* block = std::malloc(size);
      REQUIRE(block != nullptr);
      std::memset(block, 1, size < 65536 ? size : 65536);
      live.push_back(block);
      if (live.size() > 200) {
        const std::size_t k = (x >> 3) % live.size();
        std::free(live[k]);
        live[k] = live.back();
        live.pop_back();
      }
      if (i % 200 == 0) CHECK(getppid() > 0);  // 100 calls per thread, besides the allocator's
      if (i % 1000 == 0) {
        std::string text(1000 + i % 5000, 'x');
        void* grown = std::realloc(std::malloc(16), 3 << 20);
        std::free(grown);
      }
    }
    for (void* block : live) std::free(block);
  };
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 3; ++t) threads.emplace_back(work, t);
  work(99);
  for (auto& thread : threads) thread.join();
}

std::array<std::atomic<unsigned long>, 512> calls_by_number{};
std::atomic<unsigned long> names_built{0};

// Allocates nothing from the application's allocator: a name and its count are formatted into a
// monotonic buffer on the stack, whose upstream refuses (null_memory_resource), so the string
// cannot fall back to the heap.
long allocation_free_hook(zpoline::Syscall& call) {
  std::array<std::byte, 256> buffer;
  std::pmr::monotonic_buffer_resource arena(buffer.data(), buffer.size(),
                                            std::pmr::null_memory_resource());
  std::pmr::string text(call.name(), &arena);
  text += ':';
  for (long n = call.number(); n > 0; n /= 10) text += static_cast<char>('0' + n % 10);
  if (text.size() > 1) names_built.fetch_add(1, std::memory_order_relaxed);
  const long number = call.number();
  if (number >= 0 && number < 512) calls_by_number[number].fetch_add(1, std::memory_order_relaxed);
  return call.forward();
}

// In the child: the allocator is the program's malloc, the hook runs through the workload.
void run_child(const Allocator& allocator, HookKind kind, zpoline::Mode mode) {
  Dl_info info{};
  REQUIRE(dladdr(dlsym(RTLD_DEFAULT, "malloc"), &info) != 0);
  REQUIRE_MESSAGE(std::strstr(info.dli_fname, allocator.marker) != nullptr,
                  "malloc comes from " << std::string(info.dli_fname) << ", not "
                                       << std::string(allocator.file));
  zpoline::Options options;
  options.mode = mode;
  if (kind == HookKind::library_that_allocates) {
    auto session = [&] {
      try {
        return zpoline::load_hook_library(ZPOLINE_ALLOCATING_HOOK, options);
      } catch (const zpoline::Error& error) {
        if (error.code() == zpoline::ErrorCode::page_zero_refused) {
          std::fprintf(stderr, "SKIP: this machine does not allow page 0: %s\n", error.what());
          std::_Exit(77);
        }
        throw;
      }
    }();
    allocate_heavily();
    const long calls = syscall(SYS_getcwd, nullptr, kQueryCalls);
    const long private_malloc = syscall(SYS_getcwd, nullptr, kQueryMalloc);
    CHECK_MESSAGE(calls >= 400, "the hook library saw " << calls << " calls");
    CHECK_MESSAGE(private_malloc == 1, "the hook library's malloc is its private libc's, not "
                                           << std::string(allocator.file));
  } else {
    auto session = zpoline_test::install_or_skip(allocation_free_hook, options);
    allocate_heavily();
    const unsigned long memory_calls =
        calls_by_number[SYS_mmap].load() + calls_by_number[SYS_munmap].load() +
        calls_by_number[SYS_madvise].load() + calls_by_number[SYS_brk].load();
    CHECK_MESSAGE(memory_calls >= 5, "the hook saw " << memory_calls << " memory calls");
    CHECK(calls_by_number[SYS_getppid].load() == 400);
    CHECK(names_built.load() >= 400);
  }
}

// In the parent: runs this test case again in a child with the allocator preloaded.
void run_case(const char* test_case, const Allocator& allocator, HookKind kind,
              zpoline::Mode mode) {
  if (std::getenv(kChildVariable) != nullptr) {
    run_child(allocator, kind, mode);
    return;
  }
  const std::string library = find_library(allocator.file);
  const std::string name = allocator.file;  // doctest prints a const char* as a pointer
  if (library.empty()) {
    std::fprintf(stderr, "SKIP: %s is not installed (Debian: apt-get install %s)\n", allocator.file,
                 allocator.package);
    std::_Exit(77);
  }
  std::vector<std::string> environment;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (std::strncmp(*entry, "LD_PRELOAD=", 11) != 0) environment.emplace_back(*entry);
  }
  environment.push_back("LD_PRELOAD=" + library);
  environment.push_back(std::string(kChildVariable) + "=1");
  const std::string filter = std::string("--test-case=") + test_case;
  std::vector<char*> envp;
  for (std::string& entry : environment) envp.push_back(entry.data());
  envp.push_back(nullptr);
  char self[] = "/proc/self/exe";
  char* argv[] = {self, const_cast<char*>(filter.c_str()), nullptr};
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    execve(self, argv, envp.data());
    std::_Exit(126);
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  pid_t done = 0;
  while ((done = waitpid(child, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    usleep(20000);
  }
  if (done == 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    FAIL("the run with " << name << " preloaded did not finish in 60 s (deadlock?)");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) std::_Exit(77);
  CHECK_MESSAGE(WIFEXITED(status), "the run with " << name << " preloaded was killed by "
                                                   << std::string(strsignal(WTERMSIG(status))));
  CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0),
                "the run with " << name << " preloaded failed (its output is above)");
}

}  // namespace

#define ALLOCATOR_CASE(name, allocator, kind, mode) \
  TEST_CASE(name) {                                 \
    run_case(name, allocator, kind, mode);          \
  }

#define ALLOCATOR_CASES(prefix, allocator)                                                        \
  ALLOCATOR_CASE(prefix "_hook_library_that_allocates_eager", allocator,                          \
                 HookKind::library_that_allocates, zpoline::Mode::eager)                          \
  ALLOCATOR_CASE(prefix "_hook_library_that_allocates_exhaustive", allocator,                     \
                 HookKind::library_that_allocates, zpoline::Mode::exhaustive)                     \
  ALLOCATOR_CASE(prefix "_hook_library_that_allocates_lazy", allocator,                           \
                 HookKind::library_that_allocates, zpoline::Mode::lazy)                           \
  ALLOCATOR_CASE(prefix "_allocation_free_hook_eager", allocator, HookKind::allocation_free,      \
                 zpoline::Mode::eager)                                                            \
  ALLOCATOR_CASE(prefix "_allocation_free_hook_exhaustive", allocator, HookKind::allocation_free, \
                 zpoline::Mode::exhaustive)                                                       \
  ALLOCATOR_CASE(prefix "_allocation_free_hook_lazy", allocator, HookKind::allocation_free,       \
                 zpoline::Mode::lazy)

ALLOCATOR_CASES("tcmalloc", kTcmalloc)
ALLOCATOR_CASES("tcmalloc_minimal", kTcmallocMinimal)
ALLOCATOR_CASES("jemalloc", kJemalloc)
