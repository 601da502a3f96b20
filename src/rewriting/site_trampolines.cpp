#include "rewriting/site_trampolines.hpp"

#include <sys/mman.h>
#include <sys/syscall.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "dispatch/frame.hpp"
#include "platform/raw_syscall.hpp"
#include "platform/sanitizers.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline::detail {
namespace {

constexpr std::uintptr_t kPageSize = 4096;
constexpr std::uintptr_t kArenaSize = 256 * 1024;
// Arenas are looked for this far apart, outwards from the jump that needs one.
constexpr std::uintptr_t kSearchStep = 1 << 20;
// Every byte of an arena must be within reach of every jump that uses it: arenas are placed so
// that their farthest byte is at most this far from the jump's end, and a trampoline is given
// from an existing arena only if it is within this distance too.
constexpr std::uintptr_t kReach = (1ull << 31) - kArenaSize - kPageSize;
constexpr std::size_t kMaxArenas = 256;
constexpr std::uint8_t kInt3 = 0xcc;

struct Arena {
  std::uintptr_t begin = 0;
  std::uintptr_t next = 0;  // the first free trampoline
  std::uintptr_t end = 0;
  // Pages made writable for trampolines being added: [writable_begin, writable_end), sealed
  // (made read+execute again) by seal_site_trampolines().
  std::uintptr_t writable_begin = 0;
  std::uintptr_t writable_end = 0;
};
Arena arenas[kMaxArenas];
std::size_t arena_count = 0;
std::size_t trampolines_made = 0;

std::uintptr_t distance(std::uintptr_t a, std::uintptr_t b) {
  return a > b ? a - b : b - a;
}

long protect(std::uintptr_t begin, std::uintptr_t end, int protection) {
  return raw_syscall(SYS_mprotect, static_cast<long>(begin), static_cast<long>(end - begin),
                     protection);
}

// A new arena within kReach of `jump_end` (both ends), nullptr if none could be mapped.
Arena* map_arena(std::uintptr_t jump_end) {
  if (arena_count == kMaxArenas) return nullptr;
  for (std::uintptr_t offset = kSearchStep; offset + kArenaSize < kReach; offset += kSearchStep) {
    // Below first: the dynamic linker maps libraries downwards from the top, so the space just
    // below the lowest one is usually free.
    for (const bool below : {true, false}) {
      std::uintptr_t hint = 0;
      if (below) {
        if (jump_end < offset + kArenaSize + (1ull << 16)) continue;
        hint = (jump_end - offset - kArenaSize) & ~(kPageSize - 1);
      } else {
        hint = (jump_end + offset) & ~(kPageSize - 1);
        if (hint + kArenaSize >= (1ull << 47)) continue;
      }
      const long mapped =
          raw_syscall(SYS_mmap, static_cast<long>(hint), kArenaSize, PROT_READ | PROT_EXEC,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      if (mapped == static_cast<long>(hint)) {
        forget_stale_poison(reinterpret_cast<void*>(hint), kArenaSize);  // new pages
        Arena& arena = arenas[arena_count];
        arena.begin = hint;
        arena.end = hint + kArenaSize;
        // The first 16 bytes hold the stub's address, for trampolines that cannot reach it with
        // a rel32 jump (written with the first trampoline, while the page is writable).
        arena.next = hint + kTrampolineUnit;
        arena.writable_begin = arena.writable_end = hint;
        ++arena_count;
        return &arena;
      }
      if (mapped >= 0) raw_syscall(SYS_munmap, mapped, kArenaSize);  // taken as a hint
      if (mapped < 0 && mapped != -EEXIST && mapped != -ENOMEM && mapped != -EPERM) return nullptr;
    }
  }
  return nullptr;
}

// Makes the page holding `address` of `arena` writable (and executable: threads may be running
// trampolines on it) until the next seal.
bool make_writable(Arena& arena, std::uintptr_t address) {
  const std::uintptr_t page = address & ~(kPageSize - 1);
  if (page >= arena.writable_begin && page < arena.writable_end) return true;
  if (const long error = protect(page, page + kPageSize, PROT_READ | PROT_WRITE | PROT_EXEC)) {
    errno = static_cast<int>(-error);
    return false;
  }
  if (arena.writable_begin == arena.writable_end) {
    arena.writable_begin = page;
    arena.writable_end = page + kPageSize;
  } else if (page == arena.writable_end) {
    arena.writable_end += kPageSize;
  } else {
    // Not contiguous (cannot happen: trampolines are added in order): seal what was open.
    protect(arena.writable_begin, arena.writable_end, PROT_READ | PROT_EXEC);
    arena.writable_begin = page;
    arena.writable_end = page + kPageSize;
  }
  return true;
}

}  // namespace

bool rel32_reaches(std::uintptr_t from, std::uintptr_t to) noexcept {
  const auto displacement = static_cast<std::int64_t>(to - from);
  return displacement >= INT32_MIN && displacement <= INT32_MAX;
}

std::size_t encode_site_trampoline(std::uint8_t (&code)[kMaxTrampolineSize],
                                   std::uintptr_t trampoline, std::uintptr_t site,
                                   const MovedInstruction& moved, std::uintptr_t entry,
                                   std::uintptr_t entry_pointer) {
  std::memset(code, kInt3, sizeof code);
  std::size_t at = std::min(moved.bytes.size(), kMaxMovedInstruction);
  if (at != 0) std::memcpy(code, moved.bytes.data(), at);  // no instruction: data() may be null
  if (moved.displacement_offset != 0) {
    if (moved.displacement_offset + 4 > at) return 0;
    std::int32_t displacement = 0;
    std::memcpy(&displacement, code + moved.displacement_offset, 4);
    const std::int64_t adjusted = static_cast<std::int64_t>(displacement) +
                                  static_cast<std::int64_t>(moved.address - trampoline);
    if (adjusted < INT32_MIN || adjusted > INT32_MAX) return 0;
    displacement = static_cast<std::int32_t>(adjusted);
    std::memcpy(code + moved.displacement_offset, &displacement, 4);
  }
  // lea site+2(%rip), %r11: the return address `call *%rax` at the site would push.
  const auto to_return = static_cast<std::int32_t>(site + 2 - (trampoline + at + 7));
  code[at + 0] = 0x4c;
  code[at + 1] = 0x8d;
  code[at + 2] = 0x1d;
  std::memcpy(code + at + 3, &to_return, 4);
  // push %r11
  code[at + 7] = 0x41;
  code[at + 8] = 0x53;
  at += 9;
  if (rel32_reaches(trampoline + at + 5, entry)) {
    // jmp entry
    const auto to_entry = static_cast<std::int32_t>(entry - (trampoline + at + 5));
    code[at] = 0xe9;
    std::memcpy(code + at + 1, &to_entry, 4);
    at += 5;
  } else {
    // jmp *entry_pointer(%rip)
    const auto to_pointer = static_cast<std::int32_t>(entry_pointer - (trampoline + at + 6));
    code[at] = 0xff;
    code[at + 1] = 0x25;
    std::memcpy(code + at + 2, &to_pointer, 4);
    at += 6;
  }
  return (at + kTrampolineUnit - 1) / kTrampolineUnit * kTrampolineUnit;
}

std::uintptr_t make_site_trampoline(std::uintptr_t site, std::uintptr_t jump_end,
                                    const MovedInstruction& moved) {
  if (moved.bytes.size() > kMaxMovedInstruction) return 0;
  Arena* arena = nullptr;
  for (std::size_t i = 0; i < arena_count && arena == nullptr; ++i) {
    Arena& candidate = arenas[i];
    if (candidate.next + kMaxTrampolineSize <= candidate.end &&
        distance(candidate.begin, jump_end) < kReach &&
        distance(candidate.end, jump_end) < kReach) {
      arena = &candidate;
    }
  }
  if (arena == nullptr) arena = map_arena(jump_end);
  if (arena == nullptr) return 0;
  const std::uintptr_t trampoline = arena->next;
  const auto entry = reinterpret_cast<std::uintptr_t>(&zpoline_detail_entry);
  std::uint8_t code[kMaxTrampolineSize];
  const std::size_t size =
      encode_site_trampoline(code, trampoline, site, moved, entry, arena->begin);
  if (size == 0) return 0;
  if (!make_writable(*arena, trampoline) || !make_writable(*arena, trampoline + size - 1)) {
    const int error = errno;
    char message[160];
    std::snprintf(message, sizeof message,
                  "zpoline: could not make writable the trampoline page at %#lx: %s",
                  static_cast<unsigned long>(trampoline & ~(kPageSize - 1)), std::strerror(error));
    throw Error(ErrorCode::rewrite_failed, message);
  }
  if (trampoline == arena->begin + kTrampolineUnit) {
    // The arena's first trampoline: its first page is writable now, write the stub's address.
    std::memcpy(reinterpret_cast<void*>(arena->begin), &entry, sizeof entry);
  }
  std::memcpy(reinterpret_cast<void*>(trampoline), code, size);
  arena->next += size;
  ++trampolines_made;
  return trampoline;
}

void seal_site_trampolines() noexcept {
  for (std::size_t i = 0; i < arena_count; ++i) {
    Arena& arena = arenas[i];
    if (arena.writable_begin == arena.writable_end) continue;
    protect(arena.writable_begin, arena.writable_end, PROT_READ | PROT_EXEC);
    arena.writable_begin = arena.writable_end = 0;
  }
}

namespace {

// add_moved_instruction()'s table: open addressing, 0 marks a free entry. An entry's trampoline is
// written before its address, and read after it.
struct MovedEntry {
  std::atomic<std::uintptr_t> address{0};
  std::atomic<std::uintptr_t> trampoline{0};
};
constexpr std::size_t kMovedCapacity = 1 << 14;
MovedEntry moved_instructions[kMovedCapacity];
std::size_t moved_count = 0;

std::size_t moved_slot(std::uintptr_t address) {
  return static_cast<std::size_t>((address * 0x9e3779b97f4a7c15ull) >> 50) & (kMovedCapacity - 1);
}

}  // namespace

bool add_moved_instruction(std::uintptr_t address, std::uintptr_t trampoline) noexcept {
  // At most 3/4 full, so that a lookup of an absent address ends soon.
  if (moved_count >= kMovedCapacity / 4 * 3) return false;
  for (std::size_t i = moved_slot(address);; i = (i + 1) & (kMovedCapacity - 1)) {
    MovedEntry& entry = moved_instructions[i];
    const std::uintptr_t current = entry.address.load(std::memory_order_acquire);
    if (current == address) {
      entry.trampoline.store(trampoline, std::memory_order_release);
      return true;
    }
    if (current != 0) continue;
    entry.trampoline.store(trampoline, std::memory_order_relaxed);
    entry.address.store(address, std::memory_order_release);
    ++moved_count;
    return true;
  }
}

std::uintptr_t trampoline_of_moved_instruction(std::uintptr_t address) noexcept {
  if (address == 0) return 0;
  for (std::size_t i = moved_slot(address);; i = (i + 1) & (kMovedCapacity - 1)) {
    const MovedEntry& entry = moved_instructions[i];
    const std::uintptr_t current = entry.address.load(std::memory_order_acquire);
    if (current == 0) return 0;
    if (current == address) return entry.trampoline.load(std::memory_order_acquire);
  }
}

bool in_site_trampolines(std::uintptr_t address) noexcept {
  for (std::size_t i = 0; i < arena_count; ++i) {
    if (address >= arenas[i].begin && address < arenas[i].end) return true;
  }
  return false;
}

bool is_slot_jump(const std::uint8_t* bytes) noexcept {
  if (bytes[0] != 0xe9) return false;
  std::int32_t displacement = 0;
  std::memcpy(&displacement, bytes + 1, sizeof displacement);
  const auto target = reinterpret_cast<std::uintptr_t>(bytes) + 5 +
                      static_cast<std::uintptr_t>(static_cast<std::intptr_t>(displacement));
  return in_site_trampolines(target);
}

SiteTrampolineCounts site_trampoline_counts() noexcept {
  return {trampolines_made, arena_count};
}

}  // namespace zpoline::detail
