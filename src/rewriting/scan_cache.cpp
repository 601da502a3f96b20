#include "rewriting/scan_cache.hpp"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "dispatch/frame.hpp"
#include "platform/memory.hpp"

namespace zpoline::detail {
namespace {

// Bumped whenever the entry's layout changes. The scanner's own changes need no bump: the build
// ID of the library's object is part of every key.
constexpr char kMagic[8] = {'Z', 'P', 'S', 'C', 'A', 'N', '0', '1'};
constexpr std::uint32_t kMaxSegments = 64;
constexpr std::uint32_t kMaxSites = 1u << 20;

// The hex of the GNU build ID note among `headers` (in memory at `base`), or "" if none.
std::string build_id(std::uintptr_t base, const ElfW(Phdr) * headers, unsigned count) {
  for (unsigned i = 0; i < count; ++i) {
    const ElfW(Phdr)& segment = headers[i];
    if (segment.p_type != PT_NOTE) continue;
    std::uintptr_t at = base + segment.p_vaddr;
    const std::uintptr_t end = at + segment.p_memsz;
    while (at + sizeof(ElfW(Nhdr)) <= end) {
      ElfW(Nhdr) note{};
      if (!safe_read(&note, reinterpret_cast<const void*>(at), sizeof note)) return "";
      const std::uintptr_t name = at + sizeof note;
      const std::uintptr_t desc = name + ((note.n_namesz + 3) & ~3u);
      const std::uintptr_t next = desc + ((note.n_descsz + 3) & ~3u);
      if (next > end || next <= at) break;
      char owner[4] = {};
      if (note.n_type == NT_GNU_BUILD_ID && note.n_namesz == 4 && note.n_descsz <= 64 &&
          safe_read(owner, reinterpret_cast<const void*>(name), 4) &&
          std::memcmp(owner, "GNU", 4) == 0) {
        unsigned char bytes[64];
        if (!safe_read(bytes, reinterpret_cast<const void*>(desc), note.n_descsz)) return "";
        std::string hex;
        char two[3];
        for (unsigned j = 0; j < note.n_descsz; ++j) {
          std::snprintf(two, sizeof two, "%02x", bytes[j]);
          hex += two;
        }
        return hex;
      }
      at = next;
    }
  }
  return "";
}

int find_own_object(dl_phdr_info* info, std::size_t, void* data) {
  const auto own = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_begin);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[i];
    if (segment.p_type != PT_LOAD) continue;
    const std::uintptr_t begin = info->dlpi_addr + segment.p_vaddr;
    if (own >= begin && own < begin + segment.p_memsz) {
      *static_cast<std::string*>(data) =
          build_id(info->dlpi_addr, info->dlpi_phdr, static_cast<unsigned>(info->dlpi_phnum));
      return 1;
    }
  }
  return 0;
}

// The build ID of the object the library is linked into: a rebuilt library (or a rebuilt
// program it is linked into) makes every entry of the old one unused. "" without one, and then
// the cache is not used.
const std::string& own_build_id() {
  static const std::string id = [] {
    std::string found;
    dl_iterate_phdr(find_own_object, &found);
    return found;
  }();
  return id;
}

