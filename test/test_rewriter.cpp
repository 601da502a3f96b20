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

#include "dispatch/frame.hpp"
#include "rewriting/rewriter.hpp"
#include "rewriting/site_scanner.hpp"
#include "support.hpp"

using namespace zpoline::detail;

namespace {

struct ImageCount {
  std::size_t images = 0;
  std::size_t with_candidates = 0;
  // The image holding the library's own system calls (this test's executable), and whether it
  // has candidates besides them.
  std::uintptr_t own_image_base = 0;
  bool own_image_has_others = false;
};

// Counts the images install() scans (not [vdso], which it skips) and those holding a candidate
// other than the library's own system calls, which the rewriter drops before deciding anything.
int count_image(dl_phdr_info* info, std::size_t, void* data) {
  auto* count = static_cast<ImageCount*>(data);
  if (info->dlpi_name != nullptr && std::strstr(info->dlpi_name, "vdso") != nullptr) return 0;
  ++count->images;
  const auto own_begin = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_begin);
  const auto own_end = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_end);
  std::vector<std::uintptr_t> candidates;
  bool holds_own = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[i];
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
    const std::uintptr_t begin = info->dlpi_addr + segment.p_vaddr;
    holds_own = holds_own || (own_begin >= begin && own_begin < begin + segment.p_memsz);
    find_candidates(std::span(reinterpret_cast<const std::uint8_t*>(begin), segment.p_memsz), begin,
                    candidates);
  }
  std::erase_if(candidates, [&](std::uintptr_t at) { return at >= own_begin && at < own_end; });
  if (!candidates.empty()) ++count->with_candidates;
  if (holds_own) {
    count->own_image_base = info->dlpi_addr;
    count->own_image_has_others = !candidates.empty();
  }
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
  REQUIRE(count.own_image_base != 0);
  for (const zpoline::ImageStats& image : session.stats().images) {
    CAPTURE(image.path);
    // The library's own system calls are no candidates: they are not decoded.
    if (image.base == count.own_image_base && !count.own_image_has_others) {
      CHECK(image.bytes_decoded == 0);
      CHECK(image.sites_rewritten == 0);
    }
    if (image.path.find("libstdc++") == std::string::npos) continue;
    CHECK(image.bytes_decoded == 0);
    CHECK(image.sites_rewritten == 0);
    CHECK(image.code_bytes > 0);
  }
}
