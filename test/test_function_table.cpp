#include "rewriting/function_table.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace zpoline::detail {
namespace {

// A function with a known start address for the executable test. noinline keeps it a
// real function; used keeps it (and its symbol) from being dropped.
__attribute__((noinline, used)) int function_defined_in_test(int value) {
  int accumulator = 0;
  for (int i = 0; i < value; ++i) accumulator += i * value;
  return accumulator;
}

}  // namespace
}  // namespace zpoline::detail

// A function without CFI, so no FDE describes it: only the symbol table can find it.
extern "C" void function_table_test_without_fde();
asm(R"(
  .text
  .globl function_table_test_without_fde
  .type function_table_test_without_fde, @function
function_table_test_without_fde:
  nop
  nop
  ret
  .size function_table_test_without_fde, .-function_table_test_without_fde
)");

namespace zpoline::detail {
namespace {

// A copy of one image's dl_phdr_info; dlpi_phdr stays valid while the image is loaded.
struct LoadedImage {
  dl_phdr_info info{};
  std::string path;
};

// Finds the first image whose name contains `name_part`; an empty `name_part` selects
// the main executable (whose dlpi_name is empty).
LoadedImage find_image(const std::string& name_part) {
  struct Search {
    std::string name_part;
    LoadedImage found;
    bool done = false;
  } search{name_part, {}, false};
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        auto* search = static_cast<Search*>(data);
        const std::string name = info->dlpi_name != nullptr ? info->dlpi_name : "";
        const bool match = search->name_part.empty()
                               ? name.empty()
                               : name.find(search->name_part) != std::string::npos;
        if (!match) return 0;
        search->found.info = *info;
        search->found.path = name;
        search->done = true;
        return 1;
      },
      &search);
  REQUIRE(search.done);
  if (search.found.path.empty()) {
    char buffer[4096];
    const ssize_t length = readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
    REQUIRE(length > 0);
    search.found.path.assign(buffer, static_cast<std::size_t>(length));
  }
  return search.found;
}

void check_sorted_and_disjoint(const std::vector<FunctionRange>& ranges) {
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    REQUIRE(ranges[i].begin < ranges[i].end);
    if (i > 0) REQUIRE(ranges[i - 1].end <= ranges[i].begin);
  }
}

// Checks that the named libc symbol starts a function range, using dladdr as the reference.
// The lookup goes through libc's own handle because sanitizers interpose many libc functions.
void check_symbol_starts_range(const FunctionTable& table, const std::string& name) {
  CAPTURE(name);
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  REQUIRE(libc != nullptr);
  void* address = dlsym(libc, name.c_str());
  dlclose(libc);
  REQUIRE(address != nullptr);
  Dl_info symbol_info{};
  REQUIRE(dladdr(address, &symbol_info) != 0);
  REQUIRE(symbol_info.dli_saddr == address);
  const FunctionRange* range = table.find(reinterpret_cast<std::uintptr_t>(address));
  REQUIRE(range != nullptr);
  CHECK(range->begin == reinterpret_cast<std::uintptr_t>(symbol_info.dli_saddr));
}

std::set<std::pair<std::uintptr_t, std::uintptr_t>> as_set(const std::vector<FunctionRange>& v) {
  std::set<std::pair<std::uintptr_t, std::uintptr_t>> result;
  for (const FunctionRange& range : v) result.emplace(range.begin, range.end);
  return result;
}

bool inside_executable_segment(const dl_phdr_info& info, std::uintptr_t begin, std::uintptr_t end) {
  for (int i = 0; i < info.dlpi_phnum; ++i) {
    const ElfW(Phdr)& header = info.dlpi_phdr[i];
    if (header.p_type != PT_LOAD || !(header.p_flags & PF_X)) continue;
    const std::uintptr_t segment_begin = info.dlpi_addr + header.p_vaddr;
    if (begin >= segment_begin && end <= segment_begin + header.p_memsz) return true;
  }
  return false;
}