std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (const unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

bool read_all(int fd, void* to, std::size_t size) {
  auto* out = static_cast<char*>(to);
  while (size > 0) {
    const ssize_t n = read(fd, out, size);
    if (n <= 0) return false;
    out += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

bool write_all(int fd, const std::string& bytes) {
  const char* at = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = write(fd, at, left);
    if (n <= 0) return false;
    at += n;
    left -= static_cast<std::size_t>(n);
  }
  return true;
}

template <class T>
void append(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

}  // namespace

ScanCacheDirectory::ScanCacheDirectory(const std::string& path) {
  if (path.size() < 2 || path.front() != '/' || own_build_id().empty()) return;
  // Component by component from the root, creating what is missing (mode 0700) and opening each
  // with O_NOFOLLOW: a symbolic link anywhere on the way (or "." and "..") makes it unusable, so
  // the path cannot be redirected into a directory it does not name.
  std::vector<std::string> components;
  for (std::size_t at = 1; at < path.size();) {
    std::size_t slash = path.find('/', at);
    if (slash == std::string::npos) slash = path.size();
    std::string component = path.substr(at, slash - at);
    at = slash + 1;
    if (component.empty()) continue;                    // "//" and a trailing "/"
    if (component == "." || component == "..") return;  // before anything is created
    components.push_back(std::move(component));
  }
  int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  for (const std::string& component : components) {
    if (fd < 0) break;
    if (mkdirat(fd, component.c_str(), 0700) != 0 && errno != EEXIST) {
      close(fd);
      fd = -1;
      break;
    }
    const int next = openat(fd, component.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    close(fd);
    fd = next;
  }
  struct stat status {};
  if (fd >= 0 && fstat(fd, &status) == 0 && S_ISDIR(status.st_mode) && status.st_uid == geteuid() &&
      (status.st_mode & (S_IWGRP | S_IWOTH)) == 0) {
    fd_ = fd;
  } else if (fd >= 0) {
    close(fd);
  }
}

ScanCacheDirectory::~ScanCacheDirectory() {
  if (fd_ >= 0) close(fd_);
}

bool code_matches_file(const std::string& path, std::uint64_t file_offset, std::uint64_t file_size,
                       const void* memory, std::uint64_t length) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  const auto* bytes = static_cast<const unsigned char*>(memory);
  const std::uint64_t from_file = std::min(length, file_size);
  std::vector<unsigned char> buffer(1 << 16);
  bool same = true;
  for (std::uint64_t done = 0; same && done < from_file;) {
    const std::size_t want =
        static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), from_file - done));
    const ssize_t n = pread(fd, buffer.data(), want, static_cast<off_t>(file_offset + done));
    if (n <= 0) {
      same = false;
      break;
    }
    same = std::memcmp(buffer.data(), bytes + done, static_cast<std::size_t>(n)) == 0;
    done += static_cast<std::uint64_t>(n);
  }
  close(fd);
  for (std::uint64_t i = from_file; same && i < length; ++i) same = bytes[i] == 0;
  return same;
}

std::optional<ScanCacheKey> scan_cache_key(const Mapping& mapping, const std::string& symbols_path,
                                           std::uintptr_t base, const void* headers,
                                           unsigned header_count) {
  if (mapping.inode == 0 || mapping.path.empty() || mapping.path.front() != '/') {
    return std::nullopt;
  }
  struct stat status {
  }, symbols{};
  if (stat(mapping.path.c_str(), &status) != 0 || !S_ISREG(status.st_mode) ||
      static_cast<std::uint64_t>(status.st_dev) != mapping.device ||
      static_cast<std::uint64_t>(status.st_ino) != mapping.inode) {
    return std::nullopt;  // the path names another file now (replaced since it was mapped)
  }
  // The decisions depend on the symbols read through `symbols_path` (the executable's comes from
  // /proc/self/exe, which is ld.so when a program is started through it): only the same file.
  if (stat(symbols_path.c_str(), &symbols) != 0 || symbols.st_dev != status.st_dev ||
      symbols.st_ino != status.st_ino) {
    return std::nullopt;
  }
  char line[512];
  std::snprintf(line, sizeof line, "dev %llx ino %llu size %lld mtime %lld.%09ld ctime %lld.%09ld",
                static_cast<unsigned long long>(mapping.device),
                static_cast<unsigned long long>(mapping.inode),
                static_cast<long long>(status.st_size),
                static_cast<long long>(status.st_mtim.tv_sec), status.st_mtim.tv_nsec,
                static_cast<long long>(status.st_ctim.tv_sec), status.st_ctim.tv_nsec);
  ScanCacheKey key;
  key.text = std::string(line) + " build-id " +
             build_id(base, static_cast<const ElfW(Phdr)*>(headers), header_count) + " library " +
             own_build_id() + " path " + mapping.path;
  char name[32];
  std::snprintf(name, sizeof name, "%016llx.scan",
                static_cast<unsigned long long>(fnv1a(key.text)));
  key.file_name = name;
  return key;
}

