// Signals and the hook: handlers on alternate stacks, SA_RESTART, nested handlers, siglongjmp out
// of handlers (also out of a handler that interrupted the hook), signals that arrive while the
// hook itself runs, and the hook's view of sigaction/sigprocmask. Each TEST_CASE installs and runs
// in its own process (the runner passes --test-case=<name>).
//
// What the library promises here (README "Limits", DESIGN, dispatch.cpp):
// - a handler that interrupts application code makes hooked system calls, like any other code;
// - a handler that interrupts the hook itself runs with the hook bypassed;
// - a system call interrupted and restarted by the kernel reaches the hook once per attempt the
//   program sees (with SA_RESTART the kernel restarts it inside the forwarded call: one attempt);
// - a hook left by a siglongjmp out of a handler is detected, and the thread's calls reach the
//   hook again afterwards.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"
#include "zpoline/zpoline.hpp"

using zpoline_test::install_or_skip;

namespace {

using Clock = std::chrono::steady_clock;
// Generous: a deadline only turns a hang into a failure.
constexpr auto kDeadline = std::chrono::seconds(60);

// Calls seen by a hook, per syscall number.
struct Tally {
  std::array<std::atomic<long>, 512> by_number{};
  long operator[](long number) const { return by_number[static_cast<std::size_t>(number)].load(); }
  void count(long number) {
    if (number >= 0 && number < 512) ++by_number[static_cast<std::size_t>(number)];
  }
};

long real_getpid() {
  return zpoline::raw_syscall(SYS_getpid);
}
long real_gettid() {
  return zpoline::raw_syscall(SYS_gettid);
}
long real_getppid() {
  return zpoline::raw_syscall(SYS_getppid);
}

// Sends `signal` to thread `tid` of this process without going through the hook: the signal is
// delivered on the way back from this call, in application code, outside the hook.
void raw_tgkill(long tid, int signal) {
  zpoline::raw_syscall(SYS_tgkill, real_getpid(), tid, signal);
}

// Spins (yielding) until `done()` or the deadline; returns done().
template <class Predicate>
bool wait_until(Predicate done, std::chrono::seconds limit = kDeadline) {
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > deadline) return done();
    zpoline::raw_syscall(SYS_sched_yield);
  }
  return true;
}

void install_handler(int signal, void (*handler)(int), int flags,
                     std::initializer_list<int> mask = {}) {
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = flags;
  sigemptyset(&action.sa_mask);
  for (int s : mask) sigaddset(&action.sa_mask, s);
  REQUIRE(sigaction(signal, &action, nullptr) == 0);
}

// The calling thread's blocked signals, as the kernel has them.
std::uint64_t blocked_signals() {
  std::uint64_t set = 0;
  zpoline::raw_syscall(SYS_rt_sigprocmask, SIG_BLOCK, 0, reinterpret_cast<long>(&set), 8);
  return set;
}
constexpr std::uint64_t bit(int signal) {
  return std::uint64_t{1} << (signal - 1);
}

long pipe_bytes(int fd) {
  int n = 0;
  if (ioctl(fd, FIONREAD, &n) != 0) return -1;
  return n;
}

void drain(int fd) {
  char buffer[4096];
  while (pipe_bytes(fd) > 0) {
    if (read(fd, buffer, sizeof buffer) <= 0) break;
  }
}

// The scheduler state of thread `tid` ('R', 'S', ...) from /proc, or 0.
char thread_state(long tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char text[512];
  const ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  text[n] = 0;
  const char* paren = std::strrchr(text, ')');
  return paren && paren[1] == ' ' ? paren[2] : 0;
}

// Floating-point and integer work whose values are live across the system call `step` makes.
template <class Step>
std::pair<double, long> compute(int iterations, Step step) {
  double x = 1.0;
  long y = 17;
  for (int i = 0; i < iterations; ++i) {
    const double before = x * 1.000001 + i;
    const long mixed = y * 31 + i;
    step(i);
    x = before + static_cast<double>(mixed % 7);
    y = mixed % 1000003;
  }
  return {x, y};
}

void start_timer(long microseconds) {
  itimerval timer{};
  timer.it_interval.tv_usec = microseconds;
  timer.it_value.tv_usec = microseconds;
  REQUIRE(setitimer(ITIMER_REAL, &timer, nullptr) == 0);
}

void stop_timer() {
  itimerval timer{};
  setitimer(ITIMER_REAL, &timer, nullptr);
}

// The same without going through the hook (from a signal handler that is about to jump out of
// the hook: a hooked call there, or a later signal's frame, would change what the test sees).
void raw_stop_timer() {
  itimerval timer{};
  zpoline::raw_syscall(SYS_setitimer, ITIMER_REAL, reinterpret_cast<long>(&timer), 0);
}

// An alternate signal stack in a buffer the caller owns.
struct AltStack {
  char* base = nullptr;
  std::size_t size = 0;
  bool contains(const volatile void* p) const {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const auto b = reinterpret_cast<std::uintptr_t>(base);
    return a >= b && a < b + size;
  }
};

