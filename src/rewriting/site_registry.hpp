// The set of rewritten syscall sites, so that the dispatcher can tell a call from a rewritten
// `syscall` from a stray call into page 0 (a NULL function pointer held in rax).
//
// Contract: add() is called with the install lock held, before the site's bytes are rewritten;
// contains() may run at any time on any thread (including signal handlers) without locks: readers
// see a table that is either the old or the new one, and tables are never freed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zpoline::detail {

class SiteRegistry {
 public:
  void add(std::uintptr_t site);
  bool contains(std::uintptr_t site) const noexcept;
  std::size_t size() const noexcept;

 private:
  struct Table;
  Table* grow(Table* old, std::size_t capacity);
  Table* table_ = nullptr;  // accessed with atomic builtins
};

SiteRegistry& site_registry();

}  // namespace zpoline::detail
