// System calls that never reach the hook: made by the library's own `syscall` instructions
// (dispatch/entry_stub.S), which are never rewritten and which Syscall User Dispatch lets
// through.
#pragma once

extern "C" long zpoline_detail_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4,
                                           long a5) __attribute__((visibility("hidden")));

namespace zpoline::detail {

inline long raw_syscall(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0,
                        long a4 = 0, long a5 = 0) noexcept {
  return zpoline_detail_raw_syscall(number, a0, a1, a2, a3, a4, a5);
}

}  // namespace zpoline::detail
