#include "rewriting/instruction_length.hpp"

#include <array>
#include <cstring>

namespace zpoline::detail {
namespace {

constexpr std::size_t kMaxInstructionLength = 15;

enum class Immediate : std::uint8_t {
  none,
  byte,   // ib, or a rel8 displacement
  word,   // iw (ret imm16)
  full,   // iz: 2 bytes with a 66 prefix (and no REX.W), otherwise 4
  move,   // iv of `mov reg, imm` (b8+r): 8 bytes with REX.W, 2 with 66, otherwise 4
  rel32,  // a rel32 displacement (a 66 prefix is never accepted with it)
};

// Rules on the ModRM byte of opcodes whose reg field selects the operation.
enum class Group : std::uint8_t {
  none,
  memory_only,    // 8d lea: no register operand
  reg0_only,      // 8f pop, c6/c7 mov, 0f 1f nop, 0f 9x setcc: /0 only
  shift,          // c0, c1, d0-d3: all but /6
  unary,          // f6, f7: /0 test has an immediate, /1 is unknown here, /2-/7 none; lock: /2, /3
  inc_dec,        // fe: /0, /1
  inc_dec_jump,   // ff: /0 /1 (lock), /2 call, /4 jmp (neither with 66), /6 push
  alu_immediate,  // 80, 81, 83: all; lock: all but /7 cmp
};

struct Opcode {
  bool known = false;
  bool modrm = false;
  Immediate immediate = Immediate::none;
  Group group = Group::none;
  bool operand_size = false;      // a 66 prefix may come with it (it changes the operand size only)
  bool repeat = false;            // f2/f3 prefixes may come with it (string operations, pause)
  bool lockable = false;          // f0 may come with it, with a memory operand
  bool stack_arithmetic = false;  // and, sub, lea: could move rsp down
  // Where a register operand that is read as a value may be encoded, as kRspIn bits (with_operands
  // sets the ModRM ones): the reg field where it names a register (not lea's, its destination,
  // nor one that selects the operation), the r/m register unless the opcode only updates or
  // compares it with an immediate (the 80/81/83 group: `sub $16, %rsp` copies nothing), and the
  // register in the opcode of push and xchg with rax.
  std::uint8_t read_registers = 0;
};

// Register number 4 (rsp, or esp, ah, r12 with REX, an xmm register...) in an instruction.
enum : std::uint8_t {
  kRspInReg = 1,     // ModRM's reg field
  kRspInRm = 2,      // ModRM's r/m field with mod 3
  kRspInOpcode = 4,  // the low bits of the opcode
};

constexpr Opcode with_operands(Opcode info) {
  info.known = true;
  if (info.modrm) {
    info.read_registers =
        static_cast<std::uint8_t>((info.group == Group::none ? kRspInReg : 0) |
                                  (info.group != Group::alu_immediate ? kRspInRm : 0));
  }
  return info;
}

constexpr std::array<std::uint8_t, 256> rsp_in_modrm() {
  std::array<std::uint8_t, 256> table{};
  for (unsigned modrm = 0; modrm < 256; ++modrm) {
    table[modrm] = static_cast<std::uint8_t>((((modrm >> 3) & 7) == 4 ? kRspInReg : 0) |
                                             (modrm >> 6 == 3 && (modrm & 7) == 4 ? kRspInRm : 0));
  }
  return table;
}

constexpr std::array<std::uint8_t, 256> kRspInModrm = rsp_in_modrm();

constexpr std::array<Opcode, 256> one_byte_opcodes() {
  std::array<Opcode, 256> table{};
  const auto set = [&table](int opcode, Opcode info) {
    table[static_cast<std::size_t>(opcode)] = with_operands(info);
  };
  // add or adc sbb and sub xor cmp: r/m,r r,r/m (byte and full), al,ib, eax,iz.
  for (int row = 0; row < 8; ++row) {
    const int base = row * 8;
    const bool arithmetic = row == 4 || row == 5;
    for (int form = 0; form < 4; ++form) {
      set(base + form, {.modrm = true,
                        .operand_size = true,
                        .lockable = form < 2 && row != 7,
                        .stack_arithmetic = arithmetic});
    }
    set(base + 4, {.immediate = Immediate::byte, .operand_size = true});
    set(base + 5, {.immediate = Immediate::full, .operand_size = true});
  }
  for (int opcode = 0x50; opcode <= 0x5f; ++opcode) set(opcode, {.operand_size = true});
  table[0x54].read_registers = kRspInOpcode;         // push %rsp
  set(0x63, {.modrm = true, .operand_size = true});  // movsxd
  set(0x68, {.immediate = Immediate::full, .operand_size = true});
  set(0x69, {.modrm = true, .immediate = Immediate::full, .operand_size = true});
  set(0x6a, {.immediate = Immediate::byte, .operand_size = true});
  set(0x6b, {.modrm = true, .immediate = Immediate::byte, .operand_size = true});
  for (int opcode = 0x70; opcode <= 0x7f; ++opcode) set(opcode, {.immediate = Immediate::byte});
  for (int opcode : {0x80, 0x81, 0x83}) {
    set(opcode, {.modrm = true,
                 .immediate = opcode == 0x81 ? Immediate::full : Immediate::byte,
                 .group = Group::alu_immediate,
                 .operand_size = true,
                 .lockable = true,
                 .stack_arithmetic = true});
  }
  for (int opcode = 0x84; opcode <= 0x8b; ++opcode) {
    set(opcode,
        {.modrm = true, .operand_size = true, .lockable = opcode == 0x86 || opcode == 0x87});
  }
  set(0x8d,
      {.modrm = true, .group = Group::memory_only, .operand_size = true, .stack_arithmetic = true});
  set(0x8f, {.modrm = true, .group = Group::reg0_only, .operand_size = true});
  set(0x90, {.operand_size = true, .repeat = true});  // nop, pause
  for (int opcode = 0x91; opcode <= 0x97; ++opcode) set(opcode, {.operand_size = true});
  table[0x94].read_registers = kRspInOpcode;  // xchg %rsp, %rax
  for (int opcode : {0x98, 0x99, 0x9c, 0x9d}) set(opcode, {.operand_size = true});
  for (int opcode : {0xa4, 0xa5, 0xa6, 0xa7, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf}) {
    set(opcode, {.operand_size = true, .repeat = true});
  }
  set(0xa8, {.immediate = Immediate::byte});
  set(0xa9, {.immediate = Immediate::full, .operand_size = true});
  for (int opcode = 0xb0; opcode <= 0xb7; ++opcode) set(opcode, {.immediate = Immediate::byte});
  for (int opcode = 0xb8; opcode <= 0xbf; ++opcode) {
    set(opcode, {.immediate = Immediate::move, .operand_size = true});
  }
  for (int opcode : {0xc0, 0xc1}) {
    set(opcode,
        {.modrm = true, .immediate = Immediate::byte, .group = Group::shift, .operand_size = true});
  }
  set(0xc2, {.immediate = Immediate::word});
  set(0xc3, {.repeat = true});  // ret, rep ret
  set(0xc6, {.modrm = true,
             .immediate = Immediate::byte,
             .group = Group::reg0_only,
             .operand_size = true});
  set(0xc7, {.modrm = true,
             .immediate = Immediate::full,
             .group = Group::reg0_only,
             .operand_size = true});
  set(0xc9, {});  // leave
  set(0xcc, {});  // int3
  for (int opcode = 0xd0; opcode <= 0xd3; ++opcode) {
    set(opcode, {.modrm = true, .group = Group::shift, .operand_size = true});
  }
  set(0xe8, {.immediate = Immediate::rel32});
  set(0xe9, {.immediate = Immediate::rel32});
  set(0xeb, {.immediate = Immediate::byte});
  for (int opcode : {0xf4, 0xf5, 0xf8, 0xf9, 0xfc, 0xfd}) set(opcode, {});
  for (int opcode : {0xf6, 0xf7}) {
    set(opcode, {.modrm = true, .group = Group::unary, .operand_size = true, .lockable = true});
  }
  set(0xfe, {.modrm = true, .group = Group::inc_dec, .operand_size = true, .lockable = true});
  set(0xff, {.modrm = true, .group = Group::inc_dec_jump, .operand_size = true, .lockable = true});
  return table;
}

// Opcodes after 0f. 0f 05 and 0f 34 are decided before this table is used.
constexpr std::array<Opcode, 256> two_byte_opcodes() {
  std::array<Opcode, 256> table{};
  const auto set = [&table](int opcode, Opcode info) {
    table[static_cast<std::size_t>(opcode)] = with_operands(info);
  };
  set(0x0b, {});                                                                   // ud2
  for (int opcode : {0x10, 0x11, 0x28, 0x29, 0x57}) set(opcode, {.modrm = true});  // movups...
  set(0x1f, {.modrm = true, .group = Group::reg0_only, .operand_size = true});     // nop r/m
  set(0x31, {});                                                                   // rdtsc
  for (int opcode = 0x40; opcode <= 0x4f; ++opcode) {
    set(opcode, {.modrm = true, .operand_size = true});  // cmovcc
  }
  for (int opcode = 0x80; opcode <= 0x8f; ++opcode) set(opcode, {.immediate = Immediate::rel32});
  for (int opcode = 0x90; opcode <= 0x9f; ++opcode) {
    set(opcode, {.modrm = true, .group = Group::reg0_only});  // setcc
  }
  set(0xa2, {});  // cpuid
  for (int opcode : {0xa3, 0xa5, 0xad, 0xaf, 0xb6, 0xb7, 0xbc, 0xbd, 0xbe, 0xbf}) {
    set(opcode, {.modrm = true, .operand_size = true});
  }
  for (int opcode : {0xa4, 0xac}) {
    set(opcode, {.modrm = true, .immediate = Immediate::byte, .operand_size = true});
  }
  for (int opcode : {0xab, 0xb0, 0xb1, 0xb3, 0xbb, 0xc0, 0xc1}) {
    set(opcode, {.modrm = true, .operand_size = true, .lockable = true});
  }
  for (int opcode = 0xc8; opcode <= 0xcf; ++opcode) set(opcode, {});  // bswap
  return table;
}

constexpr std::array<Opcode, 256> kOneByte = one_byte_opcodes();
constexpr std::array<Opcode, 256> kTwoByte = two_byte_opcodes();

bool is_legacy_prefix(std::uint8_t byte) {
  switch (byte) {
    case 0xf0:
    case 0xf2:
    case 0xf3:
    case 0x66:
    case 0x67:
    case 0x2e:
    case 0x3e:
    case 0x26:
    case 0x36:
    case 0x64:
    case 0x65:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool decode_quickly(const std::uint8_t* bytes, std::size_t available, QuickInstruction& out) {
  const std::size_t limit = available < kMaxInstructionLength ? available : kMaxInstructionLength;
  std::size_t at = 0;
  bool lock = false;
  bool repeat = false;
  bool operand_size = false;
  for (;; ++at) {
    if (at >= limit) return false;
    const std::uint8_t byte = bytes[at];
    if (!is_legacy_prefix(byte)) break;
    lock = lock || byte == 0xf0;
    repeat = repeat || byte == 0xf2 || byte == 0xf3;
    operand_size = operand_size || byte == 0x66;
  }
  bool prefixed = at > 0;
  bool rex_w = false;
  // REX.R (bit 2) extends ModRM.reg, REX.B (bit 0) ModRM.rm, SIB.base and the register in the
  // opcode: register 4 is rsp only without them (r12 with them).
  unsigned rex = 0;
  if ((bytes[at] & 0xf0) == 0x40) {
    rex = bytes[at];
    rex_w = (rex & 0x08) != 0;
    prefixed = true;
    // A prefix after REX makes the REX prefix void: unusual, left to Zydis.
    if (++at >= limit || is_legacy_prefix(bytes[at]) || (bytes[at] & 0xf0) == 0x40) return false;
  }

  const Opcode* opcode = nullptr;
  std::uint8_t value = bytes[at++];
  if (value == 0x0f) {
    if (at >= limit) return false;
    value = bytes[at++];
    if (value == 0x05 || value == 0x34) {
      if (prefixed) return false;  // a prefixed syscall: Zydis tells its length
      out = {2, true, 0};
      return true;
    }
    opcode = &kTwoByte[value];
  } else {
    opcode = &kOneByte[value];
  }
  if (!opcode->known || (operand_size && !opcode->operand_size) || (repeat && !opcode->repeat)) {
    return false;
  }

  Immediate immediate = opcode->immediate;
  std::uint8_t hints = 0;
  std::int32_t displacement_value = 0;
  if (opcode->modrm) {
    if (at >= limit) return false;
    const std::uint8_t modrm = bytes[at++];
    const unsigned mod = modrm >> 6;
    const unsigned reg = (modrm >> 3) & 7;
    const unsigned rm = modrm & 7;
    bool lockable = opcode->lockable;
    switch (opcode->group) {
      case Group::none:
        break;
      case Group::memory_only:
        if (mod == 3) return false;
        break;
      case Group::reg0_only:
        if (reg != 0) return false;
        break;
      case Group::shift:
        if (reg == 6) return false;
        break;
      case Group::unary:
        if (reg == 1) return false;
        if (reg == 0) immediate = value == 0xf6 ? Immediate::byte : Immediate::full;
        lockable = reg == 2 || reg == 3;
        break;
      case Group::inc_dec:
        if (reg > 1) return false;
        break;
      case Group::inc_dec_jump:
        if (reg == 3 || reg == 5 || reg == 7) return false;
        if (operand_size && (reg == 2 || reg == 4)) return false;
        lockable = reg < 2;
        break;
      case Group::alu_immediate:
        lockable = reg != 7;
        break;
    }
    if (lock && (!lockable || mod == 3)) return false;
    // rsp is register 4, in the reg field or (mod 3) the r/m field. In the 80/81/83 group, the reg
    // field selects the operation (4: and, 5: sub) and r/m is the destination.
    const bool may_move_rsp = opcode->group == Group::alu_immediate
                                  ? (reg == 4 || reg == 5) && mod == 3 && rm == 4
                                  : opcode->stack_arithmetic && (reg == 4 || (mod == 3 && rm == 4));
    if (may_move_rsp) hints |= kMayMoveRspDown;
    // A register operand that may be rsp (or esp, ah, an xmm register...) and may be read.
    const unsigned rsp_operands = kRspInModrm[modrm] & opcode->read_registers;
    if (rsp_operands != 0) {
      const unsigned extended = (rex & 0x04 ? kRspInReg : 0) | (rex & 0x01 ? kRspInRm : 0);
      if ((rsp_operands & ~extended) != 0) hints |= kMayCopyRsp;
    }
    if (mod != 3) {
      unsigned base = rm;
      if (rm == 4) {
        if (at >= limit) return false;
        base = bytes[at++] & 7;  // SIB
        if ((base | (rex & 0x01) << 3) == 4 && opcode->group == Group::memory_only) {
          hints |= kMayCopyRsp;  // lea off rsp
        }
      }
      std::size_t displacement = 0;
      if (mod == 1) {
        displacement = 1;
      } else if (mod == 2 || base == 5) {  // mod 0 with base 5: rip-relative, or no base
        displacement = 4;
      }
      if (at + displacement > limit) return false;
      // Little-endian: the sign is in the displacement's last byte. Base 4 or 5 (with REX.B:
      // r12, r13) may be rsp or rbp; mod 0 has no displacement from a base register.
      if (mod != 0 && (base == 4 || base == 5) && (bytes[at + displacement - 1] & 0x80) != 0) {
        hints |= base == 4 ? kMayAddressBelowRsp : kMayAddressBelowRbp;
        if (displacement == 1) {
          displacement_value = static_cast<std::int8_t>(bytes[at]);
        } else {
          std::uint32_t raw;
          std::memcpy(&raw, bytes + at, sizeof raw);
          displacement_value = static_cast<std::int32_t>(raw);
        }
      }
      at += displacement;
    }
  } else if (lock) {
    return false;
  } else if ((opcode->read_registers & kRspInOpcode) != 0 && (rex & 0x01) == 0) {
    hints |= kMayCopyRsp;  // push %rsp, xchg %rsp, %rax
  }

  std::size_t immediate_size = 0;
  switch (immediate) {
    case Immediate::none:
      break;
    case Immediate::byte:
      immediate_size = 1;
      break;
    case Immediate::word:
      immediate_size = 2;
      break;
    case Immediate::full:
      immediate_size = operand_size && !rex_w ? 2 : 4;
      break;
    case Immediate::move:
      immediate_size = rex_w ? 8 : operand_size ? 2 : 4;
      break;
    case Immediate::rel32:
      immediate_size = 4;
      break;
  }
  if (at + immediate_size > limit) return false;
  out = {static_cast<std::uint8_t>(at + immediate_size), false, hints, displacement_value};
  return true;
}

}  // namespace zpoline::detail
