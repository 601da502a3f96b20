// The scan cache: what the scanner decided about an ELF file's executable segments, kept on disk
// so that the next process that maps the same file skips the byte search, the function table
// and the decoding (Options::scan_cache_directory, ZPOLINE_SCAN_CACHE).
//
// Start-up is where install() shows: a short program under the preload shim spends most of its
// added time deciding the same sites of libc, ld.so and its own executable as the previous run
// did. The cache holds the scanner's decisions, not patches: exclusions, the registry and the
// patching run as without it.
//
// An entry is used only for the very file it was made from and by the very build of the library
// that made it: its key is the mapped file's device and inode (which the path must still name),
// size, modification time and build ID, and the build ID of the object the library is linked
// into. On use every site must still hold `0f 05` or `0f 34`, or the entry is dropped and the
// image scanned. A directory another user could write to is not used at all.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "platform/memory_map.hpp"
#include "rewriting/site_scanner.hpp"

namespace zpoline::detail {

// The scanner's decisions for one executable segment, as offsets from its start.
struct CachedSegment {
  std::uint64_t vaddr = 0;          // p_vaddr of the segment
  std::uint64_t length = 0;         // bytes scanned from its start
  std::vector<SiteDecision> sites;  // addresses relative to the segment's start
};

struct CachedImage {
  std::vector<CachedSegment> segments;
};

// What identifies a mapped ELF file; built by scan_cache_key() from memory and the file system.
struct ScanCacheKey {
  std::string text;       // all of it, written into the entry and compared on use
  std::string file_name;  // the entry's name in the directory (a hash of `text`)
};

// The key of the image loaded at `base` whose first mapping is `mapping` (dev and inode from
// /proc/self/maps), with its program headers at `headers` in memory; nothing if the path no
// longer names that file or the directory is unusable.
std::optional<ScanCacheKey> scan_cache_key(const std::string& directory, const Mapping& mapping,
                                           std::uintptr_t base, const void* headers,
                                           unsigned header_count);

// The entry for `key` in `directory`, if there is a well-formed one.
std::optional<CachedImage> load_scan_cache(const std::string& directory, const ScanCacheKey& key);

// Writes the entry (to a temporary file renamed into place: readers see all of it or none).
// Failures are ignored: the cache only saves time.
void store_scan_cache(const std::string& directory, const ScanCacheKey& key,
                      const CachedImage& image);

// Whether `directory` can hold the cache: created (mode 0700) if missing, a directory owned by
// this user that no one else may write to. Checked once per directory and process.
bool usable_scan_cache_directory(const std::string& directory);

}  // namespace zpoline::detail
