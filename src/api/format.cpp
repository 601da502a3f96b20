// zpoline/format.hpp: strace-style rendering of a system call. Generic printing follows the
// argument kinds of the table (zpoline/syscalls.hpp); the calls whose arguments are structures
// that programs use all the time (stat, sigaction, signal sets, clone3, futex, wait4, pipe...)
// have their own printers below, which follow strace's output.
#include "zpoline/format.hpp"

#include <arpa/inet.h>

#include <sys/syscall.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <initializer_list>
#include <string_view>
#include <type_traits>

#include "platform/memory.hpp"
#include "zpoline/memory.hpp"
#include "zpoline/syscalls.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {
namespace {

struct Name {
  unsigned long value;
  std::string_view name;
};

// Flag tables, in the order strace prints them.
constexpr Name kOpenFlags[] = {
    {0100, "O_CREAT"},        {0200, "O_EXCL"},         {0400, "O_NOCTTY"},
    {01000, "O_TRUNC"},       {02000, "O_APPEND"},      {04000, "O_NONBLOCK"},
    {04010000, "O_SYNC"},     {010000, "O_DSYNC"},      {020000, "O_ASYNC"},
    {040000, "O_DIRECT"},     {0100000, "O_LARGEFILE"}, {0400000, "O_NOFOLLOW"},
    {01000000, "O_NOATIME"},  {02000000, "O_CLOEXEC"},  {010000000, "O_PATH"},
    {020200000, "O_TMPFILE"}, {0200000, "O_DIRECTORY"},
};
constexpr Name kFdFlags[] = {{04000, "O_NONBLOCK"}, {02000000, "O_CLOEXEC"}, {040000, "O_DIRECT"}};
constexpr Name kAtFlags[] = {
    {0x100, "AT_SYMLINK_NOFOLLOW"}, {0x200, "AT_REMOVEDIR"},   {0x400, "AT_SYMLINK_FOLLOW"},
    {0x800, "AT_NO_AUTOMOUNT"},     {0x1000, "AT_EMPTY_PATH"}, {0x2000, "AT_STATX_FORCE_SYNC"},
    {0x4000, "AT_STATX_DONT_SYNC"}, {0x8000, "AT_RECURSIVE"},  {0x200, "AT_EACCESS"},
};
constexpr Name kMmapProt[] = {{1, "PROT_READ"},
                              {2, "PROT_WRITE"},
                              {4, "PROT_EXEC"},
                              {8, "PROT_SEM"},
                              {0x01000000, "PROT_GROWSDOWN"},
                              {0x02000000, "PROT_GROWSUP"}};
constexpr Name kMmapFlags[] = {
    {0x10, "MAP_FIXED"},      {0x20, "MAP_ANONYMOUS"},
    {0x40, "MAP_32BIT"},      {0x100, "MAP_GROWSDOWN"},
    {0x800, "MAP_DENYWRITE"}, {0x1000, "MAP_EXECUTABLE"},
    {0x2000, "MAP_LOCKED"},   {0x4000, "MAP_NORESERVE"},
    {0x8000, "MAP_POPULATE"}, {0x10000, "MAP_NONBLOCK"},
    {0x20000, "MAP_STACK"},   {0x40000, "MAP_HUGETLB"},
    {0x80000, "MAP_SYNC"},    {0x100000, "MAP_FIXED_NOREPLACE"},
};
constexpr Name kCloneFlags[] = {
    {0x100, "CLONE_VM"},
    {0x200, "CLONE_FS"},
    {0x400, "CLONE_FILES"},
    {0x800, "CLONE_SIGHAND"},
    {0x1000, "CLONE_PIDFD"},
    {0x2000, "CLONE_PTRACE"},
    {0x4000, "CLONE_VFORK"},
    {0x8000, "CLONE_PARENT"},
    {0x10000, "CLONE_THREAD"},
    {0x20000, "CLONE_NEWNS"},
    {0x40000, "CLONE_SYSVSEM"},
    {0x80000, "CLONE_SETTLS"},
    {0x100000, "CLONE_PARENT_SETTID"},
    {0x200000, "CLONE_CHILD_CLEARTID"},
    {0x400000, "CLONE_DETACHED"},
    {0x800000, "CLONE_UNTRACED"},
    {0x1000000, "CLONE_CHILD_SETTID"},
    {0x2000000, "CLONE_NEWCGROUP"},
    {0x4000000, "CLONE_NEWUTS"},
    {0x8000000, "CLONE_NEWIPC"},
    {0x10000000, "CLONE_NEWUSER"},
    {0x20000000, "CLONE_NEWPID"},
    {0x40000000, "CLONE_NEWNET"},
    {0x80000000, "CLONE_IO"},
    {0x100000000, "CLONE_CLEAR_SIGHAND"},
    {0x200000000, "CLONE_INTO_CGROUP"},
};
constexpr Name kSigactionFlags[] = {
    {0x04000000, "SA_RESTORER"}, {0x08000000, "SA_ONSTACK"},   {0x10000000, "SA_RESTART"},
    {0x40000000, "SA_NODEFER"},  {0x80000000, "SA_RESETHAND"}, {4, "SA_SIGINFO"},
    {1, "SA_NOCLDSTOP"},         {2, "SA_NOCLDWAIT"},
};
constexpr Name kSocketTypeFlags[] = {{02000000, "SOCK_CLOEXEC"}, {04000, "SOCK_NONBLOCK"}};
constexpr Name kAccessMode[] = {{4, "R_OK"}, {2, "W_OK"}, {1, "X_OK"}};
constexpr Name kWaitOptions[] = {{1, "WNOHANG"},         {2, "WSTOPPED"},
                                 {4, "WEXITED"},         {8, "WCONTINUED"},
                                 {0x1000000, "WNOWAIT"}, {0x20000000, "__WNOTHREAD"},
                                 {0x40000000, "__WALL"}, {0x80000000, "__WCLONE"}};
constexpr Name kMremapFlags[] = {
    {1, "MREMAP_MAYMOVE"}, {2, "MREMAP_FIXED"}, {4, "MREMAP_DONTUNMAP"}};
constexpr Name kMsgFlags[] = {
    {1, "MSG_OOB"},
    {2, "MSG_PEEK"},
    {4, "MSG_DONTROUTE"},
    {8, "MSG_CTRUNC"},
    {0x10, "MSG_PROXY"},
    {0x20, "MSG_TRUNC"},
    {0x40, "MSG_DONTWAIT"},
    {0x80, "MSG_EOR"},
    {0x100, "MSG_WAITALL"},
    {0x200, "MSG_FIN"},
    {0x400, "MSG_SYN"},
    {0x800, "MSG_CONFIRM"},
    {0x1000, "MSG_RST"},
    {0x2000, "MSG_ERRQUEUE"},
    {0x4000, "MSG_NOSIGNAL"},
    {0x8000, "MSG_MORE"},
    {0x10000, "MSG_WAITFORONE"},
    {0x40000000, "MSG_CMSG_CLOEXEC"},
};

// Values (not bits).
constexpr Name kFcntlCommands[] = {
    {0, "F_DUPFD"},          {1, "F_GETFD"},
    {2, "F_SETFD"},          {3, "F_GETFL"},
    {4, "F_SETFL"},          {5, "F_GETLK"},
    {6, "F_SETLK"},          {7, "F_SETLKW"},
    {8, "F_SETOWN"},         {9, "F_GETOWN"},
    {10, "F_SETSIG"},        {11, "F_GETSIG"},
    {15, "F_SETOWN_EX"},     {16, "F_GETOWN_EX"},
    {17, "F_GETOWNER_UIDS"}, {36, "F_OFD_GETLK"},
    {37, "F_OFD_SETLK"},     {38, "F_OFD_SETLKW"},
    {1024, "F_SETLEASE"},    {1025, "F_GETLEASE"},
    {1026, "F_NOTIFY"},      {1030, "F_DUPFD_CLOEXEC"},
    {1031, "F_SETPIPE_SZ"},  {1032, "F_GETPIPE_SZ"},
    {1033, "F_ADD_SEALS"},   {1034, "F_GET_SEALS"},
};
constexpr Name kSocketDomains[] = {
    {0, "AF_UNSPEC"},    {1, "AF_UNIX"},   {2, "AF_INET"},   {3, "AF_AX25"},     {4, "AF_IPX"},
    {5, "AF_APPLETALK"}, {9, "AF_X25"},    {10, "AF_INET6"}, {16, "AF_NETLINK"}, {17, "AF_PACKET"},
    {38, "AF_ALG"},      {40, "AF_VSOCK"}, {44, "AF_XDP"},
};
constexpr Name kSocketTypes[] = {{1, "SOCK_STREAM"}, {2, "SOCK_DGRAM"},     {3, "SOCK_RAW"},
                                 {4, "SOCK_RDM"},    {5, "SOCK_SEQPACKET"}, {6, "SOCK_DCCP"},
                                 {10, "SOCK_PACKET"}};
constexpr Name kMadvise[] = {
    {0, "MADV_NORMAL"},           {1, "MADV_RANDOM"},         {2, "MADV_SEQUENTIAL"},
    {3, "MADV_WILLNEED"},         {4, "MADV_DONTNEED"},       {8, "MADV_FREE"},
    {9, "MADV_REMOVE"},           {10, "MADV_DONTFORK"},      {11, "MADV_DOFORK"},
    {12, "MADV_MERGEABLE"},       {13, "MADV_UNMERGEABLE"},   {14, "MADV_HUGEPAGE"},
    {15, "MADV_NOHUGEPAGE"},      {16, "MADV_DONTDUMP"},      {17, "MADV_DODUMP"},
    {18, "MADV_WIPEONFORK"},      {19, "MADV_KEEPONFORK"},    {20, "MADV_COLD"},
    {21, "MADV_PAGEOUT"},         {22, "MADV_POPULATE_READ"}, {23, "MADV_POPULATE_WRITE"},
    {24, "MADV_DONTNEED_LOCKED"}, {25, "MADV_COLLAPSE"},      {100, "MADV_HWPOISON"},
};
constexpr Name kSigprocmaskHow[] = {{0, "SIG_BLOCK"}, {1, "SIG_UNBLOCK"}, {2, "SIG_SETMASK"}};
constexpr Name kWhence[] = {
    {0, "SEEK_SET"}, {1, "SEEK_CUR"}, {2, "SEEK_END"}, {3, "SEEK_DATA"}, {4, "SEEK_HOLE"}};
constexpr Name kArchPrctl[] = {{0x1001, "ARCH_SET_GS"},    {0x1002, "ARCH_SET_FS"},
                               {0x1003, "ARCH_GET_FS"},    {0x1004, "ARCH_GET_GS"},
                               {0x1011, "ARCH_GET_CPUID"}, {0x1012, "ARCH_SET_CPUID"},
                               {0x3001, "ARCH_CET_STATUS"}};
constexpr Name kClocks[] = {
    {0, "CLOCK_REALTIME"},          {1, "CLOCK_MONOTONIC"},     {2, "CLOCK_PROCESS_CPUTIME_ID"},
    {3, "CLOCK_THREAD_CPUTIME_ID"}, {4, "CLOCK_MONOTONIC_RAW"}, {5, "CLOCK_REALTIME_COARSE"},
    {6, "CLOCK_MONOTONIC_COARSE"},  {7, "CLOCK_BOOTTIME"},      {8, "CLOCK_REALTIME_ALARM"},
    {9, "CLOCK_BOOTTIME_ALARM"},    {11, "CLOCK_TAI"}};
constexpr Name kRlimits[] = {
    {0, "RLIMIT_CPU"},       {1, "RLIMIT_FSIZE"}, {2, "RLIMIT_DATA"},    {3, "RLIMIT_STACK"},
    {4, "RLIMIT_CORE"},      {5, "RLIMIT_RSS"},   {6, "RLIMIT_NPROC"},   {7, "RLIMIT_NOFILE"},
    {8, "RLIMIT_MEMLOCK"},   {9, "RLIMIT_AS"},    {10, "RLIMIT_LOCKS"},  {11, "RLIMIT_SIGPENDING"},
    {12, "RLIMIT_MSGQUEUE"}, {13, "RLIMIT_NICE"}, {14, "RLIMIT_RTPRIO"}, {15, "RLIMIT_RTTIME"},
};
constexpr Name kPrctl[] = {
    {1, "PR_SET_PDEATHSIG"},     {2, "PR_GET_PDEATHSIG"},        {3, "PR_GET_DUMPABLE"},
    {4, "PR_SET_DUMPABLE"},      {8, "PR_SET_KEEPCAPS"},         {15, "PR_SET_NAME"},
    {16, "PR_GET_NAME"},         {22, "PR_SET_SECCOMP"},         {21, "PR_GET_SECCOMP"},
    {23, "PR_CAPBSET_READ"},     {36, "PR_SET_CHILD_SUBREAPER"}, {38, "PR_SET_NO_NEW_PRIVS"},
    {39, "PR_GET_NO_NEW_PRIVS"}, {47, "PR_CAP_AMBIENT"},         {0x59616d61, "PR_SET_PTRACER"},
    {0x53564d41, "PR_SET_VMA"},
};
constexpr Name kFutexCommands[] = {
    {0, "FUTEX_WAIT"},
    {1, "FUTEX_WAKE"},
    {2, "FUTEX_FD"},
    {3, "FUTEX_REQUEUE"},
    {4, "FUTEX_CMP_REQUEUE"},
    {5, "FUTEX_WAKE_OP"},
    {6, "FUTEX_LOCK_PI"},
    {7, "FUTEX_UNLOCK_PI"},
    {8, "FUTEX_TRYLOCK_PI"},
    {9, "FUTEX_WAIT_BITSET"},
    {10, "FUTEX_WAKE_BITSET"},
    {11, "FUTEX_WAIT_REQUEUE_PI"},
    {12, "FUTEX_CMP_REQUEUE_PI"},
    {13, "FUTEX_LOCK_PI2"},
};
constexpr Name kIoctls[] = {
    {0x5401, "TCGETS"},
    {0x5402, "SNDCTL_TMR_START or TCSETS"},
    {0x5403, "SNDCTL_TMR_STOP or TCSETSW"},
    {0x5404, "SNDCTL_TMR_CONTINUE or TCSETSF"},
    {0x540B, "TCFLSH"},
    {0x540E, "TIOCSCTTY"},
    {0x540F, "TIOCGPGRP"},
    {0x5410, "TIOCSPGRP"},
    {0x5413, "TIOCGWINSZ"},
    {0x5414, "TIOCSWINSZ"},
    {0x541B, "FIONREAD"},
    {0x5421, "FIONBIO"},
    {0x5450, "FIONCLEX"},
    {0x5451, "FIOCLEX"},
    {0x5452, "FIOASYNC"},
    {0x80045430, "TIOCGPTN"},
    {0x40045431, "TIOCSPTLCK"},
};
constexpr std::string_view kSignals[] = {
    "0",         "SIGHUP",  "SIGINT",    "SIGQUIT", "SIGILL",   "SIGTRAP", "SIGABRT", "SIGBUS",
    "SIGFPE",    "SIGKILL", "SIGUSR1",   "SIGSEGV", "SIGUSR2",  "SIGPIPE", "SIGALRM", "SIGTERM",
    "SIGSTKFLT", "SIGCHLD", "SIGCONT",   "SIGSTOP", "SIGTSTP",  "SIGTTIN", "SIGTTOU", "SIGURG",
    "SIGXCPU",   "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO",   "SIGPWR",  "SIGSYS",
};

// Every read of the memory that arguments point to goes through here: this process's memory
// fault-safely (zpoline/memory.hpp), another process's with process_vm_readv (platform/memory.hpp:
// a raw system call in libzpoline, libc's in libzpoline-hook).
class Memory {
 public:
  explicit Memory(int pid) : pid_(pid) {}

