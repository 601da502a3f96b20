#include "rewriting/rewriter.hpp"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <Zydis/Zydis.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>

#include "dispatch/frame.hpp"
#include "platform/fault_recovery.hpp"
#include "platform/memory.hpp"
#include "platform/memory_map.hpp"
#include "platform/owned_lock.hpp"
#include "platform/thread_local.hpp"
#include "rewriting/function_table.hpp"
#include "rewriting/padding.hpp"
#include "rewriting/patcher.hpp"
#include "rewriting/scan_cache.hpp"
#include "rewriting/site_registry.hpp"
#include "rewriting/site_scanner.hpp"
#include "rewriting/site_trampolines.hpp"

namespace zpoline::detail {
namespace {

constexpr std::uintptr_t kPageSize = 4096;

struct Image {
  std::string path;
  dl_phdr_info info;
  // A copy of the program headers, which clip_to_readable_memory() may change.
  std::vector<ElfW(Phdr)> headers;
};

int collect_image(dl_phdr_info* info, std::size_t, void* data) {
  auto* images = static_cast<std::vector<Image>*>(data);
  Image& image = images->emplace_back();
  image.path = info->dlpi_name ? info->dlpi_name : "";
  image.info = *info;
  if (info->dlpi_phdr != nullptr) {
    image.headers.assign(info->dlpi_phdr, info->dlpi_phdr + info->dlpi_phnum);
  }
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

// The state below is never destroyed: syscalls keep arriving (and may unmap code) while exit
// handlers run, after static destructors would have freed it.
template <class T>
T& never_destroyed() {
  static T* object = new T();
  return *object;
}

// Guards everything below: rewriting at install and rewriting of late code may run on
// different threads. An OwnedLock, so that a fork child can tell whether another thread held it
// (reset_rewriting_after_fork()).
// (Functions rather than references initialised at start-up: install() may run from another
// object's static constructor, before this file's globals are initialised.)
OwnedLock& rewrite_lock() {
  return never_destroyed<OwnedLock>();
}
RewriteOptions& current_options() {
  return never_destroyed<RewriteOptions>();
}
// What the rewriter builds up as it works. Replaced whole in a fork child made while another
// thread was changing it (reset_rewriting_after_fork()).
// A rewritten site: its original bytes (for restore_rewritten_code()), what it holds now, and
// the padding slot its jump reaches (near mechanism; 0 for `call *%rax`).
struct RewrittenSite {
  std::uint16_t original = 0;
  std::uint16_t replacement = 0;
  std::uintptr_t slot = 0;
  // The near mechanism's moved instruction: where, its bytes, and the jump that replaced them.
  std::uintptr_t jump_at = 0;
  std::array<std::uint8_t, kSlotBytes> jump_original{};
  std::array<std::uint8_t, kSlotBytes> jump_bytes{};
};
struct Bookkeeping {
  // Every site rewritten in this process (for restore_rewritten_code() and for forgetting the
  // sites of unmapped code).
  std::map<std::uintptr_t, RewrittenSite> rewritten;
  // Statistics of code that became executable after install, one entry per image.
  std::vector<ImageStats> late_images;
  // Every padding slot written so far (near mechanism), also of sites restored since: their
  // `jmp rel32` is filler to later searches for padding, and the slot can be given again.
  // Slot -> the site it was written for. A slot stays that site's for good (a thread may be
  // between the site's jump and the slot when the site is restored): it is never given to
  // another site, and the same site gets it (and its trampoline) back when rewritten again.
  std::map<std::uintptr_t, std::uintptr_t> written_slots;
  // Sites the near mechanism could not rewrite, and why (near_unrewritten_sites()).
  std::map<std::uintptr_t, const char*> unrewritten;
  // Function tables of images whose sites trap one by one (lazy mode): built once per image.
  std::map<std::pair<std::string, std::uintptr_t>, FunctionTable> function_cache;
};
Bookkeeping* bookkeeping_instance = nullptr;
Bookkeeping& bookkeeping() {
  if (bookkeeping_instance == nullptr) bookkeeping_instance = new Bookkeeping;
  return *bookkeeping_instance;
}
std::map<std::uintptr_t, RewrittenSite>& rewritten() {
  return bookkeeping().rewritten;
}
std::vector<ImageStats>& late_images() {
  return bookkeeping().late_images;
}

// Ranges the application unmapped (munmap, mmap with MAP_FIXED, mremap), noted with
// code_change_lock() held, where nothing may allocate, and taken out of the bookkeeping by the
// next holder of rewrite_lock() before it does anything else (forget_unmapped_code()).
struct UnmappedRanges {
  static constexpr std::size_t kCapacity = 256;
  AddressRange ranges[kCapacity];
  std::size_t count = 0;
  bool overflowed = false;  // more than kCapacity since the last look: check every site
};
UnmappedRanges unmapped;
// Ranges given to exclude_code(), kept apart from current_options(), which each install replaces.
// Never destroyed: hook libraries may be unloaded by exit handlers.
std::vector<AddressRange>& excluded_code() {
  static auto* ranges = new std::vector<AddressRange>;
  return *ranges;
}
// ScopedNewCodeExclusion nesting on this thread.
ZPOLINE_THREAD_LOCAL unsigned new_code_exclusions = 0;

// The rewriter's own work allocates and changes page protections: those mmap, munmap and
// mprotect calls come back here through the dispatcher and must not re-enter (rewrite_lock() is
// not recursive, and they bring no new code).
ZPOLINE_THREAD_LOCAL bool rewriting = false;
struct RewritingScope {
  bool entered = !rewriting;
  RewritingScope() { rewriting = true; }
  ~RewritingScope() { rewriting = !entered; }
};

// The sizes of mapped files, keyed by the device and inode /proc/self/maps gives, so that reads of
// file-backed memory stop at the file's end: past the page holding its last byte, a mapping of a
// file raises SIGBUS (the dynamic linker's first mapping of a library spans all its segments and
// so, for a library with a large .bss, reaches far past its file; see rewrite_new_code()).
class FileSizes {
 public:
  // The size of the file `mapping` maps, or nullopt if it cannot be learned for sure: the path
  // names no file any more (" (deleted)"), or another one than the mapping's (replaced since, or
  // a file system such as overlayfs, where stat() and /proc/self/maps may not name the same
  // device). One stat() per file, no open().
  std::optional<std::uint64_t> of(const Mapping& mapping) {
    const auto key = std::make_pair(mapping.device, mapping.inode);
    auto it = sizes_.find(key);
    if (it != sizes_.end()) return it->second;
    std::optional<std::uint64_t> size;
    struct stat status {};
    if (stat(mapping.path.c_str(), &status) == 0 && S_ISREG(status.st_mode) &&
        static_cast<std::uint64_t>(status.st_dev) == mapping.device &&
        static_cast<std::uint64_t>(status.st_ino) == mapping.inode) {
      size = static_cast<std::uint64_t>(status.st_size);
    }
    return sizes_.emplace(key, size).first->second;
  }
  // The size of the file `mapping` maps, learned by fstat() of a descriptor opened on its path.
  void set(const Mapping& mapping, std::uint64_t size) {
    sizes_[std::make_pair(mapping.device, mapping.inode)] = size;
  }

 private:
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::optional<std::uint64_t>> sizes_;
};

bool is_file_mapping(const Mapping& mapping) {
  return !mapping.path.empty() && mapping.path.front() == '/';
}

// The end of the memory from `begin` (up to `end`) that can be read now, as `map` lists it:
// mapped, readable, and not past the file's end where a file is mapped (a file whose size is not
// known is trusted to hold what is mapped of it). With `file`, only memory that maps that file
// (device and inode) at file offset `file_offset` + (address - begin) counts: code of an image the
// dynamic linker is still mapping, whose first mapping holds the bytes of other file offsets
// where the later segments will go.
std::uintptr_t readable_end(const std::vector<Mapping>& map, std::uintptr_t begin,
                            std::uintptr_t end, FileSizes& sizes, const Mapping* file = nullptr,
                            std::uint64_t file_offset = 0) {
  std::uintptr_t at = begin;
  while (at < end) {
    const Mapping* mapping = find_mapping(map, at);
    if (mapping == nullptr || !(mapping->protection & PROT_READ)) break;
    std::uintptr_t limit = mapping->end;
    if (file != nullptr) {
      const bool same_file = is_file_mapping(*mapping) && mapping->device == file->device &&
                             mapping->inode == file->inode &&
                             mapping->offset + (at - mapping->begin) == file_offset + (at - begin);
      if (!same_file) break;
    }
    if (is_file_mapping(*mapping)) {
      if (const std::optional<std::uint64_t> size = sizes.of(*mapping)) {
        limit = file_data_end(*mapping, *size);
      }
    }
    if (limit <= at) break;
    at = std::min(limit, end);
    if (limit < mapping->end) break;
  }
  return at;
}

// Makes `headers` (of an image loaded at `bias`) claim only file bytes that can be read now: each
// loadable segment's p_filesz becomes the length of the readable memory from its start (see
// readable_end(); `file` as there). The function table reads .eh_frame_hdr and .eh_frame from the
// file-backed part of the readable segments (function_table.cpp), the rewriter the code of the
// executable ones. p_filesz is the one field collect_functions() does not compare with the file.
void clip_to_readable_memory(std::vector<ElfW(Phdr)>& headers, std::uintptr_t bias,
                             const std::vector<Mapping>& map, FileSizes& sizes,
                             const Mapping* file = nullptr) {
  for (ElfW(Phdr) & segment : headers) {
    if (segment.p_type != PT_LOAD) continue;
    std::uintptr_t begin = 0;
    std::uintptr_t end = 0;
    if (__builtin_add_overflow(bias, segment.p_vaddr, &begin) ||
        __builtin_add_overflow(begin, segment.p_filesz, &end)) {
      segment.p_filesz = 0;
      continue;
    }
    segment.p_filesz = readable_end(map, begin, end, sizes, file, segment.p_offset) - begin;
  }
}

// The candidate byte pairs of [begin, end), ascending (see find_candidates()), but the library's
// own system calls: rewrite_candidates() would leave them alone anyway, and an image whose only
// candidates they are (the executable or shared object the library is linked into) then needs
// no function table and no decoding. They lie in functions of their own (entry_stub.S), so the
// decisions on the other candidates do not change.
std::vector<std::uintptr_t> candidates_in(std::uintptr_t begin, std::uintptr_t end) {
  std::vector<std::uintptr_t> candidates;
  find_candidates(std::span(reinterpret_cast<const std::uint8_t*>(begin), end - begin), begin,
                  candidates);
  const auto own_begin = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_begin);
  const auto own_end = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_end);
  candidates.erase(std::lower_bound(candidates.begin(), candidates.end(), own_begin),
                   std::lower_bound(candidates.begin(), candidates.end(), own_end));
  return candidates;
}

std::size_t tables_built = 0;

// The function table of an image that has candidates.
FunctionTable functions_of(const dl_phdr_info& info, const std::string& path) {
  ++tables_built;
  return collect_functions(info, path);
}

// What puts a rewritten site's original instructions back.
Patch restore_patch(std::uintptr_t address, const RewrittenSite& site) {
  Patch patch{address, site.replacement, site.original};
  if (site.jump_at != 0) {
    patch.jump_at = site.jump_at;
    patch.jump_expected = site.jump_bytes;
    patch.jump_bytes = site.jump_original;
  }
  return patch;
}

// The padding slots written so far around [begin, end), ascending.
std::vector<std::uintptr_t> written_slots_in(std::uintptr_t begin, std::uintptr_t end) {
  const auto& written = bookkeeping().written_slots;
  const std::uintptr_t reach = kShortJumpBack + kMaxSlotRegion;
  std::vector<std::uintptr_t> slots;
  for (auto it = written.lower_bound(begin > reach ? begin - reach : 0);
       it != written.end() && it->first < end + reach; ++it) {
    slots.push_back(it->first);
  }
  return slots;
}

// The slot written for `site` before (it was restored since), if it still jumps to one of the
// trampolines: then the site gets it back as it is. 0 otherwise.
std::uintptr_t earlier_slot_of(std::uintptr_t site) {
  const std::uintptr_t reach = kShortJumpBack + kMaxSlotRegion;
  const auto& written = bookkeeping().written_slots;
  for (auto it = written.lower_bound(site > reach ? site - reach : 0);
       it != written.end() && it->first < site + reach; ++it) {
    if (it->second != site) continue;
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(it->first);
    return is_slot_jump(bytes) ? it->first : 0;
  }
  return 0;
}

// The padding slots given out so far in [begin, end), ascending.
std::vector<std::uintptr_t> slots_taken_in(std::uintptr_t begin, std::uintptr_t end) {
  std::vector<std::uintptr_t> taken;
  const std::uintptr_t reach = kShortJumpBack + kPaddingSlotSize;
  auto it = rewritten().lower_bound(begin > reach ? begin - reach : 0);
  for (; it != rewritten().end() && it->first < end + reach; ++it) {
    if (it->second.slot != 0) taken.push_back(it->second.slot);
  }
  std::sort(taken.begin(), taken.end());
  return taken;
}

// Why the instruction at `previous`, which ends at the syscall `site`, cannot run in the site's
// trampoline instead (the near mechanism's way for sites without padding). It can if it is five
// bytes or more (room for a `jmp rel32`) in one cache line (replaced in one exchange), not a
// branch, position-independent or RIP-relative with a 32-bit displacement; no direct branch of
// its function lands after its start up to the site (a branch to the site would skip the
// trampoline: the call would go to the kernel unhooked), and the function has no jump table
// (which could land on the site). Branches from other functions are not seen: compilers do not
// branch into the middle of another function.
// When `previous` is shorter than five bytes or crosses a cache line, a run of instructions
// before the site can move instead (glibc's start_thread: `mov $0xe,%eax` (5 bytes), then a
// 7-byte `lea` across a cache line, then the `syscall` of the new thread's rt_sigprocmask): its
// first instruction takes the jump, and must be five bytes or more in one cache line, so that
// the jump ends inside it and the instructions after it keep their bytes (a thread that stopped
// between them meanwhile runs them as they were); every instruction of the run must be movable
// as above, at most one RIP-relative (the run moves as a whole: one displacement to adjust), no
// branch may land after the run's start up to the site, and the run is at most
// kMaxMovedInstruction bytes. `moved_from` is where the moved instruction or run starts.
// nullptr if it can, else why not.
const char* why_not_moved(std::uintptr_t previous, std::uintptr_t site,
                          const FunctionTable& functions, std::uintptr_t area_begin,
                          std::uintptr_t area_end, std::span<const std::uintptr_t> written,
                          std::map<std::uintptr_t, FunctionShape>& shapes,
                          std::uintptr_t& moved_from, std::size_t& displacement_offset) {
  displacement_offset = 0;
  moved_from = previous;
  if (previous == 0 || previous < area_begin) return "no instruction before it in its function";
  if (site - previous > kMaxMovedInstruction) return "no instruction before it in its function";
  const FunctionRange* function = functions.find(site);
  if (function == nullptr || function->begin < area_begin) return "its function is not known";
  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  // Why the instruction at `at`, ending at `end`, cannot be moved; nullptr if it can (with the
  // offset of its 32-bit RIP-relative displacement, or 0, in `displacement`).
  const auto why_not_movable = [&](std::uintptr_t at, std::uintptr_t end,
                                   std::size_t& displacement) -> const char* {
    displacement = 0;
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, reinterpret_cast<const void*>(at), end - at,
                                             &instruction, operands)) ||
        instruction.length != end - at) {
      return "no instruction before it in its function";
    }
    switch (instruction.meta.category) {
      case ZYDIS_CATEGORY_COND_BR:
      case ZYDIS_CATEGORY_UNCOND_BR:
      case ZYDIS_CATEGORY_CALL:
      case ZYDIS_CATEGORY_RET:
      case ZYDIS_CATEGORY_SYSCALL:
      case ZYDIS_CATEGORY_SYSTEM:
      case ZYDIS_CATEGORY_INTERRUPT:
        return "the instruction before it is a branch or a system instruction";
      default:
        break;
    }
    // A RIP-relative operand (`lea sym(%rip), %rsi`) is moved with its 32-bit displacement
    // adjusted (make_site_trampoline()); any other relative operand is not moved.
    bool rip_relative = false;
    for (unsigned i = 0; i < instruction.operand_count; ++i) {
      const ZydisDecodedOperand& operand = operands[i];
      if (operand.type == ZYDIS_OPERAND_TYPE_MEMORY && operand.mem.base == ZYDIS_REGISTER_RIP) {
        rip_relative = true;
      }
    }
    if (rip_relative) {
      if (instruction.raw.disp.size != 32 || instruction.raw.disp.offset == 0) {
        return "the instruction before it is relative";
      }
      displacement = instruction.raw.disp.offset;
    } else if ((instruction.attributes & ZYDIS_ATTRIB_IS_RELATIVE) != 0) {
      return "the instruction before it is relative";
    }
    return nullptr;
  };
  std::size_t previous_displacement = 0;
  if (const char* why = why_not_movable(previous, site, previous_displacement)) return why;
  // No direct branch of the function may land after the moved code's start, up to the site.
  const std::span<const std::uint8_t> area(reinterpret_cast<const std::uint8_t*>(area_begin),
                                           area_end - area_begin);
  auto known = shapes.find(function->begin);
  if (known == shapes.end()) {
    known = shapes.emplace(function->begin, shape_of(area, area_begin, *function, written)).first;
  }
  const FunctionShape& shape = known->second;
  // A jump table may land on the site itself (a case that enters there): not seen, so refused.
  if (!shape.decoded) return "its function does not decode";
  if (shape.jumps_through_register) return "its function has a jump table";
  // The one branch that may land after the moved code's jump: an unconditional `jmp` right
  // after the site back into the run's instructions after the jump, which keep their bytes: the
  // call repeated forever, as glibc's start_thread ends a thread (`xor %edi,%edi; mov %edx,%eax;
  // syscall; jmp` back to the xor). Its first time goes through the trampoline; the loop runs
  // only if the call returned (exit never does), and then straight to the kernel.
  std::uintptr_t loop_target = 0;
  {
    const auto* after = reinterpret_cast<const std::uint8_t*>(site + 2);
    if (site + 4 <= area_end && after[0] == 0xeb) {
      loop_target = site + 4 + static_cast<std::int8_t>(after[1]);
    } else if (site + 7 <= area_end && after[0] == 0xe9) {
      std::int32_t displacement = 0;
      std::memcpy(&displacement, after + 1, sizeof displacement);
      loop_target = site + 7 + displacement;
    }
  }
  const auto lands_after = [&](std::uintptr_t at) {
    auto target = std::upper_bound(shape.branch_targets.begin(), shape.branch_targets.end(), at);
    if (target != shape.branch_targets.end() && *target == loop_target &&
        loop_target >= at + kSlotBytes && loop_target < site) {
      ++target;  // branch_targets has one entry per branch: any other one to it is refused
    }
    return target != shape.branch_targets.end() && *target <= site;
  };
  if (lands_after(previous)) {
    return "a branch lands on it or between it and the instruction before";
  }
  if (site - previous >= kSlotBytes && can_write_moved_jump(previous)) {
    displacement_offset = previous_displacement;
    return nullptr;
  }
  const char* why = site - previous < kSlotBytes
                        ? "the instruction before it is shorter than 5 bytes"
                        : "the instruction before it crosses a cache line";
  // A run of instructions ending at the site, longer by one instruction each step back.
  const auto previous_start = std::lower_bound(shape.starts.begin(), shape.starts.end(), previous);
  if (previous_start == shape.starts.end() || *previous_start != previous) return why;
  std::size_t rip_relative = previous_displacement != 0 ? 1 : 0;
  std::size_t run_displacement = previous_displacement;  // from the run's start
  for (auto start = previous_start; start != shape.starts.begin();) {
    const std::uintptr_t end = *start;
    const std::uintptr_t at = *--start;
    if (at < function->begin || at < area_begin || site - at > kMaxMovedInstruction) break;
    std::size_t displacement = 0;
    if (why_not_movable(at, end, displacement) != nullptr) break;
    if (run_displacement != 0) run_displacement += end - at;
    if (displacement != 0) {
      if (++rip_relative > 1) break;
      run_displacement = displacement;
    }
    if (end - at >= kSlotBytes && can_write_moved_jump(at) && !lands_after(at)) {
      moved_from = at;
      displacement_offset = run_displacement;
      return nullptr;
    }
  }
  return why;
}

