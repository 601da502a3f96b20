#include "rewriting/site_scanner.hpp"

#include <Zydis/Zydis.h>
#include <emmintrin.h>

#include "rewriting/return_slot.hpp"

#include <algorithm>
#include <cstring>
#include <optional>

#include "rewriting/instruction_length.hpp"

namespace zpoline::detail {
namespace {

// How far past the end of a function's unwind information a syscall may be and still be
// decoded as the function's continuation.
constexpr std::uintptr_t kMaxContinuation = 32;

bool is_candidate(const std::uint8_t* p) {
  return p[0] == 0x0f && (p[1] == 0x05 || p[1] == 0x34);
}

// 0xff in each of the 16 bytes at p that starts a candidate pair; reads p[0..16].
__m128i pairs_at(const std::uint8_t* p) {
  const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 1));
  const __m128i syscall = _mm_cmpeq_epi8(second, _mm_set1_epi8(0x05));
  const __m128i sysenter = _mm_cmpeq_epi8(second, _mm_set1_epi8(0x34));
  return _mm_and_si128(_mm_cmpeq_epi8(first, _mm_set1_epi8(0x0f)), _mm_or_si128(syscall, sysenter));
}

// Instruction boundaries need only lengths and mnemonics. Most instructions are decoded by
// decode_quickly() (instruction_length.hpp); the rest by Zydis in its minimal mode, which takes
// about a third of the time of a full decode with operands. Operands (for the red-zone check) are
// decoded in full only for the few instructions that can be red-zone evidence.
struct Decoders {
  ZydisDecoder minimal;
  ZydisDecoder full;
  Decoders() {
    ZydisDecoderInit(&minimal, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    ZydisDecoderEnableMode(&minimal, ZYDIS_DECODER_MODE_MINIMAL, ZYAN_TRUE);
    ZydisDecoderInit(&full, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  }
};

bool is_syscall_mnemonic(ZydisMnemonic mnemonic) {
  return mnemonic == ZYDIS_MNEMONIC_SYSCALL || mnemonic == ZYDIS_MNEMONIC_SYSENTER;
}

// Red-zone use, judged over the whole function: a memory operand below rsp; in a function that
// never moves rsp down, a memory operand below rbp (a leaf with a frame pointer addresses its red
// zone via rbp) or a copy of rsp (in rbp or any other register, or in memory: whatever is
// addressed through it may lie below rsp with no displacement showing it); in a function that
// moves rsp down, a memory operand or address off rbp below the frame the function allocates
// (reaches_below_frame(), from the lowest displacement off rbp): moving rsp down does not mean
// the red zone is unused, since gcc and clang at -O0 allocate only what exceeds its 128 bytes and
// reach the rest through rbp. Copies of rsp in a function that moves rsp down are taken to point
// into its frame and not to be used to reach below it.
struct RedZoneEvidence {
  bool below_rsp = false;
  bool copies_rsp = false;
  bool moves_rsp_down = false;
  // The lowest (negative) displacement off rbp of any memory operand or address, 0 if none.
  std::int64_t lowest_below_rbp = 0;
  // The kinds of evidence, as RedZoneHint bits (instruction_length.hpp), that could still change
  // the decision: all of them until an access below rsp settles it, less those already shown and
  // copies once rsp was moved down. Accesses below rbp stay wanted (a lower one may still lie
  // below the frame), but decode() lets through only those lower than lowest_below_rbp. Kept up
  // to date by noted(), so that the check per instruction is one load.
  std::uint8_t wanted = kMayMoveRspDown | kMayAddressBelowRsp | kMayAddressBelowRbp | kMayCopyRsp;
  bool below_rbp() const { return lowest_below_rbp < 0; }
  void noted() {
    if (below_rsp) {
      wanted = 0;
      return;
    }
    wanted = static_cast<std::uint8_t>(
        ~((moves_rsp_down ? kMayMoveRspDown | kMayCopyRsp : 0) | (copies_rsp ? kMayCopyRsp : 0)));
  }
};

// The kinds of red-zone evidence (RedZoneHint bits) `instruction`, decoded in minimal mode, may
// show: a memory access at a negative displacement (the only way to address below rsp or rbp),
// an instruction that can move rsp down, or one with a register operand that may be rsp
// (register number 4 in ModRM's reg or r/m field, or in VEX/EVEX/XOP's inverted vvvv, whatever
// the prefixes' extension bits; r12, esp, xmm4 and the like are false alarms that the full
// decode clears).
std::uint8_t red_zone_hints(const ZydisDecodedInstruction& instruction) {
  std::uint8_t hints = 0;
  if (instruction.raw.disp.size != 0 && instruction.raw.disp.value < 0) {
    hints |= kMayAddressBelowRsp | kMayAddressBelowRbp;
  }
  if (instruction.mnemonic == ZYDIS_MNEMONIC_SUB || instruction.mnemonic == ZYDIS_MNEMONIC_LEA ||
      instruction.mnemonic == ZYDIS_MNEMONIC_AND) {
    hints |= kMayMoveRspDown | kMayCopyRsp;
  }
  if ((instruction.attributes & ZYDIS_ATTRIB_HAS_MODRM) != 0 &&
      (instruction.raw.modrm.reg == 4 ||
       (instruction.raw.modrm.mod == 3 && instruction.raw.modrm.rm == 4))) {
    hints |= kMayCopyRsp;
  }
  std::uint8_t vvvv = 0xff;  // inverted: no register
  if ((instruction.attributes & ZYDIS_ATTRIB_HAS_VEX) != 0) vvvv = instruction.raw.vex.vvvv;
  if ((instruction.attributes & ZYDIS_ATTRIB_HAS_EVEX) != 0) vvvv = instruction.raw.evex.vvvv;
  if ((instruction.attributes & ZYDIS_ATTRIB_HAS_XOP) != 0) vvvv = instruction.raw.xop.vvvv;
  if ((~vvvv & 7) == 4) hints |= kMayCopyRsp;
  return hints;
}

// True if the instruction puts a value derived from rsp anywhere but in rsp itself: rsp (or part
// of it) read as a register operand into another operand (`mov %rsp, %rbp`, `add %rsp, %rax`,
// `mov %rsp, (%rdi)`, `push %rsp`), or an address computed off rsp (`lea 8(%rsp), %rcx`).
// `sub $8, %rsp` or `cmp %rsp, %rax` copy nothing.
bool copies_rsp(const ZydisDecodedInstruction& instruction, const ZydisDecodedOperand* operands) {
  bool reads_rsp = false;
  bool writes_other = false;
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    const bool is_rsp = operand.type == ZYDIS_OPERAND_TYPE_REGISTER &&
                        ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64,
                                                         operand.reg.value) == ZYDIS_REGISTER_RSP;
    if (is_rsp && (operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ) != 0) reads_rsp = true;
    if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY && operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN &&
        (operand.mem.base == ZYDIS_REGISTER_RSP || operand.mem.index == ZYDIS_REGISTER_RSP)) {
      reads_rsp = true;
    }
    if (!is_rsp && (operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0) writes_other = true;
  }
  return reads_rsp && (writes_other || instruction.mnemonic == ZYDIS_MNEMONIC_PUSH);
}

