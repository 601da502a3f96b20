// Modes and the Syscall User Dispatch safety net: syscalls from code the rewriter did not reach
// (JIT code written after mapping, prefixed syscalls, red-zone functions, libraries loaded with
// dlopen) reach the hook, and the application's own SIGSYS use keeps working.
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

std::atomic<long> getpid_calls{0};
zpoline::Hook counting_getpid() {
  return [](zpoline::Syscall& call) {
    if (call.number() == SYS_getpid) ++getpid_calls;
    return call.forward();
  };
}

zpoline::Options with_mode(zpoline::Mode mode) {
  zpoline::Options options;
  options.mode = mode;
  return options;
}

long real_getpid() {
  return zpoline::raw_syscall(SYS_getpid);
}

// Code written into executable memory after it was mapped: `mov $39,%eax; syscall; ret`, and
// the same with an operand-size prefix on the syscall (which is never rewritten).
struct JitCode {
  unsigned char* memory = nullptr;
  JitCode() {
    memory = static_cast<unsigned char*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(memory != MAP_FAILED);
    const unsigned char plain[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
    const unsigned char prefixed[] = {0xb8, 39, 0, 0, 0, 0x66, 0x0f, 0x05, 0xc3};
    std::memcpy(memory, plain, sizeof plain);
    std::memcpy(memory + 64, prefixed, sizeof prefixed);
  }
  ~JitCode() { munmap(memory, 4096); }
  long plain() const { return reinterpret_cast<long (*)()>(memory)(); }
  long prefixed() const { return reinterpret_cast<long (*)()>(memory + 64)(); }
  bool plain_rewritten() const { return zpoline_test::is_rewritten_site(memory + 5); }
};

// Waits, without sleeping for a fixed time, until `done` holds; false after 10 s.
template <class Condition>
bool eventually(Condition done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

}  // namespace

// A function that keeps data in the red zone around a syscall, in the 8 bytes `call *%rax` would
// overwrite with its return address: the rewriter leaves it alone.
extern "C" long zt_red_zone_getpid();
// The same with the data 8 bytes lower, clear of the return address: rewritten, since the stub
// steps over the rest of the red zone. Returns the syscall's result, or -1 if the data changed.
extern "C" long zt_red_zone_below_slot_getpid();
extern "C" const unsigned char zt_red_zone_below_slot_site[];
asm(R"(
  .text
  .globl zt_red_zone_getpid
  .type zt_red_zone_getpid, @function
zt_red_zone_getpid:
  .cfi_startproc
  movq $0x1234, -8(%rsp)
  mov $39, %eax
  syscall
  cmpq $0x1234, -8(%rsp)
  jne 1f
  ret
1:
  mov $-1, %rax
  ret
  .cfi_endproc
  .size zt_red_zone_getpid, .-zt_red_zone_getpid

  .globl zt_red_zone_below_slot_getpid
  .type zt_red_zone_below_slot_getpid, @function
zt_red_zone_below_slot_getpid:
  .cfi_startproc
  movq $0x1234, -16(%rsp)
  .p2align 4  /* the near mechanism can move the next instruction: within a cache line */
  mov $39, %eax
  .globl zt_red_zone_below_slot_site
zt_red_zone_below_slot_site:
  syscall
  cmpq $0x1234, -16(%rsp)
  jne 1f
  ret
1:
  mov $-1, %rax
  ret
  .cfi_endproc
  .size zt_red_zone_below_slot_getpid, .-zt_red_zone_below_slot_getpid
)");

// Leaf functions that keep their argument in the 8 bytes below rsp across getpid and return what
// they find there afterwards, each reaching those bytes in another way. Their sites must be left
// alone: a rewritten call would put its return address where the value is.
extern "C" {
long zt_live_slot_mov_copy(long);       // through a copy of rsp made by mov
long zt_live_slot_lea_copy(long);       // through a copy made by lea, at another displacement
long zt_live_slot_frame_copy(long);     // through a copy of the frame pointer
long zt_live_slot_push(long);           // push -8(%rsp) reads it
long zt_live_slot_sub_pop(long);        // rsp moved down onto it, then pop
long zt_live_slot_xmm(long);            // loaded into an xmm register
long zt_live_slot_cmpxchg(long);        // lock cmpxchg returns it in rax
long zt_live_slot_add(long);            // added to the argument (the slot holds 0)
long zt_live_slot_xchg(long);           // swapped into rax
long zt_live_slot_call_in_frame(long);  // rsp moved below it, a call, then read off rsp
long zt_live_slot_big_frame(long);      // gcc -O0 with more than 128 bytes of locals: rsp moved
                                        // down by the excess only, the slot reached through rbp
long zt_live_slot_frame_pushes(long);   // rsp moved down, the slot below the registers pushed
                                        // after the frame pointer, reached through rbp
// Functions that move rsp down and keep data through rbp below their frame, clear of the slot
// (clang -O0's shape), or only within their frame (while a pointer into it goes to the kernel):
// rewritten. Each returns the syscall's result, or -1 if the data changed.
long zt_big_frame_below_slot_getpid();
long zt_big_frame_within_getpid();
extern const unsigned char zt_big_frame_below_slot_site[];
extern const unsigned char zt_big_frame_within_site[];
}
asm(R"(
  .text
  .macro zt_leaf name
  .globl \name
  .type \name, @function
\name:
  .cfi_startproc
  .endm
  .macro zt_leaf_end name
  .cfi_endproc
  .size \name, .-\name
  .endm

  zt_leaf zt_live_slot_mov_copy
  push %r12
  .cfi_adjust_cfa_offset 8
  mov %rsp, %r12
  mov %rdi, -8(%r12)
  mov $39, %eax
  syscall
  mov -8(%r12), %rax
  pop %r12
  .cfi_adjust_cfa_offset -8
  ret
  zt_leaf_end zt_live_slot_mov_copy

  zt_leaf zt_live_slot_lea_copy
  push %r12
  .cfi_adjust_cfa_offset 8
  lea 8(%rsp), %r12
  mov %rdi, -16(%r12)
  mov $39, %eax
  syscall
  mov -16(%r12), %rax
  pop %r12
  .cfi_adjust_cfa_offset -8
  ret
  zt_leaf_end zt_live_slot_lea_copy

  zt_leaf zt_live_slot_frame_copy
  push %rbp
  .cfi_adjust_cfa_offset 8
  mov %rsp, %rbp
  mov %rbp, %rdx
  mov %rdi, -8(%rdx)
  mov $39, %eax
  syscall
  mov -8(%rdx), %rax
  pop %rbp
  .cfi_adjust_cfa_offset -8
  ret
  zt_leaf_end zt_live_slot_frame_copy

  zt_leaf zt_live_slot_push
  mov %rdi, -8(%rsp)
  mov $39, %eax
  syscall
  push -8(%rsp)
  .cfi_adjust_cfa_offset 8
  pop %rax
  .cfi_adjust_cfa_offset -8
  ret
  zt_leaf_end zt_live_slot_push

  zt_leaf zt_live_slot_sub_pop
  mov %rdi, -8(%rsp)
  mov $39, %eax
  syscall
  sub $8, %rsp
  .cfi_adjust_cfa_offset 8
  pop %rax
  .cfi_adjust_cfa_offset -8
  ret
  zt_leaf_end zt_live_slot_sub_pop

  zt_leaf zt_live_slot_xmm
  mov %rdi, -8(%rsp)
  mov $39, %eax
  syscall
  movq -8(%rsp), %xmm0
  movq %xmm0, %rax
  ret
  zt_leaf_end zt_live_slot_xmm

  zt_leaf zt_live_slot_cmpxchg
  mov %rdi, -8(%rsp)
  mov $39, %eax
  syscall
  xor %eax, %eax
  xor %edx, %edx
  lock cmpxchg %rdx, -8(%rsp)
  ret
  zt_leaf_end zt_live_slot_cmpxchg

  zt_leaf zt_live_slot_add
  movq $0, -8(%rsp)
  mov $39, %eax
  syscall
  xor %eax, %eax
  add -8(%rsp), %rax
  add %rdi, %rax
  ret
  zt_leaf_end zt_live_slot_add

  zt_leaf zt_live_slot_xchg
  mov %rdi, -8(%rsp)
  mov $39, %eax
  syscall
  xor %eax, %eax
  xchg %rax, -8(%rsp)
  ret
  zt_leaf_end zt_live_slot_xchg

  zt_leaf zt_live_slot_call_in_frame
  mov %rdi, -8(%rsp)
  mov $39, %eax
  syscall
  sub $8, %rsp
  .cfi_adjust_cfa_offset 8
  call zt_live_slot_nothing
  mov (%rsp), %rax
  add $8, %rsp
  .cfi_adjust_cfa_offset -8
  ret
  zt_leaf_end zt_live_slot_call_in_frame

  zt_leaf zt_live_slot_nothing
  ret
  zt_leaf_end zt_live_slot_nothing

  .macro zt_frame_pointer
  push %rbp
  .cfi_def_cfa_offset 16
  .cfi_offset %rbp, -16
  mov %rsp, %rbp
  .cfi_def_cfa_register %rbp
  .endm
  .macro zt_leave
  leave
  .cfi_def_cfa %rsp, 8
  .endm

  # What gcc -O0 makes of a leaf with a 200-byte array: 0x68 of its 0xd8 bytes of locals are
  # allocated, the rest is red zone. The argument is kept in the slot, [rbp-0x70, rbp-0x68).
  zt_leaf zt_live_slot_big_frame
  zt_frame_pointer
  sub $0x68, %rsp
  mov %rdi, -0xd8(%rbp)
  mov -0xd8(%rbp), %rax
  mov %rax, -0x70(%rbp)
  mov $39, %eax
  syscall
  mov %rax, -0x8(%rbp)
  mov -0x70(%rbp), %rax
  zt_leave
  ret
  zt_leaf_end zt_live_slot_big_frame

  # rsp is rbp-0x18 at the syscall (rbx pushed, then 0x10 allocated): -0x20(%rbp) is the slot.
  zt_leaf zt_live_slot_frame_pushes
  zt_frame_pointer
  push %rbx
  .cfi_offset %rbx, -24
  sub $0x10, %rsp
  mov %rdi, -0x20(%rbp)
  mov $39, %eax
  syscall
  mov -0x20(%rbp), %rax
  add $0x10, %rsp
  pop %rbx
  pop %rbp
  .cfi_def_cfa %rsp, 8
  ret
  zt_leaf_end zt_live_slot_frame_pushes

  # rsp is rbp-0x60 at the syscall: -0x78(%rbp) is rsp-0x18, red zone clear of the slot.
  zt_leaf zt_big_frame_below_slot_getpid
  zt_frame_pointer
  sub $0x60, %rsp
  movq $0x1234, -0x78(%rbp)
  .p2align 4  /* the near mechanism can move the next instruction: within a cache line */
  mov $39, %eax
  .globl zt_big_frame_below_slot_site
zt_big_frame_below_slot_site:
  syscall
  cmpq $0x1234, -0x78(%rbp)
  je 1f
  mov $-1, %rax
1:
  zt_leave
  ret
  zt_leaf_end zt_big_frame_below_slot_getpid

  # rsp is rbp-0xe0 at the syscall and nothing lies below it; the pointer into the frame in rsi
  # (which getpid ignores) would make the return-slot proof refuse the site.
  zt_leaf zt_big_frame_within_getpid
  zt_frame_pointer
  push %rbx
  .cfi_offset %rbx, -24
  sub $0xd8, %rsp
  movq $0x1234, -0xe0(%rbp)
  lea -0xd0(%rbp), %rsi
  .p2align 4  /* the near mechanism can move the next instruction: within a cache line */
  mov $39, %eax
  .globl zt_big_frame_within_site
zt_big_frame_within_site:
  syscall
  cmpq $0x1234, -0xe0(%rbp)
  je 1f
  mov $-1, %rax
1:
  mov -0x8(%rbp), %rbx
  zt_leave
  ret
  zt_leaf_end zt_big_frame_within_getpid
)");

TEST_CASE("eager_misses_jit_and_unsafe_sites") {
  // The baseline the other modes improve on: eager cannot see these.
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::eager));
  JitCode jit;
  const long before = getpid_calls.load();
  CHECK(jit.plain() == real_getpid());
  CHECK(jit.prefixed() == real_getpid());
  CHECK(zt_red_zone_getpid() == real_getpid());
  CHECK(getpid_calls.load() == before);
  getpid();
  CHECK(getpid_calls.load() == before + 1);
}

