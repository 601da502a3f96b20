#include "rewriting/patcher.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "zpoline/zpoline.hpp"

namespace zpoline::detail {
namespace {

constexpr std::uintptr_t kPageSize = 4096;
constexpr std::uintptr_t kCacheLine = 64;

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

// Writes one site; false if its bytes are not `expected`.
bool write_site(const Patch& patch) {
  auto* site = reinterpret_cast<std::uint16_t*>(patch.address);
  if ((patch.address & (kCacheLine - 1)) == kCacheLine - 1) {
    // Straddles a cache line (and maybe a page): only a locked operation is atomic here.
    std::uint16_t expected = patch.expected;
    asm volatile("lock cmpxchgw %[replacement], %[site]"
                 : [site] "+m"(*site), "+a"(expected)
                 : [replacement] "r"(patch.replacement)
                 : "memory", "cc");
    return expected == patch.expected;
  }
  std::uint16_t current;
  std::memcpy(&current, site, sizeof current);
  if (current != patch.expected) return false;
  // Within one cache line an aligned-or-not 2-byte store is a single atomic access on x86.
  asm volatile("movw %[replacement], %[site]"
               : [site] "=m"(*site)
               : [replacement] "r"(patch.replacement)
               : "memory");
  return true;
}

// A part of a run of pages made writable, within one mapping.
struct UnlockedRange {
  std::uintptr_t begin;
  std::uintptr_t end;
  int protection;  // the protection it had, and gets back
};

void restore(const UnlockedRange& range) {
  if (mprotect(reinterpret_cast<void*>(range.begin), range.end - range.begin, range.protection) !=
      0) {
    throw_protection_error("restore the protection of", range.begin, errno);
  }
}

}  // namespace

PatchOutcome apply_patches(std::span<const Patch> patches, const std::vector<Mapping>& map) {
  PatchOutcome outcome;
  std::vector<UnlockedRange> unlocked;
  std::size_t i = 0;
  while (i < patches.size()) {
    // A run: the sites on consecutive pages [first_page, last_page], made writable together.
    const std::uintptr_t first_page = page_of(patches[i].address);
    std::uintptr_t last_page = page_of(patches[i].address + 1);
    std::size_t run_end = i + 1;
    while (run_end < patches.size() && page_of(patches[run_end].address) <= last_page + kPageSize) {
      last_page = std::max(last_page, page_of(patches[run_end].address + 1));
      ++run_end;
    }
    // One mprotect per mapping the run lies in; a page no mapping lists gets read+execute back.
    unlocked.clear();
    for (std::uintptr_t begin = first_page; begin <= last_page;) {
      const Mapping* mapping = find_mapping(map, begin);
      const std::uintptr_t end =
          mapping ? std::min(mapping->end, last_page + kPageSize) : begin + kPageSize;
      const int protection = mapping ? mapping->protection : (PROT_READ | PROT_EXEC);
      if (mprotect(reinterpret_cast<void*>(begin), end - begin, protection | PROT_WRITE) != 0) {
        const int error = errno;
        for (const UnlockedRange& done : unlocked) {
          mprotect(reinterpret_cast<void*>(done.begin), done.end - done.begin, done.protection);
        }
        throw_protection_error("make writable", begin, error);
      }
      unlocked.push_back({begin, end, protection});
      ++outcome.protection_changes;
      begin = end;
    }
    for (; i < run_end; ++i) {
      if (write_site(patches[i])) {
        ++outcome.written;
      } else {
        ++outcome.mismatched;
      }
    }
    for (const UnlockedRange& done : unlocked) restore(done);
  }
  return outcome;
}

}  // namespace zpoline::detail
