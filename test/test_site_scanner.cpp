// Rewriter decisions on byte buffers: which 0f 05 / 0f 34 pairs are syscall sites, and which of
// those may be rewritten. Each case is machine code in, decisions out.
#include <Zydis/Zydis.h>
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <elf.h>
#include <link.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "rewriting/function_table.hpp"
#include "rewriting/return_slot.hpp"
#include "rewriting/site_scanner.hpp"

using namespace zpoline::detail;

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes all;
  for (const Bytes& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

// Scans `code` as one function spanning the whole buffer.
ScanResult scan_function(const Bytes& code) {
  const auto base = reinterpret_cast<std::uintptr_t>(code.data());
  const FunctionRange function{base, base + code.size()};
  return scan_code(code, base, std::span(&function, 1));
}

std::vector<std::pair<std::size_t, SiteKind>> decisions(const Bytes& code, const ScanResult& r) {
  std::vector<std::pair<std::size_t, SiteKind>> out;
  for (const SiteDecision& site : r.sites) {
    out.emplace_back(site.address - reinterpret_cast<std::uintptr_t>(code.data()), site.kind);
  }
  return out;
}

using Decisions = std::vector<std::pair<std::size_t, SiteKind>>;

const Bytes kSyscall = {0x0f, 0x05};
const Bytes kSysenter = {0x0f, 0x34};
const Bytes kRet = {0xc3};
const Bytes kMovEaxImm39 = {0xb8, 0x27, 0x00, 0x00, 0x00};  // mov $39, %eax

}  // namespace

TEST_CASE("a plain syscall and sysenter are rewritable") {
  const Bytes code = concat({kMovEaxImm39, kSyscall, kRet, kSysenter, kRet});
  CHECK(decisions(code, scan_function(code)) ==
        Decisions{{5, SiteKind::rewritable}, {8, SiteKind::rewritable}});
}

TEST_CASE("0f 05 inside an immediate is not a site") {
  // mov $0x050f, %eax ; add $0x0000050f, %eax ; movabs $0x050f050f050f050f, %rax ; ret
  const Bytes code = {0xb8, 0x0f, 0x05, 0x00, 0x00, 0x05, 0x0f, 0x05, 0x00, 0x00, 0x48,
                      0xb8, 0x0f, 0x05, 0x0f, 0x05, 0x0f, 0x05, 0x0f, 0x05, 0xc3};
  CHECK(scan_function(code).sites.empty());
}

TEST_CASE("0f 05 inside a displacement is not a site") {
  // mov 0x50f(%rip), %rax ; lea 0x50f(%rbx), %rcx ; ret
  const Bytes code = {0x48, 0x8b, 0x05, 0x0f, 0x05, 0x00, 0x00, 0x48,
                      0x8d, 0x8b, 0x0f, 0x05, 0x00, 0x00, 0xc3};
  CHECK(scan_function(code).sites.empty());
}

TEST_CASE("0f 05 in data outside every function is never rewritten") {
  // A function, then bytes that no function covers (a literal pool, padding, a string).
  const Bytes code = concat({kMovEaxImm39, kSyscall, kRet, {0x0f, 0x05, 0x0f, 0x34}});
  const auto base = reinterpret_cast<std::uintptr_t>(code.data());
  const FunctionRange function{base, base + 8};
  const ScanResult result = scan_code(code, base, std::span(&function, 1));
  CHECK(decisions(code, result) == Decisions{{5, SiteKind::rewritable},
                                             {8, SiteKind::undecodable},
                                             {10, SiteKind::undecodable}});
}

TEST_CASE("prefixed syscalls are left alone and counted") {
  // 66 0f 05 (operand size), f3 0f 05 (rep), 48 0f 05 (REX.W: sysretq? no, REX on syscall)
  const Bytes code = concat({{0x66, 0x0f, 0x05}, {0x48, 0x0f, 0x05}, kRet});
  CHECK(decisions(code, scan_function(code)) ==
        Decisions{{1, SiteKind::prefixed}, {4, SiteKind::prefixed}});
}

TEST_CASE("int 0x80 is not a site") {
  const Bytes code = concat({kMovEaxImm39, {0xcd, 0x80}, kRet});
  CHECK(scan_function(code).sites.empty());
}

TEST_CASE("functions that keep data in the red zone are skipped") {
  SUBCASE("store below rsp") {
    // mov %rdi, -8(%rsp) ; syscall ; mov -8(%rsp), %rdi ; ret
    const Bytes code =
        concat({{0x48, 0x89, 0x7c, 0x24, 0xf8}, kSyscall, {0x48, 0x8b, 0x7c, 0x24, 0xf8}, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{5, SiteKind::red_zone}});
  }
  SUBCASE("leaf with a frame pointer, reading a local back through rbp after the call") {
    // push %rbp ; mov %rsp,%rbp ; mov %rdi,-8(%rbp) ; syscall ; mov -8(%rbp),%rdi ; pop %rbp ; ret
    const Bytes code = concat({{0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0x7d, 0xf8},
                               kSyscall,
                               {0x48, 0x8b, 0x7d, 0xf8, 0x5d},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{8, SiteKind::red_zone}});
  }
  SUBCASE("a frame that moved rsp down first is fine") {
    // push %rbp ; mov %rsp,%rbp ; sub $16,%rsp ; mov %edi,-4(%rbp) ; syscall ; leave ; ret
    const Bytes code = concat({{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0x89, 0x7d, 0xfc},
                               kSyscall,
                               {0xc9},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{11, SiteKind::rewritable}});
  }
}

