// bench_python_startup: what the preload shim costs Debian's python3 at start-up, and where that
// time goes (issue 16).
//
//   ./build/bench/bench_python_startup            full run (about 20 s)
//   ./build/bench/bench_python_startup --quick    smoke run
//   ./build/bench/bench_python_startup --shim A.so --shim B.so   builds of libzpoline-preload.so,
//                                                 each in every round (B over A in the same round)
//
// Two programs: `python3 -c pass`, and one that imports modules with C extensions (each import
// dlopen()s a shared object, which the shim rewrites before it runs). Each is started natively and
// with LD_PRELOAD=libzpoline-preload.so (its built-in hook: count the call, forward it), in
// interleaved rounds (shuffled order within a round), everything pinned to one CPU. The ratio is
// shim over native within the same round.
//
// The breakdown comes from the shim's report at exit (counting mode, examples/preload): the
// constructor's install, the time spent rewriting code mapped after install (dlopen), and the
// number of calls that reached the hook. The per-call cost is measured here, in a forked child:
// getpid through libc natively, then after install() with the same kind of hook. What is left of
// the difference is everything else the shim does: loading libzpoline-preload.so itself (its
// relocations and initializers), its exit report, and calls that cost more than getpid does.
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <array>
#include <atomic>
#include <cinttypes>
#include <random>
#include <regex>

#include "bench_common.hpp"
#include "zpoline/zpoline.hpp"

extern char** environ;

namespace {

using bench::median;
using bench::percentile;

constexpr const char* kPython = "/usr/bin/python3";

struct Program {
  const char* label;
  std::vector<std::string> argv;
};
const Program kPrograms[] = {
    {"python3 -c pass", {kPython, "-c", "pass"}},
    {"python3 -c 'import json, decimal, sqlite3, ssl, asyncio'",
     {kPython, "-c", "import json, decimal, sqlite3, ssl, asyncio"}},
};
constexpr int kProgramCount = sizeof kPrograms / sizeof kPrograms[0];

struct Run {
  double wall_ms = 0;
  double cpu_ms = 0;  // user + system time of the child
  std::string stderr_text;
};

// The environment of the children: this one's, without anything of a preload or of zpoline.
std::vector<std::string> base_environment() {
  std::vector<std::string> env;
  for (char** entry = environ; entry && *entry; ++entry) {
    const std::string_view variable(*entry);
    if (variable.starts_with("LD_PRELOAD=") || variable.starts_with("ZPOLINE")) continue;
    env.emplace_back(variable);
  }
  return env;
}

Run run_once(const Program& program, const std::vector<std::string>& environment) {
  std::vector<char*> argv;
  for (const std::string& arg : program.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& entry : environment) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) bench::die("pipe2 failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);

  Run run;
  pid_t pid = 0;
  const auto start = std::chrono::steady_clock::now();
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data()) != 0) {
    bench::die("cannot start %s", argv[0]);
  }
  int status = 0;
  rusage usage{};
  if (wait4(pid, &status, 0, &usage) != pid) bench::die("wait4 failed");
  run.wall_ms = bench::seconds_since(start) * 1e3;
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(pipe_fds[0], buffer, sizeof buffer);
    if (n <= 0) break;
    run.stderr_text.append(buffer, static_cast<std::size_t>(n));
  }
  close(pipe_fds[0]);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    bench::die("%s exited with status %d: %s", program.label, status, run.stderr_text.c_str());
  }
  const auto ms = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_usec) / 1e3;
  };
  run.cpu_ms = ms(usage.ru_utime) + ms(usage.ru_stime);
  return run;
}

// What the shim reported at exit (examples/preload/preload.cpp, counting mode).
struct ShimReport {
  double calls = 0;
  double install_ms = 0;
  double install_cpu_ms = 0;
  double rewriting_ms = 0;
  double late_ms = 0;
  double late_images = 0;
  double late_cpu_ms = 0;
};

