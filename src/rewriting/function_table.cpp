#include "rewriting/function_table.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace zpoline::detail {

namespace {

// DWARF exception-header pointer encodings (LSB "DWARF Extensions", .eh_frame_hdr / .eh_frame).
// The low nibble says how the value is stored, the high bits what it is relative to.
constexpr std::uint8_t kEncodingOmit = 0xff;
constexpr std::uint8_t kFormatMask = 0x0f;
constexpr std::uint8_t kFormatAbsolutePointer = 0x00;
constexpr std::uint8_t kFormatUleb128 = 0x01;
constexpr std::uint8_t kFormatUdata2 = 0x02;
constexpr std::uint8_t kFormatUdata4 = 0x03;
constexpr std::uint8_t kFormatUdata8 = 0x04;
constexpr std::uint8_t kFormatSleb128 = 0x09;
constexpr std::uint8_t kFormatSdata2 = 0x0a;
constexpr std::uint8_t kFormatSdata4 = 0x0b;
constexpr std::uint8_t kFormatSdata8 = 0x0c;
constexpr std::uint8_t kApplicationMask = 0x70;
constexpr std::uint8_t kApplicationNone = 0x00;
constexpr std::uint8_t kApplicationPcRelative = 0x10;
constexpr std::uint8_t kApplicationTextRelative = 0x20;
constexpr std::uint8_t kApplicationDataRelative = 0x30;
constexpr std::uint8_t kApplicationFunctionRelative = 0x40;
constexpr std::uint8_t kApplicationAligned = 0x50;
constexpr std::uint8_t kIndirect = 0x80;

// A [begin, end) span of process memory that is known to be mapped and readable.
struct MemorySpan {
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;

  bool contains(std::uintptr_t address) const { return address >= begin && address < end; }
  bool valid() const { return begin < end; }
};

// Sequential reader over a MemorySpan. Every read is bounds-checked; the first failed read
// makes the cursor "failed" for good, so callers can read a whole record and check once.
class MemoryCursor {
 public:
  MemoryCursor(std::uintptr_t position, std::uintptr_t limit)
      : position_(position), limit_(limit), failed_(position > limit) {}

  std::uintptr_t position() const { return position_; }
  std::uintptr_t limit() const { return limit_; }
  bool failed() const { return failed_; }
  std::size_t remaining() const { return failed_ ? 0 : limit_ - position_; }

  template <typename T>
  T read() {
    T value{};
    if (failed_ || remaining() < sizeof(T)) {
      failed_ = true;
      return value;
    }
    // memcpy because .eh_frame data is only 4-byte aligned (or not at all).
    std::memcpy(&value, reinterpret_cast<const void*>(position_), sizeof(T));
    position_ += sizeof(T);
    return value;
  }

  void skip(std::uint64_t byte_count) {
    if (failed_ || remaining() < byte_count) {
      failed_ = true;
      return;
    }
    position_ += byte_count;
  }

  void align_to(std::size_t alignment) {
    const std::uintptr_t misalignment = position_ % alignment;
    if (misalignment != 0) skip(alignment - misalignment);
  }

  std::uint64_t read_uleb128() {
    std::uint64_t result = 0;
    unsigned shift = 0;
    for (;;) {
      const auto byte = read<std::uint8_t>();
      if (failed_) return 0;
      // Bits beyond 64 cannot be represented; drop them instead of invoking UB on the shift.
      if (shift < 64) result |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
      shift += 7;
      if ((byte & 0x80) == 0) return result;
    }
  }

  std::int64_t read_sleb128() {
    std::uint64_t result = 0;
    unsigned shift = 0;
    std::uint8_t byte = 0;
    do {
      byte = read<std::uint8_t>();
      if (failed_) return 0;
      if (shift < 64) result |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
      shift += 7;
    } while (byte & 0x80);
    if (shift < 64 && (byte & 0x40)) result |= ~std::uint64_t{0} << shift;
    return static_cast<std::int64_t>(result);
  }

