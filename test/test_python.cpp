// Real programs: CPython 3.11 embedded in python_host runs the scripts in test/python/, once as is
// and once with every system call hooked (python_host --hook: a pass-through hook that counts).
// The two runs must exit the same way and print byte-identical, non-empty stdout, and the hooked
// run must report on stderr that its hook saw the program's system calls.
//
// Each TEST_CASE runs in its own process like the other scenario suites (one meson test per case).
// This process installs nothing; the hooked run exiting 77 (page 0 refused) skips the case.
// PYTHON_HOST (the python_host executable) and PYTHON_SCRIPTS (the scripts' directory) come from
// test/python/meson.build.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#ifndef PYTHON_HOST
#error "PYTHON_HOST must name the python_host executable"
#endif
#ifndef PYTHON_SCRIPTS
#error "PYTHON_SCRIPTS must name the directory of the test scripts"
#endif

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

// Each run may take this long before it is killed (two runs fit in meson's 120 s timeout).
constexpr auto kRunTimeout = std::chrono::seconds(50);
// After the host has exited, how long its pipes may stay open (held by a leftover descendant).
constexpr auto kDrainGrace = std::chrono::seconds(3);
// The fewest system calls a hooked run of any script makes (interpreter start-up alone makes ~300).
constexpr long kMinHookedSyscalls = 100;

struct Run {
  std::string command;
  int status = 0;  // as from waitpid
  bool timed_out = false;
  bool pipes_left_open = false;
  std::string out;
  std::string err;
};

std::string describe_status(const Run& run) {
  std::string text;
  if (WIFEXITED(run.status)) {
    text = "exited " + std::to_string(WEXITSTATUS(run.status));
  } else if (WIFSIGNALED(run.status)) {
    text = "killed by signal " + std::to_string(WTERMSIG(run.status)) + " (" +
           strsignal(WTERMSIG(run.status)) + ")" + (WCOREDUMP(run.status) ? ", core dumped" : "");
  } else {
    text = "wait status " + std::to_string(run.status);
  }
  if (run.timed_out) {
    text += " after timing out (" + std::to_string(kRunTimeout.count()) + " s)";
  }
  if (run.pipes_left_open) text += "; a descendant kept its stdout/stderr open";
  return text;
}

// The environment of both runs: ours, with string hashing fixed (no set-order differences between
// the runs) and no bytecode written into the source tree.
std::vector<std::string> child_environment() {
  std::vector<std::string> env;
  for (char** entry = environ; *entry; ++entry) {
    const std::string_view text(*entry);
    if (text.starts_with("PYTHONHASHSEED=") || text.starts_with("PYTHONDONTWRITEBYTECODE=")) {
      continue;
    }
    env.emplace_back(text);
  }
  env.emplace_back("PYTHONHASHSEED=0");
  env.emplace_back("PYTHONDONTWRITEBYTECODE=1");
  return env;
}

// Runs args[0] with stdin from /dev/null and stdout and stderr captured; never hangs longer than
// kRunTimeout (+ kDrainGrace).
Run run_program(const std::vector<std::string>& args) {
  Run run;
  for (const auto& arg : args) run.command += (run.command.empty() ? "" : " ") + arg;

  int out_pipe[2], err_pipe[2];
  REQUIRE(pipe2(out_pipe, O_CLOEXEC) == 0);
  REQUIRE(pipe2(err_pipe, O_CLOEXEC) == 0);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);

  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_strings = child_environment();
  std::vector<char*> envp;
  for (auto& entry : env_strings) envp.push_back(entry.data());
  envp.push_back(nullptr);

  pid_t pid = -1;
  const int spawn_error = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (spawn_error != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    FAIL("posix_spawn " << run.command << ": " << std::strerror(spawn_error));
  }

  const auto deadline = Clock::now() + kRunTimeout;
  Clock::time_point exited_at{};
  bool reaped = false;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&run.out, &run.err};
  int open_pipes = 2;
  while (open_pipes > 0) {
    const int ready = poll(fds, 2, 100);
    if (ready < 0 && errno != EINTR) FAIL("poll: " << std::strerror(errno));
    for (int i = 0; i < 2 && ready > 0; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buffer[65536];
      const ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
      if (n > 0) {
        sinks[i]->append(buffer, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_pipes;
      }
    }
    if (!reaped) {
      const pid_t waited = waitpid(pid, &run.status, WNOHANG);
      if (waited == pid) {
        reaped = true;
        exited_at = Clock::now();
      } else if (Clock::now() > deadline) {
        run.timed_out = true;
        kill(pid, SIGKILL);
        waitpid(pid, &run.status, 0);
        reaped = true;
        exited_at = Clock::now();
      }
    } else if (open_pipes > 0 && Clock::now() - exited_at > kDrainGrace) {
      run.pipes_left_open = true;
      break;
    }
  }
  for (const auto& fd : fds) {
    if (fd.fd >= 0) close(fd.fd);
  }
  if (!reaped) waitpid(pid, &run.status, 0);
  return run;
}

