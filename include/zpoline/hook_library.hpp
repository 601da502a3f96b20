// zpoline/hook_library.hpp: hooks in a shared object of their own, loaded into a separate link-map
// namespace, and the ABI between such a hook library and the program that loads it.
//
// Writing a hook library: one function, with the typed Syscall API of an in-process hook,
//
//   #include <zpoline/hook_library.hpp>
//
//   extern "C" long zpoline_hook(zpoline::Syscall& call) noexcept {
//     if (call.number() == zpoline::sys::getpid::number) return 42;
//     return call.forward();
//   }
//
// built as a shared object linked with libzpoline-hook (CMake: zpoline::hook, pkg-config:
// zpoline-hook, Meson: dependency('zpoline-hook')), never with libzpoline itself. Loading it:
//
//   auto session = zpoline::load_hook_library("./libmyhook.so");      // from a program, or
//   LD_PRELOAD=libzpoline-preload.so ZPOLINE_HOOK=./libmyhook.so ls   // any program
//
// The library is loaded with dlmopen(LM_ID_NEWLM): it gets its own copy of libc, libstdc++ and
// every other dependency. That copy is never rewritten, so the hook's own system calls (printing,
// malloc, locks) go straight to the kernel, and the hook cannot deadlock on a lock that the
// application held when it made the system call (malloc's own mmap, say).
//
// The ABI (version zpoline::hook_abi_version):
//  - The hook library exports, all extern "C":
//      zpoline_hook_abi_version  uint32_t, defined by libzpoline-hook; checked first.
//      zpoline_hook_connect      defined by libzpoline-hook; receives the host's function table.
//      zpoline_hook              required, yours: the hook. It runs on the thread that made the
//                                system call, concurrently on all threads; must not throw. Not
//                                noexcept: a thread cancelled while blocked in a call the hook
//                                forwarded unwinds through it (see Syscall::forward()).
//      zpoline_hook_init         optional, yours: runs once after loading, before the hook is
//                                installed. Returns nullptr when ready, or a message saying why
//                                the library cannot run (read its configuration, open files...).
//      zpoline_hook_fini         optional, yours: runs once when no thread is inside the hook any
//                                more, before the library is unloaded.
//  - The Syscall& the hook receives is the host's object. libzpoline-hook implements Syscall's
//    member functions (number, arg, set_arg, return_address, forward) by calling the host
//    through the table zpoline_hook_host, so the hook library holds no state of the host's and
//    forward() runs whatever comes next in the host: the next hook of a HookChain, or the kernel.
//    name(), as<S>(), the sys:: views, syscall_info(), format() and read_memory()/read_string()
//    (zpoline/format.hpp, zpoline/memory.hpp) work in the hook library as in a program.
//  - Only C types and the Syscall pointer cross the boundary: the two sides have separate C and
//    C++ runtimes (malloc, std::string, exceptions). Never pass ownership of memory across.
//  - install(), HookChain and ScopedBypass are host-side API and are not available to a hook
//    library.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "zpoline/syscall.hpp"
#include "zpoline/version.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

// The version of the hook library ABI described above. A host loads only hook libraries built
// for the same version.
inline constexpr std::uint32_t hook_abi_version = 1;

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline

extern "C" {

// The host's side of one call, as a table of functions (host to hook library). New entries are
// added at the end with a new hook_abi_version.
struct zpoline_hook_host {
  std::uint32_t abi_version;  // the host's zpoline::hook_abi_version
  std::uint32_t size;         // sizeof(zpoline_hook_host) in the host
  long (*number)(const zpoline::Syscall* call) noexcept;
  long (*arg)(const zpoline::Syscall* call, int i) noexcept;
  void (*set_arg)(zpoline::Syscall* call, int i, long value) noexcept;
  std::uintptr_t (*return_address)(const zpoline::Syscall* call) noexcept;
  long (*forward)(zpoline::Syscall* call);
};

// Defined by libzpoline-hook.
__attribute__((visibility("default"))) extern const std::uint32_t zpoline_hook_abi_version;
__attribute__((visibility("default"))) void zpoline_hook_connect(
    const zpoline_hook_host* host) noexcept;

// Defined by the hook library's author (zpoline_hook required, the others optional).
__attribute__((visibility("default"))) long zpoline_hook(zpoline::Syscall& call);
__attribute__((visibility("default"))) const char* zpoline_hook_init() noexcept;
__attribute__((visibility("default"))) void zpoline_hook_fini() noexcept;

}  // extern "C"

// The host side: loading hook libraries.
namespace zpoline {
namespace detail {
struct LoadedHookLibrary;
}

inline namespace ZPOLINE_ABI_NAMESPACE {

// One loaded hook library. Loading checks, in this order, and throws Error (code
// hook_library_failed) with a message saying which failed: the file exists; dlmopen accepts it
// (with dlerror()'s text); it defines zpoline_hook; it defines zpoline_hook_abi_version and
// zpoline_hook_connect (it was linked with libzpoline-hook); its ABI version is
// hook_abi_version; its zpoline_hook_init, if any, returns nullptr. A path without '/' is
// searched for as dlopen() does (LD_LIBRARY_PATH, the system directories).
class HookLibrary {
 public:
  explicit HookLibrary(const std::string& path);

  const std::string& path() const noexcept;
  // The library's zpoline_hook as a Hook, to install() or to add to a HookChain. Every copy keeps
  // the library loaded: it is unloaded (zpoline_hook_fini, then dlclose) once the HookLibrary and
  // all copies of its hook are gone.
  Hook hook() const;

 private:
  std::shared_ptr<detail::LoadedHookLibrary> library_;
};

// Loads the hook library at path and installs its hook. Throws Error.
Session load_hook_library(const std::string& path, Options options = {});

// The hook libraries install_configured_hooks() would load: those of ZPOLINE_HOOK (':'-separated,
// when options.use_environment is on and it is set), else options.hook_libraries. Throws Error
// (invalid_option) for an empty entry.
std::vector<std::string> configured_hook_libraries(const Options& options);

// Installs the configured hook libraries (above), composed in their order with a HookChain; if
// none is configured, `fallback`; if that is empty too, the built-in default, which passes every
// call to the kernel. Throws Error.
Session install_configured_hooks(Options options = {}, Hook fallback = {});

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
