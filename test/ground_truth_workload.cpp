// The workload of the ground-truth test (test_ground_truth.py): one deterministic scenario of
// code that install-time rewriting cannot have seen, run between two marker calls.
//
//   ground_truth_workload CASE MODE REPORT
//
// CASE is dlopen, jit, prefixed, thread, fork or python (when built with CPython); MODE is eager,
// exhaustive, lazy, or none (no install: the reference run that strace counts). With a mode, a
// counting hook tallies every call that reaches it between the markers, per syscall number, in
// memory shared with fork children; REPORT then gets one line "calls NUMBER COUNT" per number, plus
// "check NAME VALUE" lines with what the coverage report said. The markers are close(-1001) and
// close(-1002), which strace -f shows as such; the driver compares its counts between them with the
// hook's.
//
// Nothing between the markers depends on the mode: no output, no allocation that could move the
// heap's end (the heap is padded beforehand in every mode), waits that spin instead of blocking.
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "support.hpp"
#include "zpoline/zpoline.hpp"

#ifdef ZPOLINE_GROUND_TRUTH_PYTHON
#include <Python.h>
#endif

namespace {

constexpr long kBeginMarker = -1001;
constexpr long kEndMarker = -1002;
constexpr int kRepetitions = 20;
constexpr long kMaxNumber = 1024;

// Shared with fork children, so that a child's calls are counted where the parent reports them.
struct Tally {
  std::atomic<int> counting;
  std::atomic<long> calls[kMaxNumber];
  std::atomic<long> out_of_range;
};
Tally* tally = nullptr;

long counting_hook(zpoline::Syscall& call) {
  const long number = call.number();
  if (number == SYS_close && (call.arg(0) == kBeginMarker || call.arg(0) == kEndMarker)) {
    tally->counting.store(call.arg(0) == kBeginMarker ? 1 : 0);
  } else if (tally->counting.load() != 0) {
    if (number >= 0 && number < kMaxNumber) {
      tally->calls[number].fetch_add(1);
    } else {
      tally->out_of_range.fetch_add(1);
    }
  }
  return call.forward();
}

void marker(long which) {
  syscall(SYS_close, which);
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "ground_truth_workload: %s\n", what);
  std::exit(2);
}

