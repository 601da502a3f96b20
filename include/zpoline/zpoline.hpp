// zpoline/zpoline.hpp: hook every system call of the current process.
//
//   auto session = zpoline::install([](zpoline::Syscall& call) {
//     if (call.number() == zpoline::sys::getpid::number) return 42L;  // emulate
//     return call.forward();                                           // or pass on
//   });
//
// install() maps a trampoline at virtual address 0 and rewrites every `syscall` instruction of
// the code loaded in the process into `call *%rax`, which enters the trampoline and then the hook.
// See docs/ for the full contract.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "zpoline/syscall.hpp"
#include "zpoline/version.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

// Every failure of this library is reported by throwing zpoline::Error. code() says which kind of
// failure; what() says what happened and what to do about it.
enum class ErrorCode {
  page_zero_refused,    // the kernel would not map the trampoline at address 0
  page_zero_in_use,     // something else is already mapped at address 0
  already_installed,    // a Session is alive in this process
  unsupported,          // kernel or CPU lacks something the library needs
  invalid_option,       // a bad Options value or environment variable
  rewrite_failed,       // a code page could not be made writable or restored
  hook_library_failed,  // a hook library could not be loaded or refused to start
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// The hook: any callable taking the call and returning its result in the kernel's convention
// (a negative errno on failure). It runs on the thread that made the system call, concurrently on
// all threads. System calls the hook makes itself (printf, new, locks) go straight to the kernel.
using Hook = std::function<long(Syscall&)>;

// A half-open range of addresses [begin, end).
struct AddressRange {
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;
};

// How completely the library reaches system calls, against what it costs (docs/DESIGN.md).
enum class Mode {
  // Rewrite the code present at install, and code that becomes executable later (dlopen,
  // mmap/mprotect with PROT_EXEC) before it runs. No cost on calls. Misses code written into
  // memory that is already executable (JIT into RWX memory) and sites left alone as unsafe.
  eager,
  // eager, plus Syscall User Dispatch (Linux 5.11+) as a safety net: any other `syscall` traps
  // into the library, reaches the hook, and is rewritten at its first trap when that is safe.
  // Costs every syscall of the process the kernel's slower entry path.
  exhaustive,
  // Rewrite nothing at install: every site is rewritten at its first trap under Syscall User
  // Dispatch, once shown safe. Fast install; each site pays one trap (a few microseconds).
  lazy,
};

// How a rewritten site reaches the hook (docs/GUIDE.md, "Mechanisms").
enum class Mechanism {
  // page_zero where the kernel lets the process map address 0 (CAP_SYS_RAWIO or
  // vm.mmap_min_addr=0) and it is free, near otherwise.
  automatic,
  // `call *%rax` into a sled at address 0 (the zpoline technique). Needs the privilege above;
  // NULL pointers passed to the kernel then point at mapped memory.
  page_zero,
  // `jmp rel8` to padding between functions, holding a `jmp rel32` to a trampoline of that site
  // near the code. Needs no privilege and leaves page 0 unmapped. Sites without such padding
  // within 128 bytes are not rewritten: in exhaustive and lazy modes Syscall User Dispatch still
  // brings their calls to the hook, one trap each (ImageStats::skipped_no_padding).
  near,
};

struct Options {
  // ZPOLINE_MODE (eager, exhaustive, lazy) overrides it when use_environment is on.
  Mode mode = Mode::eager;
  // ZPOLINE_MECHANISM (auto, page_zero, near) overrides it when use_environment is on.
  Mechanism mechanism = Mechanism::automatic;
  // Images (shared objects or the executable) whose code is left alone. An entry containing '/'
  // must equal the image's path; any other entry must equal the file name ("libfoo.so.1").
  // The environment variable ZPOLINE_EXCLUDE adds entries, separated by ':'.
  std::vector<std::string> exclude_paths;
  // Code in these ranges is left alone.
  std::vector<AddressRange> exclude_ranges;
  // Read ZPOLINE_EXCLUDE. Off, the environment is not consulted.
  bool use_environment = true;
  // Hook libraries (zpoline/hook_library.hpp) that install_configured_hooks() loads and composes,
  // first to see each call first. ZPOLINE_HOOK (a ':'-separated list) overrides them when
  // use_environment is on. install() with a hook rejects a non-empty list.
  std::vector<std::string> hook_libraries;
  // When the Session ends, put the original `syscall` instructions back. Off (the default), the
  // rewritten sites stay and enter the kernel through the trampoline at no hook cost.
  bool restore_on_detach = false;
  // Make clock_gettime, gettimeofday, time, getcpu and clock_getres enter the kernel (and so
  // reach the hook, as their system calls) instead of being answered by the vDSO in user space:
  // slower, but a hook can then see or virtualise time. Undone when the Session ends. Off by
  // default.
  bool route_vdso = false;
  // For hooks that never touch vector or x87 state: code built with -mgeneral-regs-only (GCC,
  // Clang) that calls nothing else that does. Most of libc does (memcpy, strlen, printf and
  // malloc use SSE or AVX registers); zpoline::raw_syscall, the typed views and Syscall's
  // number(), arg(), set_arg(), return_address() and forward() do not. On, the stub saves and
  // restores no vector registers and no MXCSR around the hook (docs/PERFORMANCE.md says what that
  // saves); a hook that breaks the rule corrupts the application's vector and floating-point
  // state. Calls the library forwards with its own C++ code (clone, clone3, vfork, mmap,
  // mprotect, pkey_mprotect, munmap, rt_sigaction, rt_sigprocmask, rt_sigsuspend, ppoll,
  // epoll_pwait, epoll_pwait2) and each thread's first hooked call still save everything. Only
  // for a hook given to install(), not for hook libraries or a HookChain (their code uses vector
  // registers). Off by default.
  bool general_registers_only = false;
  // A directory (absolute path) where the rewriter keeps what it decided about each file's code,
  // so that the next process mapping the same file, with the same build of this library, skips
  // the search and the decoding (page-0 mechanism; ImageStats::scan_from_cache). Created (mode
  // 0700) if missing; not used if another user could write to it. An entry is keyed by the
  // file's device, inode, size, times and build ID and by this library's build ID, and every
  // remembered site must still be a `syscall` when it is used. ZPOLINE_SCAN_CACHE (a directory,
  // or "off") overrides it when use_environment is on. Empty (the default): no cache. The preload
  // shim uses $XDG_CACHE_HOME/libzpoline (~/.cache/libzpoline) unless told otherwise.
  std::string scan_cache_directory;
};

// What the rewriter did with one image (executable or shared object).
struct ImageStats {
  std::string path;               // as the dynamic linker names it; the executable's real path
  std::uintptr_t base = 0;        // load bias
  std::size_t code_bytes = 0;     // bytes in executable segments
  std::size_t bytes_decoded = 0;  // bytes the decoder walked to classify candidate sites
  std::size_t sites_rewritten = 0;
  std::size_t sites_through_page_zero = 0;  // ... of them, as `call *%rax` (Mechanism::page_zero)
  std::size_t sites_through_padding = 0;    // ... as `jmp rel8` to padding (Mechanism::near)
  std::size_t sites_through_moved_instruction = 0;  // ... the instruction (or the few) before
                                                    // the site moved into its trampoline
                                                    // (Mechanism::near)
  std::size_t skipped_prefixed = 0;     // e.g. `66 0f 05`: rewriting would change the encoding
  std::size_t skipped_red_zone = 0;     // the function keeps data below rsp
  std::size_t skipped_undecodable = 0;  // no function boundary or decoding did not reach the site
  std::size_t skipped_excluded = 0;     // inside Options::exclude_ranges
  std::size_t skipped_no_padding = 0;   // Mechanism::near: no free padding within a rel8 jump,
                                        // and no instruction before the site that can be moved
  bool excluded = false;                // the whole image was excluded by path
  bool scan_from_cache = false;         // decided by Options::scan_cache_directory's entry for
                                        // this file, not scanned
  std::chrono::nanoseconds time{0};
};

struct InstallStats {
  std::vector<ImageStats> images;
  std::chrono::nanoseconds total_time{0};
  std::size_t sites_rewritten() const noexcept;
};

// An installed hook. Destroying it (or calling detach()) stops calling the hook: system calls go
// straight to the kernel again. Move-only; one may be alive per process.
class [[nodiscard]] Session {
 public:
  Session() noexcept = default;
  Session(Session&& other) noexcept;
  Session& operator=(Session&& other) noexcept;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session();