  // Reads a NUL-terminated string; returns nullptr if it runs past the limit.
  const char* read_c_string() {
    if (failed_) return nullptr;
    const auto* start = reinterpret_cast<const char*>(position_);
    const void* nul = std::memchr(start, 0, limit_ - position_);
    if (nul == nullptr) {
      failed_ = true;
      return nullptr;
    }
    position_ = reinterpret_cast<std::uintptr_t>(nul) + 1;
    return start;
  }

 private:
  std::uintptr_t position_;
  std::uintptr_t limit_;
  bool failed_;
};

enum class DecodeResult { kOk, kUnsupported, kOutOfBounds };

// Reads one value stored with `encoding` and applies its base. `data_base` is the base for
// DW_EH_PE_datarel (the start of .eh_frame_hdr), or 0 where datarel has no meaning.
// Values read from memory are already run-time addresses: pcrel/datarel are computed from
// run-time addresses, and absptr values were relocated by the dynamic linker (or are
// absolute in a non-PIE executable), so no load bias is added here.
DecodeResult read_encoded_pointer(MemoryCursor& cursor, std::uint8_t encoding,
                                  std::uintptr_t data_base, std::uintptr_t& out) {
  if (encoding == kEncodingOmit) return DecodeResult::kUnsupported;
  const std::uint8_t application = encoding & kApplicationMask;
  if (application == kApplicationAligned) cursor.align_to(sizeof(std::uintptr_t));
  const std::uintptr_t field_address = cursor.position();

  std::uint64_t raw = 0;
  switch (encoding & kFormatMask) {
    case kFormatAbsolutePointer:
      raw = cursor.read<std::uint64_t>();
      break;
    case kFormatUleb128:
      raw = cursor.read_uleb128();
      break;
    case kFormatUdata2:
      raw = cursor.read<std::uint16_t>();
      break;
    case kFormatUdata4:
      raw = cursor.read<std::uint32_t>();
      break;
    case kFormatUdata8:
      raw = cursor.read<std::uint64_t>();
      break;
    case kFormatSleb128:
      raw = static_cast<std::uint64_t>(cursor.read_sleb128());
      break;
    case kFormatSdata2:
      raw = static_cast<std::uint64_t>(static_cast<std::int64_t>(cursor.read<std::int16_t>()));
      break;
    case kFormatSdata4:
      raw = static_cast<std::uint64_t>(static_cast<std::int64_t>(cursor.read<std::int32_t>()));
      break;
    case kFormatSdata8:
      raw = cursor.read<std::uint64_t>();
      break;
    default:
      // The size of an unknown format is unknown, so nothing after it can be parsed either.
      return DecodeResult::kOutOfBounds;
  }
  if (cursor.failed()) return DecodeResult::kOutOfBounds;

  // An indirect value is the address of the pointer; we never dereference data of unknown
  // provenance, and function starts are never encoded that way in practice.
  if (encoding & kIndirect) return DecodeResult::kUnsupported;
  switch (application) {
    case kApplicationNone:
    case kApplicationAligned:
      out = raw;
      return DecodeResult::kOk;
    case kApplicationPcRelative:
      out = field_address + raw;  // unsigned wrap-around implements the signed offset
      return DecodeResult::kOk;
    case kApplicationDataRelative:
      if (data_base == 0) return DecodeResult::kUnsupported;
      out = data_base + raw;
      return DecodeResult::kOk;
    case kApplicationTextRelative:
    case kApplicationFunctionRelative:
    default:
      return DecodeResult::kUnsupported;
  }
}

// Reads a length value (pc_range) stored in the format of `encoding`; no base applies to it.
DecodeResult read_encoded_length(MemoryCursor& cursor, std::uint8_t encoding, std::uint64_t& out) {
  std::uintptr_t value = 0;
  const DecodeResult result =
      read_encoded_pointer(cursor, static_cast<std::uint8_t>(encoding & kFormatMask), 0, value);
  out = value;
  return result;
}

// The parts of one loaded image's program headers this module needs.
class ImageLayout {
 public:
  explicit ImageLayout(const dl_phdr_info& info) {
    for (ElfW(Half) i = 0; info.dlpi_phdr != nullptr && i < info.dlpi_phnum; ++i) {
      const ElfW(Phdr)& header = info.dlpi_phdr[i];
      const MemorySpan span = span_of(info.dlpi_addr, header.p_vaddr, header.p_memsz);
      if (header.p_type == PT_LOAD && span.valid()) {
        if (header.p_flags & PF_X) executable_.push_back(span);
        // Only the file-backed part holds meaningful data; the rest is zero fill.
        const MemorySpan file_backed =
            span_of(info.dlpi_addr, header.p_vaddr, std::min(header.p_filesz, header.p_memsz));
        if ((header.p_flags & PF_R) && file_backed.valid()) readable_.push_back(file_backed);
      } else if (header.p_type == PT_GNU_EH_FRAME && span.valid()) {
        eh_frame_hdr_ = span;
      }
    }
    // .eh_frame_hdr is only safe to read if it actually lies inside a readable segment.
    if (eh_frame_hdr_.valid()) {
      const MemorySpan container = readable_span_containing(eh_frame_hdr_.begin);
      if (!container.valid()) {
        eh_frame_hdr_ = {};
      } else {
        eh_frame_hdr_.end = std::min(eh_frame_hdr_.end, container.end);
      }
    }
  }

