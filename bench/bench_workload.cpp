// bench_workload: real work with and without a pass-through hook, as throughput ratios.
//
//   ./build/bench/bench_workload            full run (about 20-30 s)
//   ./build/bench/bench_workload --quick    smoke run
//
// Two worker processes are forked at start: "native" (no Session) and "hooked" (install() with
// `return call.forward();`). Each round asks both for every workload, in shuffled order (the
// parent only waits), and the ratio is hooked throughput / native throughput of the same round.
//
// Workloads:
//   sqlite insert   one INSERT per transaction (autocommit) into a file database with a rollback
//                   journal (journal_mode=DELETE, synchronous=OFF: the journal is created, written
//                   and deleted on every commit, but nothing waits for the disk)
//   sqlite query    one SELECT by random primary key per statement, outside any transaction (each
//                   takes and drops the shared lock and checks the file for changes)
//   tcp echo        64-byte messages over loopback TCP (127.0.0.1, TCP_NODELAY) to an echo thread
//                   in the same process; one message in flight; a bounded count per round
// Each worker runs on one CPU (both of its threads).
// The hooked worker also counts the calls that reached its hook: syscalls per operation.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sqlite3.h>
#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <random>
#include <thread>

#include "bench_common.hpp"
#include "zpoline/zpoline.hpp"

namespace {

using bench::median;
using bench::spread;

struct Config {
  int rounds = 15;
  long inserts = 1'500;
  long queries = 15'000;
  long messages = 4'000;
};

enum Job { kInsert, kQuery, kEcho, kJobs };
const char* const kJobNames[] = {"sqlite insert (autocommit)", "sqlite query (point select)",
                                 "tcp echo, 64 B round trip"};
constexpr long kPrefill = 10'000;  // rows present before the queries

// ---- in the workers ------------------------------------------------------------------------

thread_local long tls_hook_calls = 0;
std::atomic<long> server_hook_calls{0};  // written by the echo thread only

long pass_through(zpoline::Syscall& call) {
  ++tls_hook_calls;
  return call.forward();
}

zpoline::Session session;
std::string directory;
sqlite3* db = nullptr;
sqlite3_stmt* insert = nullptr;
sqlite3_stmt* query = nullptr;
long next_id = kPrefill + 1;
int client = -1;
std::mt19937 random_ids(7);

bool exec(const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::fprintf(stderr, "bench_workload: %s: %s\n", sql, error ? error : "?");
    sqlite3_free(error);
    return false;
  }
  return true;
}

void echo_server(int listener) {
  const int connection = accept(listener, nullptr, nullptr);
  close(listener);
  if (connection < 0) return;
  const int one = 1;
  setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(connection, buffer, sizeof buffer);
    if (n <= 0) break;
    if (!bench::write_all(connection, buffer, static_cast<std::size_t>(n))) break;
    server_hook_calls.store(tls_hook_calls, std::memory_order_relaxed);
  }
  close(connection);
}

