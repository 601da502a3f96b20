// zpoline::install and zpoline::Session: the public entry points, tying together options, the
// trampoline, the rewriter and the dispatcher.
#include <sys/auxv.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "dispatch/dispatch.hpp"
#include "dispatch/frame.hpp"
#include "dispatch/safety_net.hpp"
#include "platform/cpu.hpp"
#include "platform/environment.hpp"
#include "rewriting/rewriter.hpp"
#include "rewriting/vdso_routing.hpp"
#include "trampoline/trampoline.hpp"
#include "zpoline/zpoline.hpp"

namespace zpoline {
inline namespace v0 {
namespace {

std::mutex install_lock;
bool session_alive = false;

constexpr std::string_view kEnvironmentPrefix = "ZPOLINE_";
constexpr std::string_view kKnownVariables[] = {
    "ZPOLINE_EXCLUDE", "ZPOLINE_MODE", "ZPOLINE_MECHANISM", "ZPOLINE_HOOK", "ZPOLINE_SCAN_CACHE"};
// Reserved for the configuration of hook libraries, which check their own variables.
constexpr std::string_view kHookLibraryPrefix = "ZPOLINE_HOOK_";

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorCode::invalid_option, "zpoline: " + message);
}

// A misspelt variable would otherwise be ignored silently.
void check_environment_names() {
  for (char** entry = environ; entry && *entry; ++entry) {
    const std::string_view variable(*entry);
    if (!variable.starts_with(kEnvironmentPrefix) || variable.starts_with(kHookLibraryPrefix)) {
      continue;
    }
    const std::string_view name = variable.substr(0, variable.find('='));
    bool known = false;
    for (std::string_view k : kKnownVariables) known |= (name == k);
    if (!known) {
      invalid("unknown environment variable " + std::string(name) +
              " (known: ZPOLINE_EXCLUDE, ZPOLINE_MODE, ZPOLINE_MECHANISM, ZPOLINE_HOOK, "
              "ZPOLINE_SCAN_CACHE, and "
              "ZPOLINE_HOOK_* for hook "
              "libraries). Unset it or fix its name.");
    }
  }
}

std::vector<std::string> split_exclude_list(const std::string& list) {
  std::vector<std::string> entries;
  std::size_t start = 0;
  for (int index = 1;; ++index) {
    const std::size_t colon = list.find(':', start);
    std::string entry = list.substr(start, colon == std::string::npos ? colon : colon - start);
    if (entry.empty()) {
      invalid("ZPOLINE_EXCLUDE=\"" + list + "\": entry " + std::to_string(index) +
              " is empty. Use a ':'-separated list of file names or absolute paths.");
    }
    entries.push_back(std::move(entry));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return entries;
}

Mode parse_mode(const std::string& text) {
  if (text == "eager") return Mode::eager;
  if (text == "exhaustive") return Mode::exhaustive;
  if (text == "lazy") return Mode::lazy;
  invalid("ZPOLINE_MODE=\"" + text + "\" is not a mode; use eager, exhaustive or lazy.");
}

Mode effective_mode(const Options& options) {
  if (options.use_environment) {
    if (const char* mode = detail::environment_variable("ZPOLINE_MODE")) return parse_mode(mode);
  }
  if (options.mode != Mode::eager && options.mode != Mode::exhaustive &&
      options.mode != Mode::lazy) {
    invalid("Options::mode is " + std::to_string(static_cast<int>(options.mode)) +
            ", not one of Mode::eager, Mode::exhaustive, Mode::lazy.");
  }
  return options.mode;
}

Mechanism parse_mechanism(const std::string& text) {
  if (text == "auto") return Mechanism::automatic;
  if (text == "page_zero") return Mechanism::page_zero;
  if (text == "near") return Mechanism::near;
  invalid("ZPOLINE_MECHANISM=\"" + text + "\" is not a mechanism; use auto, page_zero or near.");
}

Mechanism effective_mechanism(const Options& options) {
  if (options.use_environment) {
    if (const char* mechanism = detail::environment_variable("ZPOLINE_MECHANISM")) {
      return parse_mechanism(mechanism);
    }
  }
  if (options.mechanism != Mechanism::automatic && options.mechanism != Mechanism::page_zero &&
      options.mechanism != Mechanism::near) {
    invalid("Options::mechanism is " + std::to_string(static_cast<int>(options.mechanism)) +
            ", not one of Mechanism::automatic, Mechanism::page_zero, Mechanism::near.");
  }
  return options.mechanism;
}

// Page 0 where asked, or where automatic and the kernel allows it; the near mechanism
// otherwise. Throws the page-0 errors only where page_zero was asked for.
Mechanism prepare_mechanism(Mechanism wanted) {
  if (wanted == Mechanism::near) return Mechanism::near;
  if (wanted == Mechanism::page_zero) {
    detail::map_trampoline();
    return Mechanism::page_zero;
  }
  if (detail::trampoline_is_mapped()) return Mechanism::page_zero;
  try {
    detail::map_trampoline();
    return Mechanism::page_zero;
  } catch (const Error& error) {
    if (error.code() != ErrorCode::page_zero_refused &&
        error.code() != ErrorCode::page_zero_in_use) {
      throw;
    }
    return Mechanism::near;
  }
}

detail::RewriteOptions validate(const Options& options) {
  detail::RewriteOptions rewrite;
  for (const std::string& entry : options.exclude_paths) {
    if (entry.empty()) invalid("Options::exclude_paths has an empty entry.");
    rewrite.exclude_paths.push_back(entry);
  }
  for (const AddressRange& range : options.exclude_ranges) {
    if (range.begin >= range.end) {
      invalid("Options::exclude_ranges has an empty or reversed range [" +
              std::to_string(range.begin) + ", " + std::to_string(range.end) + ").");
    }
    rewrite.exclude_ranges.push_back(range);
  }
  rewrite.scan_cache_directory = options.scan_cache_directory;
  if (!rewrite.scan_cache_directory.empty() && rewrite.scan_cache_directory.front() != '/') {
    invalid("Options::scan_cache_directory \"" + rewrite.scan_cache_directory +
            "\" is not an absolute path.");
  }
  if (options.use_environment) {
    check_environment_names();
    // Not for a set-user-ID or set-group-ID program: its environment is its invoker's, who must
    // not make it create or read files where the invoker chooses.
    const char* cache =
        getauxval(AT_SECURE) != 0 ? nullptr : detail::environment_variable("ZPOLINE_SCAN_CACHE");
    if (cache != nullptr) {
      const std::string directory = cache;
      if (directory != "off" && (directory.empty() || directory.front() != '/')) {
        invalid("ZPOLINE_SCAN_CACHE=\"" + directory +
                "\" is neither an absolute directory path nor \"off\".");
      }
      rewrite.scan_cache_directory = directory == "off" ? "" : directory;
    }
    if (const char* list = detail::environment_variable("ZPOLINE_EXCLUDE")) {
      for (std::string& entry : split_exclude_list(list)) {
        rewrite.exclude_paths.push_back(std::move(entry));
      }
    }
  }
  return rewrite;
}

void configure_vector_state_saving() {
  const detail::VectorSaveLayout layout = detail::detect_vector_save_layout();
  zpoline_detail_xsave_mode = static_cast<unsigned char>(layout.mode);
  zpoline_detail_xsave_mask = layout.mask;
  zpoline_detail_xsave_size = layout.size;
  zpoline_detail_save_pkru = layout.save_pkru ? 1 : 0;
  detail::active_vector_save_layout = layout;
}

bool restore_on_detach = false;
// The stub's configuration and the fault handler, set up at the first install.
bool stub_prepared = false;

}  // namespace

std::size_t InstallStats::sites_rewritten() const noexcept {
  std::size_t total = 0;
  for (const ImageStats& image : images) total += image.sites_rewritten;
  return total;
}

Session install(Hook hook, Options options) {
  if (!hook) invalid("install() needs a hook; an empty std::function was given.");
  if (!options.hook_libraries.empty()) {
    invalid(
        "Options::hook_libraries is set, but install() was given a hook; use "
        "zpoline::install_configured_hooks() to install hook libraries.");
  }
  std::lock_guard lock(install_lock);
  if (session_alive) {
    throw Error(ErrorCode::already_installed,
                "zpoline: a hook is already installed in this process; destroy its "
                "zpoline::Session (or call detach()) before installing another.");
  }
  detail::RewriteOptions rewrite = validate(options);
  const Mode mode = effective_mode(options);
  if (mode != Mode::eager && !detail::safety_net_supported()) {
    throw Error(ErrorCode::unsupported,
                "zpoline: the exhaustive and lazy modes need Syscall User Dispatch (Linux 5.11 or "
                "later, CONFIG_SYSCALL_USER_DISPATCH), which this kernel does not offer; use "
                "Mode::eager.");
  }
  const Mechanism wanted = effective_mechanism(options);
  if (!stub_prepared) {
    configure_vector_state_saving();
    detail::prepare_entry();
    stub_prepared = true;
  }
  const Mechanism mechanism = prepare_mechanism(wanted);
  rewrite.near_mechanism = mechanism == Mechanism::near;

  Session session;
  session.mode_ = mode;
  session.mechanism_ = mechanism;
  session.at_install_ = Session::counters_now();
  session.stats_ = detail::rewrite_loaded_code(rewrite, /*scan=*/mode != Mode::lazy);
  zpoline_detail_general_registers_only = options.general_registers_only ? 1 : 0;
  detail::publish_hook(std::move(hook));
  if (mode != Mode::eager) detail::enable_safety_net();
  if (options.route_vdso) {
    try {
      detail::route_vdso_calls_to_kernel();
    } catch (...) {
      detail::disable_safety_net();
      detail::retract_hook();
      throw;
    }
  }
  restore_on_detach = options.restore_on_detach;
  session_alive = true;
  session.active_ = true;
  return session;
}

Session::Session(Session&& other) noexcept
    : active_(std::exchange(other.active_, false)),
      ended_(other.ended_),
      mode_(other.mode_),
      mechanism_(other.mechanism_),
      stats_(std::move(other.stats_)),
      at_install_(other.at_install_),
      at_end_(other.at_end_) {}

Session& Session::operator=(Session&& other) noexcept {
  if (this != &other) {
    detach();
    active_ = std::exchange(other.active_, false);
    ended_ = other.ended_;
    mode_ = other.mode_;
    mechanism_ = other.mechanism_;
    stats_ = std::move(other.stats_);
    at_install_ = other.at_install_;
    at_end_ = other.at_end_;
  }
  return *this;
}

Session::~Session() {
  detach();
}

Session::Counters Session::counters_now() noexcept {
  const detail::HookedCallCounts calls = detail::hooked_call_counts();
  const detail::SafetyNetCounters net = detail::safety_net_counters();
  Counters counters;
  counters.calls = {calls.through_sites, calls.through_net};
  counters.traps = net.traps;
  counters.sites_rewritten_on_trap = net.sites_rewritten;
  counters.emulated = net.emulated;
  return counters;
}

Session::Counters Session::since_install() const noexcept {
  if (!active_ && !ended_) return {};
  const Counters end = active_ ? counters_now() : at_end_;
  Counters counters;
  counters.calls = {end.calls.through_sites - at_install_.calls.through_sites,
                    end.calls.through_net - at_install_.calls.through_net};
  counters.traps = end.traps - at_install_.traps;
  counters.sites_rewritten_on_trap =
      end.sites_rewritten_on_trap - at_install_.sites_rewritten_on_trap;
  counters.emulated = end.emulated - at_install_.emulated;
  return counters;
}

Session::LateCoverage Session::late_coverage() const {
  LateCoverage coverage;
  coverage.images = detail::late_code_stats();
  const Counters counters = since_install();
  coverage.traps = counters.traps;
  coverage.sites_rewritten_on_trap = counters.sites_rewritten_on_trap;
  coverage.emulated = counters.emulated;
  // The list is the process's, one entry per count of sites_rewritten_on_trap, in order: this
  // session's entries are those counted since its install (the last one may still be on its way).
  std::vector<detail::LazilyRewrittenSite> sites = detail::lazily_rewritten_sites();
  const std::size_t first = std::min(at_install_.sites_rewritten_on_trap, sites.size());
  const std::size_t last = std::min(first + counters.sites_rewritten_on_trap, sites.size());
  for (std::size_t i = first; i < last; ++i) {
    coverage.lazily_rewritten.push_back({sites[i].address, std::move(sites[i].image)});
  }
  coverage.calls = counters.calls;
  return coverage;
}

Session::CallCounts Session::calls() const noexcept {
  return since_install().calls;
}

void Session::detach() noexcept {
  if (!active_) return;
  active_ = false;
  std::lock_guard lock(install_lock);
  detail::disable_safety_net();
  detail::retract_hook();
  at_end_ = counters_now();
  ended_ = true;
  detail::restore_vdso_calls();
  if (restore_on_detach) {
    try {
      detail::restore_rewritten_code();
    } catch (const Error&) {
      // The sites stay rewritten; they still reach the kernel through the trampoline.
    }
  }
  session_alive = false;
}

}  // namespace v0
}  // namespace zpoline
