// The quick length decoder against Zydis: wherever it answers, Zydis must accept the same bytes
// with the same length, agree on plain syscalls, find only red-zone evidence of the kinds the
// quick decoder flagged, and the same displacement where it flagged an access below rsp or rbp.
// Checked on every function of the loaded libraries and on random bytes.
#include "rewriting/instruction_length.hpp"

#include <Zydis/Zydis.h>
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <link.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "rewriting/function_table.hpp"

using namespace zpoline::detail;

namespace {

struct Zydis {
  ZydisDecoder decoder;
  Zydis() { ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64); }
};

// What a full decode says about red-zone evidence (the rule of site_scanner.cpp, restated), as
// RedZoneHint bits: a sub/lea/and writing rsp, memory operands below rsp or rbp, or rsp (or an
// address off it) put into another operand.
std::uint8_t red_zone_evidence(const ZydisDecodedInstruction& instruction,
                               const ZydisDecodedOperand* operands) {
  const bool to_rsp = instruction.operand_count_visible > 0 &&
                      operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                      operands[0].reg.value == ZYDIS_REGISTER_RSP;
  if (to_rsp &&
      (instruction.mnemonic == ZYDIS_MNEMONIC_SUB || instruction.mnemonic == ZYDIS_MNEMONIC_LEA ||
       instruction.mnemonic == ZYDIS_MNEMONIC_AND)) {
    return kMayMoveRspDown;
  }
  std::uint8_t evidence = 0;
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type != ZYDIS_OPERAND_TYPE_MEMORY || !operand.mem.disp.has_displacement ||
        operand.mem.disp.value >= 0) {
      continue;
    }
    if (operand.mem.base == ZYDIS_REGISTER_RSP) evidence |= kMayAddressBelowRsp;
    if (operand.mem.base == ZYDIS_REGISTER_RBP) evidence |= kMayAddressBelowRbp;
  }
  bool from_rsp = false;
  bool into_other = instruction.mnemonic == ZYDIS_MNEMONIC_PUSH;
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    const bool rsp = operand.type == ZYDIS_OPERAND_TYPE_REGISTER &&
                     ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64,
                                                      operand.reg.value) == ZYDIS_REGISTER_RSP;
    if (rsp && (operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0) from_rsp = true;
    if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY && operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN &&
        operand.mem.base == ZYDIS_REGISTER_RSP) {
      from_rsp = true;
    }
    if (!rsp && (operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) into_other = true;
  }
  if (from_rsp && into_other) evidence |= kMayCopyRsp;
  return evidence;
}

std::uint8_t quick_hints(std::initializer_list<std::uint8_t> bytes) {
  const std::vector<std::uint8_t> code(bytes);
  QuickInstruction quick;
  return decode_quickly(code.data(), code.size(), quick) ? quick.red_zone_hints : 0xff;
}

struct Comparison {
  std::size_t instructions = 0;
  std::size_t answered = 0;
  std::size_t disagreements = 0;
};

// Compares the two decoders on the bytes at `bytes`; returns Zydis' length (0 if it fails).
std::size_t compare(const Zydis& zydis, const std::uint8_t* bytes, std::size_t available,
                    Comparison& comparison) {
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  const bool decoded = ZYAN_SUCCESS(
      ZydisDecoderDecodeFull(&zydis.decoder, bytes, available, &instruction, operands));
  QuickInstruction quick;
  const bool answered = decode_quickly(bytes, available, quick);
  ++comparison.instructions;
  if (!answered) return decoded ? instruction.length : 0;
  ++comparison.answered;
  const bool syscall = decoded && (instruction.mnemonic == ZYDIS_MNEMONIC_SYSCALL ||
                                   instruction.mnemonic == ZYDIS_MNEMONIC_SYSENTER);
  const std::uint8_t evidence = decoded ? red_zone_evidence(instruction, operands) : 0;
  // The displacement is reported with the hints of an access below rsp or rbp.
  const bool below = (quick.red_zone_hints & (kMayAddressBelowRsp | kMayAddressBelowRbp)) != 0;
  const std::int64_t displacement =
      decoded && below && instruction.raw.disp.size != 0 ? instruction.raw.disp.value : 0;
  const bool agree = decoded && quick.length == instruction.length && quick.syscall == syscall &&
                     (evidence & ~quick.red_zone_hints) == 0 && quick.displacement == displacement;
  if (!agree) {
    ++comparison.disagreements;
    if (comparison.disagreements <= 20) {
      std::string hex;
      char byte[4];
      for (std::size_t i = 0; i < std::min<std::size_t>(available, 15); ++i) {
        std::snprintf(byte, sizeof byte, "%02x ", bytes[i]);
        hex += byte;
      }
      MESSAGE("disagreement on ", hex, "(available ", available, "): quick length ",
              int{quick.length}, " syscall ", quick.syscall, " red-zone hints ",
              int{quick.red_zone_hints}, " displacement ", quick.displacement, "; zydis ",
              decoded ? int{instruction.length} : -1, " evidence ", int{evidence}, " displacement ",
              displacement);
    }
  }
  return decoded ? instruction.length : 0;
}