TEST_CASE("eager_rewrites_red_zone_sites_whose_return_slot_is_dead") {
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::eager));
  CHECK(zpoline_test::is_rewritten_site(zt_red_zone_below_slot_site));
  const long before = getpid_calls.load();
  CHECK(zt_red_zone_below_slot_getpid() == real_getpid());  // and its red-zone data survived
  CHECK(getpid_calls.load() == before + 1);
  // glibc's variadic open/openat wrappers have this shape; ground_truth/dlopen_eager shows that
  // the dynamic linker's copies, which open every library dlopen loads, now reach the hook.

  // Functions that move rsp down keep red-zone data below their frame, or none: rewritten.
  CHECK(zpoline_test::is_rewritten_site(zt_big_frame_below_slot_site));
  CHECK(zpoline_test::is_rewritten_site(zt_big_frame_within_site));
  const long before_frames = getpid_calls.load();
  CHECK(zt_big_frame_below_slot_getpid() == real_getpid());
  CHECK(zt_big_frame_within_getpid() == real_getpid());
  CHECK(getpid_calls.load() == before_frames + 2);

  // Where the slot is still live after the syscall, the site stays a syscall and the value kept
  // there survives, however the function reaches it.
  const struct {
    const char* name;
    long (*function)(long);
  } live_slot[] = {
      {"mov copy of rsp", zt_live_slot_mov_copy},
      {"lea copy of rsp", zt_live_slot_lea_copy},
      {"copy of the frame pointer", zt_live_slot_frame_copy},
      {"push -8(%rsp)", zt_live_slot_push},
      {"sub and pop", zt_live_slot_sub_pop},
      {"xmm load", zt_live_slot_xmm},
      {"lock cmpxchg", zt_live_slot_cmpxchg},
      {"add", zt_live_slot_add},
      {"xchg", zt_live_slot_xchg},
      {"call with the slot in the frame", zt_live_slot_call_in_frame},
      {"gcc -O0 frame larger than 128 bytes", zt_live_slot_big_frame},
      {"frame with a register pushed after the frame pointer", zt_live_slot_frame_pushes},
  };
  const long value = 0x1122334455667788;
  const long calls = getpid_calls.load();
  for (const auto& function : live_slot) {
    const std::string name = function.name;
    CAPTURE(name);
    CHECK(function.function(value) == value);
  }
  CHECK(getpid_calls.load() == calls);  // none of their syscalls went through the hook
}

TEST_CASE("eager_rewrites_libraries_loaded_later") {
  auto session = zpoline_test::install_or_skip(counting_getpid());
  void* library = dlopen(ZPOLINE_LATE_LIBRARY, RTLD_NOW);
  REQUIRE(library != nullptr);
  auto late_getpid = reinterpret_cast<long (*)()>(dlsym(library, "late_getpid"));
  REQUIRE(reinterpret_cast<void*>(late_getpid) != nullptr);
  const long before = getpid_calls.load();
  CHECK(late_getpid() == real_getpid());
  CHECK(getpid_calls.load() == before + 1);
  bool found = false;
  for (const auto& image : session.late_coverage().images) {
    if (image.path.find("late_code") != std::string::npos) {
      found = true;
      CHECK(image.sites_rewritten == 2);
    }
  }
  CHECK(found);
  // Unloaded and loaded again (maybe at the same address): still hooked, no stale sites.
  REQUIRE(dlclose(library) == 0);
  library = dlopen(ZPOLINE_LATE_LIBRARY, RTLD_NOW);
  REQUIRE(library != nullptr);
  late_getpid = reinterpret_cast<long (*)()>(dlsym(library, "late_getpid"));
  CHECK(late_getpid() == real_getpid());
  CHECK(getpid_calls.load() == before + 2);
}

namespace {

// The program headers of the library `handle` names, as the dynamic linker loaded it.
struct LoadedImage {
  std::uintptr_t bias = 0;
  const ElfW(Phdr) * headers = nullptr;
  int count = 0;
};

LoadedImage loaded_image(void* handle) {
  link_map* map = nullptr;
  REQUIRE(dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0);
  LoadedImage image{map->l_addr, nullptr, 0};
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        auto* image = static_cast<LoadedImage*>(data);
        if (info->dlpi_addr != image->bias || image->headers != nullptr) return 0;
        image->headers = info->dlpi_phdr;
        image->count = info->dlpi_phnum;
        return 1;
      },
      &image);
  REQUIRE(image.headers != nullptr);
  return image;
}

// Ends the test as skipped, saying why, unless the library at `path` has the layout that made
// dlopen after install die with SIGBUS: its first loadable segment is executable (so the dynamic
// linker's first mapping of the whole span is executable and gets scanned), and that span reaches
// past the last page of the file (those pages raise SIGBUS until the .bss is mapped over them).
void require_span_past_file_end(void* handle, const char* path) {
  const LoadedImage image = loaded_image(handle);
  const ElfW(Phdr)* first = nullptr;
  std::uint64_t span_end = 0;
  for (int i = 0; i < image.count; ++i) {
    const ElfW(Phdr)& segment = image.headers[i];
    if (segment.p_type != PT_LOAD) continue;
    if (first == nullptr) first = &segment;
    span_end = std::max<std::uint64_t>(span_end, segment.p_vaddr + segment.p_memsz);
  }
  REQUIRE(first != nullptr);
  struct stat status {};
  REQUIRE(stat(path, &status) == 0);
  const std::uint64_t file_pages_end =
      (static_cast<std::uint64_t>(status.st_size) + 4095) & ~4095ull;
  // The first mapping starts at the first segment's page and maps the file from that page's offset.
  const std::uint64_t mapped_from = first->p_offset & ~4095ull;
  const std::uint64_t span_file_end = mapped_from + (span_end - (first->p_vaddr & ~4095ull));
  if (!(first->p_flags & PF_X) || span_file_end <= file_pages_end) {
    std::fprintf(stderr,
                 "SKIP: %s does not have the layout this test is about (first loadable segment "
                 "executable: %s; span ends at file offset %#llx, the file's pages at %#llx)\n",
                 path, (first->p_flags & PF_X) ? "yes" : "no",
                 static_cast<unsigned long long>(span_file_end),
                 static_cast<unsigned long long>(file_pages_end));
    std::_Exit(77);
  }
}

