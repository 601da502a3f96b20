// The entry stub (src/dispatch/entry_stub.S) seen from the application: a rewritten site must
// behave like the `syscall` it replaced. Registers, flags, vector state and the red zone survive
// a hooked call; signal handlers make hooked system calls and return through rt_sigreturn; calls
// into page 0 that no rewritten site made are diagnosed. Each TEST_CASE installs and runs in its
// own process.
#include <cpuid.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dispatch/frame.hpp"
#include "support.hpp"
#include "zpoline/zpoline.hpp"

using zpoline_test::install_or_skip;

// ---------------------------------------------------------------------------------------------
// Assembly probes. Each is a complete function (symbol type and size, and an FDE) so that the
// rewriter finds its start and decodes up to its syscall, which it rewrites at install time.
// ---------------------------------------------------------------------------------------------

namespace {

// The register state a probe loads before its syscall (`in`) and finds right after it (`out`).
// Offsets are hard-coded in the assembly below.
struct alignas(32) ProbeState {
  std::uint64_t rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15;
  std::uint64_t rflags;      // in: loaded with popfq; out: pushfq right after the syscall
  std::uint64_t rsp;         // out: rsp right after the syscall
  std::uint32_t mxcsr;       // in: loaded; out: stored after the syscall
  std::uint32_t use_avx;     // set in both: a VectorLoad
  std::uint64_t rsp_before;  // out: rsp right before the syscall
  std::uint64_t xinuse;      // out: XGETBV(1) right after the syscall (with kXinuse)
  std::uint8_t vec[16][32];  // ymm0..ymm15 (only the low 16 bytes without AVX)
};
static_assert(offsetof(ProbeState, r15) == 112);
static_assert(offsetof(ProbeState, rflags) == 120);
static_assert(offsetof(ProbeState, rsp) == 128);
static_assert(offsetof(ProbeState, mxcsr) == 136);
static_assert(offsetof(ProbeState, use_avx) == 140);
static_assert(offsetof(ProbeState, rsp_before) == 144);
static_assert(offsetof(ProbeState, xinuse) == 152);

// How the probe loads the vector registers before its syscall (ProbeState::use_avx).
enum VectorLoad : std::uint32_t {
  kSse = 0,           // movdqu xmm: no AVX
  kAvx = 1,           // vmovdqu ymm: upper halves in use
  kAvxCleanUpper = 2  // vzeroupper, then movdqu xmm: upper halves zero, AVX state in init state
};
constexpr std::uint32_t kXinuse = 4;  // or'ed into use_avx: read XGETBV(1) after the syscall
static_assert(offsetof(ProbeState, vec) == 160);

}  // namespace

extern "C" {
// Loads every register from *in (rax = the syscall number), runs one `syscall` at
// zt_register_probe_site and stores every register into *out.
void zt_register_probe(const ProbeState* in, ProbeState* out);
extern const unsigned char zt_register_probe_site[];

// Fills the 128 bytes below rsp with red_zone_pattern(i) (16 quadwords, lowest address first),
// records its rsp in zt_red_zone_probe_rsp, runs getpid at zt_red_zone_probe_site and copies the
// 15 quadwords below the return-address slot (rsp-8) to out. Returns the syscall's result.
long zt_red_zone_probe(std::uint64_t* out);
extern const unsigned char zt_red_zone_probe_site[];
std::uintptr_t zt_red_zone_probe_rsp = 0;

// Keeps data in the 8 bytes below rsp across a getpid syscall, where `call *%rax` would put its
// return address: the rewriter must leave this site alone.
long zt_red_zone_skip_probe();
extern const unsigned char zt_red_zone_skip_site[];

// `call *%rax` with rax = 0 (read(-1, 0, 0) if the call were taken as a syscall).
long zt_call_null_rax();
extern const unsigned char zt_call_null_rax_return[];

// `call *%rdx` with rdx = 0 and rax = 39 (getpid if the call were taken as a syscall).
long zt_call_null_rdx();
extern const unsigned char zt_call_null_rdx_return[];

// All-ones in every bit of zmm0-31 and k0-k7 (16 bits of each k register, 64 with opmask64 =
// 1, which needs AVX512BW). Only where AVX-512 is enabled.
void zt_clobber_avx512(int opmask64);
// Leaves the x87 unit as no ABI-conforming code would: control word 0x0c7f (round toward zero,
// 24-bit precision), all eight registers full of constants, and the precision flag set.
void zt_clobber_x87();
}

#define ZT_FUNCTION(name) \
  "  .globl " #name       \
  "\n"                    \
  "  .hidden " #name      \
  "\n"                    \
  "  .type " #name        \
  ", @function\n"         \
  "  .p2align 4\n" #name  \
  ":\n"                   \
  "  .cfi_startproc\n"
#define ZT_END(name) \
  "  .cfi_endproc\n" \
  "  .size " #name ", .-" #name "\n"
#define ZT_LABEL(name) \
  "  .globl " #name    \
  "\n"                 \
  "  .hidden " #name "\n" #name ":\n"

asm(".pushsection .text\n"
    // ---- zt_register_probe(in = rdi, out = rsi) ----
    ZT_FUNCTION(zt_register_probe)
    "  push %rbp\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  .cfi_offset %rbp, -16\n"
    "  push %rbx\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  .cfi_offset %rbx, -24\n"
    "  push %r12\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  .cfi_offset %r12, -32\n"
    "  push %r13\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  .cfi_offset %r13, -40\n"
    "  push %r14\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  .cfi_offset %r14, -48\n"
    "  push %r15\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  .cfi_offset %r15, -56\n"
    "  push %rsi\n"  // 8(%rsp) = out
    "  .cfi_adjust_cfa_offset 8\n"
    "  sub $8, %rsp\n"  // (%rsp) = the caller's MXCSR
    "  .cfi_adjust_cfa_offset 8\n"
    "  stmxcsr (%rsp)\n"
    "  ldmxcsr 136(%rdi)\n"
    "  testl $3, 140(%rdi)\n"
    "  je 1f\n"
    "  testl $2, 140(%rdi)\n"
    "  je 5f\n"
    "  vzeroupper\n"
    "  jmp 1f\n"
    "5:\n"
    "  .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "  vmovdqu 160+32*\\n(%rdi), %ymm\\n\n"
    "  .endr\n"
    "  jmp 2f\n"
    "1:\n"
    "  .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "  movdqu 160+32*\\n(%rdi), %xmm\\n\n"
    "  .endr\n"
    "2:\n"
    "  mov %rsp, 144(%rsi)\n"
    "  pushq 120(%rdi)\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  popfq\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  mov 0(%rdi), %rax\n"
    "  mov 8(%rdi), %rbx\n"
    "  mov 16(%rdi), %rcx\n"
    "  mov 24(%rdi), %rdx\n"
    "  mov 32(%rdi), %rsi\n"
    "  mov 48(%rdi), %rbp\n"
    "  mov 56(%rdi), %r8\n"
    "  mov 64(%rdi), %r9\n"
    "  mov 72(%rdi), %r10\n"
    "  mov 80(%rdi), %r11\n"
    "  mov 88(%rdi), %r12\n"
    "  mov 96(%rdi), %r13\n"
    "  mov 104(%rdi), %r14\n"
    "  mov 112(%rdi), %r15\n"
    // A 32-bit displacement: seven bytes, which the near mechanism can move into the site's
    // trampoline (this probe has no padding within reach), aligned so that they lie in one cache
    // line (replaced in one exchange).
    "  .p2align 4\n"
    "  {disp32} mov 40(%rdi), %rdi\n"
    ZT_LABEL(zt_register_probe_site)
    "  syscall\n"
    "  pushfq\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  push %rdi\n"
    "  .cfi_adjust_cfa_offset 8\n"
    "  mov 24(%rsp), %rdi\n"  // out
    "  mov %rax, 0(%rdi)\n"
    "  mov %rbx, 8(%rdi)\n"
    "  mov %rcx, 16(%rdi)\n"
    "  mov %rdx, 24(%rdi)\n"
    "  mov %rsi, 32(%rdi)\n"
    "  mov %rbp, 48(%rdi)\n"
    "  mov %r8, 56(%rdi)\n"
    "  mov %r9, 64(%rdi)\n"
    "  mov %r10, 72(%rdi)\n"
    "  mov %r11, 80(%rdi)\n"
    "  mov %r12, 88(%rdi)\n"
    "  mov %r13, 96(%rdi)\n"
    "  mov %r14, 104(%rdi)\n"
    "  mov %r15, 112(%rdi)\n"
    "  pop %rax\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  mov %rax, 40(%rdi)\n"
    "  pop %rax\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  mov %rax, 120(%rdi)\n"
    "  mov %rsp, 128(%rdi)\n"
    "  stmxcsr 136(%rdi)\n"
    "  testl $4, 140(%rdi)\n"
    "  je 6f\n"
    "  mov $1, %ecx\n"
    "  xgetbv\n"
    "  mov %eax, 152(%rdi)\n"
    "  mov %edx, 156(%rdi)\n"
    "6:\n"
    "  testl $3, 140(%rdi)\n"
    "  je 3f\n"
    "  .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "  vmovdqu %ymm\\n, 160+32*\\n(%rdi)\n"
    "  .endr\n"
    "  vzeroupper\n"
    "  jmp 4f\n"
    "3:\n"
    "  .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    "  movdqu %xmm\\n, 160+32*\\n(%rdi)\n"
    "  .endr\n"
    "4:\n"
    "  cld\n"
    "  pushfq\n"  // and AC
    "  .cfi_adjust_cfa_offset 8\n"
    "  andl $~0x40000, (%rsp)\n"
    "  popfq\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  ldmxcsr (%rsp)\n"
    "  add $16, %rsp\n"
    "  .cfi_adjust_cfa_offset -16\n"
    "  pop %r15\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  pop %r14\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  pop %r13\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  pop %r12\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  pop %rbx\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  pop %rbp\n"
    "  .cfi_adjust_cfa_offset -8\n"
    "  ret\n" ZT_END(zt_register_probe)

    // ---- zt_red_zone_probe(out = rdi) ----
    // A red-zone function whose site the rewriter may rewrite: after the syscall it reads back
    // only the 120 bytes below the return-address slot, at fixed offsets from rsp (what the
    // return-slot proof follows). The hook looks at the slot itself, through the recorded rsp.
    ZT_FUNCTION(zt_red_zone_probe)
    "  mov %rdi, %r8\n"
    "  lea (%rsp), %r11\n"
    "  mov %r11, zt_red_zone_probe_rsp(%rip)\n"
    "  movabs $0x5eedf00d00000000, %rdx\n"
    "  xor %ecx, %ecx\n"
    "1:\n"
    "  lea (%rdx,%rcx), %rax\n"
    "  mov %rax, -128(%rsp,%rcx,8)\n"
    "  inc %rcx\n"
    "  cmp $16, %rcx\n"
    "  jne 1b\n"
    "  .p2align 4\n"  // the near mechanism moves the next instruction: keep it within a cache line
    "  mov $39, %eax\n" ZT_LABEL(zt_red_zone_probe_site)
    "  syscall\n"
    "  .irp i, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14\n"
    "  mov -128+8*\\i(%rsp), %rcx\n"
    "  mov %rcx, 8*\\i(%r8)\n"
    "  .endr\n"
    "  ret\n" ZT_END(zt_red_zone_probe)

    // ---- zt_red_zone_skip_probe() ----
    ZT_FUNCTION(zt_red_zone_skip_probe)
    "  mov $39, %eax\n"
    "  movq $0x1234, -8(%rsp)\n" ZT_LABEL(zt_red_zone_skip_site)
    "  syscall\n"
    "  mov -8(%rsp), %rdx\n"
    "  ret\n" ZT_END(zt_red_zone_skip_probe)

    // ---- zt_call_null_rax() ----
    ZT_FUNCTION(zt_call_null_rax)
    "  mov $-1, %rdi\n"
    "  xor %esi, %esi\n"
    "  xor %edx, %edx\n"
    "  xor %eax, %eax\n"
    "  call *%rax\n" ZT_LABEL(zt_call_null_rax_return)
    "  ret\n" ZT_END(zt_call_null_rax)

    // ---- zt_call_null_rdx() ----
    ZT_FUNCTION(zt_call_null_rdx)
    "  mov $-1, %rdi\n"
    "  xor %esi, %esi\n"
    "  xor %edx, %edx\n"
    "  mov $39, %eax\n"
    "  call *%rdx\n" ZT_LABEL(zt_call_null_rdx_return)
    "  ret\n" ZT_END(zt_call_null_rdx)
    // Back to the section the compiler was in: it does not know that this block changed it.
    ".popsection\n");