bench::Reply setup_worker(bool hooked) {
  // One CPU for the whole worker (the echo thread inherits it): a round trip is then two context
  // switches on that CPU, instead of depending on where the scheduler puts the two threads (which
  // made the echo rate bimodal, 12k or 50k op/s, on the 2-vCPU machine).
  bench::pin_to_cpu(0);
  char path[] = "/tmp/bench_workload_XXXXXX";
  if (mkdtemp(path) == nullptr) return bench::failure("mkdtemp failed");
  directory = path;
  const std::string file = directory + "/bench.db";
  if (sqlite3_open(file.c_str(), &db) != SQLITE_OK) return bench::failure("sqlite3_open failed");
  if (!exec("PRAGMA journal_mode=DELETE") || !exec("PRAGMA synchronous=OFF") ||
      !exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)") || !exec("BEGIN")) {
    return bench::failure("sqlite set-up failed");
  }
  sqlite3_stmt* fill = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO t(id, v) VALUES(?1, printf('%0100d', ?1))", -1, &fill,
                     nullptr);
  for (long id = 1; id <= kPrefill; ++id) {
    sqlite3_bind_int64(fill, 1, id);
    if (sqlite3_step(fill) != SQLITE_DONE) return bench::failure("prefill failed");
    sqlite3_reset(fill);
  }
  sqlite3_finalize(fill);
  if (!exec("COMMIT")) return bench::failure("prefill commit failed");
  if (sqlite3_prepare_v2(db, "INSERT INTO t(id, v) VALUES(?1, printf('%0100d', ?1))", -1, &insert,
                         nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "SELECT length(v) FROM t WHERE id = ?1", -1, &query, nullptr) !=
          SQLITE_OK) {
    return bench::failure("prepare failed");
  }

  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return bench::failure("loopback listener failed: %s", std::strerror(errno));
  }
  if (hooked) {
    // Installed before the echo thread starts, so that it is hooked from its first call.
    zpoline::Options options;
    options.use_environment = false;
    try {
      session = zpoline::install(pass_through, options);
    } catch (const zpoline::Error& error) {
      return bench::failure("install failed: %s", error.what());
    }
  }
  std::thread(echo_server, listener).detach();
  client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (client < 0 || connect(client, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    return bench::failure("connect to 127.0.0.1 failed: %s", std::strerror(errno));
  }
  const int one = 1;
  setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bench::Reply ready;
  std::snprintf(ready.message, sizeof ready.message, "%s", directory.c_str());
  return ready;
}

bool run_inserts(long n) {
  for (long i = 0; i < n; ++i) {
    sqlite3_bind_int64(insert, 1, next_id++);
    if (sqlite3_step(insert) != SQLITE_DONE) return false;
    sqlite3_reset(insert);
  }
  return true;
}

bool run_queries(long n) {
  std::uniform_int_distribution<long> ids(1, kPrefill);
  for (long i = 0; i < n; ++i) {
    sqlite3_bind_int64(query, 1, ids(random_ids));
    if (sqlite3_step(query) != SQLITE_ROW || sqlite3_column_int(query, 0) != 100) return false;
    sqlite3_reset(query);
  }
  return true;
}

bool run_echo(long n) {
  char message[64];
  std::memset(message, 'x', sizeof message);
  char reply[64];
  for (long i = 0; i < n; ++i) {
    message[0] = static_cast<char>(i);
    if (!bench::write_all(client, message, sizeof message)) return false;
    if (!bench::read_all(client, reply, sizeof reply)) return false;
    if (reply[0] != message[0]) return false;
  }
  return true;
}