// The late-code statistics of the image whose path contains `name`, or nullptr.
const zpoline::ImageStats* late_stats_of(const std::vector<zpoline::ImageStats>& images,
                                         const char* name) {
  for (const auto& image : images) {
    if (image.path.find(name) != std::string::npos) return &image;
  }
  return nullptr;
}

// dlopen, after install in `mode`, of a library mapped past its file's end (test/late/
// past_file_end.c). The rewriter used to scan the dynamic linker's first mapping of the library,
// all of it, and died with SIGBUS on its first page past the file's end. The syscall in the
// library's code, inside the file, must still be rewritten, and reach the hook.
void load_library_mapped_past_its_file_end(zpoline::Mode mode) {
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(mode));
  void* library = dlopen(ZPOLINE_PAST_FILE_END_LIBRARY, RTLD_NOW);
  REQUIRE(library != nullptr);
  require_span_past_file_end(library, ZPOLINE_PAST_FILE_END_LIBRARY);
  const auto call = reinterpret_cast<long (*)()>(dlsym(library, "past_file_end_getpid"));
  const auto* site = static_cast<const unsigned char*>(dlsym(library, "past_file_end_site"));
  const auto bss_is_zero = reinterpret_cast<int (*)()>(dlsym(library, "past_file_end_bss_is_zero"));
  REQUIRE(reinterpret_cast<void*>(call) != nullptr);
  REQUIRE(site != nullptr);
  REQUIRE(reinterpret_cast<void*>(bss_is_zero) != nullptr);
  CHECK(bss_is_zero() == 1);
  const auto rewritten = [&] { return zpoline_test::is_rewritten_site(site); };

  if (mode != zpoline::Mode::lazy) {
    // Rewritten when dlopen made the code executable, before it could run.
    CHECK(rewritten());
    const auto late = session.late_coverage().images;
    const zpoline::ImageStats* stats = late_stats_of(late, "past_file_end");
    REQUIRE(stats != nullptr);
    CHECK(stats->sites_rewritten == 1);
    // Only what the file holds is code: not the span past its end.
    struct stat status {};
    REQUIRE(stat(ZPOLINE_PAST_FILE_END_LIBRARY, &status) == 0);
    CHECK(stats->code_bytes > 0);
    CHECK(stats->code_bytes <= static_cast<std::size_t>(status.st_size));
  }
  const long before = getpid_calls.load();
  CHECK(call() == real_getpid());
  CHECK(getpid_calls.load() == before + 1);
  // Lazy mode promises the rewrite by the first trap at the latest.
  CHECK(eventually(rewritten));
  CHECK(call() == real_getpid());
  CHECK(getpid_calls.load() == before + 2);
}

}  // namespace

TEST_CASE("eager_loads_a_library_mapped_past_its_file_end") {
  load_library_mapped_past_its_file_end(zpoline::Mode::eager);
}

TEST_CASE("exhaustive_loads_a_library_mapped_past_its_file_end") {
  load_library_mapped_past_its_file_end(zpoline::Mode::exhaustive);
}

TEST_CASE("lazy_loads_a_library_mapped_past_its_file_end") {
  load_library_mapped_past_its_file_end(zpoline::Mode::lazy);
}

// A real library of that layout: Debian's libLLVM-15 (package libllvm15), 110 MiB, whose first
// loadable segment is its code and whose .bss reaches past its file. Not installed for the tests
// (too large to add to CI for one case): skipped where it is absent.
TEST_CASE("eager_loads_libllvm_15") {
  constexpr const char* kPath = "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1";
  if (access(kPath, R_OK) != 0) {
    std::fprintf(stderr, "SKIP: %s is not installed (Debian package libllvm15)\n", kPath);
    std::_Exit(77);
  }
  auto session = zpoline_test::install_or_skip(counting_getpid());
  void* library = dlopen(kPath, RTLD_NOW);
  REQUIRE(library != nullptr);
  require_span_past_file_end(library, kPath);
  // Its code runs: a context created and disposed of (LLVM's C API).
  const auto create = reinterpret_cast<void* (*)()>(dlsym(library, "LLVMContextCreate"));
  const auto dispose = reinterpret_cast<void (*)(void*)>(dlsym(library, "LLVMContextDispose"));
  REQUIRE(reinterpret_cast<void*>(create) != nullptr);
  REQUIRE(reinterpret_cast<void*>(dispose) != nullptr);
  void* context = create();
  CHECK(context != nullptr);
  dispose(context);
  const auto late = session.late_coverage().images;
  const zpoline::ImageStats* stats = late_stats_of(late, "libLLVM-15");
  REQUIRE(stats != nullptr);
  struct stat status {};
  REQUIRE(stat(kPath, &status) == 0);
  CHECK(stats->code_bytes > 0);
  CHECK(stats->code_bytes <= static_cast<std::size_t>(status.st_size));
  // The hook still sees calls after all that.
  const long before = getpid_calls.load();
  getpid();
  CHECK(getpid_calls.load() == before + 1);
}

namespace {

// A copy of the past-file-end test library in a temporary file, its headers changed by the test,
// mapped by hand the way the dynamic linker first maps a library: its whole span, from file
// offset 0, in one mapping (most of it past the file's end). The file is removed at the end.
class HandMappedCopy {
 public:
  HandMappedCopy() {
    const int source = open(ZPOLINE_PAST_FILE_END_LIBRARY, O_RDONLY | O_CLOEXEC);
    REQUIRE(source >= 0);
    struct stat status {};
    REQUIRE(fstat(source, &status) == 0);
    bytes_.resize(static_cast<std::size_t>(status.st_size));
    REQUIRE(read(source, bytes_.data(), bytes_.size()) == static_cast<ssize_t>(bytes_.size()));
    close(source);
    REQUIRE(bytes_.size() > sizeof(Elf64_Ehdr));
  }
  ~HandMappedCopy() {
    if (base_ != nullptr) munmap(base_, span_);
    if (!path_.empty()) unlink(path_.c_str());
  }
  HandMappedCopy(const HandMappedCopy&) = delete;
  HandMappedCopy& operator=(const HandMappedCopy&) = delete;

  Elf64_Ehdr& header() { return *reinterpret_cast<Elf64_Ehdr*>(bytes_.data()); }
  Elf64_Phdr* segments() { return reinterpret_cast<Elf64_Phdr*>(bytes_.data() + header().e_phoff); }
  // The first program header of `type`.
  Elf64_Phdr& segment(std::uint32_t type, std::uint32_t flags = 0) {
    for (int i = 0; i < header().e_phnum; ++i) {
      Elf64_Phdr& candidate = segments()[i];
      if (candidate.p_type == type && (candidate.p_flags & flags) == flags) return candidate;
    }
    FAIL("no such program header");
    throw;
  }
  // Every symbol named `name`, in .dynsym and .symtab.
  std::vector<Elf64_Sym*> symbols(const char* name) {
    std::vector<Elf64_Sym*> found;
    const auto* sections = reinterpret_cast<Elf64_Shdr*>(bytes_.data() + header().e_shoff);
    for (int i = 0; i < header().e_shnum; ++i) {
      if (sections[i].sh_type != SHT_SYMTAB && sections[i].sh_type != SHT_DYNSYM) continue;
      const char* names =
          reinterpret_cast<const char*>(bytes_.data() + sections[sections[i].sh_link].sh_offset);
      auto* symbol = reinterpret_cast<Elf64_Sym*>(bytes_.data() + sections[i].sh_offset);
      for (std::size_t n = 0; n < sections[i].sh_size / sizeof(Elf64_Sym); ++n, ++symbol) {
        if (std::strcmp(names + symbol->st_name, name) == 0) found.push_back(symbol);
      }
    }
    return found;
  }
  std::uint64_t file_size() const { return bytes_.size(); }

  // Writes the copy and maps it with `protection`; with `unseen`, through raw_syscall(), so that
  // the rewriter does not hear of it. Returns the base.
  unsigned char* map(int protection, bool unseen) {
    std::uint64_t span_end = 0;
    for (int i = 0; i < header().e_phnum; ++i) {
      if (segments()[i].p_type != PT_LOAD) continue;
      span_end = std::max(span_end, segments()[i].p_vaddr + segments()[i].p_memsz);
    }
    span_ = (span_end + 4095) & ~std::uint64_t{4095};
    char path[] = "/tmp/zpoline-past-file-end-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    path_ = path;
    REQUIRE(write(fd, bytes_.data(), bytes_.size()) == static_cast<ssize_t>(bytes_.size()));
    void* base = unseen
                     ? reinterpret_cast<void*>(zpoline::raw_syscall(
                           SYS_mmap, 0, static_cast<long>(span_), protection, MAP_PRIVATE, fd, 0))
                     : mmap(nullptr, span_, protection, MAP_PRIVATE, fd, 0);
    close(fd);
    REQUIRE(base != MAP_FAILED);
    base_ = static_cast<unsigned char*>(base);
    return base_;
  }

 private:
  std::vector<unsigned char> bytes_;
  std::string path_;
  unsigned char* base_ = nullptr;
  std::size_t span_ = 0;
};

}  // namespace

