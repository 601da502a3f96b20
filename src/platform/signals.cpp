#include "platform/signals.hpp"

#include <asm/prctl.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "platform/fault_recovery.hpp"
#include "platform/memory.hpp"
#include "platform/raw_syscall.hpp"

// The library's signal restorer (entry_stub.S): returning from a handler must not itself trap
// under Syscall User Dispatch, as libc's restorer would before it is rewritten.
extern "C" void zpoline_detail_sigreturn_gadget() __attribute__((visibility("hidden")));
// Set once any signal is taken: the stub and forward() then route rt_sigaction here even when no
// hook runs (entry_stub.S).
extern "C" unsigned char zpoline_detail_filter_signal_calls __attribute__((visibility("hidden")));
unsigned char zpoline_detail_filter_signal_calls = 0;

namespace zpoline::detail {

ZPOLINE_THREAD_LOCAL sigjmp_buf* fault_recovery_target = nullptr;

namespace {

constexpr unsigned long kSaRestorer = 0x04000000;
constexpr int kMaxSignal = 64;

// The application's disposition of each taken signal. Written by application_sigaction() from
// any thread; a torn read by a concurrent delivery is no worse than the kernel's own race
// between sigaction and delivery on another thread.
struct TakenSignal {
  std::atomic<bool> taken{false};
  KernelSigaction application{};
};
TakenSignal taken_signals[kMaxSignal + 1];

bool default_action_ignores(int signal) {
  return signal == SIGCHLD || signal == SIGURG || signal == SIGWINCH || signal == SIGCONT;
}

// ---- requests --------------------------------------------------------------------------------

int request_signal = 0;
RequestAction request_actions[2] = {nullptr, nullptr};

// Where the waiting side learns that a thread ran its request: one slot per thread asked in the
// current round. A late answer (from an earlier round) carries another round number and is
// ignored.
constexpr std::size_t kSlots = 512;
std::atomic<std::uint32_t> slot_answered[kSlots];
std::atomic<std::uint32_t> answers{0};  // futex word: bumped on every answer
std::atomic<std::uint32_t> current_round{0};

// The request, in the siginfo the kernel carries from sender to receiver (rt_tgsigqueueinfo
// copies the 32 bytes of the union after si_code as they are, for SI_QUEUE): who sent it, and
// where the receiver was blocked in a system call when it was sent (to restart that call).
constexpr std::uint64_t kRequestMagic = 0x7a706f6cull << 32;  // "zpol"
struct RequestInfo {
  std::int32_t signo, errno_value, code, padding;
  std::int32_t sender;   // si_pid: this process
  std::uint16_t number;  // si_uid: the system call the thread was blocked in, if blocked,
  std::uint8_t kind;     //   the ThreadRequest,
  std::uint8_t blocked;  //   and whether sp and pc describe that blocked call
  std::uint64_t tag;     // si_value: kRequestMagic | round << 16 | slot
  std::uint64_t sp, pc;  // the thread's user stack pointer and pc in that call
};
static_assert(sizeof(RequestInfo) == 48, "exactly the part of siginfo the kernel copies");

std::uintptr_t resume_points[4] = {};
std::size_t resume_point_count = 0;

// The number of a system call whose instruction ends at `pc`, from the code before it, when it is
// the usual libc shape `mov $number, %eax; syscall`, or from the stack at the library's own
// instructions that keep it there; -1 if unknown.
long number_before(std::uintptr_t pc, std::uintptr_t sp) {
  for (std::size_t i = 0; i < resume_point_count; ++i) {
    if (resume_points[i] == pc) {
      std::uint64_t number = 0;
      return safe_read(&number, reinterpret_cast<const void*>(sp), sizeof number)
                 ? static_cast<long>(number)
                 : -1;
    }
  }
  std::uint8_t code[7];
  if (!safe_read(code, reinterpret_cast<const void*>(pc - 7), sizeof code)) return -1;
  if (code[0] != 0xb8 || code[5] != 0x0f || code[6] != 0x05) return -1;
  std::uint32_t number = 0;
  std::memcpy(&number, code + 1, sizeof number);
  return number;
}

// The request interrupted a system call that now returns EINTR only because of it: make the
// call again, from its instruction, with its number back in rax (the kernel left the argument
// registers as they were).
void restart_interrupted_call(ucontext_t& context, const RequestInfo& request) {
  greg_t* g = context.uc_mcontext.gregs;
  if (g[REG_RAX] != -EINTR) return;
  const auto pc = static_cast<std::uintptr_t>(g[REG_RIP]);
  const auto sp = static_cast<std::uintptr_t>(g[REG_RSP]);
  long number = -1;
  if (request.blocked && request.pc == pc && request.sp == sp) {
    number = request.number;
  } else {
    number = number_before(pc, sp);  // it entered the call after the snapshot
  }
  if (number < 0) return;
  std::uint8_t instruction[2];
  if (!safe_read(instruction, reinterpret_cast<const void*>(pc - 2), sizeof instruction)) return;
  const bool syscall_there = instruction[0] == 0x0f && instruction[1] == 0x05;
  // A site rewritten since the call started: `call *%rax` into page 0, or the near mechanism's
  // `jmp rel8` to its trampoline; either makes the call again through the hook.
  const bool rewritten_there =
      (instruction[0] == 0xff && instruction[1] == 0xd0) || instruction[0] == 0xeb;
  if (!syscall_there && !rewritten_there) return;
  // Another signal the thread accepts is pending (this handler blocks the others while it
  // runs): it would have interrupted the call all the same, and its handler runs next.
  std::uint64_t pending = 0;
  if (raw_syscall(SYS_rt_sigpending, reinterpret_cast<long>(&pending), sizeof pending) != 0) {
    return;
  }
  std::uint64_t accepted = 0;
  std::memcpy(&accepted, &context.uc_sigmask, sizeof accepted);
  if (pending & ~accepted) return;
  g[REG_RAX] = number;
  g[REG_RIP] = static_cast<greg_t>(pc - 2);
}

void on_request_signal(int signal, siginfo_t* info, void* raw_context) {
  RequestInfo request;
  std::memcpy(&request, info, sizeof request);
  const bool ours = request.code == SI_QUEUE && (request.tag >> 32 << 32) == kRequestMagic &&
                    request.sender == raw_syscall(SYS_getpid) && request.kind < 2;
  if (!ours) {
    pass_to_application(signal, info, raw_context);
    return;
  }
  auto& context = *static_cast<ucontext_t*>(raw_context);
  if (const RequestAction action = request_actions[request.kind]) action(context);
  restart_interrupted_call(context, request);
  const auto round = static_cast<std::uint32_t>(request.tag >> 16 & 0xffff);
  const auto slot = static_cast<std::size_t>(request.tag & 0xffff);
  if (round == current_round.load(std::memory_order_acquire) && slot < kSlots) {
    slot_answered[slot].store(round, std::memory_order_release);
    answers.fetch_add(1, std::memory_order_release);
    raw_syscall(SYS_futex, reinterpret_cast<long>(&answers), FUTEX_WAKE_PRIVATE, 1);
  }
}

// ---- /proc, read with raw system calls (the hook must not see the library's own reads) -------

std::size_t read_file(const char* path, char* buffer, std::size_t size) {
  const long fd =
      raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  std::size_t length = 0;
  while (length + 1 < size) {
    const long n = raw_syscall(SYS_read, fd, reinterpret_cast<long>(buffer + length),
                               static_cast<long>(size - 1 - length));
    if (n <= 0) break;
    length += static_cast<std::size_t>(n);
  }
  raw_syscall(SYS_close, fd);
  buffer[length] = '\0';
  return length;
}

void task_path(char* out, long tid, const char* leaf) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + tid % 10);
    tid /= 10;
  } while (tid > 0);
  char* p = out;
  for (const char* s = "/proc/self/task/"; *s;) *p++ = *s++;
  while (n > 0) *p++ = digits[--n];
  *p++ = '/';
  while (*leaf) *p++ = *leaf++;
  *p = '\0';
}