void set_alt_stack(const AltStack& alt) {
  stack_t stack{};
  stack.ss_sp = alt.base;
  stack.ss_size = alt.size;
  stack.ss_flags = 0;
  REQUIRE(sigaltstack(&stack, nullptr) == 0);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 1. SA_ONSTACK handlers on a sigaltstack
// ---------------------------------------------------------------------------------------------

namespace altstack {
AltStack stack;
long expected_ppid = 0;
int pipe_fd = -1;
int ack_fd = -1;  // phase 2: the handler acknowledges each run to the sender
std::atomic<long> runs{0}, on_alt{0}, off_alt{0}, wrong{0};

void handler(int) {
  const int saved_errno = errno;
  volatile char local = 0;
  if (stack.contains(&local)) {
    ++on_alt;
  } else {
    ++off_alt;
  }
  if (getppid() != expected_ppid) ++wrong;
  const char byte = 'a';
  if (write(pipe_fd, &byte, 1) != 1) ++wrong;
  ++runs;
  if (ack_fd >= 0 && write(ack_fd, &byte, 1) != 1) ++wrong;
  errno = saved_errno;
}
}  // namespace altstack

TEST_CASE("altstack_handlers") {
  const long pid = real_getpid();
  const long tid = real_gettid();
  altstack::expected_ppid = real_getppid();
  constexpr std::size_t kAltSize = 256 * 1024;
  auto buffer = std::make_unique<char[]>(kAltSize);
  altstack::stack = {buffer.get(), kAltSize};
  set_alt_stack(altstack::stack);

  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  altstack::pipe_fd = fds[1];
  int loop_fds[2];  // the main thread's own round trips in phase 2
  REQUIRE(pipe2(loop_fds, O_CLOEXEC) == 0);
  install_handler(SIGUSR1, altstack::handler, SA_ONSTACK | SA_RESTART);

  std::atomic<long> hook_getppid{0}, hook_getppid_on_alt{0}, hook_writes{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    if (call.number() == SYS_getppid) {
      ++hook_getppid;
      volatile char here = 0;  // the hook runs on the stack of the code that made the call
      if (altstack::stack.contains(&here)) ++hook_getppid_on_alt;
    }
    if (call.number() == SYS_write && call.arg(0) == altstack::pipe_fd) ++hook_writes;
    return call.forward();
  });

  // Phase 1: the signal arrives in application code (raised by a raw tgkill), so the handler's
  // getppid and write reach the hook, which runs on the alternate stack.
  constexpr int kSignals = 500;
  const auto reference = compute(kSignals, [](int) {});
  long late = 0;
  const auto result = compute(kSignals, [&](int i) {
    raw_tgkill(tid, SIGUSR1);
    if (altstack::runs != i + 1) ++late;
  });
  CHECK(late == 0);
  CHECK(result == reference);
  CHECK(altstack::runs.load() == kSignals);
  CHECK(altstack::on_alt.load() == kSignals);
  CHECK(altstack::off_alt.load() == 0);
  CHECK(altstack::wrong.load() == 0);
  CHECK(hook_getppid.load() == kSignals);
  CHECK(hook_getppid_on_alt.load() == kSignals);
  CHECK(hook_writes.load() == kSignals);
  CHECK(pipe_bytes(fds[0]) == kSignals);
  drain(fds[0]);

  // Phase 2: another thread signals the main thread while it is busy in hooked calls. Signals
  // land in application code, in the stub, in the hook and in forwarded calls; every handler
  // run is on the alternate stack and every result is right.
  constexpr long kMoreSignals = 300;
  constexpr long kMinLoops = 2000;
  // The sender signals again once the handler has acknowledged the last signal, and sleeps in
  // poll meanwhile (a spinning sender on the main thread's CPU would starve it).
  int ack[2];
  REQUIRE(pipe2(ack, O_CLOEXEC | O_NONBLOCK) == 0);
  altstack::ack_fd = ack[1];
  std::atomic<bool> stop{false};
  std::atomic<bool> sender_stuck{false};
  std::thread sender([&] {
    while (!stop) {
      raw_tgkill(tid, SIGUSR1);
      pollfd readable{ack[0], POLLIN, 0};
      if (poll(&readable, 1, 10000) != 1) sender_stuck = true;
      char bytes[64];
      [[maybe_unused]] const ssize_t n = read(ack[0], bytes, sizeof bytes);
    }
  });
  long loops = 0, wrong_main = 0;
  const auto deadline = Clock::now() + kDeadline;
  while ((altstack::runs < kSignals + kMoreSignals || loops < kMinLoops) &&
         Clock::now() < deadline) {
    ++loops;
    if (getpid() != pid) ++wrong_main;
    if (syscall(SYS_gettid) != tid) ++wrong_main;
    const unsigned char out[3] = {static_cast<unsigned char>(loops), 0x5a,
                                  static_cast<unsigned char>(loops >> 8)};
    unsigned char in[3] = {};
    if (write(loop_fds[1], out, 3) != 3) ++wrong_main;
    if (read(loop_fds[0], in, 3) != 3 || std::memcmp(in, out, 3) != 0) ++wrong_main;
  }
  stop = true;
  sender.join();
  CAPTURE(loops);
  CHECK_FALSE(sender_stuck);
  CHECK(altstack::runs.load() >= kSignals + kMoreSignals);
  CHECK(loops >= kMinLoops);
  CHECK(wrong_main == 0);
  CHECK(altstack::off_alt.load() == 0);
  CHECK(altstack::on_alt.load() == altstack::runs.load());
  CHECK(altstack::wrong.load() == 0);
  // Runs that interrupted the hook had their calls bypassed; the others were hooked, and every
  // hooked getppid ran on the alternate stack.
  CHECK(hook_getppid.load() <= altstack::runs.load());
  CHECK(hook_getppid.load() >= kSignals);
  CHECK(hook_getppid_on_alt.load() == hook_getppid.load());
  CHECK(hook_writes.load() <= altstack::runs.load());
  CHECK(pipe_bytes(fds[0]) == altstack::runs.load() - kSignals);

  // The main thread is back on its own stack; the alternate stack is still registered.
  stack_t current{};
  REQUIRE(zpoline::raw_syscall(SYS_sigaltstack, 0, reinterpret_cast<long>(&current)) == 0);
  CHECK((current.ss_flags & SS_ONSTACK) == 0);
  CHECK(current.ss_sp == buffer.get());
  signal(SIGUSR1, SIG_IGN);
  session.detach();
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
}

// ---------------------------------------------------------------------------------------------
// 2. SA_RESTART
// ---------------------------------------------------------------------------------------------

namespace restart {
std::atomic<bool> in_read{false};  // set by the hook around its forwarded read of read_fd
std::atomic<long> interrupts{0};   // handler runs while in_read
std::atomic<long> wake_after{0};   // the handler writes a byte on this interrupt (0: never)
int write_fd = -1;

void handler(int) {
  const int saved_errno = errno;
  if (in_read) {
    if (++interrupts == wake_after) {
      const char byte = 'r';
      [[maybe_unused]] const ssize_t n = write(write_fd, &byte, 1);
    }
  }
  errno = saved_errno;
}
}  // namespace restart

