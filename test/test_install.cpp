// The public API end to end: install, the hook's view of calls, emulation, argument changes,
// bypass, detach, errors and options. Each TEST_CASE installs and runs in its own process.
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"
#include "zpoline/zpoline.hpp"

using zpoline_test::install_or_skip;

namespace {

// Calls seen by the hook, per syscall number.
struct Tally {
  std::array<std::atomic<long>, 1024> by_number{};
  long operator[](long number) const { return by_number[number].load(); }
  void count(long number) {
    if (number >= 0 && number < 1024) ++by_number[number];
  }
};

zpoline::Hook counting_hook(Tally& tally) {
  return [&tally](zpoline::Syscall& call) {
    tally.count(call.number());
    return call.forward();
  };
}

long real_getpid() {
  return zpoline::raw_syscall(SYS_getpid);
}

const zpoline::ImageStats* find_image(const zpoline::InstallStats& stats, const char* name) {
  for (const auto& image : stats.images) {
    if (image.path.find(name) != std::string::npos) return &image;
  }
  return nullptr;
}

// glibc's getpid is `mov $39,%eax; syscall; ret`: the address of its syscall instruction (before
// install) or of its rewritten call (after).
const unsigned char* find_getpid_site() {
  const auto* code = reinterpret_cast<const unsigned char*>(&getpid);
  for (int i = 0; i < 16; ++i) {
    if ((code[i] == 0x0f && code[i + 1] == 0x05) || (code[i] == 0xff && code[i + 1] == 0xd0)) {
      return code + i;
    }
  }
  return nullptr;
}

}  // namespace

TEST_CASE("libc_wrappers_reach_hook") {
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));

  CHECK(getpid() == real_getpid());
  CHECK(tally[SYS_getpid] == 1);

  const int fd = open("/proc/self/stat", O_RDONLY);
  REQUIRE(fd >= 0);
  char buffer[64];
  CHECK(read(fd, buffer, sizeof buffer) > 0);
  CHECK(close(fd) == 0);
  CHECK(tally[SYS_openat] == 1);
  CHECK(tally[SYS_read] == 1);
  CHECK(tally[SYS_close] == 1);

  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  CHECK(write(pipe_fds[1], "abc", 3) == 3);
  CHECK(tally[SYS_write] == 1);
  CHECK(tally[SYS_pipe2] + tally[SYS_pipe] == 1);

  // The generic wrapper, too.
  CHECK(syscall(SYS_getppid) == getppid());
  CHECK(tally[SYS_getppid] == 2);
}

TEST_CASE("hook_result_replaces_syscall") {
  auto session = install_or_skip([](zpoline::Syscall& call) -> long {
    if (call.number() == SYS_getpid) return 4242;
    if (auto open = call.as<zpoline::sys::openat>()) {
      if (std::strcmp(open->pathname(), "/zpoline/emulated") == 0) return -ENOENT;
      if (std::strcmp(open->pathname(), "/etc/hostname") == 0) return -EACCES;
    }
    return call.forward();
  });
  CHECK(getpid() == 4242);
  CHECK(real_getpid() != 4242);
  errno = 0;
  CHECK(open("/etc/hostname", O_RDONLY) == -1);
  CHECK(errno == EACCES);
  FILE* file = std::fopen("/zpoline/emulated", "r");
  CHECK(file == nullptr);
  CHECK(errno == ENOENT);
}

TEST_CASE("changed_arguments_take_effect") {
  auto session = install_or_skip([](zpoline::Syscall& call) -> long {
    if (auto write = call.as<zpoline::sys::write>()) {
      if (write->count() == 5 && std::memcmp(write->buf(), "hello", 5) == 0) {
        static const char replacement[] = "HELLO, world";
        write->set_buf(replacement);
        write->set_count(12);
      }
    }
    return call.forward();
  });
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  CHECK(write(fds[1], "hello", 5) == 12);
  char buffer[32] = {};
  CHECK(read(fds[0], buffer, sizeof buffer) == 12);
  CHECK(std::string(buffer) == "HELLO, world");
}