// The near mechanism: `patches` (sites of [area_begin, area_end), which lies in one image whose
// functions are `functions`; `previous[i]` is the instruction before patches[i]'s site) get a
// padding slot and a trampoline each, and a `jmp rel8` to the slot as their replacement; those
// without padding within reach get their preceding instruction (or a run of instructions ending
// at the site) moved into their trampoline and a `jmp rel32` in its place, where why_not_moved()
// allows it. The others are taken out and counted in
// `stats`.
void route_through_padding(std::vector<Patch>& patches, std::span<const std::uintptr_t> previous,
                           std::uintptr_t area_begin, std::uintptr_t area_end,
                           const FunctionTable& functions, ImageStats& stats) {
  std::vector<std::uintptr_t> sites;
  for (const Patch& patch : patches) sites.push_back(patch.address);
  const std::span<const std::uint8_t> area(reinterpret_cast<const std::uint8_t*>(area_begin),
                                           area_end - area_begin);
  const std::vector<std::uintptr_t> written = written_slots_in(area_begin, area_end);
  // A site rewritten before gets its own slot back; no other site ever gets a written one.
  std::vector<PaddingSlot> slots;
  std::vector<std::uintptr_t> fresh;
  for (const std::uintptr_t site : sites) {
    if (const std::uintptr_t slot = earlier_slot_of(site)) {
      slots.push_back({site, slot, slot + kPaddingSlotSize});
    } else {
      fresh.push_back(site);
    }
  }
  // Between functions first: that needs no decoding of functions. Filler inside functions
  // (which needs each reached function decoded to its end) only for the sites left without.
  std::vector<std::uintptr_t> taken = written;
  for (const std::uintptr_t slot : slots_taken_in(area_begin, area_end)) taken.push_back(slot);
  std::sort(taken.begin(), taken.end());
  taken.erase(std::unique(taken.begin(), taken.end()), taken.end());
  {
    const std::vector<PaddingSlot> first = assign_padding_slots(
        fresh,
        find_padding_gaps_near(area, area_begin, functions.functions, fresh, written,
                               /*inside_functions=*/false),
        taken);
    slots.insert(slots.end(), first.begin(), first.end());
    std::sort(slots.begin(), slots.end(),
              [](const PaddingSlot& a, const PaddingSlot& b) { return a.site < b.site; });
  }
  std::vector<std::uintptr_t> unslotted;
  {
    auto given = slots.begin();
    for (const std::uintptr_t site : sites) {
      while (given != slots.end() && given->site < site) ++given;
      if (given == slots.end() || given->site != site) unslotted.push_back(site);
    }
  }
  if (!unslotted.empty()) {
    for (const PaddingSlot& slot : slots) taken.push_back(slot.slot);
    std::sort(taken.begin(), taken.end());
    const std::vector<PaddingSlot> more = assign_padding_slots(
        unslotted,
        find_padding_gaps_near(area, area_begin, functions.functions, unslotted, written), taken);
    slots.insert(slots.end(), more.begin(), more.end());
    std::sort(slots.begin(), slots.end(),
              [](const PaddingSlot& a, const PaddingSlot& b) { return a.site < b.site; });
  }
  std::vector<Patch> routed;
  std::map<std::uintptr_t, FunctionShape> shapes;  // of functions with sites to move, by start
  auto slot = slots.begin();
  for (std::size_t index = 0; index < patches.size(); ++index) {
    const Patch& patch = patches[index];
    while (slot != slots.end() && slot->site < patch.address) ++slot;
    if (slot == slots.end() || slot->site != patch.address) {
      std::size_t displacement_offset = 0;
      std::uintptr_t at = 0;
      if (const char* why = why_not_moved(previous[index], patch.address, functions, area_begin,
                                          area_end, written, shapes, at, displacement_offset)) {
        ++stats.skipped_no_padding;
        bookkeeping().unrewritten[patch.address] = why;
        continue;
      }
      const std::span<const std::uint8_t> moved(reinterpret_cast<const std::uint8_t*>(at),
                                                patch.address - at);
      const std::uintptr_t trampoline = make_site_trampoline(
          patch.address, at + kSlotBytes, MovedInstruction{moved, at, displacement_offset});
      if (trampoline == 0 || !add_moved_instruction(at, trampoline)) {
        ++stats.skipped_no_padding;
        bookkeeping().unrewritten[patch.address] = "no memory for a trampoline within reach";
        continue;
      }
      Patch near = patch;
      near.replacement = near.expected;  // the site stays; the trampoline returns past it
      near.jump_at = at;
      std::memcpy(near.jump_expected.data(), moved.data(), kSlotBytes);
      const auto to_trampoline = static_cast<std::int32_t>(trampoline - (at + kSlotBytes));
      near.jump_bytes[0] = kNearJumpOpcode;
      std::memcpy(near.jump_bytes.data() + 1, &to_trampoline, sizeof to_trampoline);
      routed.push_back(near);
      continue;
    }
    Patch near = patch;
    const auto to_slot = static_cast<std::int8_t>(static_cast<std::intptr_t>(slot->slot) -
                                                  static_cast<std::intptr_t>(patch.address + 2));
    near.replacement = static_cast<std::uint16_t>(
        kShortJumpOpcode | (static_cast<std::uint16_t>(static_cast<std::uint8_t>(to_slot)) << 8));
    if (bookkeeping().written_slots.count(slot->slot) != 0) {
      // The site's own slot from before, jumping to its trampoline still: left as it is.
      near.slot = slot->slot;
      near.slot_length = kPaddingSlotSize;
      std::memcpy(near.slot_expected.data(), reinterpret_cast<const void*>(slot->slot),
                  kPaddingSlotSize);
      near.slot_bytes = near.slot_expected;
      routed.push_back(near);
      continue;
    }
    const std::uintptr_t trampoline =
        make_site_trampoline(patch.address, slot->slot + kPaddingSlotSize);
    if (trampoline == 0) {
      ++stats.skipped_no_padding;
      bookkeeping().unrewritten[patch.address] = "no memory for a trampoline within reach";
      continue;
    }
    near.slot = slot->slot;
    near.slot_length = slot->end - slot->slot;
    std::memcpy(near.slot_expected.data(), reinterpret_cast<const void*>(slot->slot),
                near.slot_length);
    const auto to_trampoline =
        static_cast<std::int32_t>(trampoline - (slot->slot + kPaddingSlotSize));
    near.slot_bytes.fill(0xcc);  // int3 after the jump, to the end of the filler it cut
    near.slot_bytes[0] = kNearJumpOpcode;
    std::memcpy(near.slot_bytes.data() + 1, &to_trampoline, sizeof to_trampoline);
    routed.push_back(near);
  }
  seal_site_trampolines();
  patches = std::move(routed);
}

