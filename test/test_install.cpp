// The public API end to end: install, the hook's view of calls, emulation, argument changes,
// bypass, detach, errors and options. Each TEST_CASE installs and runs in its own process.
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "rewriting/rewriter.hpp"
#include "support.hpp"
#include "trampoline/sled.hpp"
#include "trampoline/trampoline.hpp"
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
    if ((code[i] == 0x0f && code[i + 1] == 0x05) || (code[i] == 0xff && code[i + 1] == 0xd0) ||
        code[i] == 0xeb) {
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
    CHECK(zpoline_test::is_rewritten_site(site));
    getpid();
    CHECK(tally[SYS_getpid] == 1);
  }
  CHECK(site[0] == 0x0f);
  CHECK(site[1] == 0x05);
  CHECK(!zpoline_test::is_rewritten_site(site));
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

// ---------------------------------------------------------------------------------------------
// The errors install() reports when the machine or the process cannot support it. Each test
// case runs in its own process; the seccomp filters and capability changes below stay with that
// process.
// ---------------------------------------------------------------------------------------------

namespace {

// Installs a seccomp filter (for good: filters cannot be removed) under which system call
// `number` fails with `error` when its argument `arg` (low 32 bits) matches: equals `value`
// (`any_bit` false), or has any bit of `value` (`any_bit` true). Other calls are allowed.
void fail_calls_with(int number, int arg, std::uint32_t value, bool any_bit, int error) {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<std::uint32_t>(number), 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
               static_cast<std::uint32_t>(offsetof(seccomp_data, args) + 8 * arg)),
      BPF_JUMP(BPF_JMP | (any_bit ? BPF_JSET : BPF_JEQ) | BPF_K, value, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<std::uint32_t>(error) & 0xffff)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{sizeof filter / sizeof filter[0], filter};
  REQUIRE(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  REQUIRE(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0);
}

// Runs install(pass-through hook, options) and returns the error it threw; fails the test case if
// it did not throw.
zpoline::Error install_error(zpoline::Options options = {}) {
  try {
    auto session =
        zpoline::install([](zpoline::Syscall& call) { return call.forward(); }, std::move(options));
  } catch (const zpoline::Error& error) {
    return error;
  }
  FAIL("install() succeeded");
  return zpoline::Error(zpoline::ErrorCode::invalid_option, "");
}

bool contains(const std::string& text, const char* fragment) {
  return text.find(fragment) != std::string::npos;
}

// The process still works after a failed install: libc's calls return what the kernel returns.
void check_process_works() {
  CHECK(getpid() == real_getpid());
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  CHECK(write(fds[1], "ok", 2) == 2);
  char buffer[2] = {};
  CHECK(read(fds[0], buffer, 2) == 2);
  CHECK(std::memcmp(buffer, "ok", 2) == 0);
  close(fds[0]);
  close(fds[1]);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) _exit(getpid() == zpoline::raw_syscall(SYS_getpid) ? 42 : 1);
  int status = 0;
  CHECK(waitpid(child, &status, 0) == child);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 42));
}

std::string first_line(const char* path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

[[noreturn]] void skip(const std::string& why) {
  std::fprintf(stderr, "SKIP: %s\n", why.c_str());
  std::_Exit(77);
}

}  // namespace

