// Rewriting the code loaded in the process: every image the dynamic linker knows (the
// executable, ld.so, every shared object), minus exclusions, [vdso], and this library's own raw
// syscall instructions.
//
// Contract: called after the trampoline is mapped (a rewritten site may run at once, on any
// thread); the functions here serialise among themselves. Sites are registered in
// site_registry() before their bytes change. Exclusions are those of the latest
// rewrite_loaded_code().
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "zpoline/zpoline.hpp"

namespace zpoline::detail {

struct RewriteOptions {
  std::vector<std::string> exclude_paths;  // validated: non-empty entries
  std::vector<AddressRange> exclude_ranges;
  // Rewrite sites into `jmp rel8` to padding and a per-site trampoline (site_trampolines.hpp)
  // instead of `call *%rax` into page 0.
  bool near_mechanism = false;
  // Where the scan cache lives (scan_cache.hpp); empty: no cache.
  std::string scan_cache_directory;
};

// With scan off (lazy mode) only the options are recorded and the images listed.
InstallStats rewrite_loaded_code(const RewriteOptions& options, bool scan = true);

// Code that became executable after install (mmap or mprotect with PROT_EXEC; the dynamic linker
// maps every dlopen'ed library this way). File-backed ELF code is rewritten like code present at
// install, with function boundaries from the file; anonymous code is only counted. Runs on the
// thread that made the mmap/mprotect, right after it succeeded, before the code can run.
void rewrite_new_code(std::uintptr_t begin, std::size_t length);

// Code the application unmapped or replaced (munmap, mmap with MAP_FIXED, mremap): its sites leave
// the bookkeeping and the registry before the rewriter next does anything. Called with
// code_change_lock() held (patcher.hpp), right after the call; allocates nothing.
void note_unmapped_code(std::uintptr_t begin, std::size_t length) noexcept;

// mremap moved [from, from + length) to `to`: the rewritten sites there are registered at their
// new addresses (an executable mapping only; its bytes are not changed). Allocates nothing.
void register_moved_sites(std::uintptr_t from, std::uintptr_t to, std::size_t length) noexcept;

// The entry stub found no registered site before a `call *%rax` (ff d0) at `site`: a JIT may have
// copied code holding a site the safety net rewrote. True (and the site registered) if the 14
// bytes before it are those before such a site; false for anything else (a stray call).
// General registers only, no allocation, no lock: the stub calls it with nothing saved.
__attribute__((target("general-regs-only"))) bool adopt_copied_site(std::uintptr_t site) noexcept;

// In a fork child, right after the call (before libc's fork has made malloc usable there: it
// allocates nothing): locks held by threads that do not exist there are freed, and bookkeeping
// that another thread was changing at the fork is replaced.
void reset_rewriting_after_fork() noexcept;

// A `syscall` at `site` trapped under Syscall User Dispatch: rewrite it if the rewriter can show
// it is safe (in a known function: decoded like any other site; in anonymous code: a plain
// 2-byte syscall not preceded by a prefix byte). Called from the SIGSYS handler: returns false
// at once if rewriting is busy on another frame of this or another thread.
bool rewrite_trapped_site(std::uintptr_t site);

// Sites the near mechanism left alone (neither padding in reach nor a movable instruction before
// them; ImageStats::skipped_no_padding), each with the reason the instruction before it could
// not be moved, ascending. For tests and diagnostics.
std::vector<std::pair<std::uintptr_t, std::string>> near_unrewritten_sites();

// What rewrite_new_code() and rewrite_trapped_site() have done so far, one entry per image.
std::vector<ImageStats> late_code_stats();

// How many function tables (collect_functions()) rewriting has built in this process: only an
// image or new code holding a candidate byte pair needs one. For tests.
std::size_t function_tables_built();

// Puts the original instruction back at every site rewritten so far (that still holds ff d0).
void restore_rewritten_code();

// True if `path` (an image's path) is excluded by `entry` (see Options::exclude_paths).
bool path_matches_exclusion(const std::string& path, const std::string& entry);

// Code that must never be rewritten, whoever runs it: a hook library's link-map namespace, whose
// private libc makes the hook's own system calls (src/api/hook_library.cpp). Sites in the range
// are left alone at install, when the code becomes executable again, and at a SUD trap, until
// include_code_again() with the same range.
void exclude_code(AddressRange range);
void include_code_again(AddressRange range);

// While alive, code that the current thread makes executable (the dynamic linker mapping a
// library in dlmopen) is not rewritten, and its syscalls trapped under SUD are not either: the
// loader then excludes the new namespace's code by range. Nests.
class ScopedNewCodeExclusion {
 public:
  ScopedNewCodeExclusion() noexcept;
  ~ScopedNewCodeExclusion();
  ScopedNewCodeExclusion(const ScopedNewCodeExclusion&) = delete;
  ScopedNewCodeExclusion& operator=(const ScopedNewCodeExclusion&) = delete;
};

}  // namespace zpoline::detail
