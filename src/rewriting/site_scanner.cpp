#include "rewriting/site_scanner.hpp"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace zpoline::detail {
namespace {

// How far past the end of a function's unwind information a syscall may be and still be
// decoded as the function's continuation.
constexpr std::uintptr_t kMaxContinuation = 32;

bool is_candidate(const std::uint8_t* p) {
  return p[0] == 0x0f && (p[1] == 0x05 || p[1] == 0x34);
}

bool is_syscall_mnemonic(ZydisMnemonic mnemonic) {
  return mnemonic == ZYDIS_MNEMONIC_SYSCALL || mnemonic == ZYDIS_MNEMONIC_SYSENTER;
}

// Red-zone use, judged over the whole function: a memory operand below rsp, or below rbp in a
// function that never moves rsp down (a leaf with a frame pointer addresses its red zone via rbp).
struct RedZoneEvidence {
  bool below_rsp = false;
  bool below_rbp = false;
  bool moves_rsp_down = false;
  bool uses_red_zone_through_rbp() const { return below_rbp && !moves_rsp_down; }
  bool uses_red_zone() const { return below_rsp || uses_red_zone_through_rbp(); }
};

void note_red_zone_evidence(const ZydisDecodedInstruction& instruction,
                            const ZydisDecodedOperand* operands, RedZoneEvidence& evidence) {
  const bool writes_rsp = instruction.operand_count_visible > 0 &&
                          operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                          operands[0].reg.value == ZYDIS_REGISTER_RSP;
  if (writes_rsp &&
      (instruction.mnemonic == ZYDIS_MNEMONIC_SUB || instruction.mnemonic == ZYDIS_MNEMONIC_LEA ||
       instruction.mnemonic == ZYDIS_MNEMONIC_AND)) {
    evidence.moves_rsp_down = true;
    return;
  }
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type != ZYDIS_OPERAND_TYPE_MEMORY || !operand.mem.disp.has_displacement) continue;
    if (operand.mem.disp.value >= 0) continue;
    if (operand.mem.base == ZYDIS_REGISTER_RSP) evidence.below_rsp = true;
    if (operand.mem.base == ZYDIS_REGISTER_RBP) evidence.below_rbp = true;
  }
}

// A function with red-zone evidence may still have sites that are safe to rewrite. `call *%rax`
// pushes the return address into the 8 bytes just below rsp, and the stub steps over the rest of
// the red zone before it touches the stack, so a site is unsafe only if those 8 bytes ("the slot")
// hold data that matters: data read after the call returns, or memory the kernel writes through a
// pointer argument. glibc's variadic wrappers (open, openat, fcntl in ld.so and libc) keep their
// va_list in the red zone but are done with it by the time they make the call.
//
// The proof is conservative and fails (site unsafe) on anything it does not model:
//  - rsp must be constant in the function: no push, pop or explicit write of rsp, and rsp is never
//    copied except by lea;
//  - no pointer into the red zone may reach a syscall argument register: registers set by
//    `lea -N(%rsp)` (and copies of them, and 64-bit loads from the red zone once such a pointer
//    was stored there) are "red-zone pointers", and none may be rdi, rsi, rdx, r10, r8 or r9;
//  - on every path from the syscall to a ret, a call, or a jump out of the function, no memory
//    access may overlap the slot or go through a red-zone pointer still held on that path.
// The 16 general-purpose registers as bits, by their 64-bit names; anything else is no bit.
constexpr std::uint32_t bit(ZydisRegister reg) {
  return reg >= ZYDIS_REGISTER_RAX && reg <= ZYDIS_REGISTER_R15
             ? std::uint32_t{1} << (reg - ZYDIS_REGISTER_RAX)
             : 0;
}

class ReturnSlotProof {
 public:
  ReturnSlotProof(const ZydisDecoder& decoder, std::span<const std::uint8_t> code,
                  std::uintptr_t runtime_address, std::uintptr_t begin, std::uintptr_t end)
      : decoder_(decoder),
        code_(code),
        runtime_address_(runtime_address),
        begin_(begin),
        end_(end) {}

