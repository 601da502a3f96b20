// zptrace: strace's output for a command and its children, from inside the traced processes.
//
// The command runs with libzpoline-preload.so and libzptrace-hook.so, which print its system
// calls from within (no stop per call). zptrace itself stays attached with ptrace for what only a
// tracer sees, and which costs a stop per event, not per call: the dynamic loader's calls before
// the preload shim's constructor (traced call by call until the shim hands over), programs that
// never load the shim (static ones, or an environment without LD_PRELOAD), delivered signals,
// exits and deaths, and the result of execve.
//
// See --help for the options (strace's, for what is used daily).
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "protocol.hpp"
#include "syscall_classes.hpp"
#include "trace_output.hpp"
#include "zpoline/format.hpp"
#include "zpoline/syscalls.hpp"
#include "zpoline/version.hpp"

#ifndef ZPTRACE_PRELOAD_BUILD
#error "meson passes the paths of the preload shim and the hook library"
#endif

namespace {

constexpr const char* kUsage =
    R"(usage: zptrace [-f|-ff] [-o FILE] [-e EXPR]... [-s SIZE] [-t|-tt|-ttt] [-T] [-y]
               [-c|-C] [-q|-qq] [--] COMMAND [ARG]...

Runs COMMAND and prints its system calls as strace does, from inside the traced processes
(libzpoline): many times strace's speed on programs that make many calls.

  -f           follow forks, vforks and threads; lines get the thread id
  -ff          with -o FILE: one file FILE.TID per thread
  -o FILE      write the trace (and -c's table) to FILE instead of standard error
  -e trace=SET only these system calls: names, %file %desc %network %process %signal
               %memory %ipc, all, none; !SET for all but SET (also -e NAMES)
  -e signal=SET only these signals' --- lines: names or numbers, all, none, !SET
  -s SIZE      strings and buffers up to SIZE bytes (default 32)
  -t -tt -ttt  time of day; with microseconds; seconds since the epoch
  -T           time spent in each call
  -y           descriptors with their paths
  -c           count calls, errors and time per system call; print a table at the end
  -C           like -c, and print the trace too
  -q -qq       no "attached" messages; also no exit lines (+++)
  -h, --help   this text
  -V           version

The exit status is the command's; a command killed by a signal kills zptrace with it.

Not available: -p PID (zptrace works inside the processes it starts, so it cannot attach to a
running one; use strace -p). A set-user-ID program, or one that clears its environment, is still
traced, call by call with ptrace (as strace does: no faster).
)";

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "zptrace: %s\n", message.c_str());
  std::exit(1);
}

// ---- the command line -----------------------------------------------------------------------

int signal_number(std::string_view name) {
  if (!name.empty() &&
      std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::atoi(std::string(name).c_str());
  }
  if (name.rfind("SIG", 0) == 0) name.remove_prefix(3);
  for (int number = 1; number < 32; ++number) {
    const char* abbreviation = sigabbrev_np(number);
    if (abbreviation != nullptr && name == abbreviation) return number;
  }
  return -1;
}

std::vector<std::string_view> split(std::string_view text) {
  std::vector<std::string_view> parts;
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    parts.push_back(text.substr(0, comma));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return parts;
}

void parse_trace_set(std::string_view value, zptrace::Settings& settings) {
  bool negate = false;
  if (!value.empty() && value[0] == '!') {
    negate = true;
    value.remove_prefix(1);
  }
  std::bitset<zptrace::kSyscallSlots> set;
  for (std::string_view name : split(value)) {
    const bool optional = !name.empty() && name[0] == '?';
    if (optional) name.remove_prefix(1);
    if (name == "all") {
      set.set();
    } else if (name == "none") {
    } else if (!name.empty() && name[0] == '%') {
      if (!zptrace::add_class(name.substr(1), set) && !optional) {
        fail("invalid system call class '" + std::string(name) + "'");
      }
    } else if (const zpoline::SyscallInfo* info = zpoline::syscall_info(name)) {
      set.set(static_cast<std::size_t>(info->number));
    } else if (!optional) {
      fail("invalid system call '" + std::string(name) + "'");
    }
  }
  settings.traced = negate ? ~set : set;
}

void parse_signal_set(std::string_view value, zptrace::Settings& settings) {
  bool negate = false;
  if (!value.empty() && value[0] == '!') {
    negate = true;
    value.remove_prefix(1);
  }
  std::bitset<65> set;
  for (std::string_view name : split(value)) {
    if (name == "all") {
      set.set();
    } else if (name == "none") {
    } else {
      const int number = signal_number(name);
      if (number <= 0 || number > 64) fail("invalid signal '" + std::string(name) + "'");
      set.set(static_cast<std::size_t>(number));
    }
  }
  settings.signals = negate ? ~set : set;
}

void parse_expression(std::string_view expression, zptrace::Settings& settings) {
  const std::size_t equals = expression.find('=');
  std::string_view qualifier = "trace";
  std::string_view value = expression;
  if (equals != std::string_view::npos) {
    qualifier = expression.substr(0, equals);
    value = expression.substr(equals + 1);
  }
  if (qualifier == "trace" || qualifier == "t") {
    parse_trace_set(value, settings);
  } else if (qualifier == "signal" || qualifier == "signals" || qualifier == "s") {
    parse_signal_set(value, settings);
  } else {
    fail("-e " + std::string(qualifier) +
         "= is not supported (trace= and signal= are; see --help)");
  }
}

struct CommandLine {
  zptrace::Settings settings;
  std::string output_file;
  std::vector<char*> command;
};

