#include "rewriting/code_spans.hpp"

#include <algorithm>

namespace zpoline::detail {

namespace {

// How far [begin, end) lies from the span [span_begin, span_end): 0 if they overlap or touch.
std::uintptr_t distance(std::uintptr_t span_begin, std::uintptr_t span_end, std::uintptr_t begin,
                        std::uintptr_t end) {
  if (end < span_begin) return span_begin - end;
  if (span_end < begin) return begin - span_end;
  return 0;
}

}  // namespace

// Stores in either order are safe for readers: when a span is widened, both intermediate states
// cover the old span; when it is narrowed, both cover the new one; a free slot ({0, 0}) being
// taken reads as empty or as [0, end), which covers the new span.
void CodeSpans::set(Span& span, std::uintptr_t begin, std::uintptr_t end) noexcept {
  span.begin.store(begin, std::memory_order_release);
  span.end.store(end, std::memory_order_release);
}

// The end first: the span reads as empty from then on.
void CodeSpans::empty(Span& span) noexcept {
  span.end.store(0, std::memory_order_release);
  span.begin.store(0, std::memory_order_release);
}

void CodeSpans::add(std::uintptr_t begin, std::uintptr_t end) noexcept {
  if (begin >= end) return;
  const std::size_t used = used_.load(std::memory_order_relaxed);
  Span* free_slot = nullptr;
  Span* nearest = nullptr;
  std::uintptr_t nearest_distance = UINTPTR_MAX;
  for (std::size_t i = 0; i < used; ++i) {
    Span& span = spans_[i];
    const std::uintptr_t span_begin = span.begin.load(std::memory_order_relaxed);
    const std::uintptr_t span_end = span.end.load(std::memory_order_relaxed);
    if (span_begin >= span_end) {
      if (free_slot == nullptr) free_slot = &span;
      continue;
    }
    const std::uintptr_t d = distance(span_begin, span_end, begin, end);
    if (d < nearest_distance) {
      nearest_distance = d;
      nearest = &span;
    }
  }
  if (nearest != nullptr && nearest_distance <= kJoinDistance) {
    free_slot = nullptr;
  } else if (free_slot == nullptr && used < kCapacity) {
    free_slot = &spans_[used];
    set(*free_slot, begin, end);
    used_.store(used + 1, std::memory_order_release);
    return;
  }
  if (free_slot != nullptr) {
    set(*free_slot, begin, end);
    return;
  }
  // Joined with the nearest span (close enough, or every slot is taken): widened.
  set(*nearest, std::min(begin, nearest->begin.load(std::memory_order_relaxed)),
      std::max(end, nearest->end.load(std::memory_order_relaxed)));
}

void CodeSpans::clear() noexcept {
  const std::size_t used = used_.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < used; ++i) empty(spans_[i]);
}

bool CodeSpans::may_hold_sites(std::uintptr_t begin, std::uintptr_t end) const noexcept {
  const std::size_t used = used_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < used; ++i) {
    const std::uintptr_t span_begin = spans_[i].begin.load(std::memory_order_acquire);
    const std::uintptr_t span_end = spans_[i].end.load(std::memory_order_acquire);
    if (span_begin < span_end && span_begin < end && begin < span_end) return true;
  }
  return false;
}

std::size_t CodeSpans::spans() const noexcept {
  const std::size_t used = used_.load(std::memory_order_acquire);
  std::size_t count = 0;
  for (std::size_t i = 0; i < used; ++i) {
    count += spans_[i].begin.load(std::memory_order_acquire) <
             spans_[i].end.load(std::memory_order_acquire);
  }
  return count;
}

}  // namespace zpoline::detail
