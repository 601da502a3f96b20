// The matrix suite's hook library (zpoline/hook_library.hpp). It counts every call it sees into
// the cell's shared Counts (ZPOLINE_HOOK_MATRIX_COUNTS, an address in hexadecimal). With
// ZPOLINE_HOOK_MATRIX_BUSY=1 it also does what real hook libraries do around each call: formats
// a line with the call's name (allocating in its own libc), asks for its own pid and writes the
// line to /dev/null, before and after forwarding.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "counts.hpp"
#include "zpoline/hook_library.hpp"

namespace {
matrix::Counts* counts = nullptr;
bool busy = false;
int log_fd = -1;

void busy_work(const zpoline::Syscall& call, const char* when) {
  std::string line = std::string(when) + ' ' + std::string(call.name()) + '\n';
  if (getpid() <= 0) line += "no pid\n";
  [[maybe_unused]] const ssize_t written = write(log_fd, line.data(), line.size());
  counts->busy_work.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

extern "C" const char* zpoline_hook_init() noexcept {
  const char* address = std::getenv("ZPOLINE_HOOK_MATRIX_COUNTS");
  if (address == nullptr) return "ZPOLINE_HOOK_MATRIX_COUNTS is not set";
  counts = reinterpret_cast<matrix::Counts*>(std::strtoull(address, nullptr, 16));
  const char* mode = std::getenv("ZPOLINE_HOOK_MATRIX_BUSY");
  busy = mode != nullptr && mode[0] == '1';
  log_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  return log_fd >= 0 ? nullptr : "cannot open /dev/null";
}

extern "C" long zpoline_hook(zpoline::Syscall& call) {
  const long number = call.number();
  if (number >= 0 && number < matrix::kNumbers) {
    counts->calls[number].fetch_add(1, std::memory_order_relaxed);
  }
  // Its own libc and allocator: nothing of the application's is locked for it.
  if (busy) busy_work(call, "enter");
  const long result = call.forward();
  if (busy && number != 60 && number != 231) busy_work(call, "leave");
  return result;
}
