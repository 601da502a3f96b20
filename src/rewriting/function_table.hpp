#pragma once

#include <link.h>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace zpoline::detail {

// A function's code as loaded: [begin, end) in run-time addresses.
struct FunctionRange {
  std::uintptr_t begin;
  std::uintptr_t end;
};

// Where the function ranges of one image came from, for statistics and tests.
struct FunctionTable {
  // Sorted by begin; overlapping/duplicate entries merged so that no two ranges overlap.
  std::vector<FunctionRange> functions;
  std::size_t from_eh_frame = 0;  // ranges found in .eh_frame FDEs
  std::size_t from_symbols = 0;   // ranges found only in symbol tables

  // The range that contains address, or nullptr.
  const FunctionRange* find(std::uintptr_t address) const noexcept;
};

// Collects the functions of one loaded image:
//  1. FDEs of the image's .eh_frame, located through its PT_GNU_EH_FRAME segment (.eh_frame_hdr)
//     in memory: the binary-search table when present, otherwise a walk of .eh_frame.
//  2. STT_FUNC (and STT_GNU_IFUNC) symbols with nonzero size from the ELF file on disk at `path`
//     (.symtab and .dynsym), relocated by info.dlpi_addr. The file is only used when its program
//     headers match the loaded image; otherwise (or when unreadable) this source is skipped.
// Ranges must lie inside an executable PT_LOAD segment of the image; anything else is dropped.
// Never crashes on malformed data: every read is bounds-checked against the segment it is in.
FunctionTable collect_functions(const dl_phdr_info& info, const std::string& path);

// The two ways of finding FDEs, exposed separately so tests can check that they agree.
// Both return the raw FDE ranges (zero-length ones and ones outside executable segments
// dropped), sorted by begin, not merged.
//
// Uses the .eh_frame_hdr binary-search table; empty when the image has no usable table.
std::vector<FunctionRange> eh_frame_ranges_from_search_table(const dl_phdr_info& info);
// Walks .eh_frame CIE by CIE / FDE by FDE from the eh_frame_ptr of .eh_frame_hdr. This is
// also the fallback collect_functions uses when the search table is missing.
std::vector<FunctionRange> walk_eh_frame(const dl_phdr_info& info);

}  // namespace zpoline::detail