int compare_image(dl_phdr_info* info, std::size_t, void* data) {
  auto* comparison = static_cast<Comparison*>(data);
  if (info->dlpi_name == nullptr || info->dlpi_name[0] != '/') return 0;  // [vdso], executable
  const FunctionTable table = collect_functions(*info, info->dlpi_name);
  const Zydis zydis;
  for (const FunctionRange& function : table.functions) {
    for (std::uintptr_t ip = function.begin; ip < function.end;) {
      const std::size_t length =
          compare(zydis, reinterpret_cast<const std::uint8_t*>(ip), function.end - ip, *comparison);
      if (length == 0) break;
      ip += length;
    }
  }
  return 0;
}

std::size_t quick_length(std::initializer_list<std::uint8_t> bytes) {
  const std::vector<std::uint8_t> code(bytes);
  QuickInstruction quick;
  return decode_quickly(code.data(), code.size(), quick) ? quick.length : 0;
}

}  // namespace

TEST_CASE("lengths of some instructions, and what is left to Zydis") {
  CHECK(quick_length({0x0f, 0x05}) == 2);                           // syscall
  CHECK(quick_length({0x66, 0x0f, 0x05}) == 0);                     // prefixed syscall
  CHECK(quick_length({0x48, 0x0f, 0x05}) == 0);                     // REX syscall
  CHECK(quick_length({0xb8, 0x27, 0x00, 0x00, 0x00}) == 5);         // mov $39, %eax
  CHECK(quick_length({0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8}) == 10);  // movabs
  CHECK(quick_length({0x66, 0xb8, 1, 2}) == 4);                     // mov $0x201, %ax
  CHECK(quick_length({0x48, 0x8b, 0x44, 0x24, 0xf8}) == 5);         // mov -8(%rsp), %rax
  CHECK(quick_length({0x48, 0x8b, 0x05, 1, 2, 3, 4}) == 7);         // mov 0x4030201(%rip), %rax
  CHECK(quick_length({0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0}) == 9);  // mov %fs:0x28, %rax
  CHECK(quick_length({0xf0, 0x0f, 0xb1, 0x17}) == 4);  // lock cmpxchg %edx, (%rdi)
  CHECK(quick_length({0xf0, 0x01, 0xc0}) == 0);        // lock with a register operand
  CHECK(quick_length({0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0}) == 10);  // nopw %cs:0(...)
  CHECK(quick_length({0xf3, 0xc3}) == 2);                                    // rep ret
  CHECK(quick_length({0xf3, 0x0f, 0x1e, 0xfa}) == 0);                        // endbr64: Zydis
  CHECK(quick_length({0xc5, 0xf8, 0x77}) == 0);        // vzeroupper: VEX, Zydis
  CHECK(quick_length({0x06}) == 0);                    // invalid in 64-bit mode
  CHECK(quick_length({0x8d, 0xc0}) == 0);              // lea with a register: invalid
  CHECK(quick_length({0x48, 0x8b}) == 0);              // cut off
  CHECK(quick_length({0xe8, 1, 2, 3}) == 0);           // cut off
  CHECK(quick_length({0x66, 0xe8, 1, 2, 3, 4}) == 0);  // 66 call: left to Zydis
}