  bool read(void* destination, unsigned long address, std::size_t size) const {
    if (size == 0) return true;
    if (address == 0) return false;
    if (pid_ == 0) return read_memory(destination, reinterpret_cast<const void*>(address), size);
    return detail::safe_read_from(pid_, destination, reinterpret_cast<const void*>(address), size);
  }
  // The NUL-terminated string at address, without its NUL, up to max bytes; read page by page
  // so that a string ending just before an unmapped page reads whole.
  std::optional<std::string> string(unsigned long address, std::size_t max) const {
    if (address == 0) return std::nullopt;
    if (pid_ == 0) return read_string(reinterpret_cast<const void*>(address), max);
    constexpr std::size_t kPage = 4096;
    std::string text;
    while (text.size() < max) {
      const std::size_t chunk = std::min(kPage - address % kPage, max - text.size());
      char buffer[kPage];
      if (!read(buffer, address, chunk)) return std::nullopt;
      if (const void* nul = std::memchr(buffer, 0, chunk)) {
        text.append(buffer, static_cast<std::size_t>(static_cast<const char*>(nul) - buffer));
        return text;
      }
      text.append(buffer, chunk);
      address += chunk;
    }
    return text;
  }
  template <class T>
  std::optional<T> object(unsigned long address) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    if (!read(&value, address, sizeof value)) return std::nullopt;
    return value;
  }
  int pid() const { return pid_; }

 private:
  int pid_;
};

// Output buffer with the helpers every printer uses.
class Printer {
 public:
  Printer(const std::array<long, 6>& args, std::optional<long> result, const FormatOptions& options,
          const CallEntry* entry = nullptr)
      : args_(args),
        result_(result),
        options_(options),
        memory_(options.memory_of_pid),
        entry_(entry) {}

  std::string text;

  long arg(int i) const { return args_[static_cast<std::size_t>(i)]; }
  int arg32(int i) const { return static_cast<int>(arg(i)); }
  std::optional<long> result() const { return result_; }
  const FormatOptions& options() const { return options_; }
  const Memory& memory() const { return memory_; }
  const CallEntry* entry() const { return entry_; }
  template <class T>
  std::optional<T> object(long address) const {
    return memory_.object<T>(static_cast<unsigned long>(address));
  }
  bool succeeded() const { return result_ && (*result_ >= 0 || *result_ < -4095); }

  void put(std::string_view s) { text += s; }
  void separator() { text += ", "; }
  void printf(const char* format, auto... values) {
    char buffer[128];
    const int length = std::snprintf(buffer, sizeof buffer, format, values...);
    if (length < 0) return;
    if (static_cast<std::size_t>(length) < sizeof buffer) {
      text += std::string_view(buffer, static_cast<std::size_t>(length));
      return;
    }
    const std::size_t start = text.size();
    text.resize(start + static_cast<std::size_t>(length) + 1);
    std::snprintf(text.data() + start, static_cast<std::size_t>(length) + 1, format, values...);
    text.resize(start + static_cast<std::size_t>(length));
  }
  void decimal(long value) { printf("%ld", value); }
  void unsigned_decimal(unsigned long value) { printf("%lu", value); }
  void hex(unsigned long value) {
    if (value == 0) {
      put("0");
    } else {
      printf("%#lx", value);
    }
  }
  void address(long value) {
    if (value == 0) {
      put("NULL");
    } else {
      printf("%#lx", static_cast<unsigned long>(value));
    }
  }
  void dirfd(int value) {
    if (value == -100) {
      put("AT_FDCWD");
      if (options_.decode_fds) fd_target("cwd");
    } else {
      fd(value);
    }
  }
  // A file descriptor; with decode_fds followed by what it names: 3</etc/passwd>.
  // made: a descriptor the call made (its result, pipe's pair), which did not exist at entry.
  void fd(int value, bool made = false) {
    decimal(value);
    if (!options_.decode_fds || value < 0) return;
    if (!made && entry_ != nullptr) {
      for (const auto& [fd, target] : entry_->fd_targets) {
        if (fd == value) return put(target);
      }
    }
    fd_target("fd/" + std::to_string(value));
  }
  // <target> of the link /proc/PID/NAME, escaped as strace -y does; nothing if unreadable.
  void fd_target(const std::string& name) {
    const int pid = memory_.pid();
    const std::string link =
        (pid == 0 ? std::string("/proc/self/") : "/proc/" + std::to_string(pid) + "/") + name;
    char target[4096];
    const long length = detail::safe_readlink(link.c_str(), target, sizeof target);
    if (length <= 0) return;
    text += '<';
    for (long i = 0; i < length; ++i) {
      const auto c = static_cast<unsigned char>(target[i]);
      if (c >= 0x20 && c < 0x7f && c != '<' && c != '>' && c != '\\') {
        text += static_cast<char>(c);
      } else if (c == '\\') {
        text += "\\\\";
      } else {
        printf("\\%o", c);
      }
    }
    text += '>';
  }
  // Text strace adds after the result: ` (Timeout)`, ` ([{fd=3, revents=POLLIN}])`.
  std::string result_suffix;
  void mode(unsigned value) { printf("%#03o", value); }

  // strace's quoting: \t \n \v \f \r \" \\, printable ASCII as is, the rest in octal (three
  // digits when an octal digit follows).
  void quoted(std::string_view bytes, bool cut) {
    text += '"';
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      const auto c = static_cast<unsigned char>(bytes[i]);
      switch (c) {
        case '"':
          text += "\\\"";
          continue;
        case '\\':
          text += "\\\\";
          continue;
        case '\t':
          text += "\\t";
          continue;
        case '\n':
          text += "\\n";
          continue;
        case '\v':
          text += "\\v";
          continue;
        case '\f':
          text += "\\f";
          continue;
        case '\r':
          text += "\\r";
          continue;
        default:
          break;
      }
      if (c >= 0x20 && c < 0x7f) {
        text += static_cast<char>(c);
        continue;
      }
      const bool digit_follows = i + 1 < bytes.size() && bytes[i + 1] >= '0' && bytes[i + 1] <= '7';
      text += '\\';
      if (digit_follows || c >= 0100) text += static_cast<char>('0' + (c >> 6));
      if (digit_follows || c >= 010) text += static_cast<char>('0' + ((c >> 3) & 7));
      text += static_cast<char>('0' + (c & 7));
    }
    text += '"';
    if (cut) text += "...";
  }
  // A NUL-terminated string; paths are printed whole (up to PATH_MAX), other strings cut.
  void string(long pointer, bool whole) {
    if (pointer == 0) return put("NULL");
    const std::size_t limit = whole ? 4096 : options_.string_limit;
    const auto value = memory_.string(static_cast<unsigned long>(pointer), limit + 1);
    if (!value) return address(pointer);
    const bool cut = value->size() > limit;
    quoted(std::string_view(*value).substr(0, limit), cut);
  }
  // size bytes at pointer, cut at the string limit.
  void buffer(long pointer, unsigned long size) {
    if (pointer == 0) return put("NULL");
    const std::size_t shown = std::min<unsigned long>(size, options_.string_limit);
    std::string bytes(shown, '\0');
    if (!memory_.read(bytes.data(), static_cast<unsigned long>(pointer), shown)) {
      return address(pointer);
    }
    quoted(bytes, size > shown);
  }

  // Bits of `value` named by `names`, joined with |; unnamed bits in hex at the end.
  void bits(unsigned long value, std::initializer_list<Name> names, std::string_view zero = "0") {
    if (value == 0) return put(zero);
    bool first = true;
    for (const Name& name : names) {
      if (name.value != 0 && (value & name.value) == name.value) {
        if (!first) text += '|';
        text += name.name;
        value &= ~name.value;
        first = false;
      }
    }
    if (value != 0) {
      if (!first) text += '|';
      printf("%#lx", value);
    }
  }
  template <std::size_t N>
  void bits(unsigned long value, const Name (&names)[N], std::string_view zero = "0") {
    if (value == 0) return put(zero);
    bool first = true;
    for (const Name& name : names) {
      if (name.value != 0 && (value & name.value) == name.value) {
        if (!first) text += '|';
        text += name.name;
        value &= ~name.value;
        first = false;
      }
    }
    if (value != 0) {
      if (!first) text += '|';
      printf("%#x", static_cast<unsigned>(value));
    }
  }
  template <std::size_t N>
  bool value_name(unsigned long value, const Name (&names)[N], const char* unknown = "%#lx") {
    for (const Name& name : names) {
      if (name.value == value) {
        text += name.name;
        return true;
      }
    }
    printf(unknown, value);
    return false;
  }

  void signal(long number, bool prefix = true) {
    if (number > 0 && number < 32) {
      put(prefix ? kSignals[number] : kSignals[number].substr(3));
    } else if (number == 32) {
      put(prefix ? "SIGRTMIN" : "RTMIN");
    } else if (number > 32 && number <= 64) {
      printf(prefix ? "SIGRT_%ld" : "RT_%ld", number - 32);
    } else {
      decimal(number);
    }
  }
  // A kernel sigset (64 bits). More than half the signals set prints as ~[the others].
  void sigset_value(std::uint64_t set) {
    const int count = __builtin_popcountll(set);
    if (count > 32) {
      text += '~';
      set = ~set;
    }
    text += '[';
    bool first = true;
    for (int signal_number = 1; signal_number <= 64; ++signal_number) {
      if (set & (1ull << (signal_number - 1))) {
        if (!first) text += ' ';
        signal(signal_number, false);
        first = false;
      }
    }
    text += ']';
  }
  void sigset(long pointer) {
    if (pointer == 0) return put("NULL");
    const auto set = object<std::uint64_t>(pointer);
    if (!set) return address(pointer);
    sigset_value(*set);
  }

  void open_flags(unsigned long flags) {
    static constexpr std::string_view kAccess[] = {"O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE"};
    put(kAccess[flags & 3]);
    flags &= ~3ul;
    if (flags != 0) {
      text += '|';
      bits(flags, kOpenFlags);
    }
  }

  void values(ValueSet set, unsigned long value) {
    switch (set) {
      case ValueSet::open_flags:
        return open_flags(value);
      case ValueSet::at_flags:
        return bits(value, kAtFlags);
      case ValueSet::mmap_prot:
        return bits(value, kMmapProt, "PROT_NONE");
      case ValueSet::mmap_flags: {
        static constexpr Name kTypes[] = {
            {1, "MAP_SHARED"}, {2, "MAP_PRIVATE"}, {3, "MAP_SHARED_VALIDATE"}};
        value_name(value & 0xf, kTypes);
        if (value & ~0xful) {
          text += '|';
          bits(value & ~0xful, kMmapFlags);
        }
        return;
      }
      case ValueSet::clone_flags: {
        const unsigned long signal_part = value & 0xff;
        value &= ~0xfful;
        if (value != 0) bits(value, kCloneFlags);
        if (signal_part != 0) {
          if (value != 0) text += '|';
          signal(static_cast<long>(signal_part));
        } else if (value == 0) {
          put("0");
        }
        return;
      }
      case ValueSet::socket_domain:
        value_name(value, kSocketDomains, "%lu");
        return;
      case ValueSet::socket_type:
        if (value & 0xf) value_name(value & 0xf, kSocketTypes, "%#lx");
        if (value & ~0xful) {
          if (value & 0xf) text += '|';
          bits(value & ~0xful, kSocketTypeFlags);
        } else if ((value & 0xf) == 0) {
          put("0");
        }
        return;
      case ValueSet::fcntl_command:
        value_name(value, kFcntlCommands, "%#lx");
        return;
      case ValueSet::access_mode:
        return bits(value, kAccessMode, "F_OK");
      case ValueSet::madvise_advice:
        value_name(value, kMadvise, "%#lx");
        return;
      case ValueSet::futex_op: {
        static constexpr std::string_view kPrivate = "_PRIVATE";
        value_name(value & 0x7f, kFutexCommands, "%#lx");
        if (value & 128) put(kPrivate);
        if (value & 256) put("|FUTEX_CLOCK_REALTIME");
        if (value & ~0x1fful) printf("|%#lx", value & ~0x1fful);
        return;
      }
      case ValueSet::sigprocmask_how:
        value_name(value, kSigprocmaskHow, "%#lx");
        return;
      case ValueSet::lseek_whence:
        value_name(value, kWhence, "%#lx");
        return;
      case ValueSet::prctl_option:
        value_name(value, kPrctl, "PR_%#lx");
        return;
      case ValueSet::arch_prctl_code:
        value_name(value, kArchPrctl, "%#lx");
        return;
      case ValueSet::wait_options:
        return bits(value, kWaitOptions);
      case ValueSet::mremap_flags:
        return bits(value, kMremapFlags);
      case ValueSet::clock_id:
        value_name(value, kClocks, "%lu");
        return;
      case ValueSet::rlimit_resource:
        value_name(value, kRlimits, "%lu");
        return;
      case ValueSet::fd_flags:
        return bits(value, kFdFlags);
      case ValueSet::msg_flags:
        return bits(value, kMsgFlags);
      case ValueSet::signal_flags:
        return bits(value, kSigactionFlags);
      case ValueSet::none:
        return hex(value);
    }
  }

 private:
  const std::array<long, 6>& args_;
  std::optional<long> result_;
  const FormatOptions& options_;
  Memory memory_;
  const CallEntry* entry_;
};