// Something already mapped at address 0, or at every place the relay may go: install() says so and
// maps nothing, so that once a place is free again an install succeeds.
TEST_CASE("page_zero_in_use_is_reported") {
  void* zero =
      mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (zero == MAP_FAILED) {
    skip(std::string("this process may not map address 0 itself (") + std::strerror(errno) +
         "; vm.mmap_min_addr is " + first_line("/proc/sys/vm/mmap_min_addr") +
         "), so it cannot put something there first");
  }
  REQUIRE(zero == nullptr);
  zpoline::Options page_zero;
  page_zero.mechanism = zpoline::Mechanism::page_zero;
  page_zero.use_environment = false;  // also where the suite runs with ZPOLINE_MECHANISM=near
  zpoline::Error error = install_error(page_zero);
  CHECK(error.code() == zpoline::ErrorCode::page_zero_in_use);
  INFO(error.what());
  CHECK(contains(error.what(), "address 0 is already mapped"));
  CHECK(contains(error.what(), "cannot be placed there"));
  check_process_works();
  {
    // The automatic choice takes the near mechanism instead, and leaves page 0 alone.
    Tally tally;
    auto session = install_or_skip(counting_hook(tally));
    CHECK(session.mechanism() == zpoline::Mechanism::near);
    getpid();
    CHECK(tally[SYS_getpid] == 1);
    std::ifstream maps("/proc/self/maps");  // what is at 0 is still this test's mapping
    std::string first;
    std::getline(maps, first);
    CHECK(first.rfind("00000000-00001000 r--p", 0) == 0);
  }
  REQUIRE(munmap(zero, 4096) == 0);

  // Every place the relay may go taken (one of its two pages is enough): install() says so and
  // gives back page 0, which it had reserved first.
  using zpoline::detail::kRelaySize;
  const auto places = zpoline::detail::relay_placements();
  std::vector<void*> taken;
  for (const auto place : places) {
    void* wanted = reinterpret_cast<void*>(place.base() + (taken.size() % 2) * 4096);
    void* page =
        mmap(wanted, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    REQUIRE(page == wanted);
    taken.push_back(page);
  }
  error = install_error(page_zero);
  CHECK(error.code() == zpoline::ErrorCode::page_zero_in_use);
  INFO(error.what());
  CHECK(contains(error.what(), "the trampoline's relay needs two free pages at one of"));
  CHECK(contains(error.what(), "all of them are already mapped"));
  void* probe =
      mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  CHECK(probe == nullptr);
  if (probe == nullptr) munmap(probe, 4096);
  check_process_works();

  // With only the preferred place and the relay's old fixed address (0x06060000, where a non-PIE
  // program's heap can start) still taken, install() uses the next place.
  for (std::size_t i = 0; i < places.size(); ++i) {
    if (i != 0 && places[i].base() != 0x06060000) REQUIRE(munmap(taken[i], 4096) == 0);
  }
  Tally tally;
  auto session = install_or_skip(counting_hook(tally), page_zero);
  CHECK(session.mechanism() == zpoline::Mechanism::page_zero);
  CHECK(zpoline::detail::trampoline_relay_base() == places[1].base());
  getpid();
  CHECK(tally[SYS_getpid] == 1);
}

// A non-PIE program's heap starts anywhere in the first GiB above the executable, and can have
// grown over the place the relay prefers before install(): here the whole first GiB but the
// executable, the libraries and the stacks is taken (as by such a heap) except one place.
TEST_CASE("the_relay_finds_the_free_place_left_by_a_low_heap") {
  const auto places = zpoline::detail::relay_placements();
  const std::uintptr_t free_place = places[places.size() / 2].base();
  constexpr std::uintptr_t kLow = 0x01000000;
  constexpr std::uintptr_t kGiB = std::uintptr_t{1} << 30;
  void* below = mmap(reinterpret_cast<void*>(kLow), free_place - kLow, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  const std::uintptr_t above_start = free_place + zpoline::detail::kRelaySize;
  void* above = mmap(reinterpret_cast<void*>(above_start), kGiB - above_start, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (below != reinterpret_cast<void*>(kLow) || above != reinterpret_cast<void*>(above_start)) {
    skip("something of this process is already mapped in the first GiB (a non-PIE test binary?)");
  }
  Tally tally;
  zpoline::Options page_zero;
  page_zero.mechanism = zpoline::Mechanism::page_zero;
  page_zero.use_environment = false;  // also where the suite runs with ZPOLINE_MECHANISM=near
  auto session = install_or_skip(counting_hook(tally), page_zero);
  CHECK(zpoline::detail::trampoline_relay_base() == free_place);
  getpid();
  syscall(SYS_getppid);
  CHECK(tally[SYS_getpid] == 1);
  CHECK(tally[SYS_getppid] == 1);
}

// An unprivileged process: without CAP_SYS_RAWIO, the kernel refuses addresses below
// vm.mmap_min_addr, and install() names both ways out.
TEST_CASE("page_zero_refused_without_cap_sys_rawio") {
  const std::string min_addr = first_line("/proc/sys/vm/mmap_min_addr");
  if (min_addr.empty() || std::stoul(min_addr) == 0) {
    skip("vm.mmap_min_addr is " + (min_addr.empty() ? std::string("unreadable") : min_addr) +
         ": any process may map address 0 here, so there is no refusal to see");
  }
  // Drop CAP_SYS_RAWIO for good, as an unprivileged process never had it.
  REQUIRE(zpoline_test::drop_cap_sys_rawio());
  // The kernel now refuses this process address 0 itself.
  void* zero =
      mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  CHECK(zero == MAP_FAILED);
  if (zero != MAP_FAILED) munmap(zero, 4096);

  zpoline::Options page_zero;
  page_zero.mechanism = zpoline::Mechanism::page_zero;
  page_zero.use_environment = false;  // also where the suite runs with ZPOLINE_MECHANISM=near
  const zpoline::Error error = install_error(page_zero);
  CHECK(error.code() == zpoline::ErrorCode::page_zero_refused);
  INFO(error.what());
  CHECK(contains(error.what(), "refused to map the trampoline at address 0"));
  CHECK(contains(error.what(), ("vm.mmap_min_addr is " + min_addr).c_str()));
  CHECK(contains(error.what(), "sysctl -w vm.mmap_min_addr=0"));
  CHECK(contains(error.what(), "CAP_SYS_RAWIO (this process does not have it)"));
  // Nothing was left mapped: the relay's first place is free.
  void* wanted = reinterpret_cast<void*>(zpoline::detail::relay_placements().front().base());
  void* relay = mmap(wanted, zpoline::detail::kRelaySize, PROT_READ,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  CHECK(relay == wanted);
  check_process_works();
}

// Syscall User Dispatch missing (a kernel before 5.11 or without CONFIG_SYSCALL_USER_DISPATCH,
// where prctl(PR_SET_SYSCALL_USER_DISPATCH) fails with EINVAL, as a seccomp filter makes it here):
// the modes that need it are refused, and eager mode still installs.
TEST_CASE("modes_needing_syscall_user_dispatch_are_unsupported_without_it") {
  constexpr int kSetSyscallUserDispatch = 59;  // PR_SET_SYSCALL_USER_DISPATCH
  fail_calls_with(SYS_prctl, 0, kSetSyscallUserDispatch, false, EINVAL);
  CHECK(prctl(kSetSyscallUserDispatch, 0, 0, 0, 0) == -1);  // PR_SYS_DISPATCH_OFF
  CHECK(errno == EINVAL);
  for (const zpoline::Mode mode : {zpoline::Mode::exhaustive, zpoline::Mode::lazy}) {
    zpoline::Options options;
    options.mode = mode;
    const zpoline::Error error = install_error(options);
    CHECK(error.code() == zpoline::ErrorCode::unsupported);
    INFO(error.what());
    CHECK(contains(error.what(), "need Syscall User Dispatch"));
    CHECK(contains(error.what(), "use Mode::eager"));
  }
  setenv("ZPOLINE_MODE", "exhaustive", 1);
  CHECK(install_error().code() == zpoline::ErrorCode::unsupported);
  unsetenv("ZPOLINE_MODE");
  check_process_works();

  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  CHECK(session.mode() == zpoline::Mode::eager);
  getpid();
  CHECK(tally[SYS_getpid] == 1);
}

// Options::route_vdso where the vDSO's code cannot be made writable (a seccomp filter makes
// mprotect of the vDSO fail with EPERM, as a hardened kernel's W^X policy would; other code can
// still be rewritten): install() fails with `unsupported` and leaves the process as a detach
// does (the hook retracted, rewritten sites going straight to the kernel), and an install
// without the option works.
TEST_CASE("route_vdso_is_unsupported_where_the_vdso_cannot_be_written") {
  const auto vdso = static_cast<std::uint64_t>(getauxval(AT_SYSINFO_EHDR));
  if (vdso == 0) {
    MESSAGE("this process has no vDSO");
    std::exit(77);
  }
  // mprotect(vdso, ...) fails; every other call is allowed.
  const auto low = static_cast<std::uint32_t>(vdso);
  const auto high = static_cast<std::uint32_t>(vdso >> 32);
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mprotect, 0, 5),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, low, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args) + 4),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, high, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{sizeof filter / sizeof filter[0], filter};
  REQUIRE(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  REQUIRE(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0);

  zpoline::Options options;
  options.route_vdso = true;
  const zpoline::Error error = install_error(options);
  CHECK(error.code() == zpoline::ErrorCode::unsupported);
  INFO(error.what());
  CHECK(contains(error.what(), "route_vdso"));
  CHECK(contains(error.what(), "could not be made writable"));
  check_process_works();

  Tally tally;
  auto session = install_or_skip(counting_hook(tally));
  getpid();
  CHECK(tally[SYS_getpid] == 1);
  timespec now{};
  CHECK(clock_gettime(CLOCK_MONOTONIC, &now) == 0);
  CHECK(tally[SYS_clock_gettime] == 0);  // the vDSO's, not routed
}

// Code pages that cannot be made writable (a seccomp filter makes mprotect with PROT_WRITE fail
// with EPERM, as a hardened kernel's W^X policy would): install() fails with rewrite_failed,
// naming the page and the reason, changes no code, and leaves the process working.
TEST_CASE("rewrite_failed_when_code_cannot_be_made_writable") {
  const unsigned char* site = find_getpid_site();
  REQUIRE(site != nullptr);
  REQUIRE(site[0] == 0x0f);
  fail_calls_with(SYS_mprotect, 2, PROT_WRITE, true, EPERM);
  fail_calls_with(SYS_pkey_mprotect, 2, PROT_WRITE, true, EPERM);
  for (int attempt = 0; attempt < 2; ++attempt) {  // the second: not "already installed"
    CAPTURE(attempt);
    const zpoline::Error error = install_error();
    CHECK(error.code() == zpoline::ErrorCode::rewrite_failed);
    INFO(error.what());
    // A code page, or with the near mechanism the page of a site's trampoline.
    CHECK((contains(error.what(), "could not make writable the code page at 0x") ||
           contains(error.what(), "could not make writable the trampoline page at 0x")));
    CHECK(contains(error.what(), std::strerror(EPERM)));
  }
  CHECK(site[0] == 0x0f);  // libc's getpid is still `syscall`
  CHECK(site[1] == 0x05);
  check_process_works();
}

// ---------------------------------------------------------------------------------------------
// Without page 0 (the near mechanism): a process that may not map address 0 is hooked all the
// same, in every mode. Each scenario runs in a child made unprivileged for real before install().
// ---------------------------------------------------------------------------------------------

namespace {

int scenario_failures = 0;
void expect(bool condition, const char* what) {
  if (condition) return;
  std::fprintf(stderr, "FAILED: %s\n", what);
  ++scenario_failures;
}

// In a child that can no longer map page 0: installs with the automatic choice and a hook that
// does what real hooks do (allocates, formats, makes its own system calls), then checks that
// every kind of call reaches it, that page 0 stays unmapped (NULL arguments fail as without the
// library), and that threads, fork, vfork+exec and signal handlers work.
void run_unprivileged_scenario(zpoline::Mode mode) {
  expect(zpoline_test::page_zero_is_refused(), "the kernel refuses page 0 to this process");
  Tally tally;
  std::atomic<long> own_calls{0};
  zpoline::Options options;
  options.mode = mode;
  options.use_environment = false;
  auto session = zpoline::install(
      [&](zpoline::Syscall& call) {
        tally.count(call.number());
        std::string note = "call " + std::to_string(call.number());  // allocates
        if (note.size() > 5 && getppid() > 0) ++own_calls;           // its own system call
        return call.forward();
      },
      options);
  expect(session.mechanism() == zpoline::Mechanism::near, "the automatic choice is near");
  const zpoline::ImageStats* libc = find_image(session.stats(), "libc.so.6");
  if (mode != zpoline::Mode::lazy) {
    expect(libc != nullptr && libc->sites_through_padding + libc->sites_through_moved_instruction ==
                                  libc->sites_rewritten,
           "libc's sites go through padding or a moved instruction");
    expect(libc != nullptr && libc->sites_rewritten > 400, "most of libc's sites are rewritten");
    expect(libc != nullptr && libc->sites_through_page_zero == 0, "no site uses page 0");
  }
  // Plain calls, from several threads at once.
  const long getpid_before = tally[SYS_getpid];
  expect(getpid() == real_getpid(), "getpid works");
  expect(tally[SYS_getpid] == getpid_before + 1, "getpid reaches the hook once");
  std::vector<std::thread> threads;
  const long threads_before = tally[SYS_getpid];
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([] {
      for (int i = 0; i < 250; ++i) getpid();
    });
  }
  for (std::thread& thread : threads) thread.join();
  expect(tally[SYS_getpid] == threads_before + 1000, "every thread's getpid reaches the hook");
  expect(own_calls.load() > 1000, "the hook's own system calls work");
  // NULL arguments: page 0 is not mapped, so the kernel says EFAULT and a read faults.
  int fds[2];
  expect(pipe(fds) == 0, "pipe");
  const long writes_before = tally[SYS_write];
  errno = 0;
  const void* volatile null_buffer = nullptr;  // hidden from the compiler's nonnull check
  expect(write(fds[1], null_buffer, 64) == -1 && errno == EFAULT, "write(fd, NULL, 64) is EFAULT");
  expect(tally[SYS_write] == writes_before + 1, "that write reaches the hook");
  // fork: the child is hooked too; a NULL read kills it with SIGSEGV as without the library.
  pid_t child = fork();
  if (child == 0) {
    const long before = tally[SYS_getpid];
    getpid();
    if (tally[SYS_getpid] != before + 1) _exit(3);
    signal(SIGSEGV, SIG_DFL);  // the test framework's handler would report a crash
    // A read at address 0 (in assembly: in C++ it would be undefined behaviour).
    asm volatile("movl 0, %%eax" ::: "eax", "memory");
    _exit(4);
  }
  int status = 0;
  expect(waitpid(child, &status, 0) == child, "waitpid");
  expect(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV,
         "the fork child was hooked, then its NULL read raised SIGSEGV");
  // vfork and exec (posix_spawn), through the hook.
  const long clones_before = tally[SYS_clone] + tally[SYS_clone3] + tally[SYS_vfork];
  child = 0;
  char* argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"), const_cast<char*>("exit 7"),
                  nullptr};
  expect(posix_spawn(&child, "/bin/sh", nullptr, nullptr, argv, environ) == 0, "posix_spawn");
  expect(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 7,
         "the spawned shell ran and exited 7");
  expect(tally[SYS_clone] + tally[SYS_clone3] + tally[SYS_vfork] > clones_before,
         "the spawn's clone reached the hook");
  // A signal handler's call reaches the hook.
  static std::atomic<int> handled{0};
  signal(SIGUSR1, [](int) {
    getuid();
    ++handled;
  });
  const long handler_before = tally[SYS_getuid];
  raise(SIGUSR1);
  expect(handled.load() == 1 && tally[SYS_getuid] == handler_before + 1,
         "the signal handler's getuid reached the hook");
  // Nothing of the library at address 0.
  std::ifstream maps("/proc/self/maps");
  std::string first;
  std::getline(maps, first);
  expect(first.rfind("00000000-", 0) != 0, "nothing is mapped at address 0");
  close(fds[0]);
  close(fds[1]);
}

enum class Privilege { without_cap_sys_rawio, as_nobody };

// Runs the scenario in a child per mode; each child gives up its privilege first.
void check_unprivileged_in_every_mode(Privilege privilege) {
  for (const zpoline::Mode mode :
       {zpoline::Mode::eager, zpoline::Mode::exhaustive, zpoline::Mode::lazy}) {
    CAPTURE(static_cast<int>(mode));
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      const bool dropped = privilege == Privilege::without_cap_sys_rawio
                               ? zpoline_test::drop_cap_sys_rawio()
                               : zpoline_test::become_nobody();
      if (!dropped) _exit(2);
      if (!zpoline_test::page_zero_is_refused()) _exit(77);
      try {
        run_unprivileged_scenario(mode);
      } catch (const zpoline::Error& error) {
        std::fprintf(stderr, "FAILED: install threw: %s\n", error.what());
        _exit(4);
      }
      _exit(scenario_failures == 0 ? 0 : 1);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
      skip("vm.mmap_min_addr is 0 here: a process without privilege may map page 0");
    }
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
}

}  // namespace

