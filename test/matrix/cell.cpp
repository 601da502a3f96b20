// One cell of the combination matrix: a mode × a kind of hook × a process event, in its own
// process. test_matrix.py runs every cell (or a seeded sample of repetitions) and says how to
// replay a failure:  matrix_cell MODE HOOK EVENT SEED
//
// Hooks: plain (counts and forwards), busy (also makes system calls of its own, allocates and
// writes a log line, before and after forwarding, as the README advises: no allocation around
// the calls an allocator makes with its lock held), library and library_busy (the same as a hook
// library, loaded with dlmopen), chain (a HookChain of the busy hook and the busy library).
// Every hook counts the calls it sees in a page shared with fork children (counts.hpp); in a
// chain only the first counts. The events check their own results and what the hook counted.
//
// Exit status: 0 passed, 1 failed (each failure printed with "FAIL"), 77 skipped (why printed).
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../support.hpp"
#include "counts.hpp"
#include "zpoline/hook_chain.hpp"
#include "zpoline/hook_library.hpp"
#include "zpoline/zpoline.hpp"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

// ---- the cell ----------------------------------------------------------------------------------

zpoline::Mode mode = zpoline::Mode::eager;
zpoline::Mechanism mechanism = zpoline::Mechanism::page_zero;
bool unprivileged = false;
std::string hook_kind;
unsigned seed = 0;
matrix::Counts* counts = nullptr;
int failures = 0;

long parent_pid = 0;  // getppid(), read before anything is hooked

bool net() {
  return mode != zpoline::Mode::eager;
}

void fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  char message[512];
  std::vsnprintf(message, sizeof message, format, args);
  va_end(args);
  std::fprintf(stderr, "FAIL %s\n", message);
  ++failures;
}

[[noreturn]] void skip(const char* why) {
  std::fprintf(stderr, "SKIP %s\n", why);
  std::exit(77);
}

