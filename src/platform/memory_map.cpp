#include "platform/memory_map.hpp"

#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "platform/raw_syscall.hpp"

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

// struct procmap_query of <linux/fs.h> (Linux 6.11), which Debian 12's headers predate. `size`
// tells the kernel which version of the struct this is.
struct ProcmapQuery {
  std::uint64_t size;
  std::uint64_t query_flags;
  std::uint64_t query_addr;
  std::uint64_t vma_start;
  std::uint64_t vma_end;
  std::uint64_t vma_flags;
  std::uint64_t vma_page_size;
  std::uint64_t vma_offset;
  std::uint64_t inode;
  std::uint32_t dev_major;
  std::uint32_t dev_minor;
  std::uint32_t vma_name_size;
  std::uint32_t build_id_size;
  std::uint64_t vma_name_addr;
  std::uint64_t build_id_addr;
};
constexpr unsigned long kProcmapQuery = _IOWR('f', 17, ProcmapQuery);
constexpr std::uint64_t kCoveringOrNextMapping = 0x10;
constexpr std::uint64_t kMappingReadable = 0x1, kMappingWritable = 0x2, kMappingExecutable = 0x4;

// Set once the kernel has refused the ioctl as unknown: no need to ask again.
std::atomic<bool> procmap_query_missing{false};

// The mappings overlapping [begin, end) through PROCMAP_QUERY; false if the kernel cannot answer
// (then `map` is to be ignored).
bool query_mappings(std::uintptr_t begin, std::uintptr_t end, std::vector<Mapping>& map) {
  const int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char name[PATH_MAX + 32];  // a path, and " (deleted)" after it
  bool answered = true;
  for (std::uintptr_t at = begin; at < end;) {
    ProcmapQuery query{};
    query.size = sizeof query;
    query.query_flags = kCoveringOrNextMapping;
    query.query_addr = at;
    query.vma_name_addr = reinterpret_cast<std::uintptr_t>(name);
    query.vma_name_size = sizeof name;
    if (ioctl(fd, kProcmapQuery, &query) != 0) {
      if (errno == ENOENT) break;  // no mapping at or above `at`
      if (errno == ENOTTY || errno == EINVAL) procmap_query_missing.store(true);
      answered = false;
      break;
    }
    if (query.vma_start >= end) break;
    Mapping& mapping = map.emplace_back();
    mapping.begin = query.vma_start;
    mapping.end = query.vma_end;
    mapping.protection = ((query.vma_flags & kMappingReadable) ? PROT_READ : 0) |
                         ((query.vma_flags & kMappingWritable) ? PROT_WRITE : 0) |
                         ((query.vma_flags & kMappingExecutable) ? PROT_EXEC : 0);
    mapping.offset = query.vma_offset;
    mapping.device = makedev(query.dev_major, query.dev_minor);
    mapping.inode = query.inode;
    // The size counts the terminating NUL; 0 for a mapping without a name.
    if (query.vma_name_size > 0) mapping.path.assign(name, query.vma_name_size - 1);
    at = query.vma_end;
  }
  close(fd);
  return answered;
}

}  // namespace

std::vector<Mapping> read_memory_map_in(std::uintptr_t begin, std::uintptr_t end, bool& all) {
  if (!procmap_query_missing.load(std::memory_order_relaxed)) {
    std::vector<Mapping> map;
    if (query_mappings(begin, end, map)) {
      all = false;
      return map;
    }
  }
  all = true;
  return read_memory_map();
}

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

long read_mappings_in(std::uintptr_t begin, std::uintptr_t end, MappingSpan* out,
                      std::size_t capacity) noexcept {
  const long fd = raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/maps"),
                              O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  // Lines are read in chunks; a line cut at the end of a chunk moves to the front of the next.
  // A line is at most a path (PATH_MAX) plus ~100 bytes.
  char buffer[8192];
  std::size_t filled = 0;
  long found = 0;
  bool done = false, failed = false;
  while (!done) {
    const long n = raw_syscall(SYS_read, fd, reinterpret_cast<long>(buffer + filled),
                               static_cast<long>(sizeof buffer - filled));
    if (n < 0) {
      failed = true;
      break;
    }
    filled += static_cast<std::size_t>(n);
    const char* p = buffer;
    const char* const limit = buffer + filled;
    for (;;) {
      const char* line_end =
          static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(limit - p)));
      if (line_end == nullptr) {
        if (n == 0)
          line_end = limit;  // the last line, without a newline
        else
          break;
      }
      std::uint64_t first = 0, last = 0;
      const char* q = parse_hex(p, line_end, first);
      if (q != nullptr && q < line_end && *q == '-') q = parse_hex(q + 1, line_end, last);
      if (q != nullptr && line_end - q >= 4 && *q == ' ') {
        if (first >= end) {
          done = true;
          break;
        }
        if (last > begin) {
          if (static_cast<std::size_t>(found) == capacity) {
            failed = true;
            done = true;
            break;
          }
          out[found++] = {std::max<std::uintptr_t>(first, begin),
                          std::min<std::uintptr_t>(last, end),
                          (q[1] == 'r' ? PROT_READ : 0) | (q[2] == 'w' ? PROT_WRITE : 0) |
                              (q[3] == 'x' ? PROT_EXEC : 0)};
        }
      }
      if (line_end == limit) {
        p = limit;
        break;
      }
      p = line_end + 1;
    }
    if (n == 0) break;
    const std::size_t rest = static_cast<std::size_t>(limit - p);
    if (rest == sizeof buffer) {  // a line longer than the buffer: not /proc/self/maps
      failed = true;
      break;
    }
    std::memmove(buffer, p, rest);
    filled = rest;
  }
  raw_syscall(SYS_close, fd);
  return failed ? -1 : found;
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