// `call *%rax` writes only the 8 bytes below rsp (the stub steps over the rest of the red zone), so
// a red-zone function's site is rewritable when those 8 bytes are provably dead at the call.
TEST_CASE("red-zone functions whose return-address slot is dead are rewritable") {
  const Bytes store_va_list = {0x48, 0x89, 0x4c, 0x24, 0xe8};   // mov %rcx,-0x18(%rsp)
  const Bytes mov_eax_openat = {0xb8, 0x01, 0x01, 0x00, 0x00};  // mov $0x101,%eax
  SUBCASE("glibc's variadic open: the red zone is done with before the call") {
    const Bytes code = concat({store_va_list, mov_eax_openat, kSyscall, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{10, SiteKind::rewritable}});
  }
  SUBCASE("data below the slot, read after the call") {
    // mov %rdi,-0x10(%rsp) ; syscall ; mov -0x10(%rsp),%rdi ; ret
    const Bytes code =
        concat({{0x48, 0x89, 0x7c, 0x24, 0xf0}, kSyscall, {0x48, 0x8b, 0x7c, 0x24, 0xf0}, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{5, SiteKind::rewritable}});
  }
  SUBCASE("the slot read on one branch after the call") {
    // mov %rcx,-0x18(%rsp) ; syscall ; test %rax,%rax ; jne +1 ; ret ; mov -0x8(%rsp),%eax ; ret
    const Bytes code = concat({store_va_list,
                               kSyscall,
                               {0x48, 0x85, 0xc0, 0x75, 0x01},
                               kRet,
                               {0x8b, 0x44, 0x24, 0xf8},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{5, SiteKind::red_zone}});
  }
  SUBCASE("a pointer into the red zone passed to the kernel") {
    // lea -0x50(%rsp),%rdx ; mov %rcx,-0x18(%rsp) ; syscall ; ret  (fcntl F_GETOWN_EX style)
    const Bytes code = concat({{0x48, 0x8d, 0x54, 0x24, 0xb0}, store_va_list, kSyscall, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{10, SiteKind::red_zone}});
  }
  SUBCASE("a pointer into the red zone copied into an argument register") {
    // lea -0x30(%rsp),%rbx ; mov %rbx,%rsi ; mov %rcx,-0x18(%rsp) ; syscall ; ret
    const Bytes code =
        concat({{0x48, 0x8d, 0x5c, 0x24, 0xd0, 0x48, 0x89, 0xde}, store_va_list, kSyscall, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{13, SiteKind::red_zone}});
  }
  SUBCASE("a pointer into the red zone passed through push and pop") {
    // lea -0x30(%rsp),%rbx ; push %rbx ; pop %rsi ; mov %rcx,-0x18(%rsp) ; syscall ; ret
    const Bytes code =
        concat({{0x48, 0x8d, 0x5c, 0x24, 0xd0, 0x53, 0x5e}, store_va_list, kSyscall, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{12, SiteKind::red_zone}});
  }
  SUBCASE("a pointer into the red zone dereferenced after the call") {
    // lea -0x30(%rsp),%rbx ; mov %rcx,-0x18(%rsp) ; syscall ; mov (%rbx),%rdx ; ret
    const Bytes code =
        concat({{0x48, 0x8d, 0x5c, 0x24, 0xd0}, store_va_list, kSyscall, {0x48, 0x8b, 0x13}, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{10, SiteKind::red_zone}});
  }
  SUBCASE("rsp moved by push and pop is followed") {
    // push %rbx ; mov %rcx,-0x18(%rsp) ; syscall ; pop %rbx ; ret
    const Bytes code = concat({{0x53}, store_va_list, kSyscall, {0x5b}, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{6, SiteKind::rewritable}});
  }
  SUBCASE("unoptimised code: a leaf that stores the result in the slot after the call") {
    // push %rbp ; mov %rsp,%rbp ; mov $39,%eax ; syscall ; mov %rax,-8(%rbp) ;
    // mov -8(%rbp),%rax ; pop %rbp ; ret   (what gcc -O0 makes of an inline-asm getpid)
    const Bytes code = concat({{0x55, 0x48, 0x89, 0xe5},
                               kMovEaxImm39,
                               kSyscall,
                               {0x48, 0x89, 0x45, 0xf8, 0x48, 0x8b, 0x45, 0xf8, 0x5d},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{9, SiteKind::rewritable}});
  }
  SUBCASE("rsp aligned to an unknown boundary: outside what the proof models") {
    // mov %rcx,-0x18(%rsp) ; and $-16,%rsp ; syscall ; ret
    const Bytes code = concat({store_va_list, {0x48, 0x83, 0xe4, 0xf0}, kSyscall, kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{9, SiteKind::red_zone}});
  }
}

