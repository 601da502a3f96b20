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

// The mappings that overlap [begin, end), sorted by address, each as read_memory_map() gives it;
// `all` says whether every mapping of the process was returned instead. The kernel is asked for
// one mapping at a time (the PROCMAP_QUERY ioctl of /proc/self/maps, Linux 6.11): reading the
// whole file costs ~1.5 us per mapping, which a process with a few hundred mappings pays at every
// dlopen for the few mappings of one library. Where the kernel has no such ioctl (or a name does
// not fit), this is read_memory_map() and `all` is set. The kernel does not answer for
// [vsyscall] (at the top of the address space, not one of the process's own mappings, and never
// readable): it is left out.
std::vector<Mapping> read_memory_map_in(std::uintptr_t begin, std::uintptr_t end, bool& all);

// The part of a mapping that lies in a range, with the mapping's protection.
struct MappingSpan {
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;
  int protection = 0;
};
// The mappings that overlap [begin, end), clipped to it, in address order, read from
// /proc/self/maps without allocating (raw system calls, a buffer on the stack): for code that
// runs where the allocator may be locked. Returns how many were found (at most `capacity`), or -1
// if the file could not be read or more than `capacity` mappings overlap.
long read_mappings_in(std::uintptr_t begin, std::uintptr_t end, MappingSpan* out,
                      std::size_t capacity) noexcept;

// The mapping containing address, or nullptr.
const Mapping* find_mapping(const std::vector<Mapping>& map, std::uintptr_t address);

// Where the file's data ends in `mapping`, a mapping of a file of `file_size` bytes: the kernel
// maps a file in whole pages, so the page holding its last byte can be read (zeros after that
// byte), and every page after it raises SIGBUS when touched. `mapping.end` if the file reaches
// that far, `mapping.begin` if the mapping starts past the file's last page.
std::uintptr_t file_data_end(const Mapping& mapping, std::uint64_t file_size);

}  // namespace zpoline::detail
