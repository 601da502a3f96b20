#include "rewriting/return_slot.hpp"

#include <utility>
#include <vector>

namespace zpoline::detail {
namespace {

// The 16 general-purpose registers as bits, by their 64-bit names; anything else is no bit.
std::uint32_t bit(ZydisRegister reg) {
  if (reg == ZYDIS_REGISTER_NONE) return 0;
  const ZydisRegister wide = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, reg);
  return wide >= ZYDIS_REGISTER_RAX && wide <= ZYDIS_REGISTER_R15
             ? std::uint32_t{1} << (wide - ZYDIS_REGISTER_RAX)
             : 0;
}

constexpr std::uint32_t kRsp = std::uint32_t{1} << (ZYDIS_REGISTER_RSP - ZYDIS_REGISTER_RAX);
constexpr std::uint32_t kRbp = std::uint32_t{1} << (ZYDIS_REGISTER_RBP - ZYDIS_REGISTER_RAX);

std::uint32_t syscall_arguments() {
  return bit(ZYDIS_REGISTER_RDI) | bit(ZYDIS_REGISTER_RSI) | bit(ZYDIS_REGISTER_RDX) |
         bit(ZYDIS_REGISTER_R10) | bit(ZYDIS_REGISTER_R8) | bit(ZYDIS_REGISTER_R9);
}

bool is_write_only(const ZydisDecodedOperand& operand) {
  return (operand.actions & ZYDIS_OPERAND_ACTION_WRITE) != 0 &&
         (operand.actions & (ZYDIS_OPERAND_ACTION_MASK_READ | ZYDIS_OPERAND_ACTION_CONDWRITE)) == 0;
}

// Registers an instruction replaces entirely (32- and 64-bit writes that do not read the old
// value; an 8- or 16-bit write keeps the rest, `add $8, %rax` keeps a pointer a pointer).
std::uint32_t replaced_registers(const ZydisDecodedInstruction& instruction,
                                 const ZydisDecodedOperand* operands) {
  std::uint32_t replaced = 0;
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type == ZYDIS_OPERAND_TYPE_REGISTER && is_write_only(operand) &&
        operand.size >= 32) {
      replaced |= bit(operand.reg.value);
    }
  }
  return replaced;
}

bool is_stack_pointer_move(ZydisMnemonic mnemonic) {
  return mnemonic == ZYDIS_MNEMONIC_PUSH || mnemonic == ZYDIS_MNEMONIC_POP ||
         mnemonic == ZYDIS_MNEMONIC_PUSHFQ || mnemonic == ZYDIS_MNEMONIC_POPFQ ||
         mnemonic == ZYDIS_MNEMONIC_CALL || mnemonic == ZYDIS_MNEMONIC_RET ||
         mnemonic == ZYDIS_MNEMONIC_LEAVE;
}

bool stops_execution(const ZydisDecodedInstruction& instruction) {
  return instruction.mnemonic == ZYDIS_MNEMONIC_UD2 || instruction.mnemonic == ZYDIS_MNEMONIC_HLT ||
         instruction.mnemonic == ZYDIS_MNEMONIC_INT3;
}

bool is_register(const ZydisDecodedOperand& operand, ZydisRegister reg) {
  return operand.type == ZYDIS_OPERAND_TYPE_REGISTER && operand.reg.value == reg;
}