TEST_CASE("libc functions come from .eh_frame and symbols") {
  const LoadedImage libc = find_image("libc.so.6");

  const auto start = std::chrono::steady_clock::now();
  const FunctionTable table = collect_functions(libc.info, libc.path);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  MESSAGE("libc: ", table.functions.size(), " ranges, from_eh_frame=", table.from_eh_frame,
          " from_symbols=", table.from_symbols, " in ",
          std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count(), " us");

  REQUIRE(!table.functions.empty());
  check_sorted_and_disjoint(table.functions);
  CHECK(table.from_eh_frame > 1000);
  for (const FunctionRange& range : table.functions) {
    REQUIRE(inside_executable_segment(libc.info, range.begin, range.end));
  }

  for (const char* name : {"getpid", "write", "syscall", "memccpy", "bcopy", "swab", "qsort"}) {
    check_symbol_starts_range(table, name);
  }
  // IFUNC-selected implementations have no exported symbol, but must still be covered.
  void* libc_handle = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  REQUIRE(libc_handle != nullptr);
  for (const std::string name : {"memcpy", "memmove", "strlen"}) {
    CAPTURE(name);
    CHECK(table.find(reinterpret_cast<std::uintptr_t>(dlsym(libc_handle, name.c_str()))) !=
          nullptr);
  }
  dlclose(libc_handle);
  CHECK(table.find(0) == nullptr);
  CHECK(table.find(table.functions.back().end) == nullptr);
  CHECK(table.find(table.functions.front().begin) == &table.functions.front());
}

TEST_CASE("a static function of the test executable is found at its exact start") {
  const LoadedImage executable = find_image("");
  const FunctionTable table = collect_functions(executable.info, executable.path);
  check_sorted_and_disjoint(table.functions);
  const auto address = reinterpret_cast<std::uintptr_t>(&function_defined_in_test);
  const FunctionRange* range = table.find(address);
  REQUIRE(range != nullptr);
  CHECK(range->begin == address);
  CHECK(function_defined_in_test(3) == 9);

  CHECK(table.from_symbols >= 1);
  const auto without_fde = reinterpret_cast<std::uintptr_t>(&function_table_test_without_fde);
  const FunctionRange* symbol_only = table.find(without_fde);
  REQUIRE(symbol_only != nullptr);
  CHECK(symbol_only->begin == without_fde);
  CHECK(symbol_only->end == without_fde + 3);
  // Without the file only .eh_frame remains, which knows nothing of that function.
  const FunctionTable without_file = collect_functions(executable.info, "");
  CHECK(without_file.find(without_fde) == nullptr);
  CHECK(without_file.find(address) != nullptr);
}

TEST_CASE("the .eh_frame_hdr search table agrees with a walk of .eh_frame") {
  for (const char* image : {"libc.so.6", "ld-linux", ""}) {
    CAPTURE(image);
    const LoadedImage loaded = find_image(image);
    const std::vector<FunctionRange> from_table = eh_frame_ranges_from_search_table(loaded.info);
    const std::vector<FunctionRange> from_walk = walk_eh_frame(loaded.info);
    CHECK(!from_table.empty());
    CHECK(from_table.size() == from_walk.size());
    CHECK(as_set(from_table) == as_set(from_walk));
  }
}

TEST_CASE("the .eh_frame walk agrees with readelf") {
  const LoadedImage libc = find_image("libc.so.6");
  const std::string command = "readelf --debug-dump=frames '" + libc.path + "' 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::set<std::pair<std::uintptr_t, std::uintptr_t>> expected;
  char line[1024];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    const char* pc = std::strstr(line, " FDE cie=") != nullptr ? std::strstr(line, "pc=") : nullptr;
    unsigned long long begin = 0;
    unsigned long long end = 0;
    if (pc == nullptr || std::sscanf(pc, "pc=%llx..%llx", &begin, &end) != 2) continue;
    const std::uintptr_t run_begin = libc.info.dlpi_addr + begin;
    const std::uintptr_t run_end = libc.info.dlpi_addr + end;
    if (begin < end && inside_executable_segment(libc.info, run_begin, run_end)) {
      expected.emplace(run_begin, run_end);
    }
  }
  // readelf's exit status is 1 for this libc even though the dump is complete, so only the
  // output itself decides whether readelf was usable.
  pclose(pipe);
  if (expected.empty()) {
    MESSAGE("readelf unavailable or unreadable output; skipping comparison");
    return;
  }
  CHECK(expected.size() > 1000);
  CHECK(as_set(walk_eh_frame(libc.info)) == expected);
}