#define EXPECT(condition, ...)                                           \
  do {                                                                   \
    if (!(condition)) fail("%s:%d: %s", __FILE__, __LINE__, #condition); \
  } while (0)
#define EXPECT_EQ(a, b)                                                                       \
  do {                                                                                        \
    const long long x_ = static_cast<long long>(a), y_ = static_cast<long long>(b);           \
    if (x_ != y_) fail("%s:%d: %s == %s (%lld != %lld)", __FILE__, __LINE__, #a, #b, x_, y_); \
  } while (0)

std::uint64_t seen(long number) {
  return counts->calls[number].load();
}

// ---- marker calls ------------------------------------------------------------------------------

// getppid through libc (a site rewriting reaches) and through a prefixed `syscall` (66 0f 05),
// which only the safety net reaches (exhaustive, lazy).
long libc_getppid() {
  return syscall(SYS_getppid);
}
long prefixed_getppid() {
  long result;
  asm volatile(".byte 0x66; syscall" : "=a"(result) : "a"(SYS_getppid) : "rcx", "r11", "memory");
  return result;
}
// A blocking read through a prefixed syscall: trapped under SUD, run from the SIGSYS handler.
long prefixed_read(int fd, void* buffer, long size) {
  long result;
  asm volatile(".byte 0x66; syscall"
               : "=a"(result)
               : "a"(SYS_read), "D"(fd), "S"(buffer), "d"(size)
               : "rcx", "r11", "memory");
  return result;
}

// Makes `n` marker calls of each kind, checking their results; returns how many the hook should
// have seen.
long markers(int n, long expected_ppid) {
  long expected = 0;
  for (int i = 0; i < n; ++i) {
    if (libc_getppid() != expected_ppid) fail("libc getppid returned a wrong value");
    if (prefixed_getppid() != expected_ppid) fail("prefixed getppid returned a wrong value");
    expected += net() ? 2 : 1;
  }
  return expected;
}

// ---- hooks -------------------------------------------------------------------------------------

int log_fd = -1;

long plain_hook(zpoline::Syscall& call) {
  const long number = call.number();
  if (number >= 0 && number < matrix::kNumbers) counts->calls[number].fetch_add(1);
  return call.forward();
}

void busy_work(const zpoline::Syscall& call, const char* when) {
  const long number = call.number();
  if (matrix::allocator_may_be_locked(number)) {
    // No allocation: the application's allocator may hold its lock around this call.
    if (getpid() <= 0) fail("the hook's own getpid failed");
  } else {
    std::string line = std::string(when) + ' ' + std::string(call.name()) + '\n';
    if (getpid() <= 0) line += "no pid\n";
    [[maybe_unused]] const ssize_t written = write(log_fd, line.data(), line.size());
  }
  counts->busy_work.fetch_add(1);
}

long busy_hook(zpoline::Syscall& call) {
  const long number = call.number();
  if (number >= 0 && number < matrix::kNumbers) counts->calls[number].fetch_add(1);
  busy_work(call, "enter");
  const long result = call.forward();
  if (number != SYS_exit && number != SYS_exit_group) busy_work(call, "leave");
  return result;
}

// Everything the installed hook needs, alive until the process ends.
struct Installed {
  std::optional<zpoline::HookChain> chain;
  std::vector<zpoline::HookChain::Handle> handles;
  std::optional<zpoline::HookLibrary> library;
};
Installed* installed = nullptr;

zpoline::Hook make_hook() {
  if (hook_kind == "plain") return plain_hook;
  if (hook_kind == "busy") return busy_hook;
  if (hook_kind == "library" || hook_kind == "library_busy") {
    setenv("ZPOLINE_HOOK_MATRIX_BUSY", hook_kind == "library_busy" ? "1" : "0", 1);
    if (!installed->library) installed->library.emplace(ZPOLINE_MATRIX_HOOK_LIBRARY);
    return installed->library->hook();
  }
  if (hook_kind == "chain") {
    // The busy in-process hook first, then the busy hook library. Only the first counts: the
    // library counts into a page of its own.
    if (!installed->chain) {
      static matrix::Counts uncounted;
      char address[32];
      std::snprintf(address, sizeof address, "%lx", reinterpret_cast<unsigned long>(&uncounted));
      const std::string counted = std::getenv("ZPOLINE_HOOK_MATRIX_COUNTS");
      setenv("ZPOLINE_HOOK_MATRIX_COUNTS", address, 1);
      setenv("ZPOLINE_HOOK_MATRIX_BUSY", "1", 1);
      installed->library.emplace(ZPOLINE_MATRIX_HOOK_LIBRARY);
      setenv("ZPOLINE_HOOK_MATRIX_COUNTS", counted.c_str(), 1);
      installed->chain.emplace();
      installed->handles.push_back(installed->chain->add(busy_hook, 0));
      installed->handles.push_back(installed->chain->add(installed->library->hook(), 1));
    }
    return std::ref(*installed->chain);
  }
  std::fprintf(stderr, "unknown hook kind %s\n", hook_kind.c_str());
  std::exit(2);
}

zpoline::Session install(zpoline::Options options = {}) {
  options.mode = mode;
  options.mechanism = mechanism;
  options.use_environment = false;
  try {
    zpoline::Session session = zpoline::install(make_hook(), options);
    // Unprivileged, the automatic choice must have been the near mechanism.
    if (unprivileged) EXPECT(session.mechanism() == zpoline::Mechanism::near);
    return session;
  } catch (const zpoline::Error& error) {
    if (error.code() == zpoline::ErrorCode::page_zero_refused) skip("page 0 refused");
    throw;
  }
}

// ---- helpers -------------------------------------------------------------------------------

// Waits for a child; false (and the child killed) if it has not ended in 20 s.
bool wait_child(pid_t pid, int& status) {
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return true;
    if (done < 0) return false;
    struct timespec pause {
      0, 2 * 1000 * 1000
    };
    nanosleep(&pause, nullptr);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return false;
}

bool exited_with(int status, int code) {
  return WIFEXITED(status) && WEXITSTATUS(status) == code;
}

// A thread that makes marker calls when told to, and reports how many the hook should have seen.
struct MarkerThread {
  std::atomic<int> round{0};
  std::atomic<int> done{0};
  std::atomic<long> expected{0};
  std::atomic<bool> stop{false};
  long ppid = parent_pid;
  std::thread thread;
  MarkerThread() {
    thread = std::thread([this] {
      int handled = 0;
      while (!stop) {
        if (round.load() > handled) {
          expected += markers(5, ppid);
          ++handled;
          done.store(handled);
        } else {
          struct timespec pause {
            0, 200 * 1000
          };
          nanosleep(&pause, nullptr);
        }
      }
    });
  }
  long run_round() {
    const long before = expected;
    const int target = round.fetch_add(1) + 1;
    while (done.load() < target) sched_yield();
    return expected - before;
  }
  ~MarkerThread() {
    stop = true;
    thread.join();
  }
};

// ---- events --------------------------------------------------------------------------------

void event_threads_before() {
  MarkerThread worker;  // exists before install
  auto session = install();
  const std::uint64_t before = seen(SYS_getppid);
  const long expected = worker.run_round() + markers(5, parent_pid);
  EXPECT_EQ(seen(SYS_getppid) - before, expected);
}

void event_threads_after() {
  auto session = install();
  const std::uint64_t before = seen(SYS_getppid);
  long expected = 0;
  {
    MarkerThread worker;
    expected += worker.run_round();
    std::thread([&] { expected += markers(3, parent_pid); }).join();
  }
  EXPECT_EQ(seen(SYS_getppid) - before, expected);
}

void event_fork() {
  auto session = install();
  const long ppid = getpid();
  const std::uint64_t before = seen(SYS_getppid);
  const pid_t child = fork();
  if (child == 0) {
    const long expected = markers(5, ppid);
    // The child's own threads are hooked too.
    long from_thread = 0;
    std::thread([&] { from_thread = markers(2, ppid); }).join();
    _exit(failures == 0 && expected + from_thread > 0 ? static_cast<int>(expected + from_thread)
                                                      : 100);
  }
  EXPECT(child > 0);
  int status = 0;
  EXPECT(wait_child(child, status));
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) != 100);
  EXPECT_EQ(seen(SYS_getppid) - before, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  EXPECT_EQ(markers(1, parent_pid) > 0, true);
}

void event_vfork() {
  auto session = install();
  const std::uint64_t before = seen(SYS_getppid);
  const long parent_pid = getpid();
  volatile long child_expected = 0;
  volatile bool child_ppid_ok = false;
  const pid_t child = vfork();
  if (child == 0) {
    child_ppid_ok = libc_getppid() == parent_pid && prefixed_getppid() == parent_pid;
    child_expected = net() ? 2 : 1;
    _exit(42);
  }
  EXPECT(child > 0);
  EXPECT(child != parent_pid);
  int status = 0;
  EXPECT(wait_child(child, status));
  EXPECT(exited_with(status, 42));
  EXPECT(child_ppid_ok);
  EXPECT_EQ(seen(SYS_getppid) - before, child_expected);
  // vfork + exec: the exec'd program's result comes back.
  const pid_t execer = vfork();
  if (execer == 0) {
    execl("/bin/sh", "sh", "-c", "exit 7", static_cast<char*>(nullptr));
    _exit(127);
  }
  EXPECT(execer > 0);
  EXPECT(wait_child(execer, status));
  EXPECT(exited_with(status, 7));
}

void event_posix_spawn() {
  auto session = install();
  const std::uint64_t execs = seen(SYS_execve);
  pid_t pid = 0;
  char* argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"), const_cast<char*>("exit 5"),
                  nullptr};
  EXPECT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, argv, environ), 0);
  int status = 0;
  EXPECT(wait_child(pid, status));
  EXPECT(exited_with(status, 5));
  const int code = system("exit 3");
  EXPECT(WIFEXITED(code) && WEXITSTATUS(code) == 3);
  FILE* pipe = popen("echo matrix", "r");
  char line[32] = {};
  EXPECT(pipe != nullptr && std::fgets(line, sizeof line, pipe) != nullptr);
  EXPECT(std::strcmp(line, "matrix\n") == 0);
  EXPECT(pipe == nullptr || pclose(pipe) == 0);
  // The children's execve went through the hook (posix_spawn, system, popen).
  EXPECT_EQ(seen(SYS_execve) - execs, 3);
  if (installed->chain) {
    // The chain is still whole and synchronises (its readers came back from the children).
    EXPECT(installed->chain->size() == 2);
    installed->chain->synchronize();
  }
}

