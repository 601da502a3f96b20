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
#include <sys/syscall.h>
#include <unistd.h>

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

namespace {

zptrace::Settings settings;
zptrace::SharedState* shared = nullptr;
zpoline::FormatOptions format_options;
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
std::string added_names;

// Not cached: a vfork child would leave its id in its parent's thread-local memory.
int current_tid() { return static_cast<int>(syscall(SYS_gettid)); }

void emit(int tid, std::string& line) {
  line += '\n';
  const bool per_thread = settings.per_thread && !settings.output_is_stderr;
  int& fd = per_thread ? thread_output : process_output;
  int& owner = per_thread ? thread_output_tid : process_output_pid;
  const int self = per_thread ? tid : static_cast<int>(syscall(SYS_getpid));
  if (owner != self) {
    fd = -1;
    owner = self;
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (fd < 0) fd = zptrace::open_output(settings, tid);
    if (fd < 0) return;
    if (write(fd, line.data(), line.size()) >= 0 || errno != EBADF) return;
    fd = -1;  // the program closed it: open the output again
  }
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
    const std::string_view value(*text);
    const std::size_t equals = value.find('=');
    if (equals == std::string_view::npos) continue;
    const std::string name(value.substr(0, equals));
    if (name.rfind("ZPTRACE_", 0) == 0 || ("," + added_names + ",").find("," + name + ",") !=
                                              std::string::npos) {
      ++added;
    }
  }
  return added;
}

// `/* N vars */` becomes `/* N-added vars */`.
void hide_added_variables(std::string& text, long added) {
  if (added == 0) return;
  const std::size_t end = text.rfind(" vars */");
  if (end == std::string::npos) return;
  std::size_t begin = end;
  while (begin > 0 && text[begin - 1] >= '0' && text[begin - 1] <= '9') --begin;
  if (begin == end) return;
  const long shown = std::strtol(text.c_str() + begin, nullptr, 10) - added;
  text.replace(begin, end - begin, std::to_string(shown < 0 ? 0 : shown));
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

void print(int tid, const timespec& when, std::string_view call, long nanoseconds) {
  std::string line = zptrace::line_leader(settings, tid, several_traced(), when);
  zptrace::append_call(line, call);
  if (settings.call_times && nanoseconds >= 0) zptrace::append_call_time(line, nanoseconds);
  emit(tid, line);
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

bool is_exec(long number) { return number == SYS_execve || number == SYS_execveat; }
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

long forward_exec(zpoline::Syscall& call, int tid, const timespec& when, bool show) {
  const long number = call.number();
  std::string text;
  zptrace::ExecSlot* slot = nullptr;
  if (show) {
    text = zpoline::format(call, std::nullopt, format_options);
    const int envp_argument = number == SYS_execve ? 2 : 3;
    hide_added_variables(text, added_variables(call.arg(envp_argument)));
    if (text.size() > 4 && text.compare(text.size() - 4, 4, " = ?") == 0) text.resize(text.size() - 4);
    slot = leave_exec_text(tid, text);
  }
  count(number, 0, 0);
  const long start = zptrace::monotonic_ns();
  const long result = call.forward();
  // Only a failed exec comes back here.
  const long elapsed = zptrace::monotonic_ns() - start;
  if (slot != nullptr) slot->tid.store(0, std::memory_order_release);
  if (show) print(tid, when, text + " = " + zpoline::format_error(result), elapsed);
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
  format_options.string_limit = settings.string_limit;
  format_options.decode_fds = settings.decode_fds;
  return nullptr;
}

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  const long number = call.number();
  const int tid = current_tid();
  // Without -f only the command's first thread is traced, as strace does.
  const bool traced = settings.follow || tid == root_pid;
  if (!traced || !settings.traces(number)) return call.forward();
  const bool show = settings.prints_calls();
  const timespec when = show && settings.timestamps != 0 ? zptrace::now_realtime() : timespec{};
  if (is_exec(number)) return forward_exec(call, tid, when, show);
  if (number == SYS_exit || number == SYS_exit_group) {
    // They do not return: printed first, as strace does (`= ?`).
    if (show) print(tid, when, zpoline::format(call, std::nullopt, format_options), -1);
    count(number, 0, 0);
    return call.forward();
  }
  if (is_fork(number) && is_vfork(call)) {
    count(number, 0, 0);
    return call.forward();
  }
  const long start = zptrace::monotonic_ns();
  const long result = call.forward();
  const long elapsed = zptrace::monotonic_ns() - start;
  // strace shows the call in the parent only: a fork child (result 0) comes back here too.
  if (is_fork(number) && result == 0) return result;
  count(number, result, elapsed);
  if (show) print(tid, when, zpoline::format(call, result, format_options), elapsed);
  return result;
}