TEST_CASE("hook_may_print_allocate_and_lock") {
  std::mutex lock;
  std::vector<std::string> log;
  std::atomic<long> hook_calls{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    ++hook_calls;
    const long result = call.forward();
    std::lock_guard guard(lock);
    log.push_back(std::string(call.name()) + " = " + std::to_string(result));
    std::fprintf(stderr, "[hook] %s\n", log.back().c_str());  // a write the hook does not see
    return result;
  });
  const long calls_before = hook_calls.load();
  getpid();
  getppid();
  CHECK(hook_calls.load() - calls_before == 2);
  std::lock_guard guard(lock);
  REQUIRE(log.size() >= 2);
  CHECK(log[log.size() - 2] == "getpid = " + std::to_string(real_getpid()));
  CHECK(log.back().rfind("getppid = ", 0) == 0);
}

TEST_CASE("scoped_bypass_nests") {
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  {
    zpoline::ScopedBypass outer;
    getpid();
    {
      zpoline::ScopedBypass inner;
      getpid();
    }
    getpid();  // still bypassed: the outer guard is alive
  }
  CHECK(tally[SYS_getpid] == 0);
  getpid();
  CHECK(tally[SYS_getpid] == 1);
}

TEST_CASE("session_end_detaches_and_allows_a_new_install") {
  Tally first, second;
  {
    auto session = install_or_skip(counting_hook(first));
    getpid();
    CHECK(session.active());
  }
  getpid();
  CHECK(first[SYS_getpid] == 1);
  CHECK(getpid() == real_getpid());

  auto session = zpoline::install(counting_hook(second));
  getpid();
  CHECK(second[SYS_getpid] == 1);
  CHECK(first[SYS_getpid] == 1);

  zpoline::Session moved = std::move(session);
  CHECK_FALSE(session.active());
  CHECK(moved.active());
  moved.detach();
  getpid();
  CHECK(second[SYS_getpid] == 1);
}

TEST_CASE("second_install_fails_cleanly") {
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  try {
    auto again = zpoline::install([](zpoline::Syscall& call) { return call.forward(); });
    FAIL("a second install succeeded");
  } catch (const zpoline::Error& error) {
    CHECK(error.code() == zpoline::ErrorCode::already_installed);
    CHECK(std::string(error.what()).find("already installed") != std::string::npos);
  }
  getpid();
  CHECK(tally[SYS_getpid] == 1);  // the first hook is still in place
}

TEST_CASE("invalid_options_are_rejected") {
  auto expect_invalid = [](zpoline::Options options, const char* fragment) {
    try {
      auto session = install_or_skip([](zpoline::Syscall& call) { return call.forward(); },
                                     std::move(options));
      FAIL("install accepted invalid options");
    } catch (const zpoline::Error& error) {
      CHECK(error.code() == zpoline::ErrorCode::invalid_option);
      INFO(error.what());
      CHECK(std::string(error.what()).find(fragment) != std::string::npos);
    }
  };
  zpoline::Options empty_path;
  empty_path.exclude_paths = {""};
  expect_invalid(empty_path, "empty entry");
  zpoline::Options reversed_range;
  reversed_range.exclude_ranges = {{0x2000, 0x1000}};
  expect_invalid(reversed_range, "reversed");
  setenv("ZPOLINE_EXCLUDE", "libc.so.6::libm.so.6", 1);
  expect_invalid({}, "entry 2 is empty");
  unsetenv("ZPOLINE_EXCLUDE");
  setenv("ZPOLINE_EXLCUDE", "libc.so.6", 1);
  expect_invalid({}, "unknown environment variable ZPOLINE_EXLCUDE");
  unsetenv("ZPOLINE_EXLCUDE");
  try {
    auto session = zpoline::install(zpoline::Hook{});
    FAIL("install accepted an empty hook");
  } catch (const zpoline::Error& error) {
    CHECK(error.code() == zpoline::ErrorCode::invalid_option);
  }
  // After all the refusals, a valid install works.
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  getpid();
  CHECK(tally[SYS_getpid] == 1);
}