asm(".pushsection .text\n"
    // ---- zt_clobber_avx512(opmask64 = edi) ----
    ZT_FUNCTION(zt_clobber_avx512)
    "  vpternlogd $0xff, %zmm0, %zmm0, %zmm0\n"
    "  .irp n,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
    "  vmovdqa64 %zmm0, %zmm\\n\n"
    "  .endr\n"
    "  test %edi, %edi\n"
    "  je 1f\n"
    "  .irp n,0,1,2,3,4,5,6,7\n"
    "  kxnorq %k0, %k0, %k\\n\n"
    "  .endr\n"
    "  ret\n"
    "1:\n"
    "  .irp n,0,1,2,3,4,5,6,7\n"
    "  kxnorw %k0, %k0, %k\\n\n"
    "  .endr\n"
    "  ret\n" ZT_END(zt_clobber_avx512)

    // ---- zt_clobber_x87() ----
    ZT_FUNCTION(zt_clobber_x87)
    "  fninit\n"
    "  movw $0x0c7f, -2(%rsp)\n"
    "  fldcw -2(%rsp)\n"
    "  fld1\n"
    "  fldpi\n"
    "  fdivrp\n"  // 1/pi: inexact, sets PE in the status word
    "  fldl2e\n"
    "  fldl2t\n"
    "  fldlg2\n"
    "  fldln2\n"
    "  fldpi\n"
    "  fldz\n"
    "  fld1\n"
    "  ret\n" ZT_END(zt_clobber_x87)
    ".popsection\n");

namespace {

constexpr std::uint64_t kCF = 1u << 0, kPF = 1u << 2, kAF = 1u << 4, kZF = 1u << 6, kSF = 1u << 7,
                        kDF = 1u << 10, kOF = 1u << 11, kAC = 1u << 18;
constexpr std::uint64_t kTestedFlags = kCF | kPF | kAF | kZF | kSF | kDF | kOF | kAC;
constexpr std::uint64_t kAlwaysSetFlags = (1u << 1) | (1u << 9);  // reserved bit 1, IF

bool have_avx() {
  return __builtin_cpu_supports("avx");
}

// XCR0: the state components the kernel enabled (0 without OSXSAVE).
std::uint64_t enabled_xstate() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0 || (c & bit_OSXSAVE) == 0) return 0;
  std::uint32_t low = 0, high = 0;
  asm volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
  return static_cast<std::uint64_t>(high) << 32 | low;
}
constexpr std::uint64_t kXstateAvx512 = 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM

// AVX-512F in the CPU and its three state components enabled by the kernel.
bool have_avx512() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (b & bit_AVX512F) != 0 &&
         (enabled_xstate() & kXstateAvx512) == kXstateAvx512;
}
// 64-bit opmask registers (kmovq).
bool have_avx512bw() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return have_avx512() && __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (b & bit_AVX512BW) != 0;
}

// XGETBV with ECX = 1 (XINUSE: which state components are not in their initial state).
bool have_xinuse() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return have_avx() && __get_cpuid_count(0xd, 1, &a, &b, &c, &d) != 0 && (a & (1u << 2)) != 0;
}
constexpr std::uint64_t kXinuseAvx = 1u << 2;  // the upper halves of the ymm registers

bool is_syscall(const unsigned char* site) {
  return site[0] == 0x0f && site[1] == 0x05;
}

std::uintptr_t address_of(const unsigned char* p) {
  return reinterpret_cast<std::uintptr_t>(p);
}

long real_getpid() {
  return zpoline::raw_syscall(SYS_getpid);
}

// Distinct, recognizable values for every register; `seed` makes two patterns differ everywhere.
ProbeState make_pattern(unsigned seed, long number, std::uint64_t flags, std::uint32_t mxcsr) {
  ProbeState s{};
  std::uint64_t* gpr = &s.rax;
  for (int i = 0; i < 15; ++i) {
    gpr[i] = 0x0101010101010101ull * (seed * 16 + static_cast<unsigned>(i) + 1) ^
             (0x9e3779b97f4a7c15ull * (seed + 1) >> (i % 8));
  }
  s.rax = static_cast<std::uint64_t>(number);
  s.rflags = flags;
  s.mxcsr = mxcsr;
  s.use_avx = have_avx() ? 1 : 0;
  for (int r = 0; r < 16; ++r) {
    for (int b = 0; b < 32; ++b) s.vec[r][b] = static_cast<std::uint8_t>(seed * 101 + r * 32 + b);
  }
  return s;
}

// The same with every ymm upper half zero and the AVX state in its initial state (what most code
// runs with: compilers and libc end their AVX code with vzeroupper).
ProbeState with_clean_upper_halves(ProbeState s) {
  if (!have_avx()) return s;
  for (auto& reg : s.vec) std::memset(reg + 16, 0, 16);
  s.use_avx = kAvxCleanUpper | (have_xinuse() ? kXinuse : 0);
  return s;
}

ProbeState run_probe(const ProbeState& in) {
  ProbeState out{};
  out.use_avx = in.use_avx;
  zt_register_probe(&in, &out);
  return out;
}

// Compares everything a real `syscall` leaves alone, plus rcx and r11; rax is checked by the
// caller. Returns a description of the first mismatches (empty if none).
std::string compare_probe(const ProbeState& in, const ProbeState& out) {
  std::string problems;
  char line[160];
  auto check = [&](const char* name, std::uint64_t want, std::uint64_t got) {
    if (want == got) return;
    std::snprintf(line, sizeof line, "%s: want %#llx got %#llx; ", name,
                  static_cast<unsigned long long>(want), static_cast<unsigned long long>(got));
    problems += line;
  };
  check("rbx", in.rbx, out.rbx);
  check("rdx", in.rdx, out.rdx);
  check("rsi", in.rsi, out.rsi);
  check("rdi", in.rdi, out.rdi);
  check("rbp", in.rbp, out.rbp);
  check("r8", in.r8, out.r8);
  check("r9", in.r9, out.r9);
  check("r10", in.r10, out.r10);
  check("r12", in.r12, out.r12);
  check("r13", in.r13, out.r13);
  check("r14", in.r14, out.r14);
  check("r15", in.r15, out.r15);
  check("rsp", out.rsp_before, out.rsp);
  check("rflags (tested bits)", in.rflags & kTestedFlags, out.rflags & kTestedFlags);
  check("rflags (always set)", kAlwaysSetFlags, out.rflags & kAlwaysSetFlags);
  check("rcx (address after the site)", address_of(zt_register_probe_site) + 2, out.rcx);
  check("r11 (RFLAGS)", out.rflags, out.r11);
  check("mxcsr", in.mxcsr, out.mxcsr);
  const bool ymm = (in.use_avx & (kAvx | kAvxCleanUpper)) != 0;
  const int bytes = ymm ? 32 : 16;
  for (int r = 0; r < 16; ++r) {
    if (std::memcmp(in.vec[r], out.vec[r], static_cast<std::size_t>(bytes)) != 0) {
      std::snprintf(line, sizeof line, "%smm%d differs; ", ymm ? "y" : "x", r);
      problems += line;
    }
  }
  return problems;
}

// Puts all-ones into every vector register: what a hook that broke the general-registers-only
// rule would leak. Compiled normally; the hooks below call it only when told to. Where AVX-512
// is enabled, all 512 bits of zmm0-31 and every opmask register too (zt_clobber_avx512).
__attribute__((noinline)) void clobber_vector_registers() {
  if (have_avx512()) zt_clobber_avx512(have_avx512bw() ? 1 : 0);
  if (have_avx()) {
    asm volatile(
        "vpcmpeqd %%ymm0, %%ymm0, %%ymm0\n"
        ".irp n,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
        "vmovdqa %%ymm0, %%ymm\\n\n"
        ".endr\n" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
              "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
  } else {
    asm volatile(
        "pcmpeqd %%xmm0, %%xmm0\n"
        ".irp n,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
        "movdqa %%xmm0, %%xmm\\n\n"
        ".endr\n" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
              "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
  }
}

// What the hook does to the state it could leak into the application: all vector registers,
// MXCSR, plus ordinary library work (stdio, allocation, string and floating-point code).
__attribute__((noinline)) void clobber_state_in_hook() {
  clobber_vector_registers();
  const std::uint32_t hook_mxcsr = 0x3f80;  // round down; left set: the stub must restore it
  asm volatile("ldmxcsr %0" ::"m"(hook_mxcsr));
  std::vector<unsigned char> big(1 << 16);
  std::memset(big.data(), 0xa5, big.size());
  std::string text = "hook ran: ";
  text += std::to_string(big[12345]);
  volatile double x = 1.0;
  for (int i = 0; i < 100; ++i) x = x * 1.0001 + 0.5;
  std::printf("%s %.3f\n", text.c_str(), static_cast<double>(x));
  std::fflush(stdout);
}

// Calls seen by a hook, per syscall number.
struct Tally {
  std::array<std::atomic<long>, 512> by_number{};
  long operator[](long number) const { return by_number[static_cast<std::size_t>(number)].load(); }
  void count(long number) {
    if (number >= 0 && number < 512) ++by_number[static_cast<std::size_t>(number)];
  }
};

const zpoline::ImageStats* find_executable(const zpoline::InstallStats& stats) {
  char buffer[4096];
  const ssize_t n = readlink("/proc/self/exe", buffer, sizeof buffer - 1);
  if (n <= 0) return nullptr;
  const std::string exe(buffer, static_cast<std::size_t>(n));
  for (const auto& image : stats.images) {
    if (image.path == exe) return &image;
  }
  return nullptr;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE("registers_preserved") {
  const long pid = real_getpid();
  // The probe itself, checked against the kernel before install: a real syscall leaves every
  // register but rax, rcx and r11 alone, rcx = the address after it, r11 = RFLAGS.
  {
    REQUIRE(is_syscall(zt_register_probe_site));
    const ProbeState in = make_pattern(7, SYS_getpid, kTestedFlags, 0x7f80);
    const ProbeState out = run_probe(in);
    CHECK(out.rax == static_cast<std::uint64_t>(pid));
    CHECK(compare_probe(in, out) == "");
  }

  // The probe's clean-upper-halves mode, checked the same way. The kernel may leave the AVX
  // state marked in use (XINUSE allows it); then the stub is not held to better.
  bool xinuse_reliable = false;
  if (have_xinuse()) {
    const ProbeState in = with_clean_upper_halves(make_pattern(8, SYS_getpid, kCF, 0x1f80));
    const ProbeState out = run_probe(in);
    CHECK(compare_probe(in, out) == "");
    xinuse_reliable = (out.xinuse & kXinuseAvx) == 0;
  }

  const auto site_return = address_of(zt_register_probe_site) + 2;
  std::atomic<long> site_calls{0};
  std::atomic<bool> emulate{false};
  std::array<long, 6> seen_args{};
  long seen_number = -1;
  std::uint64_t hook_flags = 0;
  constexpr long kEmulated = 0x7e5700001234;
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (call.return_address() != site_return) return call.forward();
    ++site_calls;
    seen_number = call.number();
    for (int i = 0; i < 6; ++i) seen_args[static_cast<std::size_t>(i)] = call.arg(i);
    // The hook runs with DF and AC clear whatever the application had: an unaligned load would
    // raise SIGBUS with AC set.
    hook_flags = __builtin_ia32_readeflags_u64();
    alignas(8) static const unsigned char bytes[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    std::uint64_t unaligned = 0;
    asm volatile("mov 1(%1), %0" : "=r"(unaligned) : "r"(bytes) : "memory");
    CHECK(unaligned == 0x0908070605040302ull);
    clobber_state_in_hook();
    return emulate ? kEmulated : call.forward();
  });
  REQUIRE(zpoline_test::is_rewritten_site(zt_register_probe_site));

  struct Case {
    unsigned seed;
    std::uint64_t flags;
    std::uint32_t mxcsr;
    bool emulate;
  };
  const Case cases[] = {
      {1, kTestedFlags, 0x7f80, false},  // all tested flags, DF and AC set, round toward zero
      {2, 0, 0x9fc0, true},              // all clear, FTZ and DAZ, emulated result
      {3, kCF | kZF | kOF, 0x1f80, false},
      {4, kPF | kSF | kDF | kAF, 0x5f80, true},
      {5, kOF | kSF | kAC, 0x1f80, false},
      {6, kOF, 0x1f80, false},
  };
  long expected_calls = 0;
  for (const Case& c : cases) {
    for (const bool clean_upper : {false, true}) {
      CAPTURE(c.seed);
      CAPTURE(clean_upper);
      emulate = c.emulate;
      ProbeState in = make_pattern(c.seed, SYS_getpid, c.flags, c.mxcsr);
      if (clean_upper) in = with_clean_upper_halves(in);
      const ProbeState out = run_probe(in);
      ++expected_calls;
      CHECK(site_calls == expected_calls);
      CHECK((hook_flags & (kDF | kAC)) == 0);
      // The hook dirtied the upper halves; the application gets them back zero and clean (an
      // SSE instruction after dirty upper halves costs a state transition).
      if (clean_upper && xinuse_reliable) CHECK((out.xinuse & kXinuseAvx) == 0);
      CHECK(seen_number == SYS_getpid);
      CHECK(seen_args[0] == static_cast<long>(in.rdi));
      CHECK(seen_args[1] == static_cast<long>(in.rsi));
      CHECK(seen_args[2] == static_cast<long>(in.rdx));
      CHECK(seen_args[3] == static_cast<long>(in.r10));
      CHECK(seen_args[4] == static_cast<long>(in.r8));
      CHECK(seen_args[5] == static_cast<long>(in.r9));
      CHECK(static_cast<long>(out.rax) == (c.emulate ? kEmulated : pid));
      CHECK(compare_probe(in, out) == "");
    }
  }

  // Under ScopedBypass the stub's short path (straight to the kernel) must keep the same promise.
  for (const std::uint64_t flags : {kTestedFlags, kOF | kCF, std::uint64_t{0}}) {
    zpoline::ScopedBypass bypass;
    const ProbeState in = make_pattern(5, SYS_getpid, flags, 0x7f80);
    const ProbeState out = run_probe(in);
    CHECK(site_calls == expected_calls);
    CHECK(static_cast<long>(out.rax) == pid);
    CHECK(compare_probe(in, out) == "");
  }
}

TEST_CASE("red_zone_preserved") {
  const long pid = real_getpid();
  const auto site_return = address_of(zt_red_zone_probe_site) + 2;
  std::atomic<long> site_calls{0};
  std::atomic<std::uint64_t> slot{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (call.return_address() == site_return) {
      ++site_calls;
      // What the call left in the 8 bytes below the probe's rsp (the probe cannot read them
      // back itself: its site would then not be rewritten).
      slot = *reinterpret_cast<const volatile std::uint64_t*>(zt_red_zone_probe_rsp - 8);
      // Use plenty of stack, so that a stub that did not step over the red zone would
      // overwrite it here even if its own pushes missed it.
      volatile unsigned char scratch[4096];
      for (std::size_t i = 0; i < sizeof scratch; ++i) scratch[i] = 0xcc;
      clobber_state_in_hook();
    }
    return call.forward();
  });
  REQUIRE(zpoline_test::is_rewritten_site(zt_red_zone_probe_site));
  const zpoline::ImageStats* exe = find_executable(session.stats());
  REQUIRE(exe != nullptr);

  auto check_red_zone = [&](long expected_calls) {
    std::uint64_t out[15] = {};
    slot = 0;
    const long result = zt_red_zone_probe(out);
    CHECK(result == pid);
    CHECK(site_calls == expected_calls);
    // out[0] is rsp-128 at the syscall, out[14] is rsp-16; rsp-8 is the only quadword the call
    // may touch.
    for (int i = 0; i < 15; ++i) {
      CAPTURE(i);
      CHECK(out[i] == 0x5eedf00d00000000ull + static_cast<unsigned>(i));
    }
  };
  check_red_zone(1);
  // The call's return address went there: the site really was entered with a call.
  CHECK(slot == site_return);
  check_red_zone(2);
  CHECK(slot == site_return);
  {
    // The stub's short path. No hook runs to look at the slot; the site's bytes show the call.
    zpoline::ScopedBypass bypass;
    check_red_zone(2);
  }
}

TEST_CASE("red_zone_site_skipped") {
  const long pid = real_getpid();
  REQUIRE(is_syscall(zt_red_zone_skip_site));
  Tally tally;
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    tally.count(call.number());
    return call.forward();
  });
  // Left alone: a call would write its return address over -8(%rsp), where the data is.
  CHECK(is_syscall(zt_red_zone_skip_site));
  const zpoline::ImageStats* exe = find_executable(session.stats());
  REQUIRE(exe != nullptr);
  CHECK(exe->skipped_red_zone >= 1);
  // The neighbouring probes, which do not read the 8 bytes below rsp after their syscall, were
  // rewritten.
  CHECK(zpoline_test::is_rewritten_site(zt_red_zone_probe_site));
  CHECK(zpoline_test::is_rewritten_site(zt_register_probe_site));
  CHECK(exe->sites_rewritten >= 2);

  const long before = tally[SYS_getpid];
  CHECK(zt_red_zone_skip_probe() == pid);
  CHECK(tally[SYS_getpid] == before);  // the original syscall ran, not the hook
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