// Leaf functions that keep a value in the slot across the syscall and get it back afterwards by
// some route other than a plain load off rsp: each must be skipped, since the rewritten call would
// replace the value with its return address.
TEST_CASE("a slot still live after the call is found whichever way it is addressed") {
  struct Shape {
    const char* name;
    Bytes before;  // the code up to the syscall
    Bytes after;   // and from just after it
  };
  const Bytes store_slot = {0x48, 0x89, 0x7c, 0x24, 0xf8};  // mov %rdi,-8(%rsp)
  const Shape shapes[] = {
      // Reached through a copy of rsp in another register, which no displacement off rsp shows.
      {"rsp copied by mov: push %r12 ; mov %rsp,%r12 ; mov %rdi,-8(%r12) ; ... ; mov -8(%r12),%rax",
       concat({{0x41, 0x54, 0x49, 0x89, 0xe4, 0x49, 0x89, 0x7c, 0x24, 0xf8}, kMovEaxImm39}),
       {0x49, 0x8b, 0x44, 0x24, 0xf8, 0x41, 0x5c, 0xc3}},
      {"rsp copied by lea: push %r12 ; lea 8(%rsp),%r12 ; mov %rdi,-16(%r12) ; ... ; "
       "mov -16(%r12),%rax",
       concat({{0x41, 0x54, 0x4c, 0x8d, 0x64, 0x24, 0x08, 0x49, 0x89, 0x7c, 0x24, 0xf0},
               kMovEaxImm39}),
       {0x49, 0x8b, 0x44, 0x24, 0xf0, 0x41, 0x5c, 0xc3}},
      {"the frame pointer copied: push %rbp ; mov %rsp,%rbp ; mov %rbp,%rdx ; mov %rdi,-8(%rdx) ; "
       "... ; mov -8(%rdx),%rax",
       concat({{0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0xea, 0x48, 0x89, 0x7a, 0xf8}, kMovEaxImm39}),
       {0x48, 0x8b, 0x42, 0xf8, 0x5d, 0xc3}},
      // Read by an instruction that also moves rsp: its memory operand is addressed with rsp as it
      // is before the push or call, and after the pop.
      {"push -8(%rsp) ; pop %rax",
       concat({store_slot, kMovEaxImm39}),
       {0xff, 0x74, 0x24, 0xf8, 0x58, 0xc3}},
      {"call *-8(%rsp)", concat({store_slot, kMovEaxImm39}), {0xff, 0x54, 0x24, 0xf8, 0xc3}},
      {"sub $16,%rsp ; pop 8(%rsp) (writes the 8 bytes above the slot) ; mov (%rsp),%rax",
       concat({store_slot, kMovEaxImm39}),
       {0x48, 0x83, 0xec, 0x10, 0x8f, 0x44, 0x24, 0x08, 0x48, 0x8b, 0x04, 0x24, 0x48, 0x83, 0xc4,
        0x08, 0xc3}},
      // The slot inside the frame when a call or return comes: neither ends its life.
      {"sub $8,%rsp ; call (a ret) ; mov (%rsp),%rax",
       concat({store_slot, kMovEaxImm39}),
       {0x48, 0x83, 0xec, 0x08, 0xe8, 0x08, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x04, 0x24, 0x48, 0x83,
        0xc4, 0x08, 0xc3}},
      {"sub $8,%rsp ; ret (returns through the slot)",
       concat({store_slot, kMovEaxImm39}),
       {0x48, 0x83, 0xec, 0x08, 0xc3}},
      // Shapes the proof already refused; kept here so that they stay refused.
      {"rsp lowered into the slot: sub $8,%rsp ; pop %rax",
       concat({store_slot, kMovEaxImm39}),
       {0x48, 0x83, 0xec, 0x08, 0x58, 0xc3}},
      {"lea -8(%rsp),%r12 ; mov %rdi,(%r12) ; ... ; mov (%r12),%rax",
       concat({{0x41, 0x54, 0x4c, 0x8d, 0x64, 0x24, 0xf8, 0x49, 0x89, 0x3c, 0x24}, kMovEaxImm39}),
       {0x49, 0x8b, 0x04, 0x24, 0x41, 0x5c, 0xc3}},
      {"movq -8(%rsp),%xmm0",
       concat({store_slot, kMovEaxImm39}),
       {0xf3, 0x0f, 0x7e, 0x44, 0x24, 0xf8, 0x66, 0x48, 0x0f, 0x7e, 0xc0, 0xc3}},
      {"lock cmpxchg %rdx,-8(%rsp)",
       concat({store_slot, kMovEaxImm39}),
       {0x31, 0xc0, 0x31, 0xd2, 0xf0, 0x48, 0x0f, 0xb1, 0x54, 0x24, 0xf8, 0xc3}},
      {"add -8(%rsp),%rax",
       concat({store_slot, kMovEaxImm39}),
       {0x31, 0xc0, 0x48, 0x03, 0x44, 0x24, 0xf8, 0xc3}},
      {"xchg %rax,-8(%rsp)",
       concat({store_slot, kMovEaxImm39}),
       {0x31, 0xc0, 0x48, 0x87, 0x44, 0x24, 0xf8, 0xc3}},
  };
  for (const Shape& shape : shapes) {
    SUBCASE(shape.name) {
      const Bytes code = concat({shape.before, kSyscall, shape.after});
      CHECK(decisions(code, scan_function(code)) ==
            Decisions{{shape.before.size(), SiteKind::red_zone}});
    }
  }
}