TEST_CASE("unusable paths give .eh_frame ranges only") {
  const LoadedImage libc = find_image("libc.so.6");
  const LoadedImage executable = find_image("");
  const FunctionTable reference = collect_functions(libc.info, "");
  CHECK(reference.from_symbols == 0);
  CHECK(reference.from_eh_frame > 1000);

  char garbage_path[] = "/tmp/function_table_garbageXXXXXX";
  const int fd = mkstemp(garbage_path);
  REQUIRE(fd >= 0);
  // An ELF identification followed by garbage: passes the magic check, fails later.
  std::vector<unsigned char> garbage(300, 0xa5);
  std::memcpy(garbage.data(), ELFMAG, SELFMAG);
  garbage[EI_CLASS] = ELFCLASS64;
  garbage[EI_DATA] = ELFDATA2LSB;
  REQUIRE(write(fd, garbage.data(), garbage.size()) == static_cast<ssize_t>(garbage.size()));
  close(fd);

  // The executable's path is a valid ELF file, but not the image libc.info describes.
  for (const std::string& path :
       {std::string("/nonexistent/libc.so.6"), std::string("/"), std::string("/dev/null"),
        std::string("/etc/passwd"), std::string(garbage_path), executable.path}) {
    CAPTURE(path);
    const FunctionTable table = collect_functions(libc.info, path);
    CHECK(table.from_symbols == 0);
    CHECK(table.from_eh_frame == reference.from_eh_frame);
    CHECK(table.functions.size() == reference.functions.size());
  }
  unlink(garbage_path);
}

// Random bytes described as an image whose .eh_frame_hdr and .eh_frame live in a heap
// buffer. Under AddressSanitizer any read outside the buffer is reported.
TEST_CASE("malformed .eh_frame data does not crash") {
  std::mt19937_64 random(12345);
  const std::uint8_t encodings[] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x09, 0x0a, 0x0b, 0x0c,
                                    0x1b, 0x3b, 0x13, 0x33, 0x1c, 0x50, 0x20, 0xff, 0x9b};
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::vector<std::uint8_t> buffer(64 + random() % 512);
    for (auto& byte : buffer) byte = static_cast<std::uint8_t>(random());
    const std::size_t header_offset = random() % 32;
    const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(buffer.data());
    // A plausible header most of the time, so parsing gets past the first bytes.
    if (iteration % 4 != 0) {
      buffer[header_offset] = 1;
      buffer[header_offset + 1] = encodings[random() % std::size(encodings)];
      buffer[header_offset + 2] = encodings[random() % std::size(encodings)];
      buffer[header_offset + 3] = encodings[random() % std::size(encodings)];
      if (iteration % 2 == 0) {
        // eh_frame_ptr as pcrel|sdata4 pointing somewhere in the buffer.
        buffer[header_offset + 1] = 0x1b;
        const auto offset = static_cast<std::int32_t>(random() % buffer.size()) -
                            static_cast<std::int32_t>(header_offset + 4);
        std::memcpy(&buffer[header_offset + 4], &offset, sizeof(offset));
      }
    }
    ElfW(Phdr) headers[2]{};
    headers[0].p_type = PT_LOAD;
    headers[0].p_flags = PF_R | PF_X;
    headers[0].p_vaddr = base;
    headers[0].p_filesz = headers[0].p_memsz = buffer.size();
    headers[1].p_type = PT_GNU_EH_FRAME;
    headers[1].p_flags = PF_R;
    headers[1].p_vaddr = base + header_offset;
    headers[1].p_memsz = buffer.size() - header_offset + (iteration % 3 == 0 ? 100 : 0);
    dl_phdr_info info{};
    info.dlpi_addr = 0;
    info.dlpi_name = "";
    info.dlpi_phdr = headers;
    info.dlpi_phnum = 2;

    const FunctionTable table = collect_functions(info, "");
    check_sorted_and_disjoint(table.functions);
    for (const FunctionRange& range : table.functions) {
      REQUIRE(range.begin >= base);
      REQUIRE(range.end <= base + buffer.size());
    }
    walk_eh_frame(info);
  }
}

}  // namespace
}  // namespace zpoline::detail

