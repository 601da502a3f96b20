// The system call table (zpoline/syscalls.hpp) against the system's <asm/unistd_64.h>, the typed
// descriptors, and the newest calls. Header-only: this suite does not link the library.
#include <asm/unistd_64.h>
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <type_traits>

#include "zpoline/syscalls.hpp"

namespace sys = zpoline::sys;

// Usable in constant expressions.
static_assert(sys::openat::number == __NR_openat);
static_assert(sys::openat::name == "openat");
static_assert(zpoline::syscall_info(__NR_read)->arguments[1].kind == zpoline::ArgKind::out_buffer);
static_assert(zpoline::syscall_info("clone3")->number == __NR_clone3);
static_assert(zpoline::syscall_name(__NR_exit_group) == "exit_group");

// The views' accessors have the types of the man pages.
static_assert(std::is_same_v<decltype(std::declval<sys::openat::View>().dirfd()), int>);
static_assert(std::is_same_v<decltype(std::declval<sys::openat::View>().pathname()), const char*>);
static_assert(std::is_same_v<decltype(std::declval<sys::openat::View>().flags()), int>);
static_assert(std::is_same_v<decltype(std::declval<sys::openat::View>().mode()), unsigned>);
static_assert(std::is_same_v<decltype(std::declval<sys::read::View>().buf()), void*>);
static_assert(std::is_same_v<decltype(std::declval<sys::write::View>().buf()), const void*>);
static_assert(std::is_same_v<decltype(std::declval<sys::read::View>().count()), std::size_t>);
static_assert(std::is_same_v<decltype(std::declval<sys::mmap::View>().offset()), long>);
static_assert(
    std::is_same_v<decltype(std::declval<sys::execve::View>().argv()), const char* const*>);

TEST_CASE("every number of asm/unistd_64.h has its name in the table") {
  std::ifstream header("/usr/include/x86_64-linux-gnu/asm/unistd_64.h");
  REQUIRE(header.good());
  const std::regex define(R"(#define __NR_(\w+)\s+(\d+))");
  std::string line;
  int checked = 0;
  while (std::getline(header, line)) {
    std::smatch match;
    if (!std::regex_search(line, match, define)) continue;
    const long number = std::stol(match[2]);
    INFO("__NR_" << match[1] << " = " << number);
    const zpoline::SyscallInfo* info = zpoline::syscall_info(number);
    REQUIRE(info != nullptr);
    CHECK(info->name == match[1].str());
    CHECK(zpoline::syscall_info(info->name) == info);
    ++checked;
  }
  CHECK(checked > 350);
  MESSAGE(checked << " numbers of asm/unistd_64.h checked");
}

TEST_CASE("the table is well formed") {
  std::set<std::string_view> names;
  long previous = -1;
  int count = 0;
  for (auto* info = zpoline::syscalls_begin(); info != zpoline::syscalls_end(); ++info, ++count) {
    INFO(info->name);
    CHECK(info->number > previous);
    previous = info->number;
    CHECK(names.insert(info->name).second);
    CHECK(info->argument_count <= 6);
    CHECK(zpoline::syscall_info(info->number) == info);
    for (int i = 0; i < info->argument_count; ++i) {
      const zpoline::ArgInfo& arg = info->arguments[i];
      CHECK(!arg.name.empty());
      if (arg.kind == zpoline::ArgKind::in_buffer || arg.kind == zpoline::ArgKind::out_buffer) {
        CHECK(arg.size_argument >= 0);
        CHECK(arg.size_argument < info->argument_count);
      }
    }
  }
  CHECK(count >= 370);
  // x32 entries (512-547) are not 64-bit system calls.
  for (long number = 512; number < 548; ++number) CHECK(zpoline::syscall_info(number) == nullptr);
  CHECK(zpoline::syscall_info(-1) == nullptr);
  CHECK(zpoline::syscall_info(100000) == nullptr);
  CHECK(zpoline::syscall_name(100000) == "unknown");
}

TEST_CASE("system calls added after 6.1") {
  const std::map<std::string_view, std::pair<long, std::string_view>> newer = {
      {"uretprobe", {335, "6.11"}},        {"uprobe", {336, "6.18"}},
      {"cachestat", {451, "6.5"}},         {"fchmodat2", {452, "6.6"}},
      {"map_shadow_stack", {453, "6.6"}},  {"futex_wake", {454, "6.7"}},
      {"futex_wait", {455, "6.7"}},        {"futex_requeue", {456, "6.7"}},
      {"statmount", {457, "6.8"}},         {"listmount", {458, "6.8"}},
      {"lsm_get_self_attr", {459, "6.8"}}, {"lsm_set_self_attr", {460, "6.8"}},
      {"lsm_list_modules", {461, "6.8"}},  {"mseal", {462, "6.10"}},
      {"setxattrat", {463, "6.13"}},       {"getxattrat", {464, "6.13"}},
      {"listxattrat", {465, "6.13"}},      {"removexattrat", {466, "6.13"}},
      {"open_tree_attr", {467, "6.15"}},   {"file_getattr", {468, "6.17"}},
      {"file_setattr", {469, "6.17"}},
  };
  for (const auto& entry : newer) {
    // Not a structured binding: clang 14 cannot capture one in INFO's lambda.
    const std::string_view name = entry.first;
    const auto& expected = entry.second;
    INFO(name);
    const zpoline::SyscallInfo* info = zpoline::syscall_info(name);
    REQUIRE(info != nullptr);
    CHECK(info->number == expected.first);
    CHECK(info->since == expected.second);
  }
  CHECK(zpoline::syscall_info("futex_waitv")->number == 449);
  CHECK(sys::mseal::number == 462);
  CHECK(sys::fchmodat2::info().arguments[3].values == zpoline::ValueSet::at_flags);
}

TEST_CASE("argument kinds") {
  using zpoline::ArgKind;
  const auto& openat = sys::openat::info();
  CHECK(openat.argument_count == 4);
  CHECK(openat.arguments[0].kind == ArgKind::dirfd);
  CHECK(openat.arguments[1].kind == ArgKind::path);
  CHECK(openat.arguments[2].values == zpoline::ValueSet::open_flags);
  CHECK(openat.arguments[3].kind == ArgKind::mode);
  const auto& write = sys::write::info();
  CHECK(write.arguments[1].kind == ArgKind::in_buffer);
  CHECK(write.arguments[1].size_argument == 2);
  CHECK(sys::read::info().arguments[1].output);
  CHECK(sys::kill::info().arguments[0].kind == ArgKind::pid);
  CHECK(sys::kill::info().arguments[1].kind == ArgKind::signal);
  CHECK(sys::mmap::info().arguments[2].values == zpoline::ValueSet::mmap_prot);
  CHECK(sys::pread64::info().arguments[3].kind == ArgKind::offset);
  CHECK(sys::fstat::info().arguments[1].kind == ArgKind::structure);
  CHECK(sys::setuid::info().arguments[0].kind == ArgKind::id);
  CHECK(sys::socket::info().arguments[0].values == zpoline::ValueSet::socket_domain);
  CHECK(sys::getpid::info().argument_count == 0);
}