CommandLine parse(int argc, char** argv) {
  CommandLine line;
  zptrace::Settings& settings = line.settings;
  settings.traced.set();
  settings.signals.set();
  int follow = 0;
  int timestamps = 0;
  static const option long_options[] = {{"help", no_argument, nullptr, 'h'},
                                        {"version", no_argument, nullptr, 'V'},
                                        {nullptr, 0, nullptr, 0}};
  opterr = 0;
  for (;;) {
    const int option = getopt_long(argc, argv, "+:fo:e:s:tTycCqhVp:", long_options, nullptr);
    if (option == -1) break;
    switch (option) {
      case 'f':
        ++follow;
        break;
      case 'o':
        line.output_file = optarg;
        break;
      case 'e':
        parse_expression(optarg, settings);
        break;
      case 's': {
        char* end = nullptr;
        errno = 0;
        const long size = std::strtol(optarg, &end, 10);
        if (end == optarg || *end != '\0' || size < 0 || size > (1 << 24) || errno != 0) {
          fail("invalid -s argument: '" + std::string(optarg) + "'");
        }
        settings.string_limit = static_cast<unsigned>(size);
        break;
      }
      case 't':
        ++timestamps;
        break;
      case 'T':
        settings.call_times = true;
        break;
      case 'y':
        settings.decode_fds = true;
        break;
      case 'c':
        settings.summary = true;
        break;
      case 'C':
        settings.also_summary = true;
        break;
      case 'q':
        ++settings.quiet;
        break;
      case 'h':
        std::fputs(kUsage, stdout);
        std::exit(0);
      case 'V':
        std::printf("zptrace (libzpoline) version %s\n", ZPOLINE_VERSION_STRING);
        std::exit(0);
      case 'p':
        fail(
            "-p is not possible: zptrace traces from inside the processes it starts, so it "
            "cannot attach to a running one (use strace -p)");
      case ':':
        fail(std::string("option -") + static_cast<char>(optopt) + " needs an argument");
      default:
        if (optopt != 0)
          fail(std::string("unknown option -") + static_cast<char>(optopt) + " (see --help)");
        fail(std::string("unknown option ") + argv[optind - 1] + " (see --help)");
    }
  }
  if (settings.summary && settings.also_summary) settings.summary = false;
  // As strace: with -o FILE, no "Process N attached" messages.
  if (!line.output_file.empty()) settings.quiet = std::max(settings.quiet, 1);
  settings.follow = follow > 0;
  settings.timestamps = std::min(timestamps, 3);
  settings.quiet = std::min(settings.quiet, 2);
  if (optind >= argc) fail("must have COMMAND to run (see --help)");
  for (int i = optind; i < argc; ++i) line.command.push_back(argv[i]);
  line.command.push_back(nullptr);
  if (!line.output_file.empty()) {
    settings.output_is_stderr = false;
    settings.per_thread = follow > 1;
    char resolved[PATH_MAX];
    // Relative to the directory zptrace started in, whatever directory the command moves to.
    if (line.output_file[0] != '/' && getcwd(resolved, sizeof resolved) != nullptr) {
      line.output_file = std::string(resolved) + "/" + line.output_file;
    }
    settings.output = line.output_file;
  } else {
    settings.output = "/proc/" + std::to_string(getpid()) + "/fd/2";
  }
  return line;
}

