// zpoline/dispatcher.hpp: handlers per system call, dispatched by table lookup.
//
//   zpoline::Dispatcher dispatcher;
//   dispatcher.on<zpoline::sys::openat>([](zpoline::sys::openat::View open, zpoline::Next next) {
//     if (std::string_view(open.pathname()) == "/etc/shadow") return long{-EACCES};
//     return next();  // the next handler for openat, and in the end the kernel
//   });
//   dispatcher.otherwise([](zpoline::Syscall& call, zpoline::Next next) { return next(); });
//   auto session = zpoline::install(dispatcher);
//
// Handlers for one system call run in the order they were registered; each decides whether to
// call next() (the following handler, or after the last one the kernel, Syscall::forward()) and
// may change arguments before and the result after. A call without handlers goes to the
// otherwise() handlers, then to the kernel. Register every handler before install(): copies of
// a Dispatcher (install() takes one) share its handlers.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "zpoline/syscall.hpp"
#include "zpoline/version.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

class Dispatcher;

// Passes a call on: to the next handler registered for it, or to the kernel.
class Next {
 public:
  long operator()() const;

 private:
  friend class Dispatcher;
  using Handler = std::function<long(Syscall&, const Next&)>;
  Next(Syscall& call, const Handler* position, const Handler* end) noexcept
      : call_(&call), position_(position), end_(end) {}
  Syscall* call_;
  const Handler* position_;
  const Handler* end_;
};

class Dispatcher {
 public:
  // A handler receives the typed view (or Syscall&) and optionally a Next.
  Dispatcher() : table_(std::make_shared<Table>()) {}

  // Adds a handler for system call S: fn(typename S::View view, Next next) -> long, or
  // fn(typename S::View) -> long, or the same with Syscall& instead of the view.
  template <class S, class F>
  Dispatcher& on(F fn) {
    add(table_->by_number[static_cast<std::size_t>(S::number)],
        adapt<typename S::View>(std::move(fn)));
    return *this;
  }
  // Adds a handler for a number known only at run time (fn takes Syscall&). Numbers outside the
  // table's range are ignored (they go to otherwise()).
  template <class F>
  Dispatcher& on(long number, F fn) {
    if (number >= 0 && number < kTableSize) {
      add(table_->by_number[static_cast<std::size_t>(number)], adapt<Syscall&>(std::move(fn)));
    }
    return *this;
  }
  // Adds a handler for every call that has no handler of its own (fn takes Syscall&).
  template <class F>
  Dispatcher& otherwise(F fn) {
    add(table_->fallback, adapt<Syscall&>(std::move(fn)));
    return *this;
  }

  // The hook: runs the chain for call.number().
  long operator()(Syscall& call) const {
    const long number = call.number();
    const Chain* chain = &table_->fallback;
    if (number >= 0 && number < kTableSize) {
      const Chain& own = table_->by_number[static_cast<std::size_t>(number)];
      if (!own.empty()) chain = &own;
    }
    if (chain->empty()) return call.forward();
    const Next next(call, chain->data() + 1, chain->data() + chain->size());
    return chain->front()(call, next);
  }

  // Whether any handler (not the fallback) is registered for number.
  bool handles(long number) const noexcept {
    return number >= 0 && number < kTableSize &&
           !table_->by_number[static_cast<std::size_t>(number)].empty();
  }

 private:
  friend class Next;
  using Handler = Next::Handler;
  using Chain = std::vector<Handler>;
  static constexpr long kTableSize = 1024;  // every number of syscalls.hpp, with room
  static_assert(syscall_number_limit <= kTableSize);
  struct Table {
    std::vector<Chain> by_number = std::vector<Chain>(kTableSize);
    Chain fallback;
  };

  static void add(Chain& chain, Handler handler) { chain.push_back(std::move(handler)); }

  template <class Arg, class F>
  static Handler adapt(F fn) {
    return [fn = std::move(fn)](Syscall& call, const Next& next) -> long {
      auto view = [&]() -> decltype(auto) {
        if constexpr (std::is_same_v<Arg, Syscall&>) {
          return (call);
        } else {
          return Arg(call);
        }
      };
      if constexpr (std::is_invocable_v<const F&, Arg, const Next&>) {
        return fn(view(), next);
      } else if constexpr (std::is_invocable_v<const F&, Syscall&, const Next&>) {
        return fn(call, next);
      } else if constexpr (std::is_invocable_v<const F&, Arg>) {
        return fn(view());
      } else {
        static_assert(std::is_invocable_v<const F&, Syscall&>,
                      "a handler takes the view (or Syscall&) and optionally a zpoline::Next");
        return fn(call);
      }
    };
  }

  std::shared_ptr<Table> table_;
};

inline long Next::operator()() const {
  if (position_ == end_) return call_->forward();
  const Next following(*call_, position_ + 1, end_);
  return (*position_)(*call_, following);
}

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
