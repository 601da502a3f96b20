// A hook library that allocates on every call, with whatever malloc its link-map namespace has
// (test_allocators.cpp): a string, a vector, and a map of calls per name behind a mutex.
//
// getcwd(NULL, kQueryCalls) answers with the number of calls it has seen, and
// getcwd(NULL, kQueryMalloc) with 1 if the malloc this library allocates with is the C library's
// (its namespace's private libc), 0 if it is another (an allocator the application preloaded).
#include <dlfcn.h>
#include <sys/syscall.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "zpoline/hook_library.hpp"

namespace {

constexpr long kQueryCalls = 0x7a706f6c;  // "zpol"
constexpr long kQueryMalloc = kQueryCalls + 1;

std::mutex lock;
std::map<std::string, unsigned long>* calls = nullptr;
unsigned long total = 0;

bool malloc_is_libc() {
  Dl_info info{};
  void* (*function)(std::size_t) = &std::malloc;
  return dladdr(reinterpret_cast<void*>(function), &info) != 0 && info.dli_fname != nullptr &&
         std::strstr(info.dli_fname, "/libc.so") != nullptr;
}

}  // namespace

extern "C" const char* zpoline_hook_init() noexcept {
  calls = new std::map<std::string, unsigned long>;
  return nullptr;
}

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  if (call.number() == SYS_getcwd && call.arg(0) == 0) {
    if (call.arg(1) == kQueryCalls) {
      std::lock_guard guard(lock);
      return static_cast<long>(total);
    }
    if (call.arg(1) == kQueryMalloc) return malloc_is_libc() ? 1 : 0;
  }
  std::string name(call.name());
  name += "/" + std::to_string(call.arg(0));  // past the short-string buffer: allocated
  std::vector<char> scratch(64 + static_cast<std::size_t>(call.number() & 1023));
  {
    std::lock_guard guard(lock);
    ++(*calls)[name.substr(0, name.find('/'))];
    ++total;
  }
  return call.forward();
}
