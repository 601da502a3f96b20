// Typed views and zpoline::Dispatcher on real calls, and formatting inside a hook. Each TEST_CASE
// installs and runs in its own process.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "support.hpp"
#include "zpoline/dispatcher.hpp"
#include "zpoline/format.hpp"
#include "zpoline/zpoline.hpp"

using zpoline_test::install_or_skip;
namespace sys = zpoline::sys;

TEST_CASE("typed_views_read_and_change_real_calls") {
  std::string seen_path;
  int seen_flags = 0;
  auto session = install_or_skip([&](zpoline::Syscall& call) -> long {
    if (auto open = call.as<sys::openat>()) {
      if (std::strcmp(open->pathname(), "/zpoline/redirected") == 0) {
        seen_path = open->pathname();
        seen_flags = open->flags();
        open->set_pathname("/dev/null");
        CHECK(open->dirfd() == AT_FDCWD);
      }
    }
    CHECK(!call.as<sys::close>().has_value() == (call.number() != sys::close::number));
    return call.forward();
  });
  const int fd = open("/zpoline/redirected", O_RDONLY | O_CLOEXEC);
  CHECK(fd >= 0);
  CHECK(seen_path == "/zpoline/redirected");
  CHECK(seen_flags == (O_RDONLY | O_CLOEXEC));
  close(fd);
}

TEST_CASE("dispatcher_routes_each_call_to_its_handlers") {
  std::atomic<int> getpid_calls{0}, openat_calls{0}, other_calls{0};
  zpoline::Dispatcher dispatcher;
  dispatcher
      .on<sys::getpid>([&](sys::getpid::View) -> long {
        ++getpid_calls;
        return 4242;
      })
      .on<sys::openat>([&](sys::openat::View open, const zpoline::Next& next) -> long {
        ++openat_calls;
        if (std::strcmp(open.pathname(), "/zpoline/denied") == 0) return -EACCES;
        return next();
      })
      .otherwise([&](zpoline::Syscall& call) {
        ++other_calls;
        return call.forward();
      });
  CHECK(dispatcher.handles(sys::getpid::number));
  CHECK(!dispatcher.handles(sys::read::number));
  auto session = install_or_skip(dispatcher);
  CHECK(getpid() == 4242);
  errno = 0;
  CHECK(open("/zpoline/denied", O_RDONLY) == -1);
  CHECK(errno == EACCES);
  const int fd = open("/dev/null", O_RDONLY);
  CHECK(fd >= 0);
  const int before = other_calls;
  close(fd);
  session.detach();
  CHECK(getpid_calls == 1);
  CHECK(openat_calls == 2);
  CHECK(other_calls > before);
}

TEST_CASE("handlers_compose_in_registration_order") {
  std::vector<std::string> order;
  std::mutex lock;
  auto note = [&](const char* what) {
    std::lock_guard guard(lock);
    order.push_back(what);
  };
  zpoline::Dispatcher dispatcher;
  dispatcher
      .on<sys::write>([&](sys::write::View write, const zpoline::Next& next) -> long {
        if (write.fd() != 1000) return next();
        note("first");
        const long result = next();
        note("first after");
        return result + 1;  // sees and changes the result of the rest
      })
      .on<sys::write>([&](sys::write::View write, const zpoline::Next& next) -> long {
        if (write.fd() != 1000) return next();
        note("second");
        write.set_count(2);  // the kernel sees this
        write.set_fd(1001);
        return next();
      })
      .on(sys::dup2::number, [](zpoline::Syscall& call) { return call.forward(); });
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  REQUIRE(dup2(fds[1], 1001) == 1001);
  auto session = install_or_skip(dispatcher);
  CHECK(write(1000, "abcdef", 6) == 3);
  session.detach();
  char buffer[8] = {};
  CHECK(read(fds[0], buffer, sizeof buffer) == 2);
  CHECK(std::string(buffer) == "ab");
  CHECK(order == std::vector<std::string>{"first", "second", "first after"});
}

TEST_CASE("formatting_bad_pointers_inside_the_hook") {
  std::vector<std::string> lines;
  std::mutex lock;
  auto session = install_or_skip([&](zpoline::Syscall& call) {
    const long result = call.forward();
    if (call.number() == SYS_openat || call.number() == SYS_write) {
      std::lock_guard guard(lock);
      lines.push_back(zpoline::format(call, result));
    }
    return result;
  });
  void* page = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  munmap(page, 4096);
  const auto bad = static_cast<const char*>(page);
  CHECK(syscall(SYS_openat, AT_FDCWD, bad, O_RDONLY) == -1);
  CHECK(errno == EFAULT);
  CHECK(write(-1, bad, 5) == -1);
  CHECK(open("/etc/hostname", O_RDONLY | O_CLOEXEC) >= 0);
  session.detach();
  char address[32];
  std::snprintf(address, sizeof address, "%p", page);
  REQUIRE(lines.size() == 3);
  CHECK(lines[0] ==
        "openat(AT_FDCWD, " + std::string(address) + ", O_RDONLY) = -1 EFAULT (Bad address)");
  CHECK(lines[1].starts_with("write(-1, " + std::string(address) + ", 5) = -1 EBADF"));
  CHECK(lines[2].starts_with(R"(openat(AT_FDCWD, "/etc/hostname", O_RDONLY|O_CLOEXEC) = )"));
}