// Whether the instruction writes rsp (or esp, sp, spl) as its explicit destination.
bool writes_rsp(const ZydisDecodedInstruction& instruction, const ZydisDecodedOperand* operands) {
  return instruction.operand_count_visible > 0 && operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
         (bit(operands[0].reg.value) & kRsp) &&
         (operands[0].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0;
}

// Whether the proof follows what `instruction` does with rsp, as far as its shape tells: push,
// pop, call, ret, leave; add or sub of a constant, lea off rsp or rbp, or a move from rbp into
// rsp; rsp read as a value only by `mov %rsp, %rbp`. step() works out the offsets, and refuses
// what needs a frame pointer while rbp holds none.
bool rsp_use_followed(const ZydisDecodedInstruction& instruction,
                      const ZydisDecodedOperand* operands) {
  switch (instruction.mnemonic) {
    case ZYDIS_MNEMONIC_PUSH:  // `push %rsp` copies rsp to memory
    case ZYDIS_MNEMONIC_POP:   // `pop %rsp` loads it
      return operands[0].type != ZYDIS_OPERAND_TYPE_REGISTER ||
             (bit(operands[0].reg.value) & kRsp) == 0;
    case ZYDIS_MNEMONIC_ENTER:
      return false;
    default:
      break;
  }
  if (is_stack_pointer_move(instruction.mnemonic)) return true;
  if (writes_rsp(instruction, operands)) {
    // Only all of it (`mov %eax, %esp` would clear the upper half).
    if (!is_register(operands[0], ZYDIS_REGISTER_RSP) || instruction.operand_count_visible < 2) {
      return false;
    }
    const ZydisDecodedOperand& source = operands[1];
    switch (instruction.mnemonic) {
      case ZYDIS_MNEMONIC_ADD:
      case ZYDIS_MNEMONIC_SUB:
        return source.type == ZYDIS_OPERAND_TYPE_IMMEDIATE;
      case ZYDIS_MNEMONIC_LEA:
        return source.mem.index == ZYDIS_REGISTER_NONE &&
               (source.mem.base == ZYDIS_REGISTER_RSP || source.mem.base == ZYDIS_REGISTER_RBP);
      case ZYDIS_MNEMONIC_MOV:
        return is_register(source, ZYDIS_REGISTER_RBP);
      default:
        return false;
    }
  }
  // rsp (or part of it) read as a value: a copy anywhere but in rbp (another register, memory)
  // could address the slot without the proof seeing it.
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    if (operands[i].type == ZYDIS_OPERAND_TYPE_REGISTER && (bit(operands[i].reg.value) & kRsp)) {
      return instruction.mnemonic == ZYDIS_MNEMONIC_MOV && i == 1 &&
             is_register(operands[0], ZYDIS_REGISTER_RBP);
    }
  }
  return true;
}

constexpr int kMaxInstructions = 4096;

}  // namespace

ReturnSlotProof::ReturnSlotProof(const ZydisDecoder& decoder, std::span<const std::uint8_t> code,
                                 std::uintptr_t runtime_address, std::uintptr_t begin,
                                 std::uintptr_t end)
    : decoder_(decoder), code_(code), runtime_address_(runtime_address), begin_(begin), end_(end) {}

bool ReturnSlotProof::decode(std::uintptr_t ip, ZydisDecodedInstruction& instruction,
                             ZydisDecodedOperand* operands) const {
  if (ip < begin_ || ip >= end_) return false;
  const std::uint8_t* bytes = code_.data() + (ip - runtime_address_);
  return ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder_, bytes, end_ - ip, &instruction, operands));
}

std::optional<std::int64_t> ReturnSlotProof::stack_offset(const ZydisDecodedOperand& memory,
                                                          const StackState& state) const {
  if (memory.mem.base == ZYDIS_REGISTER_RSP) return state.rsp + memory.mem.disp.value;
  if (memory.mem.base == ZYDIS_REGISTER_RBP && state.rbp) return *state.rbp + memory.mem.disp.value;
  return std::nullopt;
}

