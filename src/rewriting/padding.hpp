// Padding near syscall sites, for hooking without page 0 (the "near" mechanism:
// site_trampolines.hpp).
//
// Between two functions, compilers and linkers fill up to the next function's alignment with
// nops or int3. No code runs there: control reaches a function only at its start. A 2-byte
// `jmp rel8` written over a `syscall` reaches bytes from 126 before the site to 129 after it; if
// five of those are such padding, they can hold a `jmp rel32` to a trampoline of that site
// anywhere within 2 GiB, with no mapping at a low address. This file finds those bytes and
// hands them out, five per site. Pure: reads code, changes nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "rewriting/function_table.hpp"

namespace zpoline::detail {

// The `jmp rel32` a site's slot holds.
inline constexpr std::size_t kPaddingSlotSize = 5;
// A `jmp rel8` in place of the 2-byte syscall at `site` ends at site + 2 and reaches
// [site + 2 - 128, site + 2 + 127].
inline constexpr std::intptr_t kShortJumpBack = 128;
inline constexpr std::intptr_t kShortJumpForward = 127;

// A slot's jump and the int3 after it up to the end of the filler instruction it cuts: at most
// this long (a filler instruction is at most 15 bytes).
inline constexpr std::size_t kMaxSlotRegion = kPaddingSlotSize + 15;

// Unreachable filler: [begin, end), run-time addresses, and where each of its instructions starts
// (empty: at every byte, as in int3 filler).
struct PaddingGap {
  std::uintptr_t begin;
  std::uintptr_t end;
  std::vector<std::uintptr_t> starts;
};

// The gaps of at least kPaddingSlotSize bytes between consecutive functions of `functions`
// (sorted, disjoint: FunctionTable::functions) that lie inside `code` (readable at code.data(),
// running at `runtime_address`) and decode entirely as nop and int3 instructions.
std::vector<PaddingGap> find_padding_gaps(std::span<const std::uint8_t> code,
                                          std::uintptr_t runtime_address,
                                          std::span<const FunctionRange> functions);

// The same, only the gaps a `jmp rel8` from one of `sites` (ascending) could reach: what the
// rewriter needs, without decoding every gap of a large image. Both kinds: between functions, and
// inside a function after an unconditional transfer (shape_of()). Slots written before
// (`written`, ascending: their `jmp rel32`) count as filler. `inside_functions` off: only the
// gaps between functions (no function is decoded).
std::vector<PaddingGap> find_padding_gaps_near(std::span<const std::uint8_t> code,
                                               std::uintptr_t runtime_address,
                                               std::span<const FunctionRange> functions,
                                               std::span<const std::uintptr_t> sites,
                                               std::span<const std::uintptr_t> written = {},
                                               bool inside_functions = true);

// What the near mechanism needs to know of a function: its filler after unconditional transfers
// (ret, jmp, ud2: candidate padding) and where its direct branches land (sorted). Decoded linearly
// from its start, as far as `code` holds it; `decoded` is false if that failed.
struct FunctionShape {
  bool decoded = false;
  std::vector<PaddingGap> filler;
  std::vector<std::uintptr_t> branch_targets;
  // Where each decoded instruction starts (ascending; a slot written before counts as one).
  std::vector<std::uintptr_t> starts;
  // It has an indirect jump other than through a RIP-relative pointer (a jump table, usually):
  // it may land anywhere.
  bool jumps_through_register = false;
};
FunctionShape shape_of(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                       const FunctionRange& function, std::span<const std::uintptr_t> written = {});

struct PaddingSlot {
  std::uintptr_t site;  // the syscall instruction
  std::uintptr_t slot;  // kPaddingSlotSize bytes of a gap, reachable by a jmp rel8 from site
  std::uintptr_t end;   // the end of the filler instruction holding the slot's last byte
};

// Gives each site of `sites` (ascending) that can reach one a slot of its own in `gaps`
// (ascending, disjoint), the nearest still free; sites out of reach of any free slot get none.
// Slots never overlap each other, nor any of the kPaddingSlotSize-byte slots at `taken` (given
// out before, ascending).
std::vector<PaddingSlot> assign_padding_slots(std::span<const std::uintptr_t> sites,
                                              std::span<const PaddingGap> gaps,
                                              std::span<const std::uintptr_t> taken = {});

}  // namespace zpoline::detail
