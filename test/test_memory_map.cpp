// /proc/self/maps as read_memory_map() parses it: addresses, protections, offsets and paths,
// including paths with spaces and deleted files.
#include "platform/memory_map.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

using namespace zpoline::detail;

namespace {

// A page of a new file mapped at file offset 4096, with `protection`; the file is removed at once
// if `unlink_it`.
void* map_file(const std::string& path, int protection, bool unlink_it) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, 2 * 4096) == 0);
  void* address = mmap(nullptr, 4096, protection, MAP_PRIVATE, fd, 4096);
  REQUIRE(address != MAP_FAILED);
  close(fd);
  if (unlink_it) unlink(path.c_str());
  return address;
}

}  // namespace

TEST_CASE("mappings are listed with their protection, offset and path") {
  char directory_template[] = "/tmp/zpoline-maps-XXXXXX";
  const char* directory = mkdtemp(directory_template);
  REQUIRE(directory != nullptr);
  const std::string spaced = std::string(directory) + "/a file with  spaces";
  const std::string deleted = std::string(directory) + "/deleted";
  void* first = map_file(spaced, PROT_READ, false);
  void* second = map_file(deleted, PROT_READ | PROT_EXEC, true);
  void* anonymous = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(anonymous != MAP_FAILED);

  const std::vector<Mapping> map = read_memory_map();
  REQUIRE(map.size() > 5);
  for (std::size_t i = 1; i < map.size(); ++i) CHECK(map[i - 1].end <= map[i].begin);

  const Mapping* mapping = find_mapping(map, reinterpret_cast<std::uintptr_t>(first) + 10);
  REQUIRE(mapping != nullptr);
  CHECK(mapping->begin == reinterpret_cast<std::uintptr_t>(first));
  CHECK(mapping->protection == PROT_READ);
  CHECK(mapping->offset == 4096);
  CHECK(mapping->path == spaced);

  mapping = find_mapping(map, reinterpret_cast<std::uintptr_t>(second));
  REQUIRE(mapping != nullptr);
  CHECK(mapping->protection == (PROT_READ | PROT_EXEC));
  CHECK(mapping->path == deleted + " (deleted)");

  mapping = find_mapping(map, reinterpret_cast<std::uintptr_t>(anonymous));
  REQUIRE(mapping != nullptr);
  CHECK((mapping->protection & (PROT_READ | PROT_WRITE)) == (PROT_READ | PROT_WRITE));
  CHECK(mapping->path.empty());

  const Mapping* stack = nullptr;
  for (const Mapping& entry : map) {
    if (entry.path == "[stack]") stack = &entry;
  }
  REQUIRE(stack != nullptr);
  const int local = 0;
  CHECK(find_mapping(map, reinterpret_cast<std::uintptr_t>(&local)) == stack);
  CHECK(find_mapping(map, 0) == nullptr);

  munmap(first, 4096);
  munmap(second, 4096);
  munmap(anonymous, 4096);
  unlink(spaced.c_str());
  rmdir(directory);
}

TEST_CASE("file mappings name their file's device and inode") {
  char path[] = "/tmp/zpoline-maps-inode-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, 3 * 4096) == 0);
  void* first = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
  void* second = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 2 * 4096);
  REQUIRE(first != MAP_FAILED);
  REQUIRE(second != MAP_FAILED);
  void* anonymous = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(anonymous != MAP_FAILED);
  close(fd);

  const std::vector<Mapping> map = read_memory_map();
  const Mapping* a = find_mapping(map, reinterpret_cast<std::uintptr_t>(first));
  const Mapping* b = find_mapping(map, reinterpret_cast<std::uintptr_t>(second));
  const Mapping* c = find_mapping(map, reinterpret_cast<std::uintptr_t>(anonymous));
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  REQUIRE(c != nullptr);
  // Not compared with stat(): on overlayfs the two may name different devices.
  CHECK(a->inode != 0);
  CHECK(a->device == b->device);
  CHECK(a->inode == b->inode);
  CHECK(b->offset == 2 * 4096);
  CHECK(c->device == 0);
  CHECK(c->inode == 0);

  munmap(first, 4096);
  munmap(second, 4096);
  munmap(anonymous, 4096);
  unlink(path);
}