void event_clone3() {
  auto session = install();
  const std::uint64_t before = seen(SYS_getppid);
  const std::uint64_t clones = seen(SYS_clone3);
  // A fork-like raw clone3: the child runs on the same stack, copied.
  clone_args args{};
  args.exit_signal = SIGCHLD;
  const long parent = getpid();
  const long child = syscall(SYS_clone3, &args, sizeof args);
  if (child == 0) {
    const long expected = markers(4, parent);
    _exit(failures == 0 ? static_cast<int>(expected) : 100);
  }
  EXPECT(child > 0);
  int status = 0;
  EXPECT(wait_child(static_cast<pid_t>(child), status));
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) != 100);
  EXPECT_EQ(seen(SYS_getppid) - before, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  // pthread_create uses clone3 with a new stack.
  long from_thread = 0;
  std::thread([&] { from_thread = markers(2, parent_pid); }).join();
  EXPECT(seen(SYS_clone3) - clones >= 2);
}

void event_exec() {
  auto session = install();
  const std::uint64_t execs = seen(SYS_execve);
  const pid_t child = fork();
  if (child == 0) {
    execl("/bin/sh", "sh", "-c", "exit 9", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  EXPECT(wait_child(child, status));
  EXPECT(exited_with(status, 9));
  EXPECT_EQ(seen(SYS_execve) - execs, 1);
}

std::atomic<int> cleanups{0};

void event_pthread_cancel() {
  auto session = install();
  for (const bool prefixed : {false, true}) {
    if (prefixed && !net()) continue;
    int fds[2];
    EXPECT(pipe(fds) == 0);
    std::atomic<bool> started{false};
    struct Args {
      int fd;
      bool prefixed;
      std::atomic<bool>* started;
    } args{fds[0], prefixed, &started};
    pthread_t thread;
    const int created = pthread_create(
        &thread, nullptr,
        [](void* raw) -> void* {
          auto* a = static_cast<Args*>(raw);
          pthread_cleanup_push([](void*) { ++cleanups; }, nullptr);
          a->started->store(true);
          char byte;
          for (;;) {
            // A cancellation point around a hooked read: libc's, or a trapped one.
            if (a->prefixed) {
              pthread_testcancel();
              int old = 0;
              pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &old);
              prefixed_read(a->fd, &byte, 1);
              pthread_setcanceltype(old, nullptr);
            } else {
              [[maybe_unused]] const ssize_t n = read(a->fd, &byte, 1);
            }
          }
          pthread_cleanup_pop(0);
          return nullptr;
        },
        &args);
    EXPECT_EQ(created, 0);
    while (!started) sched_yield();
    struct timespec pause {
      0, 20 * 1000 * 1000
    };
    nanosleep(&pause, nullptr);  // let it block in the read
    const int before = cleanups;
    EXPECT_EQ(pthread_cancel(thread), 0);
    void* result = nullptr;
    EXPECT_EQ(pthread_join(thread, &result), 0);
    EXPECT(result == PTHREAD_CANCELED);
    EXPECT_EQ(cleanups - before, 1);
    close(fds[0]);
    close(fds[1]);
  }
  // The process goes on, hooked.
  const std::uint64_t before = seen(SYS_getppid);
  const long expected = markers(2, parent_pid);
  EXPECT_EQ(seen(SYS_getppid) - before, expected);
}

// Signals whose handlers run on a small alternate stack make marker calls, while the main thread
// blocks in hooked calls (the handler runs while the hook waits in forward()) and runs its own
// code. Nothing may be written below the alternate stack. Its size is the one glibc recommends
// for this CPU, sysconf(_SC_SIGSTKSZ) (13 KiB with AVX-512, 8 KiB without): a call trapped in the
// handler needs room for a second signal frame there (README, "Limits").
constexpr std::size_t kMaxAltStack = 64 * 1024;
constexpr std::size_t kGuard = 16 * 1024;
alignas(64) unsigned char alt_region[kGuard + kMaxAltStack];
std::atomic<long> handler_expected{0};
std::atomic<long> handler_runs{0};
long handler_ppid = 0;

void marker_handler(int) {
  const int saved = errno;
  handler_expected += markers(1, handler_ppid);
  ++handler_runs;
  errno = saved;
}

void event_signals_altstack() {
  std::memset(alt_region, 0xa5, sizeof alt_region);
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer's frames (the hook's and the library's, with their redzones) are larger:
  // 13 KiB overflowed in 10 of 30 cell runs there, three times that in none of 30.
  const std::size_t size = std::min<std::size_t>(3 * sysconf(_SC_SIGSTKSZ), kMaxAltStack);
#else
  const std::size_t size = std::min<std::size_t>(sysconf(_SC_SIGSTKSZ), kMaxAltStack);
#endif
  stack_t stack{};
  stack.ss_sp = alt_region + kGuard + kMaxAltStack - size;
  stack.ss_size = size;
  EXPECT(sigaltstack(&stack, nullptr) == 0);
  struct sigaction action {};
  action.sa_handler = marker_handler;
  action.sa_flags = SA_ONSTACK | SA_RESTART;
  sigaction(SIGUSR1, &action, nullptr);
  handler_ppid = parent_pid;
  auto session = install();
  const std::uint64_t before = seen(SYS_getppid);
  const pid_t self = static_cast<pid_t>(syscall(SYS_gettid));
  int fds[2];
  EXPECT(pipe(fds) == 0);
  constexpr int kSignals = 40;
  // Each signal is sent while the thread waits in the kernel, inside the hooked read: a signal
  // that arrived in the hook's own code (the busy hooks' work around the read) would run its
  // handler with the hook bypassed, as documented, and its calls would not be counted.
  std::thread sender([&] {
    bool sent_all = true;
    for (int i = 0; i < kSignals; ++i) {
      while (handler_runs.load() < i) sched_yield();
      if (!zpoline_test::wait_until_blocked_in(self, SYS_read)) {
        fail("the thread never waited in read");
        sent_all = false;
        break;
      }
      syscall(SYS_tgkill, getpid(), self, SIGUSR1);
    }
    const char byte = 'x';
    while (sent_all && handler_runs.load() < kSignals) sched_yield();
    [[maybe_unused]] const ssize_t n = write(fds[1], &byte, 1);
  });
  // Blocked in a hooked read (SA_RESTART restarts it), then spinning in user code.
  char byte = 0;
  EXPECT_EQ(read(fds[0], &byte, 1), 1);
  sender.join();
  // Signals that arrive while the thread runs its own code (no system call): sent once it spins,
  // not while it still makes the hooked calls of starting the sender.
  std::atomic<bool> sent{false}, spinning{false};
  std::thread user_code_sender([&] {
    while (!spinning.load()) sched_yield();
    for (int i = 0; i < 10; ++i) {
      const long runs = handler_runs;
      syscall(SYS_tgkill, getpid(), self, SIGUSR1);
      while (handler_runs.load() == runs) sched_yield();
    }
    sent = true;
  });
  volatile unsigned long spins = 0;
  spinning = true;
  while (!sent.load()) spins = spins + 1;
  user_code_sender.join();
  EXPECT_EQ(handler_runs.load(), kSignals + 10);
  const long expected = handler_expected;
  EXPECT_EQ(seen(SYS_getppid) - before, expected);
  std::size_t written_below = 0;
  const std::size_t below = kGuard + kMaxAltStack - size;
  for (std::size_t i = 0; i < below; ++i) {
    if (alt_region[i] != 0xa5) {
      written_below = below - i;
      break;
    }
  }
  EXPECT_EQ(written_below, 0);
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
  signal(SIGUSR1, SIG_IGN);
}

void event_dlopen() {
  auto session = install();
  // A library with syscall sites of its own, and one mapped past its file's end.
  for (const char* path : {ZPOLINE_MATRIX_LATE_LIBRARY, ZPOLINE_MATRIX_PAST_FILE_END_LIBRARY}) {
    void* handle = dlopen(path, RTLD_NOW);
    if (handle == nullptr) {
      fail("dlopen(%s): %s", path, dlerror());
      continue;
    }
    const char* symbol =
        std::strstr(path, "past_file_end") ? "past_file_end_getpid" : "late_getpid";
    auto* function = reinterpret_cast<long (*)()>(dlsym(handle, symbol));
    if (function == nullptr) {
      fail("%s has no %s", path, symbol);
      continue;
    }
    const std::uint64_t before = seen(SYS_getpid);
    EXPECT_EQ(function(), getpid());
    EXPECT(seen(SYS_getpid) - before >= 1);
  }
  // Real large libraries, where present.
  for (const char* name : {"libpython3.11.so.1.0", "libLLVM-15.so.1", "libsqlite3.so.0"}) {
    void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) dlclose(handle);
  }
  EXPECT_EQ(markers(1, parent_pid), net() ? 2 : 1);
}