namespace {

std::atomic<long> handler_runs{0};
int handler_pipe = -1;

void syscalling_handler(int) {
  const int saved_errno = errno;
  getppid();
  const char byte = 's';
  [[maybe_unused]] const ssize_t n = write(handler_pipe, &byte, 1);
  ++handler_runs;
  errno = saved_errno;
}

void install_handler(int signal, void (*handler)(int), int flags) {
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = flags;
  sigemptyset(&action.sa_mask);
  REQUIRE(sigaction(signal, &action, nullptr) == 0);
}

// The restorer glibc registered for `signal` (`mov $15,%rax; syscall`): the handler's return
// enters the stub through it when its syscall was rewritten.
const unsigned char* kernel_restorer(int signal) {
  struct {
    void* handler;
    unsigned long flags;
    void* restorer;
    unsigned long mask;
  } current{};
  if (zpoline::raw_syscall(SYS_rt_sigaction, signal, 0, reinterpret_cast<long>(&current), 8) != 0)
    return nullptr;
  return static_cast<const unsigned char*>(current.restorer);
}

long pipe_bytes(int fd) {
  int n = 0;
  if (ioctl(fd, FIONREAD, &n) != 0) return -1;
  return n;
}

void drain(int fd) {
  char buffer[4096];
  while (pipe_bytes(fd) > 0) {
    if (read(fd, buffer, sizeof buffer) <= 0) break;
  }
}

// Floating-point and integer work whose values are live across the system call `step` makes.
template <class Step>
std::pair<double, long> compute(int iterations, Step step) {
  double x = 1.0;
  long y = 17;
  for (int i = 0; i < iterations; ++i) {
    const double before = x * 1.000001 + i;
    const long mixed = y * 31 + i;
    step(i);
    x = before + static_cast<double>(mixed % 7);
    y = mixed % 1000003;
  }
  return {x, y};
}

}  // namespace

// SIGUSR1 runs syscalling_handler (without SA_RESTART) and a hook counts every call it sees.
struct SignalScenario {
  static constexpr int kSignals = 1000;
  const long pid = real_getpid();
  int fds[2] = {-1, -1};
  Tally tally;
  zpoline::Session session;

  SignalScenario() {
    REQUIRE(pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0);
    handler_pipe = fds[1];
    install_handler(SIGUSR1, syscalling_handler, 0);
    session = install_or_skip([this](zpoline::Syscall& call) {
      tally.count(call.number());
      return call.forward();
    });
    // The handler returns through glibc's restorer; its syscall must be rewritten for the
    // stub's rt_sigreturn path to be exercised.
    const unsigned char* restorer = kernel_restorer(SIGUSR1);
    REQUIRE(restorer != nullptr);
    CHECK(std::memcmp(restorer, "\x48\xc7\xc0\x0f\x00\x00\x00", 7) == 0);
    CHECK(zpoline_test::is_rewritten_site(restorer + 7));
  }

  // Raises SIGUSR1 kSignals times through libc's kill and raise, hooked calls: the signal is
  // delivered while the hook is forwarding the call, so the handler runs nested in the hook's
  // call. The handler must run once per signal and the computation around it stay correct.
  void signal_through_libc() {
    handler_runs = 0;
    const auto reference = compute(kSignals, [](int) {});
    long late = 0;
    const long kills_before = tally[SYS_kill];
    const auto result = compute(kSignals, [&](int i) {
      if (i % 2) {
        kill(getpid(), SIGUSR1);
      } else {
        raise(SIGUSR1);
      }
      if (handler_runs != i + 1) ++late;
    });
    CHECK(late == 0);
    CHECK(result == reference);
    CHECK(handler_runs == kSignals);
    CHECK(tally[SYS_kill] - kills_before == kSignals / 2);
    CHECK(pipe_bytes(fds[0]) == kSignals);
    drain(fds[0]);
  }
};

TEST_CASE("signal_handler_syscalls") {
  SignalScenario scenario;
  const long pid = scenario.pid;
  constexpr int kSignals = SignalScenario::kSignals;
  const int* fds = scenario.fds;
  Tally& tally = scenario.tally;
  const auto reference = compute(kSignals, [](int) {});

  // 1. kill goes straight to the kernel; the signal is delivered on its return, in plain
  // application code, so the handler's getppid and write enter the hook.
  {
    handler_runs = 0;
    long late = 0;
    const auto result = compute(kSignals, [&](int i) {
      zpoline::raw_syscall(SYS_kill, pid, SIGUSR1);
      if (handler_runs != i + 1) ++late;
    });
    CHECK(late == 0);
    CHECK(result == reference);
    CHECK(handler_runs == kSignals);
    CHECK(tally[SYS_getppid] == kSignals);
    CHECK(tally[SYS_write] == kSignals);
    CHECK(pipe_bytes(fds[0]) == kSignals);
    drain(fds[0]);
  }

  // 2. kill through the register probe's rewritten site: the handler runs (and returns through
  // rt_sigreturn) between the stub's save and restore; every register must come back intact.
  {
    handler_runs = 0;
    const long kills_before = tally[SYS_kill];
    long wrong = 0, late = 0;
    std::string first_problem;
    for (int i = 0; i < kSignals; ++i) {
      ProbeState in = make_pattern(static_cast<unsigned>(i), SYS_kill,
                                   (i % 2) ? kTestedFlags : kCF | kZF, 0x7f80);
      in.rdi = static_cast<std::uint64_t>(pid);
      in.rsi = SIGUSR1;
      const ProbeState out = run_probe(in);
      const std::string problems = compare_probe(in, out);
      if (out.rax != 0 || !problems.empty()) {
        if (first_problem.empty())
          first_problem = "rax=" + std::to_string(out.rax) + " " + problems;
        ++wrong;
      }
      if (handler_runs != i + 1) ++late;
    }
    CAPTURE(first_problem);
    CHECK(wrong == 0);
    CHECK(late == 0);
    CHECK(handler_runs == kSignals);
    CHECK(tally[SYS_kill] - kills_before == kSignals);
    CHECK(pipe_bytes(fds[0]) == kSignals);
    drain(fds[0]);
  }

  // 3. libc's kill and raise, the handler nested in the hook's forwarded call. (Its own system
  // calls then bypass the hook: a documented limit, README "Limits", so they are not counted.)
  scenario.signal_through_libc();
}

namespace {
std::atomic<long> alarms{0};
std::atomic<long> alarm_wake_after{-1};  // write to the pipe once alarms reaches this
int alarm_pipe = -1;

void alarm_handler(int) {
  const int saved_errno = errno;
  getppid();
  const long n = ++alarms;
  if (n == alarm_wake_after) {
    const char byte = 'w';
    [[maybe_unused]] const ssize_t written = write(alarm_pipe, &byte, 1);
  }
  errno = saved_errno;
}

void start_timer(long microseconds) {
  itimerval timer{};
  timer.it_interval.tv_usec = microseconds;
  timer.it_value.tv_usec = microseconds;
  REQUIRE(setitimer(ITIMER_REAL, &timer, nullptr) == 0);
}

void stop_timer() {
  itimerval timer{};
  setitimer(ITIMER_REAL, &timer, nullptr);
}
}  // namespace

TEST_CASE("timer_signals_during_hooked_syscalls") {
  constexpr long kAlarms = 300;
  const long pid = real_getpid();
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  alarm_pipe = fds[1];
  install_handler(SIGALRM, alarm_handler, 0);
  // The probes below set AC (alignment checking), and a signal keeps it for its handler, as it
  // does without the library. The handler's first calls through the PLT would run the dynamic
  // linker's symbol lookup, whose SSE string code reads unaligned: bind them now.
  errno = 0;
  getppid();
  [[maybe_unused]] const ssize_t nothing = write(alarm_pipe, "", 0);

  Tally tally;
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    tally.count(call.number());
    return call.forward();
  });
  REQUIRE(zpoline_test::is_rewritten_site(zt_register_probe_site));

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  long loops = 0, wrong_pid = 0, wrong_registers = 0;
  std::string first_problem;
  start_timer(500);
  // The signals land anywhere: in application code, in the stub before or after its save, in
  // the hook, in the forwarded syscall.
  while (alarms < kAlarms && std::chrono::steady_clock::now() < deadline) {
    ++loops;
    if (getpid() != pid) ++wrong_pid;
    const ProbeState in =
        make_pattern(static_cast<unsigned>(loops), SYS_getpid,
                     (loops % 2) ? kTestedFlags : kSF | kPF, (loops % 3) ? 0x7f80 : 0x1f80);
    const ProbeState out = run_probe(in);
    const std::string problems = compare_probe(in, out);
    if (static_cast<long>(out.rax) != pid || !problems.empty()) {
      if (first_problem.empty()) first_problem = problems;
      ++wrong_registers;
    }
  }
  CAPTURE(loops);
  CAPTURE(first_problem);
  REQUIRE(alarms >= kAlarms);
  CHECK(wrong_pid == 0);
  CHECK(wrong_registers == 0);
  CHECK(tally[SYS_getpid] >= 2 * loops);

  // A hooked blocking read interrupted by a handler without SA_RESTART fails with EINTR.
  char byte = 0;
  errno = 0;
  CHECK(read(fds[0], &byte, 1) == -1);
  CHECK(errno == EINTR);

  // With SA_RESTART the kernel restarts it; a later handler run writes the byte it returns.
  install_handler(SIGALRM, alarm_handler, SA_RESTART);
  const long reads_before = tally[SYS_read];
  alarm_wake_after = alarms + 5;
  CHECK(read(fds[0], &byte, 1) == 1);
  CHECK(byte == 'w');
  CHECK(tally[SYS_read] == reads_before + 1);
  stop_timer();
  signal(SIGALRM, SIG_IGN);
}

// ---------------------------------------------------------------------------------------------
// Stray calls into page 0
// ---------------------------------------------------------------------------------------------