TEST_CASE("a file's data ends in the page holding its last byte") {
  Mapping mapping;
  mapping.begin = 0x10000;
  mapping.end = 0x20000;  // 16 pages
  mapping.offset = 0;
  CHECK(file_data_end(mapping, 0) == 0x10000);
  CHECK(file_data_end(mapping, 1) == 0x11000);
  CHECK(file_data_end(mapping, 0x1000) == 0x11000);
  CHECK(file_data_end(mapping, 0x1001) == 0x12000);
  CHECK(file_data_end(mapping, 0x10000) == 0x20000);
  CHECK(file_data_end(mapping, 0x100000) == 0x20000);
  CHECK(file_data_end(mapping, ~std::uint64_t{0}) == 0x20000);
  // A mapping of the file from offset 0x3000.
  mapping.offset = 0x3000;
  CHECK(file_data_end(mapping, 0x3001) == 0x11000);
  CHECK(file_data_end(mapping, 0x3000) == 0x10000);
  CHECK(file_data_end(mapping, 0x1000) == 0x10000);
  CHECK(file_data_end(mapping, 0x13000) == 0x20000);
}

TEST_CASE("the page holding a file's last byte can be read to its end") {
  char path[] = "/tmp/zpoline-maps-end-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, 4096 + 10) == 0);
  // Four pages of a file of two (the second one partly): pages 3 and 4 would raise SIGBUS.
  auto* memory =
      static_cast<unsigned char*>(mmap(nullptr, 4 * 4096, PROT_READ, MAP_PRIVATE, fd, 0));
  REQUIRE(memory != MAP_FAILED);
  close(fd);
  const std::vector<Mapping> map = read_memory_map();
  const Mapping* mapping = find_mapping(map, reinterpret_cast<std::uintptr_t>(memory));
  REQUIRE(mapping != nullptr);
  REQUIRE(mapping->end == reinterpret_cast<std::uintptr_t>(memory) + 4 * 4096);
  const std::uintptr_t end = file_data_end(*mapping, 4096 + 10);
  CHECK(end == reinterpret_cast<std::uintptr_t>(memory) + 2 * 4096);
  CHECK(reinterpret_cast<const unsigned char*>(end)[-1] == 0);  // zeros after the last byte
  munmap(memory, 4 * 4096);
  unlink(path);
}

namespace {

bool same_mapping(const Mapping& a, const Mapping& b) {
  return a.begin == b.begin && a.end == b.end && a.protection == b.protection &&
         a.offset == b.offset && a.device == b.device && a.inode == b.inode && a.path == b.path;
}

bool same_map(const std::vector<Mapping>& a, const std::vector<Mapping>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!same_mapping(a[i], b[i])) return false;
  }
  return true;
}

// The mappings of `map` that overlap [begin, end), but [vsyscall], which the kernel's answer to
// a query leaves out.
std::vector<Mapping> overlapping(const std::vector<Mapping>& map, std::uintptr_t begin,
                                 std::uintptr_t end) {
  std::vector<Mapping> part;
  for (const Mapping& mapping : map) {
    if (mapping.path == "[vsyscall]") continue;
    if (mapping.begin < end && begin < mapping.end) part.push_back(mapping);
  }
  return part;
}

}  // namespace

TEST_CASE("a range of the map, asked of the kernel, is what /proc/self/maps lists for it") {
  char directory_template[] = "/tmp/zpoline-maps-range-XXXXXX";
  const char* directory = mkdtemp(directory_template);
  REQUIRE(directory != nullptr);
  const std::string spaced = std::string(directory) + "/a file with  spaces";
  const std::string deleted = std::string(directory) + "/deleted";
  void* first = map_file(spaced, PROT_READ, false);
  void* second = map_file(deleted, PROT_READ | PROT_EXEC, true);
  const auto at = [](void* address) { return reinterpret_cast<std::uintptr_t>(address); };
  // [the whole address space, one file page, the deleted file's page and beyond, a range that
  // starts inside a mapping, a range inside page 0's neighbourhood with nothing mapped]
  const std::pair<std::uintptr_t, std::uintptr_t> ranges[] = {
      {0, ~std::uintptr_t{0}},
      {at(first), at(first) + 4096},
      {at(second), at(second) + (1ul << 30)},
      {at(first) + 100, at(first) + 200},
      {0x1000, 0x2000},
  };
  for (const auto& range : ranges) {
    // Named copies, not structured bindings: CAPTURE's lambda cannot refer to those in C++17 or
    // clang 14.
    const std::uintptr_t begin = range.first, end = range.second;
    // The map may change between two reads (the allocator maps memory): retry until a read from
    // the kernel lies between two equal reads of the file.
    bool compared = false;
    for (int attempt = 0; attempt < 20 && !compared; ++attempt) {
      const std::vector<Mapping> before = read_memory_map();
      bool all = false;
      const std::vector<Mapping> part = read_memory_map_in(begin, end, all);
      const std::vector<Mapping> after = read_memory_map();
      if (!same_map(before, after)) continue;
      compared = true;
      CAPTURE(begin);
      CAPTURE(end);
      CHECK(same_map(part, all ? before : overlapping(before, begin, end)));
    }
    CHECK(compared);
  }
  munmap(first, 4096);
  munmap(second, 4096);
  unlink(spaced.c_str());
  rmdir(directory);
}
