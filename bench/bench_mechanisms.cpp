// The two mechanisms side by side in one run (docs/PERFORMANCE.md, "Mechanisms"): pass-through
// hook, libc getpid() and a 1-byte read() from a pipe, and install() time, each as a ratio to the
// native call measured in the same child just before its install.
//
//   ./build/bench/bench_mechanisms           full run (about 20 s)
//   ./build/bench/bench_mechanisms --quick   smoke run
//
// Each measurement runs in a child of its own (install() works once per process), pinned to one
// CPU; rounds alternate between the mechanisms, and the table gives the median over rounds of each
// child's median of batches.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "zpoline/zpoline.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  int rounds = 9;
  long calls = 200000;  // per batch
  int batches = 7;
};

struct Result {
  double native_getpid_ns = 0, hooked_getpid_ns = 0;
  double native_read_ns = 0, hooked_read_ns = 0;
  double install_ms = 0;
  long status = 0;
  char message[160] = {};
};

long pass_through(zpoline::Syscall& call) {
  return call.forward();
}

template <class Call>
double ns_per_call(const Config& config, Call call) {
  std::vector<double> batches;
  for (int b = 0; b < config.batches; ++b) {
    const auto start = Clock::now();
    for (long i = 0; i < config.calls; ++i) call();
    batches.push_back(std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
                      static_cast<double>(config.calls));
  }
  return bench::median(batches);
}

// In a child: native, install with `mechanism`, hooked.
Result measure(const Config& config, zpoline::Mechanism mechanism) {
  Result result;
  bench::pin_to_cpu(1);
  int fds[2];
  if (pipe(fds) != 0) bench::die("pipe");
  char byte = 'x';
  const auto getpid_call = [] { asm volatile("" ::"r"(getpid())); };
  const auto read_call = [&] {
    if (write(fds[1], &byte, 1) != 1 || read(fds[0], &byte, 1) != 1) bench::die("pipe I/O");
  };
  // The read row measures write+read of one byte; both reach the hook.
  result.native_getpid_ns = ns_per_call(config, getpid_call);
  result.native_read_ns = ns_per_call(config, read_call);
  zpoline::Options options;
  options.mechanism = mechanism;
  options.use_environment = false;
  const auto start = Clock::now();
  zpoline::Session session;
  try {
    session = zpoline::install(pass_through, options);
  } catch (const zpoline::Error& error) {
    result.status = 1;
    std::snprintf(result.message, sizeof result.message, "%s", error.what());
    return result;
  }
  result.install_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  result.hooked_getpid_ns = ns_per_call(config, getpid_call);
  result.hooked_read_ns = ns_per_call(config, read_call);
  if (session.calls().through_sites == 0) {
    result.status = 1;
    std::snprintf(result.message, sizeof result.message, "no call reached the hook");
  }
  return result;
}

Result in_child(const Config& config, zpoline::Mechanism mechanism) {
  int channel[2];
  if (pipe(channel) != 0) bench::die("pipe");
  const pid_t child = fork();
  if (child < 0) bench::die("fork");
  if (child == 0) {
    close(channel[0]);
    const Result result = measure(config, mechanism);
    bench::write_all(channel[1], &result, sizeof result);
    _exit(0);
  }
  close(channel[1]);
  Result result;
  if (!bench::read_all(channel[0], &result, sizeof result)) {
    result.status = 1;
    std::snprintf(result.message, sizeof result.message, "the child gave no result");
  }
  close(channel[0]);
  int status = 0;
  waitpid(child, &status, 0);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      config.rounds = 3;
      config.calls = 20000;
      config.batches = 3;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  bench::print_header("Mechanisms: page_zero and near, one run (pass-through hook, eager)",
                      "median over " + std::to_string(config.rounds) +
                          " alternating rounds, each a child pinned to one CPU: median of " +
                          std::to_string(config.batches) + " batches of " +
                          std::to_string(config.calls) +
                          " calls; ratio = hooked / native in the same child");
  const zpoline::Mechanism mechanisms[] = {zpoline::Mechanism::page_zero, zpoline::Mechanism::near};
  const char* names[] = {"page_zero", "near"};
  std::vector<double> getpid_ratio[2], read_ratio[2], getpid_added[2], read_added[2], install[2];
  std::string failures[2];
  for (int round = 0; round < config.rounds; ++round) {
    for (int m = 0; m < 2; ++m) {
      const Result r = in_child(config, mechanisms[m]);
      if (r.status != 0) {
        failures[m] = r.message;
        continue;
      }
      getpid_ratio[m].push_back(r.hooked_getpid_ns / r.native_getpid_ns);
      read_ratio[m].push_back(r.hooked_read_ns / r.native_read_ns);
      getpid_added[m].push_back(r.hooked_getpid_ns - r.native_getpid_ns);
      read_added[m].push_back(r.hooked_read_ns - r.native_read_ns);
      install[m].push_back(r.install_ms);
    }
  }
  std::printf("\n%-10s %-28s %-28s %s\n", "mechanism", "getpid (ratio, +ns)",
              "write+read 1 byte (ratio, +ns)", "install ms (median [quartiles])");
  for (int m = 0; m < 2; ++m) {
    if (getpid_ratio[m].empty()) {
      std::printf("%-10s not measured: %s\n", names[m], failures[m].c_str());
      continue;
    }
    char getpid_text[64], read_text[64];
    std::snprintf(getpid_text, sizeof getpid_text, "%.3fx  %+.1f", bench::median(getpid_ratio[m]),
                  bench::median(getpid_added[m]));
    std::snprintf(read_text, sizeof read_text, "%.3fx  %+.1f", bench::median(read_ratio[m]),
                  bench::median(read_added[m]));
    std::printf("%-10s %-28s %-28s %s\n", names[m], getpid_text, read_text,
                bench::spread(install[m]).c_str());
  }
  if (!getpid_ratio[0].empty() && !getpid_ratio[1].empty()) {
    std::printf("\nnear - page_zero: getpid %+.3fx, write+read %+.3fx, install %.2fx\n",
                bench::median(getpid_ratio[1]) - bench::median(getpid_ratio[0]),
                bench::median(read_ratio[1]) - bench::median(read_ratio[0]),
                bench::median(install[1]) / bench::median(install[0]));
  }
  return 0;
}