TEST_CASE("exclusion_by_environment_leaves_libc_alone") {
  setenv("ZPOLINE_EXCLUDE", "libc.so.6:/nonexistent/libfoo.so", 1);
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  const zpoline::ImageStats* libc = find_image(session.stats(), "libc.so.6");
  REQUIRE(libc != nullptr);
  CHECK(libc->excluded);
  CHECK(libc->sites_rewritten == 0);
  getpid();
  CHECK(tally[SYS_getpid] == 0);
}

TEST_CASE("exclusion_by_path_option_and_by_address_range") {
  // The range covering libc getpid's syscall only: that one site stays, the rest of libc is
  // rewritten.
  const auto site = reinterpret_cast<std::uintptr_t>(find_getpid_site());
  REQUIRE(site != 0);
  zpoline::Options options;
  options.exclude_paths = {"libm.so.6"};
  options.exclude_ranges = {{site, site + 2}};
  Tally tally;
  auto session = install_or_skip(counting_hook(tally), options);
  const zpoline::ImageStats* libc = find_image(session.stats(), "libc.so.6");
  REQUIRE(libc != nullptr);
  CHECK(libc->skipped_excluded >= 1);
  CHECK(libc->sites_rewritten > 100);
  if (const zpoline::ImageStats* libm = find_image(session.stats(), "libm.so.6")) {
    CHECK(libm->excluded);
  }
  getpid();
  getppid();
  CHECK(tally[SYS_getpid] == 0);
  CHECK(tally[SYS_getppid] == 1);
}

TEST_CASE("restore_on_detach_puts_the_original_bytes_back") {
  const unsigned char* site = find_getpid_site();
  REQUIRE(site != nullptr);
  {
    Tally tally;
    zpoline::Options options;
    options.restore_on_detach = true;
    auto session = install_or_skip(counting_hook(tally), options);
    CHECK(site[0] == 0xff);
    CHECK(site[1] == 0xd0);
    getpid();
    CHECK(tally[SYS_getpid] == 1);
  }
  CHECK(site[0] == 0x0f);
  CHECK(site[1] == 0x05);
  CHECK(getpid() == real_getpid());
}

TEST_CASE("statistics_describe_each_image") {
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  const zpoline::InstallStats& stats = session.stats();
  const zpoline::ImageStats* libc = find_image(stats, "libc.so.6");
  REQUIRE(libc != nullptr);
  CHECK(libc->sites_rewritten > 100);
  CHECK(libc->code_bytes > 100000);
  CHECK(libc->bytes_decoded > 0);
  CHECK(libc->time.count() > 0);
  CHECK(find_image(stats, "ld-linux-x86-64.so.2") != nullptr);
  CHECK(stats.sites_rewritten() >= libc->sites_rewritten);
  CHECK(stats.total_time >= libc->time);
  for (const auto& image : stats.images) CHECK(image.path.find("vdso") == std::string::npos);
}

TEST_CASE("raw_syscall_skips_the_hook") {
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  CHECK(zpoline::raw_syscall(SYS_getpid) == getpid());
  CHECK(tally[SYS_getpid] == 1);
  CHECK(zpoline::raw_syscall(SYS_close, -1) == -EBADF);
  CHECK(tally[SYS_close] == 0);
}

TEST_CASE("threads_keep_working_while_install_runs") {
  // 8 threads make syscalls in a loop, checking every result, while the main thread installs.
  constexpr int kThreads = 8;
  std::atomic<bool> stop{false};
  std::atomic<long> wrong{0}, done{0};
  const long pid = real_getpid();
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::vector<std::thread> threads;
  std::atomic<int> started{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ++started;
      char byte = static_cast<char>('a' + t);
      while (!stop.load(std::memory_order_relaxed)) {
        if (getpid() != pid) ++wrong;
        if (t % 2 == 0) {
          const int fd = open("/proc/self/stat", O_RDONLY);
          char buffer[16];
          if (fd < 0 || read(fd, buffer, sizeof buffer) <= 0 || close(fd) != 0) ++wrong;
        } else if (write(fds[1], &byte, 1) != 1 || read(fds[0], &byte, 1) != 1) {
          ++wrong;
        }
        ++done;
      }
    });
  }
  while (started.load() < kThreads) sched_yield();
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  const long done_at_install = done.load();
  // Let every thread make hooked calls; counted progress, no sleeping.
  while (tally[SYS_getpid] < 20 * kThreads || done.load() < done_at_install + 1000) sched_yield();
  stop = true;
  for (auto& thread : threads) thread.join();
  CHECK(wrong.load() == 0);
  CHECK(tally[SYS_getpid] >= 20 * kThreads);
}

