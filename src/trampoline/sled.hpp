// The sled: the bytes at virtual address 0 that a rewritten `call *%rax` lands in, and the relay
// that leads from it to the entry stub.
//
// A rewritten site jumps to the address equal to the syscall number, so every byte offset of the
// sled is an entry point. The sled is built from three kinds of code:
//   * jump pairs `eb dd`, where dd is an even displacement in 0x40..0x4e. Entered at the `eb`,
//     it is a short jump forward; entered one byte later, dd is a REX prefix and `dd eb dd'` is the
//     next pair's jump with a harmless prefix. Either way the next instruction is again on a pair
//     boundary, and each jump advances 0x42..0x50 bytes.
//   * a landing zone of long nops (`66 66 ... 90`, valid from any byte) in front of each exit,
//     for the bytes that are too close to the exit for a jump pair.
//   * an exit: `jmp rel32` with rel32 = 0x06060606. Its four displacement bytes are also entry
//     points (for numbers the kernel does not define); 0x06 is an invalid opcode in 64-bit mode,
//     so entering there faults at once, without side effects, and the fault handler
//     (trampoline.cpp) sends the call on to the stub.
// The exits land in the relay, two pages near 0x06060000 (~96 MiB) that hold
// `movabs $stub, %r11; jmp *%r11` (r11 is clobbered by `syscall` anyway) and 0x06 bytes elsewhere.
// No instruction on these paths touches a register other than r11, the flags, memory or the stack,
// and none reads data, so the pages can be execute-only. The displacement of each pair is chosen
// by dynamic programming to minimise the instructions run from an entry to its exit (getpid,
// number 39, runs 7 jumps, the exit jump, movabs and jmp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace zpoline::detail {

inline constexpr std::size_t kSledSize = 4096;
inline constexpr std::size_t kExitLength = 5;
// Entries 0..kFirstExit reach the first exit; this covers every x86-64 and x32 syscall number the
// kernel defines (the x32 range ends at 547).
inline constexpr std::size_t kFirstExit = 548;
// Entries kSecondRegion..kSecondExit reach the second exit at the end of the page.
inline constexpr std::size_t kSecondRegion = kFirstExit + kExitLength;
inline constexpr std::size_t kSecondExit = kSledSize - kExitLength;

inline constexpr std::uint32_t kExitDisplacement = 0x06060606;
inline constexpr std::uint8_t kInvalidOpcode = 0x06;  // `push %es`, invalid in 64-bit mode
inline constexpr std::uintptr_t kRelayBase = 0x06060000;
inline constexpr std::size_t kRelaySize = 2 * 4096;
inline constexpr std::uintptr_t kFirstRelay = kFirstExit + kExitLength + kExitDisplacement;
inline constexpr std::uintptr_t kSecondRelay = kSecondExit + kExitLength + kExitDisplacement;
inline constexpr std::size_t kRelayLength = 13;

// Fills the page at address 0 (`sled`) so that every entry in [0, kFirstExit] and
// [kSecondRegion, kSecondExit] reaches one of the two relays, and every other entry (the exits'
// displacement bytes: numbers 549..552 and 4092..4095) is an invalid opcode.
void build_sled(std::span<std::uint8_t, kSledSize> sled);

// Fills the relay pages (mapped at kRelayBase) so that both relays jump to `entry_stub` and every
// other byte is an invalid opcode.
void build_relay(std::span<std::uint8_t, kRelaySize> relay, std::uintptr_t entry_stub);

// True for entries that build_sled() makes reach a relay.
constexpr bool is_sled_entry(std::size_t offset) {
  return offset <= kFirstExit || (offset >= kSecondRegion && offset <= kSecondExit);
}

}  // namespace zpoline::detail
