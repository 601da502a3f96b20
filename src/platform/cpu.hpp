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
  // The same with AVX-512: zmm0-31 and k0-k7 with moves (about 20 ns on Zen 4, where XSAVEC and
  // XRSTOR of the 2.4 KiB AVX-512 state cost 190). Chosen when the enabled state is x87, SSE,
  // AVX and all three AVX-512 components (with AVX512BW for 64-bit opmask moves). The area:
  // zmm0-31 at 64 * i, k0-k7 at 2048, and the register modes' MXCSR, x87 and PKRU fields at
  // kZmmControlBase (their usual offsets 512.. from there).
  zmm_registers = 5,
};

// Where the zmm mode's MXCSR/x87/PKRU block starts, less 512: the stub addresses it with the
// offsets it uses at the start of the other register modes' area.
constexpr std::uint64_t kZmmControlBase = 2112 - 512;
// Offsets inside the register modes' control block (from the area in the ymm and xmm modes,
// from kZmmControlBase in the zmm mode).
constexpr std::uint64_t kControlMxcsr = 512;
constexpr std::uint64_t kControlX87Status = 520;
constexpr std::uint64_t kControlX87Control = 522;
constexpr std::uint64_t kControlPkru = 528;
// The zmm mode only: the width each group of registers was saved at (entry_stub.S, SAVE_ZMM):
// bit 4-7 set: zmm0-15 whole, else their low 256 bits; bits 12-15: the same for zmm16-31.
constexpr std::uint64_t kControlZmmWidths = 532;
constexpr std::uint32_t kZmmWidthsWhole = 0xf0f0;
constexpr std::uint64_t kControlFnsave = 576;

// Where each state component the register modes convert from a signal frame lies in the
// standard (non-compacted) XSAVE format the kernel writes there; 0 where it is not enabled.
struct StandardXsaveOffsets {
  std::uint32_t avx = 0;        // component 2: ymm0-15 bits 128-255, 16 bytes each
  std::uint32_t opmask = 0;     // component 5: k0-k7, 8 bytes each
  std::uint32_t zmm_hi256 = 0;  // component 6: zmm0-15 bits 256-511, 32 bytes each
  std::uint32_t hi16_zmm = 0;   // component 7: zmm16-31, 64 bytes each
  std::uint32_t pkru = 0;       // component 9: the protection-key rights register, 4 bytes
};

struct VectorSaveLayout {
  VectorSaveMode mode = VectorSaveMode::fxsave;
  std::uint64_t mask = 0;  // components saved (XCR0 without AMX tile data, which no compiler
                           // emits implicitly and whose 8 KiB would be saved on every call)
  std::uint64_t size = 0;  // bytes of the save area, a multiple of 64
  // The register modes also keep PKRU (with RDPKRU, restored with WRPKRU only if the hook
  // changed it) where the kernel has enabled protection keys (XCR0 bit 9).
  bool save_pkru = false;
  StandardXsaveOffsets offsets;
};

// Reads CPUID leaf 1, 7 and 0xD and XCR0.
VectorSaveLayout detect_vector_save_layout();

// The layout install() chose (detect_vector_save_layout()'s, set once before the first hook
// runs): the safety net converts signal frames with its offsets.
extern VectorSaveLayout active_vector_save_layout;

const char* to_string(VectorSaveMode mode);

// Whether LAHF and SAHF work in 64-bit mode (CPUID 0x80000001 ECX bit 0; all but the first
// x86-64 CPUs). The entry stub restores the arithmetic flags with SAHF where they do.
bool has_lahf_sahf();

}  // namespace zpoline::detail