// The function table of late code reads .eh_frame_hdr and .eh_frame from memory. A library whose
// headers put them past the end of the file (here a copy whose data segment claims more file
// bytes than the file has, holding .eh_frame_hdr there) must not be read there: the rewriter
// used to check only that the memory was mapped readable, and died with SIGBUS. The function's
// bounds then come from the symbol table, and its syscall is still rewritten.
TEST_CASE("eager_reads_no_unwind_table_past_the_file_end") {
  HandMappedCopy copy;
  Elf64_Phdr& data = copy.segment(PT_LOAD, PF_W);
  // File offsets equal to the addresses, as the span's single mapping has them, so that only the
  // file's end tells the bytes are not there.
  data.p_offset = data.p_vaddr;
  data.p_filesz = 0x100000;
  REQUIRE(data.p_filesz <= data.p_memsz);
  Elf64_Phdr& unwind = copy.segment(PT_GNU_EH_FRAME);
  unwind.p_vaddr = unwind.p_offset = data.p_vaddr + 0x80000;
  REQUIRE(unwind.p_vaddr > copy.file_size() + 4096);

  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::eager));
  unsigned char* base = copy.map(PROT_READ, /*unseen=*/false);
  const Elf64_Phdr& code = copy.segment(PT_LOAD, PF_X);
  const std::vector<Elf64_Sym*> function = copy.symbols("past_file_end_getpid");
  const std::vector<Elf64_Sym*> site_symbol = copy.symbols("past_file_end_site");
  REQUIRE(!function.empty());
  REQUIRE(!site_symbol.empty());
  // The code becomes executable: the rewriter describes the image and builds its function table.
  REQUIRE(mprotect(base, (code.p_memsz + 4095) & ~4095ul, PROT_READ | PROT_EXEC) == 0);
  const unsigned char* site = base + site_symbol[0]->st_value;
  CHECK(zpoline_test::is_rewritten_site(site));
  const auto call = reinterpret_cast<long (*)()>(base + function[0]->st_value);
  const long before = getpid_calls.load();
  CHECK(call() == real_getpid());
  CHECK(getpid_calls.load() == before + 1);
}

// A syscall that traps (lazy mode) is rewritten after its enclosing function is decoded. A
// function whose bounds reach past the end of the file (here a copy whose symbol and code segment
// claim 512 KiB) must be decoded only as far as the file holds code: the rewriter used to decode
// it to the end of its mapping, and died with SIGBUS on its rewriter thread.
TEST_CASE("lazy_decodes_no_function_past_the_file_end") {
  HandMappedCopy copy;
  Elf64_Phdr& code = copy.segment(PT_LOAD, PF_X);
  constexpr std::uint64_t kClaimed = 0x80000;
  code.p_memsz = kClaimed + 0x1000;
  const std::vector<Elf64_Sym*> function = copy.symbols("past_file_end_getpid");
  const std::vector<Elf64_Sym*> site_symbol = copy.symbols("past_file_end_site");
  REQUIRE(!function.empty());
  REQUIRE(!site_symbol.empty());
  for (Elf64_Sym* symbol : function) symbol->st_size = kClaimed;
  REQUIRE(function[0]->st_value + kClaimed > copy.file_size() + 4096);

  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
  // Unseen by the rewriter, so that only the trap leads to the site.
  unsigned char* base = copy.map(PROT_READ | PROT_EXEC, /*unseen=*/true);
  const unsigned char* site = base + site_symbol[0]->st_value;
  REQUIRE(site[0] == 0x0f);
  const auto call = reinterpret_cast<long (*)()>(base + function[0]->st_value);
  const long before = getpid_calls.load();
  CHECK(call() == real_getpid());
  CHECK(getpid_calls.load() == before + 1);
  // Each trap queues the site again: the rewriter's queue drops sites while it is full, which
  // a slow build (sanitizers: many distinct sites trap at first) can make it.
  long calls = 1;
  CHECK(eventually([&] {
    ++calls;
    if (call() != real_getpid()) return false;
    return zpoline_test::is_rewritten_site(site);
  }));
  CHECK(call() == real_getpid());
  CHECK(getpid_calls.load() == before + calls + 1);
}

namespace {

// A shared object mapped by hand, the way the dynamic linker maps one (the whole file first,
// read-only, then each PT_LOAD segment over it with MAP_FIXED), but without dlopen: nothing
// tells the library about it but the mmap and mprotect calls themselves.
struct HandMappedObject {
  std::vector<char> file;
  unsigned char* base = nullptr;
  std::size_t span = 0;

  // `code_protection`: what the executable segment gets from its mmap (PROT_READ leaves it for
  // a later mprotect).
  HandMappedObject(const char* path, int code_protection) {
    std::ifstream in(path, std::ios::binary);
    file.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    REQUIRE(file.size() > sizeof(Elf64_Ehdr));
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    for (const Elf64_Phdr& segment : segments()) {
      span = std::max<std::size_t>(span, segment.p_vaddr + segment.p_memsz);
    }
    span = (span + 4095) & ~std::size_t{4095};
    void* whole = mmap(nullptr, span, PROT_READ, MAP_PRIVATE, fd, 0);
    REQUIRE(whole != MAP_FAILED);
    base = static_cast<unsigned char*>(whole);
    for (const Elf64_Phdr& segment : segments()) {
      const std::uint64_t page_offset = segment.p_vaddr & 4095;
      int protection = (segment.p_flags & PF_R ? PROT_READ : 0) |
                       (segment.p_flags & PF_W ? PROT_READ | PROT_WRITE : 0);
      if (segment.p_flags & PF_X) protection = code_protection;
      void* at = mmap(base + segment.p_vaddr - page_offset, segment.p_filesz + page_offset,
                      protection, MAP_PRIVATE | MAP_FIXED, fd, segment.p_offset - page_offset);
      REQUIRE(at == base + segment.p_vaddr - page_offset);
    }
    close(fd);
  }
  ~HandMappedObject() { munmap(base, span); }
  HandMappedObject(const HandMappedObject&) = delete;
  HandMappedObject& operator=(const HandMappedObject&) = delete;

  const Elf64_Ehdr& header() const { return *reinterpret_cast<const Elf64_Ehdr*>(file.data()); }
  std::vector<Elf64_Phdr> segments() const {
    std::vector<Elf64_Phdr> loads;
    for (int i = 0; i < header().e_phnum; ++i) {
      Elf64_Phdr segment;
      std::memcpy(&segment, file.data() + header().e_phoff + i * sizeof segment, sizeof segment);
      if (segment.p_type == PT_LOAD) loads.push_back(segment);
    }
    return loads;
  }
  const Elf64_Phdr code_segment() const {
    for (const Elf64_Phdr& segment : segments()) {
      if (segment.p_flags & PF_X) return segment;
    }
    FAIL("no executable segment");
    return {};
  }
  // A function's address, from the file's dynamic symbol table.
  unsigned char* function(const char* name) const {
    std::vector<Elf64_Shdr> sections(header().e_shnum);
    std::memcpy(sections.data(), file.data() + header().e_shoff,
                sections.size() * sizeof(Elf64_Shdr));
    for (const Elf64_Shdr& table : sections) {
      if (table.sh_type != SHT_DYNSYM) continue;
      const char* names = file.data() + sections[table.sh_link].sh_offset;
      for (std::size_t i = 0; i < table.sh_size / sizeof(Elf64_Sym); ++i) {
        Elf64_Sym symbol;
        std::memcpy(&symbol, file.data() + table.sh_offset + i * sizeof symbol, sizeof symbol);
        if (std::strcmp(names + symbol.st_name, name) == 0) return base + symbol.st_value;
      }
    }
    FAIL("no symbol " << name);
    return nullptr;
  }
};

// The 2-byte syscall (or its rewritten call) in the first 16 bytes of `code`.
const unsigned char* syscall_site(const unsigned char* code) {
  for (int i = 0; i < 16; ++i) {
    if ((code[i] == 0x0f && code[i + 1] == 0x05) || (code[i] == 0xff && code[i + 1] == 0xd0) ||
        code[i] == 0xeb) {
      return code + i;
    }
  }
  return nullptr;
}

bool rewritten(const unsigned char* site) {
  return site != nullptr && zpoline_test::is_rewritten_site(site);
}

}  // namespace

