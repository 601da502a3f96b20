#include "platform/memory_map.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace zpoline::detail {
namespace {

std::string read_file(const char* path) {
  std::string content;
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return content;
  char buffer[16384];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof buffer);
    if (n <= 0) break;
    content.append(buffer, static_cast<std::size_t>(n));
  }
  close(fd);
  return content;
}

}  // namespace

std::vector<Mapping> read_memory_map() {
  std::vector<Mapping> map;
  const std::string content = read_file("/proc/self/maps");
  std::size_t line_start = 0;
  while (line_start < content.size()) {
    std::size_t line_end = content.find('\n', line_start);
    if (line_end == std::string::npos) line_end = content.size();
    const std::string line = content.substr(line_start, line_end - line_start);
    line_start = line_end + 1;

    unsigned long begin = 0, end = 0, offset = 0;
    char perms[5] = {};
    int path_offset = 0;
    // address perms offset dev inode path
    if (std::sscanf(line.c_str(), "%lx-%lx %4s %lx %*s %*s %n", &begin, &end, perms, &offset,
                    &path_offset) < 4) {
      continue;
    }
    Mapping mapping;
    mapping.begin = begin;
    mapping.end = end;
    mapping.offset = offset;
    mapping.protection = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
                         (perms[2] == 'x' ? PROT_EXEC : 0);
    if (path_offset > 0 && static_cast<std::size_t>(path_offset) < line.size()) {
      mapping.path = line.substr(static_cast<std::size_t>(path_offset));
    }
    map.push_back(std::move(mapping));
  }
  return map;
}

const Mapping* find_mapping(const std::vector<Mapping>& map, std::uintptr_t address) {
  auto it = std::upper_bound(map.begin(), map.end(), address,
                             [](std::uintptr_t a, const Mapping& m) { return a < m.begin; });
  if (it == map.begin()) return nullptr;
  --it;
  return address < it->end ? &*it : nullptr;
}

}  // namespace zpoline::detail
