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
// that made it: its key is the mapped file's device and inode (which the path the rewriter reads
// symbols from must name too), size, modification and change times and build ID, and the build
// ID of the object the library is linked into. It is written only from code equal to the file's
// bytes (not code patched already, by an earlier install or anyone else), carries a checksum, and
// on use every site must still hold `0f 05` or `0f 34`. The directory is opened one component at a
// time without following symbolic links, and used only if this user owns it and no one else may
// write to it; set-user-ID programs ignore ZPOLINE_SCAN_CACHE (install.cpp).
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
  std::vector<SiteDecision> sites;  // addresses relative to the segment's start; `previous` is
                                    // one more than its offset, 0 for none
};

struct CachedImage {
  std::vector<CachedSegment> segments;
};

// The cache directory, open for one install (or one late image): created if missing, component by
// component, refusing symbolic links; unusable (fd() < 0) if another user owns it, others may
// write to it, or the library has no build ID of its own.
class ScanCacheDirectory {
 public:
  explicit ScanCacheDirectory(const std::string& path);
  ~ScanCacheDirectory();
  ScanCacheDirectory(const ScanCacheDirectory&) = delete;
  ScanCacheDirectory& operator=(const ScanCacheDirectory&) = delete;
  bool usable() const { return fd_ >= 0; }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

// What identifies a mapped ELF file.
struct ScanCacheKey {
  std::string text;       // all of it, written into the entry and compared on use
  std::string file_name;  // the entry's name in the directory (a hash of `text`)
};

// The key of the image loaded at `base` whose first mapping is `mapping` (dev and inode from
// /proc/self/maps), with its program headers at `headers` in memory; `symbols_path` is the path
// the rewriter reads the image's symbols from, which must name the same file. Nothing if a path
// no longer names that file.
std::optional<ScanCacheKey> scan_cache_key(const Mapping& mapping, const std::string& symbols_path,
                                           std::uintptr_t base, const void* headers,
                                           unsigned header_count);

// Whether [memory, memory + length) holds the file's bytes at `file_offset` (and zero where the
// segment extends past them, up to `file_size`): an entry is only written from unpatched code.
bool code_matches_file(const std::string& path, std::uint64_t file_offset, std::uint64_t file_size,
                       const void* memory, std::uint64_t length);

// The entry for `key`, if there is a well-formed one with a correct checksum.
std::optional<CachedImage> load_scan_cache(const ScanCacheDirectory& directory,
                                           const ScanCacheKey& key);

// Writes the entry (to a temporary file renamed into place: readers see all of it or none).
// Failures are ignored: the cache only saves time.
void store_scan_cache(const ScanCacheDirectory& directory, const ScanCacheKey& key,
                      const CachedImage& image);

}  // namespace zpoline::detail
