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
// copies rsp in a way the proof does not model.
bool ReturnSlotProof::step(const ZydisDecodedInstruction& instruction,
                           const ZydisDecodedOperand* operands, StackState& state) const {
  switch (instruction.mnemonic) {
    case ZYDIS_MNEMONIC_PUSH:
      state.rsp -= instruction.operand_width / 8;
      // `push %rsp` copies the stack pointer to memory.
      return operands[0].type != ZYDIS_OPERAND_TYPE_REGISTER ||
             operands[0].reg.value != ZYDIS_REGISTER_RSP;
    case ZYDIS_MNEMONIC_PUSHFQ:
      state.rsp -= 8;
      return true;
    case ZYDIS_MNEMONIC_POP:
      state.rsp += instruction.operand_width / 8;
      if ((operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER && bit(operands[0].reg.value) & kRbp)) {
        state.rbp.reset();
      }
      return operands[0].type != ZYDIS_OPERAND_TYPE_REGISTER ||
             operands[0].reg.value != ZYDIS_REGISTER_RSP;
    case ZYDIS_MNEMONIC_POPFQ:
      state.rsp += 8;
      return true;
    case ZYDIS_MNEMONIC_LEAVE:
      if (!state.rbp) return false;
      state.rsp = *state.rbp + 8;
      state.rbp.reset();
      return true;
    case ZYDIS_MNEMONIC_ENTER:
      return false;
    default:
      break;
  }
  if (is_stack_pointer_move(instruction.mnemonic)) return true;  // call, ret: balanced
  const ZydisDecodedOperand* destination =
      instruction.operand_count_visible > 0 ? &operands[0] : nullptr;
  const ZydisDecodedOperand* source =
      instruction.operand_count_visible > 1 ? &operands[1] : nullptr;
  const bool writes_rsp = destination && destination->type == ZYDIS_OPERAND_TYPE_REGISTER &&
                          destination->reg.value == ZYDIS_REGISTER_RSP &&
                          (destination->actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0;
  if (writes_rsp) {
    if (!source) return false;
    if ((instruction.mnemonic == ZYDIS_MNEMONIC_SUB ||
         instruction.mnemonic == ZYDIS_MNEMONIC_ADD) &&
        source->type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
      const auto value = static_cast<std::int64_t>(source->imm.value.s);
      state.rsp += instruction.mnemonic == ZYDIS_MNEMONIC_ADD ? value : -value;
      return true;
    }
    if (instruction.mnemonic == ZYDIS_MNEMONIC_LEA && source->mem.index == ZYDIS_REGISTER_NONE) {
      const std::optional<std::int64_t> offset = stack_offset(*source, state);
      if (!offset) return false;
      state.rsp = *offset;
      return true;
    }
    if (instruction.mnemonic == ZYDIS_MNEMONIC_MOV && source->type == ZYDIS_OPERAND_TYPE_REGISTER &&
        source->reg.value == ZYDIS_REGISTER_RBP && state.rbp) {
      state.rsp = *state.rbp;
      return true;
    }
    return false;
  }
  // rsp read as a value: only `mov %rsp, %rbp` is modelled.
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type == ZYDIS_OPERAND_TYPE_REGISTER && operand.reg.value == ZYDIS_REGISTER_RSP) {
      const bool frame_pointer_set = instruction.mnemonic == ZYDIS_MNEMONIC_MOV && i == 1 &&
                                     destination->type == ZYDIS_OPERAND_TYPE_REGISTER &&
                                     destination->reg.value == ZYDIS_REGISTER_RBP;
      if (!frame_pointer_set) return false;
      state.rbp = state.rsp;
      return true;
    }
  }
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type == ZYDIS_OPERAND_TYPE_REGISTER &&
        (operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0 &&
        (bit(operand.reg.value) & kRbp)) {
      state.rbp.reset();  // rbp no longer holds a known stack offset
    }
  }
  return true;
}

