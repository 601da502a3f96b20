// What zptrace (the launcher and ptrace supervisor, zptrace.cpp) and its hook library
// (zptrace_hook.cpp, loaded into every traced process by libzpoline-preload.so) share: the
// environment variables that carry the settings, the hand-off system call, and the layout of the
// shared file both map (the -c counters and the text of pending execve lines).
//
// Who prints what: the supervisor prints while a process is traced with ptrace (the dynamic
// loader's calls up to the preload shim's constructor, a program that never loads the shim,
// signals, exits, execve results); the hook library prints every call made after install.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace zptrace {

// The preload shim's constructor makes this system call (it does not exist: ENOSYS) before
// anything else when ZPTRACE_HANDOFF is set: the supervisor stops tracing that process's system
// calls there, and the hook library takes over once installed. The shim's own work in between is
// not the program's and is shown by neither.
inline constexpr long kHandoffSyscall = 0x5a50;
inline constexpr long kHandoffMagic = 0x7a70747261636521;  // "zptrace!"

// Environment variables (the launcher sets them; the hook library reads them at init).
inline constexpr const char* kEnvSettings = "ZPTRACE_SETTINGS";  // Settings::encode()
inline constexpr const char* kEnvShared = "ZPTRACE_SHARED";      // path of the shared file
inline constexpr const char* kEnvHandoff = "ZPTRACE_HANDOFF";    // read by the preload shim
inline constexpr const char* kEnvRoot = "ZPTRACE_ROOT";          // pid of the traced command
inline constexpr const char* kEnvAddedNames = "ZPTRACE_ADDED";   // variables zptrace added

inline constexpr std::size_t kSyscallSlots = 512;
inline constexpr std::size_t kExecSlots = 64;
inline constexpr std::size_t kExecTextSize = 4096;

struct SyscallCounter {
  std::atomic<std::uint64_t> calls;
  std::atomic<std::uint64_t> errors;
  std::atomic<std::uint64_t> nanoseconds;
};

// The text of an execve line (up to the closing parenthesis) written by the hook before the call:
// the call does not return when it succeeds, and the supervisor, which sees the exec happen,
// prints it with ` = 0`. The same for a vfork, whose parent comes back only after its child has
// exec'd or exited: the supervisor prints it with the child's id when the child is made. tid 0
// marks a free slot.
// The first character of a slot's text says which call it is.
inline constexpr char kExecText = 'E';
inline constexpr char kVforkText = 'V';

struct ExecSlot {
  std::atomic<std::int32_t> tid;
  std::uint32_t length;
  char text[kExecTextSize];
};

// A thread's trace lines, written out in one write() when it fills, before a call that creates,
// ends or waits for another task or may block, and by zptrace when the thread stops for a signal
// or ends (so nothing is lost when a process is killed). tid 0 marks a free slot. The thread
// appends only; `flushed` <= `length`. `busy` is set while the thread changes the slot: zptrace
// leaves a busy slot alone while the thread lives.
inline constexpr std::size_t kBufferSlots = 256;
inline constexpr std::size_t kBufferSize = 32768;

struct BufferSlot {
  std::atomic<std::int32_t> tid;
  std::atomic<std::uint32_t> busy;
  std::atomic<std::uint32_t> length;
  std::atomic<std::uint32_t> flushed;
  char data[kBufferSize];
};

struct SharedState {
  // Threads and processes the supervisor traces now (with -f): strace's [pid N] prefix on standard
  // error depends on it.
  std::atomic<std::int32_t> traced_threads;
  SyscallCounter counters[kSyscallSlots];
  ExecSlot exec_slots[kExecSlots];
  BufferSlot buffers[kBufferSlots];
};

}  // namespace zptrace
