#include "platform/vdso.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "rewriting/site_registry.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline::detail {
namespace {

struct VdsoFunction {
  const char* symbol;
  int number;  // the system call it stands for
};
constexpr VdsoFunction kVdsoFunctions[] = {
    {"__vdso_clock_gettime", SYS_clock_gettime},
    {"__vdso_gettimeofday", SYS_gettimeofday},
    {"__vdso_time", SYS_time},
    {"__vdso_getcpu", SYS_getcpu},
    {"__vdso_clock_getres", SYS_clock_getres},
};

// `mov $number, %eax; call *%rax; ret`: the function becomes its system call, made through the
// trampoline like any rewritten site. Same arguments, same registers: the vDSO functions take the
// system call's arguments in the same order.
constexpr std::size_t kPatchLength = 8;
constexpr std::size_t kCallOffset = 5;

struct PatchedFunction {
  std::uintptr_t entry;
  std::uint8_t original[kPatchLength];
};
std::vector<PatchedFunction>& patched() {
  static auto* functions = new std::vector<PatchedFunction>;
  return *functions;
}

// The vDSO cannot be made writable with mprotect; /proc/self/mem writes through it as a debugger
// does (the kernel gives this process a private copy of the page, switched in whole).
bool write_code(std::uintptr_t address, const void* bytes, std::size_t length) {
  const int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok =
      pwrite(fd, bytes, length, static_cast<off_t>(address)) == static_cast<ssize_t>(length);
  close(fd);
  return ok;
}

}  // namespace

std::size_t route_vdso_calls_to_kernel() {
  if (!patched().empty()) return patched().size();
  void* vdso = dlopen("linux-vdso.so.1", RTLD_NOLOAD | RTLD_NOW);
  if (vdso == nullptr) {
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: this process has no vDSO to route.");
  }
  for (const VdsoFunction& function : kVdsoFunctions) {
    void* address = dlsym(vdso, function.symbol);
    if (address == nullptr) continue;
    PatchedFunction entry{reinterpret_cast<std::uintptr_t>(address), {}};
    std::memcpy(entry.original, address, kPatchLength);
    const std::uint8_t code[kPatchLength] = {0xb8,
                                             static_cast<std::uint8_t>(function.number & 0xff),
                                             static_cast<std::uint8_t>(function.number >> 8),
                                             0x00,
                                             0x00,
                                             0xff,
                                             0xd0,
                                             0xc3};
    site_registry().add(entry.entry + kCallOffset);
    if (write_code(entry.entry, code, sizeof code)) patched().push_back(entry);
  }
  dlclose(vdso);
  if (patched().empty()) {
    throw Error(ErrorCode::unsupported,
                "zpoline: Options::route_vdso: the vDSO's functions could not be rewritten "
                "(/proc/self/mem is not writable here).");
  }
  return patched().size();
}

void restore_vdso_calls() noexcept {
  for (const PatchedFunction& entry : patched()) {
    write_code(entry.entry, entry.original, kPatchLength);
  }
  patched().clear();
}

}  // namespace zpoline::detail