// Eager mode's promise for code made executable after install (README "Modes", DESIGN "Code
// that appears later"): file-backed ELF code mapped with PROT_EXEC, or given it by mprotect or
// pkey_mprotect, is rewritten right after that call returns, before it can run, with function
// boundaries from the file; anonymous code made executable is only counted (no function
// boundaries), as skipped, and its syscalls do not reach the hook.
TEST_CASE("eager_rewrites_code_mapped_executable_later") {
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::eager));
  // The late-coverage counts of the images whose path contains `path`, summed (0 before there
  // is one): sites rewritten, and sites skipped as undecodable.
  auto late_counts = [&](const char* path) {
    std::pair<std::size_t, std::size_t> counts{0, 0};
    for (const zpoline::ImageStats& image : session.late_coverage().images) {
      if (image.path.find(path) == std::string::npos) continue;
      counts.first += image.sites_rewritten;
      counts.second += image.skipped_undecodable;
    }
    return counts;
  };
  // Maps the library with `code_protection` for its code, then runs `make_executable` on the
  // code segment (if given), and checks that both its syscalls were rewritten before they ran.
  auto check_hand_mapped = [&](int code_protection,
                               int (*make_executable)(void*, std::size_t, int)) {
    const auto rewritten_before = late_counts("liblate_code.so").first;
    HandMappedObject object(ZPOLINE_LATE_LIBRARY, code_protection);
    unsigned char* getpid_code = object.function("late_getpid");
    unsigned char* getppid_code = object.function("late_getppid");
    if (make_executable != nullptr) {
      CHECK_FALSE(rewritten(syscall_site(getpid_code)));  // not executable yet
      const Elf64_Phdr code = object.code_segment();
      REQUIRE(make_executable(object.base + (code.p_vaddr & ~std::uint64_t{4095}),
                              (code.p_vaddr & 4095) + code.p_filesz, PROT_READ | PROT_EXEC) == 0);
    }
    // Rewritten already: nothing has run there yet.
    CHECK(rewritten(syscall_site(getpid_code)));
    CHECK(rewritten(syscall_site(getppid_code)));
    const long before = getpid_calls.load();
    CHECK(reinterpret_cast<long (*)()>(getpid_code)() == real_getpid());
    CHECK(getpid_calls.load() == before + 1);
    CHECK(reinterpret_cast<long (*)()>(getppid_code)() == getppid());
    CHECK(late_counts("liblate_code.so").first - rewritten_before == 2);
  };
  auto by_mprotect = [](void* address, std::size_t length, int protection) {
    return mprotect(address, length, protection);
  };
  // Key -1: no protection key, as mprotect (works without protection-key support).
  auto by_pkey_mprotect = [](void* address, std::size_t length, int protection) {
    return static_cast<int>(syscall(SYS_pkey_mprotect, address, length, protection, -1));
  };
  {
    INFO("mmap with PROT_EXEC");
    check_hand_mapped(PROT_READ | PROT_EXEC, nullptr);
  }
  {
    INFO("mprotect to PROT_EXEC");
    check_hand_mapped(PROT_READ, by_mprotect);
  }
  {
    INFO("pkey_mprotect to PROT_EXEC");
    check_hand_mapped(PROT_READ, by_pkey_mprotect);
  }

  // Anonymous code given PROT_EXEC: counted as skipped, left alone, not hooked.
  const unsigned char code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};  // getpid; ret
  for (auto make_executable : {+by_mprotect, +by_pkey_mprotect}) {
    auto* memory = static_cast<unsigned char*>(
        mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(memory != MAP_FAILED);
    std::memcpy(memory, code, sizeof code);
    const auto counts_before = late_counts("[anonymous]");
    REQUIRE(make_executable(memory, 4096, PROT_READ | PROT_EXEC) == 0);
    const auto counts = late_counts("[anonymous]");
    CHECK(counts.second - counts_before.second == 1);
    CHECK(counts.first == counts_before.first);
    CHECK(memory[5] == 0x0f);  // left alone
    CHECK(memory[6] == 0x05);
    const long before = getpid_calls.load();
    CHECK(reinterpret_cast<long (*)()>(memory)() == real_getpid());
    CHECK(getpid_calls.load() == before);  // only the safety net could reach it
    munmap(memory, 4096);
  }
}

TEST_CASE("exhaustive_reaches_jit_prefixed_and_red_zone_sites") {
  auto session =
      zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::exhaustive));
  CHECK(session.mode() == zpoline::Mode::exhaustive);
  JitCode jit;
  long expected = getpid_calls.load();
  CHECK(jit.plain() == real_getpid());
  CHECK(getpid_calls.load() == ++expected);
  CHECK(jit.prefixed() == real_getpid());
  CHECK(getpid_calls.load() == ++expected);
  CHECK(zt_red_zone_getpid() == real_getpid());  // and its red zone survived
  CHECK(getpid_calls.load() == ++expected);

  // The plain JIT site is rewritten after a trap (called again meanwhile: a trap that finds the
  // rewriter busy is queued again at the next one); from then on it does not trap.
  CHECK(eventually([&] {
    const bool same = jit.plain() == real_getpid();
    ++expected;
    return same && jit.plain_rewritten();
  }));
  const std::size_t traps = session.late_coverage().traps;
  for (int i = 0; i < 100; ++i) CHECK(jit.plain() == real_getpid());
  CHECK(session.late_coverage().traps == traps);
  CHECK(getpid_calls.load() == expected + 100);
  // The prefixed one keeps trapping, and keeps reaching the hook.
  for (int i = 0; i < 10; ++i) CHECK(jit.prefixed() == real_getpid());
  CHECK(session.late_coverage().traps == traps + 10);
  CHECK(getpid_calls.load() == expected + 110);
}

TEST_CASE("exhaustive_covers_new_threads_and_fork_children") {
  auto session =
      zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::exhaustive));
  JitCode jit;
  const long before = getpid_calls.load();
  std::thread thread([&] { CHECK(jit.prefixed() == real_getpid()); });
  thread.join();
  CHECK(getpid_calls.load() == before + 1);

  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const long child_before = getpid_calls.load();
    const bool ok = jit.prefixed() == real_getpid();
    const long seen = ok ? getpid_calls.load() - child_before : -1;
    (void)!write(fds[1], &seen, sizeof seen);
    _exit(0);
  }
  long seen = 0;
  REQUIRE(read(fds[0], &seen, sizeof seen) == sizeof seen);
  CHECK(seen == 1);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
}

namespace {
std::atomic<int> application_sigsys{0};
void application_handler(int, siginfo_t* info, void* context) {
  if (info->si_code == 1 /* SYS_SECCOMP */) {
    ++application_sigsys;
    static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RAX] = 4242;  // emulate the call
  }
}
}  // namespace

TEST_CASE("application_sigsys_and_masks_keep_working") {
  auto session =
      zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::exhaustive));
  // The application's own SIGSYS handler, installed after the library's, for seccomp traps.
  struct sigaction action {};
  action.sa_sigaction = application_handler;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  REQUIRE(sigaction(SIGSYS, &action, nullptr) == 0);
  struct sigaction reported {};
  REQUIRE(sigaction(SIGSYS, nullptr, &reported) == 0);
  CHECK(reinterpret_cast<void*>(reported.sa_sigaction) ==
        reinterpret_cast<void*>(&application_handler));

  // A seccomp filter that traps getpriority with a first argument no real caller passes (the
  // filter stays for the rest of the process: trapping a call that runtimes make, such as
  // getppid, which LeakSanitizer's exit-time thread polls, would hang them).
  constexpr long kTrappedWhich = 0x4242;
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpriority, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kTrappedWhich, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{sizeof filter / sizeof filter[0], filter};
  REQUIRE(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  REQUIRE(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0);
  CHECK(syscall(SYS_getpriority, kTrappedWhich, 0L) == 4242);
  CHECK(application_sigsys.load() == 1);
  CHECK(getpriority(PRIO_PROCESS, 0) >= -20);  // other calls are not trapped

  // SIGSYS blocked by the application: SUD traps still work instead of killing the process.
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGSYS);
  REQUIRE(sigprocmask(SIG_BLOCK, &block, nullptr) == 0);
  JitCode jit;
  const long before = getpid_calls.load();
  CHECK(jit.prefixed() == real_getpid());
  CHECK(getpid_calls.load() == before + 1);
}

TEST_CASE("lazy_rewrites_on_first_trap") {
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
  CHECK(session.stats().sites_rewritten() == 0);
  const auto* code = reinterpret_cast<const unsigned char*>(&getpid);
  const long before = getpid_calls.load();
  CHECK(getpid() == real_getpid());
  CHECK(getpid_calls.load() == before + 1);
  // libc's getpid site is rewritten by the library's thread after that first trap.
  CHECK(eventually([&] {
    for (int i = 0; i < 16; ++i) {
      if (zpoline_test::is_rewritten_site(code + i)) return true;
    }
    return false;
  }));
  CHECK(getpid() == real_getpid());
  CHECK(getpid_calls.load() == before + 2);
  CHECK(session.late_coverage().sites_rewritten_on_trap >= 1);
}

TEST_CASE("mode_from_environment") {
  setenv("ZPOLINE_MODE", "fast", 1);
  try {
    auto session = zpoline_test::install_or_skip(counting_getpid());
    FAIL("an unknown ZPOLINE_MODE was accepted");
  } catch (const zpoline::Error& error) {
    CHECK(error.code() == zpoline::ErrorCode::invalid_option);
    CHECK(std::string(error.what()).find("eager, exhaustive or lazy") != std::string::npos);
  }
  setenv("ZPOLINE_MODE", "exhaustive", 1);
  auto session = zpoline_test::install_or_skip(counting_getpid());
  CHECK(session.mode() == zpoline::Mode::exhaustive);
}

// ---------------------------------------------------------------------------------------------
// Regressions of the safety net's signals (issue 13): each failed before the change it names.
// ---------------------------------------------------------------------------------------------

namespace {

long prefixed_getppid() {
  long result;
  asm volatile(".byte 0x66; syscall" : "=a"(result) : "a"(SYS_getppid) : "rcx", "r11", "memory");
  return result;
}

std::uint64_t blocked_mask() {
  std::uint64_t mask = 0;
  zpoline::raw_syscall(SYS_rt_sigprocmask, SIG_BLOCK, 0, reinterpret_cast<long>(&mask), 8);
  return mask;
}

}  // namespace