// A W^X JIT: a page toggled between RW (write code) and RX (run it), on two threads at once. Its
// syscalls reach the hook only through the safety net.
void event_jit() {
  auto session = install();
  const unsigned char code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};  // getpid; ret
  std::atomic<long> calls{0};
  std::atomic<int> wrong{0};
  const std::uint64_t before = seen(SYS_getpid);
  auto jit = [&] {
    auto* page = static_cast<unsigned char*>(
        mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    for (int round = 0; round < 60; ++round) {
      mprotect(page, 4096, PROT_READ | PROT_WRITE);
      for (int k = 0; k < 8; ++k) std::memcpy(page + 64 * k, code, sizeof code);
      mprotect(page, 4096, PROT_READ | PROT_EXEC);
      for (int k = 0; k < 8; ++k) {
        if (reinterpret_cast<long (*)()>(page + 64 * k)() != getpid()) ++wrong;
        ++calls;
      }
    }
    munmap(page, 4096);
  };
  std::thread other(jit);
  jit();
  other.join();
  EXPECT_EQ(wrong.load(), 0);
  const std::uint64_t hooked = seen(SYS_getpid) - before;
  // Each JIT call, plus the comparison's getpid (libc: hooked in every mode).
  if (net()) {
    EXPECT_EQ(hooked, 2 * calls.load());
  } else {
    EXPECT_EQ(hooked, calls.load());
  }
}

