#include "trampoline/sled.hpp"

#include <algorithm>
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

void write_exit(std::uint8_t* at, std::uint32_t displacement) {
  at[0] = 0xe9;  // jmp rel32
  std::memcpy(at + 1, &displacement, sizeof displacement);
}

constexpr std::uint32_t kLowHalf = 0x0606;
// Upper bytes below 0x40 keep the relay under 1 GiB.
constexpr std::uint8_t kHighestTopByte = 0x3f;

constexpr std::size_t count_top_bytes() {
  std::size_t count = 0;
  for (const std::uint8_t byte : kInvalidOpcodes) count += byte <= kHighestTopByte ? 1 : 0;
  return count;
}

// Every invalid opcode as the middle byte, those up to kHighestTopByte as the top byte; sorted
// by address, highest first.
constexpr auto kPlacements = [] {
  std::array<RelayPlacement, count_top_bytes() * std::size(kInvalidOpcodes)> placements{};
  std::size_t next = 0;
  for (const std::uint8_t top : kInvalidOpcodes) {
    if (top > kHighestTopByte) continue;
    for (const std::uint8_t middle : kInvalidOpcodes) {
      placements[next++] =
          RelayPlacement{std::uint32_t{top} << 24 | std::uint32_t{middle} << 16 | kLowHalf};
    }
  }
  std::sort(placements.begin(), placements.end(), [](RelayPlacement a, RelayPlacement b) {
    return a.exit_displacement > b.exit_displacement;
  });
  return placements;
}();

static_assert(kLowHalf >> 8 == kInvalidOpcode && (kLowHalf & 0xff) == kInvalidOpcode);
static_assert(kPlacements.back().first_relay() >= kPlacements.back().base() &&
                  kPlacements.back().second_relay() + kRelayLength <=
                      kPlacements.back().base() + kRelaySize,
              "both relays must lie in the relay pages");
static_assert(kPlacements.front().base() + kRelaySize <= std::uintptr_t{1} << 30);

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

std::span<const RelayPlacement> relay_placements() {
  return kPlacements;
}

std::vector<RelayPlacement> relay_placements_to_try(std::uintptr_t heap_start) {
  std::vector<RelayPlacement> order(kPlacements.begin(), kPlacements.end());
  std::stable_partition(order.begin(), order.end(), [heap_start](RelayPlacement placement) {
    return placement.base() + kRelaySize <= heap_start;
  });
  return order;
}

void build_sled(std::span<std::uint8_t, kSledSize> sled, RelayPlacement placement) {
  static_assert(kFirstExit % 2 == 0 && (kSecondExit - kSecondRegion) % 2 == 0,
                "each exit must be on its region's pair parity");
  write_region(sled.data(), 0, kFirstExit);
  write_exit(sled.data() + kFirstExit, placement.exit_displacement);
  write_region(sled.data(), kSecondRegion, kSecondExit);
  write_exit(sled.data() + kSecondExit, placement.exit_displacement);
}

void build_relay(std::span<std::uint8_t, kRelaySize> relay, RelayPlacement placement,
                 std::uintptr_t entry_stub) {
  std::memset(relay.data(), kInvalidOpcode, relay.size());
  for (std::uintptr_t at : {placement.first_relay(), placement.second_relay()}) {
    std::uint8_t* code = relay.data() + (at - placement.base());
    code[0] = 0x49;  // REX.W+B
    code[1] = 0xbb;  // mov $imm64, %r11
    std::memcpy(code + 2, &entry_stub, sizeof entry_stub);
    code[10] = 0x41;  // REX.B
    code[11] = 0xff;  // jmp *%r11
    code[12] = 0xe3;
  }
}

}  // namespace zpoline::detail