// Requests to other threads (arm SUD) and SUD traps are different signals, so neither swallows
// the other: a trap that coalesced with a pending request "returned" its own number (110 for
// getppid), and a request that coalesced with a trap left install and detach spinning and a
// thread armed after detach.
TEST_CASE("requests_never_swallow_traps") {
  const long ppid = zpoline::raw_syscall(SYS_getppid);
  std::atomic<bool> stop{false};
  std::atomic<long> calls{0}, wrong{0}, last_wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        const long result = prefixed_getppid();
        ++calls;
        if (result != ppid) {
          ++wrong;
          last_wrong = result;
        }
      }
    });
  }
  constexpr int kCycles = 40;
  double slowest_detach_ms = 0;
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    const zpoline::Mode mode = cycle % 2 ? zpoline::Mode::lazy : zpoline::Mode::exhaustive;
    auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(mode));
    const long before = calls;
    REQUIRE(eventually([&] { return calls > before + 10; }));
    const auto start = std::chrono::steady_clock::now();
    session.detach();
    slowest_detach_ms =
        std::max(slowest_detach_ms,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  // After detach the threads' calls trap no more: the net's counters stay where they were.
  zpoline::Session last =
      zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::exhaustive));
  last.detach();
  const std::size_t traps = last.late_coverage().traps;
  const long before = calls;
  REQUIRE(eventually([&] { return calls > before + 1000; }));
  stop = true;
  for (auto& thread : threads) thread.join();
  CAPTURE(last_wrong.load());
  CAPTURE(calls.load());
  CAPTURE(slowest_detach_ms);
  CHECK(wrong.load() == 0);
  CHECK(last.late_coverage().traps == traps);
  CHECK(slowest_detach_ms < 1000);  // 12-367 s before (the requests waited for the traps)
  // With the net off, a thread may block SIGSYS and make such calls again.
  std::thread([&] {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    CHECK(prefixed_getppid() == ppid);
  }).join();
}

// SUD armed while SIGSYS is blocked turns the next trap into a kill. A thread that blocked every
// signal before install, and a handler installed before install with a full sa_mask, in both
// modes with the net (each in a child process of its own).
TEST_CASE("threads_and_handlers_that_block_every_signal") {
  for (const zpoline::Mode mode : {zpoline::Mode::exhaustive, zpoline::Mode::lazy}) {
    CAPTURE(static_cast<int>(mode));
    const pid_t child = fork();
    if (child == 0) {
      static std::atomic<long> handler_result{0};
      struct sigaction action {};
      action.sa_handler = [](int) { handler_result = prefixed_getppid(); };
      sigfillset(&action.sa_mask);
      sigaction(SIGUSR1, &action, nullptr);
      sigset_t all;
      sigfillset(&all);
      pthread_sigmask(SIG_BLOCK, &all, nullptr);
      // A second thread inherits the full mask and waits for signals with sigwaitinfo, as a
      // program's signal thread does; it is never sent the library's requests.
      std::atomic<int> waited{0};
      std::thread waiter([&] {
        sigset_t usr2;
        sigemptyset(&usr2);
        sigaddset(&usr2, SIGUSR2);
        siginfo_t info{};
        if (sigwaitinfo(&usr2, &info) == SIGUSR2) waited = 1;
        waited += prefixed_getppid() == getppid() ? 1 : 0;
      });
      auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(mode));
      const long ppid = zpoline::raw_syscall(SYS_getppid);
      int failures = 0;
      if (prefixed_getppid() != ppid) ++failures;
      if (blocked_mask() & (1ull << (SIGSYS - 1))) ++failures;
      sigset_t usr1;
      sigemptyset(&usr1);
      sigaddset(&usr1, SIGUSR1);
      pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr);
      raise(SIGUSR1);
      if (handler_result != ppid) ++failures;
      pthread_kill(waiter.native_handle(), SIGUSR2);
      waiter.join();
      if (waited != 2) ++failures;
      _exit(failures);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CAPTURE(status);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
}

// The SIGSYS handler runs the hook for a trapped call on the thread's own stack, never on its
// alternate signal stack (which programs keep small, for stack overflows): a thread that has one
// but runs no handler traps with a hook that uses 4 KiB of stack.
TEST_CASE("trapped_calls_leave_the_alternate_stack_alone") {
  constexpr std::size_t kAlt = 8192;
  static unsigned char region[2 * kAlt];
  std::memset(region, 0xa5, sizeof region);
  stack_t stack{};
  stack.ss_sp = region + kAlt;
  stack.ss_size = kAlt;
  REQUIRE(sigaltstack(&stack, nullptr) == 0);
  std::atomic<long> hooked{0};
  auto session = zpoline_test::install_or_skip(
      [&](zpoline::Syscall& call) {
        volatile char buffer[4096];
        buffer[0] = static_cast<char>(call.number());
        buffer[sizeof buffer - 1] = buffer[0];
        if (call.number() == SYS_getppid) ++hooked;
        return call.forward();
      },
      with_mode(zpoline::Mode::lazy));
  CHECK(prefixed_getppid() == zpoline::raw_syscall(SYS_getppid));
  CHECK(hooked.load() == 1);
  std::size_t touched = 0;
  for (unsigned char byte : region) touched += byte != 0xa5;
  CHECK(touched == 0);  // 1 320-1 392 bytes below the 8 KiB stack before, and the stack itself
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
}

// A handler on an alternate stack of the size glibc recommends for this CPU
// (sysconf(_SC_SIGSTKSZ)), run as a hooked call returns, makes trapped calls: the kernel puts
// the SIGSYS frame on that stack too, below the handler's, and the safety net runs the hook
// there. Measured with a hook that uses 2 KiB of its own, and held to leave 2 KiB: the safety
// net's part stays small (the stub's AVX-512 area, 2.3 KiB, is built only for a clone;
// built for every trap it overflowed this stack in the matrix's signals_altstack cells).
namespace {
std::atomic<long> altstack_handler_calls{0}, altstack_handler_parent{0};
void trapping_handler(int) {
  ++altstack_handler_calls;
  altstack_handler_parent = prefixed_getppid();
}
}  // namespace

TEST_CASE("trapped_calls_from_a_handler_on_the_recommended_alternate_stack") {
  const std::size_t size = static_cast<std::size_t>(sysconf(_SC_SIGSTKSZ));
  constexpr std::size_t kGuard = 16384;
  std::vector<unsigned char> region(kGuard + size, 0xa5);
  stack_t stack{};
  stack.ss_sp = region.data() + kGuard;
  stack.ss_size = size;
  REQUIRE(sigaltstack(&stack, nullptr) == 0);
  struct sigaction action {};
  action.sa_handler = trapping_handler;
  action.sa_flags = SA_ONSTACK;
  REQUIRE(sigaction(SIGUSR1, &action, nullptr) == 0);
  std::atomic<long> hooked_getppid{0};
  auto session = zpoline_test::install_or_skip(
      [&](zpoline::Syscall& call) {
        volatile char buffer[2048];
        std::snprintf(const_cast<char*>(buffer), sizeof buffer, "call %ld", call.number());
        buffer[sizeof buffer - 1] = buffer[0];
        if (call.number() == SYS_getppid) ++hooked_getppid;
        return call.forward();
      },
      with_mode(zpoline::Mode::exhaustive));
  const long tid = syscall(SYS_gettid);
  for (int i = 0; i < 20; ++i) {
    // Delivered as the hooked tgkill returns: the handler runs on the alternate stack.
    CHECK(syscall(SYS_tgkill, getpid(), tid, SIGUSR1) == 0);
  }
  CHECK(altstack_handler_calls == 20);
  CHECK(altstack_handler_parent == getppid());
  CHECK(hooked_getppid >= 20);
  std::size_t lowest = region.size();
  for (std::size_t i = 0; i < region.size(); ++i) {
    if (region[i] != 0xa5) {
      lowest = i;
      break;
    }
  }
  const std::size_t used = region.size() - lowest;
  MESSAGE("alternate stack of " << size << " bytes: " << used << " used");
  // At least 2 KiB to spare (here 10 672 of 13 504 bytes used; 12 272 with the area built for
  // every trap, and the matrix's hooks, which use more, overflowed it).
  CHECK(used + 2048 <= size);
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  sigaltstack(&off, nullptr);
  signal(SIGUSR1, SIG_IGN);
}

// The application's own SIGSYS with the default action ends it by SIGSYS (the re-raise recursed
// through the library's rt_sigaction virtualisation and died by SIGSEGV), and it may not switch
// the net off under the library.
TEST_CASE("application_sigsys_default_action_and_sud_prctl") {
  for (const zpoline::Mode mode : {zpoline::Mode::exhaustive, zpoline::Mode::lazy}) {
    const pid_t child = fork();
    if (child == 0) {
      auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(mode));
      raise(SIGSYS);
      _exit(0);
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGSYS);
  }
  auto session =
      zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::exhaustive));
  errno = 0;
  CHECK(prctl(59 /* PR_SET_SYSCALL_USER_DISPATCH */, 0, 0, 0, 0) == -1);
  CHECK(errno == EBUSY);
  const long before = getpid_calls;
  CHECK(JitCode().prefixed() == real_getpid());  // still trapped: the net is still on
  CHECK(getpid_calls.load() == before + 1);
}

