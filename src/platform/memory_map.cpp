#include "platform/memory_map.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

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

// Reads a hexadecimal number at `p`; returns where it ends, or nullptr if there is none.
const char* parse_hex(const char* p, const char* end, std::uint64_t& value) {
  value = 0;
  const char* start = p;
  for (; p < end; ++p) {
    unsigned digit = 0;
    if (*p >= '0' && *p <= '9') {
      digit = static_cast<unsigned>(*p - '0');
    } else if (*p >= 'a' && *p <= 'f') {
      digit = static_cast<unsigned>(*p - 'a' + 10);
    } else {
      break;
    }
    value = value << 4 | digit;
  }
  return p > start ? p : nullptr;
}

// Reads a decimal number at `p`; returns where it ends, or nullptr if there is none.
const char* parse_decimal(const char* p, const char* end, std::uint64_t& value) {
  value = 0;
  const char* start = p;
  for (; p < end && *p >= '0' && *p <= '9'; ++p) {
    value = value * 10 + static_cast<unsigned>(*p - '0');
  }
  return p > start ? p : nullptr;
}

const char* skip_field(const char* p, const char* end) {
  while (p < end && *p != ' ') ++p;
  return p;
}

const char* skip_spaces(const char* p, const char* end) {
  while (p < end && *p == ' ') ++p;
  return p;
}

// One line: "begin-end perms offset major:minor inode [path]"; false if it does not look like
// one.
bool parse_line(const char* p, const char* end, Mapping& mapping) {
  std::uint64_t begin = 0, finish = 0, offset = 0, major = 0, minor = 0, inode = 0;
  p = parse_hex(p, end, begin);
  if (p == nullptr || p == end || *p++ != '-') return false;
  p = parse_hex(p, end, finish);
  if (p == nullptr || end - p < 6 || *p++ != ' ') return false;
  const char* perms = p;
  p = skip_spaces(skip_field(p, end), end);
  p = parse_hex(p, end, offset);
  if (p == nullptr) return false;
  p = parse_hex(skip_spaces(p, end), end, major);
  if (p == nullptr || p == end || *p++ != ':') return false;
  p = parse_hex(p, end, minor);
  if (p == nullptr) return false;
  p = parse_decimal(skip_spaces(p, end), end, inode);
  if (p == nullptr) return false;
  p = skip_spaces(p, end);
  mapping.begin = begin;
  mapping.end = finish;
  mapping.offset = offset;
  mapping.device = makedev(static_cast<unsigned>(major), static_cast<unsigned>(minor));
  mapping.inode = inode;
  mapping.protection = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
                       (perms[2] == 'x' ? PROT_EXEC : 0);
  mapping.path.assign(p, end);
  return true;
}

}  // namespace

std::vector<Mapping> read_memory_map() {
  std::vector<Mapping> map;
  const std::string content = read_file("/proc/self/maps");
  const char* p = content.data();
  const char* const end = p + content.size();
  while (p < end) {
    const char* line_end =
        static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
    if (line_end == nullptr) line_end = end;
    Mapping mapping;
    if (parse_line(p, line_end, mapping)) map.push_back(std::move(mapping));
    p = line_end + 1;
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

std::uintptr_t file_data_end(const Mapping& mapping, std::uint64_t file_size) {
  constexpr std::uint64_t kPageSize = 4096;
  if (file_size > ~std::uint64_t{0} - (kPageSize - 1)) return mapping.end;
  const std::uint64_t mapped_end = (file_size + kPageSize - 1) & ~(kPageSize - 1);
  if (mapped_end <= mapping.offset) return mapping.begin;
  const std::uint64_t bytes = mapped_end - mapping.offset;
  return bytes >= mapping.end - mapping.begin ? mapping.end
                                              : mapping.begin + static_cast<std::uintptr_t>(bytes);
}

}  // namespace zpoline::detail