void rewrite_decided(const ScanResult& scan, std::uintptr_t area_begin, std::uintptr_t area_end,
                     const FunctionTable* functions, const std::vector<Mapping>& map,
                     std::uint64_t generation, ImageStats& stats);

// Decides and rewrites `candidates`, the candidates of [begin, end), which lies in one image whose
// functions are `functions`, adding to `stats`. [area_begin, area_end) is the readable code
// around it where padding may be used (the near mechanism): the whole segment. Returns the
// scanner's decisions.
ScanResult rewrite_candidates(std::uintptr_t begin, std::uintptr_t end,
                              std::span<const std::uintptr_t> candidates,
                              const FunctionTable& functions, const std::vector<Mapping>& map,
                              std::uint64_t generation, ImageStats& stats,
                              std::uintptr_t area_begin = 0, std::uintptr_t area_end = 0) {
  if (area_end == 0) {
    area_begin = begin;
    area_end = end;
  }
  ScanResult scan =
      scan_candidates(std::span(reinterpret_cast<const std::uint8_t*>(begin), end - begin), begin,
                      functions.functions, candidates);
  stats.bytes_decoded += scan.bytes_decoded;
  rewrite_decided(scan, area_begin, area_end, &functions, map, generation, stats);
  return scan;
}

// Rewrites what the scanner decided (or the scan cache remembered) about the sites of one image
// (`functions`: its function table, needed by the near mechanism only).
void rewrite_decided(const ScanResult& scan, std::uintptr_t area_begin, std::uintptr_t area_end,
                     const FunctionTable* functions, const std::vector<Mapping>& map,
                     std::uint64_t generation, ImageStats& stats) {
  const auto own_begin = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_begin);
  const auto own_end = reinterpret_cast<std::uintptr_t>(zpoline_detail_code_end);
  std::vector<Patch> patches;
  std::vector<std::uintptr_t> previous;
  for (const SiteDecision& site : scan.sites) {
    if (site.address >= own_begin && site.address < own_end) continue;  // our raw syscalls
    // Already rewritten: a moved instruction's site keeps its bytes (and traps under SUD if a
    // thread ran it from elsewhere).
    if (rewritten().count(site.address) != 0) continue;
    const auto covers_site = [&](const AddressRange& range) {
      return overlaps(site.address, site.address + 2, range);
    };
    const bool excluded = std::any_of(current_options().exclude_ranges.begin(),
                                      current_options().exclude_ranges.end(), covers_site) ||
                          std::any_of(excluded_code().begin(), excluded_code().end(), covers_site);
    if (excluded) {
      ++stats.skipped_excluded;
      continue;
    }
    switch (site.kind) {
      case SiteKind::rewritable: {
        const auto* bytes = reinterpret_cast<const std::uint8_t*>(site.address);
        const std::uint16_t original = static_cast<std::uint16_t>(bytes[0] | (bytes[1] << 8));
        patches.push_back({site.address, original, kCallRaxBytes});
        previous.push_back(site.previous);
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
  const bool near = current_options().near_mechanism;
  if (near && !patches.empty()) {
    route_through_padding(patches, previous, area_begin, area_end, *functions, stats);
  }
  for (const Patch& patch : patches) {
    if (!site_registry().add(patch.address)) throw std::bad_alloc();
  }
  const PatchOutcome outcome = apply_patches(patches, map, generation);
  stats.sites_rewritten += outcome.written;
  if (near) {
    stats.sites_through_moved_instruction += outcome.written_with_jump;
    stats.sites_through_padding += outcome.written - outcome.written_with_jump;
  } else {
    stats.sites_through_page_zero += outcome.written;
  }
  stats.skipped_undecodable += outcome.mismatched + outcome.gone;
  for (const Patch& patch : patches) {
    RewrittenSite site{patch.expected, patch.replacement, patch.slot, patch.jump_at, {}, {}};
    if (patch.jump_at != 0) {
      site.jump_original = patch.jump_expected;
      site.jump_bytes = patch.jump_bytes;
    }
    rewritten().emplace(patch.address, site);
    if (patch.slot != 0) bookkeeping().written_slots.emplace(patch.slot, patch.address);
  }
}

// The scan cache's key for `image`, from the mapping of its first loadable segment, and that
// mapping's path.
std::optional<ScanCacheKey> scan_cache_key_of(const Image& image, const std::vector<Mapping>& map,
                                              std::string& file) {
  for (const ElfW(Phdr) & segment : image.headers) {
    if (segment.p_type != PT_LOAD) continue;
    const Mapping* mapping = find_mapping(map, image.info.dlpi_addr + segment.p_vaddr);
    if (mapping == nullptr) return std::nullopt;
    file = mapping->path;
    return scan_cache_key(*mapping, image.path, image.info.dlpi_addr, image.headers.data(),
                          static_cast<unsigned>(image.headers.size()));
  }
  return std::nullopt;
}

// Rewrites `image` from the scan cache's decisions, if they fit it: the same executable segments,
// scanned to the same length, and every site still a `syscall` or `sysenter` (or one of ours
// already). False, with nothing done, if not.
bool rewrite_from_scan_cache(const Image& image, const CachedImage& cached,
                             const std::vector<Mapping>& map, std::uint64_t generation,
                             FileSizes& sizes, ImageStats& stats) {
  struct Segment {
    std::uintptr_t begin, end;
    std::uint64_t memory_size;
    const CachedSegment* cached;
  };
  std::vector<Segment> segments;
  for (const ElfW(Phdr) & segment : image.headers) {
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
    if (segments.size() == cached.segments.size()) return false;
    const CachedSegment& entry = cached.segments[segments.size()];
    const std::uintptr_t begin = image.info.dlpi_addr + segment.p_vaddr;
    const std::uintptr_t end = readable_end(map, begin, begin + segment.p_memsz, sizes);
    if (entry.vaddr != segment.p_vaddr || entry.length != end - begin) return false;
    for (const SiteDecision& site : entry.sites) {
      // Inside [begin, end), which readable_end() found mapped readable (as the byte search
      // reads it), so read directly: a safe_read() per site was most of the time saved.
      const std::uintptr_t address = begin + site.address;
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(address);
      const bool instruction = bytes[0] == 0x0f && (bytes[1] == 0x05 || bytes[1] == 0x34);
      if (!instruction && rewritten().count(address) == 0) return false;
    }
    segments.push_back({begin, end, segment.p_memsz, &entry});
  }
  if (segments.size() != cached.segments.size()) return false;
  for (const Segment& segment : segments) {
    stats.code_bytes += segment.memory_size;
    ScanResult scan;
    for (const SiteDecision& site : segment.cached->sites) {
      scan.sites.push_back({segment.begin + site.address, site.kind,
                            site.previous == 0 ? 0 : segment.begin + site.previous - 1});
    }
    if (!scan.sites.empty()) {
      rewrite_decided(scan, segment.begin, segment.end, nullptr, map, generation, stats);
    }
  }
  return true;
}

// The byte search comes first: most images hold no candidate at all, and then need neither a
// function table nor a decoder. With the scan cache (`cache`; page-0 mechanism only: the near one
// needs the function table anyway) the decisions of an earlier process replace all three.
void rewrite_image(const Image& image, const std::vector<Mapping>& map, std::uint64_t generation,
                   FileSizes& sizes, ImageStats& stats, const ScanCacheDirectory* cache) {
  std::optional<ScanCacheKey> key;
  std::string file;
  if (cache != nullptr && cache->usable() && !current_options().near_mechanism) {
    key = scan_cache_key_of(image, map, file);
    if (key) {
      if (const std::optional<CachedImage> cached = load_scan_cache(*cache, *key)) {
        if (rewrite_from_scan_cache(image, *cached, map, generation, sizes, stats)) {
          stats.scan_from_cache = true;
          return;
        }
      }
    }
  }
  CachedImage decided;
  std::optional<FunctionTable> functions;
  for (const ElfW(Phdr) & segment : image.headers) {
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
    stats.code_bytes += segment.p_memsz;
    // The dynamic linker has finished with the image: the segment's file bytes are mapped from
    // the file, and the rest up to p_memsz is zero fill mapped anonymously; both can be read.
    // Only the readable prefix is scanned all the same, for a segment made unreadable since or a
    // file shorter than its headers say.
    const std::uintptr_t begin = image.info.dlpi_addr + segment.p_vaddr;
    const std::uintptr_t end = readable_end(map, begin, begin + segment.p_memsz, sizes);
    CachedSegment& remembered = decided.segments.emplace_back();
    remembered.vaddr = segment.p_vaddr;
    remembered.length = end - begin;
    // An entry only from the file's own bytes: code patched already (by an earlier install of
    // this process, or anyone else) would teach later processes to leave sites alone.
    if (key && !code_matches_file(file, segment.p_offset, segment.p_filesz,
                                  reinterpret_cast<const void*>(begin), end - begin)) {
      key.reset();
    }
    const std::vector<std::uintptr_t> candidates = candidates_in(begin, end);
    if (candidates.empty()) continue;
    if (!functions) functions = functions_of(image.info, image.path);
    const ScanResult scan =
        rewrite_candidates(begin, end, candidates, *functions, map, generation, stats);
    for (const SiteDecision& site : scan.sites) {
      // Offsets in the segment; `previous` one more, so that 0 still says "none".
      remembered.sites.push_back(
          {site.address - begin, site.kind, site.previous == 0 ? 0 : site.previous - begin + 1});
    }
  }
  if (key) store_scan_cache(*cache, *key, decided);
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

bool is_excluded(const std::string& path) {
  return std::any_of(current_options().exclude_paths.begin(), current_options().exclude_paths.end(),
                     [&](const std::string& entry) { return path_matches_exclusion(path, entry); });
}

// An ELF image being mapped by the dynamic linker (dlopen) or by hand, described from its file:
// the program headers are read from the file, and the load bias follows from where the file
// offset of `mapping` ended up.
struct FileImage {
  std::string path;
  // p_filesz of each loadable segment clipped to the part found mapped from the file where it
  // belongs (clip_to_readable_memory()): what of the segment can be read, and holds its bytes.
  std::vector<ElfW(Phdr)> headers;
  dl_phdr_info info{};
};

// The first half of describe_file_image(), from the file alone: the program headers (not yet
// clipped), the path, and the load bias in image.info.dlpi_addr.
bool read_file_image(const Mapping& mapping, FileSizes& sizes, FileImage& image) {
  const int fd = open(mapping.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  ElfW(Ehdr) header{};
  struct stat status {};
  bool ok = fstat(fd, &status) == 0 && S_ISREG(status.st_mode) &&
            pread(fd, &header, sizeof header, 0) == static_cast<ssize_t>(sizeof header) &&
            std::equal(header.e_ident, header.e_ident + SELFMAG, ELFMAG) &&
            header.e_ident[EI_CLASS] == ELFCLASS64 && header.e_machine == EM_X86_64 &&
            header.e_phentsize == sizeof(ElfW(Phdr)) && header.e_phnum > 0 && header.e_phnum <= 256;
  if (ok) {
    image.headers.resize(header.e_phnum);
    const ssize_t bytes = static_cast<ssize_t>(header.e_phnum * sizeof(ElfW(Phdr)));
    ok = pread(fd, image.headers.data(), static_cast<std::size_t>(bytes),
               static_cast<off_t>(header.e_phoff)) == bytes;
  }
  close(fd);
  if (!ok) return false;
  // The file is open anyway: its size costs one fstat(), and, unlike a stat() compared with
  // /proc/self/maps, is known on every file system. It is the size of the file the path names
  // now, which the program headers come from too.
  sizes.set(mapping, static_cast<std::uint64_t>(status.st_size));

  // The segment holding the mapping's first byte gives the load bias.
  bool found = false;
  std::uintptr_t bias = 0;
  for (const ElfW(Phdr) & segment : image.headers) {
    if (segment.p_type != PT_LOAD) continue;
    const std::uint64_t file_begin = segment.p_offset & ~(kPageSize - 1);
    const std::uint64_t file_end = segment.p_offset + segment.p_filesz;
    if (mapping.offset < file_begin || mapping.offset >= file_end) continue;
    const std::uintptr_t vaddr =
        (segment.p_vaddr & ~(kPageSize - 1)) + (mapping.offset - file_begin);
    bias = mapping.begin - vaddr;
    found = true;
    break;
  }
  if (!found) return false;
  image.path = mapping.path;
  image.info.dlpi_addr = bias;
  return true;
}

// The addresses the loadable segments of `image` (read by read_file_image()) claim, from the
// first one's page to the last one's end. Segments that do not fit in the address space are left
// out: clip_to_readable_memory() gives them no bytes anyway.
AddressRange image_span(const FileImage& image) {
  AddressRange span{~std::uintptr_t{0}, 0};
  for (const ElfW(Phdr) & segment : image.headers) {
    if (segment.p_type != PT_LOAD) continue;
    std::uintptr_t begin = 0;
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;
    if (__builtin_add_overflow(image.info.dlpi_addr, segment.p_vaddr, &start) ||
        __builtin_add_overflow(start, std::max(segment.p_memsz, segment.p_filesz), &end) ||
        __builtin_add_overflow(image.info.dlpi_addr, segment.p_vaddr & ~(kPageSize - 1), &begin)) {
      continue;
    }
    span.begin = std::min(span.begin, begin);
    span.end = std::max(span.end, end);
  }
  return span.begin < span.end ? span : AddressRange{};
}

// The second half of describe_file_image(): `map` must list every mapping that overlaps
// image_span(image).
void clip_file_image(FileImage& image, const Mapping& mapping, const std::vector<Mapping>& map,
                     FileSizes& sizes) {
  // Code, .eh_frame_hdr and .eh_frame are read from memory (the symbol tables from the file).
  // While the dynamic linker maps a library, its first mapping spans all the segments with the
  // bytes of the first one's file offsets, up to the file's end and past it; only the parts of
  // segments mapped from the right file offsets, within the file, may be read.
  clip_to_readable_memory(image.headers, image.info.dlpi_addr, map, sizes, &mapping);
  image.info.dlpi_name = image.path.c_str();
  image.info.dlpi_phdr = image.headers.data();
  image.info.dlpi_phnum = static_cast<ElfW(Half)>(image.headers.size());
}

bool describe_file_image(const Mapping& mapping, const std::vector<Mapping>& map, FileSizes& sizes,
                         FileImage& image) {
  if (!read_file_image(mapping, sizes, image)) return false;
  clip_file_image(image, mapping, map, sizes);
  return true;
}

// The code of an executable segment of `image` that can be read now: its file bytes, as far as
// describe_file_image() found them mapped.
struct Code {
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;
};
std::vector<Code> readable_code(const FileImage& image) {
  std::vector<Code> code;
  for (const ElfW(Phdr) & segment : image.headers) {
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X) || segment.p_filesz == 0) continue;
    const std::uintptr_t begin = image.info.dlpi_addr + segment.p_vaddr;
    code.push_back({begin, begin + segment.p_filesz});
  }
  return code;
}

const FunctionTable& cached_functions(const FileImage& image) {
  auto& cache = bookkeeping().function_cache;
  const auto key = std::make_pair(image.path, static_cast<std::uintptr_t>(image.info.dlpi_addr));
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, functions_of(image.info, image.path)).first;
  return it->second;
}

ImageStats& late_stats_for(const std::string& path, std::uintptr_t base) {
  for (ImageStats& stats : late_images()) {
    if (stats.path == path && stats.base == base) return stats;
  }
  ImageStats& stats = late_images().emplace_back();
  stats.path = path;
  stats.base = base;
  return stats;
}

void forget_sites(std::uintptr_t begin, std::uintptr_t end) {
  // Slots in the range, and slots of the sites in it (the range may be one site, when too many
  // unmaps were made to keep them: forget_unmapped_code()).
  auto& written = bookkeeping().written_slots;
  written.erase(written.lower_bound(begin), written.lower_bound(end));
  std::erase_if(written,
                [&](const auto& entry) { return entry.second >= begin && entry.second < end; });
  // Function tables of images loaded in the range: another file may be loaded there next.
  std::erase_if(bookkeeping().function_cache, [&](const auto& entry) {
    return entry.first.second >= begin && entry.first.second < end;
  });
  auto& unrewritten = bookkeeping().unrewritten;
  unrewritten.erase(unrewritten.lower_bound(begin), unrewritten.lower_bound(end));
  auto first = rewritten().lower_bound(begin > 1 ? begin - 1 : 0);
  auto last = rewritten().lower_bound(end);
  for (auto it = first; it != last; ++it) site_registry().remove(it->first);
  rewritten().erase(first, last);
}

// With rewrite_lock() held, first thing: the sites of code unmapped since the last time leave
// the bookkeeping and the registry (a later mapping at their address holds other code).
void forget_unmapped_code() {
  AddressRange ranges[UnmappedRanges::kCapacity];
  std::size_t count = 0;
  bool overflowed = false;
  {
    OwnedLockGuard guard(code_change_lock());
    count = unmapped.count;
    overflowed = unmapped.overflowed;
    std::copy(unmapped.ranges, unmapped.ranges + count, ranges);
    unmapped.count = 0;
    unmapped.overflowed = false;
  }
  for (std::size_t i = 0; i < count; ++i) forget_sites(ranges[i].begin, ranges[i].end);
  if (!overflowed) return;
  // Too many to keep: every site that no longer holds its rewritten bytes in executable memory.
  const std::vector<Mapping> map = read_memory_map();
  std::vector<std::uintptr_t> gone;
  for (const auto& [address, site] : rewritten()) {
    const Mapping* mapping = find_mapping(map, address);
    std::uint16_t bytes = 0;
    if (mapping == nullptr || !(mapping->protection & PROT_EXEC) ||
        !(mapping->protection & PROT_READ) ||
        !safe_read(&bytes, reinterpret_cast<void*>(address), 2) || bytes != site.replacement) {
      gone.push_back(address);
    }
  }
  for (std::uintptr_t address : gone) forget_sites(address, address + 1);
}

// Holds rewrite_lock() for rewriting work on this thread, after forget_unmapped_code().
class RewriteLock {
 public:
  RewriteLock() {
    rewrite_lock().lock();
    forget_unmapped_code();
  }
  explicit RewriteLock(std::try_to_lock_t) : owns_(rewrite_lock().try_lock()) {
    if (owns_) forget_unmapped_code();
  }
  ~RewriteLock() {
    if (owns_) rewrite_lock().unlock();
  }
  bool owns_lock() const { return owns_; }
  RewriteLock(const RewriteLock&) = delete;
  RewriteLock& operator=(const RewriteLock&) = delete;

 private:
  bool owns_ = true;
};

// Sites rewritten in anonymous memory (JIT code, after their first trap), with the bytes before
// them: a JIT that copies code it generated copies such a site too, and the copy is recognised by
// those bytes (adopt_copied_site()). A ring; written with rewrite_lock() held, read by any thread.
// Up to 14 bytes, as many as can be read before the site (a JIT stub may start its page); a copy
// is recognised by the bytes both have, at least a `mov $number, %eax` (5 bytes).
struct AnonymousSite {
  static constexpr std::size_t kContext = 14;
  static constexpr std::size_t kMinimumContext = 5;
  std::uint8_t before[kContext];  // the last `length` bytes are the ones before the site
  std::uint8_t length;
};
constexpr std::size_t kAnonymousSites = 256;
AnonymousSite anonymous_sites[kAnonymousSites];
std::size_t next_anonymous_site = 0;

__attribute__((target("general-regs-only"))) std::size_t read_context(
    std::uintptr_t site, std::uint8_t (&before)[AnonymousSite::kContext]) {
  std::size_t length = AnonymousSite::kContext;
  while (length >= AnonymousSite::kMinimumContext &&
         !safe_read(before + AnonymousSite::kContext - length,
                    reinterpret_cast<const void*>(site - length), length)) {
    --length;
  }
  return length >= AnonymousSite::kMinimumContext ? length : 0;
}

void remember_anonymous_site(std::uintptr_t site) {
  AnonymousSite entry{};
  entry.length = static_cast<std::uint8_t>(read_context(site, entry.before));
  if (entry.length == 0) return;
  anonymous_sites[next_anonymous_site++ % kAnonymousSites] = entry;
}

// The memory map and the code change generation it goes with (read first).
struct CurrentMap {
  std::uint64_t generation = code_change_generation();
  std::vector<Mapping> map = read_memory_map();
};

// The part of the memory map that rewriting code mapped after install needs: the mappings
// around that code, widened to the whole image once its headers are known (or the whole map,
// where the kernel cannot be asked for a range). A dlopen in a process with a few hundred
// mappings would otherwise read and parse them all for the few of one library. The generation is
// the one read before the first read of the map: older than any of its reads, so the patcher
// checks the protections again if anything changed since (patcher.hpp).
class LocalMap {
 public:
  LocalMap(std::uintptr_t begin, std::uintptr_t end)
      : generation_(code_change_generation()),
        begin_(begin),
        end_(end),
        map_(read_memory_map_in(begin, end, all_)) {}
  // Makes the map list every mapping that overlaps [begin, end) too. Invalidates pointers into
  // map().
  void cover(AddressRange range) {
    if (all_ || range.begin >= range.end || (range.begin >= begin_ && range.end <= end_)) return;
    begin_ = std::min(begin_, range.begin);
    end_ = std::max(end_, range.end);
    map_ = read_memory_map_in(begin_, end_, all_);
  }
  const std::vector<Mapping>& map() const { return map_; }
  std::uint64_t generation() const { return generation_; }

 private:
  std::uint64_t generation_;
  std::uintptr_t begin_;
  std::uintptr_t end_;
  bool all_ = false;
  std::vector<Mapping> map_;
};

// A site an earlier install rewrote that this install's options exclude (by path or range): it
// gets its instruction back, so that it goes to the kernel and not to the hook.
void restore_newly_excluded_sites(const std::vector<Image>& images, const std::vector<Mapping>& map,
                                  std::uint64_t generation) {
  if (rewritten().empty()) return;
  std::vector<AddressRange> excluded = current_options().exclude_ranges;
  for (const Image& image : images) {
    if (!is_excluded(image.path)) continue;
    for (const ElfW(Phdr) & segment : image.headers) {
      if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
      const std::uintptr_t begin = image.info.dlpi_addr + segment.p_vaddr;
      excluded.push_back({begin, begin + segment.p_memsz});
    }
  }
  std::vector<Patch> restores;
  for (const AddressRange& range : excluded) {
    auto first = rewritten().lower_bound(range.begin > 1 ? range.begin - 1 : 0);
    for (auto it = first; it != rewritten().end() && it->first < range.end; ++it) {
      if (overlaps(it->first, it->first + 2, range)) {
        restores.push_back(restore_patch(it->first, it->second));
      }
    }
  }
  if (restores.empty()) return;
  std::sort(restores.begin(), restores.end(),
            [](const Patch& a, const Patch& b) { return a.address < b.address; });
  restores.erase(std::unique(restores.begin(), restores.end(),
                             [](const Patch& a, const Patch& b) { return a.address == b.address; }),
                 restores.end());
  apply_patches(restores, map, generation);
  for (const Patch& patch : restores) rewritten().erase(patch.address);
}

}  // namespace