void event_detach_reinstall() {
  std::atomic<bool> stop{false};
  std::atomic<long> wrong{0};
  std::atomic<long> calls[2] = {0, 0};
  std::vector<std::thread> threads;
  const long ppid = parent_pid;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      while (!stop) {
        if (libc_getppid() != ppid || prefixed_getppid() != ppid) ++wrong;
        ++calls[t];
      }
    });
  }
  // Until each thread has finished two more calls.
  const auto each_made_two_more = [&] {
    const long made[2] = {calls[0], calls[1]};
    while (calls[0] < made[0] + 2 || calls[1] < made[1] + 2) sched_yield();
  };
  for (int round = 0; round < 6; ++round) {
    auto session = install();
    const std::uint64_t before = seen(SYS_getppid);
    EXPECT_EQ(markers(3, ppid), net() ? 6 : 3);
    EXPECT(seen(SYS_getppid) - before >= static_cast<std::uint64_t>(net() ? 6 : 3));
    session.detach();
    // After detach nothing reaches the hook any more, but the calls each thread had started:
    // a thread that was inside the hook finishes its call (at most one per thread).
    const std::uint64_t after = seen(SYS_getppid);
    markers(3, ppid);
    each_made_two_more();
    const std::uint64_t settled = seen(SYS_getppid);
    EXPECT(settled - after <= 2);
    each_made_two_more();
    EXPECT_EQ(seen(SYS_getppid), settled);
  }
  stop = true;
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
}