ShimReport parse_report(const std::string& text) {
  static const std::regex counts(R"(zpoline: pid \d+: (\d+) system calls:)");
  static const std::regex costs(
      R"(zpoline: pid \d+: install ([0-9.]+) ms \(cpu ([0-9.]+) ms; rewriting ([0-9.]+) ms\); code )"
      R"(rewritten after )"
      R"(install: ([0-9.]+) ms in (\d+) images \(cpu of the calls that mapped code: ([0-9.]+) ms)");
  std::smatch match;
  ShimReport report;
  if (!std::regex_search(text, match, counts)) bench::die("no call count in: %s", text.c_str());
  report.calls = std::stod(match[1]);
  if (!std::regex_search(text, match, costs)) bench::die("no costs in: %s", text.c_str());
  report.install_ms = std::stod(match[1]);
  report.install_cpu_ms = std::stod(match[2]);
  report.rewriting_ms = std::stod(match[3]);
  report.late_ms = std::stod(match[4]);
  report.late_images = std::stod(match[5]);
  report.late_cpu_ms = std::stod(match[6]);
  return report;
}

// ---- per-call cost ------------------------------------------------------------------------

std::atomic<unsigned long> hooked_calls{0};
// As the shim's counting hook: one relaxed atomic increment, then forward.
long count_and_forward(zpoline::Syscall& call) {
  hooked_calls.fetch_add(1, std::memory_order_relaxed);
  return call.forward();
}

double getpid_loop_ns(int calls) {
  const double start = bench::thread_cpu_ns();
  for (int i = 0; i < calls; ++i) {
    if (getpid() <= 0) bench::die("getpid failed");
  }
  return (bench::thread_cpu_ns() - start) / calls;
}

// In a forked child: ns added to a getpid by the hook (median of blocks, hooked minus native;
// the native blocks all run before install, which cannot be undone).
double added_ns_per_call() {
  int fds[2];
  if (pipe(fds) != 0) bench::die("pipe failed");
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    constexpr int kBlocks = 9;
    constexpr int kCalls = 20000;
    getpid_loop_ns(kCalls);  // warm-up
    std::vector<double> native;
    for (int i = 0; i < kBlocks; ++i) native.push_back(getpid_loop_ns(kCalls));
    zpoline::Options options;
    options.use_environment = false;
    double added = -1;
    try {
      zpoline::Session session = zpoline::install(count_and_forward, options);
      getpid_loop_ns(kCalls);
      std::vector<double> hooked;
      for (int i = 0; i < kBlocks; ++i) hooked.push_back(getpid_loop_ns(kCalls));
      if (hooked_calls.load() < static_cast<unsigned long>(kCalls) * (kBlocks + 1)) {
        bench::die("the hook did not see the getpid calls");
      }
      added = median(hooked) - median(native);
    } catch (const zpoline::Error& error) {
      bench::die("install failed: %s", error.what());
    }
    bench::write_all(fds[1], &added, sizeof added);
    std::_Exit(0);
  }
  close(fds[1]);
  double added = -1;
  if (!bench::read_all(fds[0], &added, sizeof added)) bench::die("the per-call child failed");
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  return added;
}