namespace {

enum class StrayCall { asm_call_rax, cxx_null_pointer, asm_call_rdx, asm_call_rdx_bypassed };

struct ChildOutcome {
  int status = 0;
  std::string stderr_text;
};

long call_cxx_null_pointer() {
  long (*volatile pointer)(long) = nullptr;
  return pointer(-1);  // read(-1, ...) if it were taken as a syscall
}

// Runs `body` in a child process, capturing the child's stderr. The child exits 0 if `body`
// returns; a child exiting 77 (page 0 refused) skips the scenario.
ChildOutcome run_in_child(const std::function<void()>& body) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    const int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, STDIN_FILENO);
    signal(SIGABRT, SIG_DFL);  // doctest's crash handler would report the abort itself
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    body();
    _exit(0);
  }
  close(fds[1]);
  ChildOutcome outcome;
  char buffer[1024];
  ssize_t n;
  while ((n = read(fds[0], buffer, sizeof buffer)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) outcome.stderr_text.append(buffer, static_cast<std::size_t>(n));
  }
  close(fds[0]);
  REQUIRE(waitpid(pid, &outcome.status, 0) == pid);
  if (WIFEXITED(outcome.status) && WEXITSTATUS(outcome.status) == 77) {
    std::fprintf(stderr, "%s", outcome.stderr_text.c_str());
    std::_Exit(77);  // page 0 refused: skipped
  }
  return outcome;
}

// Runs `kind` in a child with a hook installed.
ChildOutcome run_stray_call(StrayCall kind) {
  return run_in_child([kind] {
    auto session = install_or_skip([](zpoline::Syscall& call) { return call.forward(); });
    long result = 0;
    switch (kind) {
      case StrayCall::asm_call_rax:
        result = zt_call_null_rax();
        break;
      case StrayCall::cxx_null_pointer:
        result = call_cxx_null_pointer();
        break;
      case StrayCall::asm_call_rdx:
        result = zt_call_null_rdx();
        break;
      case StrayCall::asm_call_rdx_bypassed: {
        zpoline::ScopedBypass bypass;  // only the stub's byte check can catch it
        result = zt_call_null_rdx();
        break;
      }
    }
    char message[64];
    const int length = std::snprintf(message, sizeof message, "returned %ld\n", result);
    zpoline::raw_syscall(SYS_write, STDERR_FILENO, reinterpret_cast<long>(message), length);
  });
}

// With page 0 mapped, the stub catches a call through a null pointer and says so. With the near
// mechanism page 0 stays unmapped and the call faults, as without the library.
void check_diagnosed(const ChildOutcome& outcome) {
  CAPTURE(outcome.stderr_text);
  if (zpoline_test::near_mechanism_wanted()) {
    // Where AddressSanitizer's handler sees the fault first, it reports it and exits instead.
    const bool reported = outcome.stderr_text.find("AddressSanitizer: SEGV") != std::string::npos;
    CHECK((reported || (WIFSIGNALED(outcome.status) && WTERMSIG(outcome.status) == SIGSEGV)));
    CHECK(outcome.stderr_text.find("returned") == std::string::npos);
    return;
  }
  CHECK(WIFSIGNALED(outcome.status));
  CHECK((WIFSIGNALED(outcome.status) && WTERMSIG(outcome.status) == SIGABRT));
  CHECK(outcome.stderr_text.find("not a rewritten syscall site") != std::string::npos);
  CHECK(outcome.stderr_text.find("returned") == std::string::npos);
}

std::string from_address(const unsigned char* return_address) {
  char text[64];
  std::snprintf(text, sizeof text, "from %#lx",
                static_cast<unsigned long>(address_of(return_address)));
  return text;
}

}  // namespace

TEST_CASE("null_function_pointer_diagnostic") {
  // Only the forked children install (a child exiting 77 skips the scenario), so the subcases,
  // which doctest runs by re-entering the test case, each get a fresh process to install in.
  SUBCASE("asm_call_rax") {
    const ChildOutcome outcome = run_stray_call(StrayCall::asm_call_rax);
    check_diagnosed(outcome);
    // The report names the caller: the address right after its `call *%rax`.
    if (!zpoline_test::near_mechanism_wanted()) {
      CHECK(outcome.stderr_text.find(from_address(zt_call_null_rax_return)) != std::string::npos);
    }
  }
  SUBCASE("cxx_null_pointer") {
    check_diagnosed(run_stray_call(StrayCall::cxx_null_pointer));
  }
}

TEST_CASE("stray_call_from_other_register") {
  SUBCASE("hook_live") {
    const ChildOutcome outcome = run_stray_call(StrayCall::asm_call_rdx);
    check_diagnosed(outcome);
    if (!zpoline_test::near_mechanism_wanted()) {
      CHECK(outcome.stderr_text.find(from_address(zt_call_null_rdx_return)) != std::string::npos);
    }
  }
  SUBCASE("bypassed") {
    const ChildOutcome outcome = run_stray_call(StrayCall::asm_call_rdx_bypassed);
    check_diagnosed(outcome);
    if (!zpoline_test::near_mechanism_wanted()) {
      CHECK(outcome.stderr_text.find(from_address(zt_call_null_rdx_return)) != std::string::npos);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// An exception leaving the hook
// ---------------------------------------------------------------------------------------------

namespace {

long throwing_function(zpoline::Syscall& call) {
  if (call.number() == SYS_getppid) throw std::runtime_error("from the hook");
  return call.forward();
}

void check_exception_reported(const ChildOutcome& outcome) {
  CAPTURE(outcome.stderr_text);
  CHECK((WIFSIGNALED(outcome.status) && WTERMSIG(outcome.status) == SIGABRT));
  CHECK(outcome.stderr_text.find("the hook threw an exception while handling getppid") !=
        std::string::npos);
  CHECK(outcome.stderr_text.find("returned") == std::string::npos);
}

}  // namespace

// The stub calls the hook itself; the unwinder finds the stub's frame (its CFI) and its
// personality routine reports the exception and aborts, as the dispatcher does for the calls it
// runs. Both ways the stub calls a hook: a plain function directly, anything else through
// std::function.
TEST_CASE("exception_from_hook_aborts_with_message") {
  SUBCASE("plain_function") {
    check_exception_reported(run_in_child([] {
      auto session = install_or_skip(throwing_function);
      getpid();  // the thread's first hooked call takes the dispatcher's path
      const long result = getppid();
      std::fprintf(stderr, "returned %ld\n", result);
    }));
  }
  SUBCASE("lambda") {
    check_exception_reported(run_in_child([] {
      auto session = install_or_skip([](zpoline::Syscall& call) -> long {
        if (call.number() == SYS_getppid && getpid() > 0) throw std::logic_error("lambda");
        return call.forward();
      });
      getpid();
      const long result = getppid();
      std::fprintf(stderr, "returned %ld\n", result);
    }));
  }
}

// ---------------------------------------------------------------------------------------------
// Options::general_registers_only
// ---------------------------------------------------------------------------------------------

namespace {

#define ZT_GENERAL_REGISTERS_ONLY __attribute__((target("general-regs-only")))

long gpr_site_calls = 0;
std::uintptr_t gpr_site_return = 0;
bool gpr_clobber = false;

ZT_GENERAL_REGISTERS_ONLY long gpr_pass_through(zpoline::Syscall& call) {
  if (call.return_address() == gpr_site_return) {
    __atomic_add_fetch(&gpr_site_calls, 1, __ATOMIC_RELAXED);
    if (gpr_clobber) clobber_vector_registers();
  }
  return call.forward();
}

// The same as an object: the stub reaches it through std::function.
struct GprHook {
  long* extra_calls;
  ZT_GENERAL_REGISTERS_ONLY long operator()(zpoline::Syscall& call) const {
    __atomic_add_fetch(extra_calls, 1, __ATOMIC_RELAXED);
    return gpr_pass_through(call);
  }
};

bool all_ones(const std::uint8_t* bytes, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    if (bytes[i] != 0xff) return false;
  }
  return true;
}

// Calls through the probe's site that a hook keeping to general registers must not disturb.
void check_general_registers_path(long pid, long& expected_calls, bool xinuse_reliable) {
  const std::uint64_t flag_cases[] = {kTestedFlags, kCF | kOF, 0};
  unsigned seed = 40;
  for (const std::uint64_t flags : flag_cases) {
    for (const bool clean_upper : {false, true}) {
      CAPTURE(flags);
      CAPTURE(clean_upper);
      ProbeState in = make_pattern(++seed, SYS_getpid, flags, 0x9fc0);
      if (clean_upper) in = with_clean_upper_halves(in);
      const ProbeState out = run_probe(in);
      CHECK(gpr_site_calls == ++expected_calls);
      CHECK(static_cast<long>(out.rax) == pid);
      CHECK(compare_probe(in, out) == "");
      if (clean_upper && xinuse_reliable) CHECK((out.xinuse & kXinuseAvx) == 0);
    }
  }
}

}  // namespace

// With the switch on, a hook that keeps to general registers sees every register survive
// (so the library's own path, stub, Syscall members and forward(), touched no vector state),
// and a hook that clobbers vector registers leaks them to the application: the save was skipped.
// Without it (registers_preserved above, whose hook clobbers everything) nothing leaks. Where
// forward() runs the library's own C++ code, it saves the vector state itself.
TEST_CASE("general_registers_only_skips_vector_save") {
  const long pid = real_getpid();
  bool xinuse_reliable = false;
  if (have_xinuse()) {
    const ProbeState in = with_clean_upper_halves(make_pattern(30, SYS_getpid, 0, 0x1f80));
    xinuse_reliable = (run_probe(in).xinuse & kXinuseAvx) == 0;
  }
  gpr_site_return = address_of(zt_register_probe_site) + 2;
  zpoline::Options options;
  options.general_registers_only = true;
  long expected_calls = 0;
  {
    auto session = install_or_skip(gpr_pass_through, options);
    REQUIRE(zpoline_test::is_rewritten_site(zt_register_probe_site));
    // The thread's first hooked call registers it: that one takes the full path.
    run_probe(make_pattern(31, SYS_getpid, 0, 0x1f80));
    ++expected_calls;
    check_general_registers_path(pid, expected_calls, xinuse_reliable);

    gpr_clobber = true;
    const ProbeState in = make_pattern(50, SYS_getpid, kCF, 0x1f80);
    const ProbeState out = run_probe(in);
    CHECK(gpr_site_calls == ++expected_calls);
    CHECK(static_cast<long>(out.rax) == pid);
    const std::size_t width = have_avx() ? 32 : 16;
    for (const auto& reg : out.vec) CHECK(all_ones(reg, width));

    gpr_clobber = false;
    // mprotect(PROT_EXEC) makes forward() rewrite the page (C++ code, and libc's SSE/AVX string
    // functions): with no vector state saved by the stub, forward() saves it for that.
    void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
    for (const bool clean_upper : {false, true}) {
      CAPTURE(clean_upper);
      ProbeState mprotect_in = make_pattern(clean_upper ? 52 : 51, SYS_mprotect, kOF, 0x1f80);
      if (clean_upper) mprotect_in = with_clean_upper_halves(mprotect_in);
      mprotect_in.rdi = reinterpret_cast<std::uint64_t>(page);
      mprotect_in.rsi = 4096;
      mprotect_in.rdx = PROT_READ | PROT_EXEC;
      const ProbeState mprotect_out = run_probe(mprotect_in);
      CHECK(gpr_site_calls == ++expected_calls);
      CHECK(mprotect_out.rax == 0);
      CHECK(compare_probe(mprotect_in, mprotect_out) == "");
      if (clean_upper && xinuse_reliable) CHECK((mprotect_out.xinuse & kXinuseAvx) == 0);
    }
    munmap(page, 4096);
  }
  {
    long object_calls = 0;
    auto session = install_or_skip(GprHook{&object_calls}, options);
    check_general_registers_path(pid, expected_calls, xinuse_reliable);
    CHECK(object_calls >= 6);
  }
}

// ---------------------------------------------------------------------------------------------
// Every vector save mode
// ---------------------------------------------------------------------------------------------

namespace {

struct SaveMode {
  unsigned char mode;  // platform/cpu.hpp, VectorSaveMode
  const char* name;
  bool available;
};

// Switches the stub's vector save mode (install() picks one from CPUID; this machine may have
// picked any). Only between calls, with no other thread in the stub.
void use_save_mode(unsigned char mode) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  std::uint32_t xcr0_low = 0, xcr0_high = 0;
  // At least the register modes' area (platform/cpu.cpp: 576 bytes and an FNSAVE image).
  std::uint64_t size = 704;
  if (__get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_OSXSAVE) != 0) {
    asm volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    __get_cpuid_count(0xd, 0, &a, &b, &c, &d);  // ebx: standard-format size for XCR0
    size = std::max<std::uint64_t>(704, (b + 63) & ~63u);
  }
  zpoline_detail_xsave_mode = mode;
  zpoline_detail_xsave_size = size;
  zpoline_detail_xsave_mask = (static_cast<std::uint64_t>(xcr0_high) << 32 | xcr0_low) &
                              ~(1ull << 18);  // no AMX tile data, as platform/cpu.cpp
}

std::vector<SaveMode> save_modes() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool xsave = __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_OSXSAVE) != 0;
  const bool xsavec = xsave && __get_cpuid_count(0xd, 1, &a, &b, &c, &d) != 0 && (a & 2u) != 0;
  return {{0, "fxsave", true},        {1, "xsave", xsave},
          {2, "xsavec", xsavec},      {3, "ymm registers", have_avx()},
          {4, "xmm registers", true}, {5, "zmm registers", have_avx512() && have_avx512bw()}};
}

}  // namespace

