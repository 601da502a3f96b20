#include "platform/cpu.hpp"

#include <cpuid.h>

#include <algorithm>

namespace zpoline::detail {
namespace {

constexpr std::uint64_t kAmxTileData = 1ull << 18;
constexpr std::uint64_t kAvx = 1ull << 2;
constexpr std::uint64_t kX87SseAvx = 0x7;
constexpr std::uint64_t kAvx512 = 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
constexpr std::uint64_t kPkru = 1ull << 9;
constexpr std::uint64_t kLegacyAreaAndHeader = 512 + 64;
// The register modes' area (dispatch/entry_stub.S): the vector registers in the first 512 bytes,
// MXCSR and the x87 status and control words after them, and an FNSAVE image (108 bytes) at 576.
constexpr std::uint64_t kRegisterModeArea = 576 + 128;
// The zmm mode's: zmm0-31, k0-k7, then the same block as above from kZmmControlBase.
constexpr std::uint64_t kZmmModeArea = kZmmControlBase + kRegisterModeArea;

std::uint64_t read_xcr0() {
  std::uint32_t low = 0, high = 0;
  asm volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
  return (static_cast<std::uint64_t>(high) << 32) | low;
}

std::uint64_t round_up_64(std::uint64_t n) {
  return (n + 63) & ~std::uint64_t{63};
}

std::uint32_t standard_offset(unsigned component) {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __cpuid_count(0xd, component, eax, ebx, ecx, edx);
  return ebx;
}

// AVX512F and AVX512BW (kmovq), and whether the kernel has turned protection keys on (OSPKE:
// RDPKRU and WRPKRU work).
struct Leaf7 {
  bool avx512f = false, avx512bw = false, ospke = false;
};
Leaf7 read_leaf7() {
  Leaf7 leaf;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return leaf;
  leaf.avx512f = (ebx & bit_AVX512F) != 0;
  leaf.avx512bw = (ebx & bit_AVX512BW) != 0;
  leaf.ospke = (ecx & bit_OSPKE) != 0;
  return leaf;
}

}  // namespace

VectorSaveLayout active_vector_save_layout;

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
  const Leaf7 leaf7 = read_leaf7();
  // The register modes: x87, SSE, AVX, optionally AVX-512 (all three components) and PKRU;
  // anything else (AMX tile configuration, APX, ...) is saved with the XSAVE instructions.
  const bool pkru_registers = (layout.mask & kPkru) == 0 || leaf7.ospke;
  const std::uint64_t without_pkru = layout.mask & ~kPkru;
  const bool vector_registers_only = (without_pkru & ~kX87SseAvx) == 0;
  const bool avx512_registers = (without_pkru & ~(kX87SseAvx | kAvx512)) == 0 &&
                                (without_pkru & kAvx512) == kAvx512 && (without_pkru & kAvx) &&
                                leaf7.avx512f && leaf7.avx512bw;
  if (pkru_registers && (vector_registers_only || avx512_registers)) {
    layout.save_pkru = (layout.mask & kPkru) != 0;
    if (layout.mask & kAvx) layout.offsets.avx = standard_offset(2);
    if (layout.save_pkru) layout.offsets.pkru = standard_offset(9);
    if (avx512_registers && !vector_registers_only) {
      layout.mode = VectorSaveMode::zmm_registers;
      layout.size = round_up_64(kZmmModeArea);
      layout.offsets.opmask = standard_offset(5);
      layout.offsets.zmm_hi256 = standard_offset(6);
      layout.offsets.hi16_zmm = standard_offset(7);
    } else {
      layout.mode =
          (layout.mask & kAvx) ? VectorSaveMode::ymm_registers : VectorSaveMode::xmm_registers;
      layout.size = kRegisterModeArea;
    }
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
    case VectorSaveMode::zmm_registers:
      return "zmm registers";
  }
  return "?";
}

}  // namespace zpoline::detail