void register_moved_sites(std::uintptr_t from, std::uintptr_t to, std::size_t length) noexcept {
  MappingSpan spans[4];
  const long count = read_mappings_in(to, to + length, spans, std::size(spans));
  for (long s = 0; s < count; ++s) {
    if ((spans[s].protection & (PROT_EXEC | PROT_READ)) != (PROT_EXEC | PROT_READ)) continue;
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(spans[s].begin);
    for (std::uintptr_t at = spans[s].begin; at + 1 < spans[s].end; ++at, ++bytes) {
      if (bytes[0] == 0xff && bytes[1] == 0xd0 && site_registry().contains(at - to + from)) {
        site_registry().add(at);
      }
    }
  }
}

bool adopt_copied_site(std::uintptr_t site) noexcept {
  std::uint8_t instruction[2];
  if (!safe_read(instruction, reinterpret_cast<const void*>(site), sizeof instruction) ||
      instruction[0] != 0xff || instruction[1] != 0xd0) {
    return false;
  }
  std::uint8_t before[AnonymousSite::kContext];
  const std::size_t length = read_context(site, before);
  for (const AnonymousSite& entry : anonymous_sites) {
    // The bytes both have: what lies before the code a JIT copies is not copied with it.
    const std::size_t common = std::min<std::size_t>(entry.length, length);
    if (common < AnonymousSite::kMinimumContext) continue;
    bool same = true;
    for (std::size_t i = AnonymousSite::kContext - common; i < AnonymousSite::kContext; ++i) {
      same = same && entry.before[i] == before[i];
    }
    if (same) return site_registry().add(site);
  }
  return false;
}