TEST_CASE("sa_restart_restarts_reads") {
  const long tid = real_gettid();
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  restart::write_fd = fds[1];
  const int read_fd = fds[0];

  std::atomic<long> reads{0};
  std::atomic<long> last_result{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    if (call.number() != SYS_read || call.arg(0) != read_fd) return call.forward();
    ++reads;
    restart::in_read = true;
    const long result = call.forward();
    restart::in_read = false;
    last_result = result;
    return result;
  });

  constexpr long kInterrupts = 5;

  // Another thread interrupts the main thread's read `count` times, each time once the main
  // thread is blocked in it.
  auto interrupt_from_thread = [&](int signal, long count, std::atomic<bool>& failed) {
    return std::thread([&, signal, count] {
      for (long k = 0; k < count; ++k) {
        const long before = restart::interrupts;
        if (!wait_until([&] { return restart::in_read && thread_state(tid) == 'S'; }) ||
            zpoline::raw_syscall(SYS_tgkill, real_getpid(), tid, signal) != 0 ||
            !wait_until([&] { return restart::interrupts > before; })) {
          failed = true;
          return;
        }
      }
    });
  };

  // Every read returns the byte the handler writes (or EINTR), and reaches the hook exactly once:
  // with SA_RESTART the kernel restarts it inside the forwarded call, which the program sees as
  // one read.
  auto check_read = [&](bool restarted) {
    const long reads_before = reads;
    char byte = 0;
    errno = 0;
    const ssize_t n = read(read_fd, &byte, 1);
    const int error = errno;
    if (restarted) {
      CHECK(n == 1);
      CHECK(byte == 'r');
      CHECK(last_result.load() == 1);
    } else {
      CHECK(n == -1);
      CHECK(error == EINTR);
      CHECK(last_result.load() == -EINTR);
    }
    CHECK(reads.load() - reads_before == 1);
  };

  SUBCASE("setitimer") {
    // SA_RESTART: K interrupts, then the handler writes the byte.
    install_handler(SIGALRM, restart::handler, SA_RESTART);
    restart::interrupts = 0;
    restart::wake_after = kInterrupts;
    start_timer(1000);
    check_read(true);
    stop_timer();
    CHECK(restart::interrupts.load() >= kInterrupts);

    // Without SA_RESTART: the first interrupt of the blocked read ends it with EINTR.
    install_handler(SIGALRM, restart::handler, 0);
    restart::interrupts = 0;
    restart::wake_after = 0;
    start_timer(1000);
    check_read(false);
    stop_timer();
    CHECK(restart::interrupts.load() >= 1);
    signal(SIGALRM, SIG_IGN);
  }

  SUBCASE("pthread_kill") {
    install_handler(SIGUSR1, restart::handler, SA_RESTART);
    restart::interrupts = 0;
    restart::wake_after = kInterrupts;
    std::atomic<bool> failed{false};
    std::thread interrupter = interrupt_from_thread(SIGUSR1, kInterrupts, failed);
    check_read(true);
    interrupter.join();
    CHECK_FALSE(failed);
    CHECK(restart::interrupts.load() == kInterrupts);

    install_handler(SIGUSR1, restart::handler, 0);
    restart::interrupts = 0;
    restart::wake_after = 0;
    std::thread interrupter2 = interrupt_from_thread(SIGUSR1, 1, failed);
    check_read(false);
    interrupter2.join();
    CHECK_FALSE(failed);
    CHECK(restart::interrupts.load() == 1);
    signal(SIGUSR1, SIG_IGN);
  }
  CHECK(pipe_bytes(read_fd) == 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Nested handlers
// ---------------------------------------------------------------------------------------------

namespace nested {
enum Event : int {
  usr1_enter = 1,
  usr1_after_syscall,
  usr2_enter,
  usr2_exit,
  usr1_after_raise,
  usr1_exit,
  main_after_raise,
};
constexpr int kEventsPerRound = 7;
constexpr int kRounds = 500;
std::array<std::atomic<int>, kRounds * kEventsPerRound + 64> events{};
std::atomic<int> log_length{0};
std::atomic<int> round_index{0};
std::atomic<long> wrong{0};
long expected_pid = 0, expected_ppid = 0, expected_tid = 0;
int pipe_fd = -1;

void record(Event event) {
  const int at = log_length.fetch_add(1);
  if (at < static_cast<int>(events.size())) events[static_cast<std::size_t>(at)] = event;
}

void usr2_handler(int) {
  const int saved_errno = errno;
  record(usr2_enter);
  // Inside the SIGUSR1 handler: SIGUSR1 blocked, SIGUSR2 itself blocked while it runs.
  const std::uint64_t mask = blocked_signals();
  if ((mask & bit(SIGUSR1)) == 0 || (mask & bit(SIGUSR2)) == 0) ++wrong;
  if (getppid() != expected_ppid) ++wrong;
  const char byte = '2';
  if (write(pipe_fd, &byte, 1) != 1) ++wrong;
  record(usr2_exit);
  errno = saved_errno;
}

void usr1_handler(int) {
  const int saved_errno = errno;
  record(usr1_enter);
  // Values live across the nested handler.
  volatile double x = 1.5 * (round_index + 1);
  volatile long y = 7919L * (round_index + 3);
  const std::uint64_t mask = blocked_signals();
  if ((mask & bit(SIGUSR1)) == 0 || (mask & bit(SIGUSR2)) != 0) ++wrong;
  if (getpid() != expected_pid) ++wrong;
  record(usr1_after_syscall);
  if (round_index % 2 == 0) {
    // Raw: SIGUSR2 arrives in this handler's own code, its calls are hooked.
    raw_tgkill(expected_tid, SIGUSR2);
  } else {
    // Hooked: SIGUSR2 arrives while the hook waits in forward() for its tgkill: its calls are
    // the application's and reach the hook too, nested.
    if (syscall(SYS_tgkill, expected_pid, expected_tid, SIGUSR2) != 0) ++wrong;
  }
  record(usr1_after_raise);
  if (x != 1.5 * (round_index + 1) || y != 7919L * (round_index + 3)) ++wrong;
  record(usr1_exit);
  errno = saved_errno;
}
}  // namespace nested

TEST_CASE("nested_signals") {
  using namespace nested;
  expected_pid = real_getpid();
  expected_ppid = real_getppid();
  expected_tid = real_gettid();
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  pipe_fd = fds[1];
  install_handler(SIGUSR1, usr1_handler, 0);  // SIGUSR2 not in sa_mask
  install_handler(SIGUSR2, usr2_handler, 0);

  Tally tally;
  std::atomic<long> wrong_results{0}, pipe_writes{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    tally.count(call.number());
    // The handlers' writes, told apart from any other (a sanitizer runtime writes on its own:
    // AddressSanitizer probes memory by writing it to a pipe).
    if (call.number() == SYS_write && call.arg(0) == pipe_fd) ++pipe_writes;
    const long result = call.forward();
    if (call.number() == SYS_getpid && result != expected_pid) ++wrong_results;
    if (call.number() == SYS_getppid && result != expected_ppid) ++wrong_results;
    return result;
  });

  const auto reference = compute(kRounds, [](int) {});
  long late = 0;
  const auto result = compute(kRounds, [&](int i) {
    round_index = i;
    raw_tgkill(expected_tid, SIGUSR1);
    record(main_after_raise);
    if (log_length != (i + 1) * kEventsPerRound) ++late;
  });
  CHECK(result == reference);
  CHECK(late == 0);
  CHECK(wrong.load() == 0);
  CHECK(wrong_results.load() == 0);
  REQUIRE(log_length.load() == kRounds * kEventsPerRound);
  int bad_rounds = 0;
  std::string first_bad;
  for (int r = 0; r < kRounds; ++r) {
    for (int e = 0; e < kEventsPerRound; ++e) {
      const int got = events[static_cast<std::size_t>(r * kEventsPerRound + e)];
      if (got != e + 1) {
        if (first_bad.empty()) {
          first_bad = "round " + std::to_string(r) + " event " + std::to_string(e) + ": got " +
                      std::to_string(got);
        }
        ++bad_rounds;
        break;
      }
    }
  }
  CAPTURE(first_bad);
  CHECK(bad_rounds == 0);
  // SIGUSR1 always arrived in application code (raw tgkill): its getpid was hooked every round.
  CHECK(tally[SYS_getpid] == kRounds);
  // Odd rounds raised SIGUSR2 through the hook; its handler ran while the hook waited in
  // forward(), and its calls reached the hook all the same: every round's.
  CHECK(tally[SYS_tgkill] == kRounds / 2);
  CHECK(tally[SYS_getppid] == kRounds);
  CHECK(pipe_writes.load() == kRounds);
  CHECK(pipe_bytes(fds[0]) == kRounds);
  CHECK((blocked_signals() & (bit(SIGUSR1) | bit(SIGUSR2))) == 0);
  signal(SIGUSR1, SIG_IGN);
  signal(SIGUSR2, SIG_IGN);
}

