// Where the rewritten sites are, coarsely: address spans that together cover every rewritten
// site, so that an munmap (or an mmap with MAP_FIXED) of memory that holds none can be told
// without the rewriter's lock. Memory allocators make those calls while they hold their own lock
// (jemalloc's extent growth, glibc's heap trimming, tcmalloc's system allocator): the answer must
// come without a lock, an allocation or a system call, or a thread that waits for the allocator
// while it holds the rewriter's lock deadlocks with them.
//
// Contract: add(), narrow() and clear() are called by one writer at a time (the rewriter's lock);
// may_hold_sites() runs on any thread at any time, signal handlers included, and never blocks.
// A span is widened before the sites it covers are rewritten and narrowed only after they are
// forgotten, and every state a reader can see while a span changes covers what the span covered
// before and after the change: a reader never misses a site that was rewritten before it started.
// It may answer true for memory that holds no site (a span wider than its sites, or one widened
// because all slots are taken); the caller then takes the lock, as it would without the spans.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace zpoline::detail {

class CodeSpans {
 public:
  static constexpr std::size_t kCapacity = 512;
  // A span is widened to cover a range this close to it rather than take a slot of its own.
  static constexpr std::uintptr_t kJoinDistance = 64 * 1024;

  // From now on [begin, end) is covered.
  void add(std::uintptr_t begin, std::uintptr_t end) noexcept;

  // For each span that overlaps [begin, end): `remaining(span_begin, span_end, &first, &last)`
  // says where the sites still inside the span are (the first site's address and the last one's
  // end), or returns false if none is; the span shrinks to that, or is emptied.
  template <class Remaining>
  void narrow(std::uintptr_t begin, std::uintptr_t end, Remaining remaining) noexcept;

  // No site is rewritten any more.
  void clear() noexcept;

  bool may_hold_sites(std::uintptr_t begin, std::uintptr_t end) const noexcept;

  // Spans in use (for tests).
  std::size_t spans() const noexcept;

 private:
  // Empty while end <= begin; a free slot is {0, 0}.
  struct Span {
    std::atomic<std::uintptr_t> begin{0};
    std::atomic<std::uintptr_t> end{0};
  };
  void set(Span& span, std::uintptr_t begin, std::uintptr_t end) noexcept;
  void empty(Span& span) noexcept;

  Span spans_[kCapacity];
  std::atomic<std::size_t> used_{0};  // slots [0, used_) have been handed out; never decreases
};

template <class Remaining>
void CodeSpans::narrow(std::uintptr_t begin, std::uintptr_t end, Remaining remaining) noexcept {
  const std::size_t used = used_.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < used; ++i) {
    Span& span = spans_[i];
    const std::uintptr_t span_begin = span.begin.load(std::memory_order_relaxed);
    const std::uintptr_t span_end = span.end.load(std::memory_order_relaxed);
    if (span_begin >= span_end || span_end <= begin || end <= span_begin) continue;
    std::uintptr_t first = 0, last = 0;
    if (remaining(span_begin, span_end, &first, &last)) {
      set(span, first, last);  // within the span: each store keeps what is left covered
    } else {
      empty(span);
    }
  }
}

}  // namespace zpoline::detail
