#include "rewriting/site_scanner.hpp"

#include <Zydis/Zydis.h>

#include "rewriting/return_slot.hpp"

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
  bool uses_red_zone() const { return below_rsp || (below_rbp && !moves_rsp_down); }
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
  // Red-zone evidence makes a site unsafe unless the return-address slot is proven dead there.
  std::optional<ReturnSlotProof> proof;
  for (SiteDecision& decision : decided) {
    if (decision.kind == SiteKind::rewritable && evidence.uses_red_zone()) {
      if (!proof) proof.emplace(decoder, code, runtime_address, begin, end);
      if (failed || !proof->slot_dead_at(decision.address)) decision.kind = SiteKind::red_zone;
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