// A function that moves rsp down by N may still keep data in the red zone below its new rsp: gcc
// and clang at -O0 subtract only what exceeds 128 bytes of locals and reach the rest through rbp.
// The frame below rbp is taken from the prologue (pushes after `mov %rsp,%rbp`, then the sub), and
// a function with an access below it goes through the return-slot proof.
TEST_CASE("functions that move rsp down are checked against the frame they allocate") {
  SUBCASE("gcc -O0, 200 bytes of locals: one of them is in the slot") {
    // push %rbp ; mov %rsp,%rbp ; sub $0x68,%rsp ; mov %rdi,-0xd8(%rbp) ; mov -0xd8(%rbp),%rax ;
    // mov %al,-0x6c(%rbp) ; mov $39,%eax ; syscall ; mov %rax,-8(%rbp) ; movzbl -0x6c(%rbp),%eax ;
    // movsbq %al,%rax ; leave ; ret   (-0x6c(%rbp) is rsp-4 at the syscall)
    const Bytes code =
        concat({{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x68, 0x48, 0x89, 0xbd, 0x28, 0xff,
                 0xff, 0xff, 0x48, 0x8b, 0x85, 0x28, 0xff, 0xff, 0xff, 0x88, 0x45, 0x94},
                kMovEaxImm39,
                kSyscall,
                {0x48, 0x89, 0x45, 0xf8, 0x0f, 0xb6, 0x45, 0x94, 0x48, 0x0f, 0xbe, 0xc0, 0xc9},
                kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{30, SiteKind::red_zone}});
  }
  SUBCASE("a register pushed after the frame pointer is part of the frame") {
    // push %rbp ; mov %rsp,%rbp ; push %rbx ; sub $0x10,%rsp ; mov %rdi,-0x20(%rbp) ; ... ;
    // mov -0x20(%rbp),%rax ; add $0x10,%rsp ; pop %rbx ; pop %rbp ; ret
    // (rsp is rbp-0x18 at the syscall, so -0x20(%rbp) is the slot)
    const Bytes code =
        concat({{0x55, 0x48, 0x89, 0xe5, 0x53, 0x48, 0x83, 0xec, 0x10, 0x48, 0x89, 0x7d, 0xe0},
                kMovEaxImm39,
                kSyscall,
                {0x48, 0x8b, 0x45, 0xe0, 0x48, 0x83, 0xc4, 0x10, 0x5b, 0x5d},
                kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{18, SiteKind::red_zone}});
  }
  SUBCASE("rsp moved only by the epilogue's lea off rbp") {
    // push %rbp ; mov %rsp,%rbp ; push %rbx ; mov %rdi,-0x10(%rbp) ; ... ; mov -0x10(%rbp),%rax ;
    // lea -8(%rbp),%rsp ; pop %rbx ; pop %rbp ; ret
    const Bytes code = concat({{0x55, 0x48, 0x89, 0xe5, 0x53, 0x48, 0x89, 0x7d, 0xf0},
                               kMovEaxImm39,
                               kSyscall,
                               {0x48, 0x8b, 0x45, 0xf0, 0x48, 0x8d, 0x65, 0xf8, 0x5b, 0x5d},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{14, SiteKind::red_zone}});
  }
  SUBCASE("a frame pointer set up after a branch: its frame is not known") {
    // test %rdi,%rdi ; je .Lret ; push %rbp ; mov %rsp,%rbp ; sub $0x10,%rsp ;
    // mov %rdi,-0x18(%rbp) ; ... ; mov -0x18(%rbp),%rax ; leave ; .Lret: ret
    const Bytes code = concat({{0x48, 0x85, 0xff, 0x74, 0x18, 0x55, 0x48, 0x89, 0xe5, 0x48, 0x83,
                                0xec, 0x10, 0x48, 0x89, 0x7d, 0xe8},
                               kMovEaxImm39,
                               kSyscall,
                               {0x48, 0x8b, 0x45, 0xe8, 0xc9},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{22, SiteKind::red_zone}});
  }
  SUBCASE("a frame pointer set up by enter, which the prologue is not followed through") {
    // enter $0x10,$0 ; sub $0x10,%rsp ; mov %rdi,-0x28(%rbp) ; ... ; mov -0x28(%rbp),%rax ;
    // leave ; ret   (rsp is rbp-0x20 at the syscall, so -0x28(%rbp) is the slot)
    const Bytes code =
        concat({{0xc8, 0x10, 0x00, 0x00, 0x48, 0x83, 0xec, 0x10, 0x48, 0x89, 0x7d, 0xd8},
                kMovEaxImm39,
                kSyscall,
                {0x48, 0x8b, 0x45, 0xd8, 0xc9},
                kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{17, SiteKind::red_zone}});
  }
  SUBCASE("a frame pointer into the middle of the frame") {
    // push %rbp ; sub $0x100,%rsp ; lea 0x80(%rsp),%rbp ; mov %rdi,-0x88(%rbp) ; ... ;
    // mov -0x88(%rbp),%rax ; add $0x100,%rsp ; pop %rbp ; ret   (-0x88(%rbp) is rsp-8)
    const Bytes code = concat(
        {{0x55, 0x48, 0x81, 0xec, 0x00, 0x01, 0x00, 0x00, 0x48, 0x8d, 0xac, 0x24,
          0x80, 0x00, 0x00, 0x00, 0x48, 0x89, 0xbd, 0x78, 0xff, 0xff, 0xff},
         kMovEaxImm39,
         kSyscall,
         {0x48, 0x8b, 0x85, 0x78, 0xff, 0xff, 0xff, 0x48, 0x81, 0xc4, 0x00, 0x01, 0x00, 0x00, 0x5d},
         kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{28, SiteKind::red_zone}});
  }
  SUBCASE("gcc -O2: rsp-relative data below rsp after the sub, in the slot") {
    // sub $0x60,%rsp ; mov %rdi,-8(%rsp) ; ... ; mov -8(%rsp),%rax ; add $0x60,%rsp ; ret
    const Bytes code = concat({{0x48, 0x83, 0xec, 0x60, 0x48, 0x89, 0x7c, 0x24, 0xf8},
                               kMovEaxImm39,
                               kSyscall,
                               {0x48, 0x8b, 0x44, 0x24, 0xf8, 0x48, 0x83, 0xc4, 0x60},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{14, SiteKind::red_zone}});
  }
  SUBCASE("clang -O0: red-zone data below rsp but clear of the slot is proven dead") {
    // push %rbp ; mov %rsp,%rbp ; sub $0x60,%rsp ; mov %rdi,-8(%rbp) ; mov -8(%rbp),%rax ;
    // mov %al,-0x6c(%rbp) ; ... ; mov %rax,-0xd8(%rbp) ; mov -0x6c(%rbp),%al ; movsbq %al,%rax ;
    // add $0x60,%rsp ; pop %rbp ; ret   (-0x6c(%rbp) is rsp-0xc, -0xd8(%rbp) rsp-0x78)
    const Bytes code = concat({{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x60, 0x48, 0x89, 0x7d,
                                0xf8, 0x48, 0x8b, 0x45, 0xf8, 0x88, 0x45, 0x94},
                               kMovEaxImm39,
                               kSyscall,
                               {0x48, 0x89, 0x85, 0x28, 0xff, 0xff, 0xff, 0x8a, 0x45, 0x94, 0x48,
                                0x0f, 0xbe, 0xc0, 0x48, 0x83, 0xc4, 0x60, 0x5d},
                               kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{24, SiteKind::rewritable}});
  }
  SUBCASE("rbp never set from rsp holds other data, not a frame pointer") {
    // push %rbp ; push %rbx ; sub $0x28,%rsp ; mov 8(%rdi),%rbp ; mov -0x10(%rbp),%rdx ;
    // lea 8(%rsp),%rsi ; xor %edi,%edi ; xor %eax,%eax ; syscall ; add $0x28,%rsp ; pop %rbx ;
    // pop %rbp ; ret   (the buffer in rsi would make the return-slot proof refuse the site)
    const Bytes code =
        concat({{0x55, 0x53, 0x48, 0x83, 0xec, 0x28, 0x48, 0x8b, 0x6f, 0x08, 0x48, 0x8b,
                 0x55, 0xf0, 0x48, 0x8d, 0x74, 0x24, 0x08, 0x31, 0xff, 0x31, 0xc0},
                kSyscall,
                {0x48, 0x83, 0xc4, 0x28, 0x5b, 0x5d},
                kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{23, SiteKind::rewritable}});
  }
  SUBCASE("a frame large enough for every access stays rewritable without the proof") {
    // push %rbp ; mov %rsp,%rbp ; push %rbx ; sub $0xd8,%rsp ; mov %rdi,-0xe0(%rbp) ;
    // lea -0xd0(%rbp),%rsi ; xor %edi,%edi ; mov $0xc8,%edx ; xor %eax,%eax ; syscall ;
    // mov -0xe0(%rbp),%rax ; mov -8(%rbp),%rbx ; leave ; ret
    // (rsp is rbp-0xe0 at the syscall; the buffer handed to read() would fail the proof)
    const Bytes code =
        concat({{0x55, 0x48, 0x89, 0xe5, 0x53, 0x48, 0x81, 0xec, 0xd8, 0x00, 0x00, 0x00,
                 0x48, 0x89, 0xbd, 0x20, 0xff, 0xff, 0xff, 0x48, 0x8d, 0xb5, 0x30, 0xff,
                 0xff, 0xff, 0x31, 0xff, 0xba, 0xc8, 0x00, 0x00, 0x00, 0x31, 0xc0},
                kSyscall,
                {0x48, 0x8b, 0x85, 0x20, 0xff, 0xff, 0xff, 0x48, 0x8b, 0x5d, 0xf8, 0xc9},
                kRet});
    CHECK(decisions(code, scan_function(code)) == Decisions{{35, SiteKind::rewritable}});
  }
}