// The stub's save and restore in each mode it has (only one is chosen on a given machine): a
// hook that clobbers everything, on the fast path and through the dispatcher (a thread's first
// hooked call); and with general_registers_only, forward()'s own save around library code.
TEST_CASE("every_vector_save_mode") {
  const long pid = real_getpid();
  const unsigned char chosen = zpoline_detail_xsave_mode;
  const auto site_return = address_of(zt_register_probe_site) + 2;
  long site_calls = 0;
  {
    auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
      if (call.return_address() != site_return) return call.forward();
      ++site_calls;
      clobber_state_in_hook();
      return call.forward();
    });
    REQUIRE(zpoline_test::is_rewritten_site(zt_register_probe_site));
    unsigned seed = 60;
    for (const SaveMode& m : save_modes()) {
      if (!m.available) continue;
      CAPTURE(m.name);
      use_save_mode(m.mode);
      for (const bool new_thread : {false, true}) {
        CAPTURE(new_thread);
        ProbeState in = make_pattern(++seed, SYS_getpid, kCF | kZF, 0x7f80);
        // The xmm and fxsave modes keep only the low halves: compare those.
        if (m.mode == 0 || m.mode == 4) in.use_avx = kSse;
        ProbeState out;
        if (new_thread) {
          std::thread([&] { out = run_probe(in); }).join();
        } else {
          out = run_probe(in);
        }
        CHECK(static_cast<long>(out.rax) == pid);
        CHECK(compare_probe(in, out) == "");
      }
    }
    use_save_mode(chosen);
  }
  CHECK(site_calls >= 10);
  {
    zpoline::Options options;
    options.general_registers_only = true;
    auto session = install_or_skip(gpr_pass_through, options);
    run_probe(make_pattern(70, SYS_getpid, 0, 0x1f80));  // this thread's first call
    void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
    unsigned seed = 70;
    for (const SaveMode& m : save_modes()) {
      if (!m.available) continue;
      CAPTURE(m.name);
      use_save_mode(m.mode);
      ProbeState in = make_pattern(++seed, SYS_mprotect, kSF, 0x7f80);
      if (m.mode == 0 || m.mode == 4) in.use_avx = kSse;
      in.rdi = reinterpret_cast<std::uint64_t>(page);
      in.rsi = 4096;
      in.rdx = PROT_READ | PROT_EXEC;
      const ProbeState out = run_probe(in);
      CHECK(out.rax == 0);
      CHECK(compare_probe(in, out) == "");
    }
    use_save_mode(chosen);
    munmap(page, 4096);
  }
}

// ---------------------------------------------------------------------------------------------
// The whole x87/SSE/AVX/AVX-512 state, every bit
// ---------------------------------------------------------------------------------------------

namespace {

// What zt_state_probe loads before its syscall, and where it puts the state it finds right
// before and right after it. Offsets are hard-coded in the assembly below.
struct alignas(64) StateProbe {
  std::uint8_t zmm[32][64];  // zmm0-31 (ymm0-15 or xmm0-15: the low bytes of the first 16)
  std::uint64_t k[8];        // k0-k7 (16 bits each without AVX512BW)
  std::uint8_t st[8][16];    // ST(0)..ST(7), 80-bit values in the first 10 bytes of each
  std::uint32_t st_count;    // how many of them to push (ST(0) = st[0])
  std::uint16_t fcw;         // the x87 control word
  std::uint16_t unused;
  std::uint32_t mxcsr;
  std::uint32_t flags;   // StateFlags
  std::uint64_t rfbm;    // XSAVE's requested-feature bitmap for the snapshots
  std::uint8_t* before;  // the snapshot right before the syscall (64-byte aligned)
  std::uint8_t* after;   // ... and right after it
  std::uint64_t result;  // rax after the syscall
};
static_assert(offsetof(StateProbe, k) == 2048);
static_assert(offsetof(StateProbe, st) == 2112);
static_assert(offsetof(StateProbe, st_count) == 2240);
static_assert(offsetof(StateProbe, fcw) == 2244);
static_assert(offsetof(StateProbe, mxcsr) == 2248);
static_assert(offsetof(StateProbe, flags) == 2252);
static_assert(offsetof(StateProbe, rfbm) == 2256);
static_assert(offsetof(StateProbe, before) == 2264);
static_assert(offsetof(StateProbe, after) == 2272);
static_assert(offsetof(StateProbe, result) == 2280);

// StateProbe::flags
constexpr std::uint32_t kLoadZmm = 1;        // zmm0-31 and k0-k7
constexpr std::uint32_t kOpmask64 = 2;       // k registers with kmovq (AVX512BW), else kmovw
constexpr std::uint32_t kLoadYmm = 4;        // ymm0-15 (without kLoadZmm); neither: xmm0-15
constexpr std::uint32_t kXsaveSnapshot = 8;  // snapshots with XSAVE (standard format), else FXSAVE

}  // namespace

extern "C" {
// Loads the state described by *probe (rdi), takes a snapshot, makes getpid with the 2-byte
// `syscall` at zt_state_probe_site (rewritten at install), takes another snapshot, and gives the
// caller back an empty x87 stack, its control word and its MXCSR.
void zt_state_probe(StateProbe* probe);
extern const unsigned char zt_state_probe_site[];
// The same with `66 0f 05` (a prefixed syscall, never rewritten: under Mode::exhaustive it traps
// and reaches the hook through the Syscall User Dispatch safety net).
void zt_state_probe_prefixed(StateProbe* probe);
extern const unsigned char zt_state_probe_prefixed_site[];
}

// The snapshot into (%rbx): XSAVE of probe->rfbm (standard format), or FXSAVE. Neither changes
// the state it saves. `a` and `b` are two unused local label numbers.
#define ZT_SNAPSHOT(a, b)    \
  "  testl $8, 2252(%r12)\n" \
  "  je " #a                 \
  "f\n"                      \
  "  mov 2256(%r12), %eax\n" \
  "  mov 2260(%r12), %edx\n" \
  "  xsave (%rbx)\n"         \
  "  jmp " #b "f\n" #a       \
  ":\n"                      \
  "  fxsave (%rbx)\n" #b ":\n"

// The body of both probes; `site` is the label of the syscall, `instruction` its bytes.
#define ZT_STATE_PROBE(name, site, instruction) \
  ZT_FUNCTION(name)                             \
  "  push %rbx\n"                                                                                  \
  "  .cfi_adjust_cfa_offset 8\n"                                                                   \
  "  .cfi_offset %rbx, -16\n"                                                                      \
  "  push %r12\n"                                                                                  \
  "  .cfi_adjust_cfa_offset 8\n"                                                                   \
  "  .cfi_offset %r12, -24\n"                                                                      \
  "  sub $8, %rsp\n" /* 0(%rsp): the caller's x87 control word, 4(%rsp): its MXCSR */            \
  "  .cfi_adjust_cfa_offset 8\n"                                                                   \
  "  mov %rdi, %r12\n"                                                                             \
  "  fnstcw (%rsp)\n"                                                                              \
  "  stmxcsr 4(%rsp)\n"                                                                            \
  "  fninit\n"                                                                                     \
  "  fldcw 2244(%r12)\n"                                                                           \
  "  mov 2240(%r12), %ecx\n" /* push st[count-1] first, st[0] last */                             \
  "  jrcxz 2f\n"                                                                                   \
  "1:\n"                                                                                           \
  "  lea -1(%rcx), %eax\n"                                                                         \
  "  shl $4, %eax\n"                                                                               \
  "  fldt 2112(%r12,%rax)\n"                                                                       \
  "  loop 1b\n"                                                                                    \
  "2:\n"                                                                                           \
  "  ldmxcsr 2248(%r12)\n"                                                                         \
  "  testl $1, 2252(%r12)\n"                                                                       \
  "  je 4f\n"                                                                                      \
  "  .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n" \
  "  vmovdqu64 64*\\n(%r12), %zmm\\n\n"                                                            \
  "  .endr\n"                                                                                      \
  "  testl $2, 2252(%r12)\n"                                                                       \
  "  je 3f\n"                                                                                      \
  "  .irp n,0,1,2,3,4,5,6,7\n"                                                                     \
  "  kmovq 2048+8*\\n(%r12), %k\\n\n"                                                              \
  "  .endr\n"                                                                                      \
  "  jmp 6f\n"                                                                                     \
  "3:\n"                                                                                           \
  "  .irp n,0,1,2,3,4,5,6,7\n"                                                                     \
  "  kmovw 2048+8*\\n(%r12), %k\\n\n"                                                              \
  "  .endr\n"                                                                                      \
  "  jmp 6f\n"                                                                                     \
  "4:\n"                                                                                           \
  "  testl $4, 2252(%r12)\n"                                                                       \
  "  je 5f\n"                                                                                      \
  "  .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"                                               \
  "  vmovdqu 64*\\n(%r12), %ymm\\n\n"                                                              \
  "  .endr\n"                                                                                      \
  "  jmp 6f\n"                                                                                     \
  "5:\n"                                                                                           \
  "  .irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"                                               \
  "  movdqu 64*\\n(%r12), %xmm\\n\n"                                                               \
  "  .endr\n"                                                                                      \
  "6:\n"                                                                                           \
  "  mov 2264(%r12), %rbx\n" ZT_SNAPSHOT(10, 11)                                                   \
  "  .p2align 4\n" /* the near mechanism moves the next instruction: within a cache line */          \
  "  mov $39, %eax\n" ZT_LABEL(site) instruction                                                   \
  "  mov %rax, 2280(%r12)\n"                                                                       \
  "  mov 2272(%r12), %rbx\n" ZT_SNAPSHOT(12, 13)                                                   \
  "  fninit\n"                                                                                     \
  "  fldcw (%rsp)\n"                                                                               \
  "  ldmxcsr 4(%rsp)\n"                                                                            \
  "  testl $5, 2252(%r12)\n"                                                                       \
  "  je 7f\n"                                                                                      \
  "  vzeroupper\n"                                                                                 \
  "7:\n"                                                                                           \
  "  add $8, %rsp\n"                                                                               \
  "  .cfi_adjust_cfa_offset -8\n"                                                                  \
  "  pop %r12\n"                                                                                   \
  "  .cfi_adjust_cfa_offset -8\n"                                                                  \
  "  pop %rbx\n"                                                                                   \
  "  .cfi_adjust_cfa_offset -8\n"                                                                  \
  "  ret\n" ZT_END(name)

asm(".pushsection .text\n"                                                 //
    ZT_STATE_PROBE(zt_state_probe, zt_state_probe_site, "  syscall\n")     //
    ZT_STATE_PROBE(zt_state_probe_prefixed, zt_state_probe_prefixed_site,  //
                   "  .byte 0x66\n  syscall\n")                            //
    ".popsection\n");

