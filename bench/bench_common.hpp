// Shared pieces of the benchmark programs: statistics, the machine description, and workers
// (forked child processes that run measurements on request, so that processes with and without a
// Session, or in different modes, can be measured in interleaved rounds of one run).
#pragma once

#include <sched.h>
#include <signal.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace bench {

inline double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double position = p * static_cast<double>(values.size() - 1);
  const auto below = static_cast<std::size_t>(position);
  const std::size_t above = std::min(below + 1, values.size() - 1);
  const double fraction = position - static_cast<double>(below);
  return values[below] * (1 - fraction) + values[above] * fraction;
}

inline double median(const std::vector<double>& values) {
  return percentile(values, 0.5);
}

// "1.23  [1.10..1.30]": median and interquartile range.
inline std::string spread(const std::vector<double>& values) {
  char text[64];
  std::snprintf(text, sizeof text, "%5.2f  [%4.2f..%4.2f]", median(values),
                percentile(values, 0.25), percentile(values, 0.75));
  return text;
}

[[noreturn]] inline void die(const char* format, ...) {
  std::va_list args;
  va_start(args, format);
  std::fprintf(stderr, "bench: ");
  std::vfprintf(stderr, format, args);
  std::fprintf(stderr, "\n");
  va_end(args);
  std::fflush(stderr);
  std::_Exit(1);
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// CPU time of the calling thread / of the whole process, in ns. Unlike wall time, it leaves out
// the time the thread waited while other processes of the (shared) machine ran.
inline double thread_cpu_ns() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e9 + static_cast<double>(t.tv_nsec);
}
inline double process_cpu_ns() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e9 + static_cast<double>(t.tv_nsec);
}

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

// The value of the first /proc/cpuinfo line whose key is exactly `key` ("model", not "model
// name"), or "?".
inline std::string cpuinfo_value(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
    if (name == key) return colon + 2 <= line.size() ? line.substr(colon + 2) : "";
  }
  return "?";
}

// What numbers from one CPU do not carry over to another depend on: the CPU's family, model and
// stepping, AVX-512 (the stub's zmm save mode), protection keys (PKRU kept with RDPKRU), and
// page-table isolation with or without PCID (every page the path touches after a system call is
// a TLB miss under PTI without PCID).
inline std::string cpu_traits() {
  const std::string flags = " " + cpuinfo_value("flags") + " ";
  const auto has = [&flags](const char* flag) {
    return flags.find(std::string(" ") + flag + " ") != std::string::npos;
  };
  std::ifstream vulnerability("/sys/devices/system/cpu/vulnerabilities/meltdown");
  std::string meltdown;
  if (!std::getline(vulnerability, meltdown)) meltdown = "?";
  return "family " + cpuinfo_value("cpu family") + " model " + cpuinfo_value("model") +
         " stepping " + cpuinfo_value("stepping") +
         "; AVX-512: " + (has("avx512f") ? "yes" : "no") +
         "; PKU: " + (has("ospke") ? "yes" : "no") + "; PCID: " + (has("pcid") ? "yes" : "no") +
         "; meltdown: " + meltdown;
}

// The kernel's mitigations that run on every system call's entry or exit (page-table switch,
// return-stack filling, buffer clearing, branch-history clearing), as the kernel reports them.
inline std::string syscall_path_mitigations() {
  std::string out;
  for (const char* name : {"meltdown", "spectre_v2", "spec_rstack_overflow", "retbleed", "mds",
                           "tsx_async_abort", "mmio_stale_data", "reg_file_data_sampling",
                           "gather_data_sampling", "srbds", "indirect_target_selection"}) {
    std::ifstream in(std::string("/sys/devices/system/cpu/vulnerabilities/") + name);
    std::string line;
    if (!std::getline(in, line) || line == "Not affected") continue;
    out += std::string(out.empty() ? "" : "; ") + name + ": " + line;
  }
  return out.empty() ? "none reported" : out;
}

inline void print_machine() {
  utsname uts{};
  uname(&uts);
  std::printf("cpu     %s (%ld online)\n", cpu_model().c_str(), sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("cpuid   %s\n", cpu_traits().c_str());
  std::printf("mitig.  %s\n", syscall_path_mitigations().c_str());
  std::printf("kernel  %s %s %s\n", uts.sysname, uts.release, uts.machine);
}

inline void print_header(const char* title, const std::string& method) {
  std::printf("%s\n", title);
  print_machine();
  std::printf("method  %s\n", method.c_str());
}

// Pins the calling thread to the index-th CPU it may run on (modulo their number).
inline void pin_to_cpu(int index) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  const int count = CPU_COUNT(&allowed);
  if (count == 0) return;
  int wanted = index % count;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    if (wanted-- == 0) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      sched_setaffinity(0, sizeof one, &one);
      return;
    }
  }
}

// ---- workers -------------------------------------------------------------------------------

struct Request {
  int job = 0;  // < 0: exit
  int threads = 1;
  long count = 0;
};

struct Reply {
  double value[16] = {};
  long status = 0;  // 0: ok
  char message[200] = {};
};

inline Reply failure(const char* format, ...) {
  Reply reply;
  reply.status = 1;
  std::va_list args;
  va_start(args, format);
  std::vsnprintf(reply.message, sizeof reply.message, format, args);
  va_end(args);
  return reply;
}

inline bool read_all(int fd, void* data, std::size_t size) {
  auto* bytes = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = read(fd, bytes, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

inline bool write_all(int fd, const void* data, std::size_t size) {
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = write(fd, bytes, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// A child process that runs `setup` once (its Reply is the ready message) and then `serve` for
// every request, until destroyed. Fork it from a process without threads and without a Session.
class Worker {
 public:
  Worker(std::string name, const std::function<Reply()>& setup,
         const std::function<Reply(const Request&)>& serve)
      : name_(std::move(name)) {
    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0) die("pipe failed");
    std::fflush(stdout);
    std::fflush(stderr);
    pid_ = fork();
    if (pid_ < 0) die("fork failed");
    if (pid_ == 0) {
      close(down[1]);
      close(up[0]);
      Reply ready = setup();
      if (!write_all(up[1], &ready, sizeof ready) || ready.status != 0) std::_Exit(1);
      Request request;
      while (read_all(down[0], &request, sizeof request) && request.job >= 0) {
        const Reply reply = serve(request);
        if (!write_all(up[1], &reply, sizeof reply)) std::_Exit(1);
      }
      std::fflush(stdout);
      std::_Exit(0);
    }
    close(down[0]);
    close(up[1]);
    to_ = down[1];
    from_ = up[0];
    Reply ready;
    if (!read_all(from_, &ready, sizeof ready)) die("worker %s died during set-up", name_.c_str());
    if (ready.status != 0) die("worker %s: %s", name_.c_str(), ready.message);
    ready_ = ready;
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    Request stop;
    stop.job = -1;
    write_all(to_, &stop, sizeof stop);
    close(to_);
    close(from_);
    int status = 0;
    waitpid(pid_, &status, 0);
  }

  Reply run(const Request& request) {
    Reply reply;
    if (!write_all(to_, &request, sizeof request) || !read_all(from_, &reply, sizeof reply)) {
      die("worker %s died (job %d)", name_.c_str(), request.job);
    }
    if (reply.status != 0) die("worker %s, job %d: %s", name_.c_str(), request.job, reply.message);
    return reply;
  }
  const Reply& ready() const { return ready_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  Reply ready_;
};

}  // namespace bench