TEST_CASE("a syscall just after the end of a function's unwind information continues it") {
  // glibc's clone3: `mov $435,%eax` ends the FDE (cfi_endproc), then `syscall`.
  const Bytes code = concat({{0xb8, 0xb3, 0x01, 0x00, 0x00}, kSyscall, kRet});
  const auto base = reinterpret_cast<std::uintptr_t>(code.data());
  const FunctionRange function{base, base + 5};
  CHECK(decisions(code, scan_code(code, base, std::span(&function, 1))) ==
        Decisions{{5, SiteKind::rewritable}});

  // Far from any function, the same bytes stay undecided.
  Bytes far = concat({{0xb8, 0xb3, 0x01, 0x00, 0x00}, Bytes(64, 0x90), kSyscall, kRet});
  const auto far_base = reinterpret_cast<std::uintptr_t>(far.data());
  const FunctionRange far_function{far_base, far_base + 5};
  CHECK(decisions(far, scan_code(far, far_base, std::span(&far_function, 1))) ==
        Decisions{{69, SiteKind::undecodable}});
}

TEST_CASE("undecodable code before a candidate makes it undecodable") {
  // 0f 0b is ud2 (decodable); 0f ff is not an instruction at all in long mode (ud0 needs modrm;
  // use 0x06 = push es, invalid in 64-bit mode).
  const Bytes code = concat({{0x06}, kSyscall, kRet});
  CHECK(decisions(code, scan_function(code)) == Decisions{{1, SiteKind::undecodable}});
}

TEST_CASE("a site at the last bytes of a buffer straddling pages is found") {
  // The scanner works on addresses; a site whose two bytes sit on two pages is an ordinary
  // site to it (the patcher handles the two pages: see the scenario tests).
  Bytes code(4096 + 16, 0x90);
  code[4095] = 0x0f;
  code[4096] = 0x05;
  code[4097] = 0xc3;
  CHECK(decisions(code, scan_function(code)) == Decisions{{4095, SiteKind::rewritable}});
}

