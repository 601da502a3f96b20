// strace's classes of system calls for -e trace=%file, %desc, ...: which calls each holds. %file
// and %desc follow from the argument kinds of the system call table (a path, a descriptor);
// the others are lists.
#pragma once

#include <algorithm>
#include <bitset>
#include <initializer_list>
#include <string_view>

#include "protocol.hpp"
#include "zpoline/syscalls.hpp"

namespace zptrace {

inline bool has_argument_kind(const zpoline::SyscallInfo& info,
                              std::initializer_list<zpoline::ArgKind> kinds) {
  for (int i = 0; i < info.argument_count; ++i) {
    if (std::find(kinds.begin(), kinds.end(), info.arguments[i].kind) != kinds.end()) return true;
  }
  return false;
}

inline bool named(const zpoline::SyscallInfo& info, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), info.name) != names.end();
}

// False for a class zptrace does not know.
inline bool add_class(std::string_view name, std::bitset<kSyscallSlots>& set) {
  using zpoline::ArgKind;
  auto member = [&](const zpoline::SyscallInfo& info) -> int {
    if (name == "file") return has_argument_kind(info, {ArgKind::path});
    if (name == "desc") {
      return has_argument_kind(info, {ArgKind::fd, ArgKind::dirfd}) ||
             named(info, {"open",           "creat",
                          "pipe",           "pipe2",
                          "socket",         "socketpair",
                          "eventfd",        "eventfd2",
                          "epoll_create",   "epoll_create1",
                          "inotify_init",   "inotify_init1",
                          "memfd_create",   "signalfd",
                          "signalfd4",      "timerfd_create",
                          "fanotify_init",  "perf_event_open",
                          "userfaultfd",    "pidfd_open",
                          "io_uring_setup", "fsopen",
                          "memfd_secret",   "select",
                          "pselect6",       "poll",
                          "ppoll",          "mmap"});
    }
    if (name == "network") {
      return named(info, {"socket", "socketpair", "bind", "connect", "listen", "accept", "accept4",
                          "getsockname", "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg",
                          "sendmmsg", "recvmmsg", "shutdown", "setsockopt", "getsockopt"});
    }
    if (name == "process") {
      return named(info,
                   {"clone", "clone3", "fork", "vfork", "execve", "execveat", "exit", "exit_group",
                    "wait4", "waitid", "kill", "tkill", "tgkill", "rt_sigqueueinfo",
                    "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal", "unshare", "setns"});
    }
    if (name == "signal") {
      return named(info, {"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
                          "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
                          "rt_sigsuspend", "sigaltstack", "kill", "tkill", "tgkill", "pause",
                          "alarm", "signalfd", "signalfd4", "pidfd_send_signal"});
    }
    if (name == "memory") {
      return named(info, {"brk",
                          "mmap",
                          "munmap",
                          "mprotect",
                          "mremap",
                          "madvise",
                          "mlock",
                          "mlock2",
                          "munlock",
                          "mlockall",
                          "munlockall",
                          "mincore",
                          "msync",
                          "remap_file_pages",
                          "mbind",
                          "set_mempolicy",
                          "get_mempolicy",
                          "migrate_pages",
                          "move_pages",
                          "pkey_mprotect",
                          "process_madvise",
                          "shmat",
                          "shmdt",
                          "mseal",
                          "map_shadow_stack"});
    }
    if (name == "ipc") {
      return named(info, {"msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semctl",
                          "semtimedop", "shmget", "shmat", "shmctl", "shmdt"});
    }
    return -1;
  };
  for (const zpoline::SyscallInfo* info = zpoline::syscalls_begin();
       info != zpoline::syscalls_end(); ++info) {
    const int is_member = member(*info);
    if (is_member < 0) return false;
    if (is_member != 0 && static_cast<std::size_t>(info->number) < kSyscallSlots) {
      set.set(static_cast<std::size_t>(info->number));
    }
  }
  return true;
}

}  // namespace zptrace