void event_restore_on_detach() {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      char buffer[64];
      while (!stop) {
        libc_getppid();
        const int fd = open("/proc/self/stat", O_RDONLY);
        if (fd >= 0) {
          [[maybe_unused]] const ssize_t n = read(fd, buffer, sizeof buffer);
          close(fd);
        }
      }
    });
  }
  zpoline::Options options;
  options.restore_on_detach = true;
  for (int round = 0; round < 15; ++round) {
    auto session = install(options);
    EXPECT_EQ(markers(2, parent_pid), net() ? 4 : 2);
    session.detach();
  }
  stop = true;
  for (auto& thread : threads) thread.join();
}

void event_route_vdso() {
  std::atomic<bool> stop{false};
  std::atomic<long> backwards{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      timespec last{};
      while (!stop) {
        timespec now{};
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec < last.tv_sec || (now.tv_sec == last.tv_sec && now.tv_nsec < last.tv_nsec)) {
          ++backwards;
        }
        last = now;
      }
    });
  }
  zpoline::Options options;
  options.route_vdso = true;
  for (int round = 0; round < 5; ++round) {
    auto session = install(options);
    const std::uint64_t before = seen(SYS_clock_gettime);
    struct timespec pause {
      0, 3 * 1000 * 1000
    };
    nanosleep(&pause, nullptr);
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    EXPECT(seen(SYS_clock_gettime) - before >= 1);
    session.detach();
  }
  stop = true;
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(backwards.load(), 0);
}

