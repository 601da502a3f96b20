#include "platform/vdso.hpp"

#include <dlfcn.h>
#include <sys/mman.h>

#include <cstdint>
#include <vector>

#include "platform/memory_map.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline::detail {
namespace {

constexpr const char* kVdsoFunctions[] = {"__vdso_clock_gettime", "__vdso_gettimeofday",
                                          "__vdso_time", "__vdso_getcpu", "__vdso_clock_getres"};
constexpr std::uintptr_t kPageSize = 4096;

struct ClearedPointer {
  std::uintptr_t* slot;
  std::uintptr_t value;
};
std::vector<ClearedPointer> cleared;

bool write_word(std::uintptr_t* slot, std::uintptr_t value, int protection) {
  void* page = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(slot) & ~(kPageSize - 1));
  if (mprotect(page, kPageSize, protection | PROT_WRITE) != 0) return false;
  __atomic_store_n(slot, value, __ATOMIC_RELEASE);
  mprotect(page, kPageSize, protection);
  return true;
}

}  // namespace

std::size_t route_vdso_calls_to_kernel() {
  if (!cleared.empty()) return cleared.size();
  void* vdso = dlopen("linux-vdso.so.1", RTLD_NOLOAD | RTLD_NOW);
  std::vector<std::uintptr_t> functions;
  for (const char* name : kVdsoFunctions) {
    if (void* address = vdso ? dlsym(vdso, name) : nullptr) {
      functions.push_back(reinterpret_cast<std::uintptr_t>(address));
    }
  }
  if (vdso) dlclose(vdso);
  for (const Mapping& mapping : read_memory_map()) {
    const bool dynamic_linker_data = mapping.path.find("/ld-linux") != std::string::npos &&
                                     (mapping.protection & PROT_READ) &&
                                     !(mapping.protection & PROT_EXEC);
    if (!dynamic_linker_data) continue;
    for (auto* slot = reinterpret_cast<std::uintptr_t*>(mapping.begin);
         slot < reinterpret_cast<std::uintptr_t*>(mapping.end); ++slot) {
      for (std::uintptr_t function : functions) {
        if (*slot == function && write_word(slot, 0, mapping.protection)) {
          cleared.push_back({slot, function});
        }
      }
    }
  }
  if (cleared.empty()) {
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: this C library's vDSO pointers were not found "
                "(it is not glibc 2.31 or later, or it keeps them mangled); vDSO calls cannot be "
                "routed through the kernel here.");
  }
  return cleared.size();
}

void restore_vdso_calls() noexcept {
  if (cleared.empty()) return;
  const std::vector<Mapping> map = read_memory_map();
  for (const ClearedPointer& pointer : cleared) {
    const Mapping* mapping = find_mapping(map, reinterpret_cast<std::uintptr_t>(pointer.slot));
    if (mapping) write_word(pointer.slot, pointer.value, mapping->protection);
  }
  cleared.clear();
}

}  // namespace zpoline::detail
