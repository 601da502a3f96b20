// The patcher on live code: a site whose two bytes lie on two pages, exact protection restore,
// and bytes that changed under it. Scenarios install a hook (the trampoline must exist before a
// rewritten site runs), so each runs in its own process.
#include <doctest/doctest.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <span>
#include <thread>
#include <vector>

#include "platform/memory_map.hpp"
#include "rewriting/patcher.hpp"
#include "rewriting/site_registry.hpp"
#include "support.hpp"

using namespace zpoline::detail;

namespace {

constexpr std::size_t kPage = 4096;

// Two fresh pages of code: a function at `offset` that is `mov $39,%eax; syscall; ret`.
struct CodePages {
  std::uint8_t* base = nullptr;
  std::uint8_t* function = nullptr;
  std::uint8_t* site = nullptr;

  CodePages(std::size_t offset, int protection_first, int protection_second) {
    base = static_cast<std::uint8_t*>(
        mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(base != MAP_FAILED);
    std::memset(base, 0xcc, 2 * kPage);  // int3 everywhere else
    function = base + offset;
    const std::uint8_t code[] = {0xb8, 0x27, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xc3};
    std::memcpy(function, code, sizeof code);
    site = function + 5;
    REQUIRE(mprotect(base, kPage, protection_first) == 0);
    REQUIRE(mprotect(base + kPage, kPage, protection_second) == 0);
  }
  ~CodePages() { munmap(base, 2 * kPage); }

  long call() const { return reinterpret_cast<long (*)()>(function)(); }
};

int protection_at(const void* address) {
  const auto map = read_memory_map();
  const Mapping* mapping = find_mapping(map, reinterpret_cast<std::uintptr_t>(address));
  REQUIRE(mapping != nullptr);
  return mapping->protection;
}

PatchOutcome rewrite(std::uint8_t* site) {
  const auto address = reinterpret_cast<std::uintptr_t>(site);
  site_registry().add(address);
  const Patch patch{address, kSyscallBytes, kCallRaxBytes};
  return apply_patches(std::span(&patch, 1), read_memory_map());
}

}  // namespace

TEST_CASE("site_straddling_two_pages") {
  std::atomic<long> getpid_calls{0};
  auto session = zpoline_test::install_or_skip([&](zpoline::Syscall& call) {
    if (call.number() == SYS_getpid) ++getpid_calls;
    return call.forward();
  });
  // The syscall's 0f is the last byte of the first page, its 05 the first of the second.
  CodePages pages(kPage - 6, PROT_READ | PROT_EXEC, PROT_READ | PROT_EXEC);
  REQUIRE(pages.site == pages.base + kPage - 1);
  CHECK(pages.call() == getpid());  // before: a real syscall, not hooked
  const long hooked_before = getpid_calls.load();

  const PatchOutcome outcome = rewrite(pages.site);
  CHECK(outcome.written == 1);
  CHECK(pages.site[0] == 0xff);
  CHECK(pages.site[1] == 0xd0);
  CHECK(protection_at(pages.base) == (PROT_READ | PROT_EXEC));
  CHECK(protection_at(pages.base + kPage) == (PROT_READ | PROT_EXEC));

  CHECK(pages.call() == zpoline::raw_syscall(SYS_getpid));
  CHECK(getpid_calls.load() == hooked_before + 1);  // the rewritten site reached the hook
}

TEST_CASE("each_page_gets_its_own_protection_back") {
  auto session =
      zpoline_test::install_or_skip([](zpoline::Syscall& call) { return call.forward(); });
  // Different protections on the two pages: each must come back exactly.
  CodePages pages(kPage - 6, PROT_READ | PROT_EXEC, PROT_READ | PROT_WRITE | PROT_EXEC);
  CHECK(rewrite(pages.site).written == 1);
  CHECK(protection_at(pages.base) == (PROT_READ | PROT_EXEC));
  CHECK(protection_at(pages.base + kPage) == (PROT_READ | PROT_WRITE | PROT_EXEC));
  CHECK(pages.call() == zpoline::raw_syscall(SYS_getpid));
}

TEST_CASE("changed_bytes_are_left_alone") {
  auto session =
      zpoline_test::install_or_skip([](zpoline::Syscall& call) { return call.forward(); });
  CodePages pages(100, PROT_READ | PROT_WRITE | PROT_EXEC, PROT_READ | PROT_EXEC);
  pages.site[1] = 0x34;  // now sysenter: not the syscall the patch expects
  const PatchOutcome outcome = rewrite(pages.site);
  CHECK(outcome.written == 0);
  CHECK(outcome.mismatched == 1);
  CHECK(pages.site[0] == 0x0f);
  CHECK(pages.site[1] == 0x34);
}

TEST_CASE("consecutive_pages_are_made_writable_together") {
  // Nothing here runs the rewritten bytes, so no hook is needed.
  constexpr std::size_t kPages = 8;
  auto* base = static_cast<std::uint8_t*>(
      mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(base != MAP_FAILED);
  std::memset(base, 0xcc, kPages * kPage);
  const auto site_at = [&](std::size_t offset) {
    base[offset] = 0x0f;
    base[offset + 1] = 0x05;
    return Patch{reinterpret_cast<std::uintptr_t>(base + offset), kSyscallBytes, kCallRaxBytes};
  };
  // Pages 0, 1 and 2 (a site straddling 1 and 2), then 3: one run. Page 4 has none. Pages 5, 6
  // and 7 are another run, but page 7's protection differs (execute-only where the CPU can, else
  // the kernel still keeps it apart): two mappings, two mprotects.
  const std::vector<Patch> patches = {
      site_at(10),
      site_at(kPage + 7),
      site_at(2 * kPage - 1),
      site_at(3 * kPage),
      site_at(5 * kPage + 1),
      site_at(6 * kPage + 20),
      site_at(7 * kPage + 3),
  };
  REQUIRE(mprotect(base, 7 * kPage, PROT_READ | PROT_EXEC) == 0);
  REQUIRE(mprotect(base + 7 * kPage, kPage, PROT_EXEC) == 0);

  const PatchOutcome outcome = apply_patches(patches, read_memory_map());
  CHECK(outcome.written == patches.size());
  CHECK(outcome.mismatched == 0);
  CHECK(outcome.protection_changes == 3);  // pages 0-3; pages 5-6; page 7
  for (const Patch& patch : patches) {
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(patch.address);
    CHECK(bytes[0] == 0xff);
    CHECK(bytes[1] == 0xd0);
  }
  for (std::size_t page = 0; page < 7; ++page) {
    CAPTURE(page);
    CHECK(protection_at(base + page * kPage) == (PROT_READ | PROT_EXEC));
  }
  CHECK(protection_at(base + 7 * kPage) == PROT_EXEC);
  munmap(base, kPages * kPage);
}

TEST_CASE("pages_changed_since_the_map_was_read") {
  // A JIT toggles a page to RW (to write code) after the rewriter read the memory map. The
  // patcher must neither write into it nor put RX back: it reads the protections again when the
  // map may be stale (no generation given, or code changed since the one given).
  for (const bool with_generation : {false, true}) {
    CAPTURE(with_generation);
    auto* base = static_cast<std::uint8_t*>(
        mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(base != MAP_FAILED);
    const Patch patches[] = {
        {reinterpret_cast<std::uintptr_t>(base + 100), kSyscallBytes, kCallRaxBytes},
        {reinterpret_cast<std::uintptr_t>(base + kPage + 100), kSyscallBytes, kCallRaxBytes},
    };
    for (const Patch& patch : patches)
      std::memcpy(reinterpret_cast<void*>(patch.address), "\x0f\x05", 2);
    REQUIRE(mprotect(base, 2 * kPage, PROT_READ | PROT_EXEC) == 0);
    const std::uint64_t generation = code_change_generation();
    const auto stale = read_memory_map();
    REQUIRE(mprotect(base + kPage, kPage, PROT_READ | PROT_WRITE) == 0);
    note_code_change();  // what the library's forwarding of that mprotect does
    const PatchOutcome outcome =
        with_generation ? apply_patches(patches, stale, generation) : apply_patches(patches, stale);
    CHECK(outcome.written == 1);
    CHECK(outcome.gone == 1);
    CHECK(base[100] == 0xff);
    CHECK(base[kPage + 100] == 0x0f);
    CHECK(protection_at(base) == (PROT_READ | PROT_EXEC));
    CHECK(protection_at(base + kPage) == (PROT_READ | PROT_WRITE));
    munmap(base, 2 * kPage);
  }
}

// A site straddling a cache line is written a byte at a time through an invalid opcode (a locked
// write there is a split lock, fatal where the kernel has split_lock_detect=fatal). Threads run
// it all the while: each call returns the right value, through the kernel or the hook, never a
// mix of the two instructions; a thread that meets the invalid opcode has its call made.
TEST_CASE("site_straddling_a_cache_line_changes_while_it_runs") {
  std::atomic<long> hooked{0};
  auto session = zpoline_test::install_or_skip([&](zpoline::Syscall& call) {
    if (call.number() == SYS_getpid) ++hooked;
    return call.forward();
  });
  auto* page = static_cast<std::uint8_t*>(
      mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(page != MAP_FAILED);
  std::memset(page, 0xcc, kPage);
  // mov $39, %eax; syscall (at 63, across the line); ret
  const std::uint8_t code[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3};
  std::memcpy(page + 58, code, sizeof code);
  REQUIRE(mprotect(page, kPage, PROT_READ | PROT_EXEC) == 0);
  const auto site = reinterpret_cast<std::uintptr_t>(page + 63);
  REQUIRE(site % 64 == 63);
  REQUIRE(site_registry().add(site));
  auto* function = reinterpret_cast<long (*)()>(page + 58);
  const long pid = zpoline::raw_syscall(SYS_getpid);
  std::atomic<bool> stop{false};
  std::atomic<long> calls{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        if (function() != pid) ++wrong;
        ++calls;
      }
    });
  }
  constexpr int kChanges = 300;
  int written = 0;
  for (int i = 0; i < kChanges; ++i) {
    const Patch rewrite{site, kSyscallBytes, kCallRaxBytes};
    const Patch restore{site, kCallRaxBytes, kSyscallBytes};
    written += static_cast<int>(apply_patches(std::span(&rewrite, 1), read_memory_map()).written);
    written += static_cast<int>(apply_patches(std::span(&restore, 1), read_memory_map()).written);
  }
  stop = true;
  for (auto& thread : threads) thread.join();
  CAPTURE(calls.load());
  CAPTURE(hooked.load());
  CHECK(written == 2 * kChanges);
  CHECK(wrong.load() == 0);
  CHECK(hooked.load() > 0);  // the rewritten periods reached the hook
  CHECK(page[63] == 0x0f);
  CHECK(page[64] == 0x05);
  munmap(page, kPage);
}