std::uint64_t parse_number(const char*& p, int base) {
  while (*p == ' ' || *p == '\t') ++p;
  if (base == 16 && p[0] == '0' && p[1] == 'x') p += 2;
  std::uint64_t value = 0;
  for (;; ++p) {
    int digit;
    if (*p >= '0' && *p <= '9') {
      digit = *p - '0';
    } else if (base == 16 && *p >= 'a' && *p <= 'f') {
      digit = *p - 'a' + 10;
    } else {
      break;
    }
    value = value * static_cast<unsigned>(base) + static_cast<unsigned>(digit);
  }
  return value;
}

struct TaskState {
  bool exists = false;  // and not a zombie
  bool stopped = false;
  bool blocks_request = false;
  std::uint64_t pending = 0;  // signals pending for the thread itself
};

TaskState task_state(long tid) {
  char path[64], text[2048];
  task_path(path, tid, "status");
  TaskState state;
  if (read_file(path, text, sizeof text) == 0) return state;
  state.exists = true;
  if (const char* line = std::strstr(text, "\nState:")) {
    const char* p = line + 7;
    while (*p == ' ' || *p == '\t') ++p;
    state.exists = *p != 'Z' && *p != 'X';
    state.stopped = *p == 'T' || *p == 't';
  }
  if (const char* line = std::strstr(text, "\nSigPnd:")) {
    const char* p = line + 8;
    state.pending = parse_number(p, 16);
  }
  if (const char* line = std::strstr(text, "\nSigBlk:")) {
    const char* p = line + 8;
    state.blocks_request = (parse_number(p, 16) & signal_bit(request_signal)) != 0;
  }
  return state;
}