TEST_CASE("without_cap_sys_rawio_the_near_mechanism_hooks_every_kind_of_call") {
  check_unprivileged_in_every_mode(Privilege::without_cap_sys_rawio);
}

TEST_CASE("as_user_nobody_the_near_mechanism_hooks_every_kind_of_call") {
  check_unprivileged_in_every_mode(Privilege::as_nobody);
}

// As root, Mechanism::near (or ZPOLINE_MECHANISM=near) leaves page 0 unmapped; page_zero maps it.
// Invalid values are refused with a clear error.
TEST_CASE("mechanism_is_chosen_by_option_and_environment") {
  Tally tally;
  {
    zpoline::Options options;
    options.mechanism = zpoline::Mechanism::near;
    options.use_environment = false;
    auto session = install_or_skip(counting_hook(tally), options);
    CHECK(session.mechanism() == zpoline::Mechanism::near);
    getpid();
    CHECK(tally[SYS_getpid] == 1);
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    errno = 0;
    const void* volatile null_buffer = nullptr;  // hidden from the compiler's nonnull check
    CHECK(write(fds[1], null_buffer, 64) == -1);
    CHECK(errno == EFAULT);
    close(fds[0]);
    close(fds[1]);
    CHECK(!zpoline::detail::trampoline_is_mapped());
  }
  const auto expect_invalid = [](zpoline::Options options, const char* fragment) {
    try {
      auto session = zpoline::install([](zpoline::Syscall& call) { return call.forward(); },
                                      std::move(options));
      FAIL("install accepted an invalid mechanism");
    } catch (const zpoline::Error& error) {
      CHECK(error.code() == zpoline::ErrorCode::invalid_option);
      INFO(error.what());
      CHECK(contains(error.what(), fragment));
    }
  };
  zpoline::Options bad_mechanism;
  bad_mechanism.mechanism = static_cast<zpoline::Mechanism>(42);
  bad_mechanism.use_environment = false;
  expect_invalid(bad_mechanism, "Options::mechanism is 42");
  zpoline::Options bad_mode;
  bad_mode.mode = static_cast<zpoline::Mode>(-1);
  bad_mode.use_environment = false;
  expect_invalid(bad_mode, "Options::mode is -1");
  setenv("ZPOLINE_MECHANISM", "page0", 1);
  expect_invalid({}, "ZPOLINE_MECHANISM=\"page0\" is not a mechanism");
  // The environment overrides the option: page_zero asked for, near given.
  setenv("ZPOLINE_MECHANISM", "near", 1);
  zpoline::Options page_zero;
  page_zero.mechanism = zpoline::Mechanism::page_zero;
  {
    auto session = install_or_skip(counting_hook(tally), page_zero);
    CHECK(session.mechanism() == zpoline::Mechanism::near);
  }
  unsetenv("ZPOLINE_MECHANISM");
  {
    auto session = install_or_skip(counting_hook(tally), page_zero);
    CHECK(session.mechanism() == zpoline::Mechanism::page_zero);
    CHECK(zpoline::detail::trampoline_is_mapped());
    // Sites rewritten by the near session keep working beside page 0.
    const long before = tally[SYS_getpid];
    getpid();
    CHECK(tally[SYS_getpid] == before + 1);
  }
}