bool is_64bit(std::string_view type) {
  return type.find('*') != std::string_view::npos || type.find("long") != std::string_view::npos ||
         type == "size_t" || type == "loff_t" || type == "off_t" || type == "u64" ||
         type == "aio_context_t" || type == "cap_user_header_t" || type == "cap_user_data_t";
}

// One argument from its kind in the table.
void generic_argument(Printer& p, const SyscallInfo& info, int i) {
  const ArgInfo& a = info.arguments[i];
  const long raw = p.arg(i);
  const bool wide = is_64bit(a.type);
  const long value = wide ? raw : static_cast<long>(static_cast<int>(raw));
  const unsigned long unsigned_value = wide
                                           ? static_cast<unsigned long>(raw)
                                           : static_cast<unsigned long>(static_cast<unsigned>(raw));
  switch (a.kind) {
    case ArgKind::fd:
      return p.fd(static_cast<int>(raw));
    case ArgKind::integer:
    case ArgKind::pid:
    case ArgKind::id:
    case ArgKind::offset:
      return p.decimal(value);
    case ArgKind::unsigned_integer:
    case ArgKind::size:
      return p.unsigned_decimal(unsigned_value);
    case ArgKind::hex:
      return p.hex(unsigned_value);
    case ArgKind::dirfd:
      return p.dirfd(static_cast<int>(raw));
    case ArgKind::path:
      return p.string(raw, true);
    case ArgKind::string:
      return p.string(raw, false);
    case ArgKind::in_buffer:
      return p.buffer(raw, static_cast<unsigned long>(p.arg(a.size_argument)));
    case ArgKind::out_buffer:
      if (!p.succeeded()) return p.address(raw);
      return p.buffer(raw, static_cast<unsigned long>(*p.result()));
    case ArgKind::string_array: {
      if (raw == 0) return p.put("NULL");
      const bool environment = a.name == "envp";
      std::size_t count = 0;
      std::string items;
      for (;; ++count) {
        const auto element = p.object<long>(raw + static_cast<long>(count * sizeof(long)));
        if (!element) return p.address(raw);
        if (*element == 0 || count >= 4096) break;
        if (!environment && count < 32) {
          FormatOptions item_options;  // Printer keeps a reference: not a temporary
          item_options.memory_of_pid = p.options().memory_of_pid;
          Printer item(std::array<long, 6>{}, std::nullopt, item_options);
          item.string(*element, false);
          items += (count ? ", " : "") + item.text;
        }
      }
      if (environment) {
        p.address(raw);
        p.printf(" /* %zu var%s */", count, count == 1 ? "" : "s");
      } else {
        p.put("[" + items + (count > 32 ? ", ..." : "") + "]");
      }
      return;
    }
    case ArgKind::flags:
      return p.values(a.values, unsigned_value);
    case ArgKind::mode:
      return p.mode(static_cast<unsigned>(raw));
    case ArgKind::signal:
      return p.signal(value);
    case ArgKind::address:
    case ArgKind::pointer:
    case ArgKind::structure:
      return p.address(raw);
  }
}

void generic_arguments(Printer& p, const SyscallInfo& info, int from = 0, int to = 6) {
  for (int i = from; i < std::min(to, static_cast<int>(info.argument_count)); ++i) {
    if (i > from) p.separator();
    generic_argument(p, info, i);
  }
}

// The file type and permission bits of a mode, as in st_mode and stx_mode.
void file_mode(Printer& p, unsigned mode) {
  static constexpr Name kTypes[] = {
      {0140000, "S_IFSOCK"}, {0120000, "S_IFLNK"}, {0100000, "S_IFREG"}, {060000, "S_IFBLK"},
      {040000, "S_IFDIR"},   {020000, "S_IFCHR"},  {010000, "S_IFIFO"}};
  p.value_name(mode & 0170000, kTypes, "%#lo");
  if (mode & 04000) p.put("|S_ISUID");
  if (mode & 02000) p.put("|S_ISGID");
  if (mode & 01000) p.put("|S_ISVTX");
  p.printf("|%#03o", mode & 0777);
}

constexpr Name kStatxMask[] = {
    {0xfff, "STATX_ALL"},       {0x7ff, "STATX_BASIC_STATS"}, {0x1, "STATX_TYPE"},
    {0x2, "STATX_MODE"},        {0x4, "STATX_NLINK"},         {0x8, "STATX_UID"},
    {0x10, "STATX_GID"},        {0x20, "STATX_ATIME"},        {0x40, "STATX_MTIME"},
    {0x80, "STATX_CTIME"},      {0x100, "STATX_INO"},         {0x200, "STATX_SIZE"},
    {0x400, "STATX_BLOCKS"},    {0x800, "STATX_BTIME"},       {0x1000, "STATX_MNT_ID"},
    {0x2000, "STATX_DIOALIGN"},
};
constexpr Name kStatxAttributes[] = {
    {0x4, "STATX_ATTR_COMPRESSED"},    {0x10, "STATX_ATTR_IMMUTABLE"},
    {0x20, "STATX_ATTR_APPEND"},       {0x40, "STATX_ATTR_NODUMP"},
    {0x800, "STATX_ATTR_ENCRYPTED"},   {0x1000, "STATX_ATTR_AUTOMOUNT"},
    {0x2000, "STATX_ATTR_MOUNT_ROOT"}, {0x100000, "STATX_ATTR_VERITY"},
    {0x200000, "STATX_ATTR_DAX"},
};

// statx(dirfd, path, flags, mask, buffer): flags start with the sync type (0 is
// AT_STATX_SYNC_AS_STAT), the buffer abbreviated as strace prints it by default.
void statx_call(Printer& p) {
  struct Statx {
    std::uint32_t mask, blksize;
    std::uint64_t attributes;
    std::uint32_t nlink, uid, gid;
    std::uint16_t mode, pad;
    std::uint64_t ino, size;
  };
  p.dirfd(p.arg32(0));
  p.separator();
  p.string(p.arg(1), true);
  p.separator();
  const unsigned flags = static_cast<unsigned>(p.arg(2));
  const unsigned sync = flags & 0x6000;
  p.put(sync == 0        ? "AT_STATX_SYNC_AS_STAT"
        : sync == 0x2000 ? "AT_STATX_FORCE_SYNC"
        : sync == 0x4000 ? "AT_STATX_DONT_SYNC"
                         : "0x6000");
  if (flags & ~0x6000u) {
    p.put("|");
    p.values(ValueSet::at_flags, flags & ~0x6000u);
  }
  p.separator();
  p.bits(static_cast<unsigned>(p.arg(3)), kStatxMask);
  p.separator();
  const auto st = p.succeeded() ? p.object<Statx>(p.arg(4)) : std::nullopt;
  if (!st) return p.address(p.arg(4));
  p.put("{stx_mask=");
  p.bits(st->mask, kStatxMask);
  p.put(", stx_attributes=");
  p.bits(st->attributes, kStatxAttributes);
  p.put(", stx_mode=");
  file_mode(p, st->mode);
  p.printf(", stx_size=%lu, ...}", static_cast<unsigned long>(st->size));
}

constexpr Name kFsMagic[] = {
    {0xef53, "EXT2_SUPER_MAGIC"},
    {0x01021994, "TMPFS_MAGIC"},
    {0x9fa0, "PROC_SUPER_MAGIC"},
    {0x62656572, "SYSFS_MAGIC"},
    {0x63677270, "CGROUP2_SUPER_MAGIC"},
    {0x27e0eb, "CGROUP_SUPER_MAGIC"},
    {0x1cd1, "DEVPTS_SUPER_MAGIC"},
    {0x19800202, "MQUEUE_MAGIC"},
    {0x794c7630, "OVERLAYFS_SUPER_MAGIC"},
    {0x9123683e, "BTRFS_SUPER_MAGIC"},
    {0x58465342, "XFS_SUPER_MAGIC"},
    {0x6969, "NFS_SUPER_MAGIC"},
    {0x65735546, "FUSE_SUPER_MAGIC"},
    {0x73636673, "SECURITYFS_MAGIC"},
    {0x64626720, "DEBUGFS_MAGIC"},
    {0x74726163, "TRACEFS_MAGIC"},
    {0x958458f6, "HUGETLBFS_MAGIC"},
    {0xcafe4a11, "BPF_FS_MAGIC"},
    {0x6e736673, "NSFS_MAGIC"},
    {0x62656570, "CONFIGFS_MAGIC"},
    {0x6165676c, "PSTOREFS_MAGIC"},
    {0x42494e4d, "BINFMTFS_MAGIC"},
    {0x0187, "AUTOFS_SUPER_MAGIC"},
    {0x858458f6, "RAMFS_MAGIC"},
    {0x73717368, "SQUASHFS_MAGIC"},
    {0xf97cff8c, "SELINUX_MAGIC"},
    {0xde5e81e4, "EFIVARFS_MAGIC"},
    {0x01021997, "V9FS_MAGIC"},
    {0x2fc12fc1, "ZFS_SUPER_MAGIC"},
    {0x4d44, "MSDOS_SUPER_MAGIC"},
    {0x9660, "ISOFS_SUPER_MAGIC"},
    {0x53464846, "WSLFS_SUPER_MAGIC"},
    {0xff534d42, "CIFS_SUPER_MAGIC"},
    {0x15013346, "DEVMEM_MAGIC"},
    {0x50495045, "PIPEFS_MAGIC"},
    {0x534f434b, "SOCKFS_MAGIC"},
    {0x09041934, "ANON_INODE_FS_MAGIC"},
};
constexpr Name kStatfsFlags[] = {
    {0x20, "ST_VALID"},    {1, "ST_RDONLY"},
    {2, "ST_NOSUID"},      {4, "ST_NODEV"},
    {8, "ST_NOEXEC"},      {16, "ST_SYNCHRONOUS"},
    {64, "ST_MANDLOCK"},   {128, "ST_WRITE"},
    {256, "ST_APPEND"},    {512, "ST_IMMUTABLE"},
    {1024, "ST_NOATIME"},  {2048, "ST_NODIRATIME"},
    {4096, "ST_RELATIME"}, {0x2000000, "ST_NOSYMFOLLOW"},
};

void statfs_struct(Printer& p, long pointer) {
  struct Statfs {
    long type, bsize;
    unsigned long blocks, bfree, bavail, files, ffree;
    int fsid[2];
    long namelen, frsize, flags, spare[4];
  };
  const auto st = p.succeeded() ? p.object<Statfs>(pointer) : std::nullopt;
  if (!st) return p.address(pointer);
  p.put("{f_type=");
  p.value_name(static_cast<unsigned long>(st->type), kFsMagic, "%#lx");
  p.printf(", f_bsize=%ld, f_blocks=%lu, f_bfree=%lu, f_bavail=%lu, f_files=%lu, f_ffree=%lu",
           st->bsize, st->blocks, st->bfree, st->bavail, st->files, st->ffree);
  p.put(", f_fsid={val=[");
  p.hex(static_cast<unsigned>(st->fsid[0]));
  p.put(", ");
  p.hex(static_cast<unsigned>(st->fsid[1]));
  p.printf("]}, f_namelen=%ld, f_frsize=%ld, f_flags=", st->namelen, st->frsize);
  p.bits(static_cast<unsigned long>(st->flags), kStatfsFlags);
  p.put("}");
}

