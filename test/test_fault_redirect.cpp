// Syscall numbers that do not land on a sled entry (-1, huge numbers, the x32 bit, numbers inside
// an exit) must return exactly what the kernel returns without hooks, and reach the hook; other
// faults must still reach the application's own handlers.
#include <doctest/doctest.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <vector>

#include "support.hpp"
#include "trampoline/sled.hpp"
#include "trampoline/trampoline.hpp"

namespace {

struct Outcome {
  long result;
  int error;
  bool operator==(const Outcome&) const = default;
};

// Through libc's generic syscall() wrapper, whose site is rewritten at install.
Outcome call_number(long number) {
  errno = 0;
  const long result = syscall(number, 0, 0, 0, 0, 0, 0);
  return {result, errno};
}

const std::vector<long> kOddNumbers = {
    -1,
    -4096,
    100000,
    0x40000000 | SYS_getpid,          // the x32 bit
    (1L << 32) | SYS_getppid,         // the kernel looks at the low 32 bits only
    zpoline::detail::kFirstExit + 1,  // inside the first exit's displacement
    zpoline::detail::kSledSize - 2,   // inside the second exit's displacement
    600,
    4096,
    // In the relay pages, not a relay: where a PIE process's relay goes (checked after install).
    static_cast<long>(zpoline::detail::relay_placements().front().base() + 100),
};

}  // namespace

TEST_CASE("odd_numbers_behave_as_without_hooks") {
  std::vector<Outcome> unhooked;
  for (long number : kOddNumbers) unhooked.push_back(call_number(number));
  CHECK(unhooked[0] == Outcome{-1, ENOSYS});

  std::atomic<long> seen{0};
  auto session = zpoline_test::install_or_skip([&](zpoline::Syscall& call) {
    for (long number : kOddNumbers) {
      if (call.number() == number) ++seen;
    }
    return call.forward();
  });
  REQUIRE(zpoline::detail::trampoline_relay_base() ==
          zpoline::detail::relay_placements().front().base());
  for (std::size_t i = 0; i < kOddNumbers.size(); ++i) {
    INFO("number ", kOddNumbers[i]);
    const Outcome hooked = call_number(kOddNumbers[i]);
    CHECK(hooked == unhooked[i]);
  }
  CHECK(seen.load() == static_cast<long>(kOddNumbers.size()));
}

namespace {
sigjmp_buf recovery;
volatile sig_atomic_t application_handler_ran = 0;
void application_handler(int) {
  application_handler_ran = 1;
  siglongjmp(recovery, 1);
}
}  // namespace

TEST_CASE("application_fault_handlers_still_run") {
  struct sigaction action {};
  action.sa_handler = application_handler;
  sigemptyset(&action.sa_mask);
  REQUIRE(sigaction(SIGSEGV, &action, nullptr) == 0);
  auto session =
      zpoline_test::install_or_skip([](zpoline::Syscall& call) { return call.forward(); });

  // A genuine fault (a write to page 0, which is never writable) reaches the application.
  if (sigsetjmp(recovery, 1) == 0) {
    volatile std::uintptr_t page_zero_address = 64;
    *reinterpret_cast<volatile int*>(page_zero_address) = 1;
    FAIL("the write to page 0 did not fault");
  }
  CHECK(application_handler_ran == 1);

  // And the odd numbers still work afterwards.
  CHECK(call_number(-1) == Outcome{-1, ENOSYS});
}

// Numbers that are not canonical addresses (bits 47 and up not all equal) make the rewritten
// `call *%rax` itself fault (#GP at the site, nothing pushed; a segfault before): they are made
// as calls too, and return what the kernel returns.
TEST_CASE("non_canonical_numbers_behave_as_without_hooks") {
  const std::vector<long> numbers = {0x800000000000L | SYS_getppid, 0x7fffffffffffffffL,
                                     static_cast<long>(0xffff7fffffffffffUL), 1L << 62};
  std::vector<Outcome> unhooked;
  for (long number : numbers) unhooked.push_back(call_number(number));
  std::atomic<long> seen{0};
  auto session = zpoline_test::install_or_skip([&](zpoline::Syscall& call) {
    for (long number : numbers) seen += call.number() == number;
    return call.forward();
  });
  for (std::size_t i = 0; i < numbers.size(); ++i) {
    CAPTURE(numbers[i]);
    CHECK(call_number(numbers[i]) == unhooked[i]);
  }
  CHECK(seen.load() == static_cast<long>(numbers.size()));
}

// The library takes SIGSEGV and SIGILL (for the sled) and keeps the application's dispositions
// for them: the default action still ends the process by that signal when it is sent (it was
// swallowed, and the redirector gone), a handler installed after install still runs, for sent
// signals and for real faults.
TEST_CASE("default_actions_and_later_handlers_of_fault_signals") {
  for (const int signal : {SIGSEGV, SIGILL}) {
    CAPTURE(signal);
    const pid_t child = fork();
    if (child == 0) {
      // The default action (not doctest's crash handler, nor a sanitizer's).
      ::signal(signal, SIG_DFL);
      auto session =
          zpoline_test::install_or_skip([](zpoline::Syscall& call) { return call.forward(); });
      raise(signal);
      _exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == signal);
  }
  auto session =
      zpoline_test::install_or_skip([](zpoline::Syscall& call) { return call.forward(); });
  static std::atomic<int> handled{0};
  static sigjmp_buf out;
  struct sigaction action {};
  action.sa_handler = [](int) {
    ++handled;
    siglongjmp(out, 1);
  };
  REQUIRE(sigaction(SIGSEGV, &action, nullptr) == 0);
  struct sigaction current {};
  REQUIRE(sigaction(SIGSEGV, nullptr, &current) == 0);
  CHECK((current.sa_handler == action.sa_handler));  // the application sees its own handler
  if (sigsetjmp(out, 1) == 0) raise(SIGSEGV);
  CHECK(handled.load() == 1);
  if (sigsetjmp(out, 1) == 0) {
    volatile std::uintptr_t page_zero = 0x10;  // the sled's page is never writable: this faults
    *reinterpret_cast<volatile int*>(page_zero) = 1;
  }
  CHECK(handled.load() == 2);
  // The sled still works: an odd number reaches the kernel.
  CHECK(call_number(-1) == (Outcome{-1, ENOSYS}));
  signal(SIGSEGV, SIG_DFL);
}
