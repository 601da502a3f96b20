// zptrace's settings (parsed from strace's command line by the launcher, passed to every traced
// process in one environment variable) and the layout of a line as strace 6.1 prints it:
//
//   [pid prefix][timestamp]call text, padded to column 39, " = result"[ <-T time>]
//
// The pid prefix: none with -ff (one file per thread); "%-5d " with -f and -o FILE; "[pid %5d] "
// with -f on standard error while more than one thread or process is traced.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <bitset>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <string_view>

#include "protocol.hpp"

namespace zptrace {

struct Settings {
  bool follow = false;                // -f
  bool per_thread = false;            // -ff with -o: FILE.TID
  bool summary = false;               // -c: only the table
  bool also_summary = false;          // -C: the trace and the table
  int timestamps = 0;                 // -t 1, -tt 2, -ttt 3
  bool call_times = false;            // -T
  bool decode_fds = false;            // -y
  int quiet = 0;                      // -q 1, -qq 2
  unsigned string_limit = 32;         // -s
  std::bitset<kSyscallSlots> traced;  // -e trace=
  std::bitset<65> signals;            // -e signal=
  std::string output;                 // -o FILE, or /proc/<zptrace>/fd/2 for standard error
  bool output_is_stderr = true;

  bool prints_calls() const { return !summary; }
  bool counts() const { return summary || also_summary; }

  std::string encode() const {
    std::string text;
    text += follow ? 'f' : '-';
    text += per_thread ? 'F' : '-';
    text += summary ? 'c' : '-';
    text += also_summary ? 'C' : '-';
    text += static_cast<char>('0' + timestamps);
    text += call_times ? 'T' : '-';
    text += decode_fds ? 'y' : '-';
    text += static_cast<char>('0' + quiet);
    text += output_is_stderr ? 'e' : 'o';
    text += ';' + std::to_string(string_limit) + ';' + traced.to_string() + ';' +
            signals.to_string() + ';' + output;
    return text;
  }

  // False for a text encode() did not make.
  bool decode(std::string_view text) {
    if (text.size() < 10 || text[9] != ';') return false;
    follow = text[0] == 'f';
    per_thread = text[1] == 'F';
    summary = text[2] == 'c';
    also_summary = text[3] == 'C';
    timestamps = text[4] - '0';
    call_times = text[5] == 'T';
    decode_fds = text[6] == 'y';
    quiet = text[7] - '0';
    output_is_stderr = text[8] == 'e';
    text.remove_prefix(10);
    const std::size_t limit_end = text.find(';');
    if (limit_end == std::string_view::npos) return false;
    string_limit = static_cast<unsigned>(
        std::strtoul(std::string(text.substr(0, limit_end)).c_str(), nullptr, 10));
    text.remove_prefix(limit_end + 1);
    if (text.size() < kSyscallSlots + 1 + 65 + 1) return false;
    traced = std::bitset<kSyscallSlots>(std::string(text.substr(0, kSyscallSlots)));
    text.remove_prefix(kSyscallSlots + 1);
    signals = std::bitset<65>(std::string(text.substr(0, 65)));
    text.remove_prefix(66);
    output = std::string(text);
    return true;
  }