  const MemorySpan& eh_frame_hdr() const { return eh_frame_hdr_; }

  MemorySpan readable_span_containing(std::uintptr_t address) const {
    for (const MemorySpan& span : readable_) {
      if (span.contains(address)) return span;
    }
    return {};
  }

  bool inside_executable_segment(const FunctionRange& range) const {
    if (range.begin >= range.end) return false;
    for (const MemorySpan& span : executable_) {
      if (range.begin >= span.begin && range.end <= span.end) return true;
    }
    return false;
  }

 private:
  static MemorySpan span_of(std::uintptr_t bias, std::uint64_t vaddr, std::uint64_t size) {
    const std::uintptr_t begin = bias + vaddr;
    std::uintptr_t end = 0;
    if (__builtin_add_overflow(begin, size, &end)) return {};
    return {begin, end};
  }

  std::vector<MemorySpan> executable_;
  std::vector<MemorySpan> readable_;
  MemorySpan eh_frame_hdr_;
};

// What an FDE needs from its CIE.
struct CommonInformation {
  std::uintptr_t address = 0;
  std::uint8_t fde_pointer_encoding = kFormatAbsolutePointer;
};

// The bounds of one length-prefixed .eh_frame record (CIE or FDE).
struct FrameRecord {
  std::uintptr_t id_field = 0;  // where the CIE id / CIE pointer is stored
  std::uintptr_t end = 0;       // one past the record
  std::uint32_t id = 0;         // 0 for a CIE, else the distance back to the CIE
  bool terminator = false;      // a zero length marks the end of .eh_frame
};

// Reads a record header at `address`, checking that the whole record fits in `span`.
bool read_frame_record(std::uintptr_t address, const MemorySpan& span, FrameRecord& record) {
  if (!span.contains(address)) return false;
  MemoryCursor cursor(address, span.end);
  std::uint64_t length = cursor.read<std::uint32_t>();
  if (cursor.failed()) return false;
  if (length == 0) {
    record.terminator = true;
    return true;
  }
  // 0xffffffff announces a 64-bit length; the CIE id stays 4 bytes in .eh_frame.
  if (length == 0xffffffff) length = cursor.read<std::uint64_t>();
  if (cursor.failed()) return false;
  const std::uintptr_t content = cursor.position();
  if (length < sizeof(std::uint32_t) || length > span.end - content) return false;
  record.id_field = content;
  record.end = content + length;
  record.terminator = false;
  std::memcpy(&record.id, reinterpret_cast<const void*>(content), sizeof(record.id));
  return true;
}

// Parses a CIE to learn how its FDEs encode pc_begin. Fails for CIEs we cannot interpret,
// because guessing the encoding would produce garbage ranges.
bool parse_common_information(const FrameRecord& record, CommonInformation& out) {
  MemoryCursor cursor(record.id_field + sizeof(std::uint32_t), record.end);
  const auto version = cursor.read<std::uint8_t>();
  if (version != 1 && version != 3 && version != 4) return false;
  const char* augmentation = cursor.read_c_string();
  if (augmentation == nullptr) return false;
  // Old GCC "eh" augmentation: an address-sized pointer to exception data follows.
  if (augmentation[0] == 'e' && augmentation[1] == 'h') {
    cursor.skip(sizeof(std::uintptr_t));
    augmentation += 2;
  }
  if (version == 4) cursor.skip(2);  // address_size, segment_selector_size
  cursor.read_uleb128();             // code alignment factor
  cursor.read_sleb128();             // data alignment factor
  if (version == 1) {
    cursor.read<std::uint8_t>();  // return address register
  } else {
    cursor.read_uleb128();
  }
  if (cursor.failed()) return false;

  out.address = record.id_field - sizeof(std::uint32_t);
  out.fde_pointer_encoding = kFormatAbsolutePointer;
  if (augmentation[0] == '\0') return true;
  if (augmentation[0] != 'z') return false;  // without 'z' unknown data cannot be skipped

  const std::uint64_t data_length = cursor.read_uleb128();
  if (cursor.failed() || data_length > cursor.remaining()) return false;
  MemoryCursor data(cursor.position(), cursor.position() + data_length);
  for (const char* letter = augmentation + 1; *letter != '\0'; ++letter) {
    switch (*letter) {
      case 'R':
        out.fde_pointer_encoding = data.read<std::uint8_t>();
        break;
      case 'P': {
        // Only the personality pointer's size matters; skip it by decoding it.
        const auto encoding = data.read<std::uint8_t>();
        std::uintptr_t ignored = 0;
        if (read_encoded_pointer(data, static_cast<std::uint8_t>(encoding & ~kIndirect), 0,
                                 ignored) == DecodeResult::kOutOfBounds) {
          return false;
        }
        break;
      }
      case 'L':
        data.read<std::uint8_t>();  // LSDA encoding; the LSDA pointer lives in the FDE
        break;
      case 'S':  // signal frame
      case 'B':  // AArch64 B-key
      case 'G':  // MTE tagged frame
        break;
      default:
        // An unknown letter may own data before a later 'R'; we cannot tell where it ends.
        return false;
    }
    if (data.failed()) return false;
  }
  return out.fde_pointer_encoding != kEncodingOmit;
}

// Finds pc_begin/pc_range of an FDE given the CIE it references.
bool parse_frame_description(const FrameRecord& record, const CommonInformation& cie,
                             FunctionRange& out) {
  MemoryCursor cursor(record.id_field + sizeof(std::uint32_t), record.end);
  std::uintptr_t begin = 0;
  if (read_encoded_pointer(cursor, cie.fde_pointer_encoding, 0, begin) != DecodeResult::kOk) {
    return false;
  }
  std::uint64_t length = 0;
  if (read_encoded_length(cursor, cie.fde_pointer_encoding, length) != DecodeResult::kOk) {
    return false;
  }
  std::uintptr_t end = 0;
  if (length == 0 || __builtin_add_overflow(begin, length, &end)) return false;
  out = {begin, end};
  return true;
}

// Parsed CIEs keyed by address. Images have only a handful of CIEs, so a linear scan with
// a most-recently-used shortcut beats any map.
class CommonInformationCache {
 public:
  const CommonInformation* get(std::uintptr_t address, const MemorySpan& span) {
    if (last_ != nullptr && last_->address == address) return last_;
    for (const CommonInformation& entry : entries_) {
      if (entry.address == address) return last_ = &entry;
    }
    for (std::uintptr_t failed : failed_) {
      if (failed == address) return nullptr;
    }
    FrameRecord record;
    CommonInformation parsed;
    if (!read_frame_record(address, span, record) || record.terminator || record.id != 0 ||
        !parse_common_information(record, parsed)) {
      failed_.push_back(address);
      return nullptr;
    }
    entries_.push_back(parsed);
    // push_back may have moved the entries; callers use a pointer only until the next get().
    return last_ = &entries_.back();
  }

