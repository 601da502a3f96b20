// The sled: the bytes at virtual address 0 that a rewritten `call *%rax` lands in.
//
// A rewritten site jumps to the address equal to the syscall number, so every byte offset of the
// sled is an entry point. The sled is built from three kinds of code, each valid from any entry:
//   * jump pairs `eb dd`, where dd is an even displacement in 0x40..0x4e. Entered at the `eb`,
//     it is a short jump forward; entered one byte later, dd is a REX prefix and `dd eb dd'` is the
//     next pair's jump with a harmless prefix. Either way the next instruction is again on a pair
//     boundary, and each jump advances 0x42..0x50 bytes.
//   * a landing zone of long nops (`66 66 ... 90`) in front of each exit, for the bytes that are
//     too close to the exit for a jump pair.
//   * an exit: `movabs $entry, %r11; jmp *%r11` into the entry stub (r11 is clobbered by
//     `syscall` anyway), using no data read, so the page can be execute-only.
// None of these instructions touches a register other than r11, the flags, memory or the stack.
// The displacement of each pair is chosen by dynamic programming to minimise the instructions
// run from that entry to its exit (getpid, number 39, runs 7 jumps, then movabs and jmp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace zpoline::detail {

inline constexpr std::size_t kSledSize = 4096;
// Entries 0..kFirstExit-1 reach the first exit; this covers every x86-64 and x32 syscall number
// the kernel defines (the x32 range ends at 547).
inline constexpr std::size_t kFirstExit = 548;
inline constexpr std::size_t kExitLength = 13;
// Entries kSecondRegion..kSecondExit-1 reach the second exit at the end of the page.
inline constexpr std::size_t kSecondRegion = kFirstExit + kExitLength;
inline constexpr std::size_t kSecondExit = kSledSize - kExitLength;

// Fills `sled` (kSledSize bytes) so that every entry below kFirstExit and in
// [kSecondRegion, kSecondExit) reaches `entry_stub`. Entries inside an exit sequence (numbers
// 549..560 and 4084..4095, which the kernel does not define) are not valid entries.
void build_sled(std::span<std::uint8_t, kSledSize> sled, std::uintptr_t entry_stub);

// True for entries that build_sled() makes reach the entry stub.
constexpr bool is_sled_entry(std::size_t offset) {
  return offset <= kFirstExit || (offset >= kSecondRegion && offset <= kSecondExit);
}

}  // namespace zpoline::detail
