// install() when operator new fails while map_trampoline() holds page 0: the relay's placement
// order (relay_placements_to_try) is a std::vector of 176 placements, 704 bytes, allocated after
// page 0 has been reserved. The bad_alloc leaves page 0 mapped, and every later install() of the
// process fails with page_zero_in_use. Exit 0: page 0 given back and the second install works.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <new>

#include "zpoline/zpoline.hpp"

namespace {
bool fail_placement_vector = false;
}

void* operator new(std::size_t size) {
  if (fail_placement_vector && size == 704) {
    fail_placement_vector = false;
    throw std::bad_alloc();
  }
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

int main() {
  auto hook = [](zpoline::Syscall& call) { return call.forward(); };
  fail_placement_vector = true;
  try {
    auto session = zpoline::install(hook);
    std::puts("first install succeeded (no 704-byte allocation failed)");
  } catch (const std::bad_alloc&) {
    std::puts("first install: std::bad_alloc");
  } catch (const zpoline::Error& error) {
    if (error.code() == zpoline::ErrorCode::page_zero_refused) return 77;
    std::printf("first install: %s\n", error.what());
  }
  void* probe =
      mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  const bool page_zero_free = probe != MAP_FAILED;
  std::printf("page 0 after the failed install: %s\n", page_zero_free ? "free" : "still mapped");
  if (page_zero_free) munmap(probe, 4096);
  try {
    auto session = zpoline::install(hook);
    std::puts("second install succeeded");
    return page_zero_free ? 0 : 1;
  } catch (const std::exception& error) {
    std::printf("second install: %s\n", error.what());
    return 1;
  }
}