// zptrace's standard error as the traced processes reach it: /proc/ZPTRACE/fd/2, opened again by
// each (with O_APPEND), which works for a terminal, a file or a pipe. A socket (a systemd unit's
// journal) cannot be opened that way: then a pipe leads to it, and a thread of zptrace copies.
class StandardErrorRelay {
 public:
  // The path the traced processes open.
  std::string start() {
    const int probe = open("/proc/self/fd/2", O_WRONLY | O_APPEND | O_CLOEXEC);
    if (probe >= 0) {
      close(probe);
      return "/proc/" + std::to_string(getpid()) + "/fd/2";
    }
    int ends[2];
    if (pipe2(ends, O_CLOEXEC) != 0) fail(std::string("pipe2: ") + std::strerror(errno));
    read_end_ = ends[0];
    write_end_ = fcntl(ends[1], F_DUPFD_CLOEXEC, 900);
    if (write_end_ < 0)
      write_end_ = ends[1];
    else
      close(ends[1]);
    copier_ = std::thread([this] {
      char buffer[65536];
      for (;;) {
        const ssize_t got = read(read_end_, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        for (ssize_t done = 0; done < got;) {
          const ssize_t written =
              write(STDERR_FILENO, buffer + done, static_cast<std::size_t>(got - done));
          if (written <= 0) break;
          done += written;
        }
      }
    });
    return "/proc/" + std::to_string(getpid()) + "/fd/" + std::to_string(write_end_);
  }

  // After the last traced process: the copier gets end-of-file once zptrace's end is closed.
  void finish() {
    if (!copier_.joinable()) return;
    close(write_end_);
    copier_.join();
    close(read_end_);
  }

 private:
  int read_end_ = -1;
  int write_end_ = -1;
  std::thread copier_;
};

// ---- files zptrace needs ------------------------------------------------------------------------

bool starts_with_directory(const std::string& path, const std::string& directory) {
  return path.size() > directory.size() && path.compare(0, directory.size(), directory) == 0 &&
         path[directory.size()] == '/';
}

// The build tree's copies when zptrace runs from the build tree, else the installed ones.
std::pair<std::string, std::string> support_libraries() {
  char self[PATH_MAX] = {};
  const ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
  const std::string exe = length > 0 ? std::string(self, static_cast<std::size_t>(length)) : "";
  if (starts_with_directory(exe, ZPTRACE_BUILD_ROOT)) {
    return {ZPTRACE_PRELOAD_BUILD, ZPTRACE_HOOK_BUILD};
  }
  return {ZPTRACE_PRELOAD_INSTALLED, ZPTRACE_HOOK_INSTALLED};
}

// strace looks the command up in PATH itself and execs the file found (so no failed execve
// attempts appear in the trace).
std::string find_command(const char* name) {
  if (std::strchr(name, '/') != nullptr) return name;
  const char* path = std::getenv("PATH");
  std::string_view directories = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    const std::size_t colon = directories.find(':');
    std::string directory(directories.substr(0, colon));
    if (directory.empty()) directory = ".";
    const std::string candidate = directory + "/" + name;
    struct stat status {};
    if (stat(candidate.c_str(), &status) == 0 && S_ISREG(status.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    if (colon == std::string_view::npos) break;
    directories.remove_prefix(colon + 1);
  }
  fail(std::string("Can't stat '") + name + "': No such file or directory");
}

zptrace::SharedState* create_shared_state(std::string& path) {
  const char* directories[] = {"/dev/shm", std::getenv("TMPDIR"), "/tmp"};
  for (const char* directory : directories) {
    if (directory == nullptr) continue;
    std::string candidate = std::string(directory) + "/zptrace.XXXXXX";
    const int fd = mkostemp(candidate.data(), O_CLOEXEC);
    if (fd < 0) continue;
    if (ftruncate(fd, sizeof(zptrace::SharedState)) != 0) {
      close(fd);
      unlink(candidate.c_str());
      continue;
    }
    void* memory =
        mmap(nullptr, sizeof(zptrace::SharedState), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (memory == MAP_FAILED) {
      unlink(candidate.c_str());
      continue;
    }
    path = candidate;
    return static_cast<zptrace::SharedState*>(memory);
  }
  fail("cannot create the file shared with the traced processes (/dev/shm, $TMPDIR, /tmp)");
}

// ---- the supervisor -----------------------------------------------------------------------------

// What the dynamic loader did for the preload shim and its library (Zydis), which the program
// did not ask for: left out of the trace (tools/zptrace/README in docs/ZPTRACE.md).
struct ShimLoading {
  std::vector<int> descriptors;
  std::vector<std::pair<unsigned long, unsigned long>> ranges;  // [begin, end) mapped from them
};

struct Tracee {
  bool calls_traced = true;  // stops at each system call (loader phase, no shim)
  bool in_syscall = false;
  bool swallow_exec_exit = false;
  bool started = false;      // its first stop (the SIGSTOP of a new tracee) was handled
  bool own_sigcont = false;  // the SIGCONT zptrace sent the command to start it, not shown
  long number = -1;
  std::array<long, 6> args{};
  std::string entry_text;    // for execve: its arguments, read before the exec replaces them
  zpoline::CallEntry entry;  // what the call may change, read at its entry (format.hpp)
  timespec entry_time{};
  long entry_ns = 0;
  std::shared_ptr<ShimLoading> shim = std::make_shared<ShimLoading>();
};

class Supervisor {
 public:
  Supervisor(zptrace::Settings settings, zptrace::SharedState* shared, int root)
      : settings_(std::move(settings)), shared_(shared), root_(root) {
    format_options_.string_limit = settings_.string_limit;
    format_options_.decode_fds = settings_.decode_fds;
  }

  // Runs until every traced process has ended; returns the command's wait status.
  int run() {
    tracees_[root_].started = true;
    tracees_[root_].own_sigcont = true;
    update_count();
    int root_status = 0;
    while (!tracees_.empty()) {
      int status = 0;
      const int tid = waitpid(-1, &status, __WALL);
      if (tid < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (WIFEXITED(status) || WIFSIGNALED(status)) {
        ended(tid, status);
        if (tid == root_) root_status = status;
        continue;
      }
      if (WIFSTOPPED(status)) stopped(tid, status);
    }
    return root_status;
  }

 private:
  void update_count() {
    shared_->traced_threads.store(static_cast<std::int32_t>(tracees_.size()),
                                  std::memory_order_relaxed);
  }

  void resume(int tid, int signal) {
    Tracee& tracee = tracees_[tid];
    ptrace(tracee.calls_traced ? PTRACE_SYSCALL : PTRACE_CONT, tid, nullptr,
           reinterpret_cast<void*>(static_cast<long>(signal)));
  }

  int output_for(int tid) {
    if (settings_.per_thread && !settings_.output_is_stderr) {
      auto found = outputs_.find(tid);
      if (found != outputs_.end()) return found->second;
      const int fd = zptrace::open_output(settings_, tid);
      outputs_[tid] = fd;
      return fd;
    }
    if (common_output_ < 0) {
      // Standard error too is written through a descriptor of its own opened with O_APPEND, as
      // the hooks open it: when it is a file, both append, and neither overwrites the other.
      common_output_ = zptrace::open_output(settings_, tid);
      if (common_output_ < 0 && settings_.output_is_stderr) common_output_ = STDERR_FILENO;
    }
    return common_output_;
  }

  // The lines the thread's hook has buffered (protocol.hpp: BufferSlot), written out before a
  // line of zptrace's own about it; with `release` (the thread has ended, or exec'd) the slot is
  // freed. A slot the thread was changing when it stopped is left alone while it lives.
  void flush_buffer(int tid, bool release) {
    for (zptrace::BufferSlot& slot : shared_->buffers) {
      if (slot.tid.load(std::memory_order_acquire) != tid) continue;
      if (slot.busy.load(std::memory_order_relaxed) != 0 && !release) return;
      const std::uint32_t length = slot.length.load(std::memory_order_acquire);
      const std::uint32_t flushed = slot.flushed.load(std::memory_order_relaxed);
      if (length > flushed && length <= zptrace::kBufferSize) {
        const int fd = output_for(tid);
        if (fd >= 0)
          static_cast<void>(zptrace::write_lines(fd, slot.data + flushed, length - flushed));
      }
      slot.flushed.store(length, std::memory_order_relaxed);
      if (release) {
        slot.length.store(0, std::memory_order_relaxed);
        slot.flushed.store(0, std::memory_order_relaxed);
        slot.busy.store(0, std::memory_order_relaxed);
        slot.tid.store(0, std::memory_order_release);
      }
    }
  }

  void emit(int tid, std::string line) {
    flush_buffer(tid, false);
    line += '\n';
    const int fd = output_for(tid);
    if (fd >= 0) static_cast<void>(zptrace::write_lines(fd, line.data(), line.size()));
  }

  std::string leader(int tid, const timespec& when) {
    return zptrace::line_leader(settings_, tid, tracees_.size() > 1, when);
  }

  bool shows(int tid) const { return (settings_.follow || tid == root_) && !settings_.summary; }

  void ended(int tid, int status) {
    flush_buffer(tid, true);
    if (shows(tid) && settings_.quiet < 2) {
      std::string line = leader(tid, zptrace::now_realtime());
      if (WIFEXITED(status)) {
        line += "+++ exited with " + std::to_string(WEXITSTATUS(status)) + " +++";
      } else {
        line += std::string("+++ killed by ") + signal_name(WTERMSIG(status)) +
                (WCOREDUMP(status) ? " (core dumped)" : "") + " +++";
      }
      emit(tid, line);
    }
    tracees_.erase(tid);
    if (auto found = outputs_.find(tid); found != outputs_.end()) {
      close(found->second);
      outputs_.erase(found);
    }
    update_count();
  }

  void stopped(int tid, int status) {
    const int signal = WSTOPSIG(status);
    const int event = status >> 16;
    if (auto detach = std::find(to_detach_.begin(), to_detach_.end(), tid);
        detach != to_detach_.end()) {
      to_detach_.erase(detach);
      ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
      return;
    }
    auto known = tracees_.find(tid);
    if (known == tracees_.end()) {
      // A new thread or process whose parent's event has not been seen yet: it waits for it.
      new_before_event_.push_back(tid);
      return;
    }
    Tracee& tracee = known->second;
    if (signal == (SIGTRAP | 0x80)) return syscall_stop(tid, tracee);
    if (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK || event == PTRACE_EVENT_CLONE) {
      unsigned long child = 0;
      ptrace(PTRACE_GETEVENTMSG, tid, nullptr, &child);
      if (event == PTRACE_EVENT_VFORK && !tracee.calls_traced)
        vfork_line(tid, static_cast<long>(child));
      if (!settings_.follow) {
        // Without -f only vforks are reported (for the parent's line above); the child goes.
        auto waiting =
            std::find(new_before_event_.begin(), new_before_event_.end(), static_cast<int>(child));
        if (waiting != new_before_event_.end()) {
          new_before_event_.erase(waiting);
          ptrace(PTRACE_DETACH, static_cast<int>(child), nullptr, nullptr);
        } else {
          to_detach_.push_back(static_cast<int>(child));
        }
        return resume(tid, 0);
      }
      Tracee& created = tracees_[static_cast<int>(child)];
      created.calls_traced = tracee.calls_traced;
      created.shim =
          event == PTRACE_EVENT_CLONE ? tracee.shim : std::make_shared<ShimLoading>(*tracee.shim);
      update_count();
      if (settings_.quiet == 0) {
        // Through the same appending descriptor as the trace when that is standard error: a
        // write of its own to fd 2, a file, would land at that descriptor's offset, over lines.
        const std::string message = "zptrace: Process " + std::to_string(child) + " attached\n";
        const int fd = settings_.output_is_stderr ? output_for(tid) : STDERR_FILENO;
        static_cast<void>(write(fd, message.data(), message.size()));
      }
      auto waiting =
          std::find(new_before_event_.begin(), new_before_event_.end(), static_cast<int>(child));
      if (waiting != new_before_event_.end()) {
        new_before_event_.erase(waiting);
        created.started = true;
        resume(static_cast<int>(child), 0);
      }
      return resume(tid, 0);
    }
    if (event == PTRACE_EVENT_EXEC) return exec_event(tid, tracee);
    if (event == PTRACE_EVENT_STOP) {
      tracee.started = true;
      if (signal == SIGSTOP || signal == SIGTSTP || signal == SIGTTIN || signal == SIGTTOU) {
        // A group-stop: shown as strace shows it, and kept (the process stays stopped until a
        // SIGCONT, which ends the listening).
        // (Not the command's own stop before its execve, which zptrace's SIGCONT ends.)
        if (!tracee.own_sigcont && shows(tid) &&
            settings_.signals.test(static_cast<std::size_t>(signal))) {
          emit(tid, leader(tid, zptrace::now_realtime()) + "--- stopped by " + signal_name(signal) +
                        " ---");
        }
        ptrace(PTRACE_LISTEN, tid, nullptr, nullptr);
        return;
      }
      return resume(tid, 0);  // a new tracee's first stop, or the end of a group-stop
    }
    if (event != 0) return resume(tid, 0);
    if (tracee.own_sigcont && signal == SIGCONT) {
      tracee.own_sigcont = false;
      return resume(tid, 0);
    }
    if (!tracee.started && signal == SIGSTOP) {
      tracee.started = true;
      return resume(tid, 0);
    }
    siginfo_t info{};
    if (ptrace(PTRACE_GETSIGINFO, tid, nullptr, &info) != 0) {
      // A group-stop: let the process go on (zptrace does not keep stopped processes stopped).
      return resume(tid, 0);
    }
    // libzpoline's own trap (Syscall User Dispatch, in the exhaustive and lazy modes): the call it
    // brings to the hook is printed by the hook; the trap is not the program's.
    constexpr int kSyscallUserDispatch = 2;
    if (signal == SIGSYS && info.si_code == kSyscallUserDispatch) return resume(tid, signal);
    if (shows(tid) && settings_.signals.test(static_cast<std::size_t>(signal))) {
      emit(tid, leader(tid, zptrace::now_realtime()) + "--- " + signal_name(signal) + " " +
                    describe(info) + " ---");
    }
    resume(tid, signal);
  }

  // The line of a vfork (or clone with CLONE_VFORK) made by a hooked process: its hook does not
  // print it (it returns only once the child has exec'd or exited).
  // The text a hook left for tid's call of this kind (protocol.hpp: ExecSlot), taken.
  std::string take_left_text(int tid, int other_tid, char kind) {
    for (zptrace::ExecSlot& slot : shared_->exec_slots) {
      const std::int32_t owner = slot.tid.load(std::memory_order_acquire);
      if ((owner == tid || owner == other_tid) && slot.length > 0 && slot.text[0] == kind) {
        std::string text(slot.text + 1, slot.length - 1);
        slot.tid.store(0, std::memory_order_release);
        return text;
      }
    }
    return "";
  }

  void vfork_line(int tid, long child) {
    if (const std::string text = take_left_text(tid, tid, zptrace::kVforkText); !text.empty()) {
      if (!shows(tid)) return;
      std::string line = leader(tid, zptrace::now_realtime());
      zptrace::append_call(line, text + " = " + std::to_string(child));
      emit(tid, line);
      return;
    }
    user_regs_struct registers{};
    if (ptrace(PTRACE_GETREGS, tid, nullptr, &registers) != 0) return;
    const long number = static_cast<long>(registers.orig_rax);
    if (!settings_.traces(number) || !shows(tid)) return;
    const std::array<long, 6> args = {
        static_cast<long>(registers.rdi), static_cast<long>(registers.rsi),
        static_cast<long>(registers.rdx), static_cast<long>(registers.r10),
        static_cast<long>(registers.r8),  static_cast<long>(registers.r9)};
    zpoline::FormatOptions options = format_options_;
    options.memory_of_pid = tid;
    std::string line = leader(tid, zptrace::now_realtime());
    zptrace::append_call(line, zpoline::format(number, args, child, options));
    emit(tid, line);
  }

  void exec_event(int tid, Tracee& tracee) {
    unsigned long former = 0;
    ptrace(PTRACE_GETEVENTMSG, tid, nullptr, &former);
    // The old program's buffer: its hook wrote it out before the execve; what is left goes now.
    flush_buffer(static_cast<int>(former), true);
    if (static_cast<int>(former) != tid) flush_buffer(tid, true);
    if (static_cast<int>(former) != tid) {
      // A thread other than the leader exec'd: it takes the leader's id.
      auto moved = tracees_.extract(static_cast<int>(former));
      if (!moved.empty()) tracee = moved.mapped();
    }
    if (!tracee.calls_traced) {
      // The hook left the call's text: the exec succeeded, and zptrace prints it.
      const std::string text = take_left_text(static_cast<int>(former), tid, zptrace::kExecText);
      if (!text.empty() && shows(tid)) {
        std::string line = leader(tid, zptrace::now_realtime());
        zptrace::append_call(line, text + " = 0");
        emit(tid, line);
      }
      tracee.calls_traced = true;
      tracee.swallow_exec_exit = true;
    }
    tracee.shim = std::make_shared<ShimLoading>();
    resume(tid, 0);
  }

  void syscall_stop(int tid, Tracee& tracee) {
    user_regs_struct registers{};
    ptrace(PTRACE_GETREGS, tid, nullptr, &registers);
    if (tracee.swallow_exec_exit) {
      tracee.swallow_exec_exit = false;
      tracee.in_syscall = false;
      return resume(tid, 0);
    }
    if (!tracee.in_syscall) {
      const long number = static_cast<long>(registers.orig_rax);
      if (number == zptrace::kHandoffSyscall &&
          static_cast<long>(registers.rdi) == zptrace::kHandoffMagic) {
        // The preload shim's constructor: from here the hook library prints.
        tracee.calls_traced = false;
        return resume(tid, 0);
      }
      tracee.in_syscall = true;
      tracee.number = number;
      tracee.args = {static_cast<long>(registers.rdi), static_cast<long>(registers.rsi),
                     static_cast<long>(registers.rdx), static_cast<long>(registers.r10),
                     static_cast<long>(registers.r8),  static_cast<long>(registers.r9)};
      tracee.entry_time = settings_.timestamps != 0 ? zptrace::now_realtime() : timespec{};
      tracee.entry_ns = zptrace::monotonic_ns();
      tracee.entry_text.clear();
      if (settings_.traces(number) && shows(tid)) {
        zpoline::FormatOptions options = format_options_;
        options.memory_of_pid = tid;
        tracee.entry = zpoline::capture_entry(number, tracee.args, options);
      } else {
        tracee.entry = {};
      }
      const bool no_return = number == SYS_exit || number == SYS_exit_group;
      const bool exec = number == SYS_execve || number == SYS_execveat;
      if ((no_return || exec) && settings_.traces(number)) {
        zpoline::FormatOptions options = format_options_;
        options.memory_of_pid = tid;
        std::string text = zpoline::format(number, tracee.args, std::nullopt, options);
        if (no_return) {
          if (shows(tid)) {
            std::string line = leader(tid, tracee.entry_time);
            zptrace::append_call(line, text);
            emit(tid, line);
          }
          tracee.in_syscall = false;
        } else {
          zptrace::drop_unknown_result(text);
          hide_added_variables_of(tid, text, tracee.args[number == SYS_execve ? 2 : 3]);
          tracee.entry_text = text;
        }
      }
      return resume(tid, 0);
    }
    tracee.in_syscall = false;
    const long result = static_cast<long>(registers.rax);
    const long elapsed = zptrace::monotonic_ns() - tracee.entry_ns;
    const long number = tracee.number;
    if (!settings_.traces(number) || shim_loading(tid, tracee, result)) return resume(tid, 0);
    count(number, result, elapsed);
    if (shows(tid)) {
      std::string text;
      if (!tracee.entry_text.empty()) {
        text = tracee.entry_text + " = " +
               (result >= 0 ? std::to_string(result) : zpoline::format_error(result));
      } else {
        zpoline::FormatOptions options = format_options_;
        options.memory_of_pid = tid;
        text = zpoline::format(number, tracee.args, result, options, tracee.entry);
      }
      std::string line = leader(tid, tracee.entry_time);
      zptrace::append_call(line, text);
      if (settings_.call_times) zptrace::append_call_time(line, elapsed);
      emit(tid, line);
    }
    resume(tid, 0);
  }

  // The loader's calls for the preload shim and Zydis: opening them, reading, mapping and closing
  // them, and protecting their relocated data. True for a call to leave out; keeps track.
  bool shim_loading(int tid, Tracee& tracee, long result) {
    ShimLoading& shim = *tracee.shim;
    const long number = tracee.number;
    const auto& args = tracee.args;
    auto is_shim_fd = [&](long fd) {
      return std::find(shim.descriptors.begin(), shim.descriptors.end(), static_cast<int>(fd)) !=
             shim.descriptors.end();
    };
    auto in_shim_range = [&](long address) {
      for (const auto& [begin, end] : shim.ranges) {
        if (static_cast<unsigned long>(address) >= begin &&
            static_cast<unsigned long>(address) < end) {
          return true;
        }
      }
      return false;
    };
    switch (number) {
      case SYS_openat:
      case SYS_open: {
        const std::string path = read_string(tid, number == SYS_openat ? args[1] : args[0]);
        const std::string_view base = std::string_view(path).substr(path.rfind('/') + 1);
        if (path != shim_path_ && base.rfind("libZydis.so", 0) != 0) return false;
        // Failed attempts too: the loader looks for Zydis in each LD_LIBRARY_PATH directory.
        if (result >= 0) shim.descriptors.push_back(static_cast<int>(result));
        return true;
      }
      case SYS_read:
      case SYS_pread64:
      case SYS_fstat:
      case SYS_newfstatat:
        return is_shim_fd(args[0]);
      case SYS_close:
        if (!is_shim_fd(args[0])) return false;
        shim.descriptors.erase(
            std::find(shim.descriptors.begin(), shim.descriptors.end(), static_cast<int>(args[0])));
        return true;
      case SYS_mmap:
        if (!is_shim_fd(static_cast<int>(args[4])) &&
            !(static_cast<int>(args[4]) == -1 && in_shim_range(args[0]))) {
          return false;
        }
        if (result >= 0 || result < -4095) {
          shim.ranges.emplace_back(
              static_cast<unsigned long>(result),
              static_cast<unsigned long>(result) + static_cast<unsigned long>(args[1]));
        }
        return true;
      case SYS_mprotect:
      case SYS_munmap:
        return in_shim_range(args[0]);
      default:
        return false;
    }
  }

  static std::string read_string(int tid, long address) {
    std::string text;
    char chunk[256];
    for (int i = 0; i < 16; ++i) {
      iovec local{chunk, sizeof chunk};
      iovec remote{reinterpret_cast<void*>(address + static_cast<long>(text.size())), sizeof chunk};
      const ssize_t got = process_vm_readv(tid, &local, 1, &remote, 1, 0);
      if (got <= 0) break;
      const std::size_t length = strnlen(chunk, static_cast<std::size_t>(got));
      text.append(chunk, length);
      if (length < static_cast<std::size_t>(got)) break;
    }
    return text;
  }

 public:
  std::string shim_path_;

 private:
  // As the hook library does: variables zptrace added are not counted in `/* N vars */`.
  void hide_added_variables_of(int tid, std::string& text, long envp) {
    long added = 0;
    for (int i = 0; i < 4096; ++i) {
      errno = 0;
      const long entry =
          ptrace(PTRACE_PEEKDATA, tid, reinterpret_cast<void*>(envp + 8L * i), nullptr);
      if (errno != 0 || entry == 0) break;
      if (zptrace::added_variable(read_string(tid, entry), added_names_)) ++added;
    }
    zptrace::hide_added_variables(text, added);
  }

  void count(long number, long result, long nanoseconds) {
    if (!settings_.counts() || number < 0 ||
        static_cast<std::size_t>(number) >= zptrace::kSyscallSlots) {
      return;
    }
    zptrace::SyscallCounter& counter = shared_->counters[number];
    counter.calls.fetch_add(1, std::memory_order_relaxed);
    if (result < 0 && result >= -4095) counter.errors.fetch_add(1, std::memory_order_relaxed);
    counter.nanoseconds.fetch_add(static_cast<std::uint64_t>(nanoseconds),
                                  std::memory_order_relaxed);
  }

 public:
  static std::string signal_name(int signal) {
    if (signal > 0 && signal < 32) {
      const char* abbreviation = sigabbrev_np(signal);
      if (abbreviation != nullptr) return std::string("SIG") + abbreviation;
    }
    if (signal == 32) return "SIGRTMIN";
    if (signal > 32 && signal <= 64) return "SIGRT_" + std::to_string(signal - 32);
    return std::to_string(signal);
  }

  std::string added_names_;

  void close_outputs() {
    for (auto& [tid, fd] : outputs_) close(fd);
    outputs_.clear();
    if (common_output_ > STDERR_FILENO) close(common_output_);
    common_output_ = -1;
  }

 private:
  static std::string ticks(long value) {
    std::string text = std::to_string(value);
    if (value != 0) {
      char comment[48];
      std::snprintf(comment, sizeof comment, " /* %ld.%02ld s */", value / 100, value % 100);
      text += comment;
    }
    return text;
  }

  static std::string describe(const siginfo_t& info) {
    std::string text = "{si_signo=" + signal_name(info.si_signo) + ", si_code=";
    const int code = info.si_code;
    auto pid_uid = [&] {
      return ", si_pid=" + std::to_string(info.si_pid) + ", si_uid=" + std::to_string(info.si_uid);
    };
    if (info.si_signo == SIGCHLD && code > 0) {
      static const char* const kChild[] = {
          "?",           "CLD_EXITED",  "CLD_KILLED",   "CLD_DUMPED",
          "CLD_TRAPPED", "CLD_STOPPED", "CLD_CONTINUED"};
      text += code < 7 ? kChild[code] : std::to_string(code);
      text += pid_uid() + ", si_status=";
      text += code == CLD_EXITED ? std::to_string(info.si_status) : signal_name(info.si_status);
      text += ", si_utime=" + ticks(info.si_utime) + ", si_stime=" + ticks(info.si_stime) + "}";
      return text;
    }
    switch (code) {
      case SI_USER:
        return text + "SI_USER" + pid_uid() + "}";
      case SI_TKILL:
        return text + "SI_TKILL" + pid_uid() + "}";
      case SI_KERNEL:
        return text + "SI_KERNEL}";
      case SI_QUEUE:
        return text + "SI_QUEUE" + pid_uid() + ", si_int=" + std::to_string(info.si_int) +
               ", si_ptr=" + pointer(info.si_ptr) + "}";
      case SI_TIMER:
        return text + "SI_TIMER, si_timerid=" + std::to_string(info.si_timerid) +
               ", si_overrun=" + std::to_string(info.si_overrun) +
               ", si_int=" + std::to_string(info.si_int) + ", si_ptr=" + pointer(info.si_ptr) + "}";
      default:
        break;
    }
    if (info.si_signo == SIGSEGV || info.si_signo == SIGBUS || info.si_signo == SIGILL ||
        info.si_signo == SIGFPE || info.si_signo == SIGTRAP) {
      static const char* const kSegv[] = {"?", "SEGV_MAPERR", "SEGV_ACCERR", "SEGV_BNDERR",
                                          "SEGV_PKUERR"};
      if (info.si_signo == SIGSEGV && code > 0 && code < 5) {
        text += kSegv[code];
      } else {
        text += std::to_string(code);
      }
      return text + ", si_addr=" + pointer(info.si_addr) + "}";
    }
    return text + std::to_string(code) + "}";
  }

  static std::string pointer(const void* value) {
    if (value == nullptr) return "NULL";
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%p", value);
    return buffer;
  }

  zptrace::Settings settings_;
  zptrace::SharedState* shared_;
  int root_;
  zpoline::FormatOptions format_options_;
  std::map<int, Tracee> tracees_;
  std::vector<int> new_before_event_;
  std::vector<int> to_detach_;
  std::map<int, int> outputs_;
  int common_output_ = -1;
};

// strace -c's table, sorted by time.
void print_summary(const zptrace::Settings& settings, const zptrace::SharedState& shared,
                   const std::string& output_file) {
  struct Row {
    std::string name;
    std::uint64_t calls, errors, ns;
  };
  std::vector<Row> rows;
  std::uint64_t total_ns = 0, total_calls = 0, total_errors = 0;
  for (std::size_t number = 0; number < zptrace::kSyscallSlots; ++number) {
    const zptrace::SyscallCounter& counter = shared.counters[number];
    const std::uint64_t calls = counter.calls.load();
    if (calls == 0) continue;
    rows.push_back({std::string(zpoline::syscall_name(static_cast<long>(number))), calls,
                    counter.errors.load(), counter.nanoseconds.load()});
    total_ns += rows.back().ns;
    total_calls += calls;
    total_errors += rows.back().errors;
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.ns != b.ns) return a.ns > b.ns;
    if (a.calls != b.calls) return a.calls > b.calls;
    return a.name < b.name;
  });
  std::string table =
      "% time     seconds  usecs/call     calls    errors syscall\n"
      "------ ----------- ----------- --------- --------- ----------------\n";
  char buffer[160];
  auto row = [&](const std::string& name, std::uint64_t calls, std::uint64_t errors,
                 std::uint64_t ns) {
    const double percent =
        total_ns == 0 ? 0 : 100.0 * static_cast<double>(ns) / static_cast<double>(total_ns);
    std::string error_column = errors == 0 ? "" : std::to_string(errors);
    std::snprintf(buffer, sizeof buffer, "%6.2f %11.6f %11llu %9llu %9s %s\n", percent,
                  static_cast<double>(ns) / 1e9,
                  static_cast<unsigned long long>(calls == 0 ? 0 : ns / 1000 / calls),
                  static_cast<unsigned long long>(calls), error_column.c_str(), name.c_str());
    table += buffer;
  };
  for (const Row& r : rows) row(r.name, r.calls, r.errors, r.ns);
  table += "------ ----------- ----------- --------- --------- ----------------\n";
  row("total", total_calls, total_errors, total_ns);
  // Appended, as the trace was (to standard error through a descriptor of its own: after -C's
  // lines, not over them).
  const std::string path = settings.output_is_stderr ? "/proc/self/fd/2" : output_file;
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const bool opened = fd >= 0;
  if (!opened) fd = STDERR_FILENO;
  static_cast<void>(write(fd, table.data(), table.size()));
  if (opened) close(fd);
}

void prepend_variable(const char* name, const std::string& value, std::string& added) {
  const char* current = std::getenv(name);
  if (current == nullptr || current[0] == '\0') {
    setenv(name, value.c_str(), 1);
    if (!added.empty()) added += ',';
    added += name;
  } else {
    setenv(name, (value + ":" + current).c_str(), 1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CommandLine line = parse(argc, argv);
  zptrace::Settings& settings = line.settings;
  const auto [preload, hook] = support_libraries();
  for (const std::string& file : {preload, hook}) {
    if (access(file.c_str(), R_OK) != 0)
      fail("cannot find " + file + ": is zptrace installed whole?");
  }
  const std::string program = find_command(line.command[0]);
  if (!settings.output_is_stderr && !settings.per_thread) {
    const int fd = open(line.output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("can't open '" + line.output_file + "': " + std::strerror(errno));
    close(fd);
  }
  std::string shared_path;
  zptrace::SharedState* shared = create_shared_state(shared_path);
  StandardErrorRelay relay;
  if (settings.output_is_stderr) settings.output = relay.start();

  std::string added;
  prepend_variable("LD_PRELOAD", preload, added);
  prepend_variable("ZPOLINE_HOOK", hook, added);
  // The near mechanism (no page 0): a NULL pointer in the traced program faults as it would
  // untraced, and the library takes no fault of its own that could show as a signal line.
  if (std::getenv("ZPOLINE_MECHANISM") == nullptr) {
    setenv("ZPOLINE_MECHANISM", "near", 1);
    added += ",ZPOLINE_MECHANISM";
  }
  setenv(zptrace::kEnvSettings, settings.encode().c_str(), 1);
  setenv(zptrace::kEnvShared, shared_path.c_str(), 1);
  setenv(zptrace::kEnvHandoff, "1", 1);
  setenv(zptrace::kEnvAddedNames, added.c_str(), 1);

  const pid_t child = fork();
  if (child < 0) fail(std::string("fork: ") + std::strerror(errno));
  if (child == 0) {
    setenv(zptrace::kEnvRoot, std::to_string(getpid()).c_str(), 1);
    // Stopped until zptrace has seized it (PTRACE_SEIZE, so that group-stops can be kept:
    // PTRACE_LISTEN) and sent SIGCONT.
    raise(SIGSTOP);
    execv(program.c_str(), line.command.data());
    std::fprintf(stderr, "zptrace: exec %s: %s\n", program.c_str(), std::strerror(errno));
    _exit(1);
  }
  int status = 0;
  if (waitpid(child, &status, WUNTRACED) != child || !WIFSTOPPED(status)) {
    unlink(shared_path.c_str());
    fail("the command stopped before it could be traced");
  }
  long options =
      PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL | PTRACE_O_TRACEVFORK;
  if (settings.follow) options |= PTRACE_O_TRACEFORK | PTRACE_O_TRACECLONE;
  if (ptrace(PTRACE_SEIZE, child, nullptr, reinterpret_cast<void*>(options)) != 0) {
    const int error = errno;
    kill(child, SIGKILL);
    unlink(shared_path.c_str());
    fail(std::string("ptrace(PTRACE_SEIZE): ") + std::strerror(error) +
         (error == EPERM ? " (ptrace is not allowed here: kernel.yama.ptrace_scope, seccomp or a "
                           "container's policy)"
                         : ""));
  }
  kill(child, SIGCONT);
  // Next: the SIGCONT zptrace sent (not shown), then the entry of the command's execve.
  Supervisor supervisor(settings, shared, child);
  supervisor.added_names_ = added;
  supervisor.shim_path_ = preload;
  const int root_status = supervisor.run();
  unlink(shared_path.c_str());
  supervisor.close_outputs();
  relay.finish();
  if (settings.counts()) print_summary(settings, *shared, line.output_file);
  if (WIFSIGNALED(root_status)) {
    const int signal = WTERMSIG(root_status);
    std::fflush(stdout);
    std::signal(signal, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signal);
    sigprocmask(SIG_UNBLOCK, &set, nullptr);
    raise(signal);
    return 128 + signal;
  }
  return WIFEXITED(root_status) ? WEXITSTATUS(root_status) : 1;
}
