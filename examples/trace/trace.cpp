// trace: an strace for the program itself. Installs a hook that prints every system call of this
// process strace-style (zpoline::format), then runs a workload: a directory listing, file I/O, a
// thread, a child process and a pipe.
//
//   trace [-o FILE] [-c] [-e trace=NAME,...] [-tt] [-s SIZE] [--no-hook] [DIRECTORY]
//
//   -o FILE          write the trace to FILE instead of stderr
//   -c               count calls, errors and time per system call; print a table at the end
//                    (sorted by time, like strace -c) instead of the trace
//   -e trace=NAMES   only these system calls (comma-separated names)
//   -tt              prefix each line with the time of day, in microseconds
//   -s SIZE          cut strings at SIZE bytes (default 32)
//   --no-hook        run the workload untraced (to compare with an external tracer)
//   DIRECTORY        the directory to list (default .)
//
// The workload begins with prctl(PR_SET_NAME, "workload") and ends with
// prctl(PR_SET_NAME, "trace"), which mark where it starts and stops in any tracer's output.
// Threads share one malloc arena (M_ARENA_MAX=1), so that the tracer's own allocations do not
// change the workload's system calls. Calls of a forked child are traced too (its -c counts are not
// added to the table).
#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bitset>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "zpoline/format.hpp"
#include "zpoline/zpoline.hpp"

namespace {

constexpr std::size_t kNumbers = 1024;

struct Settings {
  int output = STDERR_FILENO;
  bool summary = false;
  bool timestamps = false;
  bool hook = true;
  std::bitset<kNumbers> selected;
  zpoline::FormatOptions format;
  std::string directory = ".";
};

struct Counters {
  std::atomic<unsigned long> calls{0};
  std::atomic<unsigned long> errors{0};
  std::atomic<unsigned long> nanoseconds{0};
};

Settings settings;
std::array<Counters, kNumbers> counters;
pid_t traced_pid = 0;

[[noreturn]] void usage(const char* message) {
  std::fprintf(stderr,
               "trace: %s\nusage: trace [-o FILE] [-c] [-e trace=NAME,...] [-tt] [-s SIZE] "
               "[--no-hook] [DIRECTORY]\n",
               message);
  std::exit(2);
}

void parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) usage(("missing value after " + std::string(arg)).c_str());
      return argv[++i];
    };
    if (arg == "-o") {
      const std::string path(value());
      const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) usage(("cannot open " + path + ": " + std::strerror(errno)).c_str());
      // Out of the way of the workload's own descriptors, as strace keeps its output file.
      settings.output = fcntl(fd, F_DUPFD_CLOEXEC, 100);
      close(fd);
    } else if (arg == "-c") {
      settings.summary = true;
    } else if (arg == "-tt") {
      settings.timestamps = true;
    } else if (arg == "-s") {
      settings.format.string_limit = std::strtoul(std::string(value()).c_str(), nullptr, 10);
    } else if (arg == "--no-hook") {
      settings.hook = false;
    } else if (arg == "-e" || arg.starts_with("-etrace=")) {
      std::string_view expression = arg == "-e" ? value() : arg.substr(2);
      if (!expression.starts_with("trace=")) usage("only -e trace=NAME,... is supported");
      expression.remove_prefix(6);
      while (!expression.empty()) {
        const std::string_view name = expression.substr(0, expression.find(','));
        expression.remove_prefix(std::min(expression.size(), name.size() + 1));
        const zpoline::SyscallInfo* info = zpoline::syscall_info(name);
        if (info == nullptr) usage(("unknown system call '" + std::string(name) + "'").c_str());
        settings.selected.set(static_cast<std::size_t>(info->number));
      }
    } else if (arg.starts_with("-")) {
      usage(("unknown option " + std::string(arg)).c_str());
    } else {
      settings.directory = arg;
    }
  }
  if (settings.selected.none()) settings.selected.set();
}

std::string time_of_day() {
  timeval now{};
  gettimeofday(&now, nullptr);
  tm local{};
  localtime_r(&now.tv_sec, &local);
  char text[32];
  std::snprintf(text, sizeof text, "%02d:%02d:%02d.%06ld ", local.tm_hour, local.tm_min,
                local.tm_sec, static_cast<long>(now.tv_usec));
  return text;
}

void emit(const std::string& prefix, const std::string& line) {
  const std::string text = prefix + line + "\n";
  // One write per line, so lines of concurrent threads and processes do not mix.
  (void)!write(settings.output, text.data(), text.size());
}

bool starts_child(long number) {
  return number == SYS_clone || number == SYS_clone3 || number == SYS_fork;
}