// Where the thread is blocked in a system call, if it is.
void read_blocked_call(long tid, RequestInfo& request) {
  char path[64], text[512];
  task_path(path, tid, "syscall");
  if (read_file(path, text, sizeof text) == 0 || text[0] < '0' || text[0] > '9') return;
  const char* p = text;
  const std::uint64_t number = parse_number(p, 10);
  for (int i = 0; i < 6; ++i) parse_number(p, 16);
  request.sp = parse_number(p, 16);
  request.pc = parse_number(p, 16);
  request.number = static_cast<std::uint16_t>(number);
  request.blocked = number < 65536 && request.pc != 0;
}

void choose_request_signal() {
  if (request_signal != 0) return;
  // The highest real-time signal the application does not use: SIG_DFL and not blocked here.
  std::uint64_t blocked = 0;
  raw_syscall(SYS_rt_sigprocmask, SIG_BLOCK, 0, reinterpret_cast<long>(&blocked), sizeof blocked);
  for (int signal = SIGRTMAX; signal >= SIGRTMIN; --signal) {
    KernelSigaction current{};
    if (raw_sigaction(signal, nullptr, &current) == 0 &&
        current.handler == reinterpret_cast<void*>(SIG_DFL) && !(blocked & signal_bit(signal))) {
      request_signal = signal;
      break;
    }
  }
  if (request_signal == 0) request_signal = SIGRTMAX;
  // Everything else is blocked while a request runs, so that a restart can tell whether another
  // signal is waiting; never SIGSYS (a trap while it is blocked kills the process) nor the
  // synchronous fault signals.
  std::uint64_t blocked_while_running = ~0ull;
  for (int s : {SIGSYS, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP}) {
    blocked_while_running &= ~signal_bit(s);
  }
  take_signal(request_signal, on_request_signal, 0, blocked_while_running);
}

std::vector<long> other_threads() {
  std::vector<long> tids;
  const long self = raw_syscall(SYS_gettid);
  const long fd = raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/task"),
                              O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return tids;
  alignas(8) char buffer[4096];
  for (;;) {
    const long n = raw_syscall(SYS_getdents64, fd, reinterpret_cast<long>(buffer), sizeof buffer);
    if (n <= 0) break;
    for (long offset = 0; offset < n;) {
      const char* entry = buffer + offset;
      std::uint16_t length = 0;
      std::memcpy(&length, entry + 16, sizeof length);
      const char* name = entry + 19;
      const char* p = name;
      const long tid = static_cast<long>(parse_number(p, 10));
      if (tid > 0 && *p == '\0' && tid != self) tids.push_back(tid);
      offset += length;
    }
  }
  raw_syscall(SYS_close, fd);
  return tids;
}

long now_ms() {
  timespec now{};
  raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&now));
  return now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

}  // namespace

long raw_sigaction(int signal, const KernelSigaction* action, KernelSigaction* old) noexcept {
  return raw_syscall(SYS_rt_sigaction, signal, reinterpret_cast<long>(action),
                     reinterpret_cast<long>(old), sizeof(std::uint64_t));
}