TEST_CASE("the candidate search finds every pair at every offset and nothing else") {
  // The vector search works 64 and then 16 bytes at a time and reads one byte ahead: put pairs on
  // both sides of every chunk boundary, at the very start and end, and near-misses everywhere.
  for (std::size_t size : {0, 1, 2, 3, 15, 16, 17, 18, 31, 32, 33, 47, 64, 65, 66, 100, 129, 200}) {
    for (std::size_t at = 0; at + 1 < size; ++at) {
      for (std::uint8_t second : {std::uint8_t{0x05}, std::uint8_t{0x34}}) {
        CAPTURE(size);
        CAPTURE(at);
        // 0f followed by other bytes, 05 and 34 after other bytes: none of them is a pair.
        Bytes code(size);
        for (std::size_t i = 0; i < size; ++i) {
          code[i] = static_cast<std::uint8_t>(i % 3 == 0 ? 0x0f : i % 3 == 1 ? 0x06 : 0x05);
        }
        if (size > 0) code[0] = 0x34;
        code[at] = 0x0f;
        code[at + 1] = second;
        if (at + 2 < size) code[at + 2] = 0x90;
        if (at > 0) code[at - 1] = 0x90;
        std::vector<std::uintptr_t> found;
        find_candidates(code, 1000, found);
        CHECK(found == std::vector<std::uintptr_t>{1000 + at});
      }
    }
  }
  // Many pairs in one 64-byte block.
  Bytes block(300, 0x90);
  std::vector<std::uintptr_t> expected;
  for (std::size_t at = 60; at < 140; at += 3) {
    block[at] = 0x0f;
    block[at + 1] = at % 2 ? 0x05 : 0x34;
    expected.push_back(at);
  }
  std::vector<std::uintptr_t> in_block;
  find_candidates(block, 0, in_block);
  CHECK(in_block == expected);

  const Bytes none(4096, 0x0f);
  std::vector<std::uintptr_t> found;
  find_candidates(none, 0, found);
  CHECK(found.empty());
  const Bytes all = concat({kSyscall, kSyscall, kSysenter, kSyscall, kSyscall, kSysenter, kSyscall,
                            kSyscall, kSysenter, kSyscall});
  find_candidates(all, 0, found);
  CHECK(found == std::vector<std::uintptr_t>{0, 2, 4, 6, 8, 10, 12, 14, 16, 18});
}

TEST_CASE("a function is decoded only as far as its candidates need") {
  // mov $0x050f, %eax ; then 4000 bytes of nops ; ret. The candidate is inside the immediate:
  // once the mov is decoded it is decided, and the rest is not read.
  Bytes code = concat({{0xb8, 0x0f, 0x05, 0x00, 0x00}, Bytes(4000, 0x90), kRet});
  ScanResult result = scan_function(code);
  CHECK(result.sites.empty());
  CHECK(result.bytes_decoded == 5);
  CHECK(result.functions_decoded == 1);

  // A real syscall: the whole function is decoded, for the red-zone check.
  code = concat({kMovEaxImm39, kSyscall, Bytes(4000, 0x90), kRet});
  result = scan_function(code);
  CHECK(decisions(code, result) == Decisions{{5, SiteKind::rewritable}});
  CHECK(result.bytes_decoded == code.size());

  // ... which finds red-zone use after the syscall too,
  code = concat({kMovEaxImm39, kSyscall, Bytes(4000, 0x90), {0x48, 0x8b, 0x7c, 0x24, 0xf8}, kRet});
  CHECK(decisions(code, scan_function(code)) == Decisions{{5, SiteKind::red_zone}});
  // ... and stops at an access below rsp, which settles the question.
  code = concat({kMovEaxImm39, kSyscall, {0x48, 0x8b, 0x7c, 0x24, 0xf8}, Bytes(4000, 0x90), kRet});
  result = scan_function(code);
  CHECK(decisions(code, result) == Decisions{{5, SiteKind::red_zone}});
  CHECK(result.bytes_decoded == 12);
}

TEST_CASE("candidates in code without functions are found but never decoded") {
  const Bytes code = concat({kMovEaxImm39, kSyscall, kRet});
  const ScanResult result =
      scan_code(code, reinterpret_cast<std::uintptr_t>(code.data()), std::span<FunctionRange>());
  CHECK(decisions(code, result) == Decisions{{5, SiteKind::undecodable}});
  CHECK(result.bytes_decoded == 0);
  CHECK(result.functions_decoded == 0);
}