bool path_matches_exclusion(const std::string& path, const std::string& entry) {
  if (entry.find('/') != std::string::npos) return path == entry;
  const std::size_t slash = path.rfind('/');
  return (slash == std::string::npos ? path : path.substr(slash + 1)) == entry;
}

InstallStats rewrite_loaded_code(const RewriteOptions& options, bool scan) {
  const auto start = std::chrono::steady_clock::now();
  RewritingScope scope;
  RewriteLock lock;
  current_options() = options;
  InstallStats stats;
  std::vector<Image> images;
  dl_iterate_phdr(collect_image, &images);
  const CurrentMap current;
  const std::vector<Mapping>& map = current.map;
  FileSizes sizes;
  std::erase_if(images, [&](const Image& image) { return is_special_image(image, map); });
  for (Image& image : images) {
    if (image.path.empty()) image.path = executable_path();
  }
  restore_newly_excluded_sites(images, map, current.generation);
  std::optional<ScanCacheDirectory> cache;
  if (scan && !options.scan_cache_directory.empty() && !options.near_mechanism) {
    cache.emplace(options.scan_cache_directory);
  }

  for (Image& image : images) {
    const auto image_start = std::chrono::steady_clock::now();
    ImageStats image_stats;
    image_stats.path = image.path;
    image_stats.base = image.info.dlpi_addr;
    image_stats.excluded = is_excluded(image.path);
    if (!image_stats.excluded && scan) {
      // The function table reads .eh_frame_hdr and .eh_frame through these headers.
      clip_to_readable_memory(image.headers, image.info.dlpi_addr, map, sizes);
      image.info.dlpi_phdr = image.headers.data();
      rewrite_image(image, map, current.generation, sizes, image_stats, cache ? &*cache : nullptr);
    }
    image_stats.time = std::chrono::steady_clock::now() - image_start;
    stats.images.push_back(std::move(image_stats));
  }
  stats.total_time = std::chrono::steady_clock::now() - start;
  return stats;
}

