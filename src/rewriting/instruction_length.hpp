// The length of the most common x86-64 instructions, from opcode tables, in a few nanoseconds.
//
// The site scanner walks whole functions instruction by instruction, and Zydis, even in its
// minimal mode, spends ten times longer per instruction than a table lookup. This decoder knows
// only legacy-encoded instructions whose length and validity follow from their prefixes, opcode
// and ModRM byte alone (ALU, mov, lea, push/pop, jumps and calls, shifts, test, cmov, setcc,
// string operations, ...). For everything else (VEX/EVEX, most SSE, system instructions, prefixed
// syscalls, opcodes with unusual prefixes, undefined opcodes, instructions cut off by the end of
// the code) it answers "unknown", and the caller asks Zydis. It never answers for bytes Zydis
// would reject, and where it answers, it agrees with Zydis on the length (test_instruction_length
// checks this on every function of the loaded libraries and on random bytes).
#pragma once

#include <cstddef>
#include <cstdint>

namespace zpoline::detail {

// The kinds of red-zone evidence (see site_scanner.cpp) an instruction may show, as bits.
enum RedZoneHint : std::uint8_t {
  kMayMoveRspDown = 1,      // a sub, and or lea that may write rsp
  kMayAddressBelowRsp = 2,  // a negative displacement from a base that may be rsp
  kMayAddressBelowRbp = 4,  // a negative displacement from a base that may be rbp
  kMayCopyRsp = 8,          // a register operand that may be rsp read as a value, or a lea off a
                            // base that may be rsp
};

struct QuickInstruction {
  std::uint8_t length = 0;
  bool syscall = false;  // a plain 2-byte `syscall` (0f 05) or `sysenter` (0f 34)
  // RedZoneHint bits. Over-inclusive: what a full decode finds is a subset, and the scanner
  // decodes an instruction in full when it may show evidence the function has not shown yet.
  std::uint8_t red_zone_hints = 0;
  // With kMayAddressBelowRsp or kMayAddressBelowRbp: the (negative) displacement, sign-extended;
  // 0 otherwise. An access below rbp matters to the scanner only if it is lower than those it has
  // seen, which this tells without a full decode.
  std::int32_t displacement = 0;
};

// Decodes the instruction at `bytes`, of which `available` bytes may be read. False: unknown here,
// decode it with Zydis.
bool decode_quickly(const std::uint8_t* bytes, std::size_t available, QuickInstruction& out);

}  // namespace zpoline::detail
