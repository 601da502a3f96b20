// Finding syscall sites in machine code: which `0f 05` (syscall) and `0f 34` (sysenter) byte
// pairs are real instructions, and which of those can be rewritten to `ff d0` (call *%rax).
//
// A byte search finds candidate pairs; each candidate is then decided by decoding its enclosing
// function linearly from the function's start (function boundaries come from .eh_frame and
// symbol tables, see function_table.hpp), so that bytes inside immediates, displacements or other
// instructions are never taken for a syscall. Pure: reads the code, changes nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "rewriting/function_table.hpp"

namespace zpoline::detail {

enum class SiteKind {
  rewritable,   // a 2-byte syscall/sysenter at an instruction boundary
  prefixed,     // a syscall/sysenter with prefixes (e.g. 66 0f 05): its length is not 2
  red_zone,     // the function keeps data below rsp, which the call's return address would hit
  undecodable,  // no known function contains it, or decoding failed before reaching it
};

struct SiteDecision {
  std::uintptr_t address;  // of the 0f byte
  SiteKind kind;
  // The start of the instruction decoded just before the site in its function (the linear
  // decode reached the site from it), 0 if none. The near mechanism may move it.
  std::uintptr_t previous = 0;
};

struct ScanResult {
  std::vector<SiteDecision> sites;  // sorted by address; candidates found to be inside other
                                    // instructions (data) are not listed
  std::size_t bytes_decoded = 0;
  std::size_t functions_decoded = 0;
};

// Appends the run-time address of every `0f 05` and `0f 34` byte pair in `code` to
// `candidates`, in ascending order. A vector search: most code holds no such pair at all, and
// 0f alone (the two-byte opcode escape) is too common to search for byte by byte.
void find_candidates(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                     std::vector<std::uintptr_t>& candidates);

// Decides `candidates` (ascending, as find_candidates() lists them for the same `code`). Each
// enclosing function is decoded from its start only as far as its last candidate, and to its end
// (for the red-zone check) only when one of them is a rewritable syscall.
ScanResult scan_candidates(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                           std::span<const FunctionRange> functions,
                           std::span<const std::uintptr_t> candidates);

// find_candidates() then scan_candidates(). Scans code that is readable at `code.data()` and
// runs at `runtime_address` (the two differ only in tests that scan a copy). `functions` use
// run-time addresses.
ScanResult scan_code(std::span<const std::uint8_t> code, std::uintptr_t runtime_address,
                     std::span<const FunctionRange> functions);

const char* to_string(SiteKind kind);

}  // namespace zpoline::detail
