// CodeSpans: the lock-free summary of where rewritten sites are, which munmap consults before it
// takes the rewriter's lock. It may answer "maybe" for memory without sites, never "no" for
// memory with one.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <thread>

#include "rewriting/code_spans.hpp"

using zpoline::detail::CodeSpans;

namespace {

constexpr std::uintptr_t kMiB = 1024 * 1024;

// narrow()'s question answered from a set of sites (each 2 bytes long), as the rewriter does.
struct Sites {
  std::map<std::uintptr_t, int> at;
  void narrow(CodeSpans& spans, std::uintptr_t begin, std::uintptr_t end) {
    at.erase(at.lower_bound(begin > 1 ? begin - 1 : 0), at.lower_bound(end));
    spans.narrow(begin, end,
                 [this](std::uintptr_t span_begin, std::uintptr_t span_end, std::uintptr_t* first,
                        std::uintptr_t* last) {
                   const auto inside = at.lower_bound(span_begin);
                   const auto past = at.lower_bound(span_end);
                   if (inside == past) return false;
                   *first = inside->first;
                   *last = std::prev(past)->first + 2;
                   return true;
                 });
  }
};

}  // namespace

TEST_CASE("empty_spans_hold_nothing") {
  static CodeSpans spans;
  CHECK_FALSE(spans.may_hold_sites(0, UINTPTR_MAX));
  CHECK(spans.spans() == 0);
}

TEST_CASE("a_span_covers_what_was_added_and_nothing_far_away") {
  static CodeSpans spans;
  spans.add(0x7f0000001000, 0x7f0000003002);
  CHECK(spans.may_hold_sites(0x7f0000001000, 0x7f0000001001));
  CHECK(spans.may_hold_sites(0x7f0000003001, 0x7f0000004000));
  CHECK(spans.may_hold_sites(0x7e0000000000, 0x7fffffff0000));  // contains it
  CHECK_FALSE(spans.may_hold_sites(0x7f0000003002, 0x7f0000004000));
  CHECK_FALSE(spans.may_hold_sites(0x7f0000000000, 0x7f0000001000));
  CHECK_FALSE(spans.may_hold_sites(0x7f1000000000, 0x7f1000100000));
}

TEST_CASE("close_ranges_join_far_ones_take_their_own_span") {
  static CodeSpans spans;
  spans.add(0x10000000, 0x10001000);
  spans.add(0x10002000, 0x10003000);  // 4 KiB away: joined
  CHECK(spans.spans() == 1);
  CHECK(spans.may_hold_sites(0x10001800, 0x10001900));  // the gap is covered now
  spans.add(0x20000000, 0x20001000);                    // 256 MiB away
  CHECK(spans.spans() == 2);
  CHECK_FALSE(spans.may_hold_sites(0x10004000, 0x1fffffff));
}

TEST_CASE("forgetting_sites_narrows_and_empties_spans") {
  static CodeSpans spans;
  Sites sites;
  for (std::uintptr_t site : {0x40000100, 0x40000800, 0x40001000, 0x40003000}) {
    sites.at[site] = 0;
  }
  spans.add(0x40000100, 0x40003002);
  sites.narrow(spans, 0x40000000, 0x40000900);  // the first two sites go
  CHECK(spans.spans() == 1);
  CHECK_FALSE(spans.may_hold_sites(0x40000000, 0x40001000));
  CHECK(spans.may_hold_sites(0x40001000, 0x40001001));
  CHECK(spans.may_hold_sites(0x40003001, 0x40003002));
  // A site straddling the start of the unmapped range goes too.
  sites.narrow(spans, 0x40003001, 0x40004000);
  CHECK_FALSE(spans.may_hold_sites(0x40002000, 0x40004000));
  sites.narrow(spans, 0x40000000, 0x40010000);
  CHECK(spans.spans() == 0);
  CHECK_FALSE(spans.may_hold_sites(0, UINTPTR_MAX));
  // The emptied slot is taken again.
  spans.add(0x50000000, 0x50000002);
  CHECK(spans.spans() == 1);
  CHECK(spans.may_hold_sites(0x50000001, 0x50000002));
}

TEST_CASE("clear_forgets_every_span") {
  static CodeSpans spans;
  spans.add(0x1000000, 0x1000002);
  spans.add(0x9000000, 0x9000002);
  spans.clear();
  CHECK(spans.spans() == 0);
  CHECK_FALSE(spans.may_hold_sites(0, UINTPTR_MAX));
}

TEST_CASE("when_every_slot_is_taken_the_nearest_span_widens") {
  static CodeSpans spans;
  const std::size_t count = CodeSpans::kCapacity + 100;
  for (std::size_t i = 0; i < count; ++i) {
    spans.add(0x100000000 + i * 16 * kMiB, 0x100000000 + i * 16 * kMiB + 2);
  }
  CHECK(spans.spans() <= CodeSpans::kCapacity);
  for (std::size_t i = 0; i < count; ++i) {
    const std::uintptr_t site = 0x100000000 + i * 16 * kMiB;
    CHECK(spans.may_hold_sites(site, site + 1));
  }
}

// A reader never misses a span that stays, while a writer adds, narrows and empties others and
// takes their slots again.
TEST_CASE("readers_see_a_span_that_stays_while_others_change") {
  static CodeSpans spans;
  Sites sites;
  const std::uintptr_t kept = 0x300000000;
  sites.at[kept] = 0;
  spans.add(kept, kept + 2);
  std::atomic<bool> stop{false};
  std::atomic<long> misses{0};
  std::atomic<long> reads{0};
  std::thread reader([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      if (!spans.may_hold_sites(kept + 1, kept + 2)) misses.fetch_add(1);
      reads.fetch_add(1, std::memory_order_relaxed);
    }
  });
  for (int round = 0; round < 20000; ++round) {
    const std::uintptr_t base = 0x100000000 + static_cast<std::uintptr_t>(round % 64) * 16 * kMiB;
    sites.at[base] = 0;
    sites.at[base + 4096] = 0;
    spans.add(base, base + 4098);
    sites.narrow(spans, base, base + 1);
    sites.narrow(spans, base, base + 8192);
  }
  while (reads.load() < 1000) {
  }
  stop.store(true);
  reader.join();
  CHECK(misses.load() == 0);
  CHECK(spans.may_hold_sites(kept, kept + 1));
}
