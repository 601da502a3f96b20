// trace: prints every system call this program makes, as `name(args) = result`, then does some
// real work (a directory listing, file I/O, a thread, a child process, a pipe) to show them.
//
//   ./build/examples/trace/trace [directory]
#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "zpoline/zpoline.hpp"

namespace {

// A readable rendering of the arguments of the calls this demo makes most; the other calls show
// their first three arguments in hex.
std::string quoted(const void* data, long length) {
  if (data == nullptr || length < 0) return "NULL";
  const auto* bytes = static_cast<const unsigned char*>(data);
  std::string out = "\"";
  for (long i = 0; i < length && i < 24; ++i) {
    const unsigned char c = bytes[i];
    if (c == '\n') {
      out += "\\n";
    } else if (c >= 32 && c < 127 && c != '"') {
      out += static_cast<char>(c);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    }
  }
  return out + (length > 24 ? "\"..." : "\"");
}

std::string describe(zpoline::Syscall& call, long result) {
  std::string text(call.name());
  char buffer[160];
  if (auto open = call.as<zpoline::sys::openat>()) {
    std::snprintf(buffer, sizeof buffer, "(%d, \"%s\", %#x)", open->dirfd(), open->pathname(),
                  open->flags());
  } else if (auto write = call.as<zpoline::sys::write>()) {
    std::snprintf(buffer, sizeof buffer, "(%d, %s, %zu)", write->fd(),
                  quoted(write->buf(), static_cast<long>(write->count())).c_str(), write->count());
  } else if (auto read = call.as<zpoline::sys::read>()) {
    std::snprintf(buffer, sizeof buffer, "(%d, %s, %zu)", read->fd(),
                  quoted(read->buf(), result).c_str(), read->count());
  } else if (auto close = call.as<zpoline::sys::close>()) {
    std::snprintf(buffer, sizeof buffer, "(%d)", close->fd());
  } else {
    std::snprintf(buffer, sizeof buffer, "(%#lx, %#lx, %#lx, ...)", call.arg(0), call.arg(1),
                  call.arg(2));
  }
  text += buffer;
  if (result < 0 && result > -4096) {
    text += " = -1 ";
    const char* name = strerrorname_np(static_cast<int>(-result));
    text += name ? name : std::to_string(-result);
    text += " (";
    text += std::strerror(static_cast<int>(-result));
    text += ")";
  } else {
    std::snprintf(buffer, sizeof buffer, " = %ld", result);
    text += buffer;
  }
  return text;
}

void real_work(const std::string& directory) {
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

  std::thread worker([] { std::printf("hello from a thread (tid %ld)\n", syscall(SYS_gettid)); });
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
  std::printf("parent read %zd bytes from the pipe: %s", n, buffer);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string directory = argc > 1 ? argv[1] : ".";
  try {
    auto session = zpoline::install([](zpoline::Syscall& call) {
      const long result = call.forward();
      // This fprintf makes system calls of its own: they go straight to the kernel.
      std::fprintf(stderr, "[%d] %s\n", static_cast<int>(zpoline::raw_syscall(SYS_gettid)),
                   describe(call, result).c_str());
      return result;
    });
    std::fprintf(stderr, "trace: rewrote %zu syscall sites in %zu images in %.2f ms\n",
                 session.stats().sites_rewritten(), session.stats().images.size(),
                 session.stats().total_time.count() / 1e6);
    real_work(directory);
  } catch (const zpoline::Error& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}