  // Collects the function-wide facts; false if the function is outside the model.
  bool prepare() {
    // Pointer propagation through copies needs a fixpoint; functions are short, so iterate.
    for (int round = 0; round < 4; ++round) {
      const std::uint32_t before = pointers_;
      const bool before_stored = pointer_stored_;
      if (!for_each_instruction(
              [&](const ZydisDecodedInstruction& instruction, const ZydisDecodedOperand* operands) {
                return note_function_facts(instruction, operands);
              })) {
        return false;
      }
      if (pointers_ == before && pointer_stored_ == before_stored) break;
    }
    constexpr std::uint32_t kArguments = bit(ZYDIS_REGISTER_RDI) | bit(ZYDIS_REGISTER_RSI) |
                                         bit(ZYDIS_REGISTER_RDX) | bit(ZYDIS_REGISTER_R10) |
                                         bit(ZYDIS_REGISTER_R8) | bit(ZYDIS_REGISTER_R9);
    return (pointers_ & kArguments) == 0;
  }

  // Whether the slot is dead after the syscall at `site` (a 2-byte instruction).
  bool slot_dead_after(std::uintptr_t site) const {
    struct Path {
      std::uintptr_t ip;
      std::uint32_t pointers;
    };
    std::vector<Path> work{{site + 2, pointers_}};
    std::vector<std::pair<std::uintptr_t, std::uint32_t>> visited;
    int budget = 512;
    while (!work.empty()) {
      Path path = work.back();
      work.pop_back();
      while (true) {
        if (path.ip < begin_ || path.ip >= end_) break;  // left the function (a tail call)
        bool seen = false;
        for (auto& [ip, pointers] : visited) {
          if (ip != path.ip) continue;
          seen = (path.pointers & ~pointers) == 0;  // nothing new on this path
          pointers |= path.pointers;
        }
        if (seen) break;
        visited.emplace_back(path.ip, path.pointers);
        if (--budget == 0) return false;
        ZydisDecodedInstruction instruction;
        ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
        if (!decode(path.ip, instruction, operands)) return false;
        if (instruction.meta.category == ZYDIS_CATEGORY_RET ||
            instruction.meta.category == ZYDIS_CATEGORY_CALL) {
          break;  // a call overwrites the slot itself, as it would have without the rewrite
        }
        for (unsigned i = 0; i < instruction.operand_count; ++i) {
          const ZydisDecodedOperand& operand = operands[i];
          if (operand.type != ZYDIS_OPERAND_TYPE_MEMORY ||
              operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN) {
            continue;
          }
          if (operand.mem.base == ZYDIS_REGISTER_RSP) {
            if (operand.mem.index != ZYDIS_REGISTER_NONE) return false;
            const std::int64_t low = operand.mem.disp.value;
            const std::int64_t size = operand.size ? operand.size / 8 : 64;
            if (low < 0 && low + size > -8) return false;  // overlaps [-8, 0)
          }
          if ((path.pointers & (bit(operand.mem.base) | bit(operand.mem.index))) != 0) {
            return false;
          }
        }
        const std::uintptr_t next = path.ip + instruction.length;
        path.pointers &= ~written_registers(instruction, operands);
        path.pointers |= new_pointers(instruction, operands);
        if (instruction.meta.category == ZYDIS_CATEGORY_UNCOND_BR) {
          std::uint64_t target = 0;
          if (operands[0].type != ZYDIS_OPERAND_TYPE_IMMEDIATE ||
              !ZYAN_SUCCESS(
                  ZydisCalcAbsoluteAddress(&instruction, &operands[0], path.ip, &target))) {
            return false;  // an indirect jump: targets unknown
          }
          path.ip = target;
          continue;
        }
        if (instruction.meta.category == ZYDIS_CATEGORY_COND_BR) {
          std::uint64_t target = 0;
          if (!ZYAN_SUCCESS(
                  ZydisCalcAbsoluteAddress(&instruction, &operands[0], path.ip, &target))) {
            return false;
          }
          work.push_back({target, path.pointers});
        }
        if (ends_control_flow_other(instruction)) break;
        path.ip = next;
      }
    }
    return true;
  }

