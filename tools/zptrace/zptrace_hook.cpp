// libzptrace-hook.so: the hook library zptrace loads into every traced process (through
// libzpoline-preload.so and ZPOLINE_HOOK). It prints each system call the process makes after the
// preload shim's install, strace's way, and counts them for -c in the file it shares with zptrace.
// Everything it needs comes from the environment zptrace set (protocol.hpp).
//
// The calls of this library itself (writing the trace, reading the clock) are not hooked: they
// are made from inside the hook. So the trace never shows them, and they reach no other hook.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "protocol.hpp"
#include "trace_output.hpp"
#include "zpoline/format.hpp"
#include "zpoline/hook_library.hpp"
#include "zpoline/memory.hpp"
#include "zpoline/syscalls.hpp"

namespace {

// The hook outlives every static destructor (the program's last calls, exit_group among them,
// come after them): the state it reads is never destroyed.
zptrace::Settings& settings = *new zptrace::Settings;
zptrace::SharedState* shared = nullptr;
zpoline::FormatOptions format_options;
// This process's id, for the formatter's reads of the program's memory (memory_of_pid, which
// saves it a getpid per read): set at init and in a fork child. A vfork child, which shares this
// memory with its parent, reads with 0 (its own id looked up each time).
int own_pid = 0;

int root_pid = 0;
// The -o file or zptrace's standard error: one descriptor per process (a fork child shares its
// parent's, which appends to the same file). Each is kept with the id of its owner: a vfork child
// runs on its parent's memory, and what it opens is not its parent's.
int process_output = -1;
int process_output_pid = 0;
// With -ff, FILE.TID: one descriptor per thread.
thread_local int thread_output = -1;
thread_local int thread_output_tid = 0;
// Names of the variables zptrace added to the environment, besides ZPTRACE_*: left out of the
// `/* N vars */` count of execve lines, which then shows the environment the user gave.
std::string& added_names = *new std::string;

// The thread's id, read once per thread. A vfork child runs on its parent's thread-local memory:
// after a vfork the id is read again until the parent is back (vfork_pending).
thread_local int cached_tid = 0;
thread_local bool vfork_pending = false;
// The thread's slot in the shared file (protocol.hpp: BufferSlot), claimed at its first line.
thread_local zptrace::BufferSlot* buffer = nullptr;

struct Caller {
  int tid;
  bool vfork_child;  // writes directly: the buffer of this thread-local memory is its parent's
};

Caller current_caller() {
  if (cached_tid == 0) cached_tid = static_cast<int>(syscall(SYS_gettid));
  if (!vfork_pending) return {cached_tid, false};
  const int tid = static_cast<int>(syscall(SYS_gettid));
  if (tid == cached_tid) {
    vfork_pending = false;
    return {tid, false};
  }
  return {tid, true};
}

zpoline::FormatOptions options_for(const Caller& caller) {
  zpoline::FormatOptions options = format_options;
  options.memory_of_pid = caller.vfork_child ? 0 : own_pid;
  return options;
}

int output_descriptor(int tid) {
  const bool per_thread = settings.per_thread && !settings.output_is_stderr;
  int& fd = per_thread ? thread_output : process_output;
  int& owner = per_thread ? thread_output_tid : process_output_pid;
  const int self = per_thread ? tid : static_cast<int>(syscall(SYS_getpid));
  if (owner != self) {
    fd = -1;
    owner = self;
  }
  if (fd < 0) fd = zptrace::open_output(settings, tid);
  return fd;
}

void write_out(int tid, const char* data, std::size_t size) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int fd = output_descriptor(tid);
    if (fd < 0) return;
    if (zptrace::write_lines(fd, data, size) >= 0 || errno != EBADF) return;
    // The program closed it: open the output again.
    if (settings.per_thread && !settings.output_is_stderr) {
      thread_output = -1;
    } else {
      process_output = -1;
    }
  }
}