// Adds what the instruction at `bytes` shows to `evidence`, from a full decode. False if the full
// decoder fails on it, which the caller takes as a decoding failure.
bool note_red_zone_evidence(const Decoders& decoders, const std::uint8_t* bytes, std::size_t length,
                            RedZoneEvidence& evidence) {
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  if (!ZYAN_SUCCESS(
          ZydisDecoderDecodeFull(&decoders.full, bytes, length, &instruction, operands))) {
    return false;
  }
  const bool writes_rsp = instruction.operand_count_visible > 0 &&
                          operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                          operands[0].reg.value == ZYDIS_REGISTER_RSP;
  if (writes_rsp &&
      (instruction.mnemonic == ZYDIS_MNEMONIC_SUB || instruction.mnemonic == ZYDIS_MNEMONIC_LEA ||
       instruction.mnemonic == ZYDIS_MNEMONIC_AND)) {
    evidence.moves_rsp_down = true;
    evidence.noted();
    return true;
  }
  for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& operand = operands[i];
    if (operand.type != ZYDIS_OPERAND_TYPE_MEMORY || !operand.mem.disp.has_displacement) continue;
    if (operand.mem.disp.value >= 0) continue;
    if (operand.mem.base == ZYDIS_REGISTER_RSP) evidence.below_rsp = true;
    if (operand.mem.base == ZYDIS_REGISTER_RBP) {
      evidence.lowest_below_rbp = std::min(evidence.lowest_below_rbp, operand.mem.disp.value);
    }
  }
  if (copies_rsp(instruction, operands)) evidence.copies_rsp = true;
  evidence.noted();
  return true;
}

