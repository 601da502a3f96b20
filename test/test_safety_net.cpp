// Modes and the Syscall User Dispatch safety net: syscalls from code the rewriter did not reach
// (JIT code written after mapping, prefixed syscalls, red-zone functions, libraries loaded with
// dlopen) reach the hook, and the application's own SIGSYS use keeps working.
#include <dlfcn.h>
#include <doctest/doctest.h>
#include <elf.h>
#include <fcntl.h>
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
#include <cstdint>
#include <cstring>
#include <fstream>
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
    if ((code[i] == 0x0f && code[i + 1] == 0x05) || (code[i] == 0xff && code[i + 1] == 0xd0)) {
      return code + i;
    }
  }
  return nullptr;
}

bool rewritten(const unsigned char* site) {
  return site != nullptr && site[0] == 0xff && site[1] == 0xd0;
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
