// The process's memory mappings as /proc/self/maps lists them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace zpoline::detail {

struct Mapping {
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;
  int protection = 0;        // PROT_* bits
  std::uint64_t offset = 0;  // file offset of `begin` for file mappings
  std::string path;          // empty for anonymous mappings; "[vdso]" and the like for special ones
};

// Reads /proc/self/maps. Sorted by address, as the kernel lists them.
std::vector<Mapping> read_memory_map();

// The mapping containing address, or nullptr.
const Mapping* find_mapping(const std::vector<Mapping>& map, std::uintptr_t address);

}  // namespace zpoline::detail
