// bench_modes: ns per cheap system call at low, middle and high numbers, natively, through a
// rewritten site, and through the Syscall User Dispatch (SUD) path, with a pass-through hook; on
// one thread and on two threads at once; and strace -f -c (ptrace) on the same native loop.
//
//   ./build/bench/bench_modes            full run (about 20-30 s)
//   ./build/bench/bench_modes --quick    smoke run (a few seconds)
//
// Time is the CPU time of each measuring thread (CLOCK_THREAD_CPUTIME_ID), so that time spent
// preempted by other processes of a shared machine is left out; "wall" gives the wall-clock median
// of the same measurements for comparison.
//
// Four worker processes are forked before anything is installed:
//   none        no Session: the native baseline
//   eager       install(hook)                        (Mode::eager)
//   exhaustive  install(hook, {.mode = exhaustive})  (SUD armed for the whole process)
//   gpr         install(hook, {.general_registers_only = true})  (no vector save; the hook is
//               built for general registers only, in every worker)
// Every round asks each worker for every variant (shuffled order; the parent only waits), so each
// ratio compares two measurements of the same round: variant / `none` native of the same number
// and thread count. With 2 threads, each thread (pinned to its own CPU) times its own loop, and
// the figure is ns per call per thread; "2T/1T" is that over the same variant on 1 thread.
//
// Paths:
//   native      zpoline::raw_syscall: a `syscall` in the library's own code, never rewritten (under
//               SUD it lies in the allowed range, so it shows the kernel's SUD entry tax alone)
//   rewritten   libc's syscall(): its `syscall` was rewritten into `call *%rax` at install
//   SUD trap    `66 0f 05` (prefixed syscall) in JIT memory: never rewritten, so under SUD it
//               traps (SIGSYS) on every call and the library runs the hook from the handler
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <memory>
#include <random>
#include <thread>

#include "bench_common.hpp"
#include "zpoline/zpoline.hpp"