 private:
  std::vector<CommonInformation> entries_;
  std::vector<std::uintptr_t> failed_;
  const CommonInformation* last_ = nullptr;
};

// Reads the FDE at `fde_address` completely, including its CIE.
bool range_of_frame_description(std::uintptr_t fde_address, const ImageLayout& layout,
                                CommonInformationCache& cies, FunctionRange& out) {
  const MemorySpan span = layout.readable_span_containing(fde_address);
  FrameRecord record;
  if (!read_frame_record(fde_address, span, record) || record.terminator || record.id == 0) {
    return false;
  }
  // The CIE pointer counts backwards from the field that holds it.
  if (record.id > record.id_field - span.begin) return false;
  const CommonInformation* cie = cies.get(record.id_field - record.id, span);
  return cie != nullptr && parse_frame_description(record, *cie, out);
}

// The fixed header of .eh_frame_hdr.
struct EhFrameHeader {
  std::uintptr_t eh_frame = 0;  // 0 if absent
  std::uint64_t fde_count = 0;
  std::uint8_t table_encoding = kEncodingOmit;
  std::uintptr_t table = 0;  // 0 if absent
};

bool read_eh_frame_header(const ImageLayout& layout, EhFrameHeader& out) {
  const MemorySpan& span = layout.eh_frame_hdr();
  if (!span.valid()) return false;
  MemoryCursor cursor(span.begin, span.end);
  const auto version = cursor.read<std::uint8_t>();
  const auto eh_frame_pointer_encoding = cursor.read<std::uint8_t>();
  const auto fde_count_encoding = cursor.read<std::uint8_t>();
  const auto table_encoding = cursor.read<std::uint8_t>();
  if (cursor.failed() || version != 1) return false;

  out = {};
  std::uintptr_t eh_frame = 0;
  const DecodeResult eh_frame_result =
      read_encoded_pointer(cursor, eh_frame_pointer_encoding, span.begin, eh_frame);
  if (eh_frame_result == DecodeResult::kOutOfBounds) return false;
  if (eh_frame_result == DecodeResult::kOk) out.eh_frame = eh_frame;

  std::uintptr_t fde_count = 0;
  if (read_encoded_pointer(cursor, fde_count_encoding, span.begin, fde_count) ==
          DecodeResult::kOk &&
      table_encoding != kEncodingOmit) {
    out.fde_count = fde_count;
    out.table_encoding = table_encoding;
    out.table = cursor.position();
  }
  return true;
}

// A function object rather than a function, so that std::sort inlines it.
struct RangeOrder {
  bool operator()(const FunctionRange& a, const FunctionRange& b) const {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  }
};

// The .eh_frame_hdr search table lists FDEs sorted already: checking is much cheaper than sorting.
void sort_ranges(std::vector<FunctionRange>& ranges) {
  if (!std::is_sorted(ranges.begin(), ranges.end(), RangeOrder())) {
    std::sort(ranges.begin(), ranges.end(), RangeOrder());
  }
}

// Returns false if the table is missing or unusable, so the caller can fall back to a walk.
bool collect_from_search_table(const ImageLayout& layout, std::vector<FunctionRange>& out) {
  EhFrameHeader header;
  if (!read_eh_frame_header(layout, header) || header.table == 0) return false;
  const MemorySpan& span = layout.eh_frame_hdr();
  MemoryCursor cursor(header.table, span.end);
  // Each entry takes at least two bytes, which bounds the reservation for a bogus count.
  out.reserve(std::min<std::uint64_t>(header.fde_count, cursor.remaining() / 2));
  CommonInformationCache cies;
  for (std::uint64_t i = 0; i < header.fde_count; ++i) {
    std::uintptr_t initial_location = 0;
    std::uintptr_t fde_address = 0;
    if (read_encoded_pointer(cursor, header.table_encoding, span.begin, initial_location) !=
            DecodeResult::kOk ||
        read_encoded_pointer(cursor, header.table_encoding, span.begin, fde_address) !=
            DecodeResult::kOk) {
      out.clear();
      return false;
    }
    FunctionRange range;
    if (range_of_frame_description(fde_address, layout, cies, range) &&
        layout.inside_executable_segment(range)) {
      out.push_back(range);
    }
  }
  sort_ranges(out);
  return true;
}

void collect_by_walking(const ImageLayout& layout, std::vector<FunctionRange>& out) {
  EhFrameHeader header;
  if (!read_eh_frame_header(layout, header) || header.eh_frame == 0) return;
  const MemorySpan span = layout.readable_span_containing(header.eh_frame);
  if (!span.valid()) return;
  CommonInformationCache cies;
  std::uintptr_t address = header.eh_frame;
  FrameRecord record;
  while (read_frame_record(address, span, record) && !record.terminator) {
    if (record.id != 0) {
      // Only CIEs at or after the section start are plausible; anything else is garbage.
      FunctionRange range;
      const std::uintptr_t cie_address = record.id_field - record.id;
      if (record.id <= record.id_field - header.eh_frame) {
        const CommonInformation* cie = cies.get(cie_address, span);
        if (cie != nullptr && parse_frame_description(record, *cie, range) &&
            layout.inside_executable_segment(range)) {
          out.push_back(range);
        }
      }
    }
    address = record.end;
  }
  sort_ranges(out);
}

std::vector<FunctionRange> collect_eh_frame_ranges(const ImageLayout& layout) {
  std::vector<FunctionRange> ranges;
  if (!collect_from_search_table(layout, ranges)) collect_by_walking(layout, ranges);
  return ranges;
}

// ---- Symbols from the file on disk -------------------------------------------------------

// Reads exactly `size` bytes at `offset`; false on any short read or error.
bool read_exactly(int fd, void* buffer, std::size_t size, std::uint64_t offset) {
  auto* bytes = static_cast<char*>(buffer);
  while (size > 0) {
    const ssize_t got = ::pread(fd, bytes, size, static_cast<off_t>(offset));
    if (got <= 0) return false;
    bytes += got;
    size -= static_cast<std::size_t>(got);
    offset += static_cast<std::uint64_t>(got);
  }
  return true;
}

bool fits_in_file(std::uint64_t offset, std::uint64_t size, std::uint64_t file_size) {
  return offset <= file_size && size <= file_size - offset;
}

// Closes the descriptor on every exit path.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// The file must be the image that is loaded: a stale or unrelated file would give symbol
// addresses that are not instruction boundaries. Comparing the loadable segments catches
// replaced files and wrong paths cheaply.
bool program_headers_match(int fd, const Elf64_Ehdr& header, std::uint64_t file_size,
                           const dl_phdr_info& info) {
  if (header.e_phentsize != sizeof(Elf64_Phdr) || header.e_phnum != info.dlpi_phnum ||
      info.dlpi_phdr == nullptr ||
      !fits_in_file(header.e_phoff, std::uint64_t{header.e_phnum} * sizeof(Elf64_Phdr),
                    file_size)) {
    return false;
  }
  std::vector<Elf64_Phdr> file_headers(header.e_phnum);
  if (!read_exactly(fd, file_headers.data(), file_headers.size() * sizeof(Elf64_Phdr),
                    header.e_phoff)) {
    return false;
  }
  for (std::size_t i = 0; i < file_headers.size(); ++i) {
    const Elf64_Phdr& on_disk = file_headers[i];
    const ElfW(Phdr)& loaded = info.dlpi_phdr[i];
    if (on_disk.p_type != loaded.p_type) return false;
    if (on_disk.p_type == PT_LOAD &&
        (on_disk.p_vaddr != loaded.p_vaddr || on_disk.p_memsz != loaded.p_memsz ||
         on_disk.p_offset != loaded.p_offset || on_disk.p_flags != loaded.p_flags)) {
      return false;
    }
  }
  return true;
}

// pread instead of mmap: a file truncated under us must give a short read, not SIGBUS.
void collect_from_symbols(const dl_phdr_info& info, const std::string& path,
                          const ImageLayout& layout, std::vector<FunctionRange>& out) {
  if (path.empty()) return;
  // O_NONBLOCK so that a FIFO given as path cannot block us in open().
  FileDescriptor file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (file.get() < 0) return;
  struct stat status {};
  if (::fstat(file.get(), &status) != 0 || !S_ISREG(status.st_mode)) return;
  const auto file_size = static_cast<std::uint64_t>(status.st_size);

  Elf64_Ehdr header;
  if (!read_exactly(file.get(), &header, sizeof(header), 0)) return;
  if (std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 || header.e_ident[EI_CLASS] != ELFCLASS64 ||
      header.e_ident[EI_DATA] != ELFDATA2LSB || header.e_machine != EM_X86_64 ||
      (header.e_type != ET_EXEC && header.e_type != ET_DYN) ||
      header.e_shentsize != sizeof(Elf64_Shdr) || header.e_shoff == 0) {
    return;
  }
  if (!program_headers_match(file.get(), header, file_size, info)) return;

  // With 0xff00 or more sections, e_shnum is 0 and section 0's sh_size holds the count.
  std::uint64_t section_count = header.e_shnum;
  if (section_count == 0) {
    Elf64_Shdr first;
    if (!fits_in_file(header.e_shoff, sizeof(first), file_size) ||
        !read_exactly(file.get(), &first, sizeof(first), header.e_shoff)) {
      return;
    }
    section_count = first.sh_size;
  }
  if (!fits_in_file(header.e_shoff, section_count * sizeof(Elf64_Shdr), file_size) ||
      section_count > file_size / sizeof(Elf64_Shdr)) {
    return;
  }
  std::vector<Elf64_Shdr> sections(section_count);
  if (!read_exactly(file.get(), sections.data(), sections.size() * sizeof(Elf64_Shdr),
                    header.e_shoff)) {
    return;
  }

  std::vector<Elf64_Sym> symbols;
  for (const Elf64_Shdr& section : sections) {
    if (section.sh_type != SHT_SYMTAB && section.sh_type != SHT_DYNSYM) continue;
    if (section.sh_entsize != 0 && section.sh_entsize != sizeof(Elf64_Sym)) continue;
    if (!fits_in_file(section.sh_offset, section.sh_size, file_size)) continue;
    symbols.resize(section.sh_size / sizeof(Elf64_Sym));
    if (symbols.empty() || !read_exactly(file.get(), symbols.data(),
                                         symbols.size() * sizeof(Elf64_Sym), section.sh_offset)) {
      continue;
    }
    for (const Elf64_Sym& symbol : symbols) {
      const unsigned type = ELF64_ST_TYPE(symbol.st_info);
      // An IFUNC symbol names its resolver, which is ordinary code with a real start.
      if ((type != STT_FUNC && type != STT_GNU_IFUNC) || symbol.st_size == 0 ||
          symbol.st_shndx == SHN_UNDEF || symbol.st_shndx == SHN_ABS) {
        continue;
      }
      FunctionRange range;
      range.begin = info.dlpi_addr + symbol.st_value;
      if (__builtin_add_overflow(range.begin, symbol.st_size, &range.end)) continue;
      if (layout.inside_executable_segment(range)) out.push_back(range);
    }
  }
}

void remove_duplicates(std::vector<FunctionRange>& sorted) {
  sorted.erase(std::unique(sorted.begin(), sorted.end(),
                           [](const FunctionRange& a, const FunctionRange& b) {
                             return a.begin == b.begin && a.end == b.end;
                           }),
               sorted.end());
}

// Adds `range` to `merged` (sorted, disjoint), given in order: it joins the last range if they
// overlap. Touching ranges stay separate because each begin is a known instruction boundary worth
// keeping.
void add_merging(std::vector<FunctionRange>& merged, const FunctionRange& range) {
  if (!merged.empty() && range.begin < merged.back().end) {
    merged.back().end = std::max(merged.back().end, range.end);
  } else {
    merged.push_back(range);
  }
}

// Merges overlapping ranges of a sorted vector, in place.
void merge_overlaps(std::vector<FunctionRange>& sorted) {
  std::size_t kept = 0;
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    if (kept > 0 && sorted[i].begin < sorted[kept - 1].end) {
      sorted[kept - 1].end = std::max(sorted[kept - 1].end, sorted[i].end);
    } else {
      sorted[kept++] = sorted[i];
    }
  }
  sorted.resize(kept);
}