TEST_CASE("copies of rsp are flagged, the stack pointer's own updates are not") {
  CHECK(quick_hints({0x49, 0x89, 0xe4}) == kMayCopyRsp);               // mov %rsp,%r12
  CHECK(quick_hints({0x48, 0x89, 0xe5}) == kMayCopyRsp);               // mov %rsp,%rbp
  CHECK((quick_hints({0x4c, 0x8d, 0x64, 0x24, 0x08}) & kMayCopyRsp));  // lea 8(%rsp),%r12
  CHECK(quick_hints({0x48, 0x89, 0x27}) == kMayCopyRsp);               // mov %rsp,(%rdi)
  CHECK(quick_hints({0x48, 0x01, 0xe0}) == kMayCopyRsp);               // add %rsp,%rax
  CHECK(quick_hints({0x54}) == kMayCopyRsp);                           // push %rsp
  CHECK(quick_hints({0x48, 0x94}) == kMayCopyRsp);                     // xchg %rax,%rsp
  CHECK((quick_hints({0x4c, 0x8d, 0x64, 0x24, 0xf8}) & kMayCopyRsp));  // lea -8(%rsp),%r12
  CHECK(quick_hints({0x48, 0x83, 0xec, 0x10}) == kMayMoveRspDown);     // sub $16,%rsp
  CHECK(quick_hints({0x48, 0x83, 0xc4, 0x10}) == 0);                   // add $16,%rsp
  CHECK(quick_hints({0x48, 0x8b, 0x44, 0x24, 0x10}) == 0);             // mov 16(%rsp),%rax
  CHECK(quick_hints({0x48, 0x89, 0xc7}) == 0);                         // mov %rax,%rdi
  CHECK(quick_hints({0x4c, 0x89, 0xe0}) == 0);                         // mov %r12,%rax
  CHECK(quick_hints({0x41, 0x54}) == 0);                               // push %r12
  CHECK(quick_hints({0x49, 0x8d, 0x44, 0x24, 0x08}) == 0);             // lea 8(%r12),%rax
}

TEST_CASE("the quick decoder agrees with Zydis on every function of the loaded libraries") {
  // More code than the test's own libraries, where installed.
  for (const char* name : {"libpython3.11.so.1.0", "libsqlite3.so.0", "libcrypto.so.3"}) {
    dlopen(name, RTLD_NOW | RTLD_LOCAL);
  }
  Comparison comparison;
  dl_iterate_phdr(compare_image, &comparison);
  MESSAGE(comparison.instructions, " instructions, ", comparison.answered,
          " decoded quickly, the rest by Zydis");
  CHECK(comparison.instructions > 300000);
  CHECK(comparison.disagreements == 0);
  // Most compiled code is within the quick decoder's reach: that is its point.
  CHECK(comparison.answered > comparison.instructions * 3 / 4);
}

TEST_CASE("the quick decoder agrees with Zydis on random bytes") {
  std::mt19937_64 random(20240611);
  const std::uint8_t prefixes[] = {0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x3e,
                                   0x26, 0x36, 0x64, 0x65, 0x40, 0x48, 0x4f};
  const Zydis zydis;
  Comparison comparison;
  std::uint8_t bytes[16];
  for (int sample = 0; sample < 2000000; ++sample) {
    for (std::uint8_t& byte : bytes) byte = static_cast<std::uint8_t>(random());
    // Prefixes, then a 0f escape, in some samples: plain random bytes rarely have either.
    std::size_t at = 0;
    const std::uint64_t shape = random();
    for (std::uint64_t n = shape % 4; n > 0; --n) bytes[at++] = prefixes[random() % 14];
    if ((shape >> 8) % 3 == 0) bytes[at] = 0x0f;
    const std::size_t available = (shape >> 16) % 8 == 0 ? 1 + (shape >> 24) % 15 : 15;
    compare(zydis, bytes, available, comparison);
  }
  MESSAGE(comparison.answered, " of ", comparison.instructions, " decoded quickly");
  CHECK(comparison.disagreements == 0);
  CHECK(comparison.answered > 100000);
}