// What the scanner needs of one instruction.
struct Instruction {
  std::uint8_t length = 0;
  bool syscall = false;  // syscall or sysenter, of any length
};

// Whether an instruction with these RedZoneHint bits and displacement may add evidence that could
// still change the function's decision. Frame-pointer and -O0 code address most of their locals
// off rbp: only an access lower than the lowest one seen can change the comparison with the frame.
bool may_add_evidence(std::uint8_t hints, std::int64_t displacement,
                      const RedZoneEvidence& evidence) {
  hints &= evidence.wanted;
  if (hints == kMayAddressBelowRbp && displacement >= evidence.lowest_below_rbp) return false;
  return hints != 0;
}

// Decodes the instruction at `bytes`, quickly where possible, and adds its red-zone evidence
// (decoding it in full only if it may show evidence that could still change the function's
// decision). False if it cannot be decoded.
bool decode(const Decoders& decoders, const std::uint8_t* bytes, std::size_t available,
            Instruction& out, RedZoneEvidence& evidence) {
  QuickInstruction quick;
  if (decode_quickly(bytes, available, quick)) {
    out = {quick.length, quick.syscall};
    return !may_add_evidence(quick.red_zone_hints, quick.displacement, evidence) ||
           note_red_zone_evidence(decoders, bytes, available, evidence);
  }
  ZydisDecodedInstruction instruction;
  if (!ZYAN_SUCCESS(ZydisDecoderDecodeInstruction(&decoders.minimal, nullptr, bytes, available,
                                                  &instruction))) {
    return false;
  }
  out = {instruction.length, is_syscall_mnemonic(instruction.mnemonic)};
  return !may_add_evidence(red_zone_hints(instruction), instruction.raw.disp.value, evidence) ||
         note_red_zone_evidence(decoders, bytes, available, evidence);
}

bool ends_control_flow(const ZydisDecodedInstruction& instruction) {
  return instruction.meta.category == ZYDIS_CATEGORY_RET ||
         instruction.meta.category == ZYDIS_CATEGORY_UNCOND_BR ||
         instruction.mnemonic == ZYDIS_MNEMONIC_UD2 || instruction.mnemonic == ZYDIS_MNEMONIC_HLT ||
         instruction.mnemonic == ZYDIS_MNEMONIC_INT3;
}

// True if decoding `function` from its start ends exactly at its end with an instruction after
// which execution continues past the end (not a return, jump or trap).
bool falls_through_end(const Decoders& decoders, std::span<const std::uint8_t> code,
                       std::uintptr_t runtime_address, const FunctionRange& function) {
  if (function.begin < runtime_address || function.end > runtime_address + code.size()) {
    return false;
  }
  std::uintptr_t ip = function.begin;
  ZydisDecodedInstruction instruction;
  bool falls_through = false;
  while (ip < function.end) {
    const std::uint8_t* bytes = code.data() + (ip - runtime_address);
    // The full decoder: the minimal mode does not promise meta.category. This runs only for the
    // rare candidate just past a function's end.
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeInstruction(&decoders.full, nullptr, bytes,
                                                    function.end - ip, &instruction))) {
      return false;
    }
    falls_through = !ends_control_flow(instruction);
    ip += instruction.length;
  }
  return ip == function.end && falls_through;
}

