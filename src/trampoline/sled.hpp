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
//   * an exit: `jmp rel32`. Its four displacement bytes are also entry points (for numbers the
//     kernel does not define), so each of them is an opcode that is invalid in 64-bit mode:
//     entering there faults at once, without side effects, and the fault handler
//     (fault_redirect.cpp) sends the call on to the stub.
// The exits land in the relay, two pages below 1 GiB that hold `movabs $stub, %r11; jmp *%r11`
// (r11 is clobbered by `syscall` anyway) and invalid opcodes elsewhere. Where the relay goes is
// chosen at install among the addresses such displacements can reach (RelayPlacement): a fixed
// address can already be taken, by a non-PIE program's heap for one (its start is randomised over
// 1 GiB), and the install would fail.
// No instruction on these paths touches a register other than r11, the flags, memory or the stack,
// and none reads data, so the pages can be execute-only. The displacement of each pair is chosen
// by dynamic programming to minimise the instructions run from an entry to its exit (getpid,
// number 39, runs 7 jumps, the exit jump, movabs and jmp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace zpoline::detail {

inline constexpr std::size_t kSledSize = 4096;
inline constexpr std::size_t kExitLength = 5;
// Entries 0..kFirstExit reach the first exit; this covers every x86-64 and x32 syscall number the
// kernel defines (the x32 range ends at 547).
inline constexpr std::size_t kFirstExit = 548;
// Entries kSecondRegion..kSecondExit reach the second exit at the end of the page.
inline constexpr std::size_t kSecondRegion = kFirstExit + kExitLength;
inline constexpr std::size_t kSecondExit = kSledSize - kExitLength;

inline constexpr std::uint8_t kInvalidOpcode = 0x06;  // `push %es`, invalid in 64-bit mode
inline constexpr std::size_t kRelaySize = 2 * 4096;
inline constexpr std::size_t kRelayLength = 13;

// True for the one-byte opcodes that raise #UD in 64-bit mode whatever follows them (legacy
// instructions dropped by AMD64; not 0x62, 0xc4, 0xc5, which became EVEX/VEX prefixes, nor 0xd6,
// which not every vendor documents).
inline constexpr std::uint8_t kInvalidOpcodes[] = {
    0x06, 0x07, 0x0e, 0x16, 0x17, 0x1e, 0x1f,  // push/pop of segment registers
    0x27, 0x2f, 0x37, 0x3f,                    // decimal adjust
    0x60, 0x61, 0xce, 0xd4, 0xd5,              // pusha, popa, into, aam, aad
};
constexpr bool is_invalid_opcode(std::uint8_t byte) {
  for (const std::uint8_t invalid : kInvalidOpcodes) {
    if (byte == invalid) return true;
  }
  return false;
}

// Where the exits lead: their rel32 displacement, whose four bytes are invalid opcodes. Both
// relays then lie in the two pages at base(); the low half of the displacement is always 0x0606,
// so base() is the displacement with its low 16 bits cleared.
struct RelayPlacement {
  std::uint32_t exit_displacement;

  constexpr std::uintptr_t first_relay() const {
    return kFirstExit + kExitLength + exit_displacement;
  }
  constexpr std::uintptr_t second_relay() const {
    return kSecondExit + kExitLength + exit_displacement;
  }
  constexpr std::uintptr_t base() const { return exit_displacement & ~std::uintptr_t{0xffff}; }
};

// Every placement the library may use, highest address first: the displacements whose two upper
// bytes are invalid opcodes and whose relay ends below 1 GiB (above is the window MAP_32BIT
// allocates from).
std::span<const RelayPlacement> relay_placements();

// relay_placements() in the order to try them in a process whose heap starts at `heap_start`:
// first those entirely below it (the heap grows up, so they never stop it), then the others;
// highest first within each group (farthest from a low executable, most room for a heap below).
std::vector<RelayPlacement> relay_placements_to_try(std::uintptr_t heap_start);

// Fills the page at address 0 (`sled`) so that every entry in [0, kFirstExit] and
// [kSecondRegion, kSecondExit] reaches one of the two relays of `placement`, and every other entry
// (the exits' displacement bytes: numbers 549..552 and 4092..4095) is an invalid opcode.
void build_sled(std::span<std::uint8_t, kSledSize> sled, RelayPlacement placement);

// Fills the relay pages (to be mapped at placement.base()) so that both relays jump to
// `entry_stub` and every other byte is an invalid opcode.
void build_relay(std::span<std::uint8_t, kRelaySize> relay, RelayPlacement placement,
                 std::uintptr_t entry_stub);

// True for entries that build_sled() makes reach a relay.
constexpr bool is_sled_entry(std::size_t offset) {
  return offset <= kFirstExit || (offset >= kSecondRegion && offset <= kSecondExit);
}

}  // namespace zpoline::detail