// Which sites the near mechanism takes, image by image, in a process with many real libraries
// loaded, against what page 0 would take (every rewritable site): the table and every site left
// alone, with the reason, are printed. libc and ld.so must be nearly complete; every site left
// alone must still be a `syscall` and be listed.
TEST_CASE("near_mechanism_coverage_of_real_libraries") {
  const char* const libraries[] = {"libpython3.11.so.1.0", "libsqlite3.so.0",  "libcrypto.so.3",
                                   "libssl.so.3",          "libz.so.1",        "libzstd.so.1",
                                   "liblzma.so.5",         "libbz2.so.1.0",    "libexpat.so.1",
                                   "libffi.so.8",          "libgnutls.so.30",  "libgmp.so.10",
                                   "libsystemd.so.0",      "libglib-2.0.so.0", "libxml2.so.2",
                                   "libpcre2-8.so.0",      "libreadline.so.8", "libtinfo.so.6",
                                   "libuuid.so.1",         "libblkid.so.1",    "libmount.so.1",
                                   "libselinux.so.1",      "libcap.so.2",      "libacl.so.1",
                                   "libkrb5.so.3",         "libunwind.so.8",   "libLLVM-15.so.1"};
  int loaded = 0;
  for (const char* library : libraries)
    loaded += dlopen(library, RTLD_NOW | RTLD_GLOBAL) != nullptr;
  MESSAGE(loaded << " of " << std::size(libraries) << " libraries loaded besides the test's own");
  zpoline::Options options;
  options.mechanism = zpoline::Mechanism::near;
  options.use_environment = false;
  Tally tally;
  auto session = install_or_skip(counting_hook(tally), options);
  REQUIRE(session.mechanism() == zpoline::Mechanism::near);
  std::size_t left_alone = 0;
  std::printf("%-45s %9s %8s %6s %5s\n", "image", "page 0", "padding", "moved", "left");
  for (const zpoline::ImageStats& image : session.stats().images) {
    const std::size_t rewritable = image.sites_rewritten + image.skipped_no_padding;
    if (rewritable == 0) continue;
    CHECK(image.sites_through_page_zero == 0);
    CHECK(image.sites_through_padding + image.sites_through_moved_instruction ==
          image.sites_rewritten);
    left_alone += image.skipped_no_padding;
    std::printf("%-45s %9zu %8zu %6zu %5zu\n", image.path.c_str(), rewritable,
                image.sites_through_padding, image.sites_through_moved_instruction,
                image.skipped_no_padding);
    const bool libc = image.path.find("/libc.so.6") != std::string::npos;
    const bool loader = image.path.find("/ld-linux-x86-64.so.2") != std::string::npos;
    if (libc) CHECK(image.sites_rewritten * 100 >= rewritable * 93);
    if (loader) CHECK(image.sites_rewritten * 100 >= rewritable * 90);
  }
  const auto unrewritten = zpoline::detail::near_unrewritten_sites();
  CHECK(unrewritten.size() == left_alone);
  for (const auto& [site, why] : unrewritten) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(site);
    CHECK((bytes[0] == 0x0f && (bytes[1] == 0x05 || bytes[1] == 0x34)));
    CHECK(!why.empty());
    Dl_info info{};
    dladdr(bytes, &info);
    std::printf("  left alone: %s+%#lx: %s\n", info.dli_fname ? info.dli_fname : "?",
                static_cast<unsigned long>(site - reinterpret_cast<std::uintptr_t>(info.dli_fbase)),
                why.c_str());
  }
  getpid();
  CHECK(tally[SYS_getpid] == 1);
}