namespace {

// Where XSAVE's standard format keeps each state component (CPUID leaf 0xD), and what the
// snapshots save: every component the kernel enabled but AMX tile data (as platform/cpu.cpp).
struct XsaveLayout {
  bool xsave = false;  // else FXSAVE: x87 and SSE only
  std::uint64_t rfbm = 0;
  std::size_t size = 512;
  std::array<std::size_t, 64> offset{};
  std::array<std::size_t, 64> length{};
  bool has(unsigned component) const { return xsave && ((rfbm >> component) & 1) != 0; }
};
constexpr unsigned kComponentAvx = 2, kComponentOpmask = 5, kComponentZmmHi256 = 6,
                   kComponentHi16Zmm = 7;

XsaveLayout xsave_layout() {
  XsaveLayout layout;
  const std::uint64_t xcr0 = enabled_xstate();
  if (xcr0 == 0) return layout;
  layout.xsave = true;
  layout.rfbm = xcr0 & ~(1ull << 18);
  unsigned a = 0, b = 0, c = 0, d = 0;
  __get_cpuid_count(0xd, 0, &a, &b, &c, &d);
  layout.size = b;  // the standard format's size for all of XCR0
  for (unsigned component = 2; component < 63; ++component) {
    if (!layout.has(component)) continue;
    __get_cpuid_count(0xd, component, &a, &b, &c, &d);
    layout.offset[component] = b;
    layout.length[component] = a;
  }
  return layout;
}

// A zeroed, 64-byte aligned snapshot buffer.
struct Snapshot {
  explicit Snapshot(std::size_t size)
      : bytes(static_cast<std::uint8_t*>(std::aligned_alloc(64, (size + 63) & ~std::size_t{63}))) {
    std::memset(bytes, 0, (size + 63) & ~std::size_t{63});
  }
  ~Snapshot() { std::free(bytes); }
  Snapshot(const Snapshot&) = delete;
  Snapshot& operator=(const Snapshot&) = delete;
  std::uint8_t* bytes;
};

template <class T>
T field(const std::uint8_t* image, std::size_t offset) {
  T value;
  std::memcpy(&value, image + offset, sizeof value);
  return value;
}

// Register `r` (zmm0-31) as far as the snapshot holds it, 64 bytes (the rest zero).
std::array<std::uint8_t, 64> vector_register(const XsaveLayout& layout, const std::uint8_t* image,
                                             int r) {
  std::array<std::uint8_t, 64> value{};
  const auto index = static_cast<std::size_t>(r);
  if (r >= 16) {
    if (layout.has(kComponentHi16Zmm)) {
      std::memcpy(value.data(), image + layout.offset[kComponentHi16Zmm] + 64 * (index - 16), 64);
    }
    return value;
  }
  std::memcpy(value.data(), image + 160 + 16 * index, 16);
  if (layout.has(kComponentAvx)) {
    std::memcpy(value.data() + 16, image + layout.offset[kComponentAvx] + 16 * index, 16);
  }
  if (layout.has(kComponentZmmHi256)) {
    std::memcpy(value.data() + 32, image + layout.offset[kComponentZmmHi256] + 32 * index, 32);
  }
  return value;
}

std::uint64_t opmask_register(const XsaveLayout& layout, const std::uint8_t* image, int k) {
  if (!layout.has(kComponentOpmask)) return 0;
  return field<std::uint64_t>(image,
                              layout.offset[kComponentOpmask] + 8 * static_cast<unsigned>(k));
}

// Every field of the state that differs between two snapshots, by name ("" if none): the x87
// control, status and tag words, its last-instruction fields, MXCSR, ST(0)-ST(7), each vector
// register in parts (the low 128 bits, the ymm upper half, the zmm upper 256 bits, zmm16-31),
// k0-k7, which components are in use (XSTATE_BV), and any other enabled component byte by byte.
std::string state_differences(const XsaveLayout& layout, const std::uint8_t* before,
                              const std::uint8_t* after) {
  std::string problems;
  char line[128];
  auto compare = [&](const char* name, std::size_t offset, std::size_t length) {
    if (std::memcmp(before + offset, after + offset, length) == 0) return;
    problems += name;
    problems += "; ";
  };
  compare("x87 control word", 0, 2);
  compare("x87 status word", 2, 2);
  compare("x87 tag word", 4, 1);
  compare("x87 last opcode", 6, 2);
  compare("x87 last instruction pointer", 8, 8);
  compare("x87 last data pointer", 16, 8);
  compare("mxcsr", 24, 4);
  for (int i = 0; i < 8; ++i) {
    std::snprintf(line, sizeof line, "st%d", i);
    compare(line, 32 + 16 * static_cast<std::size_t>(i), 10);
  }
  for (int r = 0; r < 16; ++r) {
    std::snprintf(line, sizeof line, "xmm%d", r);
    compare(line, 160 + 16 * static_cast<std::size_t>(r), 16);
  }
  if (!layout.xsave) return problems;
  compare("XSTATE_BV (components in use)", 512, 8);
  for (unsigned component = 2; component < 63; ++component) {
    if (!layout.has(component)) continue;
    const std::size_t base = layout.offset[component];
    switch (component) {
      case kComponentAvx:
        for (unsigned r = 0; r < 16; ++r) {
          std::snprintf(line, sizeof line, "ymm%u bits 128-255", r);
          compare(line, base + 16 * r, 16);
        }
        break;
      case kComponentOpmask:
        for (unsigned k = 0; k < 8; ++k) {
          std::snprintf(line, sizeof line, "k%u", k);
          compare(line, base + 8 * k, 8);
        }
        break;
      case kComponentZmmHi256:
        for (unsigned r = 0; r < 16; ++r) {
          std::snprintf(line, sizeof line, "zmm%u bits 256-511", r);
          compare(line, base + 32 * r, 32);
        }
        break;
      case kComponentHi16Zmm:
        for (unsigned r = 16; r < 32; ++r) {
          std::snprintf(line, sizeof line, "zmm%u", r);
          compare(line, base + 64 * (r - 16), 64);
        }
        break;
      default:
        std::snprintf(line, sizeof line, "XSAVE component %u", component);
        compare(line, base, layout.length[component]);
    }
  }
  return problems;
}

// Distinct values for everything the probe loads; `seed` makes two inputs differ everywhere.
StateProbe make_state_input(unsigned seed, unsigned st_count, std::uint32_t flags) {
  StateProbe in{};
  for (unsigned r = 0; r < 32; ++r) {
    for (unsigned b = 0; b < 64; ++b) {
      in.zmm[r][b] = static_cast<std::uint8_t>((seed * 131 + r * 64 + b) * 7 + 1);
    }
  }
  for (unsigned k = 0; k < 8; ++k) {
    in.k[k] = 0x0123456789abcdefull * (seed + k + 1) ^ (0xf0e1d2c3b4a59687ull >> k);
    if ((flags & kOpmask64) == 0) in.k[k] &= 0xffff;
  }
  for (unsigned i = 0; i < 8; ++i) {
    const long double value = (seed + 1) * 1000.0L + i + 1.0L / (i + 3);
    std::memcpy(in.st[i], &value, 10);
  }
  in.st_count = st_count;
  in.fcw = seed % 2 ? 0x0f7f : 0x027f;    // truncate, 64-bit / nearest, 53-bit; all masked
  in.mxcsr = seed % 2 ? 0xdfc1 : 0x5f80;  // FTZ, round up, DAZ, IE / round up
  in.flags = flags;
  return in;
}

// What the probe found right before its syscall must be what it was told to load (else the
// comparison after the call would prove nothing).
std::string load_problems(const XsaveLayout& layout, const StateProbe& in,
                          const std::uint8_t* image) {
  std::string problems;
  char line[128];
  auto check = [&](const std::string& name, std::uint64_t want, std::uint64_t got) {
    if (want == got) return;
    char values[64];
    std::snprintf(values, sizeof values, ": want %#llx got %#llx; ",
                  static_cast<unsigned long long>(want), static_cast<unsigned long long>(got));
    problems += name + values;
  };
  check("x87 control word", in.fcw, field<std::uint16_t>(image, 0));
  const unsigned top = (8 - in.st_count) % 8;
  check("x87 TOP", top, (field<std::uint16_t>(image, 2) >> 11) & 7);
  const unsigned tags = in.st_count == 0 ? 0 : (0xffu << top) & 0xff;  // physical TOP..7 valid
  check("x87 tag word (abridged)", tags, field<std::uint8_t>(image, 4));
  for (unsigned i = 0; i < in.st_count; ++i) {
    if (std::memcmp(image + 32 + 16 * i, in.st[i], 10) != 0) {
      std::snprintf(line, sizeof line, "st%u not loaded; ", i);
      problems += line;
    }
  }
  check("mxcsr", in.mxcsr, field<std::uint32_t>(image, 24));
  const bool zmm = (in.flags & kLoadZmm) != 0;
  const std::size_t width = zmm ? 64 : (in.flags & kLoadYmm) ? 32 : 16;
  for (int r = 0; r < (zmm ? 32 : 16); ++r) {
    const auto value = vector_register(layout, image, r);
    if (std::memcmp(value.data(), in.zmm[r], width) != 0) {
      std::snprintf(line, sizeof line, "vector register %d not loaded; ", r);
      problems += line;
    }
  }
  if (zmm) {
    for (int k = 0; k < 8; ++k) {
      check("k" + std::to_string(k), in.k[k], opmask_register(layout, image, k));
    }
  }
  return problems;
}

struct StateRun {
  std::string load_problems;  // the state before the call is not the one loaded
  std::string differences;    // what the call changed
  long result = 0;
  std::uint64_t in_use_before = 0, in_use_after = 0;  // XSTATE_BV of the snapshots (with XSAVE)
};

StateRun run_state_probe(void (*probe)(StateProbe*), const StateProbe& input) {
  const XsaveLayout layout = xsave_layout();
  Snapshot before(layout.size), after(layout.size);
  StateProbe in = input;
  in.rfbm = layout.rfbm;
  if (layout.xsave) in.flags |= kXsaveSnapshot;
  in.before = before.bytes;
  in.after = after.bytes;
  probe(&in);
  StateRun run;
  run.load_problems = load_problems(layout, in, before.bytes);
  run.differences = state_differences(layout, before.bytes, after.bytes);
  run.result = static_cast<long>(in.result);
  if (layout.xsave) {
    run.in_use_before = field<std::uint64_t>(before.bytes, 512);
    run.in_use_after = field<std::uint64_t>(after.bytes, 512);
  }
  return run;
}

// What the hooks below do to the state: all of clobber_state_in_hook (every vector register,
// zmm0-31 and k0-k7 included where enabled, MXCSR, library work), then the x87 unit.
__attribute__((noinline)) void clobber_all_state() {
  clobber_state_in_hook();
  zt_clobber_x87();
}

std::uintptr_t state_site_return = 0, state_prefixed_site_return = 0;

bool from_state_probe(const zpoline::Syscall& call) {
  return call.return_address() == state_site_return ||
         call.return_address() == state_prefixed_site_return;
}

// The same for a hook that promised to keep to general registers (Options::
// general_registers_only): the stub then saves nothing, so the clobbering must show.
ZT_GENERAL_REGISTERS_ONLY long clobbering_general_registers_hook(zpoline::Syscall& call) {
  if (from_state_probe(call)) clobber_all_state();
  return call.forward();
}

// The scenario of both test cases below. `flags`: what the probe loads besides the x87 stack and
// MXCSR. `expected_leaks`: fields that must show up as changed when the stub saves nothing, one
// of each kind the probe loads (proof that the comparison sees them).
void check_state_preserved(std::uint32_t flags, const std::vector<std::string>& expected_leaks) {
  const long pid = real_getpid();
  state_site_return = address_of(zt_state_probe_site) + 2;
  state_prefixed_site_return = address_of(zt_state_probe_prefixed_site) + 3;
  REQUIRE(is_syscall(zt_state_probe_site));

  // The probe against the kernel: a real syscall changes none of this state.
  for (const unsigned st_count : {8u, 3u}) {
    const StateRun run = run_state_probe(zt_state_probe, make_state_input(1, st_count, flags));
    CHECK(run.load_problems == "");
    CHECK(run.differences == "");
    CHECK(run.result == pid);
  }

  std::atomic<long> site_calls{0};
  auto clobbering_hook = [&](zpoline::Syscall& call) -> long {
    if (!from_state_probe(call)) return call.forward();
    ++site_calls;
    clobber_all_state();
    return call.forward();
  };
  long expected_calls = 0;
  auto check_run = [&](void (*probe)(StateProbe*), unsigned seed, unsigned st_count) {
    CAPTURE(seed);
    CAPTURE(st_count);
    const StateRun run = run_state_probe(probe, make_state_input(seed, st_count, flags));
    CHECK(site_calls == ++expected_calls);
    CHECK(run.load_problems == "");
    CHECK(run.differences == "");
    CHECK(run.result == pid);
  };
  {
    auto session = install_or_skip(clobbering_hook);
    REQUIRE(zpoline_test::is_rewritten_site(zt_state_probe_site));
    // The vector save mode install() chose from CPUID and XCR0 (platform/cpu.cpp).
    const char* const modes[] = {"fxsave",        "xsave",         "xsavec",
                                 "ymm registers", "xmm registers", "zmm registers"};
    const char* save_mode = zpoline_detail_xsave_mode < 6 ? modes[zpoline_detail_xsave_mode] : "?";
    CAPTURE(save_mode);
    // The most x87 values the mode keeps: the register modes do not tell a full stack from an
    // empty one (README, "Limits"; x87_state_in_the_register_modes).
    const unsigned full = zpoline_detail_xsave_mode >= 3 ? 7 : 8;
    // This thread's calls (its first through the complete dispatcher, the others through the
    // stub's fast path), then a new thread's first and second.
    for (unsigned seed = 2; seed < 8; ++seed) check_run(zt_state_probe, seed, seed % 2 ? full : 3);
    std::thread([&] {
      check_run(zt_state_probe, 10, full);
      check_run(zt_state_probe, 11, 5);
    }).join();
  }
  // The comparison sees every kind of field: with general_registers_only the stub saves no
  // vector state, and the same clobbering shows (after the thread's first call, which the
  // complete dispatcher handles with everything saved).
  {
    zpoline::Options options;
    options.general_registers_only = true;
    auto session = install_or_skip(clobbering_general_registers_hook, options);
    getppid();
    const StateRun run = run_state_probe(zt_state_probe, make_state_input(30, 3, flags));
    CHECK(run.load_problems == "");
    CHECK(run.result == pid);
    INFO("differences: " << run.differences);
    for (const std::string& name : expected_leaks) {
      CAPTURE(name);
      CHECK(run.differences.find(name + ";") != std::string::npos);
    }
  }
}

// What the probe loads besides the x87 stack and MXCSR: everything this machine has.
std::uint32_t all_vector_registers() {
  if (have_avx512()) return kLoadZmm | (have_avx512bw() ? kOpmask64 : 0);
  return have_avx() ? kLoadYmm : 0;
}

}  // namespace

// The x87 register stack (eight values or three, so TOP and the tag word vary), the x87 control
// and status words, MXCSR and xmm0-15 (ymm0-15 with AVX), through a hook that clobbers all of it:
// every bit the CPU saves with XSAVE (FXSAVE without it) is the same right after the hooked
// syscall as right before it.
TEST_CASE("x87_and_sse_state_preserved") {
  const std::uint32_t flags = have_avx() ? kLoadYmm : 0;
  std::vector<std::string> leaks = {"x87 control word",
                                    "x87 status word",
                                    "x87 tag word",
                                    "st0",
                                    "st7",
                                    "mxcsr",
                                    "xmm0",
                                    "xmm15"};
  if (have_avx()) leaks.insert(leaks.end(), {"ymm0 bits 128-255", "ymm15 bits 128-255"});
  check_state_preserved(flags, leaks);
}

