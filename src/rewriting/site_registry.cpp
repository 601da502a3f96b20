#include "rewriting/site_registry.hpp"

#include <sys/mman.h>

#include <new>

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

std::size_t slot_of(std::uintptr_t site, std::size_t capacity) {
  return static_cast<std::size_t>((site * kSiteHashMultiplier) >> 20) & (capacity - 1);
}

// Returns false when the site was already present.
bool insert(std::uintptr_t* slots, std::size_t capacity, std::uintptr_t site) {
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

SiteRegistry::Table* SiteRegistry::grow(Table* old, std::size_t capacity) {
  // mmap rather than new: the table must never be freed, and this keeps it out of the heap that
  // the application may be inspecting.
  const std::size_t bytes = sizeof(Table) + capacity * sizeof(std::uintptr_t);
  void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  Table* table = static_cast<Table*>(memory);
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

void SiteRegistry::add(std::uintptr_t site) {
  Table* table = static_cast<Table*>(__atomic_load_n(&zpoline_detail_site_table, __ATOMIC_ACQUIRE));
  if (table == nullptr || (table->count + 1) * 2 > table->capacity) {
    table = grow(table, table ? table->capacity * 2 : 4096);
    __atomic_store_n(&zpoline_detail_site_table, static_cast<void*>(table), __ATOMIC_RELEASE);
  }
  if (insert(table->slots(), table->capacity, site)) ++table->count;
}

void SiteRegistry::remove(std::uintptr_t site) {
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
