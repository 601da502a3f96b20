#include "trampoline/sled.hpp"

#include <array>
#include <cstring>
#include <limits>

namespace zpoline::detail {
namespace {

constexpr std::uint8_t kShortJump = 0xeb;
constexpr std::uint8_t kOperandSizePrefix = 0x66;
constexpr std::uint8_t kNop = 0x90;
// Pair displacements must be even (so targets keep the pair parity) and REX prefixes (0x40..0x4f)
// so that entering on the displacement byte still decodes as a jump.
constexpr std::uint8_t kMinDisplacement = 0x40;
constexpr std::uint8_t kMaxDisplacement = 0x4e;
// Instructions are at most 15 bytes: a landing block entered on the REX byte of the last jump pair
// before it adds one prefix, so blocks hold at most 14 bytes.
constexpr std::size_t kMaxBlock = 14;
// Pairs closer to the exit than the shortest jump cannot reach it; they become the landing zone.
constexpr std::size_t kLandingZone = kMinDisplacement + 2 - 2;

void write_exit(std::uint8_t* at) {
  at[0] = 0xe9;  // jmp rel32
  std::memcpy(at + 1, &kExitDisplacement, sizeof kExitDisplacement);
}

// Long nops ending exactly at `end`: the first block is the remainder, all others are full.
void write_landing_zone(std::uint8_t* begin, std::uint8_t* end) {
  std::size_t length = static_cast<std::size_t>(end - begin);
  std::uint8_t* block = begin;
  std::size_t first = length % kMaxBlock == 0 ? kMaxBlock : length % kMaxBlock;
  while (block < end) {
    std::size_t size = block == begin ? first : kMaxBlock;
    std::memset(block, kOperandSizePrefix, size - 1);
    block[size - 1] = kNop;
    block += size;
  }
}

// Fills [region, exit) with jump pairs and a landing zone so that every entry reaches `exit`.
void write_region(std::uint8_t* sled, std::size_t region, std::size_t exit) {
  const std::size_t landing = exit - kLandingZone;
  write_landing_zone(sled + landing, sled + exit);

  // cost[i]: instructions from offset i (a pair start, the landing zone or the exit) to the exit.
  std::array<std::size_t, kSledSize + 1> cost{};
  cost[exit] = 0;
  for (std::size_t i = landing; i < exit; ++i) cost[i] = (exit - i + kMaxBlock - 1) / kMaxBlock;
  for (std::size_t pair = landing - 2;; pair -= 2) {
    std::size_t best_cost = std::numeric_limits<std::size_t>::max();
    std::uint8_t best = kMinDisplacement;
    for (unsigned d = kMinDisplacement; d <= kMaxDisplacement; d += 2) {
      std::size_t target = pair + 2 + d;
      if (target > exit) break;
      if (cost[target] + 1 <= best_cost) {  // ties go to the longer jump
        best_cost = cost[target] + 1;
        best = static_cast<std::uint8_t>(d);
      }
    }
    sled[pair] = kShortJump;
    sled[pair + 1] = best;
    cost[pair] = best_cost;
    if (pair < region + 2) break;
  }
}

}  // namespace

void build_sled(std::span<std::uint8_t, kSledSize> sled) {
  static_assert(kFirstExit % 2 == 0 && (kSecondExit - kSecondRegion) % 2 == 0,
                "each exit must be on its region's pair parity");
  static_assert((kExitDisplacement & 0xff) == kInvalidOpcode &&
                    ((kExitDisplacement >> 8) & 0xff) == kInvalidOpcode &&
                    ((kExitDisplacement >> 16) & 0xff) == kInvalidOpcode &&
                    (kExitDisplacement >> 24) == kInvalidOpcode,
                "entering an exit's displacement must fault");
  write_region(sled.data(), 0, kFirstExit);
  write_exit(sled.data() + kFirstExit);
  write_region(sled.data(), kSecondRegion, kSecondExit);
  write_exit(sled.data() + kSecondExit);
}

void build_relay(std::span<std::uint8_t, kRelaySize> relay, std::uintptr_t entry_stub) {
  static_assert(kFirstRelay >= kRelayBase &&
                kSecondRelay + kRelayLength <= kRelayBase + kRelaySize);
  std::memset(relay.data(), kInvalidOpcode, relay.size());
  for (std::uintptr_t at : {kFirstRelay, kSecondRelay}) {
    std::uint8_t* code = relay.data() + (at - kRelayBase);
    code[0] = 0x49;  // REX.W+B
    code[1] = 0xbb;  // mov $imm64, %r11
    std::memcpy(code + 2, &entry_stub, sizeof entry_stub);
    code[10] = 0x41;  // REX.B
    code[11] = 0xff;  // jmp *%r11
    code[12] = 0xe3;
  }
}

}  // namespace zpoline::detail