namespace {
// `differences` (state_differences()) without the x87 registers' contents ("st0; " ... "st7; ").
std::string without_x87_registers(std::string differences) {
  for (int i = 0; i < 8; ++i) {
    const std::string name = "st" + std::to_string(i) + "; ";
    for (std::size_t at; (at = differences.find(name)) != std::string::npos;) {
      differences.erase(at, name.size());
    }
  }
  return differences;
}
}  // namespace

// The x87 state in the two register modes (chosen on CPUs without AVX-512; switched to here
// whatever this CPU has): an empty x87 stack and one with 1 to 7 values, the control and status
// words, through a hook that changes every x87 field (it even leaves eight values behind). With
// eight values (TOP wraps to 0) the stub takes the stack for empty and keeps only the two words,
// the limit the README states; the same where the stack is empty, and then the hook's values
// stay in the empty registers, where no program sees them.
TEST_CASE("x87_state_in_the_register_modes") {
  const long pid = real_getpid();
  state_site_return = address_of(zt_state_probe_site) + 2;
  state_prefixed_site_return = address_of(zt_state_probe_prefixed_site) + 3;
  std::atomic<long> site_calls{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (!from_state_probe(call)) return call.forward();
    ++site_calls;
    zt_clobber_x87();
    return call.forward();
  });
  REQUIRE(zpoline_test::is_rewritten_site(zt_state_probe_site));
  getppid();  // this thread's first call, through the dispatcher, before the mode changes
  const unsigned char chosen = zpoline_detail_xsave_mode;
  long expected_calls = 0;
  for (const SaveMode& mode : save_modes()) {
    if (mode.mode < 3 || !mode.available) continue;
    CAPTURE(mode.name);
    use_save_mode(mode.mode);
    for (const unsigned st_count : {0u, 1u, 3u, 7u}) {
      for (const unsigned seed : {40u, 41u}) {  // both control words (and MXCSR values)
        CAPTURE(st_count);
        CAPTURE(seed);
        const StateRun run = run_state_probe(zt_state_probe, make_state_input(seed, st_count, 0));
        CHECK(site_calls == ++expected_calls);
        CHECK(run.load_problems == "");
        // With an empty stack, the bytes of the empty registers (which no instruction but the
        // FXSAVE family reads) may be the hook's; every other field is as it was.
        const std::string differences =
            st_count == 0 ? without_x87_registers(run.differences) : run.differences;
        CHECK(differences == "");
        CHECK(run.result == pid);
      }
    }
    // Eight values: the words come back, the values do not (the hook's fninit emptied the
    // stack, and the stub sets it empty again).
    const StateRun run = run_state_probe(zt_state_probe, make_state_input(42, 8, 0));
    CHECK(site_calls == ++expected_calls);
    CHECK(run.load_problems == "");
    CHECK(run.differences.find("x87 tag word") != std::string::npos);
    CHECK(run.differences.find("x87 control word") == std::string::npos);
    CHECK(run.differences.find("x87 status word") == std::string::npos);
  }
  use_save_mode(chosen);
}

// The same with all 512 bits of zmm0-31 and k0-k7 loaded as well.
TEST_CASE("avx512_state_preserved") {
  if (!have_avx512()) {
    std::fprintf(stderr,
                 "SKIP: no AVX-512 here (the CPU lacks AVX-512F, or the kernel has not enabled "
                 "its state components in XCR0 = %#llx)\n",
                 static_cast<unsigned long long>(enabled_xstate()));
    std::_Exit(77);
  }
  const std::uint32_t flags = kLoadZmm | (have_avx512bw() ? kOpmask64 : 0);
  check_state_preserved(flags, {"x87 control word", "x87 status word", "x87 tag word", "st0",
                                "mxcsr", "xmm0", "xmm15", "ymm0 bits 128-255", "zmm0 bits 256-511",
                                "zmm15 bits 256-511", "zmm16", "zmm31", "k0", "k7"});
}

namespace {
// Installs `hook` in Mode::exhaustive, or ends the test process with 77 (skipped) where the
// kernel has no Syscall User Dispatch.
zpoline::Session install_exhaustive_or_skip(zpoline::Hook hook) {
  zpoline::Options options;
  options.mode = zpoline::Mode::exhaustive;
  try {
    return install_or_skip(std::move(hook), options);
  } catch (const zpoline::Error& error) {
    if (error.code() != zpoline::ErrorCode::unsupported) throw;
    std::fprintf(stderr, "SKIP: no Syscall User Dispatch here: %s\n", error.what());
    std::_Exit(77);
  }
}
}  // namespace

// The same state, every register this machine has, through a trap of the Syscall User Dispatch
// safety net (Mode::exhaustive, a prefixed syscall that is never rewritten): the hook runs in
// the SIGSYS handler, and the state comes back from the signal frame.
TEST_CASE("vector_state_preserved_through_the_safety_net") {
  const long pid = real_getpid();
  state_site_return = address_of(zt_state_probe_site) + 2;
  state_prefixed_site_return = address_of(zt_state_probe_prefixed_site) + 3;
  const std::uint32_t flags = all_vector_registers();
  std::atomic<long> site_calls{0};
  auto session = install_exhaustive_or_skip([&](zpoline::Syscall& call) -> long {
    if (!from_state_probe(call)) return call.forward();
    ++site_calls;
    clobber_all_state();
    return call.forward();
  });
  const std::size_t traps = session.late_coverage().traps;
  long expected_calls = 0;
  for (unsigned seed = 20; seed < 24; ++seed) {
    CAPTURE(seed);
    const StateRun run =
        run_state_probe(zt_state_probe_prefixed, make_state_input(seed, seed % 2 ? 8 : 3, flags));
    CHECK(site_calls == ++expected_calls);
    CHECK(run.load_problems == "");
    CHECK(run.differences == "");
    CHECK(run.result == pid);
  }
  CHECK(session.late_coverage().traps - traps == 4);
}

// x87 in the register save modes, the hard cases. A hook that leaves an unmasked x87 exception
// pending: the stub's FRSTOR (a waiting instruction) must not raise it in the application. A raw
// clone made with seven x87 values live, through a rewritten site and through a trapped one (the
// safety net builds the stub's area from the signal frame): the child starts with the
// application's x87 stack, and the hook gets an empty one back from forward() (the clone path
// loads the application's state before the syscall).
namespace {
struct FnsaveImage {
  std::uint16_t control, reserved0, status, reserved1, tags, reserved2;
  std::uint32_t ip, cs, dp, ds;
  unsigned char registers[80];
};
}  // namespace
extern "C" {
FnsaveImage zt_x87_child_state;
volatile int zt_x87_child_done;
void zt_x87_clone_child();
}
asm(R"(
  .text
  .globl zt_x87_clone_child
  .type zt_x87_clone_child, @function
zt_x87_clone_child:
  .cfi_startproc
  .cfi_undefined %rip
  fnsave zt_x87_child_state(%rip)
  movl $1, zt_x87_child_done(%rip)
  mov $60, %eax
  xor %edi, %edi
  .byte 0x66
  syscall
  ud2
  .cfi_endproc
  .size zt_x87_clone_child, .-zt_x87_clone_child
)");

namespace {
// Loads `count` values (pi) on a fresh x87 stack with control word 0x0c7f, makes a raw clone of
// a thread without TLS (through a prefixed, never rewritten, syscall if `trapped`), and returns
// the parent's x87 state from right before and right after the call. The child saves its own.
long clone_with_x87_values(bool trapped, int count, FnsaveImage& before, FnsaveImage& after) {
  const std::size_t size = 64 * 1024;
  auto* stack = static_cast<char*>(
      mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(stack != MAP_FAILED);
  auto* top = reinterpret_cast<unsigned long*>(stack + size);
  *--top = reinterpret_cast<unsigned long>(&zt_x87_clone_child);
  const long flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                     CLONE_SYSVSEM | CLONE_SETTLS;
  zt_x87_child_done = 0;
  const std::uint16_t control = 0x0c7f;
  long result;
  register long r10 asm("r10") = 0;
  register long r8 asm("r8") = 0;  // no TLS
  asm volatile("fninit\n\tfldcw %0" : : "m"(control));
  for (int i = 0; i < count; ++i) asm volatile("fldpi" ::: "memory");
  asm volatile("fnsave %0\n\tfrstor %0" : "+m"(before) : : "memory");
  if (trapped) {
    asm volatile(".byte 0x66\n\tsyscall\n\ttest %%rax, %%rax\n\tjnz 1f\n\tret\n1:"
                 : "=a"(result)
                 : "a"(SYS_clone), "D"(flags), "S"(top), "d"(0), "r"(r10), "r"(r8)
                 : "rcx", "r11", "memory");
  } else {
    asm volatile("syscall\n\ttest %%rax, %%rax\n\tjnz 1f\n\tret\n1:"
                 : "=a"(result)
                 : "a"(SYS_clone), "D"(flags), "S"(top), "d"(0), "r"(r10), "r"(r8)
                 : "rcx", "r11", "memory");
  }
  asm volatile("fnsave %0" : "=m"(after) : : "memory");  // and empties the stack again
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!zt_x87_child_done && std::chrono::steady_clock::now() < deadline) sched_yield();
  return result;
}

// What differs between two FNSAVE images in the fields the application can see for `count`
// values (the status word without its condition codes, which the kernel's clone may change).
std::string x87_differences(const FnsaveImage& expected, const FnsaveImage& seen, int count) {
  std::string differences;
  if (seen.control != expected.control) differences += "control ";
  if ((seen.status & ~0x4700) != (expected.status & ~0x4700)) differences += "status ";
  if (seen.tags != expected.tags) differences += "tags ";
  if (std::memcmp(seen.registers, expected.registers, 10 * count) != 0) differences += "values ";
  return differences;
}
}  // namespace

TEST_CASE("x87_pending_exceptions_and_clones_in_the_register_modes") {
  const long pid = real_getpid();
  state_site_return = address_of(zt_state_probe_site) + 2;
  state_prefixed_site_return = address_of(zt_state_probe_prefixed_site) + 3;
  std::atomic<long> clones{0}, wrong_hook_results{0};
  auto session = install_exhaustive_or_skip([&](zpoline::Syscall& call) -> long {
    if (call.number() == SYS_clone) {
      const long result = call.forward();
      if (result > 0) {
        ++clones;
        // x87 arithmetic of the hook's own after forward(): needs free registers.
        volatile long double three = 3.0L, seven = 7.0L;
        const long double sixty = (three * seven + three) / (seven - three) * (three + seven);
        if (sixty != 60.0L) ++wrong_hook_results;
      }
      return result;
    }
    if (!from_state_probe(call)) return call.forward();
    const long result = call.forward();
    // All x87 exceptions unmasked, and an invalid operation left pending (an integer
    // store of 1e10 into 16 bits): the next waiting x87 instruction would raise SIGFPE.
    const std::uint16_t unmasked = 0x0360;
    const double big = 1e10;
    std::int16_t stored = 0;
    asm volatile("fldcw %1\n\tfldl %2\n\tfistps %0"
                 : "=m"(stored)
                 : "m"(unmasked), "m"(big)
                 : "memory");
    return result;
  });
  REQUIRE(zpoline_test::is_rewritten_site(zt_state_probe_site));
  getppid();  // this thread's first call, through the dispatcher, before the mode changes
  const unsigned char chosen = zpoline_detail_xsave_mode;
  for (const SaveMode& mode : save_modes()) {
    if (mode.mode < 3 || !mode.available) continue;
    CAPTURE(mode.name);
    use_save_mode(mode.mode);
    for (const unsigned st_count : {1u, 3u, 7u}) {
      CAPTURE(st_count);
      const StateRun run = run_state_probe(zt_state_probe, make_state_input(43, st_count, 0));
      CHECK(run.load_problems == "");
      CHECK(run.differences == "");
      CHECK(run.result == pid);
    }
    for (const bool trapped : {false, true}) {
      CAPTURE(trapped);
      FnsaveImage before{}, after{};
      const long before_clones = clones;
      const long child = clone_with_x87_values(trapped, 7, before, after);
      CHECK(child > 0);
      REQUIRE(zt_x87_child_done == 1);
      CHECK(clones == before_clones + 1);
      CHECK(x87_differences(before, after, 7) == "");
      CHECK(x87_differences(before, zt_x87_child_state, 7) == "");
    }
  }
  CHECK(wrong_hook_results == 0);
  use_save_mode(chosen);
}

// ---------------------------------------------------------------------------------------------
// The vector registers of a clone child, in each register save mode
// ---------------------------------------------------------------------------------------------

// A raw clone of a thread on its own stack (no TLS) with every vector register the mode keeps
// holding a known value, through a rewritten site and through a trapped one (where the safety
// net converts the signal frame into the stub's layout: for the zmm mode, XSAVE's AVX, ZMM_Hi256,
// Hi16_ZMM and opmask components). The hook clobbers all of the state before and after
// forward(): the child must start with the application's registers, and the parent must get
// them back.
namespace {
struct alignas(64) VectorImage {
  std::uint8_t zmm[32][64];  // zmm0-31 (ymm or xmm: the low bytes of the first 16)
  std::uint64_t k[8];
};
static_assert(offsetof(VectorImage, k) == 2048);
constexpr long kRawThreadFlags =
    CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS;
static_assert(kRawThreadFlags == 0xd0f00);
}  // namespace

