// Whether a syscall site in a function that uses its red zone can still be rewritten.
//
// `call *%rax` pushes its return address into the 8 bytes just below rsp, and the entry stub steps
// over the other 120 bytes of the red zone before it touches the stack. So a site in a function
// that keeps data below rsp is unsafe only if those 8 bytes ("the slot") hold something that
// matters at the syscall: data read after the call returns, or memory the kernel writes through a
// pointer argument. glibc's variadic open/openat wrappers keep their va_list in the red zone and
// are done with it before the syscall; code built without optimisation keeps its locals below rbp
// in leaf functions and usually stores the syscall's result there only after it.
#pragma once

#include <Zydis/Zydis.h>

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>

namespace zpoline::detail {

// A conservative proof over one function's code: anything it does not model makes a site unsafe.
//  - The stack pointer's offset from its value at function entry must be known at every
//    instruction reached from the entry (push, pop, add/sub of constants, lea off rsp, rbp set
//    from rsp, leave), the same along every path; rsp is never copied anywhere but rbp (not by
//    mov into another register, nor into memory), and while rbp holds a stack offset it is used
//    only as a base address (never copied, pushed or changed in place).
//  - No pointer into the stack (a lea off rsp or the frame pointer, copies of it, and 64-bit loads
//    from the stack or through such a pointer once one was stored in memory) may be in a syscall
//    argument register anywhere in the function, since the kernel could write through it; nor
//    may one reach a register the proof does not follow (a vector register).
//  - On every path from the syscall until a write that replaces all 8 bytes of the slot, or a
//    ret or a call while the slot lies wholly below rsp (it is the callee's, or nobody's, from
//    there on), nothing may read the slot (explicit memory operands are evaluated with rsp as
//    the instruction uses it: before push and call move it, after pop), dereference a stack
//    pointer, or leave the function.
class ReturnSlotProof {
 public:
  ReturnSlotProof(const ZydisDecoder& decoder, std::span<const std::uint8_t> code,
                  std::uintptr_t runtime_address, std::uintptr_t begin, std::uintptr_t end);

  // Whether the slot below rsp is dead at the 2-byte syscall at `site` (in the function).
  bool slot_dead_at(std::uintptr_t site);

 private:
  struct StackState {
    std::int64_t rsp = 0;             // offset from rsp at entry
    std::optional<std::int64_t> rbp;  // the same for rbp, while rbp is known to hold one
    bool operator==(const StackState&) const = default;
  };

  bool analyse();
  bool decode(std::uintptr_t ip, ZydisDecodedInstruction& instruction,
              ZydisDecodedOperand* operands) const;
  bool step(const ZydisDecodedInstruction& instruction, const ZydisDecodedOperand* operands,
            StackState& state) const;
  std::optional<std::int64_t> stack_offset(const ZydisDecodedOperand& memory,
                                           const StackState& state) const;
  std::optional<std::uint32_t> new_pointers(const ZydisDecodedInstruction& instruction,
                                            const ZydisDecodedOperand* operands) const;

  const ZydisDecoder& decoder_;
  std::span<const std::uint8_t> code_;
  std::uintptr_t runtime_address_;
  std::uintptr_t begin_;
  std::uintptr_t end_;
  std::optional<bool> analysed_;
  std::unordered_map<std::uintptr_t, StackState> states_;  // at each reachable instruction
  std::uint32_t pointers_ = 0;                             // registers that may hold one
  bool pointer_stored_ = false;
};

}  // namespace zpoline::detail