  bool traces(long number) const {
    return number >= 0 && static_cast<std::size_t>(number) < kSyscallSlots &&
           traced.test(static_cast<std::size_t>(number));
  }
};

// The start of a line: pid prefix and timestamp. `several` says whether more than one thread or
// process is traced (the [pid N] prefix on standard error depends on it).
inline std::string line_leader(const Settings& settings, int tid, bool several,
                               const timespec& when) {
  std::string text;
  char buffer[64];
  if (settings.follow && !(settings.per_thread && !settings.output_is_stderr)) {
    if (!settings.output_is_stderr) {
      std::snprintf(buffer, sizeof buffer, "%-5d ", tid);
      text += buffer;
    } else if (several) {
      std::snprintf(buffer, sizeof buffer, "[pid %5d] ", tid);
      text += buffer;
    }
  }
  if (settings.timestamps == 3) {
    std::snprintf(buffer, sizeof buffer, "%lld.%06ld ", static_cast<long long>(when.tv_sec),
                  when.tv_nsec / 1000);
    text += buffer;
  } else if (settings.timestamps > 0) {
    tm local{};
    const time_t seconds = when.tv_sec;
    localtime_r(&seconds, &local);
    std::strftime(buffer, sizeof buffer, "%H:%M:%S", &local);
    text += buffer;
    if (settings.timestamps == 2) {
      std::snprintf(buffer, sizeof buffer, ".%06ld", when.tv_nsec / 1000);
      text += buffer;
    }
    text += ' ';
  }
  return text;
}

// `call` is `name(arguments) = result` as zpoline::format() makes it: the text before " = " is
// padded so that " = " starts at column 39 of the line, as strace aligns results.
inline void append_call(std::string& line, std::string_view call) {
  const std::size_t equals = call.rfind(") = ");
  if (equals == std::string_view::npos) {
    line += call;
    return;
  }
  line += call.substr(0, equals + 1);
  if (line.size() < 39) line.append(39 - line.size(), ' ');
  line += call.substr(equals + 1);
}

inline void append_call_time(std::string& line, long nanoseconds) {
  char buffer[48];
  std::snprintf(buffer, sizeof buffer, " <%ld.%06ld>", nanoseconds / 1000000000,
                (nanoseconds % 1000000000) / 1000);
  line += buffer;
}

// The text of a call formatted without its result (`execve(...) = ?`), up to the closing
// parenthesis: zptrace adds the result the call turns out to have.
inline void drop_unknown_result(std::string& text) {
  if (text.size() > 4 && text.compare(text.size() - 4, 4, " = ?") == 0)
    text.resize(text.size() - 4);
}

// Whether an environment entry `name=value` is one zptrace added: ZPTRACE_* or a name in
// `added_names` (comma-separated: LD_PRELOAD, ZPOLINE_HOOK, ZPOLINE_MECHANISM where the user had
// not set them).
inline bool added_variable(std::string_view entry, std::string_view added_names) {
  const std::string_view name = entry.substr(0, entry.find('='));
  if (name.rfind("ZPTRACE_", 0) == 0) return true;
  const std::string list = "," + std::string(added_names) + ",";
  return list.find("," + std::string(name) + ",") != std::string::npos;
}

// execve's `/* N vars */` becomes `/* N-added vars */`: the environment the user gave.
inline void hide_added_variables(std::string& text, long added) {
  if (added == 0) return;
  const std::size_t end = text.rfind(" vars */");
  if (end == std::string::npos) return;
  std::size_t begin = end;
  while (begin > 0 && text[begin - 1] >= '0' && text[begin - 1] <= '9') --begin;
  if (begin == end) return;
  const long shown = std::strtol(text.c_str() + begin, nullptr, 10) - added;
  text.replace(begin, end - begin, std::to_string(shown < 0 ? 0 : shown));
}

inline timespec now_realtime() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return now;
}

inline long monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000000000L + now.tv_nsec;
}

// Where a thread's lines go: the -o file, FILE.TID with -ff, or zptrace's standard error. The
// descriptor is moved above the numbers programs use (so that it changes none of the program's
// own descriptor numbers) and closed at exec.
inline int open_output(const Settings& settings, int tid) {
  std::string path = settings.output;
  if (settings.per_thread && !settings.output_is_stderr) path += "." + std::to_string(tid);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return fd;
  const int high = fcntl(fd, F_DUPFD_CLOEXEC, 900);
  if (high < 0) return fd;
  close(fd);
  return high;
}

// Whole lines to `fd`. A pipe takes at most PIPE_BUF bytes in one piece when several processes
// write to it (zptrace's standard error piped to a pager): then the lines go in pieces of at most
// that, cut between lines, so that no line of one process lands inside another's.
inline ssize_t write_lines(int fd, const char* data, std::size_t size) {
  struct stat status {};
  const bool pipe =
      fstat(fd, &status) == 0 && (S_ISFIFO(status.st_mode) || S_ISSOCK(status.st_mode));
  constexpr std::size_t kPipeAtomic = 4096;
  ssize_t total = 0;
  while (size > 0) {
    std::size_t piece = size;
    if (pipe && piece > kPipeAtomic) {
      piece = kPipeAtomic;
      while (piece > 0 && data[piece - 1] != '\n') --piece;
      if (piece == 0) piece = std::min(size, kPipeAtomic);  // a line longer than PIPE_BUF
    }
    const ssize_t written = write(fd, data, piece);
    if (written < 0) return total == 0 ? written : total;
    data += written;
    size -= static_cast<std::size_t>(written);
    total += written;
  }
  return total;
}

}  // namespace zptrace
