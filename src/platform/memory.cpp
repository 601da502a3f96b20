#include "platform/memory.hpp"

#include <sys/syscall.h>
#include <sys/uio.h>

#include "platform/raw_syscall.hpp"

namespace zpoline::detail {
namespace {

__attribute__((target("general-regs-only"))) bool transfer(long number, void* local,
                                                           const void* remote, std::size_t size,
                                                           long pid = 0) {
  iovec local_iov{local, size};
  iovec remote_iov{const_cast<void*>(remote), size};
  if (pid == 0) pid = zpoline_detail_raw_syscall(SYS_getpid, 0, 0, 0, 0, 0, 0);
  const long done = zpoline_detail_raw_syscall(number, pid, reinterpret_cast<long>(&local_iov), 1,
                                               reinterpret_cast<long>(&remote_iov), 1, 0);
  return done == static_cast<long>(size);
}

}  // namespace

bool safe_read(void* destination, const void* source, std::size_t size) noexcept {
  return size == 0 || transfer(SYS_process_vm_readv, destination, source, size);
}

bool safe_read_from(int pid, void* destination, const void* source, std::size_t size) noexcept {
  return size == 0 || transfer(SYS_process_vm_readv, destination, source, size, pid);
}

long safe_readlink(const char* path, char* buffer, std::size_t size) noexcept {
  return zpoline_detail_raw_syscall(SYS_readlink, reinterpret_cast<long>(path),
                                    reinterpret_cast<long>(buffer), static_cast<long>(size), 0, 0,
                                    0);
}

bool safe_write(void* destination, const void* source, std::size_t size) noexcept {
  return size == 0 || transfer(SYS_process_vm_writev, const_cast<void*>(source), destination, size);
}

}  // namespace zpoline::detail