// Other threads blocked in calls the kernel does not restart after a signal handler (poll,
// epoll_wait, nanosleep: EINTR even with SA_RESTART) when install asks them to arm SUD: they
// must see what they would have seen without the library (their timeout, their full sleep).
TEST_CASE("blocked_calls_of_other_threads_see_no_eintr") {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const int epoll = epoll_create1(EPOLL_CLOEXEC);
  epoll_event event{};
  event.events = EPOLLIN;
  REQUIRE(epoll_ctl(epoll, EPOLL_CTL_ADD, fds[0], &event) == 0);
  for (const zpoline::Mode mode :
       {zpoline::Mode::exhaustive, zpoline::Mode::lazy, zpoline::Mode::exhaustive}) {
    CAPTURE(static_cast<int>(mode));
    std::atomic<int> poll_result{-2}, poll_error{0}, epoll_result{-2}, epoll_error{0};
    std::atomic<int> sleep_result{-2};
    std::atomic<long> tids[3] = {0, 0, 0};
    std::thread poller([&] {
      pollfd readable{fds[0], POLLIN, 0};
      tids[0] = zpoline::raw_syscall(SYS_gettid);
      poll_result = poll(&readable, 1, 400);
      poll_error = errno;
    });
    std::thread epoller([&] {
      epoll_event got{};
      tids[1] = zpoline::raw_syscall(SYS_gettid);
      epoll_result = epoll_wait(epoll, &got, 1, 400);
      epoll_error = errno;
    });
    std::thread sleeper([&] {
      tids[2] = zpoline::raw_syscall(SYS_gettid);
      timespec nap{0, 400 * 1000 * 1000};
      sleep_result = nanosleep(&nap, nullptr);
    });
    // Until each waits in the kernel in its call.
    REQUIRE(eventually([&] { return tids[0] && tids[1] && tids[2]; }));
    REQUIRE(zpoline_test::wait_until_blocked_in(tids[0], SYS_poll));
    REQUIRE(zpoline_test::wait_until_blocked_in(tids[1], SYS_epoll_wait));
    REQUIRE(zpoline_test::wait_until_blocked_in(tids[2], SYS_clock_nanosleep));
    {
      auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(mode));
      poller.join();
      epoller.join();
      sleeper.join();
    }
    CAPTURE(poll_error.load());
    CAPTURE(epoll_error.load());
    CHECK(poll_result.load() == 0);
    CHECK(epoll_result.load() == 0);
    CHECK(sleep_result.load() == 0);
  }
  close(epoll);
}

// Lazy mode's rewriting thread opens /proc/self/maps and libraries: in a file table of its own,
// so that the application's next open() still gets the lowest free descriptor (it got 3 instead
// of 0 in 18 of 50 runs).
TEST_CASE("lazy_mode_takes_no_descriptor_numbers") {
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
  const int saved = dup(0);
  int mismatches = 0;
  for (int i = 0; i < 3000; ++i) {
    close(0);
    const int fd = open("/dev/null", O_RDONLY);
    if (fd != 0) {
      ++mismatches;
      dup2(fd, 0);
      close(fd);
    }
    // New call sites trap now and then, and the rewriting thread gets to work.
    if (i % 50 == 0) {
      void* handle = dlopen(ZPOLINE_LATE_LIBRARY, RTLD_NOW);
      if (handle != nullptr) dlclose(handle);
    }
  }
  dup2(saved, 0);
  close(saved);
  CHECK(session.late_coverage().traps > 0);
  CHECK(mismatches == 0);
}

// JIT code under the net: a stub mapped, run once (trapped, queued for rewriting) and unmapped
// at once, thousands of times, while the rewriting thread works on the queued sites (it wrote
// into unmapped pages before); and code copied after its site was rewritten in place (the copy
// holds `call *%rax` at an unregistered address, and aborted as a NULL function pointer).
TEST_CASE("jit_code_unmapped_and_copied") {
  auto session =
      zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::exhaustive));
  const unsigned char code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
  const long pid = real_getpid();
  long wrong = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(800);
  long stubs = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    auto* page = static_cast<unsigned char*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(page != MAP_FAILED);
    unsigned char* stub = page + (stubs % 60) * 64;
    std::memcpy(stub, code, sizeof code);
    if (reinterpret_cast<long (*)()>(stub)() != pid) ++wrong;
    munmap(page, 4096);
    ++stubs;
  }
  CAPTURE(stubs);
  CHECK(wrong == 0);

  JitCode original;
  REQUIRE(eventually([&] {
    original.plain();
    return original.plain_rewritten();
  }));
  auto* copy = static_cast<unsigned char*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(copy != MAP_FAILED);
  std::memcpy(copy + 128, original.memory, 8);  // the rewritten stub, elsewhere
  const long before = getpid_calls;
  CHECK(reinterpret_cast<long (*)()>(copy + 128)() == pid);
  CHECK(getpid_calls.load() == before + 1);
  munmap(copy, 4096);
}

// The safety net's own thread (which rewrites trapped sites) is never armed for Syscall User
// Dispatch: its libc calls are the library's, and trapping them emulated them through the
// dispatcher, counted them and rewrote their sites as the application's. The kernel's own view,
// read by a tracer: PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG (Linux 6.4), of every thread of a
// process that installed: its main thread and an application thread armed, the others (the
// library's) not.
namespace {
constexpr long kPtraceGetSudConfig = 0x4211;  // PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG
struct SudConfig {
  std::uint64_t mode, selector, offset, length;
};

// Thread `tid`'s SUD mode (0 off, 1 on) as the kernel has it, or -errno. The caller is the
// thread's process's parent (allowed to trace it).
long sud_mode_of(pid_t tid) {
  if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) return -errno;
  long result = -EIO;
  int status = 0;
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) == 0 &&
      waitpid(tid, &status, __WALL) == tid) {
    SudConfig config{};
    result = ptrace(static_cast<__ptrace_request>(kPtraceGetSudConfig), tid,
                    reinterpret_cast<void*>(sizeof config), &config) == 0
                 ? static_cast<long>(config.mode)
                 : -errno;
  }
  ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
  return result;
}
}  // namespace

TEST_CASE("library_threads_are_never_armed") {
  for (const zpoline::Mode mode : {zpoline::Mode::lazy, zpoline::Mode::exhaustive}) {
    CAPTURE(static_cast<int>(mode));
    int ready[2], done[2];
    REQUIRE(pipe(ready) == 0);
    REQUIRE(pipe(done) == 0);
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(mode));
      std::atomic<long> worker_tid{0};
      std::thread worker([&] {
        worker_tid = gettid();
        char byte;
        (void)!read(done[0], &byte, 1);  // until the tracer is done
      });
      // Traps for the rewriter to work on meanwhile: new sites, in lazy mode.
      for (int i = 0; i < 3; ++i) (void)getpid();
      while (worker_tid == 0) sched_yield();
      const long tids[2] = {gettid(), worker_tid};
      (void)!write(ready[1], tids, sizeof tids);
      char byte;
      (void)!read(done[0], &byte, 1);
      worker.join();
      _exit(0);
    }
    long tids[2] = {};
    REQUIRE(read(ready[0], tids, sizeof tids) == sizeof tids);
    std::vector<pid_t> library_threads;
    const std::string task_dir = "/proc/" + std::to_string(child) + "/task";
    for (const auto& entry : std::filesystem::directory_iterator(task_dir)) {
      const pid_t tid = static_cast<pid_t>(std::stol(entry.path().filename().string()));
      if (tid != tids[0] && tid != tids[1]) library_threads.push_back(tid);
    }
    const long main_mode = sud_mode_of(static_cast<pid_t>(tids[0]));
    if (main_mode == -EIO || main_mode == -EINVAL) {
      kill(child, SIGKILL);
      waitpid(child, nullptr, 0);
      std::fprintf(stderr, "SKIP: this kernel cannot show a thread's SUD setting to a tracer\n");
      std::_Exit(77);
    }
    CHECK(main_mode == 1);
    CHECK(sud_mode_of(static_cast<pid_t>(tids[1])) == 1);
    CHECK(library_threads.size() == 1);  // the rewriter
    for (const pid_t tid : library_threads) {
      CAPTURE(tid);
      CHECK(sud_mode_of(tid) == 0);
    }
    (void)!write(done[1], "xx", 2);
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    for (const int fd : {ready[0], ready[1], done[0], done[1]}) close(fd);
  }
}

