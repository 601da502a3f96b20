#include "platform/cpu.hpp"

#include <cpuid.h>

#include <algorithm>

namespace zpoline::detail {
namespace {

constexpr std::uint64_t kAmxTileData = 1ull << 18;
constexpr std::uint64_t kAvx = 1ull << 2;
constexpr std::uint64_t kX87SseAvx = 0x7;
constexpr std::uint64_t kLegacyAreaAndHeader = 512 + 64;
// The register modes' area (dispatch/entry_stub.S): the vector registers in the first 512 bytes,
// MXCSR and the x87 status and control words after them, and an FNSAVE image (108 bytes) at 576.
constexpr std::uint64_t kRegisterModeArea = 576 + 128;

std::uint64_t read_xcr0() {
  std::uint32_t low = 0, high = 0;
  asm volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
  return (static_cast<std::uint64_t>(high) << 32) | low;
}

std::uint64_t round_up_64(std::uint64_t n) {
  return (n + 63) & ~std::uint64_t{63};
}

}  // namespace

VectorSaveLayout detect_vector_save_layout() {
  VectorSaveLayout layout;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __cpuid(1, eax, ebx, ecx, edx);
  const bool has_xsave = (ecx & bit_XSAVE) != 0;
  const bool os_enabled = (ecx & bit_OSXSAVE) != 0;
  if (!has_xsave || !os_enabled) {
    layout.mode = VectorSaveMode::xmm_registers;
    layout.size = kRegisterModeArea;
    return layout;
  }
  layout.mask = read_xcr0() & ~kAmxTileData;
  if ((layout.mask & ~kX87SseAvx) == 0) {
    layout.mode =
        (layout.mask & kAvx) ? VectorSaveMode::ymm_registers : VectorSaveMode::xmm_registers;
    layout.size = kRegisterModeArea;
    return layout;
  }

  __cpuid_count(0xd, 1, eax, ebx, ecx, edx);
  const bool has_xsavec = (eax & (1u << 1)) != 0;

  // Standard format: each component at its fixed offset. Compacted: components in order, each
  // 64-byte aligned when CPUID says so. Both are computed for exactly `mask`.
  std::uint64_t standard_end = kLegacyAreaAndHeader;
  std::uint64_t compacted_end = kLegacyAreaAndHeader;
  for (unsigned component = 2; component < 63; ++component) {
    if ((layout.mask & (1ull << component)) == 0) continue;
    __cpuid_count(0xd, component, eax, ebx, ecx, edx);
    const std::uint64_t size = eax, offset = ebx;
    standard_end = std::max(standard_end, offset + size);
    if (ecx & (1u << 1)) compacted_end = round_up_64(compacted_end);
    compacted_end += size;
  }
  if (has_xsavec) {
    layout.mode = VectorSaveMode::xsavec;
    layout.size = round_up_64(compacted_end);
  } else {
    layout.mode = VectorSaveMode::xsave;
    layout.size = round_up_64(standard_end);
  }
  return layout;
}

bool has_lahf_sahf() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(0x80000001, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_LAHF_LM) != 0;
}

const char* to_string(VectorSaveMode mode) {
  switch (mode) {
    case VectorSaveMode::fxsave:
      return "fxsave";
    case VectorSaveMode::xsave:
      return "xsave";
    case VectorSaveMode::xsavec:
      return "xsavec";
    case VectorSaveMode::ymm_registers:
      return "ymm registers";
    case VectorSaveMode::xmm_registers:
      return "xmm registers";
  }
  return "?";
}

}  // namespace zpoline::detail
