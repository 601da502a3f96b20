// zpoline/syscall_info.hpp: the types that describe a system call and its arguments, as the
// table in zpoline/syscalls.hpp gives them for every x86-64 system call. Header-only, constexpr.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "zpoline/version.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

// What an argument is, which says how to read and print it.
enum class ArgKind : std::uint8_t {
  integer,           // a signed number
  unsigned_integer,  // an unsigned number
  hex,               // a number best read in hexadecimal (masks, keys, opaque cookies)
  fd,                // a file descriptor
  dirfd,             // a directory file descriptor for *at() calls; AT_FDCWD means the cwd
  path,              // a NUL-terminated file name the call reads
  string,            // another NUL-terminated string the call reads
  in_buffer,         // bytes the call reads; their count is argument size_argument
  out_buffer,        // bytes the call writes; the result (or argument size_argument) says how many
  string_array,      // a NULL-terminated array of strings (execve's argv, envp)
  flags,             // bits or a value of the family `values`
  mode,              // file permission bits (umode_t)
  pid,               // a process or thread id
  id,                // a user or group id
  signal,            // a signal number
  size,              // a byte or element count
  offset,            // a file offset
  address,           // an address in the caller's memory that is not dereferenced (mmap, brk)
  pointer,           // a pointer to memory the call reads or writes (type says what)
  structure,         // a pointer to a struct (type names it)
};

// The family of names a flags argument (or the value of another argument) is printed with.
enum class ValueSet : std::uint8_t {
  none,
  open_flags,       // O_RDONLY|O_CLOEXEC...
  at_flags,         // AT_EMPTY_PATH|AT_SYMLINK_NOFOLLOW...
  mmap_prot,        // PROT_READ|PROT_WRITE...
  mmap_flags,       // MAP_PRIVATE|MAP_ANONYMOUS...
  clone_flags,      // CLONE_VM|...|SIGCHLD
  socket_domain,    // AF_INET...
  socket_type,      // SOCK_STREAM|SOCK_CLOEXEC...
  fcntl_command,    // F_GETFL...
  access_mode,      // F_OK, R_OK|W_OK...
  madvise_advice,   // MADV_DONTNEED...
  futex_op,         // FUTEX_WAIT_BITSET|FUTEX_PRIVATE_FLAG...
  sigprocmask_how,  // SIG_BLOCK...
  lseek_whence,     // SEEK_SET...
  prctl_option,     // PR_SET_NAME...
  arch_prctl_code,  // ARCH_SET_FS...
  wait_options,     // WNOHANG|__WALL...
  mremap_flags,     // MREMAP_MAYMOVE...
  clock_id,         // CLOCK_MONOTONIC...
  rlimit_resource,  // RLIMIT_NOFILE...
  fd_flags,         // O_CLOEXEC|O_NONBLOCK for pipe2, dup3, eventfd2...
  msg_flags,        // MSG_DONTWAIT...
  signal_flags,     // SA_RESTART... (inside struct sigaction)
};

// One argument of a system call.
struct ArgInfo {
  std::string_view name;  // as in the man page (openat: dirfd, pathname, flags, mode)
  std::string_view type;  // the kernel's C type, without __user
  ArgKind kind = ArgKind::integer;
  ValueSet values = ValueSet::none;
  std::int8_t size_argument = -1;  // for in_buffer/out_buffer: the argument holding the size
  bool output = false;             // the kernel writes through it: printed after the call
};

// One system call: number, name and arguments.
struct SyscallInfo {
  long number = -1;
  std::string_view name;
  std::string_view since;  // kernel version that added it, for those newer than 6.1; else empty
  std::uint8_t argument_count = 0;
  ArgInfo arguments[6] = {};
};

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