 private:
  static ZydisRegister full(ZydisRegister reg) {
    const ZydisRegister wide = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, reg);
    return wide == ZYDIS_REGISTER_NONE ? reg : wide;
  }
  static bool ends_control_flow_other(const ZydisDecodedInstruction& instruction) {
    return instruction.mnemonic == ZYDIS_MNEMONIC_UD2 ||
           instruction.mnemonic == ZYDIS_MNEMONIC_HLT ||
           instruction.mnemonic == ZYDIS_MNEMONIC_INT3;
  }

  bool decode(std::uintptr_t ip, ZydisDecodedInstruction& instruction,
              ZydisDecodedOperand* operands) const {
    const std::uint8_t* bytes = code_.data() + (ip - runtime_address_);
    return ZYAN_SUCCESS(
        ZydisDecoderDecodeFull(&decoder_, bytes, end_ - ip, &instruction, operands));
  }

  template <class Visit>
  bool for_each_instruction(Visit visit) const {
    ZydisDecodedInstruction instruction;
    ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
    for (std::uintptr_t ip = begin_; ip < end_; ip += instruction.length) {
      if (!decode(ip, instruction, operands) || !visit(instruction, operands)) return false;
    }
    return true;
  }

  // Registers whose whole value an instruction replaces without reading it (32- and 64-bit
  // writes; 8- and 16-bit writes keep the rest, and `add $8, %rax` keeps a pointer a pointer).
  static std::uint32_t written_registers(const ZydisDecodedInstruction& instruction,
                                         const ZydisDecodedOperand* operands) {
    std::uint32_t written = 0;
    for (unsigned i = 0; i < instruction.operand_count; ++i) {
      const ZydisDecodedOperand& operand = operands[i];
      if (operand.type == ZYDIS_OPERAND_TYPE_REGISTER &&
          (operand.actions & ZYDIS_OPERAND_ACTION_WRITE) != 0 &&
          (operand.actions & (ZYDIS_OPERAND_ACTION_MASK_READ | ZYDIS_OPERAND_ACTION_CONDWRITE)) ==
              0 &&
          operand.size >= 32) {
        written |= bit(full(operand.reg.value));
      }
    }
    return written;
  }

  // Registers an instruction makes into red-zone pointers.
  std::uint32_t new_pointers(const ZydisDecodedInstruction& instruction,
                             const ZydisDecodedOperand* operands) const {
    if (instruction.operand_count_visible < 2 || operands[0].type != ZYDIS_OPERAND_TYPE_REGISTER) {
      return 0;
    }
    const ZydisDecodedOperand& source = operands[1];
    const std::uint32_t destination = bit(full(operands[0].reg.value));
    if (instruction.mnemonic == ZYDIS_MNEMONIC_LEA &&
        ((source.mem.base == ZYDIS_REGISTER_RSP &&
          (source.mem.disp.value < 0 || source.mem.index != ZYDIS_REGISTER_NONE)) ||
         (pointers_ & (bit(source.mem.base) | bit(source.mem.index))) != 0)) {
      return destination;  // a red-zone address, or arithmetic on a red-zone pointer
    }
    if (instruction.mnemonic == ZYDIS_MNEMONIC_MOV && source.type == ZYDIS_OPERAND_TYPE_REGISTER &&
        (pointers_ & bit(source.reg.value)) != 0) {
      return destination;
    }
    if (pointer_stored_ && operands[0].size == 64 && source.type == ZYDIS_OPERAND_TYPE_MEMORY &&
        source.mem.base == ZYDIS_REGISTER_RSP && source.mem.disp.value < 0) {
      return destination;  // may load a red-zone pointer stored there
    }
    return 0;
  }

  bool note_function_facts(const ZydisDecodedInstruction& instruction,
                           const ZydisDecodedOperand* operands) {
    if (instruction.mnemonic == ZYDIS_MNEMONIC_PUSH || instruction.mnemonic == ZYDIS_MNEMONIC_POP ||
        instruction.mnemonic == ZYDIS_MNEMONIC_PUSHFQ ||
        instruction.mnemonic == ZYDIS_MNEMONIC_POPFQ ||
        instruction.mnemonic == ZYDIS_MNEMONIC_LEAVE ||
        instruction.mnemonic == ZYDIS_MNEMONIC_ENTER) {
      return false;
    }
    const bool is_lea = instruction.mnemonic == ZYDIS_MNEMONIC_LEA;
    for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
      const ZydisDecodedOperand& operand = operands[i];
      if (operand.type != ZYDIS_OPERAND_TYPE_REGISTER || operand.reg.value != ZYDIS_REGISTER_RSP) {
        continue;
      }
      if ((operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) return false;  // moves rsp
      if (!is_lea) return false;  // copies rsp somewhere
    }
    pointers_ |= new_pointers(instruction, operands);
    // A red-zone pointer written to memory may be loaded back later.
    if (instruction.operand_count_visible >= 2 && operands[0].type == ZYDIS_OPERAND_TYPE_MEMORY &&
        operands[1].type == ZYDIS_OPERAND_TYPE_REGISTER &&
        (pointers_ & bit(full(operands[1].reg.value))) != 0) {
      pointer_stored_ = true;
    }
    return true;
  }

  const ZydisDecoder& decoder_;
  std::span<const std::uint8_t> code_;
  std::uintptr_t runtime_address_;
  std::uintptr_t begin_;
  std::uintptr_t end_;
  std::uint32_t pointers_ = 0;
  bool pointer_stored_ = false;
};

