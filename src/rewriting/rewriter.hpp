// Rewriting the code loaded in the process: every image the dynamic linker knows (the
// executable, ld.so, every shared object), minus exclusions, [vdso], and this library's own raw
// syscall instructions.
//
// Contract: called with the install lock held, after the trampoline is mapped (a rewritten site
// may run at once, on any thread). Sites are registered in site_registry() before their bytes
// change.
#pragma once

#include <string>
#include <vector>

#include "zpoline/zpoline.hpp"

namespace zpoline::detail {

struct RewriteOptions {
  std::vector<std::string> exclude_paths;  // validated: non-empty entries
  std::vector<AddressRange> exclude_ranges;
};

InstallStats rewrite_loaded_code(const RewriteOptions& options);

// Puts the original instruction back at every site rewritten so far (that still holds ff d0).
void restore_rewritten_code();

// True if `path` (an image's path) is excluded by `entry` (see Options::exclude_paths).
bool path_matches_exclusion(const std::string& path, const std::string& entry);

}  // namespace zpoline::detail
