#include "rewriting/patcher.hpp"

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "platform/fault_recovery.hpp"
#include "platform/raw_syscall.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline::detail {

bool can_write_moved_jump(std::uintptr_t address) noexcept {
  constexpr std::uintptr_t kLine = 64;
  return (address & (kLine - 1)) + kSlotBytes <= kLine;
}

namespace {

constexpr std::uintptr_t kPageSize = 4096;
constexpr std::uintptr_t kCacheLine = 64;
// A run of pages lies in at most this many mappings; a longer run is split.
constexpr std::size_t kMaxSpans = 16;
// A run holds at most this many patches; a longer one is split.
constexpr std::size_t kMaxRunPatches = 1024;
// An invalid opcode in 64-bit mode: the first byte of a site while its second byte changes.
constexpr std::uint8_t kInvalidOpcode = 0x06;

std::atomic<std::uint64_t> generation{0};

std::uintptr_t page_of(std::uintptr_t address) {
  return address & ~(kPageSize - 1);
}

[[noreturn]] void throw_protection_error(const char* what, std::uintptr_t page, int error) {
  char address[32];
  std::snprintf(address, sizeof address, "%#lx", static_cast<unsigned long>(page));
  throw Error(ErrorCode::rewrite_failed, std::string("zpoline: could not ") + what +
                                             " the code page at " + address + ": " +
                                             std::strerror(error));
}

long protect(std::uintptr_t begin, std::uintptr_t end, int protection) {
  return raw_syscall(SYS_mprotect, static_cast<long>(begin), static_cast<long>(end - begin),
                     protection);
}

}  // namespace

bool sync_cores() noexcept {
  constexpr int kPrivateExpeditedSyncCore = 1 << 5;
  constexpr int kRegisterPrivateExpeditedSyncCore = 1 << 6;
  static const bool registered =
      raw_syscall(SYS_membarrier, kRegisterPrivateExpeditedSyncCore, 0, 0) == 0;
  return registered && raw_syscall(SYS_membarrier, kPrivateExpeditedSyncCore, 0, 0) == 0;
}

namespace {

// Writes one site; false if its bytes are not `expected`.
bool write_site(const Patch& patch) {
  auto* site = reinterpret_cast<std::uint16_t*>(patch.address);
  std::uint16_t current;
  std::memcpy(&current, site, sizeof current);
  if (current != patch.expected) return false;
  if ((patch.address & (kCacheLine - 1)) != kCacheLine - 1) {
    // Within one cache line a 2-byte access, aligned or not, is atomic on x86. Compared and
    // exchanged in one: a JIT may write other code there at any moment (RWX memory needs no
    // system call for that).
    std::uint16_t expected = patch.expected;
    asm volatile("lock cmpxchgw %[replacement], %[site]"
                 : [site] "+m"(*site), "+a"(expected)
                 : [replacement] "r"(patch.replacement)
                 : "memory", "cc");
    return expected == patch.expected;
  }
  // Straddles a cache line (and maybe a page): no plain store is atomic here, and a locked one
  // is a split lock (SIGBUS where the kernel has split_lock_detect=fatal). One byte at a time
  // instead, each step seen by every CPU before the next: first an invalid opcode, so that a
  // thread executing the site meanwhile faults (and fault_redirect.cpp makes its call), never a
  // mix of two instructions; then the second byte; then the first.
  auto* bytes = reinterpret_cast<volatile std::uint8_t*>(patch.address);
  if (!sync_cores()) {
    std::uint16_t expected = patch.expected;
    asm volatile("lock cmpxchgw %[replacement], %[site]"
                 : [site] "+m"(*site), "+a"(expected)
                 : [replacement] "r"(patch.replacement)
                 : "memory", "cc");
    return expected == patch.expected;
  }
  bytes[0] = kInvalidOpcode;
  sync_cores();
  bytes[1] = static_cast<std::uint8_t>(patch.replacement >> 8);
  sync_cores();
  bytes[0] = static_cast<std::uint8_t>(patch.replacement & 0xff);
  sync_cores();
  return true;
}

// Replaces the kSlotBytes at patch.jump_at (which lie in one cache line) with patch.jump_bytes if
// they still hold patch.jump_expected: one locked 8-byte compare-and-exchange of the bytes of that
// line around them (within a cache line a locked access is atomic, aligned or not, and no split
// lock), so that a thread running the instruction there meanwhile sees the old one or the new
// one, never a mix, whatever signals it blocks. Other bytes of the word that a JIT changes
// meanwhile are kept (the exchange is retried).
bool write_moved_jump(const Patch& patch) {
  if (!can_write_moved_jump(patch.jump_at)) return false;
  const std::uintptr_t line_end = (patch.jump_at | (kCacheLine - 1)) + 1;
  const std::uintptr_t word_at = std::min(patch.jump_at, line_end - 8);
  // Eight bytes at any alignment: a type of alignment 1, read with memcpy.
  struct Word {
    unsigned char bytes[8];
  };
  auto* word = reinterpret_cast<volatile Word*>(word_at);
  const std::size_t offset = patch.jump_at - word_at;
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::uint8_t bytes[8];
    std::memcpy(bytes, reinterpret_cast<const void*>(word_at), sizeof bytes);
    if (std::memcmp(bytes + offset, patch.jump_expected.data(), kSlotBytes) != 0) return false;
    std::uint64_t current = 0;
    std::memcpy(&current, bytes, sizeof current);
    std::memcpy(bytes + offset, patch.jump_bytes.data(), kSlotBytes);
    std::uint64_t desired = 0;
    std::memcpy(&desired, bytes, sizeof desired);
    std::uint64_t expected = current;
    asm volatile("lock cmpxchgq %[desired], %[word]"
                 : [word] "+m"(*word), "+a"(expected)
                 : [desired] "r"(desired)
                 : "memory", "cc");
    if (expected == current) return true;
  }
  return false;
}

