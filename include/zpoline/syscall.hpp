// zpoline/syscall.hpp: the view of one intercepted system call that a hook receives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace zpoline {
namespace detail {
struct SyscallFrame;
}

inline namespace v0 {

class Syscall;

// Typed descriptions of the system calls that have typed accessors. Each type names its number
// and its kernel name, and nests a `View` with named, typed accessors and setters for its
// arguments. `Syscall::as<sys::openat>()` returns a View only when the call is that system call.
namespace sys {

#define ZPOLINE_ARG(index, type, getter, setter) \
  type getter() const {                          \
    return (type)(call_->arg(index));            \
  }                                              \
  void setter(type value) {                      \
    call_->set_arg(index, (long)(value));        \
  }

// Declared here, defined after Syscall: each View holds a reference to the call it describes.
struct read {
  static constexpr long number = 0;
  static constexpr std::string_view name = "read";
  class View;
};
struct write {
  static constexpr long number = 1;
  static constexpr std::string_view name = "write";
  class View;
};
struct close {
  static constexpr long number = 3;
  static constexpr std::string_view name = "close";
  class View;
};
struct mmap {
  static constexpr long number = 9;
  static constexpr std::string_view name = "mmap";
  class View;
};
struct getpid {
  static constexpr long number = 39;
  static constexpr std::string_view name = "getpid";
  class View;
};
struct openat {
  static constexpr long number = 257;
  static constexpr std::string_view name = "openat";
  class View;
};

}  // namespace sys

// One system call in flight. A hook receives it by reference; it is valid only during the hook
// call. Argument changes made with set_arg() are what forward() passes to the kernel and what
// the application sees in its argument registers afterwards (as the kernel leaves them intact).
class Syscall {
 public:
  explicit Syscall(detail::SyscallFrame& frame) noexcept : frame_(&frame) {}

  // The system call number (rax at the syscall instruction).
  long number() const noexcept;
  // The kernel's name for number(), or "unknown" for a number the kernel does not define.
  std::string_view name() const noexcept;
  // Argument i (0 to 5: rdi, rsi, rdx, r10, r8, r9). Out-of-range i returns 0 (set_arg ignores
  // it), so a hook cannot corrupt the saved state by a bad index.
  long arg(int i) const noexcept;
  void set_arg(int i, long value) noexcept;
  // The address just after the rewritten syscall instruction that made this call.
  std::uintptr_t return_address() const noexcept;

  // Runs the real system call with the current number and arguments and returns the kernel's raw
  // result (a negative errno on failure). clone, clone3 and vfork are forwarded such that a new
  // thread or child starts at the application's return address with the application's registers.
  long forward() noexcept;

  // A typed view when this call is system call S, otherwise nothing.
  template <class S>
  std::optional<typename S::View> as() noexcept {
    if (number() != S::number) return std::nullopt;
    return typename S::View(*this);
  }

 private:
  detail::SyscallFrame* frame_;
};

namespace sys {

class read::View {
 public:
  explicit View(Syscall& call) : call_(&call) {}
  ZPOLINE_ARG(0, int, fd, set_fd)
  ZPOLINE_ARG(1, void*, buf, set_buf)
  ZPOLINE_ARG(2, std::size_t, count, set_count)
 private:
  Syscall* call_;
};

class write::View {
 public:
  explicit View(Syscall& call) : call_(&call) {}
  ZPOLINE_ARG(0, int, fd, set_fd)
  ZPOLINE_ARG(1, const void*, buf, set_buf)
  ZPOLINE_ARG(2, std::size_t, count, set_count)
 private:
  Syscall* call_;
};

class close::View {
 public:
  explicit View(Syscall& call) : call_(&call) {}
  ZPOLINE_ARG(0, int, fd, set_fd)
 private:
  Syscall* call_;
};

class mmap::View {
 public:
  explicit View(Syscall& call) : call_(&call) {}
  ZPOLINE_ARG(0, void*, addr, set_addr)
  ZPOLINE_ARG(1, std::size_t, length, set_length)
  ZPOLINE_ARG(2, int, prot, set_prot)
  ZPOLINE_ARG(3, int, flags, set_flags)
  ZPOLINE_ARG(4, int, fd, set_fd)
  ZPOLINE_ARG(5, long, offset, set_offset)
 private:
  Syscall* call_;
};

class getpid::View {
 public:
  explicit View(Syscall& call) : call_(&call) {}

 private:
  [[maybe_unused]] Syscall* call_;
};

class openat::View {
 public:
  explicit View(Syscall& call) : call_(&call) {}
  ZPOLINE_ARG(0, int, dirfd, set_dirfd)
  ZPOLINE_ARG(1, const char*, pathname, set_pathname)
  ZPOLINE_ARG(2, int, flags, set_flags)
  ZPOLINE_ARG(3, unsigned, mode, set_mode)
 private:
  Syscall* call_;
};

#undef ZPOLINE_ARG

}  // namespace sys

}  // namespace v0
}  // namespace zpoline