// ---------------------------------------------------------------------------------------------
// 4. siglongjmp out of handlers
// ---------------------------------------------------------------------------------------------

namespace jump {
sigjmp_buf env;
std::atomic<int> in_hook_read{0};  // set by the hook around its forwarded read of empty_fd
std::atomic<long> jumps_from_hook{0};
std::atomic<long> handler_wrong{0};
std::atomic<long> destroyed{0};
AltStack alt;
long expected_ppid = 0;
int aux_fd = -1;

void jump_handler(int) {
  siglongjmp(env, 1);
}

// SIGALRM: jumps out only when it interrupted the hook's blocked read; otherwise returns.
void hook_jump_handler(int) {
  if (in_hook_read) {
    in_hook_read = 0;
    ++jumps_from_hook;
    siglongjmp(env, 1);
  }
}

// The same on an alternate stack, with system calls before the jump.
void alt_hook_jump_handler(int) {
  if (in_hook_read) {
    volatile char local = 0;
    if (!alt.contains(&local)) ++handler_wrong;
    if (getppid() != expected_ppid) ++handler_wrong;
    const char byte = 'j';
    if (write(aux_fd, &byte, 1) != 1) ++handler_wrong;
    in_hook_read = 0;
    ++jumps_from_hook;
    siglongjmp(env, 1);
  }
}

struct DestructionProbe {
  ~DestructionProbe() { ++destroyed; }
};

// SIGALRM: as hook_jump_handler, and stops the timer first (without the hook), so that no
// later signal frame lands on the stack below the test's frame after the jump.
void hook_jump_once_handler(int) {
  if (in_hook_read) {
    raw_stop_timer();
    in_hook_read = 0;
    ++jumps_from_hook;
    siglongjmp(env, 1);
  }
}

// Sends SIGUSR1 to thread `tid` with a raw tgkill; true if a handler jumped back here.
__attribute__((noinline)) bool raise_and_jump(long tid) {
  if (sigsetjmp(env, 1) != 0) return true;
  raw_tgkill(tid, SIGUSR1);
  return false;
}

// Reads a byte from `fd` (hooked); true if a handler jumped back here instead.
__attribute__((noinline)) bool read_and_jump(int fd) {
  if (sigsetjmp(env, 1) != 0) return true;
  char byte;
  [[maybe_unused]] const ssize_t n = read(fd, &byte, 1);
  return false;
}
}  // namespace jump