// A resource limit value: RLIM64_INFINITY (for getrlimit/setrlimit as well: on x86-64 their
// struct is the 64-bit one), a multiple of 1024 as N*1024, others in decimal.
void rlimit_value(Printer& p, std::uint64_t value) {
  if (value == ~std::uint64_t{0}) return p.put("RLIM64_INFINITY");
  if (value > 0 && value % 1024 == 0)
    return p.printf("%lu*1024", static_cast<unsigned long>(value / 1024));
  p.printf("%lu", static_cast<unsigned long>(value));
}

void rlimit_struct(Printer& p, long pointer, bool output) {
  if (pointer == 0) return p.put("NULL");
  const auto limit =
      (!output || p.succeeded()) ? p.object<std::array<std::uint64_t, 2>>(pointer) : std::nullopt;
  if (!limit) return p.address(pointer);
  p.put("{rlim_cur=");
  rlimit_value(p, (*limit)[0]);
  p.put(", rlim_max=");
  rlimit_value(p, (*limit)[1]);
  p.put("}");
}

// A CPU set: the numbers of the bits set in the first size bytes.
void cpu_set(Printer& p, long pointer, unsigned long size) {
  if (pointer == 0) return p.put("NULL");
  size = std::min<unsigned long>(size, 1024);
  std::string bytes(size, '\0');
  if (!p.memory().read(bytes.data(), static_cast<unsigned long>(pointer), size)) {
    return p.address(pointer);
  }
  p.put("[");
  bool first = true;
  for (unsigned long bit = 0; bit < size * 8; ++bit) {
    if (static_cast<unsigned char>(bytes[bit / 8]) & (1u << (bit % 8))) {
      if (!first) p.put(" ");
      p.printf("%lu", bit);
      first = false;
    }
  }
  p.put("]");
}

constexpr Name kPollEvents[] = {
    {0x1, "POLLIN"},       {0x2, "POLLPRI"},      {0x4, "POLLOUT"},     {0x8, "POLLERR"},
    {0x10, "POLLHUP"},     {0x20, "POLLNVAL"},    {0x40, "POLLRDNORM"}, {0x80, "POLLRDBAND"},
    {0x100, "POLLWRNORM"}, {0x200, "POLLWRBAND"}, {0x400, "POLLMSG"},   {0x800, "POLLREMOVE"},
    {0x2000, "POLLRDHUP"},
};

struct PollFd {
  int fd;
  short events, revents;
};

void pollfds(Printer& p, long pointer, unsigned long count, bool returned) {
  if (pointer == 0) return p.put("NULL");
  p.put("[");
  bool first = true;
  for (unsigned long i = 0; i < count; ++i) {
    if (i == 1024) {
      p.put(", ...");
      break;
    }
    const auto item = p.object<PollFd>(pointer + static_cast<long>(i * sizeof(PollFd)));
    if (!item) {
      if (first) {
        p.text.pop_back();
        return p.address(pointer);
      }
      break;
    }
    if (returned && item->revents == 0) continue;
    if (!first) p.put(", ");
    first = false;
    p.put("{fd=");
    if (returned) {
      p.decimal(item->fd);  // strace -y decodes them in the arguments only
    } else {
      p.fd(item->fd);
    }
    p.put(returned ? ", revents=" : ", events=");
    p.bits(static_cast<unsigned short>(returned ? item->revents : item->events), kPollEvents);
    p.put("}");
  }
  p.put("]");
}

// The ` ([{fd=3, revents=POLLIN}])` strace adds after poll's result; Timeout for 0.
void poll_result(Printer& p, long pointer, unsigned long count, std::string& suffix) {
  if (!p.succeeded()) return;
  if (*p.result() == 0) {
    suffix = " (Timeout)";
    return;
  }
  Printer out(p);
  out.text.clear();
  pollfds(out, pointer, count, true);
  suffix = " (" + out.text + ")";
}

constexpr Name kIpProtocols[] = {
    {0, "IPPROTO_IP"},    {1, "IPPROTO_ICMP"},    {6, "IPPROTO_TCP"},    {17, "IPPROTO_UDP"},
    {41, "IPPROTO_IPV6"}, {58, "IPPROTO_ICMPV6"}, {132, "IPPROTO_SCTP"}, {136, "IPPROTO_UDPLITE"},
    {255, "IPPROTO_RAW"}, {262, "IPPROTO_MPTCP"},
};
constexpr Name kNetlinkProtocols[] = {
    {0, "NETLINK_ROUTE"},      {2, "NETLINK_USERSOCK"},        {4, "NETLINK_SOCK_DIAG"},
    {6, "NETLINK_XFRM"},       {9, "NETLINK_AUDIT"},           {10, "NETLINK_FIB_LOOKUP"},
    {12, "NETLINK_NETFILTER"}, {15, "NETLINK_KOBJECT_UEVENT"}, {16, "NETLINK_GENERIC"},
};

// A socket address of length bytes at pointer.
void sockaddr(Printer& p, long pointer, long length) {
  if (pointer == 0) return p.put("NULL");
  if (length <= 0) return p.address(pointer);
  unsigned char bytes[128] = {};
  const std::size_t size = std::min<std::size_t>(static_cast<std::size_t>(length), sizeof bytes);
  if (!p.memory().read(bytes, static_cast<unsigned long>(pointer), size)) return p.address(pointer);
  if (size < 2) return p.address(pointer);
  std::uint16_t family;
  std::memcpy(&family, bytes, 2);
  p.put("{sa_family=");
  p.value_name(family, kSocketDomains, "%lu");
  auto be16 = [&](std::size_t at) { return static_cast<unsigned>(bytes[at] << 8 | bytes[at + 1]); };
  if (family == 1) {  // AF_UNIX
    if (size > 2) {
      const char* path = reinterpret_cast<const char*>(bytes + 2);
      std::size_t path_size = size - 2;
      p.put(", sun_path=");
      if (path[0] == '\0' && path_size > 1) {
        p.put("@");
        p.quoted(std::string_view(path + 1, path_size - 1), false);
      } else {
        p.quoted(std::string_view(path, strnlen(path, path_size)), false);
      }
    }
  } else if (family == 2 && size >= 8) {  // AF_INET
    char address[16];
    std::snprintf(address, sizeof address, "%u.%u.%u.%u", bytes[4], bytes[5], bytes[6], bytes[7]);
    p.printf(", sin_port=htons(%u), sin_addr=inet_addr(\"%s\")", be16(2), address);
  } else if (family == 10 && size >= 24) {  // AF_INET6
    char address[64];
    inet_ntop(AF_INET6, bytes + 8, address, sizeof address);
    std::uint32_t flowinfo, scope = 0;
    std::memcpy(&flowinfo, bytes + 4, 4);
    if (size >= 28) std::memcpy(&scope, bytes + 24, 4);
    p.printf(", sin6_port=htons(%u), sin6_flowinfo=htonl(%u)", be16(2), ntohl(flowinfo));
    p.printf(", inet_pton(AF_INET6, \"%s\", &sin6_addr)", address);
    if (size >= 28) p.printf(", sin6_scope_id=%u", scope);
  } else if (family == 16 && size >= 12) {  // AF_NETLINK
    std::uint32_t pid, groups;
    std::memcpy(&pid, bytes + 4, 4);
    std::memcpy(&groups, bytes + 8, 4);
    p.printf(", nl_pid=%u, nl_groups=%08x", pid, groups);
  } else if (size > 2) {
    p.put(", sa_data=");
    p.quoted(std::string_view(reinterpret_cast<const char*>(bytes + 2), size - 2), false);
  }
  p.put("}");
}

// [length], or [before => after] when the call changed it (known from the CallEntry).
void value_result_length(Printer& p, int length) {
  const CallEntry* entry = p.entry();
  if (p.succeeded() && entry != nullptr && entry->length && *entry->length != length) {
    return p.printf("[%d => %d]", *entry->length, length);
  }
  p.printf("[%d]", length);
}

// An output socket address and its value-result length: {…}, [16].
void sockaddr_out(Printer& p, long pointer, long length_pointer) {
  if (pointer == 0) {
    p.put("NULL, ");
    if (length_pointer == 0) return p.put("NULL");
  }
  // On failure the length is the caller's, unchanged: strace prints it, the address bare.
  const auto length = p.object<int>(length_pointer);
  if (pointer != 0) {
    if (length && p.succeeded()) {
      sockaddr(p, pointer, *length);
    } else {
      p.address(pointer);
    }
    p.separator();
  }
  if (!length) return p.address(length_pointer);
  value_result_length(p, *length);
}

constexpr Name kSocketLevels[] = {
    {0, "SOL_IP"},    {1, "SOL_SOCKET"}, {6, "SOL_TCP"},      {17, "SOL_UDP"},
    {41, "SOL_IPV6"}, {255, "SOL_RAW"},  {263, "SOL_PACKET"}, {270, "SOL_NETLINK"},
};
constexpr Name kSocketOptions[] = {
    {1, "SO_DEBUG"},          {2, "SO_REUSEADDR"},     {3, "SO_TYPE"},
    {4, "SO_ERROR"},          {5, "SO_DONTROUTE"},     {6, "SO_BROADCAST"},
    {7, "SO_SNDBUF"},         {8, "SO_RCVBUF"},        {9, "SO_KEEPALIVE"},
    {10, "SO_OOBINLINE"},     {11, "SO_NO_CHECK"},     {12, "SO_PRIORITY"},
    {13, "SO_LINGER"},        {14, "SO_BSDCOMPAT"},    {15, "SO_REUSEPORT"},
    {16, "SO_PASSCRED"},      {17, "SO_PEERCRED"},     {18, "SO_RCVLOWAT"},
    {19, "SO_SNDLOWAT"},      {20, "SO_RCVTIMEO_OLD"}, {21, "SO_SNDTIMEO_OLD"},
    {29, "SO_TIMESTAMP_OLD"}, {30, "SO_ACCEPTCONN"},   {32, "SO_SNDBUFFORCE"},
    {33, "SO_RCVBUFFORCE"},   {34, "SO_PASSSEC"},      {38, "SO_PROTOCOL"},
    {39, "SO_DOMAIN"},
};
constexpr Name kIpOptions[] = {
    {1, "IP_TOS"},      {2, "IP_TTL"},           {3, "IP_HDRINCL"},  {4, "IP_OPTIONS"},
    {8, "IP_RECVOPTS"}, {10, "IP_MTU_DISCOVER"}, {11, "IP_RECVERR"}, {12, "IP_RECVTTL"},
    {14, "IP_MTU"},     {15, "IP_FREEBIND"},
};
constexpr Name kIpv6Options[] = {
    {16, "IPV6_UNICAST_HOPS"}, {23, "IPV6_MTU_DISCOVER"}, {24, "IPV6_MTU"},
    {25, "IPV6_RECVERR"},      {26, "IPV6_V6ONLY"},       {49, "IPV6_RECVPKTINFO"},
};
constexpr Name kTcpOptions[] = {
    {1, "TCP_NODELAY"},   {2, "TCP_MAXSEG"},  {3, "TCP_CORK"},         {4, "TCP_KEEPIDLE"},
    {5, "TCP_KEEPINTVL"}, {6, "TCP_KEEPCNT"}, {9, "TCP_DEFER_ACCEPT"}, {23, "TCP_FASTOPEN"},
};

void socket_option_name(Printer& p, int level, int option) {
  switch (level) {
    case 1:
      p.value_name(static_cast<unsigned>(option), kSocketOptions, "%lu");
      return;
    case 0:
      p.value_name(static_cast<unsigned>(option), kIpOptions, "%lu");
      return;
    case 41:
      p.value_name(static_cast<unsigned>(option), kIpv6Options, "%lu");
      return;
    case 6:
      p.value_name(static_cast<unsigned>(option), kTcpOptions, "%lu");
      return;
    default:
      p.decimal(option);
  }
}

// An option value: an int as [N] when the length is an int's, else the bytes.
void socket_option_value(Printer& p, long pointer, long length) {
  if (pointer == 0) return p.put("NULL");
  if (length == 4) {
    if (const auto value = p.object<int>(pointer)) return p.printf("[%d]", *value);
    return p.address(pointer);
  }
  p.buffer(pointer, static_cast<unsigned long>(std::max(length, 0l)));
}

constexpr Name kGetrandomFlags[] = {{1, "GRND_NONBLOCK"}, {2, "GRND_RANDOM"}, {4, "GRND_INSECURE"}};
constexpr Name kFadvise[] = {{0, "POSIX_FADV_NORMAL"},     {1, "POSIX_FADV_RANDOM"},
                             {2, "POSIX_FADV_SEQUENTIAL"}, {3, "POSIX_FADV_WILLNEED"},
                             {4, "POSIX_FADV_DONTNEED"},   {5, "POSIX_FADV_NOREUSE"}};
constexpr Name kRenameFlags[] = {
    {1, "RENAME_NOREPLACE"}, {2, "RENAME_EXCHANGE"}, {4, "RENAME_WHITEOUT"}};