long trace_call(zpoline::Syscall& call) {
  const long number = call.number();
  const bool selected = number >= 0 && static_cast<std::size_t>(number) < kNumbers &&
                        settings.selected.test(static_cast<std::size_t>(number));
  if (!selected) return call.forward();
  std::string prefix;
  if (!settings.summary) {
    const auto tid = static_cast<pid_t>(zpoline::raw_syscall(SYS_gettid));
    if (tid != traced_pid) prefix = "[pid " + std::to_string(tid) + "] ";
    if (settings.timestamps) prefix += time_of_day();
  }
  // Calls that do not return print before they run.
  if (number == SYS_exit || number == SYS_exit_group || number == SYS_vfork) {
    if (!settings.summary) emit(prefix, zpoline::format(call, std::nullopt, settings.format));
    return call.forward();
  }
  const auto start = std::chrono::steady_clock::now();
  const long result = call.forward();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  if (starts_child(number) && result == 0) return result;  // the child: the parent prints it
  if (settings.summary) {
    Counters& counter = counters[static_cast<std::size_t>(number)];
    ++counter.calls;
    if (result < 0 && result >= -4095) ++counter.errors;
    counter.nanoseconds += static_cast<unsigned long>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
  } else {
    emit(prefix, zpoline::format(call, result, settings.format));
  }
  return result;
}

// The table of strace -c: sorted by time spent, then by calls.
void print_summary() {
  struct Row {
    std::string_view name;
    unsigned long calls, errors, nanoseconds;
  };
  std::vector<Row> rows;
  unsigned long total_calls = 0, total_errors = 0, total_ns = 0;
  for (std::size_t number = 0; number < kNumbers; ++number) {
    const Counters& c = counters[number];
    if (c.calls == 0) continue;
    rows.push_back(
        {zpoline::syscall_name(static_cast<long>(number)), c.calls, c.errors, c.nanoseconds});
    total_calls += c.calls;
    total_errors += c.errors;
    total_ns += c.nanoseconds;
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.nanoseconds != b.nanoseconds) return a.nanoseconds > b.nanoseconds;
    if (a.calls != b.calls) return a.calls > b.calls;
    return a.name < b.name;
  });
  std::string text = "% time     seconds  usecs/call     calls    errors syscall\n";
  const std::string rule = "------ ----------- ----------- --------- --------- ----------------\n";
  text += rule;
  char line[160];
  auto errors = [](unsigned long n) { return n ? std::to_string(n) : std::string(); };
  for (const Row& row : rows) {
    std::snprintf(
        line, sizeof line, "%6.2f %11.6f %11lu %9lu %9s %.*s\n",
        total_ns ? 100.0 * static_cast<double>(row.nanoseconds) / static_cast<double>(total_ns)
                 : 0.0,
        static_cast<double>(row.nanoseconds) / 1e9, row.nanoseconds / 1000 / row.calls, row.calls,
        errors(row.errors).c_str(), static_cast<int>(row.name.size()), row.name.data());
    text += line;
  }
  text += rule;
  std::snprintf(line, sizeof line, "%6.2f %11.6f %11lu %9lu %9s total\n", 100.0,
                static_cast<double>(total_ns) / 1e9,
                total_calls ? total_ns / 1000 / total_calls : 0, total_calls,
                errors(total_errors).c_str());
  text += line;
  (void)!write(settings.output, text.data(), text.size());
}

void real_work(const std::string& directory) {
  prctl(PR_SET_NAME, "workload");
  std::cout << "listing " << directory << ":\n";
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    std::cout << "  " << entry.path().filename().string() << "\n";
  }
  std::cout.flush();

  const std::string path = "/tmp/zpoline-trace-demo.txt";
  std::ofstream(path) << "written through a hooked write()\n";
  std::string line;
  std::getline(std::ifstream(path), line);
  std::filesystem::remove(path);

  // No thread id in the output: its length must not depend on the number of digits of an id, or
  // two runs of the workload would write different byte counts (pids wrap at pid_max).
  std::thread worker([] {
    const bool own_id = syscall(SYS_gettid) != getpid();
    std::printf("hello from a thread (an id of its own: %s)\n", own_id ? "yes" : "no");
  });
  worker.join();

  int fds[2];
  if (pipe(fds) != 0) std::abort();
  const pid_t child = fork();
  if (child == 0) {
    const char message[] = "hello from the child\n";
    (void)!write(fds[1], message, sizeof message - 1);
    _exit(0);
  }
  char buffer[64] = {};
  const ssize_t n = read(fds[0], buffer, sizeof buffer - 1);
  waitpid(child, nullptr, 0);
  close(fds[0]);
  close(fds[1]);
  std::printf("parent read %zd bytes from the pipe: %s", n, buffer);
  std::fflush(stdout);
  prctl(PR_SET_NAME, "trace");
}

}  // namespace

int main(int argc, char** argv) {
  parse(argc, argv);
  traced_pid = getpid();
  // One malloc arena for all threads: otherwise a thread's first allocation creates an arena
  // (mmap, munmap, mprotect), and whether the hook's formatting or the workload allocates first
  // would decide where those calls appear. Done in both modes, so the workload is the same.
  mallopt(M_ARENA_MAX, 1);
  if (!settings.hook) {
    real_work(settings.directory);
    return 0;
  }
  try {
    auto session = zpoline::install(trace_call);
    std::fprintf(stderr, "trace: rewrote %zu syscall sites in %zu images in %.2f ms\n",
                 session.stats().sites_rewritten(), session.stats().images.size(),
                 static_cast<double>(session.stats().total_time.count()) / 1e6);
    real_work(settings.directory);
  } catch (const zpoline::Error& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  if (settings.summary) print_summary();
  return 0;
}
