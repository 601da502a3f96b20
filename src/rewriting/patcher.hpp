// Writing the 2-byte replacements into live code.
//
// Each page is made writable (keeping its other protection bits, so threads running it continue)
// only while its sites are written, then gets back exactly the protection it had; consecutive
// pages with sites are made writable and restored by one mprotect each. Each site is
// replaced by one atomic store (a locked compare-and-exchange when the two bytes straddle a cache
// line), so a thread executing the site concurrently sees either the old or the new instruction.
// Contract: called with the install lock held; `map` describes the current mappings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "platform/memory_map.hpp"

namespace zpoline::detail {

struct Patch {
  std::uintptr_t address;
  std::uint16_t expected;     // the bytes there now, little-endian (0x050f for 0f 05)
  std::uint16_t replacement;  // the bytes to write
};

struct PatchOutcome {
  std::size_t written = 0;
  std::size_t mismatched = 0;          // bytes were not `expected` any more: left alone
  std::size_t protection_changes = 0;  // mprotect calls that made pages writable (each is undone
                                       // by one more)
};

// `patches` sorted by address. Throws zpoline::Error (rewrite_failed) if a page cannot be made
// writable or its protection cannot be restored.
PatchOutcome apply_patches(std::span<const Patch> patches, const std::vector<Mapping>& map);

inline constexpr std::uint16_t kSyscallBytes = 0x050f;   // 0f 05
inline constexpr std::uint16_t kSysenterBytes = 0x340f;  // 0f 34
inline constexpr std::uint16_t kCallRaxBytes = 0xd0ff;   // ff d0

}  // namespace zpoline::detail