// How far below rbp a function that moves rsp down has moved it once its prologue has run. The
// prologue is the straight-line code from the function's entry, up to the first jump, call,
// return or syscall (stopping earlier only leaves part of the frame uncounted). It must set rbp
// from rsp (`mov %rsp,%rbp`, or `lea d(%rsp),%rbp` with d >= 0), and may move rsp by pushes and
// pops, add or sub of a constant, lea off rsp, and `and` of a constant (which can only lower it:
// the frame is then at least what is counted). So registers pushed after the frame pointer count,
// as in `push %rbp; mov %rsp,%rbp; push %rbx; sub $N,%rsp`. Once the frame is `enough`, the rest
// is not read: like the code after the prologue, it is taken not to give the frame back before
// the function is done with its locals. nullopt if the prologue does not set rbp from rsp, or
// moves rsp in another way. Run only for a function with a rewritable site and an access below
// rbp, so a full decode per instruction is affordable; prologues are short.
std::optional<std::int64_t> frame_below_rbp(const ZydisDecoder& decoder,
                                            std::span<const std::uint8_t> code,
                                            std::uintptr_t runtime_address, std::uintptr_t begin,
                                            std::uintptr_t end, std::int64_t enough) {
  constexpr int kMaxPrologue = 64;
  // Offsets from rsp's value at entry, exact but for `and`, which moves both rsp and, if it comes
  // first, the value rbp gets from it by the same unknown amount: their difference stays exact
  // or becomes larger.
  std::int64_t rsp = 0;
  std::int64_t rbp = 0;
  bool rbp_set = false;  // from rsp, and not changed since
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  std::uintptr_t ip = begin;
  for (int count = 0; count < kMaxPrologue && ip < end; ++count) {
    if (rbp_set && rbp - rsp >= enough) break;
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, code.data() + (ip - runtime_address),
                                             end - ip, &instruction, operands))) {
      return std::nullopt;
    }
    ip += instruction.length;
    const ZydisInstructionCategory category = instruction.meta.category;
    if (ends_control_flow(instruction) || category == ZYDIS_CATEGORY_COND_BR ||
        category == ZYDIS_CATEGORY_CALL || category == ZYDIS_CATEGORY_SYSCALL ||
        category == ZYDIS_CATEGORY_INTERRUPT || is_syscall_mnemonic(instruction.mnemonic)) {
      break;
    }
    bool writes_rsp = false;
    bool writes_rbp = false;
    for (unsigned i = 0; i < instruction.operand_count; ++i) {
      const ZydisDecodedOperand& operand = operands[i];
      if (operand.type != ZYDIS_OPERAND_TYPE_REGISTER ||
          (operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) == 0) {
        continue;
      }
      const ZydisRegister wide =
          ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, operand.reg.value);
      writes_rsp = writes_rsp || wide == ZYDIS_REGISTER_RSP;
      writes_rbp = writes_rbp || wide == ZYDIS_REGISTER_RBP;
    }
    const ZydisDecodedOperand& destination = operands[0];
    const ZydisDecodedOperand& source = operands[1];
    const bool two_operands = instruction.operand_count_visible == 2;
    const bool off_rsp = two_operands && source.type == ZYDIS_OPERAND_TYPE_MEMORY &&
                         source.mem.base == ZYDIS_REGISTER_RSP &&
                         source.mem.index == ZYDIS_REGISTER_NONE;
    if (instruction.mnemonic == ZYDIS_MNEMONIC_PUSH ||
        instruction.mnemonic == ZYDIS_MNEMONIC_PUSHFQ) {
      rsp -= instruction.operand_width / 8;
    } else if (instruction.mnemonic == ZYDIS_MNEMONIC_POP ||
               instruction.mnemonic == ZYDIS_MNEMONIC_POPFQ) {
      if (instruction.operand_count_visible > 0 &&
          destination.type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, destination.reg.value) ==
              ZYDIS_REGISTER_RSP) {
        return std::nullopt;  // pop %rsp
      }
      rsp += instruction.operand_width / 8;
    } else if (writes_rsp) {
      if (!two_operands || destination.type != ZYDIS_OPERAND_TYPE_REGISTER ||
          destination.reg.value != ZYDIS_REGISTER_RSP) {
        return std::nullopt;  // leave, xchg, a move into esp, ...
      }
      const bool immediate = source.type == ZYDIS_OPERAND_TYPE_IMMEDIATE;
      if (instruction.mnemonic == ZYDIS_MNEMONIC_SUB && immediate) {
        rsp -= static_cast<std::int64_t>(source.imm.value.s);
      } else if (instruction.mnemonic == ZYDIS_MNEMONIC_ADD && immediate) {
        rsp += static_cast<std::int64_t>(source.imm.value.s);
      } else if (instruction.mnemonic == ZYDIS_MNEMONIC_LEA && off_rsp) {
        rsp += source.mem.disp.value;
      } else if (instruction.mnemonic != ZYDIS_MNEMONIC_AND || !immediate) {
        return std::nullopt;  // a move by an amount not known here
      }
    }
    if (writes_rbp) {
      // Anything but a copy of rsp (pop %rbp, an 8-bit write, arithmetic) leaves rbp unknown.
      rbp_set = false;
      if (two_operands && destination.type == ZYDIS_OPERAND_TYPE_REGISTER &&
          destination.reg.value == ZYDIS_REGISTER_RBP) {
        if (instruction.mnemonic == ZYDIS_MNEMONIC_MOV &&
            source.type == ZYDIS_OPERAND_TYPE_REGISTER && source.reg.value == ZYDIS_REGISTER_RSP) {
          rbp = rsp;
          rbp_set = true;
        } else if (instruction.mnemonic == ZYDIS_MNEMONIC_LEA && off_rsp &&
                   source.mem.disp.value >= 0) {
          rbp = rsp + source.mem.disp.value;
          rbp_set = true;
        }
      }
    }
  }
  if (!rbp_set || rbp < rsp) return std::nullopt;
  return rbp - rsp;
}