// uname's struct utsname: sysname and nodename, then `...`.
void utsname_struct(Printer& p, long pointer) {
  struct Utsname {
    char fields[6][65];
  };
  const auto u = p.succeeded() ? p.object<Utsname>(pointer) : std::nullopt;
  if (!u) return p.address(pointer);
  p.put("{sysname=");
  p.quoted(std::string_view(u->fields[0], strnlen(u->fields[0], 65)), false);
  p.put(", nodename=");
  p.quoted(std::string_view(u->fields[1], strnlen(u->fields[1], 65)), false);
  p.put(", ...}");
}

void sysinfo_struct(Printer& p, long pointer) {
  struct Sysinfo {
    long uptime;
    unsigned long loads[3];
    unsigned long totalram, freeram, sharedram, bufferram, totalswap, freeswap;
    unsigned short procs, pad;
    unsigned long totalhigh, freehigh;
    unsigned mem_unit;
  };
  const auto s = p.succeeded() ? p.object<Sysinfo>(pointer) : std::nullopt;
  if (!s) return p.address(pointer);
  p.printf("{uptime=%ld, loads=[%lu, %lu, %lu]", s->uptime, s->loads[0], s->loads[1], s->loads[2]);
  p.printf(", totalram=%lu, freeram=%lu, sharedram=%lu, bufferram=%lu", s->totalram, s->freeram,
           s->sharedram, s->bufferram);
  p.printf(", totalswap=%lu, freeswap=%lu, procs=%u", s->totalswap, s->freeswap,
           static_cast<unsigned>(s->procs));
  p.printf(", totalhigh=%lu, freehigh=%lu, mem_unit=%u}", s->totalhigh, s->freehigh, s->mem_unit);
}

// An int the call stored, as [N] (ioctl FIONREAD...).
void int_out(Printer& p, long pointer) {
  const auto value = p.succeeded() ? p.object<int>(pointer) : std::nullopt;
  if (!value) return p.address(pointer);
  p.printf("[%d]", *value);
}

// getgroups/setgroups: the list of ids.
void gid_list(Printer& p, long pointer, long count) {
  if (pointer == 0) return p.put("NULL");
  if (count == 0) return p.put("[]");
  p.put("[");
  for (long i = 0; i < count; ++i) {
    if (i == 1024) {
      p.put(", ...");
      break;
    }
    const auto gid = p.object<unsigned>(pointer + i * 4);
    if (!gid) {
      p.text.resize(p.text.size() - (i == 0 ? 1 : 0));
      if (i == 0) return p.address(pointer);
      break;
    }
    if (i) p.put(", ");
    p.printf("%u", *gid);
  }
  p.put("]");
}

// utimensat's pair of times: UTIME_NOW/UTIME_OMIT by name, others with the date strace adds.
void utimes_pair(Printer& p, long pointer) {
  if (pointer == 0) return p.put("NULL");
  const auto times = p.object<std::array<std::array<long, 2>, 2>>(pointer);
  if (!times) return p.address(pointer);
  p.put("[");
  for (int i = 0; i < 2; ++i) {
    if (i) p.put(", ");
    const long seconds = (*times)[static_cast<std::size_t>(i)][0];
    const long nanoseconds = (*times)[static_cast<std::size_t>(i)][1];
    if (nanoseconds == (1l << 30) - 1) {
      p.put("UTIME_NOW");
      continue;
    }
    if (nanoseconds == (1l << 30) - 2) {
      p.put("UTIME_OMIT");
      continue;
    }
    p.printf("{tv_sec=%ld, tv_nsec=%ld}", seconds, nanoseconds);
    const time_t t = seconds;
    tm broken{};
    if (localtime_r(&t, &broken) != nullptr) {
      char date[64], zone[16];
      std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &broken);
      std::strftime(zone, sizeof zone, "%z", &broken);
      if (nanoseconds != 0) {
        p.printf(" /* %s.%09ld%s */", date, nanoseconds, zone);
      } else {
        p.printf(" /* %s%s */", date, zone);
      }
    }
  }
  p.put("]");
}

constexpr Name kEpollEvents[] = {
    {0x1, "EPOLLIN"},
    {0x2, "EPOLLPRI"},
    {0x4, "EPOLLOUT"},
    {0x8, "EPOLLERR"},
    {0x10, "EPOLLHUP"},
    {0x20, "EPOLLNVAL"},
    {0x40, "EPOLLRDNORM"},
    {0x80, "EPOLLRDBAND"},
    {0x100, "EPOLLWRNORM"},
    {0x200, "EPOLLWRBAND"},
    {0x400, "EPOLLMSG"},
    {0x2000, "EPOLLRDHUP"},
    {1u << 28, "EPOLLEXCLUSIVE"},
    {1u << 29, "EPOLLWAKEUP"},
    {1u << 30, "EPOLLONESHOT"},
    {1u << 31, "EPOLLET"},
};

struct __attribute__((packed)) EpollEvent {
  std::uint32_t events;
  std::uint64_t data;
};

void epoll_event(Printer& p, const EpollEvent& event) {
  p.put("{events=");
  p.bits(event.events, kEpollEvents);
  p.printf(", data={u32=%u, u64=%lu}}", static_cast<unsigned>(event.data),
           static_cast<unsigned long>(event.data));
}

// The events epoll_wait returned (count of them), or its address.
void epoll_events(Printer& p, long pointer) {
  if (!p.succeeded()) return p.address(pointer);
  p.put("[");
  for (long i = 0; i < *p.result(); ++i) {
    const auto event = p.object<EpollEvent>(pointer + i * static_cast<long>(sizeof(EpollEvent)));
    if (!event) {
      if (i == 0) {
        p.text.pop_back();
        return p.address(pointer);
      }
      break;
    }
    if (i) p.put(", ");
    epoll_event(p, *event);
  }
  p.put("]");
}

// sigaltstack's stack_t.
void stack_struct(Printer& p, long pointer, bool output) {
  struct Stack {
    unsigned long sp;
    int flags;
    unsigned long size;
  };
  if (pointer == 0) return p.put("NULL");
  const auto stack = (!output || p.succeeded()) ? p.object<Stack>(pointer) : std::nullopt;
  if (!stack) return p.address(pointer);
  p.put("{ss_sp=");
  p.address(static_cast<long>(stack->sp));
  p.put(", ss_flags=");
  p.bits(static_cast<unsigned>(stack->flags),
         {{1, "SS_ONSTACK"}, {2, "SS_DISABLE"}, {1u << 31, "SS_AUTODISARM"}});
  p.printf(", ss_size=%lu}", stack->size);
}

void itimerspec_struct(Printer& p, long pointer, bool output) {
  if (pointer == 0) return p.put("NULL");
  const auto value =
      (!output || p.succeeded()) ? p.object<std::array<long, 4>>(pointer) : std::nullopt;
  if (!value) return p.address(pointer);
  p.printf("{it_interval={tv_sec=%ld, tv_nsec=%ld}, it_value={tv_sec=%ld, tv_nsec=%ld}}",
           (*value)[0], (*value)[1], (*value)[2], (*value)[3]);
}

void sigevent_struct(Printer& p, long pointer) {
  struct Sigevent {
    long value;
    int signo, notify;
    int tid;
  };
  if (pointer == 0) return p.put("NULL");
  const auto event = p.object<Sigevent>(pointer);
  if (!event) return p.address(pointer);
  static constexpr Name kNotify[] = {
      {0, "SIGEV_SIGNAL"}, {1, "SIGEV_NONE"}, {2, "SIGEV_THREAD"}, {4, "SIGEV_THREAD_ID"}};
  if (event->notify == 1) {
    return p.put("{sigev_signo=0, sigev_notify=SIGEV_NONE}");
  }
  if (event->notify == 0 || event->notify == 4) {
    p.put("{sigev_signo=");
    p.signal(event->signo);
  } else {
    p.printf("{sigev_value={sival_int=%d, sival_ptr=%#lx}, sigev_signo=",
             static_cast<int>(event->value), static_cast<unsigned long>(event->value));
    p.signal(event->signo);
  }
  p.put(", sigev_notify=");
  p.value_name(static_cast<unsigned>(event->notify), kNotify, "%#lx");
  if (event->notify == 4) p.printf(", sigev_notify_thread_id=%d", event->tid);
  p.put("}");
}

// sendmsg/recvmsg's struct msghdr; the data of a received message as far as the result goes.
void msghdr_struct(Printer& p, long pointer, bool received) {
  struct Msghdr {
    unsigned long name;
    unsigned namelen, pad0;
    unsigned long iov, iovlen, control, controllen;
    int flags;
  };
  if (received && !p.succeeded()) return p.address(pointer);
  const auto m = p.object<Msghdr>(pointer);
  if (!m) return p.address(pointer);
  p.put("{msg_name=");
  if (m->name != 0 && m->namelen != 0) {
    sockaddr(p, static_cast<long>(m->name), m->namelen);
  } else {
    p.address(static_cast<long>(m->name));
  }
  if (received && p.entry() != nullptr && p.entry()->length &&
      static_cast<unsigned>(*p.entry()->length) != m->namelen) {
    p.printf(", msg_namelen=%d => %u, msg_iov=", *p.entry()->length, m->namelen);
  } else {
    p.printf(", msg_namelen=%u, msg_iov=", m->namelen);
  }
  unsigned long left = received ? static_cast<unsigned long>(*p.result()) : ~0ul;
  if (m->iov == 0) {
    p.put("NULL");
  } else {
    p.put("[");
    for (unsigned long i = 0; i < m->iovlen && i < 1024; ++i) {
      const auto iov = p.object<std::array<unsigned long, 2>>(
          static_cast<long>(m->iov + i * 2 * sizeof(unsigned long)));
      if (!iov) break;
      if (i) p.put(", ");
      p.put("{iov_base=");
      const unsigned long shown = std::min(left, (*iov)[1]);
      p.buffer(static_cast<long>((*iov)[0]), shown);
      left -= shown;
      p.printf(", iov_len=%lu}", (*iov)[1]);
    }
    p.put("]");
  }
  p.printf(", msg_iovlen=%lu", m->iovlen);
  if (m->controllen != 0) {
    p.put(", msg_control=");
    p.address(static_cast<long>(m->control));
  }
  p.printf(", msg_controllen=%lu, msg_flags=", m->controllen);
  p.bits(static_cast<unsigned>(m->flags), kMsgFlags);
  p.put("}");
}

// struct termios (the kernel's), abbreviated as strace prints it: the four flag words.
void termios_struct(Printer& p, long pointer, bool output) {
  static constexpr Name kInput[] = {
      {01, "IGNBRK"},  {02, "BRKINT"},   {04, "IGNPAR"},    {010, "PARMRK"},     {020, "INPCK"},
      {040, "ISTRIP"}, {0100, "INLCR"},  {0200, "IGNCR"},   {0400, "ICRNL"},     {01000, "IUCLC"},
      {02000, "IXON"}, {04000, "IXANY"}, {010000, "IXOFF"}, {020000, "IMAXBEL"}, {040000, "IUTF8"},
  };
  static constexpr Name kOutput[] = {
      {01, "OPOST"},  {02, "OLCUC"},   {04, "ONLCR"},   {010, "OCRNL"},
      {020, "ONOCR"}, {040, "ONLRET"}, {0100, "OFILL"}, {0200, "OFDEL"},
  };
  static constexpr Name kControl[] = {
      {0100, "CSTOPB"}, {0200, "CREAD"},   {0400, "PARENB"},         {01000, "PARODD"},
      {02000, "HUPCL"}, {04000, "CLOCAL"}, {010000000000, "CMSPAR"}, {020000000000, "CRTSCTS"},
  };
  static constexpr Name kLocal[] = {
      {01, "ISIG"},        {02, "ICANON"},     {04, "XCASE"},      {010, "ECHO"},
      {020, "ECHOE"},      {040, "ECHOK"},     {0100, "ECHONL"},   {0200, "NOFLSH"},
      {0100000, "IEXTEN"}, {01000, "ECHOCTL"}, {02000, "ECHOPRT"}, {04000, "ECHOKE"},
      {010000, "FLUSHO"},  {040000, "PENDIN"}, {0400, "TOSTOP"},   {0200000, "EXTPROC"},
  };
  static constexpr Name kBauds[] = {
      {0, "B0"},
      {1, "B50"},
      {2, "B75"},
      {3, "B110"},
      {4, "B134"},
      {5, "B150"},
      {6, "B200"},
      {7, "B300"},
      {010, "B600"},
      {011, "B1200"},
      {012, "B1800"},
      {013, "B2400"},
      {014, "B4800"},
      {015, "B9600"},
      {016, "B19200"},
      {017, "B38400"},
      {010001, "B57600"},
      {010002, "B115200"},
      {010003, "B230400"},
      {010004, "B460800"},
      {010005, "B500000"},
      {010006, "B576000"},
      {010007, "B921600"},
      {010010, "B1000000"},
      {010011, "B1152000"},
      {010012, "B1500000"},
      {010013, "B2000000"},
      {010014, "B2500000"},
      {010015, "B3000000"},
      {010016, "B3500000"},
      {010017, "B4000000"},
  };
  if (pointer == 0) return p.put("NULL");
  const auto t =
      (!output || p.succeeded()) ? p.object<std::array<std::uint32_t, 4>>(pointer) : std::nullopt;
  if (!t) return p.address(pointer);
  const auto [input, out, control, local] = *t;
  p.put("{c_iflag=");
  p.bits(input, kInput, "");  // strace leaves a zero word empty
  p.put(", c_oflag=");
  p.put((out & 0100) ? "NL1" : "NL0");
  p.printf("|CR%u|TAB%u", (out >> 9) & 3, (out >> 11) & 3);
  p.put((out & 020000) ? "|BS1" : "|BS0");
  p.put((out & 040000) ? "|VT1" : "|VT0");
  p.put((out & 0100000) ? "|FF1" : "|FF0");
  if (out & ~0177700u) {
    p.put("|");
    p.bits(out & ~0177700u, kOutput);
  }
  p.put(", c_cflag=");
  p.value_name(control & 010017, kBauds, "%#lo");
  p.printf("|CS%u", 5 + ((control >> 4) & 3));
  if (control & ~010077u) {
    p.put("|");
    p.bits(control & ~010077u, kControl);
  }
  p.put(", c_lflag=");
  p.bits(local, kLocal, "");
  p.put(", ...}");
}