namespace {

struct LoadedImage {
  dl_phdr_info info{};
  std::string path;
  bool found = false;
};

int find_libc(dl_phdr_info* info, std::size_t, void* data) {
  auto* image = static_cast<LoadedImage*>(data);
  if (info->dlpi_name && std::strstr(info->dlpi_name, "libc.so.6")) {
    image->info = *info;
    image->path = info->dlpi_name;
    image->found = true;
    return 1;
  }
  return 0;
}

// The oracle's own statement of the frame a function's prologue allocates below rbp (the rule of
// frame_below_rbp() in site_scanner.cpp): follow the code from the entry until control leaves the
// straight line, or the frame is `enough`; rbp must be set from rsp there; pushes, pops, and add,
// sub, lea or and of constants move rsp; anything else that writes rsp makes the frame unknown,
// and anything else that writes rbp makes rbp no frame pointer. -1: unknown.
std::int64_t prologue_frame(const ZydisDecoder& decoder, std::uintptr_t ip, std::uintptr_t end,
                            std::int64_t enough) {
  std::int64_t sp = 0, fp = 0;
  bool have_fp = false;
  for (int n = 0; n < 64 && ip < end; ++n) {
    if (have_fp && fp - sp >= enough) break;
    ZydisDecodedInstruction instruction;
    ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, reinterpret_cast<const void*>(ip), end - ip,
                                             &instruction, operands))) {
      return -1;
    }
    ip += instruction.length;
    switch (instruction.meta.category) {
      case ZYDIS_CATEGORY_COND_BR:
      case ZYDIS_CATEGORY_UNCOND_BR:
      case ZYDIS_CATEGORY_CALL:
      case ZYDIS_CATEGORY_RET:
      case ZYDIS_CATEGORY_SYSCALL:
      case ZYDIS_CATEGORY_INTERRUPT:
        return have_fp && fp >= sp ? fp - sp : -1;
      default:
        break;
    }
    switch (instruction.mnemonic) {
      case ZYDIS_MNEMONIC_SYSCALL:
      case ZYDIS_MNEMONIC_SYSENTER:
      case ZYDIS_MNEMONIC_UD2:
      case ZYDIS_MNEMONIC_HLT:
      case ZYDIS_MNEMONIC_INT3:
        return have_fp && fp >= sp ? fp - sp : -1;
      case ZYDIS_MNEMONIC_PUSH:
      case ZYDIS_MNEMONIC_PUSHFQ:
        sp -= instruction.operand_width / 8;
        continue;
      case ZYDIS_MNEMONIC_POPFQ:
        sp += 8;
        continue;
      case ZYDIS_MNEMONIC_POP:
        if (operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER) {
          const ZydisRegister popped =
              ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, operands[0].reg.value);
          if (popped == ZYDIS_REGISTER_RSP) return -1;
          if (popped == ZYDIS_REGISTER_RBP) have_fp = false;
        }
        sp += instruction.operand_width / 8;
        continue;
      default:
        break;
    }
    const ZydisDecodedOperand& to = operands[0];
    const ZydisDecodedOperand& from = operands[1];
    const bool pair =
        instruction.operand_count_visible == 2 && to.type == ZYDIS_OPERAND_TYPE_REGISTER;
    const bool from_rsp_address = from.type == ZYDIS_OPERAND_TYPE_MEMORY &&
                                  from.mem.base == ZYDIS_REGISTER_RSP &&
                                  from.mem.index == ZYDIS_REGISTER_NONE;
    const bool constant = from.type == ZYDIS_OPERAND_TYPE_IMMEDIATE;
    if (pair && to.reg.value == ZYDIS_REGISTER_RSP) {
      if (instruction.mnemonic == ZYDIS_MNEMONIC_SUB && constant) {
        sp -= from.imm.value.s;
        continue;
      }
      if (instruction.mnemonic == ZYDIS_MNEMONIC_ADD && constant) {
        sp += from.imm.value.s;
        continue;
      }
      if (instruction.mnemonic == ZYDIS_MNEMONIC_LEA && from_rsp_address) {
        sp += from.mem.disp.value;
        continue;
      }
      if (instruction.mnemonic == ZYDIS_MNEMONIC_AND && constant) continue;
    }
    if (pair && to.reg.value == ZYDIS_REGISTER_RBP) {
      if (instruction.mnemonic == ZYDIS_MNEMONIC_MOV && from.type == ZYDIS_OPERAND_TYPE_REGISTER &&
          from.reg.value == ZYDIS_REGISTER_RSP) {
        fp = sp;
        have_fp = true;
        continue;
      }
      if (instruction.mnemonic == ZYDIS_MNEMONIC_LEA && from_rsp_address &&
          from.mem.disp.value >= 0) {
        fp = sp + from.mem.disp.value;
        have_fp = true;
        continue;
      }
    }
    for (unsigned i = 0; i < instruction.operand_count; ++i) {
      if (operands[i].type != ZYDIS_OPERAND_TYPE_REGISTER ||
          !(operands[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE)) {
        continue;
      }
      const ZydisRegister written =
          ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, operands[i].reg.value);
      if (written == ZYDIS_REGISTER_RSP) return -1;
      if (written == ZYDIS_REGISTER_RBP) have_fp = false;
    }
  }
  return have_fp && fp >= sp ? fp - sp : -1;
}

}  // namespace

