#include "rewriting/padding.hpp"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

#include "rewriting/instruction_length.hpp"
#include "rewriting/site_trampolines.hpp"

namespace zpoline::detail {
namespace {

// A slot written before, whose `jmp rel32` to a trampoline is still there (code that took the
// place of a forgotten one is not: a library loaded where another was, unseen).
bool is_written_slot(std::span<const std::uintptr_t> written, const std::uint8_t* bytes,
                     std::uintptr_t address, std::size_t available) {
  return available >= kPaddingSlotSize &&
         std::binary_search(written.begin(), written.end(), address) && is_slot_jump(bytes);
}

// The gap [begin, end) of `code` (which starts at run-time address `base`) if it is nothing but
// nop and int3 instructions and slots written before (`written`), the last one ending exactly at
// `end`, with the start of each; nullopt otherwise.
std::optional<PaddingGap> filler_gap(std::span<const std::uint8_t> code, std::uintptr_t base,
                                     std::uintptr_t begin, std::uintptr_t end,
                                     std::span<const std::uintptr_t> written) {
  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  PaddingGap gap{begin, end, {}};
  std::uintptr_t at = begin;
  while (at < end) {
    gap.starts.push_back(at);
    if (is_written_slot(written, code.data() + (at - base), at, end - at)) {
      at += kPaddingSlotSize;
      continue;
    }
    ZydisDecodedInstruction instruction;
    const std::uint8_t* bytes = code.data() + (at - base);
    if (!ZYAN_SUCCESS(
            ZydisDecoderDecodeInstruction(&decoder, nullptr, bytes, end - at, &instruction))) {
      return std::nullopt;
    }
    if (instruction.mnemonic != ZYDIS_MNEMONIC_NOP && instruction.mnemonic != ZYDIS_MNEMONIC_INT3)
      return std::nullopt;
    at += instruction.length;
  }
  if (at != end) return std::nullopt;
  return gap;
}

}  // namespace

FunctionShape shape_of(std::span<const std::uint8_t> code, std::uintptr_t base,
                       const FunctionRange& function, std::span<const std::uintptr_t> written) {
  FunctionShape shape;
  const std::uintptr_t code_end = base + code.size();
  if (function.begin < base || function.begin >= code_end) return shape;
  const std::uintptr_t end = std::min(function.end, code_end);  // bounds may claim more
  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  ZydisDecoderEnableMode(&decoder, ZYDIS_DECODER_MODE_MINIMAL, ZYAN_TRUE);
  bool after_transfer = false;
  for (std::uintptr_t at = function.begin; at < end;) {
    const std::uint8_t* bytes = code.data() + (at - base);
    const std::size_t available = end - at;
    shape.starts.push_back(at);
    if (is_written_slot(written, bytes, at, available)) {
      // A slot written before (its `jmp rel32` to a trampoline): filler still.
      if (after_transfer) {
        if (!shape.filler.empty() && shape.filler.back().end == at) {
          shape.filler.back().end = at + kPaddingSlotSize;
        } else {
          shape.filler.push_back({at, at + kPaddingSlotSize, {}});
        }
        shape.filler.back().starts.push_back(at);
      }
      at += kPaddingSlotSize;
      continue;
    }
    std::size_t length = 0;
    QuickInstruction quick;
    if (decode_quickly(bytes, available, quick)) {
      length = quick.length;
    } else {
      ZydisDecodedInstruction instruction;
      if (!ZYAN_SUCCESS(
              ZydisDecoderDecodeInstruction(&decoder, nullptr, bytes, available, &instruction))) {
        return shape;  // decoded is false: nothing about this function is trusted
      }
      length = instruction.length;
    }
    // The opcode, after legacy and REX prefixes.
    std::size_t o = 0;
    bool rex = false;
    while (o < length) {
      const std::uint8_t b = bytes[o];
      if (b == 0x66 || b == 0x67 || b == 0xf2 || b == 0xf3 || b == 0x2e || b == 0x3e || b == 0x26 ||
          b == 0x36 || b == 0x64 || b == 0x65 || b == 0xf0) {
        ++o;
      } else if (b >= 0x40 && b <= 0x4f) {
        rex = true;
        ++o;
      } else {
        break;
      }
    }
    const std::uint8_t op = o < length ? bytes[o] : 0;
    const std::uint8_t op2 = o + 1 < length ? bytes[o + 1] : 0;
    const bool filler = (op == 0x90 && !rex) || op == 0xcc || (op == 0x0f && op2 == 0x1f);
    // A direct branch: its target is the end of the instruction plus its last 1 or 4 bytes.
    int relative_size = 0;
    if (op == 0xeb || (op >= 0x70 && op <= 0x7f) || (op >= 0xe0 && op <= 0xe3)) {
      relative_size = 1;
    } else if (op == 0xe9 || op == 0xe8 || (op == 0x0f && op2 >= 0x80 && op2 <= 0x8f)) {
      relative_size = 4;
    }
    if (relative_size != 0 && length >= static_cast<std::size_t>(relative_size) + 1) {
      std::int32_t displacement = 0;
      if (relative_size == 1) {
        displacement = static_cast<std::int8_t>(bytes[length - 1]);
      } else {
        std::memcpy(&displacement, bytes + length - 4, 4);
      }
      shape.branch_targets.push_back(at + length + static_cast<std::intptr_t>(displacement));
    }
    if (filler && after_transfer) {
      if (!shape.filler.empty() && shape.filler.back().end == at) {
        shape.filler.back().end = at + length;
      } else {
        shape.filler.push_back({at, at + length, {}});
      }
      shape.filler.back().starts.push_back(at);
    } else {
      const bool indirect_jump =
          op == 0xff && o + 1 < length && ((op2 >> 3) & 7) >= 4 && ((op2 >> 3) & 7) <= 5;
      // `jmp *%reg` or `jmp *table(,%reg,8)`: a jump table (or a computed jump), whose targets
      // are not known here. `jmp *sym(%rip)` (a tail call through the GOT) leaves the function.
      const bool through_rip = (op2 >> 6) == 0 && (op2 & 7) == 5;
      if (indirect_jump && ((op2 >> 3) & 7) == 4 && !through_rip) {
        shape.jumps_through_register = true;
      }
      after_transfer = op == 0xc3 || op == 0xc2 || op == 0xeb || op == 0xe9 || indirect_jump ||
                       (op == 0x0f && op2 == 0x0b);
    }
    at += length;
  }
  std::sort(shape.branch_targets.begin(), shape.branch_targets.end());
  shape.decoded = true;
  return shape;
}

std::vector<PaddingGap> find_padding_gaps(std::span<const std::uint8_t> code,
                                          std::uintptr_t runtime_address,
                                          std::span<const FunctionRange> functions) {
  std::vector<PaddingGap> gaps;
  const std::uintptr_t code_end = runtime_address + code.size();
  for (std::size_t i = 1; i < functions.size(); ++i) {
    const std::uintptr_t begin = functions[i - 1].end;
    const std::uintptr_t end = functions[i].begin;
    if (end < begin + kPaddingSlotSize || begin < runtime_address || end > code_end) continue;
    if (auto gap = filler_gap(code, runtime_address, begin, end, {})) gaps.push_back(*gap);
  }
  return gaps;
}

std::vector<PaddingGap> find_padding_gaps_near(std::span<const std::uint8_t> code,
                                               std::uintptr_t runtime_address,
                                               std::span<const FunctionRange> functions,
                                               std::span<const std::uintptr_t> sites,
                                               std::span<const std::uintptr_t> written,
                                               bool inside_functions) {
  std::vector<PaddingGap> gaps;
  const std::uintptr_t code_end = runtime_address + code.size();
  std::size_t last_checked = 0;  // gaps are checked once, in order
  std::size_t last_decoded = 0;  // functions are decoded once (index + 1), in order
  for (const std::uintptr_t site : sites) {
    const std::uintptr_t lowest = site + 2 >= kShortJumpBack ? site + 2 - kShortJumpBack : 0;
    const std::uintptr_t highest = site + 2 + kShortJumpForward;
    // Filler inside the functions the jump can reach.
    auto reached = std::upper_bound(functions.begin(), functions.end(), lowest,
                                    [](std::uintptr_t address, const FunctionRange& function) {
                                      return address < function.end;
                                    });
    for (auto f = static_cast<std::size_t>(reached - functions.begin());
         inside_functions && f < functions.size() && functions[f].begin <= highest; ++f) {
      if (f + 1 <= last_decoded) continue;
      last_decoded = f + 1;
      // Filler inside a function: runs right after an unconditional jump or return, cut at the
      // first direct branch target inside them (a run a branch lands on at its start is not
      // filler). Indirect branches (jump tables) land on the aligned instruction after a run, as
      // direct ones do; none is known to land inside alignment.
      const FunctionShape shape = shape_of(code, runtime_address, functions[f], written);
      if (!shape.decoded) continue;
      for (PaddingGap run : shape.filler) {
        const auto target =
            std::lower_bound(shape.branch_targets.begin(), shape.branch_targets.end(), run.begin);
        if (target != shape.branch_targets.end() && *target < run.end) {
          run.end = *target;
          std::erase_if(run.starts, [&](std::uintptr_t start) { return start >= run.end; });
        }
        if (run.end >= run.begin + kPaddingSlotSize) gaps.push_back(std::move(run));
      }
    }
    // The gap before function i is [functions[i-1].end, functions[i].begin): the first that may
    // end above `lowest` is the one before the first function that ends above it.
    auto first = std::upper_bound(functions.begin(), functions.end(), lowest,
                                  [](std::uintptr_t address, const FunctionRange& function) {
                                    return address < function.end;
                                  });
    auto i = std::max<std::size_t>(static_cast<std::size_t>(first - functions.begin()), 1);
    i = std::max(i, last_checked + 1);
    for (; i < functions.size() && functions[i - 1].end <= highest; ++i) {
      last_checked = i;
      const std::uintptr_t begin = functions[i - 1].end;
      const std::uintptr_t end = functions[i].begin;
      if (end < begin + kPaddingSlotSize || begin < runtime_address || end > code_end) continue;
      if (auto gap = filler_gap(code, runtime_address, begin, end, written)) {
        gaps.push_back(std::move(*gap));
      }
    }
  }
  std::sort(gaps.begin(), gaps.end(),
            [](const PaddingGap& a, const PaddingGap& b) { return a.begin < b.begin; });
  return gaps;
}

std::vector<PaddingSlot> assign_padding_slots(std::span<const std::uintptr_t> sites,
                                              std::span<const PaddingGap> gaps,
                                              std::span<const std::uintptr_t> taken_before) {
  // A slot starts where a filler instruction starts (every byte of a gap without `starts`) and
  // ends where the filler instruction holding its fifth byte ends: the bytes after the jump up to
  // there become int3, so that code read linearly stays in step with the instructions. Regions
  // given out (now or before, `taken_before`, which are five bytes each) never overlap.
  struct Candidate {
    std::uintptr_t begin, end;
  };
  std::vector<Candidate> candidates;
  for (const PaddingGap& gap : gaps) {
    const auto start_at = [&](std::size_t k) {
      return gap.starts.empty() ? gap.begin + k : gap.starts[k];
    };
    const std::size_t count = gap.starts.empty() ? gap.end - gap.begin : gap.starts.size();
    for (std::size_t k = 0; k < count; ++k) {
      const std::uintptr_t begin = start_at(k);
      if (begin + kPaddingSlotSize > gap.end) break;
      std::uintptr_t end = gap.end;
      for (std::size_t n = k + 1; n < count; ++n) {
        if (start_at(n) >= begin + kPaddingSlotSize) {
          end = start_at(n);
          break;
        }
      }
      if (end - begin > kMaxSlotRegion) continue;
      candidates.push_back({begin, end});
    }
  }
  // Regions given out, by start; disjoint, so only the neighbours of a candidate can overlap it.
  std::map<std::uintptr_t, std::uintptr_t> given;
  for (const std::uintptr_t slot : taken_before) given.emplace(slot, slot + kPaddingSlotSize);
  const auto overlaps_given = [&](const Candidate& c) {
    auto next = given.lower_bound(c.begin);
    if (next != given.end() && next->first < c.end) return true;
    return next != given.begin() && std::prev(next)->second > c.begin;
  };
  std::vector<PaddingSlot> slots;
  for (const std::uintptr_t site : sites) {
    const auto jump_end = static_cast<std::intptr_t>(site + 2);
    const std::intptr_t lowest = jump_end - kShortJumpBack;
    const std::intptr_t highest = jump_end + kShortJumpForward;
    const Candidate* best = nullptr;
    std::intptr_t best_distance = 0;
    auto first = std::lower_bound(candidates.begin(), candidates.end(), lowest,
                                  [](const Candidate& c, std::intptr_t address) {
                                    return static_cast<std::intptr_t>(c.begin) < address;
                                  });
    for (auto c = first; c != candidates.end() && static_cast<std::intptr_t>(c->begin) <= highest;
         ++c) {
      const auto start = static_cast<std::intptr_t>(c->begin);
      const std::intptr_t distance = start > jump_end ? start - jump_end : jump_end - start;
      if ((best == nullptr || distance < best_distance) && !overlaps_given(*c)) {
        best = &*c;
        best_distance = distance;
      }
    }
    if (best == nullptr) continue;
    given.emplace(best->begin, best->end);
    slots.push_back({site, best->begin, best->end});
  }
  return slots;
}

}  // namespace zpoline::detail
