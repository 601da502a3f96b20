// Access to application memory that may be unmapped: a bad pointer reads or writes as a failure,
// never as a crash. Uses process_vm_readv/writev on the own process (the kernel checks the
// addresses), through raw system calls that the hook never sees.
#pragma once

#include <cstddef>

namespace zpoline::detail {

__attribute__((target("general-regs-only"))) bool safe_read(void* destination, const void* source,
                                                            std::size_t size) noexcept;
bool safe_write(void* destination, const void* source, std::size_t size) noexcept;
// The same read from another process's memory (process_vm_readv on pid).
bool safe_read_from(int pid, void* destination, const void* source, std::size_t size) noexcept;
// readlink(2), made where the hook does not see it: the length, or a negative error.
long safe_readlink(const char* path, char* buffer, std::size_t size) noexcept;

}  // namespace zpoline::detail
