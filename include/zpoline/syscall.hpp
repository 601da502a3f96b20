// zpoline/syscall.hpp: the view of one intercepted system call that a hook receives, and (through
// zpoline/syscalls.hpp) the typed descriptor of every system call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

#include "zpoline/version.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {
class Syscall;
}

namespace detail {
struct SyscallFrame;
struct ContinuationAccess;

// Where Syscall::forward() goes instead of the kernel: the next hook of a zpoline::HookChain
// (zpoline/hook_chain.hpp). run() may set the call's continuation for the hook it calls, and puts
// it back before returning.
struct Continuation {
  long (*run)(const Continuation& self, Syscall& call);
};
}  // namespace detail

inline namespace ZPOLINE_ABI_NAMESPACE {

// Typed descriptions of every system call (sys::openat, sys::read, ...) are in
// zpoline/syscalls.hpp, included at the end of this header.

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
  // Inside a zpoline::HookChain it passes the call to the next hook instead; the last hook's
  // forward() reaches the kernel. It throws nothing, but is not noexcept: a thread cancelled
  // (pthread_cancel) while blocked in the call unwinds from here through the hook into the
  // application, as it would from the system call without hooks.
  long forward();

  // A typed view when this call is system call S, otherwise nothing.
  template <class S>
  std::optional<typename S::View> as() noexcept {
    if (number() != S::number) return std::nullopt;
    return typename S::View(*this);
  }

 private:
  friend struct detail::ContinuationAccess;
  detail::SyscallFrame* frame_;
  const detail::Continuation* next_ = nullptr;
};

}  // namespace ZPOLINE_ABI_NAMESPACE

namespace detail {

// The base of every sys::X::View: typed access to the arguments of one call.
class ArgumentView {
 public:
  explicit ArgumentView(Syscall& call) noexcept : call_(&call) {}
  // The call this view describes.
  Syscall& call() const noexcept { return *call_; }

 protected:
  template <class T>
  T argument(int i) const noexcept {
    if constexpr (std::is_pointer_v<T>) {
      return reinterpret_cast<T>(call_->arg(i));
    } else {
      return static_cast<T>(call_->arg(i));
    }
  }
  template <class T>
  void set_argument(int i, T value) noexcept {
    if constexpr (std::is_pointer_v<T>) {
      call_->set_arg(i, reinterpret_cast<long>(value));
    } else {
      call_->set_arg(i, static_cast<long>(value));
    }
  }

 private:
  Syscall* call_;
};

}  // namespace detail
}  // namespace zpoline

#include "zpoline/syscalls.hpp"
