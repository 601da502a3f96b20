// Per-site trampolines of the near mechanism (rewriting/site_trampolines.hpp): the bytes each
// holds, decoded back with Zydis; the moved-instruction table; trampolines made in this process.
// Nothing here installs a hook or runs a trampoline (the install and matrix suites do).
#include <Zydis/Zydis.h>
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "rewriting/site_trampolines.hpp"

using namespace zpoline::detail;

namespace {

struct Decoded {
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  std::uintptr_t address;
  // The absolute address a relative operand refers to (branch target or RIP-relative memory).
  std::uintptr_t target() const {
    for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
      ZyanU64 absolute = 0;
      if ((operands[i].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ||
           (operands[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
            operands[i].mem.base == ZYDIS_REGISTER_RIP)) &&
          ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&instruction, &operands[i], address, &absolute))) {
        return static_cast<std::uintptr_t>(absolute);
      }
    }
    return 0;
  }
};

// Decodes `code` (running at `address`) up to its first int3.
std::vector<Decoded> decode(const std::uint8_t* code, std::size_t size, std::uintptr_t address) {
  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  std::vector<Decoded> result;
  for (std::size_t at = 0; at < size && code[at] != 0xcc;) {
    Decoded d{};
    d.address = address + at;
    REQUIRE(ZYAN_SUCCESS(
        ZydisDecoderDecodeFull(&decoder, code + at, size - at, &d.instruction, d.operands)));
    at += d.instruction.length;
    result.push_back(d);
  }
  return result;
}

constexpr std::uintptr_t kTrampoline = 0x7f0000001000;
constexpr std::uintptr_t kSite = 0x7f0040000123;  // 1 GiB away: within reach of a rel32

// What every trampoline ends with: push the address after the site, enter the stub.
void check_push_and_enter(const std::vector<Decoded>& code, std::size_t first, std::uintptr_t entry,
                          bool direct) {
  REQUIRE(code.size() == first + 3);
  CHECK(code[first].instruction.mnemonic == ZYDIS_MNEMONIC_LEA);
  CHECK(code[first].operands[0].reg.value == ZYDIS_REGISTER_R11);
  CHECK(code[first].target() == kSite + 2);
  CHECK(code[first + 1].instruction.mnemonic == ZYDIS_MNEMONIC_PUSH);
  CHECK(code[first + 1].operands[0].reg.value == ZYDIS_REGISTER_R11);
  CHECK(code[first + 2].instruction.mnemonic == ZYDIS_MNEMONIC_JMP);
  if (direct) {
    CHECK(code[first + 2].target() == entry);
  } else {
    CHECK(code[first + 2].operands[0].type == ZYDIS_OPERAND_TYPE_MEMORY);
  }
}

}  // namespace

TEST_CASE("a padding site's trampoline pushes the address after the site and enters the stub") {
  std::uint8_t code[kMaxTrampolineSize];
  const std::uintptr_t near_entry = kTrampoline + 0x5000;
  const std::size_t size = encode_site_trampoline(code, kTrampoline, kSite, {}, near_entry, 0);
  CHECK(size == kTrampolineUnit);
  check_push_and_enter(decode(code, size, kTrampoline), 0, near_entry, true);
  // A stub out of rel32 reach: through the pointer at the arena's start.
  const std::uintptr_t far_entry = 0x555500000000;
  const std::uintptr_t pointer = kTrampoline - kTrampolineUnit;
  const std::size_t far_size =
      encode_site_trampoline(code, kTrampoline, kSite, {}, far_entry, pointer);
  const auto far = decode(code, far_size, kTrampoline);
  check_push_and_enter(far, 0, far_entry, false);
  CHECK(far.back().target() == pointer);
}

TEST_CASE("a moved instruction runs first, then the push and the entry") {
  std::uint8_t code[kMaxTrampolineSize];
  const std::uintptr_t entry = kTrampoline + 0x5000;
  const std::uint8_t mov_getpid[] = {0xb8, 0x27, 0x00, 0x00, 0x00};  // mov $39, %eax
  const std::size_t size = encode_site_trampoline(
      code, kTrampoline, kSite, MovedInstruction{mov_getpid, kSite - 5, 0}, entry, 0);
  CHECK(size == 2 * kTrampolineUnit);
  CHECK(std::memcmp(code, mov_getpid, sizeof mov_getpid) == 0);
  const auto decoded = decode(code, size, kTrampoline);
  check_push_and_enter(decoded, 1, entry, true);

  // A RIP-relative instruction addresses the same memory from the trampoline.
  const std::uint8_t lea[] = {0x48, 0x8d, 0x35, 0x00, 0x10, 0x00, 0x00};  // lea 0x1000(%rip),%rsi
  const std::uintptr_t lea_address = kSite - 7;
  const std::size_t lea_size = encode_site_trampoline(
      code, kTrampoline, kSite, MovedInstruction{lea, lea_address, 3}, entry, 0);
  REQUIRE(lea_size != 0);
  const auto moved = decode(code, lea_size, kTrampoline);
  CHECK(moved[0].instruction.mnemonic == ZYDIS_MNEMONIC_LEA);
  CHECK(moved[0].target() == lea_address + 7 + 0x1000);
  check_push_and_enter(moved, 1, entry, true);
  // ... and is refused where its memory is out of reach from there.
  const std::uint8_t far_lea[] = {0x48, 0x8d, 0x35, 0x00, 0x00, 0x00, 0x7f};  // +2 GiB - 16 MiB
  CHECK(encode_site_trampoline(code, kTrampoline, kSite, MovedInstruction{far_lea, lea_address, 3},
                               entry, 0) == 0);
}

TEST_CASE("moved instructions are found by address; absent ones are not") {
  const std::uintptr_t base = 0x6100000000;
  for (std::uintptr_t i = 0; i < 100; ++i) {
    REQUIRE(add_moved_instruction(base + 7 * i, 0x7100000000 + 32 * i));
  }
  for (std::uintptr_t i = 0; i < 100; ++i) {
    CHECK(trampoline_of_moved_instruction(base + 7 * i) == 0x7100000000 + 32 * i);
    CHECK(trampoline_of_moved_instruction(base + 7 * i + 1) == 0);
  }
  CHECK(trampoline_of_moved_instruction(0) == 0);
  // Written again (a site rewritten anew): the new trampoline.
  REQUIRE(add_moved_instruction(base, 0x7200000000));
  CHECK(trampoline_of_moved_instruction(base) == 0x7200000000);
}

TEST_CASE("trampolines are made within reach of their jump, in executable arenas") {
  const auto code = reinterpret_cast<std::uintptr_t>(&getpid);
  const std::uintptr_t first = make_site_trampoline(code + 16, code + 21);
  const std::uintptr_t second = make_site_trampoline(code + 40, code + 45);
  seal_site_trampolines();
  REQUIRE(first != 0);
  REQUIRE(second != 0);
  CHECK(second == first + kTrampolineUnit);  // one arena, in order
  CHECK(rel32_reaches(code + 21, first));
  CHECK(in_site_trampolines(first));
  CHECK(!in_site_trampolines(code));
  std::uint8_t expected[kMaxTrampolineSize];
  const std::size_t size =
      encode_site_trampoline(expected, first, code + 16, {},
                             *reinterpret_cast<const std::uintptr_t*>(first - 16), first - 16);
  CHECK(std::memcmp(reinterpret_cast<const void*>(first), expected, size) == 0);
  CHECK(site_trampoline_counts().trampolines == 2);
  CHECK(site_trampoline_counts().arenas == 1);
}