// The union of two sorted lists, overlapping ranges merged.
std::vector<FunctionRange> merge_overlaps(const std::vector<FunctionRange>& first,
                                          const std::vector<FunctionRange>& second) {
  std::vector<FunctionRange> merged;
  merged.reserve(first.size() + second.size());
  auto a = first.begin();
  auto b = second.begin();
  while (a != first.end() || b != second.end()) {
    const bool from_first = b == second.end() || (a != first.end() && !RangeOrder()(*b, *a));
    add_merging(merged, from_first ? *a++ : *b++);
  }
  return merged;
}

// Whether `range` lies inside one of `merged` (sorted, disjoint). A binary search without
// branches on the data (the step is a conditional move): thousands of symbols in random order
// would mispredict about every other step of std::upper_bound.
bool inside_one(const std::vector<FunctionRange>& merged, const FunctionRange& range) {
  if (merged.empty()) return false;
  const FunctionRange* base = merged.data();
  for (std::size_t count = merged.size(); count > 1;) {
    const std::size_t half = count / 2;
    base = base[half].begin <= range.begin ? base + half : base;
    count -= half;
  }
  // `base` is the last range starting at or before range.begin, if there is one.
  return base->begin <= range.begin && range.end <= base->end;
}

// How many of `ranges` (sorted) overlap none of `merged` (sorted, disjoint). One pass over both:
// the first merged range ending after a range's begin only moves forward.
std::size_t count_not_overlapping(const std::vector<FunctionRange>& ranges,
                                  const std::vector<FunctionRange>& merged) {
  std::size_t count = 0;
  auto it = merged.begin();
  for (const FunctionRange& range : ranges) {
    while (it != merged.end() && it->end <= range.begin) ++it;
    if (it == merged.end() || it->begin >= range.end) ++count;
  }
  return count;
}

}  // namespace

