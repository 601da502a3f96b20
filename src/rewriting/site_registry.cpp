#include "rewriting/site_registry.hpp"

#include <sys/mman.h>
#include <sys/syscall.h>

#include "platform/raw_syscall.hpp"
#include "platform/sanitizers.hpp"

void* zpoline_detail_site_table = nullptr;

namespace zpoline::detail {

// Open addressing with linear probing; 0 marks an empty slot (no site is at address 0).
struct SiteRegistry::Table {
  std::size_t capacity;  // a power of two; offset 0 (SITE_TABLE_CAPACITY in entry_stub.S)
  std::size_t count;     // used slots, removed ones included; the slots follow at offset 16
  // The slots follow the header in the same mapping.
  std::uintptr_t* slots() { return reinterpret_cast<std::uintptr_t*>(this + 1); }
};

namespace {

// A removed site's slot: occupied for probing, never equal to a site.
constexpr std::uintptr_t kRemovedSlot = 1;

__attribute__((target("general-regs-only"))) std::size_t slot_of(std::uintptr_t site,
                                                                 std::size_t capacity) {
  return static_cast<std::size_t>((site * kSiteHashMultiplier) >> 20) & (capacity - 1);
}

// Returns false when the site was already present.
__attribute__((target("general-regs-only"))) bool insert(std::uintptr_t* slots,
                                                         std::size_t capacity,
                                                         std::uintptr_t site) {
  for (std::size_t i = slot_of(site, capacity);; i = (i + 1) & (capacity - 1)) {
    std::uintptr_t current = __atomic_load_n(&slots[i], __ATOMIC_RELAXED);
    if (current == site) return false;
    if (current == 0) {
      __atomic_store_n(&slots[i], site, __ATOMIC_RELEASE);
      return true;
    }
  }
}

}  // namespace

SiteRegistry::Table* SiteRegistry::grow(Table* old, std::size_t capacity) noexcept {
  // A raw mmap rather than new: the table must never be freed, this keeps it out of the heap that
  // the application may be inspecting, and the hook does not see it.
  const std::size_t bytes = sizeof(Table) + capacity * sizeof(std::uintptr_t);
  const long memory = raw_syscall(SYS_mmap, 0, static_cast<long>(bytes), PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory < 0 && memory > -4096) return nullptr;
  // New pages can lie where a stack was unmapped outside AddressSanitizer's view (posix_spawn's
  // child stack, which glibc maps and unmaps itself), its frames' poison still in the shadow.
  forget_stale_poison(reinterpret_cast<void*>(memory), bytes);
  Table* table = reinterpret_cast<Table*>(memory);
  table->capacity = capacity;
  table->count = 0;
  if (old) {
    for (std::size_t i = 0; i < old->capacity; ++i) {
      if (old->slots()[i] > kRemovedSlot && insert(table->slots(), capacity, old->slots()[i]))
        ++table->count;
    }
  }
  return table;
}

bool SiteRegistry::add(std::uintptr_t site) noexcept {
  while (writing_.exchange(true, std::memory_order_acquire)) __builtin_ia32_pause();
  Table* table = static_cast<Table*>(__atomic_load_n(&zpoline_detail_site_table, __ATOMIC_ACQUIRE));
  if (table == nullptr || (table->count + 1) * 2 > table->capacity) {
    Table* larger = grow(table, table ? table->capacity * 2 : 4096);
    if (larger == nullptr) {
      writing_.store(false, std::memory_order_release);
      return false;
    }
    table = larger;
    __atomic_store_n(&zpoline_detail_site_table, static_cast<void*>(table), __ATOMIC_RELEASE);
  }
  if (insert(table->slots(), table->capacity, site)) ++table->count;
  writing_.store(false, std::memory_order_release);
  return true;
}

void SiteRegistry::reset_after_fork() noexcept {
  writing_.store(false, std::memory_order_relaxed);
}

void SiteRegistry::remove(std::uintptr_t site) noexcept {
  while (writing_.exchange(true, std::memory_order_acquire)) __builtin_ia32_pause();
  struct Unlock {
    std::atomic<bool>& flag;
    ~Unlock() { flag.store(false, std::memory_order_release); }
  } unlock{writing_};
  Table* table = static_cast<Table*>(__atomic_load_n(&zpoline_detail_site_table, __ATOMIC_ACQUIRE));
  if (table == nullptr || site <= kRemovedSlot) return;
  for (std::size_t i = slot_of(site, table->capacity);; i = (i + 1) & (table->capacity - 1)) {
    std::uintptr_t current = __atomic_load_n(&table->slots()[i], __ATOMIC_RELAXED);
    if (current == 0) return;
    if (current == site) {
      // A marker rather than 0 keeps the probe chains of the other sites intact.
      // The slot stays used (count unchanged) until the table is next rebuilt.
      __atomic_store_n(&table->slots()[i], kRemovedSlot, __ATOMIC_RELEASE);
      return;
    }
  }
}

bool SiteRegistry::contains(std::uintptr_t site) const noexcept {
  Table* table = static_cast<Table*>(__atomic_load_n(&zpoline_detail_site_table, __ATOMIC_ACQUIRE));
  if (table == nullptr || site == 0) return false;
  for (std::size_t i = slot_of(site, table->capacity);; i = (i + 1) & (table->capacity - 1)) {
    std::uintptr_t current = __atomic_load_n(&table->slots()[i], __ATOMIC_ACQUIRE);
    if (current == site) return true;
    if (current == 0) return false;
  }
}

SiteRegistry& site_registry() {
  static SiteRegistry registry;
  return registry;
}

}  // namespace zpoline::detail
