// zpoline::format: strace's rendering of calls, given by number and argument registers (no hook
// needed), including arguments that point to unreadable memory.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "zpoline/format.hpp"
#include "zpoline/memory.hpp"

namespace {

long p(const void* pointer) {
  return reinterpret_cast<long>(pointer);
}

std::string fmt(long number, std::array<long, 6> args, std::optional<long> result,
                zpoline::FormatOptions options = {}) {
  return zpoline::format(number, args, result, options);
}

// An address that is certainly unmapped: a page mapped and then unmapped.
long unmapped_address() {
  void* page = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  munmap(page, 4096);
  return p(page);
}

}  // namespace

TEST_CASE("open, read, write, close and errors") {
  CHECK(fmt(SYS_openat, {AT_FDCWD, p("/etc/hostname"), O_RDONLY | O_CLOEXEC}, 3) ==
        R"(openat(AT_FDCWD, "/etc/hostname", O_RDONLY|O_CLOEXEC) = 3)");
  CHECK(fmt(SYS_openat, {3, p("x"), O_WRONLY | O_CREAT | O_TRUNC, 0644}, 4) ==
        R"(openat(3, "x", O_WRONLY|O_CREAT|O_TRUNC, 0644) = 4)");
  CHECK(fmt(SYS_openat, {AT_FDCWD, p("/nope"), O_RDONLY}, -ENOENT) ==
        R"(openat(AT_FDCWD, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory))");
  char buffer[4096] = "abc\n";
  CHECK(fmt(SYS_read, {3, p(buffer), 4096}, 4) == R"(read(3, "abc\n", 4096) = 4)");
  char address[32];
  std::snprintf(address, sizeof address, "%p", static_cast<void*>(buffer));
  CHECK(fmt(SYS_read, {3, p(buffer), 4096}, -EBADF) ==
        "read(3, " + std::string(address) + ", 4096) = -1 EBADF (Bad file descriptor)");
  CHECK(fmt(SYS_write, {1, p("hi\t\"x\"\\\0\1\0012\377"), 12}, 12) ==
        R"(write(1, "hi\t\"x\"\\\0\1\0012\377", 12) = 12)");
  CHECK(fmt(SYS_close, {3}, 0) == "close(3) = 0");
  CHECK(fmt(SYS_exit_group, {0}, std::nullopt) == "exit_group(0) = ?");
  CHECK(fmt(SYS_getpid, {}, 42) == "getpid() = 42");
  CHECK(fmt(9999, {1, 2}, -ENOSYS) ==
        "syscall_0x270f(0x1, 0x2, 0, 0, 0, 0) = -1 ENOSYS (Function not implemented)");
}

TEST_CASE("strings are cut at the limit like strace -s") {
  const char* text = "0123456789012345678901234567890123456789";
  CHECK(fmt(SYS_write, {1, p(text), 40}, 40) ==
        R"(write(1, "01234567890123456789012345678901"..., 40) = 40)");
  CHECK(fmt(SYS_write, {1, p(text), 40}, 40, {.string_limit = 4}) ==
        R"(write(1, "0123"..., 40) = 40)");
  // Paths are printed whole.
  const std::string path = "/" + std::string(60, 'a');
  CHECK(fmt(SYS_unlink, {p(path.c_str())}, 0) == "unlink(\"" + path + "\") = 0");
}

TEST_CASE("bad pointers print as addresses") {
  const long bad = unmapped_address();
  char address[32];
  std::snprintf(address, sizeof address, "%#lx", bad);
  const std::string a = address;
  CHECK(fmt(SYS_openat, {AT_FDCWD, bad, O_RDONLY}, -EFAULT) ==
        "openat(AT_FDCWD, " + a + ", O_RDONLY) = -1 EFAULT (Bad address)");
  CHECK(fmt(SYS_write, {1, bad, 10}, -EFAULT) ==
        "write(1, " + a + ", 10) = -1 EFAULT (Bad address)");
  CHECK(fmt(SYS_read, {0, bad, 10}, 10) == "read(0, " + a + ", 10) = 10");
  CHECK(fmt(SYS_rt_sigprocmask, {SIG_BLOCK, bad, 0, 8}, 0) ==
        "rt_sigprocmask(SIG_BLOCK, " + a + ", NULL, 8) = 0");
  CHECK(fmt(SYS_fstat, {3, bad}, 0) == "fstat(3, " + a + ") = 0");
  CHECK(fmt(SYS_execve, {bad, bad, bad}, -EFAULT) ==
        "execve(" + a + ", " + a + ", " + a + ") = -1 EFAULT (Bad address)");
  CHECK(fmt(SYS_unlink, {0x1}, -EFAULT) == "unlink(0x1) = -1 EFAULT (Bad address)");
  CHECK(fmt(SYS_unlink, {0}, -EFAULT) == "unlink(NULL) = -1 EFAULT (Bad address)");
  CHECK(!zpoline::read_string(reinterpret_cast<const void*>(bad)));
  CHECK(!zpoline::read_object<int>(reinterpret_cast<const void*>(bad)));
  CHECK(zpoline::read_string("abc") == "abc");
  CHECK(zpoline::read_string("abcdef", 3) == "abc");
}