// The thread's buffered lines, written out. `busy` tells zptrace, should the thread stop for a
// signal in here, to leave the slot alone.
void flush(int tid) {
  zptrace::BufferSlot* slot = buffer;
  if (slot == nullptr) return;
  slot->busy.store(1, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  const std::uint32_t length = slot->length.load(std::memory_order_relaxed);
  const std::uint32_t flushed = slot->flushed.load(std::memory_order_relaxed);
  if (length > flushed) write_out(tid, slot->data + flushed, length - flushed);
  slot->length.store(0, std::memory_order_relaxed);
  slot->flushed.store(0, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  slot->busy.store(0, std::memory_order_relaxed);
}

zptrace::BufferSlot* claim_buffer(int tid) {
  if (shared == nullptr) return nullptr;
  for (zptrace::BufferSlot& slot : shared->buffers) {
    std::int32_t free = 0;
    if (slot.tid.load(std::memory_order_relaxed) == 0 &&
        slot.tid.compare_exchange_strong(free, tid)) {
      slot.length.store(0, std::memory_order_relaxed);
      slot.flushed.store(0, std::memory_order_relaxed);
      return &slot;
    }
  }
  return nullptr;  // more live threads than slots: this one writes each line directly
}

void emit(const Caller& caller, std::string& line) {
  line += '\n';
  if (!caller.vfork_child && buffer == nullptr) buffer = claim_buffer(caller.tid);
  zptrace::BufferSlot* slot = caller.vfork_child ? nullptr : buffer;
  if (slot == nullptr || line.size() > zptrace::kBufferSize) {
    if (!caller.vfork_child) flush(caller.tid);
    write_out(caller.tid, line.data(), line.size());
    return;
  }
  if (slot->length.load(std::memory_order_relaxed) + line.size() > zptrace::kBufferSize) {
    flush(caller.tid);
  }
  slot->busy.store(1, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  const std::uint32_t length = slot->length.load(std::memory_order_relaxed);
  std::memcpy(slot->data + length, line.data(), line.size());
  slot->length.store(length + static_cast<std::uint32_t>(line.size()), std::memory_order_release);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  slot->busy.store(0, std::memory_order_relaxed);
}

bool several_traced() {
  return shared != nullptr && shared->traced_threads.load(std::memory_order_relaxed) > 1;
}

// How many entries of the execve environment at `envp` zptrace added.
long added_variables(long envp) {
  long added = 0;
  for (int i = 0; i < 4096; ++i) {
    long entry = 0;
    if (!zpoline::read_memory(&entry, reinterpret_cast<const void*>(envp + 8L * i), sizeof entry) ||
        entry == 0) {
      break;
    }
    const auto text = zpoline::read_string(reinterpret_cast<const void*>(entry), 256);
    if (!text) continue;
    if (zptrace::added_variable(*text, added_names)) ++added;
  }
  return added;
}

void count(long number, long result, long nanoseconds) {
  if (shared == nullptr || !settings.counts() || number < 0 ||
      static_cast<std::size_t>(number) >= zptrace::kSyscallSlots) {
    return;
  }
  zptrace::SyscallCounter& counter = shared->counters[number];
  counter.calls.fetch_add(1, std::memory_order_relaxed);
  if (result < 0 && result >= -4095) counter.errors.fetch_add(1, std::memory_order_relaxed);
  counter.nanoseconds.fetch_add(static_cast<std::uint64_t>(nanoseconds), std::memory_order_relaxed);
}

void print(const Caller& caller, const timespec& when, std::string_view call, long nanoseconds) {
  std::string line = zptrace::line_leader(settings, caller.tid, several_traced(), when);
  zptrace::append_call(line, call);
  if (settings.call_times && nanoseconds >= 0) zptrace::append_call_time(line, nanoseconds);
  emit(caller, line);
}

// Calls before which the thread's buffered lines are written out: they make, end, replace or wait
// for another task, signal one, or may block for long (so that a hung program's trace is there
// up to the call it hangs in, and lines of several processes in one file keep their order).
bool writes_out_before(long number) {
  switch (number) {
    case SYS_clone:
    case SYS_clone3:
    case SYS_fork:
    case SYS_vfork:
    case SYS_execve:
    case SYS_execveat:
    case SYS_exit:
    case SYS_exit_group:
    case SYS_wait4:
    case SYS_waitid:
    case SYS_kill:
    case SYS_tkill:
    case SYS_tgkill:
    case SYS_rt_sigqueueinfo:
    case SYS_rt_tgsigqueueinfo:
    case SYS_pidfd_send_signal:
    case SYS_futex:
    case SYS_futex_waitv:
    case SYS_poll:
    case SYS_ppoll:
    case SYS_select:
    case SYS_pselect6:
    case SYS_epoll_wait:
    case SYS_epoll_pwait:
    case SYS_epoll_pwait2:
    case SYS_nanosleep:
    case SYS_clock_nanosleep:
    case SYS_pause:
    case SYS_rt_sigsuspend:
    case SYS_rt_sigtimedwait:
    case SYS_accept:
    case SYS_accept4:
    case SYS_connect:
    case SYS_recvfrom:
    case SYS_recvmsg:
    case SYS_recvmmsg:
    case SYS_msgrcv:
    case SYS_semop:
    case SYS_semtimedop:
    case SYS_flock:
    case SYS_io_getevents:
    case SYS_io_uring_enter:
    case SYS_sched_yield:
      return true;
    default:
      return false;
  }
}

// A read from a pipe, a socket or a terminal may block for as long as the other side wants; from
// a regular file or a device such as /dev/zero it does not. What each descriptor is, is kept
// (fstat once) until a call closes, replaces or makes descriptors; a stale entry could only
// change when the buffer is written out, not what it holds.
enum : std::uint8_t { kUnknown = 0, kDoesNotBlock = 1, kMayBlock = 2 };
constexpr int kKnownDescriptors = 1024;
std::atomic<std::uint8_t> descriptor_kinds[kKnownDescriptors];

void forget_descriptor_kinds(long number, const zpoline::Syscall& call, long result) {
  auto forget = [](long fd) {
    if (fd >= 0 && fd < kKnownDescriptors)
      descriptor_kinds[fd].store(kUnknown, std::memory_order_relaxed);
  };
  switch (number) {
    case SYS_close:
      return forget(call.arg(0));
    case SYS_dup2:
    case SYS_dup3:
      return forget(call.arg(1));
    case SYS_close_range:
    case SYS_pipe:
    case SYS_pipe2:
    case SYS_socketpair:
      for (auto& kind : descriptor_kinds) kind.store(kUnknown, std::memory_order_relaxed);
      return;
    default:
      // Any other call that made a descriptor returned its number.
      if (result >= 0 && result < kKnownDescriptors) {
        const zpoline::SyscallInfo* info = zpoline::syscall_info(number);
        if (info != nullptr && info->name.find("open") != std::string_view::npos)
          return forget(result);
        if (number == SYS_socket || number == SYS_accept || number == SYS_accept4 ||
            number == SYS_dup || number == SYS_fcntl || number == SYS_creat ||
            number == SYS_eventfd || number == SYS_eventfd2 || number == SYS_signalfd ||
            number == SYS_signalfd4 || number == SYS_timerfd_create || number == SYS_memfd_create ||
            number == SYS_epoll_create || number == SYS_epoll_create1 ||
            number == SYS_inotify_init || number == SYS_inotify_init1 ||
            number == SYS_userfaultfd || number == SYS_perf_event_open ||
            number == SYS_fanotify_init || number == SYS_io_uring_setup) {
          forget(result);
        }
      }
  }
}

bool may_block_reading(long number, long fd) {
  if (number != SYS_read && number != SYS_readv) return false;
  const bool cached = fd >= 0 && fd < kKnownDescriptors;
  if (cached) {
    const std::uint8_t kind = descriptor_kinds[fd].load(std::memory_order_relaxed);
    if (kind != kUnknown) return kind == kMayBlock;
  }
  struct stat status {};
  if (fstat(static_cast<int>(fd), &status) != 0) return false;
  bool blocks = S_ISFIFO(status.st_mode) || S_ISSOCK(status.st_mode);
  if (S_ISCHR(status.st_mode)) {
    const unsigned device = major(status.st_rdev);
    blocks = device == 4 || device == 5 || (device >= 136 && device <= 143);  // ttys, ptys
  }
  if (cached)
    descriptor_kinds[fd].store(blocks ? kMayBlock : kDoesNotBlock, std::memory_order_relaxed);
  return blocks;
}

// vfork, and clone or clone3 with CLONE_VFORK: the child runs on this thread's stack until it
// execs or exits, and the parent comes back here only then. zptrace, which sees the child made
// (PTRACE_EVENT_VFORK), prints the parent's line then, as strace does, before the child's.
bool is_vfork(const zpoline::Syscall& call) {
  const long number = call.number();
  if (number == SYS_vfork) return true;
  if (number == SYS_clone) return (call.arg(0) & CLONE_VFORK) != 0;
  if (number != SYS_clone3) return false;
  unsigned long flags = 0;
  return zpoline::read_memory(&flags, reinterpret_cast<const void*>(call.arg(0)), sizeof flags) &&
         (flags & CLONE_VFORK) != 0;
}

bool is_exec(long number) {
  return number == SYS_execve || number == SYS_execveat;
}
bool is_fork(long number) {
  return number == SYS_clone || number == SYS_clone3 || number == SYS_fork || number == SYS_vfork;
}

// Keeps the text of an execve line for zptrace, which prints it when the exec happens.
zptrace::ExecSlot* leave_exec_text(int tid, std::string_view text) {
  if (shared == nullptr) return nullptr;
  for (zptrace::ExecSlot& slot : shared->exec_slots) {
    std::int32_t free = 0;
    if (slot.tid.compare_exchange_strong(free, -1)) {
      slot.length = static_cast<std::uint32_t>(std::min(text.size(), zptrace::kExecTextSize));
      std::memcpy(slot.text, text.data(), slot.length);
      slot.tid.store(tid, std::memory_order_release);
      return &slot;
    }
  }
  return nullptr;
}

long forward_exec(zpoline::Syscall& call, const Caller& caller, const timespec& when, bool show) {
  const int tid = caller.tid;
  const long number = call.number();
  std::string text;
  zptrace::ExecSlot* slot = nullptr;
  if (show) {
    text = zpoline::format(call, std::nullopt, options_for(caller));
    const int envp_argument = number == SYS_execve ? 2 : 3;
    zptrace::hide_added_variables(text, added_variables(call.arg(envp_argument)));
    zptrace::drop_unknown_result(text);
    slot = leave_exec_text(tid, zptrace::kExecText + text);
  }
  count(number, 0, 0);
  const long start = zptrace::monotonic_ns();
  const long result = call.forward();
  // Only a failed exec comes back here.
  const long elapsed = zptrace::monotonic_ns() - start;
  if (slot != nullptr) slot->tid.store(0, std::memory_order_release);
  if (show) print(caller, when, text + " = " + zpoline::format_error(result), elapsed);
  if (shared != nullptr && settings.counts() && result < 0) {
    shared->counters[number].errors.fetch_add(1, std::memory_order_relaxed);
  }
  return result;
}

}  // namespace

extern "C" const char* zpoline_hook_init() noexcept {
  const char* encoded = std::getenv(zptrace::kEnvSettings);
  if (encoded == nullptr || !settings.decode(encoded)) {
    return "ZPTRACE_SETTINGS is missing or not zptrace's: run programs under zptrace";
  }
  if (const char* root = std::getenv(zptrace::kEnvRoot)) root_pid = std::atoi(root);
  if (const char* added = std::getenv(zptrace::kEnvAddedNames)) added_names = added;
  if (const char* path = std::getenv(zptrace::kEnvShared)) {
    const int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      void* memory =
          mmap(nullptr, sizeof(zptrace::SharedState), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
      if (memory != MAP_FAILED) shared = static_cast<zptrace::SharedState*>(memory);
    }
  }
  own_pid = static_cast<int>(getpid());
  format_options.string_limit = settings.string_limit;
  format_options.decode_fds = settings.decode_fds;
  return nullptr;
}

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  const long number = call.number();
  const Caller caller = current_caller();
  // Without -f only the command's first thread is traced, as strace does.
  const bool traced = settings.follow || caller.tid == root_pid;
  if (!traced) return call.forward();
  const bool show = settings.prints_calls();
  // Also before calls that -e leaves out: the lines before them must not wait.
  if (show && !caller.vfork_child && buffer != nullptr &&
      (writes_out_before(number) || may_block_reading(number, call.arg(0)))) {
    flush(caller.tid);
  }
  if (!settings.traces(number)) {
    if (!is_fork(number)) return call.forward();
    // Left out by -e, but the new task still needs its own buffer and id.
    if (is_vfork(call)) {
      vfork_pending = true;
      return call.forward();
    }
    const long result = call.forward();
    if (result == 0) {
      cached_tid = 0;
      buffer = nullptr;
      thread_output = -1;
      own_pid = static_cast<int>(syscall(SYS_getpid));
    }
    return result;
  }
  const timespec when = show && settings.timestamps != 0 ? zptrace::now_realtime() : timespec{};
  if (is_exec(number)) return forward_exec(call, caller, when, show);
  if (number == SYS_exit || number == SYS_exit_group) {
    // They do not return: printed first, as strace does (`= ?`), and written out at once.
    if (show) {
      print(caller, when, zpoline::format(call, std::nullopt, options_for(caller)), -1);
      if (!caller.vfork_child) flush(caller.tid);
    }
    // Not counted: strace -c counts a call when it returns, and these do not.
    return call.forward();
  }
  if (is_fork(number) && is_vfork(call)) {
    count(number, 0, 0);
    // The child runs on this thread's memory until it execs or exits; the parent resumes in the
    // program, not here. zptrace prints the parent's line when the child is made, with the
    // arguments as the program gave them (left here: the library may pass the kernel a copy it
    // adjusted, such as clone3's stack).
    std::string text;
    zptrace::ExecSlot* slot = nullptr;
    if (show) {
      text = zpoline::format(call, std::nullopt, options_for(caller));
      zptrace::drop_unknown_result(text);
      slot = leave_exec_text(caller.tid, zptrace::kVforkText + text);
    }
    vfork_pending = true;
    const long result = call.forward();
    // Here with 0 in the child; with an error in the parent when no child was made: then the
    // line is the hook's to print, and the text is taken back.
    if (result < 0) {
      vfork_pending = false;
      if (slot != nullptr) slot->tid.store(0, std::memory_order_release);
      if (show) print(caller, when, text + " = " + zpoline::format_error(result), -1);
    }
    return result;
  }
  // What the call may change (a descriptor it closes, a length it rewrites), read before it.
  const zpoline::FormatOptions options = options_for(caller);
  const zpoline::CallEntry entry =
      show ? zpoline::capture_entry(call, options) : zpoline::CallEntry{};
  const long start = zptrace::monotonic_ns();
  const long result = call.forward();
  const long elapsed = zptrace::monotonic_ns() - start;
  if (is_fork(number) && result == 0) {
    // A fork child (strace shows the call in the parent only): a task of its own from here, with
    // its own slot. A new thread starts in the program, not here.
    cached_tid = 0;
    buffer = nullptr;
    thread_output = -1;
    own_pid = static_cast<int>(syscall(SYS_getpid));
    return result;
  }
  if (show) forget_descriptor_kinds(number, call, result);
  count(number, result, elapsed);
  if (show) print(caller, when, zpoline::format(call, result, options, entry), elapsed);
  return result;
}
