// libzpoline-hook: what a hook library links instead of libzpoline (zpoline/hook_library.hpp).
// Syscall's member functions reach the host's call through the table the host passes to
// zpoline_hook_connect(); fault-safe memory reads use this namespace's own (never rewritten)
// libc. Built with hidden visibility: only the ABI symbols declared in the header are exported.
#include <sys/uio.h>
#include <unistd.h>

#include "platform/memory.hpp"
#include "zpoline/hook_library.hpp"
#include "zpoline/syscalls.hpp"

namespace {
const zpoline_hook_host* host = nullptr;

// libc's typed wrappers, not the variadic syscall(): that reads every argument as a long, and an
// int passed to it leaves the upper half of its slot undefined. clang stored the flags argument
// (passed on the stack) as a 4-byte 0; the upper half held stack leftovers, and the kernel
// refused the read with EINVAL.
using Transfer = ssize_t (*)(pid_t, const iovec*, unsigned long, const iovec*, unsigned long,
                             unsigned long);

bool transfer(Transfer call, void* local, const void* remote, std::size_t size, pid_t pid = 0) {
  const iovec local_iov{local, size};
  const iovec remote_iov{const_cast<void*>(remote), size};
  return call(pid != 0 ? pid : getpid(), &local_iov, 1, &remote_iov, 1, 0) ==
         static_cast<ssize_t>(size);
}
}  // namespace

extern "C" {
const std::uint32_t zpoline_hook_abi_version = zpoline::hook_abi_version;

void zpoline_hook_connect(const zpoline_hook_host* table) noexcept {
  host = table;
}
}

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

long Syscall::number() const noexcept {
  return host->number(this);
}
std::string_view Syscall::name() const noexcept {
  return syscall_name(number());
}
long Syscall::arg(int i) const noexcept {
  return host->arg(this, i);
}
void Syscall::set_arg(int i, long value) noexcept {
  host->set_arg(this, i, value);
}
std::uintptr_t Syscall::return_address() const noexcept {
  return host->return_address(this);
}
long Syscall::forward() {
  return host->forward(this);
}

}  // namespace ZPOLINE_ABI_NAMESPACE

namespace detail {

bool safe_read(void* destination, const void* source, std::size_t size) noexcept {
  return size == 0 || transfer(process_vm_readv, destination, source, size);
}

bool safe_read_from(int pid, void* destination, const void* source, std::size_t size) noexcept {
  return size == 0 || transfer(process_vm_readv, destination, source, size, pid);
}

long safe_readlink(const char* path, char* buffer, std::size_t size) noexcept {
  return readlink(path, buffer, size);
}

bool safe_write(void* destination, const void* source, std::size_t size) noexcept {
  return size == 0 || transfer(process_vm_writev, const_cast<void*>(source), destination, size);
}

}  // namespace detail
}  // namespace zpoline
