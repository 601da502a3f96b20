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

struct UnlockedPage {
  std::uintptr_t page;
  int protection;
};

}  // namespace

PatchOutcome apply_patches(std::span<const Patch> patches, const std::vector<Mapping>& map) {
  PatchOutcome outcome;
  std::size_t i = 0;
  while (i < patches.size()) {
    // A batch: the sites whose bytes lie on the pages [first_page, last_page].
    const std::uintptr_t first_page = page_of(patches[i].address);
    std::uintptr_t last_page = page_of(patches[i].address + 1);
    std::size_t batch_end = i + 1;
    while (batch_end < patches.size() && page_of(patches[batch_end].address) <= last_page) {
      last_page = std::max(last_page, page_of(patches[batch_end].address + 1));
      ++batch_end;
    }
    std::vector<UnlockedPage> unlocked;
    for (std::uintptr_t page = first_page; page <= last_page; page += kPageSize) {
      const Mapping* mapping = find_mapping(map, page);
      const int protection = mapping ? mapping->protection : (PROT_READ | PROT_EXEC);
      if (mprotect(reinterpret_cast<void*>(page), kPageSize, protection | PROT_WRITE) != 0) {
        const int error = errno;
        for (const UnlockedPage& done : unlocked) {
          mprotect(reinterpret_cast<void*>(done.page), kPageSize, done.protection);
        }
        throw_protection_error("make writable", page, error);
      }
      unlocked.push_back({page, protection});
    }
    for (; i < batch_end; ++i) {
      if (write_site(patches[i])) {
        ++outcome.written;
      } else {
        ++outcome.mismatched;
      }
    }
    for (const UnlockedPage& done : unlocked) {
      if (mprotect(reinterpret_cast<void*>(done.page), kPageSize, done.protection) != 0) {
        throw_protection_error("restore the protection of", done.page, errno);
      }
    }
  }
  return outcome;
}

}  // namespace zpoline::detail