TEST_CASE("siglongjmp_out_of_handler") {
  const long pid = real_getpid();
  const long tid = real_gettid();
  jump::expected_ppid = real_getppid();
  int empty[2];
  REQUIRE(pipe2(empty, O_CLOEXEC) == 0);  // never written until the end: reads block
  int aux[2];
  REQUIRE(pipe2(aux, O_CLOEXEC) == 0);
  jump::aux_fd = aux[1];
  const int empty_fd = empty[0];

  std::atomic<long> getpids{0}, getppids{0}, aux_writes{0}, empty_reads{0};
  std::atomic<bool> emulate_getpid{false};
  auto probe = std::make_shared<jump::DestructionProbe>();
  auto session = install_or_skip([&, probe](zpoline::Syscall& call) -> long {
    switch (call.number()) {
      case SYS_getpid:
        ++getpids;
        if (emulate_getpid) return 4242;
        break;
      case SYS_getppid:
        ++getppids;
        break;
      case SYS_write:
        if (call.arg(0) == jump::aux_fd) ++aux_writes;
        break;
      case SYS_read:
        if (call.arg(0) == empty_fd) {
          ++empty_reads;
          jump::in_hook_read = 1;
          const long result = call.forward();  // blocks until a handler jumps out of here
          jump::in_hook_read = 0;
          return result;
        }
        break;
    }
    return call.forward();
  });
  probe.reset();

  // The next getpid from the test reaches the hook once and returns the real pid.
  long not_hooked = 0, wrong_pid = 0;
  auto check_hooked_getpid = [&] {
    const long before = getpids;
    if (getpid() != pid) ++wrong_pid;
    if (getpids != before + 1) ++not_hooked;
  };

  // (a) The handler interrupts application code (raw tgkill) and jumps out.
  install_handler(SIGUSR1, jump::jump_handler, 0);
  constexpr int kJumps = 100;
  int jumped = 0;
  for (int i = 0; i < kJumps; ++i) {
    if (jump::raise_and_jump(tid)) ++jumped;
    check_hooked_getpid();
  }
  CHECK(jumped == kJumps);
  CHECK(not_hooked == 0);
  CHECK(wrong_pid == 0);
  CHECK((blocked_signals() & bit(SIGUSR1)) == 0);  // siglongjmp restored the mask

  // (b) The handler interrupts the hook, blocked in its forwarded read, and jumps out of it.
  constexpr int kHookJumps = 20;
  auto jump_out_of_hook = [&](int rounds) {
    jump::jumps_from_hook = 0;
    not_hooked = 0;
    wrong_pid = 0;
    int returned = 0;
    const long reads_before = empty_reads;
    start_timer(2000);
    for (int i = 0; i < rounds; ++i) {
      if (!jump::read_and_jump(empty_fd)) ++returned;
      check_hooked_getpid();
    }
    stop_timer();
    CHECK(returned == 0);
    CHECK(jump::jumps_from_hook.load() == rounds);
    CHECK(empty_reads.load() - reads_before == rounds);
    CHECK(not_hooked == 0);
    CHECK(wrong_pid == 0);
    CHECK((blocked_signals() & bit(SIGALRM)) == 0);
  };
  install_handler(SIGALRM, jump::hook_jump_handler, SA_RESTART);
  jump_out_of_hook(kHookJumps);

  // (c) The same with the handler on an alternate stack, making system calls before it jumps:
  // the handler interrupted the application's read while the hook waited for it in forward(),
  // so they reach the hook (nested in the waiting call), and the jump leaves both. Once with
  // the alternate stack below the hook's frames (heap), once above them (this function's frame).
  constexpr std::size_t kAltSize = 64 * 1024;
  auto heap_alt = std::make_unique<char[]>(kAltSize);
  alignas(64) char frame_alt[kAltSize];
  for (char* base : {heap_alt.get(), &frame_alt[0]}) {
    CAPTURE(static_cast<const void*>(base));
    jump::alt = {base, kAltSize};
    set_alt_stack(jump::alt);
    install_handler(SIGALRM, jump::alt_hook_jump_handler, SA_RESTART | SA_ONSTACK);
    const long getppids_before = getppids, aux_writes_before = aux_writes;
    jump::handler_wrong = 0;
    jump_out_of_hook(kHookJumps);
    CHECK(jump::handler_wrong.load() == 0);
    CHECK(pipe_bytes(aux[0]) == kHookJumps);
    drain(aux[0]);
    CHECK(getppids.load() == getppids_before + kHookJumps);
    CHECK(aux_writes.load() == aux_writes_before + kHookJumps);
    stack_t current{};
    REQUIRE(zpoline::raw_syscall(SYS_sigaltstack, 0, reinterpret_cast<long>(&current)) == 0);
    CHECK((current.ss_flags & SS_ONSTACK) == 0);
  }
  signal(SIGALRM, SIG_IGN);
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);

  // The hook still works normally: emulation, and the read it used to block in.
  emulate_getpid = true;
  CHECK(getpid() == 4242);
  emulate_getpid = false;
  CHECK(getpid() == pid);
  const char byte = 'x';
  CHECK(write(empty[1], &byte, 1) == 1);
  char got = 0;
  const long reads_before = empty_reads;
  CHECK(read(empty_fd, &got, 1) == 1);
  CHECK(got == 'x');
  CHECK(empty_reads.load() == reads_before + 1);

  // No thread is left marked as inside the hook: ending the session destroys the hook.
  session.detach();
  CHECK(jump::destroyed.load() == 1);
}

extern "C" {
// getpid() from 64 KiB below the caller's frame, writing nothing on the way down but its own
// return address and saved rbp (right below the caller's frame) and getpid's return address.
long zt_deep_getpid();
}
asm(".pushsection .text\n"
    "  .globl zt_deep_getpid\n"
    "  .hidden zt_deep_getpid\n"
    "  .type zt_deep_getpid, @function\n"
    "  .p2align 4\n"
    "zt_deep_getpid:\n"
    "  .cfi_startproc\n"
    "  push %rbp\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  .cfi_offset %rbp, -16\n"
    "  mov %rsp, %rbp\n"
    "  .cfi_def_cfa_register %rbp\n"
    "  sub $65536, %rsp\n"
    "  call getpid@PLT\n"
    "  leave\n"
    "  .cfi_def_cfa %rsp, 8\n"
    "  ret\n"
    "  .cfi_endproc\n"
    "  .size zt_deep_getpid, .-zt_deep_getpid\n"
    ".popsection\n");

// After a siglongjmp out of a handler that interrupted a call the hook was waiting for in
// forward() (a blocked read, where most signals arrive), a system call made from a frame deeper
// than the abandoned hook's reaches the hook, and so does one from above it (printf, or any
// library call with a deep call chain, makes its write from well below the caller's frame). The
// deep call writes nothing where the hook's frame was, and the handler stops the timer before it
// jumps, so no later signal frame lands there either: only the library's record of the waiting
// call can tell the thread has left the hook.
TEST_CASE("siglongjmp_out_of_a_forwarded_call_then_deep_call") {
  const long pid = real_getpid();
  int empty[2];
  REQUIRE(pipe2(empty, O_CLOEXEC) == 0);
  const int empty_fd = empty[0];
  std::atomic<long> getpids{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (call.number() == SYS_getpid) ++getpids;
    if (call.number() == SYS_read && call.arg(0) == empty_fd) {
      jump::in_hook_read = 1;
      const long result = call.forward();
      jump::in_hook_read = 0;
      return result;
    }
    return call.forward();
  });
  install_handler(SIGALRM, jump::hook_jump_once_handler, SA_RESTART);

  constexpr int kRounds = 5;
  long not_hooked_deep = 0, not_hooked_shallow = 0, wrong_pid = 0;
  for (int i = 0; i < kRounds; ++i) {
    jump::jumps_from_hook = 0;
    start_timer(2000);
    const bool jumped = jump::read_and_jump(empty_fd);
    // The first call after the jump: from 16 pages below this frame.
    long before = getpids;
    if (zt_deep_getpid() != pid) ++wrong_pid;
    if (getpids != before + 1) ++not_hooked_deep;
    before = getpids;
    if (getpid() != pid) ++wrong_pid;
    if (getpids != before + 1) ++not_hooked_shallow;
    stop_timer();
    REQUIRE(jumped);
    REQUIRE(jump::jumps_from_hook.load() == 1);
  }
  CHECK(wrong_pid == 0);
  CHECK(not_hooked_deep == 0);
  CHECK(not_hooked_shallow == 0);
  signal(SIGALRM, SIG_IGN);
}