// The stack pointer's (and frame pointer's) offsets after `instruction`; false if it moves or
// copies rsp (or rbp while that holds a stack offset) in a way the proof does not model.
bool ReturnSlotProof::step(const ZydisDecodedInstruction& instruction,
                           const ZydisDecodedOperand* operands, StackState& state) const {
  if (!rsp_use_followed(instruction, operands)) return false;
  switch (instruction.mnemonic) {
    case ZYDIS_MNEMONIC_PUSH:
      // `push %rbp` while rbp holds a stack offset stores a stack pointer the proof does not see.
      if (state.rbp && operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          (bit(operands[0].reg.value) & kRbp) != 0) {
        return false;
      }
      state.rsp -= instruction.operand_width / 8;
      return true;
    case ZYDIS_MNEMONIC_PUSHFQ:
      state.rsp -= 8;
      return true;
    case ZYDIS_MNEMONIC_POP:
      state.rsp += instruction.operand_width / 8;
      if (operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          (bit(operands[0].reg.value) & kRbp) != 0) {
        state.rbp.reset();
      }
      return true;
    case ZYDIS_MNEMONIC_POPFQ:
      state.rsp += 8;
      return true;
    case ZYDIS_MNEMONIC_LEAVE:
      if (!state.rbp) return false;
      state.rsp = *state.rbp + 8;
      state.rbp.reset();
      return true;
    default:
      break;
  }
  if (is_stack_pointer_move(instruction.mnemonic)) return true;  // call, ret: balanced
  if (writes_rsp(instruction, operands)) {
    const ZydisDecodedOperand& source = operands[1];
    if (source.type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {  // add, sub
      const auto value = static_cast<std::int64_t>(source.imm.value.s);
      state.rsp += instruction.mnemonic == ZYDIS_MNEMONIC_ADD ? value : -value;
      return true;
    }
    const std::optional<std::int64_t> offset =
        instruction.mnemonic == ZYDIS_MNEMONIC_LEA ? stack_offset(source, state) : state.rbp;
    if (!offset) return false;
    state.rsp = *offset;
    return true;
  }
  if (instruction.mnemonic == ZYDIS_MNEMONIC_MOV && instruction.operand_count_visible == 2 &&
      is_register(operands[1], ZYDIS_REGISTER_RSP)) {
    state.rbp = state.rsp;  // `mov %rsp, %rbp`, the only other use of rsp followed
    return true;
  }
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type != ZYDIS_OPERAND_TYPE_REGISTER || (bit(operand.reg.value) & kRbp) == 0) {
      continue;
    }
    if (!state.rbp) continue;  // rbp holds no stack offset (or is followed as a pointer)
    // While rbp holds a stack offset, it is followed only as a base of memory operands: a copy
    // of it (`mov %rbp, %rdx`) or arithmetic on it would be a stack pointer the proof does not
    // see. Only an overwrite of all of it ends its being one.
    if ((operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0) return false;
    if ((operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) {
      if (!is_write_only(operand) || operand.size < 32) return false;
      state.rbp.reset();
    }
  }
  return true;
}

// Registers an instruction may make into stack pointers; nullopt if it may put one where the
// proof does not follow it (a vector or other non-general register).
std::optional<std::uint32_t> ReturnSlotProof::new_pointers(
    const ZydisDecodedInstruction& instruction, const ZydisDecodedOperand* operands) const {
  if (instruction.mnemonic == ZYDIS_MNEMONIC_POP && pointer_stored_ &&
      operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER) {
    return bit(operands[0].reg.value) & ~kRsp;  // may pop a stack pointer pushed earlier
  }
  std::uint32_t written = 0;
  std::uint32_t read = 0;
  bool writes_other_register = false;
  bool loads_from_stack = false;
  bool addresses_stack = false;
  // Hidden operands too (string instructions move through rsi and rdi, cmpxchg loads rax), but
  // not the stack accesses of push, pop, call, ret and leave, which step() follows.
  for (unsigned i = 0; i < instruction.operand_count; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    const bool visible = i < instruction.operand_count_visible;
    if (!visible && is_stack_pointer_move(instruction.mnemonic)) continue;
    if (operand.type == ZYDIS_OPERAND_TYPE_REGISTER) {
      if ((operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) {
        written |= bit(operand.reg.value);
        // A vector register, say (flags and rip are hidden operands).
        writes_other_register = writes_other_register || (visible && bit(operand.reg.value) == 0);
      }
      if ((operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0) read |= bit(operand.reg.value);
    } else if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY) {
      const std::uint32_t bases = bit(operand.mem.base) | bit(operand.mem.index);
      if (operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN) {
        // lea off rsp, rbp, or a register that may already hold a stack pointer.
        addresses_stack = addresses_stack || (bases & (kRsp | kRbp | pointers_)) != 0;
      } else if ((bases & (kRsp | kRbp | pointers_)) != 0 && instruction.operand_width == 64) {
        // A load from the stack, directly or through a pointer into it, which may get back a
        // stack pointer stored there.
        loads_from_stack =
            loads_from_stack || (operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0;
      }
    }
  }
  if (addresses_stack || (read & pointers_) != 0 || (pointer_stored_ && loads_from_stack)) {
    if (writes_other_register) return std::nullopt;
    return written & ~kRsp;
  }
  return 0;
}

bool ReturnSlotProof::analyse() {
  // Stack pointer facts, register by register, over every instruction of the function in address
  // order (so code reached only through a jump table is covered too); repeated until stable.
  for (int round = 0;; ++round) {
    if (round == 8) return false;
    const std::uint32_t pointers_before = pointers_;
    const bool stored_before = pointer_stored_;
    ZydisDecodedInstruction instruction;
    ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
    for (std::uintptr_t ip = begin_; ip < end_; ip += instruction.length) {
      if (!decode(ip, instruction, operands)) return false;
      // What step() would refuse whatever the offsets (a stack switch, say) fails here, before
      // more rounds and the pass along the control flow.
      if (round == 0 && !rsp_use_followed(instruction, operands)) return false;
      const std::optional<std::uint32_t> made = new_pointers(instruction, operands);
      if (!made) return false;
      pointers_ |= *made;
      if (instruction.mnemonic == ZYDIS_MNEMONIC_PUSH &&
          operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          (bit(operands[0].reg.value) & pointers_) != 0) {
        pointer_stored_ = true;
      }
      for (unsigned i = 0; i < instruction.operand_count; ++i) {
        if (i >= instruction.operand_count_visible && is_stack_pointer_move(instruction.mnemonic)) {
          continue;  // push's store is the PUSH case above; call stores rip
        }
        if (operands[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
            operands[i].mem.type != ZYDIS_MEMOP_TYPE_AGEN &&
            (operands[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) {
          for (unsigned j = 0; j < instruction.operand_count; ++j) {
            if (operands[j].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                (bit(operands[j].reg.value) & pointers_) != 0) {
              pointer_stored_ = true;  // a stack pointer written to memory may be loaded back
            }
          }
        }
      }
    }
    // Stack pointers only accumulate: one in an argument register settles it (a red-zone buffer
    // handed to the kernel, the commonest reason to refuse), before the passes that remain.
    if ((pointers_ & syscall_arguments()) != 0) return false;
    if (pointers_ == pointers_before && pointer_stored_ == stored_before) break;
  }

  // Stack offsets along the control flow from the entry.
  std::vector<std::pair<std::uintptr_t, StackState>> work{{begin_, StackState{}}};
  int budget = kMaxInstructions;
  while (!work.empty()) {
    auto [ip, state] = work.back();
    work.pop_back();
    while (ip >= begin_ && ip < end_) {
      auto [known, inserted] = states_.try_emplace(ip, state);
      if (!inserted) {
        if (known->second == state) break;
        return false;  // two paths disagree about rsp here
      }
      if (--budget == 0) return false;
      ZydisDecodedInstruction instruction;
      ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
      if (!decode(ip, instruction, operands) || !step(instruction, operands, state)) return false;
      const ZydisInstructionCategory category = instruction.meta.category;
      if (category == ZYDIS_CATEGORY_RET || stops_execution(instruction)) break;
      if (category == ZYDIS_CATEGORY_UNCOND_BR || category == ZYDIS_CATEGORY_COND_BR) {
        std::uint64_t target = 0;
        if (operands[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE &&
            ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&instruction, &operands[0], ip, &target))) {
          work.emplace_back(target, state);
        }
        // An indirect jump's targets stay without a state: a path reaching them fails below.
        if (category == ZYDIS_CATEGORY_UNCOND_BR) break;
      }
      ip += instruction.length;
    }
  }
  return true;
}

bool ReturnSlotProof::slot_dead_at(std::uintptr_t site) {
  if (!analysed_) analysed_ = analyse();
  if (!*analysed_) return false;
  const auto at_site = states_.find(site);
  if (at_site == states_.end()) return false;  // not reached from the entry: nothing is known
  const std::int64_t slot = at_site->second.rsp - 8;  // the slot is [slot, slot + 8)

  struct Path {
    std::uintptr_t ip;
    std::uint32_t pointers;
  };
  std::vector<Path> work{{site + 2, pointers_}};
  std::unordered_map<std::uintptr_t, std::uint32_t> visited;
  int budget = kMaxInstructions;
  while (!work.empty()) {
    Path path = work.back();
    work.pop_back();
    while (true) {
      // A jump out of the range: a tail call, or a jump back from a function's cold part to its
      // hot part, which may read the slot. Not modelled.
      if (path.ip < begin_ || path.ip >= end_) return false;
      auto [seen, inserted] = visited.try_emplace(path.ip, path.pointers);
      if (!inserted) {
        if ((path.pointers & ~seen->second) == 0) break;  // nothing new on this path
        seen->second |= path.pointers;
      }
      if (--budget == 0) return false;
      const auto state = states_.find(path.ip);
      if (state == states_.end()) return false;
      ZydisDecodedInstruction instruction;
      ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
      if (!decode(path.ip, instruction, operands)) return false;
      const ZydisInstructionCategory category = instruction.meta.category;
      const std::int64_t rsp = state->second.rsp;
      // Implicit reads of the stack: pop and ret read the 8 bytes at rsp, leave those at rbp.
      if (instruction.mnemonic == ZYDIS_MNEMONIC_POP ||
          instruction.mnemonic == ZYDIS_MNEMONIC_POPFQ) {
        if (rsp < slot + 8 && rsp + 8 > slot) return false;  // reads the slot
      }
      if (instruction.mnemonic == ZYDIS_MNEMONIC_LEAVE) {
        if (!state->second.rbp) return false;
        const std::int64_t frame = *state->second.rbp;
        if (frame < slot + 8 && frame + 8 > slot) return false;
      }
      // Explicit memory operands, including those of push, pop and call (`push -8(%rsp)` reads
      // the slot before it writes anything).
      bool replaced = false;
      for (unsigned i = 0; i < instruction.operand_count; ++i) {
        const ZydisDecodedOperand& operand = operands[i];
        if (operand.type != ZYDIS_OPERAND_TYPE_MEMORY ||
            operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN) {
          continue;
        }
        if (i >= instruction.operand_count_visible && is_stack_pointer_move(instruction.mnemonic)) {
          continue;  // the stack access of push, pop, call, ret, leave: handled around this
        }
        if ((path.pointers & (bit(operand.mem.base) | bit(operand.mem.index))) != 0) return false;
        std::optional<std::int64_t> offset = stack_offset(operand, state->second);
        if (!offset) continue;  // not the stack
        if (operand.mem.index != ZYDIS_REGISTER_NONE) return false;
        // Push and call compute their operand's address with rsp as it was before they moved
        // it, as stack_offset does; pop writes its operand after it moved rsp up.
        if (instruction.mnemonic == ZYDIS_MNEMONIC_POP && operand.mem.base == ZYDIS_REGISTER_RSP) {
          *offset += instruction.operand_width / 8;
        }
        const std::int64_t size = operand.size ? operand.size / 8 : 512;
        if (*offset >= slot + 8 || *offset + size <= slot) continue;  // clear of the slot
        if (is_write_only(operand) && *offset <= slot && *offset + size >= slot + 8) {
          replaced = true;  // the old contents are never read again on this path
          continue;
        }
        return false;
      }
      // Implicit writes of the stack.
      if (instruction.mnemonic == ZYDIS_MNEMONIC_PUSH ||
          instruction.mnemonic == ZYDIS_MNEMONIC_PUSHFQ) {
        const std::int64_t size = instruction.operand_width / 8;
        if (rsp - size == slot && size == 8) break;  // replaces the slot: dead from here on
        if (rsp - size < slot + 8 && rsp > slot) return false;
      }
      // A call hands the stack below rsp to the callee (its return address goes into the 8
      // bytes below rsp, as it would have without the rewrite), and a return leaves it to the
      // caller: either ends the slot's life if it lies wholly below rsp. A slot at or above rsp
      // (rsp moved below it since the syscall, or `ret` popping it) is read, or may be after the
      // call, which the proof does not follow.
      if (category == ZYDIS_CATEGORY_RET || category == ZYDIS_CATEGORY_CALL) {
        if (slot + 8 <= rsp) break;
        return false;
      }
      if (replaced) break;
      path.pointers &= ~replaced_registers(instruction, operands);
      const std::optional<std::uint32_t> made = new_pointers(instruction, operands);
      if (!made) return false;
      path.pointers |= *made;
      if (category == ZYDIS_CATEGORY_UNCOND_BR || category == ZYDIS_CATEGORY_COND_BR) {
        std::uint64_t target = 0;
        if (operands[0].type != ZYDIS_OPERAND_TYPE_IMMEDIATE ||
            !ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&instruction, &operands[0], path.ip, &target))) {
          return false;  // an indirect jump: targets unknown
        }
        if (category == ZYDIS_CATEGORY_UNCOND_BR) {
          path.ip = target;
          continue;
        }
        work.push_back({target, path.pointers});
      }
      if (stops_execution(instruction)) break;
      path.ip += instruction.length;
    }
  }
  return true;
}

}  // namespace zpoline::detail