namespace {

// rewrite_new_code() with the rewrite lock held, in a fault recovery scope.
void rewrite_new_code_locked(std::uintptr_t begin, std::size_t length,
                             std::chrono::steady_clock::time_point start) {
  const std::uintptr_t end = begin + length;
  LocalMap local(begin & ~(kPageSize - 1), end);
  FileSizes sizes;
  for (std::uintptr_t at = begin & ~(kPageSize - 1); at < end;) {
    const Mapping* found = find_mapping(local.map(), at);
    if (found == nullptr) break;
    const Mapping mapping = *found;  // a copy: local.cover() reads the map again
    const std::uintptr_t range_end = std::min(end, mapping.end);
    const bool executable = (mapping.protection & PROT_EXEC) && (mapping.protection & PROT_READ);
    if (executable && is_file_mapping(mapping)) {
      FileImage image;
      if (read_file_image(mapping, sizes, image)) {
        local.cover(image_span(image));
        clip_file_image(image, mapping, local.map(), sizes);
        ImageStats& stats = late_stats_for(image.path, image.info.dlpi_addr);
        stats.excluded = is_excluded(image.path);
        // Not the whole mapping: only the executable segments' file bytes are code, and only
        // those describe_file_image() found mapped can be read. The dynamic linker's first
        // mapping of a library spans all its segments with the code's protection; for a library
        // whose first segment is its code (-z noseparate-code) and whose .bss is large, most of
        // it lies past the file's end, where a read raises SIGBUS.
        std::optional<FunctionTable> functions;
        for (const Code& code : readable_code(image)) {
          const std::uintptr_t first = std::max(at, code.begin);
          const std::uintptr_t last = std::min(range_end, code.end);
          if (first >= last) continue;
          stats.code_bytes += last - first;
          if (stats.excluded) continue;
          const std::vector<std::uintptr_t> candidates = candidates_in(first, last);
          if (candidates.empty()) continue;
          if (!functions) functions = functions_of(image.info, image.path);
          // Decoded within all of the segment's readable code, so that a function starting
          // before `first` (mprotect of a few pages) is decoded from its start.
          rewrite_candidates(code.begin, code.end, candidates, *functions, local.map(),
                             local.generation(), stats);
        }
        // Time since the previous image's share was counted: a range spanning several
        // mappings would otherwise count its start more than once.
        const auto now = std::chrono::steady_clock::now();
        stats.time += now - start;
        start = now;
      }
    } else if (executable) {
      // Anonymous code (a JIT): no function boundaries to decode from. Its candidates are
      // counted; only the SUD safety net can reach them.
      ImageStats& stats = late_stats_for(mapping.path.empty() ? "[anonymous]" : mapping.path, 0);
      stats.code_bytes += range_end - at;
      stats.skipped_undecodable += candidates_in(at, range_end).size();
    }
    at = range_end;
  }
}

}  // namespace