namespace jump {
std::atomic<int> in_hook_code{0};  // set by the hook around its own raw tgkill
// SIGUSR2, sent by the hook to its own thread: jumps out of the hook's own code.
void hook_code_jump_handler(int) {
  if (in_hook_code) {
    in_hook_code = 0;
    ++jumps_from_hook;
    siglongjmp(env, 1);
  }
}
// Calls getppid() (hooked); true if a handler jumped back here instead.
__attribute__((noinline)) bool getppid_and_jump() {
  if (sigsetjmp(env, 1) != 0) return true;
  getppid();
  return false;
}
}  // namespace jump

// After a siglongjmp out of a handler that interrupted the hook's own code (not a call it was
// waiting for in forward()), a system call made from a frame deeper than the abandoned hook's
// must reach the hook too, and so must one from above it.
//
// A known limit (README "Limits"; test/meson.build runs this test as an expected failure): the
// library detects the abandoned hook state at a call from above the hook's frame, or from below
// it once the code there has overwritten the canary in the dispatcher's frame. Here nothing
// does: the hook sends the signal to its own thread with a raw tgkill (no timer, no later signal
// frame), and the deep call writes nothing where the hook's frame was. The deep getpid therefore
// bypasses the hook in every round, whatever the compiler and the vector state size (which
// decide where exactly the hook's frame and its canary were).
TEST_CASE("siglongjmp_out_of_hook_then_deep_call") {
  const long pid = real_getpid();
  const long tid = real_gettid();
  std::atomic<long> getpids{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (call.number() == SYS_getpid) ++getpids;
    if (call.number() == SYS_getppid) {
      jump::in_hook_code = 1;
      raw_tgkill(tid, SIGUSR2);  // the handler runs when this returns, in the hook's code
      jump::in_hook_code = 0;
    }
    return call.forward();
  });
  install_handler(SIGUSR2, jump::hook_code_jump_handler, 0);

  constexpr int kRounds = 5;
  long not_hooked_deep = 0, not_hooked_shallow = 0, wrong_pid = 0;
  for (int i = 0; i < kRounds; ++i) {
    jump::jumps_from_hook = 0;
    const bool jumped = jump::getppid_and_jump();
    // The first call after the jump: from 16 pages below this frame.
    long before = getpids;
    if (zt_deep_getpid() != pid) ++wrong_pid;
    if (getpids != before + 1) ++not_hooked_deep;
    before = getpids;
    if (getpid() != pid) ++wrong_pid;
    if (getpids != before + 1) ++not_hooked_shallow;
    REQUIRE(jumped);
    REQUIRE(jump::jumps_from_hook.load() == 1);
  }
  CHECK(wrong_pid == 0);
  CHECK(not_hooked_deep == 0);
  CHECK(not_hooked_shallow == 0);
  signal(SIGUSR2, SIG_IGN);
}

namespace jump {
int empty_read_fd = -1;
std::atomic<int> handler_reading{0};
// SIGUSR1 on the alternate stack: a hooked read (the hook then runs on the alternate stack) that
// blocks until SIGALRM jumps out of it, back to the test.
void blocking_read_handler(int) {
  handler_reading = 1;
  char byte;
  [[maybe_unused]] const ssize_t n = read(empty_read_fd, &byte, 1);
}
// SIGALRM: jumps out of the blocked read above, whether or not it went through the hook.
void handler_read_jump_handler(int) {
  if (handler_reading) {
    raw_stop_timer();  // no later SIGALRM frame on the alternate stack, over the hook's
    handler_reading = 0;
    ++jumps_from_hook;
    siglongjmp(env, 1);
  }
}
}  // namespace jump

