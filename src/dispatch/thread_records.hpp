// One record per thread that has made a hooked call: its "inside the hook" flag (read by
// retract_hook() to know whether the hook object may be destroyed) and its call counters (the
// coverage report).
//
// A thread's first hooked call can come from anywhere, from inside malloc with the arena lock held
// among others, so claiming a record takes no lock and allocates nothing from the heap: records
// live in 4 KiB chunks mapped with raw mmap, linked in a list that only grows, and a record is
// claimed with a compare-and-exchange on its owner's thread id. A record whose owner no longer
// exists (threads can end without notice, e.g. by a raw exit) is claimed again by a new thread.
//
// Contract: every function may run on any thread at any time, inside signal handlers too, with
// no lock held; reset_after_fork() only in a fork child before it starts other threads.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>

namespace zpoline::detail {

struct alignas(64) ThreadRecord {
  std::uint32_t in_hook;     // written by the owner only; the stub's fast path writes it (offset 0)
  std::atomic<pid_t> owner;  // thread id, 0 for a free record
  // Calls that reached the hook on the threads that owned this record, through a rewritten site
  // (counted by the stub's fast path at offset 8) and through the SUD safety net.
  std::uint64_t calls_through_sites;
  std::uint64_t calls_through_net;
  // The owner's ThreadState::attention, for request_attention().
  std::uint32_t* attention;
};
static_assert(sizeof(ThreadRecord) == 64);

// A record for thread `tid`, with in_hook clear: a free one, else one whose owner has exited,
// else one in a new chunk. Never null: if no chunk can be mapped the process is out of memory
// and aborts with a message.
ThreadRecord* claim_thread_record(pid_t tid, std::uint32_t* attention) noexcept;

// Sets `bits` in the ThreadState::attention of thread `tid`, if it has a record; false if not.
bool request_attention(pid_t tid, std::uint32_t bits) noexcept;

// Calls `visit(record)` for every record ever made (free ones too).
template <class Visit>
void for_each_thread_record(Visit&& visit);

// In a fork child: the records of the parent's threads are free again (none of them exists in
// the child), except `survivor`, the forking thread's, which now belongs to `tid`.
void reset_thread_records_after_fork(ThreadRecord* survivor, pid_t tid) noexcept;

// Whether thread `tid` of this process still exists.
bool thread_exists(pid_t tid) noexcept;

// Implementation detail of for_each_thread_record: the chunks.
struct ThreadRecordChunk {
  static constexpr std::size_t kRecords = 63;  // with the header: one page
  alignas(64) ThreadRecordChunk* next;
  ThreadRecord records[kRecords];
};
static_assert(sizeof(ThreadRecordChunk) == 4096);
extern std::atomic<ThreadRecordChunk*> thread_record_chunks;

template <class Visit>
void for_each_thread_record(Visit&& visit) {
  for (ThreadRecordChunk* chunk = thread_record_chunks.load(std::memory_order_acquire);
       chunk != nullptr; chunk = chunk->next) {
    for (ThreadRecord& record : chunk->records) visit(record);
  }
}

}  // namespace zpoline::detail