// Code written into memory that is already executable, after mapping it: the JIT case's
// `mov $39,%eax; syscall; ret` and the prefixed case's `mov $39,%eax; 66 0f 05; ret`.
long (*write_code(unsigned char* memory, bool prefixed))() {
  const unsigned char plain[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
  const unsigned char with_prefix[] = {0xb8, 39, 0, 0, 0, 0x66, 0x0f, 0x05, 0xc3};
  if (prefixed) {
    std::memcpy(memory, with_prefix, sizeof with_prefix);
  } else {
    std::memcpy(memory, plain, sizeof plain);
  }
  return reinterpret_cast<long (*)()>(memory);
}

// Spins (no system call: clock_gettime is answered by the vDSO) until the rewriter thread has
// turned the JIT site into `call *%rax`; false after 10 s.
bool wait_until_rewritten(const volatile unsigned char* site) {
  timespec start{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  while (!zpoline_test::is_rewritten_site(const_cast<const unsigned char*>(site))) {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec > 10) return false;
    __builtin_ia32_pause();
  }
  return true;
}

void put_check(std::FILE* report, const char* name, long value) {
  std::fprintf(report, "check %s %ld\n", name, value);
}

void* thread_body(void*) {
  for (int i = 0; i < kRepetitions; ++i) {
    getpid();
    syscall(SYS_gettid);
  }
  return nullptr;
}

// The scenarios. Each runs between the markers; `session` is empty in the reference run.
void run_dlopen(const char* library_path) {
  void* library = dlopen(library_path, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) fail(dlerror());
  auto late_getpid = reinterpret_cast<long (*)()>(dlsym(library, "late_getpid"));
  auto late_getppid = reinterpret_cast<long (*)()>(dlsym(library, "late_getppid"));
  if (late_getpid == nullptr || late_getppid == nullptr) fail("late_code symbols missing");
  for (int i = 0; i < kRepetitions; ++i) {
    late_getpid();
    late_getppid();
  }
  dlclose(library);
}

void run_jit(const zpoline::Session* session, bool prefixed, std::string& deferred) {
  auto* memory = static_cast<unsigned char*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (memory == MAP_FAILED) fail("mmap of the JIT buffer failed");
  long (*code)() = write_code(memory, prefixed);
  const std::uintptr_t site = reinterpret_cast<std::uintptr_t>(memory) + (prefixed ? 6 : 5);
  code();  // traps under SUD (exhaustive, lazy); escapes the hook in eager
  bool rewritten = false;
  if (session != nullptr && session->mode() != zpoline::Mode::eager && !prefixed) {
    rewritten = wait_until_rewritten(memory + 5);
  }
  const zpoline::Session::CallCounts before =
      session ? session->calls() : zpoline::Session::CallCounts{};
  for (int i = 1; i < kRepetitions; ++i) code();
  const zpoline::Session::CallCounts after =
      session ? session->calls() : zpoline::Session::CallCounts{};
  const bool rewritten_at_end = reinterpret_cast<const unsigned char*>(site)[0] == 0xff;
  munmap(memory, 4096);
  // Reported after the end marker (formatting may allocate).
  char line[256];
  std::snprintf(line, sizeof line,
                "check rewritten_after_first_call %d\ncheck rewritten_at_end %d\n"
                "check later_calls_through_sites %ld\ncheck later_calls_through_net %ld\n"
                "check site_address %ld\n",
                rewritten ? 1 : 0, rewritten_at_end ? 1 : 0,
                static_cast<long>(after.through_sites - before.through_sites),
                static_cast<long>(after.through_net - before.through_net), static_cast<long>(site));
  deferred += line;
}

void run_thread() {
  pthread_t thread;
  if (pthread_create(&thread, nullptr, thread_body, nullptr) != 0) fail("pthread_create failed");
  // pthread_join would block in futex() or not, depending on timing; tryjoin makes no system
  // call while the thread runs, so spinning on it keeps the count the same in every run.
  while (pthread_tryjoin_np(thread, nullptr) != 0) __builtin_ia32_pause();
}

void run_fork() {
  const pid_t child = fork();
  if (child < 0) fail("fork failed");
  if (child == 0) {
    for (int i = 0; i < kRepetitions; ++i) {
      getppid();
      syscall(SYS_getpid);
    }
    _exit(0);
  }
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) fail("fork child failed");
}

#ifdef ZPOLINE_GROUND_TRUTH_PYTHON
// Real code loaded after install: CPython (Debian's libpython3) imports extension modules, which
// dlopen them and the libraries they need (libsqlite3, libbz2), and runs them.
constexpr const char* kPythonScript = R"py(
import _bz2, _json, _sqlite3
data = _bz2.BZ2Compressor().compress(b"zpoline" * 1000)
connection = _sqlite3.connect(":memory:")
connection.execute("create table t (x)")
connection.executemany("insert into t values (?)", [(i,) for i in range(100)])
total = connection.execute("select sum(x) from t").fetchone()[0]
assert total == 4950, total
)py";
#endif

