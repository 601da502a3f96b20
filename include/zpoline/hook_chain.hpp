// zpoline/hook_chain.hpp: several hooks at once, added and removed while the program runs.
//
//   zpoline::HookChain chain;
//   auto session = zpoline::install(chain);
//   auto tracer = chain.add(zpoline::HookLibrary("./libhook-trace.so").hook());
//   auto sandbox = chain.add([](zpoline::Syscall& call) { ...; return call.forward(); });
//   ...
//   tracer.remove();  // or let the handle go out of scope
//
// Each call runs the first hook; its call.forward() runs the next hook, and the last hook's
// forward() reaches the kernel. Any hook may change the arguments before forward(), change the
// result after it, or answer without calling it (the hooks after it then do not see the call).
// Copies of a HookChain share its hooks (install() takes a copy).
//
// Concurrency: add() and remove() may run on any thread while other threads are inside hooks of
// the chain. A call that enters the chain sees one consistent list of hooks from start to end.
// After add() returns, calls that enter the chain run the new hook; after remove() returns, no
// call enters the removed hook any more, and it is destroyed as soon as no call is inside it:
// right away if none is, otherwise by the first add(), remove() or synchronize() after the last
// such call has left (never by a thread inside a hook, whatever locks it holds).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "zpoline/syscall.hpp"
#include "zpoline/version.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline {
namespace detail {
struct HookChainState;
}

inline namespace ZPOLINE_ABI_NAMESPACE {

class HookChain {
 public:
  // Keeps a hook in its chain while alive; destroying it (or remove()) takes the hook out.
  class [[nodiscard]] Handle {
   public:
    Handle() noexcept = default;
    Handle(Handle&& other) noexcept;
    Handle& operator=(Handle&& other) noexcept;
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    ~Handle();

    bool active() const noexcept { return id_ != 0; }
    // Takes the hook out of the chain; does nothing on an inactive handle.
    void remove() noexcept;

   private:
    friend class HookChain;
    Handle(std::shared_ptr<detail::HookChainState> state, std::uint64_t id) noexcept
        : state_(std::move(state)), id_(id) {}
    std::shared_ptr<detail::HookChainState> state_;
    std::uint64_t id_ = 0;
  };

  HookChain();

  // Adds `hook`. Hooks run in ascending `order`; hooks of equal order in the order they were
  // added. Throws Error (invalid_option) for an empty hook.
  Handle add(Hook hook, int order = 0);

  // The number of hooks in the chain.
  std::size_t size() const;

  // Waits until every call that was inside a hook of this chain when synchronize() began has
  // left it, and destroys the hooks removed before. Not from inside the hooks of a HookChain (the
  // call would wait for itself): throws Error (invalid_option) there.
  void synchronize() const;

  // The hook to install: runs the chain for this call.
  long operator()(Syscall& call) const;

 private:
  std::shared_ptr<detail::HookChainState> state_;
};

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
