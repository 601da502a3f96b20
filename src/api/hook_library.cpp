// Loading hook libraries into their own link-map namespace (zpoline/hook_library.hpp), and the
// host's side of the hook library ABI.
#include "zpoline/hook_library.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "platform/environment.hpp"
#include "platform/memory.hpp"
#include "platform/memory_map.hpp"
#include "rewriting/rewriter.hpp"
#include "zpoline/hook_chain.hpp"

namespace zpoline::detail {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& message) {
  throw Error(ErrorCode::hook_library_failed, "zpoline: hook library " + path + ": " + message);
}

const zpoline_hook_host host_table = {
    .abi_version = hook_abi_version,
    .size = sizeof(zpoline_hook_host),
    .number = [](const Syscall* call) noexcept { return call->number(); },
    .arg = [](const Syscall* call, int i) noexcept { return call->arg(i); },
    .set_arg = [](Syscall* call, int i, long value) noexcept { call->set_arg(i, value); },
    .return_address = [](const Syscall* call) noexcept { return call->return_address(); },
    .forward = [](Syscall* call) { return call->forward(); },
};

// The executable segments of every object in the namespace of `handle`, but those it shares
// with the main namespace (ld.so, the vDSO), which are rewritten like the rest of the program.
std::vector<AddressRange> namespace_code(void* handle) {
  std::vector<AddressRange> ranges;
  link_map* object = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &object) != 0 || object == nullptr) return ranges;
  while (object->l_prev != nullptr) object = object->l_prev;
  const std::uintptr_t shared[] = {getauxval(AT_BASE), getauxval(AT_SYSINFO_EHDR)};
  for (; object != nullptr; object = object->l_next) {
    const std::uintptr_t base = object->l_addr;
    if (std::find(std::begin(shared), std::end(shared), base) != std::end(shared)) continue;
    ElfW(Ehdr) header{};
    if (!safe_read(&header, reinterpret_cast<const void*>(base), sizeof header) ||
        std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 || header.e_phnum > 256) {
      continue;
    }
    std::vector<ElfW(Phdr)> segments(header.e_phnum);
    if (!safe_read(segments.data(), reinterpret_cast<const void*>(base + header.e_phoff),
                   segments.size() * sizeof(ElfW(Phdr)))) {
      continue;
    }
    for (const ElfW(Phdr) & segment : segments) {
      if (segment.p_type != PT_LOAD || !(segment.p_flags & PF_X)) continue;
      const std::uintptr_t begin = (base + segment.p_vaddr) & ~std::uintptr_t{4095};
      ranges.push_back({begin, base + segment.p_vaddr + segment.p_memsz});
    }
  }
  return ranges;
}

}  // namespace

struct LoadedHookLibrary {
  std::string path;
  void* handle = nullptr;
  long (*hook)(Syscall&) = nullptr;
  void (*fini)() noexcept = nullptr;
  std::vector<AddressRange> code;  // excluded from rewriting while it is mapped

  LoadedHookLibrary(const LoadedHookLibrary&) = delete;
  LoadedHookLibrary& operator=(const LoadedHookLibrary&) = delete;