// Registers an instruction may make into stack pointers.
std::uint32_t ReturnSlotProof::new_pointers(const ZydisDecodedInstruction& instruction,
                                            const ZydisDecodedOperand* operands) const {
  if (instruction.mnemonic == ZYDIS_MNEMONIC_POP && pointer_stored_ &&
      operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER) {
    return bit(operands[0].reg.value) & ~kRsp;  // may pop a stack pointer pushed earlier
  }
  std::uint32_t written = 0;
  std::uint32_t read = 0;
  bool loads_from_stack = false;
  bool addresses_stack = false;
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type == ZYDIS_OPERAND_TYPE_REGISTER) {
      if ((operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0)
        written |= bit(operand.reg.value);
      if ((operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0) read |= bit(operand.reg.value);
    } else if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY) {
      const std::uint32_t bases = bit(operand.mem.base) | bit(operand.mem.index);
      if (operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN) {
        // lea off rsp, rbp, or a register that may already hold a stack pointer.
        addresses_stack = (bases & (kRsp | kRbp | pointers_)) != 0;
      } else if ((bases & (kRsp | kRbp)) != 0 && instruction.operand_width == 64) {
        loads_from_stack = (operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0;
      }
    }
  }
  if (addresses_stack || (read & pointers_) != 0 || (pointer_stored_ && loads_from_stack)) {
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
      pointers_ |= new_pointers(instruction, operands);
      if (instruction.mnemonic == ZYDIS_MNEMONIC_PUSH &&
          operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          (bit(operands[0].reg.value) & pointers_) != 0) {
        pointer_stored_ = true;
      }
      for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
        if (operands[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
            operands[i].mem.type != ZYDIS_MEMOP_TYPE_AGEN &&
            (operands[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) {
          for (unsigned j = 0; j < instruction.operand_count_visible; ++j) {
            if (operands[j].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                (bit(operands[j].reg.value) & pointers_) != 0) {
              pointer_stored_ = true;  // a stack pointer written to memory may be loaded back
            }
          }
        }
      }
    }
    if (pointers_ == pointers_before && pointer_stored_ == stored_before) break;
  }
  if ((pointers_ & syscall_arguments()) != 0) return false;

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
      // A call overwrites the slot with its own return address, as it would have without the
      // rewrite (or lies below it); a return leaves the frame.
      if (category == ZYDIS_CATEGORY_RET || category == ZYDIS_CATEGORY_CALL) break;
      const std::int64_t rsp = state->second.rsp;
      if (instruction.mnemonic == ZYDIS_MNEMONIC_PUSH ||
          instruction.mnemonic == ZYDIS_MNEMONIC_PUSHFQ) {
        const std::int64_t size = instruction.operand_width / 8;
        if (rsp - size == slot && size == 8) break;  // replaces the slot: dead from here on
        if (rsp - size < slot + 8 && rsp > slot) return false;
      }
      if (instruction.mnemonic == ZYDIS_MNEMONIC_POP ||
          instruction.mnemonic == ZYDIS_MNEMONIC_POPFQ) {
        if (rsp < slot + 8 && rsp + 8 > slot) return false;  // reads the slot
      }
      if (instruction.mnemonic == ZYDIS_MNEMONIC_LEAVE) {
        if (!state->second.rbp) return false;
        const std::int64_t frame = *state->second.rbp;
        if (frame < slot + 8 && frame + 8 > slot) return false;
      }
      bool replaced = false;
      for (unsigned i = 0; i < instruction.operand_count; ++i) {
        const ZydisDecodedOperand& operand = operands[i];
        if (operand.type != ZYDIS_OPERAND_TYPE_MEMORY ||
            operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN) {
          continue;
        }
        if (i >= instruction.operand_count_visible && is_stack_pointer_move(instruction.mnemonic)) {
          continue;  // push, pop, leave: handled above
        }
        if ((path.pointers & (bit(operand.mem.base) | bit(operand.mem.index))) != 0) return false;
        const std::optional<std::int64_t> offset = stack_offset(operand, state->second);
        if (!offset) continue;  // not the stack
        if (operand.mem.index != ZYDIS_REGISTER_NONE) return false;
        const std::int64_t size = operand.size ? operand.size / 8 : 512;
        if (*offset >= slot + 8 || *offset + size <= slot) continue;  // clear of the slot
        if (is_write_only(operand) && *offset <= slot && *offset + size >= slot + 8) {
          replaced = true;  // the old contents are never read again on this path
          continue;
        }
        return false;
      }
      if (replaced) break;
      path.pointers &= ~replaced_registers(instruction, operands);
      path.pointers |= new_pointers(instruction, operands);
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