// A site the near mechanism rewrote, restored (restore_on_detach), then rewritten by a later
// install gets the same padding slot back, still jumping to its own trampoline: a thread that
// had taken the site's jump before the restore reaches the right trampoline, and no slot is
// given to another site. Each reinstall keeps libc's count.
TEST_CASE("near_reinstall_gives_each_site_its_own_slot_back") {
  const unsigned char* site = find_getpid_site();
  REQUIRE(site != nullptr);
  zpoline::Options options;
  options.mechanism = zpoline::Mechanism::near;
  options.use_environment = false;
  options.restore_on_detach = true;
  Tally tally;
  std::size_t first_count = 0;
  unsigned char first_jump = 0;
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    {
      auto session = install_or_skip(counting_hook(tally), options);
      const zpoline::ImageStats* libc = find_image(session.stats(), "libc.so.6");
      REQUIRE(libc != nullptr);
      if (round == 0) first_count = libc->sites_rewritten;
      CHECK(libc->sites_rewritten >= first_count);
      REQUIRE(site[0] == 0xeb);  // getpid's site goes through padding
      if (round == 0) first_jump = site[1];
      CHECK(site[1] == first_jump);
      const long before = tally[SYS_getpid];
      getpid();
      CHECK(tally[SYS_getpid] == before + 1);
    }
    CHECK(site[0] == 0x0f);
    CHECK(site[1] == 0x05);
  }
}
