// zpoline/format.hpp: a system call as strace prints it:
//   openat(AT_FDCWD, "/etc/hostname", O_RDONLY|O_CLOEXEC) = 3
//   read(3, "abc\n", 4096) = 4
//   openat(AT_FDCWD, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory)
// Arguments are printed by kind (zpoline/syscalls.hpp), with names for the common flag families,
// and decoded structures for the calls that programs make most. Memory the call points to is read
// fault-safely: a bad pointer prints as its address. Buffers the call fills are printed from the
// result, so format after the call.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "zpoline/syscall.hpp"
#include "zpoline/version.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

struct FormatOptions {
  // Strings and buffers longer than this are cut, with `...` after the closing quote (strace -s).
  std::size_t string_limit = 32;
  // Whose memory the arguments point into: 0 for this process (read fault-safely, as
  // zpoline::read_memory does); another process's id to read it with process_vm_readv, for a
  // tracer (ptrace) that formats the calls of the process it traces. Needs the right to read
  // that process's memory (same user and ptrace access, as for /proc/PID/mem).
  int memory_of_pid = 0;
  // strace -y: file descriptors, as arguments and as the results of calls that make one (open,
  // openat, socket, accept, dup, pipe...), followed by what they name: `3</etc/passwd>`,
  // `4<socket:[1234]>`, `5<pipe:[99]>` (the link /proc/PID/fd/N, PID memory_of_pid or this
  // process); AT_FDCWD by the working directory, `AT_FDCWD</home/me>`, as strace 6.1 does. A
  // descriptor that names nothing prints bare. Descriptor arguments are named as they were
  // when the call was made if a CallEntry (below) is given, else when format() runs, after the
  // call: then close's descriptor is gone (`close(3)`, where strace prints
  // `close(3</etc/passwd>)`) and dup2's target names the new file. With memory_of_pid the links
  // are that process's, which takes the same access as /proc/PID/fd.
  bool decode_fds = false;
};

// What a call's arguments named or pointed to when it was made, for the parts of strace's text
// that the call itself changes: strace reads them at the call's entry, format() runs after it.
// Taken by capture_entry() just before the call and given to format() after it:
//   - with decode_fds, what each descriptor argument named (close(3</etc/passwd>): after the
//     call 3 is closed; dup2(4, 1<old file>): after it 1 names the new one);
//   - a value-result length as the caller passed it: `[28 => 16]` (accept, accept4,
//     getsockname, getpeername, recvfrom, getsockopt; recvmsg's `msg_namelen=16 => 0`);
//   - ppoll's timeout, which the kernel overwrites with the time left.
// Without one, format() reads all of it after the call (and prints `[16]`, bare descriptors).
struct CallEntry {
  std::vector<std::pair<int, std::string>> fd_targets;  // descriptor, `<target>` or empty
  std::optional<int> length;
  std::optional<std::array<long, 2>> timeout;  // tv_sec, tv_nsec
};

CallEntry capture_entry(long number, const std::array<long, 6>& args,
                        const FormatOptions& options = {});
CallEntry capture_entry(const Syscall& call, const FormatOptions& options = {});

// `name(arguments) = result`; a result of nullopt (the call does not return: exit, exit_group,
// a successful execve) prints `= ?`.
std::string format(const Syscall& call, std::optional<long> result,
                   const FormatOptions& options = {});
// The same for a call given by number and argument registers (rdi, rsi, rdx, r10, r8, r9).
std::string format(long number, const std::array<long, 6>& args, std::optional<long> result,
                   const FormatOptions& options = {});

// The same with what capture_entry() read before the call.
std::string format(long number, const std::array<long, 6>& args, std::optional<long> result,
                   const FormatOptions& options, const CallEntry& entry);
std::string format(const Syscall& call, std::optional<long> result, const FormatOptions& options,
                   const CallEntry& entry);

// `-1 ENOENT (No such file or directory)` for -ENOENT.
std::string format_error(long result);

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
