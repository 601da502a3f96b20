#include "rewriting/vdso_routing.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <iterator>

#include "dispatch/frame.hpp"
#include "platform/memory_map.hpp"
#include "platform/raw_syscall.hpp"
#include "platform/sanitizers.hpp"
#include "platform/signals.hpp"
#include "rewriting/patcher.hpp"
#include "rewriting/site_registry.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline::detail {
namespace {

struct VdsoFunction {
  const char* symbol;
  int number;  // the system call it stands for: same arguments, in the same registers
};
constexpr VdsoFunction kVdsoFunctions[] = {
    {"__vdso_clock_gettime", SYS_clock_gettime},
    {"__vdso_gettimeofday", SYS_gettimeofday},
    {"__vdso_time", SYS_time},
    {"__vdso_getcpu", SYS_getcpu},
    {"__vdso_clock_getres", SYS_clock_getres},
};
constexpr std::size_t kFunctions = std::size(kVdsoFunctions);

constexpr std::size_t kJumpLength = 5;  // jmp rel32
constexpr std::size_t kThunkSize = 16;
// The thunk: mov $number, %eax (5 bytes); call *entry(%rip) (6 bytes); ret. The stub takes the
// 2 bytes before the return address for the site, whatever they hold: it registers thunk + 9.
// The stub's address is read from the thunk page's last 8 bytes, so no sled at page 0 is needed
// (Mechanism::near).
constexpr std::size_t kCallEnd = 11;
constexpr std::size_t kSiteOffset = kCallEnd - 2;
constexpr std::uint8_t kInvalidOpcode = 0x06;
constexpr std::uintptr_t kPageSize = 4096;

struct RoutedFunction {
  std::uintptr_t entry = 0;
  std::uintptr_t thunk = 0;
  std::uint8_t original[kJumpLength] = {};
  std::uint8_t jump[kJumpLength] = {};
};
// Written before any entry changes, read by the SIGILL handler: no allocation, never freed.
RoutedFunction functions[kFunctions];
std::atomic<std::size_t> function_count{0};
bool routed = false;
std::uintptr_t thunk_page = 0;
struct {
  std::uintptr_t begin = 0, end = 0;
} vdso_range;
std::atomic<bool> thread_in_window{false};

// A page within a rel32 jump of the vDSO, for the thunks.
std::uintptr_t map_thunk_page(std::uintptr_t vdso_begin, std::uintptr_t vdso_end) {
  constexpr std::uintptr_t kStep = 1 << 20;
  for (std::uintptr_t distance = kStep; distance < (1ull << 30); distance += kStep) {
    for (const std::uintptr_t hint : {vdso_begin - distance, vdso_end + distance}) {
      const long page =
          raw_syscall(SYS_mmap, static_cast<long>(hint), kPageSize, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      if (page == static_cast<long>(hint)) {
        forget_stale_poison(reinterpret_cast<void*>(page), kPageSize);  // new pages
        return hint;
      }
      if (page >= 0) raw_syscall(SYS_munmap, page, kPageSize);
    }
  }
  return 0;
}

// The bytes of the vDSO change through a writable copy of its pages (mprotect gives the process
// a private one, as a debugger's write does), one byte or the jump's displacement at a time.
struct WritableVdso {
  std::uintptr_t begin = 0, end = 0;
  bool writable = false;
  WritableVdso(std::uintptr_t vdso_begin, std::uintptr_t vdso_end)
      : begin(vdso_begin), end(vdso_end) {
    writable = raw_syscall(SYS_mprotect, static_cast<long>(begin), static_cast<long>(end - begin),
                           PROT_READ | PROT_WRITE | PROT_EXEC) == 0;
  }
  ~WritableVdso() {
    if (writable) {
      raw_syscall(SYS_mprotect, static_cast<long>(begin), static_cast<long>(end - begin),
                  PROT_READ | PROT_EXEC);
    }
  }
  void write(std::uintptr_t address, const std::uint8_t* bytes, std::size_t length) const {
    auto* target = reinterpret_cast<volatile std::uint8_t*>(address);
    for (std::size_t i = 0; i < length; ++i) target[i] = bytes[i];
  }
};

// The bytes a thread may be between while the entry changes: after the first byte and before
// the end of the jump.
bool in_window(std::uintptr_t address) {
  const std::size_t count = function_count.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i) {
    if (address > functions[i].entry && address < functions[i].entry + kJumpLength) return true;
  }
  return false;
}

// What another thread runs when asked where it is (platform/signals.hpp).
void report_position(ucontext_t& interrupted) {
  if (in_window(static_cast<std::uintptr_t>(interrupted.uc_mcontext.gregs[REG_RIP]))) {
    thread_in_window.store(true, std::memory_order_release);
  }
}

// Until no thread is inside the windows. The entries' first bytes are the invalid opcode
// already, so a thread seen outside cannot get in any more.
bool wait_until_no_thread_in_windows() {
  set_request_action(ThreadRequest::checkpoint, report_position);
  for (int round = 0; round < 100; ++round) {
    thread_in_window.store(false, std::memory_order_release);
    const RequestOutcome outcome = ask_other_threads(ThreadRequest::checkpoint);
    // Threads that block the request signal: where they wait in the kernel, if they do.
    for (const pid_t tid : outcome.not_reached) {
      std::uintptr_t pc = 0;
      for (int tries = 0; tries < 100 && (pc = blocked_pc(tid)) == 0; ++tries) {
        raw_syscall(SYS_sched_yield);
      }
      if (pc != 0 && in_window(pc)) thread_in_window.store(true, std::memory_order_release);
    }
    if (!thread_in_window.load(std::memory_order_acquire)) return true;
    raw_syscall(SYS_sched_yield);
  }
  return false;
}

// Once per process: the thunks, registered as sites before anything can run them, and the
// jump of each entry. Returns how many functions there are.
std::size_t prepare() {
  static std::size_t prepared = 0;
  if (prepared != 0) return prepared;
  const auto vdso = static_cast<std::uintptr_t>(getauxval(AT_SYSINFO_EHDR));
  void* handle = vdso != 0 ? dlopen("linux-vdso.so.1", RTLD_NOLOAD | RTLD_NOW) : nullptr;
  if (handle == nullptr) {
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: this process has no vDSO to route.");
  }
  for (const Mapping& mapping : read_memory_map()) {
    if (mapping.begin == vdso) vdso_range = {mapping.begin, mapping.end};
  }
  thunk_page = vdso_range.end != 0 ? map_thunk_page(vdso_range.begin, vdso_range.end) : 0;
  if (thunk_page == 0) {
    dlclose(handle);
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: no memory for the vDSO's thunks near the vDSO.");
  }
  std::size_t count = 0;
  auto* thunks = reinterpret_cast<std::uint8_t*>(thunk_page);
  const std::uintptr_t entry_pointer = thunk_page + kPageSize - sizeof(std::uintptr_t);
  const auto entry = reinterpret_cast<std::uintptr_t>(&zpoline_detail_entry);
  std::memcpy(reinterpret_cast<void*>(entry_pointer), &entry, sizeof entry);
  for (const VdsoFunction& function : kVdsoFunctions) {
    void* address = dlsym(handle, function.symbol);
    if (address == nullptr) continue;
    RoutedFunction& routed_function = functions[count];
    routed_function.entry = reinterpret_cast<std::uintptr_t>(address);
    routed_function.thunk = thunk_page + count * kThunkSize;
    std::memcpy(routed_function.original, address, kJumpLength);
    const auto to_pointer =
        static_cast<std::int32_t>(entry_pointer - (routed_function.thunk + kCallEnd));
    std::uint8_t code[kThunkSize] = {0xb8,
                                     static_cast<std::uint8_t>(function.number & 0xff),
                                     static_cast<std::uint8_t>(function.number >> 8),
                                     0x00,
                                     0x00,  // mov $number, %eax
                                     0xff,
                                     0x15,  // call *disp32(%rip)
                                     0,
                                     0,
                                     0,
                                     0,
                                     0xc3,  // ret
                                     0xcc,
                                     0xcc,
                                     0xcc,
                                     0xcc};
    std::memcpy(code + 7, &to_pointer, sizeof to_pointer);
    std::memcpy(thunks + count * kThunkSize, code, sizeof code);
    const auto displacement =
        static_cast<std::int32_t>(static_cast<std::int64_t>(routed_function.thunk) -
                                  static_cast<std::int64_t>(routed_function.entry + kJumpLength));
    routed_function.jump[0] = 0xe9;
    std::memcpy(routed_function.jump + 1, &displacement, sizeof displacement);
    if (!site_registry().add(routed_function.thunk + kSiteOffset)) break;
    ++count;
  }
  dlclose(handle);
  raw_syscall(SYS_mprotect, static_cast<long>(thunk_page), kPageSize, PROT_READ | PROT_EXEC);
  if (count == 0) {
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: the vDSO has none of the functions to route.");
  }
  // From here on read by the SIGILL handler; the entries change only while routing changes.
  function_count.store(count, std::memory_order_release);
  prepared = count;
  return count;
}

}  // namespace

