// zpoline/memory.hpp: reading memory that a system call's arguments point to, which the
// application may have passed wrong. A bad pointer reads as nothing, never as a crash: the reads
// go through process_vm_readv on the own process, made as raw system calls that skip the hook.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <type_traits>

#include "zpoline/version.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

// Copies size bytes from address into destination. False (destination partly written) if any
// byte is unreadable.
bool read_memory(void* destination, const void* address, std::size_t size) noexcept;

// The NUL-terminated string at address, without its NUL, read up to max bytes: a string of
// exactly max bytes means no NUL came within max. Nothing if the first unread byte up to the
// NUL (or max) is unreadable.
std::optional<std::string> read_string(const void* address, std::size_t max = 4096);

// A T copied from address, or nothing if unreadable.
template <class T>
std::optional<T> read_object(const void* address) noexcept {
  static_assert(std::is_trivially_copyable_v<T>);
  T value;
  if (!read_memory(&value, address, sizeof value)) return std::nullopt;
  return value;
}

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