// How many instructions of [begin, end) set rbp from rsp (`mov %rsp,%rbp`, `lea d(%rsp),%rbp`,
// `enter`, ...): those that may make rbp the function's frame pointer. -1 if decoding fails. A
// linear pass, decoding in full only what may copy rsp: it runs only for the rare functions that
// move rsp down, have a rewritable site, address memory below rbp and set up no frame pointer in
// their prologue.
int frame_pointer_setups(const Decoders& decoders, std::span<const std::uint8_t> code,
                         std::uintptr_t runtime_address, std::uintptr_t begin, std::uintptr_t end) {
  int setups = 0;
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  for (std::uintptr_t ip = begin; ip < end;) {
    const std::uint8_t* bytes = code.data() + (ip - runtime_address);
    const std::size_t available = end - ip;
    QuickInstruction quick;
    std::uint8_t hints = 0;
    if (decode_quickly(bytes, available, quick)) {
      ip += quick.length;
      hints = quick.red_zone_hints;
    } else {
      if (!ZYAN_SUCCESS(ZydisDecoderDecodeInstruction(&decoders.minimal, nullptr, bytes, available,
                                                      &instruction))) {
        return -1;
      }
      ip += instruction.length;
      if (instruction.mnemonic == ZYDIS_MNEMONIC_ENTER) {
        ++setups;
        continue;
      }
      hints = red_zone_hints(instruction);
    }
    if ((hints & kMayCopyRsp) == 0) continue;
    if (!ZYAN_SUCCESS(
            ZydisDecoderDecodeFull(&decoders.full, bytes, available, &instruction, operands))) {
      return -1;
    }
    if (!copies_rsp(instruction, operands)) continue;
    for (unsigned i = 0; i < instruction.operand_count; ++i) {
      if (operands[i].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          (operands[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) != 0 &&
          ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, operands[i].reg.value) ==
              ZYDIS_REGISTER_RBP) {
        ++setups;
        break;
      }
    }
  }
  return setups;
}

// Whether a function with a rewritable site that moves rsp down keeps red-zone data below rbp:
// an access off rbp lower than the frame its prologue allocates (frame_below_rbp()) lies below
// rsp at a syscall made with that frame, and may be in the slot. The frame is taken to stay
// allocated, and rbp to stay where the prologue put it, while the function works with its locals.
// If the prologue sets up no frame pointer, rbp is one only if something else sets it from rsp (a
// frame set up after an early return, say), and then its frame is not known: any access below rbp
// counts. A function that never sets rbp from rsp uses rbp for other data (or keeps the caller's
// frame pointer in it), and nothing it addresses off rbp is its red zone.
bool reaches_below_frame(const Decoders& decoders, std::span<const std::uint8_t> code,
                         std::uintptr_t runtime_address, const FunctionRange& function,
                         std::uintptr_t end, const RedZoneEvidence& evidence) {
  if (!evidence.below_rbp()) return false;
  if (function.begin < runtime_address) return true;  // its prologue is not in `code`
  const std::optional<std::int64_t> frame = frame_below_rbp(
      decoders.full, code, runtime_address, function.begin, end, -evidence.lowest_below_rbp);
  if (frame) return evidence.lowest_below_rbp < -*frame;
  return frame_pointer_setups(decoders, code, runtime_address, function.begin, end) != 0;
}