  bool active() const noexcept { return active_; }
  // What install did.
  const InstallStats& stats() const noexcept { return stats_; }
  // How many calls have reached the hook of this Session, from its install to its end (detach),
  // and by which way: through a rewritten site, or through the SUD safety net (a trapped
  // `syscall` run from the library's SIGSYS handler). Counts every thread the process has had; a
  // fork child starts from its parent's counts. Makes no system call and does not allocate, so it
  // can be read around the code it measures. An inactive Session that was never installed
  // reports zeros.
  struct CallCounts {
    std::uint64_t through_sites = 0;
    std::uint64_t through_net = 0;
  };
  CallCounts calls() const noexcept;
  // A `syscall` instruction that the safety net trapped and that was then rewritten.
  struct LazySite {
    std::uintptr_t address = 0;  // of the two-byte instruction
    std::string image;           // the loaded object it was in, as dladdr names it when the
                                 // site was rewritten; "" for anonymous memory (JIT code)
  };
  // Code that became executable after install and what was done with it, one entry per image;
  // what the SUD safety net has done (exhaustive and lazy modes) during this Session; and the
  // call counts above.
  struct LateCoverage {
    std::vector<ImageStats> images;
    std::size_t traps = 0;                    // syscalls that trapped under SUD
    std::size_t sites_rewritten_on_trap = 0;  // ... whose site was rewritten then
    std::size_t emulated = 0;                 // ... and ran from the signal handler instead
    std::vector<LazySite> lazily_rewritten;   // those sites, in the order they were rewritten
    CallCounts calls;
  };
  LateCoverage late_coverage() const;
  Mode mode() const noexcept { return mode_; }
  // The mechanism this Session's install used (page_zero or near, never automatic).
  Mechanism mechanism() const noexcept { return mechanism_; }
  // Ends the session now; does nothing on an inactive Session.
  void detach() noexcept;

 private:
  friend Session install(Hook hook, Options options);
  // The process-wide counters at install and, once the Session has ended, at its end.
  struct Counters {
    CallCounts calls;
    std::size_t traps = 0, sites_rewritten_on_trap = 0, emulated = 0;
  };
  static Counters counters_now() noexcept;
  Counters since_install() const noexcept;
  bool active_ = false;
  bool ended_ = false;
  Mode mode_ = Mode::eager;
  Mechanism mechanism_ = Mechanism::page_zero;
  InstallStats stats_;
  Counters at_install_, at_end_;
};

// Installs `hook` for every system call made by code present in the process. Throws Error.
Session install(Hook hook, Options options = {});

// While alive, system calls made by the current thread skip the hook. Nests.
class ScopedBypass {
 public:
  ScopedBypass() noexcept;
  ~ScopedBypass();
  ScopedBypass(const ScopedBypass&) = delete;
  ScopedBypass& operator=(const ScopedBypass&) = delete;
};

// A system call that never goes through the hook (its instruction is never rewritten). Returns the
// kernel's raw result. Not for clone or vfork with a new stack (as with libc's syscall()).
long raw_syscall(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
                 long a5 = 0) noexcept;

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
