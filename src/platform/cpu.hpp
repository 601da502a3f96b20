// How the entry stub saves the x87/SSE/AVX/AVX-512 state around the hook, chosen from CPUID.
#pragma once

#include <cstdint>

namespace zpoline::detail {

enum class VectorSaveMode : std::uint8_t {
  fxsave = 0,  // x87 + SSE only: CPUs without XSAVE (none of them have AVX)
  xsave = 1,   // standard-format XSAVE of every enabled component
  xsavec = 2,  // compacted XSAVE with the init optimisation: unused components cost nothing
  // The registers compiled code may clobber, saved with plain moves, MXCSR and the x87 status
  // and control words (each restored only if changed), and the whole x87 state only where its
  // stack holds values (dispatch/entry_stub.S, SAVE_X87). Chosen when the enabled state is x87,
  // SSE and AVX only (no AVX-512, AMX, ...). XRSTOR costs 120-160 ns on some virtual machines;
  // these moves cost about 6, the x87 words about 5 more.
  ymm_registers = 3,
  xmm_registers = 4,  // the same without AVX
};

struct VectorSaveLayout {
  VectorSaveMode mode = VectorSaveMode::fxsave;
  std::uint64_t mask = 0;  // components saved (XCR0 without AMX tile data, which no compiler
                           // emits implicitly and whose 8 KiB would be saved on every call)
  std::uint64_t size = 0;  // bytes of the save area, a multiple of 64
};

// Reads CPUID leaf 1 and 0xD and XCR0.
VectorSaveLayout detect_vector_save_layout();

const char* to_string(VectorSaveMode mode);

// Whether LAHF and SAHF work in 64-bit mode (CPUID 0x80000001 ECX bit 0; all but the first
// x86-64 CPUs). The entry stub restores the arithmetic flags with SAHF where they do.
bool has_lahf_sahf();

}  // namespace zpoline::detail
