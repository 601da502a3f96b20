// Modes and the Syscall User Dispatch safety net: syscalls from code the rewriter did not reach
// (JIT code written after mapping, prefixed syscalls, red-zone functions, libraries loaded with
// dlopen) reach the hook, and the application's own SIGSYS use keeps working.
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <string>
#include <thread>

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
  bool plain_rewritten() const { return memory[5] == 0xff && memory[6] == 0xd0; }
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
  CHECK(zt_red_zone_below_slot_site[0] == 0xff);
  CHECK(zt_red_zone_below_slot_site[1] == 0xd0);
  const long before = getpid_calls.load();
  CHECK(zt_red_zone_below_slot_getpid() == real_getpid());  // and its red-zone data survived
  CHECK(getpid_calls.load() == before + 1);
  // glibc's variadic open/openat wrappers have this shape; ground_truth/dlopen_eager shows that
  // the dynamic linker's copies, which open every library dlopen loads, now reach the hook.

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

  // The plain JIT site is rewritten after its first trap; from then on it does not trap.
  CHECK(eventually([&] { return jit.plain_rewritten(); }));
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
      if (code[i] == 0xff && code[i + 1] == 0xd0) return true;
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