std::size_t route_vdso_calls_to_kernel() {
  const std::size_t count = prepare();
  if (routed) return count;
  WritableVdso vdso_code(vdso_range.begin, vdso_range.end);
  if (!vdso_code.writable) {
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: the vDSO's code could not be made writable.");
  }
  // 1. Every entry becomes the invalid opcode: from here on a thread that calls one faults and
  // continues in its thunk (vdso_thunk_for_fault()).
  for (std::size_t i = 0; i < count; ++i) {
    vdso_code.write(functions[i].entry, &kInvalidOpcode, 1);
  }
  sync_cores();
  // 2. No thread may be in the middle of the bytes that change next.
  if (!wait_until_no_thread_in_windows()) {
    for (std::size_t i = 0; i < count; ++i) {
      vdso_code.write(functions[i].entry, functions[i].original, 1);
    }
    sync_cores();
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: threads kept running inside the vDSO's first "
                "instructions; try again.");
  }
  // 3. The jump: its displacement, then its first byte.
  for (std::size_t i = 0; i < count; ++i) {
    vdso_code.write(functions[i].entry + 1, functions[i].jump + 1, kJumpLength - 1);
  }
  sync_cores();
  for (std::size_t i = 0; i < count; ++i) vdso_code.write(functions[i].entry, functions[i].jump, 1);
  sync_cores();
  routed = true;
  return count;
}

