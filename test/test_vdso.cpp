// Options::route_vdso: clock_gettime and friends reach the hook only when asked, return correct
// values either way, and go back to the vDSO when the Session ends.
#include <doctest/doctest.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>

#include <atomic>
#include <cstring>

#include "support.hpp"

namespace {

std::atomic<long> clock_calls{0};
zpoline::Hook counting_clock() {
  return [](zpoline::Syscall& call) {
    if (call.number() == SYS_clock_gettime) ++clock_calls;
    return call.forward();
  };
}

long long monotonic_ns() {
  timespec now{};
  REQUIRE(clock_gettime(CLOCK_MONOTONIC, &now) == 0);
  return now.tv_sec * 1000000000LL + now.tv_nsec;
}

}  // namespace

TEST_CASE("vdso_calls_are_not_seen_by_default") {
  auto session = zpoline_test::install_or_skip(counting_clock());
  const long long first = monotonic_ns();
  const long long second = monotonic_ns();
  CHECK(second >= first);
  CHECK(clock_calls.load() == 0);
}

TEST_CASE("route_vdso_sends_them_through_the_hook") {
  zpoline::Options options;
  options.route_vdso = true;
  {
    auto session = zpoline_test::install_or_skip(counting_clock(), options);
    const long long first = monotonic_ns();
    const long long second = monotonic_ns();
    CHECK(second >= first);
    CHECK(clock_calls.load() == 2);
    // The kernel's answer agrees with a raw call made right after.
    timespec raw{};
    REQUIRE(zpoline::raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC,
                                 reinterpret_cast<long>(&raw)) == 0);
    CHECK(raw.tv_sec * 1000000000LL + raw.tv_nsec >= second);
    CHECK(sched_getcpu() >= 0);
  }
  // Session ended: back to the vDSO, not seen.
  const long before = clock_calls.load();
  monotonic_ns();
  CHECK(clock_calls.load() == before);
}

TEST_CASE("a_hook_can_shift_time_by_one_day") {
  constexpr long kDay = 24 * 60 * 60;
  zpoline::Options options;
  options.route_vdso = true;
  const long before_install = time(nullptr);
  auto session = zpoline_test::install_or_skip(
      [](zpoline::Syscall& call) -> long {
        const long result = call.forward();
        if (result < 0) return result;
        if (auto clock = call.as<zpoline::sys::clock_gettime>()) {
          timespec shifted{};
          std::memcpy(&shifted, clock->tp(), sizeof shifted);
          shifted.tv_sec += kDay;
          std::memcpy(clock->tp(), &shifted, sizeof shifted);
        } else if (call.number() == SYS_time) {
          return result + kDay;
        }
        return result;
      },
      options);
  timespec now{};
  REQUIRE(clock_gettime(CLOCK_REALTIME, &now) == 0);
  CHECK(now.tv_sec >= before_install + kDay);
  CHECK(now.tv_sec < before_install + kDay + 60);
  const long shifted_time = time(nullptr);
  CHECK(shifted_time >= before_install + kDay);
  CHECK(shifted_time < before_install + kDay + 60);
}