bool ends_control_flow(const ZydisDecodedInstruction& instruction) {
  return instruction.meta.category == ZYDIS_CATEGORY_RET ||
         instruction.meta.category == ZYDIS_CATEGORY_UNCOND_BR ||
         instruction.mnemonic == ZYDIS_MNEMONIC_UD2 || instruction.mnemonic == ZYDIS_MNEMONIC_HLT ||
         instruction.mnemonic == ZYDIS_MNEMONIC_INT3;
}

// True if decoding `function` from its start ends exactly at its end with an instruction after
// which execution continues past the end (not a return, jump or trap).
bool falls_through_end(const ZydisDecoder& decoder, std::span<const std::uint8_t> code,
                       std::uintptr_t runtime_address, const FunctionRange& function) {
  if (function.begin < runtime_address || function.end > runtime_address + code.size()) {
    return false;
  }
  std::uintptr_t ip = function.begin;
  ZydisDecodedInstruction instruction;
  bool falls_through = false;
  while (ip < function.end) {
    const std::uint8_t* bytes = code.data() + (ip - runtime_address);
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeInstruction(&decoder, nullptr, bytes, function.end - ip,
                                                    &instruction))) {
      return false;
    }
    falls_through = !ends_control_flow(instruction);
    ip += instruction.length;
  }
  return ip == function.end && falls_through;
}