void take_signal(int signal, SignalHandler handler, unsigned long flags, std::uint64_t blocked) {
  TakenSignal& entry = taken_signals[signal];
  if (entry.taken.load(std::memory_order_acquire)) return;
  KernelSigaction action{};
  action.handler = reinterpret_cast<void*>(handler);
  action.flags = SA_SIGINFO | SA_RESTART | kSaRestorer | flags;
  action.restorer = reinterpret_cast<void*>(&zpoline_detail_sigreturn_gadget);
  action.mask = blocked;
  KernelSigaction previous{};
  if (raw_sigaction(signal, &action, &previous) != 0) return;
  entry.application = previous;
  entry.taken.store(true, std::memory_order_release);
  __atomic_store_n(&zpoline_detail_filter_signal_calls, 1, __ATOMIC_RELEASE);
}

bool signal_taken(int signal) noexcept {
  return signal > 0 && signal <= kMaxSignal &&
         taken_signals[signal].taken.load(std::memory_order_acquire);
}

long application_sigaction(int signal, const void* action, void* old) noexcept {
  TakenSignal& entry = taken_signals[signal];
  KernelSigaction requested{};
  if (action != nullptr && !safe_read(&requested, action, sizeof requested)) return -EFAULT;
  if (old != nullptr && !safe_write(old, &entry.application, sizeof entry.application)) {
    return -EFAULT;
  }
  if (action != nullptr) entry.application = requested;
  return 0;
}

void pass_to_application(int signal, siginfo_t* info, void* context) noexcept {
  TakenSignal& entry = taken_signals[signal];
  const KernelSigaction action = entry.application;
  // A fault raised by an instruction (not sent) cannot be ignored: the kernel would kill.
  const bool fault = info->si_code > 0 && (signal == SIGSEGV || signal == SIGBUS ||
                                           signal == SIGILL || signal == SIGFPE);
  const bool ignore = action.handler == reinterpret_cast<void*>(SIG_IGN);
  if (ignore && !fault) return;
  if (ignore || action.handler == reinterpret_cast<void*>(SIG_DFL)) {
    if (default_action_ignores(signal)) return;
    // The default action for real: the library's handler goes, and the signal comes again,
    // with its original information; it is taken when this handler returns (or at once).
    KernelSigaction default_action{};
    default_action.handler = reinterpret_cast<void*>(SIG_DFL);
    raw_sigaction(signal, &default_action, nullptr);
    entry.taken.store(false, std::memory_order_release);
    if (fault) return;  // the instruction faults again, now with the default action
    const std::uint64_t unblock = signal_bit(signal);
    raw_syscall(SYS_rt_tgsigqueueinfo, raw_syscall(SYS_getpid), raw_syscall(SYS_gettid), signal,
                reinterpret_cast<long>(info));
    raw_syscall(SYS_rt_sigprocmask, SIG_UNBLOCK, reinterpret_cast<long>(&unblock), 0,
                sizeof unblock);
    return;
  }
  // The application's handler, as the kernel would run it: its mask (and the signal itself
  // unless SA_NODEFER) blocked while it runs, never SIGSYS.
  std::uint64_t mask = action.mask;
  if (!(action.flags & SA_NODEFER)) mask |= signal_bit(signal);
  mask &= ~signal_bit(SIGSYS);
  std::uint64_t previous = 0;
  raw_syscall(SYS_rt_sigprocmask, SIG_BLOCK, reinterpret_cast<long>(&mask),
              reinterpret_cast<long>(&previous), sizeof mask);
  if (action.flags & SA_RESETHAND) {
    entry.application = KernelSigaction{};
  }
  if (action.flags & SA_SIGINFO) {
    reinterpret_cast<void (*)(int, siginfo_t*, void*)>(action.handler)(signal, info, context);
  } else {
    reinterpret_cast<void (*)(int)>(action.handler)(signal);
  }
  raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&previous), 0,
              sizeof previous);
}

std::uintptr_t blocked_pc(pid_t tid) noexcept {
  char path[64], text[512];
  task_path(path, tid, "syscall");
  if (read_file(path, text, sizeof text) == 0 || std::strncmp(text, "running", 7) == 0) return 0;
  // "nr args... sp pc" in a system call, "-1 sp pc" blocked elsewhere (a page fault, say).
  const char* p = text;
  const bool in_call = *p != '-';
  if (!in_call) ++p;
  parse_number(p, 10);
  for (int i = 0; in_call && i < 6; ++i) parse_number(p, 16);
  parse_number(p, 16);  // sp
  return parse_number(p, 16);
}

