// AddressSanitizer and code that runs where its runtime does not look.
//
// The library's handlers run on stacks whose shadow memory the ASan runtime has not kept up to
// date: a new thread's first hooked call (glibc's start_thread registers rseq before the runtime
// has started the thread and cleared its stack's shadow, so frames a previous thread on the same
// cached stack left without their epilogue are still poisoned there), the children of vfork and
// posix_spawn, stacks a forced unwind (pthread_cancel) abandoned while __asan_handle_no_return
// or a landing pad makes a hooked call, and signal frames the kernel wrote. Memory below the
// stack pointer is dead, the stub's frame is the library's, and a signal frame is the kernel's:
// before instrumented code runs there, their stale poison is cleared. So is that of pages the
// library maps itself: they can lie where a stack was unmapped outside the runtime's view
// (posix_spawn's child stack, which glibc maps and unmaps itself). In builds without
// AddressSanitizer these are empty.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__SANITIZE_ADDRESS__)
#define ZPOLINE_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZPOLINE_ADDRESS_SANITIZER 1
#endif
#endif

#if defined(ZPOLINE_ADDRESS_SANITIZER)
#include <sanitizer/asan_interface.h>
#define ZPOLINE_NO_SANITIZE_ADDRESS __attribute__((no_sanitize_address))
#else
#define ZPOLINE_NO_SANITIZE_ADDRESS
#endif

namespace zpoline::detail {

#if defined(ZPOLINE_ADDRESS_SANITIZER)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

// Clears the poison of the `size` bytes at `address` (memory the kernel wrote, say).
inline void forget_stale_poison([[maybe_unused]] const void* address,
                                [[maybe_unused]] std::size_t size) noexcept {
#if defined(ZPOLINE_ADDRESS_SANITIZER)
  __asan_unpoison_memory_region(address, size);
#endif
}

// Clears the poison of the stack below `frame` (an address in the caller's frame), where the
// frames of the functions it calls will be: 64 KiB of it, more than the library's own frames
// and a hook's usual ones need. Only the shadow is written; the stack itself is not touched.
// The price, in sanitizer builds only: below a smaller stack (an alternate signal stack taken
// from the heap, say) reports about whatever lies there are lost until it is poisoned again.
inline void forget_stale_stack_poison_below([[maybe_unused]] const void* frame) noexcept {
#if defined(ZPOLINE_ADDRESS_SANITIZER)
  constexpr std::size_t kSize = 64 * 1024;
  const auto top = reinterpret_cast<std::uintptr_t>(frame);
  __asan_unpoison_memory_region(reinterpret_cast<const void*>(top - kSize), kSize);
#endif
}

// forget_stale_stack_poison_below(frame), and also the stack from `frame` up to `end`: the frame
// of the uninstrumented entry stub above it, whose saved registers instrumented code reads and
// which can lie where abandoned frames left poison (a forced unwind's, when the call is made from
// its landing pad or from __asan_handle_no_return). Nothing above `end` is touched: there are the
// application's red zone and frames.
inline void forget_stale_stack_poison_up_to([[maybe_unused]] const void* frame,
                                            [[maybe_unused]] const void* end) noexcept {
#if defined(ZPOLINE_ADDRESS_SANITIZER)
  forget_stale_stack_poison_below(frame);
  const auto from = reinterpret_cast<std::uintptr_t>(frame);
  const auto to = reinterpret_cast<std::uintptr_t>(end);
  constexpr std::uintptr_t kMostAStubFrameTakes = 64 * 1024;
  if (to > from && to - from <= kMostAStubFrameTakes) {
    __asan_unpoison_memory_region(frame, to - from);
  }
#endif
}

}  // namespace zpoline::detail