// Decides the candidates [first, last) that lie in one function. Decoding stops after the last
// of them unless one is a rewritable syscall: then the red-zone evidence of the whole function
// is needed, until an access below rsp settles it.
void decide_in_function(const Decoders& decoders, std::span<const std::uint8_t> code,
                        std::uintptr_t runtime_address, const FunctionRange& function,
                        const std::uintptr_t* first, const std::uintptr_t* last,
                        ScanResult& result) {
  const std::uintptr_t code_end = runtime_address + code.size();
  const std::uintptr_t begin = std::max(function.begin, runtime_address);
  const std::uintptr_t end = std::min(function.end, code_end);

  const std::size_t first_decision = result.sites.size();
  RedZoneEvidence evidence;
  bool any_rewritable = false;
  std::uintptr_t ip = begin;
  const std::uintptr_t* next = first;
  bool failed = false;
  Instruction instruction;
  std::uintptr_t previous = 0;
  while (ip < end && (next != last || (any_rewritable && !evidence.below_rsp))) {
    if (!decode(decoders, code.data() + (ip - runtime_address), end - ip, instruction, evidence)) {
      failed = true;
      break;
    }
    const std::uintptr_t after = ip + instruction.length;
    // Candidates before this instruction's start were inside earlier instructions: not sites.
    while (next != last && *next < ip) ++next;
    // Candidates that start inside this instruction.
    while (next != last && *next < after) {
      if (instruction.syscall) {
        const bool plain = *next == ip && instruction.length == 2;
        result.sites.push_back(
            {*next, plain ? SiteKind::rewritable : SiteKind::prefixed, plain ? previous : 0});
        any_rewritable = any_rewritable || plain;
      }
      ++next;
    }
    previous = ip;
    ip = after;
  }
  result.bytes_decoded += ip - begin;
  ++result.functions_decoded;
  for (; failed && next != last; ++next) result.sites.push_back({*next, SiteKind::undecodable});
  if (!any_rewritable) return;
  const bool red_zone =
      evidence.below_rsp ||
      (evidence.moves_rsp_down
           ? reaches_below_frame(decoders, code, runtime_address, function, end, evidence)
           : evidence.below_rbp() || evidence.copies_rsp);
  if (!red_zone) return;
  // Red-zone evidence makes a site unsafe unless the return-address slot is proven dead there.
  std::optional<ReturnSlotProof> proof;
  for (std::size_t i = first_decision; i < result.sites.size(); ++i) {
    SiteDecision& decision = result.sites[i];
    if (decision.kind != SiteKind::rewritable) continue;
    if (!proof) proof.emplace(decoders.full, code, runtime_address, begin, end);
    if (failed || !proof->slot_dead_at(decision.address)) decision.kind = SiteKind::red_zone;
  }
}

}  // namespace

void find_candidates(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                     std::vector<std::uintptr_t>& candidates) {
  const std::uint8_t* const data = code.data();
  const std::size_t size = code.size();
  const auto add = [&](std::size_t offset, std::uint64_t mask) {
    for (; mask != 0; mask &= mask - 1) {
      candidates.push_back(runtime_address + offset + static_cast<unsigned>(__builtin_ctzll(mask)));
    }
  };
  std::size_t i = 0;
  // 64 bytes at a time, most of which hold no pair and cost one test.
  for (; i + 65 <= size; i += 64) {
    const __m128i a = pairs_at(data + i);
    const __m128i b = pairs_at(data + i + 16);
    const __m128i c = pairs_at(data + i + 32);
    const __m128i d = pairs_at(data + i + 48);
    if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d))) == 0) continue;
    add(i, static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(a))) |
               static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(b))) << 16 |
               static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(c))) << 32 |
               static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(d))) << 48);
  }
  for (; i + 17 <= size; i += 16) {
    add(i, static_cast<unsigned>(_mm_movemask_epi8(pairs_at(data + i))));
  }
  for (; i + 1 < size; ++i) {
    if (is_candidate(data + i)) candidates.push_back(runtime_address + i);
  }
}

ScanResult scan_candidates(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                           std::span<const FunctionRange> functions,
                           std::span<const std::uintptr_t> candidates) {
  ScanResult result;
  if (candidates.empty()) return result;
  const Decoders decoders;

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
                                  falls_through_end(decoders, code, runtime_address, *function);
      if (after_function) {
        const FunctionRange continuation{function->begin, *candidate + 2};
        decide_in_function(decoders, code, runtime_address, continuation, candidate, candidate + 1,
                           result);
      } else {
        result.sites.push_back({*candidate, SiteKind::undecodable});
      }
      ++candidate;
      continue;
    }
    const std::uintptr_t* last = candidate;
    while (last != candidates_end && *last < function->end) ++last;
    decide_in_function(decoders, code, runtime_address, *function, candidate, last, result);
    candidate = last;
  }
  return result;
}

ScanResult scan_code(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                     std::span<const FunctionRange> functions) {
  std::vector<std::uintptr_t> candidates;
  find_candidates(code, runtime_address, candidates);
  return scan_candidates(code, runtime_address, functions, candidates);
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