// Where two outputs first differ, by line, for the failure message.
std::string first_difference(const std::string& expected, const std::string& actual) {
  std::size_t line = 1, start = 0;
  const std::size_t common = std::min(expected.size(), actual.size());
  std::size_t i = 0;
  for (; i < common && expected[i] == actual[i]; ++i) {
    if (expected[i] == '\n') {
      ++line;
      start = i + 1;
    }
  }
  auto line_at = [start](const std::string& text) {
    if (start >= text.size()) return std::string("<end of output>");
    const std::size_t end = text.find('\n', start);
    return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
  };
  return "stdout differs at byte " + std::to_string(i) + ", line " + std::to_string(line) +
         ":\n  unhooked: " + line_at(expected) + "\n  hooked:   " + line_at(actual) +
         "\n(sizes: unhooked " + std::to_string(expected.size()) + ", hooked " +
         std::to_string(actual.size()) + " bytes)";
}

void run_script_both_ways(const char* script) {
  const std::string path = std::string(PYTHON_SCRIPTS) + "/" + script;
  const Run plain = run_program({PYTHON_HOST, path});
  const Run hooked = run_program({PYTHON_HOST, "--hook", path});

  if (WIFEXITED(hooked.status) && WEXITSTATUS(hooked.status) == 77) {
    std::fprintf(stderr, "SKIP: the hooked run could not install: %s\n", hooked.err.c_str());
    std::_Exit(77);
  }

  INFO("unhooked: ", plain.command, ": ", describe_status(plain), "\n--- stdout ---\n", plain.out,
       "--- stderr ---\n", plain.err);
  INFO("hooked: ", hooked.command, ": ", describe_status(hooked), "\n--- stdout ---\n", hooked.out,
       "--- stderr ---\n", hooked.err);

  // The script itself works (else the test, not the library, is broken).
  CHECK_MESSAGE(plain.status == 0, "unhooked run ", describe_status(plain));
  CHECK_FALSE(plain.timed_out);
  CHECK_FALSE(plain.out.empty());

  CHECK_MESSAGE(hooked.status == plain.status, "hooked run ", describe_status(hooked),
                ", unhooked run ", describe_status(plain));
  CHECK_FALSE(hooked.timed_out);
  CHECK_MESSAGE(hooked.out == plain.out, first_difference(plain.out, hooked.out));

  static const std::regex summary(R"(zpoline: hooked (\d+) syscalls \((\d+) distinct numbers\))");
  std::smatch match;
  const bool reported = std::regex_search(hooked.err, match, summary);
  CHECK_MESSAGE(reported, "no 'zpoline: hooked N syscalls' line on the hooked run's stderr");
  if (reported) {
    const long calls = std::stol(match[1]);
    CHECK(calls >= kMinHookedSyscalls);
    CHECK(std::stol(match[2]) > 1);
    // The summary line in the log of this test.
    const std::size_t end = hooked.err.find('\n', static_cast<std::size_t>(match.position(0)));
    MESSAGE(std::string(script), ": ",
            hooked.err.substr(static_cast<std::size_t>(match.position(0)),
                              end == std::string::npos ? end : end - match.position(0)));
  }
  // The summary goes to stderr only.
  CHECK(hooked.out.find("zpoline: hooked") == std::string::npos);
}

}  // namespace

TEST_CASE("python_threads") {
  run_script_both_ways("threads.py");
}

TEST_CASE("python_subprocess_spawn") {
  run_script_both_ways("subprocess_spawn.py");
}

TEST_CASE("python_signals") {
  run_script_both_ways("signals.py");
}

TEST_CASE("python_fork") {
  run_script_both_ways("fork.py");
}

TEST_CASE("python_sockets") {
  run_script_both_ways("sockets.py");
}

TEST_CASE("python_extensions") {
  run_script_both_ways("extensions.py");
}
