// zpoline/memory.hpp: fault-safe reads of application memory (platform/memory.hpp does the
// process_vm_readv).
#include "zpoline/memory.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "platform/memory.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

bool read_memory(void* destination, const void* address, std::size_t size) noexcept {
  if (size == 0) return true;
  if (address == nullptr) return false;
  return detail::safe_read(destination, address, size);
}

std::optional<std::string> read_string(const void* address, std::size_t max) {
  if (address == nullptr) return std::nullopt;
  constexpr std::size_t kPage = 4096;
  std::string text;
  auto cursor = reinterpret_cast<std::uintptr_t>(address);
  // Page by page, so a string that ends just before an unmapped page reads whole.
  while (text.size() < max) {
    const std::size_t chunk = std::min(kPage - cursor % kPage, max - text.size());
    char buffer[kPage];
    if (!detail::safe_read(buffer, reinterpret_cast<const void*>(cursor), chunk)) {
      return std::nullopt;
    }
    const void* nul = std::memchr(buffer, 0, chunk);
    if (nul != nullptr) {
      text.append(buffer, static_cast<const char*>(nul) - buffer);
      return text;
    }
    text.append(buffer, chunk);
    cursor += chunk;
  }
  return text;
}

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