void rewrite_new_code(std::uintptr_t begin, std::size_t length) {
  if (rewriting || new_code_exclusions != 0) return;
  RewritingScope scope;
  const auto start = std::chrono::steady_clock::now();
  RewriteLock lock;
  // Another thread may unmap the code while it is read (a JIT, a dlclose): then it is gone.
  sigjmp_buf recovery;
  if (sigsetjmp(recovery, 1) != 0) return;
  FaultRecovery recoverable(recovery);
  rewrite_new_code_locked(begin, length, start);
}

namespace {

// rewrite_trapped_site() with the rewrite lock held, in a fault recovery scope.
bool rewrite_trapped_site_locked(std::uintptr_t site, const CurrentMap& current) {
  const std::vector<Mapping>& map = current.map;
  const Mapping* mapping = find_mapping(map, site);
  if (mapping == nullptr || !(mapping->protection & PROT_EXEC) ||
      !(mapping->protection & PROT_READ)) {
    return false;
  }
  // Both bytes are read below; the second may be the first of the next mapping.
  const Mapping* second = site + 1 < mapping->end ? mapping : find_mapping(map, site + 1);
  if (second == nullptr || !(second->protection & PROT_READ)) return false;
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(site);
  if (bytes[0] != 0x0f || (bytes[1] != 0x05 && bytes[1] != 0x34)) return false;
  const std::size_t before = rewritten().size();
  if (is_file_mapping(*mapping)) {
    FileSizes sizes;
    FileImage image;
    if (!describe_file_image(*mapping, map, sizes, image) || is_excluded(image.path)) return false;
    const FunctionTable& functions = cached_functions(image);
    const FunctionRange* function = functions.find(site);
    ImageStats& stats = late_stats_for(image.path, image.info.dlpi_addr);
    if (function == nullptr) return false;
    // The function is decoded as far as it lies in readable code of the site's segment (see
    // rewrite_new_code()), not past the file's end nor into bytes of other file offsets.
    const std::vector<Code> code = readable_code(image);
    const auto holds_site = [&](const Code& part) {
      return part.begin <= site && site + 2 <= part.end;
    };
    const auto part = std::find_if(code.begin(), code.end(), holds_site);
    if (part == code.end()) return false;
    const std::uintptr_t range_begin = std::max(function->begin, part->begin);
    const std::uintptr_t range_end = std::min(function->end, part->end);
    rewrite_candidates(range_begin, range_end, candidates_in(range_begin, range_end), functions,
                       map, current.generation, stats, part->begin, part->end);
  } else {
    // Anonymous code (a JIT) has no function boundaries. The trap proves an instruction ending
    // after these two bytes is a syscall; a prefix byte before them would make it longer.
    // The near mechanism needs padding between functions; here there are none to find.
    if (current_options().near_mechanism) return false;
    const std::uint8_t previous = site > mapping->begin ? bytes[-1] : 0;
    const bool maybe_prefixed = (previous >= 0x40 && previous <= 0x4f) || previous == 0x66 ||
                                previous == 0x67 || previous == 0xf2 || previous == 0xf3 ||
                                previous == 0x2e || previous == 0x3e || previous == 0x26 ||
                                previous == 0x36 || previous == 0x64 || previous == 0x65;
    if (maybe_prefixed) return false;
    ImageStats& stats = late_stats_for(mapping->path.empty() ? "[anonymous]" : mapping->path, 0);
    const std::uint16_t original = static_cast<std::uint16_t>(bytes[0] | (bytes[1] << 8));
    const Patch patch{site, original, kCallRaxBytes};
    if (!site_registry().add(site)) return false;
    const PatchOutcome outcome = apply_patches(std::span(&patch, 1), map, current.generation);
    stats.sites_rewritten += outcome.written;
    if (outcome.written) {
      rewritten().emplace(site, RewrittenSite{original, kCallRaxBytes, 0});
      remember_anonymous_site(site);
    }
  }
  return rewritten().count(site) != 0 && rewritten().size() > before;
}

}  // namespace

