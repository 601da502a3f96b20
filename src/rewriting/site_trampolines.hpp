// Per-site trampolines of the near mechanism (hooking without page 0).
//
// A site rewritten this way holds `jmp rel8` to five bytes of padding near it (padding.hpp),
// which hold `jmp rel32` to the site's trampoline here. The trampoline does what `call *%rax`
// at the site does on the page-0 path: it pushes the address after the site (8 bytes below the
// caller's rsp, the only memory the call touches) and enters the stub, so the stub, its return
// with `pop; jmp`, and the clone, vfork and rt_sigreturn paths are the same for both mechanisms.
// It clobbers r11, which `syscall` clobbers too (the page-0 relay does the same).
//
// Trampolines live in arenas mapped within reach of a rel32 jump from the padding: a few hundred
// KiB per region of the address space that holds rewritten code, never unmapped (a thread may be
// in one long after its site is gone). Arenas are read+execute; one is made writable only while a
// trampoline is added, keeping the execute bit so that threads running its other trampolines go
// on.
//
// Contract: make_site_trampoline() is called with the rewriter's lock held (rewriter.cpp); it
// makes only raw system calls and allocates nothing from the heap (but the exception it may
// throw).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace zpoline::detail {

// Trampolines are made of 16-byte units: one for a padding site, two for a site whose preceding
// instructions they run (moved instructions are at most 15 bytes together).
inline constexpr std::size_t kTrampolineUnit = 16;
inline constexpr std::size_t kMaxTrampolineSize = 2 * kTrampolineUnit;
inline constexpr std::size_t kMaxMovedInstruction = 15;

// The bytes of the trampoline for `site` placed at `trampoline`: `moved` (an instruction moved
// out of the code before the site, position-independent; empty for a padding site), then the
// push of site + 2, then the jump to the stub at `entry`, directly (rel32) if it is within
// reach, else through the 8-byte pointer at `entry_pointer`. Returns its size (a multiple of
// kTrampolineUnit). Pure; for make_site_trampoline() and tests.
// A moved instruction, or a run of them (rewriter.cpp, why_not_moved()): its bytes, where it was,
// and the offset of its one RIP-relative 32-bit displacement (0: none), which is adjusted so that
// it addresses the same memory from the trampoline.
struct MovedInstruction {
  std::span<const std::uint8_t> bytes;
  std::uintptr_t address = 0;
  std::size_t displacement_offset = 0;
};

// 0 if `moved`'s displacement cannot reach its memory from the trampoline.
std::size_t encode_site_trampoline(std::uint8_t (&code)[kMaxTrampolineSize],
                                   std::uintptr_t trampoline, std::uintptr_t site,
                                   const MovedInstruction& moved, std::uintptr_t entry,
                                   std::uintptr_t entry_pointer);

// A new trampoline for `site` (running `moved` first), within reach of a `jmp rel32` that ends
// at `jump_end`; 0 if no memory within reach could be mapped. Throws zpoline::Error
// (rewrite_failed) if a trampoline page cannot be made writable, as for code pages.
std::uintptr_t make_site_trampoline(std::uintptr_t site, std::uintptr_t jump_end,
                                    const MovedInstruction& moved = {});

// Instructions moved into trampolines: the address each one was at, where a `jmp rel32` to its
// trampoline replaces it, so that a thread that runs into that address while the jump's bytes
// change (the first one is an invalid opcode meanwhile) continues in the trampoline. Entries stay
// for the life of the process (a thread may fault there long after). add is called with the
// rewriter's lock held; false if the table is full. find may run in a signal handler at any time.
bool add_moved_instruction(std::uintptr_t address, std::uintptr_t trampoline) noexcept;
std::uintptr_t trampoline_of_moved_instruction(std::uintptr_t address) noexcept;

// Makes the arena pages written since the last call read+execute again.
void seal_site_trampolines() noexcept;

// Whether `address` lies in a trampoline arena (for tests and diagnostics).
bool in_site_trampolines(std::uintptr_t address) noexcept;

// Whether the five bytes at `bytes` are a padding slot's `jmp rel32` to a trampoline here (and
// not code that took a forgotten slot's place since).
bool is_slot_jump(const std::uint8_t* bytes) noexcept;

// How many trampolines have been made, and arenas mapped, in this process.
struct SiteTrampolineCounts {
  std::size_t trampolines = 0;
  std::size_t arenas = 0;
};
SiteTrampolineCounts site_trampoline_counts() noexcept;

// The displacement of a rel32 jump or call ending at `from` to `to`, if it fits.
bool rel32_reaches(std::uintptr_t from, std::uintptr_t to) noexcept;

}  // namespace zpoline::detail