extern "C" {
VectorImage zt_vector_child_image;
volatile int zt_vector_child_done;
int zt_vector_child_width;  // 2: zmm0-31 and k0-k7; 1: ymm0-15; 0: xmm0-15
void zt_vector_clone_child();
// Loads `pattern` at `width`, clones (rdi = pattern, rsi = the child's stack top, edx = width,
// ecx = through the prefixed, trapped syscall, r8 = where the parent's registers go after it).
long zt_vector_clone(const VectorImage* pattern, void* stack_top, int width, int trapped,
                     VectorImage* parent_after);
extern const unsigned char zt_vector_clone_site[];
}

#define ZT_VECTOR_STORES(base)                                                                \
  "  cmp $2, %ebx\n"                                                                          \
  "  jne 21f\n"                                                                               \
  "  .irp "                                                                                   \
  "r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n" \
  "  vmovdqu64 %zmm\\r, \\r*64(" base                                                         \
  ")\n"                                                                                       \
  "  .endr\n"                                                                                 \
  "  .irp r,0,1,2,3,4,5,6,7\n"                                                                \
  "  kmovq %k\\r, 2048+\\r*8(" base                                                           \
  ")\n"                                                                                       \
  "  .endr\n"                                                                                 \
  "  jmp 23f\n"                                                                               \
  "21:\n"                                                                                     \
  "  cmp $1, %ebx\n"                                                                          \
  "  jne 22f\n"                                                                               \
  "  .irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"                                          \
  "  vmovdqu %ymm\\r, \\r*64(" base                                                           \
  ")\n"                                                                                       \
  "  .endr\n"                                                                                 \
  "  jmp 23f\n"                                                                               \
  "22:\n"                                                                                     \
  "  .irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"                                          \
  "  movdqu %xmm\\r, \\r*64(" base                                                            \
  ")\n"                                                                                       \
  "  .endr\n"                                                                                 \
  "23:\n"

asm(R"(
  .text
  .globl zt_vector_clone_child
  .type zt_vector_clone_child, @function
zt_vector_clone_child:
  .cfi_startproc
  .cfi_undefined %rip
  lea zt_vector_child_image(%rip), %rax
  mov zt_vector_child_width(%rip), %ebx
)" ZT_VECTOR_STORES("%rax") R"(
  movl $1, zt_vector_child_done(%rip)
  mov $60, %eax
  xor %edi, %edi
  .byte 0x66
  syscall
  ud2
  .cfi_endproc
  .size zt_vector_clone_child, .-zt_vector_clone_child

  .globl zt_vector_clone
  .type zt_vector_clone, @function
zt_vector_clone:
  .cfi_startproc
  push %rbx
  .cfi_adjust_cfa_offset 8
  .cfi_offset %rbx, -16
  push %r12
  .cfi_adjust_cfa_offset 8
  .cfi_offset %r12, -24
  mov %edx, %ebx
  mov %r8, %r12
  mov %ecx, %r9d
  cmp $2, %ebx
  jne 1f
  .irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
  vmovdqu64 \r*64(%rdi), %zmm\r
  .endr
  .irp r,0,1,2,3,4,5,6,7
  kmovq 2048+\r*8(%rdi), %k\r
  .endr
  jmp 3f
1:
  cmp $1, %ebx
  jne 2f
  .irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  vmovdqu \r*64(%rdi), %ymm\r
  .endr
  jmp 3f
2:
  .irp r,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  movdqu \r*64(%rdi), %xmm\r
  .endr
3:
  mov $0xd0f00, %edi
  xor %edx, %edx
  xor %r10d, %r10d
  xor %r8d, %r8d
  test %r9d, %r9d
  jnz 5f
  .p2align 4  # the near mechanism moves this mov: inside one cache line
  mov $56, %eax
  .globl zt_vector_clone_site
zt_vector_clone_site:
  syscall
  jmp 6f
5:
  mov $56, %eax
  .byte 0x66
  syscall
6:
  test %rax, %rax
  jnz 7f
  ret
7:
)" ZT_VECTOR_STORES("%r12") R"(
  pop %r12
  .cfi_adjust_cfa_offset -8
  pop %rbx
  .cfi_adjust_cfa_offset -8
  ret
  .cfi_endproc
  .size zt_vector_clone, .-zt_vector_clone
)");

namespace {
// What differs between two images in the registers a mode keeps.
std::string vector_differences(const VectorImage& expected, const VectorImage& seen, int width) {
  std::string differences;
  const int count = width == 2 ? 32 : 16;
  const std::size_t bytes = width == 2 ? 64 : width == 1 ? 32 : 16;
  for (int r = 0; r < count; ++r) {
    if (std::memcmp(expected.zmm[r], seen.zmm[r], bytes) != 0) {
      differences += (width == 2 ? "zmm" : width == 1 ? "ymm" : "xmm") + std::to_string(r) + " ";
    }
  }
  for (int k = 0; width == 2 && k < 8; ++k) {
    if (expected.k[k] != seen.k[k]) differences += "k" + std::to_string(k) + " ";
  }
  return differences;
}
}  // namespace

TEST_CASE("vector_registers_of_clones_in_the_register_modes") {
  std::atomic<long> clones{0};
  auto session = install_exhaustive_or_skip([&](zpoline::Syscall& call) -> long {
    if (call.number() != SYS_clone || call.arg(0) != kRawThreadFlags) return call.forward();
    clobber_all_state();
    const long result = call.forward();
    if (result > 0) ++clones;
    clobber_all_state();
    return result;
  });
  REQUIRE(zpoline_test::is_rewritten_site(zt_vector_clone_site));
  getppid();  // this thread's first call, through the dispatcher, before the mode changes
  const unsigned char chosen = zpoline_detail_xsave_mode;
  int tried = 0;
  for (const SaveMode& mode : save_modes()) {
    if (mode.mode < 3 || !mode.available) continue;
    CAPTURE(mode.name);
    use_save_mode(mode.mode);
    const int width = mode.mode == 5 ? 2 : mode.mode == 3 ? 1 : 0;
    // In the zmm mode also with bits 256-511 zero in zmm16-31 (saved at 256 bits) and in all
    // (the same for zmm0-15).
    const int upper_kinds = width == 2 ? 3 : 1;
    for (int trial = 0; trial < 2 * upper_kinds; ++trial) {
      const bool trapped = trial % 2 != 0;
      const int upper_kind = trial / 2;
      CAPTURE(trapped);
      CAPTURE(upper_kind);
      VectorImage pattern{};
      for (int r = 0; r < 32; ++r) {
        const bool upper_zero = (upper_kind == 1 && r >= 16) || upper_kind == 2;
        for (int b = 0; b < 64; ++b) {
          pattern.zmm[r][b] = upper_zero && b >= 32
                                  ? 0
                                  : static_cast<std::uint8_t>(r * 64 + b * 5 + (trapped ? 3 : 1));
        }
      }
      for (int k = 0; k < 8; ++k) pattern.k[k] = 0x8877665544332211ull * (k + 1) + trapped;
      const std::size_t size = 64 * 1024;
      auto* stack = static_cast<char*>(
          mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      REQUIRE(stack != MAP_FAILED);
      auto* top = reinterpret_cast<unsigned long*>(stack + size);
      *--top = reinterpret_cast<unsigned long>(&zt_vector_clone_child);
      zt_vector_child_width = width;
      zt_vector_child_done = 0;
      std::memset(&zt_vector_child_image, 0, sizeof zt_vector_child_image);
      VectorImage parent_after{};
      const long before_clones = clones;
      const long child = zt_vector_clone(&pattern, top, width, trapped ? 1 : 0, &parent_after);
      CHECK(child > 0);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!zt_vector_child_done && std::chrono::steady_clock::now() < deadline) sched_yield();
      REQUIRE(zt_vector_child_done == 1);
      CHECK(clones == before_clones + 1);
      CHECK(vector_differences(pattern, zt_vector_child_image, width) == "");
      CHECK(vector_differences(pattern, parent_after, width) == "");
      ++tried;
    }
  }
  use_save_mode(chosen);
  CHECK(tried >= 2);
}

// PKRU (protection keys) in whatever mode install() chose: a hook that changes it (as pkey_set
// does) must not change it for the application. Only where the kernel has turned protection keys
// on; the register modes then keep it with RDPKRU/WRPKRU, the XSAVE modes with the rest.
TEST_CASE("pkru_preserved") {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0 || (c & bit_OSPKE) == 0 ||
      (enabled_xstate() & (1ull << 9)) == 0) {
    std::fprintf(stderr,
                 "SKIP: no protection keys here (CPUID.7:ECX.OSPKE clear or XCR0 = %#llx "
                 "without bit 9)\n",
                 static_cast<unsigned long long>(enabled_xstate()));
    std::_Exit(77);
  }
  const auto read_pkru = [] {
    std::uint32_t value = 0, high = 0;
    asm volatile("rdpkru" : "=a"(value), "=d"(high) : "c"(0));
    return value;
  };
  const auto write_pkru = [](std::uint32_t value) {
    asm volatile("wrpkru" : : "a"(value), "c"(0), "d"(0) : "memory");
  };
  const std::uint32_t original = read_pkru();
  std::atomic<long> calls{0};
  std::atomic<std::uint32_t> seen{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (call.number() != SYS_getppid) return call.forward();
    ++calls;
    seen = read_pkru();
    write_pkru(0x55555550u);  // write-disable every key but 0 and 1
    return call.forward();
  });
  // Key 15 access-disabled, key 14 write-disabled: not keys the process uses, so harmless.
  const std::uint32_t application = original | (1u << 30) | (1u << 29);
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    write_pkru(application);
    const long parent = syscall(SYS_getppid);
    const std::uint32_t after = read_pkru();
    write_pkru(original);
    CHECK(parent == getppid());
    CHECK(after == application);
    CHECK(seen == application);
  }
  CHECK(calls >= 3);
}

// The zmm mode saves each group of registers (zmm0-15, zmm16-31) at 256 bits where its bits
// 256-511 are all zero, whole otherwise, and leaves zmm0-15 clean where all their bits above 128
// were zero (entry_stub.S, SAVE_ZMM). Every combination, on the fast path and a new thread's
// first call, through a hook that clobbers all of the state, compared bit for bit.
TEST_CASE("zmm_mode_at_each_width") {
  if (!have_avx512() || !have_avx512bw()) {
    std::fprintf(stderr,
                 "SKIP: the zmm save mode needs AVX-512F and AVX512BW, enabled in XCR0 "
                 "(here %#llx)\n",
                 static_cast<unsigned long long>(enabled_xstate()));
    std::_Exit(77);
  }
  const long pid = real_getpid();
  state_site_return = address_of(zt_state_probe_site) + 2;
  state_prefixed_site_return = address_of(zt_state_probe_prefixed_site) + 3;
  std::atomic<long> site_calls{0};
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (!from_state_probe(call)) return call.forward();
    ++site_calls;
    clobber_all_state();
    return call.forward();
  });
  REQUIRE(zpoline_test::is_rewritten_site(zt_state_probe_site));
  getppid();
  const unsigned char chosen = zpoline_detail_xsave_mode;
  use_save_mode(5);
  struct Kind {
    const char* name;
    unsigned low_bytes;   // bytes of zmm0-15 that hold the pattern (the rest zero)
    unsigned high_bytes;  // the same for zmm16-31
  };
  const Kind kinds[] = {
      {"all whole", 64, 64},
      {"zmm0-15 at 256 bits, zmm16-31 whole", 32, 64},
      {"zmm0-15 whole, zmm16-31 at 256 bits", 64, 32},
      {"all at 256 bits", 32, 32},
      {"zmm0-15 at 128 bits, zmm16-31 at 256", 16, 32},
      {"zmm0-15 at 128 bits, zmm16-31 whole", 16, 64},
  };
  long expected_calls = 0;
  unsigned seed = 80;
  for (const Kind& kind : kinds) {
    CAPTURE(std::string(kind.name));
    for (const bool new_thread : {false, true}) {
      CAPTURE(new_thread);
      StateProbe in = make_state_input(++seed, 3, kLoadZmm | kOpmask64);
      for (unsigned r = 0; r < 32; ++r) {
        const unsigned keep = r < 16 ? kind.low_bytes : kind.high_bytes;
        std::memset(in.zmm[r] + keep, 0, 64 - keep);
      }
      StateRun run;
      if (new_thread) {
        std::thread([&] { run = run_state_probe(zt_state_probe, in); }).join();
      } else {
        run = run_state_probe(zt_state_probe, in);
      }
      CHECK(site_calls == ++expected_calls);
      CHECK(run.load_problems == "");
      // The probe loads zmm0-15 whole, which marks their upper state in use even where the bits
      // are zero; the stub gives them back with 256-bit loads or vzeroupper, which leaves it in
      // its initial state: the same values (XSAVE's initial state is all zero), one state
      // cleaner. Never the other way.
      std::string differences = run.differences;
      const std::string in_use = "XSTATE_BV (components in use); ";
      if ((run.in_use_after & ~run.in_use_before) == 0) {
        if (const auto at = differences.find(in_use); at != std::string::npos) {
          differences.erase(at, in_use.size());
        }
      }
      CHECK(differences == "");
      CHECK(run.result == pid);
    }
  }
  use_save_mode(chosen);
}