std::optional<CachedImage> load_scan_cache(const ScanCacheDirectory& directory,
                                           const ScanCacheKey& key) {
  if (!directory.usable()) return std::nullopt;
  // O_NONBLOCK: a FIFO put at the entry's name must not block the program.
  const int fd =
      openat(directory.fd(), key.file_name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return std::nullopt;
  // The whole entry in one read (an entry is a few KiB), then parsed from memory.
  struct stat status {};
  std::string bytes;
  const bool readable = fstat(fd, &status) == 0 && S_ISREG(status.st_mode) &&
                        status.st_uid == geteuid() && (status.st_mode & (S_IWGRP | S_IWOTH)) == 0 &&
                        status.st_size > 0 && status.st_size < (64 << 20);
  if (readable) {
    bytes.resize(static_cast<std::size_t>(status.st_size));
    if (!read_all(fd, bytes.data(), bytes.size())) bytes.clear();
  }
  close(fd);
  // The checksum, last: a damaged entry is not used.
  std::uint64_t checksum = 0;
  if (bytes.size() < sizeof checksum) return std::nullopt;
  std::memcpy(&checksum, bytes.data() + bytes.size() - sizeof checksum, sizeof checksum);
  bytes.resize(bytes.size() - sizeof checksum);
  if (fnv1a(bytes) != checksum) return std::nullopt;
  std::size_t at = 0;
  const auto take = [&](void* to, std::size_t size) {
    if (bytes.size() - at < size) return false;
    std::memcpy(to, bytes.data() + at, size);
    at += size;
    return true;
  };
  char magic[sizeof kMagic];
  std::uint32_t key_length = 0, segment_count = 0;
  if (!take(magic, sizeof magic) || std::memcmp(magic, kMagic, sizeof kMagic) != 0 ||
      !take(&key_length, sizeof key_length) || key_length != key.text.size() ||
      bytes.size() - at < key_length || bytes.compare(at, key_length, key.text) != 0) {
    return std::nullopt;
  }
  at += key_length;
  if (!take(&segment_count, sizeof segment_count) || segment_count > kMaxSegments) {
    return std::nullopt;
  }
  CachedImage image;
  for (std::uint32_t s = 0; s < segment_count; ++s) {
    CachedSegment segment;
    std::uint32_t site_count = 0;
    if (!take(&segment.vaddr, sizeof segment.vaddr) ||
        !take(&segment.length, sizeof segment.length) || !take(&site_count, sizeof site_count) ||
        site_count > kMaxSites) {
      return std::nullopt;
    }
    segment.sites.reserve(site_count);
    for (std::uint32_t i = 0; i < site_count; ++i) {
      std::uint64_t offset = 0, previous = 0;
      std::uint8_t kind = 0;
      if (!take(&offset, sizeof offset) || !take(&previous, sizeof previous) ||
          !take(&kind, sizeof kind) || kind > static_cast<std::uint8_t>(SiteKind::undecodable) ||
          offset > segment.length || segment.length - offset < 2 || previous > offset) {
        return std::nullopt;
      }
      segment.sites.push_back({offset, static_cast<SiteKind>(kind), previous});
    }
    image.segments.push_back(std::move(segment));
  }
  if (at != bytes.size()) return std::nullopt;  // nothing after the end
  return image;
}

void store_scan_cache(const ScanCacheDirectory& directory, const ScanCacheKey& key,
                      const CachedImage& image) {
  if (!directory.usable()) return;
  std::string bytes(kMagic, sizeof kMagic);
  append(bytes, static_cast<std::uint32_t>(key.text.size()));
  bytes += key.text;
  append(bytes, static_cast<std::uint32_t>(image.segments.size()));
  for (const CachedSegment& segment : image.segments) {
    append(bytes, segment.vaddr);
    append(bytes, segment.length);
    append(bytes, static_cast<std::uint32_t>(segment.sites.size()));
    for (const SiteDecision& site : segment.sites) {
      append(bytes, static_cast<std::uint64_t>(site.address));
      append(bytes, static_cast<std::uint64_t>(site.previous));
      append(bytes, static_cast<std::uint8_t>(site.kind));
    }
  }
  append(bytes, fnv1a(bytes));
  char temporary[64];
  std::snprintf(temporary, sizeof temporary, ".tmp.%ld.%s", static_cast<long>(getpid()),
                key.file_name.c_str());
  const int fd =
      openat(directory.fd(), temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return;
  const bool written = write_all(fd, bytes);
  close(fd);
  if (!written || renameat(directory.fd(), temporary, directory.fd(), key.file_name.c_str()) != 0) {
    unlinkat(directory.fd(), temporary, 0);
  }
}

}  // namespace zpoline::detail