// Lazy mode: sites a session queued for rewriting and had not rewritten when it ended are
// forgotten. By the next install the bytes there may be other code (a JIT's): a site is known to
// be a syscall only when it traps. 250 JIT sites trap once each, the session ends at once; the
// page then holds `mov $0x50f, %eax` over each old site; a new session must leave it alone.
TEST_CASE("lazy_sites_queued_at_detach_are_forgotten") {
  constexpr int kSites = 250, kStride = 16;
  auto* page = static_cast<unsigned char*>(mmap(nullptr, kSites * kStride,
                                                PROT_READ | PROT_WRITE | PROT_EXEC,
                                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(page != MAP_FAILED);
  const auto function = [&](int i) { return reinterpret_cast<long (*)()>(page + i * kStride); };
  for (int i = 0; i < kSites; ++i) {
    const unsigned char getpid_code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
    std::memcpy(page + i * kStride, getpid_code, sizeof getpid_code);
  }
  {
    auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
    for (int i = 0; i < kSites; ++i) CHECK(function(i)() == real_getpid());
  }
  // No session: other code at the same addresses, the old sites inside an immediate.
  for (int i = 0; i < kSites; ++i) {
    const unsigned char other_code[] = {0x90, 0x90, 0x90, 0x90, 0xb8, 0x0f, 0x05, 0x00, 0x00, 0xc3};
    std::memcpy(page + i * kStride, other_code, sizeof other_code);
  }
  JitCode first, second;
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
  // Two new sites, the second queued once the first is rewritten: the rewriter has then gone
  // through every slot of its queue at least once.
  for (const JitCode* jit : {&first, &second}) {
    CHECK(eventually([&] { return jit->plain() == real_getpid() && jit->plain_rewritten(); }));
  }
  int changed = 0;
  for (int i = 0; i < kSites; ++i) {
    if (page[i * kStride + 5] != 0x0f || function(i)() != 0x50f) ++changed;
  }
  CHECK(changed == 0);
  const auto begin = reinterpret_cast<std::uintptr_t>(page);
  for (const auto& site : session.late_coverage().lazily_rewritten) {
    CHECK((site.address < begin || site.address >= begin + kSites * kStride));
  }
  munmap(page, kSites * kStride);
}

// Session::late_coverage() lists the sites rewritten after a trap during this session only.
TEST_CASE("late_coverage_lists_this_sessions_sites") {
  JitCode first, second;
  std::vector<std::uintptr_t> listed[2];
  int index = 0;
  for (const JitCode* jit : {&first, &second}) {
    auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
    CHECK(jit->plain() == real_getpid());
    // The rewriter lists a site right after writing it: wait for the list, not the bytes.
    const auto site = reinterpret_cast<std::uintptr_t>(jit->memory + 5);
    const auto listed_now = [&] {
      // A trap whose site the rewriter could not take at once (its lock was busy) is queued
      // again at the next trap: call again.
      if (jit->plain() != real_getpid()) return false;
      listed[index].clear();
      for (const auto& entry : session.late_coverage().lazily_rewritten) {
        listed[index].push_back(entry.address);
      }
      return std::count(listed[index].begin(), listed[index].end(), site) == 1;
    };
    CHECK(eventually(listed_now));
    CHECK(jit->plain_rewritten());
    ++index;
  }
  // The first session's sites are not the second's.
  for (const std::uintptr_t site : listed[0]) {
    CHECK(std::count(listed[1].begin(), listed[1].end(), site) == 0);
  }
}

// A thread running on its creator's TLS (clone(CLONE_VM) without CLONE_SETTLS) that ends with an
// exit the safety net trapped, inside the SIGSYS handler, leaves its creator's state alone: the
// creator's calls through a rewritten site are still counted as such, not as the net's.
namespace {
std::atomic<int> tls_sharing_child_done{0};
extern "C" void zt_tls_sharing_child_mark() {
  tls_sharing_child_done = 1;
}
extern "C" void zt_tls_sharing_child();
asm(R"(
  .text
  .globl zt_tls_sharing_child
  .type zt_tls_sharing_child, @function
zt_tls_sharing_child:
  .cfi_startproc
  .cfi_undefined %rip
  call zt_tls_sharing_child_mark
  mov $60, %eax
  xor %edi, %edi
  .byte 0x66
  syscall
  ud2
  .cfi_endproc
  .size zt_tls_sharing_child, .-zt_tls_sharing_child
)");
extern "C" const unsigned char zt_counted_getppid_site[];
extern "C" long zt_counted_getppid();
asm(R"(
  .text
  .globl zt_counted_getppid
  .type zt_counted_getppid, @function
zt_counted_getppid:
  .cfi_startproc
  mov $110, %eax
  .globl zt_counted_getppid_site
zt_counted_getppid_site:
  syscall
  ret
  .cfi_endproc
  .size zt_counted_getppid, .-zt_counted_getppid
)");
std::size_t threads_of_this_process() {
  std::size_t count = 0;
  for ([[maybe_unused]] const auto& entry :
       std::filesystem::directory_iterator("/proc/self/task")) {
    ++count;
  }
  return count;
}
}  // namespace

TEST_CASE("a_thread_on_its_creators_tls_leaves_the_creators_counts_alone") {
  auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
  // Called until rewritten: a trap that finds the rewriter busy is queued at the next one.
  CHECK(eventually(
      [] { return zt_counted_getppid() == getppid() && rewritten(zt_counted_getppid_site); }));
  const std::size_t threads = threads_of_this_process();
  const std::size_t size = 64 * 1024;
  auto* stack = static_cast<char*>(
      mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(stack != MAP_FAILED);
  auto* top = reinterpret_cast<unsigned long*>(stack + size);
  *--top = reinterpret_cast<unsigned long>(&zt_tls_sharing_child);
  const long flags =
      CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
  long child;
  register long r10 asm("r10") = 0;
  asm volatile("syscall\n\ttest %%rax, %%rax\n\tjnz 1f\n\tret\n1:"
               : "=a"(child)
               : "a"(SYS_clone), "D"(flags), "S"(top), "d"(0), "r"(r10)
               : "rcx", "r11", "r8", "memory");
  CHECK(child > 0);
  CHECK(eventually([] { return tls_sharing_child_done.load() == 1; }));
  CHECK(eventually([&] { return threads_of_this_process() == threads; }));
  // Only the rewritten site is called while counting: libc's getppid site may still be waiting
  // for the rewriter (lazy mode rewrites asynchronously), and its trapped calls would count as the
  // net's (it did, 19 of 900 runs with six in parallel).
  const pid_t parent = getppid();
  const zpoline::Session::CallCounts before = session.calls();
  for (int i = 0; i < 100; ++i) CHECK(zt_counted_getppid() == parent);
  const zpoline::Session::CallCounts after = session.calls();
  CHECK(after.through_net - before.through_net == 0);
  CHECK(after.through_sites - before.through_sites >= 100);
}

namespace {
// Waits for a scenario run in a child process with a 20 s alarm: skipped (77) passes on, a
// deadlock shows as SIGALRM, anything but exit status 0 fails.
void check_scenario_child(pid_t child) {
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) std::_Exit(77);
  CAPTURE(status);
  CHECK_FALSE((WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM));
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
}
}  // namespace

// Lazy mode: fork() from a dlopen'ed library's constructor, while the rewriter thread works on a
// site that constructor's code trapped at. dlopen holds the dynamic linker's load lock while the
// constructor runs, and the rewriter waits for that lock in dladdr (image_of): nothing of the
// library's may make fork() wait for the rewriter (a fork handler that took a rewriter work lock
// deadlocked here). The scenario runs in a child process with a 20 s alarm: a deadlock shows as
// SIGALRM.
TEST_CASE("lazy_fork_in_a_dlopen_constructor") {
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    alarm(20);
    auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
    void* library = dlopen(ZPOLINE_FORK_IN_CONSTRUCTOR_LIBRARY, RTLD_NOW);
    if (library == nullptr) _exit(2);
    const auto* status = static_cast<const int*>(dlsym(library, "fork_in_constructor_status"));
    _exit(status != nullptr && *status == 0 ? 0 : 3);
  }
  check_scenario_child(child);
}

// Lazy mode: the application's signals never run on the library's rewriter thread. It used to
// inherit the installing thread's mask, so a process-directed signal the application's threads
// block went to it, and the application's handler ran there (unhooked; a handler that forked did
// so while the rewriter held its locks, and deadlocked with a lock the rewriter thread then
// held). Here the only thread of the application blocks SIGUSR1 while the rewriter is kept busy
// with new JIT sites: the signal must stay pending until that thread unblocks it, and then run
// there, and fork there. Runs in a child process with a 20 s alarm.
namespace {
std::atomic<int> forks_from_handler{0};
std::atomic<long> handler_thread{0};
void fork_from_handler(int) {
  const int saved_errno = errno;
  handler_thread = syscall(SYS_gettid);
  const pid_t child = fork();
  if (child == 0) _exit(0);
  if (child > 0) waitpid(child, nullptr, 0);
  ++forks_from_handler;
  errno = saved_errno;
}
}  // namespace

TEST_CASE("lazy_application_signals_never_run_on_the_rewriter_thread") {
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    alarm(20);
    constexpr int kSites = 100, kStride = 16;
    auto* page = static_cast<unsigned char*>(mmap(nullptr, kSites * kStride,
                                                  PROT_READ | PROT_WRITE | PROT_EXEC,
                                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (page == MAP_FAILED) _exit(2);
    for (int i = 0; i < kSites; ++i) {
      const unsigned char getpid_code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
      std::memcpy(page + i * kStride, getpid_code, sizeof getpid_code);
    }
    auto session = zpoline_test::install_or_skip(counting_getpid(), with_mode(zpoline::Mode::lazy));
    struct sigaction action {};
    action.sa_handler = fork_from_handler;
    sigemptyset(&action.sa_mask);
    sigaction(SIGUSR1, &action, nullptr);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    const long self = syscall(SYS_gettid);
    for (int i = 0; i < kSites; ++i) {
      pthread_sigmask(SIG_BLOCK, &usr1, nullptr);
      reinterpret_cast<long (*)()>(page + i * kStride)();  // a trap: work for the rewriter
      kill(getpid(), SIGUSR1);
      for (int spin = 0; spin < 200; ++spin) sched_yield();  // time for a wrong delivery
      sigset_t pending;
      sigpending(&pending);
      if (forks_from_handler.load() != i || !sigismember(&pending, SIGUSR1)) _exit(3);
      pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr);  // delivered here, now
      if (forks_from_handler.load() != i + 1 || handler_thread.load() != self) _exit(4);
    }
    _exit(0);
  }
  check_scenario_child(child);
}
