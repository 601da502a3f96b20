// What install() rewrites, image by image: the byte search comes first, and an image without a
// single candidate pair costs no function table and no decoding. Installs a hook, so each case
// runs in its own process.
#include <doctest/doctest.h>
#include <elf.h>
#include <link.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "rewriting/rewriter.hpp"
#include "rewriting/site_scanner.hpp"
#include "support.hpp"

using namespace zpoline::detail;

namespace {

struct ImageCount {
  std::size_t images = 0;
  std::size_t with_candidates = 0;
};

// Counts the images install() scans (not [vdso], which it skips) and those holding a candidate.
int count_image(dl_phdr_info* info, std::size_t, void* data) {
  auto* count = static_cast<ImageCount*>(data);
  if (info->dlpi_name != nullptr && std::strstr(info->dlpi_name, "vdso") != nullptr) return 0;
  ++count->images;
  std::vector<std::uintptr_t> candidates;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[i];
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
    const std::uintptr_t begin = info->dlpi_addr + segment.p_vaddr;
    find_candidates(std::span(reinterpret_cast<const std::uint8_t*>(begin), segment.p_memsz), begin,
                    candidates);
  }
  if (!candidates.empty()) ++count->with_candidates;
  return 0;
}

}  // namespace

TEST_CASE("only_images_with_candidates_get_a_function_table") {
  ImageCount count;
  dl_iterate_phdr(count_image, &count);
  // libstdc++ holds no 0f 05 / 0f 34 byte pair at all.
  REQUIRE(count.with_candidates < count.images);
  REQUIRE(function_tables_built() == 0);

  auto session =
      zpoline_test::install_or_skip([](zpoline::Syscall& call) { return call.forward(); });
  CHECK(session.stats().images.size() == count.images);
  CHECK(function_tables_built() == count.with_candidates);
  for (const zpoline::ImageStats& image : session.stats().images) {
    CAPTURE(image.path);
    if (image.path.find("libstdc++") == std::string::npos) continue;
    CHECK(image.bytes_decoded == 0);
    CHECK(image.sites_rewritten == 0);
    CHECK(image.code_bytes > 0);
  }
}