  explicit LoadedHookLibrary(std::string file) : path(std::move(file)) {
    struct stat status {};
    if (path.find('/') != std::string::npos && stat(path.c_str(), &status) != 0) {
      fail(path, errno == ENOENT ? "no such file." : std::strerror(errno));
    }
    {
      // The dynamic linker maps the new namespace's libc here; it must stay as it is.
      ScopedNewCodeExclusion keep_new_code;
      handle = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        const char* reason = dlerror();
        fail(path, std::string("dlmopen failed: ") + (reason ? reason : "no reason given"));
      }
      code = namespace_code(handle);
      for (const AddressRange& range : code) exclude_code(range);
    }
    try {
      connect();
    } catch (...) {
      unload();
      throw;
    }
  }

  ~LoadedHookLibrary() {
    if (fini != nullptr) fini();
    unload();
  }

 private:
  template <class T>
  T symbol(const char* name) {
    return reinterpret_cast<T>(dlsym(handle, name));
  }

  void connect() {
    hook = symbol<long (*)(Syscall&)>("zpoline_hook");
    if (hook == nullptr) {
      fail(path,
           "not a hook library: it does not define zpoline_hook (extern \"C\" long "
           "zpoline_hook(zpoline::Syscall&) noexcept, see zpoline/hook_library.hpp).");
    }
    const auto* version = symbol<const std::uint32_t*>("zpoline_hook_abi_version");
    const auto connect =
        symbol<void (*)(const zpoline_hook_host*) noexcept>("zpoline_hook_connect");
    if (version == nullptr || connect == nullptr) {
      fail(path,
           "defines zpoline_hook but not zpoline_hook_abi_version and zpoline_hook_connect: link "
           "it with libzpoline-hook (CMake: zpoline::hook, pkg-config: zpoline-hook, Meson: "
           "dependency('zpoline-hook')), not with libzpoline.");
    }
    if (*version != hook_abi_version) {
      fail(path, "built for hook ABI version " + std::to_string(*version) +
                     ", but this libzpoline loads version " + std::to_string(hook_abi_version) +
                     ". Rebuild it against this libzpoline's headers.");
    }
    connect(&host_table);
    if (const auto init = symbol<const char* (*)() noexcept>("zpoline_hook_init")) {
      if (const char* refusal = init()) {
        fail(path, std::string("zpoline_hook_init refused to start: ") + refusal);
      }
    }
    fini = symbol<void (*)() noexcept>("zpoline_hook_fini");
  }

  void unload() noexcept {
    dlclose(handle);
    // Objects the dynamic linker keeps (NODELETE, like libstdc++ with its unique symbols) stay
    // mapped: their code stays excluded.
    const std::vector<Mapping> map = read_memory_map();
    for (const AddressRange& range : code) {
      bool mapped = false;
      for (const Mapping& mapping : map) {
        mapped |= mapping.begin < range.end && range.begin < mapping.end &&
                  (mapping.protection & PROT_EXEC);
      }
      if (!mapped) include_code_again(range);
    }
  }
};

}  // namespace zpoline::detail

namespace zpoline {
inline namespace ZPOLINE_ABI_NAMESPACE {

HookLibrary::HookLibrary(const std::string& path)
    : library_(std::make_shared<detail::LoadedHookLibrary>(path)) {}

const std::string& HookLibrary::path() const noexcept {
  return library_->path;
}

Hook HookLibrary::hook() const {
  return [library = library_](Syscall& call) { return library->hook(call); };
}

Session load_hook_library(const std::string& path, Options options) {
  Hook hook = HookLibrary(path).hook();
  return install(std::move(hook), std::move(options));
}

std::vector<std::string> configured_hook_libraries(const Options& options) {
  const char* variable =
      options.use_environment ? detail::environment_variable("ZPOLINE_HOOK") : nullptr;
  if (variable == nullptr) {
    for (const std::string& path : options.hook_libraries) {
      if (path.empty()) {
        throw Error(ErrorCode::invalid_option,
                    "zpoline: Options::hook_libraries has an empty entry.");
      }
    }
    return options.hook_libraries;
  }
  std::vector<std::string> paths;
  const std::string list(variable);
  std::size_t start = 0;
  for (;;) {
    const std::size_t colon = list.find(':', start);
    paths.push_back(list.substr(start, colon == std::string::npos ? colon : colon - start));
    if (paths.back().empty()) {
      throw Error(ErrorCode::invalid_option,
                  "zpoline: ZPOLINE_HOOK=\"" + list + "\": entry " + std::to_string(paths.size()) +
                      " is empty. Use a ':'-separated list of hook library paths.");
    }
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return paths;
}

Session install_configured_hooks(Options options, Hook fallback) {
  const std::vector<std::string> paths = configured_hook_libraries(options);
  options.hook_libraries.clear();
  if (paths.size() == 1) return load_hook_library(paths.front(), std::move(options));
  if (paths.empty()) {
    if (!fallback) fallback = [](Syscall& call) { return call.forward(); };
    return install(std::move(fallback), std::move(options));
  }
  HookChain chain;
  auto handles = std::make_shared<std::vector<HookChain::Handle>>();
  for (const std::string& path : paths) handles->push_back(chain.add(HookLibrary(path).hook()));
  // The handles live as long as the installed hook: the chain stays complete.
  return install([chain, handles](Syscall& call) { return chain(call); }, std::move(options));
}

}  // namespace ZPOLINE_ABI_NAMESPACE
}  // namespace zpoline