TEST_CASE("hooks_run_concurrently_on_many_threads") {
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  constexpr int kThreads = 8, kCalls = 2000;
  std::vector<std::thread> threads;
  std::atomic<long> wrong{0};
  const long pid = real_getpid();
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kCalls; ++i) {
        if (getpid() != pid) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(wrong.load() == 0);
  CHECK(tally[SYS_getpid] == kThreads * kCalls);
}

TEST_CASE("fork_child_stays_hooked") {
  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const long before = tally[SYS_getpid];
    const bool ok = getpid() == zpoline::raw_syscall(SYS_getpid) && tally[SYS_getpid] == before + 1;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(tally[SYS_wait4] == 1);
}

// A second install that excludes what the first rewrote: those sites get their instructions
// back (libc still reached the hook, while stats() said it was excluded).
TEST_CASE("reinstall_applies_new_exclusions") {
  Tally tally;
  {
    auto session = install_or_skip(counting_hook(tally));
    getpid();
    CHECK(tally[SYS_getpid] == 1);
  }  // a plain detach: the sites stay rewritten
  zpoline::Options options;
  options.exclude_paths = {"libc.so.6"};
  auto session = install_or_skip(counting_hook(tally), options);
  const zpoline::ImageStats* libc = find_image(session.stats(), "libc.so.6");
  REQUIRE(libc != nullptr);
  CHECK(libc->excluded);
  const long before = tally[SYS_getpid];
  CHECK(getpid() == zpoline::raw_syscall(SYS_getpid));
  CHECK(tally[SYS_getpid] == before);
  // And back: a third install without the exclusion rewrites libc again.
  session.detach();
  auto third = install_or_skip(counting_hook(tally));
  getpid();
  CHECK(tally[SYS_getpid] == before + 1);
}

// A fork child's records of the parent's threads are freed: a thread the child starts no longer
// shares the forking thread's record (its "inside the hook" flag), so that when the child ends
// its Session while that thread waits inside the hook, the hook is kept for it (it was destroyed
// under it before).
TEST_CASE("fork_child_frees_the_parents_thread_records") {
  struct State {
    std::atomic<int> magic{0x600d};
    ~State() { magic = 0xdead; }
  };
  auto state = std::make_shared<State>();
  // Threads of the parent made hooked calls: they have records.
  for (int t = 0; t < 3; ++t) std::thread([] { getppid(); }).join();
  auto* session = new zpoline::Session(install_or_skip([state](zpoline::Syscall& call) {
    const long result = call.forward();
    if (call.number() == SYS_read && state->magic != 0x600d) {
      static const char message[] = "hook state destroyed while a thread was inside the hook\n";
      zpoline::raw_syscall(SYS_write, 2, reinterpret_cast<long>(message), sizeof message - 1);
      zpoline::raw_syscall(SYS_exit_group, 3);
    }
    return result;
  }));
  state.reset();
  std::thread([] { getppid(); }).join();
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    int fds[2];
    if (pipe(fds) != 0) _exit(4);
    std::atomic<long> reader_tid{0};
    std::thread reader([&] {
      char byte;
      getppid();
      reader_tid = zpoline::raw_syscall(SYS_gettid);
      [[maybe_unused]] const ssize_t n = read(fds[0], &byte, 1);
    });
    while (reader_tid == 0) sched_yield();
    // Until the reader waits in the kernel, inside the hook.
    if (!zpoline_test::wait_until_blocked_in(reader_tid, SYS_read)) _exit(5);
    getppid();
    delete session;  // detach while the reader is inside the hook
    [[maybe_unused]] const ssize_t n = write(fds[1], "x", 1);
    reader.join();
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  delete session;
}
