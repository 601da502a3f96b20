#include "dispatch/thread_records.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "dispatch/frame.hpp"
#include "platform/sanitizers.hpp"

namespace zpoline::detail {

std::atomic<ThreadRecordChunk*> thread_record_chunks{nullptr};

namespace {

long raw(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
         long a5 = 0) {
  return zpoline_detail_raw_syscall(number, a0, a1, a2, a3, a4, a5);
}

bool try_claim(ThreadRecord& record, pid_t expected, pid_t tid, std::uint32_t* attention) {
  if (!record.owner.compare_exchange_strong(expected, tid, std::memory_order_acq_rel)) {
    return false;
  }
  __atomic_store_n(&record.in_hook, 0, __ATOMIC_RELEASE);
  __atomic_store_n(&record.attention, attention, __ATOMIC_RELEASE);
  return true;
}

[[noreturn]] void out_of_memory() {
  static const char message[] =
      "zpoline: fatal: no memory for a thread's record (mmap of one page failed). Aborting.\n";
  raw(SYS_write, STDERR_FILENO, reinterpret_cast<long>(message), sizeof message - 1);
  raw(SYS_kill, raw(SYS_getpid), SIGABRT);
  raw(SYS_exit_group, 127);
  __builtin_unreachable();
}

}  // namespace

bool thread_exists(pid_t tid) noexcept {
  // Not cached: a fork child has another pid.
  return raw(SYS_tgkill, raw(SYS_getpid), tid, 0) != -ESRCH;
}

ThreadRecord* claim_thread_record(pid_t tid, std::uint32_t* attention) noexcept {
  // Free records first: the existence checks below cost a system call each.
  ThreadRecord* found = nullptr;
  for_each_thread_record([&](ThreadRecord& record) {
    if (found == nullptr && record.owner.load(std::memory_order_relaxed) == 0 &&
        try_claim(record, 0, tid, attention)) {
      found = &record;
    }
  });
  if (found != nullptr) return found;
  for_each_thread_record([&](ThreadRecord& record) {
    if (found != nullptr) return;
    const pid_t owner = record.owner.load(std::memory_order_relaxed);
    if (owner != 0 && !thread_exists(owner) && try_claim(record, owner, tid, attention))
      found = &record;
  });
  if (found != nullptr) return found;

  const long mapped = raw(SYS_mmap, 0, sizeof(ThreadRecordChunk), PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped < 0 && mapped > -4096) out_of_memory();
  forget_stale_poison(reinterpret_cast<void*>(mapped), sizeof(ThreadRecordChunk));  // new pages
  auto* chunk = reinterpret_cast<ThreadRecordChunk*>(mapped);  // zero-filled: all records free
  chunk->records[0].owner.store(tid, std::memory_order_relaxed);
  chunk->records[0].attention = attention;
  ThreadRecordChunk* head = thread_record_chunks.load(std::memory_order_relaxed);
  do {
    chunk->next = head;
  } while (!thread_record_chunks.compare_exchange_weak(head, chunk, std::memory_order_release,
                                                       std::memory_order_relaxed));
  return &chunk->records[0];
}

bool request_attention(pid_t tid, std::uint32_t bits) noexcept {
  bool found = false;
  for_each_thread_record([&](ThreadRecord& record) {
    if (found || record.owner.load(std::memory_order_acquire) != tid) return;
    if (std::uint32_t* attention = __atomic_load_n(&record.attention, __ATOMIC_ACQUIRE)) {
      __atomic_fetch_or(attention, bits, __ATOMIC_RELEASE);
      found = true;
    }
  });
  return found;
}

void reset_thread_records_after_fork(ThreadRecord* survivor, pid_t tid) noexcept {
  for_each_thread_record([&](ThreadRecord& record) {
    if (&record == survivor) {
      record.owner.store(tid, std::memory_order_relaxed);
    } else {
      record.owner.store(0, std::memory_order_relaxed);
      __atomic_store_n(&record.in_hook, 0, __ATOMIC_RELAXED);
    }
  });
}

}  // namespace zpoline::detail
