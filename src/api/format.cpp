// zpoline/format.hpp: strace-style rendering of a system call. Generic printing follows the
// argument kinds of the table (zpoline/syscalls.hpp); the calls whose arguments are structures
// that programs use all the time (stat, sigaction, signal sets, clone3, futex, wait4, pipe...)
// have their own printers below, which follow strace's output.
#include "zpoline/format.hpp"

#include <sys/syscall.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
constexpr Name kSocketTypeFlags[] = {{04000, "SOCK_NONBLOCK"}, {02000000, "SOCK_CLOEXEC"}};
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
    {0x5401, "TCGETS"},       {0x5402, "TCSETS"},         {0x5403, "TCSETSW"},
    {0x5404, "TCSETSF"},      {0x540B, "TCFLSH"},         {0x540E, "TIOCSCTTY"},
    {0x540F, "TIOCGPGRP"},    {0x5410, "TIOCSPGRP"},      {0x5413, "TIOCGWINSZ"},
    {0x5414, "TIOCSWINSZ"},   {0x541B, "FIONREAD"},       {0x5421, "FIONBIO"},
    {0x5450, "FIONCLEX"},     {0x5451, "FIOCLEX"},        {0x5452, "FIOASYNC"},
    {0x80045430, "TIOCGPTN"}, {0x40045431, "TIOCSPTLCK"},
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
  Printer(const std::array<long, 6>& args, std::optional<long> result, const FormatOptions& options)
      : args_(args), result_(result), options_(options), memory_(options.memory_of_pid) {}

  std::string text;

  long arg(int i) const { return args_[static_cast<std::size_t>(i)]; }
  int arg32(int i) const { return static_cast<int>(arg(i)); }
  std::optional<long> result() const { return result_; }
  const FormatOptions& options() const { return options_; }
  const Memory& memory() const { return memory_; }
  template <class T>
  std::optional<T> object(long address) const {
    return memory_.object<T>(static_cast<unsigned long>(address));
  }
  bool succeeded() const { return result_ && (*result_ >= 0 || *result_ < -4095); }

  void put(std::string_view s) { text += s; }
  void separator() { text += ", "; }
  void printf(const char* format, auto... values) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, format, values...);
    text += buffer;
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
    } else {
      decimal(value);
    }
  }
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
    case ArgKind::integer:
    case ArgKind::fd:
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

void generic_arguments(Printer& p, const SyscallInfo& info, int from = 0) {
  for (int i = from; i < info.argument_count; ++i) {
    if (i > from) p.separator();
    generic_argument(p, info, i);
  }
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
  static constexpr Name kTypes[] = {
      {0140000, "S_IFSOCK"}, {0120000, "S_IFLNK"}, {0100000, "S_IFREG"}, {060000, "S_IFBLK"},
      {040000, "S_IFDIR"},   {020000, "S_IFCHR"},  {010000, "S_IFIFO"}};
  p.put("{st_mode=");
  p.value_name(st->mode & 0170000, kTypes, "%#lo");
  if (st->mode & 04000) p.put("|S_ISUID");
  if (st->mode & 02000) p.put("|S_ISGID");
  if (st->mode & 01000) p.put("|S_ISVTX");
  p.printf("|%#03o", st->mode & 0777);
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
  p.printf("[%d, %d]", (*fds)[0], (*fds)[1]);
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
      p.decimal(p.arg32(0));
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
      p.decimal(p.arg32(0));
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
        default:
          p.separator();
          p.address(p.arg(2));
          return true;
      }
    }
    case SYS_getdents64:
    case SYS_getdents: {
      p.decimal(p.arg32(0));
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
    case SYS_ioctl:
      p.decimal(p.arg32(0));
      p.separator();
      p.value_name(static_cast<unsigned>(p.arg(1)), kIoctls, "%#lx");
      p.separator();
      p.address(p.arg(2));
      return true;
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

std::string format(long number, const std::array<long, 6>& args, std::optional<long> result,
                   const FormatOptions& options) {
  Printer p(args, result, options);
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
  } else if (*result < 0 && *result >= -4095) {
    p.put(format_error(*result));
  } else if (returns_address(number)) {
    p.printf("%#lx", static_cast<unsigned long>(*result));
  } else if (number == SYS_fcntl && (args[1] == 3 || args[1] == 1)) {
    p.printf("%#lx (flags ", static_cast<unsigned long>(*result));
    if (args[1] == 3) {
      p.open_flags(static_cast<unsigned long>(*result));
    } else {
      p.bits(static_cast<unsigned long>(*result), {{1, "FD_CLOEXEC"}});
    }
    p.put(")");
  } else {
    p.decimal(*result);
  }
  return std::move(p.text);
}

std::string format(const Syscall& call, std::optional<long> result, const FormatOptions& options) {
  std::array<long, 6> args{};
  for (int i = 0; i < 6; ++i) args[static_cast<std::size_t>(i)] = call.arg(i);
  return format(call.number(), args, result, options);
}

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