TEST_CASE("decisions on libc agree with an independent full decode of every function") {
  LoadedImage libc;
  dl_iterate_phdr(find_libc, &libc);
  REQUIRE(libc.found);
  const FunctionTable table = collect_functions(libc.info, libc.path);
  REQUIRE(table.functions.size() > 1000);

  // Independent: decode every function completely from its start, instruction by instruction
  // and with all operands, and collect the syscall/sysenter instructions, their lengths, and
  // whether the function uses its red zone. A function whose only evidence is a copy of rsp
  // (getcontext and swapcontext save their caller's rsp), or that moves rsp down and addresses
  // memory off rbp below the frame its prologue allocates (or sets rbp from rsp, but not in its
  // prologue), has each of its sites decided by the return-slot proof, run here on the whole
  // function; the sites of functions with any other evidence all stay skipped in this libc.
  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  std::set<std::uintptr_t> plain, prefixed, red_zone;
  std::size_t copy_only = 0, copy_only_proven = 0, below_frame = 0, below_frame_proven = 0;
  std::size_t off_rbp = 0;  // functions that move rsp down and address memory below rbp
  for (const FunctionRange& function : table.functions) {
    std::uintptr_t ip = function.begin;
    ZydisDecodedInstruction instruction;
    ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
    // Within the function, and a syscall right after its end when the function's last
    // instruction falls through (see the continuation case above).
    bool falls_through = false;
    bool below_rsp = false, below_rbp = false, copies_rsp = false, moves_rsp_down = false;
    bool rbp_from_rsp = false;
    std::int64_t lowest_off_rbp = 0;
    std::vector<std::uintptr_t> function_plain;
    while (ip < function.end + 2 &&
           ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, reinterpret_cast<const void*>(ip),
                                               function.end + 2 - ip, &instruction, operands))) {
      const bool is_syscall = instruction.mnemonic == ZYDIS_MNEMONIC_SYSCALL ||
                              instruction.mnemonic == ZYDIS_MNEMONIC_SYSENTER;
      if (ip >= function.end && !(falls_through && is_syscall && ip == function.end)) break;
      if (ip < function.end && ip + instruction.length > function.end) break;
      if (is_syscall && instruction.length == 2) function_plain.push_back(ip);
      if (is_syscall && instruction.length != 2) prefixed.insert(ip + instruction.length - 2);
      const bool to_rsp = instruction.operand_count_visible > 0 &&
                          operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                          operands[0].reg.value == ZYDIS_REGISTER_RSP;
      if (to_rsp && (instruction.mnemonic == ZYDIS_MNEMONIC_SUB ||
                     instruction.mnemonic == ZYDIS_MNEMONIC_LEA ||
                     instruction.mnemonic == ZYDIS_MNEMONIC_AND)) {
        moves_rsp_down = true;
      } else {
        for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
          const ZydisDecodedOperand& operand = operands[i];
          if (operand.type != ZYDIS_OPERAND_TYPE_MEMORY || !operand.mem.disp.has_displacement ||
              operand.mem.disp.value >= 0) {
            continue;
          }
          below_rsp = below_rsp || operand.mem.base == ZYDIS_REGISTER_RSP;
          below_rbp = below_rbp || operand.mem.base == ZYDIS_REGISTER_RBP;
          if (operand.mem.base == ZYDIS_REGISTER_RBP) {
            lowest_off_rbp = std::min(lowest_off_rbp, operand.mem.disp.value);
          }
        }
        // rsp, or an address computed from it, goes into some other operand.
        bool from_rsp = false, into_other = instruction.mnemonic == ZYDIS_MNEMONIC_PUSH;
        for (unsigned i = 0; i < instruction.operand_count_visible; ++i) {
          const ZydisDecodedOperand& operand = operands[i];
          const bool rsp = operand.type == ZYDIS_OPERAND_TYPE_REGISTER &&
                           ZydisRegisterGetLargestEnclosing(
                               ZYDIS_MACHINE_MODE_LONG_64, operand.reg.value) == ZYDIS_REGISTER_RSP;
          from_rsp =
              from_rsp || (rsp && (operand.actions & ZYDIS_OPERAND_ACTION_MASK_READ)) ||
              (operand.type == ZYDIS_OPERAND_TYPE_MEMORY &&
               operand.mem.type == ZYDIS_MEMOP_TYPE_AGEN && operand.mem.base == ZYDIS_REGISTER_RSP);
          into_other = into_other || (!rsp && (operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE));
        }
        copies_rsp = copies_rsp || (from_rsp && into_other);
        for (unsigned i = 0; i < instruction.operand_count; ++i) {
          const ZydisDecodedOperand& operand = operands[i];
          rbp_from_rsp = rbp_from_rsp ||
                         (from_rsp && operand.type == ZYDIS_OPERAND_TYPE_REGISTER &&
                          (operand.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) &&
                          ZydisRegisterGetLargestEnclosing(
                              ZYDIS_MACHINE_MODE_LONG_64, operand.reg.value) == ZYDIS_REGISTER_RBP);
        }
        rbp_from_rsp = rbp_from_rsp || instruction.mnemonic == ZYDIS_MNEMONIC_ENTER;
      }
      falls_through = instruction.meta.category != ZYDIS_CATEGORY_RET &&
                      instruction.meta.category != ZYDIS_CATEGORY_UNCOND_BR &&
                      instruction.mnemonic != ZYDIS_MNEMONIC_UD2 &&
                      instruction.mnemonic != ZYDIS_MNEMONIC_HLT &&
                      instruction.mnemonic != ZYDIS_MNEMONIC_INT3;
      ip += instruction.length;
    }
    const bool uses_red_zone = below_rsp || (below_rbp && !moves_rsp_down);
    bool frame_exceeded = false;
    if (!uses_red_zone && moves_rsp_down && below_rbp && !function_plain.empty()) {
      // Without a frame pointer from the prologue, rbp is one only if set from rsp elsewhere.
      const std::int64_t frame =
          prologue_frame(decoder, function.begin, function.end, -lowest_off_rbp);
      frame_exceeded = frame < 0 ? rbp_from_rsp : lowest_off_rbp < -frame;
      ++off_rbp;
    }
    const bool to_proof = !uses_red_zone && (moves_rsp_down ? frame_exceeded : copies_rsp);
    if (function_plain.empty() || !to_proof) {
      for (std::uintptr_t site : function_plain) (uses_red_zone ? red_zone : plain).insert(site);
      continue;
    }
    std::size_t& functions = moves_rsp_down ? below_frame : copy_only;
    std::size_t& proven = moves_rsp_down ? below_frame_proven : copy_only_proven;
    ++functions;
    const std::uintptr_t end = std::max(function.end, function_plain.back() + 2);
    ReturnSlotProof proof(
        decoder,
        std::span(reinterpret_cast<const std::uint8_t*>(function.begin), end - function.begin),
        function.begin, function.begin, end);
    for (std::uintptr_t site : function_plain) {
      const bool dead = proof.slot_dead_at(site);
      (dead ? plain : red_zone).insert(site);
      proven += dead;
    }
  }

  std::set<std::uintptr_t> scanned_plain, scanned_prefixed, scanned_red_zone;
  for (int i = 0; i < libc.info.dlpi_phnum; ++i) {
    const ElfW(Phdr)& segment = libc.info.dlpi_phdr[i];
    if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
    const std::uintptr_t begin = libc.info.dlpi_addr + segment.p_vaddr;
    const ScanResult result =
        scan_code(std::span(reinterpret_cast<const std::uint8_t*>(begin), segment.p_memsz), begin,
                  table.functions);
    for (const SiteDecision& site : result.sites) {
      if (site.kind == SiteKind::rewritable) {
        scanned_plain.insert(site.address);
      } else if (site.kind == SiteKind::red_zone) {
        scanned_red_zone.insert(site.address);
      } else if (site.kind == SiteKind::prefixed) {
        scanned_prefixed.insert(site.address);
      }
    }
  }
  MESSAGE("libc: ", plain.size(), " rewritable syscall instructions, ", red_zone.size(),
          " skipped in red-zone functions, ", prefixed.size(), " prefixed; ", copy_only,
          " functions with syscalls copy rsp and do not move it down, ", copy_only_proven,
          " of their sites proven; ", off_rbp, " move rsp down and address memory below rbp, ",
          below_frame, " of them below their frame, ", below_frame_proven,
          " of their sites proven");
  CHECK(plain.size() > 100);
  CHECK(scanned_plain == plain);
  CHECK(scanned_red_zone == red_zone);
  CHECK(scanned_prefixed == prefixed);
}