// A hook running on an alternate signal stack (a handler on it made the call) is left by a
// siglongjmp back to the main stack. The thread's later calls must reach the hook again, also
// when the alternate stack lies above the main stack's frames (a buffer in an outer frame here;
// a heap block above a thread's stack elsewhere).
//
// A known limit (README "Limits"; test/meson.build runs this test as an expected failure): the
// calls from the main stack come from below the abandoned hook's frame on the alternate stack,
// whose canary nothing overwrites (the handler stops the timer before it jumps, so no later
// signal frame lands on the alternate stack), so they bypass the hook; the thread stays marked
// as inside the hook, and detach cannot destroy the hook.
TEST_CASE("siglongjmp_out_of_hook_on_alt_stack") {
  const long pid = real_getpid();
  const long tid = real_gettid();
  int empty[2];
  REQUIRE(pipe2(empty, O_CLOEXEC) == 0);
  jump::empty_read_fd = empty[0];
  std::atomic<long> getpids{0}, alt_reads{0};
  constexpr std::size_t kAltSize = 64 * 1024;
  alignas(64) char frame_alt[kAltSize];  // above every frame this test calls
  jump::alt = {frame_alt, kAltSize};
  jump::destroyed = 0;
  auto probe = std::make_shared<jump::DestructionProbe>();
  auto session = install_or_skip([&, probe](zpoline::Syscall& call) -> long {
    if (call.number() == SYS_getpid) ++getpids;
    if (call.number() == SYS_read && call.arg(0) == jump::empty_read_fd) {
      volatile char here = 0;
      if (jump::alt.contains(&here)) ++alt_reads;
      jump::in_hook_read = 1;
      const long result = call.forward();
      jump::in_hook_read = 0;
      return result;
    }
    return call.forward();
  });
  probe.reset();
  set_alt_stack(jump::alt);
  install_handler(SIGUSR1, jump::blocking_read_handler, SA_ONSTACK);
  install_handler(SIGALRM, jump::handler_read_jump_handler, SA_RESTART | SA_ONSTACK);

  constexpr int kRounds = 5;
  long not_hooked = 0, wrong_pid = 0;
  for (int i = 0; i < kRounds; ++i) {
    jump::jumps_from_hook = 0;
    start_timer(2000);
    const bool jumped = jump::raise_and_jump(tid);
    const long before = getpids;
    if (getpid() != pid) ++wrong_pid;
    if (getpids != before + 1) ++not_hooked;
    stop_timer();
    REQUIRE(jumped);
    REQUIRE(jump::jumps_from_hook.load() == 1);
  }
  CHECK(alt_reads.load() == kRounds);
  CHECK(wrong_pid == 0);
  CHECK(not_hooked == 0);
  signal(SIGALRM, SIG_IGN);
  signal(SIGUSR1, SIG_IGN);
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
  // No thread is left marked as inside the hook: ending the session destroys the hook.
  session.detach();
  CHECK(jump::destroyed.load() == 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Signals while the hook runs
// ---------------------------------------------------------------------------------------------

namespace inside {
std::atomic<int> hook_busy{0};  // the hook is in its loop of raw getpid calls
std::atomic<long> runs{0}, runs_in_hook{0}, wrong{0};
long expected_ppid = 0;
int ack_fd = -1;  // the handler acknowledges each run to the sender

void handler(int) {
  const int saved_errno = errno;
  if (hook_busy) ++runs_in_hook;
  if (getppid() != expected_ppid) ++wrong;
  const char byte = 'h';
  if (write(ack_fd, &byte, 1) != 1) ++wrong;
  ++runs;
  errno = saved_errno;
}
}  // namespace inside

TEST_CASE("signal_while_inside_hook") {
  const long pid = real_getpid();
  const long tid = real_gettid();
  inside::expected_ppid = real_getppid();
  int ack[2];
  REQUIRE(pipe2(ack, O_CLOEXEC | O_NONBLOCK) == 0);
  inside::ack_fd = ack[1];
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  install_handler(SIGUSR1, inside::handler, SA_RESTART);

  constexpr int kHookSpins = 400;
  std::atomic<long> hook_getpids{0}, hook_getppids{0}, hook_wrong{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    if (call.number() == SYS_getppid) ++hook_getppids;
    if (call.number() == SYS_getpid && real_gettid() == tid) {
      ++hook_getpids;
      inside::hook_busy = 1;
      for (int i = 0; i < kHookSpins; ++i) {
        if (zpoline::raw_syscall(SYS_getpid) != pid) ++hook_wrong;
      }
      inside::hook_busy = 0;
    }
    return call.forward();
  });

  // The sender signals again as soon as the handler has acknowledged the last signal, and
  // sleeps in poll meanwhile (a spinning sender on the main thread's CPU would starve it).
  std::atomic<bool> stop{false};
  std::atomic<long> sender_timeouts{0};
  std::thread sender([&] {
    while (!stop) {
      zpoline::raw_syscall(SYS_tgkill, pid, tid, SIGUSR1);
      pollfd readable{ack[0], POLLIN, 0};
      if (poll(&readable, 1, 10000) != 1) ++sender_timeouts;
      char bytes[64];
      [[maybe_unused]] const ssize_t n = read(ack[0], bytes, sizeof bytes);
    }
  });
  constexpr long kMinRuns = 2000, kMinRunsInHook = 200, kMinLoops = 2000;
  long loops = 0, wrong_main = 0;
  const auto deadline = Clock::now() + kDeadline;
  while ((inside::runs < kMinRuns || inside::runs_in_hook < kMinRunsInHook || loops < kMinLoops) &&
         Clock::now() < deadline) {
    ++loops;
    if (getpid() != pid) ++wrong_main;
    if (syscall(SYS_gettid) != tid) ++wrong_main;
    const unsigned char out[2] = {static_cast<unsigned char>(loops), 0xa5};
    unsigned char in[2] = {};
    if (write(fds[1], out, 2) != 2) ++wrong_main;
    if (read(fds[0], in, 2) != 2 || std::memcmp(in, out, 2) != 0) ++wrong_main;
  }
  stop = true;
  sender.join();
  CAPTURE(loops);
  CAPTURE(inside::runs.load());
  CAPTURE(inside::runs_in_hook.load());
  CHECK(inside::runs.load() >= kMinRuns);
  CHECK(inside::runs_in_hook.load() >= kMinRunsInHook);
  CHECK(wrong_main == 0);
  CHECK(hook_wrong.load() == 0);
  CHECK(inside::wrong.load() == 0);
  CHECK(sender_timeouts.load() == 0);
  // Every getpid of the loop reached the hook once.
  CHECK(hook_getpids.load() == loops);
  // Handler runs inside the hook were bypassed; at most the others reached it.
  CHECK(hook_getppids.load() <= inside::runs.load() - inside::runs_in_hook.load());
  CHECK(pipe_bytes(fds[0]) == 0);
  signal(SIGUSR1, SIG_IGN);
}

// ---------------------------------------------------------------------------------------------
// 7. The hook sees sigaction and sigprocmask
// ---------------------------------------------------------------------------------------------

namespace masks {
void handler_a(int) {}
void handler_b(int) {}

// The kernel's struct sigaction for rt_sigaction.
struct KernelSigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  std::uint64_t mask;
};

struct Record {
  long number = 0;
  long args[4] = {};
  KernelSigaction action{};  // rt_sigaction: *act, if given
  std::uint64_t set = 0;     // rt_sigprocmask: *set, if given
  long result = 0;
};
}  // namespace masks