namespace zpoline::detail {
namespace {

// libc's real .eh_frame_hdr and .eh_frame copied to the heap and then randomly corrupted:
// this reaches much deeper into CIE/FDE parsing than random bytes do. All encodings in
// them are position-relative, so the copy stays valid as long as the code it describes
// is declared at the same distance (an execute-only segment, which is never read).
TEST_CASE("corrupted copies of libc's .eh_frame do not crash") {
  const LoadedImage libc = find_image("libc.so.6");
  const ElfW(Phdr)* eh_frame_hdr = nullptr;
  const ElfW(Phdr)* container = nullptr;
  const ElfW(Phdr)* text = nullptr;
  for (int i = 0; i < libc.info.dlpi_phnum; ++i) {
    const ElfW(Phdr)& header = libc.info.dlpi_phdr[i];
    if (header.p_type == PT_GNU_EH_FRAME) eh_frame_hdr = &header;
    if (header.p_type == PT_LOAD && (header.p_flags & PF_X)) text = &header;
  }
  REQUIRE(eh_frame_hdr != nullptr);
  REQUIRE(text != nullptr);
  for (int i = 0; i < libc.info.dlpi_phnum; ++i) {
    const ElfW(Phdr)& header = libc.info.dlpi_phdr[i];
    if (header.p_type == PT_LOAD && eh_frame_hdr->p_vaddr >= header.p_vaddr &&
        eh_frame_hdr->p_vaddr < header.p_vaddr + header.p_filesz) {
      container = &header;
    }
  }
  REQUIRE(container != nullptr);

  const std::size_t size = container->p_vaddr + container->p_filesz - eh_frame_hdr->p_vaddr;
  const auto* original =
      reinterpret_cast<const std::uint8_t*>(libc.info.dlpi_addr + eh_frame_hdr->p_vaddr);
  const std::vector<std::uint8_t> pristine(original, original + size);
  const std::size_t reference_count = as_set(eh_frame_ranges_from_search_table(libc.info)).size();

  std::mt19937_64 random(777);
  for (int iteration = 0; iteration < 200; ++iteration) {
    std::vector<std::uint8_t> buffer = pristine;
    const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(buffer.data());
    const std::uintptr_t bias = base - eh_frame_hdr->p_vaddr;
    const int corruptions = iteration == 0 ? 0 : 1 + static_cast<int>(random() % 64);
    for (int i = 0; i < corruptions; ++i) {
      // Favour the headers and the start of .eh_frame, where the structure is denser.
      const std::size_t limit = (i % 2 == 0) ? std::min<std::size_t>(size, 4096) : size;
      buffer[random() % limit] = static_cast<std::uint8_t>(random());
    }
    ElfW(Phdr) headers[3]{};
    headers[0] = *text;
    headers[0].p_flags = PF_X;  // declared, never read: it is not mapped at this bias
    headers[1].p_type = PT_LOAD;
    headers[1].p_flags = PF_R;
    headers[1].p_vaddr = eh_frame_hdr->p_vaddr;
    headers[1].p_filesz = headers[1].p_memsz = size;
    headers[2] = *eh_frame_hdr;
    dl_phdr_info info{};
    info.dlpi_addr = bias;
    info.dlpi_name = "";
    info.dlpi_phdr = headers;
    info.dlpi_phnum = 3;

    const FunctionTable table = collect_functions(info, "");
    check_sorted_and_disjoint(table.functions);
    const std::vector<FunctionRange> walked = walk_eh_frame(info);
    if (iteration == 0) {
      CHECK(table.from_eh_frame == reference_count);
      CHECK(as_set(walked).size() == reference_count);
    }
  }
}

}  // namespace
}  // namespace zpoline::detail
