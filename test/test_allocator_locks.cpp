// System calls that an application's memory allocator makes while it holds its own lock. jemalloc
// maps memory with its extent-growth mutex held, glibc trims and deletes heaps under its arena
// lock, tcmalloc's system allocator maps and unmaps under its page-heap lock: what libzpoline does
// for such a call (munmap and mmap with MAP_FIXED: the sites of unmapped code are forgotten) must
// neither allocate nor wait for a lock that is held by a thread waiting for the allocator.
//
// This executable's malloc, calloc, realloc and free are glibc's behind one lock that a test can
// hold while it makes system calls, as those allocators do. Each TEST_CASE installs and runs in
// its own process. A deadlock ends the process after 10 s with a message (a watchdog alarm).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <thread>

#include "support.hpp"
#include "zpoline/zpoline.hpp"

#ifndef ZPOLINE_LATE_LIBRARY
#error "ZPOLINE_LATE_LIBRARY must name a shared object (test/late)"
#endif

extern "C" void* __libc_malloc(std::size_t size);
extern "C" void* __libc_calloc(std::size_t count, std::size_t size);
extern "C" void* __libc_realloc(void* pointer, std::size_t size);
extern "C" void __libc_free(void* pointer);

namespace {

pthread_mutex_t allocator_lock = PTHREAD_MUTEX_INITIALIZER;
// Whether this thread holds allocator_lock through hold_allocator_lock().
thread_local bool holding_allocator_lock = false;
// Set on the thread that must block in the allocator (a stand-in for any thread that allocates
// while libzpoline's rewriting holds its lock).
thread_local bool report_blocking = false;
std::atomic<int> allocations_under_held_lock{0};
std::atomic<bool> blocked_in_allocator{false};

// An allocation by the thread that holds the lock in the middle of a system call would deadlock
// in a real allocator (its lock is not recursive): it is counted, and not made to wait.
struct AllocatorLock {
  bool taken = false;
  AllocatorLock() {
    if (holding_allocator_lock) {
      allocations_under_held_lock.fetch_add(1);
      return;
    }
    if (pthread_mutex_trylock(&allocator_lock) != 0) {
      if (report_blocking) blocked_in_allocator.store(true);
      pthread_mutex_lock(&allocator_lock);
    }
    taken = true;
  }
  ~AllocatorLock() {
    if (taken) pthread_mutex_unlock(&allocator_lock);
  }
};

}  // namespace

extern "C" void* malloc(std::size_t size) {
  AllocatorLock lock;
  return __libc_malloc(size);
}
extern "C" void* calloc(std::size_t count, std::size_t size) {
  AllocatorLock lock;
  return __libc_calloc(count, size);
}
extern "C" void* realloc(void* pointer, std::size_t size) {
  AllocatorLock lock;
  return __libc_realloc(pointer, size);
}
extern "C" void free(void* pointer) {
  AllocatorLock lock;
  __libc_free(pointer);
}

namespace {

using zpoline_test::install_or_skip;

std::atomic<long> hooked_calls{0};

// Allocation-free, as a hook must be for calls an allocator makes with its lock held.
long counting_hook(zpoline::Syscall& call) {
  hooked_calls.fetch_add(1, std::memory_order_relaxed);
  return call.forward();
}

const char* watchdog_message = "";
void on_watchdog(int) {
  static_cast<void>(write(STDERR_FILENO, watchdog_message, std::strlen(watchdog_message)));
  _exit(1);
}
// Ends the process with `message` unless disarmed within 10 s.
void arm_watchdog(const char* message) {
  watchdog_message = message;
  signal(SIGALRM, on_watchdog);
  alarm(10);
}
void disarm_watchdog() {
  alarm(0);
}

// Takes the allocator's lock, as an allocator does around its own system calls.
void hold_allocator_lock() {
  pthread_mutex_lock(&allocator_lock);
  holding_allocator_lock = true;
}
void release_allocator_lock() {
  holding_allocator_lock = false;
  pthread_mutex_unlock(&allocator_lock);
}

void* map_pages(std::size_t pages) {
  void* memory =
      mmap(nullptr, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(memory != MAP_FAILED);
  return memory;
}

// munmap and mmap(MAP_FIXED) of memory that never held code, made with the allocator's lock held:
// what the library does for them allocates nothing (it could only wait for that lock).
void unmap_and_remap_under_the_lock(zpoline::Mode mode) {
  zpoline::Options options;
  options.mode = mode;
  auto session = install_or_skip(counting_hook, options);
  void* first = map_pages(4);
  void* second = map_pages(4);
  const long before = hooked_calls.load();
  arm_watchdog("FAIL: munmap or mmap(MAP_FIXED) with the allocator's lock held did not return\n");
  hold_allocator_lock();
  const int unmapped = munmap(first, 4 * 4096);
  void* replaced = mmap(second, 4 * 4096, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  release_allocator_lock();
  disarm_watchdog();
  CHECK(unmapped == 0);
  CHECK(replaced == second);
  CHECK(hooked_calls.load() - before >= 2);  // both reached the hook
  CHECK_MESSAGE(allocations_under_held_lock.load() == 0,
                "libzpoline allocated inside munmap/mmap(MAP_FIXED) made under the allocator's "
                "lock (a real allocator would deadlock there)");
  munmap(second, 4 * 4096);
}

}  // namespace

TEST_CASE("munmap_under_the_allocators_lock_allocates_nothing_eager") {
  unmap_and_remap_under_the_lock(zpoline::Mode::eager);
}

TEST_CASE("munmap_under_the_allocators_lock_allocates_nothing_lazy") {
  unmap_and_remap_under_the_lock(zpoline::Mode::lazy);
}

// A thread maps new code: libzpoline rewrites it at once and, holding its rewriting lock,
// allocates, and waits for the allocator's lock, held by this thread. This thread unmaps memory
// that never held code (as jemalloc, glibc and tcmalloc do with their lock held): the library
// must not wait for its rewriting lock there, or neither thread ever goes on.
TEST_CASE("munmap_under_the_allocators_lock_while_another_thread_rewrites") {
  auto session = install_or_skip(counting_hook);
  const int fd = open(ZPOLINE_LATE_LIBRARY, O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  void* scratch = map_pages(4);
  std::atomic<bool> go{false};
  std::atomic<bool> mapped{false};
  void* code = MAP_FAILED;
  std::thread mapper([&] {
    report_blocking = true;
    while (!go.load()) {
    }
    code = mmap(nullptr, 4 * 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
    mapped.store(true);
  });
  arm_watchdog(
      "FAIL: deadlock: this thread holds the allocator's lock in munmap, which waits for the "
      "rewriting lock; the thread rewriting its new code holds that and waits for the allocator\n");
  hold_allocator_lock();
  go.store(true);
  // The mapper's mmap has returned into the rewriting of its code, which allocates.
  while (!blocked_in_allocator.load() && !mapped.load()) {
  }
  const bool mapper_was_blocked = blocked_in_allocator.load();
  const int unmapped = munmap(scratch, 4 * 4096);
  release_allocator_lock();
  mapper.join();
  disarm_watchdog();
  CHECK_MESSAGE(mapper_was_blocked, "rewriting the new code allocated nothing: no contention made");
  CHECK(unmapped == 0);
  CHECK(code != MAP_FAILED);
  CHECK(allocations_under_held_lock.load() == 0);
  if (code != MAP_FAILED) munmap(code, 4 * 4096);
  close(fd);
}