// Decides the candidates [first, last) that lie in one function.
void decide_in_function(const ZydisDecoder& decoder, std::span<const std::uint8_t> code,
                        std::uintptr_t runtime_address, const FunctionRange& function,
                        const std::uintptr_t* first, const std::uintptr_t* last,
                        ScanResult& result) {
  const std::uintptr_t code_end = runtime_address + code.size();
  const std::uintptr_t begin = std::max(function.begin, runtime_address);
  const std::uintptr_t end = std::min(function.end, code_end);

  std::vector<SiteDecision> decided;
  RedZoneEvidence evidence;
  std::uintptr_t ip = begin;
  const std::uintptr_t* next = first;
  bool failed = false;
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  while (ip < end) {
    const std::uint8_t* bytes = code.data() + (ip - runtime_address);
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, bytes, end - ip, &instruction, operands))) {
      failed = true;
      break;
    }
    note_red_zone_evidence(instruction, operands, evidence);
    const std::uintptr_t after = ip + instruction.length;
    // Candidates before this instruction's start were inside earlier instructions: not sites.
    while (next != last && *next < ip) ++next;
    // Candidates that start inside this instruction.
    while (next != last && *next < after) {
      if (is_syscall_mnemonic(instruction.mnemonic)) {
        const bool plain = *next == ip && instruction.length == 2;
        decided.push_back({*next, plain ? SiteKind::rewritable : SiteKind::prefixed});
      }
      ++next;
    }
    ip = after;
  }
  result.bytes_decoded += ip - begin;
  ++result.functions_decoded;
  for (; failed && next != last; ++next) decided.push_back({*next, SiteKind::undecodable});
  // Red-zone evidence through rbp is not modelled; evidence through rsp gets the precise proof.
  std::optional<ReturnSlotProof> proof;
  bool proof_ready = false;
  for (SiteDecision& decision : decided) {
    if (decision.kind == SiteKind::rewritable && evidence.uses_red_zone()) {
      bool safe = false;
      if (!evidence.uses_red_zone_through_rbp() && !failed) {
        if (!proof) {
          proof.emplace(decoder, code, runtime_address, begin, end);
          proof_ready = proof->prepare();
        }
        safe = proof_ready && proof->slot_dead_after(decision.address);
      }
      if (!safe) decision.kind = SiteKind::red_zone;
    }
    result.sites.push_back(decision);
  }
}

}  // namespace

ScanResult scan_code(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                     std::span<const FunctionRange> functions) {
  ScanResult result;
  std::vector<std::uintptr_t> candidates;
  if (code.size() < 2) return result;
  const std::uint8_t* data = code.data();
  const std::uint8_t* end = data + code.size() - 1;
  for (const std::uint8_t* p = data; p < end; ++p) {
    p = static_cast<const std::uint8_t*>(std::memchr(p, 0x0f, static_cast<std::size_t>(end - p)));
    if (p == nullptr) break;
    if (is_candidate(p))
      candidates.push_back(runtime_address + static_cast<std::uintptr_t>(p - data));
  }
  if (candidates.empty()) return result;

  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);

  // Candidates are sorted, functions are sorted and disjoint: walk both together.
  const std::uintptr_t* candidate = candidates.data();
  const std::uintptr_t* const candidates_end = candidate + candidates.size();
  while (candidate != candidates_end) {
    auto function = std::upper_bound(
        functions.begin(), functions.end(), *candidate,
        [](std::uintptr_t address, const FunctionRange& f) { return address < f.begin; });
    if (function == functions.begin() || (--function)->end <= *candidate) {
      // Not inside any function. Hand-written assembly sometimes ends its unwind information
      // just before a syscall whose continuation cannot be described (glibc's clone and clone3
      // end the FDE there because the child runs on another stack). Such a syscall directly
      // continues the preceding function: decode on from its end, a short distance only.
      const bool after_function = function != functions.end() && function->end <= *candidate &&
                                  *candidate - function->end <= kMaxContinuation &&
                                  falls_through_end(decoder, code, runtime_address, *function);
      if (after_function) {
        const FunctionRange continuation{function->begin, *candidate + 2};
        decide_in_function(decoder, code, runtime_address, continuation, candidate, candidate + 1,
                           result);
      } else {
        result.sites.push_back({*candidate, SiteKind::undecodable});
      }
      ++candidate;
      continue;
    }
    const std::uintptr_t* last = candidate;
    while (last != candidates_end && *last < function->end) ++last;
    decide_in_function(decoder, code, runtime_address, *function, candidate, last, result);
    candidate = last;
  }
  return result;
}

const char* to_string(SiteKind kind) {
  switch (kind) {
    case SiteKind::rewritable:
      return "rewritable";
    case SiteKind::prefixed:
      return "prefixed";
    case SiteKind::red_zone:
      return "red_zone";
    case SiteKind::undecodable:
      return "undecodable";
  }
  return "?";
}

}  // namespace zpoline::detail