bench::Reply serve_worker(const bench::Request& request) {
  const long n = request.count;
  const long before = tls_hook_calls + server_hook_calls.load();
  const auto start = std::chrono::steady_clock::now();
  const double cpu_start = bench::process_cpu_ns();
  bool ok = false;
  switch (request.job) {
    case kInsert:
      ok = run_inserts(n);
      break;
    case kQuery:
      ok = run_queries(n);
      break;
    case kEcho:
      ok = run_echo(n);
      break;
  }
  const double seconds = bench::seconds_since(start);
  const double cpu_ns = bench::process_cpu_ns() - cpu_start;
  if (!ok) return bench::failure("%s failed: %s", kJobNames[request.job], sqlite3_errmsg(db));
  bench::Reply reply;
  reply.value[0] = static_cast<double>(n) / seconds;  // operations per second
  reply.value[2] = cpu_ns / static_cast<double>(n);   // CPU time (all threads) per operation
  reply.value[1] = static_cast<double>(tls_hook_calls + server_hook_calls.load() - before) /
                   static_cast<double>(n);
  return reply;
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      config.rounds = 3;
      config.inserts = 200;
      config.queries = 2'000;
      config.messages = 500;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  const auto started = std::chrono::steady_clock::now();
  setvbuf(stdout, nullptr, _IOLBF, 0);
  char method[256];
  std::snprintf(method, sizeof method,
                "median of %d rounds (%ld inserts, %ld queries, %ld echoes per round); ratio = "
                "hooked / native throughput within a round (median [p25..p75])",
                config.rounds, config.inserts, config.queries, config.messages);
  bench::print_header("bench_workload: sqlite3 and loopback TCP with a pass-through hook", method);
  std::printf("sqlite  %s\n", sqlite3_libversion());

  auto native = std::make_unique<bench::Worker>(
      "native", [] { return setup_worker(false); }, serve_worker);
  auto hooked = std::make_unique<bench::Worker>(
      "hooked", [] { return setup_worker(true); }, serve_worker);
  const std::string directories[] = {native->ready().message, hooked->ready().message};
  const long counts[kJobs] = {config.inserts, config.queries, config.messages};

  std::vector<double> rate[kJobs][2], ratio[kJobs], per_op[kJobs], cpu[kJobs][2], cpu_ratio[kJobs];
  std::vector<std::pair<int, int>> order;
  for (int job = 0; job < kJobs; ++job) {
    order.emplace_back(job, 0);
    order.emplace_back(job, 1);
  }
  std::mt19937 shuffle(99);
  for (int round = 0; round < config.rounds; ++round) {
    std::shuffle(order.begin(), order.end(), shuffle);
    double this_round[kJobs][2] = {};
    double this_round_cpu[kJobs][2] = {};
    for (const auto& [job, which] : order) {
      bench::Request request;
      request.job = job;
      request.count = counts[job];
      const bench::Reply reply = (which == 0 ? native : hooked)->run(request);
      this_round[job][which] = reply.value[0];
      this_round_cpu[job][which] = reply.value[2];
      cpu[job][which].push_back(reply.value[2]);
      rate[job][which].push_back(reply.value[0]);
      if (which == 1) per_op[job].push_back(reply.value[1]);
    }
    for (int job = 0; job < kJobs; ++job) {
      ratio[job].push_back(this_round[job][1] / this_round[job][0]);
      cpu_ratio[job].push_back(this_round_cpu[job][0] / this_round_cpu[job][1]);
    }
  }

  std::printf("\nThroughput (wall clock)\n");
  std::printf("  %-30s %12s %12s %22s %12s %14s\n", "", "native op/s", "hooked op/s",
              "ratio hooked/native", "syscalls/op", "ns added/call");
  for (int job = 0; job < kJobs; ++job) {
    const double native_rate = median(rate[job][0]);
    const double hooked_rate = median(rate[job][1]);
    const double calls = median(per_op[job]);
    // The time added per operation, spread over the syscalls it makes.
    const double added = calls > 0 ? (1e9 / hooked_rate - 1e9 / native_rate) / calls : 0;
    std::printf("  %-30s %12.0f %12.0f   %s %12.1f %+14.1f\n", kJobNames[job], native_rate,
                hooked_rate, spread(ratio[job]).c_str(), calls, added);
  }
  std::printf(
      "\nCPU time per operation (all threads of the worker; leaves out time preempted by "
      "other processes)\n");
  std::printf("  %-30s %12s %12s %22s %12s %14s\n", "", "native us", "hooked us",
              "ratio native/hooked", "", "ns added/call");
  for (int job = 0; job < kJobs; ++job) {
    const double native_ns = median(cpu[job][0]);
    const double hooked_ns = median(cpu[job][1]);
    const double calls = median(per_op[job]);
    const double added = calls > 0 ? (hooked_ns - native_ns) / calls : 0;
    std::printf("  %-30s %12.2f %12.2f   %s %12s %+14.1f\n", kJobNames[job], native_ns / 1e3,
                hooked_ns / 1e3, spread(cpu_ratio[job]).c_str(), "", added);
  }
  std::printf(
      "  (ratio native/hooked of CPU time = throughput ratio if CPU-bound; ns added/call: "
      "the time added per operation / syscalls per operation)\n");
  native.reset();
  hooked.reset();
  for (const std::string& d : directories) {
    unlink((d + "/bench.db").c_str());
    unlink((d + "/bench.db-journal").c_str());
    rmdir(d.c_str());
  }
  std::printf("\nTarget (issue 8): throughput within 5%% of native (ratio >= 0.95); measured");
  for (int job = 0; job < kJobs; ++job) {
    std::printf(" %.3f (cpu %.3f)", median(ratio[job]), median(cpu_ratio[job]));
  }
  std::printf("\n\ntotal run time %.1f s\n", bench::seconds_since(started));
  return 0;
}
