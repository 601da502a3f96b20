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
