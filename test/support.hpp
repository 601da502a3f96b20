// Helpers shared by the test suites.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "rewriting/site_trampolines.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline_test {

// Installs the hook, or ends the test process with 77 (meson's "skipped") if this machine will
// not map page 0, saying why. Every scenario that installs runs in its own process (one meson
// test() per doctest test case), so exiting here skips exactly one scenario.
inline zpoline::Session install_or_skip(zpoline::Hook hook, zpoline::Options options = {}) {
  try {
    return zpoline::install(std::move(hook), std::move(options));
  } catch (const zpoline::Error& error) {
    if (error.code() == zpoline::ErrorCode::page_zero_refused) {
      std::fprintf(stderr, "SKIP: this machine does not allow page 0: %s\n", error.what());
      std::_Exit(77);
    }
    throw;
  }
}

// Whether the `syscall` at `site` has been rewritten, by either mechanism: `call *%rax` (page
// 0), `jmp rel8` (near, through padding), or still `syscall` with the instruction before it
// replaced by a jump to its trampoline (near, moved instruction).
inline bool is_rewritten_site(const unsigned char* site) {
  if (site[0] == 0xff && site[1] == 0xd0) return true;
  if (site[0] == 0xeb) return true;
  if (site[0] != 0x0f) return false;
  for (std::size_t length = 5; length <= zpoline::detail::kMaxMovedInstruction; ++length) {
    const auto at = reinterpret_cast<std::uintptr_t>(site) - length;
    if (zpoline::detail::trampoline_of_moved_instruction(at) != 0 &&
        *reinterpret_cast<const unsigned char*>(at) == 0xe9) {
      return true;
    }
  }
  return false;
}

// The mechanism the tests' installs get: ZPOLINE_MECHANISM where set (meson runs the scenario
// suites once more with it set to near), else page 0.
inline bool near_mechanism_wanted() {
  const char* mechanism = std::getenv("ZPOLINE_MECHANISM");
  return mechanism != nullptr && std::string(mechanism) == "near";
}

// Makes this process unprivileged for page 0 for good, as a process in a default container is:
// CAP_SYS_RAWIO leaves the bounding, ambient, inheritable, permitted and effective sets (so no
// program it execs gets it back either). False (with errno) if that failed.
inline bool drop_cap_sys_rawio() {
  if (prctl(PR_CAPBSET_DROP, CAP_SYS_RAWIO, 0, 0, 0) != 0 && errno != EINVAL) return false;
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, CAP_SYS_RAWIO, 0, 0);
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  const unsigned bit = 1u << (CAP_SYS_RAWIO % 32);
  data[CAP_SYS_RAWIO / 32].effective &= ~bit;
  data[CAP_SYS_RAWIO / 32].permitted &= ~bit;
  data[CAP_SYS_RAWIO / 32].inheritable &= ~bit;
  return syscall(SYS_capset, &header, data) == 0;
}

// Switches this process to the unprivileged user and group `nobody` (65534), with no
// supplementary groups: every capability goes with the root uid. False (with errno) if not.
// The process stays dumpable (a uid change clears that), so that it can still read its own
// /proc/self/task/*/syscall, as a program started by nobody can.
inline bool become_nobody() {
  constexpr uid_t kNobody = 65534;
  return setgroups(0, nullptr) == 0 && setresgid(kNobody, kNobody, kNobody) == 0 &&
         setresuid(kNobody, kNobody, kNobody) == 0 && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == 0;
}

// Whether the kernel refuses this process address 0 (vm.mmap_min_addr and its capabilities).
inline bool page_zero_is_refused() {
  void* zero =
      mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (zero == MAP_FAILED) return errno == EPERM || errno == EACCES;
  munmap(zero, 4096);
  return false;
}

// Waits until thread `tid` of this process waits in the kernel in system call `number` (as
// /proc/self/task/TID/syscall shows it), polling without sleeping for a fixed time; false after
// 10 s.
inline bool wait_until_blocked_in(long tid, long number) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%ld/syscall", tid);
  while (std::chrono::steady_clock::now() < deadline) {
    char text[32] = {};
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    const ssize_t n = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
    if (fd >= 0) close(fd);
    if (n > 0 && text[0] >= '0' && text[0] <= '9' && std::atol(text) == number) return true;
    sched_yield();
  }
  return false;
}

}  // namespace zpoline_test
