// bench_install: what install() costs in time and memory, for this benchmark process (libc,
// libstdc++, libm, libgcc_s, ld.so) and for the same process with libpython3 loaded.
//
//   ./build/bench/bench_install            full run (about 5-10 s)
//   ./build/bench/bench_install --quick    smoke run
//
// install() works once per process, so every measurement is one forked child that (for the
// python configurations) first dlopen()s libpython3.11.so.1.0, then reads /proc/self/smaps and
// mallinfo2(), calls install(), and reads them again. Every round forks one child per
// configuration, in shuffled order; ratios are against "this process, eager" of the same round.
//
// Figures per child:
//   ms                    InstallStats::total_time: finding and rewriting the sites
//   install() ms          the whole install() call (also maps the trampoline, publishes the hook)
//   cpu ms                thread CPU time of the install() call: unlike the wall times, it leaves
//                         out time the machine (shared, 2 cores) gave to other processes
//   ns/KiB                install time / KiB of executable code in the images scanned
//   code private KiB      growth of Private_Dirty in executable file mappings: the code pages that
//                         rewriting copied (copy-on-write), i.e. pages holding rewritten sites
//   RSS, mapped, heap     growth of Rss and of Size over all mappings (smaps), and of malloc's
//                         bytes in use (mallinfo2: arena + mmapped chunks), across install()
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/syscall.h>

#include <cinttypes>
#include <random>

#include "bench_common.hpp"
#include "zpoline/zpoline.hpp"