std::string range(const std::vector<double>& values, const char* format) {
  char text[96];
  const std::string f = std::string(format) + "  [" + format + ".." + format + "]";
  std::snprintf(text, sizeof text, f.c_str(), median(values), percentile(values, 0.25),
                percentile(values, 0.75));
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 21;
  // Builds of the shim to measure, each in every round (their reports must have the same form):
  // the one built with this program, or those given with --shim (repeated to compare builds).
  std::vector<std::string> shims;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      rounds = 3;
    } else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--shim") == 0 && i + 1 < argc) {
      shims.emplace_back(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--rounds N] [--shim PATH]...\n", argv[0]);
      return 2;
    }
  }
  if (shims.empty()) shims.emplace_back(ZPOLINE_PRELOAD_PATH);
  const int shim_count = static_cast<int>(shims.size());
  if (access(kPython, X_OK) != 0) bench::die("%s is missing", kPython);
  for (const std::string& shim : shims) {
    if (access(shim.c_str(), R_OK) != 0) bench::die("%s is missing", shim.c_str());
  }
  const auto run_start = std::chrono::steady_clock::now();
  bench::pin_to_cpu(1);  // the children inherit it

  char method[256];
  std::snprintf(method, sizeof method,
                "%d rounds; in each, every program natively and under the shim, shuffled, pinned "
                "to one CPU; median [p25..p75]; ratio = shim / native in the same round",
                rounds);
  bench::print_header("bench_python_startup: python3 start-up under the preload shim", method);
  const std::vector<std::string> native_env = base_environment();
  std::vector<std::vector<std::string>> shim_envs;
  for (int k = 0; k < shim_count; ++k) {
    std::printf("shim %c  LD_PRELOAD=%s (no ZPOLINE_HOOK: the built-in counting hook)\n", 'A' + k,
                shims[static_cast<std::size_t>(k)].c_str());
    shim_envs.push_back(native_env);
    shim_envs.back().push_back("LD_PRELOAD=" + shims[static_cast<std::size_t>(k)]);
  }

  struct Samples {
    std::vector<double> native_wall, shim_wall, native_cpu, shim_cpu, wall_ratio, cpu_ratio;
    std::vector<ShimReport> reports;
  };
  // [shim][program]
  std::vector<std::array<Samples, kProgramCount>> samples(shims.size());
  std::mt19937 random(12345);
  // One warm-up of each (page cache, .pyc files), not counted.
  for (const Program& program : kPrograms) {
    run_once(program, native_env);
    for (const auto& env : shim_envs) run_once(program, env);
  }
  const int variants = shim_count + 1;  // 0: native
  for (int round = 0; round < rounds; ++round) {
    std::vector<int> order;
    for (int i = 0; i < variants * kProgramCount; ++i) order.push_back(i);
    std::shuffle(order.begin(), order.end(), random);
    std::vector<std::array<Run, kProgramCount>> results(static_cast<std::size_t>(variants));
    for (int job : order) {
      const int program = job / variants;
      const int variant = job % variants;
      results[static_cast<std::size_t>(variant)][program] =
          run_once(kPrograms[program],
                   variant == 0 ? native_env : shim_envs[static_cast<std::size_t>(variant - 1)]);
    }
    for (int k = 0; k < shim_count; ++k) {
      for (int p = 0; p < kProgramCount; ++p) {
        Samples& s = samples[static_cast<std::size_t>(k)][p];
        const Run& native = results[0][p];
        const Run& shim = results[static_cast<std::size_t>(k + 1)][p];
        s.native_wall.push_back(native.wall_ms);
        s.shim_wall.push_back(shim.wall_ms);
        s.native_cpu.push_back(native.cpu_ms);
        s.shim_cpu.push_back(shim.cpu_ms);
        s.wall_ratio.push_back(shim.wall_ms / native.wall_ms);
        s.cpu_ratio.push_back(shim.cpu_ms / native.cpu_ms);
        s.reports.push_back(parse_report(shim.stderr_text));
      }
    }
  }

  std::printf("\nStart-up time (wall: spawn to exit; cpu: the child's user + system time)\n");
  std::printf("  %-60s %8s %8s  %-20s %8s %8s  %s\n", "", "native", "shim", "ratio wall", "native",
              "shim", "ratio cpu");
  std::printf("  %-60s %8s %8s  %-20s %8s %8s\n", "", "wall ms", "wall ms", "", "cpu ms", "cpu ms");
  const auto label = [&](int k, int p) {
    return shim_count == 1 ? std::string(kPrograms[p].label)
                           : std::string(1, static_cast<char>('A' + k)) + " " + kPrograms[p].label;
  };
  for (int p = 0; p < kProgramCount; ++p) {
    for (int k = 0; k < shim_count; ++k) {
      const Samples& s = samples[static_cast<std::size_t>(k)][p];
      std::printf("  %-60s %8.2f %8.2f  %-20s %8.2f %8.2f  %s\n", label(k, p).c_str(),
                  median(s.native_wall), median(s.shim_wall), range(s.wall_ratio, "%.3f").c_str(),
                  median(s.native_cpu), median(s.shim_cpu), range(s.cpu_ratio, "%.3f").c_str());
    }
  }
  if (shim_count > 1) {
    std::printf("  cpu time of each shim over A's in the same round:");
    for (int k = 1; k < shim_count; ++k) {
      for (int p = 0; p < kProgramCount; ++p) {
        std::vector<double> ratio;
        const Samples& a = samples[0][p];
        const Samples& b = samples[static_cast<std::size_t>(k)][p];
        for (std::size_t r = 0; r < a.shim_cpu.size(); ++r) {
          ratio.push_back(b.shim_cpu[r] / a.shim_cpu[r]);
        }
        std::printf(" %c/%d %s", 'A' + k, p + 1, range(ratio, "%.3f").c_str());
      }
    }
    std::printf("\n");
  }

  std::vector<double> per_call;
  for (int i = 0; i < (rounds > 3 ? 5 : 1); ++i) per_call.push_back(added_ns_per_call());
  const double added_ns = median(per_call);

  std::printf("\nWhere the shim's time goes (medians over rounds; ms)\n");
  std::printf("  %-60s %7s %7s %8s %8s %9s %8s %8s %6s %6s %8s\n", "", "added", "added", "install",
              "install", "rewriting", "dlopen", "dlopen", "images", "calls", "calls x");
  std::printf("  %-60s %7s %7s %8s %8s %9s %8s %8s %6s %6s %8s\n", "", "(cpu)", "(wall)", "(cpu)",
              "(wall)", "(wall)", "rescans", "rescans", "", "hooked", "per-call");
  std::printf("  %-60s %7s %7s %8s %8s %9s %8s %8s %6s %6s %8s\n", "", "", "", "", "", "", "(cpu)",
              "(wall)", "", "", "(cpu)");
  for (int p = 0; p < kProgramCount; ++p) {
    for (int k = 0; k < shim_count; ++k) {
      const Samples& s = samples[static_cast<std::size_t>(k)][p];
      std::vector<double> added, added_wall, install_cpu, install, rewriting, late, late_cpu,
          images, calls;
      for (std::size_t r = 0; r < s.reports.size(); ++r) {
        added.push_back(s.shim_cpu[r] - s.native_cpu[r]);
        added_wall.push_back(s.shim_wall[r] - s.native_wall[r]);
        install_cpu.push_back(s.reports[r].install_cpu_ms);
        install.push_back(s.reports[r].install_ms);
        rewriting.push_back(s.reports[r].rewriting_ms);
        late.push_back(s.reports[r].late_ms);
        late_cpu.push_back(s.reports[r].late_cpu_ms);
        images.push_back(s.reports[r].late_images);
        calls.push_back(s.reports[r].calls);
      }
      const double per_call_ms = median(calls) * added_ns / 1e6;
      std::printf("  %-60s %7.2f %7.2f %8.2f %8.2f %9.2f %8.2f %8.2f %6.0f %6.0f %8.2f\n",
                  label(k, p).c_str(), median(added), median(added_wall), median(install_cpu),
                  median(install), median(rewriting), median(late_cpu), median(late),
                  median(images), median(calls), per_call_ms);
      std::printf("  %-60s rest = added - install - dlopen rescans - per-call (cpu): %.2f ms\n", "",
                  median(added) - median(install_cpu) - median(late_cpu) - per_call_ms);
    }
  }
  std::printf(
      "  added: shim minus native in the same round (cpu: the child's user + system time)\n"
      "  install: the shim's constructor (install_configured_hooks); rewriting: of which "
      "InstallStats::total_time\n"
      "  dlopen rescans: cpu, of the calls that mapped code (mmap/mprotect with PROT_EXEC, which "
      "rewrite it);\n  wall, ImageStats::time of the images rewritten after install "
      "(late_coverage())\n"
      "  per-call: %.0f ns added to a getpid through libc by a counting pass-through hook (median "
      "of %zu\n  children, CPU time), times the calls that reached the shim's hook\n"
      "  rest: loading the shim and its libraries, its exit report, calls dearer than getpid\n",
      added_ns, per_call.size());

  std::printf("\nTarget (issue 16): python3 start-up under the shim <= 1.15x native; measured");
  for (int k = 0; k < shim_count; ++k) {
    if (shim_count > 1) std::printf(" %c:", 'A' + k);
    for (int p = 0; p < kProgramCount; ++p) {
      const Samples& s = samples[static_cast<std::size_t>(k)][p];
      std::printf(" %.3f (cpu %.3f)%s", median(s.wall_ratio), median(s.cpu_ratio),
                  p + 1 < kProgramCount ? "," : "");
    }
  }
  std::printf("\n\ntotal run time %.1f s\n", bench::seconds_since(run_start));
  return 0;
}