bool rewrite_trapped_site(std::uintptr_t site) {
  if (rewriting || new_code_exclusions != 0) return false;
  RewritingScope scope;
  RewriteLock lock(std::try_to_lock);
  if (!lock.owns_lock()) return false;
  // The code may be unmapped while it is read: JIT code is, all the time. A fault returns to
  // the recovery point past the destructors of what was allocated after it: the map is read
  // before it (a site unmapped since its trap faults at its first byte, right after the map).
  const CurrentMap current;
  sigjmp_buf recovery;
  if (sigsetjmp(recovery, 1) != 0) return false;
  FaultRecovery recoverable(recovery);
  return rewrite_trapped_site_locked(site, current);
}

void note_unmapped_code(std::uintptr_t begin, std::size_t length) noexcept {
  if (unmapped.count == UnmappedRanges::kCapacity) {
    unmapped.overflowed = true;
    return;
  }
  unmapped.ranges[unmapped.count++] = {begin, begin + length};
}

void exclude_code(AddressRange range) {
  RewritingScope scope;
  RewriteLock lock;
  excluded_code().push_back(range);
}

void include_code_again(AddressRange range) {
  RewritingScope scope;
  RewriteLock lock;
  std::erase_if(excluded_code(), [&](const AddressRange& entry) {
    return entry.begin == range.begin && entry.end == range.end;
  });
}

ScopedNewCodeExclusion::ScopedNewCodeExclusion() noexcept {
  ++new_code_exclusions;
}
ScopedNewCodeExclusion::~ScopedNewCodeExclusion() {
  --new_code_exclusions;
}

std::vector<std::pair<std::uintptr_t, std::string>> near_unrewritten_sites() {
  RewriteLock lock;
  std::vector<std::pair<std::uintptr_t, std::string>> sites;
  for (const auto& [site, why] : bookkeeping().unrewritten) {
    if (rewritten().count(site) == 0) sites.emplace_back(site, why);
  }
  return sites;
}

std::vector<ImageStats> late_code_stats() {
  RewriteLock lock;
  return late_images();
}

std::size_t function_tables_built() {
  RewriteLock lock;
  return tables_built;
}

void restore_rewritten_code() {
  RewritingScope scope;
  RewriteLock lock;
  std::vector<Patch> restores;
  restores.reserve(rewritten().size());
  const CurrentMap current;
  for (const auto& [address, site] : rewritten()) {
    // Skip sites whose library has been unloaded since.
    const Mapping* mapping = find_mapping(current.map, address);
    if (mapping == nullptr || !(mapping->protection & PROT_EXEC)) continue;
    restores.push_back(restore_patch(address, site));
  }
  // The sites stay in the registry: a thread that ran one before its bytes changed back enters
  // the stub all the same, and is served.
  apply_patches(restores, current.map, current.generation);
  rewritten().clear();
}

void reset_rewriting_after_fork() noexcept {
  code_change_lock().release_after_fork();
  site_registry().reset_after_fork();
  if (rewrite_lock().release_after_fork()) {
    // Another thread was rewriting at the fork, and may have left the bookkeeping half-changed:
    // the child starts a new one (the old one is leaked), made at its first use: nothing may be
    // allocated here, where libc's fork has not yet made malloc usable in the child. Its sites
    // stay rewritten and registered.
    bookkeeping_instance = nullptr;
    unmapped = UnmappedRanges{};
  }
}

}  // namespace zpoline::detail