namespace {

using bench::median;
using bench::spread;

constexpr const char* kPython = "libpython3.11.so.1.0";

struct Configuration {
  const char* label;
  bool python;
  zpoline::Mode mode;
};
const Configuration kConfigurations[] = {
    {"this process, eager (baseline)", false, zpoline::Mode::eager},
    {"this process, exhaustive", false, zpoline::Mode::exhaustive},
    {"this process, lazy", false, zpoline::Mode::lazy},
    {"+ libpython3.11, eager", true, zpoline::Mode::eager},
    {"+ libpython3.11, lazy", true, zpoline::Mode::lazy},
};
constexpr int kConfigurationCount = sizeof kConfigurations / sizeof kConfigurations[0];

enum Field {
  kInstallMs,
  kImages,
  kCodeKib,
  kDecodedKib,
  kSites,
  kSkipped,
  kCodePrivateKib,
  kRssKib,
  kAnonymousKib,
  kMappedKib,
  kHeapKib,
  kDlopenMs,
  kCallMs,
  kCpuMs,
  kFields
};

long hook_calls = 0;
long pass_through(zpoline::Syscall& call) {
  ++hook_calls;
  return call.forward();
}

struct Memory {
  double code_private_kib = 0;
  double rss_kib = 0;
  double anonymous_kib = 0;
  double size_kib = 0;
  double heap_kib = 0;
};

Memory snapshot() {
  Memory m;
  // Read the whole file first (with raw read()s into a static buffer: no allocation in between).
  static char buffer[1 << 22];
  const int fd = open("/proc/self/smaps", O_RDONLY);
  if (fd < 0) bench::die("cannot open /proc/self/smaps");
  std::size_t used = 0;
  for (;;) {
    const ssize_t n = read(fd, buffer + used, sizeof buffer - 1 - used);
    if (n <= 0) break;
    used += static_cast<std::size_t>(n);
    if (used == sizeof buffer - 1) bench::die("/proc/self/smaps is too large");
  }
  close(fd);
  buffer[used] = 0;
  bool code = false;
  for (char* line = buffer; line < buffer + used;) {
    char* end = std::strchr(line, '\n');
    if (end == nullptr) end = buffer + used;
    *end = 0;
    unsigned long begin = 0, finish = 0;
    char perms[8] = {};
    if (std::sscanf(line, "%lx-%lx %7s", &begin, &finish, perms) == 3 && std::strchr(line, ' ')) {
      // A mapping's header line: executable, file-backed (a path), not page 0 or the relay.
      code = perms[2] == 'x' && std::strchr(line, '/') != nullptr;
    } else {
      long kib = 0;
      if (std::sscanf(line, "Private_Dirty: %ld kB", &kib) == 1 && code) {
        m.code_private_kib += static_cast<double>(kib);
      } else if (std::sscanf(line, "Rss: %ld kB", &kib) == 1) {
        m.rss_kib += static_cast<double>(kib);
      } else if (std::sscanf(line, "Anonymous: %ld kB", &kib) == 1) {
        m.anonymous_kib += static_cast<double>(kib);
      } else if (std::sscanf(line, "Size: %ld kB", &kib) == 1) {
        m.size_kib += static_cast<double>(kib);
      }
    }
    line = end + 1;
  }
  const struct mallinfo2 info = mallinfo2();
  m.heap_kib = static_cast<double>(info.uordblks + info.hblkhd) / 1024;
  return m;
}

bench::Reply measure(const Configuration& configuration) {
  bench::Reply reply;
  if (configuration.python) {
    const auto start = std::chrono::steady_clock::now();
    if (dlopen(kPython, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      return bench::failure("dlopen(%s) failed: %s", kPython, dlerror());
    }
    reply.value[kDlopenMs] = bench::seconds_since(start) * 1e3;
  }
  const Memory before = snapshot();
  zpoline::Options options;
  options.use_environment = false;
  options.mode = configuration.mode;
  zpoline::Session session;
  const auto call_start = std::chrono::steady_clock::now();
  const double cpu_start = bench::thread_cpu_ns();
  try {
    session = zpoline::install(pass_through, options);
  } catch (const zpoline::Error& error) {
    return bench::failure("install failed: %s", error.what());
  }
  reply.value[kCpuMs] = (bench::thread_cpu_ns() - cpu_start) / 1e6;
  reply.value[kCallMs] = bench::seconds_since(call_start) * 1e3;
  const Memory after = snapshot();
  const zpoline::InstallStats& stats = session.stats();
  reply.value[kInstallMs] = static_cast<double>(stats.total_time.count()) / 1e6;
  reply.value[kImages] = static_cast<double>(stats.images.size());
  for (const zpoline::ImageStats& image : stats.images) {
    reply.value[kCodeKib] += static_cast<double>(image.code_bytes) / 1024;
    reply.value[kDecodedKib] += static_cast<double>(image.bytes_decoded) / 1024;
    reply.value[kSites] += static_cast<double>(image.sites_rewritten);
    reply.value[kSkipped] +=
        static_cast<double>(image.skipped_prefixed + image.skipped_red_zone +
                            image.skipped_undecodable + image.skipped_excluded);
  }
  reply.value[kCodePrivateKib] = after.code_private_kib - before.code_private_kib;
  reply.value[kRssKib] = after.rss_kib - before.rss_kib;
  reply.value[kAnonymousKib] = after.anonymous_kib - before.anonymous_kib;
  reply.value[kMappedKib] = after.size_kib - before.size_kib;
  reply.value[kHeapKib] = after.heap_kib - before.heap_kib;
  // The hook must be live (lazy mode: at the first trap of this site).
  const long calls = hook_calls;
  if (getpid() != zpoline::raw_syscall(SYS_getpid) || hook_calls == calls) {
    return bench::failure("the hook did not run after install");
  }
  return reply;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 7;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      rounds = 2;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  const auto started = std::chrono::steady_clock::now();
  setvbuf(stdout, nullptr, _IOLBF, 0);
  char method[200];
  std::snprintf(method, sizeof method,
                "one forked child per configuration and round, %d rounds, shuffled; median "
                "[p25..p75]; ratio = install time / baseline's in the same round",
                rounds);
  bench::print_header("bench_install: install() time and memory", method);

  std::vector<std::vector<bench::Reply>> replies(kConfigurationCount);
  std::vector<int> order(kConfigurationCount);
  for (int i = 0; i < kConfigurationCount; ++i) order[static_cast<std::size_t>(i)] = i;
  std::mt19937 shuffle(4242);
  for (int round = 0; round < rounds; ++round) {
    std::shuffle(order.begin(), order.end(), shuffle);
    for (int index : order) {
      const Configuration& configuration = kConfigurations[index];
      bench::Worker worker(
          configuration.label, [] { return bench::Reply{}; },
          [&configuration](const bench::Request&) { return measure(configuration); });
      replies[static_cast<std::size_t>(index)].push_back(worker.run(bench::Request{}));
    }
  }

  auto field = [&](int configuration, Field f) {
    std::vector<double> values;
    for (const bench::Reply& r : replies[static_cast<std::size_t>(configuration)]) {
      values.push_back(r.value[f]);
    }
    return values;
  };
  std::printf("\nInstall time\n");
  std::printf("  %-32s %7s %18s %11s %7s %7s %9s %8s %6s %8s\n", "", "ms", "ratio", "install() ms",
              "cpu ms", "ns/KiB", "code KiB", "decoded", "sites", "skipped");
  std::printf("  (lazy mode scans nothing at install: its ns/KiB is shown as 0)\n");
  for (int c = 0; c < kConfigurationCount; ++c) {
    std::vector<double> ratio, per_kib;
    const auto& mine = replies[static_cast<std::size_t>(c)];
    for (std::size_t r = 0; r < mine.size(); ++r) {
      ratio.push_back(mine[r].value[kInstallMs] / replies[0][r].value[kInstallMs]);
      if (mine[r].value[kCodeKib] > 0) {
        per_kib.push_back(mine[r].value[kInstallMs] * 1e6 / mine[r].value[kCodeKib]);
      }
    }
    const double kib = median(field(c, kCodeKib));
    std::printf("  %-32s %7.2f  %s %11.2f %7.2f %7.0f %9.0f %8.1f %6.0f %8.0f\n",
                kConfigurations[c].label, median(field(c, kInstallMs)),
                c == 0 ? "    (baseline)   " : spread(ratio).c_str(), median(field(c, kCallMs)),
                median(field(c, kCpuMs)), kib > 0 ? median(per_kib) : 0.0,
                median(field(c, kCodeKib)), median(field(c, kDecodedKib)), median(field(c, kSites)),
                median(field(c, kSkipped)));
  }
  std::printf("  (ms: median [p25..p75] of the ratio; min..max ms:");
  for (int c = 0; c < kConfigurationCount; ++c) {
    const std::vector<double> ms = field(c, kInstallMs);
    std::printf(" %.1f..%.1f", *std::min_element(ms.begin(), ms.end()),
                *std::max_element(ms.begin(), ms.end()));
  }
  std::printf("; images: %.0f and %.0f with python; dlopen of libpython took %.1f ms)\n",
              median(field(0, kImages)), median(field(3, kImages)), median(field(3, kDlopenMs)));

  std::printf("\nMemory, growth across install() (KiB; median)\n");
  std::printf("  %-32s %14s %10s %10s %10s %10s\n", "", "code private", "anonymous", "RSS",
              "mapped", "heap");
  for (int c = 0; c < kConfigurationCount; ++c) {
    const double private_kib = median(field(c, kCodePrivateKib));
    std::printf("  %-32s %7.0f (%3.0f p) %10.0f %10.0f %10.0f %10.0f\n", kConfigurations[c].label,
                private_kib, private_kib / 4, median(field(c, kAnonymousKib)),
                median(field(c, kRssKib)), median(field(c, kMappedKib)),
                median(field(c, kHeapKib)));
  }
  std::printf(
      "  code private: code pages copied by rewriting (Private_Dirty of executable file mappings; "
      "KiB and 4 KiB pages)\n"
      "  anonymous: all private memory, the copied code pages included; RSS: also counts the\n"
      "  shared file pages of code that the scan read; mapped: address space (Size); heap: malloc "
      "in use\n");

  std::printf(
      "\nTargets (issue 8): install < 5 ms for this process, measured %.2f ms (install() %.2f ms, "
      "cpu %.2f ms); < 15 ms with libpython3, measured %.2f ms (install() %.2f ms, cpu %.2f ms) "
      "(eager)\n",
      median(field(0, kInstallMs)), median(field(0, kCallMs)), median(field(0, kCpuMs)),
      median(field(3, kInstallMs)), median(field(3, kCallMs)), median(field(3, kCpuMs)));
  std::printf("\ntotal run time %.1f s\n", bench::seconds_since(started));
  return 0;
}
