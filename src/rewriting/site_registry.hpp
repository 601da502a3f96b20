// The set of rewritten syscall sites, so that the dispatcher can tell a call from a rewritten
// `syscall` from a stray call into page 0 (a NULL function pointer held in rax).
//
// Contract: add() is called before the site's bytes are rewritten; add() and remove() may run on
// any thread (a spin lock orders them; they allocate nothing and make no system call the hook
// sees, and use general registers only: the entry stub calls add() for a copied site);
// contains() may run at any time on any thread (including signal handlers) without locks: readers
// see a table that is either the old or the new one, and tables are never freed. The entry stub
// (entry_stub.S) does the same lookup in assembly on every call: the table layout, the hash and
// the global zpoline_detail_site_table are part of its contract.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace zpoline::detail {

class SiteRegistry {
 public:
  // False only if no memory could be mapped for a larger table.
  __attribute__((target("general-regs-only"))) bool add(std::uintptr_t site) noexcept;
  // For code that is unmapped: a later mapping at the same address may hold an ordinary
  // `call *%rax` there.
  void remove(std::uintptr_t site) noexcept;
  bool contains(std::uintptr_t site) const noexcept;
  // In a fork child: frees the lock if another thread held it at the fork.
  void reset_after_fork() noexcept;

 private:
  struct Table;
  __attribute__((target("general-regs-only"))) static Table* grow(Table* old,
                                                                  std::size_t capacity) noexcept;
  std::atomic<bool> writing_{false};
};

SiteRegistry& site_registry();

inline constexpr std::uint64_t kSiteHashMultiplier = 0x9e3779b97f4a7c15ull;

}  // namespace zpoline::detail

// The current table (a SiteRegistry::Table), read by the entry stub; accessed atomically.
extern "C" void* zpoline_detail_site_table __attribute__((visibility("hidden")));

namespace zpoline::detail {}  // namespace zpoline::detail