// fcntl's struct flock.
void flock_struct(Printer& p, long pointer, bool output) {
  struct Flock {
    short type, whence;
    long start, len;
    int pid;
  };
  static constexpr Name kTypes[] = {{0, "F_RDLCK"}, {1, "F_WRLCK"}, {2, "F_UNLCK"}};
  const auto lock = (!output || p.succeeded()) ? p.object<Flock>(pointer) : std::nullopt;
  if (!lock) return p.address(pointer);
  p.put("{l_type=");
  p.value_name(static_cast<unsigned short>(lock->type), kTypes, "%#lx");
  p.put(", l_whence=");
  p.value_name(static_cast<unsigned short>(lock->whence), kWhence, "%#lx");
  p.printf(", l_start=%ld, l_len=%ld", lock->start, lock->len);
  if (output) p.printf(", l_pid=%d", lock->pid);
  p.put("}");
}

// getrusage's struct rusage: the two times, then `...`.
void rusage_struct(Printer& p, long pointer) {
  const auto usage = p.succeeded() ? p.object<std::array<long, 4>>(pointer) : std::nullopt;
  if (!usage) return p.address(pointer);
  p.printf("{ru_utime={tv_sec=%ld, tv_usec=%ld}, ru_stime={tv_sec=%ld, tv_usec=%ld}, ...}",
           (*usage)[0], (*usage)[1], (*usage)[2], (*usage)[3]);
}

constexpr Name kMempolicyModes[] = {{0, "MPOL_DEFAULT"}, {1, "MPOL_PREFERRED"},
                                    {2, "MPOL_BIND"},    {3, "MPOL_INTERLEAVE"},
                                    {4, "MPOL_LOCAL"},   {5, "MPOL_PREFERRED_MANY"}};

void mempolicy_mode(Printer& p, unsigned long mode) {
  p.value_name(mode & 0xff, kMempolicyModes, "%#lx");
  if (mode & (1ul << 15)) p.put("|MPOL_F_STATIC_NODES");
  if (mode & (1ul << 14)) p.put("|MPOL_F_RELATIVE_NODES");
  if (mode & (1ul << 13)) p.put("|MPOL_F_NUMA_BALANCING");
}

// A node mask of maxnode - 1 bits, word by word as strace prints it.
void nodemask(Printer& p, long pointer, unsigned long maxnode, bool output) {
  if (pointer == 0) return p.put("NULL");
  const unsigned long words = std::min<unsigned long>((maxnode - 1 + 63) / 64, 1024);
  if (maxnode == 0 || (output && !p.succeeded())) return p.address(pointer);
  std::string text = "[";
  for (unsigned long i = 0; i < words; ++i) {
    const auto word = p.object<unsigned long>(pointer + static_cast<long>(i * 8));
    if (!word) return p.address(pointer);
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%#016lx", *word);
    text += (i ? ", " : "") + std::string(buffer);
  }
  p.put(text + "]");
}

// struct stat, abbreviated as strace prints it by default.
void stat_struct(Printer& p, long pointer) {
  struct KernelStat {
    unsigned long dev, ino, nlink;
    unsigned mode, uid, gid, pad0;
    unsigned long rdev;
    long size, blksize, blocks;
  };
  if (!p.succeeded()) return p.address(pointer);
  const auto st = p.object<KernelStat>(pointer);
  if (!st) return p.address(pointer);
  p.put("{st_mode=");
  file_mode(p, st->mode);
  const unsigned type = st->mode & 0170000;
  if (type == 020000 || type == 060000) {
    const unsigned long major = ((st->rdev >> 32) & 0xfffff000) | ((st->rdev >> 8) & 0xfff);
    const unsigned long minor = ((st->rdev >> 12) & 0xffffff00) | (st->rdev & 0xff);
    p.printf(", st_rdev=makedev(%#lx, %#lx)", major, minor);
  } else {
    p.printf(", st_size=%ld", st->size);
  }
  p.put(", ...}");
}

void sigaction_struct(Printer& p, long pointer) {
  struct KernelSigaction {
    unsigned long handler, flags, restorer;
    std::uint64_t mask;
  };
  if (pointer == 0) return p.put("NULL");
  const auto act = p.object<KernelSigaction>(pointer);
  if (!act) return p.address(pointer);
  p.put("{sa_handler=");
  if (act->handler == 0) {
    p.put("SIG_DFL");
  } else if (act->handler == 1) {
    p.put("SIG_IGN");
  } else {
    p.printf("%#lx", act->handler);
  }
  p.put(", sa_mask=");
  p.sigset_value(act->mask);
  p.put(", sa_flags=");
  p.values(ValueSet::signal_flags, act->flags);
  if (act->flags & 0x04000000) p.printf(", sa_restorer=%#lx", act->restorer);
  p.put("}");
}

void int_pair(Printer& p, long pointer) {
  if (!p.succeeded()) return p.address(pointer);
  const auto fds = p.object<std::array<int, 2>>(pointer);
  if (!fds) return p.address(pointer);
  p.put("[");
  p.fd((*fds)[0], true);
  p.put(", ");
  p.fd((*fds)[1], true);
  p.put("]");
}

void wait_status(Printer& p, long pointer) {
  if (pointer == 0) return p.put("NULL");
  const auto status = p.succeeded() && *p.result() != 0 ? p.object<int>(pointer) : std::nullopt;
  if (!status) return p.address(pointer);
  const int s = *status;
  if ((s & 0x7f) == 0) {
    p.printf("[{WIFEXITED(s) && WEXITSTATUS(s) == %d}]", (s >> 8) & 0xff);
  } else if ((s & 0xff) == 0x7f) {
    p.put("[{WIFSTOPPED(s) && WSTOPSIG(s) == ");
    p.signal((s >> 8) & 0xff);
    p.put("}]");
  } else {
    p.put("[{WIFSIGNALED(s) && WTERMSIG(s) == ");
    p.signal(s & 0x7f);
    p.put((s & 0x80) ? " && WCOREDUMP(s)}]" : "}]");
  }
}

void timespec_struct(Printer& p, long pointer) {
  if (pointer == 0) return p.put("NULL");
  const auto ts = p.object<std::array<long, 2>>(pointer);
  if (!ts) return p.address(pointer);
  p.printf("{tv_sec=%ld, tv_nsec=%ld}", (*ts)[0], (*ts)[1]);
}

void clone3_args(Printer& p) {
  struct CloneArgs {
    std::uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
  };
  const auto args = p.object<CloneArgs>(p.arg(0));
  if (!args) {
    p.address(p.arg(0));
  } else {
    p.put("{flags=");
    p.values(ValueSet::clone_flags, args->flags);
    if (args->flags & 0x1000) p.printf(", pidfd=%#lx", static_cast<unsigned long>(args->pidfd));
    if (args->flags & (0x1000000 | 0x200000))
      p.printf(", child_tid=%#lx", static_cast<unsigned long>(args->child_tid));
    if (args->flags & 0x100000)
      p.printf(", parent_tid=%#lx", static_cast<unsigned long>(args->parent_tid));
    p.put(", exit_signal=");
    p.signal(static_cast<long>(args->exit_signal));
    p.printf(", stack=%#lx, stack_size=%#lx", static_cast<unsigned long>(args->stack),
             static_cast<unsigned long>(args->stack_size));
    if (args->flags & 0x80000) p.printf(", tls=%#lx", static_cast<unsigned long>(args->tls));
    p.put("}");
    if (p.succeeded() && (args->flags & 0x100000) && args->parent_tid != 0) {
      // In the parent the kernel stored the child's id, which clone3 also returns. The memory
      // may no longer hold it by the time this runs: pthread_create passes the same word as
      // child_tid with CLONE_CHILD_CLEARTID, which the kernel zeroes when the thread exits.
      if (*p.result() > 0) {
        p.printf(" => {parent_tid=[%ld]}", *p.result());
      } else if (const auto tid = p.object<int>(static_cast<long>(args->parent_tid))) {
        p.printf(" => {parent_tid=[%d]}", *tid);
      }
    }
  }
  p.printf(", %lu", static_cast<unsigned long>(p.arg(1)));
}

void clone_call(Printer& p) {
  const unsigned long flags = static_cast<unsigned long>(p.arg(0));
  p.put("child_stack=");
  p.address(p.arg(1));
  p.put(", flags=");
  p.values(ValueSet::clone_flags, flags);
  if (flags & (0x100000 | 0x1000)) {
    p.put(", parent_tid=");
    p.address(p.arg(2));
  }
  if (flags & (0x1000000 | 0x200000)) {
    p.put(", child_tidptr=");
    p.address(p.arg(3));
  }
  if (flags & 0x80000) {
    p.put(", tls=");
    p.address(p.arg(4));
  }
}

void futex_call(Printer& p) {
  const int op = p.arg32(1);
  const int command = op & 0x7f;
  p.address(p.arg(0));
  p.separator();
  p.values(ValueSet::futex_op, static_cast<unsigned>(op));
  p.printf(", %d", p.arg32(2));
  auto bitset = [&](long value) {
    if (static_cast<std::uint32_t>(value) == 0xffffffffu) {
      p.put("FUTEX_BITSET_MATCH_ANY");
    } else {
      p.printf("%#x", static_cast<unsigned>(value));
    }
  };
  switch (command) {
    case 0:   // WAIT
    case 11:  // WAIT_REQUEUE_PI
      p.separator();
      timespec_struct(p, p.arg(3));
      if (command == 11) {
        p.separator();
        p.address(p.arg(4));
      }
      return;
    case 9:  // WAIT_BITSET
      p.separator();
      timespec_struct(p, p.arg(3));
      p.put(", ");
      bitset(p.arg(5));
      return;
    case 10:  // WAKE_BITSET
      p.put(", ");
      bitset(p.arg(5));
      return;
    case 3:  // REQUEUE
      p.printf(", %d, ", static_cast<int>(p.arg(3)));
      p.address(p.arg(4));
      return;
    case 4:   // CMP_REQUEUE
    case 12:  // CMP_REQUEUE_PI
      p.printf(", %d, ", static_cast<int>(p.arg(3)));
      p.address(p.arg(4));
      p.printf(", %d", p.arg32(5));
      return;
    case 5:  // WAKE_OP
      p.printf(", %d, ", static_cast<int>(p.arg(3)));
      p.address(p.arg(4));
      p.printf(", %#x", static_cast<unsigned>(p.arg(5)));
      return;
    case 6:
    case 13:
      p.separator();
      timespec_struct(p, p.arg(3));
      return;
    default:
      return;
  }
}