TEST_CASE("a string that ends just before an unmapped page") {
  auto* pages = static_cast<char*>(
      mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  munmap(pages + 4096, 4096);
  std::memcpy(pages + 4093, "ok", 3);
  CHECK(zpoline::read_string(pages + 4093) == "ok");
  pages[4095] = 'x';  // no NUL before the hole
  CHECK(!zpoline::read_string(pages + 4093));
  munmap(pages, 4096);
}

TEST_CASE("flag families") {
  CHECK(fmt(SYS_mmap, {0, 8392704, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0},
            0x7f0000000000) ==
        "mmap(NULL, 8392704, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_STACK, -1, 0) = "
        "0x7f0000000000");
  CHECK(fmt(SYS_mprotect, {0x7f0000001000, 4096, PROT_READ | PROT_EXEC}, 0) ==
        "mprotect(0x7f0000001000, 4096, PROT_READ|PROT_EXEC) = 0");
  CHECK(fmt(SYS_clone, {CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID | SIGCHLD, 0, 0, 0x7f00, 0},
            1234) ==
        "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, "
        "child_tidptr=0x7f00) = 1234");
  // clone3 as pthread_create makes it: parent_tid and child_tid are the same word, which the
  // kernel zeroes when the thread exits, maybe before the call is formatted. The parent's result
  // is what the kernel stored there.
  int tid_word = 0;
  struct {
    std::uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
  } clone_args{CLONE_VM | CLONE_THREAD | CLONE_SIGHAND | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID,
               0,
               static_cast<std::uint64_t>(p(&tid_word)),
               static_cast<std::uint64_t>(p(&tid_word)),
               0,
               0x10000,
               0x2000,
               0};
  char clone_head[256];
  std::snprintf(clone_head, sizeof clone_head,
                "clone3({flags=CLONE_VM|CLONE_SIGHAND|CLONE_THREAD|CLONE_PARENT_SETTID|"
                "CLONE_CHILD_CLEARTID, child_tid=%p, parent_tid=%p, exit_signal=0, stack=0x10000, "
                "stack_size=0x2000}",
                static_cast<void*>(&tid_word), static_cast<void*>(&tid_word));
  CHECK(fmt(SYS_clone3, {p(&clone_args), sizeof clone_args}, 4321) ==
        std::string(clone_head) + " => {parent_tid=[4321]}, 64) = 4321");
  tid_word = 77;  // in the child (result 0) the word is read
  CHECK(fmt(SYS_clone3, {p(&clone_args), sizeof clone_args}, 0) ==
        std::string(clone_head) + " => {parent_tid=[77]}, 64) = 0");
  CHECK(fmt(SYS_kill, {1234, SIGTERM}, 0) == "kill(1234, SIGTERM) = 0");
  CHECK(fmt(SYS_tgkill, {1, 2, 34}, 0) == "tgkill(1, 2, SIGRT_2) = 0");
  CHECK(fmt(SYS_socket, {AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0}, 3) ==
        "socket(AF_INET6, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP) = 3");
  CHECK(fmt(SYS_fcntl, {3, F_GETFL}, 0x8002) ==
        "fcntl(3, F_GETFL) = 0x8002 (flags O_RDWR|O_LARGEFILE)");
  CHECK(fmt(SYS_fcntl, {3, F_SETFD, FD_CLOEXEC}, 0) == "fcntl(3, F_SETFD, FD_CLOEXEC) = 0");
  CHECK(fmt(SYS_fcntl, {3, F_DUPFD_CLOEXEC, 100}, 100) == "fcntl(3, F_DUPFD_CLOEXEC, 100) = 100");
  CHECK(fmt(SYS_newfstatat, {AT_FDCWD, p("a"), 0, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH}, -ENOENT) ==
        "newfstatat(AT_FDCWD, \"a\", NULL, AT_SYMLINK_NOFOLLOW|AT_EMPTY_PATH) = -1 ENOENT (No such "
        "file or directory)");
  CHECK(fmt(SYS_access, {p("/x"), R_OK | X_OK}, 0) == R"(access("/x", R_OK|X_OK) = 0)");
  CHECK(fmt(SYS_access, {p("/x"), F_OK}, 0) == R"(access("/x", F_OK) = 0)");
  CHECK(fmt(SYS_madvise, {0x7f0000000000, 8192, MADV_DONTNEED}, 0) ==
        "madvise(0x7f0000000000, 8192, MADV_DONTNEED) = 0");
  CHECK(fmt(SYS_lseek, {3, -1, SEEK_END}, 10) == "lseek(3, -1, SEEK_END) = 10");
  CHECK(fmt(SYS_futex, {0x1000, 128 | 1, 1}, 0) == "futex(0x1000, FUTEX_WAKE_PRIVATE, 1) = 0");
  CHECK(fmt(SYS_wait4, {-1, 0, WNOHANG, 0}, 0) == "wait4(-1, NULL, WNOHANG, NULL) = 0");
  CHECK(fmt(SYS_ioctl, {1, 0x5401, 0x1000}, -ENOTTY) ==
        "ioctl(1, TCGETS, 0x1000) = -1 ENOTTY (Inappropriate ioctl for device)");
}

TEST_CASE("structures") {
  int fds[2] = {3, 4};
  CHECK(fmt(SYS_pipe2, {p(fds), O_CLOEXEC}, 0) == "pipe2([3, 4], O_CLOEXEC) = 0");
  std::uint64_t set = (1ull << (SIGINT - 1)) | (1ull << (SIGCHLD - 1));
  std::uint64_t old = ~0ull;
  CHECK(fmt(SYS_rt_sigprocmask, {SIG_BLOCK, p(&set), p(&old), 8}, 0) ==
        "rt_sigprocmask(SIG_BLOCK, [INT CHLD], ~[], 8) = 0");
  struct {
    unsigned long handler, flags, restorer;
    std::uint64_t mask;
  } act{1, 0x04000000 | 0x10000000, 0x1234, 1ull << (SIGTERM - 1)};
  CHECK(
      fmt(SYS_rt_sigaction, {SIGINT, p(&act), 0, 8}, 0) ==
      "rt_sigaction(SIGINT, {sa_handler=SIG_IGN, sa_mask=[TERM], sa_flags=SA_RESTORER|SA_RESTART, "
      "sa_restorer=0x1234}, NULL, 8) = 0");
  int status = 3 << 8;
  CHECK(fmt(SYS_wait4, {77, p(&status), 0, 0}, 77) ==
        "wait4(77, [{WIFEXITED(s) && WEXITSTATUS(s) == 3}], 0, NULL) = 77");
  status = SIGKILL;
  CHECK(fmt(SYS_wait4, {77, p(&status), 0, 0}, 77) ==
        "wait4(77, [{WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL}], 0, NULL) = 77");
  long ts[2] = {1, 500};
  CHECK(fmt(SYS_nanosleep, {p(ts), 0}, 0) == "nanosleep({tv_sec=1, tv_nsec=500}, NULL) = 0");
  const char* argv[] = {"ls", "-l", nullptr};
  const char* envp[] = {"A=1", "B=2", nullptr};
  CHECK(fmt(SYS_execve, {p("/bin/ls"), p(argv), p(envp)}, std::nullopt)
            .starts_with(R"(execve("/bin/ls", ["ls", "-l"], 0x)"));
  CHECK(fmt(SYS_execve, {p("/bin/ls"), p(argv), p(envp)}, std::nullopt)
            .ends_with(" /* 2 vars */) = ?"));
  CHECK(fmt(SYS_prctl, {PR_SET_NAME, p("worker")}, 0) == R"(prctl(PR_SET_NAME, "worker") = 0)");
}

TEST_CASE("memory_of_pid reads the arguments from another process") {
  // After fork the child has the same addresses; it changes the text, and the formatter, run in
  // the parent, must print the child's text.
  static char text[16] = "parent";
  int ready[2], done[2];
  REQUIRE(pipe(ready) == 0);
  REQUIRE(pipe(done) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::strcpy(text, "child!");
    char c = 1;
    (void)!write(ready[1], &c, 1);
    (void)!read(done[0], &c, 1);
    _exit(0);
  }
  char c;
  REQUIRE(read(ready[0], &c, 1) == 1);
  zpoline::FormatOptions options;
  options.memory_of_pid = child;
  CHECK(fmt(SYS_write, {1, p(text), 6}, 6, options) == R"(write(1, "child!", 6) = 6)");
  CHECK(fmt(SYS_unlink, {p(text)}, 0, options) == R"(unlink("child!") = 0)");
  CHECK(fmt(SYS_write, {1, p(text), 6}, 6) == R"(write(1, "parent", 6) = 6)");
  (void)!write(done[1], &c, 1);
  int status = 0;
  waitpid(child, &status, 0);
  // A process that is gone: the address.
  char address[32];
  std::snprintf(address, sizeof address, "%p", static_cast<void*>(text));
  CHECK(fmt(SYS_unlink, {p(text)}, 0, options) == "unlink(" + std::string(address) + ") = 0");
  for (int fd : {ready[0], ready[1], done[0], done[1]}) close(fd);
}