const FunctionRange* FunctionTable::find(std::uintptr_t address) const noexcept {
  // Ranges do not overlap, so only the last range starting at or before address can hold it.
  auto it = std::upper_bound(
      functions.begin(), functions.end(), address,
      [](std::uintptr_t value, const FunctionRange& range) { return value < range.begin; });
  if (it == functions.begin()) return nullptr;
  --it;
  return address < it->end ? &*it : nullptr;
}

std::vector<FunctionRange> eh_frame_ranges_from_search_table(const dl_phdr_info& info) {
  const ImageLayout layout(info);
  std::vector<FunctionRange> ranges;
  collect_from_search_table(layout, ranges);
  return ranges;
}

std::vector<FunctionRange> walk_eh_frame(const dl_phdr_info& info) {
  const ImageLayout layout(info);
  std::vector<FunctionRange> ranges;
  collect_by_walking(layout, ranges);
  return ranges;
}

FunctionTable collect_functions(const dl_phdr_info& info, const std::string& path) {
  const ImageLayout layout(info);
  FunctionTable table;

  std::vector<FunctionRange> eh_frame_ranges = collect_eh_frame_ranges(layout);
  remove_duplicates(eh_frame_ranges);
  table.from_eh_frame = eh_frame_ranges.size();
  merge_overlaps(eh_frame_ranges);

  std::vector<FunctionRange> symbol_ranges;
  collect_from_symbols(info, path, layout, symbol_ranges);
  // Nearly every symbol names a function an FDE gives already (and .symtab and .dynsym often name
  // it twice). A range inside a merged FDE range changes neither the merged table (it only
  // overlaps what contains it) nor from_symbols (it overlaps): it leaves before the sort, which
  // then orders only the few others instead of thousands.
  std::erase_if(symbol_ranges,
                [&](const FunctionRange& range) { return inside_one(eh_frame_ranges, range); });
  sort_ranges(symbol_ranges);
  remove_duplicates(symbol_ranges);  // .symtab and .dynsym list most functions twice

  table.from_symbols = count_not_overlapping(symbol_ranges, eh_frame_ranges);
  // Merging the FDE ranges first changes nothing: a merged range joins exactly the ranges its
  // parts would have joined.
  table.functions = merge_overlaps(eh_frame_ranges, symbol_ranges);
  return table;
}

}  // namespace zpoline::detail
