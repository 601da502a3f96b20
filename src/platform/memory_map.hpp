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
  std::uint64_t device = 0;  // the file's device (as makedev() builds it) and inode; 0 if anonymous
  std::uint64_t inode = 0;
  std::string path;  // empty for anonymous mappings; "[vdso]" and the like for special ones
};

// Reads /proc/self/maps. Sorted by address, as the kernel lists them.
std::vector<Mapping> read_memory_map();

// The mapping containing address, or nullptr.
const Mapping* find_mapping(const std::vector<Mapping>& map, std::uintptr_t address);

// Where the file's data ends in `mapping`, a mapping of a file of `file_size` bytes: the kernel
// maps a file in whole pages, so the page holding its last byte can be read (zeros after that
// byte), and every page after it raises SIGBUS when touched. `mapping.end` if the file reaches
// that far, `mapping.begin` if the mapping starts past the file's last page.
std::uintptr_t file_data_end(const Mapping& mapping, std::uint64_t file_size);

}  // namespace zpoline::detail
