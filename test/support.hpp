// Helpers shared by the test suites.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "zpoline/zpoline.hpp"

namespace zpoline_test {

// Installs the hook, or ends the test process with 77 (meson's "skipped") if this machine will
// not map page 0, saying why. Every scenario that installs runs in its own process (one meson
// test() per doctest test case), so exiting here skips exactly one scenario.
inline zpoline::Session install_or_skip(zpoline::Hook hook, zpoline::Options options = {}) {
  try {
    return zpoline::install(std::move(hook), std::move(options));
  } catch (const zpoline::Error& error) {
    if (error.code() == zpoline::ErrorCode::page_zero_refused) {
      std::fprintf(stderr, "SKIP: this machine does not allow page 0: %s\n", error.what());
      std::_Exit(77);
    }
    throw;
  }
}

}  // namespace zpoline_test