void restore_vdso_calls() noexcept {
  if (!routed) return;
  const std::size_t count = function_count.load(std::memory_order_acquire);
  WritableVdso vdso_code(vdso_range.begin, vdso_range.end);
  if (!vdso_code.writable) return;
  // The jump is one instruction, which no thread is in the middle of: first byte, rest, first
  // byte. A thread that called the function meanwhile faults and is served by the thunk.
  for (std::size_t i = 0; i < count; ++i) vdso_code.write(functions[i].entry, &kInvalidOpcode, 1);
  sync_cores();
  for (std::size_t i = 0; i < count; ++i) {
    vdso_code.write(functions[i].entry + 1, functions[i].original + 1, kJumpLength - 1);
  }
  sync_cores();
  for (std::size_t i = 0; i < count; ++i) {
    vdso_code.write(functions[i].entry, functions[i].original, 1);
  }
  sync_cores();
  routed = false;
}

std::uintptr_t vdso_thunk_for_fault(std::uintptr_t address) noexcept {
  // Neither a function's first instruction nor the jump raises SIGILL: only the invalid opcode,
  // which may have been replaced again by the time the handler looks.
  const std::size_t count = function_count.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i) {
    if (functions[i].entry == address) return functions[i].thunk;
  }
  return 0;
}

}  // namespace zpoline::detail