namespace {

using bench::median;
using bench::percentile;
using bench::spread;

struct Config {
  int rounds = 11;
  long calls = 30'000;    // per request on the fast paths; the SUD trap path makes a tenth
  int strace_rounds = 5;  // the traced cost is sometimes 5-8x higher for a whole run: a median
  long strace_calls = 5'000;
};

struct Number {
  const char* name;
  long nr;
  long a0, a1, a2;
  long expected;  // kExpectPid: the worker's pid
};
constexpr long kExpectPid = 1L << 40;

// Cheap calls that fail or return at once: read(-1) is EBADF, set_robust_list(NULL, 0) and
// futex_waitv(NULL, 0, 0) are EINVAL. The sled cost depends on the number (docs/PERFORMANCE.md).
const Number kNumbers[] = {
    {"read(0) fd -1", SYS_read, -1, 0, 0, -EBADF},
    {"getpid(39)", SYS_getpid, 0, 0, 0, kExpectPid},
    {"set_robust_list(273) len 0", SYS_set_robust_list, 0, 0, 0, -EINVAL},
    {"futex_waitv(449) nr 0", 449, 0, 0, 0, -EINVAL},
};
constexpr int kNumberCount = sizeof kNumbers / sizeof kNumbers[0];

enum Kind { kNone, kEager, kExhaustive, kGeneralRegisters, kKinds };
const char* const kKindNames[] = {"none", "eager", "exhaustive", "gpr"};
enum Path { kNative, kRewritten, kTrap, kRewrittenDirtyAvx, kPaths };

struct Variant {
  Kind kind;
  Path path;
  const char* label;
  bool hooked;
};
const Variant kVariants[] = {
    {kNone, kNative, "native, no install (baseline)", false},
    {kEager, kNative, "eager: native raw_syscall", false},
    {kEager, kRewritten, "eager: rewritten site", true},
    {kEager, kRewrittenDirtyAvx, "eager: rewritten, ymm upper dirty", true},
    {kExhaustive, kNative, "exhaustive: native (SUD armed)", false},
    {kExhaustive, kRewritten, "exhaustive: rewritten (SUD armed)", true},
    {kExhaustive, kTrap, "exhaustive: 66 0f 05, SUD trap", true},
    {kGeneralRegisters, kRewritten, "eager, gen. regs only: rewritten", true},
    {kGeneralRegisters, kRewrittenDirtyAvx, "eager, gen. regs only: ymm dirty", true},
};
constexpr int kVariantCount = sizeof kVariants / sizeof kVariants[0];

// ---- in the workers ------------------------------------------------------------------------

// Per-thread counter: a shared atomic would put a contended cache line into the hook itself.
thread_local long tls_hook_calls = 0;

// The last few calls that reached the hook with another number than the thread is measuring
// (reported when the count is off).
thread_local long tls_measured_number = -1;
thread_local long tls_other_numbers[4] = {-1, -1, -1, -1};
thread_local int tls_other_count = 0;

// Built for general registers only (Options::general_registers_only; the same hook everywhere).
__attribute__((target("general-regs-only"))) long pass_through(zpoline::Syscall& call) {
  ++tls_hook_calls;
  if (call.number() != tls_measured_number) {
    tls_other_numbers[tls_other_count++ % 4] = call.number();
  }
  return call.forward();
}

// The thread's CPU time, read with a raw syscall: libc's clock_gettime() for this clock falls back
// from the vDSO to a `syscall` inside the vDSO, which is never rewritten and, under SUD, traps.
double thread_cpu_ns() {
  timespec t{};
  zpoline::raw_syscall(SYS_clock_gettime, CLOCK_THREAD_CPUTIME_ID, reinterpret_cast<long>(&t));
  return static_cast<double>(t.tv_sec) * 1e9 + static_cast<double>(t.tv_nsec);
}

zpoline::Session worker_session;
unsigned char* jit = nullptr;  // per number at 32 * index: mov $nr,%eax; 66 0f 05; ret
using JitFunction = long (*)(long, long, long);

[[gnu::noinline]] long loop_native(const Number& k, long n) {
  long r = 0;
  for (long i = 0; i < n; ++i) {
    r = zpoline::raw_syscall(k.nr, k.a0, k.a1, k.a2);
    asm volatile("" : : "r"(r) : "memory");
  }
  return r;
}

[[gnu::noinline]] long loop_rewritten(const Number& k, long n) {
  long r = 0;
  for (long i = 0; i < n; ++i) {
    r = syscall(k.nr, k.a0, k.a1, k.a2);
    asm volatile("" : : "r"(r) : "memory");
  }
  return r == -1 ? -errno : r;
}

// The same with the upper halves of the ymm registers in use (not in their init state) at every
// call, as after AVX code that did not end with vzeroupper: XSAVEC/XSAVEOPT must then save and
// restore them. The microbenchmark loops above leave them in their init state.
const bool have_avx2 = __builtin_cpu_supports("avx2");

[[gnu::noinline]] long loop_rewritten_dirty_avx(const Number& k, long n) {
  if (!have_avx2) return loop_rewritten(k, n);  // the table says so
  long r = 0;
  for (long i = 0; i < n; ++i) {
    asm volatile("vpcmpeqb %%ymm15, %%ymm15, %%ymm15" : : : "xmm15");
    r = syscall(k.nr, k.a0, k.a1, k.a2);
    asm volatile("" : : "r"(r) : "memory");
  }
  asm volatile("vzeroupper" : : : "memory");
  return r == -1 ? -errno : r;
}

[[gnu::noinline]] long loop_trap(JitFunction f, const Number& k, long n) {
  long r = 0;
  for (long i = 0; i < n; ++i) {
    r = f(k.a0, k.a1, k.a2);
    asm volatile("" : : "r"(r) : "memory");
  }
  return r;
}

long run_path(Path path, int number, long n) {
  const Number& k = kNumbers[number];
  switch (path) {
    case kNative:
      return loop_native(k, n);
    case kRewritten:
      return loop_rewritten(k, n);
    case kTrap:
      return loop_trap(reinterpret_cast<JitFunction>(jit + 32 * number), k, n);
    case kRewrittenDirtyAvx:
      return loop_rewritten_dirty_avx(k, n);
    case kPaths:
      break;
  }
  return 0;
}

bench::Reply setup_worker(Kind kind) {
  jit = static_cast<unsigned char*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (jit == MAP_FAILED) return bench::failure("mmap of the JIT page failed");
  for (int i = 0; i < kNumberCount; ++i) {
    const auto nr = static_cast<std::uint32_t>(kNumbers[i].nr);
    const unsigned char code[] = {0xb8,
                                  static_cast<unsigned char>(nr),
                                  static_cast<unsigned char>(nr >> 8),
                                  0,
                                  0,
                                  0x66,
                                  0x0f,
                                  0x05,
                                  0xc3};
    std::memcpy(jit + 32 * i, code, sizeof code);
  }
  if (kind == kNone) return {};
  zpoline::Options options;
  options.use_environment = false;
  options.mode = kind == kExhaustive ? zpoline::Mode::exhaustive : zpoline::Mode::eager;
  options.general_registers_only = kind == kGeneralRegisters;
  try {
    worker_session = zpoline::install(pass_through, options);
  } catch (const zpoline::Error& error) {
    return bench::failure("install (%s) failed: %s", kKindNames[kind], error.what());
  }
  return {};
}

// clock_gettime(CLOCK_THREAD_CPUTIME_ID) through libc: the vDSO has no fast path for this clock
// and makes the syscall itself, from vDSO code that the rewriter leaves alone.
constexpr int kVdsoJob = 1000;
[[gnu::noinline]] void loop_vdso_cpu_clock(long n) {
  for (long i = 0; i < n; ++i) {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    asm volatile("" : : "r"(&t) : "memory");
  }
}

bench::Reply serve_vdso(long n) {
  loop_vdso_cpu_clock(std::max(100L, n / 10));
  const long before = tls_hook_calls;
  const double start = thread_cpu_ns();
  loop_vdso_cpu_clock(n);
  bench::Reply reply;
  reply.value[0] = (thread_cpu_ns() - start) / static_cast<double>(n);
  reply.value[1] = static_cast<double>(tls_hook_calls - before) / static_cast<double>(n);
  return reply;
}

// Job = number * kPaths + path. Runs `threads` threads at once, each pinned to its own CPU, each
// warming up and then timing its own loop; reports ns per call averaged over the threads.
bench::Reply serve_worker(Kind kind, const bench::Request& request) {
  if (request.job == kVdsoJob) return serve_vdso(request.count);
  const int number = request.job / kPaths;
  const auto path = static_cast<Path>(request.job % kPaths);
  const bool hooked = kind != kNone && path != kNative;
  const long n = request.count;
  const long expected = kNumbers[number].expected == kExpectPid ? zpoline::raw_syscall(SYS_getpid)
                                                                : kNumbers[number].expected;
  struct Result {
    double ns = 0;
    double wall_ns = 0;
    long hook_calls = 0;
    long value = 0;
    long others[4] = {-1, -1, -1, -1};
  };
  std::vector<Result> results(static_cast<std::size_t>(request.threads));
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < request.threads; ++t) {
    threads.emplace_back([&, t] {
      bench::pin_to_cpu(t);
      run_path(path, number, std::max(200L, n / 10));  // warm-up (and first-use set-up)
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      tls_measured_number = kNumbers[number].nr;
      tls_other_count = 0;
      const long before = tls_hook_calls;
      const auto start = std::chrono::steady_clock::now();
      const double cpu_start = thread_cpu_ns();
      const long value = run_path(path, number, n);
      const double cpu_end = thread_cpu_ns();
      const auto end = std::chrono::steady_clock::now();
      Result& r = results[static_cast<std::size_t>(t)];
      r.ns = (cpu_end - cpu_start) / static_cast<double>(n);
      r.wall_ns =
          std::chrono::duration<double, std::nano>(end - start).count() / static_cast<double>(n);
      r.hook_calls = tls_hook_calls - before;
      r.value = value;
      std::memcpy(r.others, tls_other_numbers, sizeof r.others);
      tls_measured_number = -1;
    });
  }
  while (ready.load() < request.threads) {
  }
  go.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();
  bench::Reply reply;
  double sum = 0, wall = 0;
  for (const Result& r : results) {
    if (r.value != expected) {
      return bench::failure("%s returned %ld, expected %ld", kNumbers[number].name, r.value,
                            expected);
    }
    const long want = hooked ? n : 0;
    if (r.hook_calls != want) {
      return bench::failure(
          "%s path %d: the hook ran %ld times for %ld calls (expected %ld); other numbers seen "
          "last: %ld %ld %ld %ld",
          kNumbers[number].name, static_cast<int>(path), r.hook_calls, n, want, r.others[0],
          r.others[1], r.others[2], r.others[3]);
    }
    sum += r.ns;
    wall += r.wall_ns;
  }
  reply.value[0] = sum / static_cast<double>(results.size());
  reply.value[1] = wall / static_cast<double>(results.size());
  return reply;
}

