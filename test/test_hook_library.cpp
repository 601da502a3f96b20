// Hook libraries loaded with dlmopen (zpoline/hook_library.hpp) and composed hooks
// (zpoline/hook_chain.hpp). Each test case runs in its own process (test/meson.build).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"
#include "zpoline/hook_chain.hpp"
#include "zpoline/hook_library.hpp"
#include "zpoline/memory.hpp"

namespace {

const std::string trace_hook = ZPOLINE_TRACE_HOOK;
const std::string sandbox_hook = ZPOLINE_SANDBOX_HOOK;
const std::string fault_hook = ZPOLINE_FAULT_HOOK;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string temporary_file() {
  char name[] = "/tmp/zpoline-hook-XXXXXX";
  const int fd = mkstemp(name);
  REQUIRE(fd >= 0);
  close(fd);
  return name;
}

// The skip of support.hpp, for the hook library entry points.
zpoline::Session load_or_skip(const std::string& path, zpoline::Options options = {}) {
  try {
    return zpoline::load_hook_library(path, std::move(options));
  } catch (const zpoline::Error& error) {
    if (error.code() == zpoline::ErrorCode::page_zero_refused) std::_Exit(77);
    throw;
  }
}

// Loading fails with hook_library_failed and a message containing `expected`.
void expect_load_error(const std::string& path, const std::string& expected) {
  try {
    zpoline::HookLibrary library(path);
    FAIL("loading " << path << " succeeded");
  } catch (const zpoline::Error& error) {
    CHECK(error.code() == zpoline::ErrorCode::hook_library_failed);
    INFO(error.what());
    CHECK(std::string(error.what()).find(expected) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("tracer_in_process") {
  const std::string output = temporary_file();
  setenv("ZPOLINE_HOOK_TRACE_OUTPUT", output.c_str(), 1);
  {
    auto session = load_or_skip(trace_hook);
    const int fd = open("/etc/hostname", O_RDONLY);
    REQUIRE(fd >= 0);
    char buffer[64];
    CHECK(read(fd, buffer, sizeof buffer) > 0);
    close(fd);
    CHECK(chdir("/nonexistent-directory") == -1);
  }
  const std::string trace = read_file(output);
  INFO(trace);
  const std::string pid = "[pid " + std::to_string(getpid()) + "] ";
  CHECK(trace.find(pid + "openat(AT_FDCWD, \"/etc/hostname\", O_RDONLY) = ") != std::string::npos);
  CHECK(trace.find(pid +
                   "chdir(\"/nonexistent-directory\") = -1 ENOENT (No such file or directory)") !=
        std::string::npos);
  std::remove(output.c_str());
}

TEST_CASE("sandbox_in_process") {
  setenv("ZPOLINE_HOOK_SANDBOX_DENY", "/etc/hostname:/root", 1);
  auto session = load_or_skip(sandbox_hook);
  errno = 0;
  CHECK(open("/etc/hostname", O_RDONLY) == -1);
  CHECK(errno == EACCES);
  REQUIRE(chdir("/etc") == 0);
  CHECK(open("./../etc/hostname", O_RDONLY) == -1);
  CHECK(errno == EACCES);
  CHECK(access("/root/.profile", F_OK) == -1);
  CHECK(errno == EACCES);
  const int allowed = open("/etc/passwd", O_RDONLY);
  CHECK(allowed >= 0);
  close(allowed);
  CHECK(access("/rootless", F_OK) == -1);
  CHECK(errno == ENOENT);  // a sibling with the same prefix is not denied
}

TEST_CASE("fault_in_process") {
  setenv("ZPOLINE_HOOK_FAULT", "chdir:3:EROFS", 1);
  auto session = load_or_skip(fault_hook);
  std::vector<int> errors;
  for (int i = 0; i < 5; ++i) errors.push_back(chdir("/") == 0 ? 0 : errno);
  CHECK(errors == std::vector<int>{0, 0, EROFS, 0, 0});
}

TEST_CASE("hook_library_syscalls_bypass_the_hooks_before_it") {
  // A hook in front of the tracer records the descriptors of all writes it sees: the tracer's
  // own writes of trace lines (through its private, unrewritten libc) must not be among them,
  // and the libc of its namespace, mapped while the hook was live, is not rewritten.
  //
  // The writes are told apart by what they write, not only by their descriptor: a sanitizer
  // runtime makes writes of its own (AddressSanitizer probes memory by writing it to a pipe),
  // which are the application's calls and rightly reach the hook, maybe on a descriptor number
  // that /dev/null had before.
  const std::string output = temporary_file();
  setenv("ZPOLINE_HOOK_TRACE_OUTPUT", output.c_str(), 1);
  std::mutex lock;
  std::vector<std::pair<long, std::string>> writes;  // descriptor, the first 64 bytes
  zpoline::HookChain chain;
  auto front = chain.add(
      [&](zpoline::Syscall& call) {
        if (call.number() == SYS_write) {
          std::string bytes(static_cast<std::size_t>(std::clamp<long>(call.arg(2), 0, 64)), '\0');
          if (!zpoline::read_memory(bytes.data(), reinterpret_cast<const void*>(call.arg(1)),
                                    bytes.size())) {
            bytes = "(unreadable)";
          }
          std::lock_guard guard(lock);
          writes.emplace_back(call.arg(0), std::move(bytes));
        }
        return call.forward();
      },
      -1);
  auto session = zpoline_test::install_or_skip(chain);
  auto tracer = chain.add(zpoline::HookLibrary(trace_hook).hook());
  const int null = open("/dev/null", O_WRONLY);
  for (int i = 0; i < 3; ++i) CHECK(write(null, "x", 1) == 1);
  close(null);
  tracer.remove();
  chain.synchronize();
  std::vector<std::pair<long, std::string>> seen;
  {
    std::lock_guard guard(lock);  // no CHECK in here: a failing one writes, through the hook
    seen = writes;
  }
  long test_writes = 0, trace_lines = 0;
  for (const auto& [fd, bytes] : seen) {
    if (fd == null && bytes == "x") ++test_writes;
    if (bytes.find("write(") != std::string::npos) ++trace_lines;
  }
  CHECK(test_writes == 3);
  CHECK(trace_lines == 0);
  CHECK(read_file(output).find("write(" + std::to_string(null) + ", \"x\", 1) = 1") !=
        std::string::npos);
  for (const zpoline::ImageStats& image : session.late_coverage().images) {
    INFO(image.path);
    CHECK(image.path.find("libc.so") == std::string::npos);
    CHECK(image.path.find("libstdc++") == std::string::npos);
  }
  std::remove(output.c_str());
}

TEST_CASE("hook_library_reads_memory_over_a_dirty_stack") {
  // The hook answers chdir with the length of the path it read (read_string and read_memory), or
  // -EFAULT, each read made with the stack below it filled with 0xff bytes.
  auto session = load_or_skip(ZPOLINE_MEMORY_READS_HOOK);
  const std::string path = "/a/path/the/hook/reads/and/never/changes/into";
  CHECK(syscall(SYS_chdir, path.c_str()) == static_cast<long>(path.size()));
  void* page = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(page != MAP_FAILED);
  munmap(page, 4096);
  errno = 0;
  CHECK(syscall(SYS_chdir, page) == -1);
  CHECK(errno == EFAULT);
}

// Every call of a thread started by pthread_create reaches the hook, from its first (rseq,
// set_robust_list, then the rt_sigprocmask that unblocks its signals) to its last (the exit(0) of
// start_thread): 50 threads, each checked against the calls glibc's start_thread makes (as
// strace -f shows them). Under the near mechanism in eager mode those two sites of libc once had
// neither padding within reach nor a single movable instruction before them, and went to the
// kernel unhooked; now the run of instructions before them moves into their trampoline.
constexpr int kNewThreads = 50;

// Threads started and joined; their thread ids.
std::vector<long> run_new_threads() {
  std::vector<long> tids(kNewThreads, 0);
  std::vector<pthread_t> threads(kNewThreads);
  for (int i = 0; i < kNewThreads; ++i) {
    REQUIRE(pthread_create(
                &threads[i], nullptr,
                [](void* slot) -> void* {
                  *static_cast<long*>(slot) = syscall(SYS_gettid);
                  getppid();
                  return nullptr;
                },
                &tids[i]) == 0);
  }
  for (pthread_t thread : threads) REQUIRE(pthread_join(thread, nullptr) == 0);
  return tids;
}

// `calls(tid, number)`: how many calls `number` the hook saw thread `tid` make.
template <class Calls>
void check_new_thread_calls(const std::vector<long>& tids, Calls calls) {
  for (const long tid : tids) {
    CAPTURE(tid);
    REQUIRE(tid > 0);
    CHECK(calls(tid, SYS_set_robust_list) == 1);
    CHECK(calls(tid, SYS_getppid) == 1);
    CHECK(calls(tid, SYS_exit) == 1);
#if __GLIBC_PREREQ(2, 36)
    // start_thread's rt_sigprocmask(SIG_SETMASK, [], NULL, 8) after set_robust_list, and its
    // rt_sigprocmask(SIG_BLOCK, ~[RT_1], NULL, 8) before the exit.
    CHECK(calls(tid, SYS_rt_sigprocmask) == 2);
#else
    CHECK(calls(tid, SYS_rt_sigprocmask) >= 1);
#endif
  }
}

void new_threads_reach_the_hook_library(zpoline::Mode mode) {
  zpoline::Options options;
  options.mode = mode;
  auto session = load_or_skip(ZPOLINE_THREAD_CALLS_HOOK, options);
  const std::vector<long> tids = run_new_threads();
  constexpr long kQueryCalls = 0x7a706f6d;  // hook_libraries/thread_calls.cpp
  check_new_thread_calls(
      tids, [](long tid, long number) { return syscall(SYS_getcwd, 0, kQueryCalls, tid, number); });
}

TEST_CASE("calls_of_new_threads_reach_the_hook_library_eager") {
  new_threads_reach_the_hook_library(zpoline::Mode::eager);
}
TEST_CASE("calls_of_new_threads_reach_the_hook_library_exhaustive") {
  new_threads_reach_the_hook_library(zpoline::Mode::exhaustive);
}
TEST_CASE("calls_of_new_threads_reach_the_hook_library_lazy") {
  new_threads_reach_the_hook_library(zpoline::Mode::lazy);
}

// The same with an in-process hook in a HookChain, in eager mode.
TEST_CASE("calls_of_new_threads_reach_an_in_process_hook") {
  struct Entry {
    std::atomic<long> tid{0};
    std::atomic<unsigned> calls[512];
  };
  static Entry entries[1024];
  const auto find = [](long tid, bool claim) -> Entry* {
    for (Entry& entry : entries) {
      long current = entry.tid.load();
      if (current == tid) return &entry;
      if (current == 0) {
        if (!claim) return nullptr;
        if (entry.tid.compare_exchange_strong(current, tid) || current == tid) return &entry;
      }
    }
    return nullptr;
  };
  zpoline::HookChain chain;
  auto handle = chain.add([find](zpoline::Syscall& call) {
    const long number = call.number();
    if (number >= 0 && number < 512) {
      if (Entry* entry = find(zpoline::raw_syscall(SYS_gettid), true)) ++entry->calls[number];
    }
    return call.forward();
  });
  auto session = zpoline_test::install_or_skip(chain);
  const std::vector<long> tids = run_new_threads();
  check_new_thread_calls(tids, [&](long tid, long number) -> long {
    const Entry* entry = find(tid, false);
    return entry == nullptr ? 0 : static_cast<long>(entry->calls[number].load());
  });
}

TEST_CASE("error_file_missing") {
  expect_load_error("/nonexistent/hook.so", "no such file");
}

TEST_CASE("error_not_a_hook_library") {
  expect_load_error("libm.so.6", "not a hook library: it does not define zpoline_hook");
}

TEST_CASE("error_not_linked_with_libzpoline_hook") {
  expect_load_error(ZPOLINE_WITHOUT_CLIENT_HOOK, "link it with libzpoline-hook");
}

TEST_CASE("error_wrong_abi_version") {
  expect_load_error(ZPOLINE_WRONG_ABI_HOOK,
                    "built for hook ABI version 999, but this libzpoline loads version 1");
}

TEST_CASE("error_dlmopen_failure") {
  expect_load_error("/etc/passwd", "dlmopen failed: /etc/passwd: invalid ELF header");
}

TEST_CASE("error_init_refuses") {
  unsetenv("ZPOLINE_HOOK_FAULT");
  expect_load_error(fault_hook, "zpoline_hook_init refused to start: set ZPOLINE_HOOK_FAULT");
}

TEST_CASE("configuration_and_default") {
  zpoline::Options options;
  options.hook_libraries = {fault_hook};
  setenv("ZPOLINE_HOOK", (trace_hook + ":" + sandbox_hook).c_str(), 1);
  CHECK(zpoline::configured_hook_libraries(options) == std::vector{trace_hook, sandbox_hook});
  options.use_environment = false;
  CHECK(zpoline::configured_hook_libraries(options) == std::vector{fault_hook});
  setenv("ZPOLINE_HOOK", (trace_hook + "::" + sandbox_hook).c_str(), 1);
  options.use_environment = true;
  CHECK_THROWS_WITH_AS((void)zpoline::configured_hook_libraries(options),
                       doctest::Contains("entry 2 is empty"), zpoline::Error);
  CHECK_THROWS_WITH_AS(
      (void)zpoline::install([](zpoline::Syscall& call) { return call.forward(); }, options),
      doctest::Contains("install_configured_hooks"), zpoline::Error);
  // Nothing configured: the fallback, and without one the built-in default (the kernel's
  // results unchanged).
  unsetenv("ZPOLINE_HOOK");
  std::atomic<int> fallback_calls{0};
  {
    zpoline::Session session;
    try {
      session = zpoline::install_configured_hooks({}, [&](zpoline::Syscall& call) {
        if (call.number() == SYS_getppid) ++fallback_calls;
        return call.forward();
      });
    } catch (const zpoline::Error& error) {
      if (error.code() == zpoline::ErrorCode::page_zero_refused) std::_Exit(77);
      throw;
    }
    CHECK(getppid() == syscall(SYS_getppid));
  }
  CHECK(fallback_calls >= 1);
  auto session = zpoline::install_configured_hooks();
  CHECK(getppid() == zpoline::raw_syscall(SYS_getppid));
  CHECK(chdir("/nonexistent-directory") == -1);
  CHECK(errno == ENOENT);
}

TEST_CASE("environment_installs_composed_libraries") {
  // ZPOLINE_HOOK=trace:fault: the tracer comes first and sees the fault's result.
  const std::string output = temporary_file();
  setenv("ZPOLINE_HOOK_TRACE_OUTPUT", output.c_str(), 1);
  setenv("ZPOLINE_HOOK_FAULT", "chdir:2:EIO", 1);
  setenv("ZPOLINE_HOOK", (trace_hook + ":" + fault_hook).c_str(), 1);
  {
    zpoline::Session session;
    try {
      session = zpoline::install_configured_hooks();
    } catch (const zpoline::Error& error) {
      if (error.code() == zpoline::ErrorCode::page_zero_refused) std::_Exit(77);
      throw;
    }
    CHECK(chdir("/") == 0);
    CHECK(chdir("/") == -1);
    CHECK(errno == EIO);
    CHECK(chdir("/") == 0);
  }
  const std::string trace = read_file(output);
  INFO(trace);
  const std::size_t first = trace.find("chdir(\"/\") = 0");
  const std::size_t failed = trace.find("chdir(\"/\") = -1 EIO (Input/output error)");
  REQUIRE(first != std::string::npos);
  REQUIRE(failed != std::string::npos);
  CHECK(first < failed);
  CHECK(trace.find("chdir(\"/\") = 0", failed) != std::string::npos);
  std::remove(output.c_str());
}

TEST_CASE("chain_runs_hooks_in_order") {
  std::vector<std::string> log;
  std::mutex lock;
  auto record = [&](const std::string& entry) {
    std::lock_guard guard(lock);
    log.push_back(entry);
  };
  zpoline::HookChain chain;
  auto session = zpoline_test::install_or_skip(chain);
  // Added in another order than they run: order, then insertion.
  auto second = chain.add([&](zpoline::Syscall& call) {
    if (call.number() != SYS_getppid) return call.forward();
    record("second sees arg " + std::to_string(call.arg(0)));
    const long result = call.forward();
    record("second got " + std::to_string(result));
    return result;
  });
  auto last = chain.add([&](zpoline::Syscall& call) {
    if (call.number() != SYS_getppid) return call.forward();
    record("last answers");
    return 4242L;  // the kernel is never reached
  });
  auto first = chain.add(
      [&](zpoline::Syscall& call) {
        if (call.number() != SYS_getppid) return call.forward();
        record("first");
        call.set_arg(0, 7);
        const long result = call.forward();
        record("first got " + std::to_string(result));
        return result + 1;
      },
      -5);
  CHECK(chain.size() == 3);
  CHECK(getppid() == 4243);
  CHECK(log == std::vector<std::string>{"first", "second sees arg 7", "last answers",
                                        "second got 4242", "first got 4242"});
  log.clear();
  last.remove();
  CHECK(chain.size() == 2);
  const long parent = zpoline::raw_syscall(SYS_getppid);
  CHECK(getppid() == parent + 1);
  CHECK(log == std::vector<std::string>{"first", "second sees arg 7",
                                        "second got " + std::to_string(parent),
                                        "first got " + std::to_string(parent)});
}

TEST_CASE("chain_composes_hook_library_and_in_process_hook") {
  setenv("ZPOLINE_HOOK_FAULT", "chdir:2:ENOTDIR", 1);
  std::vector<long> seen;
  zpoline::HookChain chain;
  auto observer = chain.add([&](zpoline::Syscall& call) {
    const long result = call.forward();
    if (call.number() == SYS_chdir) seen.push_back(result);
    return result;
  });
  auto fault = chain.add(zpoline::HookLibrary(fault_hook).hook());
  auto session = zpoline_test::install_or_skip(chain);
  for (int i = 0; i < 3; ++i) static_cast<void>(chdir("/"));
  CHECK(seen == std::vector<long>{0, -ENOTDIR, 0});
}

TEST_CASE("chain_add_and_remove_while_threads_are_inside") {
  // Threads make system calls without pause while hooks come and go. Each hook checks that its
  // state is intact on every call; every hook made is destroyed in the end, none twice.
  constexpr std::uint64_t kAlive = 0x600dcafe;
  struct State {
    std::uint64_t magic = kAlive;
    std::atomic<long> calls{0};
    std::atomic<int>* destroyed;
    explicit State(std::atomic<int>* counter) : destroyed(counter) {}
    ~State() {
      magic = 0xdeadbeef;
      ++*destroyed;
    }
  };
  std::atomic<int> destroyed{0};
  std::atomic<bool> corrupt{false};
  std::atomic<bool> stop{false};
  zpoline::HookChain chain;
  auto session = zpoline_test::install_or_skip(chain);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        static_cast<void>(syscall(SYS_getppid));
        static_cast<void>(syscall(SYS_getpid));
      }
    });
  }
  constexpr int kRounds = 3000;
  std::vector<zpoline::HookChain::Handle> handles;
  for (int round = 0; round < kRounds; ++round) {
    auto state = std::make_shared<State>(&destroyed);
    handles.push_back(chain.add(
        [state, &corrupt](zpoline::Syscall& call) {
          if (state->magic != kAlive) corrupt = true;
          ++state->calls;
          const long result = call.forward();
          if (state->magic != kAlive) corrupt = true;
          return result;
        },
        round % 3));
    if (handles.size() > 3) handles.erase(handles.begin() + round % 3);
  }
  handles.clear();
  stop = true;
  for (std::thread& thread : threads) thread.join();
  chain.synchronize();
  CHECK(chain.size() == 0);
  CHECK_FALSE(corrupt.load());
  CHECK(destroyed.load() == kRounds);
}

TEST_CASE("chain_remove_while_a_call_is_blocked_inside") {
  struct Guard {
    std::atomic<bool>* destroyed;
    ~Guard() { *destroyed = true; }
  };
  std::atomic<bool> destroyed{false};
  std::atomic<bool> inside{false};
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  zpoline::HookChain chain;
  auto session = zpoline_test::install_or_skip(chain);
  auto handle = chain.add([guard = std::shared_ptr<Guard>(new Guard{&destroyed}), &inside,
                           &pipe_fds](zpoline::Syscall& call) {
    if (call.number() == SYS_read && call.arg(0) == pipe_fds[0]) inside = true;
    return call.forward();
  });
  std::thread reader([&] {
    char byte;
    CHECK(read(pipe_fds[0], &byte, 1) == 1);
  });
  while (!inside) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto start = std::chrono::steady_clock::now();
  handle.remove();  // returns at once; the hook stays alive while the read is inside it
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  CHECK_FALSE(destroyed.load());
  CHECK(write(pipe_fds[1], "x", 1) == 1);
  reader.join();
  chain.synchronize();
  CHECK(destroyed.load());
  CHECK_THROWS_AS((void)chain.add({}), zpoline::Error);
}