TEST_CASE("signal_mask_and_sigaction_calls_hooked") {
  using masks::Record;
  std::array<Record, 16> records{};
  std::atomic<int> count{0};
  std::atomic<bool> recording{false};
  std::atomic<bool> deny_sigusr2{false};
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    const long number = call.number();
    if (!recording || (number != SYS_rt_sigaction && number != SYS_rt_sigprocmask)) {
      return call.forward();
    }
    const int at = count++;
    Record scratch;
    Record& r =
        at < static_cast<int>(records.size()) ? records[static_cast<std::size_t>(at)] : scratch;
    r.number = number;
    for (int i = 0; i < 4; ++i) r.args[i] = call.arg(i);
    if (number == SYS_rt_sigaction && call.arg(1) != 0) {
      std::memcpy(&r.action, reinterpret_cast<const void*>(call.arg(1)), sizeof r.action);
    }
    if (number == SYS_rt_sigprocmask && call.arg(1) != 0) {
      std::memcpy(&r.set, reinterpret_cast<const void*>(call.arg(1)), sizeof r.set);
    }
    if (number == SYS_rt_sigaction && call.arg(0) == SIGUSR2 && call.arg(1) != 0 && deny_sigusr2) {
      r.result = -EPERM;
      return -EPERM;
    }
    r.result = call.forward();
    return r.result;
  });

  // Runs `action` with recording on; returns what the hook saw.
  auto seen = [&](auto action) {
    count = 0;
    records = {};
    recording = true;
    action();
    recording = false;
    return std::vector<Record>(records.begin(), records.begin() + std::min<int>(count, 16));
  };
  auto current_handler = [](int signal) {
    masks::KernelSigaction current{};
    zpoline::raw_syscall(SYS_rt_sigaction, signal, 0, reinterpret_cast<long>(&current), 8);
    return current.handler;
  };

  // sigaction with a new action and an old one.
  {
    struct sigaction old {};
    int rc = -2;
    const auto calls = seen([&] {
      struct sigaction action {};
      action.sa_handler = masks::handler_a;
      action.sa_flags = SA_RESTART | SA_ONSTACK;
      sigemptyset(&action.sa_mask);
      sigaddset(&action.sa_mask, SIGUSR2);
      rc = sigaction(SIGUSR1, &action, &old);
    });
    CHECK(rc == 0);
    REQUIRE(calls.size() == 1);
    const Record& r = calls[0];
    CHECK(r.number == SYS_rt_sigaction);
    CHECK(r.args[0] == SIGUSR1);
    CHECK(r.args[1] != 0);
    CHECK(r.args[2] != 0);
    CHECK(r.args[3] == 8);
    CHECK(r.action.handler == reinterpret_cast<void*>(masks::handler_a));
    CHECK((r.action.flags & (SA_RESTART | SA_ONSTACK)) == (SA_RESTART | SA_ONSTACK));
    CHECK((r.action.flags & SA_SIGINFO) == 0);
    CHECK(r.action.mask == bit(SIGUSR2));
    CHECK(r.result == 0);
    CHECK(current_handler(SIGUSR1) == reinterpret_cast<void*>(masks::handler_a));
  }
  // sigaction that only queries.
  {
    struct sigaction old {};
    int rc = -2;
    const auto calls = seen([&] { rc = sigaction(SIGUSR1, nullptr, &old); });
    CHECK(rc == 0);
    CHECK((old.sa_handler == &masks::handler_a));
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].number == SYS_rt_sigaction);
    CHECK(calls[0].args[0] == SIGUSR1);
    CHECK(calls[0].args[1] == 0);
    CHECK(calls[0].args[2] != 0);
  }
  // signal().
  {
    const auto calls = seen([&] { signal(SIGUSR2, masks::handler_b); });
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].number == SYS_rt_sigaction);
    CHECK(calls[0].args[0] == SIGUSR2);
    CHECK(calls[0].action.handler == reinterpret_cast<void*>(masks::handler_b));
    CHECK(current_handler(SIGUSR2) == reinterpret_cast<void*>(masks::handler_b));
  }
  // The hook's result replaces the kernel's: a denied sigaction fails and changes nothing.
  {
    deny_sigusr2 = true;
    int rc = 0, error = 0;
    const auto calls = seen([&] {
      errno = 0;
      rc = sigaction(SIGUSR2, nullptr, nullptr);  // a query: not denied
      struct sigaction action {};
      action.sa_handler = masks::handler_a;
      sigemptyset(&action.sa_mask);
      errno = 0;
      rc = sigaction(SIGUSR2, &action, nullptr);
      error = errno;
    });
    deny_sigusr2 = false;
    CHECK(rc == -1);
    CHECK(error == EPERM);
    REQUIRE(calls.size() == 2);
    CHECK(calls[1].args[0] == SIGUSR2);
    CHECK(calls[1].args[2] == 0);
    CHECK(current_handler(SIGUSR2) == reinterpret_cast<void*>(masks::handler_b));
  }

  // sigprocmask and pthread_sigmask, every `how`.
  const std::uint64_t initial = blocked_signals();
  auto check_mask_call = [&](const std::vector<Record>& calls, int how, std::uint64_t set,
                             bool has_old) {
    REQUIRE(calls.size() == 1);
    const Record& r = calls[0];
    CHECK(r.number == SYS_rt_sigprocmask);
    CHECK(r.args[0] == how);
    CHECK(r.args[1] != 0);
    CHECK(r.set == set);
    CHECK((r.args[2] != 0) == has_old);
    CHECK(r.args[3] == 8);
    CHECK(r.result == 0);
  };
  sigset_t usr1, usr2, old;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);

  check_mask_call(seen([&] { CHECK(sigprocmask(SIG_BLOCK, &usr1, &old) == 0); }), SIG_BLOCK,
                  bit(SIGUSR1), true);
  CHECK(blocked_signals() == (initial | bit(SIGUSR1)));

  check_mask_call(seen([&] { CHECK(pthread_sigmask(SIG_BLOCK, &usr2, nullptr) == 0); }), SIG_BLOCK,
                  bit(SIGUSR2), false);
  CHECK(blocked_signals() == (initial | bit(SIGUSR1) | bit(SIGUSR2)));

  check_mask_call(seen([&] { CHECK(pthread_sigmask(SIG_UNBLOCK, &usr1, &old) == 0); }), SIG_UNBLOCK,
                  bit(SIGUSR1), true);
  CHECK(blocked_signals() == (initial | bit(SIGUSR2)));

  check_mask_call(seen([&] { CHECK(sigprocmask(SIG_SETMASK, &usr1, nullptr) == 0); }), SIG_SETMASK,
                  bit(SIGUSR1), false);
  CHECK(blocked_signals() == bit(SIGUSR1));

  // A query only.
  {
    sigset_t current;
    const auto calls = seen([&] { CHECK(sigprocmask(SIG_BLOCK, nullptr, &current) == 0); });
    REQUIRE(calls.size() == 1);
    CHECK(calls[0].number == SYS_rt_sigprocmask);
    CHECK(calls[0].args[1] == 0);
    CHECK(calls[0].args[2] != 0);
    CHECK(sigismember(&current, SIGUSR1) == 1);
    CHECK(sigismember(&current, SIGUSR2) == 0);
  }

  // From another thread, on that thread's mask.
  {
    std::uint64_t other_mask = 0;
    const auto calls = seen([&] {
      std::thread([&] {
        pthread_sigmask(SIG_BLOCK, &usr2, nullptr);
        other_mask = blocked_signals();
      }).join();
    });
    // The thread's creation blocks and restores signals too (glibc's pthread_create): count
    // only the call made by the thread's own code.
    int found = 0;
    for (const Record& r : calls) {
      if (r.number == SYS_rt_sigprocmask && r.args[0] == SIG_BLOCK && r.set == bit(SIGUSR2)) {
        ++found;
      }
    }
    CHECK(found == 1);
    CHECK((other_mask & bit(SIGUSR2)) != 0);
    CHECK(blocked_signals() == bit(SIGUSR1));
  }

  sigset_t restore;
  sigemptyset(&restore);
  for (int s = 1; s <= 64; ++s) {
    if (initial & bit(s)) sigaddset(&restore, s);
  }
  sigprocmask(SIG_SETMASK, &restore, nullptr);
  CHECK(blocked_signals() == initial);
}
