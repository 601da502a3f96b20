// What every hook of the matrix suite counts: calls per system call number, in a page shared
// with the process's fork children (MAP_SHARED), so that a cell can check what a child's hook
// saw. The cell maps it and passes its address to the matrix hook library in
// ZPOLINE_HOOK_MATRIX_COUNTS (same process, same address).
#pragma once

#include <atomic>
#include <cstdint>

namespace matrix {

inline constexpr long kNumbers = 512;

struct Counts {
  std::atomic<std::uint64_t> calls[kNumbers];
  std::atomic<std::uint64_t> busy_work;  // times a busy hook did its own work
};

// Calls a busy hook makes no allocation around: the allocator may hold its lock while it makes
// them (README, "Limits"). It still makes system calls of its own for them.
constexpr bool allocator_may_be_locked(long number) {
  switch (number) {
    case 9:    // mmap
    case 10:   // mprotect
    case 11:   // munmap
    case 12:   // brk
    case 25:   // mremap
    case 28:   // madvise
    case 56:   // clone: fork() holds malloc's locks across it in a multithreaded process
    case 57:   // fork
    case 58:   // vfork
    case 202:  // futex
    case 435:  // clone3
      return true;
    default:
      return false;
  }
}

}  // namespace matrix