// ---- strace reference ----------------------------------------------------------------------

[[gnu::noinline]] void native_getpid_loop(long n) {
  for (long i = 0; i < n; ++i) {
    long r = getpid();
    asm volatile("" : : "r"(r) : "memory");
  }
}

double time_native_getpid(long n) {
  native_getpid_loop(n / 10);
  const auto start = std::chrono::steady_clock::now();
  native_getpid_loop(n);
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
             .count() /
         static_cast<double>(n);
}

// `bench_modes --loop N FD`: what runs under strace. Writes ns per getpid to FD.
int loop_main(long n, int fd) {
  const double ns = time_native_getpid(n);
  return bench::write_all(fd, &ns, sizeof ns) ? 0 : 1;
}

bool have_program(const char* name) {
  return std::system((std::string("command -v ") + name + " >/dev/null 2>&1").c_str()) == 0;
}

// Runs `strace -f -c -o FILE <self> --loop N FD`; returns ns per call as timed inside the traced
// child, and the number of getpid calls strace counted.
double run_under_strace(long n, long* counted) {
  char self[4096];
  const ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
  if (length <= 0) bench::die("readlink /proc/self/exe failed");
  self[length] = 0;
  char summary[] = "/tmp/bench_modes_strace_XXXXXX";
  const int summary_fd = mkstemp(summary);
  if (summary_fd < 0) bench::die("mkstemp failed");
  close(summary_fd);
  int fds[2];
  if (pipe(fds) != 0) bench::die("pipe failed");
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) bench::die("fork failed");
  if (pid == 0) {
    close(fds[0]);
    const std::string count = std::to_string(n), fd = std::to_string(fds[1]);
    const int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 2);
    execlp("strace", "strace", "-f", "-c", "-o", summary, self, "--loop", count.c_str(), fd.c_str(),
           static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  close(fds[1]);
  double ns = 0;
  const bool got = bench::read_all(fds[0], &ns, sizeof ns);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!got || !WIFEXITED(status) || WEXITSTATUS(status) != 0) bench::die("strace run failed");
  *counted = 0;
  std::ifstream in(summary);
  std::string line;
  while (std::getline(in, line)) {
    // "% time     seconds  usecs/call     calls    errors syscall"
    if (line.size() > 8 && line.compare(line.size() - 7, 7, " getpid") == 0) {
      std::vector<std::string> fields;
      std::size_t at = 0;
      while (at < line.size()) {
        const std::size_t start = line.find_first_not_of(' ', at);
        if (start == std::string::npos) break;
        const std::size_t end = line.find(' ', start);
        fields.push_back(line.substr(start, end == std::string::npos ? end : end - start));
        at = end == std::string::npos ? line.size() : end;
      }
      if (fields.size() >= 5) *counted = std::atol(fields[3].c_str());
    }
  }
  unlink(summary);
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--loop") == 0) {
    return loop_main(std::atol(argv[2]), std::atoi(argv[3]));
  }
  Config config;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      config.rounds = 3;
      config.calls = 4'000;
      config.strace_rounds = 1;
      config.strace_calls = 2'000;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  const auto started = std::chrono::steady_clock::now();
  setvbuf(stdout, nullptr, _IOLBF, 0);
  char method[256];
  std::snprintf(method, sizeof method,
                "median of %d rounds x %ld calls per request (SUD trap: %ld); ratio = variant / "
                "baseline within a round (median [p25..p75])",
                config.rounds, config.calls, config.calls / 10);
  bench::print_header("bench_modes: system call paths by number, mode and thread count", method);
  if (!have_avx2) std::printf("note    no AVX2: the 'ymm upper dirty' rows are plain rewritten\n");

  std::vector<std::unique_ptr<bench::Worker>> workers;
  for (int kind = 0; kind < kKinds; ++kind) {
    workers.push_back(std::make_unique<bench::Worker>(
        kKindNames[kind], [kind] { return setup_worker(static_cast<Kind>(kind)); },
        [kind](const bench::Request& r) { return serve_worker(static_cast<Kind>(kind), r); }));
  }

  // One measurement slot per (number, variant, threads).
  constexpr int kThreadCounts[] = {1, 2};
  struct Slot {
    int number, variant, threads;
    std::vector<double> ns;
    std::vector<double> wall;
  };
  std::vector<Slot> slots;
  for (int number = 0; number < kNumberCount; ++number) {
    for (int variant = 0; variant < kVariantCount; ++variant) {
      for (int threads : kThreadCounts) slots.push_back({number, variant, threads, {}, {}});
    }
  }
  auto slot_index = [&](int number, int variant, int threads) {
    return (number * kVariantCount + variant) * 2 + (threads == 1 ? 0 : 1);
  };

  std::mt19937 shuffle(12345);
  std::vector<std::size_t> order(slots.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (int round = 0; round < config.rounds; ++round) {
    std::shuffle(order.begin(), order.end(), shuffle);
    for (std::size_t index : order) {
      Slot& slot = slots[index];
      const Variant& v = kVariants[slot.variant];
      bench::Request request;
      request.job = slot.number * kPaths + v.path;
      request.threads = slot.threads;
      request.count = v.path == kTrap ? config.calls / 10 : config.calls;
      const bench::Reply reply = workers[v.kind]->run(request);
      slot.ns.push_back(reply.value[0]);
      slot.wall.push_back(reply.value[1]);
    }
  }

  auto ratios = [&](const Slot& a, const Slot& b) {
    std::vector<double> r;
    for (std::size_t i = 0; i < a.ns.size(); ++i) r.push_back(a.ns[i] / b.ns[i]);
    return r;
  };

  for (int threads : kThreadCounts) {
    if (threads == 1) {
      std::printf(
          "\n1 thread: ns per call (thread CPU time; then wall); ratio = variant / native without "
          "install\n");
    } else {
      std::printf(
          "\n2 threads at once: ns per call per thread (CPU time; then wall); ratio = variant / "
          "native without install "
          "on 2 threads; 2T/1T = the same variant on 2 threads / on 1 thread\n");
    }
    for (int number = 0; number < kNumberCount; ++number) {
      std::printf("  %s\n", kNumbers[number].name);
      const Slot& base = slots[slot_index(number, 0, threads)];
      for (int variant = 0; variant < kVariantCount; ++variant) {
        const Slot& s = slots[slot_index(number, variant, threads)];
        const double ns = median(s.ns);
        std::printf("    %-36s %8.1f ns %8.1f", kVariants[variant].label, ns, median(s.wall));
        if (variant == 0) {
          std::printf("   (baseline)                ");
        } else {
          std::printf("   ratio %s", spread(ratios(s, base)).c_str());
        }
        if (threads == 2) {
          const Slot& single = slots[slot_index(number, variant, 1)];
          std::printf("   2T/1T %s", spread(ratios(s, single)).c_str());
        } else if (variant != 0) {
          std::printf("  %+8.1f ns", ns - median(base.ns));
        }
        std::printf("\n");
      }
    }
  }

  for (const Slot& s : slots) {
    if (median(s.wall) > 1.5 * median(s.ns)) {
      std::printf(
          "  note: %s, %s, %d thread(s): wall %.0f ns > 1.5 x CPU %.0f ns per call: the call "
          "makes another thread run (or the machine was busy)\n",
          kNumbers[s.number].name, kVariants[s.variant].label, s.threads, median(s.wall),
          median(s.ns));
    }
  }

  std::printf(
      "\nSUD tax, 1 thread: the same path with SUD armed (exhaustive) / without (eager or no"
      " install); median of per-round ratios, and the difference of the medians\n");
  for (int number = 0; number < kNumberCount; ++number) {
    const Slot& none = slots[slot_index(number, 0, 1)];
    const Slot& eager = slots[slot_index(number, 2, 1)];
    const Slot& sud_native = slots[slot_index(number, 4, 1)];
    const Slot& sud_rewritten = slots[slot_index(number, 5, 1)];
    std::printf("  %-28s native %5.2f (%+6.1f ns)   rewritten %5.2f (%+6.1f ns)\n",
                kNumbers[number].name, median(ratios(sud_native, none)),
                median(sud_native.ns) - median(none.ns), median(ratios(sud_rewritten, eager)),
                median(sud_rewritten.ns) - median(eager.ns));
  }
  // The vDSO's own syscall (a clock without a vDSO fast path), per mode.
  {
    std::vector<double> ns[kKinds], ratio[kKinds], hooked_share[kKinds];
    for (int round = 0; round < std::max(3, config.rounds / 2); ++round) {
      double this_round[kKinds];
      for (int k = 0; k < kKinds; ++k) {
        const int kind = (k + round) % kKinds;
        bench::Request request;
        request.job = kVdsoJob;
        request.count = config.calls / 10;
        const bench::Reply reply = workers[kind]->run(request);
        this_round[kind] = reply.value[0];
        ns[kind].push_back(reply.value[0]);
        hooked_share[kind].push_back(reply.value[1]);
      }
      for (int kind = 0; kind < kKinds; ++kind)
        ratio[kind].push_back(this_round[kind] / this_round[0]);
    }
    std::printf(
        "\nvDSO fallback: libc clock_gettime(CLOCK_THREAD_CPUTIME_ID), whose syscall is in the "
        "vDSO (never rewritten), 1 thread\n");
    for (int kind = 0; kind < kKinds; ++kind) {
      std::printf("    %-36s %8.1f ns", kKindNames[kind], median(ns[kind]));
      if (kind == 0) {
        std::printf("   (baseline)                ");
      } else {
        std::printf("   ratio %s", spread(ratio[kind]).c_str());
      }
      std::printf("   hook runs per call %.2f\n", median(hooked_share[kind]));
    }
  }
  workers.clear();

  // Reference: strace -f -c (ptrace) on the native getpid loop, in a child, against the same loop
  // timed here (no Session in this process), alternately.
  if (have_program("strace")) {
    std::vector<double> native, traced, ratio;  // wall time (strace's cost is in other tasks)
    long counted = 0;
    for (int round = 0; round < config.strace_rounds; ++round) {
      native.push_back(time_native_getpid(config.calls));
      traced.push_back(run_under_strace(config.strace_calls, &counted));
      ratio.push_back(traced.back() / native.back());
    }
    std::printf(
        "\nReference: strace -f -c on the native getpid loop (%d rounds, %ld calls traced)\n",
        config.strace_rounds, config.strace_calls);
    std::printf("  %-38s %8.1f ns   (baseline)\n", "getpid native, no install", median(native));
    std::printf("  %-38s %8.1f ns   ratio %s\n", "getpid under strace -f -c", median(traced),
                spread(ratio).c_str());
    if (counted < config.strace_calls) {
      std::printf("  (strace counted only %ld getpid calls: the figure is suspect)\n", counted);
    } else {
      std::printf("  strace counted %ld getpid calls in its last run\n", counted);
    }
  } else {
    std::printf("\nReference: strace not found, skipped\n");
  }

  std::printf(
      "\nTarget (issue 8): pass-through getpid through a rewritten site <= 1.15x native; "
      "measured %.2fx (eager, 1 thread); <= 1.05x with general_registers_only: measured %.2fx\n",
      median(ratios(slots[slot_index(1, 2, 1)], slots[slot_index(1, 0, 1)])),
      median(ratios(slots[slot_index(1, 7, 1)], slots[slot_index(1, 0, 1)])));
  std::printf("\ntotal run time %.1f s\n", bench::seconds_since(started));
  return 0;
}