std::optional<zpoline::Mode> parse_mode(std::string_view name) {
  if (name == "eager") return zpoline::Mode::eager;
  if (name == "exhaustive") return zpoline::Mode::exhaustive;
  if (name == "lazy") return zpoline::Mode::lazy;
  if (name == "none") return std::nullopt;
  fail("MODE must be eager, exhaustive, lazy or none");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr,
                 "usage: %s dlopen|jit|prefixed|thread|fork eager|exhaustive|lazy|none "
                 "REPORT\n",
                 argv[0]);
    return 2;
  }
  const std::string_view scenario = argv[1];
  const std::optional<zpoline::Mode> mode = parse_mode(argv[2]);
  std::FILE* report = std::fopen(argv[3], "w");
  if (report == nullptr) fail("cannot open the report file");

  // The same heap in every mode: grow it once, far beyond what the scenarios allocate, and never
  // give it back, so that no scenario moves the heap's end (brk) in one run and not in another.
  mallopt(M_TOP_PAD, 16 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  free(malloc(1 << 20));

  void* shared =
      mmap(nullptr, sizeof(Tally), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) fail("mmap of the tally failed");
  tally = new (shared) Tally{};

  // glibc initialises some things on first use (the first thread sets up a signal handler); do
  // that before install in every mode, so that the window holds the same calls whether or not the
  // library has started a thread of its own. Two threads alive at once leave two stacks in
  // glibc's cache: the library's own thread (exhaustive and lazy modes) takes one, the scenario's
  // thread the other, as in the reference run.
  if (scenario == "thread") {
    pthread_t first, second;
    if (pthread_create(&first, nullptr, thread_body, nullptr) != 0 ||
        pthread_create(&second, nullptr, thread_body, nullptr) != 0) {
      fail("pthread_create failed");
    }
    pthread_join(first, nullptr);
    pthread_join(second, nullptr);
  }

#ifdef ZPOLINE_GROUND_TRUTH_PYTHON
  if (scenario == "python") {
    Py_InitializeEx(0);  // before install in every mode: the window holds the imports only
  }
#endif

  zpoline::Session session;
  if (mode) {
    zpoline::Options options;
    options.mode = *mode;
    options.use_environment = false;
    try {
      session = zpoline::install(counting_hook, options);
    } catch (const zpoline::Error& error) {
      if (error.code() == zpoline::ErrorCode::page_zero_refused) {
        std::fprintf(stderr, "SKIP: this machine does not allow page 0: %s\n", error.what());
        return 77;
      }
      std::fprintf(stderr, "install failed: %s\n", error.what());
      return 2;
    }
  }
  const zpoline::Session* active = mode ? &session : nullptr;
  const zpoline::Session::CallCounts calls_before =
      active ? active->calls() : zpoline::Session::CallCounts{};
  std::string deferred;
  deferred.reserve(4096);  // no allocation between the markers

  marker(kBeginMarker);
  if (scenario == "dlopen") {
    run_dlopen(ZPOLINE_LATE_LIBRARY);
  } else if (scenario == "jit" || scenario == "prefixed") {
    run_jit(active, scenario == "prefixed", deferred);
  } else if (scenario == "thread") {
    run_thread();
  } else if (scenario == "fork") {
    run_fork();
#ifdef ZPOLINE_GROUND_TRUTH_PYTHON
  } else if (scenario == "python") {
    if (PyRun_SimpleString(kPythonScript) != 0) fail("the Python script failed");
#endif
  } else {
    fail("unknown CASE");
  }
  marker(kEndMarker);
  const zpoline::Session::CallCounts calls_after =
      active ? active->calls() : zpoline::Session::CallCounts{};

  if (active) {
    if (tally->counting.load() != 0) fail("the hook never saw the end marker");
    for (long number = 0; number < kMaxNumber; ++number) {
      const long count = tally->calls[number].load();
      if (count != 0) std::fprintf(report, "calls %ld %ld\n", number, count);
    }
    put_check(report, "out_of_range", tally->out_of_range.load());
    put_check(report, "window_calls_through_sites",
              static_cast<long>(calls_after.through_sites - calls_before.through_sites));
    put_check(report, "window_calls_through_net",
              static_cast<long>(calls_after.through_net - calls_before.through_net));
    const zpoline::Session::LateCoverage coverage = active->late_coverage();
    for (const auto& site : coverage.lazily_rewritten) {
      std::fprintf(report, "lazy_site %ld %s\n", static_cast<long>(site.address),
                   site.image.empty() ? "-" : site.image.c_str());
    }
    for (const auto& image : coverage.images) {
      std::fprintf(report, "late_image %zu %s\n", image.sites_rewritten, image.path.c_str());
    }
    std::fputs(deferred.c_str(), report);
  }
  std::fclose(report);
  return 0;
}
