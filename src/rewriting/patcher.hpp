// Writing the 2-byte replacements into live code.
//
// Each page is made writable (keeping its other protection bits, so threads running it continue)
// only while its sites are written, then gets back exactly the protection it had; consecutive
// pages with sites are made writable and restored by one mprotect each. Each site is replaced by
// one atomic store (byte by byte through an invalid opcode where the two bytes straddle a cache
// line), so a thread executing the site concurrently runs either the old or the new instruction,
// or faults on the invalid opcode and has its call made (trampoline/fault_redirect.cpp).
//
// The application changes mappings and protections while this happens (a JIT toggling a page
// between RW and RX, unmapping code it is done with). Its mmap(MAP_FIXED), munmap, mprotect,
// pkey_mprotect and mremap, made through the library, run under code_change_lock() and each
// counts one code change; the patcher takes the lock too, so that between reading a page's
// protection and restoring it no such call can run. The lock is held only around system calls
// and never while allocating: the application may make these calls from inside its allocator.
//
// Contract: apply_patches() is called by rewriting code with the rewriter's own lock held.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "platform/memory_map.hpp"
#include "platform/owned_lock.hpp"

namespace zpoline::detail {

inline constexpr std::size_t kSlotBytes = 5;      // padding.hpp: kPaddingSlotSize
inline constexpr std::size_t kMaxSlotBytes = 20;  // padding.hpp: kMaxSlotRegion

struct Patch {
  std::uintptr_t address;
  std::uint16_t expected;     // the bytes there now, little-endian (0x050f for 0f 05)
  std::uint16_t replacement;  // the bytes to write
  // The near mechanism: padding that the replacement (a `jmp rel8`) reaches, written first with
  // `slot_bytes` (a `jmp rel32`, then int3 to the end of the filler instruction it cut) if its
  // `slot_length` bytes still hold `slot_expected`; 0 for none. Nothing runs padding, so it is
  // written with plain stores; every CPU sees it before the site changes.
  std::uintptr_t slot = 0;
  std::size_t slot_length = 0;
  std::array<std::uint8_t, kMaxSlotBytes> slot_expected{};
  std::array<std::uint8_t, kMaxSlotBytes> slot_bytes{};
  // The near mechanism's other way: the instruction before the site (at `jump_at`, at least
  // five bytes, still holding `jump_expected`) becomes `jump_bytes` (a `jmp rel32` to a trampoline
  // that runs it), or back. Written while threads may run it, with one locked 8-byte exchange in
  // the cache line that holds the five bytes (can_write_moved_jump()). 0 for none. With one, the
  // site's own bytes may stay (replacement == expected).
  std::uintptr_t jump_at = 0;
  std::array<std::uint8_t, kSlotBytes> jump_expected{};
  std::array<std::uint8_t, kSlotBytes> jump_bytes{};
};

struct PatchOutcome {
  std::size_t written = 0;
  std::size_t written_with_jump = 0;   // ... of them, with a moved instruction (Patch::jump_at)
  std::size_t mismatched = 0;          // bytes were not `expected` any more: left alone
  std::size_t gone = 0;                // the page is no longer mapped executable: left alone
  std::size_t protection_changes = 0;  // mprotect calls that made pages writable (each is undone
                                       // by one more)
};

// `patches` sorted by address. `map` describes the mappings as they were at `map_generation`
// (code_change_generation() read before the map was); where code changed since, or no
// generation is given, the protections are read again while the lock is held. Throws
// zpoline::Error (rewrite_failed) if a page cannot be made writable or its protection cannot be
// restored.
PatchOutcome apply_patches(std::span<const Patch> patches, const std::vector<Mapping>& map,
                           std::optional<std::uint64_t> map_generation = std::nullopt);

// Makes every thread of the process see the code bytes written so far before it runs another
// instruction (membarrier: a serialising IPI to each CPU running one of its threads). False where
// the kernel does not offer it.
bool sync_cores() noexcept;

// Whether five bytes at `address` can be replaced atomically: they lie in one cache line.
bool can_write_moved_jump(std::uintptr_t address) noexcept;

OwnedLock& code_change_lock();
std::uint64_t code_change_generation() noexcept;
// Called with code_change_lock() held, around each change the application makes.
void note_code_change() noexcept;

inline constexpr std::uint16_t kSyscallBytes = 0x050f;   // 0f 05
inline constexpr std::uint16_t kSysenterBytes = 0x340f;  // 0f 34
inline constexpr std::uint16_t kCallRaxBytes = 0xd0ff;   // ff d0
inline constexpr std::uint8_t kShortJumpOpcode = 0xeb;   // eb rel8: the near mechanism's site
inline constexpr std::uint8_t kNearJumpOpcode = 0xe9;    // e9 rel32: its padding slot

// Whether the two bytes at a registered site are a rewritten instruction (either mechanism's),
// rather than the original `syscall`/`sysenter`.
inline bool is_rewritten_instruction(std::uint16_t bytes) noexcept {
  return bytes == kCallRaxBytes || (bytes & 0xff) == kShortJumpOpcode;
}

}  // namespace zpoline::detail
