#include "trampoline/trampoline.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "dispatch/frame.hpp"
#include "platform/cpu.hpp"
#include "platform/sanitizers.hpp"
#include "trampoline/fault_redirect.hpp"
#include "trampoline/sled.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline::detail {
namespace {

bool mapped = false;
std::uintptr_t relay_base = 0;

// Where the heap (brk) starts: field 47 of /proc/self/stat (Linux 3.5+), else the current break.
// Read with plain system calls, into a buffer on the stack.
std::uintptr_t heap_start() {
  const std::uintptr_t current_break = static_cast<std::uintptr_t>(syscall(SYS_brk, 0));
  const int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return current_break;
  char text[1024];
  const ssize_t length = read(fd, text, sizeof text - 1);
  close(fd);
  if (length <= 0) return current_break;
  text[length] = '\0';
  // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
  const char* field = std::strrchr(text, ')');
  if (field == nullptr) return current_break;
  for (int number = 2; number < 47; ++number) {
    field = std::strchr(field, ' ');
    if (field == nullptr) return current_break;
    ++field;
  }
  char* end = nullptr;
  const unsigned long value = std::strtoul(field, &end, 10);
  return end != field && value != 0 ? value : current_break;
}

// Maps the relay's two pages at the first free place of `candidates` and says which in
// `placement`; nullptr with errno set (EEXIST: every place is taken) otherwise.
void* map_relay(const std::vector<RelayPlacement>& candidates, RelayPlacement& placement) {
  for (const RelayPlacement candidate : candidates) {
    void* wanted = reinterpret_cast<void*>(candidate.base());
    void* relay = mmap(wanted, kRelaySize, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (relay == wanted) {
      forget_stale_poison(relay, kRelaySize);  // new pages (platform/sanitizers.hpp)
      placement = candidate;
      return relay;
    }
    if (relay != MAP_FAILED) {
      munmap(relay, kRelaySize);  // a kernel that took the address as a hint
      errno = EEXIST;
      continue;
    }
    if (errno != EEXIST) return nullptr;
  }
  errno = EEXIST;
  return nullptr;
}

std::string first_line(const char* path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

bool has_effective_capability(int capability) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  return (data[capability / 32].effective & (1u << (capability % 32))) != 0;
}

[[noreturn]] void throw_refused(int error) {
  std::string message = "zpoline: the kernel refused to map the trampoline at address 0 (";
  message += std::strerror(error);
  message += "). ";
  const std::string min_addr = first_line("/proc/sys/vm/mmap_min_addr");
  message += "vm.mmap_min_addr is " + (min_addr.empty() ? std::string("unknown") : min_addr);
  message += "; set it to 0 (sysctl -w vm.mmap_min_addr=0, or in /etc/sysctl.d/) to allow it";
  if (!has_effective_capability(CAP_SYS_RAWIO)) {
    message += ", or run with CAP_SYS_RAWIO (this process does not have it)";
  }
  message += ".";
  if (first_line("/sys/fs/selinux/enforce") == "1") {
    message +=
        " SELinux is enforcing: its policy must also allow it (boolean mmap_low_allowed: "
        "setsebool -P mmap_low_allowed 1).";
  }
  throw Error(ErrorCode::page_zero_refused, message);
}

}  // namespace

void prepare_entry() {
  // The RFLAGS bits for which the stub restores the flags with popfq (entry_stub.S): TF, DF and
  // AC, or every bit where SAHF does not work in 64-bit mode.
  constexpr std::uint32_t kTrapDirectionAlignmentFlags = (1u << 8) | (1u << 10) | (1u << 18);
  zpoline_detail_popf_flags = has_lahf_sahf() ? kTrapDirectionAlignmentFlags : ~0u;
  install_fault_redirect();
}

void map_trampoline() {
  if (mapped) return;
  // Allocated before page 0 is reserved: a bad_alloc here leaves nothing mapped.
  const std::vector<RelayPlacement> relay_candidates = relay_placements_to_try(heap_start());
  void* page = mmap(nullptr, kSledSize, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (page == MAP_FAILED) {
    if (errno == EEXIST) {
      throw Error(ErrorCode::page_zero_in_use,
                  "zpoline: address 0 is already mapped in this process (another syscall hooking "
                  "library, or a program that maps page 0 itself); the trampoline cannot be "
                  "placed there.");
    }
    throw_refused(errno);
  }
  if (page != nullptr) {
    // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a hint and may map elsewhere.
    munmap(page, kSledSize);
    throw_refused(EPERM);
  }
  RelayPlacement placement{};
  void* relay = map_relay(relay_candidates, placement);
  if (relay == nullptr) {
    const int error = errno;
    munmap(page, kSledSize);
    if (error != EEXIST) {
      throw Error(ErrorCode::page_zero_refused,
                  std::string("zpoline: the kernel refused to map the trampoline's relay: ") +
                      std::strerror(error));
    }
    char message[256];
    std::snprintf(message, sizeof message,
                  "zpoline: the trampoline's relay needs two free pages at one of %zu places "
                  "below 1 GiB (from %#lx to %#lx); all of them are already mapped in this "
                  "process.",
                  relay_placements().size(),
                  static_cast<unsigned long>(relay_placements().back().base()),
                  static_cast<unsigned long>(relay_placements().front().base() + kRelaySize));
    throw Error(ErrorCode::page_zero_in_use, message);
  }
  // The sled is built in an ordinary page and then moved to address 0 (writing through a null
  // pointer would be undefined behaviour, even where the page is mapped). The reservation at 0
  // above told whether the kernel allows it; mremap replaces it.
  void* staging =
      mmap(nullptr, kSledSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (staging != MAP_FAILED) forget_stale_poison(staging, kSledSize);
  if (staging == MAP_FAILED) {
    const int error = errno;
    munmap(page, kSledSize);
    munmap(relay, kRelaySize);
    throw Error(ErrorCode::page_zero_refused,
                std::string("zpoline: no memory for the trampoline: ") + std::strerror(error));
  }
  build_sled(std::span<std::uint8_t, kSledSize>(static_cast<std::uint8_t*>(staging), kSledSize),
             placement);
  build_relay(std::span<std::uint8_t, kRelaySize>(static_cast<std::uint8_t*>(relay), kRelaySize),
              placement, reinterpret_cast<std::uintptr_t>(&zpoline_detail_entry));
  // PROT_EXEC alone is execute-only on CPUs with protection keys (the kernel assigns its
  // execute-only key), read+execute elsewhere. The sled and relay read no data, so both work.
  const bool executable =
      mprotect(staging, kSledSize, PROT_EXEC) == 0 && mprotect(relay, kRelaySize, PROT_EXEC) == 0;
  const bool moved = executable && mremap(staging, kSledSize, kSledSize,
                                          MREMAP_MAYMOVE | MREMAP_FIXED, page) == page;
  if (!moved) {
    const int error = errno;
    munmap(staging, kSledSize);
    munmap(page, kSledSize);
    munmap(relay, kRelaySize);
    throw Error(ErrorCode::page_zero_refused,
                std::string("zpoline: could not make the trampoline at address 0 executable: ") +
                    std::strerror(error) +
                    " (a security policy may forbid executable anonymous memory).");
  }
  relay_base = placement.base();
  mapped = true;
}

bool trampoline_is_mapped() noexcept {
  return mapped;
}

std::uintptr_t trampoline_relay_base() noexcept {
  return relay_base;
}

}  // namespace zpoline::detail