void wait_until_no_thread_has_pending(int signal) {
  const long deadline = now_ms() + 1000;
  std::vector<long> threads = other_threads();
  while (!threads.empty() && now_ms() < deadline) {
    std::erase_if(threads, [&](long tid) {
      const TaskState state = task_state(tid);
      return !state.exists || state.stopped || !(state.pending & signal_bit(signal));
    });
    if (!threads.empty()) raw_syscall(SYS_sched_yield);
  }
}

void set_request_action(ThreadRequest request, RequestAction action) noexcept {
  request_actions[static_cast<int>(request)] = action;
}

void set_syscall_resume_points(std::span<const std::uintptr_t> points) noexcept {
  resume_point_count = 0;
  for (std::uintptr_t point : points) {
    if (resume_point_count < std::size(resume_points)) resume_points[resume_point_count++] = point;
  }
}

RequestOutcome ask_other_threads(ThreadRequest request) {
  choose_request_signal();
  RequestOutcome outcome;
  const long pid = raw_syscall(SYS_getpid);
  std::vector<long> pending = other_threads();
  while (!pending.empty()) {
    // One round per kSlots threads.
    const std::size_t count = std::min(pending.size(), kSlots);
    std::vector<long> round(pending.begin(), pending.begin() + static_cast<long>(count));
    pending.erase(pending.begin(), pending.begin() + static_cast<long>(count));
    std::uint32_t this_round = (current_round.load(std::memory_order_relaxed) + 1) & 0xffff;
    if (this_round == 0) this_round = 1;
    current_round.store(this_round, std::memory_order_release);
    std::vector<bool> asked(count, false);
    for (std::size_t slot = 0; slot < count; ++slot) {
      const TaskState state = task_state(round[slot]);
      if (!state.exists) continue;
      if (state.blocks_request) {
        // A request would wait until the thread unblocks the signal, or be taken by its
        // sigwaitinfo(): not sent. The caller deals with such threads another way.
        outcome.not_reached.push_back(static_cast<pid_t>(round[slot]));
        continue;
      }
      RequestInfo info{};
      info.signo = request_signal;
      info.code = SI_QUEUE;
      info.sender = static_cast<std::int32_t>(pid);
      info.kind = static_cast<std::uint8_t>(request);
      info.tag = kRequestMagic | std::uint64_t{this_round} << 16 | slot;
      read_blocked_call(round[slot], info);
      siginfo_t raw_info{};
      std::memcpy(&raw_info, &info, sizeof info);
      slot_answered[slot].store(0, std::memory_order_relaxed);
      const bool sent = raw_syscall(SYS_rt_tgsigqueueinfo, pid, round[slot], request_signal,
                                    reinterpret_cast<long>(&raw_info)) == 0;
      // A stopped thread runs the request when it continues: not waited for.
      if (sent && state.stopped) outcome.not_reached.push_back(static_cast<pid_t>(round[slot]));
      asked[slot] = sent && !state.stopped;
    }
    // Wait for the answers; a thread that exits meanwhile never answers, one that was stopped
    // answers when it runs again.
    const long deadline = now_ms() + 5000;
    for (;;) {
      const std::uint32_t seen = answers.load(std::memory_order_acquire);
      bool waiting = false;
      for (std::size_t slot = 0; slot < count; ++slot) {
        if (!asked[slot]) continue;
        if (slot_answered[slot].load(std::memory_order_acquire) == this_round) {
          asked[slot] = false;
          ++outcome.answered;
        } else {
          waiting = true;
        }
      }
      if (!waiting) break;
      if (now_ms() > deadline) {
        for (std::size_t slot = 0; slot < count; ++slot) {
          if (asked[slot] && task_state(round[slot]).exists) {
            outcome.not_reached.push_back(static_cast<pid_t>(round[slot]));
          }
        }
        break;
      }
      const timespec tick{0, 10 * 1000 * 1000};
      raw_syscall(SYS_futex, reinterpret_cast<long>(&answers), FUTEX_WAIT_PRIVATE, seen,
                  reinterpret_cast<long>(&tick));
      for (std::size_t slot = 0; slot < count; ++slot) {
        if (asked[slot] && slot_answered[slot].load(std::memory_order_acquire) != this_round &&
            !task_state(round[slot]).exists) {
          asked[slot] = false;
        }
      }
    }
  }
  return outcome;
}

}  // namespace zpoline::detail