// Arguments of the calls printed by their own rules; false for the others.
bool special_arguments(Printer& p, long number, const SyscallInfo& info) {
  switch (number) {
    case SYS_close_range:  // a range of numbers: strace -y leaves them bare
      p.printf("%u, %u, ", static_cast<unsigned>(p.arg(0)), static_cast<unsigned>(p.arg(1)));
      p.bits(static_cast<unsigned>(p.arg(2)),
             {{2, "CLOSE_RANGE_UNSHARE"}, {4, "CLOSE_RANGE_CLOEXEC"}});
      return true;
    case SYS_set_mempolicy:
      mempolicy_mode(p, static_cast<unsigned>(p.arg(0)));
      p.separator();
      nodemask(p, p.arg(1), static_cast<unsigned long>(p.arg(2)), false);
      p.printf(", %lu", static_cast<unsigned long>(p.arg(2)));
      return true;
    case SYS_get_mempolicy: {
      const auto mode = p.succeeded() && p.arg(0) != 0 ? p.object<int>(p.arg(0)) : std::nullopt;
      if (mode) {
        p.put("[");
        mempolicy_mode(p, static_cast<unsigned>(*mode));
        p.put("]");
      } else {
        p.address(p.arg(0));
      }
      p.separator();
      nodemask(p, p.arg(1), static_cast<unsigned long>(p.arg(2)), true);
      p.printf(", %lu, ", static_cast<unsigned long>(p.arg(2)));
      p.address(p.arg(3));
      p.separator();
      p.bits(static_cast<unsigned>(p.arg(4)),
             {{1, "MPOL_F_NODE"}, {2, "MPOL_F_ADDR"}, {4, "MPOL_F_MEMS_ALLOWED"}});
      return true;
    }
    case SYS_faccessat2:  // 0x200 is AT_EACCESS here, not AT_REMOVEDIR
      generic_arguments(p, info, 0, 3);
      p.separator();
      p.bits(static_cast<unsigned>(p.arg(3)),
             {{0x200, "AT_EACCESS"}, {0x100, "AT_SYMLINK_NOFOLLOW"}, {0x1000, "AT_EMPTY_PATH"}});
      return true;
    case SYS_getrusage: {
      static constexpr Name kWho[] = {
          {0, "RUSAGE_SELF"}, {~0ul, "RUSAGE_CHILDREN"}, {1, "RUSAGE_THREAD"}};
      p.value_name(static_cast<unsigned long>(p.arg32(0)), kWho, "%ld");
      p.separator();
      rusage_struct(p, p.arg(1));
      return true;
    }
    case SYS_utimensat:
      p.dirfd(p.arg32(0));
      p.separator();
      p.string(p.arg(1), true);
      p.separator();
      utimes_pair(p, p.arg(2));
      p.separator();
      p.values(ValueSet::at_flags, static_cast<unsigned>(p.arg(3)));
      return true;
    case SYS_epoll_ctl: {
      static constexpr Name kOps[] = {
          {1, "EPOLL_CTL_ADD"}, {2, "EPOLL_CTL_DEL"}, {3, "EPOLL_CTL_MOD"}};
      p.fd(p.arg32(0));
      p.separator();
      p.value_name(static_cast<unsigned>(p.arg(1)), kOps, "%lu");
      p.separator();
      p.fd(p.arg32(2));
      p.separator();
      const auto event = p.arg(3) != 0 ? p.object<EpollEvent>(p.arg(3)) : std::nullopt;
      if (p.arg(3) == 0) {
        p.put("NULL");
      } else if (!event) {
        p.address(p.arg(3));
      } else {
        epoll_event(p, *event);
      }
      return true;
    }
    case SYS_epoll_wait:
    case SYS_epoll_pwait:
      p.fd(p.arg32(0));
      p.separator();
      epoll_events(p, p.arg(1));
      p.printf(", %d, %d", p.arg32(2), p.arg32(3));
      if (number == SYS_epoll_pwait) {
        p.separator();
        p.sigset(p.arg(4));
        p.printf(", %lu", static_cast<unsigned long>(p.arg(5)));
      }
      return true;
    case SYS_umask:
      p.mode(static_cast<unsigned>(p.arg(0)));
      return true;
    case SYS_sigaltstack:
      stack_struct(p, p.arg(0), false);
      p.separator();
      stack_struct(p, p.arg(1), true);
      return true;
    case SYS_timer_create:
      p.values(ValueSet::clock_id, static_cast<unsigned>(p.arg(0)));
      p.separator();
      sigevent_struct(p, p.arg(1));
      p.separator();
      int_out(p, p.arg(2));
      return true;
    case SYS_timer_settime:
      p.printf("%d, ", p.arg32(0));
      p.put(p.arg32(1) == 1 ? "TIMER_ABSTIME" : "0");
      p.separator();
      itimerspec_struct(p, p.arg(2), false);
      p.separator();
      itimerspec_struct(p, p.arg(3), true);
      return true;
    case SYS_timer_gettime:
      p.printf("%d, ", p.arg32(0));
      itimerspec_struct(p, p.arg(1), true);
      return true;
    case SYS_sendmsg:
    case SYS_recvmsg:
      p.fd(p.arg32(0));
      p.separator();
      msghdr_struct(p, p.arg(1), number == SYS_recvmsg);
      p.separator();
      p.bits(static_cast<unsigned>(p.arg(2)), kMsgFlags);
      return true;
    case SYS_rt_sigsuspend:
      p.sigset(p.arg(0));
      p.printf(", %lu", static_cast<unsigned long>(p.arg(1)));
      return true;
    case SYS_statx:
      statx_call(p);
      return true;
    case SYS_statfs:
      p.string(p.arg(0), true);
      p.separator();
      statfs_struct(p, p.arg(1));
      return true;
    case SYS_fstatfs:
      p.fd(p.arg32(0));
      p.separator();
      statfs_struct(p, p.arg(1));
      return true;
    case SYS_mmap:
      generic_arguments(p, info, 0, 5);
      p.separator();
      p.hex(static_cast<unsigned long>(p.arg(5)));
      return true;
    case SYS_getcwd:
      if (p.succeeded()) {
        p.string(p.arg(0), true);
      } else {
        p.address(p.arg(0));
      }
      p.printf(", %lu", static_cast<unsigned long>(p.arg(1)));
      return true;
    case SYS_fadvise64:
      p.fd(p.arg32(0));
      p.printf(", %ld, %ld, ", p.arg(1), p.arg(2));
      p.value_name(static_cast<unsigned>(p.arg(3)), kFadvise, "%lu");
      return true;
    case SYS_getrandom:
      // The bytes all in hex escapes, as strace prints random data.
      if (!p.succeeded()) {
        p.address(p.arg(0));
      } else {
        const std::size_t size = static_cast<std::size_t>(*p.result());
        const std::size_t shown = std::min(size, p.options().string_limit);
        std::string bytes(shown, '\0');
        if (!p.memory().read(bytes.data(), static_cast<unsigned long>(p.arg(0)), shown)) {
          p.address(p.arg(0));
        } else {
          p.put("\"");
          for (const char c : bytes) p.printf("\\x%02x", static_cast<unsigned char>(c));
          p.put(size > shown ? "\"..." : "\"");
        }
      }
      p.printf(", %lu, ", static_cast<unsigned long>(p.arg(1)));
      p.bits(static_cast<unsigned>(p.arg(2)), kGetrandomFlags);
      return true;
    case SYS_renameat2:
      generic_arguments(p, info, 0, 4);
      p.separator();
      p.bits(static_cast<unsigned>(p.arg(4)), kRenameFlags);
      return true;
    case SYS_epoll_create1:
      p.bits(static_cast<unsigned>(p.arg(0)), {{02000000, "EPOLL_CLOEXEC"}});
      return true;
    case SYS_uname:
      utsname_struct(p, p.arg(0));
      return true;
    case SYS_sysinfo:
      sysinfo_struct(p, p.arg(0));
      return true;
    case SYS_getrlimit:
    case SYS_setrlimit:
      p.values(ValueSet::rlimit_resource, static_cast<unsigned>(p.arg(0)));
      p.separator();
      rlimit_struct(p, p.arg(1), number == SYS_getrlimit);
      return true;
    case SYS_prlimit64:
      p.decimal(p.arg32(0));
      p.separator();
      p.values(ValueSet::rlimit_resource, static_cast<unsigned>(p.arg(1)));
      p.separator();
      rlimit_struct(p, p.arg(2), false);
      p.separator();
      rlimit_struct(p, p.arg(3), true);
      return true;
    case SYS_sched_getaffinity:
    case SYS_sched_setaffinity:
      p.decimal(p.arg32(0));
      p.printf(", %lu, ", static_cast<unsigned long>(p.arg(1)));
      if (number == SYS_sched_getaffinity) {
        if (!p.succeeded()) {
          p.address(p.arg(2));
        } else {
          cpu_set(p, p.arg(2), static_cast<unsigned long>(*p.result()));
        }
      } else {
        cpu_set(p, p.arg(2), static_cast<unsigned long>(p.arg(1)));
      }
      return true;
    case SYS_poll:
      pollfds(p, p.arg(0), static_cast<unsigned>(p.arg(1)), false);
      p.printf(", %u, %d", static_cast<unsigned>(p.arg(1)), p.arg32(2));
      poll_result(p, p.arg(0), static_cast<unsigned>(p.arg(1)), p.result_suffix);
      return true;
    case SYS_ppoll: {
      pollfds(p, p.arg(0), static_cast<unsigned>(p.arg(1)), false);
      p.printf(", %u, ", static_cast<unsigned>(p.arg(1)));
      if (p.entry() != nullptr && p.entry()->timeout) {
        p.printf("{tv_sec=%ld, tv_nsec=%ld}", (*p.entry()->timeout)[0], (*p.entry()->timeout)[1]);
      } else {
        timespec_struct(p, p.arg(2));
      }
      p.separator();
      p.sigset(p.arg(3));
      p.printf(", %lu", static_cast<unsigned long>(p.arg(4)));
      poll_result(p, p.arg(0), static_cast<unsigned>(p.arg(1)), p.result_suffix);
      if (p.succeeded() && *p.result() > 0 && p.arg(2) != 0) {
        Printer left(p);
        left.text.clear();
        timespec_struct(left, p.arg(2));
        p.result_suffix.insert(p.result_suffix.size() - 1, ", left " + left.text);
      }
      return true;
    }
    case SYS_socket: {
      const unsigned domain = static_cast<unsigned>(p.arg(0));
      p.values(ValueSet::socket_domain, domain);
      p.separator();
      p.values(ValueSet::socket_type, static_cast<unsigned>(p.arg(1)));
      p.separator();
      if (domain == 2 || domain == 10) {
        p.value_name(static_cast<unsigned>(p.arg(2)), kIpProtocols, "%lu");
      } else if (domain == 16) {
        p.value_name(static_cast<unsigned>(p.arg(2)), kNetlinkProtocols, "%lu");
      } else {
        p.decimal(p.arg32(2));
      }
      return true;
    }
    case SYS_connect:
    case SYS_bind:
      p.fd(p.arg32(0));
      p.separator();
      sockaddr(p, p.arg(1), p.arg32(2));
      p.printf(", %d", p.arg32(2));
      return true;
    case SYS_getsockname:
    case SYS_getpeername:
    case SYS_accept:
    case SYS_accept4:
      p.fd(p.arg32(0));
      p.separator();
      sockaddr_out(p, p.arg(1), p.arg(2));
      if (number == SYS_accept4) {
        p.separator();
        p.bits(static_cast<unsigned>(p.arg(3)), kSocketTypeFlags);
      }
      return true;
    case SYS_sendto:
      generic_arguments(p, info, 0, 4);
      p.separator();
      sockaddr(p, p.arg(4), p.arg32(5));
      p.printf(", %d", p.arg32(5));
      return true;
    case SYS_recvfrom:
      generic_arguments(p, info, 0, 4);
      p.separator();
      sockaddr_out(p, p.arg(4), p.arg(5));
      return true;
    case SYS_setsockopt:
    case SYS_getsockopt: {
      p.fd(p.arg32(0));
      p.separator();
      p.value_name(static_cast<unsigned>(p.arg(1)), kSocketLevels, "%lu");
      p.separator();
      socket_option_name(p, p.arg32(1), p.arg32(2));
      p.separator();
      if (number == SYS_setsockopt) {
        socket_option_value(p, p.arg(3), p.arg32(4));
        p.printf(", %d", p.arg32(4));
      } else {
        const auto length = p.succeeded() ? p.object<int>(p.arg(4)) : std::nullopt;
        if (!length) {
          p.address(p.arg(3));
          p.separator();
          p.address(p.arg(4));
        } else {
          socket_option_value(p, p.arg(3), *length);
          p.separator();
          value_result_length(p, *length);
        }
      }
      return true;
    }
    case SYS_getgroups:
      p.decimal(p.arg32(0));
      p.separator();
      if (!p.succeeded()) {
        p.address(p.arg(1));
      } else {
        gid_list(p, p.arg(1), *p.result());
      }
      return true;
    case SYS_setgroups:
      p.decimal(p.arg32(0));
      p.separator();
      gid_list(p, p.arg(1), p.arg32(0));
      return true;
    case SYS_newfstatat:
      p.dirfd(p.arg32(0));
      p.separator();
      p.string(p.arg(1), true);
      p.separator();
      stat_struct(p, p.arg(2));
      p.separator();
      p.values(ValueSet::at_flags, static_cast<unsigned>(p.arg(3)));
      return true;
    case SYS_stat:
    case SYS_lstat:
      p.string(p.arg(0), true);
      p.separator();
      stat_struct(p, p.arg(1));
      return true;
    case SYS_fstat:
      p.fd(p.arg32(0));
      p.separator();
      stat_struct(p, p.arg(1));
      return true;
    case SYS_openat:
      p.dirfd(p.arg32(0));
      p.separator();
      p.string(p.arg(1), true);
      p.separator();
      p.open_flags(static_cast<unsigned>(p.arg(2)));
      if (p.arg(2) & (0100 | 020000000)) {  // O_CREAT, O_TMPFILE: the mode counts
        p.separator();
        p.mode(static_cast<unsigned>(p.arg(3)));
      }
      return true;
    case SYS_open:
      p.string(p.arg(0), true);
      p.separator();
      p.open_flags(static_cast<unsigned>(p.arg(1)));
      if (p.arg(1) & (0100 | 020000000)) {
        p.separator();
        p.mode(static_cast<unsigned>(p.arg(2)));
      }
      return true;
    case SYS_fcntl: {
      const int command = p.arg32(1);
      p.fd(p.arg32(0));
      p.separator();
      p.values(ValueSet::fcntl_command, static_cast<unsigned>(command));
      switch (command) {
        case 1:
        case 3:
        case 9:
        case 11:
        case 1025:
        case 1032:
        case 1034:  // no argument
          return true;
        case 2:  // F_SETFD
          p.separator();
          p.bits(static_cast<unsigned>(p.arg(2)), {{1, "FD_CLOEXEC"}});
          return true;
        case 4:  // F_SETFL
          p.separator();
          p.open_flags(static_cast<unsigned>(p.arg(2)));
          return true;
        case 0:
        case 1030:
        case 8:
        case 10:
        case 1031:
          p.printf(", %d", p.arg32(2));
          return true;
        case 6:   // F_SETLK
        case 7:   // F_SETLKW
        case 37:  // F_OFD_SETLK
        case 38:  // F_OFD_SETLKW
          p.separator();
          flock_struct(p, p.arg(2), false);
          return true;
        case 5:   // F_GETLK
        case 36:  // F_OFD_GETLK
          p.separator();
          flock_struct(p, p.arg(2), true);
          return true;
        default:
          p.separator();
          p.address(p.arg(2));
          return true;
      }
    }
    case SYS_getdents64:
    case SYS_getdents: {
      p.fd(p.arg32(0));
      p.separator();
      p.address(p.arg(1));
      if (p.succeeded()) {
        // Count the entries: d_reclen is at offset 16 (getdents64) or 16 (getdents) as well.
        std::size_t entries = 0;
        const long size = *p.result();
        for (long offset = 0; offset < size; ++entries) {
          const auto length = p.object<std::uint16_t>(p.arg(1) + offset + 16);
          if (!length || *length == 0) break;
          offset += *length;
        }
        p.printf(" /* %zu entries */", entries);
      }
      p.printf(", %u", static_cast<unsigned>(p.arg(2)));
      return true;
    }
    case SYS_rt_sigprocmask:
      p.values(ValueSet::sigprocmask_how, static_cast<unsigned>(p.arg(0)));
      p.separator();
      p.sigset(p.arg(1));
      p.separator();
      if (p.succeeded()) {
        p.sigset(p.arg(2));
      } else {
        p.address(p.arg(2));
      }
      p.printf(", %lu", static_cast<unsigned long>(p.arg(3)));
      return true;
    case SYS_rt_sigaction:
      p.signal(p.arg32(0));
      p.separator();
      sigaction_struct(p, p.arg(1));
      p.separator();
      if (p.succeeded()) {
        sigaction_struct(p, p.arg(2));
      } else {
        p.address(p.arg(2));
      }
      p.printf(", %lu", static_cast<unsigned long>(p.arg(3)));
      return true;
    case SYS_clone3:
      clone3_args(p);
      return true;
    case SYS_clone:
      clone_call(p);
      return true;
    case SYS_futex:
      futex_call(p);
      return true;
    case SYS_socketpair:
      p.values(ValueSet::socket_domain, static_cast<unsigned>(p.arg(0)));
      p.separator();
      p.values(ValueSet::socket_type, static_cast<unsigned>(p.arg(1)));
      p.printf(", %d, ", p.arg32(2));
      int_pair(p, p.arg(3));
      return true;
    case SYS_pipe2:
    case SYS_pipe:
      int_pair(p, p.arg(0));
      if (number == SYS_pipe2) {
        p.separator();
        p.values(ValueSet::fd_flags, static_cast<unsigned>(p.arg(1)));
      }
      return true;
    case SYS_wait4:
      p.decimal(p.arg32(0));
      p.separator();
      wait_status(p, p.arg(1));
      p.separator();
      p.values(ValueSet::wait_options, static_cast<unsigned>(p.arg(2)));
      p.separator();
      p.address(p.arg(3));
      return true;
    case SYS_rseq:
      p.address(p.arg(0));
      p.printf(", %#x, %d, %#x", static_cast<unsigned>(p.arg(1)), p.arg32(2),
               static_cast<unsigned>(p.arg(3)));
      return true;
    case SYS_prctl: {
      const int option = p.arg32(0);
      p.values(ValueSet::prctl_option, static_cast<unsigned>(option));
      if (option == 15) {  // PR_SET_NAME
        p.separator();
        p.string(p.arg(1), false);
      } else if (option == 16) {  // PR_GET_NAME
        p.separator();
        if (p.succeeded()) {
          p.string(p.arg(1), false);
        } else {
          p.address(p.arg(1));
        }
      } else {
        for (int i = 1; i < 5; ++i) {
          p.separator();
          p.hex(static_cast<unsigned long>(p.arg(i)));
        }
      }
      return true;
    }
    case SYS_clock_gettime:
    case SYS_clock_getres:
      p.values(ValueSet::clock_id, static_cast<unsigned>(p.arg(0)));
      p.separator();
      if (p.succeeded()) {
        timespec_struct(p, p.arg(1));
      } else {
        p.address(p.arg(1));
      }
      return true;
    case SYS_nanosleep:
      timespec_struct(p, p.arg(0));
      p.separator();
      p.address(p.arg(1));
      return true;
    case SYS_clock_nanosleep:
      p.values(ValueSet::clock_id, static_cast<unsigned>(p.arg(0)));
      p.separator();
      p.put(p.arg(1) == 1 ? "TIMER_ABSTIME" : "0");
      p.separator();
      timespec_struct(p, p.arg(2));
      p.separator();
      p.address(p.arg(3));
      return true;
    case SYS_ioctl: {
      const unsigned request = static_cast<unsigned>(p.arg(1));
      p.fd(p.arg32(0));
      p.separator();
      if (request == 0x40049409) {
        p.put("BTRFS_IOC_CLONE or FICLONE, ");
        p.decimal(p.arg32(2));  // strace -y leaves this one bare
        return true;
      }
      p.value_name(request, kIoctls, "%#lx");
      p.separator();
      if (request == 0x5401) {  // TCGETS
        termios_struct(p, p.arg(2), true);
      } else if (request >= 0x5402 && request <= 0x5404) {  // TCSETS, TCSETSW, TCSETSF
        termios_struct(p, p.arg(2), false);
      } else if (request == 0x541B || request == 0x80045430) {  // FIONREAD, TIOCGPTN
        int_out(p, p.arg(2));
      } else if (request == 0x5413) {  // TIOCGWINSZ
        const auto size =
            p.succeeded() ? p.object<std::array<unsigned short, 4>>(p.arg(2)) : std::nullopt;
        if (!size) return p.address(p.arg(2)), true;
        p.printf("{ws_row=%u, ws_col=%u, ws_xpixel=%u, ws_ypixel=%u}", (*size)[0], (*size)[1],
                 (*size)[2], (*size)[3]);
      } else if (request == 0x5421 || request == 0x5452) {  // FIONBIO, FIOASYNC: int in
        const auto value = p.object<int>(p.arg(2));
        if (!value) return p.address(p.arg(2)), true;
        p.printf("[%d]", *value);
      } else if (request == 0x5450 || request == 0x5451) {  // FIONCLEX, FIOCLEX: no argument
        p.text.resize(p.text.size() - 2);
      } else {
        p.address(p.arg(2));
      }
      return true;
    }
    case SYS_kill:
    case SYS_tkill:
      p.decimal(p.arg32(0));
      p.separator();
      p.signal(p.arg32(1));
      return true;
    default:
      (void)info;
      return false;
  }
}

