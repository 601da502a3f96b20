#include "rewriting/rewriter.hpp"

#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <span>

#include "dispatch/frame.hpp"
#include "platform/memory_map.hpp"
#include "rewriting/function_table.hpp"
#include "rewriting/patcher.hpp"
#include "rewriting/site_registry.hpp"
#include "rewriting/site_scanner.hpp"

namespace zpoline::detail {
namespace {

struct Image {
  std::string path;
  dl_phdr_info info;
};

int collect_image(dl_phdr_info* info, std::size_t, void* data) {
  auto* images = static_cast<std::vector<Image>*>(data);
  images->push_back({info->dlpi_name ? info->dlpi_name : "", *info});
  return 0;
}

std::string executable_path() {
  char buffer[4096];
  const ssize_t n = readlink("/proc/self/exe", buffer, sizeof buffer - 1);
  return n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string();
}

bool overlaps(std::uintptr_t begin, std::uintptr_t end, const AddressRange& range) {
  return begin < range.end && range.begin < end;
}

// Every site rewritten in this process with its original bytes, for restore_rewritten_code().
std::vector<Patch>& rewritten_sites() {
  static std::vector<Patch> sites;
  return sites;
}

void rewrite_image(const Image& image, const RewriteOptions& options,
                   const std::vector<Mapping>& map, ImageStats& stats) {
  const auto own_begin = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_begin);
  const auto own_end = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_end);
  FunctionTable functions;
  bool functions_loaded = false;
  std::vector<Patch> patches;

  for (int i = 0; i < image.info.dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = image.info.dlpi_phdr[i];
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
    const std::uintptr_t begin = image.info.dlpi_addr + segment.p_vaddr;
    const std::uintptr_t end = begin + segment.p_memsz;
    stats.code_bytes += segment.p_memsz;
    if (!functions_loaded) {
      functions = collect_functions(image.info, image.path);
      functions_loaded = true;
    }
    const ScanResult scan =
        scan_code(std::span(reinterpret_cast<const std::uint8_t*>(begin), end - begin), begin,
                  functions.functions);
    stats.bytes_decoded += scan.bytes_decoded;
    for (const SiteDecision& site : scan.sites) {
      if (site.address >= own_begin && site.address < own_end) continue;  // our raw syscalls
      const bool excluded =
          std::any_of(options.exclude_ranges.begin(), options.exclude_ranges.end(),
                      [&](const AddressRange& range) {
                        return overlaps(site.address, site.address + 2, range);
                      });
      if (excluded) {
        ++stats.skipped_excluded;
        continue;
      }
      switch (site.kind) {
        case SiteKind::rewritable: {
          const auto* bytes = reinterpret_cast<const std::uint8_t*>(site.address);
          const std::uint16_t original = static_cast<std::uint16_t>(bytes[0] | (bytes[1] << 8));
          patches.push_back({site.address, original, kCallRaxBytes});
          break;
        }
        case SiteKind::prefixed:
          ++stats.skipped_prefixed;
          break;
        case SiteKind::red_zone:
          ++stats.skipped_red_zone;
          break;
        case SiteKind::undecodable:
          ++stats.skipped_undecodable;
          break;
      }
    }
  }
  for (const Patch& patch : patches) site_registry().add(patch.address);
  const PatchOutcome outcome = apply_patches(patches, map);
  stats.sites_rewritten += outcome.written;
  stats.skipped_undecodable += outcome.mismatched;
  auto& record = rewritten_sites();
  record.insert(record.end(), patches.begin(), patches.end());
}

bool is_special_image(const Image& image, const std::vector<Mapping>& map) {
  for (int i = 0; i < image.info.dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = image.info.dlpi_phdr[i];
    if (segment.p_type != PT_LOAD) continue;
    const Mapping* mapping = find_mapping(map, image.info.dlpi_addr + segment.p_vaddr);
    if (mapping && !mapping->path.empty() && mapping->path.front() == '[') return true;  // [vdso]
  }
  return false;
}

}  // namespace

bool path_matches_exclusion(const std::string& path, const std::string& entry) {
  if (entry.find('/') != std::string::npos) return path == entry;
  const std::size_t slash = path.rfind('/');
  return (slash == std::string::npos ? path : path.substr(slash + 1)) == entry;
}

InstallStats rewrite_loaded_code(const RewriteOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  InstallStats stats;
  std::vector<Image> images;
  dl_iterate_phdr(collect_image, &images);
  const std::vector<Mapping> map = read_memory_map();

  for (Image& image : images) {
    if (is_special_image(image, map)) continue;
    if (image.path.empty()) image.path = executable_path();
    const auto image_start = std::chrono::steady_clock::now();
    ImageStats image_stats;
    image_stats.path = image.path;
    image_stats.base = image.info.dlpi_addr;
    image_stats.excluded = std::any_of(
        options.exclude_paths.begin(), options.exclude_paths.end(),
        [&](const std::string& entry) { return path_matches_exclusion(image.path, entry); });
    if (!image_stats.excluded) rewrite_image(image, options, map, image_stats);
    image_stats.time = std::chrono::steady_clock::now() - image_start;
    stats.images.push_back(std::move(image_stats));
  }
  stats.total_time = std::chrono::steady_clock::now() - start;
  return stats;
}

void restore_rewritten_code() {
  auto& record = rewritten_sites();
  std::vector<Patch> restores;
  restores.reserve(record.size());
  const std::vector<Mapping> map = read_memory_map();
  for (const Patch& patch : record) {
    // Skip sites whose library has been unloaded since.
    const Mapping* mapping = find_mapping(map, patch.address);
    if (mapping == nullptr || !(mapping->protection & PROT_EXEC)) continue;
    restores.push_back({patch.address, patch.replacement, patch.expected});
  }
  std::sort(restores.begin(), restores.end(),
            [](const Patch& a, const Patch& b) { return a.address < b.address; });
  apply_patches(restores, map);
  record.clear();
}

}  // namespace zpoline::detail
