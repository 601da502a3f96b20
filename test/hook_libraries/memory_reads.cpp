// A hook library that answers chdir(path) itself, with what libzpoline-hook's fault-safe reads
// find at path: its length, or -EFAULT when it is unreadable (-EIO if the two reads disagree).
// Before each read it fills the stack below its frame with 0xff bytes, the leftovers an earlier
// call may leave: the reads once passed libc's syscall() an int where it reads a long, and the
// upper half of that argument came from the stack (clang's release build failed every read here).
#include <sys/syscall.h>

#include <cerrno>
#include <string>

#include "zpoline/hook_library.hpp"
#include "zpoline/memory.hpp"

namespace {

// Larger than read_string's page buffer plus the frames below it. volatile: the stores are the
// point, and they would otherwise be dead.
[[gnu::noinline]] void fill_stack_below() {
  volatile unsigned char bytes[16384];
  for (auto& byte : bytes) byte = 0xff;
}

long read_path(const void* address) {
  fill_stack_below();
  const auto text = zpoline::read_string(address);
  if (!text) return -EFAULT;
  fill_stack_below();
  std::string bytes(text->size(), '\0');
  if (!zpoline::read_memory(bytes.data(), address, bytes.size()) || bytes != *text) return -EIO;
  return static_cast<long>(text->size());
}

}  // namespace

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  if (call.number() != SYS_chdir) return call.forward();
  return read_path(reinterpret_cast<const void*>(call.arg(0)));
}