// The calls whose result is a new file descriptor (strace -y decodes it).
bool returns_fd(long number, const std::array<long, 6>& args) {
  switch (number) {
    case SYS_open:
    case SYS_openat:
    case SYS_openat2:
    case SYS_creat:
    case SYS_socket:
    case SYS_accept:
    case SYS_accept4:
    case SYS_dup:
    case SYS_dup2:
    case SYS_dup3:
    case SYS_epoll_create:
    case SYS_epoll_create1:
    case SYS_eventfd:
    case SYS_eventfd2:
    case SYS_signalfd:
    case SYS_signalfd4:
    case SYS_timerfd_create:
    case SYS_memfd_create:
    case SYS_inotify_init:
    case SYS_inotify_init1:
    case SYS_fanotify_init:
    case SYS_pidfd_open:
    case SYS_pidfd_getfd:
    case SYS_perf_event_open:
    case SYS_userfaultfd:
    case SYS_open_tree:
    case SYS_fsopen:
    case SYS_fsmount:
    case SYS_fspick:
    case SYS_io_uring_setup:
      return true;
    case SYS_fcntl:
      return args[1] == 0 || args[1] == 1030;  // F_DUPFD, F_DUPFD_CLOEXEC
    default:
      return false;
  }
}

bool returns_address(long number) {
  return number == SYS_mmap || number == SYS_brk || number == SYS_mremap || number == SYS_shmat;
}

}  // namespace

std::string format_error(long result) {
  const int error = static_cast<int>(-result);
  const char* name = strerrorname_np(error);
  std::string text = "-1 ";
  text += name ? name : std::to_string(error);
  text += " (";
  text += std::strerror(error);
  text += ")";
  return text;
}

CallEntry capture_entry(long number, const std::array<long, 6>& args,
                        const FormatOptions& options) {
  CallEntry entry;
  Printer p(args, std::nullopt, options);
  if (options.decode_fds) {
    if (const SyscallInfo* info = syscall_info(number)) {
      for (int i = 0; i < info->argument_count; ++i) {
        const ArgKind kind = info->arguments[i].kind;
        const int fd = static_cast<int>(args[static_cast<std::size_t>(i)]);
        if ((kind != ArgKind::fd && kind != ArgKind::dirfd) || fd < 0) continue;
        p.text.clear();
        p.fd_target("fd/" + std::to_string(fd));
        entry.fd_targets.emplace_back(fd, p.text);
      }
    }
  }
  switch (number) {
    case SYS_accept:
    case SYS_accept4:
    case SYS_getsockname:
    case SYS_getpeername:
      if (args[1] != 0) entry.length = p.object<int>(args[2]);
      break;
    case SYS_recvfrom:
      if (args[4] != 0) entry.length = p.object<int>(args[5]);
      break;
    case SYS_getsockopt:
      entry.length = p.object<int>(args[4]);
      break;
    case SYS_recvmsg:
      if (args[1] != 0) entry.length = p.object<int>(args[1] + 8);  // msg_namelen
      break;
    case SYS_ppoll:
      if (args[2] != 0) entry.timeout = p.object<std::array<long, 2>>(args[2]);
      break;
    default:
      break;
  }
  return entry;
}

CallEntry capture_entry(const Syscall& call, const FormatOptions& options) {
  std::array<long, 6> args{};
  for (int i = 0; i < 6; ++i) args[static_cast<std::size_t>(i)] = call.arg(i);
  return capture_entry(call.number(), args, options);
}

namespace {

std::string format_call(long number, const std::array<long, 6>& args, std::optional<long> result,
                        const FormatOptions& options, const CallEntry* entry) {
  Printer p(args, result, options, entry);
  const SyscallInfo* info = syscall_info(number);
  if (info == nullptr) {
    p.printf("syscall_%#lx(", static_cast<unsigned long>(number));
    for (int i = 0; i < 6; ++i) {
      if (i) p.separator();
      p.printf("%#lx", static_cast<unsigned long>(args[static_cast<std::size_t>(i)]));
    }
  } else {
    p.put(info->name);
    p.put("(");
    if (!special_arguments(p, number, *info)) generic_arguments(p, *info);
  }
  p.put(") = ");
  if (!result) {
    p.put("?");
  } else if (*result <= -512 && *result >= -516) {
    // Seen only by a tracer (ptrace): the kernel restarts the call or turns it into EINTR.
    static constexpr std::string_view kRestart[] = {
        "? ERESTARTSYS (To be restarted if SA_RESTART is set)",
        "? ERESTARTNOINTR (To be restarted)",
        "? ERESTARTNOHAND (To be restarted if no handler)",
        "? ENOIOCTLCMD (No ioctl command)",
        "? ERESTART_RESTARTBLOCK (Interrupted by signal)",
    };
    p.put(kRestart[-512 - *result]);
  } else if (*result < 0 && *result >= -4095) {
    p.put(format_error(*result));
  } else if (returns_address(number)) {
    p.printf("%#lx", static_cast<unsigned long>(*result));
  } else if (number == SYS_fcntl && args[1] == 1 && *result == 0) {
    p.put("0");  // F_GETFD: flags only when there are some
  } else if (number == SYS_fcntl && (args[1] == 3 || args[1] == 1)) {
    p.printf("%#lx (flags ", static_cast<unsigned long>(*result));
    if (args[1] == 3) {
      p.open_flags(static_cast<unsigned long>(*result));
    } else {
      p.bits(static_cast<unsigned long>(*result), {{1, "FD_CLOEXEC"}});
    }
    p.put(")");
  } else if (number == SYS_umask) {
    p.mode(static_cast<unsigned>(*result));
  } else if (returns_fd(number, args)) {
    p.fd(static_cast<int>(*result), true);
  } else {
    p.decimal(*result);
  }
  p.put(p.result_suffix);
  return std::move(p.text);
}

}  // namespace

std::string format(long number, const std::array<long, 6>& args, std::optional<long> result,
                   const FormatOptions& options) {
  return format_call(number, args, result, options, nullptr);
}

std::string format(long number, const std::array<long, 6>& args, std::optional<long> result,
                   const FormatOptions& options, const CallEntry& entry) {
  return format_call(number, args, result, options, &entry);
}

std::string format(const Syscall& call, std::optional<long> result, const FormatOptions& options,
                   const CallEntry& entry) {
  std::array<long, 6> args{};
  for (int i = 0; i < 6; ++i) args[static_cast<std::size_t>(i)] = call.arg(i);
  return format(call.number(), args, result, options, entry);
}

std::string format(const Syscall& call, std::optional<long> result, const FormatOptions& options) {
  std::array<long, 6> args{};
  for (int i = 0; i < 6; ++i) args[static_cast<std::size_t>(i)] = call.arg(i);
  return format(call.number(), args, result, options);
}

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