// The mappings of [begin, end), from `map` (known to be current).
long spans_from_map(const std::vector<Mapping>& map, std::uintptr_t begin, std::uintptr_t end,
                    MappingSpan* out) {
  long count = 0;
  auto it = std::upper_bound(map.begin(), map.end(), begin,
                             [](std::uintptr_t a, const Mapping& m) { return a < m.begin; });
  if (it != map.begin()) --it;
  for (; it != map.end() && it->begin < end; ++it) {
    if (it->end <= begin) continue;
    if (count == static_cast<long>(kMaxSpans)) return -1;
    out[count++] = {std::max(it->begin, begin), std::min(it->end, end), it->protection};
  }
  return count;
}

struct Failure {
  const char* what = nullptr;
  std::uintptr_t page = 0;
  int error = 0;
};

}  // namespace

OwnedLock& code_change_lock() {
  static OwnedLock lock;
  return lock;
}

std::uint64_t code_change_generation() noexcept {
  return generation.load(std::memory_order_acquire);
}

void note_code_change() noexcept {
  generation.fetch_add(1, std::memory_order_acq_rel);
}

PatchOutcome apply_patches(std::span<const Patch> patches, const std::vector<Mapping>& map,
                           std::optional<std::uint64_t> map_generation) {
  PatchOutcome outcome;
  Failure failure;
  {
    // Not to be jumped out of with the lock held: the pages written are made writable under it.
    FaultRecovery not_here(FaultRecovery::Suspended{});
    // Nothing below allocates: the application's mprotect/munmap (perhaps made by its allocator,
    // with the allocator's lock held) waits for this lock.
    OwnedLockGuard guard(code_change_lock());
    const bool map_is_current = map_generation && *map_generation == code_change_generation();
    // The bytes a patch writes: its site, and its slot if it has one.
    const auto low = [](const Patch& patch) {
      std::uintptr_t address = patch.address;
      if (patch.slot != 0) address = std::min(address, patch.slot);
      if (patch.jump_at != 0) address = std::min(address, patch.jump_at);
      return address;
    };
    const auto high = [](const Patch& patch) {
      std::uintptr_t address = patch.address + 1;
      if (patch.slot != 0) address = std::max(address, patch.slot + patch.slot_length - 1);
      if (patch.jump_at != 0) address = std::max(address, patch.jump_at + kSlotBytes - 1);
      return address;
    };
    std::size_t i = 0;
    while (i < patches.size() && failure.what == nullptr) {
      // A run: the sites on consecutive pages [first_page, last_page], made writable together.
      std::uintptr_t first_page = page_of(low(patches[i]));
      std::uintptr_t last_page = page_of(high(patches[i]));
      std::size_t run_end = i + 1;
      while (run_end < patches.size() && page_of(low(patches[run_end])) <= last_page + kPageSize) {
        first_page = std::min(first_page, page_of(low(patches[run_end])));
        last_page = std::max(last_page, page_of(high(patches[run_end])));
        ++run_end;
      }
      // The run's mappings now. Pages no longer mapped executable (unmapped, or made writable
      // by a JIT meanwhile) keep their bytes: those sites are gone.
      MappingSpan spans[kMaxSpans];
      const std::uintptr_t end = last_page + kPageSize;
      long count = map_is_current ? spans_from_map(map, first_page, end, spans)
                                  : read_mappings_in(first_page, end, spans, kMaxSpans);
      if (count < 0) {
        // Too many mappings, or /proc unreadable: one patch at a time.
        run_end = i + 1;
        first_page = page_of(low(patches[i]));
        last_page = page_of(high(patches[i]));
        count = read_mappings_in(first_page, last_page + kPageSize, spans, kMaxSpans);
        if (count < 0) count = 0;
      }
      bool made_writable[kMaxSpans] = {};
      for (long s = 0; s < count; ++s) {
        const MappingSpan& span = spans[s];
        if (!(span.protection & PROT_EXEC)) continue;
        const long error = protect(span.begin, span.end, span.protection | PROT_WRITE);
        if (error != 0) {
          failure = {"make writable", span.begin, static_cast<int>(-error)};
          break;
        }
        made_writable[s] = true;
        ++outcome.protection_changes;
      }
      if (failure.what == nullptr) {
        const auto writable = [&](std::uintptr_t address) {
          for (long s = 0; s < count; ++s) {
            if (made_writable[s] && address >= spans[s].begin && address < spans[s].end) {
              return true;
            }
          }
          return false;
        };
        // Slots first, then (once every CPU sees them) the sites that jump to them; moved
        // instructions in three steps (see Patch::jump_at).
        bool ready[kMaxRunPatches];
        bool any_slot = false, any_jump = false;
        const std::size_t run_length = std::min(run_end - i, kMaxRunPatches);
        run_end = i + run_length;
        for (std::size_t k = 0; k < run_length; ++k) {
          const Patch& patch = patches[i + k];
          ready[k] = true;
          if (patch.slot != 0) {
            ready[k] = patch.slot_length >= kSlotBytes && patch.slot_length <= kMaxSlotBytes &&
                       writable(patch.slot) && writable(patch.slot + patch.slot_length - 1) &&
                       std::memcmp(reinterpret_cast<const void*>(patch.slot),
                                   patch.slot_expected.data(), patch.slot_length) == 0;
            if (!ready[k]) continue;
            std::memcpy(reinterpret_cast<void*>(patch.slot), patch.slot_bytes.data(),
                        patch.slot_length);
            any_slot = true;
          }
          if (patch.jump_at != 0) {
            ready[k] = writable(patch.jump_at) && writable(patch.jump_at + kSlotBytes - 1);
          }
        }
        if (any_slot) sync_cores();
        for (std::size_t k = 0; k < run_length; ++k) {
          const Patch& patch = patches[i + k];
          if (patch.jump_at == 0 || !ready[k]) continue;
          ready[k] = write_moved_jump(patch);
          any_jump = any_jump || ready[k];
        }
        if (any_jump) sync_cores();
        for (std::size_t k = 0; k < run_length; ++i, ++k) {
          const Patch& patch = patches[i];
          if (!writable(patch.address) || !writable(patch.address + 1)) {
            ++outcome.gone;
          } else if (!ready[k]) {
            ++outcome.mismatched;
          } else if (patch.expected == patch.replacement || write_site(patch)) {
            ++outcome.written;
            if (patch.jump_at != 0) ++outcome.written_with_jump;
          } else {
            ++outcome.mismatched;
          }
        }
      }
      for (long s = 0; s < count; ++s) {
        if (!made_writable[s]) continue;
        const long error = protect(spans[s].begin, spans[s].end, spans[s].protection);
        if (error != 0 && failure.what == nullptr) {
          failure = {"restore the protection of", spans[s].begin, static_cast<int>(-error)};
        }
      }
    }
  }
  if (failure.what != nullptr) throw_protection_error(failure.what, failure.page, failure.error);
  return outcome;
}

}  // namespace zpoline::detail