// fork while another thread keeps the rewriter busy (mprotect with PROT_EXEC rewrites new code):
// each child makes code executable itself, and must not wait for a lock the other thread held.
void event_fork_busy_rewriter() {
  auto session = install();
  std::atomic<bool> stop{false};
  std::thread toggler([&] {
    void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    while (!stop) {
      mprotect(page, 4096, PROT_READ | PROT_EXEC);
      mprotect(page, 4096, PROT_READ | PROT_WRITE);
    }
    munmap(page, 4096);
  });
  // Each child makes a PROT_EXEC change (the rewriter's work) and then its marker calls, which
  // the hook must see; it exits with their count, or 100 if a call returned a wrong value.
  const long cell_pid = getpid();
  const std::uint64_t before = seen(SYS_getppid);
  long expected = 0;
  for (int i = 0; i < 10; ++i) {
    const pid_t child = fork();
    if (child == 0) {
      failures = 0;  // the parent's so far are not this child's
      void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      const bool ok = mprotect(page, 4096, PROT_READ | PROT_EXEC) == 0;
      const long calls = markers(1, cell_pid);
      _exit(ok && failures == 0 ? static_cast<int>(calls) : 100);
    }
    int status = 0;
    EXPECT(wait_child(child, status));
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) != 100);
    if (WIFEXITED(status)) expected += WEXITSTATUS(status);
  }
  EXPECT_EQ(seen(SYS_getppid) - before, static_cast<std::uint64_t>(expected));
  EXPECT_EQ(expected, net() ? 20 : 10);
  stop = true;
  toggler.join();
}

// A thread that exists before install makes its first hooked calls from inside malloc (mmap of a
// large block, with the arena lock held).
void event_malloc_first_call() {
  std::atomic<bool> go{false}, stop{false};
  std::atomic<long> rounds{0};
  // Blocks above the mmap threshold, fixed (glibc raises it after each free otherwise): each
  // malloc is an mmap, each free a munmap.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  std::thread allocator([&] {
    while (!go) sched_yield();
    while (!stop) {
      void* block = std::malloc(1 << 20);
      static_cast<volatile char*>(block)[0] = 1;
      std::free(block);
      ++rounds;
    }
  });
  auto session = install();
  go = true;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (rounds < 50 && Clock::now() < deadline) sched_yield();
  stop = true;
  allocator.join();
  EXPECT(rounds >= 50);
  const long mmaps = static_cast<long>(seen(SYS_mmap));
  if (mmaps < rounds) {
    fail("%s:%d: the hook saw %ld mmap calls for %ld blocks of 1 MiB", __FILE__, __LINE__, mmaps,
         rounds.load());
  }
}

// Threads made by a raw clone: with CLONE_SETTLS and no TLS at all (they go to the kernel
// without the hook), and without CLONE_SETTLS (sharing their creator's TLS: to the kernel too,
// leaving the creator's hook state alone).
std::atomic<long> raw_child_result{0};
std::atomic<int> raw_child_done{0};
extern "C" void matrix_raw_child();
asm(R"(
  .text
  .globl matrix_raw_child
  .type matrix_raw_child, @function
matrix_raw_child:
  .cfi_startproc
  .cfi_undefined %rip
  mov $110, %eax
  syscall
  mov %rax, %rdi
  call matrix_raw_child_done
  mov $60, %eax
  xor %edi, %edi
  syscall
  ud2
  .cfi_endproc
  .size matrix_raw_child, .-matrix_raw_child
)");
extern "C" void matrix_raw_child_done(long result) {
  raw_child_result.store(result);
  raw_child_done.store(1);
}

void event_raw_clone() {
  auto session = install();
  for (const bool settls : {true, false}) {
    raw_child_done = 0;
    raw_child_result = 0;
    const std::size_t size = 64 * 1024;
    auto* stack = static_cast<char*>(
        mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    auto* top = reinterpret_cast<unsigned long*>(stack + size);
    *--top = reinterpret_cast<unsigned long>(&matrix_raw_child);
    long flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    if (settls) flags |= CLONE_SETTLS;
    long result;
    register long r10 asm("r10") = 0;
    register long r8 asm("r8") = 0;  // tls: none
    asm volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "ret\n"
        "1:"
        : "=a"(result)
        : "a"(SYS_clone), "D"(flags), "S"(top), "d"(0), "r"(r10), "r"(r8)
        : "rcx", "r11", "memory");
    EXPECT(result > 0);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!raw_child_done && Clock::now() < deadline) sched_yield();
    EXPECT_EQ(raw_child_done.load(), 1);
    EXPECT_EQ(raw_child_result.load(), getppid());
    struct timespec pause {
      0, 2 * 1000 * 1000
    };
    nanosleep(&pause, nullptr);  // the child's exit
  }
  // The creator is still hooked as before.
  const std::uint64_t before = seen(SYS_getppid);
  const long expected = markers(3, parent_pid);
  EXPECT_EQ(seen(SYS_getppid) - before, expected);
}

