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

struct QuickInstruction {
  std::uint8_t length = 0;
  bool syscall = false;  // a plain 2-byte `syscall` (0f 05) or `sysenter` (0f 34)
  // The instruction may be red-zone evidence (see site_scanner.cpp): a memory operand with a
  // negative displacement whose base may be rsp or rbp, or a sub/and/lea that may write rsp.
  // Over-inclusive: the scanner decodes such instructions in full to decide.
  bool maybe_red_zone_evidence = false;
};

// Decodes the instruction at `bytes`, of which `available` bytes may be read. False: unknown here,
// decode it with Zydis.
bool decode_quickly(const std::uint8_t* bytes, std::size_t available, QuickInstruction& out);

}  // namespace zpoline::detail