const std::map<std::string, void (*)()> kEvents = {
    {"threads_before", event_threads_before},
    {"threads_after", event_threads_after},
    {"fork", event_fork},
    {"vfork", event_vfork},
    {"posix_spawn", event_posix_spawn},
    {"clone3", event_clone3},
    {"exec", event_exec},
    {"pthread_cancel", event_pthread_cancel},
    {"signals_altstack", event_signals_altstack},
    {"dlopen", event_dlopen},
    {"jit", event_jit},
    {"detach_reinstall", event_detach_reinstall},
    {"restore_on_detach", event_restore_on_detach},
    {"route_vdso", event_route_vdso},
    {"fork_busy_rewriter", event_fork_busy_rewriter},
    {"malloc_first_call", event_malloc_first_call},
    {"raw_clone", event_raw_clone},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: %s MODE HOOK EVENT SEED [page_zero|near|unprivileged|nobody]\n",
                 argv[0]);
    return 2;
  }
  // The mechanism: page_zero (the default) or near forced, or unprivileged: CAP_SYS_RAWIO
  // dropped for good before anything else, and the automatic choice.
  const std::string mechanism_name = argc == 6 ? argv[5] : "page_zero";
  if (mechanism_name == "near") {
    mechanism = zpoline::Mechanism::near;
  } else if (mechanism_name == "unprivileged") {
    mechanism = zpoline::Mechanism::automatic;
    unprivileged = true;
    if (!zpoline_test::drop_cap_sys_rawio()) {
      std::fprintf(stderr, "could not drop CAP_SYS_RAWIO: %s\n", std::strerror(errno));
      return 2;
    }
    if (!zpoline_test::page_zero_is_refused())
      skip("vm.mmap_min_addr is 0: page 0 is not refused here");
  } else if (mechanism_name == "nobody") {
    // The unprivileged user: every capability goes with the uid.
    mechanism = zpoline::Mechanism::automatic;
    unprivileged = true;
    if (!zpoline_test::become_nobody()) {
      std::fprintf(stderr, "could not switch to the user nobody: %s\n", std::strerror(errno));
      return 2;
    }
    if (!zpoline_test::page_zero_is_refused())
      skip("vm.mmap_min_addr is 0: page 0 is not refused here");
  } else if (mechanism_name != "page_zero") {
    std::fprintf(stderr, "unknown mechanism %s\n", mechanism_name.c_str());
    return 2;
  }
  const std::string mode_name = argv[1];
  mode = mode_name == "exhaustive" ? zpoline::Mode::exhaustive
         : mode_name == "lazy"     ? zpoline::Mode::lazy
                                   : zpoline::Mode::eager;
  hook_kind = argv[2];
  const auto event = kEvents.find(argv[3]);
  seed = static_cast<unsigned>(std::strtoul(argv[4], nullptr, 10));
  if (event == kEvents.end()) {
    std::fprintf(stderr, "unknown event %s\n", argv[3]);
    return 2;
  }
  parent_pid = getppid();
  counts = static_cast<matrix::Counts*>(mmap(
      nullptr, sizeof(matrix::Counts), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  char address[32];
  std::snprintf(address, sizeof address, "%lx", reinterpret_cast<unsigned long>(counts));
  setenv("ZPOLINE_HOOK_MATRIX_COUNTS", address, 1);
  log_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  installed = new Installed;
  // The seed varies the timing: a short pause before the event.
  std::mt19937 random(seed);
  struct timespec pause {
    0, static_cast<long>(random() % 2000) * 1000
  };
  nanosleep(&pause, nullptr);
  event->second();
  if (hook_kind == "busy" || hook_kind == "library_busy" || hook_kind == "chain") {
    EXPECT(counts->busy_work.load() > 0);
  }
  std::fflush(stdout);
  return failures == 0 ? 0 : 1;
}
